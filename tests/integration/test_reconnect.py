"""A reconnecting client you can see: failed attempts are events and WARNING log lines,
``link_events()`` ends when attempts run out, and the README's reconnect loop survives
normal disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncIterator

import pytest

import aiomemif

FAST = aiomemif.ReconnectPolicy(initial=0.01, maximum=0.02, jitter=0.0)


async def test_attempts_running_out_end_link_events_with_the_error(
    sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aiomemif")
    policy = aiomemif.ReconnectPolicy(initial=0.01, maximum=0.02, jitter=0.0, attempts=3)
    async with aiomemif.Client(sock_path, reconnect=policy) as client:  # nobody listens
        seen: list[aiomemif.LinkEvent] = []

        async def collect() -> None:
            async with asyncio.timeout(5):
                async for ev in client.link_events():
                    seen.append(ev)

        with pytest.raises(aiomemif.MemifOSError) as info:
            await collect()
        assert info.value.errno == errno.ENOENT
    assert [(e.kind, e.attempt) for e in seen] == [("failed", 1), ("failed", 2), ("failed", 3)]
    assert [e.retry_in for e in seen] == [0.01, 0.02, None]
    assert all(isinstance(e.error, aiomemif.MemifOSError) and e.reason for e in seen)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 3, lines
    assert "attempt 1 failed" in lines[0] and "retrying in 0.01 s" in lines[0]
    assert "attempt 3 failed" in lines[2] and "giving up" in lines[2]
    assert all(sock_path in line for line in lines)


async def test_a_late_subscriber_after_giving_up_gets_the_error(sock_path: str) -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.001, maximum=0.001, attempts=1)
    async with aiomemif.Client(sock_path, reconnect=policy) as client:
        with pytest.raises(aiomemif.MemifOSError):
            async with asyncio.timeout(5):
                await client.wait_connected()
        with pytest.raises(aiomemif.MemifOSError):
            async for _ in client.link_events():
                pass


async def test_default_policy_reports_every_failed_attempt(
    sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aiomemif")
    async with aiomemif.Client(sock_path, reconnect=FAST) as client:
        async with contextlib.aclosing(client.link_events()) as events:
            async with asyncio.timeout(5):
                first, second = await anext(events), await anext(events)
    assert (first.kind, first.attempt, second.attempt) == ("failed", 1, 2)
    assert first.retry_in == 0.01
    assert sum("connection attempt" in r.getMessage() for r in caplog.records) >= 2


async def test_refused_attempts_say_why(sock_path: str) -> None:
    async with aiomemif.serve(sock_path, [aiomemif.InterfaceConfig(secret="needed")]):
        async with aiomemif.Client(sock_path, reconnect=FAST) as client:
            async with contextlib.aclosing(client.link_events()) as events:
                async with asyncio.timeout(5):
                    ev = await anext(events)
    assert ev.kind == "failed" and ev.reason == "Secret required"
    assert isinstance(ev.error, aiomemif.HandshakeRefusedError)


async def test_the_readme_reconnect_loop_survives_normal_disconnects(sock_path: str) -> None:
    """``async for conn in client.connections(): async with conn: async for batch in ...``
    goes on to the next connection when the server closes one normally."""
    got: list[bytes] = []
    links = 0

    async def consume(client: aiomemif.Client) -> None:
        nonlocal links
        async for conn in client.connections():
            links += 1
            async with conn:
                async for batch in conn.rx_queues[0]:
                    got.extend(bytes(p) for p in batch)

    async with aiomemif.serve(sock_path) as srv:
        async with aiomemif.Client(sock_path, reconnect=FAST) as client:
            consumer = asyncio.create_task(consume(client))
            async with asyncio.timeout(5):
                for n in range(3):
                    server = await srv.accept()
                    await server.tx_queues[0].send(b"link %d" % n)
                    while len(got) <= n:
                        await asyncio.sleep(0.005)
                    await server.aclose("maintenance")
        async with asyncio.timeout(5):
            await consumer  # ends quietly when the client closes
    assert got == [b"link 0", b"link 1", b"link 2"]
    assert links >= 3


async def test_every_subscriber_gets_its_own_error(sock_path: str) -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.001, maximum=0.001, attempts=1)
    async with aiomemif.Client(sock_path, reconnect=policy) as client:
        first, second = client.link_events(), client.link_events()
        errors = []

        async def exhaust(stream: AsyncIterator[aiomemif.LinkEvent]) -> None:
            async with asyncio.timeout(5):
                async for _ in stream:
                    pass

        for stream in (first, second):
            with pytest.raises(aiomemif.MemifOSError) as info:
                await exhaust(stream)
            errors.append(info.value)
        assert errors[0] is not errors[1]
        assert [e async for e in first] == []  # raised once, then ended


async def test_every_waiter_gets_its_own_copy_of_the_last_error(sock_path: str) -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.001, maximum=0.001, attempts=1)
    async with aiomemif.Client(sock_path, reconnect=policy) as client:
        raised = []
        for _ in range(2):
            with pytest.raises(aiomemif.MemifOSError) as info:
                await anext(aiter(client.connections()))
            raised.append(info.value)
        with pytest.raises(aiomemif.MemifOSError) as info:
            await client.wait_connected()
        raised.append(info.value)
    assert len({id(e) for e in raised}) == 3
    assert all(e.errno == raised[0].errno for e in raised)
