"""Rings in shared memory: u16 cursors, batch receive and transmit, validation (pure).

A :class:`Ring` is a typed view of one ring header plus its descriptor array inside a mapped
region. The four endpoint classes implement the four roles of §6 of the protocol:

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

from . import _wire as w
from .errors import PacketTooLargeError, RemoteProtocolError

__all__ = [
    "MasterRx",
    "MasterTx",
    "QueueCounters",
    "Ring",
    "SlaveRx",
    "SlaveTx",
    "as_wire_buffer",
    "init_ring",
    "ring_cookie_ok",
]

_MASK = w.MASK16
_NEXT = w.DESC_FLAG_NEXT
_DESC = w.DESC
_HEAD = w.RING_HEAD_OFF // 2
_FLAGS = w.RING_FLAGS_OFF // 2
_ZERO_FLAGS = array("H", bytes(2 * (1 << w.MAX_LOG2_RING_SIZE + 1)))


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


def pristine_descriptors(n: int, region: int, first_offset: int, stride: int, length: int) -> bytes:
    """Descriptors ``{flags 0, region, length, first_offset + k·stride, metadata 0}``."""
    out = bytearray(n * w.DESC_SIZE)
    for k in range(n):
        _DESC.pack_into(out, k * w.DESC_SIZE, 0, region, length, first_offset + k * stride, 0)
    return bytes(out)


def as_wire_buffer(packet: object) -> memoryview | bytes | bytearray:
    """Return ``packet`` as something a byte slice of shared memory accepts.

    bytes, bytearray and byte-format memoryviews pass through; other buffers are viewed as
    bytes; objects with ``__bytes__`` (scapy, dpkt) are converted.

    Raises:
        TypeError: the object is neither a buffer nor convertible with ``bytes()``.
    """
    if isinstance(packet, bytes | bytearray):
        return packet
    try:
        view = memoryview(packet)  # type: ignore[arg-type]
    except TypeError:
        if hasattr(packet, "__bytes__"):
            return bytes(packet)
        raise TypeError(f"cannot send {type(packet).__name__}: not bytes-like") from None
    if view.format == "B" and view.ndim == 1:
        return view
    return view.cast("B") if view.c_contiguous else view.tobytes()


class QueueCounters:
    """Mutable per-queue counters (snapshotted into ``QueueDetails`` for users)."""

    __slots__ = (
        "bad_descriptors",
        "bytes",
        "interrupts_received",
        "interrupts_sent",
        "packets",
        "ring_full",
    )

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.bad_descriptors = 0
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

    def write_lengths(self, start: int, lengths: array[int], flags: array[int] | None) -> None:
        """Store ``lengths`` (and flags, zero if None) into consecutive slots from ``start``."""
        count = len(lengths)
        s = start & self.mask
        first = min(count, self.size - s)
        words, halves = self.words, self.halves
        words[4 * s + 1 : 4 * (s + first) : 4] = lengths[:first]
        halves[8 * s : 8 * (s + first) : 8] = (
            _ZERO_FLAGS[:first] if flags is None else flags[:first]
        )
        if first < count:
            rest = count - first
            words[1 : 4 * rest : 4] = lengths[first:]
            halves[0 : 8 * rest : 8] = _ZERO_FLAGS[:rest] if flags is None else flags[first:]

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

    def _collect(self, start: int, count: int, limit: int) -> list[memoryview]:
        """Read up to ``count`` published slots; stop at a packet boundary after ``limit``."""
        regions, sizes = self.regions, self.sizes
        n_regions = len(regions)
        views: list[memoryview] = []
        append = views.append
        used = bad = nbytes = 0
        chain: list[memoryview] | None = None
        chain_bad = False
        for flags, reg, length, off, _meta in self.ring.descriptor_runs(start, count):
            used += 1
            if reg >= n_regions or length == 0 or off + length > sizes[reg]:
                bad += 1
                view = None
            else:
                view = regions[reg][off : off + length]
            if flags & _NEXT:
                if chain is None:
                    chain, chain_bad = [], False
                if view is None:
                    chain_bad = True
                else:
                    chain.append(view)
                continue
            if chain is not None:
                if view is not None and not chain_bad:
                    chain.append(view)
                    joined = memoryview(b"".join(chain))
                    nbytes += len(joined)
                    append(joined)
                for v in chain:
                    v.release()
                chain = None
            elif view is not None:
                nbytes += length
                append(view)
            if len(views) >= limit:
                break
        if chain is not None:  # a chain that runs past the published slots
            bad += 1
            for v in chain:
                v.release()
        self.read = (start + used) & _MASK
        self.held += used
        c = self.counters
        c.packets += len(views)
        c.bytes += nbytes
        c.bad_descriptors += bad
        return views


class MasterRx(_Receiver):
    """Master side of an S2M ring: receive what the slave published, then advance tail."""

    def reset(self) -> None:
        """At CONNECT: tail = 0 and local cursors cleared."""
        self.ring.set_tail(0)
        self.read = 0
        self.held = 0

    def poll(self, limit: int) -> list[memoryview]:
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
        pristine: bytes,
    ) -> None:
        super().__init__(ring, regions, counters)
        self.pristine = pristine
        self.head = 0

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

    def poll(self, limit: int) -> list[memoryview]:
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


class SlaveTx:
    """Slave side of an S2M ring: copy packets into its fixed buffers and publish head."""

    def __init__(
        self,
        ring: Ring,
        region: memoryview,
        buffers: int,
        buffer_size: int,
        counters: QueueCounters,
    ) -> None:
        self.ring = ring
        self.region = region
        self.buffers = buffers
        self.buffer_size = buffer_size
        self.counters = counters
        self.head = 0

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

    def write(self, packets: Sequence[object], start: int = 0) -> int:
        """Copy as many of ``packets[start:]`` as fit and publish them; return how many.

        Raises:
            PacketTooLargeError: a packet is empty or larger than one buffer (nothing of this
                call is published).
            TypeError: a packet is not bytes-like.
            RemoteProtocolError: see :meth:`free`.
        """
        k = min(self.free(), len(packets) - start)
        if k <= 0:
            return 0
        ring, region, bsize = self.ring, self.region, self.buffer_size
        mask, head, base = ring.mask, self.head, self.buffers
        lengths = array("I")
        append = lengths.append
        nbytes = 0
        for i in range(start, start + k):
            p = packets[i]
            if type(p) is not bytes:
                p = as_wire_buffer(p)
            n = len(p)
            if not 0 < n <= bsize:
                raise PacketTooLargeError(
                    f"packet of {n} bytes does not fit one {bsize}-byte buffer"
                )
            off = base + ((head + i - start) & mask) * bsize
            region[off : off + n] = p
            append(n)
            nbytes += n
        ring.write_lengths(head, lengths, None)
        self.head = (head + k) & _MASK
        ring.header[_HEAD] = self.head
        c = self.counters
        c.packets += k
        c.bytes += nbytes
        return k


class MasterTx:
    """Master side of an M2S ring: fill the buffers the slave offered and publish tail."""

    def __init__(self, ring: Ring, regions: Sequence[memoryview], counters: QueueCounters) -> None:
        self.ring = ring
        self.regions = list(regions)
        self.sizes = [len(r) for r in regions]
        self.counters = counters
        self.tail = 0

    def reset(self) -> None:
        """At CONNECT: tail = 0."""
        self.ring.set_tail(0)
        self.tail = 0

    def free(self) -> int:
        """Slots the slave has offered and we have not filled.

        Raises:
            RemoteProtocolError: head claims more than the ring size.
        """
        ring = self.ring
        offered = (ring.header[_HEAD] - self.tail) & _MASK
        if offered > ring.size:
            raise RemoteProtocolError("Ring head out of range")
        return offered

    def write(self, packets: Sequence[object], start: int = 0) -> int:
        """Copy as many of ``packets[start:]`` as fit into offered buffers; return how many.

        A slot whose descriptor names a buffer outside the slave's regions is counted as a
        bad descriptor and published empty (length 0); the packet goes to the next slot.

        Raises:
            PacketTooLargeError: a packet is empty or larger than the buffer offered for it
                (nothing of this call is published).
            TypeError: a packet is not bytes-like.
            RemoteProtocolError: see :meth:`free`.
        """
        avail = self.free()
        remaining = len(packets) - start
        if avail <= 0 or remaining <= 0:
            return 0
        regions, sizes = self.regions, self.sizes
        n_regions = len(regions)
        lengths = array("I")
        append = lengths.append
        i = start
        end = len(packets)
        bad = nbytes = 0
        for _flags, reg, cap, off, _meta in self.ring.descriptor_runs(self.tail, avail):
            if i == end:
                break
            if reg >= n_regions or cap == 0 or off + cap > sizes[reg]:
                bad += 1
                append(0)
                continue
            p = packets[i]
            if type(p) is not bytes:
                p = as_wire_buffer(p)
            n = len(p)
            if not 0 < n <= cap:
                raise PacketTooLargeError(
                    f"packet of {n} bytes does not fit the {cap}-byte buffer the peer offered"
                )
            regions[reg][off : off + n] = p
            append(n)
            nbytes += n
            i += 1
        used = len(lengths)
        self.ring.write_lengths(self.tail, lengths, None)
        self.tail = (self.tail + used) & _MASK
        self.ring.header[self.ring.tail_index] = self.tail
        c = self.counters
        c.packets += i - start
        c.bytes += nbytes
        c.bad_descriptors += bad
        return i - start
