"""Data-path features against DPDK's net_memif (dpdk-testpmd, macswap): zero-copy transmit,
headroom, client zero-copy forwarding, receive modes and the two-region layout."""

from __future__ import annotations

import asyncio

import pytest
from support.dpdk import ROLES, frame, linked, reflect, settled_stats, swapped
from support.links import client_rx, client_tx

import aiomemif
from aiomemif import InterfaceConfig, RegionLayout, RxMode

pytestmark = [pytest.mark.dpdk, pytest.mark.usefixtures("need_testpmd"), pytest.mark.timeout(120)]


async def collect(rx: aiomemif.RxQueue, count: int, timeout: float = 10) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            batch = await rx.receive()
            got.extend(batch.keep(i) for i in range(len(batch)))
            batch.release()
    return got


@pytest.mark.parametrize("role", ROLES)
async def test_zero_copy_transmit_through_testpmd(role: str, sock_path: str) -> None:
    async with linked(role, sock_path) as (conn, pmd):
        tx, rx = conn.tx_queues[0], conn.rx_queues[0]
        sent: list[bytes] = []
        for round_ in range(20):
            bufs = await tx.alloc(32, size=128)
            for i, buf in enumerate(bufs):
                f = frame(round_ * 32 + i, 100)
                buf.write(f)
                buf.set_length(100)
                sent.append(f)
            assert tx.commit(bufs) == 32
            assert await collect(rx, 32) == [swapped(f) for f in sent[-32:]]
        # A reservation larger than one buffer is a chain; testpmd reassembles it.
        bufs = await tx.alloc(4, size=5000)
        assert all(len(b.segments) == 3 for b in bufs)
        big = [frame(9000 + i, 5000) for i in range(4)]
        for buf, f in zip(bufs, big, strict=True):
            buf.write(f)
        tx.commit(bufs)
        assert await collect(rx, 4) == [swapped(f) for f in big]
        stats = await settled_stats(pmd, 644, 644)
        assert stats.rx_packets == 644


async def test_headroom_with_testpmd_server(sock_path: str) -> None:
    """DPDK as server writes at the offset we offer (base + 64) and reads ours (base + 32)."""
    cfg = InterfaceConfig(rx_headroom=64, tx_headroom=32)
    async with linked("client", sock_path, cfg) as (conn, _):
        await reflect(conn, [frame(i, 1500) for i in range(2000)])
        rx_ep, tx_ep = client_rx(conn.rx_queues[0]), client_tx(conn.tx_queues[0])
        desc = aiomemif._core.wire.DESC
        # Offered M2S buffers: data at base + 64, capacity 2048 - 64 (DPDK wrote lengths).
        _f, _r, length, offset, _m = desc.unpack_from(rx_ep.ring.desc, 16)
        assert offset == rx_ep.buffers[1] + 64
        # Transmitted S2M descriptors: data at base + 32.
        _f, _r, length, offset, _m = desc.unpack_from(tx_ep.ring.desc, 16)
        assert (offset, length) == (tx_ep.buffers[1] + 32, 1500)
        conn.rx_queues[0].set_headroom(0)
        await reflect(conn, [frame(5000 + i, 2048) for i in range(2000)])


async def test_client_forwards_testpmd_traffic_without_copying(sock_path: str) -> None:
    """testpmd swaps MACs; we forward each reply back unchanged; testpmd swaps again."""
    async with linked("client", sock_path) as (conn, pmd):
        tx, rx = conn.tx_queues[0], conn.rx_queues[0]
        originals = [frame(i, 60 + i % 1400) for i in range(64)]
        await tx.send_batch(originals)
        seen: list[bytes] = []
        async with asyncio.timeout(10):
            # First pass: replies are swapped; forward them; they come back as originals.
            while len(seen) < 64:
                batch = await rx.receive()
                seen.extend(batch.keep(i) for i in range(len(batch)))
                assert tx.forward(batch) == len(batch)
                batch.release()
            back: list[bytes] = []
            while len(back) < 64:
                batch = await rx.receive()
                back.extend(batch.keep(i) for i in range(len(batch)))
                batch.release()
        assert seen == [swapped(f) for f in originals]
        assert back == originals
        stats = await settled_stats(pmd, 128, 128)
        assert stats.rx_packets == 128
        ep_rx, ep_tx = client_rx(rx), client_tx(tx)
        assert sorted([*ep_rx.buffers, *ep_tx.buffers]) == sorted(
            set([*ep_rx.buffers, *ep_tx.buffers])
        ), "a buffer ended up in two rings"


@pytest.mark.parametrize("mode", [RxMode.POLLING, RxMode.ADAPTIVE])
@pytest.mark.parametrize("role", ROLES)
async def test_receive_modes_with_testpmd(role: str, mode: RxMode, sock_path: str) -> None:
    async with linked(role, sock_path) as (conn, _):
        conn.rx_queues[0].set_mode(mode, spin_budget=50e-6)
        await reflect(conn, [frame(i, 64) for i in range(20_000)])
        await asyncio.sleep(0.05)  # idle: adaptive falls back to interrupts
        await reflect(conn, [frame(i, 64) for i in range(100)])


async def test_split_layout_with_testpmd_server(sock_path: str) -> None:
    cfg = InterfaceConfig(layout=RegionLayout.SPLIT)
    async with linked("client", sock_path, cfg) as (conn, _):
        assert len(conn.details().regions) == 2
        await reflect(conn, [frame(i, size) for i in range(1000) for size in (64, 3000)])
