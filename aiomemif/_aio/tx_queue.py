"""Transmit queues of a live connection (asyncio layer).

Three ways to send:

- copy: ``await tx.send(pkt)`` / ``send_batch(pkts)`` (waits for ring space; the
  ``*_nowait`` forms raise :class:`~aiomemif.errors.WouldBlockError`);
- zero-copy: ``bufs = await tx.alloc(count, size)``, write into ``bufs[i]`` in place, then
  ``tx.commit(bufs)`` (libmemif's ``memif_buffer_alloc`` + ``memif_tx_burst``);
- forwarding (client only): ``tx.forward(batch)`` sends received packets by moving their
  buffers from the receive ring to this ring (libmemif's ``memif_buffer_enq_tx``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final, final, overload

from .._core.client_tx import ClientTx
from .._core.rx import ClientRx
from .._core.server_tx import ServerTx
from .._core.tx import TxReservation
from .._os.eventfd import EventFd
from .._os.regions import fence
from ..errors import (
    BusyResourceError,
    ConfigurationError,
    LocalProtocolError,
    MemifError,
    RemoteProtocolError,
    StaleBatchError,
    WouldBlockError,
)
from .batch import Batch
from .rx_queue import FAIR_CALL, FAIR_SHARE, ProtocolErrorHandler, QueueBase, RxQueue

if TYPE_CHECKING:
    from typing import SupportsBytes, TypeAlias

    from typing_extensions import Buffer

    #: What ``send`` takes: any buffer (bytes, bytearray, memoryview, array, mmap, ...) or
    #: an object with ``__bytes__`` (a received ``ChainedPacket``, scapy or dpkt packets).
    Sendable: TypeAlias = Buffer | SupportsBytes

__all__ = ["TxBuffer", "TxBuffers", "TxQueue"]

#: A full transmit ring is retried this many times by yielding the CPU (sched_yield, so a
#: receiver sharing it can drain the ring) and then the loop, then on a 1 ms timer (memif
#: has no "space available" signal).
_SPIN_RETRIES: Final = 64
_RETRY_DELAY: Final = 0.001


@final
class TxBuffer:
    """One packet's reserved transmit buffer(s): write the packet in place.

    ``segments`` are writable views (several when the packet is larger than one buffer).
    ``len()`` is the reserved size; :meth:`set_length` shrinks what gets sent.
    """

    __slots__ = ("length", "segments", "size")

    def __init__(self, segments: list[memoryview], size: int) -> None:
        self.segments = segments
        self.size = size
        self.length = size

    @property
    def view(self) -> memoryview:
        """The first (for an unchained packet, the only) segment."""
        return self.segments[0]

    def __len__(self) -> int:
        return self.size

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Copy ``data`` into the buffer(s) at ``offset``; return the bytes written.

        Raises:
            ValueError: it does not fit, or the buffers were committed or cancelled.
        """
        src = memoryview(data).cast("B")
        if offset < 0 or offset + len(src) > self.size:
            raise ValueError(f"{len(src)} bytes at {offset} do not fit {self.size} bytes")
        at = 0
        for seg in self.segments:
            n = len(seg)
            if offset >= n:
                offset -= n
                continue
            take = min(n - offset, len(src) - at)
            seg[offset : offset + take] = src[at : at + take]
            at += take
            offset = 0
            if at == len(src):
                break
        return len(src)

    def set_length(self, length: int) -> None:
        """Send only the first ``length`` bytes (for a chain, within its last buffer)."""
        self.length = length


@final
class TxBuffers(Sequence[TxBuffer]):
    """Buffers reserved by :meth:`TxQueue.alloc`, published by :meth:`TxQueue.commit`.

    Indexing or iterating gives one :class:`TxBuffer` per packet (made on first use).
    :attr:`views` is the faster way to fill many unchained packets: plain writable views,
    with no per-packet objects beyond them.
    """

    __slots__ = ("_buffers", "_queue", "_reservation", "_reserved")

    def __init__(self, queue: TxQueue, reservation: TxReservation) -> None:
        self._queue = queue
        #: The open reservation (None once committed or cancelled).
        self._reservation: TxReservation | None = reservation
        self._reserved = reservation
        self._buffers: list[TxBuffer] | None = None

    def _all(self) -> list[TxBuffer]:
        if self._buffers is None:
            res = self._reserved
            self._buffers = [TxBuffer(segs, res.size) for segs in res.per_packet()]
        return self._buffers

    @property
    def views(self) -> list[memoryview]:
        """One writable view per packet, each exactly the reserved size (a new list).

        Lengths then come from :meth:`TxQueue.commit`'s ``lengths`` (default: the
        reserved size), not from ``TxBuffer.set_length``.

        Raises:
            ValueError: the packets are chained (use each :class:`TxBuffer`'s segments),
                or ``TxBuffer`` objects were already taken (their lengths would be lost).
        """
        plain = self._reserved.views
        if plain is not None and self._buffers is None:  # (the usual case, first)
            return list(plain)
        views = self._reserved.one_view_each()
        if views is None:
            raise ValueError("these packets span several buffers each: use their segments")
        if self._buffers is not None:
            raise ValueError("use either the TxBuffer objects or views, not both")
        return list(views)

    @property
    def chained(self) -> bool:
        """True if a packet spans several buffers (then :attr:`views` is not available)."""
        return self._reserved.one_view_each() is None

    def __len__(self) -> int:
        return self._reserved.count

    @overload
    def __getitem__(self, index: int) -> TxBuffer: ...
    @overload
    def __getitem__(self, index: slice) -> list[TxBuffer]: ...
    def __getitem__(self, index: int | slice) -> TxBuffer | list[TxBuffer]:
        return self._all()[index]

    def __iter__(self) -> Iterator[TxBuffer]:
        return iter(self._all())


@final
class TxQueue(QueueBase):
    """One transmit ring (S2M on a client, M2S on a server)."""

    def __init__(
        self,
        qid: int,
        endpoint: ClientTx | ServerTx,
        efd: EventFd,
        *,
        on_protocol_error: ProtocolErrorHandler,
        link: object,
    ) -> None:
        super().__init__(qid, efd, endpoint.counters, on_protocol_error, link)
        self._endpoint = endpoint

    def free_slots(self) -> int:
        """Slots available for packets right now.

        Raises:
            ClosedResourceError / DisconnectedError / RemoteProtocolError: the link is
                down (closed here, by the peer, or over a protocol violation).
        """
        self._check()
        try:
            return self._endpoint.free()
        except RemoteProtocolError as exc:
            raise self._protocol_failure(exc) from exc

    def _signal(self) -> None:
        fence()  # our publish must be visible before we read the receiver's MASK_INT
        if self._endpoint.ring.wants_signal():
            try:
                self._efd.signal()
            except RemoteProtocolError as exc:
                raise self._protocol_failure(exc) from exc
            self.counters.interrupts_sent += 1

    def _free_endpoint(self) -> ClientTx | ServerTx:
        """The ring endpoint, provided the link is up and no alloc() buffers are open."""
        self._check()
        ep = self._endpoint
        if ep.reservation is not None:
            raise BusyResourceError(f"tx queue {self.qid} has uncommitted alloc() buffers")
        return ep

    def _write(self, packets: Sequence[object], start: int) -> int:
        ep = self._free_endpoint()
        try:
            n = ep.write(packets, start)
        except RemoteProtocolError as exc:
            raise self._protocol_failure(exc) from exc
        if n:
            self._signal()
        return n

    # -- copying ---------------------------------------------------------------------
    def send_batch_nowait(self, packets: Iterable[Sendable]) -> int:
        """Send as many whole packets as fit now, in order; return how many were sent.

        Raises:
            WouldBlockError: the ring had room for none of them.
            EmptyPacketError: a packet has no bytes.
            PacketTooLargeError: a packet is over 65535 bytes or needs more buffers than
                the ring has.
            TypeError: a packet is neither a buffer nor has ``__bytes__``.
            BusyResourceError: ``alloc()`` buffers are waiting for ``commit()``.
            ClosedResourceError / DisconnectedError / RemoteProtocolError: the link is
                down (closed here, by the peer, or over a protocol violation).
        """
        seq = packets if isinstance(packets, list | tuple) else list(packets)
        n = self._write(seq, 0)
        if n == 0 and seq:
            raise self._full()
        return n

    def _full(self) -> WouldBlockError:
        self.counters.ring_full += 1
        return WouldBlockError(f"tx queue {self.qid} is full")

    def send_nowait(self, packet: Sendable) -> None:
        """Send one packet now. Raises as :meth:`send_batch_nowait`."""
        if not self._write((packet,), 0):  # (send_batch_nowait without its conversions)
            raise self._full()

    async def _backoff(self, retries: int) -> None:
        self._owed = 0
        if retries < _SPIN_RETRIES:
            os.sched_yield()  # a receiver sharing this CPU gets to drain the ring
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(_RETRY_DELAY)

    async def send_batch(self, packets: Iterable[Sendable]) -> int:
        """Send every packet, in order, waiting for ring space when the ring is full.

        Returns the number of packets sent (all of them). If cancelled while waiting, the
        packets published so far stay sent (``counters.packets`` tells how many).

        Raises:
            As :meth:`send_batch_nowait`, except that a full ring is waited for.
        """
        if self._owed >= FAIR_SHARE:  # the ring always had room
            await self._fair_yield()
        seq = packets if isinstance(packets, list | tuple) else list(packets)
        total = len(seq)
        sent = self._write(seq, 0)
        self._owed += sent + FAIR_CALL
        retries = 0
        while sent < total:
            if retries == 0:
                self.counters.ring_full += 1
            await self._backoff(retries)
            n = self._write(seq, sent)
            sent += n
            retries = 0 if n else retries + 1
        return total

    async def send(self, packet: Sendable) -> None:
        """Send one packet, waiting for ring space. Raises as :meth:`send_batch`."""
        if self._owed >= FAIR_SHARE or not self._write((packet,), 0):
            await self.send_batch((packet,))  # (which yields to the loop, or waits)
        else:
            self._owed += 1 + FAIR_CALL

    # -- zero-copy transmit ----------------------------------------------------------
    def alloc_nowait(self, count: int, size: int) -> TxBuffers:
        """Reserve ``count`` packets of ``size`` bytes for writing in place.

        A size above one buffer reserves a chain. Nothing is sent until :meth:`commit`;
        until then the queue accepts no other sends.

        Raises:
            WouldBlockError: they do not all fit now.
            EmptyPacketError: ``size`` is 0.
            PacketTooLargeError: ``size`` is over 65535 or needs more than the ring.
            ConfigurationError: ``count`` is below 1, or the packets together need more
                buffers than the ring has (they could never fit).
            BusyResourceError: an earlier allocation is not committed or cancelled.
            ClosedResourceError / DisconnectedError / RemoteProtocolError: the link is
                down (closed here, by the peer, or over a protocol violation).
        """
        res = self._reserve(count, size)
        if res is None:
            self.counters.ring_full += 1
            raise WouldBlockError(f"tx queue {self.qid} has no room for {count} x {size} bytes")
        return TxBuffers(self, res)

    async def alloc(self, count: int, size: int) -> TxBuffers:
        """Like :meth:`alloc_nowait`, but wait for ring space (``counters.ring_full``
        counts the wait once, as :meth:`send_batch` does).

        Raises:
            As :meth:`alloc_nowait`, except that a full ring is waited for.
        """
        if self._owed >= FAIR_SHARE:  # the ring always had room
            await self._fair_yield()
        res = self._reserve(count, size)
        if res is None:
            self.counters.ring_full += 1
            retries = 0
            while res is None:
                await self._backoff(retries)
                retries += 1
                res = self._reserve(count, size)
        self._owed += count + FAIR_CALL
        return TxBuffers(self, res)

    def _reserve(self, count: int, size: int) -> TxReservation | None:
        """The endpoint's reservation, or None if the packets do not fit now.

        Raises:
            As :meth:`alloc_nowait`, except for a full ring.
        """
        if count < 1:
            raise ConfigurationError(f"count must be at least 1, got {count}")
        ep = self._free_endpoint()
        try:
            return ep.reserve(count, size)
        except RemoteProtocolError as exc:
            raise self._protocol_failure(exc) from exc

    def commit(self, buffers: TxBuffers, lengths: Sequence[int] | None = None) -> int:
        """Publish allocated buffers; return packets sent.

        Each packet's length is ``lengths[i]`` if given, else its ``TxBuffer.length`` (the
        reserved size unless ``set_length`` shrank it).

        Raises:
            LocalProtocolError: the buffers were already committed or cancelled, ``lengths``
                does not have one entry per packet, or a length is 0, above the reserved
                size, or leaves a reserved buffer of a chain empty.
            ExportedBufferError: a view of these buffers is still exported to another
                object (a numpy array made from it, say), which could go on writing into
                a buffer the peer reads. Nothing was sent and the buffers stay reserved
                (every other view is invalid now); drop those objects and commit again.
            ClosedResourceError / DisconnectedError / RemoteProtocolError: the link is
                down (closed here, by the peer, or over a protocol violation).
        """
        self._check()
        res = buffers._reservation
        if res is None or buffers._queue is not self:
            raise LocalProtocolError("these buffers were already committed or cancelled")
        if lengths is None and buffers._buffers is not None:
            lengths = [b.length for b in buffers._buffers]
        n = self._endpoint.commit(res, lengths)
        buffers._reservation = None
        self._signal()
        return n

    def cancel(self, buffers: TxBuffers) -> None:
        """Give allocated buffers back without sending anything (idempotent).

        Raises:
            ExportedBufferError: a view of these buffers is still exported (the buffers
                stay reserved, since the next send would reuse them); drop those objects
                and cancel again.
        """
        res = buffers._reservation
        if res is not None and buffers._queue is self:
            self._endpoint.cancel(res)
            buffers._reservation = None

    # -- zero-copy forwarding --------------------------------------------------------
    def forward(self, batch: Batch, indices: Iterable[int] | None = None) -> int:
        """Send received packets without copying them (client only).

        The packets' buffers move from the receive ring to this ring, and this ring's free
        buffers take their place in the receive ring, so no buffer is ever in two rings.
        Forwarded packets are invalidated in ``batch`` (their views raise ``ValueError``).
        Packets that do not fit (whole) are not forwarded; the return value says how many
        were, in order. A packet already forwarded (earlier, or listed twice) is skipped, so
        ``forward(batch)`` again sends what did not fit before. A packet whose descriptor
        the peer rewrote outside its buffer is skipped and counted as a bad descriptor.

        Raises:
            IndexError: an index is out of range (then nothing is forwarded).
            LocalProtocolError: this is a server queue (a server owns no buffers), or the
                batch comes from another connection.
            StaleBatchError: the batch was released.
            ExportedBufferError: a view of a packet about to be forwarded is still
                exported to another object; nothing was forwarded (the views of those
                packets are invalid now), drop those objects and forward again.
            BusyResourceError: ``alloc()`` buffers are waiting for ``commit()``.
            ClosedResourceError / DisconnectedError / RemoteProtocolError: the link is
                down (closed here, by the peer, or over a protocol violation).
        """
        self._check()
        if not isinstance(self._endpoint, ClientTx):
            raise LocalProtocolError(
                "zero-copy forwarding needs the client role: a server owns no buffers"
            )
        source = batch._origin()
        if source is None:
            raise StaleBatchError("this batch was released; its buffers are back in the ring")
        if not isinstance(source, RxQueue) or source._link is not self._link:
            raise LocalProtocolError("a batch can only be forwarded on its own connection")
        ep = self._free_endpoint()
        assert isinstance(ep, ClientTx)
        rx = source._endpoint
        assert isinstance(rx, ClientRx)
        wanted = batch._forwardable(indices)
        try:
            moved = ep.forward_from(rx, wanted, batch._claim)
        except RemoteProtocolError as exc:
            raise self._protocol_failure(exc) from exc
        if moved:
            batch._give_up(moved)
            self._signal()
        return len(moved)

    def _end(self, error: MemifError) -> None:
        self._shutdown(error)

    def _shutdown(self, error: MemifError) -> None:
        self._error = error
        res = self._endpoint.reservation
        if res is not None:  # its views must go before the region is unmapped
            self._endpoint.cancel(res, force=True)  # (an exported one keeps it mapped)
        self._endpoint.drop_sinks()
