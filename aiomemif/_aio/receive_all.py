"""Receiving from every queue of a connection at once: ``async for qid, batch in
conn.receive_all()``.

Each receive queue has one receive in flight (a task); whichever finishes first is handed
out, several at once in queue order. A batch stays valid until the next batch *of its
queue* is asked for (the next ``__anext__`` after it was handed out restarts that queue's
receive, which releases it), the same rule as for one queue.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from types import TracebackType
from typing import final

from ..errors import ClosedResourceError, ConfigurationError, PeerDisconnectedError
from .batch import Batch
from .rx_queue import RxQueue

__all__ = ["ReceiveAll"]


async def _next_batch(rx: RxQueue, max_packets: int) -> Batch | None:
    """The queue's next batch, or None once its link ended normally."""
    try:
        return await rx.receive(max_packets)
    except (ClosedResourceError, PeerDisconnectedError):
        return None


@final
class ReceiveAll:
    """Async iterator of ``(qid, batch)`` over several receive queues (see the module).

    It ends quietly when every queue's link ended normally, and raises the first abnormal
    end (``ConnectionLostError``, ``RemoteProtocolError``), as ``async for`` over one queue
    does. Leaving early: use it as ``async with conn.receive_all() as batches:`` or call
    :meth:`aclose`, which cancels the receives in flight (dropping the iterator does too).
    While it runs, its queues are busy for other receivers.
    """

    def __init__(self, queues: Sequence[RxQueue], max_packets: int) -> None:
        self._tasks: dict[int, asyncio.Task[Batch | None]] = {}  # (first: __del__ reads it)
        if max_packets < 1:
            raise ConfigurationError(f"max_packets must be at least 1, got {max_packets}")
        self._queues = list(queues)
        self._max = max_packets
        self._ended: set[int] = set()
        self._ready: collections.deque[tuple[int, Batch]] = collections.deque()
        #: Index of the queue whose batch was handed out last (restarted on next call).
        self._last: int | None = None
        self._closed = False

    def __aiter__(self) -> ReceiveAll:
        return self

    async def __anext__(self) -> tuple[int, Batch]:
        """The next ``(qid, batch)`` from whichever queue has packets.

        Raises:
            ConnectionLostError, RemoteProtocolError: the link ended abnormally.
            BusyResourceError: another task receives on one of the queues.
        """
        if self._closed:
            raise StopAsyncIteration
        self._last = None
        self._start()
        while not self._ready:
            if not self._tasks:
                await self.aclose()
                raise StopAsyncIteration
            await asyncio.wait(self._tasks.values(), return_when=asyncio.FIRST_COMPLETED)
            for i in sorted(i for i, t in self._tasks.items() if t.done()):
                task = self._tasks.pop(i)
                error = task.exception()
                if error is not None:
                    await self.aclose()
                    raise error
                batch = task.result()
                if batch is None:
                    self._ended.add(i)
                else:
                    self._ready.append((i, batch))
        i, batch = self._ready.popleft()
        self._last = i
        return self._queues[i].qid, batch

    def _start(self) -> None:
        """A receive in flight on every queue that has none, has not ended, and whose
        batch is not waiting to be handed out."""
        waiting = {i for i, _ in self._ready}
        loop = asyncio.get_running_loop()
        for i, rx in enumerate(self._queues):
            if i in self._tasks or i in self._ended or i in waiting:
                continue
            self._tasks[i] = loop.create_task(_next_batch(rx, self._max))

    async def aclose(self) -> None:
        """Stop: cancel the receives in flight (idempotent; batches handed out stay valid
        until their queue is received from again)."""
        self._closed = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        # Their results or errors go unclaimed: nobody asked for them anymore.
        await asyncio.gather(*tasks, return_exceptions=True)
        self._ready.clear()

    def __del__(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    async def __aenter__(self) -> ReceiveAll:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
