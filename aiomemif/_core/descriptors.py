"""A memo of descriptor runs that passed the checks (pure).

A memif peer rewrites the same slots lap after lap, and in steady traffic it often writes
exactly the same 16 bytes into a slot each time (a client's buffer offsets are fixed per
slot; frames of one size have one length). :class:`CheckedRuns` keeps, per slot, the raw
bytes of descriptors that passed the checks together with the values read from them, so
a later run whose bytes are identical is known good from one comparison: the same bytes
against the same regions pass the same checks.

The caller takes ONE snapshot of the run (``bytes``) and both compares and parses that
snapshot, so what was checked is what is used even if the peer writes meanwhile.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CheckedRuns"]

_DESC_SIZE: Final = 16


class CheckedRuns:
    """Checked descriptor runs of one ring, remembered slot by slot (one region only).

    ``values`` is what the owner needs besides the offsets: received lengths for a
    receiver, offered capacities for the server's transmitter.
    """

    __slots__ = ("_initial", "_offsets", "_ok", "_raw", "_region", "_values")

    def __init__(self, size: int, region: int = -1) -> None:
        self._raw = bytearray(_DESC_SIZE * size)
        self._ok = bytearray(size)  # 1 where _raw holds a checked descriptor
        self._offsets = [0] * size
        self._values = [0] * size
        #: The one region remembered: given (a client knows its buffer region), or the
        #: region of the first run remembered.
        self._initial = region
        self._region = region

    def clear(self) -> None:
        """Forget everything (a new connection on the same ring)."""
        self._ok[:] = bytes(len(self._ok))
        self._region = self._initial

    def recall(self, raw: bytes, slot: int, count: int) -> tuple[int, list[int], list[int]] | None:
        """``(region, offsets, values)`` if ``raw``, the snapshot of ``count`` descriptors
        from ring slot ``slot`` (the caller keeps it inside the ring), equals a run
        remembered there; else None."""
        a = _DESC_SIZE * slot
        if raw != self._raw[a : a + len(raw)] or self._ok.find(0, slot, slot + count) >= 0:
            return None
        end = slot + count
        return self._region, self._offsets[slot:end], self._values[slot:end]

    def remember(
        self, raw: bytes, slot: int, region: int, offsets: list[int], values: list[int]
    ) -> None:
        """Keep a run that passed the checks: its snapshot ``raw`` from ring slot ``slot``,
        the one region all of it names, and what was read from it. Only runs in the memo's
        region are kept.

        Raises:
            ValueError: the run does not fit the ring from ``slot``, or ``raw``, ``offsets``
                and ``values`` disagree on its length (a caller bug; nothing is stored).
        """
        count = len(offsets)
        if slot + count > len(self._ok) or len(raw) != _DESC_SIZE * count or len(values) != count:
            raise ValueError("a remembered run must fit the ring and match its snapshot")
        if self._region < 0:
            self._region = region
        if region != self._region:
            return
        a = _DESC_SIZE * slot
        self._raw[a : a + len(raw)] = raw
        self._ok[slot : slot + count] = b"\x01" * count
        self._offsets[slot : slot + count] = offsets
        self._values[slot : slot + count] = values
