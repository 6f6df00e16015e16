"""The client (slave) role: connect, build shared memory, handshake; reconnect on loss."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import weakref
from array import array
from collections.abc import AsyncIterator, Callable, Generator
from types import TracebackType
from typing import Any, final

import attrs

from .._core import wire as w
from .._core.client_tx import ClientTx
from .._core.config import InterfaceConfig
from .._core.handshake import ClientHandshake, Established, HelloReceived, SendMessage
from .._core.layout import ClientLayout, plan_client_layout
from .._core.messages import Hello, decode_untrusted, encode
from .._core.ring import QueueCounters, Ring, descriptor_table, init_ring
from .._core.rx import ClientRx
from .._os.channel import ControlChannel, connect_socket, format_address, parse_address
from .._os.eventfd import EventFd
from .._os.fds import close_fd
from .._os.regions import Region, create_region
from ..errors import (
    ClosedResourceError,
    ConfigurationError,
    DisconnectedError,
    HandshakeTimeoutError,
    MemifError,
    RemoteProtocolError,
)
from .connection import Connection, UntilClosed, discard_queued
from .events import EventStream, EventStreams, LinkEvent, copy_error
from .rx_queue import RxMode, RxQueue
from .tx_queue import TxQueue

__all__ = ["Client", "ConnectContext", "ReconnectPolicy", "connect"]

log = logging.getLogger("aiomemif")


def _config(config: InterfaceConfig | None, kwargs: dict[str, Any]) -> InterfaceConfig:
    if config is not None and kwargs:
        raise ConfigurationError("pass either config= or keyword settings, not both")
    try:
        return config if config is not None else InterfaceConfig(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(str(exc)) from exc


class _Memory:
    """The client's shared resources for one connection attempt (closed on failure)."""

    def __init__(self, layout: ClientLayout) -> None:
        self.layout = layout
        self.regions: list[Region] = []
        self.efds: list[EventFd] = []
        #: Per ring, the buffer offset behind each slot (mutable: forwarding swaps them).
        self.buffers: list[array[int]] = []
        try:
            for index, size in enumerate(layout.region_sizes):
                self.regions.append(create_region(index, size))
            rings_view = self.regions[0].view
            assert rings_view is not None
            n, bsize = layout.ring_size, layout.buffer_size
            for ring in layout.rings:
                self.efds.append(EventFd())
                table = array("I", range(ring.buffers, ring.buffers + n * bsize, bsize))
                self.buffers.append(table)
                descs = descriptor_table(table, layout.buffer_region, 0, bsize)
                init_ring(rings_view, ring.offset, layout.cacheline, bytes(descs))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for efd in self.efds:
            efd.close()
        for region in self.regions:
            region.close()


async def _handshake(
    address: str | bytes,
    config: InterfaceConfig,
    rx_mode: RxMode,
    on_hello: Callable[[Hello], object] | None = None,
) -> Connection:
    """Connect and run the client handshake; the established :class:`Connection`.

    ``on_hello`` is called with the server's HELLO once it is accepted, before INIT is
    sent; an exception it raises ends the attempt (and propagates).

    Until INIT has been sent, giving up (a HELLO refused, a timeout, ``on_hello`` raising)
    just closes the socket: some servers (libmemif) crash on a DISCONNECT before INIT.
    After INIT, a protocol error or timeout is answered with DISCONNECT first.

    Raises:
        What :func:`connect` lists, and whatever ``on_hello`` raises.
    """
    addr = parse_address(address)
    channel = ControlChannel(await connect_socket(addr))
    machine = ClientHandshake(config)
    memory: _Memory | None = None
    conn: Connection | None = None
    init_sent = False
    try:
        async with asyncio.timeout(config.handshake_timeout):
            while True:
                data, fds = await channel.recv()
                for fd in fds:
                    close_fd(fd)
                if fds:
                    raise RemoteProtocolError("Unexpected fd")
                outputs = machine.receive(decode_untrusted(data))
                while outputs:
                    out = outputs.pop(0)
                    if isinstance(out, HelloReceived):
                        if on_hello is not None:
                            on_hello(out.hello)
                        tx_n, rx_n = config.tx_queue_count, config.rx_queue_count
                        if out.n_s2m < tx_n or out.n_m2s < rx_n:
                            log.info(
                                "memif client %s: the server allows %d tx / %d rx queues"
                                " (asked for %d / %d)",
                                format_address(addr), out.n_s2m, out.n_m2s, tx_n, rx_n,
                            )  # fmt: skip
                        layout = plan_client_layout(
                            out.n_s2m, out.n_m2s, out.log2_ring_size,
                            config.buffer_size, config.cacheline, config.layout,
                        )  # fmt: skip
                        memory = _Memory(layout)
                        outputs += machine.begin(
                            layout, [r.fd for r in memory.regions], [e.fd for e in memory.efds]
                        )
                    elif isinstance(out, SendMessage):
                        await channel.send(encode(out.message), out.fd)
                        init_sent = True  # INIT is the first message a client sends
                    elif isinstance(out, Established):
                        assert memory is not None
                        conn = _build(addr, config, channel, machine, memory, rx_mode)
                        return conn
    except RemoteProtocolError as exc:
        if init_sent:
            channel.send_disconnect(exc.reason)
        raise
    except TimeoutError:
        if init_sent:
            channel.send_disconnect("Handshake timeout")
        raise HandshakeTimeoutError(
            f"no handshake with {format_address(addr)} within {config.handshake_timeout} s"
        ) from None
    finally:
        if conn is None:
            if memory is not None:
                memory.close()
            channel.close()


def _build(
    addr: str | bytes,
    config: InterfaceConfig,
    channel: ControlChannel,
    machine: ClientHandshake,
    memory: _Memory,
    rx_mode: RxMode,
) -> Connection:
    layout = memory.layout
    assert machine.hello is not None
    loop = asyncio.get_running_loop()
    conn = Connection(
        role=w.Role.CLIENT,
        config=config,
        address=format_address(addr),
        channel=channel,
        regions=memory.regions,
        peer_app_name=machine.hello.name,
        peer_if_name=machine.peer_if_name,
        loop=loop,
    )
    views = [r.view for r in memory.regions]
    rings_view, buf_view = views[0], views[layout.buffer_region]
    assert rings_view is not None and buf_view is not None
    bsize, breg = layout.buffer_size, layout.buffer_region
    sink = memory.regions[breg].mapping  # copies into the mmap itself are the fastest
    hooks = conn._queue_hooks()
    for place, efd, table in zip(layout.rings, memory.efds, memory.buffers, strict=True):
        ring = Ring(rings_view, place.offset, layout.log2_ring_size, layout.cacheline)
        conn._own(ring, efd)
        ring.set_head(0)  # the peer may have zeroed tail too; start from a clean slate
        counters = QueueCounters()
        if place.ring_type is w.RingType.S2M:
            tx = ClientTx(
                ring, buf_view, breg, table, bsize, config.tx_headroom, counters, sink=sink
            )
            conn.tx_queues.append(TxQueue(place.index, tx, efd, **hooks))
        else:
            mvs = [v for v in views if v is not None]
            rx = ClientRx(
                ring, mvs, counters, breg, table, bsize, config.rx_headroom, config.max_frame_bytes
            )
            conn.rx_queues.append(RxQueue(place.index, rx, efd, rx_mode, loop, **hooks))
            rx.refill()  # stock the M2S ring with empty buffers
    conn._start()
    return conn


@final
class ConnectContext:
    """What :func:`connect` returns: one connection attempt, not started yet.

    ``conn = await connect(...)`` runs the handshake and returns the :class:`Connection`
    (the caller closes it); ``async with connect(...) as conn:`` does the same and closes
    the connection gracefully when the block ends. Each await or ``async with`` makes a
    new attempt. Raises what :func:`connect` lists.
    """

    def __init__(self, address: str | bytes, config: InterfaceConfig, rx_mode: RxMode) -> None:
        self._args = (address, config, rx_mode)
        self._conn: Connection | None = None

    def __await__(self) -> Generator[Any, None, Connection]:
        return _handshake(*self._args).__await__()

    async def __aenter__(self) -> Connection:
        self._conn = await _handshake(*self._args)
        return self._conn

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._conn is not None:
            await self._conn.aclose()


def connect(
    address: str | bytes | os.PathLike[str],
    config: InterfaceConfig | None = None,
    *,
    rx_mode: RxMode = RxMode.INTERRUPT,
    **settings: Any,
) -> ConnectContext:
    """Connect once as a client (slave): ``async with connect(path, interface_id=1) as conn``.

    ``settings`` are :class:`InterfaceConfig` fields (when ``config`` is not given). The
    address is a filesystem path or ``@name`` for the abstract namespace.

    Raises (when awaited or entered):
        MemifOSError: the socket could not be reached (no such file, connection refused, ...).
        HandshakeRefusedError: the server answered DISCONNECT (``.reason`` has its text).
        RemoteProtocolError: the server broke the protocol (we sent DISCONNECT, unless it
            happened before our INIT: then the socket is just closed).
        ConnectionLostError: the server closed the socket mid-handshake.
        HandshakeTimeoutError: the server stopped answering (DISCONNECT sent only after
            INIT, as above).
        ConfigurationError: invalid settings or address.
    """
    cfg = _config(config, settings)
    addr = os.fspath(address) if isinstance(address, os.PathLike) else address
    parse_address(addr)
    return ConnectContext(addr, cfg, RxMode(rx_mode))


@final
@attrs.frozen(kw_only=True)
class ReconnectPolicy:
    """Back-off between connection attempts: ``initial * factor**n`` with jitter, never
    above ``maximum``.

    Raises:
        ConfigurationError: a negative delay or jitter, ``jitter`` of 1 or more, a
            ``factor`` below 1, ``maximum`` below ``initial``, or ``attempts`` below 1.
    """

    initial: float = 0.5
    #: The longest delay :meth:`delay` returns (jitter included).
    maximum: float = 3.0
    factor: float = 2.0
    #: Fraction of random spread: up to +10% (0.1) on each delay, taken off instead where
    #: adding it would pass ``maximum`` (so capped delays still spread out).
    jitter: float = 0.1
    #: Give up after this many consecutive failed attempts (None: never).
    attempts: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial:
            raise ConfigurationError("need 0 <= initial <= maximum")
        if self.factor < 1:
            raise ConfigurationError("factor must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError("jitter must be in [0, 1)")
        if self.attempts is not None and self.attempts < 1:
            raise ConfigurationError("attempts must be at least 1 (or None)")

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (in 0..``maximum``)."""
        try:
            base = min(self.maximum, self.initial * self.factor ** max(0, failures - 1))
        except OverflowError:
            base = self.maximum
        spread = base * random.uniform(0, self.jitter)
        return base + spread if base + spread <= self.maximum else base - spread


@final
class Client:
    """A client interface that keeps (re)connecting until closed.

    ::

        async with aiomemif.Client("/run/vpp/memif.sock", interface_id=0) as client:
            async for conn in client.connections():
                async with conn:
                    ...   # runs until the link goes down; then the next connection comes

    ``connections()`` ends when the client is closed; if ``reconnect.attempts`` runs out it
    raises the last connection error. Every failed attempt is logged at WARNING on the
    ``aiomemif`` logger (with its reason and the delay before the next attempt) and is a
    ``"failed"`` :class:`LinkEvent` on :meth:`link_events`.
    """

    def __init__(
        self,
        address: str | bytes | os.PathLike[str],
        config: InterfaceConfig | None = None,
        *,
        reconnect: ReconnectPolicy | None = None,
        rx_mode: RxMode = RxMode.INTERRUPT,
        **settings: Any,
    ) -> None:
        self.address = os.fspath(address) if isinstance(address, os.PathLike) else address
        parse_address(self.address)
        self.config = _config(config, settings)
        self.policy = reconnect or ReconnectPolicy()
        self.rx_mode = RxMode(rx_mode)
        self.last_error: MemifError | None = None
        self.connection: Connection | None = None
        self._queue: asyncio.Queue[Connection | MemifError | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._events: EventStreams[LinkEvent] = EventStreams()
        #: Every connection made, while anyone holds it (closed with the client, also
        #: those whose peer left and that still hold memory for a receiver).
        self._made: weakref.WeakSet[Connection] = weakref.WeakSet()
        #: The error that ended the reconnect loop (attempts ran out), if any.
        self._gave_up: MemifError | None = None
        #: Pulsed when a link comes up, the loop gives up, or the client closes.
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Client:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _run(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    conn = await _handshake(self.address, self.config, self.rx_mode)
                except (MemifError, OSError) as exc:
                    if isinstance(exc, ConfigurationError):
                        raise
                    failures += 1
                    err = exc if isinstance(exc, MemifError) else MemifError(str(exc))
                    self.last_error = err
                    if await self._failed(err, failures):
                        return
                    continue
                failures = 0
                self._made.add(conn)
                self.connection = conn
                self._queue.put_nowait(conn)
                self._notify()
                self._events.publish(LinkEvent(kind="up", connection=conn))
                err = await conn.wait_closed()
                self.connection = None
                if conn.has_undelivered:  # packets left to read: kept until freed
                    conn._on_freed.append(lambda c: discard_queued(self._queue, c))
                else:
                    discard_queued(self._queue, conn)  # never taken by connections()
                delay = self.policy.delay(1)
                reason = conn.close_reason
                log.info("%s: link down: %s; reconnecting in %.2f s", self._name, reason, delay)
                self._events.publish(
                    LinkEvent(
                        kind="down", connection=conn, reason=reason, error=err, retry_in=delay
                    )
                )
                del conn  # nothing here should keep a dead link alive while reconnecting
                if isinstance(err, DisconnectedError | RemoteProtocolError):
                    self.last_error = err
                await asyncio.sleep(delay)
        except MemifError as exc:
            self._give_up(exc)

    @property
    def _name(self) -> str:
        where = format_address(parse_address(self.address))
        return f"memif client {where} id {self.config.interface_id}"

    async def _failed(self, error: MemifError, failures: int) -> bool:
        """Report failed attempt number ``failures``; wait before the next one, or give up
        (True) when the policy's attempts ran out."""
        reason = (
            error.reason
            if isinstance(error, DisconnectedError | RemoteProtocolError)
            else str(error)
        )
        attempts = self.policy.attempts
        if attempts is not None and failures >= attempts:
            log.warning(
                "%s: connection attempt %d failed: %s; giving up after %d attempts",
                self._name, failures, reason, failures,
            )  # fmt: skip
            self._events.publish(
                LinkEvent(kind="failed", reason=reason, error=error, attempt=failures)
            )
            self._give_up(error)
            return True
        delay = self.policy.delay(failures)
        log.warning(
            "%s: connection attempt %d failed: %s; retrying in %.2f s",
            self._name, failures, reason, delay,
        )  # fmt: skip
        self._events.publish(
            LinkEvent(kind="failed", reason=reason, error=error, attempt=failures, retry_in=delay)
        )
        await asyncio.sleep(delay)
        return False

    def _give_up(self, error: MemifError) -> None:
        self._gave_up = error
        self._queue.put_nowait(error)
        self._notify()
        self._events.end(error)

    def _notify(self) -> None:
        self._changed.set()  # wakes every current waiter
        self._changed.clear()

    def link_events(self) -> EventStream[LinkEvent]:
        """Link changes from now on: ``async for ev in client.link_events()``.

        Each :class:`LinkEvent` is ``"up"`` (``.connection`` is the new link), ``"down"``
        (``.reason`` says why, ``.retry_in`` when the next attempt starts) or ``"failed"``
        (an attempt to connect failed: ``.reason``, ``.attempt``, ``.retry_in``). Iteration
        ends when the client is closed.

        Raises:
            MemifError: the last connection error, once ``reconnect.attempts`` ran out
                (after the last ``"failed"`` event).
        """
        return self._events.subscribe()

    def connections(self) -> AsyncIterator[Connection]:
        """Each new connection as it comes up (see the class docstring). A link that went
        down before it was taken is skipped (and not kept), unless the server ended it
        normally and packets it published are still to be read (for about two seconds):
        that one is yielded, down, and its receive queues hand them out, then end."""
        return UntilClosed(self._next)

    async def wait_connected(self) -> Connection:
        """Return the live connection, waiting for the next one if the link is down.

        Unlike :meth:`connections`, this does not consume anything: a connection returned
        here is still yielded by ``connections()``.

        Raises:
            ClosedResourceError: the client is closed.
            MemifError: the last connection error, once ``attempts`` ran out.
        """
        while True:
            if self._closed:
                raise ClosedResourceError("client closed")
            conn = self.connection
            if conn is not None and conn.is_up:
                return conn
            if self._gave_up is not None:
                raise copy_error(self._gave_up)
            await self._changed.wait()

    async def _next(self) -> Connection:
        while True:
            if self._closed:
                raise ClosedResourceError("client closed")
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)
                raise ClosedResourceError("client closed")
            if isinstance(item, MemifError):
                self._queue.put_nowait(item)
                raise copy_error(item)
            if item.is_up or item.has_undelivered:  # (down and drained: skipped)
                return item

    async def aclose(self) -> None:
        """Stop reconnecting and close the live connection (DISCONNECT sent)."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, Connection):
                await item.aclose()
        if self.connection is not None:
            await self.connection.aclose()
            self.connection = None
        for made in list(self._made):
            made.abort()
        self._queue.put_nowait(None)
        self._notify()
        self._events.end()
