"""The client's shadow table of offered M2S buffers and the frame limit
(``aiomemif._core.descriptors``): the one rule for what a receiver takes from its peer."""

from __future__ import annotations

import itertools
from array import array

import pytest

from aiomemif._core.descriptors import (
    CheckedRuns,
    OfferedBuffers,
    Row,
    descriptor_ok,
    each_offered_ok,
    each_ok,
    offered_ok,
    offered_run_ok,
    run_ok,
)

B = 256
REGION = 1
#: Eight slots; slot k's buffer is at 1000 + 256 * (7 - k) (not in slot order).
BASES = array("I", [1000 + B * (7 - k) for k in range(8)])


def offers(headroom: int = 0) -> OfferedBuffers:
    return OfferedBuffers(REGION, array("I", BASES), B, headroom)


@pytest.mark.parametrize(
    ("region", "length", "delta", "ok"),
    [
        (REGION, B, 0, True),  # the whole buffer
        (REGION, B + 1, 0, False),  # 1 byte too many
        (REGION, 1, B - 1, True),  # its last byte
        (REGION, 2, B - 1, False),  # 1 byte past its end
        (REGION, 10, -1, False),  # starts in the buffer before
        (REGION, 0, 0, False),  # empty
        (REGION, 10, B, False),  # the next buffer in memory
        (0, 10, 0, False),  # another region at the same offset
    ],
)
def test_offered_ok_keeps_to_the_slot_buffer(
    region: int, length: int, delta: int, ok: bool
) -> None:
    table = offers()
    for slot in (3, 8 + 3):  # free-running indexes are masked
        assert offered_ok(region, length, BASES[3] + delta, slot, table, 1 << 20) is ok
    rows: list[Row] = [(0, region, length, BASES[3] + delta, 0)]
    assert each_offered_ok(rows, 3, table, 1 << 20) == [ok]


def test_each_offered_ok_agrees_with_offered_ok() -> None:
    table = offers(16)
    offsets = sorted({b + d for b in BASES for d in (-1, 0, 16, B - 1, B)})
    rows: list[Row] = [
        (0, reg, ln, off, 0)
        for reg, ln, off in itertools.product((0, REGION), (0, 1, 100, B - 16, B, B + 1), offsets)
    ]
    for first in (0, 5, 0xFFFE):
        verdicts = each_offered_ok(rows, first, table, 200)
        assert verdicts == [
            offered_ok(reg, ln, off, first + i, table, 200)
            for i, (_f, reg, ln, off, _m) in enumerate(rows)
        ]
        assert any(verdicts) and not all(verdicts)


def test_offered_run_ok_takes_exact_offers_only() -> None:
    table = offers(16)
    data = [b + 16 for b in BASES]
    assert offered_run_ok(REGION, [B - 16], data[2:6], 2, table, 1 << 20)
    assert offered_run_ok(REGION, [1, 5, B - 16], data[5:8], 5, table, 1 << 20)
    assert offered_run_ok(REGION, [7], data[6:] + data[:3], 6 + 8, table, 1 << 20)  # wraps
    assert not offered_run_ok(REGION, [B - 15], data[2:6], 2, table, 1 << 20)  # capacity
    assert not offered_run_ok(REGION, [100], data[2:6], 2, table, 99)  # the frame limit
    assert not offered_run_ok(REGION, [0, 5], data[2:4], 2, table, 1 << 20)  # empty
    assert not offered_run_ok(REGION, [10], data[3:7], 2, table, 1 << 20)  # other slots
    assert not offered_run_ok(0, [10], data[2:6], 2, table, 1 << 20)  # other region
    moved = [data[2] - 16, *data[3:6]]  # inside its buffer, but not where it was offered
    assert not offered_run_ok(REGION, [10], moved, 2, table, 1 << 20)
    assert offered_ok(REGION, 10, moved[0], 2, table, 1 << 20)  # (the per-descriptor rule)


def test_headroom_and_moved_buffers() -> None:
    table = offers()
    table.set_headroom(32)
    assert (table.capacity, table.data_run(0, 2)) == (B - 32, [BASES[0] + 32, BASES[1] + 32])
    table.bases[1], table.bases[2] = table.bases[2], table.bases[1]  # forwarding swapped
    table.moved([9, 10])
    assert table.data_run(1, 2) == [BASES[2] + 32, BASES[1] + 32]
    assert offered_ok(REGION, 10, BASES[2], 1, table, 1 << 20)
    assert not offered_ok(REGION, 10, BASES[1], 1, table, 1 << 20)


def test_checked_runs_forget() -> None:
    memo = CheckedRuns(4)
    raw = bytes(16 * 4)
    memo.remember(raw, 0, 0, [0, 1, 2, 3], [1] * 4)
    memo.forget([4 + 2])  # free-running slot 6 is ring slot 2
    assert memo.recall(raw[:32], 0, 2) is not None
    assert memo.recall(raw, 0, 4) is None
    assert memo.recall(raw[48:], 3, 1) is not None


def test_region_checks_take_a_frame_limit() -> None:
    sizes = [1 << 21]
    assert descriptor_ok(0, 65_535, 0, sizes, 65_535)
    assert not descriptor_ok(0, 65_536, 0, sizes, 65_535)
    assert descriptor_ok(0, 65_536, 0, sizes)  # no limit: the transmitter's capacities
    rows: list[Row] = [(0, 0, 65_535, 0, 0), (0, 0, 65_536, 0, 0)]
    assert each_ok(rows, sizes, 65_535) == [True, False]
    assert run_ok(0, [65_535], [0, 10], sizes, 65_535)
    assert not run_ok(0, [65_536], [0, 10], sizes, 65_535)
    assert not run_ok(0, [1, 65_536], [0, 10], sizes, 65_535)
    assert run_ok(0, [1, 65_536], [0, 10], sizes)
