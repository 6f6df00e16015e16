"""Interop with FD.io VPP's memif plugin, both roles: VPP as master with an aiomemif client,
VPP as slave with an aiomemif server. Each test gets a VPP of its own (``vpp`` fixture:
about 0.1 s to start); without VPP these tests skip, and with ``CI=true`` they fail.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from support.vpp import OUR_IP, OUR_MAC, ROLES, VPP_IP, linked, ping_vpp, respond, vpp_ping

import aiomemif
from aiomemif import InterfaceConfig, Mode
from aiomemif.testing.vpp import Vpp

pytestmark = [pytest.mark.vpp, pytest.mark.timeout(60)]


async def _ping_both_ways(vpp: Vpp, conn: aiomemif.Connection, target: str = OUR_IP) -> None:
    assert await ping_vpp(conn, 5) == 5
    responder = asyncio.create_task(respond(conn))
    try:
        await vpp_ping(vpp, target, 1)  # the first may be spent on ARP resolution (glean)
        assert await vpp_ping(vpp, target, 5) == (5, 5)
    finally:
        responder.cancel()
        await asyncio.gather(responder, return_exceptions=True)


@pytest.mark.parametrize("role", ROLES)
async def test_arp_and_ping_both_ways_ethernet(role: str, vpp: Vpp, sock_path: str) -> None:
    async with linked(vpp, role, sock_path) as (conn, name):
        await _ping_both_ways(vpp, conn)
        neighbors = await vpp.cli("show ip neighbor")
        assert OUR_IP in neighbors and OUR_MAC in neighbors and name in neighbors
        reasons = {(e.node, e.reason): e.count for e in await vpp.errors()}
        assert reasons[("arp-reply", "ARP replies sent")] >= 1
        assert reasons[("ip4-icmp-input", "echo replies sent")] == 5
        d = conn.details()
        assert d.peer_interface_name == name
        assert d.peer_app_name.startswith("VPP ")
        iface = await vpp.memif_interface(name)
        assert (iface.remote_name, iface.remote_interface) == ("aiomemif", d.interface_name)
        counters = (await vpp.interfaces())[name]
        assert counters.rx_packets == d.tx_queues[0].packets
        assert counters.tx_packets == d.rx_queues[0].packets


@pytest.mark.parametrize("role", ROLES)
async def test_ping_both_ways_ip_mode(role: str, vpp: Vpp, sock_path: str) -> None:
    cfg = InterfaceConfig(mode=Mode.IP)
    async with linked(vpp, role, sock_path, cfg) as (conn, name):
        assert (await vpp.memif_interface(name)).mode == "ip"
        await vpp.cli(f"ip neighbor {name} {OUR_IP} 02:00:00:00:00:00")  # no ARP on an IP link
        await _ping_both_ways(vpp, conn)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("spelling", ["@", "abstract:"])
async def test_abstract_socket(role: str, spelling: str, vpp: Vpp) -> None:
    name = f"aiomemif-test-{uuid.uuid4().hex[:12]}"
    async with linked(vpp, role, spelling + name) as (conn, _):
        assert conn.details().socket_address == "@" + name
        assert f"abstract:{name}" in [s.filename for s in await vpp.memif_sockets()]
        assert await ping_vpp(conn, 3) == 3


@pytest.mark.parametrize("role", ROLES)
async def test_secret_accepted(role: str, vpp: Vpp, sock_path: str) -> None:
    cfg = InterfaceConfig(interface_id=3, secret="s3cr3t")
    async with linked(vpp, role, sock_path, cfg) as (conn, name):
        assert conn.details().secret_set and conn.interface_id == 3
        assert name.endswith("/3")
        assert await ping_vpp(conn, 3) == 3


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"secret": "wrong"}, "incorrect secret"),
        ({}, "secret required"),
        ({"secret": "abc", "interface_id": 9}, "unmatched interface id"),
        ({"secret": "abc", "mode": Mode.IP}, "mode mismatch"),
    ],
)
async def test_vpp_master_refusals_carry_its_reasons(
    kw: dict[str, object], reason: str, vpp: Vpp, sock_path: str
) -> None:
    """VPP's own words (lower case, unlike DPDK's "Incorrect secret")."""
    sid = await vpp.create_socket(sock_path)
    name = await vpp.create_memif(sid, 0, secret="abc", address=f"{VPP_IP}/24")
    with pytest.raises(aiomemif.HandshakeRefusedError) as info:
        await aiomemif.connect(sock_path, **kw)  # type: ignore[arg-type]  # settings
    assert info.value.reason == reason
    iface = await vpp.memif_interface(name)
    assert not iface.connected
    if iface.local_disc_reason is not None:  # VPP records it only for an interface it matched
        assert iface.local_disc_reason.startswith(reason)
    async with aiomemif.connect(sock_path, secret="abc") as conn:
        assert await ping_vpp(conn, 2) == 2


async def test_aiomemif_server_refuses_vpp_slave_secret(vpp: Vpp, sock_path: str) -> None:
    """A VPP slave with the wrong secret is refused; VPP shows our reason as the remote one,
    and keeps retrying by itself (every few seconds)."""
    async with aiomemif.serve(sock_path, [InterfaceConfig(secret="right")]) as srv:
        events = srv.events()
        sid = await vpp.create_socket(sock_path)
        name = await vpp.create_memif(sid, 0, role="slave", secret="wrong")
        async with asyncio.timeout(15):
            async for event in events:
                if event.kind == "refused":
                    break
        assert srv.failures[-1].reason == "Incorrect secret"
        iface = await vpp.memif_interface(name)
        assert not iface.connected
        assert iface.remote_disc_reason == "Incorrect secret"
        assert not srv.connections_by_id


@pytest.mark.parametrize("role", ROLES)
async def test_two_interfaces_on_one_socket(role: str, vpp: Vpp, sock_dir: object) -> None:
    path = f"{sock_dir}/shared.sock"
    sid = await vpp.create_socket(path)
    ids = (0, 7)
    vpp_role = "master" if role == "client" else "slave"
    if role == "client":
        names = [await vpp.create_memif(sid, i, role=vpp_role, address=f"10.0.{i}.1/24")
                 for i in ids]  # fmt: skip
        conns = [await aiomemif.connect(path, interface_id=i) for i in ids]
        srv = None
    else:
        srv = aiomemif.serve(path, [InterfaceConfig(interface_id=i) for i in ids])
        await srv.start()
        names = [await vpp.create_memif(sid, i, role=vpp_role, address=f"10.0.{i}.1/24")
                 for i in ids]  # fmt: skip
        conns = [await asyncio.wait_for(srv.accept(), 15) for _ in ids]
        conns.sort(key=lambda c: c.interface_id)
    try:
        for conn, name, i in zip(conns, names, ids, strict=True):
            await vpp.wait_memif(name)
            assert conn.interface_id == i
            assert conn.details().peer_interface_name == name
            assert await ping_vpp(conn, 3, target=f"10.0.{i}.1", src=f"10.0.{i}.2") == 3
        counters = await vpp.interfaces()
        assert [counters[n].rx_packets for n in names] == [4, 4]  # ARP + 3 echoes each
    finally:
        for conn in conns:
            await conn.aclose()
        if srv is not None:
            await srv.aclose()


@pytest.mark.parametrize("zero_copy", [True, False], ids=["zero-copy", "no-zero-copy"])
async def test_vpp_slave_copy_modes(zero_copy: bool, vpp: Vpp, sock_path: str) -> None:
    """VPP's slave is zero-copy by default: its rings in region 0, its own buffer memory in
    the regions after it; with no-zero-copy its buffers follow the rings."""
    async with linked(vpp, "server", sock_path, zero_copy=zero_copy) as (conn, name):
        iface = await vpp.memif_interface(name)
        assert iface.zero_copy == zero_copy
        regions = conn.details().regions
        assert len(regions) == iface.num_regions
        assert len(regions) >= 2 if zero_copy else len(regions) == 1
        await _ping_both_ways(vpp, conn)
