"""``aiomemif gen``: a traffic generator (test packets with sequence numbers, see traffic.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from .. import Connection, TxQueue
from ..errors import DisconnectedError
from .common import UsageError, add_link_options, open_link, packet_size, positive
from .pcap_recorder import Tap, add_pcap_option, open_tap
from .traffic import Progress, TestPacket, human_rate, number, seconds

__all__ = ["register", "run"]

GEN_EPILOG = """\
examples:
  aiomemif gen --socket /tmp/memif.sock --count 1000000
      one million 64-byte test packets, as fast as the peer takes them
  aiomemif gen --socket @bench --role server --size 1500 --duration 10 --rate 100000
      serve on an abstract socket and send 100k packets/s of 1500 bytes for 10 s
  aiomemif gen --socket /tmp/memif.sock --queues 4 --zero-copy --batch 64 --count 10000000
      spread over 4 queues, writing packets in place in the shared buffers
  aiomemif gen --socket /tmp/memif.sock --mode ip --count 100 --pcap sent.pcapng --json

The peer can be "aiomemif sink" (add --verify there to check every packet), VPP or DPDK.
Test packets: ethernet mode 02:00:00:00:00:01 -> 02:00:00:00:00:02, EtherType 0x88B5;
ip mode IPv4 198.18.0.1 -> 198.18.0.2, protocol 253; then a u64 sequence number and payload
bytes (sequence + i) mod 256. Exit status 0 when every packet was sent, 1 when the link went
down, 2 for bad options, 130 on Ctrl-C (the summary is printed in every case).
"""

#: Longest time to wait for the peer to take what was sent before disconnecting.
DEFAULT_LINGER = 5.0


def _rate(text: str) -> float:
    return number(text, "a positive packets/second rate", minimum=0.0, inclusive=False)


def _linger(text: str) -> float:
    return number(text, "0 or more seconds", minimum=0.0, inclusive=True)


class _Gen:
    """Shared state of the per-queue senders."""

    def __init__(self, args: argparse.Namespace, packet: TestPacket, tap: Tap | None) -> None:
        self.args = args
        self.packet = packet
        self.tap = tap
        self.limit: int | None = args.count
        self.rate: float | None = args.rate
        self.next_seq = 0
        self.sent = 0
        self.nbytes = 0
        self.per_queue: list[int] = []
        self.ring_full = 0
        self.t_start: float | None = None
        self.t_end: float | None = None
        self.deadline: float | None = None
        self.drained: bool | None = None
        self.error: str | None = None
        self.interrupted = False
        self.peer_left: str | None = None
        self.conn: Connection | None = None
        # Smaller batches under a rate limit, so packets go out about every 10 ms at least.
        batch = args.batch
        if self.rate is not None:
            batch = min(batch, max(1, int(self.rate / 100)))
        self.batch = batch

    def _take(self) -> tuple[int, int]:
        """The next block of sequence numbers to send: (start, count); count 0 when done."""
        n = self.batch
        if self.limit is not None:
            n = min(n, self.limit - self.next_seq)
        if n <= 0 or (self.deadline is not None and time.monotonic() >= self.deadline):
            return self.next_seq, 0
        start = self.next_seq
        self.next_seq += n
        return start, n

    async def pump(self, q: int, tx: TxQueue, ring_size: int) -> None:
        zero_copy = self.args.zero_copy
        size = self.packet.size
        nseg = -(-size // self.args.buffer_size)
        most = max(1, ring_size // nseg)
        build, fill, tap = self.packet.build, self.packet.fill, self.tap
        assert self.t_start is not None
        while True:
            start, n = self._take()
            if not n:
                return
            if self.rate is not None:
                delay = self.t_start + start / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if zero_copy:
                done = 0
                while done < n:
                    k = min(n - done, most)
                    bufs = await tx.alloc(k, size)
                    try:
                        for i, buf in enumerate(bufs):
                            seq = start + done + i
                            if len(buf.segments) == 1:
                                fill(buf.view, seq)
                                if tap is not None:
                                    tap.write(buf.view, "out", queue=q)
                            else:
                                data = build(seq)
                                buf.write(data)
                                if tap is not None:
                                    tap.write(data, "out", queue=q)
                    except BaseException:
                        tx.cancel(bufs)
                        raise
                    tx.commit(bufs)
                    done += k
            else:
                pkts = [build(s) for s in range(start, start + n)]
                await tx.send_batch(pkts)
                if tap is not None:
                    for p in pkts:
                        tap.write(p, "out", queue=q)
            self.sent += n
            self.nbytes += n * size
            self.per_queue[q] += n
            self.t_end = time.monotonic()
            await asyncio.sleep(0)  # let the other queues, the display and Ctrl-C in

    def progress_sample(self) -> tuple[int, int, str]:
        return self.sent, self.nbytes, ""

    def summary(self) -> dict[str, Any]:
        args = self.args
        elapsed = 0.0
        if self.t_start is not None and self.t_end is not None:
            elapsed = self.t_end - self.t_start
        ring_full = self.ring_full
        if self.conn is not None:
            ring_full = sum(q.counters.ring_full for q in self.conn.tx_queues)
        complete = self.limit is None or self.sent >= self.limit
        return {
            "command": "gen",
            "ok": self.error is None and not self.interrupted and complete,
            "mode": "ip" if args.mode == 1 else "ethernet",
            "transmit": "zero-copy" if args.zero_copy else "copy",
            "size": args.size,
            "queues": len(self.per_queue),
            "requested": self.limit,
            "sent": self.sent,
            "bytes": self.nbytes,
            "seconds": round(elapsed, 6),
            "packets_per_second": round(self.sent / elapsed) if elapsed > 0 else 0,
            "bits_per_second": round(self.nbytes * 8 / elapsed) if elapsed > 0 else 0,
            "per_queue": list(self.per_queue),
            "ring_full_waits": ring_full,
            "drained": self.drained,
            "interrupted": self.interrupted,
            "error": self.error,
            "peer_left": self.peer_left,
            "pcap": args.pcap,
        }


def _print_summary(args: argparse.Namespace, s: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(s, indent=2), flush=True)
        return
    rate = human_rate(s["packets_per_second"], s["bits_per_second"] / 8)
    of = f" of {s['requested']}" if s["requested"] is not None else ""
    print(
        f"gen: sent {s['sent']}{of} packets of {s['size']} bytes ({s['bytes']} bytes) in "
        f"{s['seconds']:.3f} s, {rate}, {s['queues']} queue(s) {s['per_queue']}, "
        f"{s['transmit']}, ring full {s['ring_full_waits']} times",
        flush=True,
    )
    if s["drained"] is False:
        print("gen: warning: the peer had not taken every packet when we disconnected", flush=True)
    if s["interrupted"]:
        print("gen: interrupted", flush=True)
    elif s["error"]:
        print(f"gen: link down: {s['error']}", flush=True)
    elif s["peer_left"]:
        print(f"gen: the peer left after the last packet: {s['peer_left']}", flush=True)


async def _drain(conn: Connection, linger: float) -> bool:
    """Wait (up to ``linger`` s) until the peer has taken every packet we published."""
    sizes = [q.ring_size for q in conn.details().tx_queues]
    deadline = time.monotonic() + linger
    while True:
        if all(tx.free_slots() >= size for tx, size in zip(conn.tx_queues, sizes, strict=True)):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.001)


async def _generate(args: argparse.Namespace, gen: _Gen, conn: Connection) -> None:
    gen.conn = conn
    gen.per_queue = [0] * len(conn.tx_queues)
    sizes = [q.ring_size for q in conn.details().tx_queues]
    progress = Progress(args, "gen", gen.progress_sample, limit=gen.limit)
    gen.t_start = gen.t_end = time.monotonic()
    if args.duration is not None:
        gen.deadline = gen.t_start + args.duration
    tasks = [asyncio.create_task(gen.pump(q, tx, sizes[q])) for q, tx in enumerate(conn.tx_queues)]
    shower = asyncio.create_task(progress.run())
    try:
        await asyncio.gather(*tasks)
        try:
            gen.drained = await _drain(conn, args.linger)
        except DisconnectedError as exc:
            # Everything was sent; the peer leaving now (e.g. a sink with --count that has
            # had enough) is no failure of ours.
            gen.peer_left = exc.reason
    finally:
        for t in (*tasks, shower):
            t.cancel()
        await asyncio.gather(*tasks, shower, return_exceptions=True)
        progress.update()
        progress.clear()


async def run(args: argparse.Namespace) -> int:
    """Send test packets; 0 when every packet was sent."""
    try:
        packet = TestPacket(args.mode, args.size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with open_tap(args, args.mode) as tap:
        gen = _Gen(args, packet, tap)
        try:
            async with open_link(args) as conn:
                if not args.quiet:
                    print(
                        f"gen: link up with {conn.peer_app_name!r} "
                        f"({len(conn.tx_queues)} queue(s))",
                        file=sys.stderr,
                        flush=True,
                    )
                await _generate(args, gen, conn)
        except asyncio.CancelledError:
            gen.interrupted = True
            _print_summary(args, gen.summary())
            raise
        except DisconnectedError as exc:
            gen.error = exc.reason
    summary = gen.summary()
    _print_summary(args, summary)
    return 0 if summary["ok"] else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``gen`` subcommand."""
    p = sub.add_parser(
        "gen",
        help="send test packets (sequence-numbered) as fast as allowed",
        description="Connect (or serve) a memif link and send test packets carrying a\n"
        "sequence number and a checkable payload, spread over every transmit queue, with\n"
        "a live rate display on a terminal and a summary at the end.",
        epilog=GEN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("traffic")
    g.add_argument("--size", type=packet_size, default=64, help="packet size in bytes (64)")
    g.add_argument("--count", type=positive, default=None, help="packets to send")
    g.add_argument("--duration", type=seconds, default=None, help="seconds to send for")
    g.add_argument(
        "--rate", type=_rate, default=None, help="packets per second (default: flat out)"
    )
    g.add_argument("--batch", type=positive, default=32, help="packets per send (32)")
    g.add_argument(
        "--zero-copy",
        action="store_true",
        help="write packets in place in the shared buffers (tx.alloc/commit)",
    )
    g.add_argument(
        "--linger",
        type=_linger,
        default=DEFAULT_LINGER,
        help=f"seconds to wait for the peer to take the last packets ({DEFAULT_LINGER:g})",
    )
    add_pcap_option(p)
    add_link_options(p, default_role="client")
    p.set_defaults(run=run)
