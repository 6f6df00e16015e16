"""Views of many buffers cut in one call (pure): slice objects kept per ring slot.

Cutting a view of shared memory (``region[o : o + n]``) in a Python loop makes, per
buffer, a slice object and two ints besides the memoryview itself. A :class:`SliceTable`
keeps one slice object per ring slot, made the first time the slot is cut at that offset
and length; a later cut of the same slots at the same offsets and lengths (a client's
buffers stay in their slots lap after lap; frames of one size keep their lengths) is one
comparison of the columns and one ``itemgetter`` call that makes only the memoryviews.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import add, itemgetter
from typing import Final

__all__ = ["SliceTable", "release_all"]

_UNUSED: Final = slice(0, 0)
_release = memoryview.release


def release_all(views: Iterable[memoryview]) -> None:
    """Release every view (one C-level pass: ``release`` returns None, so ``any`` reads
    them all).

    Raises:
        BufferError: a view was exported further (the views before it are released).
    """
    any(map(_release, views))


class SliceTable:
    """One slice object per ring slot, remembered with the offset and length it cuts."""

    __slots__ = ("_lens", "_offs", "_slices")

    def __init__(self, size: int) -> None:
        self._offs: list[int] = [-1] * size
        self._lens: list[int] = [-1] * size
        self._slices: list[slice] = [_UNUSED] * size

    def cut(
        self, view: memoryview, slot: int, offsets: list[int], lengths: list[int]
    ) -> tuple[memoryview, ...]:
        """The views ``view[offsets[i] : offsets[i] + lengths[i]]``, for the slots from
        ring slot ``slot`` (the caller keeps ``slot + len(offsets)`` inside the ring).

        Raises:
            ValueError: ``view`` was released, or the slots pass the ring's end, or there
                is not one length per offset (caller bugs; nothing is remembered then).
        """
        end = slot + len(offsets)
        if self._offs[slot:end] != offsets or self._lens[slot:end] != lengths:
            if end > len(self._offs) or len(lengths) != len(offsets):
                raise ValueError("a cut must stay inside the ring, one length per offset")
            self._slices[slot:end] = map(slice, offsets, map(add, offsets, lengths))
            self._offs[slot:end] = offsets
            self._lens[slot:end] = lengths
        if end - slot == 1:
            return (view[self._slices[slot]],)
        cut: tuple[memoryview, ...] = itemgetter(*self._slices[slot:end])(view)
        return cut

    def cut_equal(
        self, view: memoryview, slot: int, offsets: list[int], size: int
    ) -> tuple[memoryview, ...]:
        """:meth:`cut` with every length ``size``."""
        return self.cut(view, slot, offsets, [size] * len(offsets))
