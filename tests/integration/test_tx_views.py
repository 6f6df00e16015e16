"""``TxBuffers.views`` and ``TxQueue.commit(lengths=...)``: zero-copy transmit without a
``TxBuffer`` object per packet, in both roles; plus the descriptor words a client's commit
leaves behind (only lengths are rewritten while the ring is clean).
"""

from __future__ import annotations

import asyncio

import pytest
from support.links import ROLES, client_tx, ends, linked, payload, receive_count, server_tx

import aiomemif
from aiomemif import InterfaceConfig, TxQueue

CFG = InterfaceConfig(buffer_size=256, ring_size=64)


def descriptors(tx: TxQueue, first: int, count: int) -> list[tuple[int, int, int]]:
    """(flags, length, offset) of ``count`` slots of a transmit ring from ``first``."""
    ring = tx._endpoint.ring
    out = []
    for k in range(count):
        s = (first + k) & ring.mask
        out.append((ring.halves[8 * s], ring.words[4 * s + 1], ring.words[4 * s + 2]))
    return out


@pytest.mark.parametrize("sender", ROLES)
async def test_views_fill_and_commit(sock_path: str, sender: str) -> None:
    async with linked(sock_path, CFG) as (s, c):
        tx, rx = ends(s, c, sender)
        bufs = await tx.alloc(4, 200)
        views = bufs.views
        assert len(views) == len(bufs) == 4 and all(len(v) == 200 for v in views)
        assert all(not v.readonly for v in views)
        expected = [payload(i, 200) for i in range(4)]
        for v, data in zip(views, expected, strict=True):
            v[:] = data
        views.clear()  # a new list each time: the reservation keeps its own
        assert len(bufs.views) == 4
        with pytest.raises(aiomemif.WouldBlockError):
            rx.receive_nowait()  # nothing visible before commit
        assert tx.commit(bufs) == 4
        assert await receive_count(rx, 4) == expected
        assert tx.counters.packets == 4 and tx.counters.bytes == 800
        with pytest.raises(ValueError, match="released"):
            bufs.views[0][0] = 1  # the views died with the commit
        with pytest.raises(aiomemif.LocalProtocolError):
            tx.commit(bufs)


@pytest.mark.parametrize("sender", ROLES)
async def test_commit_with_lengths(sock_path: str, sender: str) -> None:
    async with linked(sock_path, CFG) as (s, c):
        tx, rx = ends(s, c, sender)
        bufs = tx.alloc_nowait(3, 250)
        data = [payload(20 + i, 250) for i in range(3)]
        for v, d in zip(bufs.views, data, strict=True):
            v[:] = d
        for bad in ([10, 20], [10, 20, 30, 40], [0, 10, 10], [10, 251, 10]):
            with pytest.raises(aiomemif.LocalProtocolError):
                tx.commit(bufs, bad)
        assert tx.commit(bufs, [1, 250, 99]) == 3  # still open after the refusals above
        assert await receive_count(rx, 3) == [data[0][:1], data[1], data[2][:99]]
        assert tx.counters.bytes == 350


@pytest.mark.parametrize("sender", ROLES)
async def test_lengths_override_txbuffer_lengths(sock_path: str, sender: str) -> None:
    async with linked(sock_path, CFG) as (s, c):
        tx, rx = ends(s, c, sender)
        bufs = tx.alloc_nowait(2, 100)
        for b in bufs:
            b.view[:] = bytes(range(100))
            b.set_length(10)
        assert tx.commit(bufs) == 2  # TxBuffer lengths count when none are given
        assert [len(p) for p in await receive_count(rx, 2)] == [10, 10]
        bufs = tx.alloc_nowait(2, 100)
        for b in bufs:
            b.set_length(10)
        assert tx.commit(bufs, [30, 40]) == 2
        assert [len(p) for p in await receive_count(rx, 2)] == [30, 40]


@pytest.mark.parametrize("sender", ROLES)
async def test_views_refused_for_chains_and_after_txbuffers(sock_path: str, sender: str) -> None:
    async with linked(sock_path, CFG) as (s, c):
        tx, rx = ends(s, c, sender)
        bufs = tx.alloc_nowait(2, 600)  # three buffers each
        with pytest.raises(ValueError, match="several buffers"):
            bufs.views  # noqa: B018
        assert [len(seg) for seg in bufs[1].segments] == [256, 256, 88]
        tx.cancel(bufs)
        bufs = tx.alloc_nowait(2, 100)
        first = bufs[0]  # TxBuffer objects taken: their lengths would be ignored by views
        with pytest.raises(ValueError, match="not both"):
            bufs.views  # noqa: B018
        first.view[:] = bytes(100)
        tx.cancel(bufs)
        with pytest.raises(ValueError, match="released"):
            first.view[0] = 1
        with pytest.raises(aiomemif.WouldBlockError):
            rx.receive_nowait()


async def test_server_views_around_an_unusable_offer(sock_path: str) -> None:
    """A server reservation made packet by packet (an offered slot is unusable) still
    has one buffer per packet: views works, and the bad slot goes back empty."""
    async with linked(sock_path, CFG) as (s, c):
        tx, rx = ends(s, c, "server")
        offered = c.rx_queues[0]._endpoint.ring
        slot = (server_tx(tx).tail + 1) & offered.mask
        offered.halves[8 * slot + 1] = 99  # region 99 does not exist
        bufs = tx.alloc_nowait(3, 100)
        assert not bufs.chained
        assert bufs._reserved.views is None  # the per-packet reservation path
        views = bufs.views
        for k, view in enumerate(views):
            view[:] = payload(k, 100)
        assert tx.commit(bufs, [100, 50, 100]) == 3
        expected = [payload(0, 100), payload(1, 100)[:50], payload(2, 100)]
        assert await receive_count(rx, 3) == expected
        assert tx.counters.bad_descriptors == 1


@pytest.mark.parametrize("sender", ROLES)
async def test_chained_tells_whether_views_are_available(sock_path: str, sender: str) -> None:
    async with linked(sock_path, CFG) as (s, c):
        tx, _rx = ends(s, c, sender)
        bufs = tx.alloc_nowait(2, 600)
        assert bufs.chained
        tx.cancel(bufs)
        bufs = tx.alloc_nowait(2, 256)
        assert not bufs.chained and len(bufs.views) == 2
        tx.cancel(bufs)


async def test_client_commit_after_a_chain_clears_its_flags(sock_path: str) -> None:
    """A chain leaves NEXT flags in the ring; one-buffer commits that later land in those
    slots (without wrapping) must clear them, not only rewrite the lengths."""
    async with linked(sock_path, InterfaceConfig(buffer_size=256, ring_size=16)) as (s, c):
        tx, rx = ends(s, c, "client")
        ep = client_tx(tx)
        start = ep.head & ep.ring.mask
        assert start == 0
        bufs = tx.alloc_nowait(2, 600)  # slots 0-5
        for b in bufs:
            b.write(payload(1, 600))
        bufs[1].set_length(520)
        tx.commit(bufs)
        assert await receive_count(rx, 2) == [payload(1, 600), payload(1, 600)[:520]]
        assert [f for f, _, _ in descriptors(tx, 0, 6)] == [1, 1, 0, 1, 1, 0]
        for round_, count in enumerate((10, 6, 10, 6)):  # slots 6-15, then 0-5 again, ...
            head = ep.head
            bufs = tx.alloc_nowait(count, 50)
            for v in bufs.views:
                v[:] = payload(round_, 50)
            tx.commit(bufs, [50 - k for k in range(count)])
            got = await receive_count(rx, count)
            assert got == [payload(round_, 50)[: 50 - k] for k in range(count)]
            mask = ep.ring.mask
            assert descriptors(tx, head, count) == [
                (0, 50 - k, ep.data[(head + k) & mask]) for k in range(count)
            ]


@pytest.mark.parametrize("sender", ROLES)
async def test_alloc_waits_for_room_and_counts_the_wait_once(sock_path: str, sender: str) -> None:
    """``await alloc()`` on a full ring retries until the receiver frees room; like
    ``send_batch`` it counts one ring-full wait however many times it retried."""
    async with linked(sock_path, InterfaceConfig(buffer_size=256, ring_size=16)) as (s, c):
        tx, rx = ends(s, c, sender)
        first = [payload(i, 100) for i in range(16)]
        assert tx.send_batch_nowait(first) == 16
        with pytest.raises(aiomemif.WouldBlockError):
            tx.alloc_nowait(1, 100)
        assert tx.counters.ring_full == 1
        pending = asyncio.create_task(tx.alloc(4, 100))
        for _ in range(8):  # it retries on every turn of the loop
            await asyncio.sleep(0)
        assert not pending.done()
        assert await receive_count(rx, 16) == first
        bufs = await asyncio.wait_for(pending, 5)
        assert tx.counters.ring_full == 2
        later = [payload(50 + i, 100) for i in range(4)]
        for v, d in zip(bufs.views, later, strict=True):
            v[:] = d
        assert tx.commit(bufs) == 4
        assert await receive_count(rx, 4) == later
