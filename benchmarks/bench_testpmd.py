"""aiomemif against DPDK's ``dpdk-testpmd`` (net_memif), and the C baselines.

``macswap``: one worker process, pinned to one CPU, runs aiomemif and drives a testpmd
(``aiomemif.testing.testpmd.TestPmd``) whose forwarding lcore is on the other CPU.
Forwarding starts once the link is up and stops before it goes down. Then:

- round-trip throughput: aiomemif keeps up to ``window`` frames in flight (``send_batch_nowait``
  of ``tx_batch`` frames while the window has room, ``receive`` otherwise) and counts the
  frames that come back MAC-swapped per second (after a short warm-up);
- round-trip latency: one frame in flight, ``perf_counter_ns`` around send + receive, per
  receive mode.

``c-baseline``: two testpmd processes and no Python in the data path: a memif server in
``rxonly`` mode and a memif client in ``txonly`` mode (``--txpkts=SIZE``). The rate is what
the rxonly side's port counters grow by over a timed interval. Their forwarding lcores are
on different CPUs, or on the same CPU for the shared-core baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection as PipeEnd
from multiprocessing.context import SpawnContext

import harness
from harness import Json, Opts, Worker

import aiomemif
from aiomemif.testing.testpmd import TestPmd, find_testpmd, pmd_dir

__all__ = ["CSpec", "MacswapSpec", "available", "run_c_baseline", "run_macswap"]

DST = bytes.fromhex("020000000002")
SRC = bytes.fromhex("020000000001")
#: Seconds of round trips discarded before the throughput interval starts.
WARMUP = 0.15
#: testpmd's memory (-m, no hugepages): it touches all of it at start; 8192 mbufs need ~20.
PMD_MEMORY_MB = 256


def available() -> str | None:
    """None if testpmd with net_memif can run here, else why not."""
    if find_testpmd() is None:
        return "dpdk-testpmd not installed"
    if pmd_dir() is None:
        return "net_memif PMD (librte-net-memif) not installed"
    return None


@dataclass(frozen=True, kw_only=True)
class MacswapSpec:
    """aiomemif <-> testpmd macswap (picklable)."""

    role: str  # aiomemif's role: "client" (testpmd serves) or "server"
    sizes: tuple[int, ...] = (64,)
    duration: float = 1.0
    window: int = 512  # half the ring: DPDK's advice for chains, plenty for 64 B
    tx_batch: int = 64
    tput_mode: str = "polling"
    lat_modes: tuple[str, ...] = ("interrupt", "adaptive")
    lat_duration: float = 0.5
    cpus: tuple[int, int] = (0, 1)  # (ours, testpmd's: its forwarding and idle main lcore)
    path: str = ""


@dataclass(frozen=True, kw_only=True)
class CSpec:
    """testpmd txonly (memif client) -> testpmd rxonly (memif server) (picklable).

    The txonly side forwards on ``cpus[1]``. The rxonly side has a forwarding lcore on each
    CPU and switches between them with ``set corelist``, so one pair of processes measures
    both placements: ``separate`` (rxonly on ``cpus[0]``) and ``shared`` (on ``cpus[1]``).
    """

    runs: tuple[tuple[str, int], ...] = (("separate", 64),)  # (placement, frame size)
    interval: float = 1.0
    cpus: tuple[int, int] = (0, 1)
    path: str = ""


def frame(size: int) -> bytes:
    body = bytearray(size)
    body[0:12] = DST + SRC
    body[12:14] = b"\x88\xb5"
    for i in range(14, size):
        body[i] = i & 0xFF
    return bytes(body)


def _head(pkt: aiomemif.Packet) -> memoryview:
    return pkt if isinstance(pkt, memoryview) else pkt.segments[0]


# -- macswap ------------------------------------------------------------------------------------


async def _throughput(conn: aiomemif.Connection, spec: MacswapSpec, size: int) -> Json:
    tx, rx = conn.tx_queues[0], conn.rx_queues[0]
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
            try:
                sent += send(pkts)
            except aiomemif.WouldBlockError:
                pass
            with contextlib.suppress(aiomemif.WouldBlockError):
                batch = poll(256)
        if batch is None:
            batch = await receive(256)
        recv += len(batch)
        if _head(batch[-1])[:6] != SRC:
            bad += 1
        now = perf()
        if mark_recv < 0 and now >= t_warm:
            mark_recv, mark_t = recv, now
        if now >= t_end:
            break
    t_stop, recv_stop = perf(), recv
    async with asyncio.timeout(5):  # everything sent comes back
        while recv < sent:
            batch = await receive(256)
            recv += len(batch)
    batch.release()
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
        "ok": recv == sent and not bad,
    }


async def _latency(conn: aiomemif.Connection, spec: MacswapSpec, mode: str) -> Json:
    tx, rx = conn.tx_queues[0], conn.rx_queues[0]
    rx.set_mode(aiomemif.RxMode(mode))
    pkt = frame(64)
    samples: list[int] = []
    send, receive, ns, append = tx.send_nowait, rx.receive, time.perf_counter_ns, samples.append
    bad = 0
    t_end = time.perf_counter() + spec.lat_duration
    while True:
        a = ns()
        send(pkt)
        batch = await receive(1)
        b = ns()
        append(b - a)
        if _head(batch[0])[:6] != SRC:
            bad += 1
        if not len(samples) & 127 and time.perf_counter() > t_end:
            break
    batch.release()
    keep = samples[len(samples) // 20 :]
    return {
        "mode": mode,
        "rtt_us": harness.percentiles([s / 1000 for s in keep]),
        "round_trips": len(samples),
        "bad": bad,
        "ok": not bad,
    }


async def _measure(conn: aiomemif.Connection, pmd: TestPmd, spec: MacswapSpec) -> Json:
    await pmd.start_forwarding()
    res: Json = {"pmd_forwarding_lcores": await pmd.forwarding_lcores()}
    res["throughput"] = [await _throughput(conn, spec, size) for size in spec.sizes]
    res["latency"] = [await _latency(conn, spec, mode) for mode in spec.lat_modes]
    await pmd.stop_forwarding()  # before the link goes down
    stats = await pmd.port_stats()
    res["pmd_stats"] = {"rx_packets": stats.rx_packets, "tx_packets": stats.tx_packets}
    res["ok"] = all(r["ok"] for r in res["throughput"] + res["latency"])
    return res


async def _macswap(spec: MacswapSpec) -> Json:
    cfg = aiomemif.InterfaceConfig(interface_id=0, app_name="bench-macswap")
    # testpmd's main lcore (idle at its prompt after start-up) shares the forwarding CPU,
    # so nothing of testpmd's runs on ours.
    fwd = spec.cpus[1]
    kw: Json = {
        "socket": spec.path,
        "forward_mode": "macswap",
        "lcores": None,
        "eal_args": [f"--lcores=0@{fwd},1@{fwd}"],
        "memory_mb": PMD_MEMORY_MB,
    }
    if spec.role == "client":
        async with TestPmd(role="server", **kw) as pmd:
            async with aiomemif.connect(spec.path, cfg) as conn:
                return await _measure(conn, pmd, spec)
    async with aiomemif.serve(spec.path, [cfg], app_name="bench-macswap") as srv:
        async with TestPmd(role="client", **kw) as pmd:
            conn = await asyncio.wait_for(srv.accept(), 15)
            async with conn:
                return await _measure(conn, pmd, spec)


def macswap_worker(out: PipeEnd, opts: Opts, spec: MacswapSpec) -> None:
    harness.run_async(opts, out, lambda: _macswap(spec))


def run_macswap(
    ctx: SpawnContext, spec: MacswapSpec, *, cpu: int | None, loop: str, timeout: float
) -> Json:
    """One testpmd session: throughput per size, then latency per mode."""
    return harness.run_peer_session(
        ctx, macswap_worker, spec, cpu=cpu, loop=loop, timeout=timeout,
        failure="frames lost or not MAC-swapped",
    )  # fmt: skip


# -- C baseline ---------------------------------------------------------------------------------


async def _c_baseline(spec: CSpec) -> Json:
    c0, c1 = spec.cpus
    # rxonly: lcore 0 (main, idle at the prompt) on c1, lcore 1 on c0, lcore 2 on c1.
    rx_eal = [f"--lcores=0@{c1},1@{c0},2@{c1}"]
    tx_eal = [f"--lcores=0@{c0},1@{c1}"]  # txonly: main on c0, forwarding on c1
    corelist = {"separate": 1, "shared": 2}
    out: Json = {"rates": [], "rx_eal": rx_eal, "tx_eal": tx_eal}
    path = spec.path
    async with TestPmd(
        role="server",
        socket=path,
        forward_mode="rxonly",
        lcores=None,
        eal_args=rx_eal,
        memory_mb=PMD_MEMORY_MB,
    ) as rxp:
        first = spec.runs[0][1]
        async with TestPmd(
            role="client",
            socket=path,
            forward_mode="txonly",
            lcores=None,
            eal_args=tx_eal,
            memory_mb=PMD_MEMORY_MB,
            extra_args=[f"--txpkts={first}"],
        ) as txp:
            await txp.wait_link(True, timeout=15)
            await rxp.wait_link(True, timeout=15)
            for placement, size in spec.runs:
                await rxp.command(f"set corelist {corelist[placement]}")
                await txp.command(f"set txpkts {size}")
                await rxp.start_forwarding()
                await txp.start_forwarding()
                lcores = (await rxp.forwarding_lcores(), await txp.forwarding_lcores())
                await asyncio.sleep(WARMUP * 2)
                a0 = time.perf_counter()
                s0 = await rxp.port_stats()
                a1 = time.perf_counter()
                await asyncio.sleep(spec.interval)
                b0 = time.perf_counter()
                s1 = await rxp.port_stats()
                b1 = time.perf_counter()
                await txp.stop_forwarding()
                await rxp.stop_forwarding()
                span = (b0 + b1) / 2 - (a0 + a1) / 2
                got = s1.rx_packets - s0.rx_packets
                nbytes = s1.rx_bytes - s0.rx_bytes
                out["rates"].append(
                    {
                        "placement": placement,
                        "size": size,
                        "pps": got / span,
                        "packets": got,
                        "seconds": span,
                        "bytes_per_packet": nbytes / got if got else 0,
                        "rx_cpu": c0 if placement == "separate" else c1,
                        "tx_cpu": c1,
                        "lcores": {"rxonly": lcores[0], "txonly": lcores[1]},
                    }
                )
    out["ok"] = all(
        r["packets"] > 0 and abs(r["bytes_per_packet"] - r["size"]) < 1 for r in out["rates"]
    )
    return out


def c_worker(out: PipeEnd, opts: Opts, spec: CSpec) -> None:
    harness.run_async(opts, out, lambda: _c_baseline(spec))


def run_c_baseline(ctx: SpawnContext, spec: CSpec, *, timeout: float) -> Json:
    """Two testpmd processes; the controller process is not pinned (it only waits)."""
    opts = Opts(role="controller", cpu=None, timeout=timeout)
    results = harness.run_workers(ctx, [Worker("controller", c_worker, (opts, spec))], timeout)
    res = results["controller"]
    res["ok"], res["errors"] = harness.verdict(
        results, bool(res.get("ok")), "the rxonly side received nothing"
    )
    return res
