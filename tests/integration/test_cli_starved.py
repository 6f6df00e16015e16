"""The command line against a peer that never offers receive buffers (issue 14, item 5).

``aiomemif responder`` in both roles: a reply that finds no ring space for its bound is
dropped and counted, so --count and signals end it. ``gen`` and ``ping`` as clients of a
server that never takes a packet end within --duration/--linger and -W. (ping as server
and gen as server with --duration are in test_cli_lifecycle.py.) Timeouts here are hang
guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable

import pytest
from support.cli import AIOMEMIF, GUARD, starved_link
from support.hostile import M2S, S2M, RawListener, server_handshake
from support.hostile_links import server_publish, server_send

from aiomemif.tools import packets

RESPONDER_MAC = packets.parse_mac("02:fe:00:00:00:01")


def echo_request(seq: int) -> bytes:
    icmp = packets.icmp_echo(1, seq, bytes(56))
    ip = packets.ipv4("192.168.1.2", "192.168.1.1", packets.IPPROTO_ICMP, icmp)
    return packets.ethernet(RESPONDER_MAC, bytes(6), packets.ETHERTYPE_IPV4, ip)


async def until(check: Callable[[], bool]) -> None:
    """Poll ``check`` (a ring cursor the command moves) until it holds (hang-guarded)."""
    async with asyncio.timeout(GUARD):
        while not check():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def responder(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``aiomemif responder --json ARGS`` (killed if still running when the block ends)."""
    proc = await asyncio.create_subprocess_exec(
        *AIOMEMIF, "responder", "--json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, dict[str, object], str]:
    out, err = await asyncio.wait_for(proc.communicate(), GUARD)
    assert proc.returncode is not None
    return proc.returncode, json.loads(out), err.decode()


async def test_responder_server_count_ends_against_a_client_that_never_refills(
    sock_path: str,
) -> None:
    async with responder("--role", "server", "--socket", sock_path, "--count", "2") as proc:
        async with starved_link(sock_path) as (peer, mem):
            s2m = mem.ring(S2M)
            for i in range(2):  # one at a time: the second comes after the first waited
                mem.write_packet(i, echo_request(i + 1))
                mem.publish_s2m(i + 1)
                await until(lambda: s2m.tail == i + 1)  # noqa: B023 - awaited right here
            code, doc, err = await finish(proc)
            assert await peer.expect_disconnect(wait=GUARD)
    assert code == 0, err
    assert doc["echo_replies"] == 0 and doc["not_sent"] == 2 and doc["received"] == 2
    assert "warning: replies not sent: no room in the transmit ring for 1 s" in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_responder_server_signal_while_a_reply_waits(
    sock_path: str, signum: signal.Signals
) -> None:
    async with responder("--role", "server", "--socket", sock_path) as proc:
        async with starved_link(sock_path) as (peer, mem):
            mem.write_packet(0, echo_request(1))
            mem.publish_s2m(1)
            s2m = mem.ring(S2M)
            await until(lambda: s2m.tail == 1)  # taken; its reply finds no room
            proc.send_signal(signum)
            code, doc, err = await finish(proc)
            assert await peer.expect_disconnect(wait=GUARD)
    assert code == (143 if signum == signal.SIGTERM else 130), err
    assert doc["interrupted"] is True and doc["echo_replies"] == 0 and doc["received"] == 1
    assert "Traceback" not in err


async def test_responder_client_count_ends_against_a_server_that_never_reads(
    sock_path: str,
) -> None:
    """The client's transmit ring (S2M, 2 slots) is never given back by the server: the
    first two replies fit, the other two are dropped after their wait."""
    async with RawListener(sock_path) as listener:
        async with responder("--role", "client", "--socket", sock_path, "--ring-size", "2",
                             "--count", "4") as proc:  # fmt: skip
            async with await listener.accept(wait=GUARD) as peer:
                side = await server_handshake(peer)
                try:
                    m2s = side.ring(M2S)
                    await until(lambda: m2s.head == 2)  # the client offered its 2 buffers
                    for i in range(4):  # one at a time, each after the one before was taken
                        server_send(side, i % 2, echo_request(i + 1))
                        server_publish(side, i + 1)
                        await until(lambda: m2s.head == 2 + i + 1)  # noqa: B023
                    code, doc, err = await finish(proc)
                    assert await peer.expect_disconnect(wait=GUARD)
                    assert side.ring(S2M).head == 2  # the two replies that fit
                finally:
                    side.close()
    assert code == 0, err
    assert doc["echo_replies"] == 2 and doc["not_sent"] == 2 and doc["received"] == 4


async def _against_a_server_that_never_reads(sock_path: str, *args: str) -> tuple[int, str]:
    """Run ``aiomemif ARGS --role client`` against a raw server that completes the
    handshake and then never takes a packet from the client's transmit ring."""
    async with RawListener(sock_path) as listener:
        proc = await asyncio.create_subprocess_exec(
            *AIOMEMIF, *args, "--role", "client", "--socket", sock_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with await listener.accept(wait=GUARD) as peer:
                side = await server_handshake(peer)
                try:
                    out, err = await asyncio.wait_for(proc.communicate(), GUARD)
                    assert await peer.expect_disconnect(wait=GUARD)
                finally:
                    side.close()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()
    assert proc.returncode is not None and "Traceback" not in err.decode(), err
    return proc.returncode, out.decode()


async def test_gen_client_duration_against_a_server_that_never_reads(sock_path: str) -> None:
    code, out = await _against_a_server_that_never_reads(
        sock_path, "gen", "--ring-size", "16", "--duration", "0.5", "--linger", "0.5", "--json"
    )
    doc = json.loads(out)
    assert code == 0 and doc["sent"] == 16 and doc["drained"] is False, doc


async def test_ping_client_against_a_server_that_never_reads(sock_path: str) -> None:
    code, out = await _against_a_server_that_never_reads(
        sock_path, "ping", "192.168.1.1", "--target-mac", "02:fe:00:00:00:01",
        "--ring-size", "2", "-c", "4", "-i", "0", "-W", "0.3", "--json",
    )  # fmt: skip
    doc = json.loads(out)
    assert code == 1 and doc["transmitted"] == 2 and doc["not_sent"] == 2, doc
