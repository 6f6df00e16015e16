"""Loopback links for the integration tests: a server and a client connected in one
process, test payloads, and waiting helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import TypedDict

import pytest

import aiomemif
import aiomemif._core.descriptors
from aiomemif import (
    ChainedPacket,
    Connection,
    InterfaceConfig,
    RxMode,
    RxQueue,
    TxQueue,
)
from aiomemif._core.client_tx import ClientTx
from aiomemif._core.rx import ClientRx
from aiomemif._core.server_tx import ServerTx

ROLES = ["client", "server"]


TIMEOUT = 10


def payload(seed: int, size: int) -> bytes:
    """Deterministic pseudo-random bytes (every byte position distinguishable)."""
    return random.Random(seed).randbytes(size)


@contextlib.asynccontextmanager
async def linked(
    sock_path: str,
    client_cfg: InterfaceConfig | None = None,
    server_cfg: InterfaceConfig | None = None,
    *,
    client_mode: RxMode = RxMode.INTERRUPT,
    server_mode: RxMode = RxMode.INTERRUPT,
) -> AsyncIterator[tuple[Connection, Connection]]:
    """A server connection and a client connection linked to each other: (server, client)."""
    scfg = server_cfg or InterfaceConfig()
    ccfg = client_cfg or InterfaceConfig()
    async with (
        aiomemif.serve(sock_path, [scfg], rx_mode=server_mode) as srv,
        aiomemif.connect(sock_path, ccfg, rx_mode=client_mode) as client,
    ):
        async with asyncio.timeout(TIMEOUT):
            server = await srv.accept()
        yield server, client


def ends(server: Connection, client: Connection, sender: str) -> tuple[TxQueue, RxQueue]:
    """(tx, rx) for traffic sent by ``sender``."""
    if sender == "client":
        return client.tx_queues[0], server.rx_queues[0]
    return server.tx_queues[0], client.rx_queues[0]


async def receive_count(rx: RxQueue, count: int) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(TIMEOUT):
        while len(got) < count:
            batch = await rx.receive()
            got.extend(batch.keep(i) for i in range(len(batch)))
            batch.release()
    return got


async def eventually(check: object, what: str) -> None:
    """Yield to the loop until ``check()`` is true (bounded by the test timeout)."""
    assert callable(check)
    try:
        async with asyncio.timeout(TIMEOUT):
            while not check():
                await asyncio.sleep(0.0005)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


#: A small client for the real links here (fast to build, runs wrap often).
SMALL = InterfaceConfig(ring_size=16, buffer_size=256)


def queues(server: Connection, client: Connection, receiver: str) -> tuple[TxQueue, RxQueue]:
    """(tx, rx) for traffic that ``receiver`` receives."""
    if receiver == "server":
        return client.tx_queues[0], server.rx_queues[0]
    return server.tx_queues[0], client.rx_queues[0]


class Modes(TypedDict, total=False):
    """The receive-mode keywords of :func:`linked`."""

    client_mode: RxMode
    server_mode: RxMode


def modes(receiver: str, mode: RxMode) -> Modes:
    return {"client_mode": mode} if receiver == "client" else {"server_mode": mode}


async def receive_all(rx: RxQueue, count: int) -> list[tuple[bytes, bool]]:
    """Receive ``count`` packets: (bytes, arrived as a chain) each, batches released."""
    got: list[tuple[bytes, bool]] = []
    async with asyncio.timeout(TIMEOUT):
        while len(got) < count:
            batch = await rx.receive()
            got.extend((batch.keep(i), isinstance(p, ChainedPacket)) for i, p in enumerate(batch))
            batch.release()
    return got


def client_rx(q: RxQueue) -> ClientRx:
    """The ring endpoint of a client's receive queue."""
    ep = q._endpoint
    assert isinstance(ep, ClientRx)
    return ep


def client_tx(q: TxQueue) -> ClientTx:
    """The ring endpoint of a client's transmit queue."""
    ep = q._endpoint
    assert isinstance(ep, ClientTx)
    return ep


def server_tx(q: TxQueue) -> ServerTx:
    """The ring endpoint of a server's transmit queue."""
    ep = q._endpoint
    assert isinstance(ep, ServerTx)
    return ep


def tx_cursor(q: TxQueue) -> int:
    """Where a transmit queue publishes next: head (client) or tail (server)."""
    ep = q._endpoint
    return ep.head if isinstance(ep, ClientTx) else ep.tail
