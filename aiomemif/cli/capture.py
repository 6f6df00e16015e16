"""``aiomemif capture``: receive on a memif interface and write what arrives as pcapng."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import stat
import sys
import time
from typing import Any

from .. import Connection, RxQueue
from ..errors import DisconnectedError, RemoteProtocolError
from ..tools.pcapng import DEFAULT_SNAPLEN, DIRECTION_INBOUND, PcapngWriter
from .common import add_link_options, link_up_text, open_link, positive, print_json
from .pcap_recorder import (
    OutputError,
    PcapStream,
    interface_description,
    interface_name,
    linktype_of,
    open_pcap_stream,
)
from .traffic import Progress, link_ending, seconds

__all__ = ["register", "run"]

CAPTURE_EPILOG = """\
examples:
  aiomemif capture --socket /tmp/memif.sock -w out.pcapng
      connect, write every packet received to out.pcapng until the peer leaves or Ctrl-C
  aiomemif capture --socket @vpp-memif --role server -c 100 -w out.pcapng
      serve, capture 100 packets, stop
  aiomemif capture --socket /tmp/memif.sock -w - | wireshark -k -i -
      live view in Wireshark (the stream is flushed after every batch)
  aiomemif capture --socket /tmp/memif.sock --mode ip --snaplen 96 -w - | tshark -r -

The file is pcapng with one interface: link type ETHERNET (1), or RAW (101) in ip mode;
timestamps in microseconds (--time-precision nano: nanoseconds), taken when a batch is
received; each packet carries its receive queue (epb_queue) and direction inbound.
A capture that got no packet leaves no file behind (--keep-empty keeps it).
Exit status 0 when the capture ended normally (with -c: that many packets arrived), 1 when
the link could not be set up or went down early or the file could not be written, 2 for
bad options, 130 on Ctrl-C, 143 on SIGTERM.
"""

_PRECISIONS = {"micro": 6, "nano": 9}


def _snaplen(text: str) -> int:
    value = int(text)
    if not 1 <= value <= DEFAULT_SNAPLEN:
        raise argparse.ArgumentTypeError(f"must be 1..{DEFAULT_SNAPLEN}, got {value}")
    return value


class _Capture:
    def __init__(self, args: argparse.Namespace, out: PcapStream, writer: PcapngWriter) -> None:
        self.args = args
        self.out = out
        self.writer = writer
        self.limit: int | None = args.count
        self.packets = 0
        self.nbytes = 0
        self.per_queue: list[int] = []
        self.done = asyncio.Event()
        self.ended = "not connected"
        self.error: str | None = None
        self.interrupted = False
        self.t_start = time.monotonic()

    async def consume(self, q: int, rx: RxQueue) -> None:
        write, flush = self.writer.write_packet, self.writer.flush
        while True:
            want = 256
            if self.limit is not None:
                want = min(want, self.limit - self.packets)
                if want <= 0:
                    self.done.set()
                    return
            batch = await rx.receive(want)
            ts = time.time_ns()
            try:
                for pkt in batch:
                    write(pkt, timestamp_ns=ts, direction=DIRECTION_INBOUND, queue=q)
                n = len(batch)
                self.packets += n
                self.nbytes += batch.nbytes
                self.per_queue[q] += n
                flush()
            except OSError as exc:
                raise self.out.failed(exc) from None
            finally:
                batch.release()
            if self.limit is not None and self.packets >= self.limit:
                self.done.set()
                return
            await asyncio.sleep(0)

    def sample(self) -> tuple[int, int, str]:
        return self.packets, self.nbytes, f"to {self.args.write}"

    def summary(self) -> dict[str, Any]:
        complete = self.limit is None or self.packets >= self.limit
        return {
            "command": "capture",
            "ok": self.error is None and not self.interrupted and complete,
            "ended": self.ended,
            "file": self.args.write,
            "expected": self.limit,
            "packets": self.packets,
            "bytes": self.nbytes,
            "per_queue": list(self.per_queue),
            "seconds": round(time.monotonic() - self.t_start, 6),
            "interrupted": self.interrupted,
            "error": self.error,
        }


def _print_summary(args: argparse.Namespace, s: dict[str, Any]) -> None:
    if args.json:
        print_json(args, s)
    elif not args.quiet or not s["ok"]:
        of = f" of {s['expected']}" if s["expected"] is not None else ""
        where = "standard output" if s["file"] == "-" else s["file"]
        reason = f" ({s['error']})" if s["error"] else ""
        print(
            f"capture: {s['packets']}{of} packets ({s['bytes']} bytes) written to {where}; "
            f"ended by {s['ended']}{reason}",
            file=sys.stderr,
            flush=True,
        )


async def _capture(args: argparse.Namespace, cap: _Capture, conn: Connection) -> None:
    cap.per_queue = [0] * len(conn.rx_queues)
    progress = Progress(args, "capture", cap.sample, limit=cap.limit)
    tasks = [asyncio.create_task(cap.consume(q, rx)) for q, rx in enumerate(conn.rx_queues)]
    finished = asyncio.create_task(cap.done.wait())
    shower = asyncio.create_task(progress.run())
    cap.ended = "interrupt"
    try:
        await asyncio.wait(
            [finished, *tasks], timeout=args.duration, return_when=asyncio.FIRST_COMPLETED
        )
        cap.ended = "count" if cap.done.is_set() else "duration"
        for t in tasks:
            if t.done() and not t.cancelled():
                exc = t.exception()
                if exc is not None:
                    raise exc
    finally:
        everything: list[asyncio.Task[Any]] = [*tasks, finished, shower]
        for t in everything:
            t.cancel()
        await asyncio.gather(*everything, return_exceptions=True)
        progress.update()
        progress.clear()


def _stdout_gone() -> None:
    """The reader of our standard output went away: stop writing there, quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _remove_if_empty(path: str) -> None:
    """Remove a capture file that got no packet (only a regular file we wrote)."""
    with contextlib.suppress(OSError):
        if stat.S_ISREG(os.lstat(path).st_mode):
            os.unlink(path)


async def run(args: argparse.Namespace) -> int:
    """Capture packets to a pcapng file; 0 when the capture ended normally.

    Raises:
        OutputError: the file header could not be written.
        CommandError: the link could not be set up.
    """
    cap: _Capture | None = None
    try:
        with open_pcap_stream(args.write, "-w", args) as out:
            try:
                writer = PcapngWriter(out.stream)
                writer.add_interface(
                    linktype_of(args.mode),
                    snaplen=args.snaplen,
                    name=interface_name(args),
                    description=interface_description(args),
                    tsresol=_PRECISIONS[args.time_precision],
                )
            except OSError as exc:
                raise out.failed(exc) from None
            out.flush()
            cap = _Capture(args, out, writer)
            return await _run_capture(args, cap)
    finally:
        if (cap is None or cap.packets == 0) and args.write != "-" and not args.keep_empty:
            _remove_if_empty(args.write)


async def _run_capture(args: argparse.Namespace, cap: _Capture) -> int:
    try:
        async with open_link(args) as conn:
            if not args.quiet:
                print(link_up_text("capture", args, conn), file=sys.stderr, flush=True)
            cap.t_start = time.monotonic()
            await _capture(args, cap, conn)
        cap.out.flush()
    except asyncio.CancelledError:
        cap.interrupted = True
        cap.ended = "interrupt"
        _print_summary(args, cap.summary())
        raise
    except BrokenPipeError:
        _stdout_gone()
        cap.ended = "reader gone"
        _print_summary(args, cap.summary())
        return 0
    except OutputError as exc:
        cap.ended, cap.error = "write error", str(exc)
    except (DisconnectedError, RemoteProtocolError) as exc:
        short = cap.limit is not None and cap.packets < cap.limit
        cap.ended, error = link_ending(exc, short)
        if error is not None:
            cap.error = error
    summary = cap.summary()
    _print_summary(args, summary)
    return 0 if summary["ok"] else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``capture`` subcommand."""
    p = sub.add_parser(
        "capture",
        help="write the packets received on a memif interface to a pcapng file",
        description="Connect (or serve) a memif link, receive on every queue and write each\n"
        "packet to a pcapng file (or standard output, for Wireshark or tshark).",
        epilog=CAPTURE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("capture")
    g.add_argument(
        "-w", "--write", metavar="FILE", required=True, help="pcapng file to write (- for stdout)"
    )
    g.add_argument("-c", "--count", type=positive, default=None, help="stop after N packets")
    g.add_argument("--duration", type=seconds, default=None, help="stop after this many seconds")
    g.add_argument(
        "--snaplen",
        type=_snaplen,
        default=DEFAULT_SNAPLEN,
        help=f"keep at most this many bytes of each packet ({DEFAULT_SNAPLEN}: all)",
    )
    g.add_argument(
        "--time-precision",
        choices=sorted(_PRECISIONS),
        default="micro",
        help="timestamp resolution: micro (if_tsresol 6, default) or nano (9)",
    )
    g.add_argument(
        "--keep-empty",
        action="store_true",
        help="keep the file even when no packet arrived (default: remove it)",
    )
    add_link_options(p, default_role="client")
    p.set_defaults(run=run)
