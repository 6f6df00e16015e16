"""What ``aiomemif gen`` and ``aiomemif sink`` share: the test packet format, the checker,
the live progress line.

The test packet (every multi-byte field big-endian, i.e. network order)::

    ethernet mode (at least 22 bytes)           ip mode (at least 28 bytes)
    0   dst MAC 02:00:00:00:00:02               0   IPv4 header, 20 bytes: version 4, IHL 5,
    6   src MAC 02:00:00:00:00:01                   total length = packet size, id 0, DF,
    12  EtherType 0x88B5 (local experimental)       TTL 64, protocol 253 (experimentation),
    14  u64 sequence number                         valid checksum, 198.18.0.1 -> 198.18.0.2
    22  payload                                 20  u64 sequence number
                                                28  payload

and payload byte ``i`` is ``(sequence + i) mod 256``. The MACs are locally administered
unicast addresses and 198.18.0.0/15 is the benchmarking range (RFC 2544), so the traffic is
recognisably synthetic in a capture. Sequence numbers start at 0 and grow by one per packet
over all queues together; each queue carries an increasing subsequence.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Final, TextIO

from .. import ChainedPacket
from ..errors import DisconnectedError, PeerDisconnectedError, RemoteProtocolError

__all__ = [
    "DST_MAC",
    "ETHERTYPE",
    "IP_PROTO",
    "SRC_MAC",
    "Checker",
    "Progress",
    "TestPacket",
    "header_length",
    "human_rate",
    "number",
    "seconds",
]

DST_MAC: Final = bytes.fromhex("020000000002")
SRC_MAC: Final = bytes.fromhex("020000000001")
#: IEEE 802 "local experimental EtherType 1".
ETHERTYPE: Final = 0x88B5
#: IANA "use for experimentation and testing" (RFC 3692).
IP_PROTO: Final = 253
IP_SRC: Final = bytes([198, 18, 0, 1])
IP_DST: Final = bytes([198, 18, 0, 2])

_SEQ: Final = struct.Struct(">Q")
_ETH_HEADER: Final = DST_MAC + SRC_MAC + ETHERTYPE.to_bytes(2, "big")
#: 256 + 65535 bytes of the repeating 0..255 pattern: any start below 256 plus any length fits.
_PATTERN: Final = bytes(range(256)) * 258
_PATTERN_VIEW: Final = memoryview(_PATTERN)


def number(text: str, what: str, *, minimum: float, inclusive: bool) -> float:
    """An option value: a finite float above (or from) ``minimum``, for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    ok = value >= minimum if inclusive else value > minimum
    if not ok or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def seconds(text: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    return number(text, "a positive number of seconds", minimum=0.0, inclusive=False)


def header_length(mode: int) -> int:
    """Bytes before the sequence number: 14 (ethernet) or 20 (ip)."""
    return 20 if mode == 1 else 14


def _ipv4_header(total_length: int) -> bytes:
    hdr = bytearray(
        struct.pack(
            ">BBHHHBBH4s4s", 0x45, 0, total_length, 0, 0x4000, 64, IP_PROTO, 0, IP_SRC, IP_DST
        )
    )
    s = sum(struct.unpack(">10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into(">H", hdr, 10, ~s & 0xFFFF)
    return bytes(hdr)


class TestPacket:
    """Builds (and checks) test packets of one mode; see the module docstring."""

    __test__ = False  # not a pytest class

    def __init__(self, mode: int, size: int | None = None) -> None:
        self.mode = mode
        self.hlen = header_length(mode)
        self.min_size = self.hlen + 8
        self.size = size = self.min_size if size is None else size
        if size < self.min_size:
            raise ValueError(
                f"{'ip' if mode == 1 else 'ethernet'} mode test packets are at least "
                f"{self.min_size} bytes (header and sequence number), got {size}"
            )
        self.header = self.header_for(size)
        self._ip_headers: dict[int, bytes] = {}

    def header_for(self, length: int) -> bytes:
        return _ipv4_header(length) if self.mode == 1 else _ETH_HEADER

    def build(self, seq: int) -> bytes:
        """Packet ``seq`` of the configured size."""
        start = seq & 0xFF
        return b"".join(
            (self.header, _SEQ.pack(seq), _PATTERN[start : start + self.size - self.min_size])
        )

    def fill(self, view: memoryview, seq: int) -> None:
        """Write packet ``seq`` into ``view`` (exactly ``size`` bytes) in place."""
        h = self.hlen
        view[:h] = self.header
        _SEQ.pack_into(view, h, seq)
        start = seq & 0xFF
        view[h + 8 : self.size] = _PATTERN_VIEW[start : start + self.size - self.min_size]

    def parse(self, data: bytes | memoryview) -> tuple[int, bool]:
        """(sequence number, intact) of a received packet; (-1, False) when it is too short
        to hold one. Intact means the header and the whole payload are as generated."""
        n = len(data)
        if n < self.min_size:
            return -1, False
        h = self.hlen
        seq: int = _SEQ.unpack_from(data, h)[0]
        if self.mode == 1:
            hdr = self._ip_headers.get(n)
            if hdr is None:
                hdr = self._ip_headers[n] = _ipv4_header(n)
        else:
            hdr = _ETH_HEADER
        start = seq & 0xFF
        ok = data[:h] == hdr and data[h + 8 :] == _PATTERN_VIEW[start : start + n - h - 8]
        return seq, ok


#: Sequence numbers below this are tracked one by one (to find duplicates and drops);
#: the bitmap then takes at most 32 MiB.
_TRACK_LIMIT: Final = 1 << 28


class Checker:
    """Counts received test packets: out of order (per queue), duplicates, corrupt, and
    from the highest sequence number seen, missing ones (drops)."""

    __slots__ = (
        "_last",
        "_payloads",
        "_runs",
        "_seen",
        "corrupt",
        "duplicates",
        "max_seq",
        "out_of_order",
        "packet",
        "unique",
    )

    def __init__(self, packet: TestPacket, queues: int) -> None:
        self.packet = packet
        self._last = [-1] * queues
        self._seen = bytearray()
        self.unique = 0
        self.corrupt = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.max_seq = -1
        #: By packet size: the payloads of sequence numbers 0, 1, ... (cycling every 256).
        self._payloads: dict[int, list[bytes]] = {}
        #: By (packet size, count): the format of that many packets back to back.
        self._runs: dict[tuple[int, int], struct.Struct] = {}

    def check_batch(self, pkts: Sequence[memoryview | ChainedPacket], queue: int) -> None:
        """:meth:`check` of each packet of a batch, in order. The common case, a batch of
        equally long packets with consecutive new sequence numbers, in order on its queue,
        is checked as a whole: the received bytes against the expected ones, built in one
        go; anything else (or any difference) goes packet by packet, with the same counts."""
        if len(pkts) < 2 or not self._run_ok(pkts, queue):
            for pkt in pkts:
                self.check(pkt, queue)

    def _run_ok(self, pkts: Sequence[memoryview | ChainedPacket], queue: int) -> bool:
        """Check and count ``pkts`` as one run if they are one (else change nothing)."""
        n = len(pkts)
        first = pkts[0]
        size = len(first)
        tp = self.packet
        if size < tp.min_size or isinstance(first, ChainedPacket):
            return False
        if list(map(len, pkts)).count(size) != n:
            return False
        try:
            joined = b"".join(pkts)  # type: ignore[arg-type]
        except TypeError:  # a chained packet among them
            return False
        h = tp.hlen
        s: int = _SEQ.unpack_from(first, h)[0]
        e = s + n - 1
        if e >= _TRACK_LIMIT or s <= self._last[queue]:
            return False
        fmt = self._runs.get((size, n))
        if fmt is None:
            fmt = self._runs[size, n] = struct.Struct(">" + f"{h}sQ{size - h - 8}s" * n)
        args: list[bytes | int] = [tp.header_for(size), 0, b""]
        args *= n
        args[1::3] = range(s, s + n)
        args[2::3] = self._payload_run(size, s & 0xFF, n)
        if joined != fmt.pack(*args) or not self._claim(s, e):
            return False
        self._last[queue] = e
        self.unique += n
        if e > self.max_seq:
            self.max_seq = e
        return True

    def _payload_run(self, size: int, start: int, n: int) -> list[bytes]:
        """The payloads of ``n`` consecutive packets of ``size`` bytes, the first with
        sequence number ``start`` modulo 256."""
        cycle = self._payloads.get(size)
        if cycle is None or len(cycle) < start + n:
            plen = size - self.packet.min_size
            cycle = [_PATTERN[i & 0xFF : (i & 0xFF) + plen] for i in range(start + n + 256)]
            self._payloads[size] = cycle
        return cycle[start : start + n]

    def _bitmap_for(self, last: int) -> bytearray:
        """The bitmap of sequence numbers seen, grown to hold ``last``."""
        seen, byte = self._seen, last >> 3
        if byte >= len(seen):
            seen.extend(bytes(max(byte + 1 - len(seen), len(seen), 4096)))
        return seen

    def _claim(self, s: int, e: int) -> bool:
        """Record sequence numbers ``s`` to ``e`` as seen; False (nothing recorded) if
        any of them was seen already."""
        seen = self._bitmap_for(e)
        a, b = s >> 3, e >> 3
        if a == b:
            mask = ((2 << (e - s)) - 1) << (s & 7)
            if seen[a] & mask:
                return False
            seen[a] |= mask
            return True
        lo, hi = (0xFF << (s & 7)) & 0xFF, (2 << (e & 7)) - 1
        if seen[a] & lo or seen[b] & hi or seen.count(0, a + 1, b) != b - a - 1:
            return False
        seen[a] |= lo
        seen[b] |= hi
        seen[a + 1 : b] = b"\xff" * (b - a - 1)
        return True

    def check(self, pkt: memoryview | ChainedPacket, queue: int) -> None:
        data = pkt.tobytes() if isinstance(pkt, ChainedPacket) else pkt
        seq, ok = self.packet.parse(data)
        if not ok:
            self.corrupt += 1
            return
        if seq < _TRACK_LIMIT:
            byte, bit = seq >> 3, 1 << (seq & 7)
            seen = self._seen
            if byte >= len(seen):
                seen = self._bitmap_for(seq)
            if seen[byte] & bit:
                self.duplicates += 1
                return
            seen[byte] |= bit
        self.unique += 1
        if seq < self._last[queue]:
            self.out_of_order += 1
        else:
            self._last[queue] = seq
        if seq > self.max_seq:
            self.max_seq = seq

    def drops(self, expected: int | None = None) -> int:
        """Packets missing: of ``expected`` (sequence numbers 0 .. expected-1), else of the
        sequence numbers up to the highest one seen."""
        total = self.max_seq + 1 if expected is None else expected
        return max(0, total - self.unique)


def human_rate(pps: float, bytes_per_s: float) -> str:
    """``1.23 Mpps 456.7 Mbit/s`` style."""

    def si(v: float) -> str:
        for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if v >= scale:
                return f"{v / scale:.2f} {unit}"
        return f"{v:.0f} "

    return f"{si(pps)}pps {si(bytes_per_s * 8)}bit/s"


class Progress:
    """A live one-line status on a terminal: redrawn with ``\\r`` about 4 times a second.

    Inactive (every call a no-op) unless the stream is a terminal and not ``--quiet``.
    ``sample()`` returns (packets, bytes, extra text) totals at the time of the call;
    ``limit`` (the packets expected, if known) is shown next to the total.
    """

    INTERVAL: Final = 0.25

    def __init__(
        self,
        args: argparse.Namespace,
        label: str,
        sample: Callable[[], tuple[int, int, str]],
        *,
        limit: int | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.active = not getattr(args, "quiet", False) and self.stream.isatty()
        self.label = label
        self.sample = sample
        self.limit = limit
        self._prev = (time.monotonic(), 0, 0)
        self._width = 0

    def update(self) -> None:
        if not self.active:
            return
        now = time.monotonic()
        packets, nbytes, extra = self.sample()
        t0, p0, b0 = self._prev
        dt = max(now - t0, 1e-9)
        pps, bps = (packets - p0) / dt, (nbytes - b0) / dt
        self._prev = (now, packets, nbytes)
        total = f"{packets:,}" if self.limit is None else f"{packets:,}/{self.limit:,}"
        line = f"{self.label}: {human_rate(pps, bps)}  total {total} packets"
        if extra:
            line += f"  {extra}"
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def clear(self) -> None:
        """Erase the line (before the summary is printed)."""
        if self.active and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    async def run(self) -> None:
        """Redraw until cancelled."""
        if not self.active:
            return
        while True:
            await asyncio.sleep(self.INTERVAL)
            self.update()


def link_ending(
    exc: DisconnectedError | RemoteProtocolError, short: bool
) -> tuple[str, str | None]:
    """How a receiving tool's link ended: ``(ended, error)``.

    The peer leaving with DISCONNECT is the normal end, and a failure only while ``short``
    of the requested count; any other loss of the link is a failure.
    """
    if isinstance(exc, PeerDisconnectedError):
        return "peer disconnect", exc.reason if short else None
    if isinstance(exc, RemoteProtocolError):
        return "link down", f"protocol error: {exc.reason}"
    return "link down", exc.reason
