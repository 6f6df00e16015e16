"""fd ownership helpers and the classification of fds received from a peer.

Synchronous system calls only (no asyncio).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat

from .._core.handshake import FdInfo, FdKind
from ..errors import MemifOSError
from .fdinfo import eventfd_semaphore

__all__ = ["close_fd", "describe_fd", "wrap_os_error"]


def wrap_os_error(exc: OSError, what: str) -> MemifOSError:
    """Turn an OSError into a MemifOSError with the same errno and a short context."""
    return MemifOSError(exc.errno or 0, f"{what}: {exc.strerror or exc}")


def close_fd(fd: int) -> None:
    """Close ``fd``, ignoring EBADF-style errors (used on cleanup paths)."""
    with contextlib.suppress(OSError):
        os.close(fd)


def describe_fd(fd: int) -> FdInfo:
    """Inspect a received fd for the handshake checks.

    Reports its kind, and for regular files the size, seals and identity ``(st_dev,
    st_ino)``; for eventfds whether they are (or may be) ``EFD_SEMAPHORE``. Never raises:
    an fd that cannot be inspected is reported as ``FdKind.OTHER``.
    """
    try:
        st = os.fstat(fd)
    except OSError:
        return FdInfo(FdKind.OTHER)
    if stat.S_ISREG(st.st_mode):
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            seals = 0
        return FdInfo(FdKind.REGULAR, st.st_size, seals, file_id=(st.st_dev, st.st_ino))
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if target != "anon_inode:[eventfd]":
        return FdInfo(FdKind.OTHER)
    return FdInfo(FdKind.EVENTFD, semaphore=eventfd_semaphore(fd))
