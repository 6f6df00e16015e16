"""The bulk fast paths of the hot path, and their per-descriptor fallbacks, at ring level.

Receive reads a run of descriptors as columns and builds the views in bulk when the run is
plain (one flags/region word with flags 0, lengths > 0, a conservative bound inside the
region). Client transmit copies through the region's mmap and writes only the length column
(offsets and flags too while the ring is "dirty" after chains, forwarding or at the start).
Server transmit checks the offered run in bulk. Everything else must take the per-descriptor
paths, which check and count each descriptor. These tests pin down that every run, plain or
not, arrives byte-exact and in order, that bad descriptors are counted exactly and their
slots still returned.

No event loop: the rig of :mod:`support.rig` builds the client layout in anonymous mmaps,
because real regions are mmaps and the transmitters copy through the mmap object itself.
Cursors start just below the ring's end and the u16 wrap. ``spy`` / ``forbid`` wrap an
endpoint's fallback method to show which path a run took. The same paths over real
connections are in ``integration/test_link_bulk_paths.py``.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

import pytest
from support.links import (
    ROLES,
    payload,
)
from support.rig import (
    BAD_KINDS,
    MASK,
    NEXT,
    NOT_BYTES_LIKE,
    L,
    MmapRig,
    bad_descriptor,
    descriptors,
    forbid,
    packets_of,
    sizes_for,
    slots_of,
    snapshot,
    spy,
    take,
    typed_packets,
)

from aiomemif import (
    ChainedPacket,
)
from aiomemif._core.client_tx import ClientTx
from aiomemif._core.ring import Ring
from aiomemif._core.rx import ClientRx, ServerRx
from aiomemif._core.server_tx import ServerTx

NEXT_CUT = "NEXT cut off by the index"


@pytest.mark.parametrize("pos", [0, 3, 7], ids=["first", "middle", "last"])
@pytest.mark.parametrize("kind", [None, *BAD_KINDS], ids=["control", *BAD_KINDS])
@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_run_with_one_bad_descriptor(
    rigs: Callable[..., MmapRig],
    monkeypatch: pytest.MonkeyPatch,
    direction: str,
    kind: str | None,
    pos: int,
) -> None:
    """The bulk check refuses the run; the good packets all arrive in order, byte-exact;
    exactly one bad descriptor is counted; every slot (the bad one too) goes back. Without
    the bad descriptor (control) the same run takes the bulk path."""
    r = rigs(split=direction == "m2s")  # M2S with its buffers in region 1
    rx = r.receiver(direction)
    first = rx.read
    packets = [payload(j, L) for j in range(8)]
    descs = r.stage(direction, first, packets)
    good = list(range(8))
    if kind is None:
        forbid(monkeypatch, rx, "_collect_each")
    else:
        descs[pos] = bad_descriptor(r, direction, kind, first + pos)
        good.remove(pos)
    fallback = spy(monkeypatch, rx, "_collect_each") if kind is not None else []
    r.publish(direction, descs)

    run = rx.poll(64)
    views = run.packets
    assert slots_of(rx, run) == [(first + j) & r.mask for j in good]
    assert take(views) == [packets[j] for j in good]
    assert len(fallback) == (kind is not None)
    c = rx.counters
    assert (c.packets, c.bytes, c.bad_descriptors) == (len(good), L * len(good), 8 - len(good))
    assert rx.held == 8  # the bad slot was consumed too ...
    rx.release()  # ... and goes back with the others
    if direction == "s2m":
        assert r.s2m_server.tail == (first + 8) & MASK
        assert r.client_tx.free() == 8
    else:
        assert r.m2s_client.head == (first + 16) & MASK  # all 8 slots refilled
        assert r.server_tx.free() == 8
        for j in range(8):  # each slot offers its own buffer again, the bad one included
            own = r.own_buffer("m2s", first + j)
            assert r.get(r.m2s_client, first + j) == (0, r.breg, r.bsize, own)


@pytest.mark.parametrize(
    "kind", [None, *BAD_KINDS, NEXT_CUT], ids=["control", *BAD_KINDS, NEXT_CUT]
)
@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_single_descriptor(rigs: Callable[..., MmapRig], direction: str, kind: str | None) -> None:
    """One published descriptor (the single-packet receive path): delivered if good,
    counted and its slot returned if bad -- a lone NEXT descriptor included (a chain whose
    rest was never published is not a packet)."""
    r = rigs()
    rx = r.receiver(direction)
    first = rx.read
    data = payload(1, L)
    base = r.own_buffer(direction, first)
    r.write(r.breg, base, data)
    if kind is None:
        desc = (0, r.breg, L, base)
    elif kind == NEXT_CUT:
        desc = (NEXT, r.breg, L, base)
    else:
        desc = bad_descriptor(r, direction, kind, first)
    r.publish(direction, [desc])
    assert take(rx.poll(64).packets) == ([data] if kind is None else [])
    assert (rx.counters.packets, rx.counters.bad_descriptors) == (
        (1, 0) if kind is None else (0, 1)
    )
    assert rx.held == 1
    rx.release()
    assert rx.held == 0
    if direction == "s2m":
        assert r.s2m_server.tail == (first + 1) & MASK
    else:
        assert r.m2s_client.head == (first + 9) & MASK
        assert r.get(r.m2s_client, first) == (0, r.breg, r.bsize, base)


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_poll_one_at_a_time_over_a_bad_descriptor(
    rigs: Callable[..., MmapRig], direction: str, kind: str
) -> None:
    """``poll(1)`` over a run whose first descriptor is bad: the bad slot is skipped (and
    counted once), the next packet is returned, then the one after it."""
    r = rigs()
    rx = r.receiver(direction)
    first = rx.read
    packets = [payload(10 + j, L) for j in range(3)]
    descs = r.stage(direction, first, packets)
    descs[0] = bad_descriptor(r, direction, kind, first)
    r.publish(direction, descs)
    run = rx.poll(1)
    assert take(run.packets) == [packets[1]]
    assert slots_of(rx, run) == [(first + 1) & r.mask]
    assert take(rx.poll(1).packets) == [packets[2]]
    assert rx.poll(1).packets == []
    assert (rx.counters.packets, rx.counters.bad_descriptors, rx.held) == (2, 1, 3)
    rx.release()


@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_poll_one_returns_a_whole_chain(rigs: Callable[..., MmapRig], direction: str) -> None:
    """``poll(1)`` at a chain returns the whole chain as one packet, then the next one."""
    r = rigs()
    rx = r.receiver(direction)
    first = rx.read
    parts = [payload(20 + j, L) for j in range(3)]
    r.publish(direction, r.stage(direction, first, parts, [NEXT, 0, 0]))
    views = rx.poll(1).packets
    assert [isinstance(v, ChainedPacket) for v in views] == [True]
    assert take(views) == [parts[0] + parts[1]]
    assert take(rx.poll(1).packets) == [parts[2]]
    assert (rx.counters.packets, rx.counters.chained, rx.counters.bad_descriptors) == (2, 1, 0)
    rx.release()


@pytest.mark.parametrize("lengths", ["mixed", "equal"])
@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_run_ending_exactly_at_the_region_end(
    rigs: Callable[..., MmapRig],
    monkeypatch: pytest.MonkeyPatch,
    direction: str,
    lengths: str,
) -> None:
    """The last buffer of the run ends exactly at the end of its region (S2M) or of the
    buffer offered in its slot (M2S: a client takes nothing else). With mixed lengths the
    conservative bulk bound (largest offset + largest length) fails although every
    descriptor is valid, so the run goes descriptor by descriptor: all of them must still
    be delivered. With equal lengths the bound is exact and the bulk path takes the run;
    on M2S the moved offset is not the offered one, so that run goes descriptor by
    descriptor too."""
    r = rigs()
    rx = r.receiver(direction)
    fallback = spy(monkeypatch, rx, "_collect_each")
    first = rx.read
    sizes = [40, 64, 3, 64, 17, 1, 64, 5] if lengths == "mixed" else [32] * 8
    packets = packets_of(2, sizes)
    region_size = len(r.server_views[r.breg])
    end = region_size if direction == "s2m" else r.own_buffer(direction, first + 7) + r.bsize
    descs = []
    for j, p in enumerate(packets):
        base = r.own_buffer(direction, first + j) if j < 7 else end - len(p)
        r.write(r.breg, base, p)
        descs.append((0, r.breg, len(p), base))
    r.publish(direction, descs)
    assert take(rx.poll(64).packets) == packets
    # both branches of the bulk check ran
    assert bool(fallback) == (lengths == "mixed" or direction == "m2s")
    c = rx.counters
    assert (c.packets, c.bytes, c.bad_descriptors) == (8, sum(sizes), 0)
    rx.release()
    assert rx.held == 0


SHAPES = [
    "two regions",
    "a chain across two regions",
    "one NEXT in a plain run",
    "NEXT on the last",
    "NEXT on every descriptor",
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_run_with_two_regions_or_a_chain(
    rigs: Callable[..., MmapRig], direction: str, shape: str
) -> None:
    """A run whose descriptors name two regions, or where one carries NEXT, is not a bulk
    run: every packet is still built from the right region, chains are joined, and a chain
    cut off by the published index is dropped and counted. (A client takes nothing from
    a region it offered no buffers in: there the other region's descriptors are refused,
    and a chain with one of them is dropped whole.)"""
    r = rigs(extra=4096)
    assert r.extra is not None
    rx = r.receiver(direction)
    first = rx.read
    two_regions = shape in ("two regions", "a chain across two regions")
    refused = 0
    part_ok = True
    next_on = {
        "a chain across two regions": {2, 3},
        "one NEXT in a plain run": {3},
        "NEXT on the last": {7},
        "NEXT on every descriptor": set(range(8)),  # one flags/region word, but flags != 0
    }.get(shape, set())
    descs = []
    parts: list[bytes] = []
    expected: list[tuple[bytes, bool]] = []
    for j in range(8):
        data = payload(300 + j, 10 + j)
        if two_regions and j % 2:
            region, off = r.extra, 64 * j
        else:
            region, off = r.breg, r.own_buffer(direction, first + j)
        r.write(region, off, data)
        flags = NEXT if j in next_on else 0
        descs.append((flags, region, len(data), off))
        parts.append(data)
        if direction == "m2s" and region != r.breg:
            refused += 1
            part_ok = False
        if not flags:
            if part_ok:
                expected.append((b"".join(parts), len(parts) > 1))
            parts, part_ok = [], True
    r.publish(direction, descs)
    views = rx.poll(64).packets
    assert [isinstance(v, ChainedPacket) for v in views] == [chain for _, chain in expected]
    assert take(views) == [data for data, _ in expected]
    c = rx.counters
    dropped = 1 if parts else 0  # a chain still open after the last published slot
    assert (c.packets, c.bad_descriptors) == (len(expected), dropped + refused)
    assert c.chained == sum(chain for _, chain in expected)
    assert rx.held == 8
    rx.release()


@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_equal_run_with_next_on_every_descriptor(
    rigs: Callable[..., MmapRig], direction: str
) -> None:
    """Eight descriptors alike in every word but the offset, all with NEXT: one chain that
    the published index cuts off. Nothing is delivered, one bad chain is counted, and all
    eight slots still go back."""
    r = rigs()
    rx = r.receiver(direction)
    first = rx.read
    packets = [payload(j, L) for j in range(8)]
    r.publish(direction, r.stage(direction, first, packets, [NEXT] * 8))
    assert rx.poll(64).packets == []
    c = rx.counters
    assert (c.packets, c.bad_descriptors, rx.held) == (0, 1, 8)
    rx.release()
    assert rx.held == 0


@pytest.mark.parametrize("headroom", [0, 8])
@pytest.mark.parametrize("split", [False, True], ids=["single", "split"])
@pytest.mark.parametrize("start", [MASK - 2, 5], ids=["u16-wrap", "ring-wrap"])
def test_bulk_s2m_runs_across_the_ring_end(
    rigs: Callable[..., MmapRig],
    monkeypatch: pytest.MonkeyPatch,
    start: int,
    split: bool,
    headroom: int,
) -> None:
    """Client transmit and server receive, both in bulk, in runs that cross the end of the
    ring (and the u16 wrap): every descriptor and every byte checked, on the first laps
    (offsets and flags written) and later ones (only the length column written)."""
    r = rigs(start=start, split=split, tx_headroom=headroom)
    tx, rx = r.client_tx, r.server_rx
    forbid(monkeypatch, tx, "_write_each")
    forbid(monkeypatch, rx, "_collect_each")
    cap = r.bsize - headroom
    for lap in range(5):  # runs of 7 on an 8-slot ring: every run crosses the end
        if lap == 4:
            assert tx.dirty <= 0  # this lap writes the length column only
        head = tx.head
        sizes = [cap] * 7 if lap == 1 else sizes_for(7, cap)
        packets = packets_of(lap, sizes)
        assert tx.write(packets) == 7
        assert r.s2m_server.head == (head + 7) & MASK
        for k, (flags, region, n, off) in enumerate(descriptors(r.s2m_server, head, 7)):
            own = r.tx_table[(head + k) & r.mask] + headroom
            assert (flags, region, n, off) == (0, r.breg, sizes[k], own)
            assert r.read(region, off, n) == packets[k]
        if lap % 2:
            got = take(rx.poll(64).packets)
        else:  # stop inside the run, then read the rest across the ring end
            got = take(rx.poll(2).packets)
            got += take(rx.poll(64).packets)
        assert got == packets
        rx.release()
    c = rx.counters
    assert (c.packets, c.bad_descriptors, c.chained) == (35, 0, 0)
    assert tx.counters.packets == 35


@pytest.mark.parametrize("split", [False, True], ids=["single", "split"])
@pytest.mark.parametrize("start", [MASK - 2, 5], ids=["u16-wrap", "ring-wrap"])
def test_bulk_m2s_runs_across_the_ring_end(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, start: int, split: bool
) -> None:
    """Server transmit and client receive, both in bulk, across the end of the ring: the
    offered offsets are kept, flags are 0, lengths and bytes are right."""
    r = rigs(start=start, split=split)
    tx, rx = r.server_tx, r.client_rx
    forbid(monkeypatch, tx, "_write_each")
    forbid(monkeypatch, rx, "_collect_each")
    for lap in range(5):
        tail = tx.tail
        sizes = [r.bsize] * 7 if lap == 1 else sizes_for(7, r.bsize)
        packets = packets_of(lap, sizes)
        assert tx.write(packets) == 7
        for k, (flags, region, n, off) in enumerate(descriptors(r.m2s_client, tail, 7)):
            own = r.rx_table[(tail + k) & r.mask]
            assert (flags, region, n, off) == (0, r.breg, sizes[k], own)
            assert bytes(r.client_views[region][off : off + n]) == packets[k]
        if lap % 2:
            got = take(rx.poll(64).packets)
        else:
            got = take(rx.poll(2).packets)
            got += take(rx.poll(64).packets)
        assert got == packets
        rx.release()
        assert tx.free() == 8
    c = rx.counters
    assert (c.packets, c.bad_descriptors, c.chained) == (35, 0, 0)


TYPE_NAMES = [name for name, _, _ in typed_packets()]


def tx_pair(r: MmapRig, side: str) -> tuple[ClientTx | ServerTx, ServerRx | ClientRx, Ring]:
    """(transmitter, receiver, ring) of the client's or the server's transmit direction."""
    if side == "client":
        return r.client_tx, r.server_rx, r.s2m_client
    return r.server_tx, r.client_rx, r.m2s_server


@pytest.mark.parametrize("side", ROLES)
def test_transmit_mixed_buffer_types(rigs: Callable[..., MmapRig], side: str) -> None:
    """One batch of every accepted kind of packet: the byte representation goes out."""
    r = rigs(bsize=64)
    tx, rx, _ring = tx_pair(r, side)
    kinds = typed_packets()
    assert tx.write([obj for _, obj, _ in kinds[:8]]) == 8
    assert take(rx.poll(64).packets) == [data for _, _, data in kinds[:8]]
    rx.release()
    assert tx.write([obj for _, obj, _ in kinds[1:]]) == 8
    assert take(rx.poll(64).packets) == [data for _, _, data in kinds[1:]]


@pytest.mark.parametrize("count", [1, 6], ids=["single", "run"])
@pytest.mark.parametrize("name", TYPE_NAMES)
@pytest.mark.parametrize("side", ROLES)
def test_transmit_packets_of_one_buffer_type(
    rigs: Callable[..., MmapRig], side: str, name: str, count: int
) -> None:
    """A single packet, or a whole run of one kind (so that nothing else in the batch
    forces the general path): a buffer whose len() counts items, not bytes, must still go
    out as all of its bytes."""
    r = rigs(bsize=64)
    tx, rx, _ring = tx_pair(r, side)
    obj, data = {n: (o, d) for n, o, d in typed_packets()}[name]
    for _lap in range(3):
        assert tx.write([obj] * count) == count
        assert take(rx.poll(64).packets) == [data] * count
        rx.release()
    assert tx.counters.bytes == 3 * count * len(data)


@pytest.mark.parametrize("middle", [*TYPE_NAMES, "longer", "shorter"])
@pytest.mark.parametrize("side", ROLES)
def test_transmit_run_whose_ends_agree_on_len(
    rigs: Callable[..., MmapRig], side: str, middle: str
) -> None:
    """The bulk copy guesses every packet's size from the first and last ``len()``; a
    packet in between of another byte size (or whose ``len()`` counts items, or that has
    no buffer) must refute the guess and still go out as exactly its own bytes."""
    r = rigs(bsize=64)
    tx, rx, _ring = tx_pair(r, side)
    kinds: dict[str, tuple[object, bytes]] = {n: (o, d) for n, o, d in typed_packets()}
    if middle in kinds:
        obj, data = kinds[middle]
        n = len(obj) if hasattr(obj, "__len__") else len(data)  # what the guess sees
    else:
        data = b"m" * (13 if middle == "longer" else 7)
        obj, n = data, 10
    batch = [payload(1, n), payload(2, n), obj, payload(3, n)]
    want = [payload(1, n), payload(2, n), data, payload(3, n)]
    for _lap in range(2):
        assert tx.write(batch) == 4
        assert take(rx.poll(64).packets) == want
        rx.release()
    assert tx.counters.bytes == 2 * sum(map(len, want))


@pytest.mark.parametrize("bad", NOT_BYTES_LIKE, ids=lambda b: type(b).__name__)
@pytest.mark.parametrize("side", ROLES)
def test_transmit_not_bytes_like_publishes_nothing(
    rigs: Callable[..., MmapRig], side: str, bad: object
) -> None:
    """A packet that is not bytes-like anywhere in the batch (first, alone, last): TypeError,
    and not a descriptor or index of the ring changes, however far the bulk copy got."""
    r = rigs(bsize=64)
    tx, rx, ring = tx_pair(r, side)
    before = snapshot(ring)
    for batch in ([b"first", bad, b"third"], [bad], [b"x" * 10, b"y" * 10, bad]):
        with pytest.raises(TypeError):
            tx.write(batch)
        assert snapshot(ring) == before  # no descriptor, no index: nothing published
    assert (tx.counters.packets, tx.counters.bytes) == (0, 0)
    assert rx.poll(64).packets == []
    # whatever was copied into buffers before the error is overwritten by the next send
    assert tx.write([b"after", b"the error"]) == 2
    assert take(rx.poll(64).packets) == [b"after", b"the error"]


@pytest.mark.parametrize("count", [1, 2], ids=["single", "run"])
@pytest.mark.parametrize("kind", ["B", "I"])
@pytest.mark.parametrize("side", ROLES)
def test_transmit_non_contiguous_memoryview(
    rigs: Callable[..., MmapRig], side: str, kind: str, count: int
) -> None:
    """A strided memoryview is a buffer like any other and goes out as its bytes. (The
    copy through the mmap raises BufferError for it, which must mean "take the general
    path": b644d0e..9eb4583 let it escape from ``write``.)"""
    r = rigs(bsize=64)
    tx, rx, _ring = tx_pair(r, side)
    view = memoryview(bytearray(range(40)) if kind == "B" else array("I", range(10)))[::2]
    items: list[object] = [view, b"next"]
    batch = items[:count]
    assert tx.write(batch) == count
    assert take(rx.poll(64).packets) == [view.tobytes(), b"next"][:count]


@pytest.mark.parametrize("chain_by", ["write", "alloc"])
@pytest.mark.parametrize("headroom", [0, 8])
def test_small_packets_after_a_chain_carry_no_next(
    rigs: Callable[..., MmapRig], headroom: int, chain_by: str
) -> None:
    """A chain leaves NEXT in its slots; the small packets copied into them afterwards (in
    bulk runs and one at a time) must have flags 0 and their slot's data offset written
    again: the chain made the ring dirty."""
    r = rigs(tx_headroom=headroom)
    tx, rx = r.client_tx, r.server_rx
    cap = r.bsize - headroom
    assert tx.write(packets_of(0, [cap] * 8)) == 8  # a clean first lap
    take(rx.poll(64).packets)
    rx.release()
    assert tx.dirty <= 0
    big = payload(99, 3 * cap - 5)  # three buffers: NEXT, NEXT, 0
    head = tx.head
    if chain_by == "write":
        assert tx.write([big]) == 1
    else:
        res = tx.reserve(1, len(big))
        assert res is not None
        at = 0
        for seg in res.segments[0]:
            seg[:] = big[at : at + len(seg)]
            at += len(seg)
        assert tx.commit(res) == 1
    assert [d[0] for d in descriptors(r.s2m_server, head, 3)] == [NEXT, NEXT, 0]
    views = rx.poll(64).packets
    assert [isinstance(v, ChainedPacket) for v in views] == [True]
    assert take(views) == [big]
    rx.release()
    for lap, count in enumerate([1, 3, 1, 2, 3, 1, 2, 3]):  # twice over the chain's slots
        head = tx.head
        packets = packets_of(10 + lap, sizes_for(count, cap))
        assert tx.write(packets) == count
        for k, desc in enumerate(descriptors(r.s2m_server, head, count)):
            own = r.tx_table[(head + k) & r.mask] + headroom
            assert desc == (0, r.breg, len(packets[k]), own), f"slot {(head + k) & r.mask}"
        views = rx.poll(64).packets
        assert not any(isinstance(v, ChainedPacket) for v in views)
        assert take(views) == packets
        rx.release()
    assert rx.counters.chained == 1
