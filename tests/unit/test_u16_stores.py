"""The 16-bit store tear test of protocol doc §6.8.

head and tail are u16 words in memory shared with another process. aiomemif reads and
writes them as single elements of a ``memoryview.cast("H")`` view, relying on CPython
turning that into one 2-byte access. That is a property of the CPython build, not of the
language, so this test checks it here: a forked writer flips a u16 in a shared mapping
between 0x00FF and 0x0100 while this process reads it. A torn access would show up as
0x0000 (low byte stored first) or 0x01FF (high byte stored first).

A control run with a deliberately bytewise writer shows the detector can see tears.

``struct.pack_into`` is *not* a single store: CPython zero-fills the destination before
packing (``memset`` in ``s_pack_internal``), so a concurrent reader can see 0x0000. Only
``struct.unpack_from`` (a read) is tested here; indexes must be written through ``cast("H")``.
"""

from __future__ import annotations

import collections
import mmap
import os
import struct
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

LOW, HIGH = 0x00FF, 0x0100
TORN = frozenset({0x0000, 0x01FF})
DURATION = 0.5
#: Word indexes in the shared page: the flipped value, "child ready", "please stop".
VALUE, READY, STOP = 0, 8, 16

Writer = Callable[[memoryview, mmap.mmap], None]


def flip_cast(words: memoryview, _mm: mmap.mmap) -> None:
    for _ in range(500):
        words[VALUE] = HIGH
        words[VALUE] = LOW


_U16 = struct.Struct("<H")


def flip_bytewise(_words: memoryview, mm: mmap.mmap) -> None:
    """The wrong way: two single-byte stores per update (low byte first)."""
    for _ in range(500):
        mm[0] = 0x00  # 0x00FF -> 0x0000 (torn) -> 0x0100
        mm[1] = 0x01
        mm[0] = 0xFF  # 0x0100 -> 0x01FF (torn) -> 0x00FF
        mm[1] = 0x00


def read_cast(words: memoryview, _mm: mmap.mmap) -> list[int]:
    return [words[VALUE] for _ in range(1000)]


def read_struct(_words: memoryview, mm: mmap.mmap) -> list[int]:
    unpack = _U16.unpack_from
    return [unpack(mm, 0)[0] for _ in range(1000)]


@contextmanager
def shared_page() -> Iterator[tuple[mmap.mmap, memoryview]]:
    """An anonymous MAP_SHARED page (shared with forked children), released on exit."""
    mm = mmap.mmap(-1, mmap.PAGESIZE)  # anonymous mappings are MAP_SHARED by default
    words = memoryview(mm).cast("H")
    try:
        yield mm, words
    finally:
        words.release()
        mm.close()


def race(
    writer: Writer, reader: Callable[[memoryview, mmap.mmap], list[int]]
) -> collections.Counter[int]:
    """Run ``writer`` in a forked child for DURATION seconds while reading; count values."""
    seen: collections.Counter[int] = collections.Counter()
    with shared_page() as (mm, words):
        words[VALUE] = LOW
        with warnings.catch_warnings():
            # Python >= 3.12 warns about fork() in a process with threads. The child only
            # touches the shared page and then calls os._exit(), so that hazard is absent.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                words[READY] = 1
                give_up = time.monotonic() + DURATION + 10.0
                while not words[STOP] and time.monotonic() < give_up:
                    writer(words, mm)
                code = 0
            finally:
                os._exit(code)
        try:
            start_by = time.monotonic() + 10.0
            while not words[READY]:
                assert time.monotonic() < start_by, "writer process did not start"
                time.sleep(0.001)
            end = time.monotonic() + DURATION
            while time.monotonic() < end:
                seen.update(reader(words, mm))
        finally:
            words[STOP] = 1
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    return seen


@pytest.mark.parametrize(
    "reader",
    [read_cast, read_struct],
    ids=["read via cast('H')", "read via struct '<H'"],
)
def test_cast_u16_stores_do_not_tear(reader: Callable[[memoryview, mmap.mmap], list[int]]) -> None:
    seen = race(flip_cast, reader)
    torn = {hex(v): n for v, n in seen.items() if v in TORN}
    assert not torn, f"torn 16-bit accesses seen: {torn} in {seen.total()} reads"
    assert set(seen) <= {LOW, HIGH}, seen
    assert seen.total() > 10_000
    assert seen[LOW] and seen[HIGH], f"the writer was never seen flipping: {seen}"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs to race reliably")
def test_bytewise_stores_do_tear() -> None:
    """Control: the same harness does catch torn updates when the writer is bytewise."""
    seen = race(flip_bytewise, read_cast)
    assert any(seen[v] for v in TORN), f"no tear seen with bytewise stores: {seen}"
