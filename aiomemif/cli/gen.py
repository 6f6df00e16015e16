"""``aiomemif gen``: a traffic generator (test packets with sequence numbers, see traffic.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, Final

from .. import Connection, RxQueue, TxQueue
from ..errors import ClosedResourceError, DisconnectedError, MemifError, RemoteProtocolError
from .common import (
    UsageError,
    add_link_options,
    ending_text,
    link_up_text,
    open_link,
    packet_size,
    positive,
    print_json,
)
from .pcap_recorder import OutputError, Tap, add_pcap_option, open_tap
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
bytes (sequence + i) mod 256. What the peer sends back (a reflector, say) is received and
counted. A warning goes to stderr when nothing moved for a second while a send waits for
ring space. Exit status 0 when every packet was sent, 1 when the link could not be set up
or went down or a file could not be written, 2 for bad options, 130 on Ctrl-C, 143 on
SIGTERM (the summary is printed whenever the link came up).
"""

#: Longest time to wait for the peer to take what was sent before disconnecting.
DEFAULT_LINGER = 5.0
#: Warn when no packet was sent or received for this long while a send waits.
STALL_WARNING: Final = 1.0
_STALL_CHECK: Final = 0.25


def _rate(text: str) -> float:
    return number(text, "a positive packets/second rate", minimum=0.0, inclusive=False)


def _linger(text: str) -> float:
    return number(text, "0 or more seconds", minimum=0.0, inclusive=True)


class _Gen:
    """Shared state of the per-queue senders and receivers."""

    def __init__(self, args: argparse.Namespace, packet: TestPacket, tap: Tap | None) -> None:
        self.args = args
        self.packet = packet
        self.tap = tap
        self.limit: int | None = args.count
        self.rate: float | None = args.rate
        self.next_seq = 0
        self.sent = 0
        self.nbytes = 0
        self.received = 0
        self.received_bytes = 0
        self.per_queue: list[int] = []
        self.ring_full = 0
        self.t_start: float | None = None
        self.t_end: float | None = None
        #: When sending stops (--duration), on the event loop's clock.
        self.deadline: float | None = None
        #: Sends waiting for ring space right now.
        self.waiting = 0
        self.stalls = 0
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

    def _past_deadline(self, when: float | None = None) -> bool:
        if self.deadline is None:
            return False
        return (asyncio.get_running_loop().time() if when is None else when) >= self.deadline

    def _take(self) -> tuple[int, int]:
        """The next block of sequence numbers to send: (start, count); count 0 when done."""
        n = self.batch
        if self.limit is not None:
            n = min(n, self.limit - self.next_seq)
        if n <= 0 or self._past_deadline():
            return self.next_seq, 0
        start = self.next_seq
        self.next_seq += n
        return start, n

    def _sent(self, q: int, n: int) -> None:
        self.sent += n
        self.nbytes += n * self.packet.size
        self.per_queue[q] += n
        self.t_end = time.monotonic()

    async def _pace(self, start: int) -> bool:
        """Sleep until packet ``start`` is due under --rate; False if that is past the end."""
        if self.rate is None:
            return True
        assert self.t_start is not None
        due = self.t_start + start / self.rate
        loop = asyncio.get_running_loop()
        if self._past_deadline(loop.time() + (due - time.monotonic())):
            return False
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return True

    async def pump(self, q: int, tx: TxQueue, ring_size: int) -> None:
        """Send on one queue until --count or --duration is reached (a wait for ring space
        ends at --duration too)."""
        zero_copy = self.args.zero_copy
        size = self.packet.size
        nseg = -(-size // self.args.buffer_size)
        most = max(1, ring_size // nseg)
        build, tap = self.packet.build, self.tap
        while True:
            start, n = self._take()
            if not n or not await self._pace(start):
                return
            self.waiting += 1
            try:
                async with asyncio.timeout_at(self.deadline):
                    if zero_copy:
                        await self._zero_copy(q, tx, start, n, most)
                    else:
                        pkts = [build(s) for s in range(start, start + n)]
                        before = tx.counters.packets
                        try:
                            await tx.send_batch(pkts)
                        finally:
                            done = tx.counters.packets - before
                            self._sent(q, done)
                            if tap is not None:
                                for p in pkts[:done]:
                                    tap.write(p, "out", queue=q)
            except TimeoutError:
                return  # --duration is over while the ring was full
            finally:
                self.waiting -= 1
            await asyncio.sleep(0)  # let the other queues, the display and Ctrl-C in

    async def _zero_copy(self, q: int, tx: TxQueue, start: int, n: int, most: int) -> None:
        size, fill, build, tap = self.packet.size, self.packet.fill, self.packet.build, self.tap
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
            self._sent(q, k)
            done += k

    async def take(self, q: int, rx: RxQueue) -> None:
        """Receive and count what the peer sends back (so that a reflecting peer is never
        stuck waiting for our receive ring), until the link goes down."""
        tap = self.tap
        try:
            while True:
                batch = await rx.receive(256)
                try:
                    if tap is not None:
                        for pkt in batch:
                            tap.write(pkt, "in", queue=q)
                    self.received += len(batch)
                    self.received_bytes += batch.nbytes
                finally:
                    batch.release()
        except (DisconnectedError, ClosedResourceError):
            return  # the senders see it too

    async def watch(self, progress: Progress) -> None:
        """Warn on stderr when nothing moved for STALL_WARNING s while a send waits."""
        loop = asyncio.get_running_loop()
        last, since, warned = (-1, -1), loop.time(), False
        while True:
            await asyncio.sleep(_STALL_CHECK)
            now = (self.sent, self.received)
            if now != last or not self.waiting:
                last, since, warned = now, loop.time(), False
            elif not warned and loop.time() - since >= STALL_WARNING:
                warned = True
                self.stalls += 1
                progress.clear()
                if not self.args.quiet:
                    print(f"gen: warning: nothing sent or received for {STALL_WARNING:g} s: "
                          "the peer takes no packets (transmit ring full)", file=sys.stderr,
                          flush=True)  # fmt: skip

    def progress_sample(self) -> tuple[int, int, str]:
        extra = f"received {self.received:,}" if self.received else ""
        return self.sent, self.nbytes, extra

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
            "queues_requested": args.queues,
            "requested": self.limit,
            "sent": self.sent,
            "bytes": self.nbytes,
            "received": self.received,
            "received_bytes": self.received_bytes,
            "seconds": round(elapsed, 6),
            "packets_per_second": round(self.sent / elapsed) if elapsed > 0 else 0,
            "bits_per_second": round(self.nbytes * 8 / elapsed) if elapsed > 0 else 0,
            "per_queue": list(self.per_queue),
            "ring_full_waits": ring_full,
            "stalls": self.stalls,
            "drained": self.drained,
            "interrupted": self.interrupted,
            "error": self.error,
            "peer_left": self.peer_left,
            "pcap": args.pcap,
        }


def _print_summary(args: argparse.Namespace, s: dict[str, Any]) -> None:
    if s["error"] and not s["interrupted"]:
        print(f"aiomemif gen: {s['error']}", file=sys.stderr, flush=True)
    if args.json:
        print_json(args, s)
        return
    rate = human_rate(s["packets_per_second"], s["bits_per_second"] / 8)
    of = f" of {s['requested']}" if s["requested"] is not None else ""
    print(
        f"gen: sent {s['sent']}{of} packets of {s['size']} bytes ({s['bytes']} bytes) in "
        f"{s['seconds']:.3f} s, {rate}, {s['queues']} queue(s) {s['per_queue']}, "
        f"{s['transmit']}, ring full {s['ring_full_waits']} times; "
        f"received {s['received']} packets",
        flush=True,
    )
    if s["drained"] is False:
        print("gen: warning: the peer had not taken every packet when we disconnected", flush=True)
    if s["interrupted"]:
        print("gen: interrupted", flush=True)
    elif s["peer_left"] and not s["error"]:
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


async def _send_all(args: argparse.Namespace, gen: _Gen, pumps: list[asyncio.Task[None]]) -> None:
    assert gen.conn is not None
    await asyncio.gather(*pumps)
    try:
        gen.drained = await _drain(gen.conn, args.linger)
    except DisconnectedError as exc:
        # Everything was sent; the peer leaving now (e.g. a sink with --count that has
        # had enough) is no failure of ours.
        gen.peer_left = exc.reason


async def _generate(args: argparse.Namespace, gen: _Gen, conn: Connection) -> None:
    gen.conn = conn
    gen.per_queue = [0] * len(conn.tx_queues)
    sizes = [q.ring_size for q in conn.details().tx_queues]
    progress = Progress(args, "gen", gen.progress_sample, limit=gen.limit)
    loop = asyncio.get_running_loop()
    gen.t_start = gen.t_end = time.monotonic()
    if args.duration is not None:
        gen.deadline = loop.time() + args.duration
    pumps = [loop.create_task(gen.pump(q, tx, sizes[q])) for q, tx in enumerate(conn.tx_queues)]
    takers = [loop.create_task(gen.take(q, rx)) for q, rx in enumerate(conn.rx_queues)]
    helpers = [loop.create_task(progress.run()), loop.create_task(gen.watch(progress))]
    sending = loop.create_task(_send_all(args, gen, pumps))
    everything = [sending, *pumps, *takers, *helpers]
    try:
        waiting: set[asyncio.Task[None]] = {sending, *takers}
        while not sending.done():
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not sending and task.exception() is not None:
                    await task  # a receive failed: raise its exception
        await sending
    finally:
        for t in everything:
            t.cancel()
        await asyncio.gather(*everything, return_exceptions=True)
        progress.update()
        progress.clear()


async def run(args: argparse.Namespace) -> int:
    """Send test packets; 0 when every packet was sent.

    Raises:
        UsageError: a bad option value.
        CommandError: the link could not be set up, or --pcap could not be written (the
            last flush).
    """
    try:
        packet = TestPacket(args.mode, args.size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with open_tap(args, args.mode) as tap:
        gen = _Gen(args, packet, tap)
        try:
            async with open_link(args) as conn:
                if not args.quiet:
                    print(link_up_text("gen", args, conn), file=sys.stderr, flush=True)
                await _generate(args, gen, conn)
            if tap is not None:
                tap.flush()
        except asyncio.CancelledError:
            gen.interrupted = True
            _print_summary(args, gen.summary())
            raise
        except (DisconnectedError, RemoteProtocolError) as exc:
            gen.error = ending_text(exc)
        except OutputError as exc:
            gen.error = str(exc)
        except MemifError as exc:  # e.g. a packet that cannot fit the ring
            gen.error = str(exc)
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
