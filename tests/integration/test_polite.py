"""Politeness to fragile peers (issue 14, item 5).

A libmemif master dereferences a null pointer when a client sends DISCONNECT before INIT,
so a client that gives up before INIT must only close its socket. ``aiomemif probe``
reads HELLO and, with ``--id``, goes on over that same connection. Raw servers from
tests/support/hostile.py record what the client sends. libmemif's icmp_responder sums
the ICMP header only: ``aiomemif ping`` shows and counts such replies. The default close
reason names the application that closed. Timeouts are hang guards.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from support.cli import AIOMEMIF, aio_run
from support.hostile import RawListener, RawPeer, server_handshake
from support.hostile_links import fake_server

import aiomemif
from aiomemif._core.messages import Disconnect, Hello, Init
from aiomemif.tools import packets

GUARD = 30.0


async def test_client_timing_out_before_hello_sends_nothing(sock_path: str) -> None:
    async with fake_server(sock_path, handshake_timeout=0.2) as (peer, task):
        async with asyncio.timeout(GUARD):
            await asyncio.wait([task])
        assert isinstance(task.exception(), aiomemif.HandshakeTimeoutError)
        await peer.expect_eof()


async def test_client_refusing_hello_sends_nothing(sock_path: str) -> None:
    async with fake_server(sock_path) as (peer, task):
        peer.send(Hello(min_version=0x0300, max_version=0x0300))
        async with asyncio.timeout(GUARD):
            await asyncio.wait([task])
        exc = task.exception()
        assert isinstance(exc, aiomemif.RemoteProtocolError)
        assert exc.reason == "Incompatible memif version"
        await peer.expect_eof()


async def _probe(listener: RawListener, *args: str) -> tuple[asyncio.Task[bytes], RawPeer]:
    """Start ``aiomemif probe --json`` against ``listener``; its stdout (a task) and the
    connection it made."""
    proc = await asyncio.create_subprocess_exec(
        *AIOMEMIF, "probe", "--socket", listener.path, "--json", *args,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip

    async def output() -> bytes:
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), GUARD)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()
        return out

    task = asyncio.ensure_future(output())
    try:
        return task, await listener.accept(wait=GUARD)
    except BaseException:
        task.cancel()
        await asyncio.wait([task])
        raise


def _no_second_connection(listener: RawListener) -> None:
    """The probe has exited: any other connection it made would wait in the backlog."""
    with pytest.raises(BlockingIOError):
        listener.sock.accept()[0].close()


async def test_probe_without_id_only_closes_after_hello(sock_path: str) -> None:
    async with RawListener(sock_path) as listener:
        out, peer = await _probe(listener)
        async with peer:
            peer.send(Hello(name="fragile"))
            await peer.expect_eof(wait=GUARD)  # no DISCONNECT before INIT
        doc = json.loads(await out)
        _no_second_connection(listener)
    assert doc["ok"] is True and doc["hello"]["name"] == "fragile"
    assert "interface_id" not in doc


async def test_probe_with_id_uses_one_connection(sock_path: str) -> None:
    async with RawListener(sock_path) as listener:
        out, peer = await _probe(listener, "--id", "3")
        async with peer:
            side = await server_handshake(peer, Hello(name="fragile"))
            try:
                assert side.init is not None and side.init.interface_id == 3
                assert await peer.expect_disconnect(wait=GUARD) == "aiomemif probe done"
            finally:
                side.close()
        doc = json.loads(await out)
        _no_second_connection(listener)
    assert doc["ok"] is True and doc["accepted"] is True
    assert doc["hello"]["name"] == "fragile" and doc["interface_id"] == 3
    assert doc["peer_interface_name"] == "hostile-server-if"


async def test_probe_with_id_refused_after_init(sock_path: str) -> None:
    async with RawListener(sock_path) as listener:
        out, peer = await _probe(listener, "--id", "4")
        async with peer:
            peer.send(Hello(name="fragile"))
            assert (await peer.expect(Init, wait=GUARD)).interface_id == 4
            peer.send(Disconnect("ID not found"))
            await peer.expect_eof(wait=GUARD)
        doc = json.loads(await out)
        _no_second_connection(listener)
    assert doc["ok"] is False and doc["accepted"] is False
    assert doc["reason"] == "ID not found" and doc["hello"]["name"] == "fragile"


def _header_only_checksum(frame: bytes) -> bytes:
    """``frame`` (an echo reply) with its ICMP checksum summed over the 8-byte ICMP header
    only, as libmemif's example icmp_responder does."""
    at = 14 + (frame[14] & 0x0F) * 4  # Ethernet, then the IPv4 header
    header = frame[at : at + 2] + b"\0\0" + frame[at + 4 : at + 8]
    return frame[: at + 2] + packets.checksum(header).to_bytes(2, "big") + frame[at + 4 :]


async def _answer_like_icmp_responder(conn: aiomemif.Connection) -> int:
    """Answer ARP and echo requests, the echo replies with header-only checksums, until
    the peer leaves; how many echo replies were sent."""
    mac, ip = packets.parse_mac("02:fe:00:00:00:01"), packets.parse_ip("192.168.1.1")
    echoes = 0
    async for batch in conn.rx_queues[0]:
        replies = []
        for pkt in batch:
            answer = packets.answer_frame(bytes(pkt), mac, ip)
            if answer.reply is not None:
                echo = answer.kind == "echo"
                echoes += echo
                replies.append(_header_only_checksum(answer.reply) if echo else answer.reply)
        batch.release()
        await conn.tx_queues[0].send_batch(replies)
    return echoes


@pytest.mark.parametrize("json_out", [False, True], ids=["text", "json"])
async def test_ping_counts_replies_with_bad_checksums(sock_path: str, json_out: bool) -> None:
    args = ["ping", "--role", "client", "--socket", sock_path, "192.168.1.1", "-c", "3",
            "-i", "0.02", "-W", "5"] + (["--json"] if json_out else [])  # fmt: skip
    async with aiomemif.serve(sock_path) as srv:
        ping = asyncio.ensure_future(aio_run(*args))
        try:
            async with asyncio.timeout(GUARD):
                conn = await srv.accept()
            async with conn:
                assert await _answer_like_icmp_responder(conn) == 3
        finally:
            code, out, err = await ping
    assert code == 0, err
    if json_out:
        doc = json.loads(out)
        assert doc["received"] == 3 and doc["bad_checksum"] == 3 and doc["ok"] is True
        assert [r["bad_checksum"] for r in doc["replies"]] == [True] * 3
    else:
        lines = [ln for ln in out.splitlines() if ln.startswith("64 bytes from 192.168.1.1")]
        assert len(lines) == 3 and all(ln.endswith(" ms (bad checksum)") for ln in lines)
        assert "3 packets transmitted, 3 received, 3 with bad checksum, 0% packet loss" in out


@pytest.mark.parametrize("closing", ["client", "server"])
async def test_default_close_reason_names_the_closing_application(
    sock_path: str, closing: str
) -> None:
    """The peer learns who closed: the name this side announced (INIT's / HELLO's)."""
    server_cfg = aiomemif.InterfaceConfig(app_name="not-announced")
    async with aiomemif.serve(sock_path, [server_cfg], app_name="srv-app") as srv:
        async with aiomemif.connect(sock_path, app_name="cli-app") as client:
            async with asyncio.timeout(GUARD):
                server = await srv.accept()
            async with server:
                leaving, staying = (client, server) if closing == "client" else (server, client)
                await leaving.aclose()
                async with asyncio.timeout(GUARD):
                    await staying.wait_closed()
    name = "cli-app" if closing == "client" else "srv-app"
    assert staying.close_reason == leaving.close_reason == f"closed by application '{name}'"
    assert staying.closed_by_peer and not leaving.closed_by_peer
