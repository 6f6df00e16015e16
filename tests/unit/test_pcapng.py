"""The pure-Python pcapng writer: block layout, padding, options, and files that real readers
(dpkt; tshark when installed) read back packet for packet."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from aiomemif import ChainedPacket
from aiomemif.tools.pcapng import (
    BLOCK_EPB,
    BLOCK_IDB,
    BLOCK_SHB,
    BYTE_ORDER_MAGIC,
    DIRECTION_INBOUND,
    DIRECTION_OUTBOUND,
    EPB_FLAGS,
    EPB_QUEUE,
    IF_NAME,
    IF_TSRESOL,
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    OPT_COMMENT,
    SHB_USERAPPL,
    PcapngWriter,
    enhanced_packet_block,
    interface_description_block,
    option,
    options,
    section_header_block,
)

# -- a minimal block walker (structure checks only; the real readers come below) -------


def blocks(data: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of every block, checking both length fields and 32-bit alignment."""
    out = []
    at = 0
    while at < len(data):
        btype, total = struct.unpack_from("<II", data, at)
        assert total % 4 == 0 and total >= 12, (at, total)
        (trailer,) = struct.unpack_from("<I", data, at + total - 4)
        assert trailer == total, "trailing length differs from the leading one"
        out.append((btype, data[at + 8 : at + total - 4]))
        at += total
    assert at == len(data)
    return out


def parse_options(raw: bytes) -> list[tuple[int, bytes]]:
    """Options up to and including opt_endofopt (code 0), checking the padding is zero."""
    out = []
    at = 0
    while at < len(raw):
        code, length = struct.unpack_from("<HH", raw, at)
        value = raw[at + 4 : at + 4 + length]
        pad = -length & 3
        assert raw[at + 4 + length : at + 4 + length + pad] == bytes(pad)
        out.append((code, value))
        at += 4 + length + pad
        if code == 0:
            assert length == 0
            break
    assert at == len(raw), "bytes after opt_endofopt"
    return out


def epb_fields(body: bytes) -> tuple[int, int, int, int, bytes, list[tuple[int, bytes]]]:
    iface, hi, lo, cap, orig = struct.unpack_from("<IIIII", body)
    data = body[20 : 20 + cap]
    padded = cap + (-cap & 3)
    assert body[20 + cap : 20 + padded] == bytes(padded - cap)
    return iface, (hi << 32) | lo, cap, orig, data, parse_options(body[20 + padded :])


def frame(n: int) -> bytes:
    return bytes((i * 7 + n) & 0xFF for i in range(n))


# -- structure ------------------------------------------------------------------------


def test_option_encoding_pads_to_32_bits() -> None:
    assert option(OPT_COMMENT, "abc") == b"\x01\x00\x03\x00abc\x00"
    assert option(OPT_COMMENT, "abcd") == b"\x01\x00\x04\x00abcd"
    assert option(IF_TSRESOL, b"\x09") == b"\x09\x00\x01\x00\x09\x00\x00\x00"
    assert option(2, b"") == b"\x02\x00\x00\x00"
    assert options([]) == b""
    assert options([option(OPT_COMMENT, "x")]).endswith(b"\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="at most 65535"):
        option(OPT_COMMENT, bytes(70000))


def test_section_header_block() -> None:
    shb = section_header_block(application="app 1", os="Linux", comment="hello")
    ((btype, body),) = blocks(shb)
    assert btype == BLOCK_SHB == 0x0A0D0D0A
    magic, major, minor, section_length = struct.unpack_from("<IHHq", body)
    assert (magic, major, minor, section_length) == (BYTE_ORDER_MAGIC, 1, 0, -1)
    opts = dict(parse_options(body[16:]))
    assert opts[SHB_USERAPPL] == b"app 1"
    assert opts[3] == b"Linux"
    assert opts[OPT_COMMENT] == b"hello"
    # Without options there is no opt_endofopt either.
    assert len(section_header_block()) == 28


def test_interface_description_block() -> None:
    idb = interface_description_block(LINKTYPE_RAW, 128, name="memif0", tsresol=9)
    ((btype, body),) = blocks(idb)
    assert btype == BLOCK_IDB
    assert struct.unpack_from("<HHI", body) == (LINKTYPE_RAW, 0, 128)
    opts = parse_options(body[8:])
    assert opts == [(IF_NAME, b"memif0"), (IF_TSRESOL, b"\x09"), (0, b"")]
    with pytest.raises(ValueError, match="tsresol"):
        interface_description_block(LINKTYPE_ETHERNET, tsresol=12)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 63, 64, 65])
def test_enhanced_packet_block_padding(n: int) -> None:
    data = frame(n)
    epb = enhanced_packet_block(0, 5, data)
    ((btype, body),) = blocks(epb)
    assert btype == BLOCK_EPB
    assert len(epb) == 32 + n + (-n & 3)
    iface, ts, cap, orig, got, opts = epb_fields(body)
    assert (iface, ts, cap, orig, got, opts) == (0, 5, n, n, data, [])


def test_enhanced_packet_block_options_and_timestamp_split() -> None:
    ts = (3 << 32) | 7
    epb = enhanced_packet_block(
        2, ts, b"abc", 1500, direction=DIRECTION_OUTBOUND, queue=5, comment="c"
    )
    ((_, body),) = blocks(epb)
    assert struct.unpack_from("<III", body) == (2, 3, 7)
    _iface, got_ts, cap, orig, data, opts = epb_fields(body)
    assert (got_ts, cap, orig, data) == (ts, 3, 1500, b"abc")
    assert opts == [
        (OPT_COMMENT, b"c"),
        (EPB_FLAGS, struct.pack("<I", 2)),
        (EPB_QUEUE, struct.pack("<I", 5)),
        (0, b""),
    ]


def test_writer_timestamps_snaplen_and_packet_kinds() -> None:
    out = io.BytesIO()
    w = PcapngWriter(out, application="test")
    assert w.add_interface(LINKTYPE_ETHERNET, name="a") == 0
    assert w.add_interface(LINKTYPE_RAW, snaplen=10, tsresol=9) == 1
    chain = ChainedPacket([memoryview(b"abcdef"), memoryview(b"ghijkl")])
    w.write_packet(b"x" * 20, timestamp_ns=1_700_000_000_123_456_789, direction=DIRECTION_INBOUND)
    w.write_packet(memoryview(bytearray(b"y" * 30)), interface=1, timestamp_ns=1_234_567_891)
    w.write_packet(chain, timestamp_ns=0)
    w.write_packet(memoryview(struct.pack("<4H", 1, 2, 3, 4)).cast("B").cast("H"), timestamp_ns=0)
    assert w.packets == 4
    with pytest.raises(ValueError, match="no interface 2"):
        w.write_packet(b"z", interface=2)
    types = [t for t, _ in blocks(out.getvalue())]
    assert types == [BLOCK_SHB, BLOCK_IDB, BLOCK_IDB, BLOCK_EPB, BLOCK_EPB, BLOCK_EPB, BLOCK_EPB]
    assert w.bytes_written == len(out.getvalue())
    epbs = [epb_fields(b) for t, b in blocks(out.getvalue()) if t == BLOCK_EPB]
    # microseconds on interface 0, nanoseconds on interface 1
    assert epbs[0][1] == 1_700_000_000_123_456
    assert epbs[0][5][0] == (EPB_FLAGS, b"\x01\x00\x00\x00")
    assert epbs[1][0] == 1 and epbs[1][1] == 1_234_567_891
    # cut to the snap length, original length kept
    assert epbs[1][2:5] == (10, 30, b"y" * 10)
    assert epbs[2][4] == b"abcdefghijkl"
    assert epbs[3][2:5] == (8, 8, struct.pack("<4H", 1, 2, 3, 4))


# -- real readers ---------------------------------------------------------------------


def sample_file(path: Path, linktype: int, tsresol: int) -> list[tuple[int, bytes]]:
    """Write packets of many sizes; return (timestamp ns, data) as written."""
    packets = [(1_700_000_000_000_000_000 + i * 1_234_567, frame(14 + i * 37)) for i in range(40)]
    with path.open("wb") as f:
        w = PcapngWriter(f)
        w.add_interface(linktype, name="memif0", description="test", tsresol=tsresol)
        for ts, data in packets:
            w.write_packet(data, timestamp_ns=ts, direction=DIRECTION_INBOUND, queue=1)
    return packets


@pytest.mark.parametrize("tsresol", [6, 9])
def test_dpkt_reads_it_back(tmp_path: Path, tsresol: int) -> None:
    dpkt = pytest.importorskip("dpkt")
    path = tmp_path / "a.pcapng"
    written = sample_file(path, LINKTYPE_ETHERNET, tsresol)
    with path.open("rb") as f:
        reader = dpkt.pcapng.Reader(f)
        assert reader.datalink() == LINKTYPE_ETHERNET
        got = list(reader)
    assert [data for _, data in got] == [data for _, data in written]
    unit = 10 ** (9 - tsresol)
    for (ts, _), (ns, _) in zip(got, written, strict=True):
        assert ts == pytest.approx((ns // unit * unit) / 1e9, abs=1e-6)


def test_dpkt_reads_raw_ip_link_type(tmp_path: Path) -> None:
    dpkt = pytest.importorskip("dpkt")
    path = tmp_path / "b.pcapng"
    written = sample_file(path, LINKTYPE_RAW, 6)
    with path.open("rb") as f:
        reader = dpkt.pcapng.Reader(f)
        assert reader.datalink() == LINKTYPE_RAW
        assert [bytes(d) for _, d in reader] == [d for _, d in written]


def tshark_json(path: Path) -> list[dict[str, object]]:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (apt-get install -y tshark)")
    out = subprocess.run(
        [tshark, "-r", str(path), "-T", "json", "-x"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return [p["_source"]["layers"] for p in json.loads(out.stdout)]


@pytest.mark.parametrize("tsresol", [6, 9])
def test_tshark_reads_it_back(tmp_path: Path, tsresol: int) -> None:
    path = tmp_path / "c.pcapng"
    written = sample_file(path, LINKTYPE_ETHERNET, tsresol)
    layers = tshark_json(path)
    assert len(layers) == len(written)
    for layer, (ns, data) in zip(layers, written, strict=True):
        fr = layer["frame"]
        assert isinstance(fr, dict)
        raw = layer["frame_raw"]
        assert isinstance(raw, list)
        assert bytes.fromhex(raw[0]) == data
        assert int(fr["frame.len"]) == len(data)
        assert fr["frame.interface_id_tree"]["frame.interface_name"] == "memif0"
        assert fr["frame.interface_queue"] == "1"
        assert int(fr["frame.packet_flags"], 16) == DIRECTION_INBOUND
        unit = 10 ** (9 - tsresol)
        sec, frac = fr["frame.time_epoch"].split(".")
        assert int(sec) * 10**9 + int(frac.ljust(9, "0")) == ns // unit * unit


def test_tshark_snaplen_and_raw_ip(tmp_path: Path) -> None:
    path = tmp_path / "d.pcapng"
    ip = bytes.fromhex("450000400000400040fdad99c6120001c6120002") + bytes(44)
    with path.open("wb") as f:
        w = PcapngWriter(f)
        w.add_interface(LINKTYPE_RAW, snaplen=24)
        w.write_packet(ip, direction=DIRECTION_OUTBOUND)
    (layer,) = tshark_json(path)
    fr = layer["frame"]
    assert isinstance(fr, dict)
    assert (fr["frame.len"], fr["frame.cap_len"]) == ("64", "24")
    assert int(fr["frame.packet_flags"], 16) == DIRECTION_OUTBOUND
    assert layer["ip"]["ip.dst"] == "198.18.0.2"  # type: ignore[index]
