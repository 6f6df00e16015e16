"""Transmit endpoints (pure): copy or reserve buffers, chain large packets, publish.

``SlaveTx`` (client, S2M) owns its buffers: each slot's buffer is listed in a per-slot table
that zero-copy forwarding rewrites (buffers swap between the rx and tx rings, never sitting
in two rings at once). ``MasterTx`` (server, M2S) fills the buffers the client offered, as
described by the client's descriptors (checked before any byte is written).

Packets larger than one buffer are split over consecutive slots with NEXT on every segment
but the last; head/tail is only ever published at packet boundaries.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from . import _wire as w
from .errors import (
    ConfigurationError,
    LocalProtocolError,
    PacketTooLargeError,
    RemoteProtocolError,
)
from .ring import QueueCounters, Ring, as_wire_buffer

__all__ = ["MAX_PACKET", "MasterTx", "Reservation", "SlaveTx"]

_MASK = w.MASK16
_NEXT = w.DESC_FLAG_NEXT
_HEAD = w.RING_HEAD_OFF // 2
#: The largest packet memif can describe as one chain (VPP/libmemif limit it to u16 too).
MAX_PACKET = 65535


class Reservation:
    """Slots reserved for zero-copy transmit: writable views, published by ``commit``."""

    __slots__ = ("empty", "endpoint", "lengths", "segments", "start", "used")

    def __init__(self, endpoint: SlaveTx | MasterTx, start: int) -> None:
        self.endpoint = endpoint
        self.start = start
        #: Per packet, the writable segment views (one unless the packet is chained).
        self.segments: list[list[memoryview]] = []
        #: Per packet, the requested length.
        self.lengths: list[int] = []
        #: Slots (relative to ``start``) the peer offered unusably: published empty.
        self.empty: list[int] = []
        self.used = 0

    def release_views(self) -> None:
        for segs in self.segments:
            for v in segs:
                v.release()


def _too_large(n: int, what: str) -> PacketTooLargeError:
    return PacketTooLargeError(f"packet of {n} bytes {what}")


def _never_fits(count: int, size: int, slots: int, ring_size: int) -> ConfigurationError:
    return ConfigurationError(
        f"{count} packets of {size} bytes need {slots} buffers; the ring has {ring_size}"
    )


class _Reserving:
    """Zero-copy reservation bookkeeping shared by both transmitters."""

    counters: QueueCounters
    reservation: Reservation | None

    def _close(self, res: Reservation, nbytes: int, bad: int = 0) -> int:
        """Close a committed reservation: views released, counters updated."""
        self.reservation = None
        res.release_views()
        c = self.counters
        c.packets += len(res.segments)
        c.bytes += nbytes
        c.bad_descriptors += bad
        c.chained += sum(1 for s in res.segments if len(s) > 1)
        return len(res.segments)

    def cancel(self, res: Reservation) -> None:
        """Drop a reservation without publishing anything."""
        if res is self.reservation:
            self.reservation = None
            res.release_views()


class SlaveTx(_Reserving):
    """Client side of an S2M ring: write into our own buffers and publish head."""

    def __init__(
        self,
        ring: Ring,
        region: memoryview,
        region_index: int,
        buffers: array[int],
        buffer_size: int,
        headroom: int,
        counters: QueueCounters,
    ) -> None:
        self.ring = ring
        self.region = region
        self.region_index = region_index
        #: Offset of the buffer behind each slot (rewritten by zero-copy forwarding).
        self.buffers = buffers
        self.buffer_size = buffer_size
        self.headroom = headroom
        self.capacity = buffer_size - headroom
        self.counters = counters
        self.head = 0
        self.reservation: Reservation | None = None

    def free(self) -> int:
        """Slots free for new packets.

        Raises:
            RemoteProtocolError: tail is ahead of head or more than a ring behind it.
        """
        ring = self.ring
        used = (self.head - ring.header[ring.tail_index]) & _MASK
        if used > ring.size:
            raise RemoteProtocolError("Ring tail out of range")
        return ring.size - used

    def _publish(self, lengths: array[int], offsets: array[int], flags: array[int] | None) -> None:
        ring = self.ring
        ring.write_descriptors(self.head, lengths, flags, offsets)
        self.head = (self.head + len(lengths)) & _MASK
        ring.header[_HEAD] = self.head

    def write(self, packets: Sequence[object], start: int = 0) -> int:
        """Copy as many whole packets of ``packets[start:]`` as fit; publish; return how many.

        Raises:
            PacketTooLargeError: a packet is empty, over 65535 bytes, or needs more slots than
                the ring has (nothing of this call is published).
            TypeError: a packet is not bytes-like.
            RemoteProtocolError: see :meth:`free`.
        """
        free = self.free()
        if free <= 0 or start >= len(packets):
            return 0
        region, cap, mask = self.region, self.capacity, self.ring.mask
        bufs, head, room = self.buffers, self.head, self.headroom
        lengths, offsets = array("I"), array("I")
        add_len, add_off = lengths.append, offsets.append
        flags: array[int] | None = None
        used = nbytes = chained = 0
        i = start
        for i in range(start, len(packets)):
            p = packets[i]
            if type(p) is not bytes:
                p = as_wire_buffer(p)
            n = len(p)
            if 0 < n <= cap:
                if used == free:
                    break
                o = bufs[(head + used) & mask] + room
                region[o : o + n] = p
                add_len(n)
                add_off(o)
                if flags is not None:
                    flags.append(0)
                used += 1
                nbytes += n
                continue
            if n == 0 or n > MAX_PACKET:
                raise _too_large(n, "cannot be sent (1..65535 bytes)")
            nseg = -(-n // cap)
            if nseg > self.ring.size:
                raise _too_large(n, f"needs {nseg} buffers; the ring has {self.ring.size}")
            if used + nseg > free:
                break
            if flags is None:
                flags = array("H", bytes(2 * len(lengths)))
            view = memoryview(p).cast("B") if not isinstance(p, memoryview) else p
            for k in range(nseg):
                seg = view[k * cap : (k + 1) * cap]
                o = bufs[(head + used) & mask] + room
                region[o : o + len(seg)] = seg
                add_len(len(seg))
                add_off(o)
                flags.append(_NEXT if k < nseg - 1 else 0)
                used += 1
            nbytes += n
            chained += 1
        else:
            i = len(packets)
        if not used:
            return 0
        self._publish(lengths, offsets, flags)
        c = self.counters
        c.packets += i - start
        c.bytes += nbytes
        c.chained += chained
        return i - start

    # -- zero-copy transmit ------------------------------------------------------------
    def reserve(self, count: int, size: int) -> Reservation | None:
        """Reserve ``count`` packets of ``size`` bytes (chained if over one buffer).

        Returns None if they do not all fit now. Nothing is visible to the peer until
        :meth:`commit`.

        Raises:
            PacketTooLargeError: ``size`` is 0, over 65535, or needs more slots than the ring.
            ConfigurationError: the packets together need more slots than the ring has.
            LocalProtocolError: a reservation is already open on this ring.
        """
        if self.reservation is not None:
            raise LocalProtocolError("a reservation is already open on this queue")
        if not 0 < size <= MAX_PACKET:
            raise _too_large(size, "cannot be sent (1..65535 bytes)")
        cap = self.capacity
        nseg = -(-size // cap)
        if nseg > self.ring.size:
            raise _too_large(size, f"needs {nseg} buffers; the ring has {self.ring.size}")
        if count * nseg > self.ring.size:
            raise _never_fits(count, size, count * nseg, self.ring.size)
        if count * nseg > self.free():
            return None
        res = Reservation(self, self.head)
        mask, bufs, room = self.ring.mask, self.buffers, self.headroom
        slot = self.head
        for _ in range(count):
            segs = []
            left = size
            for _k in range(nseg):
                o = bufs[slot & mask] + room
                take = min(cap, left)
                segs.append(self.region[o : o + take])
                left -= take
                slot += 1
            res.segments.append(segs)
            res.lengths.append(size)
        res.used = count * nseg
        self.reservation = res
        return res

    def commit(self, res: Reservation, lengths: Sequence[int] | None = None) -> int:
        """Publish a reservation (with the packets' final lengths); return packets sent.

        Raises:
            LocalProtocolError: not this endpoint's open reservation, or a length that
                would leave a reserved segment empty.
        """
        if res is not self.reservation:
            raise LocalProtocolError("not the open reservation of this queue")
        lens, flags = _segment_lengths(res, lengths)
        mask, bufs, room = self.ring.mask, self.buffers, self.headroom
        offs = array("I", (bufs[(res.start + k) & mask] + room for k in range(res.used)))
        self._publish(lens, offs, flags)
        return self._close(res, sum(lens))

    # -- zero-copy forwarding --------------------------------------------------------
    def forward(
        self, segments: Sequence[tuple[int, int, int]], rx_buffers: array[int], flags: array[int]
    ) -> None:
        """Publish received buffers as transmitted packets by swapping buffers.

        ``segments[k]`` is ``(offset, length, rx_slot)`` of the k-th segment (already
        checked to lie inside the rx buffer of ``rx_slot``); the tx slot's own (free)
        buffer goes to that rx slot in exchange. The caller checked there is room.
        """
        mask, rx_mask = self.ring.mask, len(rx_buffers) - 1
        bufs = self.buffers
        lens, offs = array("I"), array("I")
        for k, (off, length, rx_slot) in enumerate(segments):
            s = (self.head + k) & mask
            r = rx_slot & rx_mask
            bufs[s], rx_buffers[r] = rx_buffers[r], bufs[s]
            lens.append(length)
            offs.append(off)
        self._publish(lens, offs, flags)


def _segment_lengths(
    res: Reservation, lengths: Sequence[int] | None
) -> tuple[array[int], array[int] | None]:
    """Segment lengths and flags of a reservation whose packets may have shrunk."""
    lens = array("I")
    flags: array[int] | None = None
    if lengths is not None and len(lengths) != len(res.segments):
        raise LocalProtocolError("one length per reserved packet is required")
    for p, segs in enumerate(res.segments):
        want = res.lengths[p] if lengths is None else lengths[p]
        full = res.lengths[p] - len(segs[-1])
        if not full < want <= res.lengths[p]:
            raise LocalProtocolError(
                f"packet {p} was reserved as {res.lengths[p]} bytes in {len(segs)} buffers; "
                f"its length must stay in {full + 1}..{res.lengths[p]}"
            )
        for k, v in enumerate(segs):
            lens.append(len(v) if k < len(segs) - 1 else want - full)
        if len(segs) > 1 and flags is None:
            flags = array("H", bytes(2 * (len(lens) - len(segs))))
        if flags is not None:
            flags.extend([_NEXT] * (len(segs) - 1) + [0])
    return lens, flags


class MasterTx(_Reserving):
    """Server side of an M2S ring: fill the buffers the client offered and publish tail."""

    def __init__(self, ring: Ring, regions: Sequence[memoryview], counters: QueueCounters) -> None:
        self.ring = ring
        self.regions = list(regions)
        self.sizes = [len(r) for r in regions]
        self.counters = counters
        self.tail = 0
        self.reservation: Reservation | None = None

    def reset(self) -> None:
        """At CONNECT: tail = 0."""
        self.ring.set_tail(0)
        self.tail = 0

    def free(self) -> int:
        """Slots the client has offered and we have not filled.

        Raises:
            RemoteProtocolError: head claims more than the ring size.
        """
        ring = self.ring
        offered = (ring.header[_HEAD] - self.tail) & _MASK
        if offered > ring.size:
            raise RemoteProtocolError("Ring head out of range")
        return offered

    def _offers(self, avail: int, offers: list[tuple[int, int, int] | None], want: int) -> bool:
        """Extend ``offers`` (the checked offered slots from ``tail``) by up to ``want`` more
        slots, never past ``avail``; False when there are no more offered slots."""
        have = len(offers)
        count = min(avail - have, max(want, 32))
        if count <= 0:
            return False
        regions_n, sizes = len(self.regions), self.sizes
        for _f, reg, cap, off, _m in self.ring.descriptor_runs(self.tail + have, count):
            ok = reg < regions_n and cap > 0 and off + cap <= sizes[reg]
            offers.append((reg, off, cap) if ok else None)
        return True

    def _whole_ring_too_small(self, offers: list[tuple[int, int, int] | None], avail: int) -> bool:
        """After a plan from slot 0 failed: True if the whole ring is offered, every offer is
        usable, and still it was not enough (waiting for room would then wait forever)."""
        return avail == self.ring.size and len(offers) == avail and None not in offers

    def _plan(
        self, offers: list[tuple[int, int, int] | None], avail: int, pos: int, n: int
    ) -> tuple[int, list[tuple[int, int, int]], int] | None:
        """Slots for one packet of ``n`` bytes from ``pos``: (first slot, segments, bad
        slots skipped before it), or None if the offered slots run out first."""
        bad = 0
        segs: list[tuple[int, int, int]] = []
        left = n
        first = pos
        while left > 0:
            if pos >= len(offers) and not self._offers(avail, offers, left // 64 + 1):
                return None
            o = offers[pos]
            if o is None:  # unusable: publish it empty; a chain restarts after it
                bad += pos - first + 1
                pos += 1
                first = pos
                segs, left = [], n
                continue
            reg, off, cap = o
            take = min(cap, left)
            segs.append((reg, off, take))
            left -= take
            pos += 1
        return first, segs, bad

    def write(self, packets: Sequence[object], start: int = 0) -> int:
        """Copy as many whole packets of ``packets[start:]`` as fit into offered buffers.

        Slots whose descriptor names memory outside the client's regions are counted as bad
        descriptors and published empty (length 0). Returns the number of packets sent.

        Raises:
            PacketTooLargeError: a packet is empty, over 65535 bytes, or larger than every
                buffer the client offers in the whole ring together (nothing published).
            TypeError: a packet is not bytes-like.
            RemoteProtocolError: see :meth:`free`.
        """
        avail = self.free()
        if avail <= 0 or start >= len(packets):
            return 0
        offers: list[tuple[int, int, int] | None] = []
        self._offers(avail, offers, len(packets) - start)
        regions = self.regions
        lengths = array("I")
        flags: array[int] | None = None
        pos = nbytes = bad = chained = 0
        i = start
        for i in range(start, len(packets)):
            p = packets[i]
            if type(p) is not bytes:
                p = as_wire_buffer(p)
            n = len(p)
            if not 0 < n <= MAX_PACKET:
                raise _too_large(n, "cannot be sent (1..65535 bytes)")
            o = offers[pos] if pos < len(offers) else None
            if o is not None and n <= o[2]:  # the common case: it fits the next buffer
                reg, off, _cap = o
                regions[reg][off : off + n] = p
                lengths.append(n)
                if flags is not None:
                    flags.append(0)
                pos += 1
                nbytes += n
                continue
            plan = self._plan(offers, avail, pos, n)
            if plan is None:
                if pos == 0 and self._whole_ring_too_small(offers, avail):
                    raise _too_large(n, f"does not fit the {avail} buffers the client offers")
                while pos < len(offers) and offers[pos] is None:  # return unusable slots
                    lengths.append(0)
                    if flags is not None:
                        flags.append(0)
                    pos += 1
                    bad += 1
                break
            first, segs, skipped = plan
            lengths.extend([0] * (first - pos))
            if flags is not None:
                flags.extend([0] * (first - pos))
            bad += skipped
            if len(segs) > 1:
                chained += 1
                if flags is None:
                    flags = array("H", bytes(2 * len(lengths)))
            view = p if len(segs) == 1 else memoryview(p).cast("B")
            at = 0
            for k, (reg, off, take) in enumerate(segs):
                regions[reg][off : off + take] = view[at : at + take] if len(segs) > 1 else view
                at += take
                lengths.append(take)
                if flags is not None:
                    flags.append(_NEXT if k < len(segs) - 1 else 0)
            pos = first + len(segs)
            nbytes += n
        else:
            i = len(packets)
        if not lengths:
            return 0
        self.ring.write_descriptors(self.tail, lengths, flags, None)
        self.tail = (self.tail + len(lengths)) & _MASK
        self.ring.header[self.ring.tail_index] = self.tail
        c = self.counters
        c.packets += i - start
        c.bytes += nbytes
        c.bad_descriptors += bad
        c.chained += chained
        return i - start

    # -- zero-copy transmit ------------------------------------------------------------
    def reserve(self, count: int, size: int) -> Reservation | None:
        """Reserve ``count`` packets of ``size`` bytes in offered buffers (see SlaveTx).

        Raises:
            PacketTooLargeError: ``size`` is 0 or over 65535, or one packet does not fit in
                all the buffers the client offers in the whole ring.
            ConfigurationError: the packets together never fit in the offered ring.
            LocalProtocolError: a reservation is already open on this ring.
        """
        if self.reservation is not None:
            raise LocalProtocolError("a reservation is already open on this queue")
        if not 0 < size <= MAX_PACKET:
            raise _too_large(size, "cannot be sent (1..65535 bytes)")
        avail = self.free()
        offers: list[tuple[int, int, int] | None] = []
        self._offers(avail, offers, count)
        res = Reservation(self, self.tail)
        pos = 0
        for _ in range(count):
            plan = self._plan(offers, avail, pos, size)
            if plan is None:
                res.release_views()
                if self._whole_ring_too_small(offers, avail):
                    if pos == 0:
                        raise _too_large(size, f"does not fit the {avail} buffers offered")
                    raise _never_fits(count, size, count * (pos // len(res.segments)), avail)
                return None
            first, segs, _bad = plan
            res.empty.extend(range(pos, first))  # unusable slots, published empty
            res.segments.append([self.regions[r][o : o + t] for r, o, t in segs])
            res.lengths.append(size)
            pos = first + len(segs)
        res.used = pos
        self.reservation = res
        return res

    def commit(self, res: Reservation, lengths: Sequence[int] | None = None) -> int:
        """Publish a reservation; return packets sent. Raises as SlaveTx.commit."""
        if res is not self.reservation:
            raise LocalProtocolError("not the open reservation of this queue")
        seg_lens, seg_flags = _segment_lengths(res, lengths)
        # Interleave the empty (unusable) slots back in at their positions.
        empty = set(res.empty)
        lens, flags = array("I"), array("H")
        k = 0
        for slot in range(res.used):
            if slot in empty:
                lens.append(0)
                flags.append(0)
            else:
                lens.append(seg_lens[k])
                flags.append(seg_flags[k] if seg_flags is not None else 0)
                k += 1
        self.ring.write_descriptors(self.tail, lens, flags, None)
        self.tail = (self.tail + res.used) & _MASK
        self.ring.header[self.ring.tail_index] = self.tail
        return self._close(res, sum(seg_lens), len(empty))
