"""A watchdog thread that frees the event loop from an eventfd syscall a peer has made block.

An interrupt eventfd shares its open file description, O_NONBLOCK included, with the peer.
A peer that clears the flag and fills the counter makes our ``write`` block until somebody
reads; a peer that clears it and reads the counter first makes our ``read`` block until
somebody writes. No readiness check closes the window (the peer acts between the check and
the syscall), ``RWF_NOWAIT`` is refused for eventfd writes, and signalling through a helper
thread instead costs a thread wake-up (tens of µs) on every interrupt of every honest peer.

So the syscall stays on the loop, bracketed by a counter on the :class:`Guarded` object
(odd while inside). One daemon thread, alive while guarded eventfds exist, looks every
:data:`TICK` seconds; an fd whose counter stayed odd and unchanged for a whole tick is
stuck if the thread inside is asleep in a system call on that fd
(``/proc/self/task/TID/syscall``; where that file cannot be read: if the peer has made the
fd able to block, O_NONBLOCK cleared or for a write a full counter). A loop thread that is
merely preempted, or waiting for the GIL, is left alone. The watchdog then does the
opposite operation (it drains a full counter with an ``RWF_NOWAIT`` read, or adds 1 to an
empty one), repeating while the peer races it, and marks the fd ``tampered``; the loop,
back from the syscall, reports a protocol error and the connection goes down.

**The bound.** A stuck syscall is found after one to two ticks (10-20 ms). Freeing it is a
race the peer can contest: every drain wakes our writer, and a peer that refills the
counter (from blocked writers of its own, or a process spinning on writes) before our
writer runs sends it back to sleep. The watchdog drains in bursts of :data:`_BURST`, a
burst every 0.1 ms and without limit, so the peer has to win every race while our writer
has to win one. Over 480 staged races against such peers (both roles, both loops, with
and without ``RWF_NOWAIT``) the loop was held 21 ms at the median and 45 ms at most; the
suite asserts 100 ms (``STALL_BOUND`` in ``tests/integration/test_hostile_eventfd.py``),
which is the documented bound. It is not a hard real-time guarantee: a host too busy to
run the watchdog or the loop thread stretches it. A blocked read (only on kernels whose
eventfds refuse ``RWF_NOWAIT`` reads) is freed by a write the same way.

Operations that could block the thread making them (a plain read where ``RWF_NOWAIT`` is
refused, and every rescuing write) run on a short-lived helper thread through a duplicate
of the fd, at most one per fd at a time, so the watchdog itself never blocks: a peer that
wins that second race too holds only the helper, and only until the counter moves again.

The watchdog only touches an fd under :data:`LOCK`, which :meth:`Guarded.close_fd` also
takes, so it never operates on a number the loop has closed and reused.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import threading
import time
import weakref
from typing import Final

__all__ = ["LOCK", "TICK", "Guarded", "stuck_rescues", "ticks"]

log = logging.getLogger("aiomemif")

#: Seconds between the watchdog's looks; a syscall stuck this long (up to twice) is freed.
TICK: Final = 0.01
#: Serialises the watchdog's rescue with closing an fd.
LOCK: Final = threading.Lock()
#: Quick retries (0.1 ms apart) after which a rescue the peer keeps defeating logs a
#: warning; it goes on retrying, and the next tick starts a new rescue.
_RETRIES: Final = 200
#: Ticks after which a syscall is freed even if it does not look blockable, where the
#: thread's state cannot be read from /proc (a peer that cleared O_NONBLOCK, blocked our
#: read, then set the flag again).
_PATIENCE: Final = 100
_UNSUPPORTED: Final = (errno.EOPNOTSUPP, errno.EINVAL)
#: Drains per retry, back to back: a peer refilling the counter has to win each of these
#: races, while our writer has to find the counter below full only once.
_BURST: Final = 50

_guarded: weakref.WeakSet[Guarded] = weakref.WeakSet()
_thread: threading.Thread | None = None
_state = threading.Lock()  # guards starting/stopping the thread
_rescues = 0
_ticks = 0


def ticks() -> int:
    """How many times the watchdog thread has woken in this process (for benchmarks: each
    wake-up can preempt the loop thread on its CPU)."""
    return _ticks


def stuck_rescues() -> int:
    """How many times the watchdog has set out to free a stuck syscall in this process
    (for tests; counted when the rescue starts)."""
    return _rescues


class Guarded:
    """Base of an fd object whose syscalls the watchdog may have to free.

    Subclasses bracket a syscall that a peer can make block with ``self.ops += 1`` before
    and after (so ``ops`` is odd inside), record which way it goes in ``self.writing`` and
    the thread making it in ``self.tid`` (``threading.get_native_id()``), and check
    ``tampered`` afterwards.
    """

    fd: int

    def __init__(self) -> None:
        self.ops = 0
        self.writing = False
        self.tid = 0
        #: Set by the watchdog when it had to free a syscall on this fd.
        self.tampered = False
        self._seen = 0
        self._ticks = 0
        self._helper: threading.Thread | None = None

    def guard(self) -> None:
        """Put this fd under the watchdog (starting its thread if needed)."""
        global _thread
        with _state:
            _guarded.add(self)
            if _thread is None:
                _thread = threading.Thread(target=_watch, name="aiomemif-watchdog", daemon=True)
                _thread.start()

    def close_fd(self) -> None:
        """Close the fd (idempotent) where the watchdog cannot be touching it."""
        with LOCK:
            fd, self.fd = self.fd, -1
            with _state:  # never while the watchdog copies the set
                _guarded.discard(self)
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _watch() -> None:
    global _thread, _ticks
    while True:
        time.sleep(TICK)
        _ticks += 1
        with _state:
            items = list(_guarded)
            if not items:
                _thread = None
                return
        for g in items:
            ops = g.ops
            if ops & 1 and ops == g._seen:
                g._ticks += 1
                if _stuck(g):
                    _rescue(g, ops)
            else:
                g._ticks = 0
            g._seen = ops


def _asleep_on(tid: int, fd: int) -> bool | None:
    """Is thread ``tid`` of this process asleep in a system call whose first argument is
    ``fd``? None if the kernel does not say (no such file, or not readable)."""
    try:
        with open(f"/proc/self/task/{tid}/syscall", "rb") as f:
            fields = f.read().split()
    except OSError:
        return None
    # "running", "-1 sp pc" (asleep outside a syscall) or "nr arg0 ... sp pc"
    if len(fields) < 3 or fields[0] in (b"running", b"-1"):
        return False
    try:
        return int(fields[1], 16) == fd
    except ValueError:
        return None


def _stuck(g: Guarded) -> bool:
    """Is the syscall on ``g`` really waiting in the kernel (not merely slow: the loop
    thread preempted or waiting for the GIL)? The thread's own state says so where
    /proc shows it. Otherwise only if the peer cleared O_NONBLOCK, or (for a write) the
    counter is full: an honest peer leaves the flag set and never fills the counter, so it
    is never taken for an attacker; and after :data:`_PATIENCE` ticks regardless."""
    with LOCK:
        if g.fd < 0:
            return False
        asleep = _asleep_on(g.tid, g.fd)
        if asleep is not None:
            return asleep
        if g._ticks >= _PATIENCE:
            return True
        try:
            if not fcntl.fcntl(g.fd, fcntl.F_GETFL) & os.O_NONBLOCK:
                return True
            if g.writing:
                poller = select.poll()
                poller.register(g.fd, select.POLLOUT)
                return not poller.poll(0)
        except OSError:
            pass
        return False


def _drain_nowait(fd: int) -> bool:
    """Empty the counter without blocking; False if the kernel refuses ``RWF_NOWAIT``
    reads on eventfds (then only a read that could block is left)."""
    try:
        os.preadv(fd, [bytearray(8)], -1, os.RWF_NOWAIT)
    except OSError as exc:
        return exc.errno not in _UNSUPPORTED  # (EAGAIN: already empty, the write can go)
    return True


def _rescue(g: Guarded, ops: int) -> None:
    """Free the loop from a syscall stuck on ``g``, retrying while the peer re-blocks it.

    A stuck write is freed by emptying the full counter with an ``RWF_NOWAIT`` read under
    :data:`LOCK` (it cannot block). A stuck read, or a write where that read is refused,
    is freed by the opposite operation on a duplicate of the fd, made on a helper thread
    (:func:`_undo`), since the peer can make that one block as well.
    """
    global _rescues
    _rescues += 1
    for _ in range(_RETRIES):
        dup = -1
        with LOCK:
            if g.fd < 0 or g.ops != ops:
                break
            g.tampered = True
            if not (g.writing and all(_drain_nowait(g.fd) for _ in range(_BURST))):
                helper = g._helper
                if helper is None or not helper.is_alive():
                    try:
                        dup = os.dup(g.fd)
                    except OSError:
                        pass
        if dup >= 0:
            helper = threading.Thread(
                target=_undo, args=(dup, g.writing), name="aiomemif-watchdog-helper", daemon=True
            )
            try:
                helper.start()
            except RuntimeError:  # no thread to be had: try again on the next retry
                os.close(dup)
            else:
                g._helper = helper
        time.sleep(0.0001)  # let the loop's syscall finish; retry if the peer re-blocked it
    else:
        log.warning("aiomemif: a peer keeps an eventfd syscall blocked; still retrying")


def _undo(dup: int, writing: bool) -> None:
    """Helper thread: free a syscall stuck on the fd that ``dup`` duplicates, by a read
    (the stuck call writes) or a write of 1 (it reads), if the counter allows it now.
    Either may block if the peer moves the counter meanwhile; that also frees the stuck
    call, whose own operation then completes this one."""
    try:
        poller = select.poll()
        poller.register(dup, select.POLLIN if writing else select.POLLOUT)
        for _ in range(_BURST if writing else 1):
            if not poller.poll(0):
                break
            if writing:
                os.eventfd_read(dup)
            else:
                os.eventfd_write(dup, 1)
    except OSError:
        pass
    finally:
        os.close(dup)
