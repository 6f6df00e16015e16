"""Handshakes per second and memory per connection with N interfaces on one server socket.

One server process serves ``count`` interface ids (one ``InterfaceConfig`` each) on one
socket; one client process connects all of them at once (``asyncio.gather`` of
``aiomemif.connect``). The client times from the first connect to the last completed
handshake. Once every link is up, both sides read their resident set size (``VmRSS`` from
``/proc/self/status``, after ``gc.collect()``) and the shared memory mapped per connection
(``conn.details().regions``); the deltas from before the first connection, divided by
``count``, are the cost of one connection on each side. (A region's pages count in RSS only
once touched: the client writes the ring headers and descriptors, not the buffers.)
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection as PipeEnd
from multiprocessing.context import SpawnContext
from multiprocessing.synchronize import Event

import harness
from harness import Json, Opts, Worker

import aiomemif

__all__ = ["HandshakeSpec", "run_handshakes"]


@dataclass(frozen=True, kw_only=True)
class HandshakeSpec:
    count: int
    path: str = ""
    ring_size: int = 1024
    buffer_size: int = 2048


def _rss() -> int:
    gc.collect()
    return harness.rss_bytes()


def _mapped(conns: list[aiomemif.Connection]) -> int:
    return sum(r.size for c in conns for r in c.details().regions)


async def _server(spec: HandshakeSpec, ready: Event, measured: Event, done: Event) -> Json:
    cfgs = [aiomemif.InterfaceConfig(interface_id=i) for i in range(spec.count)]
    async with aiomemif.serve(spec.path, cfgs, app_name="bench-hs-server") as srv:
        before = _rss()
        ready.set()
        conns = [await srv.accept() for _ in range(spec.count)]
        after = _rss()
        mapped = _mapped(conns)
        measured.set()
        while not done.is_set():  # the client closes the links after measuring
            await asyncio.sleep(0.005)
    return {
        "rss_before": before,
        "rss_after": after,
        "rss_per_conn": (after - before) / spec.count,
        "mapped_per_conn": mapped / spec.count,
        "connections": len(conns),
        "failures": len(srv.failures),
        "ok": len(conns) == spec.count,
    }


async def _client(spec: HandshakeSpec, ready: Event, measured: Event, done: Event) -> Json:
    while not ready.is_set():
        await asyncio.sleep(0.002)
    before = _rss()

    async def one(i: int) -> aiomemif.Connection:
        return await aiomemif.connect(
            spec.path,
            interface_id=i,
            app_name="bench-hs-client",
            ring_size=spec.ring_size,
            buffer_size=spec.buffer_size,
        )

    t0 = time.perf_counter()
    conns = await asyncio.gather(*(one(i) for i in range(spec.count)))
    elapsed = time.perf_counter() - t0
    after = _rss()
    mapped = _mapped(list(conns))
    while not measured.is_set():
        await asyncio.sleep(0.002)
    for c in conns:
        await c.aclose("benchmark done")
    done.set()
    return {
        "seconds": elapsed,
        "handshakes_per_s": spec.count / elapsed if elapsed > 0 else 0.0,
        "rss_before": before,
        "rss_after": after,
        "rss_per_conn": (after - before) / spec.count,
        "mapped_per_conn": mapped / spec.count,
        "connections": len(conns),
        "ok": len(conns) == spec.count,
    }


def handshake_worker(
    out: PipeEnd, opts: Opts, spec: HandshakeSpec, side: str, events: tuple[Event, Event, Event]
) -> None:
    body = _server if side == "server" else _client
    harness.run_async(opts, out, lambda: body(spec, *events))


def run_handshakes(
    ctx: SpawnContext,
    spec: HandshakeSpec,
    *,
    loop: str,
    pins: tuple[int | None, int | None],
    timeout: float,
) -> Json:
    """``pins``: the server's and the client's CPUs."""
    events = (ctx.Event(), ctx.Event(), ctx.Event())
    workers = [
        Worker(
            side,
            handshake_worker,
            (Opts(role=side, cpu=cpu, timeout=timeout, loop=loop), spec, side, events),
        )
        for side, cpu in (("server", pins[0]), ("client", pins[1]))
    ]
    results = harness.run_workers(ctx, workers, timeout)
    ok, errors = harness.verdict(
        results, all(r.get("ok") for r in results.values()), "not every interface connected"
    )
    return {
        "ok": ok,
        "errors": errors,
        "handshakes_per_s": results["client"].get("handshakes_per_s", 0.0) if ok else 0.0,
        "server": results["server"],
        "client": results["client"],
    }
