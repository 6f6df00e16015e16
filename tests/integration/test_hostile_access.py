"""Who may connect and how much they may hand us (issue 17, cases 9 and 10).

- A server checks the client's uid (``SO_PEERCRED``) and creates its socket file 0600.
- A client may hand a server at most ``max_region_bytes`` of shared memory (256 MiB by
  default: far more than VPP's or DPDK's few MiB, far less than the old 16 GiB).
- ``ReconnectPolicy.maximum`` bounds every delay, jitter included.
"""

from __future__ import annotations

import asyncio
import os
import stat

import pytest
from support.hostile import RawPeer, memfd

import aiomemif
from aiomemif import InterfaceConfig, ReconnectPolicy
from aiomemif._core.messages import Ack, AddRegion, Hello, Init


async def test_server_refuses_a_uid_not_allowed(sock_path: str) -> None:
    """Case 10: a client running as a uid outside ``allowed_uids`` is refused at accept."""
    other = os.geteuid() + 4242
    async with aiomemif.serve(sock_path, allowed_uids=[other]) as srv:
        async with await RawPeer.connect(sock_path) as peer:
            assert await peer.expect_disconnect() == "Permission denied"
        assert srv.failures[-1].reason == f"Permission denied (uid {os.geteuid()})"
        assert srv.failures[-1].interface_id is None
        assert srv.pending_handshakes == 0


@pytest.mark.parametrize("allowed", [None, "any"])
async def test_server_default_uids_let_this_user_in(sock_path: str, allowed: object) -> None:
    """Case 10: by default the server's own uid (and root) may connect; ``"any"`` lets
    everyone in."""
    async with aiomemif.serve(sock_path, allowed_uids=allowed) as srv:  # type: ignore[arg-type]
        async with aiomemif.connect(sock_path) as client:
            assert client.is_up
        assert not srv.failures


async def test_socket_file_is_owner_only_whatever_the_umask(sock_path: str) -> None:
    """Case 10: the socket file is created 0600 (never wider, even for an instant under a
    permissive umask); ``socket_mode`` chooses another mode."""
    old = os.umask(0)
    try:
        async with aiomemif.serve(sock_path):
            assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        async with aiomemif.serve(sock_path, socket_mode=0o660):
            assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660
    finally:
        os.umask(old)


async def test_default_region_limit_refuses_a_huge_region(sock_path: str) -> None:
    """Case 10: a client announcing a 1 GiB region is refused under the default limit."""
    assert InterfaceConfig().max_region_bytes == 256 << 20
    fd = memfd(1 << 30)  # sparse: costs nothing until touched
    try:
        async with aiomemif.serve(sock_path) as srv:
            async with await RawPeer.connect(sock_path) as peer:
                await peer.expect(Hello)
                peer.send(Init(name="greedy"))
                await peer.expect(Ack)
                peer.send(AddRegion(0, 1 << 30), [fd])
                reason = await peer.expect_disconnect()
            await asyncio.sleep(0)
            assert srv.failures[-1].reason == reason
    finally:
        os.close(fd)


async def test_reconnect_delay_never_exceeds_maximum() -> None:
    """Case 9: jitter used to push capped delays up to 10% over ``maximum``; now capped
    delays spread below it instead."""
    policy = ReconnectPolicy()
    delays = [policy.delay(n) for n in range(1, 12) for _ in range(500)]
    assert max(delays) <= policy.maximum
    capped = [policy.delay(10) for _ in range(500)]
    assert min(capped) >= policy.maximum * (1 - policy.jitter)
    assert len(set(capped)) > 100  # still spread out
    with pytest.raises(aiomemif.ConfigurationError):
        ReconnectPolicy(initial=5.0, maximum=3.0)
