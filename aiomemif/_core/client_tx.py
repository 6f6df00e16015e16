"""Client transmit endpoint and what both transmitters share (pure).

``SlaveTx`` (client, S2M) owns its buffers: each slot's buffer is listed in a per-slot table
that zero-copy forwarding rewrites (buffers swap between the rx and tx rings, never sitting
in two rings at once). ``MasterTx`` (server, M2S) fills the buffers the client offered, as
described by the client's descriptors (checked before any byte is written).

Packets larger than one buffer are split over consecutive slots with NEXT on every segment
but the last; head/tail is only ever published at packet boundaries.
"""

from __future__ import annotations

import mmap
from array import array
from collections.abc import Sequence
from typing import Any

from ..errors import (
    ConfigurationError,
    LocalProtocolError,
    PacketTooLargeError,
    RemoteProtocolError,
)
from . import wire as w
from .buffers import as_wire_buffer
from .ring import QueueCounters, Ring

__all__ = ["MAX_PACKET", "Reservation", "SlaveTx"]

_MASK = w.MASK16
_NEXT = w.DESC_FLAG_NEXT
_HEAD = w.RING_HEAD_OFF // 2
#: The largest packet memif can describe as one chain (VPP/libmemif limit it to u16 too).
MAX_PACKET = 65535


class Reservation:
    """Slots reserved for zero-copy transmit: writable views, published by ``commit``."""

    __slots__ = ("empty", "endpoint", "lengths", "segments", "start", "used", "views")

    def __init__(self, endpoint: _Reserving, start: int) -> None:
        self.endpoint = endpoint
        self.start = start
        #: One buffer per packet: the packets' writable views (then ``segments`` is empty).
        self.views: list[memoryview] | None = None
        #: Otherwise, per packet, the writable segment views (several for a chain).
        self.segments: list[list[memoryview]] = []
        #: Per packet, the requested length.
        self.lengths: list[int] = []
        #: Slots (relative to ``start``) the peer offered unusably: published empty.
        self.empty: list[int] = []
        self.used = 0

    @property
    def count(self) -> int:
        """Packets reserved."""
        return len(self.views) if self.views is not None else len(self.segments)

    def one_view_each(self) -> list[memoryview] | None:
        """Every packet's only view if none is chained (also when the reservation was made
        packet by packet, around unusable offers), else None."""
        if self.views is not None:
            return self.views
        segments = self.segments
        if any(len(segs) != 1 for segs in segments):
            return None
        return [segs[0] for segs in segments]

    def per_packet(self) -> list[list[memoryview]]:
        """Every packet's segment views (one-element lists in a one-buffer reservation)."""
        if self.views is not None:
            return [[v] for v in self.views]
        return self.segments

    def release_views(self) -> None:
        for v in self.views or ():
            v.release()
        for segs in self.segments:
            for v in segs:
                v.release()


def _sink(region: memoryview) -> mmap.mmap | memoryview:
    """Where to copy packets into ``region``: its mmap if the view covers all of it (slice
    assignment to an mmap is faster than to a memoryview), else the view."""
    mapping = region.obj
    if isinstance(mapping, mmap.mmap) and len(mapping) == len(region):
        return mapping
    return region


def _plain(packet: object, capacity: int) -> bool:
    """True if ``packet`` is bytes-like and fits one buffer: the first packet a write
    leaves for later may only be left if it is not an error (empty, too large, not bytes),
    which the per-packet path reports before anything of the call is published."""
    try:
        return 0 < memoryview(packet).nbytes <= capacity  # type: ignore[arg-type]
    except TypeError:
        return False


def _run_of(packets: Sequence[Any], start: int, n: int) -> Sequence[Any]:
    """``packets[start:start + n]`` (``packets`` itself if that is all of it)."""
    return packets if start == 0 and n == len(packets) else packets[start : start + n]


def _lengths_of(
    packets: Sequence[Any], start: int, n: int
) -> tuple[Sequence[Any], list[int]] | None:
    """``packets[start:start + n]`` and their lengths, or None if one has no length."""
    seq = _run_of(packets, start, n)
    try:
        return seq, list(map(len, seq))
    except TypeError:
        return None


def _size_guess(packets: Sequence[Any], start: int, n: int, limit: int) -> int:
    """The length of ``packets[start]`` if it is 1..``limit`` and the run's last packet
    has it too, else 0: a guess that all ``n`` packets have that size, which a copy with
    :func:`_copy_run` then proves (it refuses a packet of any other byte size), so no
    length is measured packet by packet."""
    try:
        size = len(packets[start])
        if 0 < size <= limit and len(packets[start + n - 1]) == size:
            return size
    except TypeError:
        pass
    return 0


def _count_sent(counters: QueueCounters, packets: int, nbytes: int) -> int:
    """Add a bulk send to ``counters``; return ``packets``."""
    counters.packets += packets
    counters.bytes += nbytes
    return packets


def _uniform_column(size: int, n: int) -> array[int]:
    """The length words of ``n`` descriptors of ``size`` bytes each."""
    return array("I", (size,)) * n


def _copy_run(
    sink: mmap.mmap | memoryview,
    offsets: Sequence[int],
    seq: Sequence[Any],
    lengths: Sequence[int],
    size: int,
) -> bool:
    """Copy ``seq[k]`` to ``offsets[k]`` in ``sink`` (``size`` > 0: every packet must be
    exactly that many bytes, and ``lengths`` is not used). False if a packet is not a
    plain contiguous byte buffer of the expected size; nothing is published yet then, so
    the caller takes another path, which measures, converts or refuses it.
    The sequences have the same length (not re-checked here: ``strict`` costs)."""
    try:
        if size:
            for o, p in zip(offsets, seq):  # noqa: B905
                sink[o : o + size] = p
        else:
            for o, k, p in zip(offsets, lengths, seq):  # noqa: B905
                sink[o : o + k] = p
    except (TypeError, ValueError, IndexError, BufferError):
        return False
    return True


def _all_fit(lengths: list[int], same: bool, limit: int) -> bool:
    """True if every packet of a run is non-empty and at most ``limit`` bytes (``same``:
    all have the first one's length)."""
    size = lengths[0]
    return (same and 0 < size <= limit) or (min(lengths) > 0 and max(lengths) <= limit)


def _length_column(lengths: list[int], same: bool) -> array[int]:
    """The descriptors' length words for a run (``same``: all equal to the first)."""
    return _uniform_column(lengths[0], len(lengths)) if same else array("I", lengths)


def _copy_chains(
    sink: mmap.mmap | memoryview, offsets: Sequence[int], seq: Sequence[Any], size: int, seg: int
) -> bool:
    """Copy each ``size``-byte packet of ``seq`` in ``seg``-byte pieces to consecutive
    ``offsets``. False as :func:`_copy_run`."""
    k = -(-size // seg)
    cuts = [(j * seg, min(seg, size - j * seg)) for j in range(k)]
    slot = iter(offsets)
    try:
        for p in seq:
            view = memoryview(p)
            if view.format != "B" or view.ndim != 1:
                return False
            for at, n in cuts:
                o = next(slot)
                sink[o : o + n] = view[at : at + n]
    except (TypeError, ValueError, IndexError, BufferError):
        return False
    return True


def _chain_columns(size: int, seg: int, count: int) -> tuple[array[int], array[int]]:
    """Lengths and flags of ``count`` chains of ``size`` bytes in ``seg``-byte pieces."""
    k = -(-size // seg)
    lengths = array("I", [seg] * (k - 1) + [size - seg * (k - 1)]) * count
    flags = array("H", [_NEXT] * (k - 1) + [0]) * count
    return lengths, flags


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
        n = res.count
        c.packets += n
        c.bytes += nbytes
        c.bad_descriptors += bad
        if res.used != n:  # some packet took more than one buffer
            c.chained += sum(1 for s in res.segments if len(s) > 1)
        return n

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
        #: Where each slot's data starts (its buffer + headroom): the offset its descriptor
        #: carries for a copied packet.
        self.data = array("I", (b + headroom for b in buffers))
        #: Slots still to be written in full (flags, offset) before every descriptor is
        #: known to hold flags 0 and its slot's data offset; until then the bulk path
        #: rewrites those words too. Chains and forwarding make the ring dirty again.
        self.dirty = ring.size
        #: Copies go through the region's mmap itself where the view covers all of it.
        self.sink = _sink(region)

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

    def _data_run(self, start: int, count: int) -> array[int]:
        """Data offsets of ``count`` slots from free-running index ``start`` (wrapping)."""
        s, size, data = start & self.ring.mask, self.ring.size, self.data
        return data[s : s + count] if s + count <= size else data[s:] + data[: s + count - size]

    def _publish(self, lengths: array[int], offsets: array[int], flags: array[int] | None) -> None:
        """Write descriptors from ``head`` (``offsets``: each slot's data offset unless the
        ring is marked dirty first) and publish them by moving head."""
        ring, head = self.ring, self.head
        n = len(lengths)
        if flags is not None or self.dirty > 0:
            ring.write_descriptors(head, lengths, flags, offsets)
            self.dirty = ring.size if flags is not None else self.dirty - n
        else:  # clean: flags are 0 and offsets the slots' own, so only lengths change
            s = head & ring.mask
            if s + n <= ring.size:
                ring.words[4 * s + 1 : 4 * (s + n) : 4] = lengths
            else:
                ring.write_descriptors(head, lengths, None, None)
        self.head = (head + n) & _MASK
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
        n = min(len(packets) - start, free)
        if n < len(packets) - start and not _plain(packets[start + n], self.capacity):
            return self._write_each(packets, start, free)  # it decides about that packet
        if n == 1:
            return self._write_one(packets, start, free)
        size = _size_guess(packets, start, n, self.capacity)
        if size:  # probably all of one size: copying checks that (nothing is visible yet)
            offsets = self._data_run(self.head, n)
            if _copy_run(self.sink, offsets, _run_of(packets, start, n), (), size):
                self._publish(_uniform_column(size, n), offsets, None)
                return _count_sent(self.counters, n, size * n)
        run = _lengths_of(packets, start, n)
        if run is None:
            return self._write_each(packets, start, free)
        seq, lengths = run
        size = lengths[0]
        cap = self.capacity
        same = lengths.count(size) == n
        if same and cap < size <= MAX_PACKET and -(-size // cap) <= self.ring.size:
            return self._write_chains(seq, size, free)
        if not _all_fit(lengths, same, cap):
            return self._write_each(packets, start, free)
        # The bulk path: every packet fits one buffer. Nothing is visible to the peer
        # until head moves, so a packet that turns out not to be plain bytes just sends
        # the whole call down the general path.
        offsets = self._data_run(self.head, n)
        if not _copy_run(self.sink, offsets, seq, lengths, size if same else 0):
            return self._write_each(packets, start, free)
        self._publish(_length_column(lengths, same), offsets, None)
        return _count_sent(self.counters, n, size * n if same else sum(lengths))

    def _write_chains(self, seq: Sequence[Any], size: int, free: int) -> int:
        """:meth:`write` of packets that all have the same size, over one buffer: each is
        a chain of ``k`` buffers; as many whole chains as fit."""
        head, cap = self.head, self.capacity
        k = -(-size // cap)
        count = min(len(seq), free // k)
        if not count:
            return 0
        offsets = self._data_run(head, count * k)
        if not _copy_chains(self.sink, offsets, seq[:count], size, cap):
            return self._write_each(seq, 0, free)
        lengths, flags = _chain_columns(size, cap, count)
        self._publish(lengths, offsets, flags)
        self.counters.chained += count
        return _count_sent(self.counters, count, size * count)

    def _write_one(self, packets: Sequence[Any], start: int, free: int) -> int:
        """:meth:`write` of one packet that fits one buffer (else the general path)."""
        p = packets[start]
        try:
            k = len(p)
        except TypeError:
            return self._write_each(packets, start, free)
        if not 0 < k <= self.capacity:
            return self._write_each(packets, start, free)
        ring, head = self.ring, self.head
        s = head & ring.mask
        o = self.data[s]
        try:
            self.sink[o : o + k] = p
        except (TypeError, ValueError, IndexError, BufferError):
            return self._write_each(packets, start, free)
        words = ring.words
        words[4 * s + 1] = k
        if self.dirty > 0:
            words[4 * s + 2] = o
            ring.halves[8 * s] = 0
            self.dirty -= 1
        self.head = head = (head + 1) & _MASK
        ring.header[_HEAD] = head
        c = self.counters
        c.packets += 1
        c.bytes += k
        return 1

    def _write_each(self, packets: Sequence[object], start: int, free: int) -> int:
        """The per-packet path of :meth:`write` (chains, conversions, errors)."""
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
        if nseg == 1:  # one buffer each: views straight from the data offsets
            region = self.region
            res.views = [region[o : o + size] for o in self._data_run(self.head, count)]
            res.lengths = [size] * count
            res.used = count
            self.reservation = res
            return res
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
        self._publish(lens, self._data_run(res.start, res.used), flags)
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
            self.data[s] = bufs[s] + self.headroom
            lens.append(length)
            offs.append(off)
        self.dirty = self.ring.size  # offsets inside buffers, not at their data start
        self._publish(lens, offs, flags)  # (with flags given, it keeps the ring dirty)


def _segment_lengths(
    res: Reservation, lengths: Sequence[int] | None
) -> tuple[array[int], array[int] | None]:
    """Segment lengths and flags of a reservation whose packets may have shrunk."""
    lens = array("I")
    flags: array[int] | None = None
    if lengths is not None and len(lengths) != res.count:
        raise LocalProtocolError("one length per reserved packet is required")
    if res.views is not None:  # one buffer per packet, all reserved with the same size
        if lengths is None:
            return _uniform_column(res.lengths[0], len(res.views)), None
        wanted = list(lengths)
        if min(wanted) > 0 and max(wanted) <= res.lengths[0]:
            return array("I", wanted), None
    for p, segs in enumerate(res.per_packet()):
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
