"""A live memif connection (either role): queues, details, graceful close and abort."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Final, Generic, TypedDict, TypeVar, final

from .._core import wire as w
from .._core.config import InterfaceConfig
from .._core.details import ConnectionDetails, QueueDetails, RegionDetails
from .._core.messages import Disconnect, decode_untrusted
from .._core.ring import Ring
from .._os import readers
from .._os.channel import ControlChannel
from .._os.eventfd import EventFd
from .._os.fds import close_fd
from .._os.regions import Region
from ..errors import (
    ClosedResourceError,
    DisconnectedError,
    MemifError,
    PeerDisconnectedError,
    RemoteProtocolError,
)
from .receive_all import ReceiveAll
from .rx_queue import DEFAULT_BATCH, ProtocolErrorHandler, RxQueue
from .tx_queue import TxQueue

__all__ = ["Connection", "UntilClosed", "discard_queued"]

T = TypeVar("T")


class QueueHooks(TypedDict):
    """The keyword arguments a connection gives each of its queues."""

    on_protocol_error: ProtocolErrorHandler
    link: object


log = logging.getLogger("aiomemif")

#: Seconds a link the peer ended keeps its shared memory for receive queues that still
#: have packets to hand out; then the rest is dropped and the memory freed.
DRAIN_LIMIT: Final = 2.0


@final
class Connection:
    """One established memif link.

    Use it as an async context manager: leaving the block closes it gracefully (a
    DISCONNECT with a reason goes to the peer). ``rx_queues``/``tx_queues`` are lists indexed
    by queue id.

    How a link ends, and what its queues do then:

    - normally: the peer sent DISCONNECT (:class:`~aiomemif.errors.PeerDisconnectedError`)
      or this side closed it (:class:`~aiomemif.errors.ClosedResourceError`). ``async for``
      over a receive queue (and over :meth:`receive_all`) ends quietly;
    - abnormally: the socket closed without DISCONNECT
      (:class:`~aiomemif.errors.ConnectionLostError`) or the peer broke the protocol
      (:class:`~aiomemif.errors.RemoteProtocolError`, after we sent DISCONNECT with the
      reason). ``async for`` raises it.

    Either way, waiting and later calls such as ``receive`` and ``send`` raise that
    exception, and :attr:`close_reason` / :attr:`close_error` say why.
    """

    def __init__(
        self,
        *,
        role: w.Role,
        config: InterfaceConfig,
        address: str,
        channel: ControlChannel,
        regions: Sequence[Region],
        peer_app_name: str,
        peer_if_name: str,
        loop: asyncio.AbstractEventLoop,
        app_name: str | None = None,
    ) -> None:
        self.role = role
        self.config = config
        self.address = address
        self.peer_app_name = peer_app_name
        self.peer_interface_name = peer_if_name
        #: The name the peer knows this side by (its HELLO or INIT), for close reasons.
        self._app_name = config.app_name if app_name is None else app_name
        self._channel = channel
        self._regions = list(regions)
        self._loop = loop
        self._rings: list[Ring] = []
        self._efds: list[EventFd] = []
        self.rx_queues: list[RxQueue] = []
        self.tx_queues: list[TxQueue] = []
        self._error: MemifError | None = None
        self._reason: str | None = None
        #: Receive queues still handing out what the peer published before it left.
        self._draining: set[RxQueue] = set()
        self._drain_timer: asyncio.TimerHandle | None = None
        self._closed: asyncio.Future[MemifError] = loop.create_future()
        self._on_closed: list[Callable[[Connection], None]] = []
        #: Called once the shared memory is freed (at teardown, or when draining ends).
        self._on_freed: list[Callable[[Connection], object]] = []

    # -- set-up (used by the client and server modules) -----------------------------------
    def _own(self, ring: Ring, efd: EventFd) -> None:
        self._rings.append(ring)
        self._efds.append(efd)

    def _queue_hooks(self) -> QueueHooks:
        """What each queue of this connection is given: how to report a protocol error, and
        the token that tells queues of one connection from another's."""
        return {"on_protocol_error": self._fail, "link": self}

    def _start(self, on_closed: Callable[[Connection], None] | None = None) -> None:
        if on_closed is not None:
            self._on_closed.append(on_closed)
        readers.add_reader(self._loop, self._channel.fd, self._on_control, "control")

    # -- state ---------------------------------------------------------------------------
    @property
    def interface_id(self) -> int:
        return self.config.interface_id

    @property
    def is_up(self) -> bool:
        return self._error is None

    @property
    def has_undelivered(self) -> bool:
        """True while the link is down but its receive queues still hold packets the peer
        published before it left (they are handed out until drained, :meth:`aclose`, or
        a couple of seconds pass)."""
        return bool(self._draining)

    @property
    def close_reason(self) -> str | None:
        """Why the link went down, as text (None while it is up): the peer's DISCONNECT
        reason, the reason given to :meth:`aclose`, ``"connection aborted"``, what was
        lost (``"peer closed the control socket"``, ``"control socket error: ..."``) or
        the protocol violation that ended it."""
        return self._reason

    @property
    def close_error(self) -> MemifError | None:
        """The exception that describes the end (None while the link is up).

        :class:`~aiomemif.errors.PeerDisconnectedError` (the peer closed normally) and
        :class:`~aiomemif.errors.ClosedResourceError` (this side closed) are normal ends;
        :class:`~aiomemif.errors.ConnectionLostError` and
        :class:`~aiomemif.errors.RemoteProtocolError` are not (see :attr:`closed_normally`).
        """
        return self._error

    @property
    def closed_by_peer(self) -> bool:
        """True once the peer ended the link (DISCONNECT, or the socket closed under us);
        False while it is up or when this side closed it (``aclose``, ``abort``, or a
        protocol violation detected here)."""
        return isinstance(self._error, DisconnectedError)

    @property
    def closed_normally(self) -> bool:
        """True once the link ended normally: the peer sent DISCONNECT or this side closed
        it. ``async for`` over a queue ends quietly then, and raises otherwise."""
        return _normal_end(self._error)

    async def wait_closed(self) -> MemifError:
        """Wait until the link is down; return the error describing why (never raises it)."""
        return await asyncio.shield(self._closed)

    # -- control socket -----------------------------------------------------------------
    def _on_control(self) -> None:
        while self._error is None:
            try:
                got = self._channel.recv_nowait()
                if got is None:
                    return
                data, fds = got
                for fd in fds:
                    close_fd(fd)
                if fds:
                    raise RemoteProtocolError("Unexpected fd")
                msg = decode_untrusted(data)
                if isinstance(msg, Disconnect):
                    self._teardown(PeerDisconnectedError(msg.reason))
                    return
                raise RemoteProtocolError("Unexpected message")
            except RemoteProtocolError as exc:
                self._fail(exc)
            except DisconnectedError as exc:
                self._teardown(exc)

    def _fail(self, exc: RemoteProtocolError) -> None:
        """The peer broke the protocol: tell it why, then tear down."""
        log.warning("memif %s: protocol error: %s", self.config.if_name, exc.reason)
        if self._error is not None:  # (down already: a queue was draining)
            return
        self._channel.send_disconnect(exc.reason)
        self._teardown(exc, exc.reason)

    # -- closing ---------------------------------------------------------------------------
    async def aclose(self, reason: str | None = None) -> None:
        """Send DISCONNECT with ``reason`` and tear down (idempotent, never raises).

        The default reason says who closed: ``closed by application 'NAME'``, with the
        name this side announced (INIT's for a client, HELLO's for a server).

        On a link the peer already ended, this drops what its receive queues had not
        handed out yet and frees the shared memory.
        """
        self._close(reason)
        await asyncio.sleep(0)

    def _close(self, reason: str | None = None) -> None:
        """What :meth:`aclose` does, without yielding (for ``finally`` blocks)."""
        if reason is None:
            reason = f"closed by application '{self._app_name}'"
        if self._error is None:
            self._channel.send_disconnect(reason)
            self._teardown(ClosedResourceError("connection closed"), reason)
        else:
            self._stop_draining()

    def abort(self) -> None:
        """Tear down at once, without telling the peer (idempotent); as :meth:`aclose`,
        it ends the draining of a link the peer ended."""
        self._teardown(ClosedResourceError("connection aborted"), "connection aborted")
        self._stop_draining()

    def _teardown(self, error: MemifError, reason: str | None = None) -> None:
        if self._error is not None:
            return
        self._error = error
        if reason is None:
            reason = error.reason if isinstance(error, DisconnectedError) else str(error)
        self._reason = reason
        if isinstance(error, DisconnectedError):
            log.info("memif %s down: %s", self.config.if_name, error.reason)
        readers.remove_reader(self._loop, self._channel.fd)
        self._channel.close()
        # The peer ended the link: packets it published before stay readable (the memory
        # stays mapped) until each queue has handed them out or the link is closed here.
        drain = isinstance(error, DisconnectedError)
        for q in self.rx_queues:
            if q._shutdown(error, drain):
                self._draining.add(q)
                q._on_drained = self._queue_drained
        for tq in self.tx_queues:
            tq._shutdown(error)
        for efd in self._efds:
            efd.close()
        if self._draining:  # ... for a while: nobody may come to read them
            self._drain_timer = self._loop.call_later(DRAIN_LIMIT, self._stop_draining)
        else:
            self._free_memory()
        if not self._closed.done():
            self._closed.set_result(error)
        callbacks, self._on_closed = self._on_closed, []
        for cb in callbacks:
            cb(self)

    def _queue_drained(self, queue: RxQueue) -> None:
        self._draining.discard(queue)
        if not self._draining:
            self._free_memory()

    def _stop_draining(self) -> None:
        for q in list(self._draining):
            q._shutdown(self._error or ClosedResourceError("connection closed"))

    def _free_memory(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        for ring in self._rings:
            ring.release()
        self._rings = []
        for region in self._regions:
            region.close()
        callbacks, self._on_freed = self._on_freed, []
        for cb in callbacks:
            cb(self)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- several queues ------------------------------------------------------------------
    def receive_all(self, max_packets: int = DEFAULT_BATCH) -> ReceiveAll:
        """Receive from every receive queue at once: ``async for qid, batch in
        conn.receive_all():``. Each batch is valid until the next is asked for (or it is
        released); iteration ends (or raises) like ``async for`` over one queue. See
        :class:`~aiomemif._aio.receive_all.ReceiveAll` for leaving early.

        Raises:
            ConfigurationError: ``max_packets`` is below 1.
        """
        return ReceiveAll(self.rx_queues, max_packets)

    def tx_queue_for(self, key: int) -> TxQueue:
        """The transmit queue for ``key`` (``tx_queues[key % len(tx_queues)]``): pass a
        flow hash to spread flows over the queues with each flow's packets in order, or
        a receive queue's ``qid`` to answer on the matching queue."""
        return self.tx_queues[key % len(self.tx_queues)]

    # -- details -------------------------------------------------------------------------
    def details(self) -> ConnectionDetails:
        """A snapshot of names, queues (with head/tail and counters) and regions."""
        up = self._error is None
        cfg = self.config

        def queue(q: RxQueue | TxQueue) -> QueueDetails:
            ring = q._endpoint.ring
            c = q.counters
            head = ring.head if up else 0
            tail = ring.tail if up else 0
            flags = ring.flags if up else 0
            bsize = cfg.buffer_size if self.role is w.Role.CLIENT else None
            return QueueDetails(
                q.qid, ring.size, flags, head, tail, bsize, c.packets, c.bytes,
                c.bad_descriptors, c.ring_full, c.interrupts_sent, c.interrupts_received,
                c.chained,
            )  # fmt: skip

        return ConnectionDetails(
            interface_name=cfg.if_name,
            app_name=self._app_name,  # (a server's: the HELLO name of its Server)
            peer_interface_name=self.peer_interface_name,
            peer_app_name=self.peer_app_name,
            interface_id=cfg.interface_id,
            secret_set=bool(cfg.secret),
            role=self.role,
            mode=cfg.mode,
            socket_address=self.address,
            rx_queues=tuple(queue(q) for q in self.rx_queues),
            tx_queues=tuple(queue(q) for q in self.tx_queues),
            regions=tuple(RegionDetails(r.index, r.size) for r in self._regions),
            link_up=up,
        )

    def __repr__(self) -> str:
        state = "up" if self._error is None else "down"
        return (
            f"<Connection {self.role.name.lower()} id={self.interface_id} "
            f"peer={self.peer_interface_name!r} {state}>"
        )


@final
class UntilClosed(Generic[T]):
    """Async iterator over ``get()`` results that ends quietly on ClosedResourceError
    (what ``Client.connections()`` and ``Server.connections()`` return)."""

    def __init__(self, get: Callable[[], Awaitable[T]]) -> None:
        self._get = get

    def __aiter__(self) -> UntilClosed[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self._get()
        except ClosedResourceError:
            raise StopAsyncIteration from None


def _normal_end(error: MemifError | None) -> bool:
    """True for the errors that mean a normal end of a link (DISCONNECT or our close)."""
    return isinstance(error, PeerDisconnectedError | ClosedResourceError)


def discard_queued(queue: asyncio.Queue[T], item: T) -> bool:
    """Remove ``item`` from ``queue`` if it is still waiting there (True if it was); the
    rest keep their order. (A connection that went down before anyone took it is not
    kept alive.)"""
    kept: list[T] = []
    found = False
    while not queue.empty():
        other = queue.get_nowait()
        if other is item:
            found = True
        else:
            kept.append(other)
    for other in kept:
        queue.put_nowait(other)
    return found
