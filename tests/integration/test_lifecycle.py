"""How links end, as users see it: ``async for`` ends quietly on a normal close (either
side), raises on an abnormal one, and the connection says why."""

from __future__ import annotations

import asyncio

import pytest
from support.leaks import memfd_mappings

import aiomemif
from aiomemif._aio import connection as connection_module
from aiomemif.testing import memif_pair


async def drain(rx: aiomemif.RxQueue) -> list[bytes]:
    """Everything ``async for`` yields until it ends."""
    got: list[bytes] = []
    async with asyncio.timeout(5):
        async for batch in rx:
            got += [bytes(p) for p in batch]
    return got


@pytest.mark.parametrize("closer", ["client", "server"])
async def test_iteration_ends_quietly_when_the_peer_disconnects(closer: str) -> None:
    async with memif_pair() as pair:
        ends = {"client": pair.client, "server": pair.server}
        leaving = ends[closer]
        staying = ends["server" if closer == "client" else "client"]
        reader = asyncio.create_task(drain(staying.rx_queues[0]))
        await leaving.tx_queues[0].send_batch([b"one", b"two"])
        await asyncio.sleep(0.05)  # the reader takes them before the link goes
        await leaving.aclose("test done")
        assert await reader == [b"one", b"two"]
        assert staying.close_reason == "test done"
        assert staying.closed_by_peer and staying.closed_normally
        assert isinstance(staying.close_error, aiomemif.PeerDisconnectedError)
        # Calls that are not iteration still raise, with the peer's reason.
        with pytest.raises(aiomemif.PeerDisconnectedError, match="test done"):
            await staying.tx_queues[0].send(b"late")
        with pytest.raises(aiomemif.PeerDisconnectedError):
            await staying.rx_queues[0].receive()
        # The side that closed knows it did, and why.
        assert leaving.close_reason == "test done"
        assert not leaving.closed_by_peer and leaving.closed_normally
        assert isinstance(leaving.close_error, aiomemif.ClosedResourceError)


async def test_iteration_ends_quietly_when_this_side_closes() -> None:
    async with memif_pair() as pair:
        reader = asyncio.create_task(drain(pair.server.rx_queues[0]))
        await asyncio.sleep(0.01)
        await pair.server.aclose()
        assert await reader == []
        assert pair.server.close_reason == "closed by application 'aiomemif'"
        assert not pair.server.closed_by_peer


async def test_iteration_raises_when_the_connection_is_lost() -> None:
    async with memif_pair() as pair:
        reader = asyncio.create_task(drain(pair.server.rx_queues[0]))
        await asyncio.sleep(0.01)
        pair.client.abort()  # the socket closes without DISCONNECT
        with pytest.raises(aiomemif.ConnectionLostError):
            await reader
        assert pair.server.closed_by_peer and not pair.server.closed_normally
        assert isinstance(pair.server.close_error, aiomemif.ConnectionLostError)
        assert pair.server.close_reason == pair.server.close_error.reason


async def test_while_up_there_is_no_reason() -> None:
    async with memif_pair() as pair:
        for conn in (pair.client, pair.server):
            assert conn.close_reason is None and conn.close_error is None
            assert not conn.closed_by_peer and not conn.closed_normally


async def test_protocol_violation_after_link_up_raises_remote_protocol_error() -> None:
    """The same type as during the handshake, whatever call meets it."""
    async with memif_pair(ring_size=16) as pair:
        reader = asyncio.create_task(drain(pair.server.rx_queues[0]))
        await asyncio.sleep(0.01)
        ring = pair.client.tx_queues[0]._endpoint.ring
        ring.set_head(ring.head + 17)  # more slots published than the ring has
        pair.client.tx_queues[0]._efd.signal()  # wake the server's receive
        with pytest.raises(aiomemif.RemoteProtocolError, match="Ring head out of range"):
            await reader
        err = pair.server.close_error
        assert isinstance(err, aiomemif.RemoteProtocolError)
        assert pair.server.close_reason == err.reason == "Ring head out of range"
        assert not pair.server.closed_by_peer and not pair.server.closed_normally
        with pytest.raises(aiomemif.RemoteProtocolError):
            await pair.server.tx_queues[0].send(b"x")
        # The client heard why (our DISCONNECT carries the reason).
        async with asyncio.timeout(2):
            await pair.client.wait_closed()
        assert pair.client.close_reason == "Ring head out of range"


async def test_empty_packet_has_its_own_error() -> None:
    async with memif_pair() as pair:
        for tx in (pair.client.tx_queues[0], pair.server.tx_queues[0]):
            with pytest.raises(aiomemif.EmptyPacketError):
                await tx.send(b"")
            with pytest.raises(aiomemif.EmptyPacketError):
                tx.alloc_nowait(1, 0)
        assert not issubclass(aiomemif.EmptyPacketError, aiomemif.PacketTooLargeError)


@pytest.mark.parametrize("sender", ["client", "server"])
async def test_packets_sent_before_disconnect_are_still_received(sender: str) -> None:
    """The peer publishes and closes at once: what it published is handed out before
    ``async for`` ends (the memory stays mapped until then)."""
    async with memif_pair(ring_size=64) as pair:
        src, dst = (pair.client, pair.server) if sender == "client" else (pair.server, pair.client)
        frames = [b"frame %d" % i for i in range(40)]
        await src.tx_queues[0].send_batch(frames)
        await src.aclose("sent everything")
        async with asyncio.timeout(5):
            await dst.wait_closed()
        assert not dst.is_up
        assert await drain(dst.rx_queues[0]) == frames
        assert dst.close_reason == "sent everything"
        with pytest.raises(aiomemif.PeerDisconnectedError):
            dst.rx_queues[0].receive_nowait()


async def test_closing_a_draining_link_drops_the_rest_and_frees_memory() -> None:
    async with memif_pair(ring_size=16) as pair:
        await pair.client.tx_queues[0].send_batch([b"a", b"b", b"c"])
        await pair.client.aclose()
        async with asyncio.timeout(5):
            await pair.server.wait_closed()
        batch = await pair.server.rx_queues[0].receive(max_packets=1)
        assert [bytes(p) for p in batch] == [b"a"]
        await pair.server.aclose()  # the rest is dropped; the test's leak check sees no map
        with pytest.raises(aiomemif.PeerDisconnectedError):
            await pair.server.rx_queues[0].receive()


async def test_a_lost_connection_drains_then_raises() -> None:
    async with memif_pair() as pair:
        await pair.client.tx_queues[0].send(b"last words")
        pair.client.abort()  # no DISCONNECT
        async with asyncio.timeout(5):
            await pair.server.wait_closed()
        got: list[bytes] = []

        async def collect() -> None:
            async for batch in pair.server.rx_queues[0]:
                got.extend(bytes(p) for p in batch)

        with pytest.raises(aiomemif.ConnectionLostError):
            await collect()
        assert got == [b"last words"]


async def test_the_batch_in_hand_stays_valid_when_the_peer_leaves() -> None:
    async with memif_pair() as pair:
        await pair.client.tx_queues[0].send_batch([b"last", b"burst"])
        got: list[bytes] = []
        async with asyncio.timeout(5):
            async for batch in pair.server.rx_queues[0]:
                if not got:
                    await pair.client.aclose("bye")  # while the batch is in hand
                    await pair.server.wait_closed()
                got += [bytes(p) for p in batch]  # still valid: no StaleBatchError
        assert got == [b"last", b"burst"]


async def test_a_link_nobody_reads_frees_its_memory_after_the_drain_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connection_module, "DRAIN_LIMIT", 0.05)
    async with memif_pair() as pair:
        await pair.client.tx_queues[0].send(b"never read")
        await pair.client.aclose()  # (frees the client's own mapping at once)
        async with asyncio.timeout(5):
            await pair.server.wait_closed()
            assert memfd_mappings(), "the server keeps the memory for a receiver"
            while memfd_mappings():  # ... until the drain limit passes
                await asyncio.sleep(0.01)
        with pytest.raises(aiomemif.PeerDisconnectedError):
            pair.server.rx_queues[0].receive_nowait()


async def test_wait_connected_users_get_the_drained_packets(sock_path: str) -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.5, maximum=0.5)
    async with aiomemif.serve(sock_path) as srv:
        async with aiomemif.Client(sock_path, reconnect=policy) as client:
            async with asyncio.timeout(5):
                conn = await client.wait_connected()  # not taken from connections()
                server = await srv.accept()
                await server.tx_queues[0].send_batch([b"p%d" % i for i in range(10)])
                await server.aclose("done")
                await conn.wait_closed()
                await asyncio.sleep(0.01)  # the client's loop has seen the link go down
                assert await drain(conn.rx_queues[0]) == [b"p%d" % i for i in range(10)]


async def test_server_close_frees_a_draining_link_of_a_cancelled_handler(sock_path: str) -> None:
    started = asyncio.Event()

    async def slow(conn: aiomemif.Connection) -> None:
        started.set()
        await asyncio.sleep(3600)  # never reads

    async with aiomemif.serve(sock_path, handler=slow) as srv:
        async with aiomemif.connect(sock_path) as client:
            await started.wait()
            await client.tx_queues[0].send_batch([b"x"] * 4)
        await asyncio.sleep(0.01)  # the server saw the DISCONNECT; its queue drains
        await srv.aclose()  # cancels the handler: the leak check sees nothing left


async def test_a_client_that_left_before_accept_still_delivers(sock_path: str) -> None:
    """A short-lived client (connect, send, close) can be gone before the server's accept()
    runs: accept() still hands its link out, down, with its packets, then iteration ends."""
    async with aiomemif.serve(sock_path) as srv:
        events = srv.events()
        async with aiomemif.connect(sock_path) as client:
            await client.tx_queues[0].send_batch([b"c%d" % i for i in range(64)])
        async with asyncio.timeout(5):
            async for event in events:
                if event.kind == "closed":
                    break
            conn = await srv.accept()
        assert not conn.is_up and conn.has_undelivered and conn.closed_by_peer
        async with conn:
            assert await drain(conn.rx_queues[0]) == [b"c%d" % i for i in range(64)]
        assert not conn.has_undelivered


async def test_a_link_left_unread_past_the_drain_limit_is_skipped(
    sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_module, "DRAIN_LIMIT", 0.05)
    async with aiomemif.serve(sock_path) as srv:
        async with aiomemif.connect(sock_path) as client:
            await client.tx_queues[0].send(b"too late")
        async with asyncio.timeout(5):
            while memfd_mappings():  # the unaccepted link drains nowhere, then is freed
                await asyncio.sleep(0.01)
        async with aiomemif.connect(sock_path) as client:
            await client.tx_queues[0].send(b"in time")
            async with asyncio.timeout(5):
                conn = await srv.accept()  # the first link is not handed out
            async with conn:
                assert conn.is_up
                batch = await conn.rx_queues[0].receive()
                assert [bytes(p) for p in batch] == [b"in time"]
                batch.release()


async def test_a_server_that_left_before_the_client_took_it_still_delivers(
    sock_path: str,
) -> None:
    slow = aiomemif.ReconnectPolicy(initial=5, maximum=5)
    async with aiomemif.serve(sock_path) as srv:
        async with aiomemif.Client(sock_path, reconnect=slow) as c:
            async with asyncio.timeout(5):
                server = await srv.accept()
                await server.tx_queues[0].send_batch([b"s%d" % i for i in range(8)])
                await server.aclose("done")
                while c.connection is not None:  # the client saw the link go down
                    await asyncio.sleep(0.01)
                conns = c.connections()
                conn = await anext(conns)
            assert not conn.is_up and conn.has_undelivered
            assert await drain(conn.rx_queues[0]) == [b"s%d" % i for i in range(8)]
