"""Shared-memory regions: memfds created and sealed here, or received from the peer, and
their mappings; plus the store-load fence used around ring publishes.

Synchronous system calls only (no asyncio). A :class:`Region` owns its fd and mapping and
closes both exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import threading

from ..errors import ResourceError
from .fds import close_fd, wrap_os_error

__all__ = ["Region", "create_region", "fence", "map_region"]

_FENCE_LOCK = threading.Lock()


def fence() -> None:
    """Order this thread's earlier stores before its later loads (a store-load fence).

    Python has no fence primitive; taking and dropping a lock executes an atomic
    read-modify-write, which is a full fence on x86. Used between "publish" and "does the
    peer want a signal?" (and between "unmask" and "anything pending?") so neither side
    misses the other's update. On weaker memory models it narrows the window; receive
    queues keep a safety re-scan for what remains.
    """
    _FENCE_LOCK.acquire()
    _FENCE_LOCK.release()


class Region:
    """One shared-memory region: its fd, its mapping and a byte view of it."""

    def __init__(self, index: int, size: int, fd: int, mapping: mmap.mmap) -> None:
        self.index = index
        self.size = size
        self.fd = fd
        self.mapping: mmap.mmap | None = mapping
        self.view: memoryview | None = memoryview(mapping)

    def close(self) -> None:
        """Release our view, unmap (if no foreign view pins it) and close the fd."""
        if self.view is not None:
            self.view.release()
            self.view = None
        if self.mapping is not None:
            # A view into the region may still be alive somewhere (a packet view a user
            # kept, or one still exported: BufferError). The mapping (and the fd mmap
            # holds) is then freed with the last such view, which is why nothing else
            # may keep a reference to the mmap once the link is down. Memory stays valid.
            with contextlib.suppress(BufferError):
                self.mapping.close()
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
