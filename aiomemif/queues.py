"""Receive and transmit queues of a live connection (asyncio layer).

- :class:`RxQueue` is an async iterator of :class:`Batch` objects: zero-copy views into
  shared memory, valid until the next iteration or ``batch.release()``.
- :class:`TxQueue` sends bytes-like packets (or anything with ``__bytes__``); ``send``
  waits for ring space, ``send_nowait`` raises :class:`~aiomemif.errors.WouldBlockError`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final, overload

from . import _loopio
from . import _wire as w
from .errors import (
    BusyResourceError,
    ClosedResourceError,
    ConfigurationError,
    MemifError,
    RemoteProtocolError,
    StaleBatchError,
    WouldBlockError,
)
from .ring import MasterRx, MasterTx, QueueCounters, SlaveRx, SlaveTx
from .shm import EventFd

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Batch", "RxMode", "RxQueue", "TxQueue"]

#: Default most packets one receive returns.
DEFAULT_BATCH: Final = 256
#: A full transmit ring is retried this many times by yielding to the loop, then on a timer
#: (there is no "space available" signal in memif).
_SPIN_RETRIES: Final = 64
_RETRY_DELAY: Final = 0.001


class RxMode(enum.Enum):
    """How a receive queue waits for packets."""

    #: Sleep on the ring's eventfd; the peer signals after publishing (MASK_INT clear).
    INTERRUPT = "interrupt"
    #: Ask the peer not to signal (MASK_INT set) and poll the ring cooperatively.
    POLLING = "polling"


class Batch(Sequence[memoryview]):
    """Packets received in one go: read-only-by-convention views into shared memory.

    The views are valid until the batch is released: explicitly (``release()``, or leaving
    ``with batch:``), or implicitly by the next receive on the same queue. Releasing gives
    the buffers back to the ring; afterwards the views raise ``ValueError`` on use and the
    batch raises :class:`StaleBatchError`. Keep a packet with ``bytes(pkt)``.
    """

    __slots__ = ("_queue", "_released", "_views")

    def __init__(self, views: list[memoryview], queue: RxQueue | None) -> None:
        self._views = views
        self._queue = queue
        self._released = False

    def __len__(self) -> int:
        return len(self._views)

    @overload
    def __getitem__(self, index: int) -> memoryview: ...
    @overload
    def __getitem__(self, index: slice) -> list[memoryview]: ...
    def __getitem__(self, index: int | slice) -> memoryview | list[memoryview]:
        if self._released:
            raise StaleBatchError("this batch was released; its buffers are back in the ring")
        return self._views[index]

    def __iter__(self) -> Iterator[memoryview]:
        if self._released:
            raise StaleBatchError("this batch was released; its buffers are back in the ring")
        return iter(self._views)

    @property
    def released(self) -> bool:
        return self._released

    @property
    def nbytes(self) -> int:
        """Total payload bytes in the batch."""
        return sum(len(v) for v in self._views)

    def release(self) -> None:
        """Invalidate every view and return the buffers to the ring (idempotent)."""
        if self._released:
            return
        self._released = True
        for view in self._views:
            try:
                view.release()
            except BufferError:
                pass  # the caller exported it further (e.g. to numpy); it stays readable
        queue, self._queue = self._queue, None
        if queue is not None:
            queue._batch_released(self)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Interrupt:
    """A persistent reader on a ring eventfd that drains it and wakes one waiter."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, efd: EventFd, counters: QueueCounters
    ) -> None:
        self._loop = loop
        self._efd = efd
        self._counters = counters
        self._waiter: asyncio.Future[None] | None = None
        self._armed = False
        #: How many waits actually slept on the eventfd (for tests and tuning).
        self.sleeps = 0

    def arm(self) -> None:
        if not self._armed and self._efd.fd >= 0:
            _loopio.add_reader(self._loop, self._efd.fd, self._ready, "interrupt")
            self._armed = True

    def disarm(self) -> None:
        if self._armed:
            _loopio.remove_reader(self._loop, self._efd.fd)
            self._armed = False

    def _ready(self) -> None:
        # Drain first, then wake the receiver, which scans the ring afterwards.
        if self._efd.drain():
            self._counters.interrupts_received += 1
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        self.sleeps += 1
        fut = self._loop.create_future()
        self._waiter = fut
        try:
            await fut
        finally:
            self._waiter = None

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _fresh(exc: MemifError) -> MemifError:
    """A new exception like ``exc`` (so concurrent raisers do not share tracebacks)."""
    new = type(exc)(*exc.args)
    new.__cause__ = exc.__cause__
    return new


class _Queue:
    def __init__(self, conn: Connection, qid: int, efd: EventFd, counters: QueueCounters) -> None:
        self._conn = conn
        self.qid = qid
        self._efd = efd
        self.counters = counters
        self._error: MemifError | None = None

    def _check(self) -> None:
        if self._error is not None:
            raise _fresh(self._error)

    def _protocol_failure(self, exc: RemoteProtocolError) -> MemifError:
        self._conn._fail(exc)
        assert self._error is not None
        return _fresh(self._error)


class RxQueue(_Queue):
    """One receive ring (M2S on a client, S2M on a server)."""

    def __init__(
        self,
        conn: Connection,
        qid: int,
        endpoint: MasterRx | SlaveRx,
        efd: EventFd,
        mode: RxMode,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(conn, qid, efd, endpoint.counters)
        self._endpoint = endpoint
        self._interrupt = _Interrupt(loop, efd, endpoint.counters)
        self._batch: Batch | None = None
        self._busy = False
        self._mode = mode
        self.poll_interval = 0.0
        self._apply_mode()

    @property
    def mode(self) -> RxMode:
        return self._mode

    @property
    def interrupt_sleeps(self) -> int:
        """How many times a receive slept on the eventfd (rather than finding packets)."""
        return self._interrupt.sleeps

    def set_mode(self, mode: RxMode, poll_interval: float = 0.0) -> None:
        """Switch between interrupt and polling mode at run time.

        In polling mode a waiting receive yields to the loop (``poll_interval`` 0) or sleeps
        ``poll_interval`` seconds between scans, so it never starves other tasks.

        Raises:
            ClosedResourceError / DisconnectedError: the connection is down.
        """
        self._check()
        self._mode = RxMode(mode)
        self.poll_interval = poll_interval
        self._apply_mode()
        self._interrupt.wake()  # a waiting receive re-scans under the new mode

    def _apply_mode(self) -> None:
        ring = self._endpoint.ring
        if self._mode is RxMode.INTERRUPT:
            ring.set_flags(ring.flags & ~w.RING_FLAG_MASK_INT)
            self._interrupt.arm()
        else:
            ring.set_flags(ring.flags | w.RING_FLAG_MASK_INT)
            self._interrupt.disarm()

    def _poll(self, limit: int) -> list[memoryview]:
        if limit < 1:
            raise ConfigurationError(f"max_packets must be at least 1, got {limit}")
        self._check()
        if self._batch is not None:
            self._batch.release()
        ep = self._endpoint
        try:
            views = ep.poll(limit)
        except RemoteProtocolError as exc:
            raise self._protocol_failure(exc) from exc
        if not views and ep.held:
            ep.release()  # only bad descriptors: give their slots back now
        return views

    async def receive(self, max_packets: int = DEFAULT_BATCH) -> Batch:
        """Wait for packets and return them as a batch (releasing the previous batch).

        Raises:
            ClosedResourceError: the connection was closed by this side.
            DisconnectedError: the link went down (``PeerDisconnectedError`` with the peer's
                reason, ``ConnectionLostError``, or a protocol error's reason).
            BusyResourceError: another task is already receiving on this queue.
            ConfigurationError: ``max_packets`` is below 1.
        """
        if self._busy:
            raise BusyResourceError(f"rx queue {self.qid} already has a receiver")
        self._busy = True
        try:
            while True:
                views = self._poll(max_packets)
                if views:
                    batch = self._batch = Batch(views, self)
                    return batch
                if self._mode is RxMode.INTERRUPT:
                    await self._interrupt.wait()
                elif self.poll_interval:
                    await asyncio.sleep(self.poll_interval)
                else:
                    await asyncio.sleep(0)
        finally:
            self._busy = False

    def receive_nowait(self, max_packets: int = DEFAULT_BATCH) -> Batch:
        """Return the packets waiting now.

        Raises:
            WouldBlockError: none are waiting. Otherwise as :meth:`receive`.
        """
        if self._busy:
            raise BusyResourceError(f"rx queue {self.qid} already has a receiver")
        views = self._poll(max_packets)
        if not views:
            raise WouldBlockError(f"rx queue {self.qid} is empty")
        batch = self._batch = Batch(views, self)
        return batch

    def __aiter__(self) -> RxQueue:
        return self

    async def __anext__(self) -> Batch:
        """Next batch; iteration ends when this side closes the connection.

        Raises:
            DisconnectedError: the link went down from the peer's side.
        """
        try:
            return await self.receive()
        except ClosedResourceError:
            raise StopAsyncIteration from None

    def _batch_released(self, batch: Batch) -> None:
        if batch is self._batch:
            self._batch = None
        if self._error is None:
            self._endpoint.release()

    def _shutdown(self, error: MemifError) -> None:
        self._error = error
        if self._batch is not None:
            self._batch.release()
        self._interrupt.disarm()
        waiter = self._interrupt._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(_fresh(error))


class TxQueue(_Queue):
    """One transmit ring (S2M on a client, M2S on a server)."""

    def __init__(
        self, conn: Connection, qid: int, endpoint: SlaveTx | MasterTx, efd: EventFd
    ) -> None:
        super().__init__(conn, qid, efd, endpoint.counters)
        self._endpoint = endpoint

    def free_slots(self) -> int:
        """Slots available for packets right now.

        Raises:
            ClosedResourceError / DisconnectedError: the connection is down.
        """
        self._check()
        try:
            return self._endpoint.free()
        except RemoteProtocolError as exc:
            raise self._protocol_failure(exc) from exc

    def _write(self, packets: Sequence[object], start: int) -> int:
        self._check()
        ep = self._endpoint
        try:
            n = ep.write(packets, start)
        except RemoteProtocolError as exc:
            raise self._protocol_failure(exc) from exc
        if n and ep.ring.wants_signal():
            self._efd.signal()
            self.counters.interrupts_sent += 1
        return n

    def send_batch_nowait(self, packets: Iterable[object]) -> int:
        """Send as many packets as fit now, in order; return how many were sent.

        Raises:
            WouldBlockError: the ring had room for none of them.
            PacketTooLargeError: a packet is empty or larger than a buffer.
            TypeError: a packet is not bytes-like.
            ClosedResourceError / DisconnectedError: the connection is down.
        """
        seq = packets if isinstance(packets, list | tuple) else list(packets)
        n = self._write(seq, 0)
        if n == 0 and seq:
            self.counters.ring_full += 1
            raise WouldBlockError(f"tx queue {self.qid} is full")
        return n

    def send_nowait(self, packet: object) -> None:
        """Send one packet now. Raises as :meth:`send_batch_nowait`."""
        self.send_batch_nowait((packet,))

    async def send_batch(self, packets: Iterable[object]) -> int:
        """Send every packet, in order, waiting for ring space when the ring is full.

        Returns the number of packets sent (all of them). If cancelled while waiting, the
        packets published so far stay sent (``counters.packets`` tells how many).

        Raises:
            PacketTooLargeError, TypeError, ClosedResourceError, DisconnectedError: as
            :meth:`send_batch_nowait`.
        """
        seq = packets if isinstance(packets, list | tuple) else list(packets)
        total = len(seq)
        sent = self._write(seq, 0)
        retries = 0
        while sent < total:
            if retries == 0:
                self.counters.ring_full += 1
            await asyncio.sleep(0 if retries < _SPIN_RETRIES else _RETRY_DELAY)
            n = self._write(seq, sent)
            sent += n
            retries = 0 if n else retries + 1
        return total

    async def send(self, packet: object) -> None:
        """Send one packet, waiting for ring space. Raises as :meth:`send_batch`."""
        if not self._write((packet,), 0):
            await self.send_batch((packet,))

    def _shutdown(self, error: MemifError) -> None:
        self._error = error
