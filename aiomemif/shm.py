"""OS resources: memfd regions and their mappings, eventfds, and fd inspection.

Synchronous system calls only (no asyncio). Every object here owns its fd and closes it
exactly once; ``close()`` is idempotent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import select
import stat

from .errors import MemifOSError, ResourceError
from .handshake import FdInfo, FdKind

__all__ = [
    "EventFd",
    "Region",
    "close_fd",
    "create_region",
    "describe_fd",
    "map_region",
    "wrap_os_error",
]


def wrap_os_error(exc: OSError, what: str) -> MemifOSError:
    """Turn an OSError into a MemifOSError with the same errno and a short context."""
    return MemifOSError(exc.errno or 0, f"{what}: {exc.strerror or exc}")


def close_fd(fd: int) -> None:
    """Close ``fd``, ignoring EBADF-style errors (used on cleanup paths)."""
    with contextlib.suppress(OSError):
        os.close(fd)


def describe_fd(fd: int) -> FdInfo:
    """Inspect a received fd for the handshake checks (kind, size, seals)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return FdInfo(FdKind.OTHER)
    if stat.S_ISREG(st.st_mode):
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            seals = 0
        return FdInfo(FdKind.REGULAR, st.st_size, seals)
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    kind = FdKind.EVENTFD if target == "anon_inode:[eventfd]" else FdKind.OTHER
    return FdInfo(kind)


class Region:
    """One shared-memory region: its fd, its mapping and a byte view of it."""

    def __init__(self, index: int, size: int, fd: int, mapping: mmap.mmap) -> None:
        self.index = index
        self.size = size
        self.fd = fd
        self.mapping: mmap.mmap | None = mapping
        self.view: memoryview | None = memoryview(mapping)
        #: True if a user still held a view when we closed and the unmap was left to GC.
        self.pinned = False

    def close(self) -> None:
        """Release our view, unmap (if no foreign view pins it) and close the fd."""
        if self.view is not None:
            self.view.release()
            self.view = None
        if self.mapping is not None:
            try:
                self.mapping.close()
            except BufferError:
                # A view derived from a packet is still alive somewhere; the mapping is freed
                # when that view goes away. Memory stays valid: nothing can fault.
                self.pinned = True
            self.mapping = None
        if self.fd >= 0:
            close_fd(self.fd)
            self.fd = -1


def create_region(index: int, size: int, name: str = "memif region") -> Region:
    """Create a memfd of exactly ``size`` bytes, sealed against shrinking, and map it.

    Raises:
        MemifOSError: memfd_create, ftruncate, fcntl or mmap failed.
    """
    fd = -1
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        if fd >= 0:
            close_fd(fd)
        raise wrap_os_error(exc, "creating a shared-memory region") from exc
    return Region(index, size, fd, mapping)


def map_region(index: int, size: int, fd: int) -> Region:
    """Map ``[0, size)`` of a region fd received from the peer (checked beforehand).

    The returned Region owns ``fd``.

    Raises:
        ResourceError: the mapping failed (the fd is left open for the caller to close).
    """
    try:
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError) as exc:
        raise ResourceError(f"Cannot map region {index}: {exc}") from exc
    return Region(index, size, fd, mapping)


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
