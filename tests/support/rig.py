"""The shared-memory test rig: one client's region in real mmaps, the four ring endpoints
on it, and the helpers that stage, publish and read descriptors.
"""

from __future__ import annotations

import mmap
import struct
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

import aiomemif._core.descriptors
from aiomemif import (
    ChainedPacket,
    RegionLayout,
)
from aiomemif._core import wire as w
from aiomemif._core.buffers import Packet
from aiomemif._core.client_tx import ClientTx
from aiomemif._core.layout import plan_client_layout
from aiomemif._core.ring import QueueCounters, Ring, descriptor_table, init_ring
from aiomemif._core.rx import ClientRx, RxRun, ServerRx
from aiomemif._core.server_tx import ServerTx
from support.links import (
    payload,
)

MASK = 0xFFFF


NEXT = w.DESC_FLAG_NEXT


class MmapRig:
    """One client layout (1 S2M + 1 M2S ring) in anonymous mmaps, all four endpoints linked.

    As in a real connection every region is an mmap and each endpoint's view covers all of
    it, so both transmitters copy through the mmap (``sink``). The client's and the server's
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
        s2m_start: int | None = None,
        m2s_start: int | None = None,
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
        self.client_views = [memoryview(m) for m in self.maps]  # the client's mappings ...
        self.server_views = [memoryview(m) for m in self.maps]  # ... and the server's
        s2m, m2s = layout.s2m[0], layout.m2s[0]
        n = self.size
        self.tx_table = array("I", range(s2m.buffers, s2m.buffers + n * bsize, bsize))
        self.rx_table = array("I", range(m2s.buffers, m2s.buffers + n * bsize, bsize))
        self.tables = [self.tx_table, self.rx_table]
        self.s2m_buffers, self.m2s_buffers = s2m.buffers, m2s.buffers
        #: Each ring's descriptors as the client first writes them (S2M, then M2S).
        self.pristine: list[bytes] = []
        for place, table in ((s2m, self.tx_table), (m2s, self.rx_table)):
            descs = bytes(descriptor_table(table, self.breg, 0, bsize))
            self.pristine.append(descs)
            init_ring(self.client_views[0], place.offset, CL, descs)
        self.s2m_client = Ring(self.client_views[0], s2m.offset, log2, CL)
        self.s2m_server = Ring(self.server_views[0], s2m.offset, log2, CL)
        self.m2s_client = Ring(self.client_views[0], m2s.offset, log2, CL)
        self.m2s_server = Ring(self.server_views[0], m2s.offset, log2, CL)
        self.client_tx = ClientTx(
            self.s2m_client,
            self.client_views[self.breg],
            self.breg,
            array("I", self.tx_table),
            bsize,
            tx_headroom,
            QueueCounters(),
            sink=self.maps[self.breg],
        )
        self.server_rx = ServerRx(self.s2m_server, self.server_views, QueueCounters())
        self.client_rx = ClientRx(
            self.m2s_client,
            self.client_views,
            QueueCounters(),
            self.breg,
            array("I", self.rx_table),
            bsize,
        )
        self.server_tx = ServerTx(self.m2s_server, self.server_views, QueueCounters(), self.maps)
        # The transmitters copy through the mmap itself, as they do on a real connection.
        assert self.client_tx.sink is self.maps[self.breg]
        assert self.server_tx.sinks == self.maps
        # CONNECT, then every index and cursor moved to ``start`` (or per ring).
        s2m_at = start if s2m_start is None else s2m_start
        m2s_at = start if m2s_start is None else m2s_start
        self.server_rx.reset()
        self.server_tx.reset()
        for ring, at in ((self.s2m_client, s2m_at), (self.m2s_client, m2s_at)):
            ring.set_head(at)
            ring.set_tail(at)
        self.client_tx.head = self.server_rx.read = s2m_at
        self.client_rx.head = self.client_rx.read = m2s_at
        self.server_tx.tail = m2s_at
        self.client_rx.refill()  # stock the M2S ring, as client._build does

    # -- the harness playing a peer ------------------------------------------------------
    def put(self, ring: Ring, idx: int, flags: int, region: int, length: int, offset: int) -> None:
        DESC.pack_into(ring.desc, (idx & self.mask) * 16, flags, region, length, offset, 0)

    def get(self, ring: Ring, idx: int) -> tuple[int, int, int, int]:
        flags, region, length, offset, _meta = DESC.unpack_from(ring.desc, (idx & self.mask) * 16)
        return flags, region, length, offset

    def get_full(self, ring: Ring, idx: int) -> tuple[int, int, int, int, int]:
        """All five fields of a descriptor: flags, region, length, offset, metadata."""
        flags, region, length, offset, meta = DESC.unpack_from(ring.desc, (idx & self.mask) * 16)
        return flags, region, length, offset, meta

    @property
    def mem(self) -> mmap.mmap:
        """The first region (rings, and the buffers in a single-region layout)."""
        return self.maps[0]

    @property
    def client_view(self) -> memoryview:
        return self.client_views[0]

    @property
    def server_view(self) -> memoryview:
        return self.server_views[0]

    def s2m_slot_buffer(self, idx: int) -> int:
        return self.s2m_buffers + (idx & self.mask) * self.bsize

    def write(self, region: int, offset: int, data: bytes) -> None:
        self.client_views[region][offset : offset + len(data)] = data

    def read(self, region: int, offset: int, length: int) -> bytes:
        return bytes(self.server_views[region][offset : offset + length])

    def client_publish(self, descs: Sequence[tuple[int, int, int, int]]) -> None:
        """A hand-made client publishes ``(flags, region, length, offset)`` descriptors."""
        head = self.client_tx.head
        for j, desc in enumerate(descs):
            self.put(self.s2m_client, head + j, *desc)
        self.client_tx.head = (head + len(descs)) & MASK
        self.s2m_client.set_head(self.client_tx.head)

    def server_publish(self, descs: Sequence[tuple[int, int, int, int]]) -> None:
        """A hand-made server fills offered M2S slots with these descriptors, publishes tail."""
        tail = self.server_tx.tail
        for j, desc in enumerate(descs):
            self.put(self.m2s_server, tail + j, *desc)
        self.server_tx.tail = (tail + len(descs)) & MASK
        self.m2s_server.set_tail(self.server_tx.tail)

    def publish(self, direction: str, descs: Sequence[tuple[int, int, int, int]]) -> None:
        (self.client_publish if direction == "s2m" else self.server_publish)(descs)

    def receiver(self, direction: str) -> ServerRx | ClientRx:
        return self.server_rx if direction == "s2m" else self.client_rx

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
        for ring in (self.s2m_client, self.s2m_server, self.m2s_client, self.m2s_server):
            ring.release()
        for view in self.client_views + self.server_views:
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


def descriptors(ring: Ring, first: int, count: int) -> list[tuple[int, int, int, int]]:
    """(flags, region, length, offset) of ``count`` slots from free-running ``first``."""
    out = []
    for k in range(count):
        f, r, n, o, _m = DESC.unpack_from(ring.desc, ((first + k) & ring.mask) * 16)
        out.append((f, r, n, o))
    return out


#: The bulk check of a run of received descriptors, per direction: the server checks a
#: run against the regions, the client against the buffers it offered.
BULK_CHECK = {"s2m": "run_ok", "m2s": "offered_run_ok"}


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
    region_size = len(r.server_views[r.breg])
    return {
        "region out of range": (0, 7, L, base),
        "length 0": (0, r.breg, 0, base),
        "offset+length one past the region": (0, r.breg, L, region_size - L + 1),
        "offset+length far past the region": (0, r.breg, L, region_size - 8),
        "offset near 2**32": (0, r.breg, L, 0xFFFF_FFF0),
    }[kind]


CL = 64


#: Descriptor layout as the protocol document spells it: flags, region, length, offset, meta.
DESC = struct.Struct("<HHIII")


L = 16  # every packet of these runs: equal lengths, so only the bad one breaks the run


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


def typed_packets() -> list[tuple[str, Any, bytes]]:
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


NOT_BYTES_LIKE: list[Any] = ["a str", 12345, None, [1, 2, 3], object()]
