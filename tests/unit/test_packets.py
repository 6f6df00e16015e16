"""aiomemif.tools.packets: checksums against known vectors, build/parse round trips, hostile
input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiomemif import ChainedPacket
from aiomemif.tools import packets
from aiomemif.tools.packets import (
    ARP_REPLY,
    ARP_REQUEST,
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    IPPROTO_ICMP,
    answer_frame,
    answer_ip,
    arp_reply,
    arp_request,
    checksum,
    ethernet,
    icmp_echo,
    ipv4,
    parse_arp,
    parse_ethernet,
    parse_icmp,
    parse_ipv4,
)

MAC_A = "02:fe:00:00:00:01"
MAC_B = "02:fe:00:00:00:02"
IP_A = "192.168.1.1"
IP_B = "192.168.1.2"


def reference_checksum(data: bytes) -> int:
    """RFC 1071 spelled out: add 16-bit words with end-around carry, complement."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# --- checksum ---------------------------------------------------------------------------------


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2 ^ 0xFFFF == 0x220D


def test_checksum_known_ipv4_header() -> None:
    # The classic example header (192.168.0.1 -> 192.168.0.199, UDP, DF) has checksum b861.
    header = bytes.fromhex("45000073000040004011b861c0a80001c0a800c7")
    zeroed = header[:10] + b"\0\0" + header[12:]
    assert checksum(zeroed) == 0xB861
    assert checksum(header) == 0  # a correct header sums to zero
    assert ipv4("192.168.0.1", "192.168.0.199", 17, bytes(95), dont_fragment=True)[:20] == header


def test_checksum_known_icmp_echo() -> None:
    # Windows ping's first echo request: id 1, seq 1, payload "abc...wabc...i", checksum 4d5a.
    msg = icmp_echo(1, 1, b"abcdefghijklmnopqrstuvwabcdefghi")
    assert msg[:8] == bytes.fromhex("08004d5a00010001")
    assert checksum(msg) == 0


def test_checksum_edge_cases() -> None:
    assert checksum(b"") == 0xFFFF
    assert checksum(bytes(7)) == 0xFFFF
    assert checksum(b"\xff\xff") == 0x0000  # sum is "negative zero"
    assert checksum(b"\x01") == checksum(b"\x01\x00") == 0xFEFF  # odd length: pad a zero
    assert checksum(bytearray(b"\x12\x34")) == checksum(memoryview(b"\x12\x34")) == 0xEDCB


@given(st.binary(max_size=2000))
def test_checksum_matches_reference(data: bytes) -> None:
    assert checksum(data) == reference_checksum(data)


@given(st.binary(max_size=300).filter(lambda b: len(b) % 2 == 0))
def test_checksum_in_place_verifies(data: bytes) -> None:
    with_sum = data + checksum(data).to_bytes(2, "big")
    assert reference_checksum(with_sum) == 0
    assert checksum(with_sum) == 0


# --- addresses --------------------------------------------------------------------------------


def test_address_helpers() -> None:
    assert packets.parse_mac("02:FE:0:0:0:1") == bytes.fromhex("02fe00000001")
    assert packets.parse_mac("02-fe-00-00-00-01") == bytes.fromhex("02fe00000001")
    assert packets.format_mac(bytes.fromhex("02fe00000001")) == MAC_A
    assert packets.parse_ip(IP_A) == bytes([192, 168, 1, 1])
    assert packets.format_ip(bytes([10, 0, 0, 255])) == "10.0.0.255"
    assert packets.parse_ip(b"\x01\x02\x03\x04") == b"\x01\x02\x03\x04"
    for bad in ("", "02:fe:00:00:00", "02:fe:00:00:00:01:02", "0g:fe:00:00:00:01",
                "+2:fe:00:00:00:01", "002:fe:00:00:00:01", b"\x01"):  # fmt: skip
        with pytest.raises(ValueError, match="MAC"):
            packets.parse_mac(bad)
    for bad_ip in ("", "1.2.3", "256.1.1.1", "::1", "a.b.c.d", b"\x01\x02"):
        with pytest.raises(ValueError, match="IPv4"):
            packets.parse_ip(bad_ip)


# --- build / parse round trips ----------------------------------------------------------------


def test_arp_request_round_trip() -> None:
    frame = arp_request(MAC_B, IP_B, IP_A)
    assert len(frame) == 60  # padded to the Ethernet minimum
    eth = parse_ethernet(frame)
    assert (eth.dst, eth.src) == (BROADCAST_MAC, packets.parse_mac(MAC_B))
    assert eth.ethertype == ETHERTYPE_ARP
    msg = parse_arp(eth.payload)
    assert msg.is_request and msg.op == ARP_REQUEST
    assert msg.sender_mac == packets.parse_mac(MAC_B)
    assert msg.sender_ip == packets.parse_ip(IP_B)
    assert msg.target_mac == bytes(6)
    assert msg.target_ip == packets.parse_ip(IP_A)
    # The exact bytes: Ethernet/IPv4 ARP, 6/4, op 1.
    assert frame[12:22] == bytes.fromhex("08060001080006040001")


def test_arp_reply_round_trip() -> None:
    frame = arp_reply(MAC_A, IP_A, MAC_B, IP_B)
    eth = parse_ethernet(frame)
    assert eth.dst == packets.parse_mac(MAC_B) and eth.src == packets.parse_mac(MAC_A)
    msg = parse_arp(eth.payload)
    assert msg.is_reply and msg.op == ARP_REPLY
    assert (msg.sender_ip, msg.target_ip) == (packets.parse_ip(IP_A), packets.parse_ip(IP_B))


@given(
    ident=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=1500),
    ttl=st.integers(0, 255),
    ip_ident=st.integers(0, 0xFFFF),
    reply=st.booleans(),
)
def test_icmp_in_ipv4_in_ethernet_round_trip(
    ident: int, seq: int, payload: bytes, ttl: int, ip_ident: int, reply: bool
) -> None:
    echo = icmp_echo(ident, seq, payload, reply=reply)
    packet = ipv4(IP_B, IP_A, IPPROTO_ICMP, echo, ttl=ttl, ident=ip_ident)
    frame = ethernet(MAC_A, MAC_B, ETHERTYPE_IPV4, packet)
    eth = parse_ethernet(frame)
    assert eth.ethertype == ETHERTYPE_IPV4
    ip = parse_ipv4(eth.payload)  # padding (short frames) is cut by the total length
    assert ip.checksum_ok and ip.ttl == ttl and ip.ident == ip_ident
    assert (ip.src, ip.dst, ip.protocol) == (packets.parse_ip(IP_B), packets.parse_ip(IP_A), 1)
    assert ip.payload == echo and not ip.is_fragment and ip.options == b""
    msg = parse_icmp(ip.payload)
    assert msg.checksum_ok and (msg.ident, msg.seq, msg.payload) == (ident, seq, payload)
    assert msg.is_echo_reply if reply else msg.is_echo_request


def test_parsers_take_memoryview_and_chained_packets() -> None:
    packet = ipv4(IP_B, IP_A, 1, icmp_echo(1, 2, b"x" * 3000))
    frame = ethernet(MAC_A, MAC_B, ETHERTYPE_IPV4, packet)
    chained = ChainedPacket([memoryview(frame[:2048]), memoryview(frame[2048:])])
    for form in (frame, bytearray(frame), memoryview(frame), chained):
        eth = parse_ethernet(form)
        assert parse_icmp(parse_ipv4(eth.payload).payload).seq == 2
    assert answer_frame(chained, MAC_A, IP_A).kind == "echo"


def test_checksum_flags_corruption() -> None:
    packet = bytearray(ipv4(IP_B, IP_A, IPPROTO_ICMP, icmp_echo(1, 1, b"hello")))
    packet[8] ^= 1  # TTL
    assert not parse_ipv4(packet).checksum_ok
    packet[8] ^= 1
    packet[-1] ^= 0x40  # payload
    ip = parse_ipv4(packet)
    assert ip.checksum_ok and not parse_icmp(ip.payload).checksum_ok


def test_ipv4_options_and_fragments() -> None:
    options = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL
    body = b"payload"
    header = struct.pack("!BBHHHBBH4s4s", 0x46, 0, 24 + len(body), 7, 0x2000, 64, 17, 0,
                         packets.parse_ip(IP_B), packets.parse_ip(IP_A))  # fmt: skip
    header += options
    header = header[:10] + checksum(header).to_bytes(2, "big") + header[12:]
    ip = parse_ipv4(header + body + b"\0\0pad")
    assert ip.options == options and ip.payload == body and ip.checksum_ok
    assert ip.is_fragment and not ip.dont_fragment


def test_builders_reject_bad_fields() -> None:
    with pytest.raises(ValueError, match="65535"):
        ipv4(IP_A, IP_B, 1, bytes(65516))
    with pytest.raises(ValueError, match="out of range"):
        ipv4(IP_A, IP_B, 1, b"", ttl=256)
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        icmp_echo(70000, 1)
    with pytest.raises(ValueError, match="MAC"):
        ethernet("nope", MAC_A, 0x0800, b"")
    assert len(ethernet(MAC_A, MAC_B, 0x88B5, b"x", pad=False)) == 15


# --- malformed input: ValueError and nothing else ---------------------------------------------


@pytest.mark.parametrize(
    ("parser", "data", "message"),
    [
        (parse_ethernet, b"\x00" * 13, "shorter than its header"),
        (parse_arp, b"\x00" * 27, "shorter than 28"),
        (parse_arp, bytes.fromhex("0006080006040001") + bytes(20), "not Ethernet/IPv4 ARP"),
        (parse_ipv4, b"\x45" + bytes(18), "shorter than its header"),
        (parse_ipv4, b"\x65" + bytes(19), "version 6"),
        (parse_ipv4, b"\x44\x00\x00\x14" + bytes(16), "header length 16"),
        (parse_ipv4, b"\x45\x00\x00\x10" + bytes(16), "smaller than its header"),
        (parse_ipv4, b"\x45\x00\x00\x30" + bytes(16), "exceeds the 20 bytes"),
        (parse_ipv4, b"\x4f\x00\x00\x3c" + bytes(36), "exceeds the 40 bytes"),
        (parse_icmp, b"\x08\x00\x00", "shorter than its header"),
        (parse_icmp, 5, "not a bytes-like packet"),
        (parse_ethernet, "text", "not a bytes-like packet"),
        (parse_ethernet, object(), "not a bytes-like packet"),
    ],
)
def test_malformed_raises_value_error(parser: object, data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parser(data)  # type: ignore[operator]


@given(st.binary(max_size=200))
def test_parsers_never_raise_anything_but_value_error(data: bytes) -> None:
    for parser in (parse_ethernet, parse_arp, parse_ipv4, parse_icmp):
        try:
            parser(data)
        except ValueError:
            pass
    # The answering helpers never raise at all for bad input.
    assert answer_frame(data, MAC_A, IP_A).kind in ("arp", "echo", "ignored", "malformed")
    assert answer_ip(data, IP_A).kind in ("echo", "ignored", "malformed")


@given(st.integers(0, 97), st.integers(0, 255))
def test_every_truncation_and_bit_flip_of_a_ping_is_handled(cut: int, flip: int) -> None:
    frame = bytearray(
        ethernet(MAC_A, MAC_B, ETHERTYPE_IPV4, ipv4(IP_B, IP_A, 1, icmp_echo(9, 9, bytes(56))))
    )
    frame[flip % len(frame)] ^= 1 << (flip % 8)
    ans = answer_frame(bytes(frame[: len(frame) - cut]), MAC_A, IP_A)
    if ans.kind == "echo":  # still a valid ping to us: then the reply must be valid too
        assert ans.reply is not None
        ip = parse_ipv4(parse_ethernet(ans.reply).payload)
        assert ip.checksum_ok and parse_icmp(ip.payload).checksum_ok


# --- answering --------------------------------------------------------------------------------


def test_answer_arp_request_for_us() -> None:
    ans = answer_frame(arp_request(MAC_B, IP_B, IP_A), MAC_A, IP_A)
    assert ans.kind == "arp" and ans.reply == arp_reply(MAC_A, IP_A, MAC_B, IP_B)
    assert "who-has 192.168.1.1 tell 192.168.1.2" in ans.description
    assert answer_frame(arp_request(MAC_B, IP_B, "10.0.0.1"), MAC_A, IP_A).kind == "ignored"
    assert answer_frame(arp_reply(MAC_B, IP_B, MAC_A, IP_A), MAC_A, IP_A).kind == "ignored"


@pytest.mark.parametrize("size", [0, 1, 56, 1472, 4000, 65000])
def test_answer_echo_request_ethernet(size: int) -> None:
    payload = bytes(i & 0xFF for i in range(size))
    request = ipv4(IP_B, IP_A, IPPROTO_ICMP, icmp_echo(0x1234, 77, payload), tos=0x10)
    ans = answer_frame(ethernet(MAC_A, MAC_B, ETHERTYPE_IPV4, request), MAC_A, IP_A, ident=5)
    assert ans.kind == "echo" and ans.reply is not None
    eth = parse_ethernet(ans.reply)
    assert (eth.dst, eth.src) == (packets.parse_mac(MAC_B), packets.parse_mac(MAC_A))
    ip = parse_ipv4(eth.payload)
    assert ip.checksum_ok and ip.ttl == 64 and ip.ident == 5 and ip.tos == 0x10
    assert (ip.src, ip.dst) == (packets.parse_ip(IP_A), packets.parse_ip(IP_B))
    msg = parse_icmp(ip.payload)
    assert msg.is_echo_reply and msg.checksum_ok
    assert (msg.ident, msg.seq, msg.payload) == (0x1234, 77, payload)


def test_answer_ip_mode() -> None:
    request = ipv4(IP_B, IP_A, IPPROTO_ICMP, icmp_echo(1, 2, b"abc"))
    ans = answer_ip(request, IP_A)
    assert ans.kind == "echo" and ans.reply is not None
    ip = parse_ipv4(ans.reply)
    assert ip.checksum_ok and parse_icmp(ip.payload).is_echo_reply
    assert answer_ip(ipv4(IP_B, "10.9.9.9", 1, icmp_echo(1, 2)), IP_A).kind == "ignored"
    assert answer_ip(ipv4(IP_B, IP_A, 17, b"udp"), IP_A).kind == "ignored"
    assert answer_ip(ipv4(IP_B, IP_A, 1, icmp_echo(1, 2, reply=True)), IP_A).kind == "ignored"
    assert answer_ip(b"\x60" + bytes(39), IP_A).kind == "malformed"  # IPv6 is not for us


def test_answer_rejects_bad_checksums_and_ignores_others() -> None:
    good = bytearray(ipv4(IP_B, IP_A, IPPROTO_ICMP, icmp_echo(1, 2, b"abcd")))
    bad_ip = bytearray(good)
    bad_ip[10] ^= 0xFF
    assert answer_ip(bad_ip, IP_A).kind == "malformed"
    bad_icmp = bytearray(good)
    bad_icmp[-1] ^= 0xFF
    assert answer_ip(bad_icmp, IP_A).description.endswith("bad checksum")
    assert answer_frame(ethernet(MAC_A, MAC_B, 0x86DD, bytes(40)), MAC_A, IP_A).kind == "ignored"
    short_arp = ethernet(MAC_A, MAC_B, ETHERTYPE_ARP, bytes(10), pad=False)
    assert answer_frame(short_arp, MAC_A, IP_A).kind == "malformed"


def test_cross_check_with_dpkt() -> None:
    """An independent implementation agrees on our bytes (skipped without dpkt)."""
    dpkt = pytest.importorskip("dpkt")
    packet = ipv4(IP_B, IP_A, IPPROTO_ICMP, icmp_echo(3, 4, b"ping" * 10), ttl=33)
    frame = ethernet(MAC_A, MAC_B, ETHERTYPE_IPV4, packet)
    eth = dpkt.ethernet.Ethernet(frame)
    ip = eth.data
    assert ip.ttl == 33 and ip.p == 1
    computed = dpkt.ip.IP(bytes(ip))
    computed.sum = 0
    assert dpkt.ip.IP(bytes(computed)).sum == ip.sum  # dpkt recomputes the same checksum
    icmp = ip.data
    assert icmp.type == 8 and icmp.data.id == 3 and icmp.data.seq == 4
    fresh = dpkt.icmp.ICMP(type=8, code=0, data=dpkt.icmp.ICMP.Echo(id=3, seq=4, data=b"ping" * 10))
    assert bytes(fresh) == bytes(icmp)
    arp = dpkt.ethernet.Ethernet(arp_request(MAC_B, IP_B, IP_A)).data
    assert arp.op == 1 and arp.tpa == packets.parse_ip(IP_A)
