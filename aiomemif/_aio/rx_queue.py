"""Receive queues of a live connection (asyncio layer); transmit queues are in tx_queue.py.

:class:`RxQueue` is an async iterator of :class:`~aiomemif._aio.batch.Batch` objects:
zero-copy packets in shared memory, valid until the next receive or ``batch.release()``,
which is exactly when their buffers go back to the ring. What both kinds of queue share
(:class:`QueueBase`) is here too.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from typing import Final, final

from .._core import wire as w
from .._core.ring import QueueCounters
from .._core.rx import ClientRx, RxRun, ServerRx
from .._os import readers
from .._os.eventfd import EventFd
from .._os.regions import fence
from ..errors import (
    BusyResourceError,
    ClosedResourceError,
    ConfigurationError,
    MemifError,
    PeerDisconnectedError,
    RemoteProtocolError,
    WouldBlockError,
)
from .batch import Batch

__all__ = ["QueueBase", "RxMode", "RxQueue"]

_HEAD: Final = w.RING_HEAD_OFF // 2
_FLAGS: Final = w.RING_FLAGS_OFF // 2
_MASK_INT: Final = w.RING_FLAG_MASK_INT

#: Default most packets one receive returns.
DEFAULT_BATCH: Final = 256
#: Default time a polling or adaptive queue keeps spinning (yielding to the loop between
#: scans) after its last packet before it slows down (polling) or sleeps (adaptive).
DEFAULT_SPIN_BUDGET: Final = 100e-6
#: Default scan interval of a polling queue once its spin budget is spent.
DEFAULT_POLL_INTERVAL: Final = 0.001
#: A queue asleep on its eventfd re-scans the ring this often even without a signal: a
#: peer without a store-load fence between publishing and reading MASK_INT can (very
#: rarely) miss our unmasking, and this bounds the delay that costs.
_SAFETY_RESCAN: Final = 0.01
#: A spinning queue holds the event loop for at most this long before it lets other
#: callbacks run (it then keeps spinning until its spin budget is spent).
_SPIN_SLICE: Final = 50e-6
#: Fair share: a queue whose ring is never empty never has to wait, so each receive (or
#: send) that did not suspend owes the loop ``packets + FAIR_CALL`` units; once the debt
#: reaches ``FAIR_SHARE`` the next call yields to the loop once (about every 250 calls of
#: one packet, or every 28 of 256) so that other tasks and the control socket run.
FAIR_SHARE: Final = 8192
FAIR_CALL: Final = 32


class RxMode(enum.Enum):
    """How a receive queue waits for packets (switchable at run time)."""

    #: Sleep on the ring's eventfd; the peer signals after publishing. MASK_INT is clear
    #: while the queue sleeps and set again once it wakes, until it next finds the ring
    #: empty: a receiver that keeps up costs the sender no system calls.
    INTERRUPT = "interrupt"
    #: Ask the peer not to signal (MASK_INT set); spin for the spin budget after traffic
    #: (holding the loop for at most 50 µs at a time), then scan every ``poll_interval``.
    #: Never sleeps on the eventfd.
    POLLING = "polling"
    #: Like polling while traffic flows; once the spin budget passes without packets,
    #: clear MASK_INT, scan once more and sleep on the eventfd.
    ADAPTIVE = "adaptive"


_INTERRUPT: Final = RxMode.INTERRUPT


class _Interrupt:
    """A persistent reader on a ring eventfd: wakes the receive asleep on it, and drains it.

    A signal that finds a receive asleep and the ring holding unread slots (``pending``)
    wakes it at once and leaves the eventfd as it is: the woken receive drains it
    (:meth:`settle`) before it next sleeps, after its packets went up to the application,
    so the read is off the path from the peer's signal to the receive returning (and, in a
    ping-pong, to the answer). A report the loop queued before that drain (asyncio runs it
    after the woken task, in the same turn) may be stale: it reads nothing and wakes only
    for unread slots; an eventfd still readable is reported again. Every other report
    drains, then wakes a receive asleep only if the ring holds unread slots: a signal
    consumed by a drain is for a slot published before it, which the ring shows.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        efd: EventFd,
        counters: QueueCounters,
        on_error: Callable[[RemoteProtocolError], None],
        pending: Callable[[], bool],
    ) -> None:
        self._loop = loop
        self._efd = efd
        self._on_error = on_error
        self._counters = counters
        self._pending = pending
        self._waiter: asyncio.Future[bool] | None = None
        #: A receive was woken by the readable eventfd and nothing has drained it since.
        self._undrained = False
        #: The receive drained the eventfd since the loop last reported it readable.
        self._fresh = False
        self._armed = False
        #: The safety re-scan timer (one at a time, only while a receive sleeps).
        self._safety: asyncio.TimerHandle | None = None
        #: How many receives slept on the eventfd (for tests and tuning).
        self.sleeps = 0

    def arm(self) -> None:
        if not self._armed and self._efd.fd >= 0:
            readers.add_reader(self._loop, self._efd.fd, self._ready, "interrupt")
            self._armed = True

    def disarm(self) -> None:
        if self._armed:
            readers.remove_reader(self._loop, self._efd.fd)
            self._armed = False

    def _ready(self) -> None:
        fut = self._waiter
        if fut is not None and fut.done():
            fut = None  # (fut: a receive asleep, or None)
        if self._fresh:  # this report may predate the receive's drain: no read
            self._fresh = False
            if fut is not None and self._pending():
                self._undrained = True
                fut.set_result(True)
            return
        if fut is not None and not self._undrained and self._pending():
            self._undrained = True  # the receive drains it before it sleeps again
            fut.set_result(True)
            return
        self._undrained = False
        if self._drain() and fut is not None and self._pending():
            fut.set_result(True)

    def _drain(self) -> bool:
        """Read the eventfd; False if the link went down over it (the peer made it block)."""
        try:
            if self._efd.drain():
                self._counters.interrupts_received += 1
        except RemoteProtocolError as exc:
            self._on_error(exc)  # the connection goes down; waiters get its error
            return False
        return True

    def settle(self) -> None:
        """Before a receive sleeps again: drain the eventfd that woke it, if still due (the
        ring is scanned after this, so a signal it consumes is never lost)."""
        if self._undrained and self._armed:
            self._undrained = False
            self._fresh = True
            self._drain()

    def waiter(self) -> asyncio.Future[bool]:
        """A future for one sleep: True once woken, False when the safety re-scan timer
        fires (at most ``_SAFETY_RESCAN`` seconds later). The caller awaits it and then
        calls :meth:`clear` (a plain future saves a coroutine on every wake-up)."""
        fut: asyncio.Future[bool] = self._loop.create_future()
        self._waiter = fut
        if self._safety is None:  # one timer serves consecutive sleeps
            self._safety = self._loop.call_later(_SAFETY_RESCAN, self._rescan)
        return fut

    def clear(self) -> None:
        """The sleep that :meth:`waiter` began is over (woken, timed out or cancelled)."""
        self._waiter = None

    async def nap(self, seconds: float) -> None:
        """Sleep ``seconds`` unless woken first (``wake``/``fail`` reach it like ``wait``)."""
        fut: asyncio.Future[bool] = self._loop.create_future()
        self._waiter = fut
        timer = self._loop.call_later(seconds, _settle, fut, False)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiter = None

    def _rescan(self) -> None:
        self._safety = None
        if self._waiter is not None:
            _settle(self._waiter, False)

    def stop(self) -> None:
        """Cancel the safety timer (the queue is shutting down)."""
        if self._safety is not None:
            self._safety.cancel()
            self._safety = None

    def wake(self) -> None:
        if self._waiter is not None:
            _settle(self._waiter, True)

    def fail(self, error: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)


def _settle(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def fresh(exc: MemifError) -> MemifError:
    """A new exception like ``exc`` (so concurrent raisers do not share tracebacks)."""
    new = type(exc)(*exc.args)
    new.__cause__ = exc.__cause__
    return new


#: How a queue reports that the peer broke the protocol: the connection sends DISCONNECT
#: with the reason and shuts every queue down (which sets the queue's error).
ProtocolErrorHandler = Callable[[RemoteProtocolError], None]


class QueueBase:
    """What receive and transmit queues share: identity, counters, the link's error.

    ``on_protocol_error`` is called when the peer broke the protocol on this queue; ``link``
    identifies the connection (queues of one connection share it).
    """

    def __init__(
        self,
        qid: int,
        efd: EventFd,
        counters: QueueCounters,
        on_protocol_error: ProtocolErrorHandler,
        link: object,
    ) -> None:
        self.qid = qid
        self._efd = efd
        self.counters = counters
        self._on_protocol_error = on_protocol_error
        self._link = link
        self._error: MemifError | None = None
        #: Fair-share debt since a call on this queue last suspended (see FAIR_SHARE).
        self._owed = 0

    def _check(self) -> None:
        if self._error is not None:
            raise fresh(self._error)

    async def _fair_yield(self) -> None:
        """Let the loop run once: the debt reached FAIR_SHARE (the caller compares)."""
        self._owed = 0
        await asyncio.sleep(0)

    def _protocol_failure(self, exc: RemoteProtocolError) -> MemifError:
        self._on_protocol_error(exc)
        if self._error is None:  # the link was already down (a queue still draining)
            self._end(exc)
        assert self._error is not None
        return fresh(self._error)

    def _end(self, error: MemifError) -> None:
        """Shut this queue down for good (each kind of queue says how)."""
        raise NotImplementedError


@final
class RxQueue(QueueBase):
    """One receive ring (M2S on a client, S2M on a server)."""

    def __init__(
        self,
        qid: int,
        endpoint: ServerRx | ClientRx,
        efd: EventFd,
        mode: RxMode,
        loop: asyncio.AbstractEventLoop,
        *,
        on_protocol_error: ProtocolErrorHandler,
        link: object,
    ) -> None:
        super().__init__(qid, efd, endpoint.counters, on_protocol_error, link)
        self._endpoint = endpoint
        #: The ring header (u16 words), and the word the peer publishes into: tail (M2S,
        #: we are the client) or head.
        self._header = endpoint.ring.header
        self._published = endpoint.ring.tail_index if isinstance(endpoint, ClientRx) else _HEAD
        self._interrupt = _Interrupt(loop, efd, endpoint.counters, on_protocol_error, self._pending)
        self._batch: Batch | None = None
        self._busy = False
        #: After the peer ended the link: its error, while packets it published before
        #: are still handed out (at most ``_drain_left`` more), then the queue shuts down.
        self._ending: MemifError | None = None
        self._drain_left = 0
        #: Called once a draining queue has shut down (the connection frees the memory).
        self._on_drained: Callable[[RxQueue], None] | None = None
        self._mode = mode
        self.spin_budget = DEFAULT_SPIN_BUDGET
        self.poll_interval = DEFAULT_POLL_INTERVAL
        self._last_packet = 0.0
        self._apply_mode()

    @property
    def mode(self) -> RxMode:
        return self._mode

    @property
    def interrupt_sleeps(self) -> int:
        """How many times a receive slept on the eventfd (rather than finding packets)."""
        return self._interrupt.sleeps

    def set_mode(
        self,
        mode: RxMode,
        *,
        spin_budget: float = DEFAULT_SPIN_BUDGET,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        """Switch the receive mode at run time (a waiting receive re-scans at once).

        ``spin_budget`` bounds how long a polling or adaptive queue keeps scanning without
        pause after its last packet; ``poll_interval`` is how often a polling queue scans
        after that. Neither mode can hold a core while no traffic flows.

        Raises:
            ConfigurationError: a negative budget or interval.
            ClosedResourceError / DisconnectedError / RemoteProtocolError: the link is
                down (closed here, by the peer, or over a protocol violation).
        """
        if spin_budget < 0 or poll_interval < 0:
            raise ConfigurationError("spin_budget and poll_interval must not be negative")
        self._check()
        self._mode = RxMode(mode)
        self.spin_budget = spin_budget
        self.poll_interval = poll_interval
        self._apply_mode()
        self._interrupt.wake()

    def _mask(self, masked: bool) -> None:
        header = self._header
        if masked:
            header[_FLAGS] |= _MASK_INT
        else:
            header[_FLAGS] &= ~_MASK_INT

    def _apply_mode(self) -> None:
        self._mask(self._mode is not RxMode.INTERRUPT)
        if self._mode is RxMode.POLLING:
            self._interrupt.disarm()
        else:
            self._interrupt.arm()

    def set_headroom(self, headroom: int) -> None:
        """Client only: keep ``headroom`` bytes free in front of received data (from the
        next refill on), like ``memif_refill_queue(..., headroom)``.

        Raises:
            ConfigurationError: not a client queue, or headroom not below the buffer size.
        """
        ep = self._endpoint
        if not isinstance(ep, ClientRx):
            raise ConfigurationError("only a client offers receive buffers (and headroom)")
        if not 0 <= headroom < ep.buffer_size:
            raise ConfigurationError(f"headroom must be in 0..{ep.buffer_size - 1}")
        ep.set_headroom(headroom)

    def _poll(self, limit: int) -> RxRun | None:
        """Take up to ``limit`` packets, releasing the batch in hand first; None if none
        are waiting. Raises as :meth:`receive`."""
        if limit < 1:
            raise ConfigurationError(f"max_packets must be at least 1, got {limit}")
        if self._error is not None:  # (_check, inlined)
            raise fresh(self._error)
        if self._batch is not None:
            self._batch.release()
        ep = self._endpoint
        if self._ending is None:
            if self._header[self._published] == ep.read and not ep.held:
                # Nothing published since our last read: what ep.poll would find (and no
                # index it could reject), without building an empty run.
                return None
        else:
            limit = min(limit, self._drain_left)
            if limit == 0:
                return self._drained()
        try:
            run = ep.poll(limit)
        except RemoteProtocolError as exc:
            raise self._protocol_failure(exc) from exc
        if not run.packets and ep.held:
            ep.release()  # only bad descriptors: give their slots back now
        if self._ending is not None:
            if not run.packets:
                return self._drained()
            self._drain_left -= len(run.packets)
        return run if run.packets else None

    def _end(self, error: MemifError) -> None:
        self._shutdown(error)

    def _drained(self) -> RxRun:
        """A draining queue found nothing more: shut down now; raises the link's error."""
        error = self._ending
        assert error is not None
        self._shutdown(error)
        raise fresh(error)

    def _batch_of(self, run: RxRun) -> Batch:
        batch = self._batch = Batch(run, self)
        return batch

    async def receive(self, max_packets: int = DEFAULT_BATCH) -> Batch:
        """Wait for packets and return them as a batch (releasing the previous batch).

        Raises:
            ExportedBufferError: the previous batch could not be released, a view of it
                being still exported (see ``Batch.release``); nothing was received.
            ClosedResourceError: the connection was closed by this side.
            DisconnectedError: the link went down from the peer's side
                (``PeerDisconnectedError`` with the peer's reason, ``ConnectionLostError``).
            RemoteProtocolError: the peer broke the protocol (we sent DISCONNECT).
            BusyResourceError: another task is already receiving on this queue.
            ConfigurationError: ``max_packets`` is below 1.
        """
        if self._busy:
            raise BusyResourceError(f"rx queue {self.qid} already has a receiver")
        self._busy = True
        try:
            if self._owed >= FAIR_SHARE:  # packets kept coming
                await self._fair_yield()
            while True:
                run = self._poll(max_packets)
                if run is not None:
                    if self._mode is not _INTERRUPT:
                        self._last_packet = time.perf_counter()
                    self._owed += len(run.packets) + FAIR_CALL
                    return self._batch_of(run)
                # What _wait does, without a coroutine of its own on the hot paths.
                mode = self._mode
                if mode is _INTERRUPT:
                    await self._sleep()
                    self._owed = 0
                    continue
                spun = self._spin()
                if spun is None:
                    await self._idle(mode)
                    self._owed = 0
                elif not spun:
                    await asyncio.sleep(0)  # let the loop run between spin slices
                    self._owed = 0
        finally:
            self._busy = False

    async def _wait(self) -> None:
        """Wait for the ring the way the mode says (at most one spin slice, then return)."""
        mode = self._mode
        if mode is _INTERRUPT:
            await self._sleep()
            return
        spun = self._spin()
        if spun is None:
            await self._idle(mode)
        elif not spun:
            await asyncio.sleep(0)  # let the loop run between spin slices

    def _spin(self) -> bool | None:
        """Polling or adaptive: scan the ring index without yielding for one spin slice (at
        most until the spin budget is spent); True as soon as the peer published something,
        False if the slice ran out, None if the spin budget was already spent."""
        perf = time.perf_counter
        until = self._last_packet + self.spin_budget
        now = perf()
        if now >= until:
            return None
        header, index, read = self._header, self._published, self._endpoint.read
        end = min(until, now + _SPIN_SLICE)
        while header[index] == read:
            if perf() >= end:
                return False
        return True

    async def _idle(self, mode: RxMode) -> None:
        """The spin budget is spent: nap for the poll interval (polling) or sleep on the
        eventfd (adaptive, which then spins again for the next packets)."""
        if mode is RxMode.POLLING:
            await self._interrupt.nap(self.poll_interval)  # set_mode/close cut it short
            return
        await self._sleep()
        self._last_packet = time.perf_counter()

    async def _sleep(self) -> None:
        """Unmask, re-check the ring (a packet may have been published before the peer saw
        the flag change), then sleep on the eventfd until signalled; masked again after."""
        interrupt = self._interrupt
        interrupt.sleeps += 1
        mode = self._mode
        header, index, ep = self._header, self._published, self._endpoint
        if interrupt._undrained:
            interrupt.settle()
        header[_FLAGS] &= ~_MASK_INT  # (_mask and _pending inlined: every sleep's path)
        fence()
        try:
            while self._error is None and self._mode is mode and header[index] == ep.read:
                if await interrupt.waiter():
                    break
        finally:
            interrupt._waiter = None  # (clear(), inlined)
            if self._error is None and self._mode is mode:
                header[_FLAGS] |= _MASK_INT

    def _pending(self) -> bool:
        """True if the peer has published slots we have not read (no side effects)."""
        return self._header[self._published] != self._endpoint.read

    async def _readable(self) -> None:
        """Wait until the ring has something to read, reading nothing (what
        ``receive_all`` waits for on each queue, so that it takes only what it hands out).

        Raises:
            As :meth:`receive`, once the link is down and nothing is left to drain.
        """
        if self._busy:
            raise BusyResourceError(f"rx queue {self.qid} already has a receiver")
        self._busy = True
        try:
            while True:
                self._check()
                if self._pending():
                    return
                if self._ending is not None:
                    if self._batch is not None:
                        return  # the next receive releases it and ends the queue
                    self._drained()
                await self._wait()
        finally:
            self._busy = False

    def receive_nowait(self, max_packets: int = DEFAULT_BATCH) -> Batch:
        """Return the packets waiting now.

        Raises:
            WouldBlockError: none are waiting. Otherwise as :meth:`receive`.
        """
        if self._busy:
            raise BusyResourceError(f"rx queue {self.qid} already has a receiver")
        run = self._poll(max_packets)
        if run is None:
            raise WouldBlockError(f"rx queue {self.qid} is empty")
        return self._batch_of(run)

    def __aiter__(self) -> RxQueue:
        return self

    async def __anext__(self) -> Batch:
        """Next batch; iteration ends quietly when the link ends normally (the peer sent
        DISCONNECT, or this side closed the connection).

        Raises:
            ConnectionLostError: the socket closed without DISCONNECT.
            RemoteProtocolError: the peer broke the protocol (we sent DISCONNECT).
            BusyResourceError: another task is receiving on this queue.
            ExportedBufferError: the previous batch has a view still exported.
        """
        try:
            return await self.receive()
        except (ClosedResourceError, PeerDisconnectedError):
            raise StopAsyncIteration from None

    def _batch_released(self, batch: Batch) -> None:
        if batch is self._batch:
            self._batch = None
        if self._error is None:
            self._endpoint.release()

    def _shutdown(self, error: MemifError, drain: bool = False) -> bool:
        """The link is down. With ``drain`` (the peer ended it) and packets waiting in the
        ring or a batch in hand, keep the batch valid and hand out the rest (one ring's
        worth at most: a peer cannot keep the queue alive by publishing more), and return
        True; :meth:`_drained` ends it later. Otherwise shut down now and return False."""
        self._interrupt.disarm()
        self._interrupt.stop()
        held = self._batch is not None  # (the batch in hand stays valid while draining)
        if drain and self._error is None and self._ending is None and (held or self._pending()):
            self._ending = error
            self._drain_left = self._endpoint.ring.size
            self._interrupt.wake()  # a sleeping receive re-scans and finds them
            return True
        if self._error is not None:
            return False
        self._error = error
        self._ending = None
        if self._batch is not None:
            self._batch._drop()  # (an exported view keeps its region mapped until it goes)
        self._interrupt.fail(fresh(error))
        if self._on_drained is not None:
            on_drained, self._on_drained = self._on_drained, None
            on_drained(self)
        return False
