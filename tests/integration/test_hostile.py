"""Hostile peers: malformed and malicious input from a raw peer, in both roles.

1. A raw fake client (client) against a real server: every handshake violation must be
   answered with a DISCONNECT naming the problem, recorded in ``server.failures``, leave the
   server listening (a well-behaved client gets through right afterwards) and leak nothing.
2. After a successful handshake: index and descriptor abuse in shared memory, and garbage on
   the control socket, from a fake client (against a server connection) and from a fake
   server (against a client connection).
3. A raw fake server (server) against ``aiomemif.connect``.

The leak checks (fds, memfd mappings, loop readers, tasks) come from ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator

import attrs
import pytest
from support.hostile import (
    M2S,
    S2M,
    ClientMemory,
    RawListener,
    RawPeer,
    eventfd,
    memfd,
    raw_message,
    set_blocking,
    steal_interrupt,
    watchdog,
)
from support.hostile_links import (
    SMALL,
    _connect,
    fake_client_link,
    fake_server,
    fake_server_link,
    server_publish,
    server_send,
)

import aiomemif
from aiomemif import InterfaceConfig
from aiomemif._core.messages import (
    Ack,
    AddRegion,
    Connect,
    Connected,
    Disconnect,
    Hello,
    Init,
    Message,
    decode_untrusted,
    encode,
)
from aiomemif._core.wire import DESC_FLAG_NEXT, RingType

NEXT = DESC_FLAG_NEXT
EVENTFD_MAX = 0xFFFF_FFFF_FFFF_FFFE  # the largest value an eventfd counter can hold

# =============================================================================== helpers


def matches(expected: str | re.Pattern[str], reason: str) -> bool:
    if isinstance(expected, re.Pattern):
        return expected.fullmatch(reason) is not None
    return reason == expected


async def healthy(srv: aiomemif.Server, path: str, cfg: InterfaceConfig | None = None) -> None:
    """A well-behaved client still gets through the server and moves a packet."""
    client_cfg = attrs.evolve(cfg or InterfaceConfig(), ring_size=16, buffer_size=256)
    async with asyncio.timeout(2):
        async with aiomemif.connect(path, client_cfg) as client:
            conn = await srv.accept()
            async with conn:
                await client.tx_queues[0].send(b"still listening")
                batch = await conn.rx_queues[0].receive()
                assert [bytes(p) for p in batch] == [b"still listening"]
                batch.release()


def send_closing(peer: RawPeer, msg: Message | bytes, *fds: int) -> None:
    """Send ``msg`` with ``fds`` attached, then close our copies of those fds."""
    try:
        if isinstance(msg, bytes):
            peer.send_raw(msg, fds)
        else:
            peer.send(msg, fds)
    finally:
        for fd in fds:
            os.close(fd)


async def do_init(peer: RawPeer, **fields: object) -> None:
    peer.send(Init(name="hostile", **fields))  # type: ignore[arg-type]
    await peer.expect(Ack)


async def do_region(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send(mem.add_region(), [mem.fd])
    await peer.expect(Ack)


async def do_ring(peer: RawPeer, mem: ClientMemory, ring_type: RingType, index: int = 0) -> None:
    peer.send(mem.add_ring(ring_type, index), [mem.efd(ring_type, index)])
    await peer.expect(Ack)


async def do_setup(peer: RawPeer, mem: ClientMemory) -> None:
    """INIT, ADD_REGION and both rings, all valid."""
    await do_init(peer)
    await do_region(peer, mem)
    await do_ring(peer, mem, S2M)
    await do_ring(peer, mem, M2S)


@contextlib.contextmanager
def pipe_read_end() -> Iterator[int]:
    """A pipe's read end for :func:`send_closing` (which closes it); the write end is ours."""
    r, w_ = os.pipe()
    try:
        yield r
    finally:
        os.close(w_)


# ================================================== 1. raw fake client against a server

Script = Callable[[RawPeer, ClientMemory], Awaitable[None]]


async def s_size_64(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send_raw(encode(Init(name="short"))[:64])


async def s_size_129(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send_raw(raw_message(3, b"\x00\x02", size=129))


async def s_size_300(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send_raw(raw_message(3, b"\x00\x02", size=300))


async def s_size_129_with_fd(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    send_closing(peer, encode(AddRegion(0, 4096)) + b"\0", memfd(4096))


async def s_type_0(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send_raw(raw_message(0))


async def s_type_9(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send_raw(raw_message(9))


async def s_type_ffff_mid_handshake(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    peer.send_raw(raw_message(0xFFFF))


async def s_first_connect(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send(Connect("too-early"))


async def s_first_ack(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send(Ack())


async def s_first_add_region(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send(mem.add_region(), [mem.fd])


async def s_first_hello(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send(Hello())  # a server's message, from the client


async def s_init_twice(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    peer.send(Init(name="again"))


async def s_bad_version(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send(Init(version=0x0100))


async def s_bad_version_high(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send(Init(version=0x0201))


async def s_unknown_id(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send(Init(interface_id=107))


async def s_wrong_mode(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send(Init(mode=1))


async def s_mode_out_of_range(peer: RawPeer, mem: ClientMemory) -> None:
    peer.send(Init(mode=200))


async def s_fd_on_init(peer: RawPeer, mem: ClientMemory) -> None:
    send_closing(peer, Init(name="fd"), eventfd())


async def s_region_without_fd(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    peer.send(mem.add_region())


async def s_region_two_fds(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    send_closing(peer, mem.add_region(), os.dup(mem.fd), os.dup(mem.fd))


async def s_region_many_fds(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    send_closing(peer, mem.add_region(), *(os.dup(mem.fd) for _ in range(40)))


async def s_region_index_1_first(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    peer.send(AddRegion(1, mem.size), [mem.fd])


async def s_region_index_repeated(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    peer.send(AddRegion(0, mem.size), [mem.fd])


async def s_region_eventfd(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    send_closing(peer, AddRegion(0, 4096), eventfd())


async def s_region_pipe(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    with pipe_read_end() as r:
        send_closing(peer, AddRegion(0, 4096), r)


async def s_region_smaller_than_announced(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    peer.send(AddRegion(0, mem.size + 1), [mem.fd])


async def s_region_not_sealed(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    send_closing(peer, AddRegion(0, 65536), memfd(65536, seals=0))


async def s_region_plain_file(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    with tempfile.TemporaryFile() as f:
        f.truncate(65536)
        peer.send(AddRegion(0, 65536), [f.fileno()])


async def s_region_size_0(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    peer.send(AddRegion(0, 0), [mem.fd])


async def s_region_over_limit(peer: RawPeer, mem: ClientMemory) -> None:
    # The server is configured with max_region_bytes=1 MiB; the fd really is that large.
    await do_init(peer)
    send_closing(peer, AddRegion(0, 2 << 20), memfd(2 << 20))


async def s_region_read_only_fd(peer: RawPeer, mem: ClientMemory) -> None:
    # Sealed, big enough, a regular file: but opened read-only, so it cannot be mapped
    # shared and writable. The problem only shows when the server maps it at CONNECT.
    await do_init(peer)
    send_closing(peer, mem.add_region(), os.open(f"/proc/self/fd/{mem.fd}", os.O_RDONLY))
    await peer.expect(Ack)
    await do_ring(peer, mem, S2M)
    await do_ring(peer, mem, M2S)
    peer.send(Connect("ro"))


async def s_region_flood(peer: RawPeer, mem: ClientMemory) -> None:
    # 256 valid regions (indexes 0..255, each its own memfd: one file twice is refused),
    # then one more.
    await do_init(peer)
    for index in range(256):
        send_closing(peer, AddRegion(index, 4096), memfd(4096))
        await peer.expect(Ack)
    send_closing(peer, AddRegion(256, 4096), memfd(4096))


async def s_ring_offset_misaligned(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    peer.send(mem.add_ring(S2M, offset=3), [mem.efd(S2M)])


async def s_ring_without_fd(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    peer.send(mem.add_ring(S2M))


async def s_ring_two_fds(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    send_closing(peer, mem.add_ring(S2M), eventfd(), eventfd())


async def s_ring_memfd(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    send_closing(peer, mem.add_ring(S2M), memfd(4096))


async def s_ring_pipe(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    with pipe_read_end() as r:
        send_closing(peer, mem.add_ring(S2M), r)


async def s_ring_index_1_first(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    peer.send(mem.add_ring(S2M, index=1, offset=mem.ring_offset(S2M)), [mem.efd(S2M)])


async def s_ring_index_repeated(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    await do_ring(peer, mem, M2S)
    peer.send(mem.add_ring(M2S), [mem.efd(M2S)])


async def s_ring_index_beyond_queues(peer: RawPeer, mem: ClientMemory) -> None:
    # The server has rx_queue_count=1, so S2M ring 1 is one too many (even though it is in order).
    await do_init(peer)
    await do_region(peer, mem)
    await do_ring(peer, mem, S2M)
    peer.send(mem.add_ring(S2M, index=1, offset=mem.ring_offset(M2S)), [mem.efd(M2S)])


async def s_ring_log2_15(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    peer.send(mem.add_ring(S2M, log2_ring_size=15), [mem.efd(S2M)])


async def s_ring_log2_255(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    peer.send(mem.add_ring(S2M, log2_ring_size=255), [mem.efd(S2M)])


async def s_ring_private_hdr(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    peer.send(mem.add_ring(S2M, private_hdr_size=64), [mem.efd(S2M)])


async def s_ring_region_not_announced(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    peer.send(mem.add_ring(S2M, region=1), [mem.efd(S2M)])


async def s_ring_before_any_region(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    peer.send(mem.add_ring(S2M), [mem.efd(S2M)])


async def s_ring_offset_past_end(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    peer.send(mem.add_ring(S2M, offset=0xFFFF_FF00), [mem.efd(S2M)])


async def s_ring_straddles_end(peer: RawPeer, mem: ClientMemory) -> None:
    # The header fits, the descriptor array does not.
    await do_init(peer)
    await do_region(peer, mem)
    peer.send(mem.add_ring(S2M, offset=mem.size - 128), [mem.efd(S2M)])


async def s_connect_no_rings(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    peer.send(Connect("empty"))


async def s_connect_nothing_at_all(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    peer.send(Connect("empty"))


async def s_connect_s2m_only(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    await do_ring(peer, mem, S2M)
    peer.send(Connect("half"))


async def s_connect_m2s_only(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    await do_ring(peer, mem, M2S)
    peer.send(Connect("half"))


async def s_connect_bad_cookie_s2m(peer: RawPeer, mem: ClientMemory) -> None:
    mem.ring(S2M).cookie = 0xDEADBEEF
    await do_setup(peer, mem)
    peer.send(Connect("cookie"))


async def s_connect_bad_cookie_m2s(peer: RawPeer, mem: ClientMemory) -> None:
    mem.ring(M2S).cookie = 0
    await do_setup(peer, mem)
    peer.send(Connect("cookie"))


async def s_connect_with_fd(peer: RawPeer, mem: ClientMemory) -> None:
    await do_setup(peer, mem)
    send_closing(peer, Connect("fd"), eventfd())


async def s_disconnect_mid_handshake(peer: RawPeer, mem: ClientMemory) -> None:
    await do_init(peer)
    await do_region(peer, mem)
    peer.send(Disconnect("client changed its mind"))


RX_1 = InterfaceConfig(rx_queue_count=1, tx_queue_count=1)
SECRET = InterfaceConfig(secret="s3cret")
LIMITED = InterfaceConfig(max_region_bytes=1 << 20)
UNKNOWN_TYPE = re.compile(r"Unknown message type.*")
CANNOT_MAP = re.compile(r"Cannot map region 0.*")
COOKIE_RX = re.compile(r"Wrong cookie on rx ring 0")
COOKIE_TX = re.compile(r"Wrong cookie on tx ring 0")
ONE_EACH = "At least one ring in each direction is required"
ANY_RING = re.compile(r"(?i).*ring.*")

REFUSALS = [
    pytest.param(s_size_64, "Invalid message size", None, id="datagram-64-bytes"),
    pytest.param(s_size_129, "Invalid message size", None, id="datagram-129-bytes"),
    pytest.param(s_size_300, "Invalid message size", None, id="datagram-300-bytes-truncated"),
    pytest.param(s_size_129_with_fd, "Invalid message size", None, id="datagram-129-with-fd"),
    pytest.param(s_type_0, UNKNOWN_TYPE, None, id="type-0"),
    pytest.param(s_type_9, UNKNOWN_TYPE, None, id="type-9"),
    pytest.param(s_type_ffff_mid_handshake, UNKNOWN_TYPE, None, id="type-ffff-mid-handshake"),
    pytest.param(s_first_connect, "Unexpected message", None, id="first-connect"),
    pytest.param(s_first_ack, "Unexpected message", None, id="first-ack"),
    pytest.param(s_first_add_region, "Unexpected message", None, id="first-add-region-with-fd"),
    pytest.param(s_first_hello, "Unexpected message", None, id="first-hello"),
    pytest.param(s_init_twice, "Unexpected message", None, id="init-twice"),
    pytest.param(s_bad_version, "Incompatible memif version", None, id="version-0x0100"),
    pytest.param(s_bad_version_high, "Incompatible memif version", None, id="version-0x0201"),
    pytest.param(s_unknown_id, "ID not found", None, id="unknown-id"),
    pytest.param(s_wrong_mode, "Mode mismatch", None, id="wrong-mode"),
    pytest.param(s_mode_out_of_range, "Mode mismatch", None, id="mode-200"),
    pytest.param(s_fd_on_init, "Unexpected fd", None, id="fd-on-init"),
    pytest.param(s_region_without_fd, "Missing region fd", None, id="region-no-fd"),
    pytest.param(s_region_two_fds, "Too many file descriptors", None, id="region-2-fds"),
    pytest.param(s_region_many_fds, "Too many file descriptors", None, id="region-40-fds"),
    pytest.param(s_region_index_1_first, "Invalid region index", None, id="region-index-1"),
    pytest.param(s_region_index_repeated, "Invalid region index", None, id="region-index-dup"),
    pytest.param(s_region_eventfd, "Region fd is not a regular file", None, id="region-eventfd"),
    pytest.param(s_region_pipe, "Region fd is not a regular file", None, id="region-pipe"),
    pytest.param(
        s_region_smaller_than_announced,
        "Region fd is smaller than its announced size",
        None,
        id="region-too-small",
    ),
    pytest.param(
        s_region_not_sealed,
        "Region fd is not sealed against shrinking",
        None,
        id="region-unsealed-memfd",
    ),
    pytest.param(
        s_region_plain_file,
        "Region fd is not sealed against shrinking",
        None,
        id="region-plain-tmpfile",
    ),
    pytest.param(s_region_size_0, "Invalid region size", None, id="region-size-0"),
    pytest.param(s_region_over_limit, "Regions exceed the size limit", LIMITED, id="region-limit"),
    pytest.param(s_region_read_only_fd, CANNOT_MAP, None, id="region-read-only-fd"),
    pytest.param(s_region_flood, "Too many regions", None, id="region-257th"),
    pytest.param(s_ring_without_fd, "Missing interrupt fd", None, id="ring-no-fd"),
    pytest.param(s_ring_two_fds, "Too many file descriptors", None, id="ring-2-fds"),
    pytest.param(s_ring_memfd, "Interrupt fd is not an eventfd", None, id="ring-memfd"),
    pytest.param(s_ring_pipe, "Interrupt fd is not an eventfd", None, id="ring-pipe"),
    pytest.param(s_ring_index_1_first, "Invalid ring index", None, id="ring-index-1-first"),
    pytest.param(s_ring_index_repeated, "Invalid ring index", None, id="ring-index-dup"),
    pytest.param(
        s_ring_index_beyond_queues,
        "Invalid ring index 1: interface 0 allows 1 s2m ring",
        RX_1,
        id="ring-beyond-queues",
    ),
    pytest.param(s_ring_log2_15, "Ring size too large", None, id="ring-log2-15"),
    pytest.param(s_ring_log2_255, "Ring size too large", None, id="ring-log2-255"),
    pytest.param(s_ring_private_hdr, "Private headers not supported", None, id="ring-priv-hdr"),
    pytest.param(s_ring_region_not_announced, "Invalid ring region", None, id="ring-region-1"),
    pytest.param(s_ring_before_any_region, "Invalid ring region", None, id="ring-no-region"),
    pytest.param(s_ring_offset_past_end, "Ring outside its region", None, id="ring-offset-far"),
    pytest.param(s_ring_straddles_end, "Ring outside its region", None, id="ring-straddles-end"),
    pytest.param(s_ring_offset_misaligned, ANY_RING, None, id="ring-offset-misaligned"),
    pytest.param(s_connect_no_rings, ONE_EACH, None, id="connect-no-rings"),
    pytest.param(s_connect_nothing_at_all, ONE_EACH, None, id="connect-no-region-no-rings"),
    pytest.param(s_connect_s2m_only, ONE_EACH, None, id="connect-s2m-only"),
    pytest.param(s_connect_m2s_only, ONE_EACH, None, id="connect-m2s-only"),
    pytest.param(s_connect_bad_cookie_s2m, COOKIE_RX, None, id="connect-bad-cookie-s2m"),
    pytest.param(s_connect_bad_cookie_m2s, COOKIE_TX, None, id="connect-bad-cookie-m2s"),
    pytest.param(s_connect_with_fd, "Unexpected fd", None, id="fd-on-connect"),
]


@pytest.mark.parametrize(("script", "expected", "cfg"), REFUSALS)
async def test_server_refuses_malformed_client(
    sock_path: str,
    script: Script,
    expected: str | re.Pattern[str],
    cfg: InterfaceConfig | None,
) -> None:
    cfg = cfg or InterfaceConfig()
    async with aiomemif.serve(sock_path, [cfg]) as srv:
        with ClientMemory() as mem:
            async with await RawPeer.connect(sock_path) as peer:
                await peer.expect(Hello)
                await script(peer, mem)
                reason = await peer.expect_disconnect()
        assert matches(expected, reason), reason
        assert srv.failures[-1].reason == reason
        assert not srv.connections_by_id
        await healthy(srv, sock_path, cfg)


@pytest.mark.parametrize(
    ("sent", "expected"),
    [(b"", "Secret required"), (b"s3cret!", "Incorrect secret"), (b"S3CRET", "Incorrect secret")],
    ids=["missing", "longer", "case"],
)
async def test_server_refuses_bad_secret(sock_path: str, sent: bytes, expected: str) -> None:
    async with aiomemif.serve(sock_path, [SECRET]) as srv:
        async with await RawPeer.connect(sock_path) as peer:
            await peer.expect(Hello)
            peer.send(Init(secret=sent))
            assert await peer.expect_disconnect() == expected
        assert srv.failures[-1].reason == expected
        await healthy(srv, sock_path, SECRET)


async def test_server_reports_disconnect_from_client_mid_handshake(sock_path: str) -> None:
    """A client's DISCONNECT is recorded with its reason; its region fd is not kept."""
    async with aiomemif.serve(sock_path) as srv:
        with ClientMemory() as mem:
            async with await RawPeer.connect(sock_path) as peer:
                await peer.expect(Hello)
                await s_disconnect_mid_handshake(peer, mem)
                await peer.expect_eof()
        assert srv.failures[-1].reason == "client changed its mind"
        await healthy(srv, sock_path)


@pytest.mark.parametrize("stage", ["before-init", "after-region", "after-rings"])
async def test_server_survives_client_closing_mid_handshake(sock_path: str, stage: str) -> None:
    async with aiomemif.serve(sock_path) as srv:
        with ClientMemory() as mem:
            async with await RawPeer.connect(sock_path) as peer:
                await peer.expect(Hello)
                if stage != "before-init":
                    await do_init(peer)
                    await do_region(peer, mem)
                if stage == "after-rings":
                    await do_ring(peer, mem, S2M)
                    await do_ring(peer, mem, M2S)
        async with asyncio.timeout(1):
            while not srv.failures:
                await asyncio.sleep(0.005)
        assert "closed" in srv.failures[-1].reason
        await healthy(srv, sock_path)


async def test_server_zero_length_datagram(sock_path: str) -> None:
    """A 0-byte datagram looks like EOF on SOCK_SEQPACKET: the server may drop the link
    (with or without DISCONNECT) but must record it, free everything and keep listening."""
    async with aiomemif.serve(sock_path) as srv:
        async with await RawPeer.connect(sock_path) as peer:
            await peer.expect(Hello)
            peer.send_raw(b"")
            got = await peer.recv_raw()
            if got is not None:
                assert isinstance(decode_untrusted(got[0]), Disconnect)
                await peer.expect_eof()
        async with asyncio.timeout(1):
            while not srv.failures:
                await asyncio.sleep(0.005)
        await healthy(srv, sock_path)


@pytest.mark.parametrize("stage", ["after-hello", "after-init", "after-region"])
async def test_server_times_out_silent_client(sock_path: str, stage: str) -> None:
    cfg = InterfaceConfig(handshake_timeout=0.3)
    async with aiomemif.serve(sock_path, [cfg]) as srv:
        with ClientMemory() as mem:
            async with await RawPeer.connect(sock_path) as peer:
                await peer.expect(Hello)
                if stage != "after-hello":
                    await do_init(peer)
                if stage == "after-region":
                    await do_region(peer, mem)
                t0 = time.monotonic()
                assert await peer.expect_disconnect(wait=2) == "Handshake timeout"
                assert time.monotonic() - t0 < 1.0
        assert srv.failures[-1].reason == "Handshake timeout"
        await healthy(srv, sock_path, cfg)


async def test_second_init_for_connected_id_leaves_live_link_alone(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv:
        async with aiomemif.connect(sock_path, ring_size=16, buffer_size=256) as client:
            live = await srv.accept()
            async with await RawPeer.connect(sock_path) as peer:
                await peer.expect(Hello)
                peer.send(Init(interface_id=0, name="intruder"))
                assert await peer.expect_disconnect() == "Already connected"
            assert srv.failures[-1].reason == "Already connected"
            assert live.is_up and client.is_up
            await client.tx_queues[0].send(b"still mine")
            async with asyncio.timeout(1):
                batch = await live.rx_queues[0].receive()
            assert [bytes(p) for p in batch] == [b"still mine"]
            batch.release()
            await live.aclose()
        await healthy(srv, sock_path)


async def test_second_init_for_id_still_handshaking(sock_path: str) -> None:
    """An id whose handshake is in progress is busy too; the first handshake still completes."""
    async with aiomemif.serve(sock_path) as srv:
        with ClientMemory() as mem:
            async with await RawPeer.connect(sock_path) as first:
                await first.expect(Hello)
                await do_init(first)
                async with await RawPeer.connect(sock_path) as second:
                    await second.expect(Hello)
                    second.send(Init(interface_id=0, name="second"))
                    assert await second.expect_disconnect() == "Already connected"
                await do_region(first, mem)
                await do_ring(first, mem, S2M)
                await do_ring(first, mem, M2S)
                first.send(Connect("first"))
                await first.expect(Connected)
                async with asyncio.timeout(1):
                    conn = await srv.accept()
                await conn.aclose()
                assert await first.expect_disconnect()
        await healthy(srv, sock_path)


# ======================================= 2a. data path: fake client against a server


@pytest.mark.parametrize("waiting", [False, True], ids=["polled", "while-waiting"])
@pytest.mark.parametrize("head", [17, 0x100, 0xFFFF], ids=["n+1", "0x100", "minus-1"])
async def test_s2m_head_past_ring_size(sock_path: str, head: int, waiting: bool) -> None:
    async with fake_client_link(sock_path) as link:
        srv, conn, peer, mem = link.srv, link.conn, link.peer, link.mem
        rxq = conn.rx_queues[0]
        task = asyncio.ensure_future(rxq.receive()) if waiting else None
        await asyncio.sleep(0.01)
        mem.write_packet(0, b"p" * 60)
        mem.publish_s2m(head)
        with pytest.raises(aiomemif.RemoteProtocolError) as info:
            async with asyncio.timeout(1):
                await (task if task is not None else rxq.receive())
        assert "ring" in info.value.reason.lower()
        assert not conn.is_up
        reason = await peer.expect_disconnect()
        assert "ring" in reason.lower()
        with pytest.raises(aiomemif.RemoteProtocolError):
            rxq.receive_nowait()
        await healthy(srv, sock_path)


async def test_s2m_bad_descriptors_are_counted_and_skipped(sock_path: str) -> None:
    async with fake_client_link(sock_path) as link:
        conn, mem = link.conn, link.mem
        ring = mem.ring(S2M)
        good = [bytes(range(60)), b"\xab" * 256, b"third packet"]
        mem.write_packet(0, good[0])
        ring.set_desc(1, region=1, length=60, offset=mem.buffer_offset(S2M, 0, 1))
        ring.set_desc(2, length=100, offset=mem.size - 50)  # runs past the region end
        ring.set_desc(3, length=0, offset=mem.buffer_offset(S2M, 0, 3))
        mem.write_packet(4, good[1])
        ring.set_desc(5, length=16, offset=0xFFFF_FFF0)
        ring.set_desc(6, region=0xFFFF, length=16, offset=0)
        ring.set_desc(7, length=0xFFFF_FFFF, offset=mem.rings_end)
        mem.write_packet(8, good[2])
        mem.publish_s2m(9)
        async with asyncio.timeout(1):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == good
        batch.release()
        assert conn.details().rx_queues[0].bad_descriptors == 6
        assert conn.details().rx_queues[0].packets == 3
        assert ring.tail == 9  # every slot handed back, the bad ones included
        assert conn.is_up
        mem.write_packet(9, b"afterwards")
        mem.publish_s2m(10)
        async with asyncio.timeout(1):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == [b"afterwards"]


async def test_s2m_only_bad_descriptors(sock_path: str) -> None:
    async with fake_client_link(sock_path) as link:
        conn, mem = link.conn, link.mem
        ring = mem.ring(S2M)
        for slot in range(4):
            ring.set_desc(slot, region=7, length=10, offset=0)
        mem.publish_s2m(4)
        with pytest.raises(aiomemif.WouldBlockError):
            conn.rx_queues[0].receive_nowait()
        assert conn.details().rx_queues[0].bad_descriptors == 4
        assert ring.tail == 4
        assert conn.is_up


async def test_s2m_chain_running_past_head(sock_path: str) -> None:
    """A NEXT chain cut off by head is never delivered as a (partial) packet."""
    async with fake_client_link(sock_path) as link:
        conn, mem = link.conn, link.mem
        good = b"complete" * 5
        mem.write_packet(0, good)
        mem.write_packet(1, b"first-half", flags=NEXT)
        mem.write_packet(2, b"second-half", flags=NEXT)  # says "more follows"; nothing does
        mem.publish_s2m(3)
        async with asyncio.timeout(1):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == [good]
        batch.release()
        d = conn.details().rx_queues[0]
        assert d.packets == 1
        # Either dropped and counted (slots returned) or left pending: never half-delivered.
        assert d.bad_descriptors >= 1 or mem.ring(S2M).tail == 1
        assert conn.is_up


async def test_s2m_chain_with_bad_segment_is_dropped_whole(sock_path: str) -> None:
    async with fake_client_link(sock_path) as link:
        conn, mem = link.conn, link.mem
        ring = mem.ring(S2M)
        mem.write_packet(0, b"head-seg", flags=NEXT)
        ring.set_desc(1, flags=NEXT, region=3, length=8, offset=0)
        mem.write_packet(2, b"tail-seg")
        mem.write_packet(3, b"innocent")
        mem.publish_s2m(4)
        async with asyncio.timeout(1):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == [b"innocent"]
        batch.release()
        assert conn.details().rx_queues[0].bad_descriptors >= 1
        assert ring.tail == 4


async def test_s2m_valid_chain_is_joined(sock_path: str) -> None:
    """Control case for the chain tests: a well-formed chain arrives as one packet."""
    async with fake_client_link(sock_path) as link:
        conn, mem = link.conn, link.mem
        mem.write_packet(0, b"A" * 256, flags=NEXT)
        mem.write_packet(1, b"B" * 256, flags=NEXT)
        mem.write_packet(2, b"C" * 10)
        mem.publish_s2m(3)
        async with asyncio.timeout(1):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == [b"A" * 256 + b"B" * 256 + b"C" * 10]


@pytest.mark.parametrize("head", [17, 0xFFFF], ids=["n+1", "minus-1"])
async def test_m2s_head_past_ring_size(sock_path: str, head: int) -> None:
    async with fake_client_link(sock_path) as link:
        srv, conn, peer, mem = link.srv, link.conn, link.peer, link.mem
        mem.ring(M2S).head = head
        with pytest.raises(aiomemif.RemoteProtocolError) as info:
            await conn.tx_queues[0].send(b"x" * 60)
        assert "ring" in info.value.reason.lower()
        assert "ring" in (await peer.expect_disconnect()).lower()
        await healthy(srv, sock_path)


async def test_m2s_offered_bad_descriptors(sock_path: str) -> None:
    """Offered buffers outside the client's memory are never written; good ones still are."""
    async with fake_client_link(sock_path) as link:
        conn, mem = link.conn, link.mem
        ring = mem.ring(M2S)
        ring.set_desc(0, region=2, length=256, offset=0)
        ring.set_desc(1, length=256, offset=mem.size - 100)
        good = mem.buffer_offset(M2S, 0, 2)
        ring.set_desc(2, length=256, offset=good)
        ring.head = 3
        await conn.tx_queues[0].send(b"payload!")
        assert conn.details().tx_queues[0].bad_descriptors == 2
        assert ring.tail == 3
        flags, region, length, offset, _ = ring.desc(2)
        assert (flags, region, length, offset) == (0, 0, 8, good)
        assert mem.map[good : good + 8] == b"payload!"
        assert mem.map[mem.size - 100 :] == bytes(100)
        assert conn.is_up


@pytest.mark.parametrize(
    ("datagram", "fd", "expected"),
    [
        (raw_message(1), False, "Unexpected message"),
        (raw_message(6), False, "Unexpected message"),
        (raw_message(1, size=64), False, "Invalid message size"),
        (raw_message(42), False, UNKNOWN_TYPE),
        (raw_message(3), True, "Unexpected fd"),
    ],
    ids=["ack", "connect", "64-bytes", "type-42", "init-with-fd"],
)
async def test_server_link_garbage_on_control_socket(
    sock_path: str, datagram: bytes, fd: bool, expected: str | re.Pattern[str]
) -> None:
    async with fake_client_link(sock_path) as link:
        srv, conn, peer = link.srv, link.conn, link.peer
        if fd:
            send_closing(peer, datagram, eventfd())
        else:
            peer.send_raw(datagram)
        assert matches(expected, await peer.expect_disconnect())
        async with asyncio.timeout(1):
            err = await conn.wait_closed()
        assert isinstance(err, aiomemif.RemoteProtocolError)
        await healthy(srv, sock_path)


async def test_server_link_peer_disconnect_reason(sock_path: str) -> None:
    async with fake_client_link(sock_path) as link:
        conn, peer = link.conn, link.peer
        peer.send(Disconnect("client going away"))
        async with asyncio.timeout(1):
            err = await conn.wait_closed()
        assert isinstance(err, aiomemif.PeerDisconnectedError)
        assert err.reason == "client going away"


def _send_guarded(conn: aiomemif.Connection, efd: int) -> tuple[bool, float]:
    """Send one packet (which signals ``efd``) under a watchdog that can drain ``efd``.

    Returns ``(rescued, seconds)``: ``rescued`` is True if the send was still stuck after
    half a second and the watchdog had to unblock it by reading the eventfd.
    """
    with watchdog(lambda: os.eventfd_read(efd)) as rescued:
        t0 = time.monotonic()
        try:
            conn.tx_queues[0].send_nowait(b"ping")
        except aiomemif.MemifError:
            pass  # giving up on a peer like this is acceptable
        elapsed = time.monotonic() - t0
    return rescued.is_set(), elapsed


@pytest.mark.parametrize("when", ["after-connected", "at-add-ring"])
async def test_server_tx_never_blocks_on_peer_eventfd(sock_path: str, when: str) -> None:
    """The client owns the M2S eventfd's open file description: it can make it blocking and
    fill its counter. Signalling it must not freeze the server's event loop."""
    async with contextlib.AsyncExitStack() as stack:
        srv = await stack.enter_async_context(aiomemif.serve(sock_path))
        mem = stack.enter_context(ClientMemory(blocking_eventfds=when == "at-add-ring"))
        peer = await stack.enter_async_context(await RawPeer.connect(sock_path))
        async with asyncio.timeout(2):
            await peer.expect(Hello)
            await do_init(peer)
            await do_region(peer, mem)
            await do_ring(peer, mem, S2M)
            peer.send(mem.add_ring(M2S), [mem.efd(M2S)])
            reply = await peer.recv()
            if isinstance(reply, Disconnect):  # refusing a blocking eventfd is fine too
                assert when == "at-add-ring"
                assert "interrupt" in reply.reason.lower() or "block" in reply.reason.lower()
                return
            assert isinstance(reply, Ack)
            peer.send(Connect("hostile"))
            await peer.expect(Connected)
            conn = await srv.accept()
        await stack.enter_async_context(conn)
        efd = mem.efd(M2S)
        set_blocking(efd, True)
        os.eventfd_write(efd, EVENTFD_MAX)
        ring = mem.ring(M2S)
        ring.flags = 0  # "signal me"
        ring.head = mem.ring_size
        rescued, elapsed = _send_guarded(conn, efd)
        assert not rescued, f"send blocked the event loop for {elapsed:.2f} s on the eventfd"
        assert elapsed < 0.25


async def test_server_rx_interrupt_never_blocks_on_peer_eventfd(sock_path: str) -> None:
    """The client shares the S2M eventfd: it can make it blocking and read the counter itself
    after the loop saw it readable but before the server's interrupt reader runs. The reader
    must not then sit in a blocking read (freezing the whole event loop)."""
    async with fake_client_link(sock_path) as link:
        conn, mem = link.conn, link.mem
        efd = mem.efd(S2M)
        set_blocking(efd, True)
        with watchdog(lambda: os.eventfd_write(efd, 1)) as rescued:
            stolen = await steal_interrupt(efd)
        assert not rescued.is_set(), "the server's interrupt reader blocked the event loop"
        if not stolen:
            pytest.skip("the loop ran the library's reader first; the race was not staged")
        mem.write_packet(0, b"after the race")
        mem.publish_s2m(1)
        async with asyncio.timeout(1):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == [b"after the race"]


# ======================================== 3. raw fake server against aiomemif.connect


async def _outcome(task: asyncio.Task[aiomemif.Connection]) -> BaseException:
    """The exception ``task`` ends with (it must not succeed)."""
    async with asyncio.timeout(2):
        await asyncio.wait([task])
    exc = task.exception()
    assert exc is not None, "connect() succeeded against a hostile server"
    return exc


async def m_then_hello(peer: RawPeer) -> None:
    peer.send(Hello(name="hostile"))
    await peer.expect(Init)


ClientScript = Callable[[RawPeer], Awaitable[None]]


async def m_version_too_new(peer: RawPeer) -> None:
    peer.send(Hello(min_version=0x0300, max_version=0x0301))


async def m_version_too_old(peer: RawPeer) -> None:
    peer.send(Hello(min_version=0x0100, max_version=0x0100))


async def m_type_9(peer: RawPeer) -> None:
    peer.send_raw(raw_message(9))


async def m_type_0(peer: RawPeer) -> None:
    peer.send_raw(raw_message(0))


async def m_ack_first(peer: RawPeer) -> None:
    peer.send(Ack())


async def m_connected_first(peer: RawPeer) -> None:
    peer.send(Connected("too early"))


async def m_init_from_server(peer: RawPeer) -> None:
    peer.send(Init())


async def m_hello_64(peer: RawPeer) -> None:
    peer.send_raw(raw_message(2, size=64))


async def m_hello_129(peer: RawPeer) -> None:
    peer.send_raw(encode(Hello()) + b"!")


async def m_hello_with_fd(peer: RawPeer) -> None:
    send_closing(peer, Hello(), memfd(4096))


async def m_hello_with_40_fds(peer: RawPeer) -> None:
    fd = memfd(4096)
    try:
        send_closing(peer, Hello(), *(os.dup(fd) for _ in range(40)))
    finally:
        os.close(fd)


async def m_hello_again(peer: RawPeer) -> None:
    await m_then_hello(peer)
    peer.send(Hello())


async def m_connected_instead_of_ack(peer: RawPeer) -> None:
    await m_then_hello(peer)
    peer.send(Connected("skip"))


async def m_ack_with_fd(peer: RawPeer) -> None:
    await m_then_hello(peer)
    send_closing(peer, Ack(), eventfd())


async def m_ack_instead_of_connected(peer: RawPeer) -> None:
    await m_then_hello(peer)
    peer.send(Ack())
    while True:
        msg, fds = await peer.recv_with_fds()
        for fd in fds:
            os.close(fd)
        if isinstance(msg, Connect):
            break
        peer.send(Ack())
    peer.send(Ack())


CLIENT_REFUSALS = [
    pytest.param(m_version_too_new, "Incompatible memif version", id="hello-version-0x0300"),
    pytest.param(m_version_too_old, "Incompatible memif version", id="hello-version-0x0100"),
    pytest.param(m_type_9, UNKNOWN_TYPE, id="type-9-instead-of-hello"),
    pytest.param(m_type_0, UNKNOWN_TYPE, id="type-0-instead-of-hello"),
    pytest.param(m_ack_first, "Unexpected message", id="ack-instead-of-hello"),
    pytest.param(m_connected_first, "Unexpected message", id="connected-instead-of-hello"),
    pytest.param(m_init_from_server, "Unexpected message", id="init-from-server"),
    pytest.param(m_hello_64, "Invalid message size", id="hello-64-bytes"),
    pytest.param(m_hello_129, "Invalid message size", id="hello-129-bytes"),
    pytest.param(m_hello_with_fd, "Unexpected fd", id="hello-with-fd"),
    pytest.param(m_hello_again, "Unexpected message", id="second-hello"),
    pytest.param(m_connected_instead_of_ack, "Unexpected message", id="connected-before-acks"),
    pytest.param(m_ack_with_fd, "Unexpected fd", id="ack-with-fd"),
    pytest.param(m_ack_instead_of_connected, "Unexpected message", id="ack-after-connect"),
    pytest.param(m_hello_with_40_fds, "Too many file descriptors", id="hello-with-40-fds"),
]


#: The scripts above that let the client send INIT before it gives up.
SENT_INIT: set[ClientScript] = {
    m_hello_again,
    m_connected_instead_of_ack,
    m_ack_with_fd,
    m_ack_instead_of_connected,
}


@pytest.mark.parametrize(("script", "expected"), CLIENT_REFUSALS)
async def test_client_rejects_malformed_server(
    sock_path: str, script: ClientScript, expected: str | re.Pattern[str]
) -> None:
    async with fake_server(sock_path) as (peer, task):
        await script(peer)
        exc = await _outcome(task)
        assert isinstance(exc, aiomemif.RemoteProtocolError), repr(exc)
        assert matches(expected, exc.reason), exc.reason
        if script in SENT_INIT:
            assert await peer.expect_disconnect() == exc.reason
        else:  # nothing negotiated yet: just close (libmemif crashes on DISCONNECT first)
            await peer.expect_eof()


@pytest.mark.parametrize("after_init", [False, True], ids=["instead-of-hello", "after-init"])
async def test_client_handshake_refused_with_reason(sock_path: str, after_init: bool) -> None:
    async with fake_server(sock_path) as (peer, task):
        if after_init:
            await m_then_hello(peer)
        peer.send(Disconnect("no memif for you"))
        exc = await _outcome(task)
        assert isinstance(exc, aiomemif.HandshakeRefusedError), repr(exc)
        assert exc.reason == "no memif for you"
        await peer.expect_eof()


async def test_client_refusal_reason_unterminated_and_not_utf8(sock_path: str) -> None:
    """A DISCONNECT whose 96-byte reason has no NUL and is not UTF-8 still decodes."""
    reason = b"\xff\xfe bad bytes " + b"R" * 96
    async with fake_server(sock_path) as (peer, task):
        peer.send_raw(raw_message(8, bytes(4) + reason[:96]))
        exc = await _outcome(task)
        assert isinstance(exc, aiomemif.HandshakeRefusedError), repr(exc)
        assert exc.reason == reason[:96].decode("utf-8", "replace")
        assert exc.reason.startswith("\ufffd\ufffd bad bytes RRR")


@pytest.mark.parametrize("stage", ["before-hello", "after-init", "after-region"])
async def test_client_server_closes_mid_handshake(sock_path: str, stage: str) -> None:
    async with fake_server(sock_path) as (peer, task):
        if stage != "before-hello":
            await m_then_hello(peer)
        if stage == "after-region":
            peer.send(Ack())
            msg, fds = await peer.recv_with_fds()
            for fd in fds:
                os.close(fd)
            assert isinstance(msg, AddRegion)
        peer.close()
        exc = await _outcome(task)
        assert isinstance(exc, aiomemif.ConnectionLostError), repr(exc)


async def test_client_times_out_silent_server(sock_path: str) -> None:
    async with fake_server(sock_path, handshake_timeout=0.3) as (peer, task):
        await m_then_hello(peer)
        t0 = time.monotonic()
        exc = await _outcome(task)
        assert isinstance(exc, aiomemif.HandshakeTimeoutError), repr(exc)
        assert time.monotonic() - t0 < 1.0
        assert await peer.expect_disconnect() == "Handshake timeout"


async def test_client_server_never_accepts(sock_path: str) -> None:
    """A listener whose backlog is full and never accepts: connect fails promptly with an
    OS-level error or a handshake timeout, not with a lost connection it never had."""
    async with RawListener(sock_path, backlog=0):
        filler = await RawPeer.connect(sock_path)  # takes the only backlog slot
        try:
            async with asyncio.timeout(2):
                with pytest.raises(aiomemif.MemifError) as info:
                    await _connect(sock_path, handshake_timeout=0.3, **SMALL)
        finally:
            filler.close()
    exc = info.value
    if isinstance(exc, aiomemif.MemifOSError):
        assert exc.errno in (errno.EAGAIN, errno.ECONNREFUSED)
    else:
        assert isinstance(exc, aiomemif.HandshakeTimeoutError), repr(exc)


# ============================================== 2b. data path: fake server against a client


async def test_client_link_control_good_packet(sock_path: str) -> None:
    """Control case: the fake server can deliver a packet the normal way."""
    async with fake_server_link(sock_path) as link:
        conn, side = link.conn, link.side
        assert side.ring(M2S).head == 16  # the client offered every buffer
        server_send(side, 0, b"hello client")
        server_publish(side, 1)
        async with asyncio.timeout(1):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == [b"hello client"]


@pytest.mark.parametrize("waiting", [False, True], ids=["polled", "while-waiting"])
@pytest.mark.parametrize("tail", [17, 0xFFFF], ids=["n+1", "minus-1"])
async def test_m2s_tail_beyond_offered_head(sock_path: str, tail: int, waiting: bool) -> None:
    async with fake_server_link(sock_path) as link:
        conn, peer, side = link.conn, link.peer, link.side
        rxq = conn.rx_queues[0]
        task = asyncio.ensure_future(rxq.receive()) if waiting else None
        await asyncio.sleep(0.01)
        server_send(side, 0, b"x" * 60)
        server_publish(side, tail)
        with pytest.raises(aiomemif.RemoteProtocolError) as info:
            async with asyncio.timeout(1):
                await (task if task is not None else rxq.receive())
        assert "ring" in info.value.reason.lower()
        assert not conn.is_up
        assert "ring" in (await peer.expect_disconnect()).lower()


@pytest.mark.parametrize("ahead", [1, 14, 0x8000], ids=["head+1", "head+14", "head+0x8000"])
async def test_s2m_tail_beyond_head(sock_path: str, ahead: int) -> None:
    """The server returns buffers the client never published: its next send must fail."""
    async with fake_server_link(sock_path) as link:
        conn, peer, side = link.conn, link.peer, link.side
        await conn.tx_queues[0].send_batch([b"one", b"two"])
        ring = side.ring(S2M)
        assert ring.head == 2
        ring.tail = 2 + ahead
        with pytest.raises(aiomemif.RemoteProtocolError) as info:
            await conn.tx_queues[0].send(b"x" * 60)
        assert "ring" in info.value.reason.lower()
        assert "ring" in (await peer.expect_disconnect()).lower()


async def test_m2s_descriptors_rewritten_out_of_bounds(sock_path: str) -> None:
    async with fake_server_link(sock_path) as link:
        conn, side = link.conn, link.side
        ring = side.ring(M2S)
        size = len(side.region(0))
        server_send(side, 0, b"first")
        ring.set_desc(1, region=1, length=10, offset=0)
        ring.set_desc(2, length=200, offset=size - 100)
        ring.set_desc(3, length=0, offset=ring.desc(3)[3])
        server_send(side, 4, b"last")
        server_publish(side, 5)
        async with asyncio.timeout(1):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == [b"first", b"last"]
        batch.release()
        assert conn.details().rx_queues[0].bad_descriptors == 3
        assert conn.is_up
        # The refill restored the client's own descriptors over the server's rewrites.
        assert ring.head == 21
        assert ring.desc(1)[1:3] == (0, 256)


async def test_m2s_chain_running_past_tail(sock_path: str) -> None:
    """A NEXT chain cut off by the published tail is never delivered as a packet."""
    async with fake_server_link(sock_path) as link:
        conn, side = link.conn, link.side
        ring = side.ring(M2S)
        server_send(side, 0, b"whole")
        server_send(side, 1, b"dangling")
        _, region, length, offset, _ = ring.desc(1)
        ring.set_desc(1, flags=NEXT, region=region, length=length, offset=offset)
        server_publish(side, 2)
        async with asyncio.timeout(1):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == [b"whole"]
        batch.release()
        d = conn.details().rx_queues[0]
        assert d.bad_descriptors >= 1 or ring.head == 17
        assert conn.is_up


async def test_m2s_valid_chain_is_joined(sock_path: str) -> None:
    async with fake_server_link(sock_path) as link:
        conn, side = link.conn, link.side
        ring = side.ring(M2S)
        for slot, part in enumerate([b"a" * 256, b"b" * 256, b"c"]):
            server_send(side, slot, part)
            if slot < 2:
                _, region, length, offset, _ = ring.desc(slot)
                ring.set_desc(slot, flags=NEXT, region=region, length=length, offset=offset)
        server_publish(side, 3)
        async with asyncio.timeout(1):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == [b"a" * 256 + b"b" * 256 + b"c"]


@pytest.mark.parametrize(
    ("datagram", "fd", "expected"),
    [
        (raw_message(2, size=64), False, "Invalid message size"),
        (raw_message(1), False, "Unexpected message"),
        (raw_message(0), False, UNKNOWN_TYPE),
        (raw_message(7), True, "Unexpected fd"),
    ],
    ids=["64-bytes", "ack", "type-0", "connected-with-fd"],
)
async def test_client_link_garbage_on_control_socket(
    sock_path: str, datagram: bytes, fd: bool, expected: str | re.Pattern[str]
) -> None:
    async with fake_server_link(sock_path) as link:
        conn, peer = link.conn, link.peer
        if fd:
            send_closing(peer, datagram, memfd(4096))
        else:
            peer.send_raw(datagram)
        assert matches(expected, await peer.expect_disconnect())
        async with asyncio.timeout(1):
            err = await conn.wait_closed()
        assert isinstance(err, aiomemif.RemoteProtocolError)
        with pytest.raises(aiomemif.RemoteProtocolError):
            await conn.tx_queues[0].send(b"x")


async def test_client_tx_never_blocks_on_shared_eventfd(sock_path: str) -> None:
    """The server shares the S2M eventfd's open file description: it can clear O_NONBLOCK
    and fill the counter. Signalling it must not freeze the client's event loop."""
    async with fake_server_link(sock_path) as link:
        conn, side = link.conn, link.side
        efd = side.efd(S2M)
        set_blocking(efd, True)
        os.eventfd_write(efd, EVENTFD_MAX)
        side.ring(S2M).flags = 0  # "signal me"
        rescued, elapsed = _send_guarded(conn, efd)
        assert not rescued, f"send blocked the event loop for {elapsed:.2f} s on the eventfd"
        assert elapsed < 0.25


async def test_client_rx_interrupt_never_blocks_on_shared_eventfd(sock_path: str) -> None:
    """Mirror of the server test: the server makes the client's M2S eventfd blocking and
    steals the count between the loop's readiness check and the client's read."""
    async with fake_server_link(sock_path) as link:
        conn, side = link.conn, link.side
        efd = side.efd(M2S)
        set_blocking(efd, True)
        with watchdog(lambda: os.eventfd_write(efd, 1)) as rescued:
            stolen = await steal_interrupt(efd)
        assert not rescued.is_set(), "the client's interrupt reader blocked the event loop"
        if not stolen:
            pytest.skip("the loop ran the library's reader first; the race was not staged")
        server_send(side, 0, b"after the race")
        server_publish(side, 1)
        async with asyncio.timeout(1):
            batch = await conn.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == [b"after the race"]
