"""A batch of received packets (asyncio layer): zero-copy views into shared memory.

A :class:`Batch` is what a receive queue hands out; it is valid until the next receive on
the same queue or until released, which is exactly when its buffers go back to the ring.

A released batch invalidates its views; a view that another object still holds through
the buffer protocol (a numpy array made from it, say) cannot be invalidated, so its
buffer is not given back: the release raises :class:`~aiomemif.errors.ExportedBufferError`
and the batch stays as it was until a later release succeeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, final, overload

from .._core.buffers import ChainedPacket, Packet, exported_error, release_views
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

    A view still exported to another object (``numpy.frombuffer(pkt)``, ``ctypes``
    ``from_buffer``, ``pickle.PickleBuffer``) cannot be invalidated: Python has no way to
    revoke an export, and the memory would stay readable and writable while the peer
    reuses the buffer. Releasing then gives nothing back and raises
    :class:`~aiomemif.errors.ExportedBufferError`; see :meth:`release`. Views made by
    slicing a packet or by ``memoryview(pkt)`` are not exports and are not tracked: they
    outlive the release, so copy what you keep.
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
        release_views(self._packets, indices)

    def release(self) -> None:
        """Invalidate every packet and return the buffers to the ring (idempotent).

        If a packet's view is still exported to another object, nothing is returned: the
        batch stays unreleased and keeps its buffers (the ring does not get them back, so
        a peer keeps sending only while the ring has room), every other view is already
        invalid, and a later ``release()`` (or the next receive) tries again. When the
        link goes down the batch is released regardless; an exported view then keeps its
        region mapped (readable, and writable by the peer) until it goes away.

        Raises:
            ExportedBufferError: a packet's view is still exported (``indices`` says
                which); drop those objects and release again.
        """
        if self._released:
            return
        exported = release_views(self._packets)
        if exported:
            raise exported_error("packet", exported, "the batch keeps its buffers")
        self._end()

    def _drop(self) -> None:
        """The link is down: invalidate what can be, and release (never raises)."""
        if not self._released:
            release_views(self._packets)
            self._end()

    def _end(self) -> None:
        self._released = True
        source, self._source = self._source, None
        if source is not None:
            source._batch_released(self)

    def _claim(self, indices: Sequence[int]) -> None:
        """Invalidate the views of the packets at ``indices`` (about to be forwarded).

        Raises:
            ExportedBufferError: one of them is still exported (the others' views are
                invalid now); none may leave the batch.
        """
        exported = release_views(self._packets, indices)
        if exported:
            raise exported_error("packet", exported, "nothing was forwarded")

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
