"""A small pcapng writer in pure Python (little-endian, one section, append-only).

Written from the pcapng specification (draft-ietf-opsawg-pcapng): a file is a Section Header
Block, then Interface Description Blocks, then Enhanced Packet Blocks that refer to an
interface by its index. Every block is::

    u32 block type | u32 total length | body (padded to 32 bits) | u32 total length

and options are ``u16 code | u16 length | value padded to 32 bits``, closed by
``opt_endofopt`` (code 0, length 0). Packets may be written and flushed one batch at a time,
so the output can be streamed into ``wireshark -k -i -``::

    with open("out.pcapng", "wb") as f:
        w = PcapngWriter(f)
        w.add_interface(LINKTYPE_ETHERNET, name="memif0")
        w.write_packet(frame)  # timestamped now; a memoryview or ChainedPacket is fine
"""

from __future__ import annotations

import platform
import struct
import time
from collections.abc import Iterable
from typing import IO, Final

from .._core.buffers import ChainedPacket

__all__ = [
    "BLOCK_EPB",
    "BLOCK_IDB",
    "BLOCK_SHB",
    "BYTE_ORDER_MAGIC",
    "DEFAULT_SNAPLEN",
    "DIRECTION_INBOUND",
    "DIRECTION_OUTBOUND",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "PcapngWriter",
    "enhanced_packet_block",
    "interface_description_block",
    "option",
    "options",
    "section_header_block",
]

#: Link types (the tcpdump.org registry): Ethernet frames, and raw IPv4/IPv6 packets.
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101

BLOCK_SHB: Final = 0x0A0D0D0A
BLOCK_IDB: Final = 0x00000001
BLOCK_EPB: Final = 0x00000006
BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D

#: Option codes. Codes 0 and 1 mean the same in every block.
OPT_ENDOFOPT: Final = 0
OPT_COMMENT: Final = 1
SHB_HARDWARE: Final = 2
SHB_OS: Final = 3
SHB_USERAPPL: Final = 4
IF_NAME: Final = 2
IF_DESCRIPTION: Final = 3
IF_TSRESOL: Final = 9
EPB_FLAGS: Final = 2
EPB_QUEUE: Final = 6

#: Direction bits of ``epb_flags`` (bits 0-1).
DIRECTION_INBOUND: Final = 1
DIRECTION_OUTBOUND: Final = 2

#: Default interface snap length: the largest packet memif carries, so nothing is cut.
DEFAULT_SNAPLEN: Final = 65535

_U32 = struct.Struct("<I")
_OPT_HEAD = struct.Struct("<HH")
_BLOCK_HEAD = struct.Struct("<II")
_SHB_BODY = struct.Struct("<IHHq")  # magic, major, minor, section length (-1: unknown)
_IDB_BODY = struct.Struct("<HHI")  # link type, reserved, snap length
_EPB_HEAD = struct.Struct("<IIIIIII")  # type, length, interface, ts high, ts low, cap, orig
_ZEROS = bytes(4)


def _pad(n: int) -> int:
    """Bytes of padding that bring ``n`` to a multiple of 4."""
    return -n & 3


def option(code: int, value: bytes | str) -> bytes:
    """One option: code, length, value, padding to 32 bits (strings are UTF-8)."""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if len(raw) > 0xFFFF:
        raise ValueError(f"option {code} is {len(raw)} bytes; at most 65535 fit")
    return _OPT_HEAD.pack(code, len(raw)) + raw + _ZEROS[: _pad(len(raw))]


def options(opts: Iterable[bytes]) -> bytes:
    """Encoded options followed by ``opt_endofopt``; empty when there are none."""
    body = b"".join(opts)
    return body + _OPT_HEAD.pack(OPT_ENDOFOPT, 0) if body else b""


def _block(block_type: int, body: bytes) -> bytes:
    body += _ZEROS[: _pad(len(body))]
    total = 12 + len(body)
    return _BLOCK_HEAD.pack(block_type, total) + body + _U32.pack(total)


def section_header_block(
    *,
    application: str | None = None,
    os: str | None = None,
    hardware: str | None = None,
    comment: str | None = None,
) -> bytes:
    """A Section Header Block, version 1.0, section length unknown (-1)."""
    opts = []
    if comment:
        opts.append(option(OPT_COMMENT, comment))
    if hardware:
        opts.append(option(SHB_HARDWARE, hardware))
    if os:
        opts.append(option(SHB_OS, os))
    if application:
        opts.append(option(SHB_USERAPPL, application))
    return _block(BLOCK_SHB, _SHB_BODY.pack(BYTE_ORDER_MAGIC, 1, 0, -1) + options(opts))


def interface_description_block(
    linktype: int,
    snaplen: int = DEFAULT_SNAPLEN,
    *,
    name: str | None = None,
    description: str | None = None,
    tsresol: int = 6,
) -> bytes:
    """An Interface Description Block; ``tsresol`` is the decimal exponent of the time unit
    (6: microseconds, 9: nanoseconds), always written as ``if_tsresol``."""
    if not 0 <= tsresol <= 9:
        raise ValueError(f"tsresol must be a decimal exponent 0..9, got {tsresol}")
    if not 0 <= snaplen <= 0xFFFFFFFF:
        raise ValueError(f"snaplen out of range: {snaplen}")
    opts = []
    if name:
        opts.append(option(IF_NAME, name))
    if description:
        opts.append(option(IF_DESCRIPTION, description))
    opts.append(option(IF_TSRESOL, bytes([tsresol])))
    return _block(BLOCK_IDB, _IDB_BODY.pack(linktype, 0, snaplen) + options(opts))


def _epb_options(direction: int | None, queue: int | None, comment: str | None) -> bytes:
    opts = []
    if comment:
        opts.append(option(OPT_COMMENT, comment))
    if direction is not None:
        opts.append(option(EPB_FLAGS, _U32.pack(direction & 3)))
    if queue is not None:
        opts.append(option(EPB_QUEUE, _U32.pack(queue)))
    return options(opts)


def enhanced_packet_block(
    interface: int,
    timestamp: int,
    data: bytes | bytearray | memoryview,
    original_length: int | None = None,
    *,
    direction: int | None = None,
    queue: int | None = None,
    comment: str | None = None,
) -> bytes:
    """An Enhanced Packet Block holding ``data`` (already cut to the snap length).

    ``timestamp`` is in the interface's units (see ``if_tsresol``); ``original_length``
    defaults to ``len(data)``; ``direction`` is :data:`DIRECTION_INBOUND` or
    :data:`DIRECTION_OUTBOUND` (written as ``epb_flags``); ``queue`` as ``epb_queue``.
    """
    captured = len(data)
    original = captured if original_length is None else original_length
    opts = _epb_options(direction, queue, comment)
    total = 32 + captured + _pad(captured) + len(opts)
    head = _EPB_HEAD.pack(
        BLOCK_EPB,
        total,
        interface,
        (timestamp >> 32) & 0xFFFFFFFF,
        timestamp & 0xFFFFFFFF,
        captured,
        original,
    )
    return b"".join((head, data, _ZEROS[: _pad(captured)], opts, _U32.pack(total)))


class _Interface:
    __slots__ = ("divisor", "snaplen")

    def __init__(self, snaplen: int, tsresol: int) -> None:
        self.snaplen = snaplen
        self.divisor = 10 ** (9 - tsresol)


class PcapngWriter:
    """Writes one pcapng section to a binary stream: the header at once, then interfaces
    and packets as they come. The caller owns (flushes and closes) the stream."""

    def __init__(
        self,
        stream: IO[bytes],
        *,
        application: str | None = None,
        os: str | None = None,
        hardware: str | None = None,
        comment: str | None = None,
    ) -> None:
        self._stream = stream
        self._interfaces: list[_Interface] = []
        #: Packets and bytes (block bytes, not packet bytes) written so far.
        self.packets = 0
        self.bytes_written = 0
        if application is None:
            from .. import __version__

            application = f"aiomemif {__version__}"
        if os is None:
            os = f"{platform.system()} {platform.release()}".strip()
        self._write(
            section_header_block(application=application, os=os, hardware=hardware, comment=comment)
        )

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self.bytes_written += len(data)

    def add_interface(
        self,
        linktype: int = LINKTYPE_ETHERNET,
        *,
        snaplen: int = DEFAULT_SNAPLEN,
        name: str | None = None,
        description: str | None = None,
        tsresol: int = 6,
    ) -> int:
        """Describe an interface; return its index for :meth:`write_packet`.

        ``snaplen`` 0 means no limit; packets longer than a non-zero snap length are cut
        (their original length is kept). ``tsresol`` 6 records microseconds, 9 nanoseconds.
        """
        self._write(
            interface_description_block(
                linktype, snaplen, name=name, description=description, tsresol=tsresol
            )
        )
        self._interfaces.append(_Interface(snaplen, tsresol))
        return len(self._interfaces) - 1

    def write_packet(
        self,
        packet: bytes | bytearray | memoryview | ChainedPacket,
        *,
        interface: int = 0,
        timestamp_ns: int | None = None,
        direction: int | None = None,
        queue: int | None = None,
        comment: str | None = None,
    ) -> None:
        """Append one packet (copied: a view into shared memory may be released afterwards).

        ``timestamp_ns`` is nanoseconds since the epoch (default: now).

        Raises:
            ValueError: no such interface.
        """
        if not 0 <= interface < len(self._interfaces):
            raise ValueError(f"no interface {interface}: add_interface() first")
        iface = self._interfaces[interface]
        if isinstance(packet, ChainedPacket):
            data: bytes | bytearray | memoryview = packet.tobytes()
        elif isinstance(packet, memoryview) and (packet.format != "B" or packet.ndim != 1):
            data = packet.cast("B")
        else:
            data = packet
        original = len(data)
        snap = iface.snaplen
        if snap and original > snap:
            data = memoryview(data)[:snap]
        if timestamp_ns is None:
            timestamp_ns = time.time_ns()
        self._write(
            enhanced_packet_block(
                interface,
                timestamp_ns // iface.divisor,
                data,
                original,
                direction=direction,
                queue=queue,
                comment=comment,
            )
        )
        self.packets += 1

    def flush(self) -> None:
        self._stream.flush()
