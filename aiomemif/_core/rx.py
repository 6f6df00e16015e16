"""Receive endpoints (pure): scan what the peer published, check it, hand out views.

``ServerRx`` reads an S2M ring (the client publishes head, we give slots back by moving
tail); ``ClientRx`` reads an M2S ring (the server publishes tail into buffers we offered; we
refill and move head). Every descriptor is checked by :mod:`aiomemif._core.descriptors`
before a byte of it is read: on S2M against the regions, on M2S against the buffer we
offered in that slot (:class:`~aiomemif._core.descriptors.OfferedBuffers`), and every
packet (a whole chain too) against the largest frame we take (``max_frame``). Bad
descriptors, and packets too large, are counted as bad descriptors and skipped, their
slots still returned.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from itertools import accumulate, islice, repeat
from operator import add, sub
from typing import cast

from ..errors import RemoteProtocolError
from . import wire as w
from .buffers import ChainedPacket, ChainRun, Packet
from .chains import RunShape, RunShapes, pick
from .descriptors import (
    CheckedRuns,
    OfferedBuffers,
    Row,
    check_run,
    descriptor_ok,
    each_offered_ok,
    each_ok,
    offered_ok,
    offered_span_ok,
    span_ok,
)
from .ring import QueueCounters, Ring, descriptor_table

__all__ = ["ClientRx", "RxEndpoint", "RxRun", "ServerRx"]

_MASK = w.MASK16
_NEXT = w.DESC_FLAG_NEXT
_DESC = w.DESC
_HEAD = w.RING_HEAD_OFF // 2
_MAX_FRAME = w.DEFAULT_MAX_FRAME_BYTES


class RxRun:
    """What one :meth:`RxEndpoint.poll` took from the ring: the packets, and where they sit
    (``start``, the free-running index of the first slot; ``slots``, the first slot of each
    packet, or None when packet ``i`` simply sits in slot ``start + i``)."""

    __slots__ = ("packets", "slots", "start")

    def __init__(self, packets: list[Packet], start: int, slots: list[int] | None) -> None:
        self.packets = packets
        self.start = start
        self.slots = slots


class RxEndpoint:
    """Shared receive logic: scan published descriptors, validate, build views.

    ``max_frame`` is the largest packet taken (one descriptor, or a chain's total).
    """

    #: The client's table of the buffers it offered (None: a server checks regions).
    shadow: OfferedBuffers | None = None

    def __init__(
        self,
        ring: Ring,
        regions: Sequence[memoryview],
        counters: QueueCounters,
        max_frame: int = _MAX_FRAME,
    ) -> None:
        self.ring = ring
        self.regions = list(regions)
        self.sizes = [len(r) for r in regions]
        self.max_frame = max_frame
        self.counters = counters
        #: Next slot to read (free-running) and slots read but not yet given back.
        self.read = 0
        self.held = 0
        #: Runs that passed the checks (an identical run later needs one comparison).
        self.checked = CheckedRuns(ring.size)
        #: Shapes of chain runs that passed the checks (a run seen before is looked up).
        self.shapes = RunShapes()

    def _published(self) -> int:
        """Slots the peer has published from the oldest one we hold (role hook).

        Raises:
            RemoteProtocolError: the peer's index claims more than it may.
        """
        raise NotImplementedError

    def _one_ok(self, region: int, length: int, offset: int, slot: int) -> bool:
        """The check of one descriptor received in ring slot ``slot`` (role hook)."""
        return descriptor_ok(region, length, offset, self.sizes, self.max_frame)

    def _each_ok(self, rows: Sequence[Row], first: int) -> list[bool]:
        """:meth:`_one_ok` of each of ``rows``, received from slot ``first`` (role hook)."""
        return each_ok(rows, self.sizes, self.max_frame)

    def _span_ok(self, region: int, low: int, high: int, offsets: list[int], slot: int) -> bool:
        """The bulk check of a run received from ring slot ``slot``, its lengths between
        ``low`` and ``high`` (role hook)."""
        return span_ok(region, low, high, offsets, self.sizes, self.max_frame)

    def poll(self, limit: int) -> RxRun:
        """Return views of up to ``limit`` newly published packets (possibly none).

        Raises:
            RemoteProtocolError: the peer's index is out of range (head beyond the ring
                size on S2M; tail past the buffers we offered on M2S).
        """
        count = self._published() - self.held
        if count <= 0 or limit <= 0:
            return RxRun([], self.read, None)
        if count == 1 or limit == 1:  # (what _collect does first, one call sooner)
            return self._collect_one(self.read, count, limit)
        return self._collect(self.read, count, limit)

    def _collect(self, start: int, count: int, limit: int) -> RxRun:
        """Read up to ``count`` published slots; stop at a packet boundary after ``limit``."""
        n = min(count, limit)
        if n == 1:
            return self._collect_one(start, count, limit)
        ring = self.ring
        slot = start & ring.mask
        if ring.desc[16 * slot] & _NEXT:  # a chain first: not for the unchained check
            chains = self._collect_chains(start, count, limit)
            return self._collect_each(start, count, limit) if chains is None else chains
        raw = ring.snapshot(start, n)  # the bulk path checks and uses only this copy
        memo = self.checked if slot + n <= ring.size else None
        run = check_run(raw, slot, self.sizes, memo, limit=self.max_frame, shadow=self.shadow)
        if run is not None:
            return self._views(start, *run)
        if _NEXT in raw[0::16]:  # chains: perhaps a run of whole packets in one region
            chains = self._collect_chains(start, count, limit)
            if chains is not None:
                return chains
        return self._collect_each(start, count, limit)

    def _views(self, start: int, region: int, offsets: list[int], lengths: list[int]) -> RxRun:
        """:meth:`_collect` of checked unchained descriptors, one packet per slot."""
        mv = self.regions[region]
        size = lengths[0]
        n = len(offsets)
        if lengths.count(size) == n:
            pkts: list[Packet] = [mv[o : o + size] for o in offsets]
            return self._took(pkts, start, n, None, size * n)
        pkts = [mv[o : o + k] for o, k in zip(offsets, lengths, strict=True)]
        return self._took(pkts, start, n, None, sum(lengths))

    def _collect_chains(self, start: int, count: int, limit: int) -> RxRun | None:
        """:meth:`_collect` of a run of whole packets, chains among them (jumbo frames of
        one size or of many), all in one region with no flag but NEXT, or None for
        anything else: a bad descriptor, a chain over ``max_frame``, a chain cut off by
        the published index, or a run the bulk check refuses. Up to ``limit`` packets.

        A run whose flags, region and lengths were seen before (``shapes``) is looked up
        instead of parsed: only its offsets are checked then."""
        ring, shapes = self.ring, self.shapes
        used = shapes.guess
        if used and used <= count:
            raw = ring.snapshot(start, used)  # the one copy that is checked and used
            shape = shapes.recall(raw, limit)
            if shape is not None:
                return self._shaped(start, raw, shape)
        raw = ring.snapshot(start, count)  # the one copy that is checked and used
        shape = _shape_of(raw, count, limit)
        if shape is None:
            return None
        took = self._shaped(start, raw, shape)
        if took is not None:
            shapes.remember(raw[: 16 * shape.used], shape)
        return took

    def _shaped(self, start: int, raw: bytes, shape: RunShape) -> RxRun | None:
        """The packets of the run ``raw`` (a snapshot from free-running index ``start``)
        whose flags, region and lengths have the shape ``shape``, once its offsets and
        lengths pass the bulk check; None if they do not."""
        used = shape.used
        offsets = memoryview(raw)[: 16 * used].cast("I")[2::4].tolist()
        slot = start & self.ring.mask
        if shape.top > self.max_frame or not self._span_ok(
            shape.region, shape.low, shape.high, offsets, slot
        ):
            return None
        mv = self.regions[shape.region]
        run = ChainRun(mv, offsets, shape.lengths)
        chained = shape.chained
        if chained == len(shape.totals):
            run.packets = list(map(ChainedPacket._later, repeat(run), shape.spans, shape.totals))
            pkts: list[Packet] = cast("list[Packet]", run.packets)  # (the same list)
        else:  # one-buffer packets among the chains: plain views, as everywhere
            pkts = [
                ChainedPacket._later(run, (a, b), t)
                if b - a > 1
                else mv[offsets[a] : offsets[a] + t]
                for (a, b), t in zip(shape.spans, shape.totals, strict=True)
            ]
            run.packets = [p for p in pkts if isinstance(p, ChainedPacket)]
        slots = list(map(add, shape.firsts, repeat(start)))
        return self._took(pkts, start, used, slots, shape.nbytes, chained=chained)

    def _collect_one(self, start: int, count: int, limit: int) -> RxRun:
        """:meth:`_collect` of a single unchained descriptor (else the general path)."""
        ring = self.ring
        slot = start & ring.mask
        flags, region, length, offset, _meta = _DESC.unpack_from(ring.desc, slot * 16)
        if flags or not self._one_ok(region, length, offset, slot):
            return self._collect_each(start, count, limit)
        view = self.regions[region][offset : offset + length]
        self.read = (start + 1) & _MASK  # (_took of one packet in one slot, inlined)
        self.held += 1
        c = self.counters
        c.packets += 1
        c.bytes += length
        return RxRun([view], start, None)

    def _collect_each(self, start: int, count: int, limit: int) -> RxRun:
        """The per-descriptor path of :meth:`_collect`: chains, bad descriptors, mixed
        regions and wrap-around; each descriptor is checked on its own, and a chain whose
        total passes ``max_frame`` is dropped whole (counted once, as a bad descriptor)."""
        regions, max_frame = self.regions, self.max_frame
        pkts: list[Packet] = []
        append = pkts.append
        used = bad = nbytes = chained = 0
        slots: list[int] | None = None
        chain: list[memoryview] | None = None
        chain_bad = False
        chain_start = chain_bytes = 0
        for (flags, reg, length, off, _meta), ok in self._checked_rows(start, count, limit):
            slot = start + used
            used += 1
            if ok:
                view: memoryview | None = regions[reg][off : off + length]
            else:
                bad += 1
                view = None
            if chain is not None and view is not None and not chain_bad:
                chain_bytes += length
                if chain_bytes > max_frame:  # the chain so far, with this segment
                    chain_bad = True
                    bad += 1
            if flags & _NEXT:
                if chain is None:
                    chain, chain_bad, chain_start, chain_bytes = [], False, slot, length
                if view is None:
                    chain_bad = True
                else:
                    chain.append(view)
                continue
            if (chain is not None or view is None) and slots is None:
                slots = list(range(start, start + len(pkts)))  # no longer one per slot
            if chain is not None:
                if view is not None and not chain_bad:
                    chain.append(view)
                    packet = ChainedPacket._of(tuple(chain), chain_bytes)
                    nbytes += chain_bytes
                    chained += 1
                    slots.append(chain_start)  # type: ignore[union-attr]
                    append(packet)
                else:
                    for v in chain:
                        v.release()
                    if view is not None:
                        view.release()
                chain = None
            elif view is not None:
                nbytes += length
                if slots is not None:
                    slots.append(slot)
                append(view)
            if len(pkts) >= limit:
                break
        if chain is not None:  # a chain that runs past the published slots
            bad += 1
            for v in chain:
                v.release()
            if slots is None:
                slots = list(range(start, start + len(pkts)))
        return self._took(pkts, start, used, slots, nbytes, bad, chained)

    def _checked_rows(self, start: int, count: int, limit: int) -> Iterator[tuple[Row, bool]]:
        """The ``count`` descriptors from free-running index ``start``, each with its
        :meth:`_each_ok` verdict, unpacked and checked in growing chunks (``limit`` first: a
        packet takes at least one slot), so a poll that stops after ``limit`` packets does
        not check the whole published backlog."""
        rows_left = self.ring.descriptor_runs(start, count)
        chunk = max(limit, 8)
        first = start
        while rows := list(islice(rows_left, chunk)):
            yield from zip(rows, self._each_ok(rows, first), strict=True)
            first += len(rows)
            chunk *= 2

    def _took(
        self,
        pkts: list[Packet],
        start: int,
        used: int,
        slots: list[int] | None,
        nbytes: int,
        bad: int = 0,
        chained: int = 0,
    ) -> RxRun:
        """Record a collect of ``used`` slots from ``start`` (``slots``: the first slot of
        each packet, None if one packet per slot) and return it as a run."""
        self.read = (start + used) & _MASK
        self.held += used
        c = self.counters
        c.packets += len(pkts)
        c.bytes += nbytes
        c.bad_descriptors += bad
        c.chained += chained
        return RxRun(pkts, start, slots)


class ServerRx(RxEndpoint):
    """Server side of an S2M ring: receive what the client published, then advance tail."""

    def reset(self) -> None:
        """At CONNECT: tail = 0 and local cursors and memo cleared."""
        self.ring.set_tail(0)
        self.read = 0
        self.held = 0
        self.checked.clear()
        self.shapes.clear()

    def _published(self) -> int:
        ring = self.ring
        tail = (self.read - self.held) & _MASK
        published = (ring.header[_HEAD] - tail) & _MASK
        if published > ring.size:
            raise RemoteProtocolError("Ring head out of range")
        return published

    def release(self) -> None:
        """Give every held slot back to the client (publish tail)."""
        if self.held:
            self.held = 0
            self.ring.header[self.ring.tail_index] = self.read


class ClientRx(RxEndpoint):
    """Client side of an M2S ring: receive what the server published, then refill.

    What the server publishes in slot ``k`` is taken only from inside the buffer offered
    in slot ``k`` (``shadow``, :class:`~aiomemif._core.descriptors.OfferedBuffers`), by
    every receive path and by :meth:`owned_segments` (zero-copy forwarding) alike.
    """

    shadow: OfferedBuffers

    def __init__(
        self,
        ring: Ring,
        regions: Sequence[memoryview],
        counters: QueueCounters,
        region_index: int,
        buffers: array[int],
        buffer_size: int,
        headroom: int = 0,
        max_frame: int = _MAX_FRAME,
    ) -> None:
        super().__init__(ring, regions, counters, max_frame)
        self.region_index = region_index
        #: Offset of the buffer behind each slot (rewritten by zero-copy forwarding).
        self.buffers = buffers
        self.buffer_size = buffer_size
        self.headroom = headroom
        self.pristine = descriptor_table(buffers, region_index, headroom, buffer_size)
        #: What we offered in each slot, the only memory a received descriptor may name.
        self.shadow = OfferedBuffers(region_index, buffers, buffer_size, headroom)
        self.head = 0
        self.checked = CheckedRuns(ring.size, region_index)  # our buffers' region

    def _one_ok(self, region: int, length: int, offset: int, slot: int) -> bool:
        return offered_ok(region, length, offset, slot, self.shadow, self.max_frame)

    def _each_ok(self, rows: Sequence[Row], first: int) -> list[bool]:
        return each_offered_ok(rows, first, self.shadow, self.max_frame)

    def _span_ok(self, region: int, low: int, high: int, offsets: list[int], slot: int) -> bool:
        return offered_span_ok(region, low, high, offsets, slot, self.shadow, self.max_frame)

    def set_headroom(self, headroom: int) -> None:
        """Offer buffers with ``headroom`` bytes kept free in front (from the next refill)."""
        self.headroom = headroom
        self.pristine = descriptor_table(
            self.buffers, self.region_index, headroom, self.buffer_size
        )
        self.shadow.set_headroom(headroom)

    def retable(self, slots: Sequence[int]) -> None:
        """Rebuild the refill descriptors of ``slots`` after their buffers changed (and
        forget what was checked against the old buffers there)."""
        mask, h, length = self.ring.mask, self.headroom, self.buffer_size - self.headroom
        for slot in slots:
            k = slot & mask
            _DESC.pack_into(
                self.pristine, k * 16, 0, self.region_index, length, self.buffers[k] + h, 0
            )
        self.shadow.moved(slots)
        self.checked.forget(slots)

    def owned_segments(self, first: int, nseg: int) -> list[tuple[int, int, int]] | None:
        """(offset, length, slot) of the ``nseg`` descriptors from free-running slot
        ``first`` (one received packet), re-read and checked by the receive rule: each
        inside the buffer we offered in its own slot, the packet at most ``max_frame``
        bytes. None if not (the peer rewrote a descriptor since the receive)."""
        ring, shadow, limit = self.ring, self.shadow, self.max_frame
        out = []
        total = 0
        for slot in range(first, first + nseg):
            k = slot & ring.mask
            _flags, region, length, offset, _meta = _DESC.unpack_from(ring.desc, k * 16)
            if not offered_ok(region, length, offset, k, shadow, limit):
                return None
            total += length
            out.append((offset, length, slot))
        return out if total <= limit else None

    def refill(self) -> None:
        """Offer every free slot again with its own buffer (publishes head; no signal)."""
        ring = self.ring
        tail = (self.read - self.held) & _MASK
        target = (tail + ring.size) & _MASK
        count = (target - self.head) & _MASK
        if not count:
            return
        s = self.head & ring.mask
        first = min(count, ring.size - s)
        ring.desc[s * 16 : (s + first) * 16] = self.pristine[s * 16 : (s + first) * 16]
        if first < count:
            rest = (count - first) * 16
            ring.desc[:rest] = self.pristine[:rest]
        self.head = target
        ring.header[_HEAD] = target

    def _published(self) -> int:
        ring = self.ring
        consumed_tail = (self.read - self.held) & _MASK
        published = (ring.header[ring.tail_index] - consumed_tail) & _MASK
        if published > ((self.head - consumed_tail) & _MASK):
            raise RemoteProtocolError("Ring tail out of range")
        return published

    def release(self) -> None:
        """Return held slots and refill them."""
        if self.held:
            self.held = 0
            self.refill()


def _shape_of(raw: bytes, count: int, limit: int) -> RunShape | None:
    """The shape of the first ``limit`` packets of ``raw``, the snapshot of ``count``
    published descriptors, if they are whole packets (or all that was published is), all
    in one region with no flag but NEXT; else None. Offsets and limits are not looked at
    (:meth:`RxEndpoint._shaped` checks them)."""
    # The low flag bytes: 1 (NEXT) inside a chain, 0 at the end of each packet. What
    # they say is trusted only once the whole flags/region column agrees below.
    flags = raw[0::16]
    k = flags.find(0) + 1  # the first packet's buffers
    m = min(count // k, limit) if k else 0
    same = m and flags[: m * k] == flags[:k] * m and (m == limit or m * k == count)
    if same:  # packets of k buffers each (jumbo frames of one size)
        ks = [k - 1] * m
    else:
        parts = flags.split(b"\x00", limit)
        m = len(parts) - 1  # packets that end inside what was published (to limit)
        ks = list(map(len, parts[:m]))  # per packet, its buffers but one
    used = sum(ks) + m
    if not m or (m < limit and used < count):
        return None  # nothing whole, or something else follows: the general path
    # Every flags word NEXT (or 0 at a packet's end, as found), one region: compared
    # as byte columns, without making ints.
    end = 16 * used
    high, reg_lo, reg_hi = raw[1:end:16], raw[2:end:16], raw[3:end:16]
    if (
        flags.count(1, 0, used) != used - m
        or high.count(0) != used
        or reg_lo.count(reg_lo[0]) != used
        or reg_hi.count(reg_hi[0]) != used
    ):
        return None
    region = reg_lo[0] | reg_hi[0] << 8
    column = memoryview(raw)[:end].cast("I")[1::4]
    if same and column.tobytes() == column[:k].tobytes() * m:
        # Chains alike in every length (jumbo frames of one size): one chain's lengths
        # give every total and the bounds.
        one = column[:k].tolist()
        spans = range(0, used, k), range(k, used + k, k)
        return RunShape(limit, region, one * m, *spans, [sum(one)] * m, min(one), max(one))
    lengths = column.tolist()
    ends = list(accumulate(map(add, ks, repeat(1))))
    starts = [0, *ends[:-1]]
    prefix = [0, *accumulate(lengths)]
    totals = list(map(sub, pick(prefix, ends), pick(prefix, starts)))
    return RunShape(limit, region, lengths, starts, ends, totals, min(lengths), max(lengths))
