"""Round-trip latency: aiomemif ping-pong, and the raw floors it is compared with.

All three run two processes on different CPUs with exactly one packet in flight; the pinger
times every round trip with ``time.perf_counter_ns`` and reports percentiles in
microseconds (the first ``WARMUP`` fraction of round trips is discarded).

- ``memif``: an aiomemif client (pinger) sends one 64-byte packet and awaits it back from
  an aiomemif server (ponger) that sends every received batch back with ``send_batch``.
  Both sides' receive queues use the same ``RxMode`` (interrupt, polling or adaptive).
- ``eventfd`` (raw floor, no aiomemif, no event loop): blocking ``os.write``/``os.read`` on
  a pair of eventfds, the pure cost of waking the other process and being woken.
- ``busypoll`` (raw floor, no aiomemif, no event loop): each side spins on a head counter in
  a shared ``mmap``; a message is a 64-byte payload copied into the other side's slot plus
  one length word, then the head word is bumped: a minimal memif ring in the leanest loop
  Python allows.

The raw floors get their eventfds and memfd from the ponger over a Unix socketpair
(``SCM_RIGHTS``), like memif itself.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection as PipeEnd
from multiprocessing.context import SpawnContext
from multiprocessing.synchronize import Event

import harness
from harness import Json, Opts, Worker

import aiomemif

__all__ = ["RttSpec", "run_rtt"]

#: Fraction of round trips discarded at the start.
WARMUP = 0.05
_ONE = (1).to_bytes(8, "little")
_STOP = (2).to_bytes(8, "little")
#: Busy-poll layout (32-bit word indexes and byte offsets in a 4 KiB shared page): the
#: ping slot in bytes 0..127, the pong slot in bytes 128..255, payloads at +64.
_PING_HEAD, _PING_LEN, _PING_DATA = 0, 1, 64
_PONG_HEAD, _PONG_LEN, _PONG_DATA = 32, 33, 192


@dataclass(frozen=True, kw_only=True)
class RttSpec:
    """One latency case (picklable)."""

    kind: str  # "memif", "eventfd" or "busypoll"
    duration: float
    max_samples: int = 200_000
    size: int = 64
    rx_mode: str = "interrupt"
    path: str = ""


def _summary(samples_ns: list[int], elapsed: float) -> Json:
    keep = samples_ns[int(len(samples_ns) * WARMUP) :]
    stats = harness.percentiles([s / 1000 for s in keep])  # microseconds
    return {"rtt_us": stats, "round_trips": len(samples_ns), "seconds": elapsed, "ok": bool(keep)}


# -- aiomemif ---------------------------------------------------------------------------------


async def _memif_ponger(spec: RttSpec, ready: Event) -> Json:
    mode = aiomemif.RxMode(spec.rx_mode)
    cfg = aiomemif.InterfaceConfig(interface_id=0, app_name="rtt-pong")
    async with aiomemif.serve(spec.path, [cfg], app_name="rtt-pong", rx_mode=mode) as srv:
        ready.set()
        conn = await srv.accept()
        echoed = 0
        async with conn:
            rx, tx = conn.rx_queues[0], conn.tx_queues[0]
            try:
                while True:
                    batch = await rx.receive()
                    echoed += await tx.send_batch(batch)
            except aiomemif.DisconnectedError:
                pass  # the pinger is done
        return {"echoed": echoed, "interrupt_sleeps": rx.interrupt_sleeps, "ok": True}


async def _memif_pinger(spec: RttSpec, ready: Event) -> Json:
    while not ready.is_set():
        await asyncio.sleep(0.002)
    mode = aiomemif.RxMode(spec.rx_mode)
    payload = bytearray(spec.size)
    payload[0] = 0xA5
    samples: list[int] = []
    bad = 0
    async with aiomemif.connect(spec.path, interface_id=0, app_name="rtt-ping", rx_mode=mode) as c:
        rx, tx = c.rx_queues[0], c.tx_queues[0]
        send, receive, ns, append = tx.send_nowait, rx.receive, time.perf_counter_ns, samples.append
        t0 = time.perf_counter()
        t_end = t0 + spec.duration
        limit = spec.max_samples
        while len(samples) < limit:
            a = ns()
            send(payload)
            batch = await receive(1)
            b = ns()
            append(b - a)
            if len(batch[0]) != spec.size:
                bad += 1
            if not len(samples) & 255 and time.perf_counter() > t_end:
                break
        elapsed = time.perf_counter() - t0
        res = _summary(samples, elapsed)
        res.update(bad=bad, interrupt_sleeps=rx.interrupt_sleeps)
        res["ok"] = res["ok"] and not bad
        await c.aclose("benchmark done")
    return res


def memif_rtt(out: PipeEnd, opts: Opts, spec: RttSpec, side: str, ready: Event) -> None:
    body = _memif_ponger if side == "ponger" else _memif_pinger
    harness.run_async(opts, out, lambda: body(spec, ready))


# -- raw floors -------------------------------------------------------------------------------


def _raw_ponger(spec: RttSpec, sock: socket.socket) -> Json:
    ping, pong = os.eventfd(0), os.eventfd(0)
    mfd = os.memfd_create("rtt-busypoll")
    os.ftruncate(mfd, mmap.PAGESIZE)
    socket.send_fds(sock, [b"fds"], [ping, pong, mfd])
    mem = mmap.mmap(mfd, mmap.PAGESIZE)
    view = memoryview(mem)
    words = view.cast("I")
    n = 0
    if spec.kind == "eventfd":
        read, write = os.read, os.write
        while True:
            msg = read(ping, 8)
            write(pong, msg)
            if msg == _STOP:
                break
            n += 1
    else:
        seq = 0
        src, dst = _PING_DATA, _PONG_DATA
        while True:
            seq = (seq + 1) & 0xFFFFFFFF
            while words[_PING_HEAD] != seq:
                pass
            length = words[_PING_LEN]
            if not length:
                break
            view[dst : dst + length] = view[src : src + length]
            words[_PONG_LEN] = length
            words[_PONG_HEAD] = seq
            n += 1
    del words, view
    mem.close()
    for fd in (ping, pong, mfd):
        os.close(fd)
    return {"echoed": n, "ok": True}


def _raw_pinger(spec: RttSpec, sock: socket.socket) -> Json:
    _msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 3)
    ping, pong, mfd = fds
    mem = mmap.mmap(mfd, mmap.PAGESIZE)
    view = memoryview(mem)
    words = view.cast("I")
    samples: list[int] = []
    append, ns = samples.append, time.perf_counter_ns
    size, limit = spec.size, spec.max_samples
    payload = bytes(range(size))
    reply = bytearray(size)
    bad = 0
    t0 = time.perf_counter()
    t_end = t0 + spec.duration
    if spec.kind == "eventfd":
        read, write = os.read, os.write
        while len(samples) < limit:
            a = ns()
            write(ping, _ONE)
            read(pong, 8)
            b = ns()
            append(b - a)
            if not len(samples) & 1023 and time.perf_counter() > t_end:
                break
        write(ping, _STOP)
        read(pong, 8)
    else:
        seq = 0
        src, dst = _PONG_DATA, _PING_DATA
        while len(samples) < limit:
            a = ns()
            seq = (seq + 1) & 0xFFFFFFFF
            view[dst : dst + size] = payload
            words[_PING_LEN] = size
            words[_PING_HEAD] = seq
            while words[_PONG_HEAD] != seq:
                pass
            length = words[_PONG_LEN]
            reply[:length] = view[src : src + length]
            b = ns()
            append(b - a)
            if not len(samples) & 1023 and time.perf_counter() > t_end:
                break
        bad = int(bytes(reply) != payload)
        words[_PING_LEN] = 0
        words[_PING_HEAD] = (seq + 1) & 0xFFFFFFFF
    elapsed = time.perf_counter() - t0
    del words, view
    mem.close()
    for fd in fds:
        os.close(fd)
    res = _summary(samples, elapsed)
    res["bad"] = bad
    res["ok"] = res["ok"] and not bad
    return res


def raw_rtt(out: PipeEnd, opts: Opts, spec: RttSpec, side: str, sock: socket.socket) -> None:
    body = _raw_ponger if side == "ponger" else _raw_pinger
    harness.run_sync(opts, out, lambda: body(spec, sock))


# -- in the parent ----------------------------------------------------------------------------


def run_rtt(
    ctx: SpawnContext,
    spec: RttSpec,
    *,
    loop: str,
    pins: tuple[int | None, int | None],
    timeout: float,
) -> Json:
    """One latency case; ``pins`` are the ponger's and the pinger's CPUs."""

    def opts(role: str, cpu: int | None) -> Opts:
        return Opts(role=role, cpu=cpu, timeout=timeout, loop=loop)

    if spec.kind == "memif":
        ready = ctx.Event()
        workers = [
            Worker("ponger", memif_rtt, (opts("ponger", pins[0]), spec, "ponger", ready)),
            Worker("pinger", memif_rtt, (opts("pinger", pins[1]), spec, "pinger", ready)),
        ]
    else:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        workers = [
            Worker("ponger", raw_rtt, (opts("ponger", pins[0]), spec, "ponger", a)),
            Worker("pinger", raw_rtt, (opts("pinger", pins[1]), spec, "pinger", b)),
        ]
    results = harness.run_workers(ctx, workers, timeout)
    ping = results["pinger"]
    ok, errors = harness.verdict(
        results,
        bool(ping.get("ok")) and bool(results["ponger"].get("ok")),
        f"{ping.get('bad')} bad replies",
    )
    return {
        "rtt_us": ping.get("rtt_us", {}) if ok else {},
        "round_trips": ping.get("round_trips", 0),
        "ok": ok,
        "errors": errors,
        "preempt": harness.preemptions(results),
        "pinger": ping,
        "ponger": results["ponger"],
    }
