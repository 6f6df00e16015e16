"""Helpers for the dpdk-testpmd interop tests: test frames, a reflecting loop, settled
port statistics, links to testpmd.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import aiomemif
from aiomemif import InterfaceConfig
from aiomemif.testing.testpmd import PortStats, TestPmd

DST = bytes.fromhex("020000000001")


SRC = bytes.fromhex("020000000002")


ETHERTYPE = b"\x88\xb5"  # IEEE local experimental


SEQ = struct.Struct("<I")


WINDOW = 256  # frames in flight: testpmd drops what it cannot put on our rx ring


def frame(seq: int, size: int) -> bytes:
    body = SEQ.pack(seq) + bytes((seq * 7 + i) & 0xFF for i in range(size))
    return (DST + SRC + ETHERTYPE + body)[:size]


def swapped(f: bytes) -> bytes:
    return f[6:12] + f[0:6] + f[12:]


async def reflect(
    conn: aiomemif.Connection, frames: Sequence[bytes], queue: int = 0, timeout: float = 60
) -> None:
    """Send ``frames`` through testpmd and check each comes back macswapped, in order."""
    tx, rx = conn.tx_queues[queue], conn.rx_queues[queue]
    got: list[bytes] = []
    sent = 0
    # Keep the slots in flight within half a ring: DPDK 22.11 transmitting chains into a
    # nearly full ring publishes slots it was not offered (seen: M2S tail 1280, head 1024),
    # which aiomemif rightly treats as a protocol violation.
    segments = max(-(-len(f) // 2048) for f in frames)
    window = min(WINDOW, max(1, 1024 // segments // 2))
    async with asyncio.timeout(timeout):
        while len(got) < len(frames):
            room = min(window - (sent - len(got)), len(frames) - sent, 32)
            if room > 0:
                try:
                    sent += tx.send_batch_nowait(frames[sent : sent + room])
                    continue
                except aiomemif.WouldBlockError:
                    pass
            batch = await rx.receive()
            got.extend(bytes(p) for p in batch)
            batch.release()
    assert len(got) == len(frames)
    bad = [i for i, (g, f) in enumerate(zip(got, frames, strict=True)) if g != swapped(f)]
    assert not bad, f"{len(bad)} frames differ, first at {bad[0]}: {got[bad[0]].hex()}"


async def settled_stats(pmd: TestPmd, rx: int, tx: int) -> PortStats:
    """testpmd's port counters once they reach ``rx``/``tx`` packets (or after 3 s).

    net_memif bumps its tx packet counter after publishing the burst, so a read right after
    the last frame arrived can trail by one burst.
    """
    stats = await pmd.port_stats()
    for _ in range(30):
        if stats.rx_packets >= rx and stats.tx_packets >= tx:
            break
        await asyncio.sleep(0.1)
        stats = await pmd.port_stats()
    return stats


@asynccontextmanager
async def linked(
    aiomemif_role: str,
    path: str,
    cfg: InterfaceConfig | None = None,
    **pmd_kw: object,
) -> AsyncIterator[tuple[aiomemif.Connection, TestPmd]]:
    """An aiomemif connection in ``aiomemif_role`` with testpmd in the other role."""
    cfg = cfg or InterfaceConfig()
    if aiomemif_role == "client":
        async with TestPmd(role="server", socket=path, **pmd_kw) as pmd:  # type: ignore[arg-type]
            async with aiomemif.connect(path, cfg) as conn:
                await pmd.start_forwarding()
                yield conn, pmd
                await pmd.stop_forwarding()  # before the link goes down
    else:
        async with aiomemif.serve(path, [cfg]) as srv:
            async with TestPmd(role="client", socket=path, **pmd_kw) as pmd:  # type: ignore[arg-type]
                conn = await asyncio.wait_for(srv.accept(), 15)
                async with conn:
                    await pmd.start_forwarding()
                    yield conn, pmd
                    await pmd.stop_forwarding()


ROLES = ["client", "server"]
