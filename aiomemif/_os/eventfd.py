"""Interrupt eventfds: created here or received from the peer; signal and drain that the
peer cannot keep blocked, whatever it does to the shared O_NONBLOCK flag.

Synchronous system calls only (no asyncio). An :class:`EventFd` closes its fd exactly once.
A syscall the peer can make block is bracketed for :mod:`.watchdog`, which frees it within
about two ticks (20 ms; longer only while the peer keeps winning races against its
retries, see there for the measured bound) and marks the fd tampered; the call then
raises :class:`~aiomemif.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import errno
import os
import select
from threading import get_native_id

from ..errors import RemoteProtocolError
from .fds import wrap_os_error
from .watchdog import Guarded

__all__ = ["EventFd"]


_TAMPERED = "peer made an interrupt eventfd block (cleared O_NONBLOCK on it)"


class EventFd(Guarded):
    """A non-blocking eventfd (created here, or received from the peer)."""

    def __init__(self, fd: int | None = None) -> None:
        super().__init__()
        if fd is None:
            try:
                fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            except OSError as exc:
                raise wrap_os_error(exc, "creating an eventfd") from exc
        self.fd = fd
        self._buf = bytearray(8)
        self._poller = select.poll()
        self._poller.register(fd, select.POLLOUT)
        self._in_poller = select.poll()  # (only for kernels without RWF_NOWAIT reads)
        self._in_poller.register(fd, select.POLLIN)
        self.guard()

    def signal(self) -> None:
        """Add 1 to the counter: wake the peer waiting on it.

        The fd's O_NONBLOCK flag is shared with the peer, which may clear it; a write to a
        saturated counter then blocks. The write happens only when poll says it cannot
        block (a saturated counter means "already signalled"); a peer that fills the counter
        between the poll and the write holds us until the watchdog empties it.

        Raises:
            RemoteProtocolError: the watchdog had to free this write (the peer cleared
                O_NONBLOCK and filled the counter).
        """
        if not self._poller.poll(0):
            return
        self.writing = True
        self.tid = get_native_id()
        self.ops += 1
        try:
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:
            pass  # counter saturated: the peer is already signalled
        finally:
            self.ops += 1
        if self.tampered:
            raise RemoteProtocolError(_TAMPERED)

    def drain(self) -> int:
        """Read and reset the counter; 0 if it was already zero.

        ``RWF_NOWAIT`` makes the read non-blocking whatever the shared O_NONBLOCK flag says
        (the peer can read the counter between our readiness check and this read). Kernels
        whose eventfds refuse it get a readiness check and a plain read, which the peer can
        make block; the watchdog then frees it.

        One read suffices for any counter value, 1 up to 2**64 - 2: a counter-mode eventfd
        returns its whole count and drops to 0, so the fd stays unreadable until the peer
        signals again, and a loop reader fires once per burst of signals instead of
        spinning. That depends on the eventfd not being ``EFD_SEMAPHORE``, whose reads
        return 1 and take only 1 (a count of 2**40 would keep the reader ready for 2**40
        reads), and no bounded number of reads fixes that. Hence the two guarantees: a
        client drains only eventfds it created itself (counter mode), and a server refuses
        semaphore eventfds at ADD_RING (``fdinfo.eventfd_semaphore``), a mode that cannot
        change later.

        Raises:
            RemoteProtocolError: the watchdog had to free this read.
            OSError: the read failed for another reason than "nothing to read" (EBADF).
        """
        try:
            if os.preadv(self.fd, [self._buf], -1, os.RWF_NOWAIT) == 8:
                return int.from_bytes(self._buf, "little")
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            # Kernel without RWF_NOWAIT for eventfd: fall back to a readiness guard.
            if self._in_poller.poll(0):
                self.writing = False
                self.tid = get_native_id()
                self.ops += 1
                try:
                    return os.eventfd_read(self.fd)
                except BlockingIOError:
                    pass
                finally:
                    self.ops += 1
                    if self.tampered:
                        raise RemoteProtocolError(_TAMPERED) from None
        return 0

    def close(self) -> None:
        self.close_fd()
