"""Links whose other end is the scripted raw-socket peer of support.hostile."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import attrs

import aiomemif
from aiomemif._core.wire import RING_FLAG_MASK_INT
from support.hostile import (
    M2S,
    ClientMemory,
    RawListener,
    RawPeer,
    ServerSide,
    client_handshake,
    server_handshake,
)


@contextlib.asynccontextmanager
async def fake_client_link(
    path: str,
    config: aiomemif.InterfaceConfig | None = None,
    *,
    log2_ring_size: int = 4,
    buffer_size: int = 256,
) -> AsyncIterator[ServerLink]:
    """A real server (one interface: ``config``, or the default) and a raw client that
    completed a valid handshake, with a :class:`ClientMemory` of these sizes."""
    async with aiomemif.serve(path, () if config is None else [config]) as srv:
        with ClientMemory(log2_ring_size=log2_ring_size, buffer_size=buffer_size) as mem:
            async with await RawPeer.connect(path) as peer:
                async with asyncio.timeout(2):
                    await client_handshake(peer, mem)
                    conn = await srv.accept()
                async with conn:
                    yield ServerLink(srv, conn, peer, mem)


@contextlib.asynccontextmanager
async def fake_server_link(path: str, **client_kw: object) -> AsyncIterator[ClientLink]:
    """A raw server and a real client (``SMALL``, updated by ``client_kw``) that completed
    a valid handshake."""
    async with fake_server(path, **client_kw) as (peer, task):
        side = await server_handshake(peer)
        try:
            async with asyncio.timeout(1):
                conn = await task
            yield ClientLink(conn, peer, side)
        finally:
            side.close()


def server_send(side: ServerSide, slot: int, data: bytes) -> None:
    """Fill offered M2S slot ``slot`` with ``data`` (no publish)."""
    ring = side.ring(M2S)
    _, region, cap, offset, _ = ring.desc(slot)
    assert len(data) <= cap
    side.region(region)[offset : offset + len(data)] = data
    ring.set_desc(slot, region=region, length=len(data), offset=offset)


def server_publish(side: ServerSide, tail: int) -> None:
    ring = side.ring(M2S)
    ring.tail = tail
    if not ring.flags & RING_FLAG_MASK_INT:
        os.eventfd_write(side.efd(M2S), 1)


#: Small rings and buffers for every real client the tests start (fast to build and check).
SMALL: dict[str, object] = {"ring_size": 16, "buffer_size": 256}


@attrs.frozen
class ServerLink:
    """A real server, its connection, and the raw client on the other end with its memory."""

    srv: aiomemif.Server
    conn: aiomemif.Connection
    peer: RawPeer
    mem: ClientMemory


async def _connect(path: str, **kw: object) -> aiomemif.Connection:
    return await aiomemif.connect(path, **kw)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def fake_server(
    path: str, **client_kw: object
) -> AsyncIterator[tuple[RawPeer, asyncio.Task[aiomemif.Connection]]]:
    """A raw listener, a real ``connect`` running as a task, and the accepted raw peer."""
    kw = {**SMALL, **client_kw}
    async with RawListener(path) as listener:
        task = asyncio.create_task(_connect(path, **kw))
        try:
            async with await listener.accept() as peer:
                yield peer, task
        finally:
            if not task.done():
                task.cancel()
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is None:
                await task.result().aclose()


@attrs.frozen
class ClientLink:
    """A real client connection and the raw server on the other end with what it mapped."""

    conn: aiomemif.Connection
    peer: RawPeer
    side: ServerSide
