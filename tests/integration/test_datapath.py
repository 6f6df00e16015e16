"""Data path in loopback (one process, real sockets, memfds and eventfds).

Chained buffers, zero-copy receive and transmit, headroom, client-side zero-copy forwarding,
receive modes, region layouts, cacheline sizes, details, and the client's reconnect policy
and link events. Every item that applies to both roles runs in both (``sender`` is the role
that transmits). No speed is asserted; waits are bounded by generous timeouts only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import random
import weakref
from collections.abc import Sequence

import attrs
import pytest
from support.links import (
    ROLES,
    TIMEOUT,
    Modes,
    client_rx,
    client_tx,
    ends,
    eventually,
    linked,
    payload,
    receive_count,
)

import aiomemif
from aiomemif import (
    Batch,
    ChainedPacket,
    Connection,
    InterfaceConfig,
    RegionLayout,
    RxMode,
    RxQueue,
    TxQueue,
)
from aiomemif._core import wire as w

MASK_INT = w.RING_FLAG_MASK_INT
#: What using a released memoryview raises (ValueError).
RELEASED = "released"


def region_mappings(conn: Connection) -> list[object]:
    return [r.mapping for r in conn._regions]


@attrs.frozen
class Seen:
    data: bytes
    chained: bool
    nsegs: int
    length: int
    zero_copy: bool


def inspect_batch(batch: Batch, conn: Connection) -> list[Seen]:
    """What each packet of a batch looks like (read before the batch is released)."""
    maps = region_mappings(conn)
    out = []
    for p in batch:
        if isinstance(p, ChainedPacket):
            segs = list(p.segments)
            out.append(
                Seen(
                    p.tobytes(),
                    True,
                    len(segs),
                    len(p),
                    all(isinstance(s, memoryview) and s.obj in maps for s in segs),
                )
            )
        else:
            out.append(Seen(bytes(p), False, 1, len(p), p.obj in maps))
    return out


async def transfer(
    tx: TxQueue, rx: RxQueue, rx_conn: Connection, packets: Sequence[bytes]
) -> list[Seen]:
    """Send ``packets`` (waiting for room) and receive them all on ``rx``, byte-checked."""
    sender = asyncio.create_task(tx.send_batch(list(packets)))
    seen: list[Seen] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            while len(seen) < len(packets):
                batch = await rx.receive()
                seen.extend(inspect_batch(batch, rx_conn))
                batch.release()
            assert await sender == len(packets)
    finally:
        if not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    assert [s.data for s in seen] == list(packets)
    return seen


def rx_conn_of(server: Connection, client: Connection, sender: str) -> Connection:
    return server if sender == "client" else client


# -- 1. chained buffers ------------------------------------------------------------------


@pytest.mark.parametrize("sender", ROLES)
@pytest.mark.parametrize("buffer_size", [256, 2048])
async def test_chained_packets_up_to_64k(sock_path: str, sender: str, buffer_size: int) -> None:
    cfg = InterfaceConfig(buffer_size=buffer_size, ring_size=1024)
    async with linked(sock_path, cfg) as (server, client):
        tx, rx = ends(server, client, sender)
        sizes = [1, buffer_size, buffer_size + 1, 3 * buffer_size - 1, 9000, 65535, 60, 65535]
        packets = [payload(i, n) for i, n in enumerate(sizes)]
        seen = await transfer(tx, rx, rx_conn_of(server, client, sender), packets)
        for s, n in zip(seen, sizes, strict=True):
            nseg = -(-n // buffer_size)
            assert s.length == n
            assert s.chained == (nseg > 1)
            assert s.nsegs == nseg
            assert s.zero_copy
        n_chained = sum(1 for n in sizes if n > buffer_size)
        assert tx.counters.chained == rx.counters.chained == n_chained
        assert tx.counters.packets == rx.counters.packets == len(sizes)
        assert tx.counters.bytes == rx.counters.bytes == sum(sizes)
        assert rx.counters.bad_descriptors == 0
        # details() reports the same counters
        d_tx = (client if sender == "client" else server).details().tx_queues[0]
        d_rx = rx_conn_of(server, client, sender).details().rx_queues[0]
        assert d_tx.chained == d_rx.chained == n_chained


@pytest.mark.parametrize("sender", ROLES)
async def test_jumbo_9000_with_2048_buffers(sock_path: str, sender: str) -> None:
    """Acceptance: 9000-byte frames over 2048-byte buffers, byte-identical, both roles."""
    async with linked(sock_path, InterfaceConfig(buffer_size=2048, ring_size=256)) as (s, c):
        tx, rx = ends(s, c, sender)
        packets = [payload(1000 + i, 9000) for i in range(200)]
        seen = await transfer(tx, rx, rx_conn_of(s, c, sender), packets)
        assert all(x.chained and x.nsegs == 5 and x.length == 9000 for x in seen)
        assert tx.counters.chained == rx.counters.chained == 200


async def test_chained_packet_object(sock_path: str) -> None:
    async with linked(sock_path, InterfaceConfig(buffer_size=256)) as (server, client):
        data = payload(5, 700)
        await server.tx_queues[0].send(data)
        async with asyncio.timeout(TIMEOUT):
            batch = await client.rx_queues[0].receive()
        assert len(batch) == 1
        pkt = batch[0]
        assert isinstance(pkt, aiomemif.ChainedPacket)
        assert len(pkt) == 700 and len(pkt.segments) == 3
        assert [len(s) for s in pkt.segments] == [256, 256, 188]
        assert bytes(pkt) == pkt.tobytes() == data
        assert batch.nbytes == 700
        assert "700 bytes in 3 buffers" in repr(pkt)
        segs = pkt.segments
        batch.release()
        for seg in segs:
            with pytest.raises(ValueError, match=RELEASED):
                bytes(seg)


@pytest.mark.parametrize("sender", ROLES)
async def test_packet_needing_more_slots_than_the_ring(sock_path: str, sender: str) -> None:
    # 16 slots of 256 bytes: 4096 bytes is the largest chain that can ever fit.
    async with linked(sock_path, InterfaceConfig(ring_size=16, buffer_size=256)) as (s, c):
        tx, rx = ends(s, c, sender)
        with pytest.raises(aiomemif.PacketTooLargeError):
            tx.send_nowait(b"x" * 4097)
        with pytest.raises(aiomemif.PacketTooLargeError):
            async with asyncio.timeout(2):  # must not wait forever for room
                await tx.send(b"x" * 4097)
        with pytest.raises(aiomemif.PacketTooLargeError):
            tx.alloc_nowait(1, 4097)
        assert tx.counters.packets == 0
        # The largest that fits does go through, as one packet.
        seen = await transfer(tx, rx, rx_conn_of(s, c, sender), [payload(1, 4096)])
        assert seen[0].nsegs == 16


@pytest.mark.parametrize("sender", ROLES)
async def test_only_whole_packets_are_published(sock_path: str, sender: str) -> None:
    async with linked(sock_path, InterfaceConfig(ring_size=16, buffer_size=256)) as (s, c):
        tx, rx = ends(s, c, sender)
        rx_conn = rx_conn_of(s, c, sender)
        small = [payload(i, 100) for i in range(14)]
        chain = payload(99, 1000)  # 4 slots
        assert tx.send_batch_nowait(small[:13]) == 13
        # 3 slots left: the small packet goes, the 4-slot chain does not (not even a part).
        assert tx.send_batch_nowait([small[13], chain]) == 1
        with pytest.raises(aiomemif.WouldBlockError):
            tx.send_batch_nowait([chain])
        ring = tx._endpoint.ring
        published = ring.head if sender == "client" else ring.tail
        assert published == 14
        async with asyncio.timeout(TIMEOUT):
            batch = await rx.receive()
        seen = inspect_batch(batch, rx_conn)
        assert [x.data for x in seen] == small and not any(x.chained for x in seen)
        assert rx.counters.bad_descriptors == 0
        with pytest.raises(aiomemif.WouldBlockError):
            rx.receive_nowait()
        batch.release()
        seen = await transfer(tx, rx, rx_conn, [chain])
        assert seen[0].chained and seen[0].nsegs == 4
        assert rx.counters.bad_descriptors == 0 and rx.counters.packets == 15


# -- 2. zero-copy receive ------------------------------------------------------------------


@pytest.mark.parametrize("sender", ROLES)
async def test_keep_and_copy_into(sock_path: str, sender: str) -> None:
    async with linked(sock_path, InterfaceConfig(buffer_size=256)) as (s, c):
        tx, rx = ends(s, c, sender)
        plain, chained = payload(1, 200), payload(2, 600)
        await tx.send_batch([plain, chained])
        async with asyncio.timeout(TIMEOUT):
            batch = await rx.receive()
        assert len(batch) == 2 and isinstance(batch[1], ChainedPacket)
        kept = [batch.keep(0), batch.keep(1)]
        assert kept == [plain, chained] and all(type(k) is bytes for k in kept)
        buf = bytearray(1000)
        assert batch.copy_into(0, buf, 10) == 200
        assert batch.copy_into(1, memoryview(buf), 300) == 600
        assert buf[10:210] == plain and buf[300:900] == chained
        assert buf[:10] == bytes(10) and buf[210:300] == bytes(90)
        for i, n in ((0, 200), (1, 600)):
            with pytest.raises(ValueError, match="too small"):
                batch.copy_into(i, bytearray(n - 1))
            with pytest.raises(ValueError, match="too small"):
                batch.copy_into(i, bytearray(n), 1)
            with pytest.raises(ValueError, match="too small"):
                batch.copy_into(i, bytearray(2 * n), -1)
        batch.release()
        assert kept == [plain, chained]  # the copies outlive the batch
        with pytest.raises(aiomemif.StaleBatchError):
            batch.keep(0)
        with pytest.raises(aiomemif.StaleBatchError):
            batch.copy_into(1, buf)


@pytest.mark.parametrize("sender", ROLES)
async def test_buffers_return_exactly_at_release(sock_path: str, sender: str) -> None:
    cfg = InterfaceConfig(ring_size=32, buffer_size=256)
    async with linked(sock_path, cfg) as (server, client):
        tx, rx = ends(server, client, sender)
        ring = rx._endpoint.ring
        # The receiver gives buffers back by moving M2S head (client) or S2M tail (server).

        def index() -> int:
            return ring.head if sender == "server" else ring.tail

        start = index()
        assert start == (32 if sender == "server" else 0)
        await tx.send_batch([payload(1, 10), payload(2, 600), payload(3, 256)])  # 1+3+1 slots
        async with asyncio.timeout(TIMEOUT):
            batch = await rx.receive()
        assert len(batch) == 3
        assert index() == start  # nothing returned while the batch is alive
        assert tx.free_slots() == 32 - 5
        await asyncio.sleep(0.01)
        assert index() == start
        batch.release()
        assert index() == (start + 5) & 0xFFFF
        assert tx.free_slots() == 32
        batch.release()  # idempotent: nothing moves twice
        assert index() == (start + 5) & 0xFFFF
        # The next receive releases an unreleased batch the same way.
        await tx.send_batch([payload(4, 10)])
        async with asyncio.timeout(TIMEOUT):
            b1 = await rx.receive()
        assert index() == (start + 5) & 0xFFFF
        await tx.send_batch([payload(5, 10)])
        async with asyncio.timeout(TIMEOUT):
            b2 = await rx.receive()
        assert b1.released and index() == (start + 6) & 0xFFFF
        with b2:
            pass
        assert index() == (start + 7) & 0xFFFF


# -- 3. zero-copy transmit -----------------------------------------------------------------


@pytest.mark.parametrize("sender", ROLES)
async def test_alloc_write_commit(sock_path: str, sender: str) -> None:
    async with linked(sock_path, InterfaceConfig(buffer_size=256, ring_size=64)) as (s, c):
        tx, rx = ends(s, c, sender)
        bufs = await tx.alloc(3, 100)
        assert len(bufs) == 3 and all(len(b) == 100 and len(b.segments) == 1 for b in bufs)
        expected = [payload(i, 100) for i in range(3)]
        bufs[0].view[:] = expected[0]
        assert bufs[1].write(expected[1]) == 100
        bufs[2].view[:50] = expected[2][:50]
        assert bufs[2].write(expected[2][50:], 50) == 50
        with pytest.raises(ValueError, match="do not fit"):
            bufs[0].write(b"x" * 101)
        with pytest.raises(ValueError, match="do not fit"):
            bufs[0].write(b"x", 100)
        # nothing visible before commit
        with pytest.raises(aiomemif.WouldBlockError):
            rx.receive_nowait()
        assert tx.commit(bufs) == 3
        assert await receive_count(rx, 3) == expected
        assert tx.counters.packets == 3 and tx.counters.bytes == 300
        # views are released after commit
        with pytest.raises(ValueError, match=RELEASED):
            bufs[0].view[0] = 1
        with pytest.raises(ValueError, match=RELEASED):
            bufs[1].write(b"late")
        with pytest.raises(aiomemif.LocalProtocolError):
            tx.commit(bufs)  # twice
        tx.cancel(bufs)  # cancelling committed buffers does nothing


@pytest.mark.parametrize("sender", ROLES)
async def test_alloc_chains_and_set_length(sock_path: str, sender: str) -> None:
    async with linked(sock_path, InterfaceConfig(buffer_size=256, ring_size=64)) as (s, c):
        tx, rx = ends(s, c, sender)
        rx_conn = rx_conn_of(s, c, sender)
        bufs = tx.alloc_nowait(2, 600)
        assert [len(seg) for seg in bufs[0].segments] == [256, 256, 88]
        data = [payload(10, 600), payload(11, 600)]
        for b, d in zip(bufs, data, strict=True):
            assert b.write(d) == 600
        bufs[1].set_length(550)  # shrinks within the last buffer
        assert tx.commit(bufs) == 2
        async with asyncio.timeout(TIMEOUT):
            got: list[Seen] = []
            while len(got) < 2:
                batch = await rx.receive()
                got.extend(inspect_batch(batch, rx_conn))
                batch.release()
        assert [g.data for g in got] == [data[0], data[1][:550]]
        assert [g.nsegs for g in got] == [3, 3] and all(g.chained for g in got)
        assert tx.counters.chained == rx.counters.chained == 2
        # a plain buffer shrinks freely; a chain may not leave a reserved buffer empty
        bufs = tx.alloc_nowait(1, 100)
        bufs[0].write(payload(12, 100))
        bufs[0].set_length(7)
        tx.commit(bufs)
        assert await receive_count(rx, 1) == [payload(12, 100)[:7]]
        bufs = tx.alloc_nowait(1, 600)
        bufs[0].set_length(300)
        with pytest.raises(aiomemif.LocalProtocolError):
            tx.commit(bufs)
        bufs[0].set_length(0)
        with pytest.raises(aiomemif.LocalProtocolError):
            tx.commit(bufs)
        tx.cancel(bufs)


@pytest.mark.parametrize("sender", ROLES)
async def test_alloc_would_block_then_waits(sock_path: str, sender: str) -> None:
    async with linked(sock_path, InterfaceConfig(ring_size=16, buffer_size=256)) as (s, c):
        tx, rx = ends(s, c, sender)
        assert tx.send_batch_nowait([payload(i, 64) for i in range(14)]) == 14
        with pytest.raises(aiomemif.WouldBlockError):
            tx.alloc_nowait(3, 64)
        with pytest.raises(aiomemif.WouldBlockError):
            tx.alloc_nowait(1, 700)  # a 3-slot chain in 2 free slots
        waiting = asyncio.create_task(tx.alloc(4, 64))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        assert await receive_count(rx, 14) == [payload(i, 64) for i in range(14)]
        async with asyncio.timeout(TIMEOUT):
            bufs = await waiting
        for i, b in enumerate(bufs):
            b.write(payload(100 + i, 64))
        tx.commit(bufs)
        assert await receive_count(rx, 4) == [payload(100 + i, 64) for i in range(4)]


@pytest.mark.parametrize("sender", ROLES)
async def test_alloc_more_packets_than_the_ring_is_refused(sock_path: str, sender: str) -> None:
    async with linked(sock_path, InterfaceConfig(ring_size=16, buffer_size=256)) as (s, c):
        tx, _rx = ends(s, c, sender)
        # 17 packets (or 6 chains of 3 slots) can never fit 16 slots: no endless wait.
        for count, size in ((17, 64), (6, 700)):
            with pytest.raises(aiomemif.ConfigurationError):
                async with asyncio.timeout(2):
                    await tx.alloc(count, size)
        for count in (0, -1):
            with pytest.raises(aiomemif.ConfigurationError):
                tx.alloc_nowait(count, 64)
        with pytest.raises(aiomemif.EmptyPacketError):
            tx.alloc_nowait(1, 0)
        with pytest.raises(aiomemif.PacketTooLargeError):
            tx.alloc_nowait(1, 65536)
        bufs = tx.alloc_nowait(16, 64)  # exactly a ring's worth is fine
        tx.cancel(bufs)


@pytest.mark.parametrize("sender", ROLES)
async def test_cancel_busy_and_close_with_uncommitted(sock_path: str, sender: str) -> None:
    async with linked(sock_path, InterfaceConfig(ring_size=16, buffer_size=256)) as (s, c):
        tx, rx = ends(s, c, sender)
        bufs = tx.alloc_nowait(16, 64)
        assert tx.free_slots() == 16  # reserved, not published
        with pytest.raises(aiomemif.BusyResourceError):
            tx.alloc_nowait(1, 64)
        with pytest.raises(aiomemif.BusyResourceError):
            await tx.alloc(1, 64)
        with pytest.raises(aiomemif.BusyResourceError):
            await tx.send(b"x" * 10)
        with pytest.raises(aiomemif.BusyResourceError):
            tx.send_batch_nowait([b"x" * 10])
        for b in bufs:
            b.write(b"never sent")
        tx.cancel(bufs)
        tx.cancel(bufs)  # idempotent
        with pytest.raises(ValueError, match=RELEASED):
            bufs[0].view[0] = 1
        with pytest.raises(aiomemif.LocalProtocolError):
            tx.commit(bufs)
        await asyncio.sleep(0.01)
        with pytest.raises(aiomemif.WouldBlockError):
            rx.receive_nowait()  # nothing was published
        # all 16 slots are free again
        assert tx.free_slots() == 16
        assert tx.send_batch_nowait([payload(i, 64) for i in range(16)]) == 16
        assert await receive_count(rx, 16) == [payload(i, 64) for i in range(16)]
        assert tx.counters.packets == 16
        # Closing with uncommitted buffers leaks nothing (the fixture checks the mappings).
        open_bufs = tx.alloc_nowait(2, 700)
        await (c if sender == "client" else s).aclose()
        with pytest.raises(ValueError, match=RELEASED):
            open_bufs[0].segments[1][0] = 1
        with pytest.raises(aiomemif.ClosedResourceError):
            tx.commit(open_bufs)


# -- 4. headroom ---------------------------------------------------------------------------


async def test_rx_headroom(sock_path: str) -> None:
    bsize = 256
    cfg = InterfaceConfig(rx_headroom=64, buffer_size=bsize, ring_size=16)
    async with linked(sock_path, cfg) as (server, client):
        crx = client.rx_queues[0]
        bases = list(client_rx(crx).buffers)
        ring = server.tx_queues[0]._endpoint.ring
        for slot in range(16):
            flags, region, length, offset, _ = w.DESC.unpack_from(ring.desc, slot * 16)
            assert (flags, region, length, offset) == (0, 0, bsize - 64, bases[slot] + 64)
        data = payload(1, bsize - 64)
        await server.tx_queues[0].send(data)
        async with asyncio.timeout(TIMEOUT):
            batch = await crx.receive()
        assert bytes(batch[0]) == data and not isinstance(batch[0], ChainedPacket)
        region = client._regions[0].view
        assert region is not None
        assert region[bases[0] + 64 : bases[0] + bsize] == data  # the server wrote there
        assert region[bases[0] : bases[0] + 64] == bytes(64)  # headroom untouched
        # the client's view starts at the data: it aliases the region from base + 64 on
        view = batch[0]
        assert isinstance(view, memoryview) and len(view) == bsize - 64
        region[bases[0] + 64] ^= 0xFF
        region[bases[0] + bsize - 1] ^= 0xFF
        assert view[0] == data[0] ^ 0xFF and view[-1] == data[-1] ^ 0xFF
        batch.release()
        # one byte more than the offered capacity is a chain for the server
        longer = payload(2, bsize - 63)
        seen = await transfer(server.tx_queues[0], crx, client, [longer])
        assert seen[0].chained and seen[0].nsegs == 2


async def test_tx_headroom(sock_path: str) -> None:
    bsize = 256
    cfg = InterfaceConfig(tx_headroom=32, buffer_size=bsize, ring_size=16)
    async with linked(sock_path, cfg) as (server, client):
        ctx = client.tx_queues[0]
        bases = list(client_tx(ctx).buffers)
        packets = [payload(1, bsize - 32), payload(2, bsize - 31), payload(3, 1)]
        await ctx.send_batch(packets)
        ring = server.rx_queues[0]._endpoint.ring
        descs = [w.DESC.unpack_from(ring.desc, slot * 16) for slot in range(4)]
        assert [d[3] for d in descs] == [b + 32 for b in bases[:4]]
        assert [d[2] for d in descs] == [bsize - 32, bsize - 32, 1, 1]
        assert [d[0] for d in descs] == [0, w.DESC_FLAG_NEXT, 0, 0]
        assert await receive_count(server.rx_queues[0], 3) == packets
        bufs = ctx.alloc_nowait(1, 10)
        assert len(bufs[0].segments[0]) == 10
        bufs[0].write(b"0123456789")
        ctx.commit(bufs)
        assert await receive_count(server.rx_queues[0], 1) == [b"0123456789"]
        _f, _r, length, offset, _ = w.DESC.unpack_from(ring.desc, 4 * 16)
        assert (length, offset) == (10, bases[4] + 32)


async def test_set_headroom_at_run_time(sock_path: str) -> None:
    bsize = 256
    async with linked(sock_path, InterfaceConfig(buffer_size=bsize, ring_size=16)) as (s, c):
        crx = c.rx_queues[0]
        bases = list(client_rx(crx).buffers)
        ring = s.tx_queues[0]._endpoint.ring

        def offered(slot: int) -> tuple[int, int]:
            _f, _r, length, offset, _m = w.DESC.unpack_from(ring.desc, (slot & 15) * 16)
            return length, offset

        crx.set_headroom(128)
        # slots already offered keep their old headroom ...
        assert all(offered(k) == (bsize, bases[k]) for k in range(16))
        await s.tx_queues[0].send_batch([payload(i, 10) for i in range(4)])
        async with asyncio.timeout(TIMEOUT):
            batch = await crx.receive()
        assert len(batch) == 4
        assert offered(0) == (10, bases[0])  # filled in place (length = data) ...
        assert offered(4) == (bsize, bases[4])  # ... and the new headroom not offered yet
        batch.release()
        assert [offered(k) for k in range(4)] == [(bsize - 128, bases[k] + 128) for k in range(4)]
        assert offered(4) == (bsize, bases[4])
        # A packet into a refilled slot lands after the headroom; capacity is smaller.
        await s.tx_queues[0].send_batch([payload(i, 10) for i in range(4, 16)])
        await receive_count(crx, 12)
        data = payload(50, 200)
        seen = await transfer(s.tx_queues[0], crx, c, [data])
        assert seen[0].nsegs == 2  # 128 + 72 bytes
        region = c._regions[0].view
        assert region is not None
        assert region[bases[0] + 128 : bases[0] + 256] == data[:128]
        crx.set_headroom(0)
        with pytest.raises(aiomemif.ConfigurationError):
            crx.set_headroom(bsize)
        with pytest.raises(aiomemif.ConfigurationError):
            crx.set_headroom(-1)
        with pytest.raises(aiomemif.ConfigurationError):
            s.rx_queues[0].set_headroom(16)


# -- 5. client zero-copy forwarding --------------------------------------------------------


def buffer_tables(client: Connection) -> tuple[list[int], list[int]]:
    return list(client_rx(client.rx_queues[0]).buffers), list(
        client_tx(client.tx_queues[0]).buffers
    )


def every_buffer(client: Connection) -> list[int]:
    rx_table, tx_table = buffer_tables(client)
    return sorted(rx_table + tx_table)


def check_ownership(client: Connection, all_buffers: list[int]) -> None:
    """No buffer is in two rings: the tables are a permutation of all the buffers, and the
    descriptors the client currently offers on M2S name its rx table's buffers."""
    rx_table, tx_table = buffer_tables(client)
    assert sorted(rx_table + tx_table) == all_buffers
    ep = client_rx(client.rx_queues[0])
    ring = ep.ring
    offered_from = ring.tail  # slots [tail, head) are offered to the server, not yet filled
    for k in range((ep.head - offered_from) & 0xFFFF):
        slot = (offered_from + k) & ring.mask
        _f, _r, _l, offset, _m = w.DESC.unpack_from(ring.desc, slot * 16)
        base = rx_table[slot]
        assert base <= offset < base + ep.buffer_size, f"M2S slot {slot} names a foreign buffer"


async def test_forward_plain_and_chained(sock_path: str) -> None:
    cfg = InterfaceConfig(buffer_size=256, ring_size=32)
    async with linked(sock_path, cfg) as (server, client):
        all_buffers = every_buffer(client)
        packets = [payload(1, 100), payload(2, 700), payload(3, 256), payload(4, 257)]
        await server.tx_queues[0].send_batch(packets)
        async with asyncio.timeout(TIMEOUT):
            batch = await client.rx_queues[0].receive()
        assert len(batch) == 4
        plain, chain = batch[0], batch[1]
        assert isinstance(plain, memoryview) and isinstance(chain, ChainedPacket)
        ctx = client.tx_queues[0]
        writes_before = ctx.counters.bytes
        assert ctx.forward(batch) == 4
        # the forwarded views are invalidated
        with pytest.raises(ValueError, match=RELEASED):
            bytes(plain)
        with pytest.raises(ValueError, match=RELEASED):
            bytes(chain.segments[0])
        batch.release()
        seen: list[Seen] = []
        async with asyncio.timeout(TIMEOUT):
            while len(seen) < 4:
                b = await server.rx_queues[0].receive()
                seen.extend(inspect_batch(b, server))
                b.release()
        assert [x.data for x in seen] == packets
        assert [x.nsegs for x in seen] == [1, 3, 1, 2]
        assert ctx.counters.packets == 4 and ctx.counters.bytes - writes_before == 1313
        assert ctx.counters.chained == 2 == server.rx_queues[0].counters.chained
        check_ownership(client, all_buffers)


async def test_forward_many_cycles_keeps_every_buffer_in_one_ring(sock_path: str) -> None:
    cfg = InterfaceConfig(buffer_size=256, ring_size=32, rx_headroom=16, tx_headroom=8)
    async with linked(sock_path, cfg) as (server, client):
        crx, ctx = client.rx_queues[0], client.tx_queues[0]
        srx, stx = server.rx_queues[0], server.tx_queues[0]
        all_buffers = every_buffer(client)
        rng = random.Random(1234)
        total_forwarded = 0
        for cycle in range(80):
            sizes = [rng.choice([1, 60, 240, 241, 600]) for _ in range(rng.randint(1, 6))]
            packets = [payload(cycle * 10 + k, n) for k, n in enumerate(sizes)]
            async with asyncio.timeout(TIMEOUT):
                await stx.send_batch(packets)
                batch = await crx.receive()
            assert len(batch) == len(packets)
            chosen = sorted(rng.sample(range(len(batch)), rng.randint(0, len(batch))))
            rest = [i for i in range(len(batch)) if i not in chosen]
            copies = [batch[i] for i in rest]
            n = ctx.forward(batch, chosen)
            assert n == len(chosen)
            total_forwarded += n
            await ctx.send_batch(copies)  # copying sends from the same batch
            extra = [payload(10_000 + cycle, rng.choice([30, 300]))] if cycle % 3 == 0 else []
            await ctx.send_batch(extra)
            batch.release()
            expected = [packets[i] for i in chosen] + [packets[i] for i in rest] + extra
            assert await receive_count(srx, len(expected)) == expected
            check_ownership(client, all_buffers)
        assert total_forwarded > 50
        # the buffer tables really were shuffled
        rx_table, _tx = buffer_tables(client)
        assert rx_table != sorted(rx_table) or set(rx_table) != set(all_buffers[:32])


async def test_forward_with_indices_and_partial_room(sock_path: str) -> None:
    cfg = InterfaceConfig(buffer_size=256, ring_size=16)
    async with linked(sock_path, cfg) as (server, client):
        all_buffers = every_buffer(client)
        ctx = client.tx_queues[0]
        packets = [payload(i, 100 if i != 2 else 500) for i in range(6)]  # #2 takes 2 slots
        await server.tx_queues[0].send_batch(packets)
        async with asyncio.timeout(TIMEOUT):
            batch = await client.rx_queues[0].receive()
        assert ctx.forward(batch, [1, 4]) == 2
        assert bytes(batch[0]) == packets[0]  # not forwarded: still valid
        with pytest.raises(ValueError, match=RELEASED):
            bytes(batch[1])
        assert await receive_count(server.rx_queues[0], 2) == [packets[1], packets[4]]
        # leave 2 free slots in the tx ring: 0 and 2 (2 slots) do not both fit
        assert ctx.send_batch_nowait([b"f" * 10] * 14) == 14
        assert ctx.forward(batch, [0, 2, 3]) == 1
        with pytest.raises(ValueError, match=RELEASED):
            bytes(batch[0])
        assert isinstance(batch[2], ChainedPacket) and batch.keep(2) == packets[2]
        assert ctx.forward(batch, [2]) == 0  # 1 slot left, the chain needs 2
        assert batch.keep(2) == packets[2]
        got = await receive_count(server.rx_queues[0], 15)
        assert got == [b"f" * 10] * 14 + [packets[0]]
        assert ctx.forward(batch, [2, 3, 5]) == 3
        assert await receive_count(server.rx_queues[0], 3) == [packets[i] for i in (2, 3, 5)]
        batch.release()
        check_ownership(client, all_buffers)


async def test_forward_negative_and_repeated_indices(sock_path: str) -> None:
    cfg = InterfaceConfig(buffer_size=256, ring_size=16)
    async with linked(sock_path, cfg) as (server, client):
        all_buffers = every_buffer(client)
        ctx, crx = client.tx_queues[0], client.rx_queues[0]
        # a first batch, released, so that the slots before the next batch are offered again
        await server.tx_queues[0].send_batch([payload(0, 50), payload(1, 50)])
        await receive_count(crx, 2)
        packets = [payload(2, 50), payload(3, 50), payload(4, 50)]
        await server.tx_queues[0].send_batch(packets)
        async with asyncio.timeout(TIMEOUT):
            batch = await crx.receive()
        assert [batch.slot_of(i) for i in (-3, -2, -1)] == [2, 3, 4]
        for bad in (3, -4):
            with pytest.raises(IndexError):
                batch.slot_of(bad)
            with pytest.raises(IndexError):
                ctx.forward(batch, [0, bad])  # nothing is forwarded, not even packet 0
        # The same packet listed twice (or as i and i - len) goes out once: its buffer cannot
        # be in the transmit ring twice.
        assert ctx.forward(batch, [0, 0, -3]) == 1
        check_ownership(client, all_buffers)
        assert ctx.forward(batch, [-1]) == 1
        # forward(batch) again sends only what was not forwarded yet
        assert ctx.forward(batch) == 1
        assert ctx.forward(batch) == 0
        assert ctx.counters.bad_descriptors == 0 and ctx.counters.packets == 3
        batch.release()
        got = await receive_count(server.rx_queues[0], 3)
        assert got == [packets[0], packets[2], packets[1]]
        check_ownership(client, all_buffers)
        # and the traffic keeps flowing in both directions
        await transfer(server.tx_queues[0], crx, client, [payload(9, 100)] * 40)
        await transfer(ctx, server.rx_queues[0], server, [payload(8, 100)] * 40)
        check_ownership(client, all_buffers)


async def test_forward_errors(sock_path: str) -> None:
    interfaces = [InterfaceConfig(interface_id=0), InterfaceConfig(interface_id=1)]
    async with (
        aiomemif.serve(sock_path, interfaces) as srv,
        aiomemif.connect(sock_path, interface_id=0) as c0,
        aiomemif.connect(sock_path, interface_id=1) as c1,
    ):
        async with asyncio.timeout(TIMEOUT):
            servers = {}
            for _ in range(2):
                conn = await srv.accept()
                servers[conn.interface_id] = conn
        await servers[0].tx_queues[0].send(payload(1, 64))
        async with asyncio.timeout(TIMEOUT):
            batch = await c0.rx_queues[0].receive()
        with pytest.raises(aiomemif.LocalProtocolError):
            servers[0].tx_queues[0].forward(batch)  # a server owns no buffers
        with pytest.raises(aiomemif.LocalProtocolError):
            c1.tx_queues[0].forward(batch)  # another connection's buffers
        await c0.tx_queues[0].send(payload(2, 64))
        async with asyncio.timeout(TIMEOUT):
            sbatch = await servers[0].rx_queues[0].receive()
        with pytest.raises(aiomemif.LocalProtocolError):
            c0.tx_queues[0].forward(sbatch)  # the server's receive batch
        bufs = c0.tx_queues[0].alloc_nowait(1, 10)
        with pytest.raises(aiomemif.BusyResourceError):
            c0.tx_queues[0].forward(batch)
        c0.tx_queues[0].cancel(bufs)
        batch.release()
        with pytest.raises(aiomemif.StaleBatchError):
            c0.tx_queues[0].forward(batch)
        assert c0.tx_queues[0].counters.packets == 1


async def test_forward_with_split_layout(sock_path: str) -> None:
    cfg = InterfaceConfig(buffer_size=256, ring_size=16, layout=RegionLayout.SPLIT)
    async with linked(sock_path, cfg) as (server, client):
        all_buffers = every_buffer(client)
        assert all_buffers[0] == 0  # buffers start region 1
        for round_ in range(10):
            packets = [payload(round_ * 5 + k, (k + 1) * 150) for k in range(4)]
            await server.tx_queues[0].send_batch(packets)
            async with asyncio.timeout(TIMEOUT):
                batch = await client.rx_queues[0].receive()
            assert client.tx_queues[0].forward(batch) == 4
            batch.release()
            assert await receive_count(server.rx_queues[0], 4) == packets
            check_ownership(client, all_buffers)


# -- 6. receive modes ----------------------------------------------------------------------


def modes_for(receiver: str, mode: RxMode) -> Modes:
    return {"client_mode": mode} if receiver == "client" else {"server_mode": mode}


def queues_for(server: Connection, client: Connection, receiver: str) -> tuple[TxQueue, RxQueue]:
    return ends(server, client, "server" if receiver == "client" else "client")


@pytest.mark.parametrize("receiver", ROLES)
async def test_interrupt_mode(sock_path: str, receiver: str) -> None:
    async with linked(sock_path, **modes_for(receiver, RxMode.INTERRUPT)) as (s, c):
        tx, rx = queues_for(s, c, receiver)
        assert rx.mode is RxMode.INTERRUPT
        assert rx._endpoint.ring.flags & MASK_INT == 0
        for k in range(3):
            waiting = asyncio.create_task(rx.receive())
            await asyncio.sleep(0.02)
            assert rx.interrupt_sleeps == k + 1  # one sleep per wait, no spinning
            tx.send_nowait(payload(k, 64))
            async with asyncio.timeout(TIMEOUT):
                batch = await waiting
            assert batch.keep(0) == payload(k, 64)
            assert rx.interrupt_sleeps == k + 1
            assert tx.counters.interrupts_sent == k + 1
            # (the safety re-scan may find the packet a moment before the eventfd fires)
            await eventually(lambda k=k: rx.counters.interrupts_received == k + 1, "drained")
            # woken: masked again until a receive finds the ring empty
            assert rx._endpoint.ring.flags & MASK_INT
        # packets already waiting: no sleep at all
        tx.send_nowait(payload(9, 64))
        async with asyncio.timeout(TIMEOUT):
            await rx.receive()
        assert rx.interrupt_sleeps == 3


@pytest.mark.parametrize("receiver", ROLES)
async def test_polling_mode(sock_path: str, receiver: str) -> None:
    async with linked(sock_path, **modes_for(receiver, RxMode.POLLING)) as (s, c):
        tx, rx = queues_for(s, c, receiver)
        assert rx.mode is RxMode.POLLING
        assert rx._endpoint.ring.flags & MASK_INT
        rx_conn = s if receiver == "server" else c
        assert rx_conn.details().rx_queues[0].flags & MASK_INT
        waiting = asyncio.create_task(receive_count(rx, 50))
        await asyncio.sleep(0.01)
        for k in range(5):
            tx.send_batch_nowait([payload(k * 10 + i, 64) for i in range(10)])
            await asyncio.sleep(0.003)
        assert await waiting == [payload(i, 64) for i in range(50)]
        assert tx.counters.interrupts_sent == 0
        assert rx.counters.interrupts_received == 0
        assert rx.interrupt_sleeps == 0
        rx.set_mode(RxMode.POLLING, spin_budget=0, poll_interval=0.0005)
        assert rx.spin_budget == 0 and rx.poll_interval == 0.0005
        await transfer(tx, rx, rx_conn, [payload(7, 64)] * 20)
        assert tx.counters.interrupts_sent == 0


@pytest.mark.parametrize("receiver", ROLES)
async def test_adaptive_mode(sock_path: str, receiver: str) -> None:
    async with linked(sock_path, **modes_for(receiver, RxMode.ADAPTIVE)) as (s, c):
        tx, rx = queues_for(s, c, receiver)
        ring = rx._endpoint.ring
        assert rx.mode is RxMode.ADAPTIVE
        # While traffic flows (well within the spin budget) the ring stays masked.
        rx.set_mode(RxMode.ADAPTIVE, spin_budget=30.0)
        assert ring.flags & MASK_INT
        rx_conn = s if receiver == "server" else c
        await transfer(tx, rx, rx_conn, [payload(0, 64)])  # (idle before it: may be signalled)
        assert ring.flags & MASK_INT
        signalled = tx.counters.interrupts_sent
        for k in range(5):
            await transfer(tx, rx, rx_conn, [payload(k * 40 + i, 64) for i in range(40)])
            assert ring.flags & MASK_INT
        assert tx.counters.interrupts_sent == signalled
        # Idle longer than the spin budget: the flag is cleared while the receive waits ...
        rx.set_mode(RxMode.ADAPTIVE, spin_budget=0.001)
        waiting = asyncio.create_task(rx.receive())
        await eventually(lambda: not ring.flags & MASK_INT, "MASK_INT cleared while idle")
        # ... so a packet published now is signalled and wakes it through the eventfd.
        tx.send_nowait(payload(1000, 64))
        assert tx.counters.interrupts_sent == signalled + 1
        async with asyncio.timeout(TIMEOUT):
            batch = await waiting
        assert batch.keep(0) == payload(1000, 64)
        await eventually(lambda: rx.counters.interrupts_received >= 1, "interrupt received")
        assert rx.interrupt_sleeps >= 1
        assert ring.flags & MASK_INT  # masked again once woken


@pytest.mark.parametrize("receiver", ROLES)
async def test_switch_modes_while_a_receive_waits(sock_path: str, receiver: str) -> None:
    async with linked(sock_path, **modes_for(receiver, RxMode.INTERRUPT)) as (s, c):
        tx, rx = queues_for(s, c, receiver)
        ring = rx._endpoint.ring
        waiting = asyncio.create_task(rx.receive())
        await asyncio.sleep(0.01)
        assert rx.interrupt_sleeps == 1
        rx.set_mode(RxMode.POLLING, poll_interval=0.001)
        assert ring.flags & MASK_INT
        await asyncio.sleep(0.01)
        assert not waiting.done()
        tx.send_nowait(payload(1, 64))
        assert tx.counters.interrupts_sent == 0  # masked: not signalled, found by polling
        async with asyncio.timeout(TIMEOUT):
            assert (await waiting).keep(0) == payload(1, 64)
        # polling -> interrupt while waiting
        waiting = asyncio.create_task(rx.receive())
        await asyncio.sleep(0.01)
        rx.set_mode(RxMode.INTERRUPT)
        assert ring.flags & MASK_INT == 0
        await asyncio.sleep(0.01)
        tx.send_nowait(payload(2, 64))
        assert tx.counters.interrupts_sent == 1
        async with asyncio.timeout(TIMEOUT):
            assert (await waiting).keep(0) == payload(2, 64)
        # interrupt -> adaptive while waiting, then a packet arrives
        waiting = asyncio.create_task(rx.receive())
        await asyncio.sleep(0.01)
        rx.set_mode(RxMode.ADAPTIVE, spin_budget=0.001)
        await asyncio.sleep(0.01)
        tx.send_nowait(payload(3, 64))
        async with asyncio.timeout(TIMEOUT):
            assert (await waiting).keep(0) == payload(3, 64)
        assert rx.mode is RxMode.ADAPTIVE


async def test_set_mode_rejects_negative_values(sock_path: str) -> None:
    async with linked(sock_path) as (server, client):
        for rx in (client.rx_queues[0], server.rx_queues[0]):
            with pytest.raises(aiomemif.ConfigurationError):
                rx.set_mode(RxMode.POLLING, spin_budget=-1)
            with pytest.raises(aiomemif.ConfigurationError):
                rx.set_mode(RxMode.ADAPTIVE, poll_interval=-0.001)
            assert rx.mode is RxMode.INTERRUPT  # unchanged
        rx = client.rx_queues[0]
    with pytest.raises(aiomemif.ClosedResourceError):
        rx.set_mode(RxMode.POLLING)


# -- 7. region layouts ---------------------------------------------------------------------


async def test_split_layout(sock_path: str) -> None:
    n, bsize = 64, 256
    cfg = InterfaceConfig(layout=RegionLayout.SPLIT, ring_size=n, buffer_size=bsize)
    async with linked(sock_path, cfg) as (server, client):
        rings = 2 * (2 * 64 + 16 * n)
        for conn in (client, server):
            regions = conn.details().regions
            assert [(r.index, r.size) for r in regions] == [(0, rings), (1, 2 * n * bsize)]
        sizes = [10, 256, 257, 3000, 65535 // 8]
        packets = [payload(i, k) for i, k in enumerate(sizes)]
        seen = await transfer(client.tx_queues[0], server.rx_queues[0], server, packets)
        assert [x.nsegs for x in seen] == [-(-k // bsize) for k in sizes]
        seen = await transfer(server.tx_queues[0], client.rx_queues[0], client, packets)
        assert [x.nsegs for x in seen] == [-(-k // bsize) for k in sizes]
        assert all(x.zero_copy for x in seen)
        # client views point into region 1 (the buffers)
        await server.tx_queues[0].send(payload(1, 10))
        async with asyncio.timeout(TIMEOUT):
            batch = await client.rx_queues[0].receive()
        p = batch[0]
        assert isinstance(p, memoryview) and p.obj is client._regions[1].mapping


# -- 8. cacheline --------------------------------------------------------------------------


async def test_cacheline_128_both_sides(sock_path: str) -> None:
    cfg = InterfaceConfig(cacheline=128, ring_size=64, buffer_size=512)
    async with linked(sock_path, cfg, InterfaceConfig(cacheline=128)) as (server, client):
        assert client.rx_queues[0]._endpoint.ring.tail_index == 64  # tail at +128
        assert client.details().regions[0].size == 2 * (256 + 16 * 64) + 2 * 64 * 512
        packets = [payload(i, n) for i, n in enumerate([1, 100, 512, 2000, 9000])]
        await transfer(client.tx_queues[0], server.rx_queues[0], server, packets)
        await transfer(server.tx_queues[0], client.rx_queues[0], client, packets)
        await transfer(client.tx_queues[0], server.rx_queues[0], server, packets * 30)


@pytest.mark.parametrize("layout", [RegionLayout.SINGLE, RegionLayout.SPLIT])
async def test_cacheline_mismatch_is_refused(sock_path: str, layout: RegionLayout) -> None:
    # A client laying rings out with CL=64 (stride 2*64 + 16*N) and a server expecting CL=128
    # (each ring 2*128 + 16*N): the server's idea of ring 0 runs into ring 1 (or, with rings
    # alone in region 0, past the region's end), which it checks and refuses.
    #
    # The other direction (client 128, server 64) does not overlap: the server's smaller
    # rings fit inside the client's larger ones and the cookie is at offset 0 in both. It
    # shows only in the distance between rings packed in one region ("Ring stride suggests
    # a 128-byte cacheline peer", tests/integration/test_hostile_setup.py).
    async with aiomemif.serve(sock_path, [InterfaceConfig(cacheline=128)]) as srv:
        with pytest.raises(aiomemif.HandshakeRefusedError) as info:
            async with asyncio.timeout(TIMEOUT):
                await aiomemif.connect(sock_path, cacheline=64, layout=layout, ring_size=64)
        expected = {
            RegionLayout.SINGLE: "Rings overlap (cacheline size mismatch?)",
            RegionLayout.SPLIT: "Ring outside its region",
        }[layout]
        assert info.value.reason == expected
        assert srv.failures[-1].reason == expected
        assert not srv.connections_by_id


# -- 9. details ----------------------------------------------------------------------------

CONNECTION_FIELDS = {
    "interface_name", "app_name", "peer_interface_name", "peer_app_name", "interface_id",
    "secret_set", "role", "mode", "socket_address", "rx_queues", "tx_queues", "regions",
    "link_up",
}  # fmt: skip
QUEUE_FIELDS = {
    "qid", "ring_size", "flags", "head", "tail", "buffer_size", "packets", "bytes",
    "bad_descriptors", "ring_full", "interrupts_sent", "interrupts_received", "chained",
}  # fmt: skip


async def test_details_both_roles(sock_path: str) -> None:
    n, bsize = 32, 512
    ccfg = InterfaceConfig(
        interface_id=7, secret="pw", ring_size=n, buffer_size=bsize, rx_queue_count=2,
        app_name="cli-app", interface_name="cli-if",
    )  # fmt: skip
    scfg = InterfaceConfig(interface_id=7, secret="pw", tx_queue_count=2, interface_name="srv-if")
    async with (
        aiomemif.serve(sock_path, [scfg], app_name="srv-app", rx_mode=RxMode.POLLING) as srv,
        aiomemif.connect(sock_path, ccfg) as client,
    ):
        async with asyncio.timeout(TIMEOUT):
            server = await srv.accept()
        # traffic with chains and interrupts both ways
        waiting = asyncio.create_task(client.rx_queues[1].receive())
        await asyncio.sleep(0.01)
        server.tx_queues[1].send_batch_nowait([payload(1, 100), payload(2, 1000)])
        async with asyncio.timeout(TIMEOUT):
            (await waiting).release()
        await transfer(client.tx_queues[0], server.rx_queues[0], server, [payload(3, 600)] * 3)

        assert set(attrs.fields_dict(aiomemif.ConnectionDetails)) == CONNECTION_FIELDS
        assert set(attrs.fields_dict(aiomemif.QueueDetails)) == QUEUE_FIELDS
        cd, sd = client.details(), server.details()
        assert (cd.interface_name, cd.app_name) == ("cli-if", "cli-app")
        assert (cd.peer_interface_name, cd.peer_app_name) == ("srv-if", "srv-app")
        assert (sd.interface_name, sd.app_name) == ("srv-if", "srv-app")  # its HELLO name
        assert (sd.peer_interface_name, sd.peer_app_name) == ("cli-if", "cli-app")
        assert cd.interface_id == sd.interface_id == 7
        assert cd.secret_set and sd.secret_set
        assert cd.role is aiomemif.Role.CLIENT and sd.role is aiomemif.Role.SERVER
        assert cd.mode is sd.mode is aiomemif.Mode.ETHERNET
        assert cd.socket_address == sd.socket_address == sock_path
        assert cd.link_up and sd.link_up
        # queues: client rx = server tx = 2 (M2S), client tx = server rx = 1 (S2M)
        assert [q.qid for q in cd.rx_queues] == [q.qid for q in sd.tx_queues] == [0, 1]
        assert [q.qid for q in cd.tx_queues] == [q.qid for q in sd.rx_queues] == [0]
        for q in (*cd.rx_queues, *cd.tx_queues, *sd.rx_queues, *sd.tx_queues):
            assert q.ring_size == n
        for q in (*cd.rx_queues, *cd.tx_queues):
            assert q.buffer_size == bsize
        for q in (*sd.rx_queues, *sd.tx_queues):
            # a server owns no buffers (documented: maybe the offered capacity)
            assert q.buffer_size is None or q.buffer_size == bsize
        m2s_c, m2s_s = cd.rx_queues[1], sd.tx_queues[1]
        assert (m2s_c.head, m2s_c.tail) == (m2s_s.head, m2s_s.tail) == (n + 3, 3)
        # interrupt mode: signalled once, then masked until a receive finds the ring empty
        assert m2s_c.flags == m2s_s.flags == MASK_INT
        assert m2s_s.packets == m2s_c.packets == 2 and m2s_s.bytes == m2s_c.bytes == 1100
        assert m2s_s.chained == m2s_c.chained == 1
        assert m2s_s.interrupts_sent == 1 and m2s_c.interrupts_received == 1
        assert cd.rx_queues[0].packets == 0 and cd.rx_queues[0].head == n
        s2m_c, s2m_s = cd.tx_queues[0], sd.rx_queues[0]
        assert (s2m_c.head, s2m_c.tail) == (s2m_s.head, s2m_s.tail) == (6, 6)  # 3 x 2 slots
        assert s2m_c.flags == s2m_s.flags == MASK_INT  # server polls
        assert s2m_c.packets == s2m_s.packets == 3 and s2m_c.bytes == s2m_s.bytes == 1800
        assert s2m_c.chained == s2m_s.chained == 3
        assert s2m_c.interrupts_sent == 0 and s2m_s.interrupts_received == 0
        for q in (*cd.rx_queues, *cd.tx_queues, *sd.rx_queues, *sd.tx_queues):
            assert q.bad_descriptors == 0 and q.ring_full >= 0
        size = 3 * (128 + 16 * n) + 3 * n * bsize
        assert [(r.index, r.size) for r in cd.regions] == [(0, size)]
        assert [(r.index, r.size) for r in sd.regions] == [(0, size)]
        for d in (cd, sd):
            text = json.dumps(d.as_dict())
            back = json.loads(text)
            assert set(back) == CONNECTION_FIELDS
            assert set(back["rx_queues"][0]) == QUEUE_FIELDS
            assert back["role"] in ("client", "server") and back["mode"] == "ethernet"
            assert back["link_up"] is True
        await client.aclose()
        async with asyncio.timeout(TIMEOUT):
            await server.wait_closed()
        cd, sd = client.details(), server.details()
        assert not cd.link_up and not sd.link_up
        assert cd.tx_queues[0].packets == 3  # counters survive the link
        json.dumps(sd.as_dict())


# -- 10. reconnect policy and link events -------------------------------------------------


def test_reconnect_policy_delay_grows_and_is_capped() -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.01, maximum=0.05, factor=2.0, jitter=0.1)
    for failures, base in [(0, 0.01), (1, 0.01), (2, 0.02), (3, 0.04), (4, 0.05), (50, 0.05)]:
        for _ in range(50):
            d = policy.delay(failures)
            if base < policy.maximum:  # jitter adds up to 10%...
                assert base <= d <= min(base * 1.1, policy.maximum) + 1e-12
            else:  # ...and takes it off where adding it would pass the maximum
                assert base * 0.9 - 1e-12 <= d <= policy.maximum
    no_jitter = aiomemif.ReconnectPolicy(initial=0.5, maximum=3.0, jitter=0.0)
    assert [no_jitter.delay(k) for k in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_link_events_up_down_up(sock_path: str) -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.01, maximum=0.05, jitter=0.1, attempts=None)
    async with (
        aiomemif.serve(sock_path) as srv,
        aiomemif.Client(sock_path, reconnect=policy) as client,
    ):
        async with contextlib.aclosing(client.link_events()) as events, asyncio.timeout(10):
            ev = await anext(events)
            assert ev.up and ev.connection is not None and ev.reason is None
            first = ev.connection
            assert await client.wait_connected() is first
            server = await srv.accept()
            await transfer(first.tx_queues[0], server.rx_queues[0], server, [b"one" * 20])
            await server.aclose("maintenance")
            ev = await anext(events)
            assert not ev.up and ev.kind == "down" and ev.connection is first
            assert ev.reason == "maintenance"
            assert ev.retry_in is not None and 0 <= ev.retry_in <= policy.maximum
            assert isinstance(ev.error, aiomemif.PeerDisconnectedError)
            ev = await anext(events)
            assert ev.up and ev.connection is not None and ev.connection is not first
            second = await client.wait_connected()
            assert second is ev.connection and second.is_up
            server = await srv.accept()
            await transfer(second.tx_queues[0], server.rx_queues[0], server, [b"two" * 20])
        # a subscriber after close sees nothing
    async with contextlib.aclosing(client.link_events()) as late:
        assert [e async for e in late] == []


async def test_link_events_end_when_client_closes(sock_path: str) -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.01, maximum=0.05)
    async with aiomemif.serve(sock_path) as srv:
        client = aiomemif.Client(sock_path, reconnect=policy)
        await client.__aenter__()
        events = client.link_events()
        async with asyncio.timeout(TIMEOUT):
            assert (await anext(events)).up
            await srv.accept()
            await client.aclose()
            rest = [e async for e in events]
        assert rest == []
        with pytest.raises(aiomemif.ClosedResourceError):
            await client.wait_connected()


async def test_attempts_exhausted_raise_the_last_error(sock_path: str) -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.001, maximum=0.005, attempts=3)
    async with aiomemif.serve(sock_path, [InterfaceConfig(secret="needed")]) as srv:
        async with aiomemif.Client(sock_path, reconnect=policy) as client:

            async def first_connection() -> Connection:
                async with asyncio.timeout(TIMEOUT):
                    async for conn in client.connections():
                        return conn
                raise AssertionError("connections() ended")

            with pytest.raises(aiomemif.HandshakeRefusedError) as info:
                await first_connection()
            assert info.value.reason == "Secret required"
            assert client.last_error is not None
            with pytest.raises(aiomemif.HandshakeRefusedError):
                await client.wait_connected()
        assert [f.reason for f in srv.failures] == ["Secret required"] * 3


async def test_wait_connected_does_not_consume_connections(sock_path: str) -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.01, maximum=0.05)
    async with (
        aiomemif.serve(sock_path) as srv,
        aiomemif.Client(sock_path, reconnect=policy) as client,
    ):
        async with asyncio.timeout(TIMEOUT):
            conn = await client.wait_connected()  # waits: the link is not up yet
            assert await client.wait_connected() is conn
            await srv.accept()
            async for yielded in client.connections():
                assert yielded is conn
                break
        waiter = asyncio.create_task(client.wait_connected())
        await asyncio.sleep(0)
        assert waiter.done() and waiter.result() is conn
    with pytest.raises(aiomemif.ClosedResourceError):
        await client.wait_connected()


async def test_wait_connected_wakes_on_close(sock_path: str) -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.01, maximum=0.02)
    client = aiomemif.Client(sock_path, reconnect=policy)  # nobody listens
    await client.__aenter__()
    waiter = asyncio.create_task(client.wait_connected())
    await asyncio.sleep(0.03)
    assert not waiter.done()
    await client.aclose()
    with pytest.raises(aiomemif.ClosedResourceError):
        async with asyncio.timeout(TIMEOUT):
            await waiter


async def test_client_drops_a_connection_that_went_down_untaken(sock_path: str) -> None:
    """A link that comes and goes while nobody iterates connections() is not kept alive,
    and connections() then yields the next live link, not the dead one."""
    policy = aiomemif.ReconnectPolicy(initial=0.01, maximum=0.02)
    async with (
        aiomemif.serve(sock_path) as srv,
        aiomemif.Client(sock_path, reconnect=policy) as client,
    ):
        async with asyncio.timeout(TIMEOUT):
            first = await client.wait_connected()
            await (await srv.accept()).aclose("go away")
            await first.wait_closed()
            while client.connection is first:
                await asyncio.sleep(0.001)
            dead = weakref.ref(first)
            del first
            gc.collect()
            assert dead() is None
            async for conn in client.connections():
                assert conn.is_up
                break
            assert client.connection is conn


async def test_server_drops_a_connection_that_went_down_unaccepted(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv:
        async with asyncio.timeout(TIMEOUT):
            async with aiomemif.connect(sock_path):
                while 0 not in srv.connections_by_id:
                    await asyncio.sleep(0.001)
                dead = weakref.ref(srv.connections_by_id[0])
            while 0 in srv.connections_by_id:
                await asyncio.sleep(0.001)
            gc.collect()
            assert dead() is None
            async with aiomemif.connect(sock_path):
                conn = await srv.accept()
                assert conn.is_up
