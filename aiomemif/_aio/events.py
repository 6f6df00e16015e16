"""Event values of clients and servers, and the fan-out that streams them to subscribers.

A client's :class:`LinkEvent` says its link came up, went down, or that an attempt to
connect failed; a server's :class:`ServerEvent` says a client connected, was refused, or a
connection closed. :class:`EventStreams` hands every event to each subscriber's async
iterator, and ends them all (quietly, or raising an error) when its owner ends.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from typing import TYPE_CHECKING, Final, Generic, Literal, TypeVar, final

import attrs

from ..errors import MemifError

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "EventStream",
    "EventStreams",
    "HandshakeFailure",
    "LinkEvent",
    "ServerEvent",
    "copy_error",
]

E = TypeVar("E")


@final
@attrs.frozen(kw_only=True)
class LinkEvent:
    """A change seen by a :class:`~aiomemif.Client`.

    - ``"up"``: a connection was established (``connection`` is it);
    - ``"down"``: it went away (``reason``/``error`` say why; ``retry_in`` is the delay
      before the next attempt);
    - ``"failed"``: attempt number ``attempt`` (counting consecutive failures) did not
      connect (``reason``/``error``); ``retry_in`` is the delay before the next one, or
      None when the policy's ``attempts`` ran out and the client gives up.
    """

    kind: Literal["up", "down", "failed"]
    connection: Connection | None = None
    reason: str | None = None
    error: MemifError | None = None
    attempt: int = 0
    retry_in: float | None = None

    @property
    def up(self) -> bool:
        """True for an ``"up"`` event."""
        return self.kind == "up"


@final
@attrs.frozen
class HandshakeFailure:
    """A refused or failed handshake, as the server saw it (``Server.failures``)."""

    interface_id: int | None
    reason: str


@final
@attrs.frozen(kw_only=True)
class ServerEvent:
    """A change seen by a :class:`~aiomemif.Server`.

    - ``"connected"``: a handshake completed (``connection`` is the new link);
    - ``"refused"``: this server refused a handshake or gave up on it (``interface_id``
      is the id the client asked for, None if it never said; ``reason`` is what our
      DISCONNECT said, e.g. ``"Incorrect secret"`` or ``"Handshake timeout"``);
    - ``"abandoned"``: the client left before the link was up (its DISCONNECT reason, or
      what was lost), like a probe that only reads HELLO;
    - ``"closed"``: a connection ended (``reason`` is its ``close_reason``).
    """

    kind: Literal["connected", "refused", "abandoned", "closed"]
    interface_id: int | None = None
    reason: str | None = None
    connection: Connection | None = None


#: Most events a subscriber that does not keep up holds; older ones are dropped (and
#: counted in ``EventStream.dropped``).
MAX_BACKLOG: Final = 1024


@final
class _End:
    """What ends a subscriber's stream (with the error to raise, if any)."""

    def __init__(self, error: MemifError | None) -> None:
        self.error = error


def copy_error(error: MemifError) -> MemifError:
    """A new exception like ``error`` (several subscribers must not share a traceback)."""
    try:
        new = type(error)(*error.args)
    except TypeError:
        return error
    new.__cause__ = error.__cause__
    return new


@final
class EventStream(Generic[E]):
    """One subscriber's events: an async iterator, subscribed from the moment it was made
    (what ``Client.link_events()`` and ``Server.events()`` return).

    It holds at most ``MAX_BACKLOG`` events not yet taken (``dropped`` counts the older
    ones it let go). :meth:`aclose` (or dropping it) unsubscribes.
    """

    def __init__(self, end: _End | None) -> None:
        self._items: collections.deque[E] = collections.deque(maxlen=MAX_BACKLOG)
        self._end = end
        self._wake = asyncio.Event()
        #: Events dropped because this subscriber did not keep up.
        self.dropped = 0

    def _put(self, event: E) -> None:
        if len(self._items) == MAX_BACKLOG:
            self.dropped += 1
        self._items.append(event)
        self._wake.set()

    def _finish(self, end: _End) -> None:
        if self._end is None:
            self._end = end
        self._wake.set()

    def __aiter__(self) -> EventStream[E]:
        return self

    async def __anext__(self) -> E:
        """The next event; ends when the owner ends (raising its error, if it has one).

        Raises:
            MemifError: the error the owner ended with (a client whose attempts ran out).
        """
        while True:
            if self._items:
                return self._items.popleft()
            end = self._end
            if end is not None:
                self._end = _End(None)  # the error is raised once
                if end.error is not None:
                    raise copy_error(end.error)
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()

    async def aclose(self) -> None:
        """Unsubscribe: later calls end the iteration (idempotent)."""
        self._items.clear()
        self._end = _End(None)
        self._wake.set()


@final
class EventStreams(Generic[E]):
    """Fan-out of events to any number of subscribers (see :meth:`subscribe`)."""

    def __init__(self) -> None:
        self._streams: weakref.WeakSet[EventStream[E]] = weakref.WeakSet()
        self._end: _End | None = None

    def publish(self, event: E) -> None:
        """Give ``event`` to every current subscriber (never blocks)."""
        for stream in list(self._streams):
            if stream._end is None:
                stream._put(event)

    def end(self, error: MemifError | None = None) -> None:
        """End every stream, now and for later subscribers: quietly, or raising ``error``
        once the events before it are consumed (idempotent: the first end stays)."""
        if self._end is not None:
            return
        self._end = _End(error)
        for stream in list(self._streams):
            stream._finish(self._end)

    def subscribe(self) -> EventStream[E]:
        """A new subscriber, receiving every event published from now on."""
        stream: EventStream[E] = EventStream(self._end)
        self._streams.add(stream)
        return stream
