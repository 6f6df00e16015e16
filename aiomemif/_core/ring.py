"""One ring in shared memory (pure): a typed view of its header and descriptor array.

A :class:`Ring` reads and writes the u16 cursors (head and tail, each a single 16-bit
element of a ``cast("H")`` view), the flags word and the descriptors of one ring inside a
mapped region; the endpoints built on it are in :mod:`~aiomemif._core.rx` (receive) and
:mod:`~aiomemif._core.tx` (transmit). Which side writes what (protocol §6):

============== ============ ===================================================
class          ring / role  writes
============== ============ ===================================================
``ClientTx``   S2M, client  buffers, descriptor length/flags, ``head``
``ServerRx``   S2M, server  ``tail`` (buffers go back when a batch is released)
``ClientRx``   M2S, client  descriptors of refilled slots, ``head``
``ServerTx``   M2S, server  buffers named by offered descriptors, length/flags, ``tail``
============== ============ ===================================================

Nothing here does I/O: signalling the peer's eventfd is the caller's job (``wants_signal``).
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Iterator, Sequence

from . import wire as w

__all__ = ["QueueCounters", "Ring", "descriptor_table", "init_ring", "ring_cookie_ok"]

_MASK = w.MASK16
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
