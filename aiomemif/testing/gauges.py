"""What the storm and the soak watch in their own process: fds, memfd mappings, asyncio
tasks and resident memory, read from ``/proc/self``."""

from __future__ import annotations

import asyncio
import gc
import os

import attrs

__all__ = ["Reading", "memfd_mappings", "open_fds", "read", "rss_bytes", "settle"]


def open_fds() -> int:
    """How many fds this process has open."""
    return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself used


def memfd_mappings() -> int:
    """How many of this process's mappings are of memfd files (memif regions)."""
    with open("/proc/self/maps") as f:
        return sum("/memfd:" in line for line in f)


def rss_bytes() -> int:
    """This process's resident set size (``VmRSS``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0  # pragma: no cover - every Linux kernel reports VmRSS


@attrs.frozen
class Reading:
    """One look at the process: open fds, memfd mappings and unfinished asyncio tasks."""

    fds: int
    mappings: int
    tasks: int

    def __str__(self) -> str:
        return f"fds {self.fds}, memfd mappings {self.mappings}, tasks {self.tasks}"


def read() -> Reading:
    """The current :class:`Reading` (call it inside a running event loop)."""
    tasks = sum(not t.done() for t in asyncio.all_tasks())
    return Reading(open_fds(), memfd_mappings(), tasks)


async def settle(baseline: Reading, within: float = 2.0) -> Reading:
    """Wait up to ``within`` seconds (collecting garbage) for the readings to come back
    down to ``baseline``; the last reading (compare it with ``baseline`` yourself)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        now = read()
        if now == baseline or loop.time() >= deadline:
            return now
        gc.collect()
        await asyncio.sleep(0.02)
