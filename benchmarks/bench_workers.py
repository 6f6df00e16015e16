"""One-way throughput workers (child processes of ``benchmarks/run.py``).

A *flow* moves packets one way for a fixed time, between two processes:

- ``memif``: an aiomemif server and an aiomemif client on a socket in a private temporary
  directory. Direction ``c2s`` sends on the client's ``tx_queues`` (S2M rings) and receives
  on the server's ``rx_queues``; ``s2c`` the other way round (M2S rings). With several
  queues, one sender task and one receiver task per queue run on each side's event loop.
- ``socket``: an ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair made by the parent: the sender
  calls ``sock.send`` per packet and falls back to ``loop.sock_sendall`` on ``EAGAIN``; the
  receiver drains with ``recv_into`` from an ``add_reader`` callback, up to ``rx_batch``
  messages per wakeup.

Send styles: ``copy`` (``send_batch`` of ``tx_batch`` packets) or ``alloc`` (``tx.alloc``,
the payload written in place through ``TxBuffers.views``, or each ``TxBuffer`` for chains,
then ``tx.commit``). Receive styles: ``touch`` (lengths of the batch summed, the marks of
its last packet checked) or ``views`` (lengths summed, and every packet's first and last
byte read in shared memory through its memoryview, C-level ``map(itemgetter)``; never
``bytes()``; unchained packets only).

With ``sizes`` (memif, copy style only), the sender's batch cycles through those packet
sizes instead (mixed-size chains); ``size`` is then the end packet's size.

The sender sends for ``duration`` seconds, then one *end* packet of ``size`` bytes that
carries the total count. The receiver times from its first wakeup with data to the end
packet (the packets of that first wakeup are not counted in the rate) and checks the count,
the byte total and the payload marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as PipeEnd
from multiprocessing.context import SpawnContext
from multiprocessing.synchronize import Event
from operator import itemgetter
from typing import cast

import harness
from harness import Json, Opts, Worker

import aiomemif

__all__ = ["FlowSpec", "make_payload", "memif_flow", "run_flow", "socket_flow"]

#: First and last byte of every payload; the end packet starts with END_MARK instead.
HEAD_MARK = 0xA5
TAIL_MARK = 0x5A
END_MARK = 0xE0
_FIRST = itemgetter(0)
_LAST = itemgetter(-1)


@dataclass(frozen=True, kw_only=True)
class FlowSpec:
    """One one-way transfer (picklable)."""

    size: int
    duration: float
    tx_batch: int = 32
    rx_batch: int = 32
    direction: str = "c2s"  # memif only: "c2s" or "s2c"
    queues: int = 1
    ring_size: int = 1024
    buffer_size: int = 2048
    rx_mode: str = "interrupt"
    tx_style: str = "copy"  # "copy" or "alloc"
    rx_style: str = "touch"  # "touch" or "views"
    sock_buf: int = 1 << 22
    path: str = ""
    sizes: tuple[int, ...] = ()  # memif copy style only: the batch cycles through these

    def batch_sizes(self) -> list[int]:
        """The sizes of the packets of one sender batch."""
        sizes = self.sizes or (self.size,)
        return [sizes[i % len(sizes)] for i in range(self.tx_batch)]

    def mean_size(self) -> float:
        """The mean packet size of a batch (bytes per second = packets per second x this)."""
        sizes = self.batch_sizes()
        return sum(sizes) / len(sizes)

    def expected_bytes(self, packets: int) -> int:
        """The bytes of ``packets`` packets of a flow: whole batches, then the end packet."""
        batches, rest = divmod(packets - 1, self.tx_batch)
        if not self.sizes:
            return packets * self.size
        return batches * sum(self.batch_sizes()) + sum(self.batch_sizes()[:rest]) + self.size


def make_payload(size: int) -> bytes:
    """A ``size``-byte packet whose first and last bytes carry the check marks."""
    body = bytearray(i & 0xFF for i in range(size))
    body[0] = HEAD_MARK
    body[-1] = TAIL_MARK
    return bytes(body)


def end_packet(size: int, total: int) -> bytes:
    """The last packet of a flow: END_MARK, then the flow's packet count (this included)."""
    body = bytearray(make_payload(size))
    body[0] = END_MARK
    body[1:9] = total.to_bytes(8, "big")
    return bytes(body)


class _Tally:
    """What one receive loop saw."""

    __slots__ = ("bad", "first", "got", "nbytes", "t_first", "t_last", "total", "wakeups")

    def __init__(self) -> None:
        self.got = self.nbytes = self.bad = self.first = self.wakeups = 0
        self.total = -1  # announced by the end packet
        self.t_first = self.t_last = 0.0


def _first_last(pkt: aiomemif.Packet) -> tuple[memoryview, memoryview]:
    if isinstance(pkt, memoryview):
        return pkt, pkt
    return pkt.segments[0], pkt.segments[-1]


def _combine(tallies: list[_Tally], spec: FlowSpec) -> Json:
    got = sum(t.got for t in tallies)
    timed = sum(t.got - t.first for t in tallies)
    t_first = min(t.t_first for t in tallies)
    t_last = max(t.t_last for t in tallies)
    span = t_last - t_first
    total = sum(t.total for t in tallies)
    bad = sum(t.bad for t in tallies)
    nbytes = sum(t.nbytes for t in tallies)
    return {
        "received": got,
        "announced": total,
        "bytes": nbytes,
        "bad_packets": bad,
        "timed_packets": timed,
        "seconds": span,
        "t_first": t_first,
        "t_last": t_last,
        "pps": timed / span if span > 0 else 0.0,
        "wakeups": sum(t.wakeups for t in tallies),
        "ok": got == total and nbytes == spec.expected_bytes(got) and bad == 0,
    }


# -- memif ------------------------------------------------------------------------------------


async def _receive_queue(rxq: aiomemif.RxQueue, spec: FlowSpec) -> _Tally:
    t = _Tally()
    limit, views = spec.rx_batch, spec.rx_style == "views"
    if views and spec.size > spec.buffer_size:
        raise ValueError("the views receive style reads unchained packets only")
    perf = time.perf_counter
    got = nbytes = bad = wakeups = 0
    batch = await rxq.receive(limit)
    t.t_first = perf()
    t.first = len(batch)
    while True:
        n = len(batch)
        got += n
        wakeups += 1
        nbytes += sum(map(len, batch))
        if views:  # the end packet's head mark counts as bad here: taken back below
            plain = cast("Sequence[memoryview]", batch)  # unchained: checked above
            bad += 2 * n - list(map(_FIRST, plain)).count(HEAD_MARK)
            bad -= list(map(_LAST, plain)).count(TAIL_MARK)
        head, tail = _first_last(batch[-1])
        if head[0] != HEAD_MARK:
            if head[0] == END_MARK:
                t.total = int.from_bytes(head[1:9], "big")
                bad -= views
                break
            bad += not views
        elif tail[-1] != TAIL_MARK:
            bad += not views
        batch = await rxq.receive(limit)
    t.t_last = perf()
    batch.release()
    t.got, t.nbytes, t.bad, t.wakeups = got, nbytes, bad, wakeups
    return t


async def _send_queue(txq: aiomemif.TxQueue, spec: FlowSpec) -> Json:
    size, nb = spec.size, spec.tx_batch
    payload = make_payload(size)
    payloads = {n: make_payload(n) for n in set(spec.batch_sizes())}
    batch = [payloads[n] for n in spec.batch_sizes()]
    reps = max(1, 256 // nb)  # check the clock every ~256 packets
    perf = time.perf_counter
    sent = 0
    t0 = perf()
    t_end = t0 + spec.duration
    if spec.tx_style == "alloc":
        if spec.sizes:
            raise ValueError("the alloc send style sends packets of one size")
        alloc, commit = txq.alloc, txq.commit
        chained = size > spec.buffer_size
        while True:
            for _ in range(reps):
                bufs = await alloc(nb, size)
                if chained:
                    for b in bufs:
                        b.write(payload)
                else:
                    for v in bufs.views:
                        v[:] = payload
                commit(bufs)
            sent += reps * nb
            if perf() >= t_end:
                break
    else:
        send_batch = txq.send_batch
        while True:
            for _ in range(reps):
                await send_batch(batch)
            sent += reps * nb
            if perf() >= t_end:
                break
    t1 = perf()
    await txq.send(end_packet(size, sent + 1))
    c = txq.counters
    return {
        "sent": sent + 1,
        "t_start": t0,
        "t_end": t1,
        "ring_full": c.ring_full,
        "interrupts_sent": c.interrupts_sent,
        "chained": c.chained,
    }


async def _receive_all(conn: aiomemif.Connection, spec: FlowSpec) -> Json:
    queues = conn.rx_queues[: spec.queues]
    tallies = await asyncio.gather(*(_receive_queue(q, spec) for q in queues))
    res = _combine(list(tallies), spec)
    extra = 0
    for q in queues:
        with contextlib.suppress(aiomemif.WouldBlockError):
            extra += len(q.receive_nowait())
    res["extra_packets"] = extra
    res["interrupt_sleeps"] = sum(q.interrupt_sleeps for q in queues)
    res["interrupts_received"] = sum(q.counters.interrupts_received for q in queues)
    res["bad_descriptors"] = sum(q.counters.bad_descriptors for q in queues)
    res["chained"] = sum(q.counters.chained for q in queues)
    res["per_queue_pps"] = [
        (t.got - t.first) / (t.t_last - t.t_first) if t.t_last > t.t_first else 0.0 for t in tallies
    ]
    res["ok"] = res["ok"] and extra == 0 and res["bad_descriptors"] == 0
    return res


async def _send_all(conn: aiomemif.Connection, spec: FlowSpec) -> Json:
    parts = await asyncio.gather(*(_send_queue(q, spec) for q in conn.tx_queues[: spec.queues]))
    res: Json = {
        "sent": sum(p["sent"] for p in parts),
        "t_start": min(p["t_start"] for p in parts),
        "t_end": max(p["t_end"] for p in parts),
    }
    for key in ("ring_full", "interrupts_sent", "chained"):
        res[key] = sum(p[key] for p in parts)
    return res


def _config(spec: FlowSpec, app: str) -> aiomemif.InterfaceConfig:
    return aiomemif.InterfaceConfig(
        interface_id=0,
        app_name=app,
        rx_queue_count=spec.queues,
        tx_queue_count=spec.queues,
        ring_size=spec.ring_size,
        buffer_size=spec.buffer_size,
    )


async def _memif_server(spec: FlowSpec, ready: Event) -> Json:
    mode = aiomemif.RxMode(spec.rx_mode)
    cfg = _config(spec, "bench-server")
    async with aiomemif.serve(spec.path, [cfg], app_name="bench-server", rx_mode=mode) as srv:
        ready.set()
        conn = await srv.accept()
        async with conn:
            if spec.direction == "c2s":
                res = await _receive_all(conn, spec)
                await conn.aclose("benchmark done")  # the sender waits for this
            else:
                res = await _send_all(conn, spec)
                await conn.wait_closed()  # closing first would drop packets in the ring
    return res


async def _memif_client(spec: FlowSpec, ready: Event) -> Json:
    while not ready.is_set():  # bounded by the caller's deadline
        await asyncio.sleep(0.002)
    mode = aiomemif.RxMode(spec.rx_mode)
    async with aiomemif.connect(spec.path, _config(spec, "bench-client"), rx_mode=mode) as conn:
        if spec.direction == "c2s":
            res = await _send_all(conn, spec)
            await conn.wait_closed()
        else:
            res = await _receive_all(conn, spec)
            await conn.aclose("benchmark done")
    return res


def memif_flow(out: PipeEnd, opts: Opts, spec: FlowSpec, side: str, ready: Event) -> None:
    """Entry point: ``side`` is "server" or "client"."""
    body = _memif_server if side == "server" else _memif_client
    harness.run_async(opts, out, lambda: body(spec, ready))


# -- socket baseline ----------------------------------------------------------------------


def _tune(sock: socket.socket, buf: int) -> Json:
    sock.setblocking(False)
    if buf:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buf)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buf)
    return {
        "so_sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        "so_rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    }


async def _socket_receive(spec: FlowSpec, sock: socket.socket) -> Json:
    if spec.sizes:
        raise ValueError("the socket baseline sends packets of one size")
    loop = asyncio.get_running_loop()
    bufs = _tune(sock, spec.sock_buf)
    size, limit = spec.size, spec.rx_batch
    t = _Tally()
    space = bytearray(max(size, spec.buffer_size) + 1)
    view = memoryview(space)
    recv_into = sock.recv_into
    perf = time.perf_counter
    done: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        n = nbytes = bad = 0
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
            bad += k != size
        if not n:
            return
        if not t.wakeups:
            t.t_first = perf()
            t.first = n
        t.got += n
        t.nbytes += nbytes
        t.wakeups += 1
        if space[0] == END_MARK:  # the last message read is the last one sent
            t.t_last = perf()
            t.total = int.from_bytes(space[1:9], "big")
            if not done.done():
                done.set_result(None)
        elif space[0] != HEAD_MARK or space[size - 1] != TAIL_MARK:
            bad += 1
        t.bad += bad

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
    res = _combine([t], spec)
    res.update(bufs, extra_packets=extra)
    res["ok"] = res["ok"] and extra == 0
    return res


async def _socket_send(spec: FlowSpec, sock: socket.socket) -> Json:
    loop = asyncio.get_running_loop()
    bufs = _tune(sock, spec.sock_buf)
    payload = make_payload(spec.size)
    nb = spec.tx_batch
    send = sock.send
    blocked = 0
    reps = max(1, 256 // nb)
    perf = time.perf_counter

    async def send_batch(n: int) -> None:
        nonlocal blocked
        for _ in range(n):
            try:
                send(payload)
            except BlockingIOError:
                blocked += 1
                await loop.sock_sendall(sock, payload)

    sent = 0
    t0 = perf()
    t_end = t0 + spec.duration
    while True:
        for _ in range(reps):
            await send_batch(nb)
        sent += reps * nb
        if perf() >= t_end:
            break
    t1 = perf()
    await loop.sock_sendall(sock, end_packet(spec.size, sent + 1))
    while await loop.sock_recv(sock, 1):  # the receiver closes its end when done
        pass
    sock.close()
    res: Json = {"sent": sent + 1, "t_start": t0, "t_end": t1, "blocked": blocked}
    res.update(bufs)
    return res


def socket_flow(out: PipeEnd, opts: Opts, spec: FlowSpec, side: str, sock: socket.socket) -> None:
    """Entry point: ``side`` is "receiver" or "sender"."""
    body = _socket_receive if side == "receiver" else _socket_send
    harness.run_async(opts, out, lambda: body(spec, sock))


# -- in the parent ----------------------------------------------------------------------------


def run_flow(
    ctx: SpawnContext,
    *,
    transport: str,
    spec: FlowSpec,
    loop: str,
    pins: tuple[int | None, int | None],
    timeout: float,
    no_validation: bool = False,
    profile: str = "",
) -> Json:
    """Run one flow; ``pins`` are the receiver's and the sender's CPUs."""
    rx_cpu, tx_cpu = pins

    def opts(role: str, cpu: int | None) -> Opts:
        return Opts(
            role=role,
            cpu=cpu,
            timeout=timeout,
            loop=loop,
            no_validation=no_validation,
            profile_path=f"{profile}-{role}.prof" if profile else "",
        )

    if transport == "memif":
        ready = ctx.Event()
        server_rx = spec.direction == "c2s"
        s_cpu, c_cpu = (rx_cpu, tx_cpu) if server_rx else (tx_cpu, rx_cpu)
        results = harness.run_workers(
            ctx,
            [
                Worker("server", memif_flow, (opts("server", s_cpu), spec, "server", ready)),
                Worker("client", memif_flow, (opts("client", c_cpu), spec, "client", ready)),
            ],
            timeout,
        )
        rx_name, tx_name = ("server", "client") if server_rx else ("client", "server")
    else:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        results = harness.run_workers(
            ctx,
            [
                Worker("receiver", socket_flow, (opts("receiver", rx_cpu), spec, "receiver", a)),
                Worker("sender", socket_flow, (opts("sender", tx_cpu), spec, "sender", b)),
            ],
            timeout,
        )
        rx_name, tx_name = "receiver", "sender"
    rx, tx = results[rx_name], results[tx_name]
    ok, errors = harness.verdict(
        results,
        bool(rx.get("ok")) and tx.get("sent") == rx.get("received"),
        f"sent {tx.get('sent')}, received {rx.get('received')} "
        f"(announced {rx.get('announced')}), {rx.get('bad_packets')} bad, "
        f"{rx.get('extra_packets')} extra, {rx.get('bad_descriptors', 0)} bad descriptors",
    )
    pps = float(rx.get("pps", 0.0)) if ok else 0.0
    run: Json = {
        "pps": pps,
        "gbps": pps * spec.mean_size() * 8 / 1e9,
        "ok": ok,
        "errors": errors,
        "preempt": harness.preemptions(results),
        "receiver": rx,
        "sender": tx,
    }
    if no_validation:
        run["validation_hooked"] = sorted(
            {h for r in (rx, tx) for h in r.get("validation_hooked", [])}
        )
    return run
