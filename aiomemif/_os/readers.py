"""The only place aiomemif registers fds with the event loop.

Keeping every ``add_reader``/``remove_reader`` here lets the tests check, on any loop
(uvloop has no public reader table), that nothing stays registered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["active_readers", "add_reader", "remove_reader", "wait_readable", "wait_writable"]

_active: dict[tuple[int, int], str] = {}


def add_reader(
    loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[], None], what: str
) -> None:
    """Register ``callback`` for readability of ``fd`` (replacing any earlier one)."""
    loop.add_reader(fd, callback)
    _active[(id(loop), fd)] = what


def remove_reader(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Unregister ``fd``; harmless if it is not registered or the loop is closed."""
    if _active.pop((id(loop), fd), None) is not None and not loop.is_closed():
        loop.remove_reader(fd)


def active_readers() -> list[str]:
    """Descriptions of the fds currently registered by aiomemif (for leak checks)."""
    return sorted(_active.values())


async def wait_readable(fd: int, what: str) -> None:
    """Wait until ``fd`` is readable; the reader is removed on every path."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    add_reader(loop, fd, ready, what)
    try:
        await fut
    finally:
        remove_reader(loop, fd)


async def wait_writable(fd: int) -> None:
    """Wait until ``fd`` is writable; the writer is removed on every path."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await fut
    finally:
        loop.remove_writer(fd)
