"""``aiomemif ping``: ICMP echo over a memif link, printed like ping(8)."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from typing import Any

from .. import Connection, RxQueue, TxQueue
from ..errors import ClosedResourceError, DisconnectedError, RemoteProtocolError, WouldBlockError
from ..tools import packets
from .common import (
    UsageError,
    add_link_options,
    closed_text,
    emit,
    ending_text,
    open_link,
    positive,
    print_json,
)
from .responder import ipv4_arg, mac_arg

__all__ = ["register", "run"]

PING_EPILOG = """\
examples:
  aiomemif ping --socket /tmp/x.sock 192.168.1.1
      five pings from 192.168.1.2 (ARP first), as a client
  aiomemif ping --role server --socket /tmp/x.sock 192.168.1.1 -c 100 -i 0.01
      wait for a client (e.g. aiomemif responder --role client), then ping fast
  aiomemif ping --socket /run/vpp/memif.sock --ip 10.0.0.2 10.0.0.1 -s 1400
  aiomemif ping --socket @memif --mode ip 192.168.1.1 --json
      bare IPv4 packets (no Ethernet, no ARP); JSON summary on stdout

Every wait is bounded: a request that cannot be sent within -W seconds (the peer offers
no buffers) is skipped and counted as not sent, so a run ends after about
-c x -i + -W seconds whatever the peer does.

A reply with a bad ICMP checksum (libmemif's example icmp_responder sums the header only)
is shown with "(bad checksum)" and counted as received; the summary says how many.

Exit status: 0 if any reply arrived, 1 if none did (ARP failed, nothing could be sent, no
reply) or the link could not be set up or went down early, 2 for bad options, 130 on
Ctrl-C, 143 on SIGTERM (after the summary).
"""

_ARP_ATTEMPTS = 3
_MAX_PAYLOAD = 65535 - packets.IPV4_HEADER_LEN - packets.ICMP_HEADER_LEN  # 65507
_PATTERN = bytes(range(256)) * 257


def _payload(seq: int, size: int) -> bytes:
    start = seq & 0xFF
    return _PATTERN[start : start + size]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number of seconds, got {text}")
    return value


def _timeout(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _size(text: str) -> int:
    value = int(text)
    if not 0 <= value <= _MAX_PAYLOAD:
        raise argparse.ArgumentTypeError(f"must be 0..{_MAX_PAYLOAD} bytes, got {value}")
    return value


class _Pinger:
    """One ping run over one connection: the receiver task and the bookkeeping."""

    def __init__(self, args: argparse.Namespace, conn: Connection) -> None:
        self.args = args
        self.conn = conn
        self.rx: RxQueue = conn.rx_queues[0]
        self.tx: TxQueue = conn.tx_queues[0]
        self.ethernet = args.mode == 0
        self.src_ip: bytes = args.ip
        self.src_mac: bytes = args.mac
        self.target: bytes = args.target
        self.target_mac: bytes | None = args.target_mac
        self.ident = os.getpid() & 0xFFFF
        self.size: int = args.size
        self.timeout: float = args.timeout
        self.lines = not (args.json or args.quiet)
        self.sent: dict[int, float] = {}  # seq -> send time
        self.answered: set[int] = set()
        self.transmitted = 0
        self.unsent = 0
        self.dropped_replies = 0
        #: Why no echo request was sent (ARP failed), if so.
        self.arp_error: str | None = None
        self.rtts: list[float] = []
        self.duplicates = self.late = self.corrupt = 0
        #: Replies whose ICMP checksum is wrong (counted as received all the same).
        self.bad_checksum = 0
        self.replies: list[dict[str, Any]] = []
        self.progress = asyncio.Event()
        self.arp_reply: asyncio.Future[bytes] | None = None
        self.started = time.monotonic()
        self.ip_ident = 0

    # -- receiving ---------------------------------------------------------------------
    async def receive(self) -> None:
        """Handle every packet until the link goes down (quietly on DISCONNECT)."""
        async for batch in self.rx:
            now = time.perf_counter()
            out: list[bytes] = []
            try:
                for pkt in batch:
                    self._packet(bytes(pkt), now, out)
            finally:
                batch.release()
            if out:  # ARP replies: never wait for ring space here, the receiver must go on
                try:
                    sent = self.tx.send_batch_nowait(out)
                except WouldBlockError:
                    sent = 0
                self.dropped_replies += len(out) - sent

    async def _send(self, frame: bytes) -> bool:
        """Send ``frame``, waiting at most -W seconds for ring space; False if it was not
        sent (the peer offers no buffers)."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.tx.send(frame)
        except TimeoutError:
            self.unsent += 1
            return False
        return True

    def _packet(self, data: bytes, now: float, out: list[bytes]) -> None:
        if not self.ethernet:
            self._ip(data, now)
            return
        try:
            eth = packets.parse_ethernet(data)
            if eth.ethertype == packets.ETHERTYPE_ARP:
                self._arp(packets.parse_arp(eth.payload), out)
            elif eth.ethertype == packets.ETHERTYPE_IPV4:
                self._ip(eth.payload, now)
        except ValueError:
            pass  # not ours to judge: a ping ignores what it cannot parse

    def _arp(self, msg: packets.Arp, out: list[bytes]) -> None:
        if msg.is_reply and msg.sender_ip == self.target:
            if self.arp_reply is not None and not self.arp_reply.done():
                self.arp_reply.set_result(msg.sender_mac)
        elif msg.is_request and msg.target_ip == self.src_ip:
            # The target may ask for our address before it can answer us.
            out.append(packets.arp_reply(self.src_mac, self.src_ip, msg.sender_mac, msg.sender_ip))

    def _ip(self, data: bytes, now: float) -> None:
        try:
            ip = packets.parse_ipv4(data)
        except ValueError:
            return
        if not ip.checksum_ok or ip.protocol != packets.IPPROTO_ICMP or ip.dst != self.src_ip:
            return
        try:
            msg = packets.parse_icmp(ip.payload)
        except ValueError:
            return
        if not (msg.is_echo_reply and msg.ident == self.ident):
            return
        sent = self.sent.get(msg.seq)
        if sent is None:
            return  # not a request of this run
        rtt = (now - sent) * 1000.0
        if rtt > self.timeout * 1000.0:
            self.late += 1
            return
        dup = msg.seq in self.answered
        wrong = msg.payload != _payload(msg.seq, self.size)
        if dup:
            self.duplicates += 1
        else:
            self.answered.add(msg.seq)
            self.rtts.append(rtt)
        if wrong:
            self.corrupt += 1
        # A reply with a bad ICMP checksum still proves the peer answered (libmemif's
        # example icmp_responder sums the 8-byte header only): shown and counted, not lost.
        bad = not msg.checksum_ok
        if bad:
            self.bad_checksum += 1
        nbytes = packets.ICMP_HEADER_LEN + len(msg.payload)
        src = packets.format_ip(ip.src)
        self.replies.append({"seq": msg.seq, "bytes": nbytes, "ttl": ip.ttl,
                             "time_ms": round(rtt, 3), "duplicate": dup,
                             "wrong_data": wrong, "bad_checksum": bad})  # fmt: skip
        if self.lines:
            tail = (" (DUP!)" if dup else "") + (" (wrong data)" if wrong else "")
            tail += " (bad checksum)" if bad else ""
            print(f"{nbytes} bytes from {src}: icmp_seq={msg.seq} ttl={ip.ttl} "
                  f"time={rtt:.3f} ms{tail}", flush=True)  # fmt: skip
        self.progress.set()

    # -- sending -------------------------------------------------------------------------
    def _frame(self, ip_packet: bytes) -> bytes:
        if not self.ethernet:
            return ip_packet
        assert self.target_mac is not None
        return packets.ethernet(self.target_mac, self.src_mac, packets.ETHERTYPE_IPV4, ip_packet)

    async def resolve(self, receiver: asyncio.Task[None]) -> bool:
        """Find the target's MAC with ARP (ethernet mode); False if nobody answered."""
        if not self.ethernet or self.target_mac is not None:
            return True
        loop = asyncio.get_running_loop()
        self.arp_reply = loop.create_future()
        request = packets.arp_request(self.src_mac, self.src_ip, self.target)
        sent = 0
        for _ in range(_ARP_ATTEMPTS):
            if not await self._send(request):
                continue
            sent += 1
            waiting: list[asyncio.Future[Any]] = [self.arp_reply, receiver]
            await asyncio.wait(waiting, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
            if self.arp_reply.done():
                self.target_mac = self.arp_reply.result()
                if self.args.verbose and not self.args.quiet:
                    emit(self.args, f"ARP: {packets.format_ip(self.target)} is at "
                         f"{packets.format_mac(self.target_mac)}")  # fmt: skip
                return True
            if receiver.done():
                break
        self.arp_reply.cancel()
        who = packets.format_ip(self.target)
        if sent:
            self.arp_error = f"no ARP reply from {who} ({sent} tries)"
        else:
            self.arp_error = (
                f"no ARP request could be sent to {who} in {_ARP_ATTEMPTS} tries of "
                f"{self.timeout:g} s: the peer offers no buffers"
            )
        return False

    async def ping(self, receiver: asyncio.Task[None]) -> None:
        """Send the echo requests on schedule, then wait for the last replies."""
        count: int = self.args.count
        interval: float = self.args.interval
        start = time.perf_counter()
        last = start
        for i in range(count):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.wait([receiver], timeout=delay)
            if receiver.done():
                return
            seq = (i + 1) & 0xFFFF
            self.ip_ident = (self.ip_ident + 1) & 0xFFFF
            echo = packets.icmp_echo(self.ident, seq, _payload(seq, self.size))
            ip = packets.ipv4(self.src_ip, self.target, packets.IPPROTO_ICMP, echo,
                              ident=self.ip_ident)  # fmt: skip
            frame = self._frame(ip)
            self.answered.discard(seq)  # seq wrapped around: a new request
            self.sent.pop(seq, None)
            stamp = time.perf_counter()
            if not await self._send(frame):
                if self.lines:
                    print(f"icmp_seq={seq}: not sent: no room in the transmit ring for "
                          f"{self.timeout:g} s (the peer offers no buffers)",
                          flush=True)  # fmt: skip
                continue
            last = self.sent[seq] = stamp
            self.transmitted += 1
        deadline = last + self.timeout
        while len(self.answered) < min(self.transmitted, 0x10000) and not receiver.done():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self.progress.clear()
            waiter = asyncio.get_running_loop().create_task(self.progress.wait())
            try:
                await asyncio.wait([waiter, receiver], timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            finally:
                waiter.cancel()

    # -- results -------------------------------------------------------------------------
    def ok(self, link_down: str | None) -> bool:
        """Any reply arrived (and the link did not go down before the last request)."""
        return bool(self.rtts) and (link_down is None or self.transmitted == self.args.count)

    def summary(self, link_down: str | None, interrupted: bool) -> dict[str, Any]:
        received = len(self.rtts)
        loss: float | None = None
        if self.transmitted:
            loss = round(100.0 * (self.transmitted - received) / self.transmitted, 4)
        rtt: dict[str, float] | None = None
        if self.rtts:
            mean = sum(self.rtts) / received
            var = max(0.0, sum(r * r for r in self.rtts) / received - mean * mean)
            rtt = {"min": round(min(self.rtts), 3), "avg": round(mean, 3),
                   "max": round(max(self.rtts), 3), "mdev": round(math.sqrt(var), 3)}  # fmt: skip
        return {
            "command": "ping",
            "ok": self.ok(link_down) and not interrupted,
            "target": packets.format_ip(self.target),
            "source": packets.format_ip(self.src_ip),
            "mode": "ethernet" if self.ethernet else "ip",
            "target_mac": packets.format_mac(self.target_mac) if self.target_mac else None,
            "size": self.size,
            "transmitted": self.transmitted,
            "not_sent": self.unsent,
            "received": received,
            "duplicates": self.duplicates,
            "late": self.late,
            "wrong_data": self.corrupt,
            "bad_checksum": self.bad_checksum,
            "loss_percent": loss,
            "arp_error": self.arp_error,
            "arp_replies_dropped": self.dropped_replies,
            "time_ms": round((time.monotonic() - self.started) * 1000.0),
            "rtt_ms": rtt,
            "replies": self.replies,
            "link_down_reason": link_down,
            "interrupted": interrupted,
        }

    def print_summary(self, link_down: str | None = None, interrupted: bool = False) -> None:
        s = self.summary(link_down, interrupted)
        if self.args.json:
            print_json(self.args, s)
            return
        print(f"\n--- {s['target']} ping statistics ---")
        if s["arp_error"] is not None:
            print(f"ARP failed ({s['arp_error']}): no echo request sent, "
                  f"time {s['time_ms']}ms", flush=True)  # fmt: skip
            return
        extra = f", +{s['duplicates']} duplicates" if s["duplicates"] else ""
        if s["wrong_data"]:
            extra += f", {s['wrong_data']} with wrong data"
        if s["bad_checksum"]:
            extra += f", {s['bad_checksum']} with bad checksum"
        if s["not_sent"]:
            extra += f", {s['not_sent']} not sent (transmit ring full)"
        if s["loss_percent"] is not None:
            extra += f", {s['loss_percent']:g}% packet loss"
        print(f"{s['transmitted']} packets transmitted, {s['received']} received{extra}, "
              f"time {s['time_ms']}ms")  # fmt: skip
        if s["rtt_ms"]:
            r = s["rtt_ms"]
            print(f"rtt min/avg/max/mdev = {r['min']:.3f}/{r['avg']:.3f}/{r['max']:.3f}/"
                  f"{r['mdev']:.3f} ms")  # fmt: skip
        sys.stdout.flush()


def _error(text: str) -> None:
    """A failure worth seeing even with --quiet or --json (stderr)."""
    print(f"aiomemif ping: {text}", file=sys.stderr, flush=True)


def _link_down_reason(conn: Connection, receiver: asyncio.Task[None]) -> str | None:
    """How the link ended while we pinged (``peer disconnected: ...``), if it did."""
    if not receiver.done() or receiver.cancelled():
        return None
    exc = receiver.exception()
    if exc is None:  # the iteration ended: the peer sent DISCONNECT (or we closed)
        return closed_text(conn)
    if isinstance(exc, ClosedResourceError):
        return None
    if isinstance(exc, DisconnectedError | RemoteProtocolError):
        return ending_text(exc)
    raise exc


async def run(args: argparse.Namespace) -> int:
    """Ping; 0 if any reply arrived.

    Raises:
        UsageError: -s too large for an Ethernet frame (or another bad option value).
        CommandError: the link could not be set up.
    """
    if args.mode == 0 and args.size > 65535 - 14 - packets.IPV4_HEADER_LEN - 8:
        raise UsageError(f"-s {args.size} does not fit an Ethernet frame of at most 65535 bytes")
    async with open_link(args) as conn:
        pinger = _Pinger(args, conn)
        receiver = asyncio.get_running_loop().create_task(pinger.receive())
        reason: str | None = None
        try:
            if pinger.lines:
                target = packets.format_ip(pinger.target)
                print(f"PING {target} ({target}) from {packets.format_ip(pinger.src_ip)} "
                      f"{args.size}({args.size + 28}) bytes of data.", flush=True)  # fmt: skip
            if not await pinger.resolve(receiver):
                reason = _link_down_reason(conn, receiver)
                if reason is None and pinger.arp_error is not None:
                    _error(f"ARP failed: {pinger.arp_error}; no echo request sent")
            else:
                await pinger.ping(receiver)
                reason = _link_down_reason(conn, receiver)
        except (DisconnectedError, RemoteProtocolError) as exc:  # a send found the link down
            reason = ending_text(exc)
        except asyncio.CancelledError:  # Ctrl-C: summary first, then 130
            pinger.print_summary(interrupted=True)
            raise
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
    if reason is not None:
        _error(reason)
    elif pinger.unsent and not pinger.rtts and pinger.arp_error is None:
        _error(f"{pinger.unsent} of {args.count} echo requests not sent: the peer offers "
               "no buffers")  # fmt: skip
    pinger.print_summary(link_down=reason)
    return 0 if pinger.ok(reason) else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ping`` subcommand."""
    p = sub.add_parser(
        "ping",
        help="send ICMP echo requests over memif and print the replies like ping(8)",
        description="Resolve TARGET with ARP (ethernet mode), send ICMP echo requests, print\n"
        "one line per reply and a ping(8)-style summary.",
        epilog=PING_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="TARGET", type=ipv4_arg, help="IPv4 address to ping")
    p.add_argument("-c", "--count", type=positive, default=5, help="echo requests to send (5)")
    p.add_argument("-i", "--interval", type=_seconds, default=1.0,
                   help="seconds between requests (1.0)")  # fmt: skip
    p.add_argument("-s", "--size", type=_size, default=56,
                   help="ICMP payload bytes (56, i.e. 64-byte ICMP messages)")  # fmt: skip
    p.add_argument("-W", "--timeout", type=_timeout, default=1.0,
                   help="seconds to wait for each reply (and each ARP reply) (1.0)")  # fmt: skip
    p.add_argument("--ip", type=ipv4_arg, default=packets.parse_ip("192.168.1.2"),
                   help="our IPv4 source address (192.168.1.2)")  # fmt: skip
    p.add_argument("--mac", type=mac_arg, default=packets.parse_mac("02:fe:00:00:00:02"),
                   help="our MAC address, ethernet mode (02:fe:00:00:00:02)")  # fmt: skip
    p.add_argument("--target-mac", type=mac_arg, default=None,
                   help="the target's MAC: skip ARP (ethernet mode)")  # fmt: skip
    add_link_options(p, default_role="client")
    p.set_defaults(run=run)
