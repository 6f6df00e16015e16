"""VPP with several queues, other ring and buffer sizes, and its receive modes against
aiomemif's."""

from __future__ import annotations

import asyncio

import pytest
from support.dpdk import frame
from support.vpp import ROLES, linked, ping_vpp, respond, vpp_ping

import aiomemif
from aiomemif import InterfaceConfig, RxMode
from aiomemif.testing.vpp import Vpp

pytestmark = [pytest.mark.vpp, pytest.mark.timeout(90)]


async def _through_vpp(
    conns: tuple[aiomemif.Connection, aiomemif.Connection], frames: list[bytes], window: int
) -> None:
    """Send ``frames`` from one connection, through VPP, to the other, at most ``window`` in
    flight (so VPP never finds the ring towards us full), and check they all arrive."""
    src, dst = conns
    tx, rx = src.tx_queues[0], dst.rx_queues[0]
    got: list[bytes] = []
    sent = 0
    async with asyncio.timeout(60):
        while len(got) < len(frames):
            if sent < len(frames) and sent - len(got) < window:
                sent += await tx.send_batch(frames[sent : sent + min(16, window)])
                continue
            batch = await rx.receive()
            got.extend(bytes(p) for p in batch)
            batch.release()
    assert sorted(got) == sorted(frames)


@pytest.mark.parametrize("role", ROLES)
async def test_two_and_four_queues(role: str, vpp: Vpp, sock_path: str) -> None:
    """VPP takes the queue counts the client asks for (its rx-queues/tx-queues as slave,
    ours as client). VPP polls every ring it receives on, but with one thread it transmits
    on its queue 0 only: every reply comes back on our receive queue 0."""
    cfg = InterfaceConfig(rx_queue_count=4, tx_queue_count=2)
    kw: dict[str, object] = {"rx_queues": 2, "tx_queues": 4} if role == "server" else {}
    async with linked(vpp, role, sock_path, cfg, **kw) as (conn, name):  # type: ignore[arg-type]
        assert (len(conn.rx_queues), len(conn.tx_queues)) == (4, 2)
        iface = await vpp.memif_interface(name)
        ours = {"m2s": 4, "s2m": 2} if role == "client" else {"m2s": 2, "s2m": 4}
        assert {d: sum(r.direction == d for r in iface.rings) for d in ours} == ours
        for q in range(2):
            assert await ping_vpp(conn, 3, queue=q, rx_queue=0) == 3
        rings = await vpp.ring_stats(name)
        assert [rings[("rx", q)]["packets received"] for q in range(2)] == [4, 4]
        d = conn.details()
        assert [q.packets for q in d.tx_queues] == [4, 4]  # ARP + 3 echoes on each
        assert [q.packets for q in d.rx_queues] == [8, 0, 0, 0]
        responder = asyncio.create_task(respond(conn))
        try:
            await vpp_ping(vpp, count=1)
            assert await vpp_ping(vpp, count=5) == (5, 5)
        finally:
            responder.cancel()
            await asyncio.gather(responder, return_exceptions=True)


@pytest.mark.parametrize(
    ("ring_size", "buffer_size"), [(64, 2048), (4096, 4096), (1024, 9216), (256, 256)]
)
async def test_ring_and_buffer_sizes_from_aiomemif_client(
    ring_size: int, buffer_size: int, vpp: Vpp, sock_dir: object
) -> None:
    """The client builds the rings: VPP (master) uses our ring and buffer sizes; frames up to
    9000 bytes are chained over small buffers both into and out of VPP."""
    a, b = f"{sock_dir}/a.sock", f"{sock_dir}/b.sock"
    names = []
    for path in (a, b):
        sid = await vpp.create_socket(path)
        names.append(await vpp.create_memif(sid, 0))
    # Both ways: VPP drops frames towards an interface not in L2 mode ("L2 Output
    # interface not valid"), so a one-way xconnect carries nothing.
    await vpp.cli(f"set interface l2 xconnect {names[0]} {names[1]}")
    await vpp.cli(f"set interface l2 xconnect {names[1]} {names[0]}")
    cfg = InterfaceConfig(ring_size=ring_size, buffer_size=buffer_size)
    async with aiomemif.connect(a, cfg) as ca, aiomemif.connect(b, cfg) as cb:
        for n in names:
            iface = await vpp.wait_memif(n)
            assert {r.ring_size for r in iface.rings} == {ring_size}
        frames = [frame(i, (60, 1500, 9000)[i % 3]) for i in range(600)]
        segments = -(-9000 // buffer_size)
        await _through_vpp((ca, cb), frames, window=max(1, min(64, ring_size // segments // 2)))
        chained = sum(len(f) > buffer_size for f in frames)
        assert cb.details().rx_queues[0].chained == chained


async def test_vpp_slave_ring_size_and_buffer_size(vpp: Vpp, sock_path: str) -> None:
    """As slave VPP builds the rings from its own ring-size and buffer-size options (as
    master they are the client's to choose)."""
    async with linked(vpp, "server", sock_path, ring_size=256, buffer_size=4096,
                      zero_copy=False) as (conn, name):  # fmt: skip
        d = conn.details()
        assert d.rx_queues[0].ring_size == d.tx_queues[0].ring_size == 256
        iface = await vpp.memif_interface(name)
        assert iface.buffer_size == 4096
        assert await ping_vpp(conn, 3) == 3


# VPP's modes against aiomemif's: the full 3 x 3 matrix (about 0.6 s a pair).
MODES = [(v, o) for v in ("interrupt", "polling", "adaptive") for o in RxMode]


@pytest.mark.parametrize(
    ("vpp_mode", "our_mode"), MODES, ids=[f"{v}-{o.name.lower()}" for v, o in MODES]
)
async def test_rx_modes(vpp_mode: str, our_mode: RxMode, vpp: Vpp, sock_path: str) -> None:
    sid = await vpp.create_socket(sock_path)
    name = await vpp.create_memif(sid, 0, address="192.168.1.1/24")
    async with aiomemif.connect(sock_path, rx_mode=our_mode) as conn:
        await vpp.wait_memif(name)
        # VPP sets up its queues (polling) when the link comes up: set the mode after that.
        await vpp.cli(f"set interface rx-mode {name} {vpp_mode}")
        hw = await vpp.cli("show interface rx-placement")
        assert vpp_mode in hw
        assert await ping_vpp(conn, 20) == 20
        responder = asyncio.create_task(respond(conn))
        try:
            await vpp_ping(vpp, count=1)
            assert await vpp_ping(vpp, count=10) == (10, 10)
        finally:
            responder.cancel()
            await asyncio.gather(responder, return_exceptions=True)
        d = conn.details()
        if vpp_mode == "interrupt":  # VPP asks to be signalled: we signal its rx ring
            assert d.tx_queues[0].flags & 1 == 0
            assert d.tx_queues[0].interrupts_sent > 0
        elif vpp_mode == "polling":
            assert d.tx_queues[0].flags & 1
