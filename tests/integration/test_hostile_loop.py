"""Hostile peers that try to stall or spin the event loop (issue 17, cases 2-4 and 7).

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
import signal
import socket
import threading
import time

import pytest
from support.hostile import M2S, RawPeer, raw_message, set_blocking
from support.hostile_links import fake_client_link
from support.stall import Shared, forked, heartbeat

import aiomemif
from aiomemif import InterfaceConfig
from aiomemif._core.messages import Ack, Hello, Init
from aiomemif._core.wire import MsgType
from aiomemif._os.eventfd import EventFd
from aiomemif._os.watchdog import TICK

STALL_LIMIT = 0.05
EVENTFD_MAX = (1 << 64) - 2  # the largest count an eventfd holds
ATTACK = 8.0  # seconds an attack may take to stage its race (it ends once staged)


def _blocked_in_write(tid: int) -> bool:
    """Is thread ``tid`` of our parent asleep inside ``write`` (an eventfd wait)?"""
    base = f"/proc/{os.getppid()}/task/{tid}"
    try:
        with open(f"{base}/wchan") as f:
            if f.read() != "do_wait_intr_irq":
                return False
        with open(f"{base}/syscall") as f:
            return f.read().startswith("1 ")
    except OSError:
        return False


class _Late(Exception):
    pass


def _late(_sig: int, _frame: object) -> None:
    raise _Late


def _write_within(efd: int, value: int, seconds: float = 0.005) -> None:
    """Add ``value`` to the blocking eventfd, giving up if that blocks for ``seconds``
    (the library wrote in between and the counter cannot take it)."""
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        os.eventfd_write(efd, value)
    except _Late:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _fill_in_the_window(efd: int, loop_tid: int, seconds: float, shared: Shared) -> None:
    """Child: keep the eventfd one short of full, and fill it at random moments, hoping to
    land between the library's readiness check and its write. Whenever the loop thread is
    then found inside ``write`` (an eventfd wait), hold it there for a second."""
    signal.signal(signal.SIGALRM, _late)
    buf = bytearray(8)
    poller = select.poll()
    poller.register(efd, select.POLLOUT)
    end = time.monotonic() + seconds
    while time.monotonic() < end and not shared[1]:
        try:
            os.preadv(efd, [buf], -1, os.RWF_NOWAIT)  # empty (frees a held writer)
        except BlockingIOError:
            pass
        _write_within(efd, EVENTFD_MAX - 1)  # one short of full: "writable"
        if poller.poll(0):
            _write_within(efd, 1)  # full now: a write already past its check blocks
        for _ in range(2):
            if _blocked_in_write(loop_tid):
                shared[0] += 1  # caught the loop in write: hold it
                time.sleep(1.0)
                break


async def test_server_signal_race_cannot_hold_the_loop(sock_path: str) -> None:
    """Case 2: the client clears O_NONBLOCK on the M2S eventfd and fills the counter
    between the server's poll(POLLOUT) and its eventfd write. The loop may be held for a
    moment (the watchdog empties the counter) and the client is then disconnected."""
    shared = Shared()
    try:
        async with fake_client_link(sock_path) as link:
            conn, mem = link.conn, link.mem
            efd = mem.efd(M2S)
            set_blocking(efd, True)
            ring = mem.ring(M2S)
            ring.flags = 0  # "signal me" on every send
            tid = threading.get_native_id()
            with forked(lambda: _fill_in_the_window(efd, tid, ATTACK, shared), ATTACK):
                async with heartbeat() as stalls:
                    end = time.monotonic() + ATTACK
                    while time.monotonic() < end and conn.is_up:
                        ring.head = ring.tail + mem.ring_size  # the fake client keeps up
                        try:
                            conn.tx_queues[0].send_nowait(b"x" * 60)
                        except aiomemif.MemifError:
                            break
                        await asyncio.sleep(0)
                shared[1] = 1  # stop the child
            caught = shared[0]
            if not caught:
                pytest.skip("the child never caught the loop inside write (race not staged)")
            assert stalls.longest < STALL_LIMIT, f"loop held {stalls.longest:.3f} s"
            assert not conn.is_up
            assert isinstance(conn.close_error, aiomemif.RemoteProtocolError)
            assert "eventfd" in str(conn.close_reason)
            reason = await link.peer.expect_disconnect()
            assert "eventfd" in reason
    finally:
        shared.close()


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


# ------------------------------------------------- 2. the watchdog spares honest peers
def test_watchdog_leaves_a_slow_honest_syscall_alone() -> None:
    """A loop thread preempted (or waiting for the GIL) inside a signal looks stuck for a
    while; with O_NONBLOCK set and the counter not full it cannot be blocked in the kernel,
    so the watchdog must not take the peer for an attacker (that would end honest links)."""
    efd = EventFd()
    try:
        efd.writing = True
        efd.ops += 1  # "inside the write" for five ticks
        time.sleep(5 * TICK)
        assert not efd.tampered
        set_blocking(efd.fd, True)  # now the peer has made it blockable
        time.sleep(3 * TICK)
        assert efd.tampered
        efd.ops += 1
    finally:
        efd.close()
