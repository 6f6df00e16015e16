"""Capture the control messages dpdk-testpmd sends as a memif server (run once, by hand).

Usage, from the repository root::

    python tests/data/capture_testpmd.py [--out DIR] [--force]

Starts ``dpdk-testpmd`` (through :class:`aiomemif.testing.testpmd.TestPmd`) with one
``net_memif`` port in the server role on a socket file in a fresh temporary directory, plays
raw memif clients against it (:mod:`hostile`, nothing from aiomemif's own channel or
handshake code) and writes every datagram testpmd sends back, byte for byte as received, to
``DIR/testpmd_<name>.bin`` (default ``DIR``: this file's directory).

Captured: HELLO, ACK (answer to a valid INIT), CONNECTED (answer to a complete, valid
handshake) and one DISCONNECT per rejection below. A second testpmd, configured with
``secret=abc123``, provides the two secret rejections. Each rejection runs on its own fresh
connection, and the script checks that testpmd closes that connection right after its
DISCONNECT. Nothing is written unless every capture succeeded and matched its expected
message type and reason; existing files are only replaced with ``--force``.

testpmd runs without forwarding (``start(forward=False)``): the control channel does not need
it, and ``TestPmd.stop()`` is always awaited, whatever happens. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for the raw peer in support/hostile.py

from support.hostile import M2S, S2M, ClientMemory, RawPeer, raw_message  # noqa: E402

from aiomemif._core.messages import (  # noqa: E402
    Ack,
    Connect,
    Connected,
    Disconnect,
    Hello,
    Init,
    Message,
    decode_untrusted,
    encode,
)
from aiomemif._core.wire import MsgType  # noqa: E402
from aiomemif.testing.testpmd import TestPmd, TestPmdError  # noqa: E402

IFACE_ID: Final = 7
UNKNOWN_ID: Final = 107
SECRET: Final = "abc123"
APP_NAME: Final = "capture"
IF_NAME: Final = "capture-if"
MSG_SIZE: Final = 128
#: Longest wait for any single datagram (or EOF) from testpmd.
STEP: Final = 5.0
#: Bound on everything done with one testpmd, its start-up included.
PER_PMD: Final = 120.0

Prepare = Callable[[RawPeer], Awaitable[None]]


class CaptureError(RuntimeError):
    """testpmd did not send what the capture expected."""


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


async def recv_datagram(peer: RawPeer) -> bytes:
    """One datagram from testpmd, exactly as received; it must be 128 bytes with no fds."""
    got = await peer.recv_raw(STEP)
    if got is None:
        raise CaptureError("testpmd closed the connection instead of sending a message")
    data, fds = got
    _close_fds(fds)
    if fds:
        raise CaptureError(f"testpmd attached {len(fds)} fd(s) to {data[:8].hex()}")
    if len(data) != MSG_SIZE:
        raise CaptureError(f"testpmd sent a {len(data)}-byte datagram: {data.hex()}")
    return data


async def expect_eof(peer: RawPeer) -> None:
    got = await peer.recv_raw(STEP)
    if got is not None:
        _close_fds(got[1])
        raise CaptureError(f"expected EOF after DISCONNECT, got {got[0][:16].hex()}")


def decoded(data: bytes, kind: type[Message]) -> Message:
    msg = decode_untrusted(data)
    if not isinstance(msg, kind):
        raise CaptureError(f"expected {kind.__name__}, got {msg!r}")
    return msg


def valid_init(
    *, interface_id: int = IFACE_ID, version: int = 0x0200, mode: int = 0, secret: bytes = b""
) -> bytes:
    """An INIT as a well-behaved client would send it, unless a field is overridden."""
    return encode(
        Init(version=version, interface_id=interface_id, mode=mode, secret=secret, name=APP_NAME)
    )


class Capture:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hellos: list[bytes] = []
        self.notes: list[str] = []
        self.commands: list[list[str]] = []

    def keep(self, name: str, data: bytes) -> None:
        if name in self.files:
            raise CaptureError(f"captured {name} twice")
        self.files[name] = data

    async def open(self, path: str) -> RawPeer:
        """Connect and receive HELLO (every connection's HELLO is kept for comparison)."""
        peer = await RawPeer.connect(path)
        try:
            hello = await recv_datagram(peer)
            decoded(hello, Hello)
        except BaseException:
            peer.close()
            raise
        self.hellos.append(hello)
        return peer

    async def ack(self, peer: RawPeer) -> bytes:
        data = await recv_datagram(peer)
        decoded(data, Ack)
        return data

    async def reject(
        self, path: str, name: str, reason: str, prepare: Prepare, *, keep: bool = True
    ) -> None:
        """On a fresh connection: ``prepare`` misbehaves; check (and keep) the DISCONNECT.

        testpmd must close the connection right after it.
        """
        async with await self.open(path) as peer:
            await prepare(peer)
            data = await recv_datagram(peer)
            msg = decoded(data, Disconnect)
            assert isinstance(msg, Disconnect)
            if msg.reason != reason or msg.code != 0:
                raise CaptureError(f"{name}: expected code 0 {reason!r}, got {msg!r}")
            await expect_eof(peer)
        if keep:
            self.keep(f"testpmd_disconnect_{name}.bin", data)

    # -- the server without a secret ---------------------------------------------------------
    async def plain_server(self, path: str) -> None:
        pmd = TestPmd(role="server", socket=path, interface_id=IFACE_ID)
        self.commands.append(list(pmd.argv))
        try:
            async with asyncio.timeout(PER_PMD):
                await pmd.start(forward=False)
                await self._plain_server(pmd, path)
        finally:
            await pmd.stop()

    async def _plain_server(self, pmd: TestPmd, path: str) -> None:
        async def send(peer: RawPeer, data: bytes) -> None:
            peer.send_raw(data)

        await self.reject(
            path,
            "id_not_found",
            "ID not found",
            lambda p: send(p, valid_init(interface_id=UNKNOWN_ID)),
        )
        await self.reject(
            path,
            "incompatible_version",
            "Incompatible memif version",
            lambda p: send(p, valid_init(version=0x0100)),
        )
        await self.reject(
            path,
            "only_ethernet_mode",
            "Only ethernet mode supported",
            lambda p: send(p, valid_init(mode=1)),
        )
        await self.reject(
            path, "unexpected_message", "Unexpected message", lambda p: send(p, encode(Ack()))
        )
        await self.reject(
            path,
            "invalid_message_size",
            "Invalid message size",
            lambda p: send(p, valid_init()[:64]),
        )
        # Sent first, an unknown type is answered "Unexpected message" (the connection is
        # not bound yet): checked, not kept. After a valid INIT it is "Unknown message type".
        await self.reject(
            path,
            "type9_first",
            "Unexpected message",
            lambda p: send(p, raw_message(9)),
            keep=False,
        )
        self.notes.append("type 9 as the first message: DISCONNECT 'Unexpected message'")

        async def type9_after_init(peer: RawPeer) -> None:
            peer.send_raw(valid_init())
            await self.ack(peer)
            peer.send_raw(raw_message(9))

        await self.reject(path, "unknown_message_type", "Unknown message type", type9_after_init)

        async def region_without_fd(peer: RawPeer) -> None:
            peer.send_raw(valid_init())
            await self.ack(peer)
            with ClientMemory(log2_ring_size=10, buffer_size=2048) as mem:
                peer.send(mem.add_region())  # no fd attached

        await self.reject(path, "missing_region_fd", "Missing region fd", region_without_fd)

        async def ring_without_fd(peer: RawPeer) -> None:
            peer.send_raw(valid_init())
            await self.ack(peer)
            with ClientMemory(log2_ring_size=10, buffer_size=2048) as mem:
                peer.send(mem.add_region(), [mem.fd])
                await self.ack(peer)
                peer.send(mem.add_ring(S2M, 0))  # no eventfd attached

        await self.reject(path, "missing_interrupt_fd", "Missing interrupt fd", ring_without_fd)

        # A complete, valid handshake (DPDK's own copy-mode layout: 1 + 1 rings of 1024
        # slots, 2048-byte buffers), kept open while a second client asks for the same id.
        with ClientMemory(log2_ring_size=10, buffer_size=2048) as mem:
            async with await self.open(path) as first:
                first.send_raw(valid_init())
                self.keep("testpmd_ack.bin", await self.ack(first))
                first.send(mem.add_region(), [mem.fd])
                await self.ack(first)
                for ring_type, index in ((S2M, 0), (M2S, 0)):
                    first.send(mem.add_ring(ring_type, index), [mem.efd(ring_type, index)])
                    await self.ack(first)
                first.send(Connect(IF_NAME))
                connected = await recv_datagram(first)
                decoded(connected, Connected)
                self.keep("testpmd_connected.bin", connected)
                await pmd.wait_link(up=True, timeout=STEP)

                async def second_init(peer: RawPeer) -> None:
                    peer.send_raw(valid_init())

                await self.reject(path, "already_connected", "Already connected", second_init)
                try:  # the first connection must be undisturbed
                    got = await first.recv_raw(0.5)
                except TimeoutError:
                    pass
                else:
                    if got is not None:
                        _close_fds(got[1])
                    raise CaptureError(f"first connection got {got!r} after the second INIT")
                if not await pmd.link_up():
                    raise CaptureError("link went down after the second INIT")
                self.notes.append("after 'Already connected' the first connection stayed up")
            await pmd.wait_link(up=False, timeout=STEP)

    # -- the server with secret=abc123 ---------------------------------------------------
    async def secret_server(self, path: str) -> None:
        pmd = TestPmd(role="server", socket=path, interface_id=IFACE_ID, secret=SECRET)
        self.commands.append(list(pmd.argv))
        try:
            async with asyncio.timeout(PER_PMD):
                await pmd.start(forward=False)

                async def send(peer: RawPeer, data: bytes) -> None:
                    peer.send_raw(data)

                await self.reject(
                    path,
                    "incorrect_secret",
                    "Incorrect secret",
                    lambda p: send(p, valid_init(secret=b"wrong")),
                )
                await self.reject(
                    path,
                    "secret_required",
                    "Secret required",
                    lambda p: send(p, valid_init()),
                )
        finally:
            await pmd.stop()


def padding_report(data: bytes) -> str:
    """Where the bytes after the message's defined fields are not zero (or 'zero')."""
    ends = {
        MsgType.ACK: 2,
        MsgType.HELLO: 45,
        MsgType.CONNECTED: 34,
        MsgType.DISCONNECT: 102,
    }
    end = ends[MsgType(int.from_bytes(data[:2], "little"))]
    junk = [i for i in range(end, MSG_SIZE) if data[i]]
    return "zero" if not junk else f"NON-ZERO at offsets {junk}"


async def capture(out: Path, force: bool) -> None:
    existing = sorted(p.name for p in out.glob("testpmd_*.bin"))
    if existing and not force:
        raise CaptureError(f"{out} already holds {existing}; pass --force to replace them")
    cap = Capture()
    tmp = tempfile.mkdtemp(prefix="memif-capture-")
    try:
        await cap.plain_server(os.path.join(tmp, "plain.sock"))
        await cap.secret_server(os.path.join(tmp, "secret.sock"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    hello = cap.hellos[0]
    if any(h != hello for h in cap.hellos):
        raise CaptureError("testpmd's HELLO differed between connections")
    cap.keep("testpmd_hello.bin", hello)
    for cmd in cap.commands:
        print("command:", " ".join(cmd))
    print(f"HELLO identical on all {len(cap.hellos)} connections: {decode_untrusted(hello)!r}")
    for note in cap.notes:
        print("note:", note)

    out.mkdir(parents=True, exist_ok=True)
    for name, data in sorted(cap.files.items()):
        (out / name).write_bytes(data)
        print(f"{name}: {decode_untrusted(data)!r}; padding {padding_report(data)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write testpmd_*.bin")
    parser.add_argument("--force", action="store_true", help="replace existing captures")
    args = parser.parse_args()
    fds_before = set(os.listdir("/proc/self/fd"))
    try:
        asyncio.run(capture(args.out, args.force))
    except (CaptureError, TestPmdError, TimeoutError) as exc:
        print(f"capture failed: {exc!r}", file=sys.stderr)
        return 1
    leaked = set(os.listdir("/proc/self/fd")) - fds_before
    if leaked:
        print(f"fds left open: {sorted(leaked)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
