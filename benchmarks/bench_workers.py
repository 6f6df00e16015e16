"""Child-process entry points for ``benchmarks/run.py`` (imported by spawned processes).

Every entry point takes a :class:`WorkerSpec` and a pipe end; it pins itself to a CPU,
runs one side of one transfer on a fresh event loop under a deadline, and sends exactly one
result dict (or an ``{"error": ...}`` dict) through the pipe before exiting.

Transports:

- memif: the receiver is an aiomemif server reading ``rx_queues[0]``; the sender is an
  aiomemif client writing ``tx_queues[0]`` with ``send_batch``.
- socket: both ends of a ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair made by the parent. The
  sender calls ``sock.send`` per packet and falls back to ``loop.sock_sendall`` (which waits
  for writability) on ``EAGAIN``; the receiver drains with ``recv_into`` from an
  ``add_reader`` callback, up to ``rx_batch`` messages per wakeup.

The receiver times from its first wakeup with data to the packet that completes the count;
the packets of that first wakeup are excluded from the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import os
import resource
import socket
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection as PipeEnd
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import aiomemif

__all__ = [
    "WorkerSpec",
    "make_payload",
    "memif_receiver",
    "memif_sender",
    "socket_receiver",
    "socket_sender",
]

#: First and last byte of every payload (checked on the first packet of each batch).
HEAD_MARK = 0xA5
TAIL_MARK = 0x5A

Result = dict[str, Any]


@dataclass(frozen=True)
class WorkerSpec:
    """What one side of one case needs (picklable; sent to a spawned child)."""

    case: str
    transport: str  # "memif" or "socket"
    loop: str  # "asyncio" or "uvloop"
    size: int
    count: int
    tx_batch: int
    rx_batch: int
    cpu: int | None
    timeout: float
    ring_size: int = 1024
    buffer_size: int = 2048
    sock_buf: int = 0
    rx_mode: str = "interrupt"
    path: str = ""
    profile_path: str = ""


def make_payload(size: int) -> bytes:
    """A ``size``-byte packet whose first and last bytes carry the check marks."""
    body = bytearray(i & 0xFF for i in range(size))
    body[0] = HEAD_MARK
    body[-1] = TAIL_MARK
    return bytes(body)


def _pin(cpu: int | None) -> list[int]:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    return sorted(os.sched_getaffinity(0))


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def _run(spec: WorkerSpec, out: PipeEnd, body: Callable[[], Awaitable[Result]], role: str) -> None:
    """Pin, run ``body`` on the chosen loop under the deadline, report, never raise."""
    result: Result
    profiler = cProfile.Profile() if spec.profile_path else None
    try:
        cpus = _pin(spec.cpu)

        async def guarded() -> Result:
            async with asyncio.timeout(spec.timeout):
                return await body()

        with asyncio.Runner(loop_factory=_loop_factory(spec.loop)) as runner:
            loop_name = type(runner.get_loop()).__module__
            if profiler is not None:
                profiler.enable()
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            try:
                result = runner.run(guarded())
            finally:
                if profiler is not None:
                    profiler.disable()
            r1 = resource.getrusage(resource.RUSAGE_SELF)
        result.update(role=role, cpus=cpus, pid=os.getpid(), loop_module=loop_name)
        # Whole transfer including connection set-up: CPU split and preemptions (a high
        # nivcsw means something else ran on this CPU).
        result["rusage"] = {
            "utime": r1.ru_utime - r0.ru_utime,
            "stime": r1.ru_stime - r0.ru_stime,
            "nvcsw": r1.ru_nvcsw - r0.ru_nvcsw,
            "nivcsw": r1.ru_nivcsw - r0.ru_nivcsw,
        }
    except TimeoutError:
        result = {"role": role, "error": f"{role} timed out after {spec.timeout} s"}
    except BaseException as exc:  # report anything, including KeyboardInterrupt
        detail = "".join(traceback.format_exception(exc))
        result = {"role": role, "error": f"{role} failed: {exc!r}\n{detail}"}
    if profiler is not None:
        with contextlib.suppress(OSError):
            profiler.dump_stats(spec.profile_path)
    try:
        out.send(result)
    finally:
        out.close()


class _Tally:
    """Receiver-side bookkeeping shared by both transports."""

    __slots__ = ("bad", "count", "first", "got", "nbytes", "size", "t_first", "t_last", "wakeups")

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.size = size
        self.got = 0
        self.nbytes = 0
        self.bad = 0
        self.first = 0
        self.wakeups = 0
        self.t_first = 0.0
        self.t_last = 0.0

    def result(self) -> Result:
        span = self.t_last - self.t_first
        timed = self.got - self.first
        pps = timed / span if span > 0 else 0.0
        ok = self.got == self.count and self.nbytes == self.count * self.size and not self.bad
        return {
            "received": self.got,
            "bytes": self.nbytes,
            "bad_packets": self.bad,
            "first_wakeup_packets": self.first,
            "timed_packets": timed,
            "seconds": span,
            "t_first": self.t_first,
            "t_last": self.t_last,
            "pps": pps,
            "wakeups": self.wakeups,
            "ok": ok,
        }


# -- memif -------------------------------------------------------------------------------


async def _memif_receive(spec: WorkerSpec, ready: Event) -> Result:
    size, count, limit = spec.size, spec.count, spec.rx_batch
    tally = _Tally(count, size)
    cfg = aiomemif.InterfaceConfig(interface_id=0, app_name="bench-rx")
    mode = aiomemif.RxMode(spec.rx_mode)
    async with aiomemif.serve(spec.path, [cfg], app_name="bench-rx", rx_mode=mode) as srv:
        ready.set()
        conn = await srv.accept()
        async with conn:
            rxq = conn.rx_queues[0]
            perf = time.perf_counter
            got = nbytes = bad = wakeups = 0
            batch = await rxq.receive(limit)
            tally.t_first = perf()
            tally.first = len(batch)
            while True:
                n = len(batch)
                got += n
                wakeups += 1
                total = sum(map(len, batch))
                nbytes += total
                first = batch[0]
                if total != n * size or first[0] != HEAD_MARK or first[-1] != TAIL_MARK:
                    bad += sum(1 for v in batch if len(v) != size) or 1
                if got >= count:
                    break
                batch = await rxq.receive(limit)
            tally.t_last = perf()
            batch.release()
            extra = 0
            with contextlib.suppress(aiomemif.WouldBlockError):
                extra = len(rxq.receive_nowait(limit))
            tally.got, tally.nbytes, tally.bad, tally.wakeups = got, nbytes, bad, wakeups
            c = rxq.counters
            res = tally.result()
            res.update(
                extra_packets=extra,
                interrupt_sleeps=rxq.interrupt_sleeps,
                interrupts_received=c.interrupts_received,
                bad_descriptors=c.bad_descriptors,
            )
            res["ok"] = res["ok"] and extra == 0 and c.bad_descriptors == 0
            await conn.aclose("benchmark done")
    return res


async def _memif_send(spec: WorkerSpec, ready: Event) -> Result:
    while not ready.is_set():  # bounded by the caller's deadline
        await asyncio.sleep(0.002)
    payload = make_payload(spec.size)
    batch = [payload] * spec.tx_batch
    full, rest = divmod(spec.count, spec.tx_batch)
    async with aiomemif.connect(
        spec.path,
        interface_id=0,
        app_name="bench-tx",
        ring_size=spec.ring_size,
        buffer_size=spec.buffer_size,
    ) as conn:
        txq = conn.tx_queues[0]
        send_batch = txq.send_batch
        t0 = time.perf_counter()
        for _ in range(full):
            await send_batch(batch)
        if rest:
            await send_batch(batch[:rest])
        t1 = time.perf_counter()
        c = txq.counters
        res: Result = {
            "sent": c.packets,
            "t_start": t0,
            "t_end": t1,
            "ring_full": c.ring_full,
            "interrupts_sent": c.interrupts_sent,
        }
        # The receiver closes the link once it has everything; closing first would drop
        # packets still in the ring.
        await conn.wait_closed()
    return res


def memif_receiver(spec: WorkerSpec, out: PipeEnd, ready: Event) -> None:
    _run(spec, out, lambda: _memif_receive(spec, ready), "receiver")


def memif_sender(spec: WorkerSpec, out: PipeEnd, ready: Event) -> None:
    _run(spec, out, lambda: _memif_send(spec, ready), "sender")


# -- socket baseline ----------------------------------------------------------------------


def _tune(sock: socket.socket, buf: int) -> dict[str, int]:
    sock.setblocking(False)
    if buf:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buf)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buf)
    return {
        "so_sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        "so_rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    }


async def _socket_receive(spec: WorkerSpec, sock: socket.socket) -> Result:
    loop = asyncio.get_running_loop()
    bufs = _tune(sock, spec.sock_buf)
    size, count, limit = spec.size, spec.count, spec.rx_batch
    tally = _Tally(count, size)
    space = bytearray(max(size, spec.buffer_size) + 1)
    view = memoryview(space)
    recv_into = sock.recv_into
    perf = time.perf_counter
    done: asyncio.Future[None] = loop.create_future()
    got = nbytes = bad = wakeups = 0

    def on_readable() -> None:
        nonlocal got, nbytes, bad, wakeups
        n = 0
        while n < limit:
            try:
                k = recv_into(view)
            except BlockingIOError:
                break
            if k == 0:  # EOF: the sender went away early
                if not done.done():
                    done.set_exception(ConnectionError("sender closed early"))
                return
            nbytes += k
            n += 1
            if k != size:
                bad += 1
        if not n:
            return
        if space[0] != HEAD_MARK or space[size - 1] != TAIL_MARK:  # the last packet read
            bad += 1
        if not wakeups:
            tally.t_first = perf()
            tally.first = n
        got += n
        wakeups += 1
        if got >= count:
            tally.t_last = perf()
            if not done.done():
                done.set_result(None)

    loop.add_reader(sock.fileno(), on_readable)
    try:
        await done
    finally:
        loop.remove_reader(sock.fileno())
    extra = 0
    with contextlib.suppress(BlockingIOError):
        while sock.recv_into(view):
            extra += 1
    sock.close()  # tells the sender we are done
    tally.got, tally.nbytes, tally.bad, tally.wakeups = got, nbytes, bad, wakeups
    res = tally.result()
    res.update(bufs, extra_packets=extra)
    res["ok"] = res["ok"] and extra == 0
    return res


async def _socket_send(spec: WorkerSpec, sock: socket.socket) -> Result:
    loop = asyncio.get_running_loop()
    bufs = _tune(sock, spec.sock_buf)
    payload = make_payload(spec.size)
    batch = [payload] * spec.tx_batch
    full, rest = divmod(spec.count, spec.tx_batch)
    send = sock.send
    blocked = 0

    async def send_batch(packets: list[bytes]) -> None:
        nonlocal blocked
        for p in packets:
            try:
                send(p)
            except BlockingIOError:
                blocked += 1
                await loop.sock_sendall(sock, p)

    t0 = time.perf_counter()
    for _ in range(full):
        await send_batch(batch)
    if rest:
        await send_batch(batch[:rest])
    t1 = time.perf_counter()
    # Wait for the receiver to close its end (it has everything by then).
    while await loop.sock_recv(sock, 1):
        pass
    sock.close()
    res: Result = {"sent": spec.count, "t_start": t0, "t_end": t1, "blocked": blocked}
    res.update(bufs)
    return res


def socket_receiver(spec: WorkerSpec, out: PipeEnd, sock: socket.socket) -> None:
    _run(spec, out, lambda: _socket_receive(spec, sock), "receiver")


def socket_sender(spec: WorkerSpec, out: PipeEnd, sock: socket.socket) -> None:
    _run(spec, out, lambda: _socket_send(spec, sock), "sender")


def profile_summary(path: str | Path, top: int = 25) -> str:
    """The ``top`` functions by own time from a cProfile dump, as text."""
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    return buf.getvalue()


if __name__ == "__main__":  # pragma: no cover - not a script
    sys.exit("run benchmarks/run.py instead")
