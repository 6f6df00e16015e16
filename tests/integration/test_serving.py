"""Handler-style serving (``serve(..., handler=...)``, ``serve_forever``) and the server's
event stream: connections made, handshakes refused (with id and reason), links closed."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

import aiomemif
from aiomemif import InterfaceConfig, ServerEvent

TIMEOUT = 5


async def reflect(conn: aiomemif.Connection) -> None:
    async for batch in conn.rx_queues[0]:
        await conn.tx_queues[0].send_batch(batch)


async def round_trip(client: aiomemif.Connection, data: bytes) -> bytes:
    await client.tx_queues[0].send(data)
    async with asyncio.timeout(TIMEOUT):
        batch = await client.rx_queues[0].receive()
    with batch:
        return bytes(batch[0])


async def test_handler_serves_every_connection(sock_path: str) -> None:
    interfaces = [InterfaceConfig(interface_id=1), InterfaceConfig(interface_id=2)]
    async with aiomemif.serve(sock_path, interfaces, handler=reflect) as srv:
        async with (
            aiomemif.connect(sock_path, interface_id=1) as one,
            aiomemif.connect(sock_path, interface_id=2) as two,
        ):
            assert await round_trip(one, b"to one") == b"to one"
            assert await round_trip(two, b"to two") == b"to two"
        # The clients left: their handlers' loops ended, and the server took a new one.
        async with aiomemif.connect(sock_path, interface_id=1) as again:
            assert await round_trip(again, b"again") == b"again"
        assert list(srv.failures) == []


async def test_connection_closes_when_the_handler_returns(sock_path: str) -> None:
    async def greet(conn: aiomemif.Connection) -> None:
        await conn.tx_queues[0].send(b"hello, and goodbye")

    async with aiomemif.serve(sock_path, handler=greet):
        async with aiomemif.connect(sock_path) as client:
            got = []
            async with asyncio.timeout(TIMEOUT):
                async for batch in client.rx_queues[0]:  # ends at the server's DISCONNECT
                    got += [bytes(p) for p in batch]
            assert got == [b"hello, and goodbye"]
            assert client.closed_by_peer
            assert client.close_reason == "closed by application 'aiomemif'"


async def test_a_failing_handler_is_logged_and_closes_only_its_link(
    sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def picky(conn: aiomemif.Connection) -> None:
        async for batch in conn.rx_queues[0]:
            if bytes(batch[0]) == b"boom":
                raise RuntimeError("cannot handle boom")
            await conn.tx_queues[0].send_batch(batch)

    interfaces = [InterfaceConfig(interface_id=1), InterfaceConfig(interface_id=2)]
    async with aiomemif.serve(sock_path, interfaces, handler=picky):
        async with (
            aiomemif.connect(sock_path, interface_id=1, app_name="victim") as bad,
            aiomemif.connect(sock_path, interface_id=2) as good,
        ):
            await bad.tx_queues[0].send(b"boom")
            async with asyncio.timeout(TIMEOUT):
                assert await bad.wait_closed()
            assert bad.close_reason == "handler failed"
            assert await round_trip(good, b"still served") == b"still served"
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    message = record.getMessage()
    assert "handler of interface 1" in message and "'victim'" in message
    assert record.exc_info is not None and "cannot handle boom" in str(record.exc_info[1])


async def test_serve_forever_ends_by_cancellation_and_closes(sock_path: str) -> None:
    srv = aiomemif.serve(sock_path, handler=reflect)
    task = asyncio.create_task(srv.serve_forever())  # starts the server itself
    async with asyncio.timeout(TIMEOUT):
        while not Path(sock_path).exists():
            await asyncio.sleep(0.005)
        client = await aiomemif.connect(sock_path)
        assert await round_trip(client, b"x") == b"x"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.wait_closed()
    assert client.close_reason == "server closed"
    assert not srv.accepting
    with pytest.raises(aiomemif.MemifOSError):
        await aiomemif.connect(sock_path)


async def test_serve_forever_returns_when_the_server_is_closed(sock_path: str) -> None:
    async with aiomemif.serve(sock_path, handler=reflect) as srv:
        task = asyncio.create_task(srv.serve_forever())
        await asyncio.sleep(0.01)
        assert not task.done()
        await srv.aclose()
        async with asyncio.timeout(TIMEOUT):
            await task


async def test_closing_cancels_handlers_that_do_not_return(sock_path: str) -> None:
    cancelled = asyncio.Event()

    async def stubborn(conn: aiomemif.Connection) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with aiomemif.serve(sock_path, handler=stubborn) as srv:
        async with aiomemif.connect(sock_path) as client:
            await asyncio.sleep(0.01)
            await srv.aclose()
            assert cancelled.is_set()
            async with asyncio.timeout(TIMEOUT):
                await client.wait_closed()


async def test_accept_refuses_when_a_handler_takes_connections(sock_path: str) -> None:
    async with aiomemif.serve(sock_path, handler=reflect) as srv:
        with pytest.raises(aiomemif.BusyResourceError):
            await srv.accept()
        with pytest.raises(aiomemif.BusyResourceError):
            async for _ in srv.connections():
                pass


async def test_events_connected_refused_closed(
    sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aiomemif")
    interfaces = [InterfaceConfig(interface_id=1, secret="right")]
    seen: list[ServerEvent] = []
    async with aiomemif.serve(sock_path, interfaces) as srv:

        async def watch() -> None:
            async for ev in srv.events():
                seen.append(ev)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        with pytest.raises(aiomemif.HandshakeRefusedError):
            await aiomemif.connect(sock_path, interface_id=1, secret="wrong")
        with pytest.raises(aiomemif.HandshakeRefusedError):
            await aiomemif.connect(sock_path, interface_id=1)
        with pytest.raises(aiomemif.HandshakeRefusedError):
            await aiomemif.connect(sock_path, interface_id=9)
        async with aiomemif.connect(sock_path, interface_id=1, secret="right"):
            conn = await srv.accept()
        async with asyncio.timeout(TIMEOUT):
            await conn.wait_closed()
    async with asyncio.timeout(TIMEOUT):
        await watcher  # ends when the server closes
    assert [(e.kind, e.interface_id, e.reason) for e in seen] == [
        ("refused", 1, "Incorrect secret"),
        ("refused", 1, "Secret required"),
        ("refused", 9, "ID not found"),
        ("connected", 1, None),
        ("closed", 1, "closed by application 'aiomemif'"),
    ]
    assert seen[3].connection is conn and seen[4].connection is conn
    assert [(f.interface_id, f.reason) for f in srv.failures] == [
        (1, "Incorrect secret"),
        (1, "Secret required"),
        (9, "ID not found"),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"memif server {sock_path}: refused interface 1: Incorrect secret" in warnings
    assert f"memif server {sock_path}: refused interface 9: ID not found" in warnings


async def test_events_end_for_late_subscribers(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv:
        pass
    assert [e async for e in srv.events()] == []


async def test_events_are_subscribed_when_asked_for(sock_path: str) -> None:
    """``server.events()`` counts from the call, not from the first ``__anext__``."""
    async with aiomemif.serve(sock_path) as srv:
        events = srv.events()
        async with aiomemif.connect(sock_path):
            await srv.accept()
    assert [e.kind async for e in events] == ["connected", "closed"]


async def test_a_lagging_subscriber_keeps_a_bounded_backlog(sock_path: str) -> None:
    from aiomemif._aio import events as events_module

    async with aiomemif.serve(sock_path, [InterfaceConfig(secret="s")]) as srv:
        lagging = srv.events()
        for _ in range(5):
            with pytest.raises(aiomemif.HandshakeRefusedError):
                await aiomemif.connect(sock_path)
        assert len(lagging._items) == 5 <= events_module.MAX_BACKLOG
        await lagging.aclose()
        assert [e async for e in lagging] == []


async def test_a_client_leaving_before_init_is_abandoned_not_refused(
    sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiomemif")
    async with aiomemif.serve(sock_path) as srv:
        events = srv.events()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
            probe.connect(sock_path)
            probe.setblocking(False)
            async with asyncio.timeout(TIMEOUT):
                await asyncio.get_running_loop().sock_recv(probe, 128)  # HELLO
        # ... and away, without INIT
        async with asyncio.timeout(TIMEOUT):
            event = await anext(events)
        await events.aclose()
    assert (event.kind, event.interface_id) == ("abandoned", None)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_details_name_the_app_names_each_side_announced(sock_path: str) -> None:
    """A server's HELLO carries the Server's app_name for all its interfaces (an
    interface's own ``app_name`` is not sent), so that is what its details report; the
    client reports the name its INIT carried. Each side sees the other's."""
    cfg = InterfaceConfig(interface_id=3, app_name="not-sent")
    async with aiomemif.serve(sock_path, [cfg], app_name="the-server") as srv:
        async with aiomemif.connect(sock_path, interface_id=3, app_name="the-client") as cli:
            async with asyncio.timeout(TIMEOUT):
                conn = await srv.accept()
            mine, theirs = conn.details(), cli.details()
            assert (mine.app_name, mine.peer_app_name) == ("the-server", "the-client")
            assert (theirs.app_name, theirs.peer_app_name) == ("the-client", "the-server")
