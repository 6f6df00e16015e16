"""Server transmit endpoint (pure): fill the buffers the client offered, then publish tail.

``MasterTx`` (server, M2S) copies into the buffers the client's descriptors name, each
descriptor checked before a byte is written. Packets larger than one offered buffer are
chained over consecutive slots, as in :mod:`aiomemif._core.client_tx`.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

from ..errors import LocalProtocolError, RemoteProtocolError
from . import wire as w
from .buffers import as_wire_buffer
from .client_tx import (
    MAX_PACKET,
    Reservation,
    _all_fit,
    _chain_columns,
    _copy_chains,
    _copy_run,
    _count_sent,
    _length_column,
    _lengths_of,
    _never_fits,
    _plain,
    _Reserving,
    _run_of,
    _segment_lengths,
    _sink,
    _size_guess,
    _too_large,
    _uniform_column,
)
from .descriptors import CheckedRuns
from .ring import QueueCounters, Ring, _descriptors_ok

__all__ = ["MasterTx"]

_MASK = w.MASK16
_NEXT = w.DESC_FLAG_NEXT
_HEAD = w.RING_HEAD_OFF // 2

#: Checks a run of offered descriptors (region, capacities, offsets) like received ones.
_offers_ok = _descriptors_ok
#: Fewest offered descriptors the per-packet path reads and checks at a time (checking
#: one costs about 0.2 us, so a single jumbo frame should not pay for a whole batch).
_READ_AHEAD = 8


def _more(offers: list[tuple[int, int, int] | None], left: int) -> int:
    """How many more offers ``left`` bytes probably need: sized by the last usable offer
    read (clients offer equal buffers), or 1 per 64 bytes if there is none yet."""
    last = offers[-1] if offers else None
    return -(-left // last[2]) if last is not None else left // 64 + 1


class MasterTx(_Reserving):
    """Server side of an M2S ring: fill the buffers the client offered and publish tail."""

    def __init__(self, ring: Ring, regions: Sequence[memoryview], counters: QueueCounters) -> None:
        self.ring = ring
        self.regions = list(regions)
        self.sizes = [len(r) for r in regions]
        #: Copies go through each region's mmap itself where the view covers all of it.
        self.sinks = [_sink(r) for r in regions]
        self.counters = counters
        self.tail = 0
        self.reservation: Reservation | None = None
        #: Offered runs that passed the checks, with their offsets and capacities.
        self.checked = CheckedRuns(ring.size)

    def reset(self) -> None:
        """At CONNECT: tail = 0, memo cleared."""
        self.ring.set_tail(0)
        self.tail = 0
        self.checked.clear()

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

    def _publish(self, lengths: array[int], flags: array[int] | None) -> None:
        """Write the lengths and flags (zero if None) of the slots from tail; move tail."""
        ring = self.ring
        ring.write_descriptors(self.tail, lengths, flags, None)
        self.tail = (self.tail + len(lengths)) & _MASK
        ring.header[ring.tail_index] = self.tail

    def _offers(self, avail: int, offers: list[tuple[int, int, int] | None], want: int) -> bool:
        """Extend ``offers`` (the checked offered slots from ``tail``) by up to ``want`` more
        slots, never past ``avail``; False when there are no more offered slots."""
        have = len(offers)
        count = min(avail - have, max(want, _READ_AHEAD))
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
            if pos >= len(offers) and not self._offers(avail, offers, _more(offers, left)):
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
        n = min(len(packets) - start, avail)
        if n < len(packets) - start and not _plain(packets[start + n], MAX_PACKET):
            return self._write_each(packets, start, avail)  # it decides about that packet
        if n == 1:
            return self._write_one(packets, start, avail)
        run = self._offered_run(n)
        if run is None:
            return self._write_each(packets, start, avail)
        region, offsets, caps = run
        cap = min(caps)
        size = _size_guess(packets, start, n, min(cap, MAX_PACKET))
        if size and _copy_run(self.sinks[region], offsets, _run_of(packets, start, n), (), size):
            self._publish(_uniform_column(size, n), None)  # all of one size, as guessed
            return _count_sent(self.counters, n, size * n)
        batch = _lengths_of(packets, start, n)
        if batch is None:
            return self._write_each(packets, start, avail)
        seq, lengths = batch
        size = lengths[0]
        same = lengths.count(size) == n
        if same and cap < size <= MAX_PACKET:
            return self._write_chains(seq, size, avail, cap)
        if not _all_fit(lengths, same, min(cap, MAX_PACKET)):
            return self._write_each(packets, start, avail)
        if not _copy_run(self.sinks[region], offsets, seq, lengths, size if same else 0):
            return self._write_each(packets, start, avail)
        self._publish(_length_column(lengths, same), None)
        return _count_sent(self.counters, n, size * n if same else sum(lengths))

    def _write_chains(self, seq: Sequence[Any], size: int, avail: int, cap: int) -> int:
        """:meth:`write` of packets that all have the same size, larger than the offered
        buffers (``cap``, the smallest in the first slots): as many whole chains as fit."""
        k = -(-size // cap)
        count = min(len(seq), avail // k)
        run = self._offered_run(count * k) if count else None
        if run is None:
            return self._write_each(seq, 0, avail)
        region, offsets, caps = run
        cap = caps[0]
        if caps.count(cap) != len(caps) or -(-size // cap) != k:  # uneven or smaller offers
            return self._write_each(seq, 0, avail)  # fit each packet on its own
        if not _copy_chains(self.sinks[region], offsets, seq[:count], size, cap):
            return self._write_each(seq, 0, avail)
        self._publish(*_chain_columns(size, cap, count))
        self.counters.chained += count
        _count_sent(self.counters, count, size * count)
        if count < len(seq) and avail > count * k:  # offers left over: maybe a bigger one
            count += self._write_each(seq, count, avail - count * k)
        return count

    def _offered_run(self, n: int) -> tuple[int, list[int], list[int]] | None:
        """The ``n`` offered slots from tail as (region, offsets, capacities), read from one
        snapshot, or None unless they are all usable and in one region.

        A client re-offers each slot with the same descriptor lap after lap, so runs that
        passed the checks are remembered (:class:`CheckedRuns`): an identical run later is
        known good from one comparison. A run recalled from the memo may combine slots
        remembered in different runs whose flags differ (a fresh check wants one first
        word); offer flags are ignored here and every slot was checked, so that is safe.
        """
        ring = self.ring
        slot = ring.mask & self.tail
        raw = ring.snapshot(self.tail, n)  # what is checked is what is used
        memo = self.checked if slot + n <= ring.size else None  # a wrapping run: afresh
        known = memo.recall(raw, slot, n) if memo is not None else None
        if known is not None:
            return known
        words = memoryview(raw).cast("I")
        head, caps, offsets = words[0::4].tolist(), words[1::4].tolist(), words[2::4].tolist()
        first = head[0]
        region = first >> 16
        if head.count(first) != n or not _offers_ok(region, caps, offsets, self.sizes):
            return None
        if memo is not None:
            memo.remember(raw, slot, region, offsets, caps)
        return region, offsets, caps

    def _write_one(self, packets: Sequence[Any], start: int, avail: int) -> int:
        """:meth:`write` of one packet into one usable offered buffer (else the general
        path)."""
        p = packets[start]
        ring, tail = self.ring, self.tail
        s = tail & ring.mask
        _flags, region, cap, offset, _meta = w.DESC.unpack_from(ring.desc, s * 16)
        try:
            k = len(p)
        except TypeError:
            return self._write_each(packets, start, avail)
        if not (0 < k <= cap and k <= MAX_PACKET) or not _offers_ok(
            region, [cap], [offset], self.sizes
        ):
            return self._write_each(packets, start, avail)
        try:
            self.sinks[region][offset : offset + k] = p
        except (TypeError, ValueError, IndexError, BufferError):
            return self._write_each(packets, start, avail)
        ring.words[4 * s + 1] = k
        ring.halves[8 * s] = 0
        self.tail = tail = (tail + 1) & _MASK
        ring.header[ring.tail_index] = tail
        c = self.counters
        c.packets += 1
        c.bytes += k
        return 1

    def _write_each(self, packets: Sequence[object], start: int, avail: int) -> int:
        """The per-packet path of :meth:`write` (chains, unusable offers, conversions)."""
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
        self._publish(lengths, flags)
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
        res = Reservation(self, self.tail)
        run = self._offered_run(count) if count <= avail else None
        if run is not None and size <= min(run[2]):  # one usable buffer each, in bulk
            region = self.regions[run[0]]
            res.views = [region[o : o + size] for o in run[1]]
            res.lengths = [size] * count
            res.used = count
            self.reservation = res
            return res
        offers: list[tuple[int, int, int] | None] = []
        self._offers(avail, offers, count)
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
        if not res.empty:  # nothing to interleave
            self._publish(seg_lens, seg_flags)
            return self._close(res, sum(seg_lens))
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
        self._publish(lens, flags)
        return self._close(res, sum(seg_lens), len(empty))
