"""Fuzz target: the server's transmit path into the buffers a client offers.

Input: configuration bytes (cacheline, ring size up to 32, start index so that the u16
cursors wrap, the client's buffer size, extra regions), then a script: the client offers slots
(raw descriptors, runs of buffers of any capacity, region and offset, the last offers
again lap after lap so that the memo of checked runs is reached, head set to anything),
and the server sends: ``write`` of packets of fuzzed sizes (equal ones, for the bulk and
chain paths, or mixed, from 0 to past 65,535 bytes), ``reserve`` then ``commit`` (with
fuzzed lengths), ``cancel`` or a second commit, and ``reset`` at a new CONNECT.

Checked after every call, against a snapshot of every region taken before it:

- only the documented errors escape (``RemoteProtocolError`` exactly when head claims more
  than the ring, ``EmptyPacketError`` only for an empty packet, ``PacketTooLargeError``,
  ``ConfigurationError``, ``LocalProtocolError``), and a call that raised published nothing;
- no byte changed outside the buffers offered in the slots the server may fill (by
  descriptors that name an existing region and end inside it), the length and flags words
  of the slots it published, and tail;
- every published slot is either empty (length 0, no flags: an unusable offer) or a
  segment at most its offer's capacity; chains end inside what was published; where the
  offered buffers overlap neither each other nor the ring, the packets read back from the
  published descriptors are exactly the packets sent, and nothing but lengths and flags
  changed in them; a reservation's views lie inside the buffers offered in their slots;
- counters move by the packets, bytes, empty slots and chains published.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: import from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiomemif._core import wire as w
from aiomemif._core.layout import ring_bytes
from aiomemif._core.ring import QueueCounters, Ring
from aiomemif._core.server_tx import ServerTx
from aiomemif._core.tx import TxReservation
from aiomemif.errors import (
    ConfigurationError,
    EmptyPacketError,
    LocalProtocolError,
    MemifError,
    PacketTooLargeError,
    RemoteProtocolError,
)
from fuzz.harness import Finding, Reader, Regions, attempt, check, main

MASK = w.MASK16
NEXT = w.DESC_FLAG_NEXT
DESC = w.DESC
MAX_PACKET = 65535
#: Packet sizes are drawn below one of these (the last two reach the size errors).
SIZE_LIMITS = (64, 2048, MAX_PACKET + 1, MAX_PACKET + 2)
PATTERN = bytes(range(256)) * 300
POKE, OFFER, REOFFER, SET_HEAD, WRITE, RESERVE, RESET, WRITE_ONE = range(8)
WRITE_ERRORS = (RemoteProtocolError, PacketTooLargeError, EmptyPacketError)
RESERVE_ERRORS = (*WRITE_ERRORS, ConfigurationError, LocalProtocolError)

Span = tuple[int, int, int]  # region, offset, length


def packet(n: int, salt: int) -> bytes | memoryview:
    """``n`` bytes that differ from those of the next salt: bytes, or (for large
    packets, which the server then converts) a view."""
    at = salt % 256
    return PATTERN[at : at + n] if n <= 4096 else memoryview(PATTERN)[at : at + n]


class Session:
    """One M2S ring in regions: the client's offers (the target plays it) and a ServerTx."""

    def __init__(self, r: Reader) -> None:
        b0 = r.byte()
        self.cl = cl = 128 if b0 & 1 else 64
        extra = (b0 >> 1) & 3
        log2 = r.byte() % 6  # up to 32 slots: the checks read every offered slot
        self.n = n = 1 << log2
        self.mask = n - 1
        start = r.u16()
        self.bsize = bsize = 1 + r.u16() % 512
        self.ring_len = ring_len = ring_bytes(log2, cl)
        sizes = [ring_len + n * bsize + r.byte()] + [1 + r.u16() for _ in range(extra)]
        self.mem = mem = Regions(sizes)
        self.ring = ring = Ring(mem.views[0], 0, log2, cl)
        self.tx = tx = ServerTx(ring, mem.views, QueueCounters())
        tx.reset()
        tx.tail = start
        ring.set_tail(start)
        #: What the client last offered in each slot (offered again by REOFFER).
        self.offers = [DESC.pack(0, 0, bsize, ring_len + s * bsize, 0) for s in range(n)]
        for s in range(n):
            ring.desc[16 * s : 16 * s + 16] = self.offers[s]
        self.head = start
        self.set_head(start + n)
        self.salt = 0

    # -- the client ----------------------------------------------------------------------
    def set_head(self, value: int) -> None:
        self.head = value & MASK
        self.ring.set_head(self.head)

    def put(self, slot: int, raw: bytes) -> None:
        s = slot & self.mask
        self.offers[s] = raw
        self.ring.desc[16 * s : 16 * s + 16] = raw

    def offer(self, r: Reader) -> None:
        """Offer a run of buffers of one capacity, region and offset shift from head."""
        count = min(r.byte(), self.n)
        cap, region, shift, flags = r.u16(), r.byte() % (len(self.mem.sizes) + 1), r.u16(), r.byte()
        for j in range(count):
            s = (self.head + j) & self.mask
            offset = max(0, self.ring_len + s * self.bsize + shift - 1024)
            self.put(s, DESC.pack(flags & 3, region, cap, offset, 0))
        self.set_head(self.head + count)

    def reoffer(self) -> None:
        """Offer every slot the server filled again, each with its last offer."""
        target = (self.tx.tail + self.n) & MASK
        count = (target - self.head) & MASK
        if count <= self.n:
            desc = self.ring.desc
            for j in range(count):
                s = (self.head + j) & self.mask
                desc[16 * s : 16 * s + 16] = self.offers[s]
        self.set_head(target)

    # -- the checks ----------------------------------------------------------------------
    def usable(self, reg: int, cap: int, off: int) -> bool:
        """An offer the server may fill: an existing region, a buffer ending inside it."""
        return reg < len(self.mem.sizes) and cap > 0 and off + cap <= self.mem.sizes[reg]

    def table(self, image: list[bytes]) -> list[tuple[int, int, int, int, int]]:
        """Every descriptor of the ring in a snapshot, by slot."""
        d = 2 * self.cl
        return list(DESC.iter_unpack(image[0][d : d + 16 * self.n]))

    def expect_error(self) -> bool:
        return (self.ring.head - self.tx.tail) & MASK > self.n

    def check_outcome(
        self,
        before: list[bytes],
        tail: int,
        sent: list[bytes | memoryview] | None,
        counts: list[int],
    ) -> None:
        """What one call did, from the snapshot ``before`` and the old ``tail``: ``sent``
        the packets it published in order (None: it published nothing)."""
        after = self.mem.snapshot()
        tx, mask, sizes = self.tx, self.mask, self.mem.sizes
        published = (tx.tail - tail) & MASK
        if sent is None:
            check(published == 0, f"a failed call published {published} slots")
            check(_counts(tx.counters) == counts, "a failed call moved the counters")
        changed = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if b != a]
        if not changed:  # nothing written, so nothing published
            check(published == 0, f"{published} slots published without a descriptor written")
            check(not sent and _counts(tx.counters) == counts, "sent without writing")
            return
        free = min((int.from_bytes(before[0][6:8], "little") - tail) & MASK, self.n)
        check(published <= free, f"published {published} slots of {free} offered")
        offers = self.table(before)
        # Every change lies in what the server may write.
        allowed: list[list[tuple[int, int]]] = [[] for _ in after]
        if published:
            allowed[0].append((self.cl, self.cl + 2))  # tail
        nreg = len(sizes)
        offered: list[Span] = [
            (reg, off, cap)
            for _f, reg, cap, off, _m in (offers[(tail + j) & mask] for j in range(free))
            if reg < nreg and cap > 0 and off + cap <= sizes[reg]
        ]
        for reg, off, cap in offered:  # (buffers next to each other as one span)
            spans = allowed[reg]
            if spans and spans[-1][1] == off:
                spans[-1] = (spans[-1][0], off + cap)
            else:
                spans.append((off, off + cap))
        # The published descriptors (that only their length and flags changed is checked
        # below, where no offered buffer overlaps the ring).
        desc, s0 = 2 * self.cl, tail & mask
        first = min(published, self.n - s0)
        allowed[0].append((desc + 16 * s0, desc + 16 * (s0 + first)))
        if published > first:
            allowed[0].append((desc, desc + 16 * (published - first)))
        for i in changed:
            img = bytearray(before[i])
            now = memoryview(after[i])
            for a, b in allowed[i]:
                img[a:b] = now[a:b]
            check(img == after[i], f"region {i}: bytes changed outside the offered buffers")
        if not _disjoint(offered, self.ring_len):
            return  # packets may overwrite each other, or the ring: nothing more to read back
        if sent is None:
            return
        check(not published or self.ring.tail == tx.tail, "tail published is not the tail")
        chains, empty = self.published(offers, self.table(after), tail, published)
        got_sizes = [sum(n for _r, _o, n in p) for p in chains]
        if got_sizes != [len(p) for p in sent]:
            raise Finding(f"published packets of {got_sizes} bytes, sent {list(map(len, sent))}")
        for spans_of, data in zip(chains, sent, strict=True):
            got = b"".join(after[r][o : o + n] for r, o, n in spans_of)
            check(got == data, "a packet reads back other bytes than were sent")
        want = [
            counts[0] + len(sent),
            counts[1] + sum(map(len, sent)),
            counts[2] + empty,
            counts[3] + sum(1 for p in chains if len(p) > 1),
        ]
        if _counts(tx.counters) != want:
            raise Finding(f"counters {_counts(tx.counters)}, expected {want}")

    def published(
        self,
        offers: list[tuple[int, int, int, int, int]],
        now: list[tuple[int, int, int, int, int]],
        tail: int,
        count: int,
    ) -> tuple[list[list[Span]], int]:
        """The packets in the ``count`` slots published from ``tail`` (each its segments,
        in the buffers offered there), and how many slots were published empty."""
        packets: list[list[Span]] = []
        chain: list[Span] = []
        empty = 0
        for j in range(count):
            s = (tail + j) & self.mask
            _f, reg, cap, off, meta = offers[s]
            flags, reg2, length, off2, meta2 = now[s]
            if (reg2, off2, meta2) != (reg, off, meta):
                raise Finding(f"slot {s}: the offer was rewritten")
            if length == 0:
                if chain or flags:
                    raise Finding(f"slot {s}: an empty slot with flags {flags:#x} or in a chain")
                empty += 1
                continue
            if not self.usable(reg, cap, off) or length > cap:
                raise Finding(f"slot {s}: {length} bytes into the offer {reg}:{off}+{cap}")
            chain.append((reg, off, length))
            if not flags & NEXT:
                packets.append(chain)
                chain = []
        check(not chain, "a chain runs past what was published")
        return packets, empty

    # -- the server ----------------------------------------------------------------------
    def write(self, packets: list[bytes | memoryview], start: int) -> bool:
        """``write`` and its checks; False once the link ends."""
        before, tail, counts = self.mem.snapshot(), self.tx.tail, _counts(self.tx.counters)
        fails = self.expect_error()
        done = attempt(WRITE_ERRORS, self.tx.write, packets, start)
        if isinstance(done, MemifError):
            self.check_error(done, fails, packets[start:])
            self.check_outcome(before, tail, None, counts)
            return not isinstance(done, RemoteProtocolError)
        check(not fails, "write took a head out of range")
        check(0 <= done <= len(packets) - start, f"write returned {done}")
        self.check_outcome(before, tail, packets[start : start + done], counts)
        return True

    def check_error(self, exc: MemifError, fails: bool, sizes_of: list[bytes | memoryview]) -> None:
        sizes = [len(p) for p in sizes_of]
        if isinstance(exc, RemoteProtocolError):
            check(fails, f"{exc!r} with head in range")
        elif isinstance(exc, EmptyPacketError):
            check(0 in sizes, f"{exc!r} without an empty packet")
        elif isinstance(exc, ConfigurationError):
            check(
                (self.ring.head - self.tx.tail) & MASK == self.n,
                f"{exc!r}: the ring is not wholly offered",
            )
        elif isinstance(exc, PacketTooLargeError):
            check(
                max(sizes) > MAX_PACKET or (self.ring.head - self.tx.tail) & MASK == self.n,
                f"{exc!r}: no packet is too large and the ring is not wholly offered",
            )

    def reserve(self, r: Reader) -> bool:
        count = 1 + r.byte() % 32
        size = r.u16() % SIZE_LIMITS[r.byte() % 4]
        how = r.byte() % 5
        before, tail, counts = self.mem.snapshot(), self.tx.tail, _counts(self.tx.counters)
        fails = self.expect_error()
        res = attempt(RESERVE_ERRORS, self.tx.reserve, count, size)
        if isinstance(res, MemifError):
            self.check_error(res, fails, [b"\0" * size])
            self.check_outcome(before, tail, None, counts)
            return not isinstance(res, RemoteProtocolError)
        check(not fails, "reserve took a head out of range")
        check(self.mem.snapshot() == before, "reserve wrote to shared memory")
        if res is None:
            return True
        packets = self.fill(res, before, tail, count, size)
        tx = self.tx
        if how == 0:
            tx.cancel(res)
            check(tx.reservation is None, "cancel left the reservation open")
            self.check_outcome(before, tail, None, counts)
            return True
        if how == 4:  # a second reservation while one is open
            again = attempt((LocalProtocolError,), tx.reserve, count, size)
            check(isinstance(again, LocalProtocolError), "two reservations at once")
            tx.cancel(res)
            self.check_outcome(before, tail, None, counts)
            return True
        lengths = None if how != 2 else [size - r.byte() % (size + 1) for _ in range(count)]
        sent = attempt((LocalProtocolError,), tx.commit, res, lengths)
        if isinstance(sent, LocalProtocolError):
            check(lengths is not None, f"commit refused the reserved lengths: {sent}")
            tx.cancel(res)
            self.check_outcome(before, tail, None, counts)
            return True
        check(sent == count and tx.reservation is None, f"commit sent {sent} of {count}")
        final = [p[:n] for p, n in zip(packets, lengths or [size] * count, strict=True)]
        self.check_outcome(before, tail, final, counts)
        if how == 3:
            before, tail, counts = self.mem.snapshot(), tx.tail, _counts(tx.counters)
            stale = attempt((LocalProtocolError,), tx.commit, res, None)
            check(isinstance(stale, LocalProtocolError), "a reservation committed twice")
            self.check_outcome(before, tail, None, counts)
        return True

    def fill(
        self, res: TxReservation, before: list[bytes], tail: int, count: int, size: int
    ) -> list[bytes | memoryview]:
        """Check where the reserved views are, write a packet into each; the packets."""
        per_packet = res.per_packet()
        check(len(per_packet) == count and res.count == count, "reserved another count")
        free = min((self.ring.head - tail) & MASK, self.n)
        check(res.start == tail and res.used <= free, f"reserved {res.used} of {free} slots")
        empty = set(res.empty)
        slots = [j for j in range(res.used) if j not in empty]
        check(len(slots) == sum(map(len, per_packet)), "segments do not fill the used slots")
        out: list[bytes | memoryview] = []
        offers = self.table(before)
        k = 0
        for segs in per_packet:
            check(sum(map(len, segs)) == size, "a reservation of another size")
            data = packet(size, self.salt)
            self.salt += 1
            at = 0
            for seg in segs:
                _f, reg, cap, off, _m = offers[(tail + slots[k]) & self.mask]
                where, pos = self.mem.locate(seg)
                if not self.usable(reg, cap, off) or where != reg or pos < off:
                    raise Finding(f"a view at {where}:{pos} in the offer {reg}:{off}+{cap}")
                if pos + len(seg) > off + cap:
                    raise Finding(f"a view at {where}:{pos} past the offer {reg}:{off}+{cap}")
                seg[:] = data[at : at + len(seg)]
                at += len(seg)
                k += 1
            out.append(data)
        return out

    def reset(self) -> None:
        """A new CONNECT: tail 0, and the client offers every slot again."""
        self.tx.reset()
        self.head = 0
        for s in range(self.n):
            self.put(s, self.offers[s])
        self.set_head(self.n)

    def close(self) -> None:
        if self.tx.reservation is not None:
            self.tx.cancel(self.tx.reservation)
        self.ring.release()
        self.mem.release()


def _counts(c: QueueCounters) -> list[int]:
    return [c.packets, c.bytes, c.bad_descriptors, c.chained]


def _disjoint(spans: list[Span], ring_len: int) -> bool:
    """True if no two offered buffers overlap, and none overlaps the ring (region 0)."""
    ordered = sorted([(0, 0, ring_len), *spans])
    for (r1, o1, n1), (r2, o2, _n2) in itertools.pairwise(ordered):
        if r1 == r2 and o2 < o1 + n1:
            return False
    return True


def one_input(data: bytes) -> None:
    r = Reader(data)
    session = Session(r)
    try:
        run(session, r)
    finally:
        session.close()


def run(s: Session, r: Reader) -> None:
    while r.left():
        op = r.byte() % 8
        if op == POKE:
            s.put(s.tx.tail + r.byte(), r.take(16).ljust(16, b"\0"))
        elif op == OFFER:
            s.offer(r)
        elif op == REOFFER:
            s.reoffer()
        elif op == SET_HEAD:
            s.set_head(r.u16())
        elif op == RESET:
            s.reset()
        elif op == RESERVE:
            if not s.reserve(r):
                return
        else:
            count = 1 if op == WRITE_ONE else 1 + r.byte() % 32
            mode = r.byte()
            limit = SIZE_LIMITS[(mode >> 1) & 3]
            if mode & 1:
                size = r.u16() % limit
                sizes = [size] * count
            else:
                sizes = [r.u16() % limit for _ in range(count)]
            packets = [packet(n, s.salt + i) for i, n in enumerate(sizes)]
            s.salt += count
            if not s.write(packets, (mode >> 3) % count):
                return


if __name__ == "__main__":
    main(one_input)
