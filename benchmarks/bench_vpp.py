"""aiomemif through FD.io VPP's L2 cross-connect.

One worker process, pinned to one CPU, runs aiomemif with two memif links to one VPP
(``aiomemif.testing.vpp.Vpp``, its main thread pinned to the other CPU): VPP interfaces
``memif1/0`` and ``memif1/1`` are cross-connected both ways (``set interface l2
xconnect``), so a frame aiomemif sends on link A comes back on link B unchanged. Roles:
``client`` (VPP masters both interfaces, aiomemif connects twice) or ``server`` (aiomemif
serves ids 0 and 1, VPP's slaves connect; VPP's default zero-copy slave mode).

- round-trip throughput: up to ``window`` frames in flight (``send_batch_nowait`` of
  ``tx_batch`` frames on A while the window has room, ``receive`` on B otherwise), frames
  per second that come back (after a short warm-up); VPP's drops and its interface
  counters are recorded next to it;
- round-trip latency: one 64 B frame in flight, per receive mode of B's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection as PipeEnd
from multiprocessing.context import SpawnContext

import harness
from harness import Json, Opts

import aiomemif
from aiomemif.testing.vpp import Vpp, find_vpp

__all__ = ["XconnectSpec", "available", "run_xconnect"]

#: Seconds of round trips discarded before the throughput interval starts.
WARMUP = 0.15
#: Frame stamp: VPP's L2 cross-connect passes frames through unchanged.
MAGIC = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x88\xb5"


def available() -> str | None:
    """None if a VPP can run here, else why not."""
    if find_vpp() is None:
        return "no VPP (set $AIOMEMIF_VPP or put vpp on PATH)"
    return None


@dataclass(frozen=True, kw_only=True)
class XconnectSpec:
    """aiomemif -> VPP xconnect -> aiomemif (picklable)."""

    role: str  # aiomemif's role: "client" (VPP masters) or "server" (VPP slaves)
    sizes: tuple[int, ...] = (64, 1500)
    duration: float = 1.0
    window: int = 256
    tx_batch: int = 32
    tput_mode: str = "polling"
    lat_modes: tuple[str, ...] = ("interrupt", "adaptive")
    lat_duration: float = 0.5
    cpus: tuple[int, int] = (0, 1)  # (ours, VPP's main thread)
    path: str = ""


def frame(size: int) -> bytes:
    body = bytearray(size)
    body[: len(MAGIC)] = MAGIC
    for i in range(len(MAGIC), size):
        body[i] = i & 0xFF
    return bytes(body)


def _head(pkt: aiomemif.Packet) -> memoryview:
    return pkt if isinstance(pkt, memoryview) else pkt.segments[0]


async def _throughput(
    a: aiomemif.Connection, b: aiomemif.Connection, spec: XconnectSpec, size: int
) -> Json:
    tx, rx = a.tx_queues[0], b.rx_queues[0]
    rx.set_mode(aiomemif.RxMode(spec.tput_mode))
    nb, window = spec.tx_batch, spec.window
    pkts = [frame(size)] * nb
    send, poll, receive = tx.send_batch_nowait, rx.receive_nowait, rx.receive
    perf = time.perf_counter
    sent = recv = bad = 0
    t0 = perf()
    t_warm, t_end = t0 + WARMUP, t0 + WARMUP + spec.duration
    mark_recv, mark_t = -1, 0.0
    while True:
        batch = None
        if sent - recv <= window - nb:
            with contextlib.suppress(aiomemif.WouldBlockError):
                sent += send(pkts)
            with contextlib.suppress(aiomemif.WouldBlockError):
                batch = poll(256)
        if batch is None:
            try:
                async with asyncio.timeout(1):  # VPP drops what it cannot place
                    batch = await receive(256)
            except TimeoutError:
                sent = recv  # the rest was dropped: open the window again
                continue
        recv += len(batch)
        if _head(batch[-1])[:14] != MAGIC:
            bad += 1
        now = perf()
        if mark_recv < 0 and now >= t_warm:
            mark_recv, mark_t = recv, now
        if now >= t_end:
            break
    t_stop, recv_stop = perf(), recv
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1):  # what is still in flight comes back
            while True:
                recv += len(await receive(256))
    span = t_stop - mark_t
    return {
        "size": size,
        "pps": (recv_stop - mark_recv) / span if span > 0 else 0.0,
        "sent": sent,
        "received": recv,
        "seconds": span,
        "bad": bad,
        "rx_mode": spec.tput_mode,
        "window": window,
        "ok": recv_stop > mark_recv and not bad,
    }


async def _latency(
    a: aiomemif.Connection, b: aiomemif.Connection, spec: XconnectSpec, mode: str
) -> Json:
    tx, rx = a.tx_queues[0], b.rx_queues[0]
    rx.set_mode(aiomemif.RxMode(mode))
    pkt = frame(64)
    samples: list[int] = []
    send, receive, ns, append = tx.send_nowait, rx.receive, time.perf_counter_ns, samples.append
    lost = bad = 0
    t_end = time.perf_counter() + spec.lat_duration
    while True:
        t_a = ns()
        send(pkt)
        try:
            async with asyncio.timeout(0.5):
                batch = await receive(1)
        except TimeoutError:
            lost += 1
            if lost > 10:
                break
            continue
        append(ns() - t_a)
        if _head(batch[0])[:14] != MAGIC:
            bad += 1
        if not len(samples) & 127 and time.perf_counter() > t_end:
            break
    keep = samples[len(samples) // 20 :]
    return {
        "mode": mode,
        "rtt_us": harness.percentiles([s / 1000 for s in keep]),
        "round_trips": len(samples),
        "lost": lost,
        "bad": bad,
        "ok": bool(samples) and not bad and lost <= 10,
    }


async def _links(vpp: Vpp, spec: XconnectSpec) -> tuple[str, str]:
    """VPP's side: a socket, two memif interfaces cross-connected both ways."""
    sid = await vpp.create_socket(spec.path)
    vpp_role = "master" if spec.role == "client" else "slave"
    names = [await vpp.create_memif(sid, i, role=vpp_role) for i in (0, 1)]
    await vpp.cli(f"set interface l2 xconnect {names[0]} {names[1]}")
    await vpp.cli(f"set interface l2 xconnect {names[1]} {names[0]}")
    return names[0], names[1]


async def _measure(
    vpp: Vpp, a: aiomemif.Connection, b: aiomemif.Connection, spec: XconnectSpec
) -> Json:
    for name in await _names(vpp):
        await vpp.wait_memif(name)
    await vpp.clear_counters()
    res: Json = {"throughput": [], "latency": []}
    for size in spec.sizes:
        res["throughput"].append(await _throughput(a, b, spec, size))
    for mode in spec.lat_modes:
        res["latency"].append(await _latency(a, b, spec, mode))
    res["vpp_errors"] = [
        {"node": e.node, "reason": e.reason, "count": e.count} for e in await vpp.errors()
    ]
    res["ok"] = all(r["ok"] for r in res["throughput"] + res["latency"])
    return res


async def _names(vpp: Vpp) -> list[str]:
    return [i.name for i in await vpp.memif()]


async def _xconnect(spec: XconnectSpec) -> Json:
    async with Vpp(main_core=spec.cpus[1], poll_sleep_usec=None) as vpp:
        res: Json = {"vpp": (await vpp.cli("show version")).strip()}
        await _links(vpp, spec)
        cfgs = [aiomemif.InterfaceConfig(interface_id=i, app_name="bench-vpp") for i in (0, 1)]
        if spec.role == "client":
            async with (
                aiomemif.connect(spec.path, cfgs[0]) as a,
                aiomemif.connect(spec.path, cfgs[1]) as b,
            ):
                res.update(await _measure(vpp, a, b, spec))
                return res
        async with aiomemif.serve(spec.path, cfgs, app_name="bench-vpp") as srv:
            async with asyncio.timeout(30):
                conns: dict[int, aiomemif.Connection] = {}
                while len(conns) < 2:
                    conn = await srv.accept()
                    conns[conn.interface_id] = conn
            async with conns[0] as a, conns[1] as b:
                res.update(await _measure(vpp, a, b, spec))
        return res


def xconnect_worker(out: PipeEnd, opts: Opts, spec: XconnectSpec) -> None:
    harness.run_async(opts, out, lambda: _xconnect(spec))


def run_xconnect(
    ctx: SpawnContext, spec: XconnectSpec, *, cpu: int | None, loop: str, timeout: float
) -> Json:
    """One VPP session: throughput per size, then latency per mode."""
    return harness.run_peer_session(
        ctx, xconnect_worker, spec, cpu=cpu, loop=loop, timeout=timeout,
        failure="frames lost or changed by VPP",
    )  # fmt: skip
