"""What ``/proc/self/fdinfo`` says about a received fd, and whether an eventfd is a semaphore.

An ``EFD_SEMAPHORE`` eventfd hands out its counter one unit per read: a peer that writes
2**40 to one and passes it as a ring's interrupt fd would keep the reader of that ring
ready for 2**40 reads. A counter-mode eventfd is reset to 0 by a single read, whatever it
holds. The mode is fixed when the eventfd is created, so checking it once, when the fd
arrives, settles it for the fd's lifetime.

Linux prints ``eventfd-semaphore: 0|1`` in fdinfo since 6.5 (next to ``eventfd-count:``,
printed since 3.8). On older kernels :func:`eventfd_semaphore` falls back to a probe, and
answers "cannot tell" when the probe is not conclusive (the caller refuses the fd then).

Synchronous system calls only (no asyncio), and no knowledge of the protocol.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
from collections.abc import Mapping

__all__ = ["eventfd_semaphore", "parse_fdinfo", "read_fdinfo", "semaphore_flag"]

_COUNT = "eventfd-count"
_SEMAPHORE = "eventfd-semaphore"


def parse_fdinfo(text: str) -> dict[str, str]:
    """``key: value`` lines of an fdinfo file as a dict (first occurrence of a key wins)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def read_fdinfo(fd: int) -> Mapping[str, str] | None:
    """The fields of ``/proc/self/fdinfo/<fd>``; None if it cannot be read. Never raises."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
            return parse_fdinfo(f.read())
    except OSError:
        return None


def semaphore_flag(fields: Mapping[str, str]) -> bool | None:
    """The ``eventfd-semaphore`` flag: True, False, or None if absent or unreadable."""
    return {"0": False, "1": True}.get(fields.get(_SEMAPHORE, ""))


def eventfd_semaphore(fd: int) -> bool | None:
    """Whether eventfd ``fd`` was created with ``EFD_SEMAPHORE``.

    True or False when fdinfo says so (Linux >= 6.5). Otherwise False when the probe proves
    counter mode, and None ("cannot tell") when it does not, or when fdinfo does not
    describe an eventfd at all. Never raises.

    The probe (older kernels only) consumes whatever count the peer left in the eventfd and
    may add two to it and read them back; a peer cannot tell this from a spurious wakeup.
    """
    fields = read_fdinfo(fd)
    if fields is None or _COUNT not in fields:
        return None
    flag = semaphore_flag(fields)
    if flag is not None or _SEMAPHORE in fields:
        return flag
    try:
        return False if _counter_mode_proven(fd) else None
    except OSError:
        return None


def _counter_mode_proven(fd: int) -> bool:
    """Prove that ``fd`` is a counter-mode eventfd, by reads (and at most two writes).

    A semaphore read always returns exactly 1; a counter-mode read returns the whole count.
    So a read returning 2 or more proves counter mode, and nothing else can: if the first
    read returns 0 or 1, we add 1 twice and read again. The writes happen only when the fd
    is O_NONBLOCK (the flag is shared with the peer, which we never change): a write to a
    blocking eventfd whose counter the peer keeps near its maximum would block the caller.
    """
    if _read_nowait(fd) >= 2:
        return True
    if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
        return False
    for _ in range(2):
        try:
            os.eventfd_write(fd, 1)
        except BlockingIOError:  # counter at its maximum: cannot prove anything
            return False
    return _read_nowait(fd) >= 2


def _read_nowait(fd: int) -> int:
    """One eventfd read that never blocks; 0 if the counter was zero."""
    buf = bytearray(8)
    try:
        if os.preadv(fd, [buf], -1, os.RWF_NOWAIT) == 8:
            return int.from_bytes(buf, "little")
    except BlockingIOError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        if select.select([fd], [], [], 0)[0]:  # kernel without RWF_NOWAIT for eventfd
            try:
                return os.eventfd_read(fd)
            except BlockingIOError:
                pass
    return 0
