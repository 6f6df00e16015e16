"""Ethernet, ARP, IPv4 and ICMP echo: build and parse, plus the internet checksum.

Pure code (bytes in, values or bytes out) for the packets a memif link usually carries
first: enough to answer or send a ping. Used by ``aiomemif responder`` and ``aiomemif ping``
and usable on its own::

    from aiomemif.tools import packets

    frame = packets.arp_request("02:fe:00:00:00:02", "192.168.1.2", "192.168.1.1")
    echo = packets.icmp_echo(ident=1, seq=1, payload=bytes(56))
    ip = packets.ipv4("192.168.1.2", "192.168.1.1", packets.IPPROTO_ICMP, echo)
    eth = packets.parse_ethernet(frame)

Addresses are given as text (``"192.168.1.1"``, ``"02:fe:00:00:00:01"``) or as raw bytes
(4 or 6 of them); parsed values hold raw bytes (``format_ip``/``format_mac`` show them).

Every ``parse_*`` function accepts any bytes-like object (``bytes``, ``bytearray``,
``memoryview``, or anything with ``__bytes__`` such as an aiomemif ``ChainedPacket``) and
raises :class:`ValueError` (and nothing else) for input it cannot parse: too short, a
length field beyond the data, a wrong version or header length. Checksums are *not*
enforced by the parsers: the parsed values say whether they are right (``checksum_ok``).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final, Literal, Protocol

import attrs

__all__ = [
    "ARP_REPLY",
    "ARP_REQUEST",
    "BROADCAST_MAC",
    "ETHERTYPE_ARP",
    "ETHERTYPE_IPV4",
    "ETH_HEADER_LEN",
    "ICMP_ECHO_REPLY",
    "ICMP_ECHO_REQUEST",
    "ICMP_HEADER_LEN",
    "IPPROTO_ICMP",
    "IPV4_HEADER_LEN",
    "MIN_FRAME_LEN",
    "Answer",
    "Arp",
    "Ethernet",
    "Icmp",
    "IPv4",
    "answer_frame",
    "answer_ip",
    "arp",
    "arp_reply",
    "arp_request",
    "checksum",
    "ethernet",
    "format_ip",
    "format_mac",
    "icmp_echo",
    "ipv4",
    "parse_arp",
    "parse_ethernet",
    "parse_icmp",
    "parse_ip",
    "parse_ipv4",
    "parse_mac",
]

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_ARP: Final = 0x0806
IPPROTO_ICMP: Final = 1
ARP_REQUEST: Final = 1
ARP_REPLY: Final = 2
ICMP_ECHO_REPLY: Final = 0
ICMP_ECHO_REQUEST: Final = 8
BROADCAST_MAC: Final = b"\xff" * 6
#: Smallest Ethernet frame without the FCS; shorter frames are padded with zeros.
MIN_FRAME_LEN: Final = 60
ETH_HEADER_LEN: Final = 14
IPV4_HEADER_LEN: Final = 20
ICMP_HEADER_LEN: Final = 8

_ETH: Final = struct.Struct("!6s6sH")
_ARP: Final = struct.Struct("!HHBBH6s4s6s4s")
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
_ICMP: Final = struct.Struct("!BBHHH")
_ARP_HTYPE_ETHERNET: Final = 1
_IP_FLAG_DF: Final = 0x4000
_IP_FLAG_MF: Final = 0x2000
_IP_OFFSET_MASK: Final = 0x1FFF
_MAX_IP_LEN: Final = 0xFFFF
_HEX: Final = frozenset("0123456789abcdefABCDEF")


class _HasBytes(Protocol):
    def __bytes__(self) -> bytes: ...


#: What the parsers and ``checksum`` accept.
Data = bytes | bytearray | memoryview | _HasBytes


def _bytes(data: Data) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, int | str):  # bytes(5) would be five zeros, not a packet
        raise ValueError(f"not a bytes-like packet: {type(data).__name__}")
    try:
        return bytes(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a bytes-like packet: {exc}") from None


# --- addresses --------------------------------------------------------------------------------


def parse_mac(text: str | bytes) -> bytes:
    """``"02:fe:00:00:00:01"`` (also ``-`` separated) or 6 raw bytes -> 6 bytes.

    Raises:
        ValueError: not a MAC address.
    """
    if isinstance(text, bytes | bytearray):
        if len(text) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {len(text)}")
        return bytes(text)
    parts = text.strip().replace("-", ":").split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 and set(p) <= _HEX for p in parts):
        raise ValueError(
            f"invalid MAC address {text!r} (expected six hex bytes like 02:fe:0:0:0:1)"
        )
    return bytes(int(p, 16) for p in parts)


def format_mac(raw: bytes) -> str:
    """6 bytes -> ``"02:fe:00:00:00:01"``."""
    return ":".join(f"{b:02x}" for b in raw)


def parse_ip(text: str | bytes) -> bytes:
    """``"192.168.1.1"`` or 4 raw bytes -> 4 bytes.

    Raises:
        ValueError: not an IPv4 address.
    """
    if isinstance(text, bytes | bytearray):
        if len(text) != 4:
            raise ValueError(f"an IPv4 address is 4 bytes, got {len(text)}")
        return bytes(text)
    try:
        return ipaddress.IPv4Address(text.strip()).packed
    except ValueError:
        raise ValueError(f"invalid IPv4 address {text!r}") from None


def format_ip(raw: bytes) -> str:
    """4 bytes -> ``"192.168.1.1"``."""
    return ".".join(str(b) for b in raw)


# --- checksum ---------------------------------------------------------------------------------


def checksum(data: Data) -> int:
    """The internet checksum (RFC 1071) of ``data``: the 16-bit one's complement of the
    one's complement sum of its big-endian 16-bit words (an odd length is padded with a
    zero byte).

    Put the result in a header whose checksum field was zero; a header or message with a
    correct checksum in place sums to 0 (``checksum(header) == 0``).
    """
    raw = _bytes(data)
    if len(raw) % 2:
        raw += b"\0"
    # 2**16 == 1 (mod 0xFFFF): the number's residue is the end-around-carry sum of its words.
    total = int.from_bytes(raw, "big") % 0xFFFF
    if total == 0:
        # The one's complement sum is 0xFFFF ("negative zero") unless every word is zero.
        return 0xFFFF if not any(raw) else 0
    return ~total & 0xFFFF


# --- Ethernet ---------------------------------------------------------------------------------


@attrs.frozen
class Ethernet:
    """An Ethernet II frame (no VLAN tag handling: a tagged frame has ethertype 0x8100)."""

    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes


def ethernet(
    dst: str | bytes, src: str | bytes, ethertype: int, payload: Data, *, pad: bool = True
) -> bytes:
    """Build a frame; with ``pad`` (default) frames below 60 bytes are zero-padded."""
    frame = _ETH.pack(parse_mac(dst), parse_mac(src), ethertype) + _bytes(payload)
    if pad and len(frame) < MIN_FRAME_LEN:
        frame += bytes(MIN_FRAME_LEN - len(frame))
    return frame


def parse_ethernet(data: Data) -> Ethernet:
    """Split a frame into its header fields and payload (padding stays in the payload).

    Raises:
        ValueError: shorter than the 14-byte header.
    """
    raw = _bytes(data)
    if len(raw) < ETH_HEADER_LEN:
        raise ValueError(f"Ethernet frame of {len(raw)} bytes is shorter than its header")
    dst, src, ethertype = _ETH.unpack_from(raw)
    return Ethernet(dst, src, ethertype, raw[ETH_HEADER_LEN:])


# --- ARP --------------------------------------------------------------------------------------


@attrs.frozen
class Arp:
    """An ARP packet for IPv4 over Ethernet (the only kind ``parse_arp`` accepts)."""

    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes

    @property
    def is_request(self) -> bool:
        return self.op == ARP_REQUEST

    @property
    def is_reply(self) -> bool:
        return self.op == ARP_REPLY


def arp(
    op: int,
    sender_mac: str | bytes,
    sender_ip: str | bytes,
    target_mac: str | bytes,
    target_ip: str | bytes,
) -> bytes:
    """Build a 28-byte ARP packet (Ethernet/IPv4), without the Ethernet header."""
    return _ARP.pack(
        _ARP_HTYPE_ETHERNET, ETHERTYPE_IPV4, 6, 4, op,
        parse_mac(sender_mac), parse_ip(sender_ip), parse_mac(target_mac), parse_ip(target_ip),
    )  # fmt: skip


def arp_request(src_mac: str | bytes, src_ip: str | bytes, target_ip: str | bytes) -> bytes:
    """A broadcast Ethernet frame asking who has ``target_ip`` (tell ``src_ip``)."""
    body = arp(ARP_REQUEST, src_mac, src_ip, bytes(6), target_ip)
    return ethernet(BROADCAST_MAC, src_mac, ETHERTYPE_ARP, body)


def arp_reply(
    src_mac: str | bytes, src_ip: str | bytes, dst_mac: str | bytes, dst_ip: str | bytes
) -> bytes:
    """An Ethernet frame to ``dst_mac`` saying ``src_ip`` is at ``src_mac``."""
    body = arp(ARP_REPLY, src_mac, src_ip, dst_mac, dst_ip)
    return ethernet(dst_mac, src_mac, ETHERTYPE_ARP, body)


def parse_arp(data: Data) -> Arp:
    """Parse an ARP packet (the Ethernet payload; trailing padding is ignored).

    Raises:
        ValueError: shorter than 28 bytes, or not Ethernet/IPv4 ARP.
    """
    raw = _bytes(data)
    if len(raw) < _ARP.size:
        raise ValueError(f"ARP packet of {len(raw)} bytes is shorter than 28")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(raw)
    if (htype, ptype, hlen, plen) != (_ARP_HTYPE_ETHERNET, ETHERTYPE_IPV4, 6, 4):
        raise ValueError(
            f"not Ethernet/IPv4 ARP (htype {htype}, ptype {ptype:#06x}, hlen {hlen}, plen {plen})"
        )
    return Arp(op, sha, spa, tha, tpa)


# --- IPv4 -------------------------------------------------------------------------------------


@attrs.frozen
class IPv4:
    """An IPv4 packet. ``payload`` is cut to the header's total length."""

    src: bytes
    dst: bytes
    protocol: int
    ttl: int
    ident: int
    payload: bytes
    tos: int = 0
    #: The 16-bit flags + fragment offset field.
    flags_fragment: int = 0
    options: bytes = b""
    #: Whether the header checksum is right.
    checksum_ok: bool = True

    @property
    def dont_fragment(self) -> bool:
        return bool(self.flags_fragment & _IP_FLAG_DF)

    @property
    def is_fragment(self) -> bool:
        """True for any fragment (more fragments follow, or a non-zero offset)."""
        return bool(self.flags_fragment & (_IP_FLAG_MF | _IP_OFFSET_MASK))


def ipv4(
    src: str | bytes,
    dst: str | bytes,
    protocol: int,
    payload: Data,
    *,
    ttl: int = 64,
    ident: int = 0,
    tos: int = 0,
    dont_fragment: bool = False,
) -> bytes:
    """Build an IPv4 packet with a 20-byte header and a correct header checksum.

    Raises:
        ValueError: the packet would exceed 65535 bytes, or a field is out of range.
    """
    body = _bytes(payload)
    total = IPV4_HEADER_LEN + len(body)
    if total > _MAX_IP_LEN:
        raise ValueError(f"IPv4 packet of {total} bytes exceeds 65535")
    flags = _IP_FLAG_DF if dont_fragment else 0
    try:
        header = _IPV4.pack(
            0x45, tos, total, ident & 0xFFFF, flags, ttl, protocol, 0, parse_ip(src), parse_ip(dst)
        )
    except struct.error as exc:
        raise ValueError(f"IPv4 field out of range: {exc}") from None
    csum = checksum(header)
    return header[:10] + csum.to_bytes(2, "big") + header[12:] + body


def parse_ipv4(data: Data) -> IPv4:
    """Parse an IPv4 packet; bytes after its total length (link padding) are dropped.

    Raises:
        ValueError: too short, not version 4, header length below 20 bytes, or a total
            length smaller than the header or larger than the data.
    """
    raw = _bytes(data)
    if len(raw) < IPV4_HEADER_LEN:
        raise ValueError(f"IPv4 packet of {len(raw)} bytes is shorter than its header")
    vihl, tos, total, ident, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(raw)
    version, ihl = vihl >> 4, (vihl & 0x0F) * 4
    if version != 4:
        raise ValueError(f"IP version {version}, not 4")
    if ihl < IPV4_HEADER_LEN:
        raise ValueError(f"IPv4 header length {ihl} is below 20")
    if total < ihl:
        raise ValueError(f"IPv4 total length {total} is smaller than its header ({ihl})")
    if total > len(raw):
        raise ValueError(f"IPv4 total length {total} exceeds the {len(raw)} bytes received")
    return IPv4(
        src=src,
        dst=dst,
        protocol=proto,
        ttl=ttl,
        ident=ident,
        payload=raw[ihl:total],
        tos=tos,
        flags_fragment=frag,
        options=raw[IPV4_HEADER_LEN:ihl],
        checksum_ok=checksum(raw[:ihl]) == 0,
    )


# --- ICMP -------------------------------------------------------------------------------------


@attrs.frozen
class Icmp:
    """An ICMP message. ``ident``/``seq`` are the echo fields (bytes 4..7 of any type)."""

    type: int
    code: int
    ident: int
    seq: int
    payload: bytes
    #: Whether the checksum over the whole message is right.
    checksum_ok: bool = True

    @property
    def is_echo_request(self) -> bool:
        return self.type == ICMP_ECHO_REQUEST and self.code == 0

    @property
    def is_echo_reply(self) -> bool:
        return self.type == ICMP_ECHO_REPLY and self.code == 0


def icmp_echo(ident: int, seq: int, payload: Data = b"", *, reply: bool = False) -> bytes:
    """Build an ICMP echo request (or reply) message with a correct checksum.

    Raises:
        ValueError: ``ident`` or ``seq`` outside 0..65535.
    """
    if not (0 <= ident <= 0xFFFF and 0 <= seq <= 0xFFFF):
        raise ValueError(f"ICMP echo ident and seq must be 0..65535, got {ident}, {seq}")
    body = _bytes(payload)
    kind = ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST
    header = _ICMP.pack(kind, 0, 0, ident, seq)
    csum = checksum(header + body)
    return header[:2] + csum.to_bytes(2, "big") + header[4:] + body


def parse_icmp(data: Data) -> Icmp:
    """Parse an ICMP message (the IPv4 payload).

    Raises:
        ValueError: shorter than the 8-byte header.
    """
    raw = _bytes(data)
    if len(raw) < ICMP_HEADER_LEN:
        raise ValueError(f"ICMP message of {len(raw)} bytes is shorter than its header")
    kind, code, _csum, ident, seq = _ICMP.unpack_from(raw)
    return Icmp(kind, code, ident, seq, raw[ICMP_HEADER_LEN:], checksum(raw) == 0)


# --- answering: what a host does with ARP requests and pings ---------------------------------

AnswerKind = Literal["arp", "echo", "ignored", "malformed"]


@attrs.frozen
class Answer:
    """What :func:`answer_frame` / :func:`answer_ip` made of one received packet.

    ``kind`` is ``"arp"`` (an ARP request for our address: ``reply`` is the ARP reply),
    ``"echo"`` (an echo request to our address: ``reply`` is the echo reply), ``"ignored"``
    (well formed but not for us) or ``"malformed"`` (unparsable or a bad checksum).
    ``description`` is a one-line summary for logs.
    """

    kind: AnswerKind
    reply: bytes | None
    description: str


def _echo_answer(packet: IPv4, ip: bytes, ident: int) -> Answer:
    src, dst = format_ip(packet.src), format_ip(packet.dst)
    if not packet.checksum_ok:
        return Answer("malformed", None, f"IPv4 {src} > {dst}: bad header checksum")
    if packet.dst != ip:
        return Answer("ignored", None, f"IPv4 {src} > {dst} proto {packet.protocol}: not for us")
    if packet.protocol != IPPROTO_ICMP:
        return Answer("ignored", None, f"IPv4 {src} > {dst} proto {packet.protocol}: not ICMP")
    if packet.is_fragment:
        return Answer("ignored", None, f"ICMP {src} > {dst}: fragment (not reassembled)")
    try:
        msg = parse_icmp(packet.payload)
    except ValueError as exc:
        return Answer("malformed", None, f"ICMP {src} > {dst}: {exc}")
    if not msg.checksum_ok:
        return Answer("malformed", None, f"ICMP {src} > {dst}: bad checksum")
    if not msg.is_echo_request:
        return Answer("ignored", None, f"ICMP {src} > {dst} type {msg.type} code {msg.code}")
    echo = icmp_echo(msg.ident, msg.seq, msg.payload, reply=True)
    reply = ipv4(ip, packet.src, IPPROTO_ICMP, echo, ident=ident, tos=packet.tos)
    return Answer(
        "echo",
        reply,
        f"ICMP echo request {src} > {dst} id={msg.ident} seq={msg.seq} "
        f"len={len(packet.payload)}: replied",
    )


def answer_ip(packet: Data, ip: str | bytes, *, ident: int = 0) -> Answer:
    """Answer a bare IPv4 packet (memif IP mode): ICMP echo requests to ``ip`` get a reply.

    ``ident`` is the IPv4 identification of the reply. Never raises for bad input.
    """
    addr = parse_ip(ip)
    try:
        parsed = parse_ipv4(packet)
    except ValueError as exc:
        return Answer("malformed", None, f"IPv4: {exc}")
    return _echo_answer(parsed, addr, ident)


def answer_frame(frame: Data, mac: str | bytes, ip: str | bytes, *, ident: int = 0) -> Answer:
    """Answer an Ethernet frame as a host with ``mac`` and ``ip`` would: ARP requests for
    ``ip`` and ICMP echo requests to ``ip`` get replies (sent back to the frame's source).

    The destination MAC is not filtered (a memif link has one peer). Never raises for bad
    input.
    """
    hw, addr = parse_mac(mac), parse_ip(ip)
    try:
        eth = parse_ethernet(frame)
    except ValueError as exc:
        return Answer("malformed", None, f"Ethernet: {exc}")
    if eth.ethertype == ETHERTYPE_ARP:
        try:
            req = parse_arp(eth.payload)
        except ValueError as exc:
            return Answer("malformed", None, f"ARP: {exc}")
        who, tell = format_ip(req.target_ip), format_ip(req.sender_ip)
        if not req.is_request:
            text = f"ARP op {req.op} {tell} is-at {format_mac(req.sender_mac)}"
            return Answer("ignored", None, text)
        if req.target_ip != addr:
            return Answer("ignored", None, f"ARP who-has {who} tell {tell}: not us")
        reply = arp_reply(hw, addr, req.sender_mac, req.sender_ip)
        return Answer(
            "arp", reply, f"ARP who-has {who} tell {tell}: replied {who} is-at {format_mac(hw)}"
        )
    if eth.ethertype != ETHERTYPE_IPV4:
        text = f"Ethernet type {eth.ethertype:#06x} from {format_mac(eth.src)}"
        return Answer("ignored", None, text)
    try:
        parsed = parse_ipv4(eth.payload)
    except ValueError as exc:
        return Answer("malformed", None, f"IPv4: {exc}")
    ans = _echo_answer(parsed, addr, ident)
    if ans.reply is None:
        return ans
    return Answer(ans.kind, ethernet(eth.src, hw, ETHERTYPE_IPV4, ans.reply), ans.description)
