"""A watchdog thread that frees the event loop from an eventfd syscall a peer has made block.

An interrupt eventfd shares its open file description, O_NONBLOCK included, with the peer.
A peer that clears the flag and fills the counter makes our ``write`` block until somebody
reads; a peer that clears it and reads the counter first makes our ``read`` block until
somebody writes. No readiness check closes the window (the peer acts between the check and
the syscall), ``RWF_NOWAIT`` is refused for eventfd writes, and signalling through a helper
thread instead costs a thread wake-up (tens of µs) on every interrupt of every honest peer.

So the syscall stays on the loop, bracketed by a counter on the :class:`Guarded` object
(odd while inside). One daemon thread, alive while guarded eventfds exist, looks every
:data:`TICK` seconds; an fd whose counter stayed odd and unchanged for a whole tick, and
which the peer has made able to block (O_NONBLOCK cleared, or for a write a full counter; a
loop thread that is merely preempted is left alone), is stuck. The watchdog then does the
opposite operation without blocking (it drains a full counter with an ``RWF_NOWAIT`` read,
or adds 1 to an empty one), repeating briefly while the peer races it, and marks the fd
``tampered``; the loop, back from the syscall, reports a protocol error and the connection
goes down. The longest stall is about two ticks.

The watchdog only touches an fd under :data:`LOCK`, which :meth:`Guarded.close_fd` also
takes, so it never operates on a number the loop has closed and reused.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import threading
import time
import weakref
from typing import Final

__all__ = ["LOCK", "TICK", "Guarded", "stuck_rescues"]

log = logging.getLogger("aiomemif")

#: Seconds between the watchdog's looks; a syscall stuck this long (up to twice) is freed.
TICK: Final = 0.01
#: Serialises the watchdog's rescue with closing an fd.
LOCK: Final = threading.Lock()
#: How many quick retries one rescue makes while the peer keeps re-blocking the syscall.
_RETRIES: Final = 200
#: Ticks after which a syscall is freed even if it does not look blockable (a peer that
#: cleared O_NONBLOCK, blocked our read, then set the flag again).
_PATIENCE: Final = 100

_guarded: weakref.WeakSet[Guarded] = weakref.WeakSet()
_thread: threading.Thread | None = None
_state = threading.Lock()  # guards starting/stopping the thread
_rescues = 0


def stuck_rescues() -> int:
    """How many stuck syscalls the watchdog has freed in this process (for tests)."""
    return _rescues


class Guarded:
    """Base of an fd object whose syscalls the watchdog may have to free.

    Subclasses bracket a syscall that a peer can make block with ``self.ops += 1`` before
    and after (so ``ops`` is odd inside), record which way it goes in ``self.writing``, and
    check ``tampered`` afterwards.
    """

    fd: int

    def __init__(self) -> None:
        self.ops = 0
        self.writing = False
        #: Set by the watchdog when it had to free a syscall on this fd.
        self.tampered = False
        self._seen = 0
        self._ticks = 0

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
    global _thread
    while True:
        time.sleep(TICK)
        with _state:
            items = list(_guarded)
            if not items:
                _thread = None
                return
        for g in items:
            ops = g.ops
            if ops & 1 and ops == g._seen:
                g._ticks += 1
                if g._ticks >= _PATIENCE or _blockable(g):
                    _rescue(g, ops)
            else:
                g._ticks = 0
            g._seen = ops


def _blockable(g: Guarded) -> bool:
    """Can the syscall on ``g`` really be waiting in the kernel (not merely slow, e.g. the
    loop thread preempted or waiting for the GIL)? Only if the peer cleared O_NONBLOCK,
    or (for a write) the counter is full: an honest peer leaves the flag set and never
    fills the counter, so it is never taken for an attacker."""
    with LOCK:
        if g.fd < 0:
            return False
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


def _rescue(g: Guarded, ops: int) -> None:
    """Free the loop from a syscall stuck on ``g``.

    A stuck write is freed by emptying the full counter with an ``RWF_NOWAIT`` read, under
    :data:`LOCK` (it cannot block). A stuck read (only on kernels whose eventfds refuse
    ``RWF_NOWAIT`` reads) is freed by adding 1, through a duplicate taken under the lock and
    written outside it: if the peer fills the counter meanwhile, only this thread waits.
    """
    global _rescues
    buf = bytearray(8)
    for _ in range(_RETRIES):
        dup = -1
        with LOCK:
            if g.fd < 0 or g.ops != ops:
                break
            g.tampered = True
            try:
                if g.writing:
                    os.preadv(g.fd, [buf], -1, os.RWF_NOWAIT)
                else:
                    dup = os.dup(g.fd)
            except OSError:
                pass
        if dup >= 0:
            try:
                os.eventfd_write(dup, 1)
            except OSError:
                pass
            finally:
                os.close(dup)
        time.sleep(0.0001)  # let the loop's syscall finish; retry if the peer re-blocked it
    else:
        log.warning("aiomemif: a peer keeps an eventfd syscall blocked; still retrying")
    _rescues += 1
