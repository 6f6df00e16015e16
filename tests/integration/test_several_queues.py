"""Every queue of a connection at once: ``conn.receive_all()`` and ``conn.tx_queue_for``."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

import aiomemif
from aiomemif.testing import memif_pair

QUEUES = 3


async def test_receive_all_takes_every_queue_and_ends_quietly() -> None:
    async with memif_pair(rx_queue_count=QUEUES, tx_queue_count=QUEUES) as pair:
        got: dict[int, list[bytes]] = defaultdict(list)

        async def serve() -> None:
            async for qid, batch in pair.server.receive_all():
                got[qid] += [bytes(p) for p in batch]
                await pair.server.tx_queue_for(qid).send_batch(batch)  # answer on qid

        server = asyncio.create_task(serve())
        for q in range(QUEUES):
            await pair.client.tx_queues[q].send_batch([b"q%d-%d" % (q, i) for i in range(50)])
        echoed: dict[int, int] = defaultdict(int)
        async with asyncio.timeout(5):
            async for qid, batch in pair.client.receive_all():
                assert all(bytes(p).startswith(b"q%d-" % qid) for p in batch)
                echoed[qid] += len(batch)
                if sum(echoed.values()) == 50 * QUEUES:
                    break
        await pair.client.aclose()
        async with asyncio.timeout(5):
            await server  # the server's receive_all ended at the client's DISCONNECT
        assert {q: got[q] for q in range(QUEUES)} == {
            q: [b"q%d-%d" % (q, i) for i in range(50)] for q in range(QUEUES)
        }
        assert dict(echoed) == dict.fromkeys(range(QUEUES), 50)


async def test_receive_all_raises_an_abnormal_end() -> None:
    async with memif_pair(rx_queue_count=2, tx_queue_count=2) as pair:

        async def serve() -> None:
            async for _qid, _batch in pair.server.receive_all():
                pass

        server = asyncio.create_task(serve())
        await asyncio.sleep(0.01)
        pair.client.abort()
        with pytest.raises(aiomemif.ConnectionLostError):
            async with asyncio.timeout(5):
                await server


async def test_each_batch_is_valid_until_the_next_is_asked_for() -> None:
    async with memif_pair(rx_queue_count=2, tx_queue_count=2, ring_size=8) as pair:
        await pair.client.tx_queues[0].send_batch([b"zero"] * 8)  # the whole ring
        await pair.client.tx_queues[1].send(b"one")
        async with pair.server.receive_all() as batches:
            async with asyncio.timeout(5):
                qid, first = await anext(batches)
                assert bytes(first[0]) in (b"zero", b"one")
                second_qid, second = await anext(batches)
                assert {qid, second_qid} == {0, 1}
                with pytest.raises(aiomemif.StaleBatchError):
                    first.keep(0)  # released when the next was asked for
                assert bytes(second[0]) in (b"zero", b"one")
                # The released batch's buffers went back to its ring; the held one's not.
                free = pair.client.tx_queues[0].free_slots()
                assert free == (8 if qid == 0 else 0)
        # Leaving the block cancelled the waits in flight: the queues are free again.
        await pair.client.tx_queues[1].send(b"after")
        async with asyncio.timeout(5):
            batch = await pair.server.rx_queues[1].receive()
        assert [bytes(p) for p in batch] == [b"after"]


async def test_dropping_the_iterator_frees_the_queues() -> None:
    async with memif_pair() as pair:
        batches = pair.server.receive_all()
        await pair.client.tx_queues[0].send(b"x")
        async with asyncio.timeout(5):
            await anext(batches)
        await anext_soon(batches)  # a receive is in flight now
        del batches
        await asyncio.sleep(0.01)
        await pair.client.tx_queues[0].send(b"y")
        async with asyncio.timeout(5):
            batch = await pair.server.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == [b"y"]


async def anext_soon(batches: aiomemif.ReceiveAll) -> None:
    """Start the next receive and give up on it at once (it keeps running)."""
    waiter = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


async def test_tx_queue_for_spreads_keys_over_the_queues() -> None:
    async with memif_pair(rx_queue_count=QUEUES, tx_queue_count=QUEUES) as pair:
        conn = pair.client
        assert [conn.tx_queue_for(k).qid for k in range(7)] == [0, 1, 2, 0, 1, 2, 0]
        assert conn.tx_queue_for(2**40 + 1) is conn.tx_queues[(2**40 + 1) % QUEUES]


async def test_receive_all_checks_its_argument() -> None:
    async with memif_pair() as pair:
        with pytest.raises(aiomemif.ConfigurationError):
            pair.server.receive_all(0)


async def test_receive_all_hands_out_what_is_left_before_an_abnormal_end() -> None:
    async with memif_pair(rx_queue_count=2, tx_queue_count=2) as pair:
        for q in range(2):
            await pair.client.tx_queues[q].send_batch([b"q%d" % q] * 10)
        pair.client.abort()  # lost without DISCONNECT
        async with asyncio.timeout(5):
            await pair.server.wait_closed()
        got: list[bytes] = []

        async def collect() -> None:
            async for _qid, batch in pair.server.receive_all():
                got.extend(bytes(p) for p in batch)

        with pytest.raises(aiomemif.ConnectionLostError):
            await collect()
        assert sorted(got) == [b"q0"] * 10 + [b"q1"] * 10


async def test_leaving_receive_all_early_loses_nothing() -> None:
    async with memif_pair(rx_queue_count=2, tx_queue_count=2) as pair:
        await pair.client.tx_queues[0].send(b"zero")
        await pair.client.tx_queues[1].send_batch([b"one"] * 4)
        await asyncio.sleep(0.01)
        async with pair.server.receive_all() as batches:
            qid, _first = await anext(batches)
        rest = 1 - qid
        async with asyncio.timeout(5):
            batch = await pair.server.rx_queues[rest].receive()
        assert len(batch) == (4 if rest == 1 else 1)
