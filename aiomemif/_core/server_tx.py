"""Server transmit endpoint (pure): fill the buffers the client offered, then publish tail.

``ServerTx`` (server, M2S) copies into the buffers the client's descriptors name, each
descriptor checked before a byte is written. Packets larger than one offered buffer are
chained over consecutive slots, as in :mod:`aiomemif._core.client_tx`.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from ..errors import LocalProtocolError, RemoteProtocolError
from . import wire as w
from .buffers import as_wire_buffer
from .chains import ChainShapes, offset_gaps, pick, whole
from .descriptors import CheckedRuns, check_run, descriptor_ok, each_ok
from .ring import QueueCounters, Ring
from .slices import SliceTable
from .tx import (
    MAX_PACKET,
    ByteSink,
    TxEndpoint,
    TxReservation,
    _bad_size,
    _chain_columns,
    _copy_chains,
    _copy_pieces,
    _copy_run,
    _count_sent,
    _never_fits,
    _run_of,
    _too_large,
)

__all__ = ["ServerTx"]

_MASK = w.MASK16
_NEXT = w.DESC_FLAG_NEXT
_HEAD = w.RING_HEAD_OFF // 2

#: Fewest offered descriptors the per-packet path reads and checks at a time (checking
#: one costs about 0.2 us, so a single jumbo frame should not pay for a whole batch).
_READ_AHEAD = 8


def _more(offers: list[tuple[int, int, int] | None], left: int) -> int:
    """How many more offers ``left`` bytes probably need: sized by the last usable offer
    read (clients offer equal buffers), or 1 per 64 bytes if there is none yet."""
    last = offers[-1] if offers else None
    return -(-left // last[2]) if last is not None else left // 64 + 1


class ServerTx(TxEndpoint):
    """Server side of an M2S ring: fill the buffers the client offered and publish tail."""

    def __init__(
        self,
        ring: Ring,
        regions: Sequence[memoryview],
        counters: QueueCounters,
        sinks: Sequence[ByteSink] | None = None,
    ) -> None:
        self.ring = ring
        self.regions = list(regions)
        self.sizes = [len(r) for r in regions]
        #: Where copies go, per region: its mmap if the OS layer gave them (faster for
        #: slice assignment), else the region's view.
        self.sinks: list[ByteSink] = list(regions) if sinks is None else list(sinks)
        self._plain_limit = MAX_PACKET
        self.counters = counters
        self.tail = 0
        self.reservation: TxReservation | None = None
        #: Offered runs that passed the checks, with their offsets and capacities.
        self.checked = CheckedRuns(ring.size)
        #: Slices that cut the views of zero-copy reservations, per region.
        self.cuts = [SliceTable(ring.size) for _ in self.regions]
        #: Per offered capacity, the descriptors of packets of each size (mixed runs).
        self.shapes: dict[int, ChainShapes] = {}
        #: Which offered buffers adjoin the next slot's (:meth:`_gaps`), for the offsets
        #: and the capacity they were found with.
        self._adjoin = bytearray(ring.size)
        self._adjoin_offsets = [-1] * ring.size
        self._adjoin_cap = -1

    def drop_sinks(self) -> None:
        """The link is down: stop referring to the regions' mmaps, so that a mapping a
        user's view still pins is freed together with that view."""
        self.sinks = list(self.regions)

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

    def _run(self, n: int) -> tuple[ByteSink, list[int], int] | None:
        run = self._offered_run(n)
        if run is None:
            return None
        region, offsets, caps = run
        return self.sinks[region], offsets, min(caps)

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
        rows = list(self.ring.descriptor_runs(self.tail + have, count))
        for (_f, reg, cap, off, _m), ok in zip(rows, each_ok(rows, self.sizes), strict=True):
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
        gaps = self._gaps(offsets, cap)
        if gaps.count(0) == gaps[k - 1 :: k].count(0):  # each chain one piece of memory
            copied = _copy_run(self.sinks[region], offsets[::k], seq[:count], (), size)
        else:
            copied = _copy_chains(self.sinks[region], offsets, seq[:count], size, cap, gaps)
        if not copied:
            return self._write_each(seq, 0, avail)
        self._publish(*_chain_columns(size, cap, count))
        self.counters.chained += count
        _count_sent(self.counters, count, size * count)
        return self._and_the_rest(seq, count, avail - count * k)

    def _write_mixed(self, seq: Sequence[Any], lengths: list[int], avail: int, cap: int) -> int:
        shapes = self.shapes.get(cap)
        if shapes is None:
            shapes = self.shapes[cap] = ChainShapes(cap)
        plan = shapes.plan(lengths)
        # Whole packets that fit, if every offer is cap.
        count = plan.count if plan.slots <= avail else bisect_right(plan.ends, avail)
        run = self._offered_run(plan.ends[count - 1]) if count else None
        if run is None:
            return self._write_each(seq, 0, avail)
        if count < plan.count:
            plan = plan.part(count)
        region, offsets, caps = run
        if caps.count(cap) != len(caps):
            return self._write_each(seq, 0, avail)  # uneven offers: fit each packet alone
        sink = self.sinks[region]
        gaps = self._gaps(offsets, cap)
        if whole(gaps, plan.lasts):  # every packet in one piece
            firsts = pick(offsets, plan.firsts)
            copied = _copy_run(sink, firsts, _run_of(seq, 0, count), lengths, 0)
        else:
            copied = _copy_pieces(sink, offsets, seq, lengths, plan.ends, cap, gaps)
        if not copied:
            return self._write_each(seq, 0, avail)
        self._publish(plan.lengths, plan.flags)
        self.counters.chained += plan.chained
        _count_sent(self.counters, count, plan.nbytes)
        return self._and_the_rest(seq, count, avail - plan.slots)

    def _gaps(self, offsets: list[int], cap: int) -> bytes:
        """:func:`~aiomemif._core.chains.offset_gaps` of the offered run from tail,
        remembered per slot: a client offers the same buffers lap after lap.

        ``_adjoin[j]`` says whether the remembered offers of slots ``j`` and ``j + 1``
        adjoin, both known (``_adjoin_offsets``); a run of known offers reads its gaps
        there, whatever runs they were remembered in."""
        s = self.tail & self.ring.mask
        e = s + len(offsets)
        if e > self.ring.size:  # (a run across the ring's end: afresh)
            return offset_gaps(offsets, cap)
        known, adjoin = self._adjoin_offsets, self._adjoin
        if cap == self._adjoin_cap and known[s:e] == offsets:
            return bytes(adjoin[s : e - 1]) + b"\x00"  # (the last: not this run's)
        gaps = offset_gaps(offsets, cap)
        if cap != self._adjoin_cap:
            known[:] = [-1] * self.ring.size
            self._adjoin_cap = cap
        known[s:e] = offsets
        adjoin[s : e - 1] = gaps[:-1]
        if e < len(known):  # the run's last offer against the one after it, if known
            adjoin[e - 1] = known[e] == offsets[-1] + cap
        if s:  # and the one before it against its first (if known: else it is set when
            adjoin[s - 1] = known[s - 1] + cap == offsets[0]  # that offer is remembered)
        return gaps

    def _and_the_rest(self, seq: Sequence[Any], count: int, avail: int) -> int:
        """After ``count`` packets of ``seq`` went in bulk: offers left over may still take
        more (a larger one); the per-packet path decides. Returns the packets sent."""
        if count < len(seq) and avail > 0:
            count += self._write_each(seq, count, avail)
        return count

    def _views(self, region: int, offsets: list[int], size: int) -> tuple[memoryview, ...]:
        """Views of ``size`` bytes at ``offsets`` in ``region``, the checked offered run
        from tail."""
        s, ring_size, cut, view = (
            self.tail & self.ring.mask,
            self.ring.size,
            self.cuts[region],
            self.regions[region],
        )
        count = len(offsets)
        if s + count <= ring_size:
            return cut.cut_equal(view, s, offsets, size)
        first = ring_size - s
        return cut.cut_equal(view, s, offsets[:first], size) + cut.cut_equal(
            view, 0, offsets[first:], size
        )

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
        return check_run(raw, slot, self.sizes, memo, offers=True)

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
        if not (0 < k <= cap and k <= MAX_PACKET) or not descriptor_ok(
            region, cap, offset, self.sizes
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
                raise _bad_size(n)
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
    def reserve(self, count: int, size: int) -> TxReservation | None:
        """Reserve ``count`` packets of ``size`` bytes in offered buffers (see ClientTx).

        Raises:
            EmptyPacketError: ``size`` is 0.
            PacketTooLargeError: ``size`` is over 65535, or one packet does not fit in
                all the buffers the client offers in the whole ring.
            ConfigurationError: the packets together never fit in the offered ring.
            LocalProtocolError: a reservation is already open on this ring.
            RemoteProtocolError: the client's head is out of range (see :meth:`free`).
        """
        if self.reservation is not None:
            raise LocalProtocolError("a reservation is already open on this queue")
        if not 0 < size <= MAX_PACKET:
            raise _bad_size(size)
        avail = self.free()
        res = TxReservation(self.tail, size)
        run = self._offered_run(count) if count <= avail else None
        if run is not None and size <= min(run[2]):  # one usable buffer each, in bulk
            res.views = self._views(run[0], run[1], size)
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
            pos = first + len(segs)
        res.used = pos
        self.reservation = res
        return res
