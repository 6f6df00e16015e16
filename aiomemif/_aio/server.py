"""The server (master) role: listen, run handshakes, hand out connections."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import weakref
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Final, Literal, final

from .._core import wire as w
from .._core.config import InterfaceConfig
from .._core.handshake import Established, MapRegions, SendMessage, ServerHandshake
from .._core.messages import decode_untrusted, encode
from .._core.ring import QueueCounters, Ring, ring_cookie_ok
from .._core.rx import ServerRx
from .._core.server_tx import ServerTx
from .._os import readers
from .._os.channel import (
    ControlChannel,
    Listener,
    format_address,
    parse_address,
    peer_credentials,
)
from .._os.eventfd import EventFd
from .._os.fds import close_fd, describe_fd
from .._os.regions import Region, map_region
from ..errors import (
    BusyResourceError,
    ClosedResourceError,
    ConfigurationError,
    DisconnectedError,
    RemoteProtocolError,
)
from .connection import Connection, UntilClosed, discard_queued
from .events import EventStream, EventStreams, HandshakeFailure, ServerEvent
from .rx_queue import RxMode, RxQueue
from .tx_queue import TxQueue

__all__ = ["Handler", "HandshakeFailure", "Server", "serve"]

#: A coroutine function that serves one connection (see :class:`Server`'s ``handler``).
Handler = Callable[[Connection], Awaitable[None]]

log = logging.getLogger("aiomemif")

#: Seconds before accepting again after accept() failed (e.g. out of fds).
_ACCEPT_RETRY: Final = 0.1


@final
class Server:
    """A memif server (master) on one socket, serving one or more interface ids.

    ::

        async with aiomemif.serve("/tmp/app.sock", [InterfaceConfig(interface_id=0)]) as srv:
            async for conn in srv.connections():
                ...

    Each id has its own configuration (secret, mode, queue counts). A client naming an id
    that is already connected or handshaking is refused with "Already connected"; the live
    connection is not disturbed. Every refusal is logged at WARNING on the ``aiomemif``
    logger, recorded in ``failures`` and is a ``"refused"`` :class:`ServerEvent` on
    :meth:`events`.

    Connections are taken either with :meth:`accept` / :meth:`connections`, or by a
    ``handler``: a coroutine function called with each new connection in a task of its
    own (like :func:`asyncio.start_server`'s callback). The connection is closed when the
    handler returns; an exception from it is logged (with the interface id and peer
    names) and closes that connection only. :meth:`serve_forever` runs such a server
    until it is cancelled or closed; closing the server closes every connection and then
    cancels the handlers still running::

        async def reflect(conn: aiomemif.Connection) -> None:
            async for batch in conn.rx_queues[0]:
                await conn.tx_queues[0].send_batch(batch)

        async with aiomemif.serve("/tmp/app.sock", handler=reflect) as srv:
            await srv.serve_forever()

    Who may connect, and how many at once:

    - ``allowed_uids``: the uids a client process may run as (checked with
      ``SO_PEERCRED`` at accept; others get DISCONNECT "Permission denied"). ``None``
      means this process's effective uid and root; ``"any"`` switches the check off.
    - ``socket_mode``: permissions of a filesystem socket file (``0o600``: only the owner
      can connect; ``None`` leaves them to the umask). Abstract addresses have none.
    - ``max_pending``: handshakes in progress at once. Beyond it the server stops taking
      connections from the kernel's backlog (``backlog`` long) until one ends, like a
      listen backlog; a client that has not sent INIT within the shortest
      ``handshake_timeout`` of the interfaces is dropped, and after INIT the named
      interface's ``handshake_timeout`` (counted from accept) applies.
    - When ``accept`` fails (out of fds: EMFILE/ENFILE, or ENOBUFS/ENOMEM), accepting
      pauses with a WARNING log line and resumes when a handshake or connection of this
      server ends, or 0.1 s later.

    Raises:
        ConfigurationError: duplicate interface ids, an app_name over 31 bytes,
            ``max_pending`` below 1, or a bad ``allowed_uids``.
    """

    def __init__(
        self,
        address: str | bytes | os.PathLike[str],
        interfaces: Iterable[InterfaceConfig] = (),
        *,
        app_name: str = "aiomemif",
        rx_mode: RxMode = RxMode.INTERRUPT,
        backlog: int = 64,
        max_pending: int = 16,
        allowed_uids: Iterable[int] | Literal["any"] | None = None,
        socket_mode: int | None = 0o600,
        handler: Handler | None = None,
    ) -> None:
        self._handler = handler
        self._handlers: set[asyncio.Task[None]] = set()
        #: Every connection made, while anyone holds it (closing the server closes all,
        #: also those whose peer left and that still hold memory for a receiver).
        self._made: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._events: EventStreams[ServerEvent] = EventStreams()
        self._address = parse_address(
            os.fspath(address) if isinstance(address, os.PathLike) else address
        )
        self._interfaces: dict[int, InterfaceConfig] = {}
        for cfg in interfaces:
            if cfg.interface_id in self._interfaces:
                raise ConfigurationError(f"interface id {cfg.interface_id} configured twice")
            self._interfaces[cfg.interface_id] = cfg
        if not self._interfaces:
            self._interfaces[0] = InterfaceConfig()
        if len(app_name.encode()) > 31:
            raise ConfigurationError("app_name must be at most 31 bytes")
        self.app_name = app_name
        self.rx_mode = RxMode(rx_mode)
        self._backlog = backlog
        if max_pending < 1:
            raise ConfigurationError("max_pending must be at least 1")
        self._max_pending = max_pending
        if allowed_uids == "any":
            self._uids: frozenset[int] | None = None
        elif allowed_uids is None:
            self._uids = frozenset({os.geteuid(), 0})
        elif isinstance(allowed_uids, str):
            raise ConfigurationError('allowed_uids must be uids, None or "any"')
        else:
            self._uids = frozenset(allowed_uids)
        self._socket_mode = socket_mode
        #: Why accepting is paused (None: the listener is registered with the loop).
        self._paused: str | None = None
        #: accept() failed and has not succeeded since (for logging a shortage once).
        self._starved = False
        self._retry: asyncio.TimerHandle | None = None
        #: The shortest handshake timeout: the deadline for a client to send INIT.
        self._max_queues = (
            max(c.rx_queue_count for c in self._interfaces.values()),
            max(c.tx_queue_count for c in self._interfaces.values()),
        )
        self._init_timeout = min(c.handshake_timeout for c in self._interfaces.values())
        self._listener: Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bound: dict[int, Connection | None] = {}
        self._sessions: set[asyncio.Task[None]] = set()
        self._ready: asyncio.Queue[Connection | None] = asyncio.Queue()
        self._closed = False
        #: Set once :meth:`aclose` has finished (what :meth:`serve_forever` waits for).
        self._shut = asyncio.Event()
        #: The most recent refused or failed handshakes (newest last).
        self.failures: collections.deque[HandshakeFailure] = collections.deque(maxlen=64)

    @property
    def address(self) -> str:
        return format_address(self._address)

    @property
    def pending_handshakes(self) -> int:
        """Handshakes in progress (at most ``max_pending``)."""
        return len(self._sessions)

    @property
    def accepting(self) -> bool:
        """False while accepting is paused (``max_pending`` reached, or out of fds)."""
        return self._listener is not None and self._paused is None and not self._closed

    @property
    def connections_by_id(self) -> dict[int, Connection]:
        """Live connections keyed by interface id."""
        return {i: c for i, c in self._bound.items() if c is not None}

    async def start(self) -> None:
        """Bind and listen (replacing a stale socket file, never a live one).

        Raises:
            AddressInUseError: a live listener or a non-socket file holds the address.
            MemifOSError: bind or listen failed otherwise.
        """
        if self._listener is not None or self._closed:
            raise ClosedResourceError("server already started or closed")
        self._loop = asyncio.get_running_loop()
        self._listener = Listener(self._address, self._backlog, self._socket_mode)
        readers.add_reader(self._loop, self._listener.fd, self._on_accept, "listener")

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- accepting -------------------------------------------------------------------------
    def _on_accept(self) -> None:
        assert self._listener is not None and self._loop is not None
        while len(self._sessions) < self._max_pending:
            try:
                sock = self._listener.accept_nowait()
            except OSError as exc:
                # Out of fds or buffers (EMFILE, ENFILE, ENOBUFS, ENOMEM) or anything else:
                # the client stays in the backlog; retrying at once would spin the loop.
                self._pause(f"accept failed: {exc.strerror or exc}", retry=_ACCEPT_RETRY)
                return
            if sock is None:
                return
            self._starved = False
            if not self._allowed(sock):
                continue
            task = self._loop.create_task(self._session(ControlChannel(sock)))
            self._sessions.add(task)
            task.add_done_callback(self._session_done)
        self._pause(f"{self._max_pending} handshakes pending")

    def _allowed(self, sock: socket.socket) -> bool:
        """Check the client's uid (SO_PEERCRED) against ``allowed_uids``; refuse others."""
        if self._uids is None:
            return True
        try:
            pid, uid, _gid = peer_credentials(sock)
        except OSError:
            pid, uid = 0, -1
        if uid in self._uids:
            return True
        reason = f"Permission denied (uid {uid})"
        log.warning("memif server %s: refused pid %d: %s", self.address, pid, reason)
        self.failures.append(HandshakeFailure(None, reason))
        self._events.publish(ServerEvent(kind="refused", reason=reason))
        channel = ControlChannel(sock)
        channel.send_disconnect("Permission denied")
        channel.close()
        return False

    def _pause(self, why: str, retry: float | None = None) -> None:
        """Stop taking connections from the backlog until :meth:`_resume` (a handshake or
        connection ends, or ``retry`` seconds pass)."""
        assert self._loop is not None and self._listener is not None
        if self._paused is None:
            readers.remove_reader(self._loop, self._listener.fd)
            if retry is None:
                log.info("memif server %s: pausing accepts: %s", self.address, why)
            elif not self._starved:  # once per shortage, not on every retry
                log.warning("memif server %s: pausing accepts: %s", self.address, why)
        self._starved = retry is not None
        self._paused = why
        if retry is not None and self._retry is None:
            self._retry = self._loop.call_later(retry, self._resume)

    def _resume(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._paused is None or self._closed or self._listener is None:
            return
        assert self._loop is not None
        self._paused = None
        readers.add_reader(self._loop, self._listener.fd, self._on_accept, "listener")

    def _session_done(self, task: asyncio.Task[None]) -> None:
        self._sessions.discard(task)
        self._resume()

    def _is_busy(self, interface_id: int) -> bool:
        return interface_id in self._bound

    async def _session(self, channel: ControlChannel) -> None:
        machine = ServerHandshake(
            self._interfaces.get, self._is_busy, self.app_name, self._max_queues
        )
        regions: list[Region] = []
        conn: Connection | None = None
        claimed: int | None = None
        try:
            assert self._loop is not None
            started = self._loop.time()
            async with asyncio.timeout(self._init_timeout) as deadline:
                await channel.send(encode(machine.hello().message))
                while conn is None:
                    data, fds = await channel.recv()
                    if len(fds) > 1:
                        for stray in fds:
                            close_fd(stray)
                        raise RemoteProtocolError("Too many file descriptors")
                    fd = fds[0] if fds else None
                    try:
                        msg = decode_untrusted(data)
                        outputs = machine.receive(
                            msg, fd, describe_fd(fd) if fd is not None else None
                        )
                    except BaseException:
                        if fd is not None:
                            close_fd(fd)
                        raise
                    if claimed is None and machine.interface_id is not None:
                        claimed = machine.interface_id
                        self._bound[claimed] = None
                        assert machine.config is not None  # INIT named a configured id
                        deadline.reschedule(started + machine.config.handshake_timeout)
                    while outputs:
                        out = outputs.pop(0)
                        if isinstance(out, SendMessage):
                            await channel.send(encode(out.message), out.fd)
                        elif isinstance(out, MapRegions):
                            regions = self._map(machine)
                            outputs += machine.mapped()
                        elif isinstance(out, Established):
                            conn = self._build(channel, machine, regions)
        except RemoteProtocolError as exc:
            self._record(machine.requested_id, exc.reason)
            channel.send_disconnect(exc.reason)
        except TimeoutError:
            self._record(machine.requested_id, "Handshake timeout")
            channel.send_disconnect("Handshake timeout")
        except DisconnectedError as exc:  # the client left (DISCONNECT, or hung up)
            self._record(machine.requested_id, exc.reason, refused=False)
        finally:
            if conn is None:
                owned = {r.fd for r in regions}
                for fd in machine.received_fds:
                    if fd not in owned:
                        close_fd(fd)
                for region in regions:
                    region.close()
                channel.close()
                if claimed is not None:
                    self._bound.pop(claimed, None)
        if conn is not None:
            if self._closed:
                await conn.aclose("server closed")
                return
            self._events.publish(
                ServerEvent(kind="connected", interface_id=conn.interface_id, connection=conn)
            )
            if self._handler is None:
                self._ready.put_nowait(conn)
            else:
                assert self._loop is not None
                task = self._loop.create_task(self._run_handler(self._handler, conn))
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)

    async def _run_handler(self, handler: Handler, conn: Connection) -> None:
        """Serve one connection with the handler; close it when the handler returns or
        fails (failures are logged here, not raised: other connections go on)."""
        try:
            await handler(conn)
        except Exception as exc:
            who = (
                f"memif server {self.address}: handler of interface {conn.interface_id}"
                f" (peer {conn.peer_app_name!r} {conn.peer_interface_name!r})"
            )
            if isinstance(exc, DisconnectedError | RemoteProtocolError):
                log.warning("%s ended: %s: %s", who, type(exc).__name__, exc)
            else:
                log.exception("%s failed", who)
            await conn.aclose("handler failed")
        else:
            await conn.aclose()
        finally:  # also when cancelled; frees what a link the peer ended still holds
            conn._close("handler cancelled")

    def _record(self, interface_id: int | None, reason: str, refused: bool = True) -> None:
        """A handshake that did not complete: refused here (WARNING), or left by the
        client (INFO: a probe that only reads HELLO does just that)."""
        who = "a client" if interface_id is None else f"interface {interface_id}"
        if refused:
            log.warning("memif server %s: refused %s: %s", self.address, who, reason)
        else:
            log.info("memif server %s: %s left the handshake: %s", self.address, who, reason)
        self.failures.append(HandshakeFailure(interface_id, reason))
        kind: Literal["refused", "abandoned"] = "refused" if refused else "abandoned"
        self._events.publish(ServerEvent(kind=kind, interface_id=interface_id, reason=reason))

    def _map(self, machine: ServerHandshake) -> list[Region]:
        regions: list[Region] = []
        try:
            for rec in machine.regions:
                regions.append(map_region(rec.index, rec.size, rec.fd))
            for ring in machine.rings:
                view = regions[ring.region].view
                assert view is not None
                if not ring_cookie_ok(view, ring.offset):
                    kind = "rx" if ring.ring_type is w.RingType.S2M else "tx"
                    raise RemoteProtocolError(f"Wrong cookie on {kind} ring {ring.index}")
        except BaseException:
            for region in regions:
                region.fd = -1  # the caller closes the machine's fds
                region.close()
            raise
        return regions

    def _build(
        self, channel: ControlChannel, machine: ServerHandshake, regions: list[Region]
    ) -> Connection:
        assert self._loop is not None and machine.config is not None and machine.init is not None
        cfg = machine.config
        conn = Connection(
            role=w.Role.SERVER,
            config=cfg,
            address=self.address,
            channel=channel,
            regions=regions,
            peer_app_name=machine.init.name,
            peer_if_name=machine.peer_if_name,
            loop=self._loop,
            app_name=self.app_name,
        )
        views = [r.view for r in regions]
        assert all(v is not None for v in views)
        mvs: list[memoryview] = [v for v in views if v is not None]
        sinks = [r.mapping for r in regions if r.mapping is not None]  # (faster copies)
        hooks = conn._queue_hooks()
        for rec in machine.rings:
            ring = Ring(mvs[rec.region], rec.offset, rec.log2_ring_size, cfg.cacheline)
            efd = EventFd(rec.fd)
            conn._own(ring, efd)
            counters = QueueCounters()
            if rec.ring_type is w.RingType.S2M:
                rx = ServerRx(ring, mvs, counters, cfg.max_frame_bytes)
                rx.reset()
                conn.rx_queues.append(
                    RxQueue(rec.index, rx, efd, self.rx_mode, self._loop, **hooks)
                )
            else:
                tx = ServerTx(ring, mvs, counters, sinks)
                tx.reset()
                conn.tx_queues.append(TxQueue(rec.index, tx, efd, **hooks))
        conn._start(self._on_conn_closed)
        self._bound[cfg.interface_id] = conn
        self._made.add(conn)
        return conn

    def _on_conn_closed(self, conn: Connection) -> None:
        if self._bound.get(conn.interface_id) is conn:
            del self._bound[conn.interface_id]
        self._events.publish(
            ServerEvent(
                kind="closed",
                interface_id=conn.interface_id,
                reason=conn.close_reason,
                connection=conn,
            )
        )
        if conn.has_undelivered:  # still to be accepted and read; forgotten once freed
            conn._on_freed.append(lambda c: discard_queued(self._ready, c))
        else:
            discard_queued(self._ready, conn)  # never accepted: nothing should keep it
        self._resume()  # its fds are free again

    async def accept(self) -> Connection:
        """Wait for the next client to complete its handshake.

        Links that went down before they were accepted are skipped, except those still
        holding packets the peer published (:attr:`Connection.has_undelivered`, for about
        two seconds): handed out down, their queues give those packets, then end.

        Raises:
            ClosedResourceError: the server is (or gets) closed.
            BusyResourceError: the server has a ``handler``, which takes every connection.
        """
        if self._handler is not None:
            raise BusyResourceError("this server hands its connections to its handler")
        while True:
            if self._closed:
                raise ClosedResourceError("server closed")
            conn = await self._ready.get()
            if conn is None:
                self._ready.put_nowait(None)
                raise ClosedResourceError("server closed")
            if conn.is_up or conn.has_undelivered:  # (links down and drained: skipped)
                return conn

    def connections(self) -> UntilClosed[Connection]:
        """Async iterator over new connections; ends when the server closes.

        Raises:
            BusyResourceError: (when iterated) the server has a ``handler``.
        """
        return UntilClosed(self.accept)

    def events(self) -> EventStream[ServerEvent]:
        """What happens from now on: ``async for ev in server.events()`` yields a
        :class:`ServerEvent` per connection made (``"connected"``), handshake refused
        (``"refused"``, with the interface id and reason) and connection ended
        (``"closed"``). Iteration ends when the server closes."""
        return self._events.subscribe()

    async def serve_forever(self) -> None:
        """Serve until this task is cancelled or the server is closed; the server is
        closed on the way out (starting it first if needed).

        Raises:
            AddressInUseError, MemifOSError: starting failed (see :meth:`start`).
        """
        if self._listener is None and not self._closed:
            await self.start()
        try:
            await self._shut.wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, abandon handshakes, close every connection (DISCONNECT sent),
        then cancel the handlers still running. A second call waits for the first."""
        if self._closed:
            if asyncio.current_task() not in self._handlers:
                await self._shut.wait()
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._listener is not None:
            assert self._loop is not None
            readers.remove_reader(self._loop, self._listener.fd)
            self._listener.close()
        for task in list(self._sessions):
            task.cancel()
        for task in list(self._sessions):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for conn in list(self.connections_by_id.values()):
            await conn.aclose("server closed")
        while not self._ready.empty():
            pending = self._ready.get_nowait()
            if pending is not None:
                await pending.aclose("server closed")
        self._ready.put_nowait(None)
        await asyncio.sleep(0)  # handlers see their links end and may return by themselves
        me = asyncio.current_task()  # (a handler may close the server: it goes on)
        handlers = [h for h in self._handlers if h is not me]
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for made in list(self._made):
            made.abort()  # links the peer ended, whose memory waited for a receiver
        self._events.end()
        self._shut.set()


def serve(
    address: str | bytes | os.PathLike[str],
    interfaces: Iterable[InterfaceConfig] = (),
    *,
    app_name: str = "aiomemif",
    rx_mode: RxMode = RxMode.INTERRUPT,
    backlog: int = 64,
    max_pending: int = 16,
    allowed_uids: Iterable[int] | Literal["any"] | None = None,
    socket_mode: int | None = 0o600,
    handler: Handler | None = None,
) -> Server:
    """Create a server; use it with ``async with`` (or call ``await server.start()``).

    With no ``interfaces``, one default interface (id 0, no secret, ethernet) is served.
    The other arguments are :class:`Server`'s; with a ``handler``, ``await
    server.serve_forever()`` serves every client with it::

        async with aiomemif.serve("/tmp/app.sock", handler=my_handler) as server:
            await server.serve_forever()

    Raises:
        ConfigurationError: duplicate interface ids or a bad address.
        AddressInUseError, MemifOSError: when started (see :meth:`Server.start`).
    """
    return Server(
        address,
        interfaces,
        app_name=app_name,
        rx_mode=rx_mode,
        backlog=backlog,
        max_pending=max_pending,
        allowed_uids=allowed_uids,
        socket_mode=socket_mode,
        handler=handler,
    )
