"""What packets are on either side of a ring: received chains, sendable buffers (pure).

:class:`ChainedPacket` is how a packet that arrived in several buffers is handed out (views
into shared memory, no copy); ``Packet`` is one received packet; :func:`as_wire_buffer`
turns whatever a user sends into something a byte slice of shared memory accepts;
:func:`release_views` invalidates the views handed out, telling which ones another object
still holds (an export Python cannot revoke).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import final

from ..errors import ExportedBufferError

__all__ = [
    "ChainRun",
    "ChainedPacket",
    "Packet",
    "as_wire_buffer",
    "exported_error",
    "release_views",
]


def as_wire_buffer(packet: object) -> memoryview | bytes | bytearray:
    """Return ``packet`` as something a byte slice of shared memory accepts.

    bytes, bytearray and contiguous byte-format memoryviews pass through; other contiguous
    buffers are viewed as bytes, non-contiguous ones copied; objects with ``__bytes__``
    (scapy, dpkt) are converted.

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
    if not view.c_contiguous:
        return view.tobytes()
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class ChainRun:
    """The received chains of one poll whose segment views are not made yet.

    ``view`` is the region's view and ``offsets`` / ``lengths`` the checked descriptors of
    the whole run; each chain knows its index range in them. The first chain asked for
    its segments gets its own views; when a second one is asked, every chain of the run
    gets them in one pass. A receiver that reads no segments (it counts, forwards or
    copies out) makes no view, one that reads them all pays about what making them all
    at once costs.
    """

    __slots__ = ("lengths", "offsets", "packets", "touched", "view")

    def __init__(self, view: memoryview, offsets: list[int], lengths: list[int]) -> None:
        self.view = view
        self.offsets = offsets
        self.lengths = lengths
        #: The chains still without views.
        self.packets: list[ChainedPacket] = []
        self.touched = False

    def cut(self, first: int, end: int) -> tuple[memoryview, ...]:
        """The views of descriptors ``first`` to ``end`` (excluded) of the run.

        Raises:
            ValueError: the region's view was released (the link is gone).
        """
        view = self.view
        pieces = zip(self.offsets[first:end], self.lengths[first:end], strict=True)
        return tuple([view[o : o + n] for o, n in pieces])

    def make_all(self) -> None:
        """Give every chain of the run still without views its segments, in one pass.

        Raises:
            ValueError: as :meth:`cut`.
        """
        view = self.view
        views = tuple([view[o : o + n] for o, n in zip(self.offsets, self.lengths, strict=True)])
        for packet in self.packets:
            if packet._segments is None:
                first, end = packet._at
                packet._give(views[first:end])
        self.packets = []


@final
class ChainedPacket:
    """A packet that arrived in several buffers (a NEXT chain), without copying.

    ``segments`` are views into shared memory, valid as long as the batch that holds the
    packet. ``len()`` is the total size; ``bytes()`` (or :meth:`tobytes`) joins a copy.
    A received chain makes its views when ``segments`` is first read (:class:`ChainRun`).
    """

    __slots__ = ("_at", "_length", "_live", "_run", "_segments")

    def __init__(self, segments: Sequence[memoryview]) -> None:
        self._segments: tuple[memoryview, ...] | None = tuple(segments)
        self._length = sum(len(s) for s in self._segments)
        self._run: ChainRun | None = None
        self._at = (0, 0)
        self._live = True

    @classmethod
    def _of(cls, segments: tuple[memoryview, ...], length: int) -> ChainedPacket:
        """A packet from segments whose total length the caller already knows."""
        packet = cls.__new__(cls)
        packet._segments = segments
        packet._length = length
        packet._run = None
        packet._live = True
        return packet

    @classmethod
    def _later(cls, run: ChainRun, at: tuple[int, int], length: int) -> ChainedPacket:
        """A packet of ``length`` bytes, descriptors ``at`` (first, end) of ``run``, whose
        views are made when first asked for."""
        packet = cls.__new__(cls)
        packet._segments = None
        packet._run = run
        packet._at = at
        packet._length = length
        packet._live = True
        return packet

    def _give(self, segments: tuple[memoryview, ...]) -> None:
        self._segments = segments
        self._run = None
        if not self._live:  # released before they were made: they are made released
            for seg in segments:
                seg.release()

    @property
    def segments(self) -> tuple[memoryview, ...]:
        """The views of the packet's buffers, in order.

        Raises:
            ValueError: they were first asked for after the link's memory was unmapped.
        """
        segs = self._segments
        if segs is None:
            run = self._run
            assert run is not None  # (no segments yet: they are in a run)
            if run.touched:  # a second chain of the run: all of them, in one pass
                run.make_all()
            else:
                run.touched = True
                self._give(run.cut(*self._at))
            segs = self._segments
            assert segs is not None
        return segs

    def __len__(self) -> int:
        return self._length

    def __bytes__(self) -> bytes:
        return b"".join(self.segments)

    def tobytes(self) -> bytes:
        """A copy of the whole packet."""
        return b"".join(self.segments)

    def copy_into(self, buffer: memoryview | bytearray, offset: int = 0) -> int:
        """Copy the packet into ``buffer`` at ``offset``; return its length.

        Raises:
            ValueError: the buffer is too small.
        """
        out = memoryview(buffer).cast("B")
        if offset < 0 or offset + self._length > len(out):
            raise ValueError(f"buffer too small for a {self._length}-byte packet")
        for seg in self.segments:
            out[offset : offset + len(seg)] = seg
            offset += len(seg)
        return self._length

    def release(self) -> None:
        """Release every segment view (their use raises ValueError from now on).

        Raises:
            BufferError: a segment is still exported (the others are released).
        """
        self._live = False
        segments = self._segments
        if segments is None:  # no view was made: none to release
            return
        held = False
        for seg in segments:
            try:
                seg.release()
            except BufferError:
                held = True
        if held:
            raise BufferError("a segment of this packet is still exported")

    def __repr__(self) -> str:
        return f"<ChainedPacket {self._length} bytes in {len(self.segments)} buffers>"


#: One received packet: a view of one buffer, or a chain of them.
Packet = memoryview | ChainedPacket


def release_views(
    views: Sequence[memoryview | ChainedPacket], indices: Iterable[int] | None = None
) -> tuple[int, ...]:
    """Release ``views[i]`` for every ``i`` in ``indices`` (all by default), whatever
    fails; return the indexes of those still exported (not released)."""
    if indices is None:  # first a plain pass (the usual case: nothing is exported)
        try:
            for view in views:
                view.release()
            return ()
        except BufferError:
            pass  # then one by one (releasing a view again does nothing)
    exported: list[int] = []
    for i in range(len(views)) if indices is None else indices:
        try:
            views[i].release()
        except BufferError:
            exported.append(i)
    return tuple(exported)


def exported_error(what: str, exported: tuple[int, ...], consequence: str) -> ExportedBufferError:
    """The error for ``what`` (e.g. "packet") at ``exported`` still being exported."""
    names = ", ".join(map(str, exported[:8])) + (", ..." if len(exported) > 8 else "")
    plural = "s" if len(exported) > 1 else ""
    return ExportedBufferError(
        f"{what}{plural} {names} still exported to another object (a numpy array or other "
        f"buffer-protocol consumer of the view): {consequence}; drop those objects and "
        "try again",
        exported,
    )
