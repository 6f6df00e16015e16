"""Helpers for the VPP interop tests: finding VPP, links between aiomemif and a VPP memif
interface, an in-process ARP/ping responder and pinger, and VPP's ping output.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import aiomemif
from aiomemif import InterfaceConfig, Mode
from aiomemif.testing.vpp import Vpp, VppError, VppInstall, find_vpp
from aiomemif.tools import packets as pk

VPP_IP = "192.168.1.1"
OUR_IP = "192.168.1.2"
OUR_MAC = "02:fe:00:00:00:02"
ROLES = ["client", "server"]  # aiomemif's role; VPP takes the other one

REPO = Path(__file__).resolve().parents[2]


def locate() -> VppInstall | None:
    """``$AIOMEMIF_VPP``, else ``vpp`` on PATH, else ``../shared/vpp`` next to the repo."""
    found = find_vpp()
    if found is None and not os.environ.get("AIOMEMIF_VPP"):
        shared = REPO.parent / "shared" / "vpp"
        with contextlib.suppress(VppError):
            found = VppInstall.resolve(shared) if shared.is_dir() else None
    return found


def need_vpp() -> VppInstall:
    """The VPP to test against; skips (fails with ``CI=true``) when there is none."""
    found = locate()
    reason = None
    if found is None:
        env = os.environ.get("AIOMEMIF_VPP")
        reason = (
            f"no VPP at AIOMEMIF_VPP={env}"
            if env
            else "no VPP: set AIOMEMIF_VPP, put vpp on PATH or provide ../shared/vpp"
        )
    elif (found.tarball or found.lib_dir) and ctypes.util.find_library("unwind") is None:
        reason = "VPP needs libunwind.so.8 (apt-get install -y libunwind8)"
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; with CI=true the VPP tests must run", pytrace=False)
        pytest.skip(reason)
    assert found is not None
    return found


@asynccontextmanager
async def linked(
    vpp: Vpp,
    role: str,
    path: str,
    cfg: InterfaceConfig | None = None,
    *,
    address: str | None = f"{VPP_IP}/24",
    **memif_kw: object,
) -> AsyncIterator[tuple[aiomemif.Connection, str]]:
    """An aiomemif connection in ``role`` to a new VPP memif interface in the other role.

    Yields the connection and VPP's interface name; deletes the interface afterwards.
    """
    cfg = cfg or InterfaceConfig()
    sid = await vpp.create_socket(path)
    kw = {"secret": cfg.secret.decode() if cfg.secret else None, **memif_kw}
    if cfg.mode == Mode.IP:
        kw.setdefault("mode", "ip")
    if role == "client":
        name = await vpp.create_memif(sid, cfg.interface_id, role="master", address=address,
                                      **kw)  # type: ignore[arg-type]  # fmt: skip
        async with aiomemif.connect(path, cfg) as conn:
            await vpp.wait_memif(name)
            yield conn, name
    else:
        async with aiomemif.serve(path, [cfg]) as srv:
            name = await vpp.create_memif(sid, cfg.interface_id, role="slave", address=address,
                                          **kw)  # type: ignore[arg-type]  # fmt: skip
            conn = await asyncio.wait_for(srv.accept(), 15)
            async with conn:
                await vpp.wait_memif(name)
                yield conn, name
    await vpp.cli(f"delete interface memif {name}")
    await vpp.cli(f"delete memif socket id {sid}")


async def respond(
    conn: aiomemif.Connection, ip: str = OUR_IP, mac: str = OUR_MAC, queue: int = 0
) -> None:
    """Answer ARP and ping on one queue until cancelled (or the link goes down)."""
    rx, tx = conn.rx_queues[queue], conn.tx_queues[queue]
    ip_mode = conn.details().mode == Mode.IP
    with contextlib.suppress(aiomemif.DisconnectedError, aiomemif.ClosedResourceError):
        async for batch in rx:
            replies = []
            for p in batch:
                ans = pk.answer_ip(bytes(p), ip) if ip_mode else pk.answer_frame(bytes(p), mac, ip)
                if ans.reply is not None:
                    replies.append(ans.reply)
            batch.release()
            if replies:
                await tx.send_batch(replies)


async def ping_vpp(
    conn: aiomemif.Connection, count: int = 5, target: str = VPP_IP, src: str = OUR_IP,
    queue: int = 0, rx_queue: int | None = None,
) -> int:  # fmt: skip
    """Ping ``target`` from aiomemif (ARP first in ethernet mode) on transmit queue
    ``queue``, expecting replies on ``rx_queue`` (default: the same); the number of replies.
    Each request waits up to 5 s for its reply (a hang guard, not a measurement)."""
    rx = conn.rx_queues[queue if rx_queue is None else rx_queue]
    tx = conn.tx_queues[queue]
    ip_mode = conn.details().mode == Mode.IP
    peer_mac = b""

    async def receive_one(want: str, seq: int = 0) -> bool:
        nonlocal peer_mac
        async with asyncio.timeout(5):
            while True:
                batch = await rx.receive()
                frames = [bytes(p) for p in batch]
                batch.release()
                for f in frames:
                    if not ip_mode:
                        eth = pk.parse_ethernet(f)
                        if eth.ethertype == pk.ETHERTYPE_ARP and want == "arp":
                            reply = pk.parse_arp(eth.payload)
                            if reply.is_reply and reply.sender_ip == pk.parse_ip(target):
                                peer_mac = reply.sender_mac
                                return True
                        if eth.ethertype != pk.ETHERTYPE_IPV4:
                            continue
                        f = eth.payload
                    if want != "echo":
                        continue
                    ip = pk.parse_ipv4(f)
                    if ip.protocol == 1:
                        msg = pk.parse_icmp(ip.payload)
                        if msg.is_echo_reply and msg.seq == seq and msg.checksum_ok:
                            return True

    if not ip_mode:
        await tx.send(pk.arp_request(OUR_MAC, src, target))
        await receive_one("arp")
    replies = 0
    for seq in range(1, count + 1):
        echo = pk.ipv4(src, target, 1, pk.icmp_echo(0x4242, seq, bytes(range(56))))
        await tx.send(echo if ip_mode else pk.ethernet(peer_mac, OUR_MAC, pk.ETHERTYPE_IPV4, echo))
        with contextlib.suppress(TimeoutError):
            replies += await receive_one("echo", seq)
    return replies


_STATS = re.compile(r"Statistics: (\d+) sent, (\d+) received")


async def vpp_ping(vpp: Vpp, target: str = OUR_IP, count: int = 5) -> tuple[int, int]:
    """Run VPP's ``ping``; (sent, received) from its statistics line."""
    out = await vpp.cli(f"ping {target} repeat {count} interval 0.02")
    m = _STATS.search(out)
    assert m, out
    return int(m.group(1)), int(m.group(2))
