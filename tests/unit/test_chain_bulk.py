"""Bulk paths for runs with chains, at ring level: equal chains copied one packet at a
time where their buffers adjoin, runs of chains of many sizes (and one-buffer packets
among them) transmitted and received in bulk, and the fallbacks each of them must take.

As in :mod:`test_bulk_paths`, ``forbid`` shows a run took the bulk path, ``spy`` that it
fell back; every run must arrive byte-exact with the descriptors a per-packet path writes,
and every bad descriptor must be counted exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from support.links import ROLES, payload
from support.rig import (
    BAD_KINDS,
    MASK,
    NEXT,
    MmapRig,
    bad_descriptor,
    descriptors,
    forbid,
    slots_of,
    snapshot,
    spy,
    take,
)

import aiomemif._core.client_tx
import aiomemif._core.server_tx
from aiomemif import ChainedPacket, PacketTooLargeError
from aiomemif._core.chains import offset_gaps
from aiomemif._core.client_tx import ClientTx
from aiomemif._core.ring import Ring
from aiomemif._core.rx import ClientRx, ServerRx
from aiomemif._core.server_tx import ServerTx

LOG2 = 4  # 16 slots of 64 bytes
SLOT0 = MASK - 15  # free-running index of ring slot 0, 16 slots before the u16 wrap


def tx_pair(r: MmapRig, side: str) -> tuple[ClientTx | ServerTx, ServerRx | ClientRx, Ring]:
    """(transmitter, receiver, the transmitter's ring) of one direction."""
    if side == "client":
        return r.client_tx, r.server_rx, r.s2m_client
    return r.server_tx, r.client_rx, r.m2s_server


def cursor(tx: ClientTx | ServerTx) -> int:
    return tx.head if isinstance(tx, ClientTx) else tx.tail


def data_offset(r: MmapRig, side: str, idx: int, headroom: int = 0) -> int:
    """Where a packet's data starts in slot ``idx`` (the client's own buffer, or the one it
    offered, plus headroom)."""
    return r.own_buffer("s2m" if side == "client" else "m2s", idx) + headroom


def expected_descriptors(
    r: MmapRig, side: str, first: int, sizes: list[int], cap: int, headroom: int = 0
) -> list[tuple[int, int, int, int]]:
    """The descriptors a per-packet path writes for ``sizes`` from slot ``first``."""
    out = []
    idx = first
    for n in sizes:
        k = -(-n // cap)
        for j in range(k):
            length = cap if j < k - 1 else n - cap * (k - 1)
            out.append(
                (NEXT if j < k - 1 else 0, r.breg, length, data_offset(r, side, idx, headroom))
            )
            idx += 1
    return out


def check_lap(
    r: MmapRig, side: str, packets: list[bytes], cap: int, headroom: int = 0
) -> list[bool]:
    """Send ``packets`` whole, check every descriptor and byte, receive them; return
    whether each arrived as a chain."""
    tx, rx, ring = tx_pair(r, side)
    first = cursor(tx)
    assert tx.write(packets) == len(packets)
    want = expected_descriptors(r, side, first, [len(p) for p in packets], cap, headroom)
    assert descriptors(ring, first, len(want)) == want
    run = rx.poll(64)
    chained = [isinstance(p, ChainedPacket) for p in run.packets]
    starts, at = [], first
    for p in packets:
        starts.append(at & r.mask)
        at += -(-len(p) // cap)
    assert slots_of(rx, run) == starts
    assert take(run.packets) == packets
    rx.release()
    return chained


@pytest.mark.parametrize("headroom", [0, 8])
@pytest.mark.parametrize("side", ROLES)
def test_equal_chains_one_copy_where_buffers_adjoin(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, side: str, headroom: int
) -> None:
    """Runs of equal 3-buffer chains over several laps, across the ring's end: where a
    chain's buffers follow each other in memory it is copied in one piece, elsewhere (a
    chain over the ring's end, or headroom between buffers) segment by segment; every
    descriptor and byte is the same either way, and the bulk paths take every run."""
    r = rigs(log2=LOG2, start=SLOT0 + 2, tx_headroom=headroom if side == "client" else 0)
    if side == "server" and headroom:  # the client offers every slot again, with headroom
        r.client_rx.set_headroom(headroom)
        r.m2s_client.desc[:] = r.client_rx.pristine
    tx, rx, _ring = tx_pair(r, side)
    module = aiomemif._core.client_tx if side == "client" else aiomemif._core.server_tx
    per_segment = spy(monkeypatch, module, "_copy_chains")
    forbid(monkeypatch, tx, "_write_each")
    forbid(monkeypatch, rx, "_collect_each")
    cap = r.bsize - headroom
    for lap in range(6):  # runs of 15 slots on a 16-slot ring: most cross its end
        first = cursor(tx)
        packets = [payload(10 * lap + j, 3 * cap - 5) for j in range(5)]
        before = len(per_segment)
        assert check_lap(r, side, packets, cap, headroom) == [True] * 5
        straddles = any((first + 3 * j) % 16 > 13 for j in range(5))
        assert (len(per_segment) > before) == (straddles or headroom > 0), f"lap {lap}"
    assert tx.counters.chained == rx.counters.chained == 30


def mixed_sizes(cap: int) -> list[int]:
    """One-buffer packets and chains of 2..4 buffers, 13 slots in all."""
    return [2 * cap + 1, 10, 3 * cap, cap + 1, cap, 4 * cap - 3, 1]


@pytest.mark.parametrize("side", ROLES)
def test_mixed_chains_in_bulk_both_ways(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    """Chains of several sizes with one-buffer packets among them: sent and received in
    bulk, byte-exact, one-buffer packets arriving as plain views, chains counted once."""
    r = rigs(log2=LOG2, start=SLOT0)
    tx, rx, _ring = tx_pair(r, side)
    forbid(monkeypatch, tx, "_write_each")
    forbid(monkeypatch, rx, "_collect_each")
    cap = r.bsize
    sizes = mixed_sizes(cap)
    packets = [payload(j, n) for j, n in enumerate(sizes)]
    assert check_lap(r, side, packets, cap) == [n > cap for n in sizes]
    for c in (tx.counters, rx.counters):
        assert (c.packets, c.bytes, c.chained) == (7, sum(sizes), 4)
    assert rx.counters.bad_descriptors == 0


@pytest.mark.parametrize("side", ROLES)
def test_mixed_chains_over_the_ring_end(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    """Laps of mixed chains that cross the ring's end (and the u16 wrap), in bulk both
    ways: a chain split by the ring's end is copied buffer by buffer, the others in one
    piece; all of it byte-exact."""
    r = rigs(log2=LOG2, start=SLOT0 + 9)
    tx, rx, _ring = tx_pair(r, side)
    module = aiomemif._core.client_tx if side == "client" else aiomemif._core.server_tx
    pieces = spy(monkeypatch, module, "_copy_pieces")
    forbid(monkeypatch, tx, "_write_each")
    forbid(monkeypatch, rx, "_collect_each")
    cap = r.bsize
    for lap in range(5):
        first = cursor(tx)
        sizes = mixed_sizes(cap)[lap % 3 :]
        before = len(pieces)
        check_lap(r, side, [payload(100 * lap + j, n) for j, n in enumerate(sizes)], cap)
        split, at = False, first
        for n in sizes:
            k = -(-n // cap)
            split |= (at & 15) + k > 16
            at += k
        assert (len(pieces) > before) == split, f"lap {lap}"
    assert rx.counters.bad_descriptors == 0


def test_mixed_chains_with_headroom_copied_buffer_by_buffer(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client transmit with headroom: buffers do not adjoin, so a mixed run still goes in
    bulk but each chain is copied buffer by buffer, with the same descriptors and bytes."""
    r = rigs(log2=LOG2, start=SLOT0, tx_headroom=8)
    forbid(monkeypatch, r.client_tx, "_write_each")
    pieces = spy(monkeypatch, aiomemif._core.client_tx, "_copy_pieces")
    cap = r.bsize - 8
    packets = [payload(j, n) for j, n in enumerate(mixed_sizes(cap))]
    check_lap(r, "client", packets, cap, headroom=8)
    assert len(pieces) == 1


def test_server_mixed_chains_into_uneven_or_scattered_offers(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server transmit of a mixed run: offers of unequal capacity send the run packet by
    packet; offers of buffers that do not follow each other still go in bulk, buffer by
    buffer; either way into exactly the offers."""
    r = rigs(log2=LOG2, start=SLOT0)
    tx, rx = r.server_tx, r.client_rx
    fallback = spy(monkeypatch, tx, "_write_each")
    packets = [payload(1, 2 * r.bsize), payload(2, 10)]
    r.put(r.m2s_client, SLOT0 + 1, 0, r.breg, 32, r.rx_table[1])  # a smaller offer
    assert tx.write(packets) == 2
    assert [d[0] for d in descriptors(r.m2s_server, SLOT0, 4)] == [NEXT, NEXT, 0, 0]
    assert [d[2] for d in descriptors(r.m2s_server, SLOT0, 4)] == [64, 32, 32, 10]
    assert take(rx.poll(64).packets) == packets
    rx.release()
    assert len(fallback) == 1
    first = tx.tail
    swapped = [r.rx_table[(first + 1) & r.mask], r.rx_table[first & r.mask]]
    for j, base in enumerate(swapped):  # the same buffers, offered in the other order
        r.put(r.m2s_client, first + j, 0, r.breg, r.bsize, base)
    pieces = spy(monkeypatch, aiomemif._core.server_tx, "_copy_pieces")
    assert tx.write(packets) == 2
    got = descriptors(r.m2s_server, first, 3)
    assert [(d[0], d[2], d[3]) for d in got[:2]] == [(NEXT, 64, swapped[0]), (0, 64, swapped[1])]
    assert got[2][2] == 10
    assert r.read(r.breg, swapped[0], 64) + r.read(r.breg, swapped[1], 64) == packets[0]
    assert r.read(r.breg, got[2][3], 10) == packets[1]
    assert (len(fallback), len(pieces)) == (1, 1)


@pytest.mark.parametrize("mixed", [False, True], ids=["equal", "mixed"])
def test_server_knows_which_offers_adjoin_across_runs(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, mixed: bool
) -> None:
    """Server transmit lap after lap, the client offering the same buffers: runs start
    inside runs remembered before, and a chain whose offered buffers adjoin is still one
    copy; only a chain over the ring's end goes buffer by buffer."""
    r = rigs(log2=LOG2, start=SLOT0)
    tx, rx = r.server_tx, r.client_rx
    sizes = [3 * r.bsize - 5, r.bsize + 1] if mixed else [3 * r.bsize - 5] * 2
    chains = [(0, 3), (3, 5)] if mixed else [(0, 3), (3, 6)]  # each packet's slots
    by_buffer = spy(
        monkeypatch, aiomemif._core.server_tx, "_copy_pieces" if mixed else "_copy_chains"
    )
    for lap in range(12):
        first = tx.tail
        packets = [payload(10 * lap + j, n) for j, n in enumerate(sizes)]
        before = len(by_buffer)
        assert tx.write(packets) == 2
        assert take(rx.poll(64).packets) == packets
        rx.release()
        at = first & r.mask
        straddles = any(at + a < r.size < at + b for a, b in chains)  # a chain over the end
        assert (len(by_buffer) > before) == straddles, f"lap {lap}"


def test_server_remembered_gaps_match_the_offers(rigs: Callable[..., MmapRig]) -> None:
    """What the server remembers of which offers adjoin always says what the offers of a
    run say, whatever runs it was remembered from: runs from any slot, offers swapped
    between runs (as forwarding does), a capacity that changes."""
    r = rigs(log2=LOG2, start=SLOT0)
    tx = r.server_tx
    rng = random.Random(16)
    offers = list(r.rx_table)
    for step in range(3000):
        if rng.random() < 0.1:
            i, j = rng.randrange(r.size), rng.randrange(r.size)
            offers[i], offers[j] = offers[j], offers[i]
        cap = 32 if step % 500 > 450 else r.bsize
        s = rng.randrange(r.size)
        n = rng.randrange(1, r.size - s + 1) if rng.random() < 0.9 else rng.randrange(1, 17)
        offsets = [offers[(s + j) & r.mask] for j in range(n)]
        tx.tail = (SLOT0 + s) & MASK
        assert tx._gaps(offsets, cap) == offset_gaps(offsets, cap), f"step {step}"


@pytest.mark.parametrize("side", ROLES)
def test_mixed_run_sends_the_whole_packets_that_fit(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    """A mixed run larger than the free slots: the whole packets that fit go in bulk and
    the count says how many (a server lets the per-packet path look at the offer left
    over, which might be larger); the next write sends the rest."""
    r = rigs(log2=LOG2, start=SLOT0)
    tx, rx, _ring = tx_pair(r, side)
    each = spy(monkeypatch, tx, "_write_each")
    cap = r.bsize
    sizes = [3 * cap, 10, 4 * cap, 2 * cap, 5 * cap, 5 * cap]  # 3+1+4+2+5 = 15 of 16
    packets = [payload(j, n) for j, n in enumerate(sizes)]
    assert tx.write(packets) == 5
    assert [call[1:] for call in each if isinstance(call, tuple)] == (
        [] if side == "client" else [(5, 1)]
    )
    assert len(each) == (side == "server")
    monkeypatch.undo()  # (a single chain takes the per-packet path)
    assert take(rx.poll(64).packets) == packets[:5]
    rx.release()
    assert tx.write(packets[5:]) == 1
    assert take(rx.poll(64).packets) == packets[5:]


@pytest.mark.parametrize("side", ROLES)
def test_mixed_run_with_a_packet_too_large_for_the_ring(
    rigs: Callable[..., MmapRig], side: str
) -> None:
    """A packet that needs more buffers than the ring has, inside a mixed run, is handled
    as the per-packet path always did: a client reports it before publishing anything of
    the call; a server sends what fits before it and reports it once it is first in line
    with the whole ring offered."""
    r = rigs(log2=LOG2, start=SLOT0)
    tx, rx, ring = tx_pair(r, side)
    before = snapshot(ring)
    packets = [payload(1, 2 * r.bsize), payload(2, 17 * r.bsize), b"x"]
    if side == "client":
        with pytest.raises(PacketTooLargeError):
            tx.write(packets)
        assert snapshot(ring) == before
        assert tx.counters.packets == 0
        return
    assert tx.write(packets) == 1
    assert take(rx.poll(64).packets) == packets[:1]
    rx.release()
    with pytest.raises(PacketTooLargeError):
        tx.write(packets[1:])
    assert tx.counters.packets == 1


@pytest.mark.parametrize("side", ROLES)
def test_mixed_run_with_a_buffer_of_other_byte_size(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    """A packet whose len() counts items, not bytes, inside a mixed run: the bulk copy
    refuses it and the per-packet path sends its bytes."""
    r = rigs(log2=LOG2, start=SLOT0)
    tx, rx, _ring = tx_pair(r, side)
    fallback = spy(monkeypatch, tx, "_write_each")
    words = payload(3, 2 * r.bsize)
    items = memoryview(words).cast("I")  # len() 32: one buffer, by its len()
    assert tx.write([payload(1, 3 * r.bsize), items, b"tail"]) == 3
    assert take(rx.poll(64).packets) == [payload(1, 3 * r.bsize), words, b"tail"]
    assert len(fallback) == 1


@pytest.mark.parametrize("side", ROLES)
def test_a_chain_left_for_later_keeps_the_bulk_path(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    """More chains than fit: the first chain left for later needs no check by the
    per-packet path (it fits the ring), so the chains that fit go in bulk."""
    r = rigs(log2=3, start=MASK - 7)
    tx, rx, _ring = tx_pair(r, side)
    forbid(monkeypatch, tx, "_write_each")
    packets = [payload(j, 2 * r.bsize - 3) for j in range(10)]
    assert tx.write(packets) == 4
    assert take(rx.poll(64).packets) == packets[:4]


# -- receive ---------------------------------------------------------------------------


def publish_mixed(r: MmapRig, direction: str, sizes: list[int]) -> list[bytes]:
    """Stage packets of ``sizes`` as a well-formed sender would, publish them; return them."""
    tx = r.client_tx if direction == "s2m" else r.server_tx
    packets = [payload(50 + j, n) for j, n in enumerate(sizes)]
    assert tx.write(packets) == len(packets)
    return packets


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("pos", [0, 3, 5], ids=["first", "middle", "last"])
@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_mixed_run_with_a_bad_descriptor(
    rigs: Callable[..., MmapRig],
    monkeypatch: pytest.MonkeyPatch,
    direction: str,
    pos: int,
    kind: str,
) -> None:
    """One bad descriptor inside a run of mixed chains: the bulk path refuses the run,
    the per-descriptor path drops just the packet it belongs to and counts it once."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    first = rx.read
    sizes = [2 * r.bsize, 10, 3 * r.bsize]  # slots 0-1, 2, 3-5
    packets = publish_mixed(r, direction, sizes)
    ring = r.s2m_client if direction == "s2m" else r.m2s_server
    flags = descriptors(ring, first + pos, 1)[0][0]
    r.put(ring, first + pos, flags, *bad_descriptor(r, direction, kind, first + pos)[1:])
    fallback = spy(monkeypatch, rx, "_collect_each")
    lost = 0 if pos < 2 else 2 if pos > 2 else 1
    want = [p for j, p in enumerate(packets) if j != lost]
    assert take(rx.poll(64).packets) == want
    assert len(fallback) == 1
    c = rx.counters
    assert (c.packets, c.bad_descriptors, c.chained) == (2, 1, 1)
    assert rx.held == 6


@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_mixed_run_with_a_chain_over_max_frame(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """A chain longer than the receiver's max_frame inside a mixed run: dropped whole and
    counted once, by the per-descriptor path; the others arrive."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    rx.max_frame = 2 * r.bsize
    packets = publish_mixed(r, direction, [2 * r.bsize, 3 * r.bsize, 5])
    fallback = spy(monkeypatch, rx, "_collect_each")
    assert take(rx.poll(64).packets) == [packets[0], packets[2]]
    assert len(fallback) == 1
    assert (rx.counters.packets, rx.counters.bad_descriptors) == (2, 1)


@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_mixed_run_taken_up_to_the_limit(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """``poll(limit)`` in a mixed run returns whole packets up to the limit, in bulk, and
    the next poll the rest."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    forbid(monkeypatch, rx, "_collect_each")
    packets = publish_mixed(r, direction, [3 * r.bsize, 1, 2 * r.bsize, r.bsize + 1, 7])
    run = rx.poll(2)
    assert take(run.packets) == packets[:2]
    assert rx.held == 4
    run = rx.poll(64)
    assert slots_of(rx, run) == [(SLOT0 + s) & r.mask for s in (4, 6, 8)]
    assert take(run.packets) == packets[2:]
    assert rx.counters.chained == 3


@pytest.mark.parametrize("flags", [0x0002, 0x0100, NEXT | 0x0100])
@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_mixed_run_with_another_flag(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, direction: str, flags: int
) -> None:
    """A flag other than NEXT on a descriptor of a mixed run: not a bulk run; the
    per-descriptor path reads only NEXT, so the packets come out as it says."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    packets = publish_mixed(r, direction, [2 * r.bsize, 10, 2 * r.bsize])
    ring = r.s2m_client if direction == "s2m" else r.m2s_server
    _f, region, length, offset = descriptors(ring, SLOT0 + 2, 1)[0]
    r.put(ring, SLOT0 + 2, flags, region, length, offset)  # the one-buffer packet
    fallback = spy(monkeypatch, rx, "_collect_each")
    want = packets if not flags & NEXT else [packets[0], packets[1] + packets[2]]
    assert take(rx.poll(64).packets) == want
    assert len(fallback) == 1


@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_mixed_run_cut_off_by_the_index(
    rigs: Callable[..., MmapRig], monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """A mixed run whose last chain goes on past the published slots: the general path
    takes it all (the whole packets arrive, the unfinished chain is dropped and counted)."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    packets = publish_mixed(r, direction, [2 * r.bsize, 10, 3 * r.bsize])
    ring = r.s2m_client if direction == "s2m" else r.m2s_server
    index = ring.set_head if direction == "s2m" else ring.set_tail
    index((SLOT0 + 5) & MASK)  # the last chain's last segment not published
    fallback = spy(monkeypatch, rx, "_collect_each")
    assert take(rx.poll(64).packets) == packets[:2]
    assert len(fallback) == 1
    assert (rx.counters.packets, rx.counters.bad_descriptors, rx.held) == (2, 1, 5)


# -- views made when first read ------------------------------------------------------


@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_chain_views_are_made_when_first_read(rigs: Callable[..., MmapRig], direction: str) -> None:
    """Chains taken in bulk make no view until ``segments`` is read: one packet's read
    makes its own, a second one's makes the rest of the run's in one go; lengths are
    known without them; what they show is what was checked at receive, even if the peer
    rewrote the descriptors since."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.receiver(direction)
    sizes = [2 * r.bsize + 1, 3 * r.bsize, 10, r.bsize + 1]
    packets = publish_mixed(r, direction, sizes)
    pkts = rx.poll(64).packets
    chains = [p for p in pkts if isinstance(p, ChainedPacket)]
    assert [len(p) for p in pkts] == sizes
    assert all(p._segments is None for p in chains)
    ring = r.s2m_client if direction == "s2m" else r.m2s_server
    for idx in range(SLOT0, SLOT0 + 9):  # the peer points every slot elsewhere now
        r.put(ring, idx, 0, r.breg, 1, r.own_buffer(direction, SLOT0 + 15))
    assert [len(s) for s in chains[1].segments] == [r.bsize] * 3
    assert [p._segments is None for p in chains] == [True, False, True]
    first = chains[1].segments
    assert bytes(chains[0]) == packets[0]  # the second read: the whole run
    assert [p._segments is None for p in chains] == [False] * 3
    assert chains[1].segments is first
    assert take(pkts) == packets


@pytest.mark.parametrize("reads", [0, 1, 2])
def test_chain_released_before_its_views_were_made(
    rigs: Callable[..., MmapRig], reads: int
) -> None:
    """Packets released with no views made (or some): reading ``segments`` afterwards
    gives released views, as many as the chain had, which raise ValueError."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.server_rx
    publish_mixed(r, "s2m", [3 * r.bsize, 2 * r.bsize, 2 * r.bsize])
    pkts = rx.poll(64).packets
    for p in pkts[:reads]:
        assert isinstance(p, ChainedPacket) and p.segments
    for p in pkts:
        p.release()
    for p, n in zip(pkts, [3, 2, 2], strict=True):
        assert isinstance(p, ChainedPacket)
        assert len(p.segments) == n
        for seg in p.segments:
            with pytest.raises(ValueError, match="released"):
                seg.tobytes()
    rx.release()


def test_chain_views_after_the_memory_is_gone(rigs: Callable[..., MmapRig]) -> None:
    """A chain whose views were never made, read after the region's view was released
    (the link closed): ValueError, not a view of unmapped memory."""
    r = rigs(log2=LOG2, start=SLOT0)
    rx = r.server_rx
    publish_mixed(r, "s2m", [2 * r.bsize, 2 * r.bsize])
    pkts = rx.poll(64).packets
    chain = pkts[0]
    assert isinstance(chain, ChainedPacket)
    rx.regions[r.breg].release()
    with pytest.raises(ValueError, match="released"):
        chain.segments  # noqa: B018
    rx.regions[r.breg] = r.server_views[r.breg] = memoryview(r.maps[r.breg])  # for close()
