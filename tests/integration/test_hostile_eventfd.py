"""Peers that race our eventfd syscalls to hold the event loop (issue 15 item 4, issue 17
case 2), in both roles.

An interrupt eventfd's open file description, O_NONBLOCK included, is shared with the
peer. A peer that clears the flag and fills the counter between our ``poll(POLLOUT)`` and
our ``write`` makes the write block; one that steals the count between our readiness check
and our ``read`` (kernels whose eventfds refuse ``RWF_NOWAIT`` reads) makes the read block.
The watchdog (``aiomemif._os.watchdog``) frees either; the bound on how long the loop may be
held is :data:`STALL_BOUND`, stated in docs/protocol.md §5 and the watchdog's docstring
(the tests allow :data:`ALLOWED`, twice that, for a busy shared machine).
:func:`support.stall.heartbeat` measures the longest time the loop could not run anything.

- **Staged races**: a trap standing in for the library's readiness poller plays the peer
  exactly inside the window (it fills the counter and clears O_NONBLOCK once the poll has
  said "writable"), so the race happens every time; the tests check that the write really
  blocked (the watchdog counted a rescue). Attackers in forked children (no GIL shared
  with the loop, like a native peer) then try to keep it blocked: writers of a full count
  waiting to refill the counter the moment the watchdog empties it, or a process
  spinning on such writes.
- **A real race**: a forked child fills the counter at random moments during a send
  burst, hoping to land in the window (skips when it never does).
- **Older kernels** (no ``RWF_NOWAIT`` for eventfd reads) are simulated by refusing that
  flag, for both the watchdog's rescue of a write and the read race of a drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import platform
import select
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Final

import attrs
import pytest
from support.hostile import M2S, S2M, RawPeer, set_blocking
from support.hostile_links import fake_client_link, fake_server_link
from support.links import ROLES
from support.stall import Shared, forked, heartbeat

import aiomemif
from aiomemif._os.eventfd import EventFd
from aiomemif._os.watchdog import TICK, stuck_rescues, ticks

#: The longest the event loop may be held by any of these attacks (seconds). The
#: watchdog finds a stuck syscall within one to two 10 ms ticks; the rest is the race
#: against a peer that refills the counter. Measured worst cases are in the report of
#: issue 15 and in docs/protocol.md §5; this is the documented bound.
STALL_BOUND: Final = 0.1
#: What the tests allow: twice the bound. On a shared two-cpu machine a spinning attacker
#: child and other work take the cpus the watchdog and the loop need (a clean CI run once
#: measured 0.102 s there); what the tests guard against is a stall without bound (before
#: the watchdog's fixes: about 1 s, or a hang).
ALLOWED: Final = 2 * STALL_BOUND
EVENTFD_MAX: Final = (1 << 64) - 2  # the largest count an eventfd holds
ATTACK: Final = 5.0  # the most seconds an attacking child lives
ROUNDS: Final = 3  # races per test, each on a fresh link, armed at a different send
BURST: Final = 40  # sends per round (the trap fires during it)
_SYSCALLS: Final = {"x86_64": (0, 1), "aarch64": (63, 64)}  # (read, write)
READ_NR, WRITE_NR = _SYSCALLS.get(platform.machine(), (-2, -2))

# Slots of the Shared block the children see.
ARMED, STOP, REFILLS, RESTORED, CAUGHT = 0, 1, 2, 3, 4


@attrs.frozen
class Side:
    """A real connection, the raw peer on the other end, the peer's copy of the eventfd
    under attack, and what the peer does to keep taking packets."""

    conn: aiomemif.Connection
    peer: RawPeer
    efd: int
    keep_up: Callable[[], None]


@contextlib.asynccontextmanager
async def tx_link(role: str, path: str) -> AsyncIterator[Side]:
    """A real ``role`` sending to a raw peer that asks to be signalled on every send."""
    if role == "server":
        async with fake_client_link(path) as link:
            mem, ring = link.mem, link.mem.ring(M2S)
            ring.flags = 0  # MASK_INT clear: "signal me"

            def offer() -> None:
                ring.head = ring.tail + mem.ring_size

            offer()
            yield Side(link.conn, link.peer, mem.efd(M2S), offer)
    else:
        async with fake_server_link(path) as cl:
            s2m = cl.side.ring(S2M)
            s2m.flags = 0

            def take() -> None:
                s2m.tail = s2m.head

            yield Side(cl.conn, cl.peer, cl.side.efd(S2M), take)


@contextlib.asynccontextmanager
async def rx_link(role: str, path: str) -> AsyncIterator[Side]:
    """A real ``role`` whose receive ring's eventfd the raw peer signals."""
    if role == "server":
        async with fake_client_link(path) as link:
            yield Side(link.conn, link.peer, link.mem.efd(S2M), lambda: None)
    else:
        async with fake_server_link(path) as cl:
            yield Side(cl.conn, cl.peer, cl.side.efd(M2S), lambda: None)


def _empty(efd: int) -> None:
    """Read the counter to 0 (the fd is still non-blocking here)."""
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(efd)


class WriteTrap:
    """Stands in for an EventFd's POLLOUT poller. On its ``at``-th "writable" answer it
    plays the peer inside the window: it fills the counter and clears O_NONBLOCK, so the
    write the library makes next blocks."""

    def __init__(self, inner: object, efd: int, at: int, shared: Shared) -> None:
        self._inner, self._efd, self._at, self._shared = inner, efd, at, shared
        self.seen = 0

    def poll(self, timeout: int = 0) -> list[tuple[int, int]]:
        ready: list[tuple[int, int]] = self._inner.poll(timeout)  # type: ignore[attr-defined]
        if ready:
            self.seen += 1
            if self.seen == self._at:
                _empty(self._efd)
                os.eventfd_write(self._efd, EVENTFD_MAX)
                set_blocking(self._efd, True)
                self._shared[ARMED] = 1
        return ready


class ReadTrap:
    """Stands in for an EventFd's POLLIN poller (used where ``RWF_NOWAIT`` reads are
    refused). On the first "readable" answer the peer steals the count and clears
    O_NONBLOCK, so the read the library makes next blocks."""

    def __init__(self, inner: object, efd: int, shared: Shared) -> None:
        self._inner, self._efd, self._shared = inner, efd, shared
        self.fired = False

    def poll(self, timeout: int = 0) -> list[tuple[int, int]]:
        ready: list[tuple[int, int]] = self._inner.poll(timeout)  # type: ignore[attr-defined]
        if ready and not self.fired:
            self.fired = True
            _empty(self._efd)
            set_blocking(self._efd, True)
            self._shared[ARMED] = 1
        return ready


def _asleep_in(tid: int, nr: int, fd: int) -> bool:
    """Is thread ``tid`` of our parent asleep inside system call ``nr`` on its ``fd``?"""
    try:
        with open(f"/proc/{os.getppid()}/task/{tid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return False
    return len(fields) > 2 and fields[0] == str(nr) and int(fields[1], 16) == fd


def _wait_for(shared: Shared, ready: Callable[[], bool], end: float) -> bool:
    while not ready():
        if shared[STOP] or time.monotonic() > end:
            return False
        time.sleep(0.0002)
    return True


def refill_blocking(efd: int, shared: Shared) -> None:
    """Child: once the trap fired, wait in a blocking write of a full count, again and
    again. Every drain by the watchdog wakes it along with the library's writer; if it
    runs first, the counter is full again and the writer goes back to sleep."""
    end = time.monotonic() + ATTACK
    if not _wait_for(shared, lambda: bool(shared[ARMED]), end):
        return
    while not shared[STOP] and time.monotonic() < end:
        os.eventfd_write(efd, EVENTFD_MAX)  # waits until the counter is 0
        shared[REFILLS] += 1


def refill_spinning(efd: int, loop: tuple[int, int], shared: Shared) -> None:
    """Child: once the library's write is asleep (``loop``: its thread and fd number),
    spin on non-blocking writes of a full count, refilling the counter within a
    microsecond of every drain."""
    end = time.monotonic() + ATTACK
    if not _wait_for(shared, lambda: _asleep_in(loop[0], WRITE_NR, loop[1]), end):
        return
    shared[CAUGHT] = 1
    set_blocking(efd, False)  # (the sleeping writer no longer looks at the flag)
    while not shared[STOP] and time.monotonic() < end:
        try:
            os.eventfd_write(efd, EVENTFD_MAX)
        except BlockingIOError:
            continue
        shared[REFILLS] += 1


def restore_flag(efd: int, loop: tuple[int, int], shared: Shared) -> None:
    """Child: once the library's read is asleep (``loop``: its thread and fd number), set
    O_NONBLOCK again, so the fd no longer looks as if it could block."""
    end = time.monotonic() + ATTACK
    if _wait_for(shared, lambda: _asleep_in(loop[0], READ_NR, loop[1]), end):
        set_blocking(efd, False)
        shared[RESTORED] = 1
    # Stay until told to stop: a child exiting now would interrupt the read with SIGCHLD
    # (where the loop handles it), and the restarted read would see the flag and return.
    _wait_for(shared, lambda: False, end)


def without_rwf_nowait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a kernel whose eventfds refuse ``RWF_NOWAIT`` reads (before Linux 5.x)."""
    real = os.preadv

    def preadv(fd: int, buffers: Sequence[bytearray], offset: int, flags: int = 0) -> int:
        if flags & os.RWF_NOWAIT:
            raise OSError(errno.EOPNOTSUPP, "RWF_NOWAIT refused (simulated)")
        return real(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", preadv)


@contextlib.contextmanager
def children(targets: Sequence[Callable[[], None]], shared: Shared) -> Iterator[None]:
    """Run each target in a forked child; on exit stop and kill them (some wait in a
    blocking write that nobody will satisfy) and reap them."""
    with contextlib.ExitStack() as stack:
        pids = [stack.enter_context(forked(t, ATTACK)) for t in targets]
        try:
            yield
        finally:
            shared[STOP] = 1
            for pid in pids:
                os.kill(pid, signal.SIGKILL)


def _attackers(attacker: str, efd: int, ours: int, shared: Shared) -> list[Callable[[], None]]:
    """The children of an attack on ``efd`` (the peer's copy of our fd number ``ours``)."""
    loop = (threading.get_native_id(), ours)
    if attacker == "refill":
        return [lambda: refill_blocking(efd, shared)] * 4
    if attacker == "spin":
        return [lambda: refill_spinning(efd, loop, shared)]
    return []  # "hold": the counter just stays full


async def _burst(side: Side, n: int) -> None:
    """Send ``n`` one-buffer packets, alternating send_nowait and alloc/commit (both
    signal the peer), letting the loop run in between."""
    tx = side.conn.tx_queues[0]
    for i in range(n):
        side.keep_up()
        if i % 2:
            tx.send_nowait(b"s" * 60)
        else:
            bufs = tx.alloc_nowait(1, 60)
            bufs.views[0][:] = b"c" * 60
            tx.commit(bufs)
        await asyncio.sleep(0)


async def _write_race(
    path: str, role: str, attacker: str, at: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[float, int]:
    """One staged write race on a fresh link; returns (longest stall, peer refills)."""
    shared = Shared(8)
    try:
        async with tx_link(role, path) as side:
            efd = side.conn.tx_queues[0]._efd
            monkeypatch.setattr(efd, "_poller", WriteTrap(efd._poller, side.efd, at, shared))
            rescues = stuck_rescues()
            with children(_attackers(attacker, side.efd, efd.fd, shared), shared):
                async with heartbeat() as stalls:
                    raised: aiomemif.RemoteProtocolError | None = None
                    try:
                        await _burst(side, BURST)
                    except aiomemif.RemoteProtocolError as exc:
                        raised = exc
            if raised is None:
                # Only the spinner sets O_NONBLOCK again; a signal (some hosts send a
                # few) restarts the sleeping write, which then sees the flag and the
                # full counter and returns: freed in time, without the watchdog.
                assert attacker == "spin" and shared[CAUGHT], "no race happened"
                assert side.conn.is_up
                return stalls.longest, shared[REFILLS]
            assert "eventfd" in str(raised)
            set_blocking(side.efd, False)
            assert shared[ARMED], "the trap never fired"
            assert stuck_rescues() > rescues, "the write did not block: race not staged"
            assert not side.conn.is_up
            assert isinstance(side.conn.close_error, aiomemif.RemoteProtocolError)
            assert "eventfd" in await side.peer.expect_disconnect()
            return stalls.longest, shared[REFILLS]
    finally:
        shared.close()


@pytest.mark.parametrize("kernel", ["rwf-nowait", "old"])
@pytest.mark.parametrize("attacker", ["hold", "refill", "spin"])
@pytest.mark.parametrize("role", ROLES)
async def test_signal_race_holds_the_loop_a_bounded_time(
    sock_path: str, role: str, attacker: str, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer fills the counter and clears O_NONBLOCK between the library's poll and its
    write, during a burst of sends and commits, and (``refill``, ``spin``) keeps refilling
    it after every drain. The loop is held less than STALL_BOUND each time and the link
    goes down with a protocol error. ``old``: the watchdog cannot drain with RWF_NOWAIT."""
    if kernel == "old":
        without_rwf_nowait(monkeypatch)
    results = [
        await _write_race(f"{sock_path}.{r}", role, attacker, 1 + 13 * r, monkeypatch)
        for r in range(ROUNDS)
    ]
    worst = max(stall for stall, _ in results)
    assert worst < ALLOWED, f"loop held {worst:.3f} s (stalls, refills: {results})"


@pytest.mark.parametrize("restore", [False, True], ids=["flag-cleared", "flag-restored"])
@pytest.mark.parametrize("role", ROLES)
async def test_drain_race_on_old_kernels_holds_the_loop_a_bounded_time(
    sock_path: str, role: str, restore: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where eventfd reads refuse RWF_NOWAIT, the interrupt reader checks readiness and
    then reads. The peer steals the count in between and clears O_NONBLOCK; the read
    blocks. ``flag-restored``: the peer then sets O_NONBLOCK again, so that the fd no
    longer looks blockable; the watchdog sees the thread asleep in the read (/proc) all
    the same. The loop is held less than STALL_BOUND; the link goes down."""
    without_rwf_nowait(monkeypatch)
    shared = Shared(8)
    try:
        async with rx_link(role, sock_path) as side:
            efd = side.conn.rx_queues[0]._efd
            monkeypatch.setattr(efd, "_in_poller", ReadTrap(efd._in_poller, side.efd, shared))
            rescues = stuck_rescues()
            loop = (threading.get_native_id(), efd.fd)
            restorer = [lambda: restore_flag(side.efd, loop, shared)] if restore else []
            with children(restorer, shared):
                async with heartbeat() as stalls:
                    os.eventfd_write(side.efd, 1)  # the peer signals; our reader drains
                    async with asyncio.timeout(2):
                        while side.conn.is_up and not (restore and shared[RESTORED]):
                            await asyncio.sleep(0.001)
                        if stuck_rescues() > rescues or not restore:
                            err = await side.conn.wait_closed()
            set_blocking(side.efd, False)
            assert shared[ARMED], "the trap never fired"
            assert stalls.longest < ALLOWED, f"loop held {stalls.longest:.3f} s"
            if restore and stuck_rescues() == rescues:
                # Any signal (uvloop gets some) restarts the sleeping read, which then
                # sees O_NONBLOCK and returns: the peer freed the loop itself, in time.
                assert side.conn.is_up
                return
            assert stuck_rescues() > rescues, "the read did not block: race not staged"
            assert isinstance(err, aiomemif.RemoteProtocolError)
            assert "eventfd" in await side.peer.expect_disconnect()
    finally:
        shared.close()


# ------------------------------------------------------------ the race, left to chance
class _Late(Exception):
    pass


def _late(_sig: int, _frame: object) -> None:
    raise _Late


def _write_within(efd: int, value: int, seconds: float = 0.005) -> None:
    """Add ``value`` to the blocking eventfd, giving up if that blocks for ``seconds``
    (the library wrote in between and the counter cannot take it)."""
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        os.eventfd_write(efd, value)
    except _Late:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _fill_in_the_window(efd: int, loop: tuple[int, int], shared: Shared) -> None:
    """Child: keep the eventfd one short of full, and fill it at random moments, hoping to
    land between the library's readiness check and its write. Whenever the loop thread is
    then found inside ``write`` (an eventfd wait), hold it there for a second."""
    signal.signal(signal.SIGALRM, _late)
    buf = bytearray(8)
    poller = select.poll()
    poller.register(efd, select.POLLOUT)
    end = time.monotonic() + ATTACK
    while time.monotonic() < end and not shared[STOP]:
        with contextlib.suppress(BlockingIOError):
            os.preadv(efd, [buf], -1, os.RWF_NOWAIT)  # empty (frees a held writer)
        _write_within(efd, EVENTFD_MAX - 1)  # one short of full: "writable"
        if poller.poll(0):
            _write_within(efd, 1)  # full now: a write already past its check blocks
        for _ in range(2):
            if _asleep_in(loop[0], WRITE_NR, loop[1]):
                shared[ARMED] += 1  # caught the loop in write: hold it
                time.sleep(1.0)
                break


@pytest.mark.parametrize("role", ROLES)
async def test_signal_race_left_to_chance_holds_the_loop_a_bounded_time(
    sock_path: str, role: str
) -> None:
    """The peer clears O_NONBLOCK and fills the counter at random moments while the
    library sends; when it lands between poll and write, the loop is held less than
    STALL_BOUND (the watchdog empties the counter) and the link goes down."""
    shared = Shared(8)
    try:
        async with tx_link(role, sock_path) as side:
            set_blocking(side.efd, True)
            tx = side.conn.tx_queues[0]
            loop = (threading.get_native_id(), tx._efd.fd)
            with children([lambda: _fill_in_the_window(side.efd, loop, shared)], shared):
                async with heartbeat() as stalls:
                    end = time.monotonic() + ATTACK - 1
                    while time.monotonic() < end and side.conn.is_up:
                        side.keep_up()
                        try:
                            tx.send_nowait(b"x" * 60)
                        except aiomemif.MemifError:
                            break
                        await asyncio.sleep(0)
            set_blocking(side.efd, False)
            if not shared[ARMED]:
                pytest.skip("the child never caught the loop inside write (race not staged)")
            assert stalls.longest < ALLOWED, f"loop held {stalls.longest:.3f} s"
            assert not side.conn.is_up
            assert isinstance(side.conn.close_error, aiomemif.RemoteProtocolError)
            assert "eventfd" in str(side.conn.close_reason)
            assert "eventfd" in await side.peer.expect_disconnect()
    finally:
        shared.close()


# ------------------------------------------------------ the watchdog spares honest peers
def test_watchdog_leaves_a_slow_honest_syscall_alone() -> None:
    """A loop thread preempted (or waiting for the GIL) inside a signal looks stuck for a
    while. Where the thread's state is unknown: with O_NONBLOCK set and the counter not
    full it cannot be blocked in the kernel, so the watchdog must not take the peer for an
    attacker (that would end honest links); once the flag is cleared it may."""
    efd = EventFd()
    try:
        efd.writing = True
        efd.ops += 1  # "inside the write" for five ticks (tid 0: state unknown)
        time.sleep(5 * TICK)
        assert not efd.tampered
        set_blocking(efd.fd, True)  # now the peer has made it blockable
        time.sleep(3 * TICK)
        assert efd.tampered
        efd.ops += 1
    finally:
        efd.close()


def test_watchdog_counts_its_ticks_while_eventfds_exist() -> None:
    """``ticks()`` (what the benchmarks subtract their switches by) moves while an eventfd
    is guarded (about once per TICK)."""
    efd = EventFd()
    try:
        before = ticks()
        time.sleep(10 * TICK)
        assert ticks() - before >= 1
    finally:
        efd.close()


def _blocking_read(efd: EventFd) -> None:
    """A read of ``efd`` bracketed for the watchdog, as ``EventFd.drain`` brackets its
    fallback read (here it blocks: the counter is 0 and O_NONBLOCK is cleared)."""
    efd.writing = False
    efd.tid = threading.get_native_id()
    efd.ops += 1
    try:
        os.eventfd_read(efd.fd)
    finally:
        efd.ops += 1


def test_watchdog_asks_the_kernel_what_the_thread_is_doing() -> None:
    """Where /proc shows the thread: one that is not asleep in a syscall on the fd is not
    stuck, even with O_NONBLOCK cleared; one that is, is freed within two ticks or so
    (here a real blocked read on a thread of this test)."""
    efd = EventFd()
    try:
        set_blocking(efd.fd, True)
        efd.writing = False
        efd.tid = threading.get_native_id()  # this thread, asleep in clock_nanosleep
        efd.ops += 1
        time.sleep(5 * TICK)
        assert not efd.tampered
        efd.ops += 1
        reader = threading.Thread(target=_blocking_read, args=(efd,))
        t0 = time.monotonic()
        reader.start()
        reader.join(1.0)
        assert not reader.is_alive(), "the watchdog left a read blocked"
        assert efd.tampered
        assert time.monotonic() - t0 < ALLOWED
    finally:
        efd.close()
