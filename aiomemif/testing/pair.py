"""A connected memif server and client in one process, for testing packet-handling code.

::

    async with aiomemif.testing.memif_pair(ring_size=256) as pair:
        await pair.client.tx_queues[0].send(frame)
        batch = await pair.server.rx_queues[0].receive()

No VPP, DPDK or root is needed: both ends are aiomemif, talking over a Unix socket in a
private temporary directory (or the address you give).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any, final

import attrs

from .. import Connection, InterfaceConfig, RxMode, connect, serve
from ..errors import ConfigurationError

__all__ = ["MemifPair", "memif_pair"]


@final
@attrs.frozen
class MemifPair:
    """Both ends of one established memif link.

    ``client`` is the end that owns the shared memory (memif's slave), ``server`` the
    listening end (master). Queue ``i`` of ``client.tx_queues`` feeds
    ``server.rx_queues[i]`` and the other way round.
    """

    client: Connection
    server: Connection
    #: The socket address both ends used.
    address: str
    #: The configuration both ends were given.
    config: InterfaceConfig


@contextlib.asynccontextmanager
async def memif_pair(
    config: InterfaceConfig | None = None,
    *,
    address: str | os.PathLike[str] | None = None,
    rx_mode: RxMode = RxMode.INTERRUPT,
    **settings: Any,
) -> AsyncIterator[MemifPair]:
    """Start a server, connect a client to it, and yield both connections.

    ``settings`` are :class:`~aiomemif.InterfaceConfig` fields (``ring_size=256``,
    ``rx_queue_count=2``, ``secret="s"``, ...), or pass a whole ``config``; both ends get the same
    configuration (client-only fields such as ``ring_size`` and ``buffer_size`` shape the
    shared memory). ``rx_mode`` is the receive mode of every queue on both ends (change one
    queue later with ``rx.set_mode(...)``). Without ``address`` the socket lives in a fresh
    private temporary directory, removed afterwards.

    On leaving the block the client, the server connection and the server are closed (the
    peers exchange DISCONNECT), so no fd, mapping or loop reader is left behind. A task still
    receiving on one of the connections then sees its ``async for`` end (or
    ``ClosedResourceError`` / ``PeerDisconnectedError`` from ``receive()``).

    Raises:
        ConfigurationError: both ``config`` and ``settings`` given, or a bad setting.
        HandshakeTimeoutError, MemifOSError: the link could not be established.
    """
    if config is not None and settings:
        raise ConfigurationError("pass either config= or keyword settings, not both")
    if config is None:
        try:
            config = InterfaceConfig(**settings)
        except TypeError as exc:  # an unknown setting name
            raise ConfigurationError(str(exc)) from exc
    rx_mode = RxMode(rx_mode)
    async with contextlib.AsyncExitStack() as stack:
        if address is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="memif-"))
            address = os.path.join(tmp, "memif.sock")
        addr = os.fspath(address)
        server = await stack.enter_async_context(
            serve(addr, [config], app_name=config.app_name, rx_mode=rx_mode)
        )
        client = await stack.enter_async_context(connect(addr, config, rx_mode=rx_mode))
        accepted = await asyncio.wait_for(server.accept(), config.handshake_timeout)
        await stack.enter_async_context(accepted)
        yield MemifPair(client=client, server=accepted, address=server.address, config=config)
