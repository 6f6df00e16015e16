"""Every program in examples/ runs as a subprocess against an aiomemif peer in the test.

Each example gets its socket path from argv and a bound (``--count``) so that it exits by
itself; the test checks the traffic and the exit status. A second test of each example
gives it no bound: the peer closes the link normally (DISCONNECT) instead, and the example
must end cleanly (exit 0, nothing on stderr, the end not reported as a failure). The
example runs on the same kind of loop as the test (asyncio, or uvloop through the event
loop policy) and imports this checkout's aiomemif. A subprocess that outlives its test is
killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import uvloop

import aiomemif

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DEADLINE = 20.0  # seconds any one example may take


def plugin_option() -> list[str]:
    """Load the pytest plugin by its entry-point name once installed, else by module."""
    if entry_points(group="pytest11", name="aiomemif"):
        return ["-p", "aiomemif"]
    return ["-p", "aiomemif.testing.plugin"]


class Example:
    """A running example program."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out = self.err = ""
        self._finished = False

    async def finish(self, timeout: float = DEADLINE) -> int:
        """Wait for the program to exit by itself; return its exit status."""
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        self._finished = True
        self.out, self.err = out.decode(), err.decode()
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def _reap(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        if not self._finished:
            await self.proc.communicate()


#: Runs the script in argv[1] as __main__ with uvloop as asyncio's event loop.
ON_UVLOOP = (
    "import asyncio, runpy, sys, uvloop; "
    "asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@contextlib.asynccontextmanager
async def example(name: str, *args: str) -> AsyncIterator[Example]:
    script = str(EXAMPLES / name)
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    cmd = [sys.executable, "-c", ON_UVLOOP, script] if on_uvloop else [sys.executable, script]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's aiomemif, not another
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    ex = Example(proc)
    try:
        yield ex
    finally:
        await ex._reap()


async def connect_when_listening(ex: Example, path: str) -> aiomemif.Connection:
    """Connect to an example acting as server, retrying until it listens."""
    async with asyncio.timeout(DEADLINE):
        while True:
            try:
                return await aiomemif.connect(path)
            except aiomemif.MemifOSError:
                if ex.proc.returncode is not None:
                    await ex.finish()
                    pytest.fail(f"example exited with {ex.proc.returncode}: {ex.err}")
                await asyncio.sleep(0.02)


async def receive(rx: aiomemif.RxQueue, count: int) -> list[bytes]:
    """Copy ``count`` packets out of ``rx``, releasing every batch at once."""
    got: list[bytes] = []
    async with asyncio.timeout(DEADLINE):
        while len(got) < count:
            with await rx.receive() as batch:
                got.extend(bytes(p) for p in batch)
    return got


async def finish_cleanly(ex: Example) -> None:
    """The example ended by itself after its peer closed normally: exit status 0, nothing on
    stderr (no traceback, no warning), and no "link down" report (that is for failures)."""
    status = await ex.finish()
    assert (status, ex.err) == (0, ""), f"exit {status}\n{ex.out}\n{ex.err}"
    assert "link down" not in ex.out, ex.out


def payloads(count: int, tag: int = 0) -> list[bytes]:
    """Distinct packets of varied sizes, some larger than one 2048-byte buffer (chains)."""
    sizes = (60, 1500, 64, 3000, 333, 9000)
    return [(struct.pack("!HI", tag, i) * 2000)[: sizes[i % len(sizes)]] for i in range(count)]


# -- reflector --------------------------------------------------------------------------


async def test_reflector_as_server_sends_everything_back(sock_path: str) -> None:
    sent = payloads(300)
    args = ("--socket", sock_path, "--role", "server", "--count", "300")
    async with example("reflector.py", *args) as ex:
        async with await connect_when_listening(ex, sock_path) as conn:
            await conn.tx_queues[0].send_batch(sent)
            assert await receive(conn.rx_queues[0], 300) == sent
        assert await ex.finish() == 0, ex.err
    assert "copying" in ex.out
    assert "reflected 300 packets (0 without copying)" in ex.out


async def test_reflector_as_client_forwards_zero_copy(sock_path: str) -> None:
    sent = payloads(300, tag=1)
    async with aiomemif.serve(sock_path) as server:
        args = ("--socket", sock_path, "--count", "300")
        async with example("reflector.py", *args) as ex:
            async with await asyncio.wait_for(server.accept(), DEADLINE) as conn:
                assert conn.peer_app_name == "reflector"
                await conn.tx_queues[0].send_batch(sent)
                assert await receive(conn.rx_queues[0], 300) == sent
                assert await ex.finish() == 0, ex.err
    assert "zero-copy forwarding" in ex.out
    assert "reflected 300 packets (300 without copying)" in ex.out


async def test_reflector_as_client_with_a_slow_reader(sock_path: str) -> None:
    # Its transmit ring fills up: the reflector copies what it cannot forward, in order.
    count = 4000
    sent = [struct.pack("!I", i) * 16 for i in range(count)]
    async with aiomemif.serve(sock_path) as server:
        args = ("--socket", sock_path, "--count", str(count))
        async with example("reflector.py", *args) as ex:
            async with await asyncio.wait_for(server.accept(), DEADLINE) as conn:
                sender = asyncio.create_task(conn.tx_queues[0].send_batch(sent))
                got: list[bytes] = []
                async with asyncio.timeout(DEADLINE):
                    while len(got) < count:
                        await asyncio.sleep(0.001)
                        with await conn.rx_queues[0].receive(max_packets=16) as batch:
                            got.extend(bytes(p) for p in batch)
                await sender
                assert got == sent
                assert await ex.finish() == 0, ex.err
    assert f"reflected {count} packets" in ex.out


@pytest.mark.parametrize("role", ["server", "client"])
async def test_reflector_ends_cleanly_when_the_peer_closes(sock_path: str, role: str) -> None:
    sent = payloads(50, tag=2)
    async with contextlib.AsyncExitStack() as stack:
        if role == "client":  # the example connects to us: listen first
            server = await stack.enter_async_context(aiomemif.serve(sock_path))
        ex = await stack.enter_async_context(
            example("reflector.py", "--socket", sock_path, "--role", role)
        )
        if role == "client":
            conn = await asyncio.wait_for(server.accept(), DEADLINE)
        else:
            conn = await connect_when_listening(ex, sock_path)
        async with conn:
            await conn.tx_queues[0].send_batch(sent)
            assert await receive(conn.rx_queues[0], len(sent)) == sent
            await conn.aclose("test done")
        await finish_cleanly(ex)
    assert f"reflected {len(sent)} packets" in ex.out


# -- icmp_responder ---------------------------------------------------------------------

OUR_MAC, THEIR_MAC = bytes.fromhex("020000000009"), bytes.fromhex("02fe00000001")
OUR_IP, THEIR_IP = socket.inet_aton("10.9.0.1"), socket.inet_aton("10.9.0.2")


def inet_checksum(data: bytes) -> int:
    """RFC 1071 checksum, written independently of the example's."""
    if len(data) & 1:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += int.from_bytes(data[i : i + 2], "big")
        total = (total & 0xFFFF) + (total >> 16)
    return 0xFFFF - total


def arp_request(target_ip: bytes) -> bytes:
    eth = b"\xff" * 6 + OUR_MAC + b"\x08\x06"
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + OUR_MAC + OUR_IP + bytes(6) + target_ip
    return (eth + arp).ljust(60, b"\0")


def echo_request(ident: int, seq: int, data: bytes) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data
    icmp = icmp[:2] + inet_checksum(icmp).to_bytes(2, "big") + icmp[4:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 7, 0x4000, 64, 1, 0, OUR_IP, THEIR_IP
    )
    ip = ip[:10] + inet_checksum(ip).to_bytes(2, "big") + ip[12:]
    return THEIR_MAC + OUR_MAC + b"\x08\x00" + ip + icmp


def check_echo_reply(frame: bytes, ident: int, seq: int, data: bytes) -> None:
    assert frame[:14] == OUR_MAC + THEIR_MAC + b"\x08\x00"
    ip = frame[14:34]
    version_ihl, _tos, total, _id, _frag, ttl, proto, _csum, src, dst = struct.unpack(
        "!BBHHHBBH4s4s", ip
    )
    assert (version_ihl, total, proto, src, dst) == (0x45, 28 + len(data), 1, THEIR_IP, OUR_IP)
    assert ttl > 0
    assert inet_checksum(ip) == 0, "bad IPv4 header checksum"
    icmp = frame[34 : 14 + total]
    assert inet_checksum(icmp) == 0, "bad ICMP checksum"
    assert struct.unpack_from("!BBxxHH", icmp) == (0, 0, ident, seq)
    assert icmp[8:] == data


async def test_icmp_responder_answers_arp_and_ping(sock_path: str) -> None:
    requests = [
        bytes(60),  # not ARP, not IPv4: ignored
        arp_request(socket.inet_aton("10.9.0.77")),  # somebody else's address: ignored
        arp_request(THEIR_IP),
        echo_request(0x1234, 1, bytes(range(56))),
        echo_request(0x1234, 2, b"odd length payload!"),  # 19 bytes: checksum padding
    ]
    async with aiomemif.serve(sock_path) as server:
        args = ("--socket", sock_path, "--ip", "10.9.0.2", "--mac", "02:fe:00:00:00:01")
        async with example("icmp_responder.py", *args, "--count", "3") as ex:
            async with await asyncio.wait_for(server.accept(), DEADLINE) as conn:
                await conn.tx_queues[0].send_batch(requests)
                arp, ping1, ping2 = await receive(conn.rx_queues[0], 3)
                assert await ex.finish() == 0, ex.err
    assert arp[:14] == OUR_MAC + THEIR_MAC + b"\x08\x06"
    assert arp[14:42] == (
        struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + THEIR_MAC + THEIR_IP + OUR_MAC + OUR_IP
    )
    check_echo_reply(ping1, 0x1234, 1, bytes(range(56)))
    check_echo_reply(ping2, 0x1234, 2, b"odd length payload!")
    assert "answered 3 packets" in ex.out


@pytest.mark.parametrize("role", ["server", "client"])
async def test_icmp_responder_ends_cleanly_when_the_peer_closes(sock_path: str, role: str) -> None:
    args = ("--socket", sock_path, "--role", role, "--ip", "10.9.0.2")
    async with contextlib.AsyncExitStack() as stack:
        if role == "client":
            server = await stack.enter_async_context(aiomemif.serve(sock_path))
        ex = await stack.enter_async_context(example("icmp_responder.py", *args))
        if role == "client":
            conn = await asyncio.wait_for(server.accept(), DEADLINE)
        else:
            conn = await connect_when_listening(ex, sock_path)
        async with conn:
            await conn.tx_queues[0].send_batch([arp_request(THEIR_IP), echo_request(7, 1, b"hi")])
            _arp, ping = await receive(conn.rx_queues[0], 2)
            check_echo_reply(ping, 7, 1, b"hi")
            await conn.aclose("test done")
        await finish_cleanly(ex)
    assert "answered 2 packets" in ex.out


# -- xconnect ---------------------------------------------------------------------------


@pytest.mark.parametrize("role_b", ["client", "server"])
async def test_xconnect_crosses_both_ways(sock_dir: Path, role_b: str) -> None:
    path_a, path_b = str(sock_dir / "a.sock"), str(sock_dir / "b.sock")
    a_to_b, b_to_a = payloads(200, tag=0xA), payloads(150, tag=0xB)
    args = ["--socket-a", path_a, "--socket-b", path_b, "--role-b", role_b, "--count", "350"]
    async with contextlib.AsyncExitStack() as stack:
        server_a = await stack.enter_async_context(aiomemif.serve(path_a))
        if role_b == "client":
            server_b = await stack.enter_async_context(aiomemif.serve(path_b))
        ex = await stack.enter_async_context(example("xconnect.py", *args))
        a = await stack.enter_async_context(await asyncio.wait_for(server_a.accept(), DEADLINE))
        if role_b == "client":
            b = await asyncio.wait_for(server_b.accept(), DEADLINE)
        else:
            b = await connect_when_listening(ex, path_b)
        await stack.enter_async_context(b)
        await asyncio.gather(a.tx_queues[0].send_batch(a_to_b), b.tx_queues[0].send_batch(b_to_a))
        got_b, got_a = await asyncio.gather(
            receive(b.rx_queues[0], len(a_to_b)), receive(a.rx_queues[0], len(b_to_a))
        )
        assert got_b == a_to_b
        assert got_a == b_to_a
        assert await ex.finish() == 0, ex.err
    assert "a->b 200 packets, b->a 150 packets" in ex.out


@pytest.mark.parametrize("role_b", ["client", "server"])
async def test_xconnect_ends_cleanly_when_a_peer_closes(sock_dir: Path, role_b: str) -> None:
    # A's peer closes normally: the example closes B as well (B's peer sees DISCONNECT).
    path_a, path_b = str(sock_dir / "a.sock"), str(sock_dir / "b.sock")
    a_to_b, b_to_a = payloads(20, tag=0xA), payloads(10, tag=0xB)
    args = ["--socket-a", path_a, "--socket-b", path_b, "--role-b", role_b]
    async with contextlib.AsyncExitStack() as stack:
        server_a = await stack.enter_async_context(aiomemif.serve(path_a))
        if role_b == "client":
            server_b = await stack.enter_async_context(aiomemif.serve(path_b))
        ex = await stack.enter_async_context(example("xconnect.py", *args))
        a = await stack.enter_async_context(await asyncio.wait_for(server_a.accept(), DEADLINE))
        if role_b == "client":
            b = await asyncio.wait_for(server_b.accept(), DEADLINE)
        else:
            b = await connect_when_listening(ex, path_b)
        await stack.enter_async_context(b)
        await asyncio.gather(a.tx_queues[0].send_batch(a_to_b), b.tx_queues[0].send_batch(b_to_a))
        got_b, got_a = await asyncio.gather(
            receive(b.rx_queues[0], len(a_to_b)), receive(a.rx_queues[0], len(b_to_a))
        )
        assert (got_b, got_a) == (a_to_b, b_to_a)
        await a.aclose("test done")
        await asyncio.wait_for(b.wait_closed(), DEADLINE)
        assert b.closed_by_peer and b.closed_normally
        await finish_cleanly(ex)
    assert "a->b 20 packets, b->a 10 packets" in ex.out


# -- zero_copy_gen ----------------------------------------------------------------------


@pytest.mark.parametrize(("role", "size"), [("client", 100), ("server", 3000)])
async def test_zero_copy_gen_frames_counted(sock_path: str, role: str, size: int) -> None:
    count = 1000
    args = ("--socket", sock_path, "--role", role, "--count", str(count), "--size", str(size))
    async with contextlib.AsyncExitStack() as stack:
        if role == "client":  # the example connects to us: listen first
            server = await stack.enter_async_context(aiomemif.serve(sock_path))
        ex = await stack.enter_async_context(example("zero_copy_gen.py", *args))
        if role == "client":
            conn = await asyncio.wait_for(server.accept(), DEADLINE)
        else:
            conn = await connect_when_listening(ex, sock_path)
        await stack.enter_async_context(conn)
        frames = await receive(conn.rx_queues[0], count)
        assert await ex.finish() == 0, ex.err
    src = bytes.fromhex("02fe00000002")
    for seq, frame in enumerate(frames):
        assert len(frame) == size
        assert frame[:22] == b"\xff" * 6 + src + struct.pack("!HQ", 0x88B5, seq)
        assert frame[22:] == bytes(size - 22)
    assert f"sent {count} packets of {size} bytes" in ex.out
    assert "received 0 packets (dropped)" in ex.out


@pytest.mark.parametrize("role", ["client", "server"])
async def test_zero_copy_gen_ends_cleanly_when_the_peer_closes(sock_path: str, role: str) -> None:
    # More frames than the peer takes: it closes the link in the middle of the stream.
    args = ("--socket", sock_path, "--role", role, "--count", str(10**9))
    async with contextlib.AsyncExitStack() as stack:
        if role == "client":
            server = await stack.enter_async_context(aiomemif.serve(sock_path))
        ex = await stack.enter_async_context(example("zero_copy_gen.py", *args))
        if role == "client":
            conn = await asyncio.wait_for(server.accept(), DEADLINE)
        else:
            conn = await connect_when_listening(ex, sock_path)
        async with conn:
            frames = await receive(conn.rx_queues[0], 500)
            await conn.aclose("test done")
        await finish_cleanly(ex)
    assert [struct.unpack_from("!Q", f, 14)[0] for f in frames[:500]] == list(range(500))
    assert "peer closed the link after" in ex.out
    assert "test done" in ex.out


# -- test_my_handler --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "strict"])
def test_my_handler_example_passes(mode: str) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *plugin_option(),
            "-p",
            "no:cacheprovider",
            "-o",
            f"asyncio_mode={mode}",
            str(EXAMPLES / "test_my_handler.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 passed" in out.stdout
