"""``sink --verify`` checks a batch of equal, consecutive test packets as a whole
(``Checker.check_batch``): it must count exactly what checking packet by packet counts,
whatever the batches hold (duplicates, reordering, corruption, other sizes, chains)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aiomemif import ChainedPacket
from aiomemif.cli.traffic import Checker, TestPacket


def counts(c: Checker) -> tuple[int, ...]:
    return (c.unique, c.corrupt, c.duplicates, c.out_of_order, c.max_seq, c.drops())


@st.composite
def traffic(draw: st.DrawFn) -> tuple[int, list[list[tuple[int, memoryview | ChainedPacket]]]]:
    mode = draw(st.sampled_from([0, 1]))
    tp = TestPacket(mode, draw(st.sampled_from([28, 64, 300])))
    seqs = list(range(draw(st.integers(0, 600)), 0, -1))[::-1]
    start = draw(st.sampled_from([0, 5, 250, 1021]))
    seqs = [start + s for s in seqs]
    for _ in range(draw(st.integers(0, 4))):  # duplicates, swaps, gaps, replays
        if len(seqs) < 2:
            break
        i, j = draw(st.integers(0, len(seqs) - 1)), draw(st.integers(0, len(seqs) - 1))
        kind = draw(st.sampled_from(["dup", "swap", "drop", "replay"]))
        if kind == "dup":
            seqs.insert(i, seqs[j])
        elif kind == "replay":  # a block of packets again, later or earlier
            seqs[j:j] = seqs[i : i + draw(st.integers(2, 80))]
        elif kind == "swap":
            seqs[i], seqs[j] = seqs[j], seqs[i]
        else:
            del seqs[i]
    pkts: list[memoryview | ChainedPacket] = []
    for seq in seqs:
        data = bytearray(tp.build(seq))
        what = draw(st.sampled_from(["ok"] * 12 + ["corrupt", "short", "other size", "chain"]))
        if what == "corrupt":
            data[draw(st.integers(0, len(data) - 1))] ^= 0x40
        elif what == "short":
            data = data[:10]
        elif what == "other size":
            data = bytearray(TestPacket(mode, tp.size + 1).build(seq))
        if what == "chain":
            half = len(data) // 2
            pkts.append(ChainedPacket._of((memoryview(data[:half]), memoryview(data[half:])),
                                          len(data)))  # fmt: skip
        else:
            pkts.append(memoryview(bytes(data)))
    queues = draw(st.integers(1, 2))
    batches: list[list[tuple[int, memoryview | ChainedPacket]]] = []
    i = 0
    while i < len(pkts):
        k = draw(st.integers(1, 70))
        q = draw(st.integers(0, queues - 1))
        batches.append([(q, p) for p in pkts[i : i + k]])
        i += k
    return mode, batches


@settings(max_examples=120, deadline=None)
@given(traffic())
def test_batches_count_as_packet_by_packet(case: tuple[int, list[list[tuple[int, Any]]]]) -> None:
    mode, batches = case
    by_batch = Checker(TestPacket(mode), 2)
    by_packet = Checker(TestPacket(mode), 2)
    for batch in batches:
        q = batch[0][0]
        pkts = [p for _, p in batch]
        by_batch.check_batch(pkts, q)
        for p in pkts:
            by_packet.check(p, q)
        assert counts(by_batch) == counts(by_packet)


def test_a_clean_run_is_checked_as_one() -> None:
    tp = TestPacket(0, 64)
    c = Checker(tp, 1)
    pkts = [memoryview(tp.build(s)) for s in range(3, 3 + 200)]
    assert c._run_ok(pkts, 0)  # the bulk path took it ...
    assert counts(c) == (200, 0, 0, 0, 202, 3)  # ... and 0..2 are missing
    assert not c._run_ok(pkts, 0)  # seen already: packet by packet, as duplicates
    bad = [*pkts[:10], memoryview(b"x" * 64)]
    assert not c._run_ok(bad, 0)


def test_a_run_seen_on_another_queue_counts_as_duplicates() -> None:
    tp = TestPacket(0, 64)
    run = [memoryview(tp.build(s)) for s in range(0, 100)]
    for again in (run, run[40:60], run[50:51] * 2, run[7:9]):
        by_batch, by_packet = Checker(tp, 2), Checker(tp, 2)
        for q, pkts in ((0, run), (1, again)):
            by_batch.check_batch(pkts, q)
            for p in pkts:
                by_packet.check(p, q)
        assert counts(by_batch) == counts(by_packet)
        assert by_batch.duplicates == len(again)


def test_a_run_over_numbers_seen_only_in_its_middle_bytes() -> None:
    tp = TestPacket(0, 64)
    pkts = [memoryview(tp.build(s)) for s in range(0, 100)]
    by_batch, by_packet = Checker(tp, 2), Checker(tp, 2)
    for c in (by_batch, by_packet):
        for p in pkts[50:52]:  # bits in byte 6 only
            c.check(p, 0)
    by_batch.check_batch(pkts[40:64], 1)  # bytes 5..7: the first and last are clean
    for p in pkts[40:64]:
        by_packet.check(p, 1)
    assert counts(by_batch) == counts(by_packet)
    assert by_batch.duplicates == 2
