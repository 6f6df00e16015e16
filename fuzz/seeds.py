"""Write the seed corpora under ``fuzz/corpus/<target>/`` (``python fuzz/seeds.py``).

Each seed is a small program in its target's input format (see each target's docstring):
whole handshakes of both roles, from the golden captures in ``tests/data`` and from
aiomemif's encoder; rings received from and sent into over several laps, with chains,
wrapping cursors and a few bad descriptors. The files are kept in the repository; run
this again after changing an input format.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: import from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiomemif._core.layout import RegionLayout, plan_client_layout
from aiomemif._core.messages import (
    Ack,
    AddRegion,
    AddRing,
    Connect,
    Connected,
    Disconnect,
    Hello,
    Init,
    decode_untrusted,
    encode,
)
from fuzz import fuzz_control as fc
from fuzz import fuzz_receive as fr
from fuzz import fuzz_server_tx as ft

ROOT = Path(__file__).resolve().parent
GOLDEN = ROOT.parent / "tests" / "data"


def golden(name: str) -> bytes:
    return (GOLDEN / f"{name}.bin").read_bytes()


def rec(kind: int, message: bytes) -> bytes:
    return bytes([kind]) + message


# ------------------------------------------------------------------------------ control


def control_seeds() -> dict[str, bytes]:
    seeds: dict[str, bytes] = {}
    # dpdk-testpmd as a client of our server: id 3, secret "abc123", one ring each way.
    dpdk = [
        rec(fc.NO_FD, golden("init_id3_secret_dpdk")),
        rec(fc.SEALED, golden("add_region_0_4227328")),
        rec(fc.EVENTFD, golden("add_ring_s2m_0")),
        rec(fc.EVENTFD, golden("add_ring_m2s_0")),
        rec(fc.NO_FD, golden("connect_pyprobe-if")),
    ]
    secret_cfg = bytes([0b0010, 0x00, 11])
    seeds["server-dpdk"] = secret_cfg + b"".join(dpdk)
    seeds["server-dpdk-then-disconnect"] = (
        secret_cfg + b"".join(dpdk) + rec(0, golden("disconnect_probe_says_bye"))
    )
    seeds["server-dpdk-stray-acks"] = (
        secret_cfg + b"".join(dpdk[:2]) + rec(0, golden("ack")) * 3 + b"".join(dpdk[2:])
    )
    seeds["server-region-same-file"] = secret_cfg + b"".join(
        [dpdk[0], dpdk[1], rec(fc.SAME_FILE, encode(AddRegion(1, 4096)))]
    )
    seeds["server-fd-kinds"] = secret_cfg + b"".join(
        [dpdk[0], rec(fc.UNSEALED, golden("add_region_0_4227328"))]
    )
    seeds["server-semaphore-ring"] = secret_cfg + b"".join(
        [dpdk[0], dpdk[1], rec(fc.SEMAPHORE, golden("add_ring_s2m_0"))]
    )
    seeds["server-ack-flood"] = bytes([0, 0, 11]) + b"".join(
        [rec(0, golden("init_id7_pyprobe")), rec(0, golden("ack")) * 17]
    )
    seeds["server-wrong-secret"] = bytes([0b0100, 0, 11]) + dpdk[0]
    seeds["server-no-secret-id7"] = bytes([0, 0, 11]) + rec(0, golden("init_id7_pyprobe"))
    seeds["server-short-message"] = bytes([0, 0, 11]) + rec(0, golden("init_id7_pyprobe")[:64])
    # aiomemif clients: two regions (SPLIT), several rings, a 128-byte cacheline.
    for name, cfg, layout in (
        ("server-split-2x3", bytes([0, 0x21, 16]), RegionLayout.SPLIT),
        ("server-single-4x4-cl128", bytes([0x40, 0x33, 16]), RegionLayout.SINGLE),
    ):
        cl = 128 if cfg[0] & 0x40 else 64
        n_s2m, n_m2s = 1 + (cfg[1] & 15), 1 + (cfg[1] >> 4)
        plan = plan_client_layout(n_s2m, n_m2s, 6, 256, cl, layout)
        records = [rec(fc.NO_FD, encode(Init(interface_id=7, name="seed")))]
        records += [
            rec(fc.SEALED, encode(AddRegion(i, size))) for i, size in enumerate(plan.region_sizes)
        ]
        records += [
            rec(fc.EVENTFD, encode(AddRing(p.ring_type, p.index, p.region, p.offset, 6)))
            for p in plan.rings
        ]
        records.append(rec(fc.NO_FD, encode(Connect("seed-if"))))
        seeds[name] = cfg + b"".join(records)
    # Our client against dpdk-testpmd's server messages, and against aiomemif's.
    for name, cfg, hello, connected in (
        ("client-testpmd", bytes([1, 0, 4]), golden("testpmd_hello"), golden("testpmd_connected")),
        ("client-dpdk-2x2", bytes([0x83, 0x21, 0x45]), golden("hello_dpdk_22.11.11"),
         golden("connected_net_memif0")),
        ("client-aiomemif", bytes([0x41, 0x00, 9]), encode(Hello("seed", max_m2s_ring=0,
         max_s2m_ring=0, max_log2_ring_size=8)), encode(Connected("seed-if"))),
    ):  # fmt: skip
        config = fc._client_config(cfg)
        hi = decode_untrusted(hello)
        assert isinstance(hi, Hello)
        plan = plan_client_layout(
            min(hi.max_s2m_ring + 1, config.tx_queue_count),
            min(hi.max_m2s_ring + 1, config.rx_queue_count),
            min(hi.max_log2_ring_size, config.log2_ring_size),
            config.buffer_size,
            config.cacheline,
            config.layout,
        )
        acks = len(plan.region_sizes) + len(plan.rings) + 1
        body = rec(0, hello) + rec(0, golden("testpmd_ack")) * acks + rec(0, connected)
        seeds[name] = cfg + body
    seeds["client-refused"] = bytes([1, 0, 4]) + b"".join(
        [rec(0, golden("testpmd_hello")), rec(0, golden("testpmd_disconnect_incorrect_secret"))]
    )
    seeds["client-fd-on-ack"] = bytes([1, 0, 4]) + b"".join(
        [rec(0, golden("testpmd_hello")), rec(fc.EVENTFD, golden("ack_libmemif_junk"))]
    )
    seeds["client-bad-version"] = bytes([1, 0, 4]) + rec(
        0, encode(Hello(min_version=0x0300, max_version=0x0300))
    )
    seeds["client-disconnect-first"] = bytes([1, 0, 4]) + rec(0, encode(Disconnect("no")))
    seeds["client-unknown-type"] = bytes([1, 0, 4]) + rec(0, b"\x09\x00" + bytes(126))
    seeds["client-ack-first"] = bytes([1, 0, 4]) + rec(0, encode(Ack()))
    return seeds


# ------------------------------------------------------------------------------ receive


def _rx_honest(k: int, count: int, *fields: tuple[str, int]) -> bytes:
    out = bytes([fr.HONEST, k - 1, count - 1])
    for fmt, value in fields:
        out += struct.pack("<" + fmt, value)
    return out


def receive_seeds() -> dict[str, bytes]:
    seeds: dict[str, bytes] = {}
    poll_release = bytes([fr.POLL_RELEASE, 64])
    # server (S2M): log2 3, start 0xfffe (wraps), no limit, region 0 with 2 KiB to spare
    for name, b0, log2, start in (
        ("server-8-wrap", 0x00, 3, 0xFFFE),
        ("server-8-bytes-cl128", 0x06, 3, 0xFFFA),
        ("server-32-two-regions", 0x08, 5, 0x0000),
        ("server-32-bytes", 0x04, 5, 0xFF00),
    ):
        cl = 128 if b0 & 2 else 64
        ring_len = 2 * cl + 16 * (1 << log2)
        head = bytes([b0, log2]) + struct.pack("<HBH", start, 0, 8192)
        if b0 & 0x18:
            head += struct.pack("<H", 4096) * ((b0 >> 3) & 3)
        head += b"\0"  # no initial image
        run = _rx_honest(1, 1 << log2, ("B", 0), ("H", 63), ("H", ring_len))
        chains = _rx_honest(3, 2, ("B", 0), ("H", 99), ("H", ring_len))
        body = run + poll_release + bytes([fr.ADVANCE, (1 << log2) - 1]) + poll_release
        body += chains + bytes([fr.POLL, 1, fr.POLL, 64, fr.RELEASE]) + chains + poll_release
        body += bytes([fr.POKE, 0]) + struct.pack("<HHIII", 0, 9, 64, 0, 0) + run + poll_release
        body += bytes([fr.RESET, fr.SET_INDEX]) + struct.pack("<H", 0x4000) + poll_release
        seeds[name] = head + body
    # client (M2S): buffers of 128 bytes in a shuffled order, headroom 16
    for name, b0, log2, start in (
        ("client-8-wrap", 0x01, 3, 0xFFFD),
        ("client-8-bytes-split", 0x25, 3, 0x0000),
        ("client-32-frame-limit", 0x01, 5, 0x8000),
        ("client-32-cl128", 0x03, 5, 0xFFF0),
    ):
        frame = 3 if "limit" in name else 0  # 64-byte frames only
        head = bytes([b0, log2]) + struct.pack("<HBHBBBB", start, frame, 127, 16, 5, 3, 0)
        if b0 & 0x20:
            head += b"\0"
        head += b"\0"
        run = _rx_honest(1, 1 << log2, ("H", 99))
        chains = _rx_honest(2, 3, ("H", 111))
        body = run + poll_release + run + poll_release + run + bytes([fr.POLL, 2]) + poll_release
        body += chains + poll_release + bytes([fr.RESET, 32]) + run + poll_release
        body += bytes([fr.POKE, 1]) + struct.pack("<HHIII", 0, 0, 50, 7, 0) + poll_release
        body += bytes([fr.ADVANCE, 199, fr.POLL, 8])
        seeds[name] = head + body
    seeds.update(_chain_lap_seeds())
    return seeds


def _chain_lap_seeds() -> dict[str, bytes]:
    """Runs of chains lap after lap, each taken whole by a poll of as many packets, so
    the shapes of chain runs are remembered and answer from the second lap on; then the
    same shape with a bad offset poked in, and runs of two shapes (2 and 3 buffers)."""
    seeds: dict[str, bytes] = {}
    poll2 = bytes([fr.POLL_RELEASE, 2])
    for name, client in (("server-8-chain-laps", False), ("client-8-chain-laps", True)):
        if client:
            head = bytes([0x01, 3]) + struct.pack("<HBHBBBB", 0xFFFD, 0, 127, 16, 5, 3, 0)
            fields: tuple[tuple[str, int], ...] = (("H", 99),)
            length, region = 100, 0  # 1 + 99 % (128 - 16)
        else:
            ring_len = 2 * 64 + 16 * 8
            head = bytes([0x00, 3]) + struct.pack("<HBH", 0xFFFE, 0, 8192)
            fields = (("B", 0), ("H", 98), ("H", ring_len))
            length, region = 99, 0
        head += b"\0"  # no initial image
        two, three = (_rx_honest(k, 1, *fields) for k in (2, 3))
        lap = _rx_honest(2, 2, *fields) + poll2
        bad = bytes([fr.POKE, 0]) + struct.pack("<HHIII", 1, region, length, 0xFFFF_FFF0, 0)
        body = lap * 4 + _rx_honest(2, 2, *fields) + bad + poll2
        body += (two + three + poll2) * 3 + (three + two + poll2) * 2
        seeds[name] = head + body
    return seeds


# ---------------------------------------------------------------------------- server tx


def _tx_write(count: int, sizes: list[int], limit: int = 2, equal: bool = False) -> bytes:
    mode = (1 if equal else 0) | limit << 1
    body = b"".join(struct.pack("<H", n) for n in (sizes[:1] if equal else sizes))
    return bytes([ft.WRITE, count - 1, mode]) + body


def _tx_reserve(count: int, size: int, how: int, limit: int = 2, cuts: int = 0) -> bytes:
    return bytes([ft.RESERVE, count - 1]) + struct.pack("<HBB", size, limit, how) + bytes(cuts)


def server_tx_seeds() -> dict[str, bytes]:
    seeds: dict[str, bytes] = {}
    for name, b0, log2, start, bsize in (
        ("tx-8-wrap", 0x00, 3, 0xFFFA, 64),
        ("tx-32-cl128", 0x01, 5, 0x0000, 128),
        ("tx-32-extra-region", 0x02, 5, 0xFF80, 256),
        ("tx-16-tiny-buffers", 0x00, 4, 0x7FFF, 16),
    ):
        n = 1 << log2
        head = bytes([b0, log2]) + struct.pack("<HHB", start, bsize - 1, 0)
        if b0 & 6:
            head += struct.pack("<H", 4096) * ((b0 >> 1) & 3)
        body = _tx_write(min(n, 32), [bsize - 4], equal=True) + bytes([ft.REOFFER])
        body += _tx_write(min(n, 32), [bsize - 4], equal=True) + bytes([ft.REOFFER])
        body += _tx_write(4, [3 * bsize - 1], equal=True) + bytes([ft.REOFFER])
        body += _tx_write(5, [1, bsize, bsize + 1, 7, 2 * bsize]) + bytes([ft.REOFFER])
        body += _tx_reserve(4, bsize // 2, 1) + bytes([ft.REOFFER])
        body += _tx_reserve(2, 2 * bsize + 3, 2, cuts=2) + bytes([ft.REOFFER])
        body += _tx_reserve(2, bsize, 3) + _tx_reserve(1, bsize, 4) + _tx_reserve(1, 9, 0)
        body += bytes([ft.WRITE_ONE, 2 << 1]) + struct.pack("<H", bsize) + bytes([ft.REOFFER])
        body += bytes([ft.POKE, 1]) + struct.pack("<HHIII", 0, 7, bsize, 0, 0)
        body += _tx_write(3, [bsize, bsize, bsize], equal=True) + bytes([ft.RESET])
        body += bytes([ft.OFFER, 4]) + struct.pack("<HBHB", bsize * 2, 0, 1024 + 8, 1)
        body += _tx_write(2, [0, 5]) + _tx_write(1, [65535], limit=3)
        body += bytes([ft.SET_HEAD]) + struct.pack("<H", start ^ 0x8000) + _tx_write(1, [5])
        seeds[name] = head + body
    return seeds


def main() -> None:
    for target, seeds in (
        ("control", control_seeds()),
        ("receive", receive_seeds()),
        ("server_tx", server_tx_seeds()),
    ):
        folder = ROOT / "corpus" / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for name, data in seeds.items():
            (folder / f"seed-{name}").write_bytes(data)
        print(f"{folder}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
