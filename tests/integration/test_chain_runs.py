"""Bulk paths for runs of equally long chains (jumbo frames of one size), both directions.

A run of equal chains is received in bulk (``_collect_chains``) and transmitted in bulk
(``ClientTx._write_chains`` / ``ServerTx._write_chains``); anything else in or after the
run (another size, a bad segment, an unfinished chain, uneven offers) must go through the
per-descriptor paths with the same result as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.links import ROLES, TIMEOUT, linked, payload, server_tx, tx_cursor

from aiomemif import ChainedPacket, Connection, InterfaceConfig, RxQueue, TxQueue
from aiomemif._core import wire as w
from aiomemif._core.client_tx import ClientTx
from aiomemif._core.rx import ClientRx, ServerRx
from aiomemif._core.server_tx import ServerTx

BSIZE = 256
RING = 32
NEXT = w.DESC_FLAG_NEXT


def config(**extra: Any) -> InterfaceConfig:
    return InterfaceConfig(buffer_size=BSIZE, ring_size=RING, **extra)


def ends(server: Connection, client: Connection, sender: str) -> tuple[TxQueue, RxQueue]:
    if sender == "client":
        return client.tx_queues[0], server.rx_queues[0]
    return server.tx_queues[0], client.rx_queues[0]


def calls(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[object]:
    seen: list[object] = []
    real = getattr(cls, name)

    def wrapper(self: object, *args: Any) -> Any:
        seen.append(args)
        return real(self, *args)

    monkeypatch.setattr(cls, name, wrapper)
    return seen


def flags_of(tx: TxQueue, first: int, count: int) -> list[int]:
    ring = tx._endpoint.ring
    return [ring.halves[8 * ((first + k) & ring.mask)] for k in range(count)]


@pytest.mark.parametrize("sender", ROLES)
async def test_equal_chains_go_in_bulk_both_ways(
    sock_path: str, sender: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tx_class = ClientTx if sender == "client" else ServerTx
    rx_class = ServerRx if sender == "client" else ClientRx
    tx_each = calls(monkeypatch, tx_class, "_write_each")
    rx_each = calls(monkeypatch, rx_class, "_collect_each")
    async with linked(sock_path, config(), config()) as (server, client):
        tx, rx = ends(server, client, sender)
        size = 3 * BSIZE - 40  # 3 buffers each
        for lap in range(5):  # 5 laps of 3 x 3 slots wrap the 32-slot ring
            packets = [payload(lap * 10 + i, size) for i in range(3)]
            start = tx_cursor(tx)
            assert tx.send_batch_nowait(packets) == 3
            assert flags_of(tx, start, 9) == [NEXT, NEXT, 0] * 3
            async with asyncio.timeout(TIMEOUT):
                batch = await rx.receive()
            assert [type(p) for p in batch] == [ChainedPacket] * 3
            assert [len(p.segments) for p in batch] == [3, 3, 3]  # type: ignore[union-attr]
            assert [bytes(p) for p in batch] == packets
            assert [batch.slot_of(i) for i in range(3)] == [
                batch.slot_of(0) + 3 * i for i in range(3)
            ]
            batch.release()
        assert tx_each == [] and rx_each == []
        assert tx.counters.chained == rx.counters.chained == 15
        assert rx.counters.bytes == 15 * size and rx.counters.bad_descriptors == 0


@pytest.mark.parametrize("sender", ROLES)
async def test_receive_limit_and_what_follows_a_run(sock_path: str, sender: str) -> None:
    async with linked(sock_path, config(), config()) as (server, client):
        tx, rx = ends(server, client, sender)
        big = [payload(i, 2 * BSIZE) for i in range(4)]
        assert tx.send_batch_nowait(big) == 4
        small = payload(99, 10)
        tx.send_nowait(small)
        async with asyncio.timeout(TIMEOUT):
            first = await rx.receive(max_packets=2)
            assert [bytes(p) for p in first] == big[:2]
            rest = await rx.receive()  # two chains and a plain packet: taken together
        assert [bytes(p) for p in rest] == [*big[2:], small]
        rest.release()


async def test_received_chain_run_can_be_forwarded(sock_path: str) -> None:
    """Chains taken in bulk carry the slots forward() needs (client receives, forwards)."""
    async with linked(sock_path, config(), config()) as (server, client):
        packets = [payload(i, 2 * BSIZE + 7) for i in range(3)]
        assert server.tx_queues[0].send_batch_nowait(packets) == 3
        async with asyncio.timeout(TIMEOUT):
            batch = await client.rx_queues[0].receive()
            assert client.tx_queues[0].forward(batch) == 3
            back = await server.rx_queues[0].receive()
        assert [bytes(p) for p in back] == packets


@pytest.mark.parametrize("sender", ROLES)
async def test_chain_run_with_a_bad_segment_takes_the_general_path(
    sock_path: str, sender: str
) -> None:
    async with linked(sock_path, config(), config()) as (server, client):
        tx, rx = ends(server, client, sender)
        packets = [payload(i, 2 * BSIZE) for i in range(3)]
        start = tx_cursor(tx)
        assert tx.send_batch_nowait(packets) == 3
        # Corrupt the second chain's last segment (slot start + 3) behind the receiver.
        ring = rx._endpoint.ring
        slot = (start + 3) & ring.mask
        ring.words[4 * slot + 1] = 1 << 30  # a length past the region
        async with asyncio.timeout(TIMEOUT):
            batch = await rx.receive()
        assert [bytes(p) for p in batch] == [packets[0], packets[2]]
        assert rx.counters.bad_descriptors == 1
        batch.release()


async def test_uneven_offers_are_filled_one_packet_at_a_time(
    sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server transmit: equal packets larger than one small offer are not all chained;
    each goes into the buffer offered for it (a chain only where it must)."""
    async with linked(sock_path, config(), config()) as (server, client):
        tx, rx = server.tx_queues[0], client.rx_queues[0]
        ring = rx._endpoint.ring
        first = server_tx(tx).tail & ring.mask
        ring.words[4 * ((first + 1) & ring.mask) + 1] = 32  # the client offers 32 bytes there
        each = calls(monkeypatch, ServerTx, "_write_each")
        packets = [payload(i, 100) for i in range(4)]
        assert tx.send_batch_nowait(packets) == 4
        assert each  # the per-packet path decided
        assert flags_of(tx, first, 5) == [0, NEXT, 0, 0, 0]
        async with asyncio.timeout(TIMEOUT):
            batch = await rx.receive()
        assert [bytes(p) for p in batch] == packets


@pytest.mark.parametrize("sender", ROLES)
async def test_non_byte_buffers_in_a_chain_run(sock_path: str, sender: str) -> None:
    """Equal-size packets that are not plain byte buffers still go out as their bytes."""
    async with linked(sock_path, config(), config()) as (server, client):
        tx, rx = ends(server, client, sender)
        raw = [payload(i, 2 * BSIZE) for i in range(3)]
        words = memoryview(raw[1]).cast("I")  # len() counts 4-byte items: not equal sizes
        strided = memoryview(raw[2] * 2)[::2]  # same length, but not contiguous
        assert tx.send_batch_nowait([raw[0], words, bytearray(raw[0])]) == 3
        assert tx.send_batch_nowait([raw[2], strided]) == 2
        async with asyncio.timeout(TIMEOUT):
            got: list[bytes] = []
            while len(got) < 5:
                batch = await rx.receive()
                got += [bytes(p) for p in batch]
        assert got == [raw[0], raw[1], raw[0], raw[2], bytes(strided)]
