"""A batch of received packets (asyncio layer): zero-copy views into shared memory.

A :class:`Batch` is what a receive queue hands out; it is valid until the next receive on
the same queue or until released, which is exactly when its buffers go back to the ring.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, final, overload

from .._core.buffers import ChainedPacket, Packet
from .._core.rx import RxRun
from ..errors import StaleBatchError

__all__ = ["Batch", "BatchSource"]


class BatchSource(Protocol):
    """Where a batch came from: told when the batch is released."""

    def _batch_released(self, batch: Batch) -> None: ...


_STALE = "this batch was released; its buffers are back in the ring"


@final
class Batch(Sequence[Packet]):
    """Packets received in one go: zero-copy views into shared memory.

    Each packet is a ``memoryview`` of one buffer, or a :class:`ChainedPacket` when it
    arrived in several (its ``segments`` are views; ``bytes()`` joins a copy). The packets
    are valid until the batch is released: explicitly (``release()``, or leaving
    ``with batch:``), or by the next receive on the same queue. Releasing gives the buffers
    back to the ring; afterwards the batch raises :class:`StaleBatchError` and the views
    raise ``ValueError``. Keep a packet with :meth:`keep`, :meth:`copy_into` or ``bytes()``.
    """

    __slots__ = ("_forwarded", "_packets", "_released", "_slots", "_source", "_start")

    def __init__(self, run: RxRun, source: BatchSource | None = None) -> None:
        self._packets = run.packets
        self._source = source
        self._released = False
        self._start = run.start
        self._slots = run.slots
        #: Indexes of packets whose buffers ``TxQueue.forward`` moved to a transmit ring
        #: (created by the first forward).
        self._forwarded: set[int] | None = None

    def __len__(self) -> int:
        return len(self._packets)

    @overload
    def __getitem__(self, index: int) -> Packet: ...
    @overload
    def __getitem__(self, index: slice) -> list[Packet]: ...
    def __getitem__(self, index: int | slice) -> Packet | list[Packet]:
        if self._released:
            raise StaleBatchError(_STALE)
        return self._packets[index]

    def __iter__(self) -> Iterator[Packet]:
        if self._released:
            raise StaleBatchError(_STALE)
        return iter(self._packets)

    @property
    def released(self) -> bool:
        return self._released

    @property
    def nbytes(self) -> int:
        """Total payload bytes in the batch."""
        return sum(len(p) for p in self._packets)

    def keep(self, index: int) -> bytes:
        """A copy of packet ``index`` that outlives the batch.

        Raises:
            StaleBatchError: the batch was released.
        """
        packet = self[index]
        return packet.tobytes() if isinstance(packet, ChainedPacket) else bytes(packet)

    def copy_into(self, index: int, buffer: memoryview | bytearray, offset: int = 0) -> int:
        """Copy packet ``index`` into ``buffer`` at ``offset``; return its length.

        Raises:
            StaleBatchError: the batch was released.
            ValueError: the buffer is too small.
        """
        packet = self[index]
        if isinstance(packet, ChainedPacket):
            return packet.copy_into(buffer, offset)
        out = memoryview(buffer).cast("B")
        if offset < 0 or offset + len(packet) > len(out):
            raise ValueError(f"buffer too small for a {len(packet)}-byte packet")
        out[offset : offset + len(packet)] = packet
        return len(packet)

    def slot_of(self, index: int) -> int:
        """Free-running ring index of the first slot of packet ``index`` (for forwarding).

        Raises:
            IndexError: no such packet.
        """
        index = range(len(self._packets))[index]  # negative indexes count from the end
        return self._start + index if self._slots is None else self._slots[index]

    def _origin(self) -> BatchSource | None:
        """The queue the batch came from (None once released)."""
        return self._source

    def _forwardable(self, indices: Iterable[int] | None) -> list[tuple[int, int, int]]:
        """(index, first slot, buffers) of the packets named by ``indices`` (all if None),
        in order, each once, leaving out those whose buffers were already given up.

        Raises:
            StaleBatchError: the batch was released.
            IndexError: an index is out of range.
        """
        if self._released:
            raise StaleBatchError(_STALE)
        packets = self._packets
        count = len(packets)
        gone = self._forwarded or ()
        seen: set[int] = set()
        out = []
        for i in range(count) if indices is None else indices:
            packet = packets[i]  # IndexError if out of range
            i %= count  # one index per packet: -1 and count - 1 are the same buffer
            if i in gone or i in seen:
                continue  # its buffer already left (or is leaving) the receive ring
            seen.add(i)
            nseg = len(packet.segments) if isinstance(packet, ChainedPacket) else 1
            out.append((i, self.slot_of(i), nseg))
        return out

    def _give_up(self, indices: Sequence[int]) -> None:
        """The buffers of these packets left the receive ring (forwarded): invalidate
        their views; :meth:`_forwardable` leaves them out from now on."""
        if self._forwarded is None:
            self._forwarded = set()
        self._forwarded.update(indices)
        for i in indices:
            self._packets[i].release()

    def release(self) -> None:
        """Invalidate every packet and return the buffers to the ring (idempotent)."""
        if self._released:
            return
        self._released = True
        for packet in self._packets:
            try:
                packet.release()
            except BufferError:
                pass  # the caller exported it further (e.g. to numpy); it stays readable
        source, self._source = self._source, None
        if source is not None:
            source._batch_released(self)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
