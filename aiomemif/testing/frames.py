"""Numbered test frames, for the storm and the soak (and their child peer).

A frame carries its sequence number and length at the front and its sequence number again
at the end, with a filler that depends on the sequence number in between, so a receiver
checks order, length and every byte against nothing but the number it expects next:

::

    pkt = frame(seq, 9000)
    problem = check_frame(bytes(pkt), seq)   # None, or what is wrong
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["MIN_SIZE", "SOAK_SIZES", "check_frame", "frame", "frame_size"]

_HEAD: Final = struct.Struct("<QI")  # sequence number, total length
_TAIL: Final = struct.Struct("<Q")
#: The smallest frame: header and trailer.
MIN_SIZE: Final = _HEAD.size + _TAIL.size
#: Filler source: a 251-periodic byte pattern long enough for any offset plus 64 KiB.
_FILL: Final = bytes(range(251)) * 263

#: Frame sizes the soak cycles through, by sequence number: mostly small, some MTU-sized
#: frames and one 9000-byte jumbo frame (a chain of buffers) in every eight.
SOAK_SIZES: Final = (64, 64, 512, 64, 1500, 64, 9000, 200)


def frame_size(seq: int, sizes: tuple[int, ...] = SOAK_SIZES) -> int:
    """The size of frame ``seq`` in a stream that cycles through ``sizes``."""
    return sizes[seq % len(sizes)]


def frame(seq: int, size: int) -> bytes:
    """Frame number ``seq`` of ``size`` bytes.

    Raises:
        ValueError: ``size`` is below 20 bytes (no room for the numbers) or over 65,535.
    """
    if not MIN_SIZE <= size <= 65535:
        raise ValueError(f"a frame takes {MIN_SIZE}..65535 bytes, not {size}")
    start = seq % 251
    filler = _FILL[start : start + size - MIN_SIZE]
    return _HEAD.pack(seq, size) + filler + _TAIL.pack(seq)


def check_frame(data: bytes, seq: int) -> str | None:
    """None if ``data`` is frame number ``seq`` exactly, else what is wrong with it."""
    if len(data) < MIN_SIZE:
        return f"frame {seq}: only {len(data)} bytes"
    got, size = _HEAD.unpack_from(data)
    if got != seq:
        return f"expected frame {seq}, got {got}"
    if size != len(data):
        return f"frame {seq}: says {size} bytes, has {len(data)}"
    if _TAIL.unpack_from(data, size - _TAIL.size)[0] != seq:
        return f"frame {seq}: trailer does not match"
    start = seq % 251
    if data[_HEAD.size : size - _TAIL.size] != _FILL[start : start + size - MIN_SIZE]:
        return f"frame {seq}: filler corrupted"
    return None
