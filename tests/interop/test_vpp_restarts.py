"""Restarts against VPP: VPP killed and started again ten times under a reconnecting
aiomemif client, an aiomemif server restarted ten times under a VPP slave (which retries by
itself every 3 s), and ``delete interface memif`` while connected; fds, mappings and tasks
stay flat."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.leaks import memfd_mappings, open_fds
from support.vpp import VPP_IP, need_vpp, ping_vpp

import aiomemif
from aiomemif.testing.vpp import Vpp

pytestmark = [pytest.mark.vpp, pytest.mark.timeout(120)]


def _resources() -> tuple[int, int, int]:
    fds = open_fds().values()
    kinds = sum(1 for t in fds if "memfd" in t or "eventfd" in t or t.startswith("socket:"))
    return kinds, len(memfd_mappings()), len(asyncio.all_tasks())


async def _vpp_master(path: str) -> tuple[Vpp, str]:
    vpp = await Vpp(need_vpp()).start()
    sid = await vpp.create_socket(path)
    return vpp, await vpp.create_memif(sid, 0, address=f"{VPP_IP}/24")


async def test_vpp_killed_and_restarted_client_reconnects(sock_path: str) -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.05, maximum=0.2)
    vpp, name = await _vpp_master(sock_path)
    try:
        async with aiomemif.Client(sock_path, reconnect=policy) as client:
            conn = await asyncio.wait_for(client.wait_connected(), 15)
            assert await ping_vpp(conn, 2) == 2
            baseline = None
            for _ in range(10):
                await vpp.kill()  # a crash: VPP says nothing, its socket file stays behind
                err = await asyncio.wait_for(conn.wait_closed(), 10)
                assert isinstance(err, aiomemif.DisconnectedError)
                vpp, name = await _vpp_master(sock_path)
                conn = await asyncio.wait_for(client.wait_connected(), 15)
                await vpp.wait_memif(name)
                assert await ping_vpp(conn, 2) == 2
                if baseline is None:
                    baseline = _resources()
                else:
                    assert _resources() == baseline, "fds, mappings or tasks grew"
    finally:
        await vpp.stop()


async def test_server_restarted_vpp_slave_reconnects(vpp: Vpp, sock_path: str) -> None:
    """Ten server restarts under one VPP slave. The first two wait for VPP's own retry
    (every 3 s); the rest kick it with an admin down/up, which makes VPP try at once, so
    that ten cycles fit the suite's budget. Resources stay flat from the second cycle."""
    sid = await vpp.create_socket(sock_path)
    name = None
    baseline = None
    for cycle in range(10):
        async with aiomemif.serve(sock_path) as srv:
            if name is None:
                name = await vpp.create_memif(sid, 0, role="slave", address=f"{VPP_IP}/24")
            elif cycle >= 3:
                await vpp.cli(f"set interface state {name} down")
                await vpp.cli(f"set interface state {name} up")
            conn = await asyncio.wait_for(srv.accept(), 15)  # VPP retries every 3 s
            async with conn:
                await vpp.wait_memif(name)
                assert await ping_vpp(conn, 2) == 2
        assert not Path(sock_path).exists()
        iface = await vpp.wait_memif(name, connected=False)
        assert iface.remote_disc_reason is not None
        if baseline is None:
            baseline = _resources()
        else:
            assert _resources() == baseline, f"fds, mappings or tasks grew (cycle {cycle})"


@pytest.mark.parametrize("role", ["client", "server"])
async def test_delete_interface_while_connected(role: str, vpp: Vpp, sock_path: str) -> None:
    sid = await vpp.create_socket(sock_path)
    if role == "client":
        name = await vpp.create_memif(sid, 0, address=f"{VPP_IP}/24")
        conn = await aiomemif.connect(sock_path)
        srv = None
    else:
        srv = aiomemif.serve(sock_path)
        await srv.start()
        name = await vpp.create_memif(sid, 0, role="slave", address=f"{VPP_IP}/24")
        conn = await asyncio.wait_for(srv.accept(), 15)
    try:
        assert await ping_vpp(conn, 2) == 2
        await vpp.cli(f"delete interface memif {name}")
        err = await asyncio.wait_for(conn.wait_closed(), 10)
        assert isinstance(err, aiomemif.DisconnectedError)
        assert conn.closed_by_peer
        assert name not in await vpp.interfaces()
    finally:
        await conn.aclose()
        if srv is not None:
            await srv.aclose()
