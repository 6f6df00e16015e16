"""``aiomemif responder``: answer ARP and ICMP echo (ping) for one IPv4 address."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from .. import Connection, InterfaceConfig, Packet, Role, TxQueue
from ..errors import (
    ClosedResourceError,
    DisconnectedError,
    MemifError,
    PeerDisconnectedError,
    RemoteProtocolError,
    WouldBlockError,
)
from ..tools import packets
from .common import (
    add_link_options,
    closed_text,
    emit,
    interface_config,
    open_link,
    positive,
    print_json,
    serving,
)
from .pcap_recorder import Tap, add_pcap_option, open_tap

__all__ = ["ipv4_arg", "mac_arg", "register", "run"]

RESPONDER_EPILOG = """\
examples:
  aiomemif responder --role server --socket /tmp/x.sock
      answer as 192.168.1.1 / 02:fe:00:00:00:01 on a new socket until Ctrl-C
  aiomemif responder --socket /run/vpp/memif.sock --ip 10.0.0.1 -v
      connect to VPP as a client and log every packet
  aiomemif responder --role server --socket @memif --mode ip --count 5
      bare IPv4 (no Ethernet), stop after five echo replies
  aiomemif responder --role server --socket /tmp/x.sock --pcap replies.pcapng

The server role keeps listening: when a client goes, the next one is served; refused
handshakes are printed on stderr. A reply that finds no room in the transmit ring for 1 s
(the peer offers no buffers) is dropped and counted as not sent; it still counts towards
--count, so every wait is bounded. The client role ends when the link goes down (exit 0 if
the server sent DISCONNECT). Exit status 1 when the link could not be set up or --pcap
could not be written, 2 for bad options, 130 on Ctrl-C, 143 on SIGTERM.
"""

#: After --count replies: how long to let the peer read the last reply before DISCONNECT.
_LINGER = 1.0
#: How long a batch of replies waits for ring space before the rest is dropped.
_SEND_WAIT = 1.0


def ipv4_arg(text: str) -> bytes:
    """argparse type: an IPv4 address as 4 bytes."""
    try:
        return packets.parse_ip(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def mac_arg(text: str) -> bytes:
    """argparse type: a MAC address as 6 bytes."""
    try:
        return packets.parse_mac(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Responder:
    """Counters and per-packet handling, shared by every queue and every link."""

    def __init__(self, args: argparse.Namespace, tap: Tap | None, log: IO[str]) -> None:
        self.args = args
        self.tap = tap
        self.log = log
        self.ip: bytes = args.ip
        self.mac: bytes = args.mac
        self.ethernet = args.mode == 0
        self.limit: int | None = args.count
        self.received = self.arp_replies = self.echo_replies = 0
        self.ignored = self.malformed = self.unanswered = self.links = 0
        #: Echo requests answered (a reply made, sent or not): what --count counts.
        self.answered = 0
        #: Replies dropped for want of ring space (the peer offered no buffers).
        self.not_sent = 0
        #: Links on which a reply was dropped (each is reported once).
        self._starved: set[int] = set()
        self.ident = 0
        self.started = time.monotonic()
        self.done = asyncio.Event()
        self.verbose = args.verbose > 0 and not args.quiet

    def handle(self, pkt: Packet, queue: int, replies: list[tuple[bytes, bool]]) -> None:
        """Answer one packet: ``(reply, is_echo)`` appended to ``replies`` (if any)."""
        data = bytes(pkt)
        self.received += 1
        if self.tap is not None:
            self.tap.write(data, "in", queue=queue)
        self.ident = (self.ident + 1) & 0xFFFF
        if self.ethernet:
            ans = packets.answer_frame(data, self.mac, self.ip, ident=self.ident)
        else:
            ans = packets.answer_ip(data, self.ip, ident=self.ident)
        note = ""
        if ans.kind == "echo" and self.limit is not None and self.answered >= self.limit:
            self.unanswered += 1
            note = " (not sent: --count reached)"
        elif ans.kind == "echo" and ans.reply is not None:
            self.answered += 1
            replies.append((ans.reply, True))
        elif ans.kind == "arp" and ans.reply is not None:
            replies.append((ans.reply, False))
        elif ans.kind == "ignored":
            self.ignored += 1
        else:
            self.malformed += 1
        if self.verbose:
            print(f"q{queue} {len(data)} bytes: {ans.description}{note}", file=self.log, flush=True)

    def sent(self, replies: list[tuple[bytes, bool]], n: int, queue: int, link: int) -> None:
        """The first ``n`` of ``replies`` went out on ``queue``; the rest were dropped."""
        for reply, echo in replies[:n]:
            if echo:
                self.echo_replies += 1
            else:
                self.arp_replies += 1
            if self.tap is not None:
                self.tap.write(reply, "out", queue=queue)
        dropped = len(replies) - n
        if dropped:
            self.not_sent += dropped
            if link not in self._starved:
                self._starved.add(link)
                emit(self.args, f"warning: replies not sent: no room in the transmit ring "
                     f"for {_SEND_WAIT:g} s (the peer offers no buffers)")  # fmt: skip
        if self.limit is not None and self.answered >= self.limit:
            self.done.set()  # after the last reply went out (or was given up on)

    def summary(self) -> dict[str, Any]:
        return {
            "ip": packets.format_ip(self.ip),
            "mac": packets.format_mac(self.mac) if self.ethernet else None,
            "mode": "ethernet" if self.ethernet else "ip",
            "received": self.received,
            "echo_replies": self.echo_replies,
            "arp_replies": self.arp_replies,
            "ignored": self.ignored,
            "malformed": self.malformed,
            "unanswered": self.unanswered,
            "not_sent": self.not_sent,
            "links": self.links,
            "seconds": round(time.monotonic() - self.started, 3),
        }

    def print_summary(self, interrupted: bool, reason: str | None) -> None:
        s = self.summary()
        s["interrupted"] = interrupted
        s["link_down_reason"] = reason
        if self.args.json:
            print_json(self.args, s)
            return
        who = s["ip"] + (f" ({s['mac']})" if s["mac"] else "")
        print(f"--- responder {who} statistics ---", file=self.log)
        extra = f", {s['unanswered']} unanswered" if s["unanswered"] else ""
        if s["not_sent"]:
            extra += f", {s['not_sent']} not sent (no room in the transmit ring)"
        print(
            f"{s['received']} packets received, {s['echo_replies']} echo replies, "
            f"{s['arp_replies']} ARP replies, {s['ignored']} ignored, {s['malformed']} malformed"
            + extra,
            file=self.log,
        )
        links = "link" if s["links"] == 1 else "links"
        end = "interrupted" if interrupted else (reason or "done")
        print(f"{s['links']} {links}, {s['seconds']:.3f} s, {end}", file=self.log, flush=True)


async def _send_within(tx: TxQueue, frames: Sequence[bytes], seconds: float) -> int:
    """Send ``frames`` in order, waiting at most ``seconds`` in all for ring space; how
    many were sent (the rest were not: the peer offered no room).

    Raises:
        What :meth:`TxQueue.send` raises, but for a full ring.
    """
    try:
        sent = tx.send_batch_nowait(frames)
    except WouldBlockError:
        sent = 0
    if sent < len(frames):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                for frame in frames[sent:]:
                    await tx.send(frame)  # a cancelled send has sent nothing
                    sent += 1
    return sent


async def _serve_queue(conn: Connection, q: int, r: _Responder) -> None:
    rx = conn.rx_queues[q]
    tx = conn.tx_queues[q % len(conn.tx_queues)]
    async for batch in rx:
        replies: list[tuple[bytes, bool]] = []
        try:
            for pkt in batch:
                r.handle(pkt, rx.qid, replies)
        finally:
            batch.release()
        if replies:
            n = await _send_within(tx, [reply for reply, _ in replies], _SEND_WAIT)
            r.sent(replies, n, tx.qid, r.links)


async def _linger(conn: Connection) -> None:
    """Give the peer a moment to read the last reply (its ring drained, or it closed)."""
    with contextlib.suppress(TimeoutError, MemifError):
        async with asyncio.timeout(_LINGER):
            while conn.is_up:
                if conn.role is Role.CLIENT and all(  # a client: its tx rings empty once read
                    tx.free_slots() == conn.config.ring_size for tx in conn.tx_queues
                ):
                    return
                await asyncio.sleep(0.01)


async def _serve_link(conn: Connection, r: _Responder) -> str | None:
    """Answer on every queue until --count is reached (None) or the link goes down (how:
    ``peer disconnected: <reason>`` or ``link down: <reason>``)."""
    r.links += 1
    emit(r.args, f"link up: peer {conn.peer_app_name!r} interface {conn.peer_interface_name!r}, "
         f"{len(conn.rx_queues)} rx / {len(conn.tx_queues)} tx queue(s)")  # fmt: skip
    loop = asyncio.get_running_loop()
    workers = [loop.create_task(_serve_queue(conn, q, r)) for q in range(len(conn.rx_queues))]
    closed = loop.create_task(conn.wait_closed())
    done = loop.create_task(r.done.wait())
    try:
        await asyncio.wait([*workers, closed, done], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (*workers, closed, done):
            task.cancel()
        await asyncio.gather(*workers, closed, done, return_exceptions=True)
    for task in workers:
        if task.cancelled():
            continue
        exc = task.exception()
        if exc is not None and not isinstance(
            exc, DisconnectedError | ClosedResourceError | RemoteProtocolError
        ):
            raise exc
    if r.done.is_set():
        await _linger(conn)
        return None
    return closed_text(conn) or f"link down: {conn.close_reason or 'connection closed'}"


async def _as_server(args: argparse.Namespace, cfg: InterfaceConfig, r: _Responder) -> int:
    async with serving(args, cfg) as srv:
        emit(args, f"listening on {srv.address} (id {cfg.interface_id}); Ctrl-C to stop")
        while True:
            conn = await srv.accept()
            async with conn:
                reason = await _serve_link(conn, r)
            if reason is None:
                return 0
            emit(args, f"{reason}; waiting for the next client")


async def _as_client(args: argparse.Namespace, r: _Responder) -> tuple[int, str | None]:
    async with open_link(args) as conn:
        reason = await _serve_link(conn, r)
    if reason is None:
        return 0, None
    emit(args, reason)
    return (0 if isinstance(conn.close_error, PeerDisconnectedError) else 1), reason


async def run(args: argparse.Namespace) -> int:
    """Answer until interrupted, --count echo replies, or (as a client) the link goes down.

    Raises:
        CommandError: the link could not be set up (or the server could not listen), or
            --pcap could not be written.
    """
    cfg = interface_config(args)
    log = sys.stderr if args.json or args.pcap == "-" else sys.stdout
    with open_tap(args, args.mode) as tap:
        r = _Responder(args, tap, log)
        if r.ethernet:
            emit(args, f"answering ARP and ping for {packets.format_ip(r.ip)} at "
                 f"{packets.format_mac(r.mac)} (ethernet mode)")  # fmt: skip
        else:
            emit(args, f"answering ping for {packets.format_ip(r.ip)} (ip mode)")
        reason: str | None = None
        try:
            if args.role == "server":
                status = await _as_server(args, cfg, r)
            else:
                status, reason = await _as_client(args, r)
        except asyncio.CancelledError:  # Ctrl-C: the link is closed (DISCONNECT sent) by now
            r.print_summary(interrupted=True, reason=None)
            raise
    r.print_summary(interrupted=False, reason=reason)
    return status


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``responder`` subcommand."""
    p = sub.add_parser(
        "responder",
        help="answer ARP and ICMP echo (ping) for an IPv4 address",
        description="Answer ARP requests and ICMP echo requests for one IPv4 address (and\n"
        "MAC, in ethernet mode; bare IPv4 packets in ip mode) with correct checksums.\n"
        "Runs until Ctrl-C (or --count echo replies) and prints a summary.",
        epilog=RESPONDER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ip", type=ipv4_arg, default=packets.parse_ip("192.168.1.1"),
                   help="IPv4 address to answer for (192.168.1.1)")  # fmt: skip
    p.add_argument("--mac", type=mac_arg, default=packets.parse_mac("02:fe:00:00:00:01"),
                   help="MAC address, ethernet mode (02:fe:00:00:00:01)")  # fmt: skip
    p.add_argument("-c", "--count", type=positive, default=None,
                   help="stop after this many echo requests answered (default: never)")  # fmt: skip
    add_pcap_option(p)
    add_link_options(p, default_role="server")
    p.set_defaults(run=run)
