"""Descriptor columns of chains, made in bulk (pure): what a run of packets of many sizes
looks like in buffers of one capacity, and whether each packet's buffers adjoin.

A packet of ``n`` bytes in buffers of ``cap`` bytes takes ``k = ceil(n / cap)`` slots:
lengths ``cap`` except the last, flags NEXT except the last. :class:`ChainShapes`
remembers that per size (frames come in few sizes) as column bytes, so the columns of a
whole run are joined in C instead of being written slot by slot.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from itertools import accumulate, repeat
from operator import eq, itemgetter, sub
from typing import Final, final

from . import wire as w

__all__ = [
    "ChainShapes",
    "RunPlan",
    "RunShape",
    "RunShapes",
    "columns",
    "offset_gaps",
    "pick",
    "whole",
]

_NEXT = w.DESC_FLAG_NEXT
#: Sizes one :class:`ChainShapes` remembers (more: it forgets them all and starts again).
_SHAPES: Final = 4096
#: Received run shapes one :class:`RunShapes` remembers (more: it forgets them all).
_RUN_SHAPES: Final = 64

#: One size's shape: (lengths as u32 column bytes, flags as u16 column bytes, slots).
Shape = tuple[bytes, bytes, int]


def pick(values: Sequence[int] | bytes, indexes: Sequence[int]) -> tuple[int, ...]:
    """``values`` at ``indexes`` (one or more), in one C call."""
    if len(indexes) == 1:
        return (values[indexes[0]],)
    got: tuple[int, ...] = itemgetter(*indexes)(values)
    return got


def whole(gaps: bytes, bounds: Sequence[int]) -> bool:
    """True if each packet of a run lies in one piece of memory: ``gaps[j]`` is 0 where
    the buffer of slot ``j`` of the run is not followed by the next slot's, and every such
    gap falls on a packet's last slot (``bounds``)."""
    zeros = gaps.count(0)
    return not zeros or zeros == pick(gaps, bounds).count(0)


def offset_gaps(offsets: list[int], cap: int) -> bytes:
    """The ``gaps`` of :func:`whole` for buffers of ``cap`` bytes at ``offsets``."""
    return bytes(map(eq, map(sub, offsets[1:], offsets), repeat(cap))) + b"\x00"


class ChainShapes:
    """The :data:`Shape` of each packet size in buffers of ``cap`` bytes, remembered."""

    __slots__ = ("_known", "_plans", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._known: dict[int, Shape] = {}
        self._plans: dict[tuple[int, ...], RunPlan] = {}

    def plan(self, lengths: Sequence[int]) -> RunPlan:
        """The :class:`RunPlan` of packets of ``lengths`` (as for :meth:`of`), remembered
        per run of sizes: a sender sends the same run of sizes again and again."""
        key = tuple(lengths)
        plans = self._plans
        plan = plans.get(key)
        if plan is None:
            if len(plans) >= _RUN_SHAPES:
                plans.clear()
            plan = plans[key] = RunPlan(*self.of(key), key)
        return plan

    def of(
        self, lengths: Sequence[int]
    ) -> tuple[tuple[bytes, ...], tuple[bytes, ...], tuple[int, ...]]:
        """Per packet of ``lengths`` (1..65535 bytes each, one or more packets): its
        lengths column, its flags column and its slot count, as three tuples."""
        known = self._known
        get = itemgetter(*lengths)
        try:
            found = get(known)
        except KeyError:
            if len(known) > _SHAPES:
                known.clear()
            for n in lengths:
                if n not in known:
                    known[n] = self._shape(n)
            found = get(known)
        shapes: tuple[Shape, ...] = (found,) if len(lengths) == 1 else found
        lens, flags, ks = zip(*shapes, strict=True)
        return lens, flags, ks

    def _shape(self, n: int) -> Shape:
        cap = self.cap
        k = -(-n // cap)
        lens = array("I", [cap] * (k - 1) + [n - cap * (k - 1)])
        flags = array("H", [_NEXT] * (k - 1) + [0])
        return lens.tobytes(), flags.tobytes(), k


def columns(
    lens: Sequence[bytes], flags: Sequence[bytes], count: int
) -> tuple[array[int], array[int]]:
    """The lengths and flags columns of the first ``count`` packets' shapes."""
    return array("I", b"".join(lens[:count])), array("H", b"".join(flags[:count]))


@final
class RunPlan:
    """The descriptors of a run of whole packets (lengths ``sizes``, shapes from
    :meth:`ChainShapes.of`), worked out once: packet ``i`` takes the slots up to
    ``ends[i]`` from ``firsts[i]`` (``lasts[i]``, its last), ``slots`` in all; the
    ``lengths`` and ``flags`` columns of every slot, ``chained`` packets over one buffer,
    ``nbytes`` bytes, ``widest`` slots in the largest packet. Read only."""

    __slots__ = (
        "_shapes",
        "chained",
        "count",
        "ends",
        "firsts",
        "flags",
        "lasts",
        "lengths",
        "nbytes",
        "slots",
        "widest",
    )

    def __init__(
        self,
        lens: tuple[bytes, ...],
        flags: tuple[bytes, ...],
        ks: tuple[int, ...],
        sizes: tuple[int, ...],
    ) -> None:
        self._shapes = (lens, flags, ks, sizes)
        self.count = len(ks)
        self.ends = list(accumulate(ks))
        self.slots = self.ends[-1]
        self.firsts = [0, *self.ends[:-1]]
        self.lasts = list(map(sub, self.ends, repeat(1)))
        self.lengths, self.flags = columns(lens, flags, len(ks))
        self.chained = len(ks) - ks.count(1)
        self.nbytes = sum(sizes)
        self.widest = max(ks)

    def part(self, count: int) -> RunPlan:
        """The plan of the first ``count`` packets (1 or more), made afresh."""
        lens, flags, ks, sizes = self._shapes
        return RunPlan(lens[:count], flags[:count], ks[:count], sizes[:count])


@final
class RunShape:
    """What the flags, region and length words of a received run of whole packets say,
    worked out once for a poll of up to ``limit`` packets: the run takes ``used`` slots,
    packet ``i`` spans descriptors ``spans[i]`` (first, end) and ``totals[i]`` bytes.
    ``low`` and ``high`` are the smallest and largest descriptor length, ``top`` the
    largest packet. Nothing here depends on offsets or on the receiver's regions and
    limits: those are checked against the run each time it is used."""

    __slots__ = (
        "chained",
        "firsts",
        "high",
        "lengths",
        "limit",
        "low",
        "nbytes",
        "region",
        "spans",
        "top",
        "totals",
        "used",
    )

    def __init__(
        self,
        limit: int,
        region: int,
        lengths: list[int],
        firsts: Sequence[int],
        ends: Sequence[int],
        totals: Sequence[int],
        low: int,
        high: int,
    ) -> None:
        self.limit = limit
        self.region = region
        #: Every descriptor's length, shared (read only) by the runs made from the shape.
        self.lengths = lengths
        self.used = len(lengths)
        self.firsts = tuple(firsts)
        self.spans = tuple(zip(self.firsts, ends, strict=True))
        self.totals = tuple(totals)
        self.low = low
        self.high = high
        self.top = max(self.totals)
        self.nbytes = sum(self.totals)
        self.chained = len(self.totals) - list(map(sub, ends, self.firsts)).count(1)


class RunShapes:
    """The :class:`RunShape` of received runs, by the bytes they came from.

    The key of a run is the first eight bytes (flags, region, length) of each of its
    descriptors, taken from the one snapshot the receiver checks and uses; a run whose
    key was seen before has the same shape, so only its offsets are left to check.
    ``guess`` is the slot count of the last run remembered: in steady traffic the next
    run takes as many, so the receiver snapshots just that many to look it up.
    """

    __slots__ = ("_known", "guess")

    def __init__(self) -> None:
        self._known: dict[bytes, RunShape] = {}
        self.guess = 0

    def clear(self) -> None:
        """Forget every shape (a new connection)."""
        self._known.clear()
        self.guess = 0

    def recall(self, raw: bytes, limit: int) -> RunShape | None:
        """The shape of the run ``raw`` (a snapshot of whole descriptors) if it was
        remembered for ``limit`` packets, else None."""
        shape = self._known.get(key_of(raw))
        return shape if shape is not None and shape.limit == limit else None

    def remember(self, raw: bytes, shape: RunShape) -> None:
        """Keep ``shape``, the shape of the run whose snapshot is ``raw`` (exactly its
        ``shape.used`` descriptors), if it holds ``shape.limit`` packets: a shorter run
        ended where the published slots did, and more may follow next time."""
        if len(shape.totals) != shape.limit:
            return
        known = self._known
        if len(known) >= _RUN_SHAPES:
            known.clear()
        known[key_of(raw)] = shape
        self.guess = shape.used


def key_of(raw: bytes) -> bytes:
    """The flags, region and length words of every descriptor in ``raw``, as bytes."""
    return memoryview(raw).cast("Q")[0::2].tobytes()
