"""The four ring endpoints over one shared-memory region, against a reference queue model.

:func:`ring_rig` is the shared rig of :mod:`support.rig`: memory built as ``client._Memory``
builds it (``plan_client_layout``, ``descriptor_table``, ``init_ring``) in an anonymous
mmap. The client's endpoints and the server's endpoints get their own ``Ring`` objects
over their own memoryview of it, as two processes would over two mappings. Cursors can
start anywhere, in particular just below the u16 wrap, by setting the ring header and the
endpoint cursors directly.

The test harness can also act as a misbehaving or foreign peer: it writes descriptors by
hand (bad region, out-of-bounds offset, zero length, chains) with its own ``struct``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from support.rig import CL, MASK, NEXT, MmapRig

from aiomemif._core.buffers import Packet
from aiomemif._core.ring import QueueCounters, ring_cookie_ok
from aiomemif.errors import EmptyPacketError, PacketTooLargeError, RemoteProtocolError


def ring_rig(log2: int, bsize: int, s2m_start: int = 0, m2s_start: int = 0) -> MmapRig:
    """The shared rig (:class:`support.rig.MmapRig`) with these tests' defaults: every
    cursor at 0 unless given, one region."""
    return MmapRig(log2, bsize, s2m_start=s2m_start, m2s_start=m2s_start)


def take(views: Sequence[Packet]) -> list[bytes]:
    """Copy received packets out and release the views (what ``Batch.release`` does)."""
    out = [bytes(v) for v in views]
    for v in views:
        v.release()
    return out


# --------------------------------------------------------------------------- the model

#: One published packet as the model sees it: payload (None if it must be dropped),
#: slots it occupies, bad descriptors in it.
Entry = tuple[bytes | None, int, int]

KINDS_S2M = ["good", "good", "good", "headroom", "len0", "bad_region", "past_end", "huge_offset"]
KINDS_M2S = ["good", "good", "good", "len0", "too_long"]
CORRUPT_OFFER = ["bad_region", "past_end", "zero_capacity"]
#: Where the free-running indexes start: mostly just below the u16 wrap.
starts = st.one_of(st.integers(MASK - 12, MASK), st.integers(0, MASK))


class RingModel(RuleBasedStateMachine):
    """S2M: client sends, server polls and releases. M2S: server sends, client polls and
    releases (refilling). Both directions can carry hand-written good, bad and chained
    descriptors; the model predicts every delivery, count and index."""

    def __init__(self) -> None:
        super().__init__()
        self.rig: MmapRig | None = None
        # S2M model (free-running u16 counters)
        self.s2m_pub: deque[Entry] = deque()
        self.s2m_held = 0
        self.s2m_head = 0
        self.s2m_tail = 0
        self.s2m_dirty: set[int] = set()  # slots whose region/offset the harness changed
        # M2S model
        self.m2s_pub: deque[Entry] = deque()
        self.m2s_held = 0
        self.m2s_tail = 0
        self.m2s_consumed = 0  # the client's consumed tail; head = consumed + size
        self.m2s_corrupt: set[int] = set()  # offered slots a buggy client broke
        # expected counters: [packets, bytes, bad]
        self.c_client_tx = [0, 0, 0]
        self.c_server_rx = [0, 0, 0]
        self.c_server_tx = [0, 0, 0]
        self.c_client_rx = [0, 0, 0]

    @property
    def r(self) -> MmapRig:
        assert self.rig is not None
        return self.rig

    @initialize(
        log2=st.integers(1, 4),
        bsize=st.sampled_from([8, 24, 64]),
        s2m_start=starts,
        m2s_start=starts,
    )
    def build(self, log2: int, bsize: int, s2m_start: int, m2s_start: int) -> None:
        self.rig = ring_rig(log2, bsize, s2m_start, m2s_start)
        self.s2m_head = self.s2m_tail = s2m_start
        self.m2s_tail = self.m2s_consumed = m2s_start

    def teardown(self) -> None:
        if self.rig is not None:
            self.rig.close()

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def slots(queue: deque[Entry]) -> int:
        return sum(e[1] for e in queue)

    @staticmethod
    def consume(queue: deque[Entry], used: int) -> list[Entry]:
        """Pop the entries that cover exactly ``used`` slots (never half a packet)."""
        out: list[Entry] = []
        total = 0
        while total < used:
            assert queue, f"receiver consumed {used} slots, only {total} were published"
            entry = queue.popleft()
            out.append(entry)
            total += entry[1]
        assert total == used, "receiver stopped in the middle of a packet"
        return out

    def s2m_free(self) -> int:
        return self.r.size - self.slots(self.s2m_pub) - self.s2m_held

    def m2s_offered(self) -> int:
        return self.r.size - self.slots(self.m2s_pub) - self.m2s_held

    def check_receive(
        self,
        queue: deque[Entry],
        views: Sequence[Packet],
        used: int,
        limit: int,
        good_before: int,
        counters: list[int],
        real: QueueCounters,
    ) -> None:
        consumed = self.consume(queue, used)
        got = take(views)
        assert got == [e[0] for e in consumed if e[0] is not None]  # in order, byte-exact
        assert len(got) == min(limit, good_before)
        if len(got) < limit:
            assert not queue, "receiver stopped early"
        counters[0] += len(got)
        counters[1] += sum(map(len, got))
        counters[2] += sum(e[2] for e in consumed)
        assert [real.packets, real.bytes, real.bad_descriptors] == counters

    # -- S2M: slave transmits ----------------------------------------------------------------
    @rule(data=st.data())
    def client_send(self, data: st.DataObject) -> None:
        r = self.r
        packets: list[bytes] = data.draw(
            st.lists(st.binary(min_size=1, max_size=r.bsize), max_size=r.size + 2), label="pkts"
        )
        first = data.draw(st.integers(0, len(packets)), label="start")
        as_type = data.draw(st.sampled_from([bytes, bytearray, memoryview]), label="type")
        free = self.s2m_free()
        assert r.client_tx.free() == free
        sent = r.client_tx.write([as_type(p) for p in packets], first)
        assert sent == min(free, len(packets) - first)
        for p in packets[first : first + sent]:
            self.s2m_pub.append((p, 1, 0))
            self.c_client_tx[0] += 1
            self.c_client_tx[1] += len(p)
        self.s2m_head = (self.s2m_head + sent) & MASK

    @rule(data=st.data())
    def client_publish_raw(self, data: st.DataObject) -> None:
        """The harness as a (possibly buggy) client: one packet of 1-3 hand-made descriptors."""
        r = self.r
        kinds = data.draw(st.lists(st.sampled_from(KINDS_S2M), min_size=1, max_size=3))
        if len(kinds) > self.s2m_free():
            return
        parts: list[bytes] = []
        bad = 0
        for j, kind in enumerate(kinds):
            idx = (self.s2m_head + j) & MASK
            flags = NEXT if j < len(kinds) - 1 else 0
            base = r.s2m_slot_buffer(idx)
            self.s2m_dirty.add(idx)  # ClientTx relies on pristine region/offset: repair later
            if kind in ("good", "headroom"):
                room = data.draw(st.integers(1, r.bsize - 1)) if kind == "headroom" else 0
                seg = data.draw(st.binary(min_size=1, max_size=r.bsize - room))
                r.mem[base + room : base + room + len(seg)] = seg
                r.put(r.s2m_client, idx, flags, 0, len(seg), base + room)
                parts.append(seg)
                continue
            bad += 1
            if kind == "len0":
                r.put(r.s2m_client, idx, flags, 0, 0, base)
            elif kind == "bad_region":
                r.put(r.s2m_client, idx, flags, data.draw(st.integers(1, MASK)), r.bsize, base)
            elif kind == "past_end":
                r.put(r.s2m_client, idx, flags, 0, 16, len(r.mem) - 8)
            else:  # huge_offset
                r.put(r.s2m_client, idx, flags, 0, 0x20, 0xFFFF_FFF0)
        self.s2m_pub.append((None if bad else b"".join(parts), len(kinds), bad))
        self.s2m_head = (self.s2m_head + len(kinds)) & MASK
        r.client_tx.head = self.s2m_head
        r.s2m_client.set_head(self.s2m_head)

    # -- S2M: master receives ----------------------------------------------------------------
    @rule(limit=st.integers(1, 20))
    def server_poll(self, limit: int) -> None:
        r = self.r
        good_before = sum(1 for e in self.s2m_pub if e[0] is not None)
        before = r.server_rx.read
        views = r.server_rx.poll(limit).packets
        used = (r.server_rx.read - before) & MASK
        self.check_receive(
            self.s2m_pub, views, used, limit, good_before, self.c_server_rx, r.server_rx.counters
        )
        self.s2m_held += used
        assert r.server_rx.held == self.s2m_held

    @rule()
    def server_release(self) -> None:
        r = self.r
        old = self.s2m_tail
        r.server_rx.release()
        self.s2m_tail = (old + self.s2m_held) & MASK
        self.s2m_held = 0
        # Slots returned: the harness-client repairs the descriptors it had broken.
        for idx in sorted(self.s2m_dirty):
            if (idx - old) & MASK < (self.s2m_tail - old) & MASK:
                s = idx & r.mask
                r.s2m_client.desc[s * 16 : s * 16 + 16] = r.pristine[0][s * 16 : s * 16 + 16]
                self.s2m_dirty.discard(idx)

    # -- M2S: master transmits ---------------------------------------------------------------
    @rule(data=st.data())
    def server_send(self, data: st.DataObject) -> None:
        r = self.r
        packets: list[bytes] = data.draw(
            st.lists(st.binary(min_size=1, max_size=r.bsize), max_size=r.size + 2), label="pkts"
        )
        offered = self.m2s_offered()
        assert r.server_tx.free() == offered
        good_offered = offered - len(self.m2s_corrupt)
        before = r.server_tx.tail
        sent = r.server_tx.write(packets)
        used = (r.server_tx.tail - before) & MASK
        assert sent == min(len(packets), good_offered)
        assert used <= offered
        if sent < len(packets):
            assert used == offered
        k = 0
        for j in range(used):
            idx = (before + j) & MASK
            if idx in self.m2s_corrupt:
                self.m2s_corrupt.discard(idx)
                self.m2s_pub.append((None, 1, 1))  # published empty; the client drops it
                self.c_server_tx[2] += 1
            else:
                assert k < len(packets), "a good offered slot was published without a packet"
                self.m2s_pub.append((packets[k], 1, 0))
                self.c_server_tx[0] += 1
                self.c_server_tx[1] += len(packets[k])
                k += 1
        assert k == sent
        self.m2s_tail = (self.m2s_tail + used) & MASK
        c = r.server_tx.counters
        assert [c.packets, c.bytes, c.bad_descriptors] == self.c_server_tx

    @precondition(lambda self: self.rig is not None and self.m2s_offered() > len(self.m2s_corrupt))
    @rule(data=st.data())
    def client_corrupts_an_offer(self, data: st.DataObject) -> None:
        """The harness as a buggy client: break the descriptor of a slot it has offered."""
        r = self.r
        offered = self.m2s_offered()
        choices = [
            (self.m2s_tail + j) & MASK
            for j in range(offered)
            if (self.m2s_tail + j) & MASK not in self.m2s_corrupt
        ]
        idx = data.draw(st.sampled_from(choices))
        _, region, length, offset, _ = r.get_full(r.m2s_client, idx)
        kind = data.draw(st.sampled_from(CORRUPT_OFFER))
        if kind == "bad_region":
            r.put(r.m2s_client, idx, 0, 1, length, offset)
        elif kind == "past_end":
            r.put(r.m2s_client, idx, 0, region, length, len(r.mem) - length + 1)
        else:
            r.put(r.m2s_client, idx, 0, region, 0, offset)
        self.m2s_corrupt.add(idx)

    @rule(data=st.data())
    def server_publish_raw(self, data: st.DataObject) -> None:
        """The harness as a foreign server (VPP splits big packets): one packet of 1-3
        descriptors, good, zero-length or with a length running past the region."""
        r = self.r
        kinds = data.draw(st.lists(st.sampled_from(KINDS_M2S), min_size=1, max_size=3))
        if len(kinds) > self.m2s_offered():
            return
        idxs = [(self.m2s_tail + j) & MASK for j in range(len(kinds))]
        if any(i in self.m2s_corrupt for i in idxs):
            return
        parts: list[bytes] = []
        bad = 0
        for j, (idx, kind) in enumerate(zip(idxs, kinds, strict=True)):
            flags = NEXT if j < len(kinds) - 1 else 0
            _, region, cap, offset, _ = r.get_full(r.m2s_server, idx)
            assert (region, cap) == (0, r.bsize)  # what the client offered
            if kind == "good":
                seg = data.draw(st.binary(min_size=1, max_size=cap))
                r.server_view[offset : offset + len(seg)] = seg
                r.put(r.m2s_server, idx, flags, region, len(seg), offset)
                parts.append(seg)
            elif kind == "len0":
                r.put(r.m2s_server, idx, flags, region, 0, offset)
                bad += 1
            else:
                r.put(r.m2s_server, idx, flags, region, len(r.mem), offset)
                bad += 1
        self.m2s_pub.append((None if bad else b"".join(parts), len(kinds), bad))
        self.m2s_tail = (self.m2s_tail + len(kinds)) & MASK
        r.server_tx.tail = self.m2s_tail
        r.m2s_server.set_tail(self.m2s_tail)

    # -- M2S: slave receives -----------------------------------------------------------------
    @rule(limit=st.integers(1, 20))
    def client_poll(self, limit: int) -> None:
        r = self.r
        good_before = sum(1 for e in self.m2s_pub if e[0] is not None)
        before = r.client_rx.read
        views = r.client_rx.poll(limit).packets
        used = (r.client_rx.read - before) & MASK
        self.check_receive(
            self.m2s_pub, views, used, limit, good_before, self.c_client_rx, r.client_rx.counters
        )
        self.m2s_held += used
        assert r.client_rx.held == self.m2s_held

    @rule()
    def client_release(self) -> None:
        r = self.r
        old_head = (self.m2s_consumed + r.size) & MASK
        r.client_rx.release()
        self.m2s_consumed = (self.m2s_consumed + self.m2s_held) & MASK
        refilled = self.m2s_held
        self.m2s_held = 0
        # Every refilled slot is offered again exactly as it was at creation.
        for j in range(refilled):
            s = (old_head + j) & r.mask
            assert (
                bytes(r.m2s_client.desc[s * 16 : s * 16 + 16])
                == r.pristine[1][s * 16 : s * 16 + 16]
            )

    # -- whole rounds, so that runs cross the u16 wrap many times ---------------------------
    @rule(data=st.data(), limit=st.integers(1, 20))
    def s2m_round(self, data: st.DataObject, limit: int) -> None:
        self.client_send(data)
        self.server_poll(limit)
        self.server_release()

    @rule(data=st.data(), limit=st.integers(1, 20))
    def m2s_round(self, data: st.DataObject, limit: int) -> None:
        self.server_send(data)
        self.client_poll(limit)
        self.client_release()

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def indexes_and_free_slots(self) -> None:
        if self.rig is None:
            return
        r = self.r
        assert r.s2m_client.head == r.s2m_server.head == self.s2m_head
        assert r.s2m_server.tail == self.s2m_tail
        assert r.m2s_server.tail == self.m2s_tail
        assert r.m2s_client.head == (self.m2s_consumed + r.size) & MASK
        assert r.client_tx.free() == self.s2m_free()
        assert r.server_tx.free() == self.m2s_offered()
        assert 0 <= self.s2m_free() <= r.size
        assert 0 <= self.m2s_offered() <= r.size
        c = r.client_tx.counters
        assert [c.packets, c.bytes] == self.c_client_tx[:2]
        for ring in (r.s2m_server, r.m2s_server):
            assert ring_cookie_ok(r.server_view, ring.offset)


def test_ring_model() -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call, unused-ignore]  # typed in newer hypothesis
        RingModel, settings=settings(max_examples=150, stateful_step_count=60, deadline=None)
    )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def rig() -> Iterator[MmapRig]:
    r = ring_rig(log2=3, bsize=64, s2m_start=MASK - 2, m2s_start=MASK - 2)
    yield r
    r.close()


def publish_s2m(r: MmapRig, descs: list[tuple[int, int, int, int]]) -> None:
    """The harness-client publishes (flags, region, length, offset) descriptors at head."""
    head = r.client_tx.head
    for j, (flags, region, length, offset) in enumerate(descs):
        r.put(r.s2m_client, head + j, flags, region, length, offset)
    r.client_tx.head = (head + len(descs)) & MASK
    r.s2m_client.set_head(r.client_tx.head)


def fill_s2m(r: MmapRig, idx: int, data: bytes) -> tuple[int, int, int]:
    """Write ``data`` into the buffer of slot ``idx``; return (region, length, offset)."""
    base = r.s2m_slot_buffer(idx)
    r.mem[base : base + len(data)] = data
    return 0, len(data), base


# --------------------------------------------------------------------------- indexes


def test_layout_and_pristine_state(rig: MmapRig) -> None:
    r = rig
    assert r.s2m_client.head == r.s2m_client.tail == MASK - 2
    assert r.m2s_client.tail == MASK - 2
    assert r.m2s_client.head == (MASK - 2 + 8) & MASK == 5  # fully stocked, wrapped
    assert r.client_tx.free() == 8
    assert r.server_tx.free() == 8
    assert r.server_rx.poll(10).packets == []
    assert r.client_rx.poll(10).packets == []
    for ring in (r.s2m_client, r.m2s_client):
        assert ring.flags == 0
        assert ring.wants_signal()
        ring.set_flags(1)
        assert not ring.wants_signal()


def test_indexes_are_single_u16_words(rig: MmapRig) -> None:
    r = rig
    ring = r.s2m_client
    ring.set_head(0x1_2345)
    ring.set_tail(0x2_ABCD)
    off = r.layout.s2m[0].offset
    assert r.mem[off + 6 : off + 8] == b"\x45\x23"  # head at +6
    assert r.mem[off + CL : off + CL + 2] == b"\xcd\xab"  # tail at +CL
    assert (ring.head, ring.tail) == (0x2345, 0xABCD)
    assert r.mem[off : off + 4] == b"\x20\x1f\xe3\x03"  # cookie untouched


@settings(max_examples=40, deadline=None)
@given(start=st.integers(0, MASK), excess=st.integers(1, MASK - 8))
def test_server_rx_refuses_head_beyond_ring(start: int, excess: int) -> None:
    r = ring_rig(3, 64, s2m_start=start)
    try:
        r.s2m_client.set_head(start + 8 + excess)
        with pytest.raises(RemoteProtocolError, match="head out of range"):
            r.server_rx.poll(64)
        assert r.server_rx.held == 0
        assert r.s2m_server.tail == start
    finally:
        r.close()


@settings(max_examples=40, deadline=None)
@given(start=st.integers(0, MASK), excess=st.integers(1, MASK - 8))
def test_server_tx_refuses_head_beyond_ring(start: int, excess: int) -> None:
    r = ring_rig(3, 64, m2s_start=start)
    try:
        r.m2s_client.set_head(start + 8 + excess)
        with pytest.raises(RemoteProtocolError, match="head out of range"):
            r.server_tx.free()
        with pytest.raises(RemoteProtocolError, match="head out of range"):
            r.server_tx.write([b"x"])
        assert r.m2s_server.tail == start
    finally:
        r.close()


@settings(max_examples=40, deadline=None)
@given(start=st.integers(0, MASK), excess=st.integers(1, MASK - 8))
def test_client_tx_refuses_tail_beyond_ring(start: int, excess: int) -> None:
    r = ring_rig(3, 64, s2m_start=start)
    try:
        # tail more than a ring behind head (equivalently: ahead of head)
        r.s2m_server.set_tail(start - 8 - excess)
        with pytest.raises(RemoteProtocolError, match="tail out of range"):
            r.client_tx.free()
        with pytest.raises(RemoteProtocolError, match="tail out of range"):
            r.client_tx.write([b"x"])
        assert r.s2m_client.head == start
    finally:
        r.close()


@settings(max_examples=40, deadline=None)
@given(start=st.integers(0, MASK), excess=st.integers(1, MASK - 8))
def test_client_rx_refuses_tail_beyond_offered(start: int, excess: int) -> None:
    r = ring_rig(3, 64, m2s_start=start)
    try:
        r.m2s_server.set_tail(start + 8 + excess)
        with pytest.raises(RemoteProtocolError, match="tail out of range"):
            r.client_rx.poll(64)
        assert r.client_rx.held == 0
    finally:
        r.close()


def test_full_ring_is_not_an_overflow(rig: MmapRig) -> None:
    """count == N exactly is a full ring, not corruption (head - tail == N after stocking)."""
    r = rig
    assert r.client_tx.write([bytes([k]) * 3 for k in range(10)]) == 8
    assert r.client_tx.free() == 0
    assert r.client_tx.write([b"more"]) == 0
    got = take(r.server_rx.poll(100).packets)
    assert got == [bytes([k]) * 3 for k in range(8)]
    assert r.client_tx.free() == 0  # not yet released
    r.server_rx.release()
    assert r.client_tx.free() == 8
    assert r.s2m_server.tail == (MASK - 2 + 8) & MASK


def test_poll_limit_and_repeated_polls_before_release(rig: MmapRig) -> None:
    r = rig
    pkts = [bytes([k]) * (k + 1) for k in range(7)]
    assert r.client_tx.write(pkts) == 7
    assert take(r.server_rx.poll(3).packets) == pkts[:3]
    assert take(r.server_rx.poll(3).packets) == pkts[3:6]
    assert r.server_rx.held == 6
    assert r.s2m_server.tail == MASK - 2  # nothing returned yet
    r.server_rx.release()
    assert take(r.server_rx.poll(3).packets) == pkts[6:]
    r.server_rx.release()
    assert r.client_tx.free() == 8
    c = r.server_rx.counters
    assert (c.packets, c.bytes, c.bad_descriptors) == (7, sum(map(len, pkts)), 0)


@pytest.mark.parametrize("limit", [0, -1])
def test_poll_without_room_takes_nothing(rig: MmapRig, limit: int) -> None:
    """poll(limit) returns "up to limit" packets: with limit <= 0, none, and none consumed."""
    r = rig
    assert r.client_tx.write([b"s1", b"s2"]) == 2
    assert r.server_tx.write([b"m1", b"m2"]) == 2
    assert take(r.server_rx.poll(limit).packets) == []
    assert take(r.client_rx.poll(limit).packets) == []
    assert (r.server_rx.held, r.client_rx.held) == (0, 0)
    assert take(r.server_rx.poll(10).packets) == [b"s1", b"s2"]
    assert take(r.client_rx.poll(10).packets) == [b"m1", b"m2"]


# --------------------------------------------------------------------------- bad descriptors


@pytest.mark.parametrize(
    ("name", "region", "length", "offset"),
    [
        ("region out of range", 1, 10, None),
        ("region far out of range", 0xFFFF, 10, None),
        ("length 0", 0, 0, None),
        ("offset + length past the region", 0, 16, -8),
        ("offset past the region", 0, 1, 0),
        ("offset near 2**32", 0, 0x20, 0xFFFF_FFF0),
        ("length near 2**32", 0, 0xFFFF_FFFF, None),
    ],
)
def test_server_rx_skips_bad_descriptors(
    rig: MmapRig, name: str, region: int, length: int, offset: int | None
) -> None:
    r = rig
    head = r.client_tx.head
    good1 = fill_s2m(r, head, b"first")
    bad_off = r.s2m_slot_buffer(head + 1) if offset is None else offset
    if offset is not None and offset <= 0:
        bad_off = len(r.mem) + offset
    good2 = fill_s2m(r, head + 2, b"third")
    publish_s2m(r, [(0, *good1[:2], good1[2]), (0, region, length, bad_off), (0, *good2)])
    assert take(r.server_rx.poll(10).packets) == [b"first", b"third"]
    c = r.server_rx.counters
    assert (c.packets, c.bytes, c.bad_descriptors) == (2, 10, 1), name
    r.server_rx.release()
    assert r.s2m_server.tail == (head + 3) & MASK  # the bad slot went back too
    assert r.client_tx.free() == 8


def test_server_rx_all_bad_returns_nothing_but_consumes(rig: MmapRig) -> None:
    r = rig
    publish_s2m(r, [(0, 5, 10, 0)] * 3)
    assert r.server_rx.poll(10).packets == []
    assert r.server_rx.counters.bad_descriptors == 3
    assert r.server_rx.held == 3
    r.server_rx.release()
    assert r.client_tx.free() == 8


@pytest.mark.parametrize(
    ("region", "length", "offset_from_end"),
    [(1, 64, None), (0, 0, None), (0, 64, 32)],
    ids=["bad region", "zero capacity", "buffer past the region"],
)
def test_server_tx_skips_bad_offers(
    rig: MmapRig, region: int, length: int, offset_from_end: int | None
) -> None:
    r = rig
    tail = r.server_tx.tail
    _, _, _, offset, _ = r.get_full(r.m2s_client, tail + 1)
    if offset_from_end is not None:
        offset = len(r.mem) - offset_from_end
    r.put(r.m2s_client, tail + 1, 0, region, length, offset)
    assert r.server_tx.write([b"one", b"two"]) == 2
    c = r.server_tx.counters
    assert (c.packets, c.bytes, c.bad_descriptors) == (2, 6, 1)
    assert r.m2s_server.tail == (tail + 3) & MASK
    assert r.get_full(r.m2s_server, tail + 1)[2] == 0  # the bad slot is published empty
    # The client drops the empty slot as a bad descriptor and refills it.
    assert take(r.client_rx.poll(10).packets) == [b"one", b"two"]
    assert r.client_rx.counters.bad_descriptors == 1
    r.client_rx.release()
    assert r.server_tx.free() == 8
    s = (tail + 1) & r.mask
    assert bytes(r.m2s_client.desc[s * 16 : s * 16 + 16]) == r.pristine[1][s * 16 : s * 16 + 16]


def test_client_rx_skips_bad_descriptors_from_server(rig: MmapRig) -> None:
    r = rig
    tail = r.server_tx.tail
    assert r.server_tx.write([b"a", b"b", b"c", b"d"]) == 4
    # A hostile server rewrites lengths and regions of what it published.
    _, region, _, offset, _ = r.get_full(r.m2s_server, tail + 1)
    r.put(r.m2s_server, tail + 1, 0, region, len(r.mem), offset)
    r.put(r.m2s_server, tail + 2, 0, 3, 1, offset)
    assert take(r.client_rx.poll(10).packets) == [b"a", b"d"]
    assert r.client_rx.counters.bad_descriptors == 2
    r.client_rx.release()
    assert r.server_tx.free() == 8


# --------------------------------------------------------------------------- chains


def test_chain_across_the_wrap_is_joined(rig: MmapRig) -> None:
    r = rig
    head = r.client_tx.head  # 0xFFFD: slots 5, 6, 7, then 0 and 1 after the wrap
    segs = [b"A" * 64, b"B" * 64, b"C" * 64, b"D" * 10]
    descs = []
    for j, seg in enumerate(segs):
        region, length, offset = fill_s2m(r, head + j, seg)
        descs.append((NEXT if j < 3 else 0, region, length, offset))
    publish_s2m(r, [*descs, (0, *fill_s2m(r, head + 4, b"after"))])
    assert r.s2m_client.head == 2
    assert take(r.server_rx.poll(10).packets) == [b"".join(segs), b"after"]
    c = r.server_rx.counters
    assert (c.packets, c.bytes, c.bad_descriptors) == (2, 207, 0)
    r.server_rx.release()
    assert r.s2m_server.tail == 2


def test_chain_respects_poll_limit_at_packet_boundary(rig: MmapRig) -> None:
    r = rig
    head = r.client_tx.head
    d0 = fill_s2m(r, head, b"x1")
    d1 = fill_s2m(r, head + 1, b"x2")
    d2 = fill_s2m(r, head + 2, b"y")
    publish_s2m(r, [(NEXT, *d0), (0, *d1), (0, *d2)])
    assert take(r.server_rx.poll(1).packets) == [b"x1x2"]
    assert r.server_rx.held == 2
    assert take(r.server_rx.poll(1).packets) == [b"y"]


def test_chain_with_a_bad_segment_is_dropped_whole(rig: MmapRig) -> None:
    r = rig
    head = r.client_tx.head
    d0 = fill_s2m(r, head, b"p1")
    d2 = fill_s2m(r, head + 2, b"p3")
    d3 = fill_s2m(r, head + 3, b"ok")
    publish_s2m(r, [(NEXT, *d0), (NEXT, 9, 1, 0), (0, *d2), (0, *d3)])
    assert take(r.server_rx.poll(10).packets) == [b"ok"]
    assert r.server_rx.counters.bad_descriptors == 1
    assert r.server_rx.held == 4
    r.server_rx.release()
    assert r.client_tx.free() == 8


def test_chain_running_past_published_slots_is_bad(rig: MmapRig) -> None:
    r = rig
    head = r.client_tx.head
    d0 = fill_s2m(r, head, b"whole")
    d1 = fill_s2m(r, head + 1, b"half")
    d2 = fill_s2m(r, head + 2, b"more")
    publish_s2m(r, [(0, *d0), (NEXT, *d1), (NEXT, *d2)])  # the chain never ends
    assert take(r.server_rx.poll(10).packets) == [b"whole"]
    c = r.server_rx.counters
    assert (c.packets, c.bad_descriptors) == (1, 1)
    assert r.server_rx.held == 3  # its slots are consumed and returned
    r.server_rx.release()
    assert r.client_tx.free() == 8
    # The next packet is not glued onto the broken chain.
    assert r.client_tx.write([b"next"]) == 1
    assert take(r.server_rx.poll(10).packets) == [b"next"]


def test_m2s_chain_from_a_splitting_server(rig: MmapRig) -> None:
    """VPP and DPDK servers split big packets over several offered buffers (NEXT)."""
    r = rig
    tail = r.server_tx.tail
    payload = bytes(range(150))
    pieces = [payload[:64], payload[64:128], payload[128:]]
    for j, piece in enumerate(pieces):
        _, region, cap, offset, _ = r.get_full(r.m2s_server, tail + j)
        assert cap == 64
        r.server_view[offset : offset + len(piece)] = piece
        r.put(r.m2s_server, tail + j, NEXT if j < 2 else 0, region, len(piece), offset)
    r.server_tx.tail = (tail + 3) & MASK
    r.m2s_server.set_tail(r.server_tx.tail)
    assert take(r.client_rx.poll(10).packets) == [payload]
    c = r.client_rx.counters
    assert (c.packets, c.bytes, c.bad_descriptors) == (1, 150, 0)
    r.client_rx.release()
    assert r.server_tx.free() == 8


def test_m2s_chain_running_past_published_slots_is_bad(rig: MmapRig) -> None:
    r = rig
    tail = r.server_tx.tail
    _, region, _, offset, _ = r.get_full(r.m2s_server, tail)
    r.server_view[offset : offset + 3] = b"cut"
    r.put(r.m2s_server, tail, NEXT, region, 3, offset)
    r.server_tx.tail = (tail + 1) & MASK
    r.m2s_server.set_tail(r.server_tx.tail)
    assert r.client_rx.poll(10).packets == []
    assert r.client_rx.counters.bad_descriptors == 1
    assert r.client_rx.held == 1
    r.client_rx.release()
    assert r.server_tx.free() == 8


# --------------------------------------------------------------------------- transmit errors


UNFIT = pytest.mark.parametrize(
    ("bad", "error"),
    [(b"", EmptyPacketError), (b"x" * 65536, PacketTooLargeError)],
    ids=["empty", "over 65535"],
)


@UNFIT
def test_client_tx_refuses_unfit_packets_and_publishes_nothing(
    rig: MmapRig, bad: bytes, error: type[Exception]
) -> None:
    r = rig
    head = r.s2m_client.head
    with pytest.raises(error):
        r.client_tx.write([b"fine", bad, b"fine"])
    assert r.s2m_client.head == head == r.client_tx.head
    assert r.client_tx.counters.packets == 0
    assert r.server_rx.poll(10).packets == []


@UNFIT
def test_server_tx_refuses_unfit_packets_and_publishes_nothing(
    rig: MmapRig, bad: bytes, error: type[Exception]
) -> None:
    r = rig
    tail = r.m2s_server.tail
    with pytest.raises(error):
        r.server_tx.write([b"fine", bad])
    assert r.m2s_server.tail == tail == r.server_tx.tail
    assert r.client_rx.poll(10).packets == []


def test_server_tx_honours_offered_capacity(rig: MmapRig) -> None:
    """A client may offer less than its buffer (headroom): the server must not overrun it."""
    r = rig
    tail = r.server_tx.tail
    _, region, _, offset, _ = r.get_full(r.m2s_client, tail)
    r.put(r.m2s_client, tail, 0, region, 16, offset + 48)
    assert r.server_tx.write([b"y" * 16]) == 1
    assert r.mem[offset + 48 : offset + 64] == b"y" * 16
    assert take(r.client_rx.poll(1).packets) == [b"y" * 16]


def test_server_tx_chains_past_a_small_offered_buffer(rig: MmapRig) -> None:
    """A packet larger than the offered capacity is split: 16 bytes there, the rest next."""
    r = rig
    tail = r.server_tx.tail
    _, region, _, offset, _ = r.get_full(r.m2s_client, tail)
    r.put(r.m2s_client, tail, 0, region, 16, offset + 48)
    packet = bytes(range(40))
    assert r.server_tx.write([packet]) == 1
    assert r.mem[offset + 48 : offset + 64] == packet[:16]
    flags, _, length, _, _ = r.get_full(r.m2s_client, tail)
    assert (flags, length) == (NEXT, 16)
    assert take(r.client_rx.poll(1).packets) == [packet]
    assert r.server_tx.counters.chained == 1


class WithBytes:
    def __bytes__(self) -> bytes:
        return b"from __bytes__"


def test_transmit_accepts_buffer_types(rig: MmapRig) -> None:
    r = rig
    pkts: list[object] = [
        b"bytes",
        bytearray(b"bytearray"),
        memoryview(b"memoryview"),
        memoryview(b"\x01\x00\x02\x00").cast("H"),
        WithBytes(),
    ]
    expected = [b"bytes", b"bytearray", b"memoryview", b"\x01\x00\x02\x00", b"from __bytes__"]
    assert r.client_tx.write(pkts) == 5
    assert take(r.server_rx.poll(10).packets) == expected
    assert r.server_tx.write(pkts) == 5
    assert take(r.client_rx.poll(10).packets) == expected
    with pytest.raises(TypeError):
        r.client_tx.write([12345])


def test_long_run_through_many_wraps() -> None:
    """Thousands of packets each way through a 4-slot ring: every one arrives, in order."""
    r = ring_rig(2, 32, s2m_start=MASK - 1, m2s_start=MASK)
    try:
        sent_s2m: list[bytes] = []
        sent_m2s: list[bytes] = []
        got_s2m: list[bytes] = []
        got_m2s: list[bytes] = []
        k = 0
        while len(got_s2m) < 70_000 // 20 or len(got_m2s) < 70_000 // 20:
            batch = [(k + j).to_bytes(4, "little") * ((k + j) % 8 + 1) for j in range(3)]
            k += 3
            n = r.client_tx.write(batch)
            sent_s2m += batch[:n]
            n = r.server_tx.write(batch)
            sent_m2s += batch[:n]
            got_s2m += take(r.server_rx.poll(2).packets)
            got_m2s += take(r.client_rx.poll(2).packets)
            r.server_rx.release()
            r.client_rx.release()
        got_s2m += take(r.server_rx.poll(100).packets)
        got_m2s += take(r.client_rx.poll(100).packets)
        assert got_s2m == sent_s2m
        assert got_m2s == sent_m2s
        assert r.server_rx.counters.packets == len(sent_s2m)
        assert r.client_rx.counters.packets == len(sent_m2s)
    finally:
        r.close()


def test_server_tx_offer_memory_never_trusts_unchecked_or_changed_slots() -> None:
    """The bulk transmit path remembers checked offers; a run it never checked (here all
    zero, which is also what the memory starts as) or a checked slot the client rewrote
    must be checked afresh, never written through."""
    r = ring_rig(4, 256)
    try:
        n = r.size // 2
        payload = [bytes([k + 1]) * 40 for k in range(n)]
        rings_end = r.layout.rings[-1].offset + 2 * CL + 16 * r.size
        # Lap 1, first half (slots 0..7): checked and remembered.
        assert r.server_tx.write(payload) == n
        assert take(r.client_rx.poll(r.size).packets) == payload
        r.client_rx.release()  # re-offers slots 0..7
        cookie = bytes(r.mem[:4])
        # Slots 8..15 were never used; the client now offers them zeroed
        # (region 0, length 0, offset 0 = the ring headers).
        for k in range(n, r.size):
            r.put(r.m2s_client, k, 0, 0, 0, 0)
        assert r.server_tx.write(payload) == n  # they are skipped: the packets go to 0..7
        assert r.server_tx.counters.bad_descriptors == n
        assert bytes(r.mem[:4]) == cookie
        assert payload[0] not in bytes(r.mem[:rings_end])  # no packet landed in the rings
        assert take(r.client_rx.poll(r.size).packets) == payload
        r.client_rx.release()
        # Slots 8..15 offered properly again (the refill restored them): checked, kept.
        assert r.server_tx.tail & r.mask == n
        assert r.server_tx.write(payload) == n
        assert take(r.client_rx.poll(r.size).packets) == payload
        r.client_rx.release()
        # A remembered slot (3) rewritten to point past the region: checked again.
        assert r.server_tx.tail & r.mask == 0
        r.put(r.m2s_client, 3, 0, 0, 256, len(r.mem) - 100)
        before = r.server_tx.counters.bad_descriptors
        assert r.server_tx.write(payload) == n  # slot 3 skipped, the rest go on
        assert r.server_tx.counters.bad_descriptors == before + 1
        assert take(r.client_rx.poll(r.size).packets) == payload
        assert bytes(r.mem[-100:]) == bytes(100)  # nothing written past the region's end
    finally:
        r.close()


@pytest.mark.parametrize("bad", [b"", bytes(70_000), "text"])
def test_transmit_checks_the_first_packet_left_for_later(rig: MmapRig, bad: object) -> None:
    """A write that fills the ring still reports an unsendable packet right behind the
    ones that fit, before publishing anything (as the per-packet path always did)."""
    r = rig
    error: type[Exception] = PacketTooLargeError
    if isinstance(bad, str):
        error = TypeError
    elif bad == b"":
        error = EmptyPacketError
    for tx, ring in ((r.client_tx, r.s2m_client), (r.server_tx, r.m2s_server)):
        room = tx.free()
        before = (ring.head, ring.tail)
        with pytest.raises(error):
            tx.write([b"x" * 10] * room + [bad])
        assert (ring.head, ring.tail) == before
        assert tx.counters.packets == 0
