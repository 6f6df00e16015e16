"""Helpers for running the aiomemif command in tests: the command line, fast ping options,
checks of ping's output, running a command on the test's loop and a starved raw client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator

from .hostile import ClientMemory, RawPeer, client_handshake

AIOMEMIF = [sys.executable, "-m", "aiomemif"]
#: Hang guard: any one command of the tests ends well within this.
GUARD = 30.0


REPLY = re.compile(
    r"^64 bytes from 192\.168\.1\.1: icmp_seq=(\d+) ttl=64 time=\d+\.\d{3} ms$", re.M
)


RTT = re.compile(r"^rtt min/avg/max/mdev = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms$", re.M)


FAST = ["-i", "0.02", "-W", "2"]


def check_five_replies(out: str) -> None:
    assert [int(s) for s in REPLY.findall(out)] == [1, 2, 3, 4, 5], out
    assert "5 packets transmitted, 5 received, 0% packet loss" in out
    assert RTT.search(out), out


@contextlib.asynccontextmanager
async def starved_link(
    path: str, log2_ring_size: int = 1
) -> AsyncIterator[tuple[RawPeer, ClientMemory]]:
    """A raw client that completes a valid handshake with the server at ``path`` and then
    never offers a receive buffer (its M2S ring stays empty) nor reads anything; with its
    memory, to send from (``mem.write_packet``, ``mem.publish_s2m``)."""
    deadline = time.monotonic() + GUARD
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear"
        await asyncio.sleep(0.02)
    with ClientMemory(log2_ring_size=log2_ring_size) as mem:
        async with await RawPeer.connect(path) as peer:
            await client_handshake(peer, mem)
            yield peer, mem


@contextlib.asynccontextmanager
async def starved_client(path: str, log2_ring_size: int = 1) -> AsyncIterator[RawPeer]:
    """:func:`starved_link` without its memory."""
    async with starved_link(path, log2_ring_size) as (peer, _):
        yield peer


async def aio_run(*args: str) -> tuple[int, str, str]:
    """Run an aiomemif command on this event loop; (status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *AIOMEMIF, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), GUARD)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
