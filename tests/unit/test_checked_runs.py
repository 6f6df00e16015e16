"""The memo of checked descriptor runs (``aiomemif._core.descriptors.CheckedRuns``).

Receivers and the server's transmitter remember runs of descriptors that passed the
checks, so that a later run with the same bytes in the same slots needs one comparison.
These tests pin down that only byte-identical runs are taken from the memo: a run that
differs in any descriptor, good or bad, is checked afresh, bad descriptors are counted and
skipped exactly as without a memo, and new data behind remembered descriptors is what the
views show.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.links import payload
from support.rig import (
    BAD_KINDS,
    BULK_CHECK,
    MASK,
    NEXT,
    MmapRig,
    bad_descriptor,
    forbid,
    rigs,
    spy,
    take,
)

import aiomemif._core.descriptors
from aiomemif._core.descriptors import CheckedRuns

__all__ = ["rigs"]  # the fixture, re-exported for pytest

L = 16
#: A run that starts at ring slot 0 and so does not cross the ring's end (8 slots).
SLOT0 = MASK - 7
GOOD_CHANGES = ["other length", "other buffer"]


# ---------------------------------------------------------------- the memo on its own


def raw_run(values: list[tuple[int, int]]) -> bytes:
    """Descriptors (region 1, flags 0) with these (length, offset) pairs."""
    out = bytearray()
    for length, offset in values:
        out += (1 << 16).to_bytes(4, "little") + length.to_bytes(4, "little")
        out += offset.to_bytes(4, "little") + bytes(4)
    return bytes(out)


def test_recall_needs_every_slot_remembered_and_equal() -> None:
    memo = CheckedRuns(8)
    raw = raw_run([(L, 64 * k) for k in range(4)])
    assert memo.recall(bytes(64), 0, 4) is None  # never remembered (its bytes are zero)
    memo.remember(raw, 2, 1, [0, 64, 128, 192], [L] * 4)
    assert memo.recall(raw, 2, 4) == (1, [0, 64, 128, 192], [L] * 4)
    assert memo.recall(raw[16:], 3, 3) == (1, [64, 128, 192], [L] * 3)
    assert memo.recall(raw, 1, 4) is None  # other slots
    assert memo.recall(raw_run([(L, 0), (L, 64), (L + 1, 128), (L, 192)]), 2, 4) is None
    assert memo.recall(raw + raw[:16], 2, 5) is None  # slot 6 was never remembered
    memo.clear()
    assert memo.recall(raw, 2, 4) is None


def test_only_the_first_region_is_remembered() -> None:
    memo = CheckedRuns(8)
    memo.remember(raw_run([(L, 0)]), 0, 1, [0], [L])
    other = bytes(raw_run([(L, 64)]))
    memo.remember(other, 1, 2, [64], [L])  # another region: not kept
    assert memo.recall(other, 1, 1) is None
    assert memo.recall(raw_run([(L, 0)]), 0, 1) == (1, [0], [L])


# ---------------------------------------------------------------- receivers


@pytest.mark.parametrize("pos", [0, 3, 7], ids=["first", "middle", "last"])
@pytest.mark.parametrize(
    "change", [None, *BAD_KINDS, *GOOD_CHANGES], ids=["same", *BAD_KINDS, *GOOD_CHANGES]
)
@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_second_lap_of_a_checked_run(
    rigs: Callable[..., MmapRig],
    monkeypatch: pytest.MonkeyPatch,
    direction: str,
    change: str | None,
    pos: int,
) -> None:
    """Lap 1 passes the checks and is remembered. Lap 2 in the same slots: identical
    descriptors come from the memo (no check runs, the new data shows through the views);
    one changed descriptor sends the run through the checks again, and a bad one is counted
    and skipped exactly as on a first lap."""
    r = rigs(split=direction == "m2s", start=SLOT0)
    rx = r.receiver(direction)
    first = rx.read
    lap1 = [payload(j, L) for j in range(8)]
    r.publish(direction, r.stage(direction, first, lap1))
    assert take(rx.poll(64).packets) == lap1
    rx.release()

    second = rx.read
    assert second == (first + 8) & MASK
    lap2 = [payload(100 + j, L) for j in range(8)]
    descs = r.stage(direction, second, lap2)
    expected = list(lap2)
    bad = 0
    if change in BAD_KINDS:
        descs[pos] = bad_descriptor(r, direction, change, second + pos)
        del expected[pos]
        bad = 1
    elif change == "other length":
        f, reg, _n, off = descs[pos]
        descs[pos] = (f, reg, L - 5, off)
        expected[pos] = lap2[pos][: L - 5]
    elif change == "other buffer":
        f, reg, n, _off = descs[pos]
        spare = r.own_buffer(direction, second + pos) + L  # unused bytes of the same buffer
        r.write(reg, spare, b"elsewhere-%06d" % pos)
        descs[pos] = (f, reg, n, spare)
        expected[pos] = b"elsewhere-%06d" % pos
    checks = spy(monkeypatch, aiomemif._core.descriptors, BULK_CHECK[direction])
    if change is None:
        forbid(monkeypatch, rx, "_collect_each")
    r.publish(direction, descs)

    assert take(rx.poll(64).packets) == expected
    # The bulk check runs unless the run came from the memo, or its region word already
    # differs (then the per-descriptor path checks each one).
    assert len(checks) == (0 if change in (None, "region out of range") else 1)
    c = rx.counters
    assert (c.packets, c.bad_descriptors) == (16 - bad, bad)
    assert rx.held == 8
    rx.release()


@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_memo_is_not_used_for_a_run_across_the_ring_end(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    r = rigs(split=direction == "m2s", start=SLOT0 + 4)  # slots 4..7, then 0..3
    rx = r.receiver(direction)
    for lap in range(2):
        packets = [payload(10 * lap + j, L) for j in range(8)]
        r.publish(direction, r.stage(direction, rx.read, packets))
        checks = spy(monkeypatch, aiomemif._core.descriptors, BULK_CHECK[direction])
        assert take(rx.poll(64).packets) == packets
        assert len(checks) == 1  # checked on both laps
        monkeypatch.undo()
        rx.release()


def test_reset_forgets_the_memo(rigs: Callable[..., MmapRig]) -> None:
    r = rigs(start=SLOT0)
    rx = r.server_rx
    packets = [payload(j, L) for j in range(8)]
    r.publish("s2m", r.stage("s2m", rx.read, packets))
    take(rx.poll(64).packets)
    rx.release()
    assert rx.checked.recall(bytes(r.s2m_server.desc[: 16 * 8]), 0, 8) is not None
    rx.reset()
    assert rx.checked.recall(bytes(r.s2m_server.desc[: 16 * 8]), 0, 8) is None


def memo_sizes_ok(memo: CheckedRuns, size: int) -> bool:
    """The memo's arrays still have one entry per ring slot (nothing grew or shrank)."""
    return (len(memo._raw), len(memo._ok), len(memo._offsets), len(memo._values)) == (
        16 * size,
        size,
        size,
        size,
    )


def test_remember_refuses_a_run_that_does_not_fit() -> None:
    memo = CheckedRuns(4)
    raw = raw_run([(L, 0), (L, 64)])
    with pytest.raises(ValueError, match="must fit the ring"):
        memo.remember(raw, 3, 1, [0, 64], [L, L])  # slots 3 and 4 of a 4-slot ring
    with pytest.raises(ValueError, match="must fit the ring"):
        memo.remember(raw, 0, 1, [0], [L])  # two descriptors, one offset
    with pytest.raises(ValueError, match="must fit the ring"):
        memo.remember(raw, 0, 1, [0, 64], [L])
    assert memo_sizes_ok(memo, 4)
    assert memo.recall(raw, 0, 2) is None


@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_chains_in_remembered_slots(rigs: Callable[..., MmapRig], direction: str) -> None:
    """Lap 2 differs from the remembered lap 1 only in the flags (NEXT): chains."""
    r = rigs(split=direction == "m2s", start=SLOT0)
    rx = r.receiver(direction)
    lap1 = [payload(j, L) for j in range(8)]
    r.publish(direction, r.stage(direction, rx.read, lap1))
    assert take(rx.poll(64).packets) == lap1
    rx.release()
    lap2 = [payload(100 + j, L) for j in range(8)]
    r.publish(direction, r.stage(direction, rx.read, lap2, flags=[NEXT, 0] * 4))
    assert take(rx.poll(64).packets) == [lap2[i] + lap2[i + 1] for i in range(0, 8, 2)]
    assert rx.counters.chained == 4
    rx.release()


@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_uneven_lengths_and_a_partial_recall(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """Lap 1 with mixed lengths is remembered; lap 2, identical, is read in two polls (a
    recall of part of a remembered run) and every packet keeps its own length."""
    r = rigs(split=direction == "m2s", start=SLOT0)
    rx = r.receiver(direction)
    sizes = [1, 64, 17, 63, 2, 33, 32, 5]
    for lap in range(2):
        packets = [payload(10 * lap + j, n) for j, n in enumerate(sizes)]
        r.publish(direction, r.stage(direction, rx.read, packets))
        checks: list[object] = []
        if lap:
            checks = spy(monkeypatch, aiomemif._core.descriptors, BULK_CHECK[direction])
            forbid(monkeypatch, rx, "_collect_each")
        assert take(rx.poll(3).packets) + take(rx.poll(64).packets) == packets
        assert checks == []
        rx.release()
    assert memo_sizes_ok(rx.checked, r.size)


def test_client_memo_keeps_to_its_buffer_region(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that first publishes in-range descriptors of another region (region 0,
    where the rings live) gets them refused (the client offered none there), and does not
    keep the client's memo from remembering its buffers."""
    r = rigs(split=True, start=SLOT0)
    rx = r.client_rx
    odd = [(0, 0, L, 64 * j) for j in range(8)]  # region 0: in range, not the buffer region
    r.publish("m2s", odd)
    assert take(rx.poll(64).packets) == []
    assert rx.counters.bad_descriptors == 8
    rx.release()
    for lap in range(2):
        packets = [payload(10 * lap + j, L) for j in range(8)]
        r.publish("m2s", r.stage("m2s", rx.read, packets))
        checks = spy(monkeypatch, aiomemif._core.descriptors, "offered_run_ok")
        assert take(rx.poll(64).packets) == packets
        assert len(checks) == (0 if lap else 1)
        monkeypatch.undo()
        rx.release()


# ---------------------------------------------------------------- the server's transmitter


def server_lap(r: MmapRig, seed: int) -> list[bytes]:
    """The server sends 8 packets of ``L`` bytes into the client's offers; the client
    receives them (checked) and refills. Returns the packets."""
    packets = [payload(seed + j, L) for j in range(8)]
    assert r.server_tx.write(packets) == 8
    assert take(r.client_rx.poll(64).packets) == packets
    r.client_rx.release()
    return packets


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_server_transmit_after_a_remembered_offer_turns_bad(
    rigs: Callable[..., MmapRig], kind: str
) -> None:
    """The client offers the same buffers lap after lap, then one offer turns bad: the
    server checks that run afresh, publishes the bad slot empty and sends the rest."""
    r = rigs(split=True, start=SLOT0)
    tx, rx = r.server_tx, r.client_rx
    for lap in range(2):
        server_lap(r, 10 * lap)
    slot = tx.tail + 3
    f, reg, n, off = bad_descriptor(r, "m2s", kind, slot)
    r.put(r.m2s_client, slot, f, reg, n, off)  # the client's offer in slot 3, turned bad
    packets = [payload(100 + j, L) for j in range(8)]
    assert tx.write(packets) == 7  # the bad slot went back empty, so one did not fit
    assert tx.counters.bad_descriptors == 1
    assert take(rx.poll(64).packets) == packets[:7]


def test_server_transmit_remembered_uneven_offers(rigs: Callable[..., MmapRig]) -> None:
    """Slot 3 is offered smaller than the others, identically on every lap: a lap taken
    from the memo must still respect slot 3's capacity (the smallest of the run)."""
    r = rigs(split=True, start=SLOT0)
    tx, rx = r.server_tx, r.client_rx
    for lap in range(3):
        slot = tx.tail + 3
        f, reg, _n, off = r.get(r.m2s_client, slot)
        r.put(r.m2s_client, slot, f, reg, 32, off)  # the client offers only 32 bytes here
        canary = b"\xee" * (r.bsize - 32)
        r.write(reg, off + 32, canary)
        packets = [payload(10 * lap + j, 48) for j in range(8)]
        sent = tx.write(packets)
        assert r.read(reg, off + 32, len(canary)) == canary, lap  # nothing past the offer
        assert take(rx.poll(64).packets) == packets[:sent]
        rx.release()


def test_server_transmit_identical_offers_come_from_the_memo(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = rigs(split=True, start=SLOT0)
    tx, rx = r.server_tx, r.client_rx
    for lap in range(2):
        checks = spy(monkeypatch, aiomemif._core.descriptors, "run_ok")
        if lap:
            forbid(monkeypatch, tx, "_write_each")
        packets = [payload(10 * lap + j, L) for j in range(8)]
        assert tx.write(packets) == 8
        assert len(checks) == (0 if lap else 1)
        monkeypatch.undo()
        assert take(rx.poll(64).packets) == packets
        rx.release()


def test_server_transmit_offer_moved_to_another_good_buffer(rigs: Callable[..., MmapRig]) -> None:
    """Lap 2 offers slot 5 a different (valid) buffer: the data goes there."""
    r = rigs(split=True, start=SLOT0)
    server_lap(r, 0)
    slot = r.server_tx.tail + 5
    f, reg, _n, off = r.get(r.m2s_client, slot)
    r.put(r.m2s_client, slot, f, reg, L, off + 32)  # the second half of its buffer
    packets = server_lap(r, 10)
    assert r.read(reg, off + 32, L) == packets[5]


def test_server_transmit_wrapping_offers_keep_the_memo_size(
    rigs: Callable[..., MmapRig],
) -> None:
    r = rigs(split=True, start=SLOT0 + 4)
    for lap in range(3):
        server_lap(r, 10 * lap)
    assert memo_sizes_ok(r.server_tx.checked, r.size)


def test_server_reset_forgets_the_memo(rigs: Callable[..., MmapRig]) -> None:
    r = rigs(split=True, start=SLOT0)
    tx = r.server_tx
    raw = bytes(r.m2s_server.desc[: 16 * 8])
    assert tx.write([payload(j, L) for j in range(8)]) == 8
    assert tx.checked.recall(raw, 0, 8) is not None
    tx.reset()
    assert tx.checked.recall(raw, 0, 8) is None
