"""Golden 128-byte control messages from real peers (see tests/data/README.md).

Most files are transcribed from the protocol doc; ``testpmd_*.bin`` are raw live captures
from dpdk-testpmd 22.11.11 (``tests/data/capture_testpmd.py``, not run by the suite). Each
file is decoded and every field checked; where the file's padding is zero (it is in every
testpmd capture), ``encode`` of the decoded value must give the file back byte for byte.
The client handshake, fed the DPDK HELLO, must emit exactly the bytes the Python probe sent
to testpmd in §9.1.
"""

from __future__ import annotations

from array import array
from pathlib import Path

import pytest

from aiomemif import InterfaceConfig
from aiomemif._core.handshake import ClientHandshake, Established, HelloReceived, SendMessage
from aiomemif._core.layout import plan_client_layout
from aiomemif._core.messages import (
    Ack,
    AddRegion,
    AddRing,
    Connect,
    Connected,
    Disconnect,
    Hello,
    Init,
    Message,
    decode_untrusted,
    encode,
)
from aiomemif._core.ring import descriptor_table
from aiomemif._core.wire import RingType

DATA = Path(__file__).resolve().parents[1] / "data"


def load(name: str) -> bytes:
    data = (DATA / name).read_bytes()
    assert len(data) == 128
    return data


#: file -> the value it must decode to, with every field spelled out.
GOLDEN: dict[str, Message] = {
    "hello_dpdk_22.11.11.bin": Hello(
        name="DPDK 22.11.11",
        min_version=0x0200,
        max_version=0x0200,
        max_region=255,
        max_m2s_ring=255,
        max_s2m_ring=255,
        max_log2_ring_size=14,
    ),
    "init_id7_pyprobe.bin": Init(
        version=0x0200, interface_id=7, mode=0, secret=b"", name="pyprobe"
    ),
    "init_id3_secret_dpdk.bin": Init(
        version=0x0200, interface_id=3, mode=0, secret=b"abc123", name="DPDK 22.11.11"
    ),
    "ack.bin": Ack(),
    "add_region_0_4227328.bin": AddRegion(index=0, size=4_227_328),
    "add_ring_s2m_0.bin": AddRing(
        RingType.S2M, index=0, region=0, offset=0, log2_ring_size=10, private_hdr_size=0
    ),
    "add_ring_m2s_0.bin": AddRing(
        RingType.M2S, index=0, region=0, offset=16_512, log2_ring_size=10, private_hdr_size=0
    ),
    "connect_pyprobe-if.bin": Connect(if_name="pyprobe-if"),
    "connected_net_memif0.bin": Connected(if_name="net_memif0"),
    "disconnect_probe_says_bye.bin": Disconnect(reason="probe says bye", code=0),
}


#: Live captures from dpdk-testpmd 22.11.11 as server (tests/data/capture_testpmd.py):
#: file -> the value it must decode to. Every DISCONNECT carries code 0.
TESTPMD: dict[str, Message] = {
    "testpmd_hello.bin": Hello(
        name="DPDK 22.11.11",
        min_version=0x0200,
        max_version=0x0200,
        max_region=255,
        max_m2s_ring=255,
        max_s2m_ring=255,
        max_log2_ring_size=14,
    ),
    "testpmd_ack.bin": Ack(),
    "testpmd_connected.bin": Connected(if_name="net_memif0"),
    **{
        f"testpmd_disconnect_{name}.bin": Disconnect(reason=reason, code=0)
        for name, reason in [
            ("id_not_found", "ID not found"),
            ("incompatible_version", "Incompatible memif version"),
            ("only_ethernet_mode", "Only ethernet mode supported"),
            ("incorrect_secret", "Incorrect secret"),
            ("secret_required", "Secret required"),
            ("unexpected_message", "Unexpected message"),
            ("invalid_message_size", "Invalid message size"),
            ("unknown_message_type", "Unknown message type"),
            ("missing_region_fd", "Missing region fd"),
            ("missing_interrupt_fd", "Missing interrupt fd"),
            ("already_connected", "Already connected"),
        ]
    },
}

#: Where each message's defined fields end; everything after is padding.
FIELDS_END = {Ack: 2, Hello: 45, Connected: 34, Disconnect: 102}


def test_every_data_file_is_covered() -> None:
    files = {p.name for p in DATA.glob("*.bin")}
    assert files == set(GOLDEN) | set(TESTPMD) | {"ack_libmemif_junk.bin"}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_decodes_to_expected_fields(name: str) -> None:
    msg = decode_untrusted(load(name))
    expected = GOLDEN[name]
    assert type(msg) is type(expected)
    assert msg == expected


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_reencodes_byte_for_byte(name: str) -> None:
    data = load(name)
    assert encode(decode_untrusted(data)) == data
    assert encode(GOLDEN[name]) == data


def test_hello_fields_individually() -> None:
    msg = decode_untrusted(load("hello_dpdk_22.11.11.bin"))
    assert isinstance(msg, Hello)
    assert msg.name == "DPDK 22.11.11"
    assert (msg.min_version, msg.max_version) == (0x0200, 0x0200)
    assert (msg.max_region, msg.max_m2s_ring, msg.max_s2m_ring) == (255, 255, 255)
    assert msg.max_log2_ring_size == 14


def test_init_with_secret_has_mode_at_8_and_secret_at_9() -> None:
    data = load("init_id3_secret_dpdk.bin")
    assert data[8] == 0
    assert data[9:16] == b"abc123\0"
    assert data[33:46] == b"DPDK 22.11.11"
    msg = decode_untrusted(data)
    assert isinstance(msg, Init)
    assert msg.version == 0x0200
    assert msg.interface_id == 3
    assert msg.mode == 0
    assert msg.secret == b"abc123"
    assert msg.name == "DPDK 22.11.11"


def test_add_ring_private_hdr_size_is_at_13() -> None:
    for name in ("add_ring_s2m_0.bin", "add_ring_m2s_0.bin"):
        data = load(name)
        assert data[12] == 10
        assert data[13:15] == b"\0\0"
        msg = decode_untrusted(data)
        assert isinstance(msg, AddRing)
        assert msg.private_hdr_size == 0


def test_libmemif_ack_with_junk_decodes_as_ack() -> None:
    data = load("ack_libmemif_junk.bin")
    assert data[2:6] != bytes(4)  # the file really carries junk
    assert decode_untrusted(data) == Ack()
    assert encode(Ack()) == load("ack.bin")  # we zero-fill what libmemif does not


def test_dpdk_layout_from_observed_offsets() -> None:
    """plan_client_layout(1, 1, 10, 2048, 64) is DPDK's copy-mode layout (§5.3, §9)."""
    layout = plan_client_layout(1, 1, 10, 2048, 64)
    assert layout.region_size == 4_227_328
    assert layout.ring_size == 1024
    assert [r.ring_type for r in layout.rings] == [RingType.S2M, RingType.M2S]
    (s2m,) = layout.s2m
    (m2s,) = layout.m2s
    assert (s2m.index, s2m.region, s2m.offset, s2m.buffers) == (0, 0, 0, 33_024)
    assert (m2s.index, m2s.region, m2s.offset, m2s.buffers) == (0, 0, 16_512, 2_130_176)


def test_dpdk_descriptors_from_observed_offsets() -> None:
    """§9.2: S2M desc[0] at 33024 and desc[1023] at 2128128; M2S 2130176 .. 4225280."""
    layout = plan_client_layout(1, 1, 10, 2048, 64)

    def table(first: int) -> bytes:
        return bytes(
            descriptor_table(array("I", range(first, first + 1024 * 2048, 2048)), 0, 0, 2048)
        )

    s2m = table(layout.s2m[0].buffers)
    m2s = table(layout.m2s[0].buffers)

    def desc(table: bytes, k: int) -> tuple[int, int, int, int, int]:
        raw = table[16 * k : 16 * k + 16]
        return (
            int.from_bytes(raw[0:2], "little"),
            int.from_bytes(raw[2:4], "little"),
            int.from_bytes(raw[4:8], "little"),
            int.from_bytes(raw[8:12], "little"),
            int.from_bytes(raw[12:16], "little"),
        )

    assert desc(s2m, 0) == (0, 0, 2048, 33_024, 0)
    assert desc(s2m, 1023) == (0, 0, 2048, 2_128_128, 0)
    assert desc(m2s, 0) == (0, 0, 2048, 2_130_176, 0)
    assert desc(m2s, 1023) == (0, 0, 2048, 4_225_280, 0)
    assert layout.region_size == 4_225_280 + 2048


def test_client_handshake_reproduces_the_probe_bytes() -> None:
    """Fed testpmd's HELLO, the client sends what the §9.1 probe sent, byte for byte."""
    cfg = InterfaceConfig(interface_id=7, app_name="pyprobe", interface_name="pyprobe-if")
    client = ClientHandshake(cfg)
    (ready,) = client.receive(decode_untrusted(load("hello_dpdk_22.11.11.bin")))
    assert isinstance(ready, HelloReceived)
    assert (ready.n_s2m, ready.n_m2s, ready.log2_ring_size) == (1, 1, 10)
    layout = plan_client_layout(ready.n_s2m, ready.n_m2s, ready.log2_ring_size, 2048, 64)
    sent: list[tuple[bytes, int | None]] = []
    outputs = client.begin(layout, [100], [200, 201])
    ack = decode_untrusted(load("ack.bin"))
    while True:
        (out,) = outputs
        assert isinstance(out, SendMessage)
        sent.append((encode(out.message), out.fd))
        if isinstance(out.message, Connect):
            break
        outputs = client.receive(ack)
    assert sent == [
        (load("init_id7_pyprobe.bin"), None),
        (load("add_region_0_4227328.bin"), 100),
        (load("add_ring_s2m_0.bin"), 200),
        (load("add_ring_m2s_0.bin"), 201),
        (load("connect_pyprobe-if.bin"), None),
    ]
    (up,) = client.receive(decode_untrusted(load("connected_net_memif0.bin")))
    assert up == Established("net_memif0")
    assert client.peer_if_name == "net_memif0"


# -- live captures from dpdk-testpmd 22.11.11 (server role) -----------------------------------


@pytest.mark.parametrize("name", sorted(TESTPMD))
def test_testpmd_capture_decodes_to_expected_fields(name: str) -> None:
    msg = decode_untrusted(load(name))
    expected = TESTPMD[name]
    assert type(msg) is type(expected)
    assert msg == expected


@pytest.mark.parametrize("name", sorted(TESTPMD))
def test_testpmd_capture_padding_is_zero(name: str) -> None:
    """testpmd zero-fills its messages: nothing after the defined fields is set."""
    end = FIELDS_END[type(TESTPMD[name])]
    assert load(name)[end:] == bytes(128 - end)


@pytest.mark.parametrize("name", sorted(TESTPMD))
def test_testpmd_capture_reencodes_byte_for_byte(name: str) -> None:
    data = load(name)
    assert encode(decode_untrusted(data)) == data
    assert encode(TESTPMD[name]) == data


def test_testpmd_hello_fields_individually() -> None:
    data = load("testpmd_hello.bin")
    assert data[:2] == b"\x02\x00"
    assert data[2:34] == b"DPDK 22.11.11".ljust(32, b"\0")
    msg = decode_untrusted(data)
    assert isinstance(msg, Hello)
    assert msg.name == "DPDK 22.11.11"
    assert (msg.min_version, msg.max_version) == (0x0200, 0x0200)
    assert (msg.max_region, msg.max_m2s_ring, msg.max_s2m_ring) == (255, 255, 255)
    assert msg.max_log2_ring_size == 14


def test_testpmd_ack_and_connected_fields() -> None:
    ack = load("testpmd_ack.bin")
    assert ack == b"\x01\x00" + bytes(126)
    assert decode_untrusted(ack) == Ack()
    connected = load("testpmd_connected.bin")
    assert connected[:2] == b"\x07\x00"
    msg = decode_untrusted(connected)
    assert isinstance(msg, Connected)
    assert msg.if_name == "net_memif0"


@pytest.mark.parametrize("name", sorted(n for n in TESTPMD if "_disconnect_" in n))
def test_testpmd_disconnect_code_and_reason(name: str) -> None:
    expected = TESTPMD[name]
    assert isinstance(expected, Disconnect)
    data = load(name)
    assert data[:2] == b"\x08\x00"
    assert data[2:6] == bytes(4)  # code: u32 0
    reason = expected.reason.encode()
    assert data[6 : 6 + len(reason) + 1] == reason + b"\0"  # NUL-terminated at offset 6
    msg = decode_untrusted(data)
    assert isinstance(msg, Disconnect)
    assert msg.code == 0
    assert msg.reason == expected.reason


@pytest.mark.parametrize(
    ("captured", "transcribed"),
    [
        ("testpmd_hello.bin", "hello_dpdk_22.11.11.bin"),
        ("testpmd_ack.bin", "ack.bin"),
        ("testpmd_connected.bin", "connected_net_memif0.bin"),
    ],
)
def test_testpmd_capture_matches_the_doc_transcription(captured: str, transcribed: str) -> None:
    """The live captures confirm the vectors transcribed from memif-protocol.md §9.1."""
    assert load(captured) == load(transcribed)
