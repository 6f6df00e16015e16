"""Measuring how long the event loop was held, and attackers that run in a child process.

- :func:`heartbeat`: a task that wakes every millisecond and records the longest gap
  between two wake-ups, i.e. the longest time the loop could not run anything else.
- :func:`forked`: run a pure-``os`` function in a forked child (no GIL shared with the
  loop under test, like a native peer), killed by SIGALRM if it outlives its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import signal
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator

import attrs

__all__ = ["Stalls", "Shared", "forked", "heartbeat"]


@attrs.define
class Stalls:
    """What :func:`heartbeat` saw: the longest gap between its wake-ups, in seconds."""

    longest: float = 0.0
    beats: int = 0
    last: float = attrs.field(factory=time.monotonic)

    def beat(self) -> None:
        now = time.monotonic()
        self.longest = max(self.longest, now - self.last)
        self.beats += 1
        self.last = now


@contextlib.asynccontextmanager
async def heartbeat(period: float = 0.001) -> AsyncIterator[Stalls]:
    stalls = Stalls()

    async def beat() -> None:
        while True:
            await asyncio.sleep(period)
            stalls.beat()

    task = asyncio.create_task(beat())
    try:
        await asyncio.sleep(0)
        yield stalls
    finally:
        stalls.beat()  # the gap up to now counts too
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Shared:
    """A few u64 counters in anonymous shared memory, visible to a forked child."""

    _U64 = struct.Struct("=Q")

    def __init__(self, slots: int = 4) -> None:
        self._map = mmap.mmap(-1, 8 * slots)

    def __getitem__(self, i: int) -> int:
        return int(self._U64.unpack_from(self._map, 8 * i)[0])

    def __setitem__(self, i: int, value: int) -> None:
        self._U64.pack_into(self._map, 8 * i, value)

    def close(self) -> None:
        self._map.close()


@contextlib.contextmanager
def forked(target: Callable[[], None], seconds: float) -> Iterator[int]:
    """Run ``target`` in a forked child for at most ``seconds``. Yields the child's pid; on
    exit waits for it, and SIGKILLs it 3 s after ``seconds`` (it may be stuck in a blocking
    syscall; a SIGALRM 2 s after ``seconds`` ends it sooner unless ``target`` installs its
    own SIGALRM handler). ``target`` must use only ``os``-level calls (no asyncio)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(int(seconds) + 2)
            target()
        finally:
            os._exit(0)
    try:
        yield pid
    finally:
        deadline = time.monotonic() + seconds + 3
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
