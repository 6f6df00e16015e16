"""Review of the hot-path fast paths (985bf67..c0b60b7): the bugs it found, now fixed, and
one behaviour pinned.

Each test shows a difference a bulk path had from the per-packet path it replaces (or, for
the polling sleep, a pre-existing stuck receive). Ring-level tests use
:class:`test_fastpath.MmapRig` (the client layout in anonymous mmaps, every endpoint copying
through the mmap as on a real connection); the others run over real links
(``test_datapath.linked``).
"""

from __future__ import annotations

import asyncio
from array import array

import pytest
from test_datapath import ROLES, TIMEOUT, eventually, linked, payload
from test_fastpath import SMALL, MmapRig, modes, queues, receive_all, snapshot, take

from aiomemif import (
    ChainedPacket,
    ClosedResourceError,
    InterfaceConfig,
    PacketTooLargeError,
    RxMode,
)
from aiomemif._core import wire as w

MASK_INT = w.RING_FLAG_MASK_INT


# ============================================ server transmit: the offer cache's capacity


def _lap(r: MmapRig, packets: list[bytes]) -> tuple[int, list[bool], list[bytes]]:
    """The server writes ``packets``; the client receives and releases them (refill).
    Returns (packets sent, arrived as a chain each, bytes received)."""
    sent = r.master_tx.write(packets)
    views = r.slave_rx.poll(64).packets
    chained = [isinstance(v, ChainedPacket) for v in views]
    got = take(views)
    r.slave_rx.release()
    return sent, chained, got


def test_server_chains_packets_that_fit_after_offers_grow() -> None:
    """The client offers 16-byte buffers for one lap (headroom 48 of 64), then 64-byte
    buffers again. Four 40-byte packets fit one offered buffer each, as the per-packet
    path sends them; the bulk path instead sends two 3-buffer chains (16+16+8) and leaves
    the other two for later."""
    r = MmapRig(log2=3, bsize=64, start=0)
    try:
        tx = r.master_tx
        r.slave_rx.set_headroom(48)
        assert _lap(r, [b"a" * 10] * 8)[0] == 8  # into 64-byte offers; refilled with 16
        assert _lap(r, [b"b" * 10] * 8)[0] == 8  # into 16-byte offers (checked, cached)
        r.slave_rx.set_headroom(0)
        assert _lap(r, [b"c" * 10] * 8)[0] == 8  # refilled with 64-byte offers
        assert _lap(r, [b"d" * 10] * 8)[0] == 8  # the same 64-byte offers: cache hits
        assert tx.free() == 8
        assert {r.get(r.m2s_slave, s)[2] for s in range(8)} == {64}  # every offer: 64 bytes
        packets = [payload(j, 40) for j in range(4)]
        sent, chained, got = _lap(r, packets)
        assert (sent, chained, got) == (4, [False] * 4, packets)
        assert tx.counters.chained == 0
    finally:
        r.close()


async def test_link_server_chains_after_client_lowers_rx_headroom(sock_path: str) -> None:
    """A real pair: the client receives with 192 bytes of headroom in 256-byte buffers (64
    usable), then ``set_headroom(0)``. 200-byte frames from the server must still arrive
    as plain one-buffer packets, as they do on a server that never saw the small offers."""
    cfg = InterfaceConfig(ring_size=16, buffer_size=256, rx_headroom=192)
    async with linked(sock_path, cfg) as (server, client):
        tx, rx = server.tx_queues[0], client.rx_queues[0]
        small = [payload(j, 32) for j in range(16)]
        assert tx.send_batch_nowait(small) == 16  # 64-byte offers, checked and cached
        rx.set_headroom(0)
        assert [d for d, _ in await receive_all(rx, 16)] == small  # refilled: 256 bytes
        assert tx.send_batch_nowait(small) == 16  # 256-byte offers, checked and cached
        assert [d for d, _ in await receive_all(rx, 16)] == small  # the same offers again
        frames = [payload(100 + j, 200) for j in range(4)]
        assert tx.send_batch_nowait(frames) == 4
        assert await receive_all(rx, 4) == [(f, False) for f in frames]
        assert tx.counters.chained == rx.counters.chained == 0


# ======================================== transmit: the packet left behind a full ring


def _wide_view() -> memoryview:
    """70000 bytes as a 2-D byte view: len() is 10 (rows), the packet is 70000 bytes."""
    return memoryview(bytearray(70_000)).cast("B", (10, 7_000))


def _short_array() -> array[int]:
    """70000 bytes as 35000 u16 items: len() is 35000, within 65535."""
    return array("H", bytes(70_000))


@pytest.mark.parametrize(
    ("side", "make"),
    [("client", _wide_view), ("server", _wide_view), ("server", _short_array)],
    ids=["client-2d-view", "server-2d-view", "server-array-H"],
)
def test_transmit_reports_an_oversized_buffer_left_for_later(side: str, make: object) -> None:
    """As test_ring.test_transmit_checks_the_first_packet_left_for_later, for buffers whose
    len() is not their size in bytes (the per-packet path measures the bytes)."""
    assert callable(make)
    r = MmapRig(log2=3, bsize=64, start=0)
    try:
        tx, ring = (r.slave_tx, r.s2m_slave) if side == "client" else (r.master_tx, r.m2s_master)
        before = snapshot(ring)
        room = tx.free()
        with pytest.raises(PacketTooLargeError):
            tx.write([b"x" * 10] * room + [make()])
        assert snapshot(ring) == before  # nothing of the call published
        assert tx.counters.packets == 0
    finally:
        r.close()


# ================================== server transmit: a chain run and the offers after it


def test_server_chain_run_leaves_a_larger_offer_unused() -> None:
    """Offers of 64 bytes except slot 6 (256 bytes, still inside the client's region).
    Three 150-byte packets: the per-packet path sends two 3-buffer chains (slots 0..5) and
    the third packet unchained in slot 6 -- all three fit now."""
    r = MmapRig(log2=3, bsize=64, start=0)
    try:
        r.put(r.m2s_slave, 6, 0, r.breg, 256, r.tx_table[0])  # a client's larger buffer
        packets = [payload(j, 150) for j in range(3)]
        sent, chained, got = _lap(r, packets)
        assert (sent, chained, got) == (3, [True, True, False], packets)
    finally:
        r.close()


# ============================================================ receive: modes and waits


@pytest.mark.parametrize("event", ["set_mode", "close"])
@pytest.mark.parametrize("receiver", ROLES)
async def test_polling_receive_reacts_to_set_mode_and_close(
    sock_path: str, receiver: str, event: str
) -> None:
    async with linked(sock_path, SMALL, **modes(receiver, RxMode.POLLING)) as (s, c):
        tx, rx = queues(s, c, receiver)
        rx.set_mode(RxMode.POLLING, spin_budget=0, poll_interval=30.0)
        waiting = asyncio.create_task(rx.receive())
        await asyncio.sleep(0.05)  # the receive is asleep for its poll interval
        try:
            async with asyncio.timeout(1.0):
                if event == "set_mode":
                    rx.set_mode(RxMode.INTERRUPT)
                    tx.send_nowait(payload(1, 64))
                    assert (await waiting).keep(0) == payload(1, 64)
                else:
                    await (s if receiver == "server" else c).aclose()
                    with pytest.raises(ClosedResourceError):
                        await waiting
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)


@pytest.mark.parametrize("receiver", ROLES)
async def test_cancelled_interrupt_receive_then_receive_is_signalled(
    sock_path: str, receiver: str
) -> None:
    """INTERRUPT mode: a receive cancelled while asleep (``wait_for`` timing out) may leave
    MASK_INT set (its sleep masks on the way out). The next receive must clear it before it
    sleeps, so the next packet is signalled and wakes it; closing the connection then
    leaves no safety re-scan timer behind."""
    async with linked(sock_path, SMALL, **modes(receiver, RxMode.INTERRUPT)) as (s, c):
        tx, rx = queues(s, c, receiver)
        ring = rx._endpoint.ring
        for k in range(3):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(rx.receive(), 0.02)
            waiting = asyncio.create_task(rx.receive())
            await eventually(
                lambda k=k: rx.interrupt_sleeps == 2 * k + 2 and not ring.flags & MASK_INT,
                "the next receive asleep with MASK_INT clear",
            )
            tx.send_nowait(payload(k, 64))
            assert tx.counters.interrupts_sent == k + 1
            async with asyncio.timeout(TIMEOUT):
                batch = await waiting
            assert batch.keep(0) == payload(k, 64)
            batch.release()
        interrupt = rx._interrupt
        await (s if receiver == "server" else c).aclose()
        assert interrupt._safety is None
