"""Hostile peers that try to stall or spin the event loop (issue 17, cases 3, 4 and 7;
case 2, the eventfd races, is in test_hostile_eventfd.py).

Each attack runs against a real server or client while :func:`support.stall.heartbeat`
records the longest time the loop could not run anything else; it must stay under
:data:`STALL_LIMIT`. Attackers that must not share our GIL (so that they behave like a
native peer) run in a forked child.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import select
import socket
import time

import pytest
from support.hostile import RawPeer, raw_message
from support.stall import forked, heartbeat

import aiomemif
from aiomemif import InterfaceConfig
from aiomemif._core.messages import Ack, Hello, Init
from aiomemif._core.wire import MsgType

STALL_LIMIT = 0.05


# ------------------------------------------------------------------ 3. stray ACK flood
def _flood(fd: int, seconds: float) -> None:
    """Child: send stray ACKs on the inherited control socket as fast as it can."""
    ack = raw_message(MsgType.ACK)
    end = time.monotonic() + seconds
    sent = 0
    while True:
        try:
            os.write(fd, ack)
        except BlockingIOError:
            select.select([], [fd], [], 0.01)
        except OSError:
            return  # the server closed the connection
        sent += 1
        if sent % 256 == 0 and time.monotonic() > end:
            return


async def test_stray_ack_flood_is_cut_off(sock_path: str) -> None:
    """Case 3: after INIT the client floods stray ACKs. The server must keep its loop
    running and end the handshake after a few, with a DISCONNECT saying why."""
    cfg = InterfaceConfig(handshake_timeout=3.0)
    async with aiomemif.serve(sock_path, [cfg]) as srv:
        async with await RawPeer.connect(sock_path) as peer:
            await peer.expect(Hello)
            peer.send(Init(name="flooder"))
            await peer.expect(Ack)
            with forked(lambda: _flood(peer.sock.fileno(), 2.0), 2.0):
                async with heartbeat() as stalls:
                    async with asyncio.timeout(2.5):
                        while not srv.failures:
                            await asyncio.sleep(0.005)
        assert stalls.longest < STALL_LIMIT, f"loop held {stalls.longest:.3f} s"
        assert "stray ACK" in srv.failures[-1].reason
        assert srv.failures[-1].interface_id == 0


# ------------------------------------------------------------- 4. out of fds at accept
def _connect_many(path: str, n: int, seconds: float) -> None:
    """Child: open ``n`` idle control connections and keep them for ``seconds``."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the parent's limit is not ours
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(path)
        except OSError:
            s.close()
            break
        socks.append(s)
    time.sleep(seconds)


async def test_accept_out_of_fds_pauses_instead_of_spinning(
    sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Case 4: with RLIMIT_NOFILE nearly used up, idle clients make ``accept`` fail with
    EMFILE. The server must not spin on it or let it reach the loop's exception handler;
    it pauses accepts (one WARNING) and takes the clients once fds are free again."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    cfg = InterfaceConfig(handshake_timeout=5.0)  # no fd comes free by itself meanwhile
    async with aiomemif.serve(sock_path, [cfg], max_pending=64) as srv:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with caplog.at_level(logging.WARNING, logger="aiomemif"):
            in_use = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 4, hard))
            try:
                with forked(lambda: _connect_many(sock_path, 40, 2.0), 2.0):
                    cpu0 = time.process_time()
                    await asyncio.sleep(0.6)
                    cpu = time.process_time() - cpu0
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                    assert not errors, errors[:1]
                    assert cpu < 0.3, f"{cpu:.2f} s of CPU in 0.6 s while out of fds"
                    warnings = [r for r in caplog.records if "pausing accepts" in r.getMessage()]
                    assert len(warnings) == 1, [r.getMessage() for r in warnings]
                    assert warnings[0].levelno == logging.WARNING
                    async with asyncio.timeout(1.5):  # fds are back: the rest are taken
                        while srv.pending_handshakes < 30:
                            await asyncio.sleep(0.01)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert not errors, errors[:1]
    loop.set_exception_handler(None)


# ------------------------------------------------------- 7. half-open handshake limit
async def test_pending_handshakes_are_limited(sock_path: str) -> None:
    """Case 7: 100 clients connect and never send INIT. At most ``max_pending`` handshakes
    run at once; the others wait in the backlog and are served as earlier ones expire."""
    cfg = InterfaceConfig(handshake_timeout=0.3)
    async with aiomemif.serve(sock_path, [cfg], max_pending=8, backlog=128) as srv:
        with forked(lambda: _connect_many(sock_path, 100, 2.0), 2.0):
            most = 0
            end = time.monotonic() + 1.2
            while time.monotonic() < end:
                most = max(most, srv.pending_handshakes)
                await asyncio.sleep(0.002)
            assert 1 <= most <= 8
            # handshakes expire after 0.3 s and the backlog keeps being served
            assert len([f for f in srv.failures if f.reason == "Handshake timeout"]) >= 16


async def test_init_deadline_is_the_shortest_timeout(sock_path: str) -> None:
    """Case 7: before INIT the server cannot know the interface, so a silent client gets
    the shortest ``handshake_timeout`` of all interfaces, not the longest."""
    quick = InterfaceConfig(interface_id=0, handshake_timeout=0.2)
    slow = InterfaceConfig(interface_id=1, handshake_timeout=30.0)
    async with aiomemif.serve(sock_path, [quick, slow]) as srv:
        async with await RawPeer.connect(sock_path) as peer:
            await peer.expect(Hello)
            t0 = time.monotonic()
            reason = await peer.expect_disconnect(wait=2.0)
            assert reason == "Handshake timeout"
            assert time.monotonic() - t0 < 1.0
        # after INIT the interface's own timeout applies (from accept)
        async with await RawPeer.connect(sock_path) as peer:
            await peer.expect(Hello)
            peer.send(Init(interface_id=1, name="slow"))
            await peer.expect(Ack)
            with pytest.raises(TimeoutError):  # 0.5 s on, still waiting for us
                await peer.recv_raw(wait=0.5)
        assert srv.failures[0].reason == "Handshake timeout"
