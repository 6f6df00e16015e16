"""The bulk fast paths of the hot path, and their per-descriptor fallbacks.

Receive reads a run of descriptors as columns and builds the views in bulk when the run is
plain (one flags/region word with flags 0, lengths > 0, a conservative bound inside the
region). Client transmit copies through the region's mmap and writes only the length column
(offsets and flags too while the ring is "dirty" after chains, forwarding or at the start).
Server transmit checks the offered run in bulk. Everything else must take the per-descriptor
paths, which check and count each descriptor. These tests pin down that every run, plain or
not, arrives byte-exact and in order, that bad descriptors are counted exactly and their
slots still returned, and that interrupt masking and spinning neither lose a packet nor
hold the event loop.

- Ring level (no event loop): :class:`MmapRig` builds the client layout in anonymous mmaps,
  because real regions are mmaps and the transmitters copy through the mmap object itself
  (a bytearray-backed rig, as in test_ring.py, takes a different copy path). Cursors start
  just below the ring's end and the u16 wrap. :func:`spy` / :func:`forbid` wrap an endpoint's
  fallback method to show which path a run took.
- Connections: real pairs (``test_datapath.linked``) and the scripted hostile peers of
  hostile.py (``test_hostile.fake_client_link`` / ``fake_master_link``), in both directions.

No speed is asserted: waits are bounded by generous timeouts only.
"""

from __future__ import annotations

import asyncio
import mmap
import struct
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hostile import M2S, S2M, SlaveMemory
from test_datapath import ROLES, TIMEOUT, eventually, linked, payload
from test_hostile import fake_client_link, fake_master_link, master_publish, master_send

import aiomemif._core.descriptors
from aiomemif import (
    ChainedPacket,
    Connection,
    InterfaceConfig,
    RegionLayout,
    RxMode,
    WouldBlockError,
)
from aiomemif._aio.rx_queue import RxQueue
from aiomemif._aio.tx_queue import TxQueue
from aiomemif._core import wire as w
from aiomemif._core.client_tx import ClientTx
from aiomemif._core.layout import plan_client_layout
from aiomemif._core.ring import QueueCounters, Ring, descriptor_table, init_ring
from aiomemif._core.rx import ClientRx, RxRun, ServerRx
from aiomemif._core.buffers import Packet
from aiomemif._core.server_tx import ServerTx

MASK = 0xFFFF
NEXT = w.DESC_FLAG_NEXT
MASK_INT = w.RING_FLAG_MASK_INT
CL = 64
#: Descriptor layout as the protocol document spells it: flags, region, length, offset, meta.
DESC = struct.Struct("<HHIII")


# =============================================================================== helpers


class MmapRig:
    """One client layout (1 S2M + 1 M2S ring) in anonymous mmaps, all four endpoints linked.

    As in a real connection every region is an mmap and each endpoint's view covers all of
    it, so both transmitters copy through the mmap (``sink``). The slave's and the master's
    endpoints get their own views and ``Ring`` objects, as two processes would. ``extra``
    appends one more region of that many bytes (known to both sides, no layout in it), for
    runs that name two regions.
    """

    def __init__(
        self,
        log2: int = 3,
        bsize: int = 64,
        start: int = MASK - 2,
        *,
        split: bool = False,
        tx_headroom: int = 0,
        extra: int = 0,
    ) -> None:
        kind = RegionLayout.SPLIT if split else RegionLayout.SINGLE
        self.layout = layout = plan_client_layout(1, 1, log2, bsize, CL, kind)
        self.size = layout.ring_size
        self.mask = self.size - 1
        self.bsize = bsize
        self.breg = layout.buffer_region
        self.extra = len(layout.region_sizes) if extra else None
        sizes = [*layout.region_sizes, *([extra] if extra else [])]
        self.maps = [mmap.mmap(-1, n) for n in sizes]
        self.slave_views = [memoryview(m) for m in self.maps]  # the slave's mappings ...
        self.master_views = [memoryview(m) for m in self.maps]  # ... and the master's
        s2m, m2s = layout.s2m[0], layout.m2s[0]
        n = self.size
        self.tx_table = array("I", range(s2m.buffers, s2m.buffers + n * bsize, bsize))
        self.rx_table = array("I", range(m2s.buffers, m2s.buffers + n * bsize, bsize))
        for place, table in ((s2m, self.tx_table), (m2s, self.rx_table)):
            descs = bytes(descriptor_table(table, self.breg, 0, bsize))
            init_ring(self.slave_views[0], place.offset, CL, descs)
        self.s2m_slave = Ring(self.slave_views[0], s2m.offset, log2, CL)
        self.s2m_master = Ring(self.master_views[0], s2m.offset, log2, CL)
        self.m2s_slave = Ring(self.slave_views[0], m2s.offset, log2, CL)
        self.m2s_master = Ring(self.master_views[0], m2s.offset, log2, CL)
        self.slave_tx = ClientTx(
            self.s2m_slave,
            self.slave_views[self.breg],
            self.breg,
            array("I", self.tx_table),
            bsize,
            tx_headroom,
            QueueCounters(),
            sink=self.maps[self.breg],
        )
        self.master_rx = ServerRx(self.s2m_master, self.master_views, QueueCounters())
        self.slave_rx = ClientRx(
            self.m2s_slave,
            self.slave_views,
            QueueCounters(),
            self.breg,
            array("I", self.rx_table),
            bsize,
        )
        self.master_tx = ServerTx(self.m2s_master, self.master_views, QueueCounters(), self.maps)
        # The transmitters copy through the mmap itself, as they do on a real connection.
        assert self.slave_tx.sink is self.maps[self.breg]
        assert self.master_tx.sinks == self.maps
        # CONNECT, then every index and cursor moved to ``start``.
        for ring in (self.s2m_slave, self.m2s_slave):
            ring.set_head(start)
            ring.set_tail(start)
        self.slave_tx.head = self.master_rx.read = start
        self.slave_rx.head = self.slave_rx.read = start
        self.master_tx.tail = start
        self.slave_rx.refill()  # stock the M2S ring, as client._build does

    # -- the harness playing a peer ------------------------------------------------------
    def put(self, ring: Ring, idx: int, flags: int, region: int, length: int, offset: int) -> None:
        DESC.pack_into(ring.desc, (idx & self.mask) * 16, flags, region, length, offset, 0)

    def get(self, ring: Ring, idx: int) -> tuple[int, int, int, int]:
        flags, region, length, offset, _meta = DESC.unpack_from(ring.desc, (idx & self.mask) * 16)
        return flags, region, length, offset

    def write(self, region: int, offset: int, data: bytes) -> None:
        self.slave_views[region][offset : offset + len(data)] = data

    def read(self, region: int, offset: int, length: int) -> bytes:
        return bytes(self.master_views[region][offset : offset + length])

    def slave_publish(self, descs: Sequence[tuple[int, int, int, int]]) -> None:
        """A hand-made slave publishes ``(flags, region, length, offset)`` descriptors."""
        head = self.slave_tx.head
        for j, desc in enumerate(descs):
            self.put(self.s2m_slave, head + j, *desc)
        self.slave_tx.head = (head + len(descs)) & MASK
        self.s2m_slave.set_head(self.slave_tx.head)

    def master_publish(self, descs: Sequence[tuple[int, int, int, int]]) -> None:
        """A hand-made master fills offered M2S slots with these descriptors, publishes tail."""
        tail = self.master_tx.tail
        for j, desc in enumerate(descs):
            self.put(self.m2s_master, tail + j, *desc)
        self.master_tx.tail = (tail + len(descs)) & MASK
        self.m2s_master.set_tail(self.master_tx.tail)

    def publish(self, direction: str, descs: Sequence[tuple[int, int, int, int]]) -> None:
        (self.slave_publish if direction == "s2m" else self.master_publish)(descs)

    def receiver(self, direction: str) -> ServerRx | ClientRx:
        return self.master_rx if direction == "s2m" else self.slave_rx

    def own_buffer(self, direction: str, idx: int) -> int:
        """The client's buffer behind slot ``idx`` of the S2M or M2S ring."""
        table = self.tx_table if direction == "s2m" else self.rx_table
        return table[idx & self.mask]

    def stage(
        self, direction: str, first: int, packets: Sequence[bytes], flags: Sequence[int] = ()
    ) -> list[tuple[int, int, int, int]]:
        """Write ``packets[j]`` into the client's buffer behind slot ``first + j``; return
        their ``(flags, region, length, offset)`` descriptors (flags 0 unless given)."""
        descs = []
        for j, p in enumerate(packets):
            base = self.own_buffer(direction, first + j)
            self.write(self.breg, base, p)
            descs.append((flags[j] if flags else 0, self.breg, len(p), base))
        return descs

    def close(self) -> None:
        for ring in (self.s2m_slave, self.s2m_master, self.m2s_slave, self.m2s_master):
            ring.release()
        for view in self.slave_views + self.master_views:
            view.release()
        for m in self.maps:
            try:
                m.close()
            except BufferError:  # a test failed holding a packet view; GC frees the map
                pass


@pytest.fixture(params=["long-runs-only", "bytes-from-2"])
def rigs(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., MmapRig]]:
    """Build :class:`MmapRig` objects (closed after the test). Every test runs twice: with
    the receive path's bytes comparison left to long runs (as shipped), and with it taking
    every run of two or more descriptors (these rings hold 8). There the default start is
    slot 0 of the ring, so that runs are also remembered (the memo of checked runs only
    takes runs that do not cross the ring's end; the free-running index still wraps at
    the end of an 8-slot run); tests that pass their own start cover wrapping runs."""
    bytes_path = request.param == "bytes-from-2"
    if bytes_path:
        monkeypatch.setattr(aiomemif._core.descriptors, "UNIFORM_RUN", 2)
    made: list[MmapRig] = []

    def make(**kw: Any) -> MmapRig:
        if bytes_path:
            kw.setdefault("start", MASK - 7)
        made.append(MmapRig(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def take(packets: Sequence[Packet]) -> list[bytes]:
    """Copy received packets out and release their views (what ``Batch.release`` does)."""
    out = [p.tobytes() if isinstance(p, ChainedPacket) else bytes(p) for p in packets]
    for p in packets:
        p.release()
    return out


def spy(monkeypatch: pytest.MonkeyPatch, obj: object, name: str) -> list[object]:
    """Count calls of ``obj.name`` (a fallback path) without changing what it does."""
    calls: list[object] = []
    real = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


def forbid(monkeypatch: pytest.MonkeyPatch, obj: object, name: str) -> None:
    """Fail if ``obj.name`` (a fallback path) is called: the run must take the bulk path."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{type(obj).__name__}.{name} called: the run missed the bulk path")

    monkeypatch.setattr(obj, name, fail)


def snapshot(ring: Ring) -> bytes:
    """Header and every descriptor of a ring, to show that nothing was published."""
    return bytes(ring.header) + bytes(ring.desc)


def sizes_for(k: int, cap: int) -> list[int]:
    """``k`` packet sizes in 1..cap, mixed, with both ends present."""
    return [[1, cap, 17, cap - 1, 2, 33, cap // 2, 5][j % 8] for j in range(k)]


def packets_of(seed: int, sizes: Sequence[int]) -> list[bytes]:
    return [payload(seed * 1000 + j, n) for j, n in enumerate(sizes)]


def slots_of(rx: ServerRx | ClientRx, run: RxRun) -> list[int]:
    """Ring slots of the packets of a poll's run, as ``Batch.slot_of`` maps them."""
    if run.slots is None:
        return [(run.start + i) & rx.ring.mask for i in range(len(run.packets))]
    return [s & rx.ring.mask for s in run.slots]


# --- connections -----------------------------------------------------------------------

#: A small client for the real links here (fast to build, runs wrap often).
SMALL = InterfaceConfig(ring_size=16, buffer_size=256)


def queues(server: Connection, client: Connection, receiver: str) -> tuple[TxQueue, RxQueue]:
    """(tx, rx) for traffic that ``receiver`` receives."""
    if receiver == "server":
        return client.tx_queues[0], server.rx_queues[0]
    return server.tx_queues[0], client.rx_queues[0]


def modes(receiver: str, mode: RxMode) -> dict[str, RxMode]:
    return {"client_mode": mode} if receiver == "client" else {"server_mode": mode}


async def receive_all(rx: RxQueue, count: int) -> list[tuple[bytes, bool]]:
    """Receive ``count`` packets: (bytes, arrived as a chain) each, batches released."""
    got: list[tuple[bytes, bool]] = []
    async with asyncio.timeout(TIMEOUT):
        while len(got) < count:
            batch = await rx.receive()
            got.extend((batch.keep(i), isinstance(p, ChainedPacket)) for i, p in enumerate(batch))
            batch.release()
    return got


def descriptors(ring: Ring, first: int, count: int) -> list[tuple[int, int, int, int]]:
    """(flags, region, length, offset) of ``count`` slots from free-running ``first``."""
    out = []
    for k in range(count):
        f, r, n, o, _m = DESC.unpack_from(ring.desc, ((first + k) & ring.mask) * 16)
        out.append((f, r, n, o))
    return out


# ========================================================== 1. one bad descriptor in a run

L = 16  # every packet of these runs: equal lengths, so only the bad one breaks the run
BAD_KINDS = [
    "region out of range",
    "length 0",
    "offset+length one past the region",
    "offset+length far past the region",
    "offset near 2**32",
]


def bad_descriptor(r: MmapRig, direction: str, kind: str, idx: int) -> tuple[int, int, int, int]:
    """A descriptor for slot ``idx`` that the receiver must refuse."""
    base = r.own_buffer(direction, idx)
    region_size = len(r.master_views[r.breg])
    return {
        "region out of range": (0, 7, L, base),
        "length 0": (0, r.breg, 0, base),
        "offset+length one past the region": (0, r.breg, L, region_size - L + 1),
        "offset+length far past the region": (0, r.breg, L, region_size - 8),
        "offset near 2**32": (0, r.breg, L, 0xFFFF_FFF0),
    }[kind]


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
        assert r.s2m_master.tail == (first + 8) & MASK
        assert r.slave_tx.free() == 8
    else:
        assert r.m2s_slave.head == (first + 16) & MASK  # all 8 slots refilled
        assert r.master_tx.free() == 8
        for j in range(8):  # each slot offers its own buffer again, the bad one included
            own = r.own_buffer("m2s", first + j)
            assert r.get(r.m2s_slave, first + j) == (0, r.breg, r.bsize, own)


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
        assert r.s2m_master.tail == (first + 1) & MASK
    else:
        assert r.m2s_slave.head == (first + 9) & MASK
        assert r.get(r.m2s_slave, first) == (0, r.breg, r.bsize, base)


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


# ============================================== 2. a valid run the bulk bound cannot admit


@pytest.mark.parametrize("lengths", ["mixed", "equal"])
@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_run_ending_exactly_at_the_region_end(
    rigs: Callable[..., MmapRig],
    monkeypatch: pytest.MonkeyPatch,
    direction: str,
    lengths: str,
) -> None:
    """The last buffer of the run ends exactly at the end of its region. With mixed lengths
    the conservative bulk bound (largest offset + largest length) fails although every
    descriptor is valid, so the run goes descriptor by descriptor: all of them must still
    be delivered. With equal lengths the bound is exact and the bulk path takes the run."""
    r = rigs()
    rx = r.receiver(direction)
    fallback = spy(monkeypatch, rx, "_collect_each")
    first = rx.read
    sizes = [40, 64, 3, 64, 17, 1, 64, 5] if lengths == "mixed" else [32] * 8
    packets = packets_of(2, sizes)
    region_size = len(r.master_views[r.breg])
    descs = []
    for j, p in enumerate(packets):
        base = r.own_buffer(direction, first + j) if j < 7 else region_size - len(p)
        r.write(r.breg, base, p)
        descs.append((0, r.breg, len(p), base))
    r.publish(direction, descs)
    assert take(rx.poll(64).packets) == packets
    assert bool(fallback) == (lengths == "mixed")  # both branches of the bulk check ran
    c = rx.counters
    assert (c.packets, c.bytes, c.bad_descriptors) == (8, sum(sizes), 0)
    rx.release()
    assert rx.held == 0


# ================================================ 3. two regions in a run, or NEXT in a run

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
    cut off by the published index is dropped and counted."""
    r = rigs(extra=4096)
    assert r.extra is not None
    rx = r.receiver(direction)
    first = rx.read
    two_regions = shape in ("two regions", "a chain across two regions")
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
        if not flags:
            expected.append((b"".join(parts), len(parts) > 1))
            parts = []
    r.publish(direction, descs)
    views = rx.poll(64).packets
    assert [isinstance(v, ChainedPacket) for v in views] == [chain for _, chain in expected]
    assert take(views) == [data for data, _ in expected]
    c = rx.counters
    dropped = 1 if parts else 0  # a chain still open after the last published slot
    assert (c.packets, c.bad_descriptors) == (len(expected), dropped)
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


# ============================================================= 4. bulk runs across the ring end


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
    tx, rx = r.slave_tx, r.master_rx
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
        assert r.s2m_master.head == (head + 7) & MASK
        for k, (flags, region, n, off) in enumerate(descriptors(r.s2m_master, head, 7)):
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
    tx, rx = r.master_tx, r.slave_rx
    forbid(monkeypatch, tx, "_write_each")
    forbid(monkeypatch, rx, "_collect_each")
    for lap in range(5):
        tail = tx.tail
        sizes = [r.bsize] * 7 if lap == 1 else sizes_for(7, r.bsize)
        packets = packets_of(lap, sizes)
        assert tx.write(packets) == 7
        for k, (flags, region, n, off) in enumerate(descriptors(r.m2s_slave, tail, 7)):
            own = r.rx_table[(tail + k) & r.mask]
            assert (flags, region, n, off) == (0, r.breg, sizes[k], own)
            assert bytes(r.slave_views[region][off : off + n]) == packets[k]
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


# ======================================================== 5. what the transmitters accept


class OnlyBytes:
    """Convertible with bytes() only (like dpkt): no buffer, no len()."""

    def __bytes__(self) -> bytes:
        return b"only __bytes__"


class LenAndBytes:
    """len() and bytes() but no buffer (like scapy)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __bytes__(self) -> bytes:
        return self.data


def typed_packets() -> list[tuple[str, object, bytes]]:
    """(name, packet object, the bytes that must go on the wire)."""
    u32 = array("I", [1, 0xDEADBEEF, 7])
    u16 = array("H", [1, 2, 0xFFFF, 0x1234])
    i8 = array("b", [-1, 2, -3])
    grid = bytes(range(12))
    return [
        ("bytes", b"plain bytes", b"plain bytes"),
        ("memoryview-I", memoryview(u32), u32.tobytes()),
        ("array-H", u16, u16.tobytes()),
        ("bytearray", bytearray(b"a bytearray"), b"a bytearray"),
        ("__bytes__", OnlyBytes(), b"only __bytes__"),
        ("__len__+__bytes__", LenAndBytes(b"len and bytes"), b"len and bytes"),
        ("memoryview-2d", memoryview(grid).cast("B", (3, 4)), grid),
        ("array-b", i8, i8.tobytes()),
        ("memoryview-B", memoryview(b"a byte view"), b"a byte view"),
    ]


TYPE_NAMES = [name for name, _, _ in typed_packets()]
NOT_BYTES_LIKE: list[object] = ["a str", 12345, None, [1, 2, 3], object()]


def tx_pair(r: MmapRig, side: str) -> tuple[ClientTx | ServerTx, ServerRx | ClientRx, Ring]:
    """(transmitter, receiver, ring) of the client's or the server's transmit direction."""
    if side == "client":
        return r.slave_tx, r.master_rx, r.s2m_slave
    return r.master_tx, r.slave_rx, r.m2s_master


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
    batch: list[object] = [view, b"next"][:count]
    assert tx.write(batch) == count
    assert take(rx.poll(64).packets) == [view.tobytes(), b"next"][:count]


# ============================================== 6. dirty tracking in the client transmitter


@pytest.mark.parametrize("chain_by", ["write", "alloc"])
@pytest.mark.parametrize("headroom", [0, 8])
def test_small_packets_after_a_chain_carry_no_next(
    rigs: Callable[..., MmapRig], headroom: int, chain_by: str
) -> None:
    """A chain leaves NEXT in its slots; the small packets copied into them afterwards (in
    bulk runs and one at a time) must have flags 0 and their slot's data offset written
    again: the chain made the ring dirty."""
    r = rigs(tx_headroom=headroom)
    tx, rx = r.slave_tx, r.master_rx
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
    assert [d[0] for d in descriptors(r.s2m_master, head, 3)] == [NEXT, NEXT, 0]
    views = rx.poll(64).packets
    assert [isinstance(v, ChainedPacket) for v in views] == [True]
    assert take(views) == [big]
    rx.release()
    for lap, count in enumerate([1, 3, 1, 2, 3, 1, 2, 3]):  # twice over the chain's slots
        head = tx.head
        packets = packets_of(10 + lap, sizes_for(count, cap))
        assert tx.write(packets) == count
        for k, desc in enumerate(descriptors(r.s2m_master, head, count)):
            own = r.tx_table[(head + k) & r.mask] + headroom
            assert desc == (0, r.breg, len(packets[k]), own), f"slot {(head + k) & r.mask}"
        views = rx.poll(64).packets
        assert not any(isinstance(v, ChainedPacket) for v in views)
        assert take(views) == packets
        rx.release()
    assert rx.counters.chained == 1


# ================================================================ connections: bad runs

LINK_BAD = ["region out of range", "length 0", "offset+length past the region"]


@pytest.mark.parametrize("pos", [0, 3, 7], ids=["first", "middle", "last"])
@pytest.mark.parametrize("kind", LINK_BAD)
async def test_link_s2m_run_with_one_bad_descriptor(
    sock_path: str, monkeypatch: pytest.MonkeyPatch, kind: str, pos: int
) -> None:
    """A hostile client publishes a run of 8 with one bad descriptor: the server delivers
    the 7 others in order, counts 1 bad, returns all 8 slots; the next run is bulk again."""
    async with fake_client_link(sock_path) as link:
        conn, mem = link.conn, link.mem
        ring = mem.ring(S2M)
        rxq = conn.rx_queues[0]
        fallback = spy(monkeypatch, rxq._endpoint, "_collect_each")
        packets = [payload(j, 60) for j in range(16)]
        for j in range(8):
            mem.write_packet(j, packets[j])
        own = mem.buffer_offset(S2M, 0, pos)
        bad: dict[str, int] = {
            "region out of range": {"region": 5, "length": 60, "offset": own},
            "length 0": {"length": 0, "offset": own},
            "offset+length past the region": {"length": 60, "offset": mem.size - 59},
        }[kind]
        ring.set_desc(pos, **bad)
        mem.publish_s2m(8)
        async with asyncio.timeout(TIMEOUT):
            batch = await rxq.receive()
        good = [j for j in range(8) if j != pos]
        assert [bytes(p) for p in batch] == [packets[j] for j in good]
        assert [batch.slot_of(i) & 15 for i in range(len(batch))] == good
        batch.release()
        assert len(fallback) == 1
        d = conn.details().rx_queues[0]
        assert (d.packets, d.bytes, d.bad_descriptors) == (7, 420, 1)
        assert ring.tail == 8
        for j in range(8, 16):
            mem.write_packet(j, packets[j])
        mem.publish_s2m(16)
        async with asyncio.timeout(TIMEOUT):
            batch = await rxq.receive()
        assert [bytes(p) for p in batch] == packets[8:]
        batch.release()
        assert len(fallback) == 1  # a plain run again: bulk
        assert ring.tail == 16
        assert conn.details().rx_queues[0].bad_descriptors == 1


@pytest.mark.parametrize("pos", [0, 3, 7], ids=["first", "middle", "last"])
@pytest.mark.parametrize("kind", LINK_BAD)
async def test_link_m2s_run_with_one_bad_descriptor_then_forward(
    sock_path: str, monkeypatch: pytest.MonkeyPatch, kind: str, pos: int
) -> None:
    """A hostile server publishes a run of 8 with one bad descriptor: the client delivers
    the 7 others, counts 1 bad, refills all 8 slots. Forwarding that batch moves exactly the
    good packets' buffers (the slot map of the per-descriptor path skips the bad slot)."""
    async with fake_master_link(sock_path) as link:
        conn, side = link.conn, link.side
        ring = side.ring(M2S)
        region = side.region(0)
        rxq, txq = conn.rx_queues[0], conn.tx_queues[0]
        fallback = spy(monkeypatch, rxq._endpoint, "_collect_each")
        packets = [payload(50 + j, 60) for j in range(8)]
        for j, p in enumerate(packets):
            master_send(side, j, p)
        own = ring.desc(pos)[3]
        bad: dict[str, int] = {
            "region out of range": {"region": 5, "length": 60, "offset": own},
            "length 0": {"length": 0, "offset": own},
            "offset+length past the region": {"length": 60, "offset": len(region) - 59},
        }[kind]
        ring.set_desc(pos, **bad)
        master_publish(side, 8)
        async with asyncio.timeout(TIMEOUT):
            batch = await rxq.receive()
        good = [packets[j] for j in range(8) if j != pos]
        assert [bytes(p) for p in batch] == good
        assert len(fallback) == 1
        assert txq.forward(batch) == 7
        batch.release()
        s2m = side.ring(S2M)
        assert s2m.head == 7
        for j in range(7):
            flags, reg, n, off, _m = s2m.desc(j)
            assert (flags, reg, n) == (0, 0, 60)
            assert region[off : off + n] == good[j]
        d = conn.details().rx_queues[0]
        assert (d.packets, d.bad_descriptors) == (7, 1)
        assert ring.head == 16 + 8  # all 8 slots offered again
        assert ring.desc(pos)[:4] == (0, 0, 256, own)  # the bad slot with its own buffer


@pytest.mark.parametrize("lengths", ["mixed", "equal"])
async def test_link_s2m_run_ending_at_the_region_end(sock_path: str, lengths: str) -> None:
    """A hostile client's run whose last buffer ends exactly at the end of its region is
    valid (mixed lengths: the conservative bulk bound refuses it): all 8 arrive."""
    async with fake_client_link(sock_path) as link:
        conn, mem = link.conn, link.mem
        ring = mem.ring(S2M)
        sizes = [60, 256, 1, 200, 17, 256, 99, 7] if lengths == "mixed" else [64] * 8
        packets = packets_of(3, sizes)
        for j in range(7):
            mem.write_packet(j, packets[j])
        off = mem.size - sizes[7]  # the last byte of the run is the last byte of the region
        mem.map[off : mem.size] = packets[7]
        ring.set_desc(7, length=sizes[7], offset=off)
        mem.publish_s2m(8)
        async with asyncio.timeout(TIMEOUT):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == packets
        batch.release()
        d = conn.details().rx_queues[0]
        assert (d.packets, d.bytes, d.bad_descriptors) == (8, sum(sizes), 0)
        assert ring.tail == 8


@pytest.mark.parametrize("lengths", ["mixed", "equal"])
async def test_link_m2s_run_ending_at_the_region_end(sock_path: str, lengths: str) -> None:
    """The same from a hostile server: the last buffer ends at the client region's end."""
    async with fake_master_link(sock_path) as link:
        conn, side = link.conn, link.side
        ring = side.ring(M2S)
        region = side.region(0)
        sizes = [60, 256, 1, 200, 17, 256, 99, 7] if lengths == "mixed" else [64] * 8
        packets = packets_of(4, sizes)
        for j in range(7):
            master_send(side, j, packets[j])
        off = len(region) - sizes[7]
        region[off:] = packets[7]
        ring.set_desc(7, length=sizes[7], offset=off)
        master_publish(side, 8)
        async with asyncio.timeout(TIMEOUT):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == packets
        batch.release()
        d = conn.details().rx_queues[0]
        assert (d.packets, d.bytes, d.bad_descriptors) == (8, sum(sizes), 0)


# ==================================================== connections: wrap, layouts, types


@pytest.mark.parametrize("layout", [RegionLayout.SINGLE, RegionLayout.SPLIT])
@pytest.mark.parametrize("sender", ROLES)
async def test_link_bulk_runs_wrap_the_ring(
    sock_path: str, monkeypatch: pytest.MonkeyPatch, sender: str, layout: RegionLayout
) -> None:
    """Runs that cross the end of an 8-slot ring go through both bulk paths on real
    mappings (SPLIT: every descriptor names region 1) and arrive byte-exact, in one go."""
    cfg = InterfaceConfig(ring_size=8, buffer_size=128, layout=layout)
    async with linked(sock_path, cfg) as (server, client):
        receiver = "server" if sender == "client" else "client"
        tx, rx = queues(server, client, receiver)
        rx_conn = server if receiver == "server" else client
        mapping = rx_conn._regions[1 if layout is RegionLayout.SPLIT else 0].mapping
        forbid(monkeypatch, tx._endpoint, "_write_each")
        forbid(monkeypatch, rx._endpoint, "_collect_each")
        for lap, count in enumerate([5, 7, 8, 6, 8]):
            packets = packets_of(lap, sizes_for(count, 128))
            assert tx.send_batch_nowait(packets) == count
            async with asyncio.timeout(TIMEOUT):
                batch = await rx.receive()
            assert len(batch) == count  # one run
            assert all(isinstance(p, memoryview) and p.obj is mapping for p in batch)
            assert [bytes(p) for p in batch] == packets
            batch.release()
        assert rx.counters.packets == tx.counters.packets == 34


@pytest.mark.parametrize("sender", ROLES)
async def test_link_sends_the_byte_representation(sock_path: str, sender: str) -> None:
    """bytes, item-format memoryviews and arrays, bytearrays, ``__bytes__`` objects: the wire
    carries their byte representation, mixed in one batch, in runs of one kind and alone.
    A packet that is not bytes-like raises TypeError and publishes nothing of its batch."""
    async with linked(sock_path, SMALL) as (server, client):
        tx, rx = queues(server, client, "server" if sender == "client" else "client")
        kinds = typed_packets()
        assert tx.send_batch_nowait([obj for _, obj, _ in kinds]) == len(kinds)
        assert await receive_all(rx, len(kinds)) == [(data, False) for _, _, data in kinds]
        for name, obj, data in kinds:  # a run of one kind at a time, then a single one
            assert tx.send_batch_nowait([obj] * 5) == 5, name
            assert await receive_all(rx, 5) == [(data, False)] * 5, name
            tx.send_nowait(obj)
            assert await receive_all(rx, 1) == [(data, False)], name
        # not bytes-like: TypeError, and nothing of the batch is published
        ring = tx._endpoint.ring
        before, sent = snapshot(ring), tx.counters.packets
        for bad in NOT_BYTES_LIKE:
            with pytest.raises(TypeError):
                tx.send_batch_nowait([b"ok", bad, b"ok"])
            with pytest.raises(TypeError):
                tx.send_nowait(bad)
        assert snapshot(ring) == before
        assert tx.counters.packets == sent
        with pytest.raises(WouldBlockError):
            rx.receive_nowait()
        tx.send_nowait(b"after")
        assert await receive_all(rx, 1) == [(b"after", False)]


@pytest.mark.parametrize("count", [1, 2], ids=["single", "run"])
@pytest.mark.parametrize("kind", ["B", "I"])
@pytest.mark.parametrize("sender", ROLES)
async def test_link_sends_non_contiguous_memoryviews(
    sock_path: str, sender: str, kind: str, count: int
) -> None:
    """``send`` accepts any buffer: a strided memoryview goes out as its bytes, alone
    (single-packet path) or in a run (bulk path), from either role."""
    async with linked(sock_path, SMALL) as (server, client):
        tx, rx = queues(server, client, "server" if sender == "client" else "client")
        view = memoryview(bytearray(range(40)) if kind == "B" else array("I", range(10)))[::2]
        batch: list[object] = [view, b"next"][:count]
        assert tx.send_batch_nowait(batch) == count
        expected = [(view.tobytes(), False), (b"next", False)][:count]
        assert await receive_all(rx, count) == expected


# ==================================================== connections: chains, forward, headroom


@pytest.mark.parametrize("layout", [RegionLayout.SINGLE, RegionLayout.SPLIT])
@pytest.mark.parametrize("headroom", [0, 32])
@pytest.mark.parametrize("sender", ROLES)
async def test_link_small_packets_after_a_jumbo_chain(
    sock_path: str, sender: str, headroom: int, layout: RegionLayout
) -> None:
    """A 9000-byte packet in 2048-byte buffers leaves NEXT in 4 slots; the small packets
    that reuse those slots must never carry NEXT (in the ring, and as received)."""
    room = {"tx_headroom" if sender == "client" else "rx_headroom": headroom}
    cfg = InterfaceConfig(ring_size=16, buffer_size=2048, layout=layout, **room)
    async with linked(sock_path, cfg) as (server, client):
        receiver = "server" if sender == "client" else "client"
        tx, rx = queues(server, client, receiver)
        rx_conn = server if receiver == "server" else client
        ring = rx._endpoint.ring  # the receiver's view of the ring
        table = client.tx_queues[0]._endpoint.buffers if sender == "client" else None
        cap = 2048 - headroom
        jumbo = payload(9000, 9000)
        nseg = -(-9000 // cap)
        tx.send_nowait(jumbo)
        assert [d[0] for d in descriptors(ring, 0, nseg)] == [NEXT] * (nseg - 1) + [0]
        assert await receive_all(rx, 1) == [(jumbo, True)]
        slot = nseg
        for lap, count in enumerate([1, 5, 1, 1, 5, 3, 5, 1, 5, 3, 5]):  # 35 slots
            packets = packets_of(lap, sizes_for(count, 200))
            if count == 1:
                tx.send_nowait(packets[0])
            else:
                assert tx.send_batch_nowait(packets) == count
            for k, (flags, reg, n, off) in enumerate(descriptors(ring, slot, count)):
                assert flags == 0, f"slot {(slot + k) & 15} carries flags {flags:#x}"
                assert n == len(packets[k])
                if table is not None:
                    assert off == table[(slot + k) & 15] + headroom
                view = rx_conn._regions[reg].view
                assert view is not None and bytes(view[off : off + n]) == packets[k]
            slot += count
            assert await receive_all(rx, count) == [(p, False) for p in packets]
        assert rx.counters.chained == 1


async def send_and_check(
    tx: TxQueue, rx: RxQueue, ring: Ring, slot: int, counts: Sequence[int], seed: int, cap: int
) -> int:
    """Send runs of ``counts`` packets (a count of 1 through ``send_nowait``, the single-packet
    path) from the client; each published descriptor must have flags 0 and the offset of its
    slot's own data (buffer + tx headroom); each packet arrives as a plain view, byte-exact.
    Returns the next free-running slot."""
    ep = tx._endpoint
    assert isinstance(ep, ClientTx)
    for lap, count in enumerate(counts):
        packets = packets_of(seed + lap, sizes_for(count, cap))
        if count == 1:
            tx.send_nowait(packets[0])
        else:
            assert tx.send_batch_nowait(packets) == count
        for k, (flags, _reg, n, off) in enumerate(descriptors(ring, slot, count)):
            s = (slot + k) & ring.mask
            want = (0, len(packets[k]), ep.buffers[s] + ep.headroom)
            assert (flags, n, off) == want, f"slot {s}"
        slot += count
        assert await receive_all(rx, count) == [(p, False) for p in packets]
    return slot


@pytest.mark.parametrize("tx_headroom", [0, 16])
async def test_link_copies_after_forward_use_their_slots_offsets(
    sock_path: str, tx_headroom: int
) -> None:
    """On a clean ring (a whole lap sent), forwarding publishes offsets 64 bytes into the
    moved buffers (rx headroom) and a chain: the ring is dirty again, and later copies into
    those slots must carry their own data offset and flags 0."""
    cfg = InterfaceConfig(ring_size=16, buffer_size=256, rx_headroom=64, tx_headroom=tx_headroom)
    async with linked(sock_path, cfg) as (server, client):
        crx, ctx = client.rx_queues[0], client.tx_queues[0]
        srx, stx = server.rx_queues[0], server.tx_queues[0]
        rx_ep, tx_ep = crx._endpoint, ctx._endpoint
        assert isinstance(rx_ep, ClientRx) and isinstance(tx_ep, ClientTx)
        all_buffers = sorted([*rx_ep.buffers, *tx_ep.buffers])
        ring = srx._endpoint.ring
        cap = 256 - tx_headroom
        slot = await send_and_check(ctx, srx, ring, 0, [16], 10, cap)
        assert tx_ep.dirty <= 0  # clean: copies now write the length column only
        sent = [payload(j, 100) for j in range(5)] + [payload(5, 300)]  # 300 > 192: a chain
        assert stx.send_batch_nowait(sent) == 6
        async with asyncio.timeout(TIMEOUT):
            batch = await crx.receive()
        assert len(batch) == 6
        assert ctx.forward(batch) == 6
        batch.release()
        assert [d for d, _ in await receive_all(srx, 6)] == sent
        forwarded = descriptors(ring, slot, 7)
        assert [d[0] for d in forwarded] == [0] * 5 + [NEXT, 0]
        assert [d[3] for d in forwarded] == [tx_ep.buffers[s] + 64 for s in range(7)]
        slot += 7
        # 34 slots: every slot twice, the forwarded ones included, in runs and singly
        await send_and_check(ctx, srx, ring, slot, [1, 5, 1, 5, 3, 1, 5, 5, 3, 5], 20, cap)
        assert sorted([*rx_ep.buffers, *tx_ep.buffers]) == all_buffers  # none in two rings


@pytest.mark.parametrize("first", ["run", "single"])
async def test_link_first_lap_writes_offsets_with_tx_headroom(
    sock_path: str, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """The client's rings start with descriptors at the buffer starts; with tx_headroom
    the very first lap (bulk runs or single packets) must write every offset."""
    cfg = InterfaceConfig(ring_size=16, buffer_size=256, tx_headroom=40)
    async with linked(sock_path, cfg) as (server, client):
        ctx, srx = client.tx_queues[0], server.rx_queues[0]
        forbid(monkeypatch, ctx._endpoint, "_write_each")
        ring = srx._endpoint.ring
        bases = list(ctx._endpoint.buffers)
        assert [d[3] for d in descriptors(ring, 0, 16)] == bases  # as the client built them
        counts = [16, 1, 5, 16] if first == "run" else [1] * 16 + [5, 16]
        await send_and_check(ctx, srx, ring, 0, counts, 30, 216)


# ===================================================== 7. server transmit into hostile offers

OFFERS = {
    # case: (expected path, bad offers)
    "stale NEXT on every offer": ("bulk", 0),
    "stale NEXT on some offers": ("each", 0),
    "mixed capacities": ("bulk", 0),
    "one offer too small": ("each", 0),
    "last offer ends at the region end": ("each", 0),
    "region out of range": ("each", 1),
    "zero capacity": ("each", 1),
    "buffer past the region": ("each", 1),
}


def parse_m2s(mem: SlaveMemory, count: int) -> tuple[list[bytes], int]:
    """Read the first ``count`` M2S slots as a slave would: packets (NEXT chains joined)
    and the number of slots published empty."""
    ring = mem.ring(M2S)
    packets: list[bytes] = []
    parts: list[bytes] = []
    empty = 0
    for slot in range(count):
        flags, region, length, offset, _m = ring.desc(slot)
        if length == 0:
            assert not parts and not flags
            empty += 1
            continue
        assert region == 0
        parts.append(mem.map[offset : offset + length])
        if not flags & NEXT:
            packets.append(b"".join(parts))
            parts = []
    assert not parts, "a chain runs past the published tail"
    return packets, empty


@pytest.mark.parametrize("how", ["batch", "one by one"])
@pytest.mark.parametrize("case", list(OFFERS))
async def test_server_transmit_into_hostile_offers(
    sock_path: str, monkeypatch: pytest.MonkeyPatch, case: str, how: str
) -> None:
    """A hostile client offers buffers with stale NEXT flags, mixed capacities or an unusable
    descriptor. The server writes flags itself (0, or NEXT inside its own chains), never
    writes outside an offer, and publishes unusable offers empty, counted as bad."""
    path, expect_bad = OFFERS[case]
    async with fake_client_link(sock_path) as link:
        conn, mem = link.conn, link.mem
        ring = mem.ring(M2S)
        n = mem.ring_size
        txq = conn.tx_queues[0]
        fallback = spy(monkeypatch, txq._endpoint, "_write_each")
        offers = [[0, 0, 256, mem.buffer_offset(M2S, 0, s)] for s in range(n)]  # f, r, cap, off
        if case == "stale NEXT on every offer":
            for o in offers:
                o[0] = NEXT
        elif case == "stale NEXT on some offers":
            offers[3][0] = offers[9][0] = NEXT
        elif case == "mixed capacities":
            for s, o in enumerate(offers):
                o[2] = 256 - 13 * s  # 256 .. 61: every 60-byte packet still fits
        elif case == "one offer too small":
            offers[5][2] = 32  # packet 5 is chained over slots 5 and 6
        elif case == "last offer ends at the region end":
            offers[15][2:] = [100, mem.size - 100]
        elif case == "region out of range":
            offers[7][1] = 3
        elif case == "zero capacity":
            offers[7][2] = 0
        else:
            offers[7][3] = mem.size - 100  # 256 bytes from there run past the end
        for s, (f, r, cap, off) in enumerate(offers):
            ring.set_desc(s, flags=f, region=r, length=cap, offset=off)
        ring.head = n
        untouched = bytes(mem.map[mem.size - 100 :]) if expect_bad else b""
        packets = [payload(70 + j, 60) for j in range(n)]
        if how == "batch":
            sent = txq.send_batch_nowait(packets)
        else:  # the single-packet path, packet after packet
            sent = 0
            for p in packets:
                try:
                    txq.send_nowait(p)
                except WouldBlockError:
                    break
                sent += 1
        chains = 1 if case == "one offer too small" else 0
        assert sent == n - expect_bad - chains
        assert ring.tail == n
        got, empty = parse_m2s(mem, n)
        assert got == packets[:sent]
        assert empty == expect_bad
        d = conn.details().tx_queues[0]
        assert (d.packets, d.bad_descriptors, d.chained) == (sent, expect_bad, chains)
        if how == "batch":
            assert bool(fallback) == (path == "each")
        if case == "buffer past the region":
            assert bytes(mem.map[mem.size - 100 :]) == untouched


# ========================================================== 8. interrupt-mode masking


@pytest.mark.parametrize("receiver", ROLES)
async def test_interrupt_mask_set_while_busy_cleared_before_sleeping(
    sock_path: str, receiver: str
) -> None:
    """INTERRUPT mode: MASK_INT is clear while a receive sleeps and set once it is woken, so
    packets published while the application is busy cost no signal; a receive that finds
    the ring empty clears it again first, and the next packet wakes it (no lost wake-up)."""
    async with linked(sock_path, SMALL, **modes(receiver, RxMode.INTERRUPT)) as (s, c):
        tx, rx = queues(s, c, receiver)
        ring = rx._endpoint.ring
        assert not ring.flags & MASK_INT
        for k in range(4):
            waiting = asyncio.create_task(rx.receive())
            await eventually(
                lambda k=k: rx.interrupt_sleeps == k + 1 and not ring.flags & MASK_INT,
                "receive asleep with MASK_INT clear",
            )
            assert not waiting.done()
            tx.send_nowait(payload(k, 64))
            assert tx.counters.interrupts_sent == k + 1  # it asked to be signalled
            async with asyncio.timeout(TIMEOUT):
                batch = await waiting
            assert batch.keep(0) == payload(k, 64)
            assert ring.flags & MASK_INT  # woken: masked while the application is busy
            await eventually(lambda k=k: rx.counters.interrupts_received == k + 1, "drained")
            busy = [payload(100 + k, 64), payload(200 + k, 64)]
            assert tx.send_batch_nowait(busy) == 2
            assert tx.counters.interrupts_sent == k + 1  # masked: no system call
            async with asyncio.timeout(TIMEOUT):
                batch = await rx.receive()  # waiting already: found without sleeping
            assert [bytes(p) for p in batch] == busy
            assert rx.interrupt_sleeps == k + 1
            batch.release()
        assert rx.counters.interrupts_received == 4


@pytest.mark.parametrize("how", ["stale-mask", "ring-level"])
@pytest.mark.parametrize("receiver", ROLES)
async def test_safety_rescan_finds_an_unsignalled_packet(
    sock_path: str, receiver: str, how: str
) -> None:
    """A packet published without a signal (the sender read MASK_INT before the receiver
    cleared it, or a peer that never signals) still reaches a sleeping receive: it re-scans
    the ring every 10 ms. Without the re-scan this receive would sleep forever."""
    async with linked(sock_path, SMALL, **modes(receiver, RxMode.INTERRUPT)) as (s, c):
        tx, rx = queues(s, c, receiver)
        ring = rx._endpoint.ring
        waiting = asyncio.create_task(rx.receive())
        await eventually(
            lambda: rx.interrupt_sleeps == 1 and not ring.flags & MASK_INT, "receive asleep"
        )
        packet = payload(7, 100)
        if how == "stale-mask":
            ring.set_flags(ring.flags | MASK_INT)  # what a sender with a stale view saw
            tx.send_nowait(packet)
        else:
            assert tx._endpoint.write([packet]) == 1  # published, never signalled
        assert tx.counters.interrupts_sent == 0
        try:
            async with asyncio.timeout(1.0):  # the re-scan runs every 10 ms
                batch = await waiting
        finally:
            waiting.cancel()
        assert batch.keep(0) == packet
        assert rx.counters.interrupts_received == 0
        assert rx.interrupt_sleeps == 1  # one receive, one sleep: re-scans happen inside it
        assert ring.flags & MASK_INT


# ======================================================= 9. spinning holds the loop briefly


@pytest.mark.parametrize("receiver", ROLES)
async def test_spin_returns_after_one_slice(sock_path: str, receiver: str) -> None:
    """``_spin`` with a far deadline gives up after about one slice when nothing comes (it
    never holds the loop for the spin budget) and returns True at once when something has."""
    async with linked(sock_path, SMALL, **modes(receiver, RxMode.POLLING)) as (s, c):
        tx, rx = queues(s, c, receiver)
        t0 = time.perf_counter()
        assert rx._spin(t0 + 5.0) is False
        assert time.perf_counter() - t0 < 1.0
        tx.send_nowait(payload(1, 64))
        t0 = time.perf_counter()
        assert rx._spin(t0 + 5.0) is True
        assert time.perf_counter() - t0 < 1.0
        assert await receive_all(rx, 1) == [(payload(1, 64), False)]


@pytest.mark.parametrize("mode", [RxMode.POLLING, RxMode.ADAPTIVE])
@pytest.mark.parametrize("receiver", ROLES)
async def test_spinning_receive_lets_other_callbacks_run(
    sock_path: str, receiver: str, mode: RxMode
) -> None:
    """While a receive spins on a long budget, callbacks scheduled with call_soon keep
    running (200 of them, one per loop pass, before the packet is sent); the packet it then
    finds arrives without a signal or a sleep."""
    async with linked(sock_path, SMALL, **modes(receiver, mode)) as (s, c):
        tx, rx = queues(s, c, receiver)
        rx.set_mode(mode, spin_budget=10.0)
        tx.send_nowait(payload(0, 64))
        assert await receive_all(rx, 1) == [(payload(0, 64), False)]  # budget starts now
        signals, sleeps = tx.counters.interrupts_sent, rx.interrupt_sleeps
        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(rx.receive())
        ticks = 0
        done = loop.create_future()

        def tick() -> None:
            nonlocal ticks
            ticks += 1
            if ticks < 200:
                loop.call_soon(tick)
            elif not done.done():
                done.set_result(None)

        loop.call_soon(tick)
        try:
            async with asyncio.timeout(5.0):  # half the spin budget
                await done
            assert not waiting.done()  # still spinning, well within its budget
            tx.send_nowait(payload(1, 64))
            async with asyncio.timeout(TIMEOUT):
                batch = await waiting
        finally:
            waiting.cancel()
        assert batch.keep(0) == payload(1, 64)
        assert tx.counters.interrupts_sent == signals  # masked while spinning
        assert rx.interrupt_sleeps == sleeps  # found by spinning, never slept
