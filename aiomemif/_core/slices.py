"""Views of many buffers cut in one call (pure): slice objects kept per ring slot.

Cutting a view of shared memory (``region[o : o + n]``) in a Python loop makes, per
buffer, a slice object and two ints besides the memoryview itself. A :class:`SliceTable`
keeps one slice object per ring slot, made the first time the slot is cut at that offset
and length; a later cut of the same slots at the same offsets and lengths (a client's
buffers stay in their slots lap after lap; frames of one size keep their lengths) is one
comparison of the columns and one ``itemgetter`` call that makes only the memoryviews.
A :class:`RunCuts` goes one step further for slots whose offsets stay put (a client's own
buffers): it keeps the ``itemgetter`` of each run of slots it cut, so a run cut again is
one dictionary look-up and that call.
"""

from __future__ import annotations

from itertools import repeat
from operator import add, itemgetter
from typing import Final

__all__ = ["RunCuts", "SliceTable"]

_UNUSED: Final = slice(0, 0)
#: Lengths of equal cuts remembered at a time (more: all are forgotten, then remembered
#: again as they come).
_LENGTHS: Final = 8
#: Rings' worth of slots that :class:`RunCuts` remembers getters for (more: all are
#: forgotten, then remembered again as they come).
_RUN_LAPS: Final = 4


class SliceTable:
    """One slice object per ring slot, remembered with the offset and length it cuts; and
    for cuts of one length (zero-copy reservations), per length, with the offset only."""

    __slots__ = ("_equal", "_lens", "_offs", "_ring", "_slices")

    def __init__(self, size: int) -> None:
        self._ring = size
        self._offs: list[int] = [-1] * size
        self._lens: list[int] = [-1] * size
        self._slices: list[slice] = [_UNUSED] * size
        #: Per length, (offsets, slices) per ring slot.
        self._equal: dict[int, tuple[list[int], list[slice]]] = {}

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
            if end > self._ring or len(lengths) != len(offsets):
                raise ValueError("a cut must stay inside the ring, one length per offset")
            self._slices[slot:end] = map(slice, offsets, map(add, offsets, lengths))
            self._offs[slot:end] = offsets
            self._lens[slot:end] = lengths
        return _cut(view, self._slices, slot, end)

    def cut_equal(
        self, view: memoryview, slot: int, offsets: list[int], size: int
    ) -> tuple[memoryview, ...]:
        """:meth:`cut` with every length ``size``.

        Raises:
            ValueError: as :meth:`cut`.
        """
        known = self._equal.get(size)
        if known is None:
            if len(self._equal) >= _LENGTHS:
                self._equal.clear()
            known = self._equal[size] = ([-1] * self._ring, [_UNUSED] * self._ring)
        offs, slices = known
        end = slot + len(offsets)
        if offs[slot:end] != offsets:
            if end > self._ring:
                raise ValueError("a cut must stay inside the ring, one length per offset")
            slices[slot:end] = map(slice, offsets, map(add, offsets, repeat(size)))
            offs[slot:end] = offsets
        return _cut(view, slices, slot, end)


def _cut(view: memoryview, slices: list[slice], slot: int, end: int) -> tuple[memoryview, ...]:
    """``view`` cut by ``slices[slot:end]``, in one call."""
    if end - slot == 1:
        return (view[slices[slot]],)
    cut: tuple[memoryview, ...] = itemgetter(*slices[slot:end])(view)
    return cut


class RunCuts:
    """Per run of slots and size, the ``itemgetter`` that cuts the views of that run in one
    call, for a ring whose slots keep their offsets (a client's own buffers): a run cut
    again (batch after batch, lap after lap) costs one dictionary look-up and the views.

    ``offsets`` is the owner's list of the slots' offsets, read when a run is first cut;
    the owner calls :meth:`forget` whenever it changes one (forwarding moves buffers).
    """

    __slots__ = ("_getters", "_held", "_offsets", "_ring")

    def __init__(self, offsets: list[int]) -> None:
        self._offsets = offsets
        self._ring = len(offsets)
        self._getters: dict[tuple[int, int, int], itemgetter[slice]] = {}
        self._held = 0  # slots named by the remembered getters

    def forget(self) -> None:
        """Drop every remembered getter (an offset changed)."""
        self._getters.clear()
        self._held = 0

    def cut(self, view: memoryview, slot: int, count: int, size: int) -> tuple[memoryview, ...]:
        """The views ``view[o : o + size]`` at the offsets of ``count`` slots from ring slot
        ``slot``, wrapping past the ring's end (the caller keeps ``count`` within the ring
        and every cut within ``view``).

        Raises:
            ValueError: ``view`` was released.
        """
        getter = self._getters.get((slot, count, size))
        if getter is None:
            if count == 1:
                o = self._offsets[slot]
                return (view[o : o + size],)
            getter = self._remember(slot, count, size)
        cut: tuple[memoryview, ...] = getter(view)
        return cut

    def _remember(self, slot: int, count: int, size: int) -> itemgetter[slice]:
        offs = self._offsets
        end = slot + count
        run = offs[slot:end] if end <= self._ring else offs[slot:] + offs[: end - self._ring]
        if self._held + count > _RUN_LAPS * self._ring:
            self.forget()
        getter = self._getters[slot, count, size] = itemgetter(
            *map(slice, run, map(add, run, repeat(size)))
        )
        self._held += count
        return getter
