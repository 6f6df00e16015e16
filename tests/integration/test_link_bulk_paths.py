"""The bulk fast paths over real connections, and their per-descriptor fallbacks.

Real pairs (:mod:`support.links`) and the scripted hostile peers of
:mod:`support.hostile_links`, in both directions: every run arrives byte-exact and in
order, bad descriptors are counted, and interrupt masking and spinning neither lose a
packet nor hold the event loop. The ring-level tests are in ``unit/test_bulk_paths.py``.
No speed is asserted: waits are bounded by generous timeouts only.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from support.hostile import M2S, S2M, ClientMemory
from support.hostile_links import fake_client_link, fake_server_link, server_publish, server_send
from support.links import (
    ROLES,
    SMALL,
    TIMEOUT,
    client_tx,
    eventually,
    linked,
    modes,
    payload,
    queues,
    receive_all,
)
from support.rig import (
    NEXT,
    NOT_BYTES_LIKE,
    descriptors,
    forbid,
    packets_of,
    sizes_for,
    snapshot,
    spy,
    typed_packets,
)

from aiomemif import (
    InterfaceConfig,
    RegionLayout,
    RxMode,
    WouldBlockError,
)
from aiomemif._aio.rx_queue import RxQueue
from aiomemif._aio.tx_queue import TxQueue
from aiomemif._core import wire as w
from aiomemif._core.client_tx import ClientTx
from aiomemif._core.ring import Ring
from aiomemif._core.rx import ClientRx

MASK_INT = w.RING_FLAG_MASK_INT


LINK_BAD = ["region out of range", "length 0", "offset+length past the region"]


@pytest.mark.parametrize("pos", [0, 3, 7], ids=["first", "middle", "last"])
@pytest.mark.parametrize("kind", LINK_BAD)
async def test_link_s2m_run_with_one_bad_descriptor(
    sock_path: str, monkeypatch: pytest.MonkeyPatch, kind: str, pos: int
) -> None:
    """A hostile client publishes a run of 8 with one bad descriptor: the server delivers
    the 7 others in order, counts 1 bad, returns all 8 slots; the next run is bulk again."""
    async with fake_client_link(sock_path) as link:
        conn, mem = link.conn, link.mem
        ring = mem.ring(S2M)
        rxq = conn.rx_queues[0]
        fallback = spy(monkeypatch, rxq._endpoint, "_collect_each")
        packets = [payload(j, 60) for j in range(16)]
        for j in range(8):
            mem.write_packet(j, packets[j])
        own = mem.buffer_offset(S2M, 0, pos)
        bad: dict[str, int] = {
            "region out of range": {"region": 5, "length": 60, "offset": own},
            "length 0": {"length": 0, "offset": own},
            "offset+length past the region": {"length": 60, "offset": mem.size - 59},
        }[kind]
        ring.set_desc(pos, **bad)
        mem.publish_s2m(8)
        async with asyncio.timeout(TIMEOUT):
            batch = await rxq.receive()
        good = [j for j in range(8) if j != pos]
        assert [bytes(p) for p in batch] == [packets[j] for j in good]
        assert [batch.slot_of(i) & 15 for i in range(len(batch))] == good
        batch.release()
        assert len(fallback) == 1
        d = conn.details().rx_queues[0]
        assert (d.packets, d.bytes, d.bad_descriptors) == (7, 420, 1)
        assert ring.tail == 8
        for j in range(8, 16):
            mem.write_packet(j, packets[j])
        mem.publish_s2m(16)
        async with asyncio.timeout(TIMEOUT):
            batch = await rxq.receive()
        assert [bytes(p) for p in batch] == packets[8:]
        batch.release()
        assert len(fallback) == 1  # a plain run again: bulk
        assert ring.tail == 16
        assert conn.details().rx_queues[0].bad_descriptors == 1


@pytest.mark.parametrize("pos", [0, 3, 7], ids=["first", "middle", "last"])
@pytest.mark.parametrize("kind", LINK_BAD)
async def test_link_m2s_run_with_one_bad_descriptor_then_forward(
    sock_path: str, monkeypatch: pytest.MonkeyPatch, kind: str, pos: int
) -> None:
    """A hostile server publishes a run of 8 with one bad descriptor: the client delivers
    the 7 others, counts 1 bad, refills all 8 slots. Forwarding that batch moves exactly the
    good packets' buffers (the slot map of the per-descriptor path skips the bad slot)."""
    async with fake_server_link(sock_path) as link:
        conn, side = link.conn, link.side
        ring = side.ring(M2S)
        region = side.region(0)
        rxq, txq = conn.rx_queues[0], conn.tx_queues[0]
        fallback = spy(monkeypatch, rxq._endpoint, "_collect_each")
        packets = [payload(50 + j, 60) for j in range(8)]
        for j, p in enumerate(packets):
            server_send(side, j, p)
        own = ring.desc(pos)[3]
        bad: dict[str, int] = {
            "region out of range": {"region": 5, "length": 60, "offset": own},
            "length 0": {"length": 0, "offset": own},
            "offset+length past the region": {"length": 60, "offset": len(region) - 59},
        }[kind]
        ring.set_desc(pos, **bad)
        server_publish(side, 8)
        async with asyncio.timeout(TIMEOUT):
            batch = await rxq.receive()
        good = [packets[j] for j in range(8) if j != pos]
        assert [bytes(p) for p in batch] == good
        assert len(fallback) == 1
        assert txq.forward(batch) == 7
        batch.release()
        s2m = side.ring(S2M)
        assert s2m.head == 7
        for j in range(7):
            flags, reg, n, off, _m = s2m.desc(j)
            assert (flags, reg, n) == (0, 0, 60)
            assert region[off : off + n] == good[j]
        d = conn.details().rx_queues[0]
        assert (d.packets, d.bad_descriptors) == (7, 1)
        assert ring.head == 16 + 8  # all 8 slots offered again
        assert ring.desc(pos)[:4] == (0, 0, 256, own)  # the bad slot with its own buffer


@pytest.mark.parametrize("lengths", ["mixed", "equal"])
async def test_link_s2m_run_ending_at_the_region_end(sock_path: str, lengths: str) -> None:
    """A hostile client's run whose last buffer ends exactly at the end of its region is
    valid (mixed lengths: the conservative bulk bound refuses it): all 8 arrive."""
    async with fake_client_link(sock_path) as link:
        conn, mem = link.conn, link.mem
        ring = mem.ring(S2M)
        sizes = [60, 256, 1, 200, 17, 256, 99, 7] if lengths == "mixed" else [64] * 8
        packets = packets_of(3, sizes)
        for j in range(7):
            mem.write_packet(j, packets[j])
        off = mem.size - sizes[7]  # the last byte of the run is the last byte of the region
        mem.map[off : mem.size] = packets[7]
        ring.set_desc(7, length=sizes[7], offset=off)
        mem.publish_s2m(8)
        async with asyncio.timeout(TIMEOUT):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == packets
        batch.release()
        d = conn.details().rx_queues[0]
        assert (d.packets, d.bytes, d.bad_descriptors) == (8, sum(sizes), 0)
        assert ring.tail == 8


@pytest.mark.parametrize("lengths", ["mixed", "equal"])
async def test_link_m2s_run_ending_at_the_region_end(sock_path: str, lengths: str) -> None:
    """The same from a hostile server: the last buffer ends at the client region's end
    (slot 15's buffer is the region's last; its packet is moved to the buffer's end)."""
    async with fake_server_link(sock_path) as link:
        conn, side = link.conn, link.side
        ring = side.ring(M2S)
        region = side.region(0)
        for j in range(8):  # a first lap, so that the run below ends in slot 15
            server_send(side, j, b"lap-1")
        server_publish(side, 8)
        async with asyncio.timeout(TIMEOUT):
            (await conn.rx_queues[0].receive()).release()
        sizes = [60, 256, 1, 200, 17, 256, 99, 7] if lengths == "mixed" else [64] * 8
        packets = packets_of(4, sizes)
        for j in range(7):
            server_send(side, 8 + j, packets[j])
        off = len(region) - sizes[7]
        region[off:] = packets[7]
        ring.set_desc(15, length=sizes[7], offset=off)
        server_publish(side, 16)
        async with asyncio.timeout(TIMEOUT):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == packets
        batch.release()
        d = conn.details().rx_queues[0]
        assert (d.packets, d.bytes, d.bad_descriptors) == (16, 40 + sum(sizes), 0)


@pytest.mark.parametrize("layout", [RegionLayout.SINGLE, RegionLayout.SPLIT])
@pytest.mark.parametrize("sender", ROLES)
async def test_link_bulk_runs_wrap_the_ring(
    sock_path: str, monkeypatch: pytest.MonkeyPatch, sender: str, layout: RegionLayout
) -> None:
    """Runs that cross the end of an 8-slot ring go through both bulk paths on real
    mappings (SPLIT: every descriptor names region 1) and arrive byte-exact, in one go."""
    cfg = InterfaceConfig(ring_size=8, buffer_size=128, layout=layout)
    async with linked(sock_path, cfg) as (server, client):
        receiver = "server" if sender == "client" else "client"
        tx, rx = queues(server, client, receiver)
        rx_conn = server if receiver == "server" else client
        mapping = rx_conn._regions[1 if layout is RegionLayout.SPLIT else 0].mapping
        forbid(monkeypatch, tx._endpoint, "_write_each")
        forbid(monkeypatch, rx._endpoint, "_collect_each")
        for lap, count in enumerate([5, 7, 8, 6, 8]):
            packets = packets_of(lap, sizes_for(count, 128))
            assert tx.send_batch_nowait(packets) == count
            async with asyncio.timeout(TIMEOUT):
                batch = await rx.receive()
            assert len(batch) == count  # one run
            assert all(isinstance(p, memoryview) and p.obj is mapping for p in batch)
            assert [bytes(p) for p in batch] == packets
            batch.release()
        assert rx.counters.packets == tx.counters.packets == 34


@pytest.mark.parametrize("sender", ROLES)
async def test_link_sends_the_byte_representation(sock_path: str, sender: str) -> None:
    """bytes, item-format memoryviews and arrays, bytearrays, ``__bytes__`` objects: the wire
    carries their byte representation, mixed in one batch, in runs of one kind and alone.
    A packet that is not bytes-like raises TypeError and publishes nothing of its batch."""
    async with linked(sock_path, SMALL) as (server, client):
        tx, rx = queues(server, client, "server" if sender == "client" else "client")
        kinds = typed_packets()
        assert tx.send_batch_nowait([obj for _, obj, _ in kinds]) == len(kinds)
        assert await receive_all(rx, len(kinds)) == [(data, False) for _, _, data in kinds]
        for name, obj, data in kinds:  # a run of one kind at a time, then a single one
            assert tx.send_batch_nowait([obj] * 5) == 5, name
            assert await receive_all(rx, 5) == [(data, False)] * 5, name
            tx.send_nowait(obj)
            assert await receive_all(rx, 1) == [(data, False)], name
        # not bytes-like: TypeError, and nothing of the batch is published
        ring = tx._endpoint.ring
        before, sent = snapshot(ring), tx.counters.packets
        for bad in NOT_BYTES_LIKE:
            with pytest.raises(TypeError):
                tx.send_batch_nowait([b"ok", bad, b"ok"])
            with pytest.raises(TypeError):
                tx.send_nowait(bad)
        assert snapshot(ring) == before
        assert tx.counters.packets == sent
        with pytest.raises(WouldBlockError):
            rx.receive_nowait()
        tx.send_nowait(b"after")
        assert await receive_all(rx, 1) == [(b"after", False)]


@pytest.mark.parametrize("count", [1, 2], ids=["single", "run"])
@pytest.mark.parametrize("kind", ["B", "I"])
@pytest.mark.parametrize("sender", ROLES)
async def test_link_sends_non_contiguous_memoryviews(
    sock_path: str, sender: str, kind: str, count: int
) -> None:
    """``send`` accepts any buffer: a strided memoryview goes out as its bytes, alone
    (single-packet path) or in a run (bulk path), from either role."""
    async with linked(sock_path, SMALL) as (server, client):
        tx, rx = queues(server, client, "server" if sender == "client" else "client")
        view = memoryview(bytearray(range(40)) if kind == "B" else array("I", range(10)))[::2]
        items: list[Any] = [view, b"next"]
        batch = items[:count]
        assert tx.send_batch_nowait(batch) == count
        expected = [(view.tobytes(), False), (b"next", False)][:count]
        assert await receive_all(rx, count) == expected


@pytest.mark.parametrize("layout", [RegionLayout.SINGLE, RegionLayout.SPLIT])
@pytest.mark.parametrize("headroom", [0, 32])
@pytest.mark.parametrize("sender", ROLES)
async def test_link_small_packets_after_a_jumbo_chain(
    sock_path: str, sender: str, headroom: int, layout: RegionLayout
) -> None:
    """A 9000-byte packet in 2048-byte buffers leaves NEXT in 4 slots; the small packets
    that reuse those slots must never carry NEXT (in the ring, and as received)."""
    cfg = InterfaceConfig(ring_size=16, buffer_size=2048, layout=layout)
    if sender == "client":
        cfg = attrs.evolve(cfg, tx_headroom=headroom)
    else:
        cfg = attrs.evolve(cfg, rx_headroom=headroom)
    async with linked(sock_path, cfg) as (server, client):
        receiver = "server" if sender == "client" else "client"
        tx, rx = queues(server, client, receiver)
        rx_conn = server if receiver == "server" else client
        ring = rx._endpoint.ring  # the receiver's view of the ring
        table = client_tx(client.tx_queues[0]).buffers if sender == "client" else None
        cap = 2048 - headroom
        jumbo = payload(9000, 9000)
        nseg = -(-9000 // cap)
        tx.send_nowait(jumbo)
        assert [d[0] for d in descriptors(ring, 0, nseg)] == [NEXT] * (nseg - 1) + [0]
        assert await receive_all(rx, 1) == [(jumbo, True)]
        slot = nseg
        for lap, count in enumerate([1, 5, 1, 1, 5, 3, 5, 1, 5, 3, 5]):  # 35 slots
            packets = packets_of(lap, sizes_for(count, 200))
            if count == 1:
                tx.send_nowait(packets[0])
            else:
                assert tx.send_batch_nowait(packets) == count
            for k, (flags, reg, n, off) in enumerate(descriptors(ring, slot, count)):
                assert flags == 0, f"slot {(slot + k) & 15} carries flags {flags:#x}"
                assert n == len(packets[k])
                if table is not None:
                    assert off == table[(slot + k) & 15] + headroom
                view = rx_conn._regions[reg].view
                assert view is not None and bytes(view[off : off + n]) == packets[k]
            slot += count
            assert await receive_all(rx, count) == [(p, False) for p in packets]
        assert rx.counters.chained == 1


async def send_and_check(
    tx: TxQueue, rx: RxQueue, ring: Ring, slot: int, counts: Sequence[int], seed: int, cap: int
) -> int:
    """Send runs of ``counts`` packets (a count of 1 through ``send_nowait``, the single-packet
    path) from the client; each published descriptor must have flags 0 and the offset of its
    slot's own data (buffer + tx headroom); each packet arrives as a plain view, byte-exact.
    Returns the next free-running slot."""
    ep = tx._endpoint
    assert isinstance(ep, ClientTx)
    for lap, count in enumerate(counts):
        packets = packets_of(seed + lap, sizes_for(count, cap))
        if count == 1:
            tx.send_nowait(packets[0])
        else:
            assert tx.send_batch_nowait(packets) == count
        for k, (flags, _reg, n, off) in enumerate(descriptors(ring, slot, count)):
            s = (slot + k) & ring.mask
            want = (0, len(packets[k]), ep.buffers[s] + ep.headroom)
            assert (flags, n, off) == want, f"slot {s}"
        slot += count
        assert await receive_all(rx, count) == [(p, False) for p in packets]
    return slot


@pytest.mark.parametrize("tx_headroom", [0, 16])
async def test_link_copies_after_forward_use_their_slots_offsets(
    sock_path: str, tx_headroom: int
) -> None:
    """On a clean ring (a whole lap sent), forwarding publishes offsets 64 bytes into the
    moved buffers (rx headroom) and a chain: the ring is dirty again, and later copies into
    those slots must carry their own data offset and flags 0."""
    cfg = InterfaceConfig(ring_size=16, buffer_size=256, rx_headroom=64, tx_headroom=tx_headroom)
    async with linked(sock_path, cfg) as (server, client):
        crx, ctx = client.rx_queues[0], client.tx_queues[0]
        srx, stx = server.rx_queues[0], server.tx_queues[0]
        rx_ep, tx_ep = crx._endpoint, ctx._endpoint
        assert isinstance(rx_ep, ClientRx) and isinstance(tx_ep, ClientTx)
        all_buffers = sorted([*rx_ep.buffers, *tx_ep.buffers])
        ring = srx._endpoint.ring
        cap = 256 - tx_headroom
        slot = await send_and_check(ctx, srx, ring, 0, [16], 10, cap)
        assert tx_ep.dirty <= 0  # clean: copies now write the length column only
        sent = [payload(j, 100) for j in range(5)] + [payload(5, 300)]  # 300 > 192: a chain
        assert stx.send_batch_nowait(sent) == 6
        async with asyncio.timeout(TIMEOUT):
            batch = await crx.receive()
        assert len(batch) == 6
        assert ctx.forward(batch) == 6
        batch.release()
        assert [d for d, _ in await receive_all(srx, 6)] == sent
        forwarded = descriptors(ring, slot, 7)
        assert [d[0] for d in forwarded] == [0] * 5 + [NEXT, 0]
        assert [d[3] for d in forwarded] == [tx_ep.buffers[s] + 64 for s in range(7)]
        slot += 7
        # 34 slots: every slot twice, the forwarded ones included, in runs and singly
        await send_and_check(ctx, srx, ring, slot, [1, 5, 1, 5, 3, 1, 5, 5, 3, 5], 20, cap)
        assert sorted([*rx_ep.buffers, *tx_ep.buffers]) == all_buffers  # none in two rings


@pytest.mark.parametrize("first", ["run", "single"])
async def test_link_first_lap_writes_offsets_with_tx_headroom(
    sock_path: str, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """The client's rings start with descriptors at the buffer starts; with tx_headroom
    the very first lap (bulk runs or single packets) must write every offset."""
    cfg = InterfaceConfig(ring_size=16, buffer_size=256, tx_headroom=40)
    async with linked(sock_path, cfg) as (server, client):
        ctx, srx = client.tx_queues[0], server.rx_queues[0]
        forbid(monkeypatch, ctx._endpoint, "_write_each")
        ring = srx._endpoint.ring
        bases = list(client_tx(ctx).buffers)
        assert [d[3] for d in descriptors(ring, 0, 16)] == bases  # as the client built them
        counts = [16, 1, 5, 16] if first == "run" else [1] * 16 + [5, 16]
        await send_and_check(ctx, srx, ring, 0, counts, 30, 216)


OFFERS = {
    # case: (expected path, bad offers)
    "stale NEXT on every offer": ("bulk", 0),
    "stale NEXT on some offers": ("each", 0),
    "mixed capacities": ("bulk", 0),
    "one offer too small": ("each", 0),
    "last offer ends at the region end": ("each", 0),
    "region out of range": ("each", 1),
    "zero capacity": ("each", 1),
    "buffer past the region": ("each", 1),
}


def parse_m2s(mem: ClientMemory, count: int) -> tuple[list[bytes], int]:
    """Read the first ``count`` M2S slots as a client would: packets (NEXT chains joined)
    and the number of slots published empty."""
    ring = mem.ring(M2S)
    packets: list[bytes] = []
    parts: list[bytes] = []
    empty = 0
    for slot in range(count):
        flags, region, length, offset, _m = ring.desc(slot)
        if length == 0:
            assert not parts and not flags
            empty += 1
            continue
        assert region == 0
        parts.append(mem.map[offset : offset + length])
        if not flags & NEXT:
            packets.append(b"".join(parts))
            parts = []
    assert not parts, "a chain runs past the published tail"
    return packets, empty


@pytest.mark.parametrize("how", ["batch", "one by one"])
@pytest.mark.parametrize("case", list(OFFERS))
async def test_server_transmit_into_hostile_offers(
    sock_path: str, monkeypatch: pytest.MonkeyPatch, case: str, how: str
) -> None:
    """A hostile client offers buffers with stale NEXT flags, mixed capacities or an unusable
    descriptor. The server writes flags itself (0, or NEXT inside its own chains), never
    writes outside an offer, and publishes unusable offers empty, counted as bad."""
    path, expect_bad = OFFERS[case]
    async with fake_client_link(sock_path) as link:
        conn, mem = link.conn, link.mem
        ring = mem.ring(M2S)
        n = mem.ring_size
        txq = conn.tx_queues[0]
        fallback = spy(monkeypatch, txq._endpoint, "_write_each")
        offers = [[0, 0, 256, mem.buffer_offset(M2S, 0, s)] for s in range(n)]  # f, r, cap, off
        if case == "stale NEXT on every offer":
            for o in offers:
                o[0] = NEXT
        elif case == "stale NEXT on some offers":
            offers[3][0] = offers[9][0] = NEXT
        elif case == "mixed capacities":
            for s, o in enumerate(offers):
                o[2] = 256 - 13 * s  # 256 .. 61: every 60-byte packet still fits
        elif case == "one offer too small":
            offers[5][2] = 32  # packet 5 is chained over slots 5 and 6
        elif case == "last offer ends at the region end":
            offers[15][2:] = [100, mem.size - 100]
        elif case == "region out of range":
            offers[7][1] = 3
        elif case == "zero capacity":
            offers[7][2] = 0
        else:
            offers[7][3] = mem.size - 100  # 256 bytes from there run past the end
        for s, (f, r, cap, off) in enumerate(offers):
            ring.set_desc(s, flags=f, region=r, length=cap, offset=off)
        ring.head = n
        untouched = bytes(mem.map[mem.size - 100 :]) if expect_bad else b""
        packets = [payload(70 + j, 60) for j in range(n)]
        if how == "batch":
            sent = txq.send_batch_nowait(packets)
        else:  # the single-packet path, packet after packet
            sent = 0
            for p in packets:
                try:
                    txq.send_nowait(p)
                except WouldBlockError:
                    break
                sent += 1
        chains = 1 if case == "one offer too small" else 0
        assert sent == n - expect_bad - chains
        assert ring.tail == n
        got, empty = parse_m2s(mem, n)
        assert got == packets[:sent]
        assert empty == expect_bad
        d = conn.details().tx_queues[0]
        assert (d.packets, d.bad_descriptors, d.chained) == (sent, expect_bad, chains)
        if how == "batch":
            assert bool(fallback) == (path == "each")
        if case == "buffer past the region":
            assert bytes(mem.map[mem.size - 100 :]) == untouched


@pytest.mark.parametrize("receiver", ROLES)
async def test_interrupt_mask_set_while_busy_cleared_before_sleeping(
    sock_path: str, receiver: str
) -> None:
    """INTERRUPT mode: MASK_INT is clear while a receive sleeps and set once it is woken, so
    packets published while the application is busy cost no signal; a receive that finds
    the ring empty clears it again first, and the next packet wakes it (no lost wake-up)."""
    async with linked(sock_path, SMALL, **modes(receiver, RxMode.INTERRUPT)) as (s, c):
        tx, rx = queues(s, c, receiver)
        ring = rx._endpoint.ring
        assert not ring.flags & MASK_INT
        for k in range(4):
            waiting = asyncio.create_task(rx.receive())
            await eventually(
                lambda k=k: rx.interrupt_sleeps == k + 1 and not ring.flags & MASK_INT,
                "receive asleep with MASK_INT clear",
            )
            assert not waiting.done()
            tx.send_nowait(payload(k, 64))
            assert tx.counters.interrupts_sent == k + 1  # it asked to be signalled
            async with asyncio.timeout(TIMEOUT):
                batch = await waiting
            assert batch.keep(0) == payload(k, 64)
            assert ring.flags & MASK_INT  # woken: masked while the application is busy
            await eventually(lambda k=k: rx.counters.interrupts_received == k + 1, "drained")
            busy = [payload(100 + k, 64), payload(200 + k, 64)]
            assert tx.send_batch_nowait(busy) == 2
            assert tx.counters.interrupts_sent == k + 1  # masked: no system call
            async with asyncio.timeout(TIMEOUT):
                batch = await rx.receive()  # waiting already: found without sleeping
            assert [bytes(p) for p in batch] == busy
            assert rx.interrupt_sleeps == k + 1
            batch.release()
        assert rx.counters.interrupts_received == 4


@pytest.mark.parametrize("how", ["stale-mask", "ring-level"])
@pytest.mark.parametrize("receiver", ROLES)
async def test_safety_rescan_finds_an_unsignalled_packet(
    sock_path: str, receiver: str, how: str
) -> None:
    """A packet published without a signal (the sender read MASK_INT before the receiver
    cleared it, or a peer that never signals) still reaches a sleeping receive: it re-scans
    the ring every 10 ms. Without the re-scan this receive would sleep forever."""
    async with linked(sock_path, SMALL, **modes(receiver, RxMode.INTERRUPT)) as (s, c):
        tx, rx = queues(s, c, receiver)
        ring = rx._endpoint.ring
        waiting = asyncio.create_task(rx.receive())
        await eventually(
            lambda: rx.interrupt_sleeps == 1 and not ring.flags & MASK_INT, "receive asleep"
        )
        packet = payload(7, 100)
        if how == "stale-mask":
            ring.set_flags(ring.flags | MASK_INT)  # what a sender with a stale view saw
            tx.send_nowait(packet)
        else:
            assert tx._endpoint.write([packet]) == 1  # published, never signalled
        assert tx.counters.interrupts_sent == 0
        try:
            async with asyncio.timeout(1.0):  # the re-scan runs every 10 ms
                batch = await waiting
        finally:
            waiting.cancel()
        assert batch.keep(0) == packet
        assert rx.counters.interrupts_received == 0
        assert rx.interrupt_sleeps == 1  # one receive, one sleep: re-scans happen inside it
        assert ring.flags & MASK_INT


@pytest.mark.parametrize("receiver", ROLES)
async def test_spin_returns_after_one_slice(sock_path: str, receiver: str) -> None:
    """``_spin`` with a far deadline gives up after about one slice when nothing comes (it
    never holds the loop for the spin budget), returns True at once when something has,
    and None without spinning once the budget is spent."""
    async with linked(sock_path, SMALL, **modes(receiver, RxMode.POLLING)) as (s, c):
        tx, rx = queues(s, c, receiver)
        rx.set_mode(RxMode.POLLING, spin_budget=5.0)
        rx._last_packet = t0 = time.perf_counter()
        assert rx._spin() is False
        assert time.perf_counter() - t0 < 1.0
        tx.send_nowait(payload(1, 64))
        t0 = time.perf_counter()
        assert rx._spin() is True
        assert time.perf_counter() - t0 < 1.0
        rx._last_packet = time.perf_counter() - 6.0
        assert rx._spin() is None
        assert await receive_all(rx, 1) == [(payload(1, 64), False)]


@pytest.mark.parametrize("mode", [RxMode.POLLING, RxMode.ADAPTIVE])
@pytest.mark.parametrize("receiver", ROLES)
async def test_spinning_receive_lets_other_callbacks_run(
    sock_path: str, receiver: str, mode: RxMode
) -> None:
    """While a receive spins on a long budget, callbacks scheduled with call_soon keep
    running (200 of them, one per loop pass, before the packet is sent); the packet it then
    finds arrives without a signal or a sleep."""
    async with linked(sock_path, SMALL, **modes(receiver, mode)) as (s, c):
        tx, rx = queues(s, c, receiver)
        rx.set_mode(mode, spin_budget=10.0)
        tx.send_nowait(payload(0, 64))
        assert await receive_all(rx, 1) == [(payload(0, 64), False)]  # budget starts now
        signals, sleeps = tx.counters.interrupts_sent, rx.interrupt_sleeps
        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(rx.receive())
        ticks = 0
        done = loop.create_future()

        def tick() -> None:
            nonlocal ticks
            ticks += 1
            if ticks < 200:
                loop.call_soon(tick)
            elif not done.done():
                done.set_result(None)

        loop.call_soon(tick)
        try:
            async with asyncio.timeout(5.0):  # half the spin budget
                await done
            assert not waiting.done()  # still spinning, well within its budget
            tx.send_nowait(payload(1, 64))
            async with asyncio.timeout(TIMEOUT):
                batch = await waiting
        finally:
            waiting.cancel()
        assert batch.keep(0) == payload(1, 64)
        assert tx.counters.interrupts_sent == signals  # masked while spinning
        assert rx.interrupt_sleeps == sleeps  # found by spinning, never slept
