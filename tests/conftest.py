"""Test-suite wiring: both event loops, and leak checks around every test.

- Every async test runs on the default asyncio loop and on uvloop (pytest-asyncio's
  ``pytest_asyncio_loop_factories`` hook).
- An autouse fixture fails a test that leaves new fds open, memfd mappings in place, or fds
  registered with the loop by aiomemif.
- Async tests are wrapped so that a task still running when the test body returns fails it.
- A suite started as a background job of a non-interactive shell (``cmd &``, nohup) has
  SIGINT ignored, and so would every command it starts, which then rightly keeps it ignored:
  the suite takes SIGINT back, so the tests that stop a command with SIGINT mean it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvloop
from support.leaks import memfd_mappings, open_fds
from support.rig import rigs  # noqa: F401  (the shared-memory rig fixture, for every tier)

from aiomemif._os import readers as _loopio

if TYPE_CHECKING:
    from aiomemif.testing.vpp import Vpp

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # children get SIG_DFL


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def _checked(
    fn: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., Coroutine[Any, Any, None]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> None:
        await fn(*args, **kwargs)
        me = asyncio.current_task()
        for _ in range(5):
            left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not left:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"tasks still running after the test: {left}")

    return wrapper


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "obj", None)
        if inspect.iscoroutinefunction(fn) and not item.get_closest_marker("allow_tasks"):
            item.obj = _checked(fn)  # type: ignore[attr-defined]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_tasks: do not fail on tasks left running")
    # libuv opens process-wide fds (its signal pipe) with the first loop; make them part of
    # every test's baseline instead of a "leak" of whichever test ran first on uvloop.
    uvloop.new_event_loop().close()


def _leaks(before_fds: dict[int, str], before_maps: list[str]) -> list[str]:
    problems = []
    fds = open_fds()
    new = {fd: what for fd, what in fds.items() if before_fds.get(fd) != what}
    if new:
        problems.append(f"fds left open: {new}")
    maps = memfd_mappings()
    if len(maps) > len(before_maps):
        problems.append(f"memfd mappings left: {sorted(set(maps) - set(before_maps))}")
    readers = _loopio.active_readers()
    if readers:
        problems.append(f"fds still registered with the loop: {readers}")
    return problems


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaked fds, memfd mappings or loop readers."""
    before_fds = open_fds()
    before_maps = memfd_mappings()
    yield
    # Give garbage (released views, closed loops) a moment to go away before judging.
    deadline = time.monotonic() + 1.0
    while True:
        problems = _leaks(before_fds, before_maps)
        if not problems or time.monotonic() > deadline:
            break
        import gc

        gc.collect()
        time.sleep(0.02)
    _loopio._active.clear()
    assert not problems, "; ".join(problems)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A private temporary directory for Unix socket files (short path)."""
    with tempfile.TemporaryDirectory(prefix="memif-") as d:
        yield Path(d)


@pytest.fixture
def sock_path(sock_dir: Path) -> str:
    """A fresh socket path in a private temporary directory."""
    return str(sock_dir / "memif.sock")


@pytest.fixture
def need_testpmd() -> None:
    """Skip (or, with CI=true, fail) when dpdk-testpmd with net_memif is not installed."""
    from aiomemif.testing.testpmd import find_testpmd, pmd_dir

    if find_testpmd() is None or pmd_dir() is None:
        reason = (
            "dpdk-testpmd with the net_memif driver is not installed "
            "(apt-get install -y dpdk-dev librte-net-memif23)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; with CI=true the interop tests must run", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
async def vpp() -> AsyncIterator[Vpp]:
    """A VPP of its own for one test (skips, or fails with CI=true, without VPP)."""
    from support.vpp import need_vpp

    from aiomemif.testing.vpp import Vpp

    async with Vpp(need_vpp()) as instance:
        yield instance
