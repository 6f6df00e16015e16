"""Receiving from every queue of a connection at once: ``async for qid, batch in
conn.receive_all()``.

Each receive queue has one wait in flight (a task) that takes nothing from the ring; when
queues become readable, batches are received from them one at a time, in queue order, as
the consumer asks. So leaving early loses nothing, and only one batch is ever held: the
one handed out last, released when the next is asked for (as with one queue's ``async
for``), so no queue's buffers stay away from its ring while the others are waited for.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from types import TracebackType
from typing import final

from ..errors import (
    BusyResourceError,
    ClosedResourceError,
    ConfigurationError,
    MemifError,
    PeerDisconnectedError,
    WouldBlockError,
)
from .batch import Batch
from .rx_queue import RxQueue

__all__ = ["ReceiveAll"]


@final
class ReceiveAll:
    """Async iterator of ``(qid, batch)`` over several receive queues (see the module).

    It ends quietly when every queue's link ended normally, and raises the first abnormal
    end (``ConnectionLostError``, ``RemoteProtocolError``) once every queue handed out
    what it still had, as ``async for`` over one queue does. Leaving early: use it as
    ``async with conn.receive_all() as batches:`` or call :meth:`aclose`, which cancels
    the waits in flight (dropping the iterator does too); nothing is lost. While it runs,
    its queues are busy for other receivers.
    """

    def __init__(self, queues: Sequence[RxQueue], max_packets: int) -> None:
        self._tasks: dict[int, asyncio.Task[None]] = {}  # (first: __del__ reads it)
        if max_packets < 1:
            raise ConfigurationError(f"max_packets must be at least 1, got {max_packets}")
        self._queues = list(queues)
        self._max = max_packets
        #: Queues found readable, in the order they will be received from.
        self._readable: collections.deque[int] = collections.deque()
        self._ended: set[int] = set()
        #: The first abnormal end, raised once every other queue has ended too.
        self._error: BaseException | None = None
        #: The batch handed out last (released by the next ``__anext__``).
        self._held: Batch | None = None
        self._closed = False

    def __aiter__(self) -> ReceiveAll:
        return self

    async def __anext__(self) -> tuple[int, Batch]:
        """The next ``(qid, batch)`` from whichever queue has packets.

        Raises:
            ConnectionLostError, RemoteProtocolError: the link ended abnormally (after
                every queue handed out what it still had).
            BusyResourceError: another task receives on one of the queues.
            ExportedBufferError: the batch handed out last has a view still exported
                (see ``Batch.release``); it stays held and the next call tries again.
        """
        if self._held is not None:
            self._held.release()  # its buffers go back to their ring now
            self._held = None
        while not self._closed:
            while self._readable:
                i = self._readable.popleft()
                try:
                    batch = self._queues[i].receive_nowait(self._max)
                except WouldBlockError:  # only bad descriptors were there
                    continue
                except (ClosedResourceError, PeerDisconnectedError):
                    self._ended.add(i)
                    continue
                except MemifError as exc:
                    self._ended.add(i)
                    self._error = self._error or exc
                    continue
                self._held = batch
                return self._queues[i].qid, batch
            self._start()
            if not self._tasks:
                error, self._error = self._error, None
                await self.aclose()
                if error is not None:
                    raise error
                break
            await asyncio.wait(self._tasks.values(), return_when=asyncio.FIRST_COMPLETED)
            for i in sorted(i for i, t in self._tasks.items() if t.done()):
                task = self._tasks.pop(i)
                if isinstance(task.exception(), BusyResourceError):
                    await self.aclose()
                    task.result()  # raises it: someone else receives on this queue
                self._readable.append(i)  # readable, or ended: receive_nowait tells
        raise StopAsyncIteration

    def _start(self) -> None:
        """A wait in flight on every queue that has none and has not ended."""
        loop = asyncio.get_running_loop()
        for i, rx in enumerate(self._queues):
            if i not in self._tasks and i not in self._ended:
                self._tasks[i] = loop.create_task(rx._readable())

    async def aclose(self) -> None:
        """Stop: cancel the waits in flight (idempotent). Nothing is taken from a ring
        that was not handed out; the batch handed out last stays valid until it is
        released or its queue is received from again."""
        self._closed = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        # Their results or errors go unclaimed: nobody asked for them anymore.
        await asyncio.gather(*tasks, return_exceptions=True)

    def __del__(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    async def __aenter__(self) -> ReceiveAll:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
