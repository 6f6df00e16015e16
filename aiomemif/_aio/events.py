"""Event values of clients and servers, and the fan-out that streams them to subscribers.

A client's :class:`LinkEvent` says its link came up, went down, or that an attempt to
connect failed; a server's :class:`ServerEvent` says a client connected, was refused, or a
connection closed. :class:`EventStreams` hands every event to each subscriber's async
iterator, and ends them all (quietly, or raising an error) when its owner ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Generic, Literal, TypeVar, final

import attrs

from ..errors import MemifError

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["EventStreams", "LinkEvent", "ServerEvent"]

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
@attrs.frozen(kw_only=True)
class ServerEvent:
    """A change seen by a :class:`~aiomemif.Server`.

    - ``"connected"``: a handshake completed (``connection`` is the new link);
    - ``"refused"``: a handshake was refused or failed (``interface_id`` is the id the
      client asked for, None if it never said; ``reason`` is what the DISCONNECT said);
    - ``"closed"``: a connection ended (``reason`` is its ``close_reason``).
    """

    kind: Literal["connected", "refused", "closed"]
    interface_id: int | None = None
    reason: str | None = None
    connection: Connection | None = None


@final
class _End:
    """What ends a subscriber's stream (with the error to raise, if any)."""

    def __init__(self, error: MemifError | None) -> None:
        self.error = error


@final
class EventStreams(Generic[E]):
    """Fan-out of events to any number of async iterators (see :meth:`subscribe`)."""

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[E | _End]] = []
        self._end: _End | None = None

    def publish(self, event: E) -> None:
        """Give ``event`` to every current subscriber (never blocks)."""
        for q in self._queues:
            q.put_nowait(event)

    def end(self, error: MemifError | None = None) -> None:
        """End every stream, now and for later subscribers: quietly, or raising ``error``
        once the events before it are consumed (idempotent: the first end stays)."""
        if self._end is not None:
            return
        self._end = _End(error)
        for q in self._queues:
            q.put_nowait(self._end)

    async def subscribe(self) -> AsyncGenerator[E, None]:
        """Events from now on, until :meth:`end` (which raises its error here, if any).

        Raises:
            MemifError: the error given to :meth:`end`.
        """
        if self._end is not None:
            if self._end.error is not None:
                raise self._end.error
            return
        q: asyncio.Queue[E | _End] = asyncio.Queue()
        self._queues.append(q)
        try:
            while not isinstance(item := await q.get(), _End):
                yield item
            if item.error is not None:
                raise item.error
        finally:
            self._queues.remove(q)
