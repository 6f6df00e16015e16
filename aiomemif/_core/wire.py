"""memif 2.0 wire constants and precompiled structs (pure: no I/O).

Everything here is a fact of the protocol (see ``docs/protocol.md``): message
types, field offsets and sizes, flags, limits. The structs are compiled once at
load time and their sizes are checked against the protocol.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

PROTOCOL_VERSION: Final = 0x0200
COOKIE: Final = 0x03E31F20

MSG_SIZE: Final = 128
DESC_SIZE: Final = 16
NAME_SIZE: Final = 32
SECRET_SIZE: Final = 24
SECRET_MAX_CHARS: Final = SECRET_SIZE - 1
REASON_SIZE: Final = 96

#: What a server announces in HELLO (maximum *indexes*, like DPDK and libmemif).
MAX_REGION_INDEX: Final = 255
MAX_RING_INDEX: Final = 255
MAX_LOG2_RING_SIZE: Final = 14

DEFAULT_CACHELINE: Final = 64
#: Cacheline sizes real peers build rings with (x86-64; aarch64 VPP, libmemif, DPDK).
KNOWN_CACHELINES: Final = (64, 128)
#: A server's alignment requirement for ring offsets: one descriptor. Every real peer
#: packs rings of ``2·CL + 16·N`` bytes from offset 0, so its offsets are multiples of 16.
RING_OFFSET_ALIGN: Final = 16
DEFAULT_LOG2_RING_SIZE: Final = 10
DEFAULT_BUFFER_SIZE: Final = 2048
#: The largest packet a receiver takes by default (``InterfaceConfig.max_frame_bytes``):
#: 65,535 bytes, what one u16-sized buffer holds and the most any aiomemif sender sends.
DEFAULT_MAX_FRAME_BYTES: Final = 65535

MASK16: Final = 0xFFFF

#: Ring header flag set by a ring's receiver: "do not signal me".
RING_FLAG_MASK_INT: Final = 0x0001
#: ADD_RING flag: the ring carries packets client -> server (S2M: slave to master).
ADD_RING_FLAG_S2M: Final = 0x0001
#: Descriptor flag: the packet continues in the next slot.
DESC_FLAG_NEXT: Final = 0x0001


class MsgType(enum.IntEnum):
    """Control message type (u16 at offset 0)."""

    NONE = 0
    ACK = 1
    HELLO = 2
    INIT = 3
    ADD_REGION = 4
    ADD_RING = 5
    CONNECT = 6
    CONNECTED = 7
    DISCONNECT = 8


class Mode(enum.IntEnum):
    """Interface mode carried in INIT."""

    ETHERNET = 0
    IP = 1
    PUNT_INJECT = 2


class Role(enum.IntEnum):
    """Local role; the numbers are libmemif's (0 = master, 1 = slave)."""

    SERVER = 0
    CLIENT = 1


class RingType(enum.IntEnum):
    """Direction of a ring (only the ADD_RING flag carries it on the wire)."""

    S2M = 0
    M2S = 1


# --- control messages: payload layouts, all little-endian and packed -------------------------
TYPE: Final = struct.Struct("<H")
HELLO: Final = struct.Struct("<H32sHHHHHB")
INIT: Final = struct.Struct("<HHIB24s32s")
ADD_REGION: Final = struct.Struct("<HHQ")
ADD_RING: Final = struct.Struct("<HHHHIBH")
CONNECT: Final = struct.Struct("<H32s")  # also CONNECTED
DISCONNECT: Final = struct.Struct("<HI96s")

# --- shared memory -------------------------------------------------------------------------
#: Descriptor: flags u16, region u16, length u32, offset u32, metadata u32.
DESC: Final = struct.Struct("<HHIII")
COOKIE_STRUCT: Final = struct.Struct("<I")

# Byte offsets inside a ring header (tail sits at one cacheline, descriptors at two).
RING_COOKIE_OFF: Final = 0
RING_FLAGS_OFF: Final = 4
RING_HEAD_OFF: Final = 6


def _check_sizes() -> None:
    expected = {HELLO: 45, INIT: 65, ADD_REGION: 12, ADD_RING: 15, CONNECT: 34, DISCONNECT: 102}
    for st, size in expected.items():
        if st.size != size or st.size > MSG_SIZE:  # pragma: no cover - import-time guard
            raise ImportError(f"struct {st.format!r} is {st.size} bytes, expected {size}")
    if DESC.size != DESC_SIZE:  # pragma: no cover - import-time guard
        raise ImportError("descriptor struct is not 16 bytes")


_check_sizes()
