"""The shapes of received chain runs, remembered (:class:`~aiomemif._core.chains.RunShapes`):
a run whose flags, region and length words were seen before is looked up instead of
parsed, and only its offsets and the receiver's limits are checked again. Every run must
still arrive byte-exact, and every bad descriptor be refused and counted as before.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.links import payload
from support.rig import MASK, NEXT, MmapRig, descriptors, forbid, spy, take

import aiomemif._core.rx
from aiomemif._core import chains
from aiomemif._core.chains import RunShape, RunShapes, key_of
from aiomemif._core.ring import Ring
from aiomemif._core.rx import ClientRx, ServerRx

LOG2 = 4  # 16 slots of 64 bytes
SLOT0 = MASK - 15
DIRECTIONS = ["s2m", "m2s"]
#: Bad descriptors that keep flags, region and length: only the offset is wrong.
BAD_OFFSETS = [
    "offset+length one past the region",
    "offset+length far past the region",
    "offset near 2**32",
]


def sizes_of(r: MmapRig) -> list[int]:
    """Two chains and a one-buffer packet between them: 5 slots."""
    return [2 * r.bsize, 10, r.bsize + 1]


def publish(r: MmapRig, direction: str, sizes: list[int], seed: int = 0) -> list[bytes]:
    tx = r.client_tx if direction == "s2m" else r.server_tx
    packets = [payload(seed + j, n) for j, n in enumerate(sizes)]
    assert tx.write(packets) == len(packets)
    return packets


def ring_of(r: MmapRig, direction: str) -> Ring:
    return r.s2m_client if direction == "s2m" else r.m2s_server


def lap(r: MmapRig, rx: ServerRx | ClientRx, direction: str, seed: int, limit: int) -> None:
    """Publish one run, receive it whole with ``poll(limit)``, check it, give it back."""
    packets = publish(r, direction, sizes_of(r), seed)
    first = rx.read
    run = rx.poll(limit)
    assert run.slots is not None
    assert [s & r.mask for s in run.slots] == [(first + d) & r.mask for d in (0, 2, 3)]
    assert take(run.packets) == packets
    rx.release()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_run_seen_before_is_looked_up(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """Runs of the same sizes lap after lap, most across the ring's end: the first is
    parsed, every later one looked up, all in bulk and byte-exact."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    parsed = spy(monkeypatch, aiomemif._core.rx, "_shape_of")
    forbid(monkeypatch, rx, "_collect_each")
    for k in range(7):  # 5 slots a run on a 16-slot ring
        lap(r, rx, direction, 10 * k, 3)
    assert len(parsed) == 1
    c = rx.counters
    assert (c.packets, c.chained, c.bad_descriptors) == (21, 14, 0)


@pytest.mark.parametrize("kind", BAD_OFFSETS)
@pytest.mark.parametrize("pos", [0, 2, 4], ids=["first", "one-buffer", "last"])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_remembered_shape_with_a_bad_offset(
    rigs: Callable[..., MmapRig],
    monkeypatch: pytest.MonkeyPatch,
    direction: str,
    pos: int,
    kind: str,
) -> None:
    """A run of a remembered shape with one offset out of bounds: looked up (not parsed),
    refused by the offsets check, and the per-descriptor path drops just that packet."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    lap(r, rx, direction, 0, 3)
    packets = publish(r, direction, sizes_of(r), 50)
    first = rx.read
    ring = ring_of(r, direction)
    flags, region, length, _offset = descriptors(ring, first + pos, 1)[0]
    end = len(r.server_views[r.breg])
    offset = {
        "offset+length one past the region": end - length + 1,
        "offset+length far past the region": end + 1000,
        "offset near 2**32": 0xFFFF_FFF0,
    }[kind]
    r.put(ring, first + pos, flags, region, length, offset)
    forbid(monkeypatch, aiomemif._core.rx, "_shape_of")
    fallback = spy(monkeypatch, rx, "_collect_each")
    lost = {0: 0, 2: 1, 4: 2}[pos]
    assert take(rx.poll(3).packets) == [p for j, p in enumerate(packets) if j != lost]
    assert len(fallback) == 1
    c = rx.counters
    assert (c.packets, c.bad_descriptors, c.chained) == (5, 1, 3 + (lost == 1))


@pytest.mark.parametrize("direction", ["m2s"])
def test_a_remembered_shape_at_a_moved_offset(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """The client: an offset moved inside the buffer offered in its slot is no longer the
    exact offer the bulk check takes; the per-descriptor path still takes the packet."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    lap(r, rx, direction, 0, 3)
    packets = publish(r, direction, sizes_of(r), 50)
    ring = ring_of(r, direction)
    at = rx.read + 2  # the one-buffer packet, 10 bytes in a 64-byte buffer
    flags, region, length, offset = descriptors(ring, at, 1)[0]
    r.put(ring, at, flags, region, length, offset + 4)  # still inside its buffer
    r.client_views[r.breg][offset + 4 : offset + 4 + length] = packets[1]
    forbid(monkeypatch, aiomemif._core.rx, "_shape_of")
    fallback = spy(monkeypatch, rx, "_collect_each")
    assert take(rx.poll(3).packets) == packets
    assert len(fallback) == 1
    assert (rx.counters.bad_descriptors, rx.counters.packets) == (0, 6)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_remembered_shape_under_a_lower_frame_limit(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """A remembered shape is checked against the receiver's limit as it is now: a chain
    over a lowered ``max_frame`` is dropped whole and counted, by the per-descriptor path."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    lap(r, rx, direction, 0, 3)
    packets = publish(r, direction, sizes_of(r), 50)
    rx.max_frame = 2 * r.bsize - 1  # the first chain is one byte over
    forbid(monkeypatch, aiomemif._core.rx, "_shape_of")
    fallback = spy(monkeypatch, rx, "_collect_each")
    assert take(rx.poll(3).packets) == packets[1:]
    assert len(fallback) == 1
    assert (rx.counters.bad_descriptors, rx.counters.packets) == (1, 5)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_run_that_ended_with_the_published_slots_is_not_remembered(
    rigs: Callable[..., MmapRig], direction: str
) -> None:
    """A poll that took everything published, fewer packets than its limit, leaves no
    shape: the next poll of the same limit, with more published, gets every packet."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    lap(r, rx, direction, 0, 8)
    assert rx.shapes.guess == 0
    packets = publish(r, direction, [*sizes_of(r), 2 * r.bsize, 3])
    assert take(rx.poll(8).packets) == packets


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_remembered_shape_serves_its_limit_only(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """A shape remembered for 3 packets does not answer a poll of 2 (nor of 4)."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    lap(r, rx, direction, 0, 3)
    packets = publish(r, direction, [*sizes_of(r), 7])
    parsed = spy(monkeypatch, aiomemif._core.rx, "_shape_of")
    run = rx.poll(2)
    assert take(run.packets) == packets[:2]
    assert len(parsed) == 1
    run = rx.poll(4)
    assert take(run.packets) == packets[2:]
    rx.release()
    packets = publish(r, direction, [*sizes_of(r), 7])
    assert take(rx.poll(4).packets) == packets
    assert len(parsed) == 3


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_run_of_other_lengths_is_parsed_again(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """The same slot count with one length changed, or a NEXT moved: not the remembered
    shape; parsed again, and received as it is."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    lap(r, rx, direction, 0, 3)
    parsed = spy(monkeypatch, aiomemif._core.rx, "_shape_of")
    packets = publish(r, direction, [2 * r.bsize, 11, r.bsize + 1])
    assert take(rx.poll(3).packets) == packets
    rx.release()
    packets = publish(r, direction, [2 * r.bsize + 1, r.bsize])  # 3 + 1 ... 5 slots
    packets += publish(r, direction, [1])
    assert take(rx.poll(3).packets) == packets
    assert len(parsed) == 2


def test_reset_forgets_the_shapes(rigs: Callable[..., MmapRig]) -> None:
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.server_rx
    lap(r, rx, "s2m", 0, 3)
    assert rx.shapes.guess == 5
    rx.reset()
    assert rx.shapes.guess == 0
    assert rx.shapes.recall(r.s2m_server.snapshot(0, 5), 3) is None


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_chain_first_skips_the_unchained_check(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """A run that starts with a chain goes straight to the chains path; one that starts
    with a one-buffer packet is offered to the unchained check first."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    checks = spy(monkeypatch, aiomemif._core.rx, "check_run")
    lap(r, rx, direction, 0, 3)
    assert checks == []
    packets = publish(r, direction, [10, 2 * r.bsize])
    assert take(rx.poll(3).packets) == packets
    assert len(checks) == 1


# -- the memo itself -------------------------------------------------------------------


def desc(flags: int, region: int, length: int, offset: int, meta: int = 0) -> bytes:
    return b"".join(v.to_bytes(n, "little") for v, n in zip(
        (flags, region, length, offset, meta), (2, 2, 4, 4, 4), strict=True
    ))  # fmt: skip


def shape(limit: int = 1) -> RunShape:
    return RunShape(limit, 0, [64, 1], [0], [2], [65], 1, 64)


def test_key_is_flags_region_and_length() -> None:
    """Offsets and metadata are not in the key; flags, region and length are."""
    raw = desc(NEXT, 0, 64, 0) + desc(0, 0, 1, 64)
    assert key_of(raw) == key_of(desc(NEXT, 0, 64, 4096, 9) + desc(0, 0, 1, 8, 3))
    for other in (
        desc(0, 0, 64, 0) + desc(0, 0, 1, 64),
        desc(NEXT, 1, 64, 0) + desc(0, 0, 1, 64),
        desc(NEXT, 0, 64, 0) + desc(0, 0, 2, 64),
        desc(NEXT, 0, 64, 0) + desc(0x100, 0, 1, 64),
    ):
        assert key_of(other) != key_of(raw)
    memo = RunShapes()
    memo.remember(raw, shape())
    assert memo.recall(desc(NEXT, 0, 64, 4096) + desc(0, 0, 1, 8), 1) is not None
    assert memo.recall(desc(NEXT, 0, 64, 0) + desc(0, 0, 2, 64), 1) is None


def test_the_memo_is_bounded() -> None:
    memo = RunShapes()
    raws = [desc(NEXT, 0, 64, 0) + desc(0, 0, n, 64) for n in range(1, chains._RUN_SHAPES + 2)]
    for raw in raws:
        memo.remember(raw, shape())
    assert memo.recall(raws[0], 1) is None
    assert memo.recall(raws[-1], 1) is not None
    assert memo.guess == 2


def test_a_shape_of_fewer_packets_than_its_limit_is_not_kept() -> None:
    memo = RunShapes()
    raw = desc(NEXT, 0, 64, 0) + desc(0, 0, 1, 64)
    memo.remember(raw, shape(limit=2))
    assert memo.recall(raw, 2) is None
    assert memo.guess == 0
    s = shape()
    assert (s.used, s.spans, s.totals, s.top, s.nbytes, s.chained) == (
        2,
        ((0, 2),),
        (65,),
        65,
        65,
        1,
    )


# -- the sender's plans of mixed runs ----------------------------------------------------


def naive_plan(sizes: list[int], cap: int) -> tuple[list[int], list[int], list[int], int]:
    """(lengths, flags, first slot of each packet, chained) written slot by slot."""
    lengths: list[int] = []
    flags: list[int] = []
    firsts: list[int] = []
    for n in sizes:
        k = -(-n // cap)
        firsts.append(len(lengths))
        lengths += [cap] * (k - 1) + [n - cap * (k - 1)]
        flags += [NEXT] * (k - 1) + [0]
    return lengths, flags, firsts, sum(-(-n // cap) > 1 for n in sizes)


@pytest.mark.parametrize("sizes", [[1, 64, 65, 200, 3], [129, 129], [64, 1, 64], [300]])
def test_a_run_plan_says_what_slot_by_slot_writing_says(sizes: list[int]) -> None:
    shapes = chains.ChainShapes(64)
    plan = shapes.plan(sizes)
    assert shapes.plan(list(sizes)) is plan  # remembered
    lengths, flags, firsts, chained = naive_plan(sizes, 64)
    assert (plan.lengths.tolist(), plan.flags.tolist(), plan.firsts) == (lengths, flags, firsts)
    ends = [*firsts[1:], len(lengths)]
    assert (plan.ends, plan.lasts, plan.slots) == (ends, [e - 1 for e in ends], len(lengths))
    assert (plan.count, plan.chained, plan.nbytes) == (len(sizes), chained, sum(sizes))
    assert plan.widest == max(-(-n // 64) for n in sizes)
    for count in range(1, len(sizes) + 1):
        part, fresh = plan.part(count), chains.ChainShapes(64).plan(sizes[:count])
        for name in ("lengths", "flags", "firsts", "ends", "lasts", "slots", "count"):
            assert getattr(part, name) == getattr(fresh, name), name
        assert (part.chained, part.nbytes, part.widest) == (
            fresh.chained,
            fresh.nbytes,
            fresh.widest,
        )


def test_the_plans_are_bounded() -> None:
    shapes = chains.ChainShapes(64)
    first = shapes.plan([1, 2])
    for n in range(3, chains._RUN_SHAPES + 3):
        shapes.plan([1, n])
    assert shapes.plan([1, 2]) is not first
    assert shapes.plan([1, 2]).lengths.tolist() == [1, 2]
