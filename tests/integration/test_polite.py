"""Politeness to fragile peers (issue 14, item 5).

A libmemif master dereferences a null pointer when a client sends DISCONNECT before INIT,
so a client that gives up before INIT must only close its socket. ``aiomemif probe``
reads HELLO and, with ``--id``, goes on over that same connection. Raw servers from
tests/support/hostile.py record what the client sends. Timeouts are hang guards.
"""

from __future__ import annotations

import asyncio

from support.hostile_links import fake_server

import aiomemif
from aiomemif._core.messages import Hello

GUARD = 30.0


async def test_client_timing_out_before_hello_sends_nothing(sock_path: str) -> None:
    async with fake_server(sock_path, handshake_timeout=0.2) as (peer, task):
        async with asyncio.timeout(GUARD):
            await asyncio.wait([task])
        assert isinstance(task.exception(), aiomemif.HandshakeTimeoutError)
        await peer.expect_eof()


async def test_client_refusing_hello_sends_nothing(sock_path: str) -> None:
    async with fake_server(sock_path) as (peer, task):
        peer.send(Hello(min_version=0x0300, max_version=0x0300))
        async with asyncio.timeout(GUARD):
            await asyncio.wait([task])
        exc = task.exception()
        assert isinstance(exc, aiomemif.RemoteProtocolError)
        assert exc.reason == "Incompatible memif version"
        await peer.expect_eof()
