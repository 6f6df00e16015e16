"""What the fuzz targets share: reading an input, the invariant checks, and the runner.

A target is a module with ``one_input(data: bytes) -> None`` that raises on a finding:
:class:`Finding` for a broken invariant, any exception but a documented one for a crash.
:func:`main` hands such a function to atheris with aiomemif instrumented, and checks every
:data:`FD_CHECK_EVERY` inputs that the process holds no more fds than it did at first.
atheris is imported only there, so the targets also run (from the test suite) without it.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import types
from collections.abc import Callable, Sequence
from typing import TypeVar

from aiomemif.errors import MemifError

__all__ = [
    "FD_CHECK_EVERY",
    "Finding",
    "Reader",
    "Regions",
    "attempt",
    "check",
    "main",
    "open_fd_count",
]

T = TypeVar("T")

#: Inputs between two counts of the process's open fds (one ``listdir`` of /proc/self/fd).
FD_CHECK_EVERY = 1000


class Finding(AssertionError):
    """An invariant a target checks was broken (a bug in aiomemif, or in the target)."""


def check(ok: bool, what: str) -> None:
    """Raise :class:`Finding` with ``what`` unless ``ok``."""
    if not ok:
        raise Finding(what)


class Reader:
    """Reads a fuzz input front to back; past its end every read gives zeros."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end of the input)."""
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")


def attempt(
    allowed: tuple[type[MemifError], ...], fn: Callable[..., T], *args: object
) -> T | MemifError:
    """``fn(*args)``, or the exception it raised if that is one of ``allowed`` (what the
    call documents). Any other aiomemif error is a :class:`Finding`; any other exception
    (IndexError, struct.error, ...) propagates as it is, and the fuzzer reports it."""
    try:
        return fn(*args)
    except allowed as exc:
        return exc
    except MemifError as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise Finding(f"{name} raised undocumented {type(exc).__name__}: {exc}") from exc


def _address(buffer: bytearray | memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


class Regions:
    """Bytearrays standing in for the mapped regions of one link, their memoryviews (what
    the endpoints get), and where a view handed out by an endpoint points."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.mem = [bytearray(max(n, 1)) for n in sizes]
        self.views = [memoryview(m) for m in self.mem]
        self.sizes = [len(m) for m in self.mem]
        self._where = {id(m): (i, _address(m)) for i, m in enumerate(self.mem)}

    def locate(self, view: memoryview) -> tuple[int, int]:
        """``(region, offset)`` of a non-empty byte view; a :class:`Finding` unless it lies
        wholly inside one of the regions."""
        # (hot: messages are formatted only on failure)
        if view.ndim != 1 or view.format != "B" or not len(view):
            raise Finding(f"not a non-empty byte view: {view.format!r}, {len(view)} bytes")
        where = self._where.get(id(view.obj))
        if where is None:
            raise Finding("a view into memory that is no region")
        region, base = where
        offset = _address(view) - base
        if offset < 0 or offset + len(view) > self.sizes[region]:
            raise Finding(
                f"a view of {len(view)} bytes at {offset} lies outside region {region}"
                f" ({self.sizes[region]} bytes)"
            )
        return region, offset

    def snapshot(self) -> list[bytes]:
        return [bytes(m) for m in self.mem]

    def release(self) -> None:
        for v in self.views:
            v.release()


def open_fd_count() -> int:
    """How many fds this process has open."""
    return len(os.listdir("/proc/self/fd"))


class _FdWatch:
    """Wraps a target: every ``every`` inputs, the open fds must not have grown."""

    def __init__(self, one_input: Callable[[bytes], None], every: int) -> None:
        self.one_input = one_input
        self.every = every
        self.count = 0
        self.baseline: int | None = None

    def __call__(self, data: bytes) -> None:
        self.one_input(data)
        self.count += 1
        if self.count % self.every:
            return
        fds = open_fd_count()
        if self.baseline is None:
            self.baseline = fds
        elif fds > self.baseline:
            raise Finding(f"open fds grew from {self.baseline} to {fds} by input {self.count}")


def instrument(prefix: str = "aiomemif") -> int:
    """Instrument every loaded function of the modules under ``prefix`` for coverage (what
    ``atheris.instrument_all`` does, restricted to aiomemif); returns how many."""
    import atheris

    count = 0
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType):
            module = getattr(obj, "__module__", None) or ""
            if module == prefix or module.startswith(prefix + "."):
                atheris.instrument_func(obj)
                count += 1
    return count


def main(one_input: Callable[[bytes], None], argv: list[str] | None = None) -> None:
    """Fuzz ``one_input`` with libFuzzer's command line ``argv`` (default ``sys.argv``)."""
    import atheris

    print(f"INFO: instrumented {instrument()} aiomemif functions", file=sys.stderr)
    atheris.Setup(sys.argv if argv is None else argv, _FdWatch(one_input, FD_CHECK_EVERY))
    atheris.Fuzz()
