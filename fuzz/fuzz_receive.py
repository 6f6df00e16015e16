"""Fuzz target: the receive path of both roles over a region image the peer controls.

Input: a few configuration bytes (which receiver: the server's ``ServerRx`` on an S2M
ring or the client's ``ClientRx`` on an M2S ring; cacheline; ring size, up to 32; the
start index, so that the u16 cursors wrap; the frame limit; regions and, for the client,
the buffers it offers), an initial image of the ring's descriptors, then a script of peer writes and
receiver calls: raw descriptors, honest runs and chains, the peer's index moved, set to
anything, polls with any limit, releases, a server's reset at CONNECT or a client's new
headroom. Republished slots that still hold the bytes of a lap before reach the memo of
checked runs; ``UNIFORM_RUN`` is lowered for some inputs so small rings reach the bytes
comparison too.

Each receiver is run twice over the same memory: as shipped, and a twin that takes every
poll down the per-descriptor path. Checked after every poll:

- ``poll`` raises only ``RemoteProtocolError``, exactly when the peer's index claims more
  than the protocol allows;
- every view handed out lies inside its region, inside the descriptor of its slot (for
  the client also inside the buffer it offered in that slot), the slots inside what was
  published, in order, chains flagged NEXT on all but their last segment, every packet at
  most the frame limit;
- cursors and counters move by what was handed out; held slots never pass the ring size;
- the bulk paths and the memo hand out exactly what the per-descriptor path does.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: import from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomemif._core.descriptors
from aiomemif._core import wire as w
from aiomemif._core.buffers import ChainedPacket, Packet
from aiomemif._core.layout import ring_bytes
from aiomemif._core.ring import QueueCounters, Ring
from aiomemif._core.rx import ClientRx, RxRun, ServerRx
from aiomemif.errors import MemifError, RemoteProtocolError
from fuzz.harness import Finding, Reader, Regions, attempt, check, main

MASK = w.MASK16
NEXT = w.DESC_FLAG_NEXT
DESC = w.DESC
MAX_FRAMES = (w.DEFAULT_MAX_FRAME_BYTES, 1, 7, 64, 100, 1500, 9000, 1 << 24)
POKE, HONEST, ADVANCE, SET_INDEX, POLL, RELEASE, RESET, POLL_RELEASE = range(8)


class SlowServerRx(ServerRx):
    """A ServerRx whose every poll takes the per-descriptor path: the reference."""

    def _collect(self, start: int, count: int, limit: int) -> RxRun:
        return self._collect_each(start, count, limit)


class SlowClientRx(ClientRx):
    """A ClientRx whose every poll takes the per-descriptor path: the reference."""

    def _collect(self, start: int, count: int, limit: int) -> RxRun:
        return self._collect_each(start, count, limit)


Seen = list[tuple[int, tuple[tuple[int, int, int], ...]]]


class Session:
    """One ring, the peer's writes to it (the target plays the peer), and both receivers."""

    def __init__(self, r: Reader) -> None:
        b0 = r.byte()
        self.client = bool(b0 & 1)
        cl = 128 if b0 & 2 else 64
        aiomemif._core.descriptors.UNIFORM_RUN = 2 if b0 & 4 else 64
        extra = (b0 >> 3) & 3
        log2 = r.byte() % 6  # up to 32 slots: every packet handed out is checked
        self.n = n = 1 << log2
        self.mask = n - 1
        start = r.u16()
        self.max_frame = MAX_FRAMES[r.byte() % len(MAX_FRAMES)]
        self.ring_len = ring_len = ring_bytes(log2, cl)
        if self.client:
            self.bsize = bsize = 1 + r.u16() % 512
            headroom = r.byte() % bsize
            mult, add = r.byte() | 1, r.byte()
            self.breg = 1 if b0 & 0x20 else 0
            first = 0 if self.breg else ring_len
            bases = [first + ((k * mult + add) & self.mask) * bsize for k in range(n)]
            sizes = [ring_len + r.byte()]
            if self.breg:
                sizes.append(n * bsize + r.byte())
            else:
                sizes[0] += n * bsize
        else:
            sizes = [ring_len + r.u16()]
        sizes += [1 + r.u16() for _ in range(extra)]
        self.mem = mem = Regions(sizes)
        self.ring = ring = Ring(mem.views[0], 0, log2, cl)
        self.rx: list[ServerRx | ClientRx]
        if self.client:
            self.rx = [
                kind(ring, mem.views, QueueCounters(), self.breg, array("I", bases), bsize,
                     headroom, self.max_frame)
                for kind in (ClientRx, SlowClientRx)
            ]  # fmt: skip
            ring.set_tail(start)
            for rx in self.rx:
                assert isinstance(rx, ClientRx)
                rx.head = rx.read = start
                rx.refill()
        else:
            self.rx = [kind(ring, mem.views, QueueCounters(), self.max_frame)
                       for kind in (ServerRx, SlowServerRx)]  # fmt: skip
            for rx in self.rx:
                assert isinstance(rx, ServerRx)
                rx.reset()
                rx.read = start
            ring.set_tail(start)
            ring.set_head(start)
        self.peer = start
        self.held: list[list[Packet]] = [[], []]
        k = r.byte() % (n + 1)
        ring.desc[: 16 * k] = r.take(16 * k).ljust(16 * k, b"\0")

    # -- the peer ------------------------------------------------------------------------
    def publish(self, index: int) -> None:
        """The peer's index: head of an S2M ring, tail of an M2S ring."""
        self.peer = index & MASK
        (self.ring.set_tail if self.client else self.ring.set_head)(self.peer)

    def honest(self, r: Reader) -> None:
        """Publish a run of chains of ``k`` equal segments, as a peer writes them."""
        k = 1 + r.byte() % 4
        count = min(r.byte() + 1, self.n // k)
        rx = self.rx[0]
        if isinstance(rx, ClientRx):
            region, room = self.breg, max(rx.buffer_size - rx.headroom, 1)
            length = 1 + r.u16() % room
            offsets = [rx.buffers[s] + rx.headroom for s in range(self.n)]
        else:
            region = r.byte() % (len(self.mem.sizes) + 1)
            length = 1 + r.u16()
            base = r.u16()
            offsets = [base + s * length for s in range(self.n)]
        for j in range(count * k):
            s = (self.peer + j) & self.mask
            flags = NEXT if j % k < k - 1 else 0
            DESC.pack_into(self.ring.desc, 16 * s, flags, region, length, offsets[s], 0)
        self.publish(self.peer + count * k)

    # -- the receivers -------------------------------------------------------------------
    def expected_error(self, rx: ServerRx | ClientRx) -> bool:
        """Whether the peer's index is out of range for ``rx`` (protocol §6)."""
        consumed = (rx.read - rx.held) & MASK
        published = (self.peer - consumed) & MASK
        if isinstance(rx, ClientRx):
            return published > (rx.head - consumed) & MASK
        return published > self.n

    def poll(self, limit: int) -> bool:
        """Poll both receivers and check what they hand out; False once the link ends."""
        seen: list[Seen] = []
        for i, rx in enumerate(self.rx):
            start, held = rx.read, rx.held
            new = (self.peer - (start - held)) & MASK
            new -= held
            before = _counts(rx.counters)
            fails = self.expected_error(rx)
            run = attempt((RemoteProtocolError,), rx.poll, limit)
            if isinstance(run, MemifError):  # RemoteProtocolError, the one it may raise
                check(fails, f"poll raised {run!r} on an index in range")
                continue
            check(not fails, "poll took an index out of range")
            seen.append(self.check_run(rx, run, start, held, new, before, full=i == 0))
            self.held[i].extend(run.packets)
        if len(seen) == 1:
            raise Finding("one receiver refused the index, its twin did not")
        if seen:
            fast, slow = self.rx
            if seen[0] != seen[1]:
                raise Finding(f"the bulk path took {seen[0]}, the per-descriptor path {seen[1]}")
            check((fast.read, fast.held) == (slow.read, slow.held), "cursors differ")
            check(_counts(fast.counters) == _counts(slow.counters), "counters differ")
        return bool(seen)

    def check_run(
        self,
        rx: ServerRx | ClientRx,
        run: RxRun,
        start: int,
        held: int,
        new: int,
        before: list[int],
        full: bool,
    ) -> Seen:
        """Check a poll's run; what it handed out, as (first slot, segments) per packet.
        Without ``full`` (the twin, compared with the receiver as shipped), the segments
        are only located."""
        used = (rx.read - start) & MASK
        check(run.start == start, "the run does not start at the read cursor")
        if used > max(new, 0) or rx.held != held + used or rx.held > self.n:
            raise Finding(f"took {used} slots of {new} published; holds {rx.held} of {self.n}")
        firsts = (
            run.slots if run.slots is not None else [start + i for i in range(len(run.packets))]
        )
        check(len(firsts) == len(run.packets), "one slot per packet")
        out: Seen = []
        end = nbytes = 0
        locate = self.mem.locate
        for pkt, first in zip(run.packets, firsts, strict=False):
            rel = (first - start) & MASK
            segs = pkt.segments if isinstance(pkt, ChainedPacket) else (pkt,)
            if not end <= rel or rel + len(segs) > used:
                raise Finding(f"a packet in slots {rel}+{len(segs)}, outside the {used} taken")
            if full:
                spans = self.check_segments(rx, segs, first)
            else:
                spans = tuple([(*locate(seg), len(seg)) for seg in segs])
            total = sum(n for _r, _o, n in spans)
            if len(pkt) != total or total > self.max_frame:
                raise Finding(f"a packet of {total} bytes (len {len(pkt)})")
            out.append((first & MASK, spans))
            end = rel + len(segs)
            nbytes += total
        after = _counts(rx.counters)
        check(after[0] - before[0] == len(run.packets), "packets counted")
        check(after[1] - before[1] == nbytes, "bytes counted")
        return out

    def check_segments(
        self, rx: ServerRx | ClientRx, segs: Sequence[memoryview], first: int
    ) -> tuple[tuple[int, int, int], ...]:
        """Where the segments of one packet from slot ``first`` are: (region, offset,
        length) each, checked against the descriptors and (client) the offered buffers."""
        out = []
        last = len(segs) - 1
        desc, locate, client = self.ring.desc, self.mem.locate, isinstance(rx, ClientRx)
        for k, seg in enumerate(segs):  # (hot: messages are formatted only on failure)
            s = (first + k) & self.mask
            flags, region, length, offset, _meta = DESC.unpack_from(desc, 16 * s)
            if bool(flags & NEXT) == (k == last):
                raise Finding(f"slot {s}: NEXT {flags:#x}, segment {k} of {last + 1}")
            where, at = locate(seg)
            if where != region or at < offset or at + len(seg) > offset + length:
                raise Finding(
                    f"slot {s}: a view of {len(seg)} at {where}:{at} outside its descriptor"
                    f" {region}:{offset}+{length}"
                )
            if client:
                assert isinstance(rx, ClientRx)
                base = rx.buffers[s]
                if where != self.breg or at < base or at + len(seg) > base + rx.buffer_size:
                    raise Finding(f"slot {s}: a view at {where}:{at} outside the buffer at {base}")
            out.append((where, at, len(seg)))
        return tuple(out)

    def release(self) -> None:
        for i, rx in enumerate(self.rx):
            for pkt in self.held[i]:
                pkt.release()
            self.held[i].clear()
            rx.release()

    def reset(self, r: Reader) -> None:
        """A server's CONNECT (cursors back to 0), or a client's new headroom."""
        if not self.client:
            self.release()
            for rx in self.rx:
                assert isinstance(rx, ServerRx)
                rx.reset()
            self.publish(0)
            return
        headroom = r.byte()
        for rx in self.rx:
            assert isinstance(rx, ClientRx)
            rx.set_headroom(headroom % rx.buffer_size)

    def close(self) -> None:
        for held in self.held:
            for pkt in held:
                pkt.release()
        self.ring.release()
        self.mem.release()


def _counts(c: QueueCounters) -> list[int]:
    return [c.packets, c.bytes, c.bad_descriptors, c.chained]


def one_input(data: bytes) -> None:
    r = Reader(data)
    shipped = aiomemif._core.descriptors.UNIFORM_RUN  # an input may lower it
    try:
        session = Session(r)
        try:
            run(session, r)
        finally:
            session.close()
    finally:
        aiomemif._core.descriptors.UNIFORM_RUN = shipped


def run(session: Session, r: Reader) -> None:
    ring = session.ring
    while r.left():
        op = r.byte() % 8
        if op == POKE:
            s = (session.rx[0].read + r.byte()) & session.mask
            ring.desc[16 * s : 16 * s + 16] = r.take(16).ljust(16, b"\0")
        elif op == HONEST:
            session.honest(r)
        elif op == ADVANCE:
            session.publish(session.peer + r.byte() + 1)
        elif op == SET_INDEX:
            session.publish(r.u16())
        elif op in (POLL, POLL_RELEASE):
            if not session.poll(r.byte()):
                return  # the link is torn down
            if op == POLL_RELEASE:
                session.release()
        elif op == RELEASE:
            session.release()
        else:
            session.reset(r)
        for rx in session.rx:
            check(rx.held <= session.n, f"{rx.held} slots held in a ring of {session.n}")
        check(all(len(h) <= session.n for h in session.held), "more packets held than slots")
        memo = session.rx[0].checked
        sizes = (len(memo._raw), len(memo._ok), len(memo._offsets), len(memo._values))
        check(sizes == (16 * session.n, *[session.n] * 3), f"the memo grew: {sizes}")


if __name__ == "__main__":
    main(one_input)
