"""Interrupt eventfds: created here or received from the peer; signal and drain that never
block, whatever the peer does to the shared O_NONBLOCK flag.

Synchronous system calls only (no asyncio). An :class:`EventFd` closes its fd exactly once.
"""

from __future__ import annotations

import errno
import os
import select

from .fds import close_fd, wrap_os_error

__all__ = ["EventFd"]


class EventFd:
    """A non-blocking eventfd (created here, or received from the peer)."""

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            try:
                fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            except OSError as exc:
                raise wrap_os_error(exc, "creating an eventfd") from exc
        self.fd = fd
        self._buf = bytearray(8)
        self._poller = select.poll()
        self._poller.register(fd, select.POLLOUT)

    def signal(self) -> None:
        """Add 1 to the counter: wake the peer waiting on it. Never blocks.

        The fd's O_NONBLOCK flag is shared with the peer, which may clear it; a write to a
        saturated counter would then block the event loop. So the write happens only when
        poll says it cannot block (a saturated counter means "already signalled").
        """
        if not self._poller.poll(0):
            return
        try:
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:
            pass  # counter saturated: the peer is already signalled

    def drain(self) -> int:
        """Read and reset the counter; 0 if it was already zero. Never blocks.

        ``RWF_NOWAIT`` makes the read non-blocking whatever the shared O_NONBLOCK flag says
        (the peer can read the counter between our readiness check and this read).

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
            if select.select([self.fd], [], [], 0)[0]:
                try:
                    return os.eventfd_read(self.fd)
                except BlockingIOError:
                    pass
        return 0

    def close(self) -> None:
        if self.fd >= 0:
            close_fd(self.fd)
            self.fd = -1
