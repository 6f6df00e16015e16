"""What packets are on either side of a ring: received chains, sendable buffers (pure).

:class:`ChainedPacket` is how a packet that arrived in several buffers is handed out (views
into shared memory, no copy); ``Packet`` is one received packet; :func:`as_wire_buffer`
turns whatever a user sends into something a byte slice of shared memory accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

from .slices import release_all

__all__ = ["ChainedPacket", "Packet", "as_wire_buffer"]


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


@final
class ChainedPacket:
    """A packet that arrived in several buffers (a NEXT chain), without copying.

    ``segments`` are views into shared memory, valid as long as the batch that holds the
    packet. ``len()`` is the total size; ``bytes()`` (or :meth:`tobytes`) joins a copy.
    """

    __slots__ = ("_length", "segments")

    def __init__(self, segments: Sequence[memoryview]) -> None:
        self.segments = tuple(segments)
        self._length = sum(len(s) for s in self.segments)

    @classmethod
    def _of(cls, segments: tuple[memoryview, ...], length: int) -> ChainedPacket:
        """A packet from segments whose total length the caller already knows."""
        packet = cls.__new__(cls)
        packet.segments = segments
        packet._length = length
        return packet

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
        """Release every segment view.

        Raises:
            BufferError: a segment was exported further (the ones before it are released).
        """
        release_all(self.segments)

    def __repr__(self) -> str:
        return f"<ChainedPacket {self._length} bytes in {len(self.segments)} buffers>"


#: One received packet: a view of one buffer, or a chain of them.
Packet = memoryview | ChainedPacket
