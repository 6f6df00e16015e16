"""Round-trip latency: aiomemif ping-pong, and the raw floors it is compared with.

All cases run two processes on different CPUs with exactly one packet in flight; the pinger
times every round trip with ``time.perf_counter_ns`` and reports percentiles in
microseconds (the first ``WARMUP`` fraction of round trips is discarded).

- ``memif``: an aiomemif client (pinger) sends one 64-byte packet and awaits it back from
  an aiomemif server (ponger) that sends every received batch back with ``send_batch``.
  Both sides' receive queues use the same ``RxMode`` (interrupt, polling or adaptive).
- ``eventfd`` (the interrupt-mode floor, no aiomemif): on the same event loop as the memif
  case, each side has ``add_reader`` on its eventfd; the callback drains it with one
  ``read`` and resolves the future its task awaits, and the task writes the other
  side's eventfd. Nothing else: no ring, no payload, no guard against a hostile peer.
- ``busypoll`` (the polling/adaptive floor, no aiomemif): on the same event loop, each side's
  task spins on a head word in a shared ``mmap`` and yields as aiomemif's spin does (it holds
  the loop for at most one 50 µs spin slice, then ``await asyncio.sleep(0)``); a message is
  a 64-byte payload copied into the other side's slot plus one length word, then the head
  word is bumped: a minimal memif ring without descriptors or checks.
- ``eventfd-sync`` and ``busypoll-sync``: the same two without an event loop (blocking
  ``read``; a bare spin loop), for reference: the loop's own share is the difference.

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
from aiomemif._aio.rx_queue import _SPIN_SLICE

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

    kind: str  # "memif", "eventfd", "busypoll", "eventfd-sync" or "busypoll-sync"
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
#
# The floors the targets compare with run on the same event loop as the aiomemif case and do
# the least a receiver on that loop can do: "eventfd" is add_reader on an eventfd each way
# (the callback drains it with one read and resolves the future the waiting task awaits, the
# task then writes the other eventfd), "busypoll" spins on a shared-memory word in a task,
# holding the loop for at most one spin slice before ``await asyncio.sleep(0)``, as
# aiomemif's polling and adaptive receive does. The "-sync" floors do the same without an
# event loop (blocking read; a bare spin loop): what the loop itself costs is the difference.


def _fds_from_ponger(sock: socket.socket) -> tuple[int, int, int]:
    _msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 3)
    ping, pong, mfd = fds
    return ping, pong, mfd


def _fds_for_pinger(sock: socket.socket, *, blocking: bool) -> tuple[int, int, int]:
    flags = os.EFD_CLOEXEC if blocking else os.EFD_NONBLOCK | os.EFD_CLOEXEC
    ping, pong = os.eventfd(0, flags), os.eventfd(0, flags)
    mfd = os.memfd_create("rtt-busypoll")
    os.ftruncate(mfd, mmap.PAGESIZE)
    socket.send_fds(sock, [b"fds"], [ping, pong, mfd])
    return ping, pong, mfd


class _Shared:
    """The busy-poll page: a 64-byte payload slot, a length word and a head word each way."""

    def __init__(self, mfd: int) -> None:
        self.mem = mmap.mmap(mfd, mmap.PAGESIZE)
        self.view = memoryview(self.mem)
        self.words = self.view.cast("I")

    def close(self) -> None:
        self.words.release()
        self.view.release()
        self.mem.close()


class _EventFdWaiter:
    """``add_reader`` on one eventfd: the callback drains it (one read) and resolves the
    future a task awaits in :meth:`wait`; the value read is what :meth:`wait` returns."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._fut: asyncio.Future[bytes] | None = None
        self._early: bytes | None = None
        loop.add_reader(fd, self._ready)

    def _ready(self) -> None:
        try:
            msg = os.read(self._fd, 8)
        except BlockingIOError:
            return
        fut = self._fut
        if fut is None or fut.done():
            self._early = msg
        else:
            fut.set_result(msg)

    async def wait(self) -> bytes:
        if self._early is not None:
            msg, self._early = self._early, None
            return msg
        fut: asyncio.Future[bytes] = self._loop.create_future()
        self._fut = fut
        try:
            return await fut
        finally:
            self._fut = None

    def close(self) -> None:
        self._loop.remove_reader(self._fd)


async def _spin(words: memoryview, index: int, seq: int) -> None:
    """Wait until ``words[index] == seq``: spin, yielding to the loop once per spin slice
    (aiomemif's ``_SPIN_SLICE``, checked against ``perf_counter`` like its spin)."""
    perf = time.perf_counter
    while True:
        end = perf() + _SPIN_SLICE
        while words[index] != seq:
            if perf() >= end:
                break
        else:
            return
        await asyncio.sleep(0)


async def _async_ponger(spec: RttSpec, sock: socket.socket) -> Json:
    loop = asyncio.get_running_loop()
    ping, pong, mfd = _fds_for_pinger(sock, blocking=False)
    shm = _Shared(mfd)
    words, view = shm.words, shm.view
    n = 0
    try:
        if spec.kind == "eventfd":
            waiter = _EventFdWaiter(loop, ping)
            try:
                while True:
                    msg = await waiter.wait()
                    os.write(pong, msg)
                    if msg == _STOP:
                        break
                    n += 1
            finally:
                waiter.close()
        else:
            seq = 0
            src, dst = _PING_DATA, _PONG_DATA
            while True:
                seq = (seq + 1) & 0xFFFFFFFF
                await _spin(words, _PING_HEAD, seq)
                length = words[_PING_LEN]
                if not length:
                    break
                view[dst : dst + length] = view[src : src + length]
                words[_PONG_LEN] = length
                words[_PONG_HEAD] = seq
                n += 1
    finally:
        shm.close()
        for fd in (ping, pong, mfd):
            os.close(fd)
    return {"echoed": n, "ok": True}


async def _async_pinger(spec: RttSpec, sock: socket.socket) -> Json:
    loop = asyncio.get_running_loop()
    ping, pong, mfd = _fds_from_ponger(sock)
    shm = _Shared(mfd)
    words, view = shm.words, shm.view
    samples: list[int] = []
    append, ns = samples.append, time.perf_counter_ns
    size, limit = spec.size, spec.max_samples
    payload = bytes(range(size))
    reply = bytearray(size)
    bad = 0
    t0 = time.perf_counter()
    t_end = t0 + spec.duration
    try:
        if spec.kind == "eventfd":
            waiter = _EventFdWaiter(loop, pong)
            write, wait = os.write, waiter.wait
            try:
                while len(samples) < limit:
                    a = ns()
                    write(ping, _ONE)
                    msg = await wait()
                    b = ns()
                    append(b - a)
                    bad += msg != _ONE
                    if not len(samples) & 1023 and time.perf_counter() > t_end:
                        break
                write(ping, _STOP)
                await wait()
            finally:
                waiter.close()
        else:
            seq = 0
            src, dst = _PONG_DATA, _PING_DATA
            while len(samples) < limit:
                a = ns()
                seq = (seq + 1) & 0xFFFFFFFF
                view[dst : dst + size] = payload
                words[_PING_LEN] = size
                words[_PING_HEAD] = seq
                await _spin(words, _PONG_HEAD, seq)
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
    finally:
        shm.close()
        for fd in (ping, pong, mfd):
            os.close(fd)
    res = _summary(samples, elapsed)
    res["bad"] = bad
    res["ok"] = res["ok"] and not bad
    return res


def _sync_ponger(spec: RttSpec, sock: socket.socket) -> Json:
    ping, pong, mfd = _fds_for_pinger(sock, blocking=True)
    shm = _Shared(mfd)
    words, view = shm.words, shm.view
    n = 0
    if spec.kind == "eventfd-sync":
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
    shm.close()
    for fd in (ping, pong, mfd):
        os.close(fd)
    return {"echoed": n, "ok": True}


def _sync_pinger(spec: RttSpec, sock: socket.socket) -> Json:
    ping, pong, mfd = _fds_from_ponger(sock)
    shm = _Shared(mfd)
    words, view = shm.words, shm.view
    samples: list[int] = []
    append, ns = samples.append, time.perf_counter_ns
    size, limit = spec.size, spec.max_samples
    payload = bytes(range(size))
    reply = bytearray(size)
    bad = 0
    t0 = time.perf_counter()
    t_end = t0 + spec.duration
    if spec.kind == "eventfd-sync":
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
    shm.close()
    for fd in (ping, pong, mfd):
        os.close(fd)
    res = _summary(samples, elapsed)
    res["bad"] = bad
    res["ok"] = res["ok"] and not bad
    return res


def raw_rtt(out: PipeEnd, opts: Opts, spec: RttSpec, side: str, sock: socket.socket) -> None:
    if spec.kind.endswith("-sync"):
        sync = _sync_ponger if side == "ponger" else _sync_pinger
        harness.run_sync(opts, out, lambda: sync(spec, sock))
        return
    body = _async_ponger if side == "ponger" else _async_pinger
    harness.run_async(opts, out, lambda: body(spec, sock))


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
