"""``aiomemif sink``: receive and count packets, optionally checking gen's test packets."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from .. import Connection, RxQueue
from ..errors import DisconnectedError, RemoteProtocolError
from .common import add_link_options, link_up_text, open_link, positive, print_json
from .pcap_recorder import OutputError, Tap, add_pcap_option, open_tap
from .traffic import Checker, Progress, TestPacket, human_rate, link_ending, seconds

__all__ = ["register", "run"]

SINK_EPILOG = """\
examples:
  aiomemif sink --socket /tmp/memif.sock
      serve and count whatever arrives until the peer leaves or Ctrl-C
  aiomemif sink --socket /tmp/memif.sock --count 1000000 --verify
      expect one million test packets from "aiomemif gen" and check every one
  aiomemif sink --socket @vpp-memif --role client --duration 30 --json
      connect to a server, count for 30 seconds, print a JSON summary
  aiomemif sink --socket /tmp/memif.sock --queues 4 --count 1000 --pcap got.pcapng

--verify checks the test packets "aiomemif gen" sends (sequence number and payload) and
reports drops (missing sequence numbers), out-of-order (per queue), duplicate and corrupt
packets. Exit status 0 when the run ended cleanly (with --count: every packet arrived; with
--verify: no drops, reordering, duplicates or corruption), 1 otherwise or when the link
could not be set up or went down or --pcap could not be written, 2 for bad options, 130 on
Ctrl-C, 143 on SIGTERM (the summary is printed whenever the link came up).
"""


class _Sink:
    def __init__(self, args: argparse.Namespace, tap: Tap | None) -> None:
        self.args = args
        self.tap = tap
        self.limit: int | None = args.count
        self.received = 0
        self.nbytes = 0
        self.per_queue: list[int] = []
        self.checker: Checker | None = None
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.ended = "not connected"
        self.error: str | None = None
        self.interrupted = False
        self.done = asyncio.Event()

    async def consume(self, q: int, rx: RxQueue) -> None:
        most, limit, tap, per_queue = self.args.batch, self.limit, self.tap, self.per_queue
        while True:
            want = most
            if limit is not None:
                want = min(want, limit - self.received)
                if want <= 0:
                    self.done.set()
                    return
            batch = await rx.receive(want)
            now = time.monotonic()
            if self.t_first is None:
                self.t_first = now
            self.t_last = now
            checker = self.checker
            if checker is not None:
                checker.check_batch(batch[:], q)
            if tap is not None:
                for pkt in batch:
                    tap.write(pkt, "in", queue=q)
            n = len(batch)
            self.received += n
            self.nbytes += batch.nbytes
            per_queue[q] += n
            batch.release()
            if limit is not None and self.received >= limit:
                self.done.set()
                return
            await asyncio.sleep(0)  # let the other queues, the display and Ctrl-C in

    def drops(self) -> int | None:
        if self.checker is not None:
            return self.checker.drops(self.limit)
        if self.limit is not None:
            return max(0, self.limit - self.received)
        return None

    def progress_sample(self) -> tuple[int, int, str]:
        parts = []
        if self.checker is not None:
            parts.append(f"drops {self.checker.drops():,}")
            if self.checker.corrupt:
                parts.append(f"corrupt {self.checker.corrupt:,}")
        return self.received, self.nbytes, "  ".join(parts)

    def summary(self) -> dict[str, Any]:
        args = self.args
        elapsed = 0.0
        if self.t_first is not None and self.t_last is not None:
            elapsed = self.t_last - self.t_first
        c = self.checker
        complete = self.limit is None or self.received >= self.limit
        clean = c is None or (
            c.drops(self.limit) == 0 and not (c.out_of_order or c.duplicates or c.corrupt)
        )
        return {
            "command": "sink",
            "ok": self.error is None and not self.interrupted and complete and clean,
            "ended": self.ended,
            "expected": self.limit,
            "received": self.received,
            "bytes": self.nbytes,
            "seconds": round(elapsed, 6),
            "packets_per_second": round(self.received / elapsed) if elapsed > 0 else 0,
            "bits_per_second": round(self.nbytes * 8 / elapsed) if elapsed > 0 else 0,
            "queues": len(self.per_queue),
            "per_queue": list(self.per_queue),
            "verify": c is not None,
            "drops": self.drops(),
            "out_of_order": c.out_of_order if c is not None else None,
            "duplicates": c.duplicates if c is not None else None,
            "corrupt": c.corrupt if c is not None else None,
            "interrupted": self.interrupted,
            "error": self.error,
            "pcap": args.pcap,
        }


def _print_summary(args: argparse.Namespace, s: dict[str, Any]) -> None:
    if s["ended"] == "write error":
        print(f"aiomemif sink: {s['error']}", file=sys.stderr, flush=True)
    if args.json:
        print_json(args, s)
        return
    rate = human_rate(s["packets_per_second"], s["bits_per_second"] / 8)
    of = f" of {s['expected']}" if s["expected"] is not None else ""
    print(
        f"sink: received {s['received']}{of} packets ({s['bytes']} bytes) in "
        f"{s['seconds']:.3f} s, {rate}, {s['queues']} queue(s) {s['per_queue']}",
        flush=True,
    )
    if s["verify"]:
        print(
            f"sink: verify: drops {s['drops']}, out of order {s['out_of_order']}, "
            f"duplicates {s['duplicates']}, corrupt {s['corrupt']}",
            flush=True,
        )
    elif s["drops"]:
        print(f"sink: missing {s['drops']}", flush=True)
    if s["interrupted"]:
        print("sink: interrupted", flush=True)
    else:
        reason = f" ({s['error']})" if s["error"] else ""
        verdict = "OK" if s["ok"] else "FAILED"
        print(f"sink: ended by {s['ended']}{reason}: {verdict}", flush=True)


async def _receive(args: argparse.Namespace, sink: _Sink, conn: Connection) -> None:
    sink.per_queue = [0] * len(conn.rx_queues)
    if args.verify:
        sink.checker = Checker(TestPacket(args.mode), len(sink.per_queue))
    progress = Progress(args, "sink", sink.progress_sample, limit=sink.limit)
    tasks = [asyncio.create_task(sink.consume(q, rx)) for q, rx in enumerate(conn.rx_queues)]
    finished = asyncio.create_task(sink.done.wait())
    shower = asyncio.create_task(progress.run())
    sink.ended = "interrupt"
    try:
        await asyncio.wait(
            [finished, *tasks], timeout=args.duration, return_when=asyncio.FIRST_COMPLETED
        )
        sink.ended = "count" if sink.done.is_set() else "duration"
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                assert exc is not None
                raise exc
    finally:
        everything: list[asyncio.Task[Any]] = [*tasks, finished, shower]
        for t in everything:
            t.cancel()
        await asyncio.gather(*everything, return_exceptions=True)
        progress.update()
        progress.clear()


async def run(args: argparse.Namespace) -> int:
    """Receive (and check) packets; 0 when everything expected arrived intact.

    Raises:
        CommandError: the link could not be set up.
    """
    with open_tap(args, args.mode) as tap:
        sink = _Sink(args, tap)
        try:
            async with open_link(args) as conn:
                if not args.quiet:
                    print(link_up_text("sink", args, conn), file=sys.stderr, flush=True)
                await _receive(args, sink, conn)
            if tap is not None:
                tap.flush()
        except OutputError as exc:
            sink.ended, sink.error = "write error", str(exc)
        except asyncio.CancelledError:
            sink.interrupted = True
            sink.ended = "interrupt"
            _print_summary(args, sink.summary())
            raise
        except (DisconnectedError, RemoteProtocolError) as exc:
            short = sink.limit is not None and sink.received < sink.limit
            sink.ended, error = link_ending(exc, short)
            if error is not None:
                sink.error = error
    summary = sink.summary()
    _print_summary(args, summary)
    return 0 if summary["ok"] else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sink`` subcommand."""
    p = sub.add_parser(
        "sink",
        help="receive and count packets, optionally checking gen's test packets",
        description="Serve (or connect) a memif link, receive on every queue and count, with\n"
        "a live rate display on a terminal and a summary at the end. With --verify, check\n"
        "the sequence numbers and payloads of the test packets 'aiomemif gen' sends.",
        epilog=SINK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("traffic")
    g.add_argument("--count", type=positive, default=None, help="stop after this many packets")
    g.add_argument("--duration", type=seconds, default=None, help="stop after this many seconds")
    g.add_argument(
        "--verify", action="store_true", help="check sequence numbers and payloads (gen's format)"
    )
    g.add_argument("--batch", type=positive, default=256, help="most packets per receive (256)")
    add_pcap_option(p)
    add_link_options(p, default_role="server")
    p.set_defaults(run=run)
