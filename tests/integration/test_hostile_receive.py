"""Hostile peers on the receive path: descriptors naming memory a packet may not come from.

1. A raw fake server rewrites region, offset or length of descriptors the client offered
   on M2S (issue 17, item 5): the client must hand out only bytes of the buffer it offered
   in that very slot, in every receive path (one descriptor, a run, a chain, the
   per-descriptor path, a run remembered from an earlier lap) and in ``forward()``.
2. Packets larger than a memif frame (item 6): single descriptors of 65,536 B and 1 MiB,
   chains of 81,920 B and of 64 segments that each name a whole region, against a real
   server (a raw fake client) and, where they fit, against a real client.

A refused descriptor is counted in ``bad_descriptors`` and skipped, its slot still given
back, and the link stays up (as for every bad descriptor); packets around it arrive.
The leak checks (fds, memfd mappings, loop readers, tasks) come from ``conftest.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest
from support.hostile import M2S, S2M, ClientMemory, ServerSide
from support.hostile_links import (
    ClientLink,
    ServerLink,
    fake_client_link,
    fake_server_link,
    server_publish,
)

import aiomemif
from aiomemif import ChainedPacket, InterfaceConfig
from aiomemif._core.wire import DESC_FLAG_NEXT

NEXT = DESC_FLAG_NEXT
BUF = 2048
#: The real client of the client-side tests: 16 slots of 2048-byte buffers.
CLIENT = {"ring_size": 16, "buffer_size": BUF}


def take_nowait(rxq: aiomemif.RxQueue) -> list[bytes]:
    """Everything one receive returns now, copied out; the batch is released."""
    try:
        batch = rxq.receive_nowait()
    except aiomemif.WouldBlockError:
        return []
    with batch:
        return [batch.keep(i) for i in range(len(batch))]


# ============================================= 1. a fake server against a real client


def offered(side: ServerSide, slot: int) -> tuple[int, int, int]:
    """``(region, capacity, offset)`` the client offered in M2S slot ``slot``."""
    _flags, region, cap, offset, _meta = side.ring(M2S).desc(slot)
    return region, cap, offset


def put(side: ServerSide, slot: int, data: bytes, flags: int = 0) -> None:
    """Fill the buffer the client offered in ``slot`` with ``data``, as a good server does."""
    region, cap, offset = offered(side, slot)
    assert len(data) <= cap
    side.region(region)[offset : offset + len(data)] = data
    side.ring(M2S).set_desc(slot, flags=flags, region=region, length=len(data), offset=offset)


def t_ring_header(side: ServerSide, slot: int) -> tuple[int, int, int]:
    """The M2S ring's own header: the cookie, flags, head, tail."""
    return 0, 128, side.ring(M2S).offset


def t_s2m_buffer(side: ServerSide, slot: int) -> tuple[int, int, int]:
    _flags, region, _length, offset, _meta = side.ring(S2M).desc(slot)
    return region, BUF, offset


def t_other_slot(side: ServerSide, slot: int) -> tuple[int, int, int]:
    region, _cap, offset = offered(side, slot + 1)
    return region, 100, offset


def t_one_byte_too_long(side: ServerSide, slot: int) -> tuple[int, int, int]:
    region, cap, offset = offered(side, slot)
    return region, cap + 1, offset  # 2049 bytes of a 2048-byte buffer


def t_past_buffer_end(side: ServerSide, slot: int) -> tuple[int, int, int]:
    region, cap, offset = offered(side, slot)
    return region, 20, offset + cap - 10


def t_before_buffer(side: ServerSide, slot: int) -> tuple[int, int, int]:
    region, _cap, offset = offered(side, slot)
    return region, 10, offset - 1


Target = Callable[[ServerSide, int], tuple[int, int, int]]
TARGETS: dict[str, Target] = {
    "ring-header": t_ring_header,
    "s2m-buffer": t_s2m_buffer,
    "other-slot": t_other_slot,
    "2049-of-2048": t_one_byte_too_long,
    "past-buffer-end": t_past_buffer_end,
    "before-buffer": t_before_buffer,
}

#: Where the hostile descriptor H sits among good ones (G; "G+" carries NEXT), and what
#: arrives: one descriptor alone; a run; the end of a chain; the per-descriptor path.
LAYOUTS: dict[str, tuple[list[str], list[str]]] = {
    "alone": (["H"], []),
    "run": (["H", "G"], ["1"]),
    "chain-end": (["G+", "H"], []),
    "mixed": (["G+", "G", "H", "G"], ["01", "3"]),
}


def stage_m2s(side: ServerSide, layout: list[str], target: Target) -> int:
    """Write ``layout`` from slot 0 (G: ``b"good-<slot>"``); return the slot count."""
    for slot, what in enumerate(layout):
        if what == "H":
            region, length, offset = target(side, slot)
            side.ring(M2S).set_desc(slot, region=region, length=length, offset=offset)
        else:
            put(side, slot, b"good-%d" % slot, NEXT if what == "G+" else 0)
    return len(layout)


async def expect_link_healthy(
    link: ClientLink, published: int, offers: list[tuple[int, int, int]]
) -> None:
    """Every slot went back and was offered again as before (``offers``, the client's own
    descriptors; a refill rewrites the server's changes); traffic still flows."""
    conn, side = link.conn, link.side
    assert conn.is_up
    ring = side.ring(M2S)
    assert ring.head == published + 16
    assert [offered(side, slot) for slot in range(published)] == offers[:published]
    put(side, published, b"afterwards")
    server_publish(side, published + 1)
    async with asyncio.timeout(1):
        batch = await conn.rx_queues[0].receive()
    with batch:
        assert [bytes(p) for p in batch] == [b"afterwards"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("target", list(TARGETS))
async def test_client_takes_only_its_offered_buffer(
    sock_path: str, target: str, layout: str
) -> None:
    async with fake_server_link(sock_path, **CLIENT) as link:
        slots, wanted = LAYOUTS[layout]
        offers = [offered(link.side, slot) for slot in range(16)]
        n = stage_m2s(link.side, slots, TARGETS[target])
        server_publish(link.side, n)
        expected = [b"".join(b"good-" + s.encode() for s in group) for group in wanted]
        assert take_nowait(link.conn.rx_queues[0]) == expected
        assert link.conn.details().rx_queues[0].bad_descriptors >= 1
        await expect_link_healthy(link, n, offers)


async def test_client_rejects_a_remembered_descriptor_after_forwarding(sock_path: str) -> None:
    """Lap 1 is checked and remembered; packet 0 is forwarded, so its buffer now belongs
    to the S2M ring. On lap 2 the server repeats lap 1's descriptors byte for byte: slot 0
    now names a buffer that is no longer the client's receive buffer there."""
    async with fake_server_link(sock_path, **CLIENT) as link:
        conn, side = link.conn, link.side
        rxq, txq = conn.rx_queues[0], conn.tx_queues[0]
        lap1 = [side.ring(M2S).desc(s) for s in range(2)]
        put(side, 0, b"x" * 60)
        put(side, 1, b"y" * 60)
        server_publish(side, 2)
        batch = rxq.receive_nowait()
        assert txq.forward(batch, [0]) == 1
        batch.release()
        assert side.ring(S2M).desc(0)[3] == lap1[0][3]  # the old rx buffer, sent on S2M
        for slot in range(2, 16):  # the rest of the lap, so that slots 0 and 1 come again
            put(side, slot, b"filler")
        server_publish(side, 16)
        assert len(take_nowait(rxq)) == 14
        ring = side.ring(M2S)
        for slot, (_f, region, _cap, offset, _m) in enumerate(lap1):
            ring.set_desc(slot, region=region, length=60, offset=offset)  # lap 1, again
        side.region(0)[lap1[1][3] : lap1[1][3] + 60] = b"z" * 60
        server_publish(side, 18)
        assert take_nowait(rxq) == [b"z" * 60]
        assert conn.details().rx_queues[0].bad_descriptors == 1
        assert conn.is_up


@pytest.mark.parametrize("target", ["2049-of-2048", "other-slot", "s2m-buffer"])
async def test_forward_applies_the_receive_rule(sock_path: str, target: str) -> None:
    """A descriptor rewritten between receive and forward is held to the same rule."""
    async with fake_server_link(sock_path, **CLIENT) as link:
        conn, side = link.conn, link.side
        region, length, offset = TARGETS[target](side, 0)  # (from the offer, as it stands)
        put(side, 0, b"p" * 60)
        server_publish(side, 1)
        batch = conn.rx_queues[0].receive_nowait()
        side.ring(M2S).set_desc(0, region=region, length=length, offset=offset)
        assert conn.tx_queues[0].forward(batch) == 0
        assert conn.details().tx_queues[0].bad_descriptors == 1
        batch.release()
        assert conn.is_up


@pytest.mark.parametrize("then", [False, True], ids=["alone", "then-a-packet"])
async def test_client_refuses_a_chain_over_the_frame_limit(sock_path: str, then: bool) -> None:
    """40 offered 2048-byte buffers chained: 81,920 bytes, every descriptor in bounds."""
    async with fake_server_link(sock_path, ring_size=64, buffer_size=BUF) as link:
        side = link.side
        for slot in range(40):
            put(side, slot, bytes([slot]) * BUF, NEXT if slot < 39 else 0)
        if then:
            put(side, 40, b"small")
        server_publish(side, 40 + then)
        assert take_nowait(link.conn.rx_queues[0]) == [b"small"] * then
        assert link.conn.details().rx_queues[0].bad_descriptors >= 1
        assert link.conn.is_up


async def test_client_max_frame_bytes(sock_path: str) -> None:
    async with fake_server_link(sock_path, max_frame_bytes=1500, **CLIENT) as link:
        side = link.side
        put(side, 0, b"a" * 1501)
        put(side, 1, b"b" * 1500)
        put(side, 2, b"c" * 1000, NEXT)
        put(side, 3, b"d" * 501)
        put(side, 4, b"e" * 1000, NEXT)
        put(side, 5, b"f" * 500)
        server_publish(side, 6)
        assert take_nowait(link.conn.rx_queues[0]) == [b"b" * 1500, b"e" * 1000 + b"f" * 500]
        assert link.conn.details().rx_queues[0].bad_descriptors >= 2


# ============================================= 2. a fake client against a real server

#: One descriptor as the fake client writes it: (flags, offset, length, fill byte or None).
Desc = tuple[int, int, int, int | None]


def good(mem: ClientMemory, slot: int, n: int = 60, flags: int = 0) -> Desc:
    """A packet of ``n`` bytes in the client's own buffer of S2M slot ``slot``."""
    return flags, mem.buffer_offset(S2M, 0, slot), n, slot


def single(size: int) -> Callable[[ClientMemory, int], list[Desc]]:
    """One descriptor of ``size`` bytes from the first buffer (inside the region)."""
    return lambda mem, slot: [(0, mem.rings_end, size, None)]


def own_chain(segments: int) -> Callable[[ClientMemory, int], list[Desc]]:
    """A chain over ``segments`` own buffers, each full (``segments`` x 2048 bytes)."""

    def build(mem: ClientMemory, slot: int) -> list[Desc]:
        return [good(mem, slot + k, BUF, NEXT if k < segments - 1 else 0) for k in range(segments)]

    return build


def whole_region_chain(mem: ClientMemory, slot: int) -> list[Desc]:
    """A chain of descriptors that each name the whole region, over the rest of the ring:
    64 x 264,448 B = 16.9 MB from slot 0 of a 64-slot ring (63 after one packet)."""
    n = mem.ring_size - slot
    return [(NEXT if k < n - 1 else 0, 0, mem.size, None) for k in range(n)]


#: name: (ring log2, the descriptors of the oversized packet from a given slot)
OVERSIZED: dict[str, tuple[int, Callable[[ClientMemory, int], list[Desc]]]] = {
    "65536": (6, single(65_536)),
    "1MiB": (9, single(1 << 20)),
    "chain-81920": (6, own_chain(40)),
    "chain-of-whole-regions": (6, whole_region_chain),
}


def stage_s2m(mem: ClientMemory, descs: Sequence[Desc], first: int = 0) -> None:
    ring = mem.ring(S2M)
    for k, (flags, offset, length, fill) in enumerate(descs):
        if fill is not None:
            mem.map[offset : offset + length] = bytes([fill]) * length
        ring.set_desc(first + k, flags=flags, length=length, offset=offset)


async def server_link_healthy(link: ServerLink, published: int) -> None:
    mem, conn = link.mem, link.conn
    assert conn.is_up
    assert mem.ring(S2M).tail == published
    mem.write_packet(published, b"afterwards")
    mem.publish_s2m(published + 1)
    async with asyncio.timeout(1):
        batch = await conn.rx_queues[0].receive()
    with batch:
        assert [bytes(p) for p in batch] == [b"afterwards"]


@pytest.mark.parametrize("where", ["first", "after-a-packet"])
@pytest.mark.parametrize("kind", list(OVERSIZED))
async def test_server_refuses_oversized_packets(sock_path: str, kind: str, where: str) -> None:
    log2, build = OVERSIZED[kind]
    async with fake_client_link(sock_path, log2_ring_size=log2, buffer_size=BUF) as link:
        mem = link.mem
        before = [good(mem, 0)] if where == "after-a-packet" else []
        descs = [*before, *build(mem, len(before))]
        stage_s2m(mem, descs)
        mem.publish_s2m(len(descs))
        got = take_nowait(link.conn.rx_queues[0])
        assert got == [bytes([0]) * 60] * len(before)
        assert link.conn.details().rx_queues[0].bad_descriptors >= 1
        await server_link_healthy(link, len(descs))


@pytest.mark.parametrize("count", [2, 64], ids=["run-of-2", "uniform-run-of-64"])
async def test_server_refuses_a_run_of_oversized_descriptors(sock_path: str, count: int) -> None:
    """Runs of unchained 65,536-byte descriptors (the bulk path; 64 take the bytes test)."""
    async with fake_client_link(sock_path, log2_ring_size=7, buffer_size=BUF) as link:
        mem = link.mem
        stage_s2m(mem, [(0, mem.rings_end, 65_536, None)] * count)
        mem.publish_s2m(count)
        assert take_nowait(link.conn.rx_queues[0]) == []
        assert link.conn.details().rx_queues[0].bad_descriptors == count
        await server_link_healthy(link, count)


async def test_server_takes_the_largest_frame(sock_path: str) -> None:
    """Control case: 65,535 bytes arrive, as one descriptor and as a chain."""
    async with fake_client_link(sock_path, log2_ring_size=6, buffer_size=BUF) as link:
        mem = link.mem
        chain = own_chain(32)(mem, 1)
        chain[-1] = (0, chain[-1][1], BUF - 1, chain[-1][3])  # 31 x 2048 + 2047 = 65,535
        stage_s2m(mem, [(0, mem.rings_end, 65_535, 7), *chain])
        mem.publish_s2m(33)
        async with asyncio.timeout(1):
            batch = await link.conn.rx_queues[0].receive()
        with batch:
            assert [len(p) for p in batch] == [65_535, 65_535]
            assert isinstance(batch[1], ChainedPacket) and len(batch[1].segments) == 32
        assert link.conn.details().rx_queues[0].bad_descriptors == 0


async def test_server_max_frame_bytes(sock_path: str) -> None:
    cfg = InterfaceConfig(max_frame_bytes=1500)
    async with fake_client_link(sock_path, cfg, log2_ring_size=4, buffer_size=BUF) as link:
        mem = link.mem
        stage_s2m(
            mem,
            [
                good(mem, 0, 1501),
                good(mem, 1, 1500),
                good(mem, 2, 1000, NEXT),
                good(mem, 3, 501),
                good(mem, 4, 1000, NEXT),
                good(mem, 5, 500),
            ],
        )
        mem.publish_s2m(6)
        got = take_nowait(link.conn.rx_queues[0])
        assert got == [bytes([1]) * 1500, bytes([4]) * 1000 + bytes([5]) * 500]
        assert link.conn.details().rx_queues[0].bad_descriptors >= 2
        await server_link_healthy(link, 6)


def test_max_frame_bytes_is_validated() -> None:
    assert InterfaceConfig().max_frame_bytes == 65_535
    for bad in (0, -1, 1 << 40, True, 1.5):
        with pytest.raises(aiomemif.ConfigurationError, match="max_frame_bytes"):
            InterfaceConfig(max_frame_bytes=bad)  # type: ignore[arg-type]
