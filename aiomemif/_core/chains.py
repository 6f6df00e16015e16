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
from itertools import repeat
from operator import eq, itemgetter, sub
from typing import Final

from . import wire as w

__all__ = ["ChainShapes", "columns", "offset_gaps", "pick", "whole"]

_NEXT = w.DESC_FLAG_NEXT
#: Sizes one :class:`ChainShapes` remembers (more: it forgets them all and starts again).
_SHAPES: Final = 4096

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

    __slots__ = ("_known", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._known: dict[int, Shape] = {}

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
