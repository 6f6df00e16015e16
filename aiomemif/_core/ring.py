"""Rings in shared memory: u16 cursors, batch receive and transmit, validation (pure).

A :class:`Ring` is a typed view of one ring header plus its descriptor array inside a mapped
region. The four endpoint classes implement the four roles of §6 of the protocol (the two
transmitters live in :mod:`aiomemif._core.client_tx` and :mod:`aiomemif._core.server_tx`):

============== ============ ===================================================
class          ring / role  writes
============== ============ ===================================================
``SlaveTx``    S2M, slave   buffers, descriptor length/flags, ``head``
``MasterRx``   S2M, master  ``tail`` (buffers go back when a batch is released)
``SlaveRx``    M2S, slave   descriptors of refilled slots, ``head``
``MasterTx``   M2S, master  buffers named by offered descriptors, length/flags, ``tail``
============== ============ ===================================================

Nothing here does I/O: signalling the peer's eventfd is the caller's job (``wants_signal``).
Every index read from shared memory is checked (``count <= ring size``) and every received
descriptor is checked (region exists, ``0 < length``, ``offset + length`` inside the region)
before a byte is read; bad descriptors are counted and skipped, their slots still returned.
head and tail are read and written as single 16-bit elements of a ``cast("H")`` view.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Iterator, Sequence

from ..errors import RemoteProtocolError
from . import wire as w
from .buffers import ChainedPacket, Packet
from .descriptors import CheckedRuns

__all__ = [
    "MasterRx",
    "QueueCounters",
    "Ring",
    "SlaveRx",
    "descriptor_table",
    "init_ring",
    "ring_cookie_ok",
]

_MASK = w.MASK16
_NEXT = w.DESC_FLAG_NEXT
_DESC = w.DESC
_HEAD = w.RING_HEAD_OFF // 2
_FLAGS = w.RING_FLAGS_OFF // 2
_ZERO_FLAGS = array("H", bytes(2 * (1 << w.MAX_LOG2_RING_SIZE + 1)))
#: From this many descriptors on, a run is first tested for equal flags, region and
#: length by comparing bytes (``_uniform``) before any int lists are made (measured with
#: the earlier two-column form: 12% faster at 256, 5-10% slower at 32).
_BYTES_RUN = 64


def _descriptors_ok(
    region: int, lengths: list[int], offsets: list[int], limits: Sequence[int]
) -> bool:
    """True if every descriptor of a run (all naming ``region``) is usable as it stands:
    the region exists, every length is positive and every buffer ends inside the region
    (checked conservatively: the largest offset plus the largest length). ``lengths`` is the
    run's lengths, or a single length that all of them share. A run that fails goes
    through the per-descriptor path, which checks and counts each descriptor."""
    if region >= len(limits):
        return False
    size = lengths[0]
    if lengths.count(size) == len(lengths):
        return size > 0 and max(offsets) + size <= limits[region]
    return min(lengths) > 0 and max(offsets) + max(lengths) <= limits[region]


def _uniform(raw: bytes, count: int) -> bool:
    """True if the ``count`` descriptors in ``raw`` all share their first eight bytes
    (flags, region and length), compared as bytes without making int objects."""
    firsts = memoryview(raw).cast("Q")[0::2].tobytes()
    return firsts == firsts[:8] * count


def ring_cookie_ok(region: memoryview, offset: int) -> bool:
    """True if a valid ring cookie sits at ``offset`` (the caller checked the bounds)."""
    return bool(w.COOKIE_STRUCT.unpack_from(region, offset)[0] == w.COOKIE)


def init_ring(region: memoryview, offset: int, cacheline: int, descriptors: bytes) -> None:
    """Write a fresh ring header (cookie, flags 0, head 0, tail 0) and its descriptors."""
    header = bytearray(2 * cacheline)
    w.COOKIE_STRUCT.pack_into(header, 0, w.COOKIE)
    region[offset : offset + 2 * cacheline] = header
    start = offset + 2 * cacheline
    region[start : start + len(descriptors)] = descriptors


def descriptor_table(
    buffers: Sequence[int], region: int, headroom: int, buffer_size: int
) -> bytearray:
    """Descriptors ``{flags 0, region, length B - headroom, offset buffer + headroom}``."""
    out = bytearray(len(buffers) * w.DESC_SIZE)
    length = buffer_size - headroom
    for k, base in enumerate(buffers):
        _DESC.pack_into(out, k * w.DESC_SIZE, 0, region, length, base + headroom, 0)
    return out


class QueueCounters:
    """Mutable per-queue counters (snapshotted into ``QueueDetails`` for users)."""

    __slots__ = (
        "bad_descriptors",
        "bytes",
        "chained",
        "interrupts_received",
        "interrupts_sent",
        "packets",
        "ring_full",
    )

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.bad_descriptors = 0
        self.chained = 0
        self.ring_full = 0
        self.interrupts_sent = 0
        self.interrupts_received = 0


class Ring:
    """Views of one ring header and its descriptors inside a region's memoryview."""

    def __init__(
        self, region: memoryview, offset: int, log2_ring_size: int, cacheline: int
    ) -> None:
        self.size = 1 << log2_ring_size
        self.mask = self.size - 1
        self.offset = offset
        self.cacheline = cacheline
        self.tail_index = cacheline // 2
        self.header = region[offset : offset + 2 * cacheline].cast("H")
        start = offset + 2 * cacheline
        self.desc = region[start : start + w.DESC_SIZE * self.size]
        self.words = self.desc.cast("I")
        self.halves = self.desc.cast("H")

    @property
    def head(self) -> int:
        return self.header[_HEAD]

    @property
    def tail(self) -> int:
        return self.header[self.tail_index]

    @property
    def flags(self) -> int:
        return self.header[_FLAGS]

    def set_flags(self, value: int) -> None:
        self.header[_FLAGS] = value

    def set_head(self, value: int) -> None:
        self.header[_HEAD] = value & _MASK

    def set_tail(self, value: int) -> None:
        self.header[self.tail_index] = value & _MASK

    def wants_signal(self) -> bool:
        """True if the ring's receiver asks to be signalled (MASK_INT clear)."""
        return not self.header[_FLAGS] & w.RING_FLAG_MASK_INT

    def descriptor_runs(self, start: int, count: int) -> Iterator[tuple[int, int, int, int, int]]:
        """Unpack ``count`` descriptors from free-running index ``start`` (wrapping once)."""
        s = start & self.mask
        first = min(count, self.size - s)
        it = _DESC.iter_unpack(self.desc[s * 16 : (s + first) * 16])
        if first == count:
            return it
        return itertools.chain(it, _DESC.iter_unpack(self.desc[: (count - first) * 16]))

    def columns(self, start: int, count: int) -> tuple[list[int], list[int], list[int]]:
        """The first word (flags | region << 16), length and offset of ``count``
        descriptors from free-running index ``start`` (wrapping once), as lists."""
        s = start & self.mask
        words = self.words
        if s + count <= self.size:
            a, b = 4 * s, 4 * (s + count)
            return (
                words[a:b:4].tolist(),
                words[a + 1 : b : 4].tolist(),
                words[a + 2 : b : 4].tolist(),
            )
        a, b = 4 * s, 4 * (s + count - self.size)
        return (
            words[a::4].tolist() + words[:b:4].tolist(),
            words[a + 1 :: 4].tolist() + words[1:b:4].tolist(),
            words[a + 2 :: 4].tolist() + words[2:b:4].tolist(),
        )

    def snapshot(self, start: int, count: int) -> bytes:
        """The raw bytes of ``count`` descriptors from free-running index ``start``
        (wrapping once): one copy that is then both compared and parsed."""
        s = start & self.mask
        desc = self.desc
        if s + count <= self.size:
            return desc[16 * s : 16 * (s + count)].tobytes()
        return desc[16 * s :].tobytes() + desc[: 16 * (s + count - self.size)].tobytes()

    def write_descriptors(
        self,
        start: int,
        lengths: array[int],
        flags: array[int] | None,
        offsets: array[int] | None,
    ) -> None:
        """Store lengths, flags (zero if None) and offsets (unchanged if None) into
        consecutive slots from free-running index ``start``, wrapping once."""
        count = len(lengths)
        s = start & self.mask
        first = min(count, self.size - s)
        words, halves = self.words, self.halves
        for lo, n, a, b in ((s, first, 0, first), (0, count - first, first, count)):
            if n <= 0:
                continue
            words[4 * lo + 1 : 4 * (lo + n) : 4] = lengths[a:b]
            halves[8 * lo : 8 * (lo + n) : 8] = _ZERO_FLAGS[:n] if flags is None else flags[a:b]
            if offsets is not None:
                words[4 * lo + 2 : 4 * (lo + n) : 4] = offsets[a:b]

    def release(self) -> None:
        """Release every view into the region (required before the region is unmapped)."""
        for view in (self.words, self.halves, self.desc, self.header):
            view.release()


class _Receiver:
    """Shared receive logic: scan published descriptors, validate, build views."""

    def __init__(self, ring: Ring, regions: Sequence[memoryview], counters: QueueCounters) -> None:
        self.ring = ring
        self.regions = list(regions)
        self.sizes = [len(r) for r in regions]
        self.counters = counters
        #: Next slot to read (free-running) and slots read but not yet given back.
        self.read = 0
        self.held = 0
        self.last_start = 0
        self.last_slots: list[int] | None = None
        #: Runs that passed the checks (an identical run later needs one comparison).
        self.checked = CheckedRuns(ring.size)

    def _collect(self, start: int, count: int, limit: int) -> list[Packet]:
        """Read up to ``count`` published slots; stop at a packet boundary after ``limit``.

        Sets ``last_start`` and ``last_slots`` (the first slot of each packet, or None when
        packet ``i`` simply sits in slot ``last_start + i``).
        """
        n = min(count, limit)
        if n == 1:
            return self._collect_one(start, count, limit)
        ring = self.ring
        raw = ring.snapshot(start, n)  # the bulk path checks and uses only this copy
        slot = start & ring.mask
        memo = self.checked if slot + n <= ring.size else None
        known = memo.recall(raw, slot, n) if memo is not None else None
        if known is not None:  # the same bytes passed the checks before: same packets
            return self._views(start, *known)
        words = memoryview(raw).cast("I")
        first = words[0]  # flags | region << 16: a run without chains in one region
        if n >= _BYTES_RUN and not first & 0xFFFF and _uniform(raw, n):
            lengths = [words[1]]  # all equal: no int lists for two columns
        else:
            head, lengths = words[0::4].tolist(), words[1::4].tolist()
            if first & 0xFFFF or head.count(first) != n:
                if first & 0xFFFF == _NEXT:
                    chains = self._collect_chains(start, count, limit, head)
                    if chains is not None:
                        return chains
                return self._collect_each(start, count, limit)
        offsets = words[2::4].tolist()
        region = first >> 16
        if not _descriptors_ok(region, lengths, offsets, self.sizes):
            return self._collect_each(start, count, limit)
        if len(lengths) == 1:
            lengths *= n
        if memo is not None:
            memo.remember(raw, slot, region, offsets, lengths)
        return self._views(start, region, offsets, lengths)

    def _views(
        self, start: int, region: int, offsets: list[int], lengths: list[int]
    ) -> list[Packet]:
        """:meth:`_collect` of checked unchained descriptors, one packet per slot."""
        mv = self.regions[region]
        size = lengths[0]
        n = len(offsets)
        if lengths.count(size) == n:
            pkts: list[Packet] = [mv[o : o + size] for o in offsets]
            return self._took(pkts, start, n, None, size * n)
        pkts = [mv[o : o + k] for o, k in zip(offsets, lengths, strict=True)]
        return self._took(pkts, start, n, None, sum(lengths))

    def _collect_chains(
        self, start: int, count: int, limit: int, head: list[int]
    ) -> list[Packet] | None:
        """:meth:`_collect` of a run of equally long chains in one region (jumbo frames of
        one size), or None for anything else. Only whole chains are taken."""
        first = head[0]
        end = first ^ _NEXT  # the last descriptor of a chain: same region, no flags
        try:
            k = head.index(end) + 1
        except ValueError:
            if len(head) == count:
                return None  # no chain ends inside the published slots
            k = 0
        if not k:  # the first chain is longer than what we read: read more
            head = self.ring.columns(start, count)[0]
            if end not in head:
                return None
            k = head.index(end) + 1
        m = min(count // k, limit)
        used = m * k
        if m < limit and used < count:
            return None  # something else follows: the general path takes it all
        head, lengths, offsets = self.ring.columns(start, used)
        region = end >> 16
        if head != ([first] * (k - 1) + [end]) * m or not _descriptors_ok(
            region, lengths, offsets, self.sizes
        ):
            return None
        mv = self.regions[region]
        views = [mv[o : o + n] for o, n in zip(offsets, lengths, strict=True)]
        pkts: list[Packet] = [
            ChainedPacket._of(tuple(views[i : i + k]), sum(lengths[i : i + k]))
            for i in range(0, used, k)
        ]
        slots = list(range(start, start + used, k))
        return self._took(pkts, start, used, slots, sum(lengths), chained=m)

    def _collect_one(self, start: int, count: int, limit: int) -> list[Packet]:
        """:meth:`_collect` of a single unchained descriptor (else the general path)."""
        ring = self.ring
        flags, region, length, offset, _meta = _DESC.unpack_from(
            ring.desc, (start & ring.mask) * 16
        )
        sizes = self.sizes
        if flags or region >= len(sizes) or not 0 < length <= sizes[region] - offset:
            return self._collect_each(start, count, limit)
        return self._took([self.regions[region][offset : offset + length]], start, 1, None, length)

    def _collect_each(self, start: int, count: int, limit: int) -> list[Packet]:
        """The per-descriptor path of :meth:`_collect`: chains, bad descriptors, mixed
        regions and wrap-around; each descriptor is checked on its own."""
        regions, sizes = self.regions, self.sizes
        n_regions = len(regions)
        pkts: list[Packet] = []
        append = pkts.append
        used = bad = nbytes = chained = 0
        slots: list[int] | None = None
        chain: list[memoryview] | None = None
        chain_bad = False
        chain_start = 0
        for flags, reg, length, off, _meta in self.ring.descriptor_runs(start, count):
            slot = start + used
            used += 1
            if reg >= n_regions or length == 0 or off + length > sizes[reg]:
                bad += 1
                view = None
            else:
                view = regions[reg][off : off + length]
            if flags & _NEXT:
                if chain is None:
                    chain, chain_bad, chain_start = [], False, slot
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
                    packet = ChainedPacket(chain)
                    nbytes += len(packet)
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

    def _took(
        self,
        pkts: list[Packet],
        start: int,
        used: int,
        slots: list[int] | None,
        nbytes: int,
        bad: int = 0,
        chained: int = 0,
    ) -> list[Packet]:
        """Record a collect of ``used`` slots from ``start`` (``slots``: the first slot of
        each packet, None if one packet per slot) and return its packets."""
        self.last_start = start
        self.last_slots = slots
        self.read = (start + used) & _MASK
        self.held += used
        c = self.counters
        c.packets += len(pkts)
        c.bytes += nbytes
        c.bad_descriptors += bad
        c.chained += chained
        return pkts


class MasterRx(_Receiver):
    """Master side of an S2M ring: receive what the slave published, then advance tail."""

    def reset(self) -> None:
        """At CONNECT: tail = 0 and local cursors and memo cleared."""
        self.ring.set_tail(0)
        self.read = 0
        self.held = 0
        self.checked.clear()

    def poll(self, limit: int) -> list[Packet]:
        """Return views of up to ``limit`` newly published packets (possibly none).

        Raises:
            RemoteProtocolError: head claims more than the ring size.
        """
        ring = self.ring
        tail = (self.read - self.held) & _MASK
        published = (ring.header[_HEAD] - tail) & _MASK
        if published > ring.size:
            raise RemoteProtocolError("Ring head out of range")
        count = published - self.held
        if count <= 0 or limit <= 0:
            return []
        return self._collect(self.read, count, limit)

    def release(self) -> None:
        """Give every held slot back to the slave (publish tail)."""
        if self.held:
            self.held = 0
            self.ring.header[self.ring.tail_index] = self.read


class SlaveRx(_Receiver):
    """Slave side of an M2S ring: receive what the master published, then refill."""

    def __init__(
        self,
        ring: Ring,
        regions: Sequence[memoryview],
        counters: QueueCounters,
        region_index: int,
        buffers: array[int],
        buffer_size: int,
        headroom: int = 0,
    ) -> None:
        super().__init__(ring, regions, counters)
        self.region_index = region_index
        #: Offset of the buffer behind each slot (rewritten by zero-copy forwarding).
        self.buffers = buffers
        self.buffer_size = buffer_size
        self.headroom = headroom
        self.pristine = descriptor_table(buffers, region_index, headroom, buffer_size)
        self.head = 0
        self.checked = CheckedRuns(ring.size, region_index)  # our buffers' region

    def set_headroom(self, headroom: int) -> None:
        """Offer buffers with ``headroom`` bytes kept free in front (from the next refill)."""
        self.headroom = headroom
        self.pristine = descriptor_table(
            self.buffers, self.region_index, headroom, self.buffer_size
        )

    def retable(self, slots: Sequence[int]) -> None:
        """Rebuild the refill descriptors of ``slots`` after their buffers changed."""
        mask, h, length = self.ring.mask, self.headroom, self.buffer_size - self.headroom
        for slot in slots:
            k = slot & mask
            _DESC.pack_into(
                self.pristine, k * 16, 0, self.region_index, length, self.buffers[k] + h, 0
            )

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

    def poll(self, limit: int) -> list[Packet]:
        """Return views of up to ``limit`` packets the master published (possibly none).

        Raises:
            RemoteProtocolError: tail moved past the buffers we offered.
        """
        ring = self.ring
        consumed_tail = (self.read - self.held) & _MASK
        published = (ring.header[ring.tail_index] - consumed_tail) & _MASK
        if published > ((self.head - consumed_tail) & _MASK):
            raise RemoteProtocolError("Ring tail out of range")
        count = published - self.held
        if count <= 0 or limit <= 0:
            return []
        return self._collect(self.read, count, limit)

    def release(self) -> None:
        """Return held slots and refill them."""
        if self.held:
            self.held = 0
            self.refill()
