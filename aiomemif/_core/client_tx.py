"""Client transmit endpoint (pure): write into our own buffers, then publish head.

``ClientTx`` (client, S2M) owns its buffers: each slot's buffer is listed in a per-slot table
that zero-copy forwarding rewrites (buffers swap between the rx and tx rings, never sitting
in two rings at once).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import LocalProtocolError, RemoteProtocolError
from . import wire as w
from .buffers import as_wire_buffer
from .chains import ChainShapes, pick, whole
from .ring import QueueCounters, Ring
from .rx import ClientRx
from .slices import RunCuts, SliceTable
from .tx import (
    MAX_PACKET,
    ByteSink,
    TxEndpoint,
    TxReservation,
    _bad_size,
    _chain_columns,
    _copy_chains,
    _copy_pieces,
    _copy_run,
    _count_sent,
    _never_fits,
    _run_of,
    _too_large,
    _uniform_column,
)

__all__ = ["ClientTx"]

_MASK = w.MASK16
_NEXT = w.DESC_FLAG_NEXT
_HEAD = w.RING_HEAD_OFF // 2
_ROW = w.DESC_SIZE
#: Rings' worth of slots whose clean descriptors :meth:`ClientTx._publish_same` remembers
#: (more: all are forgotten, then remembered again as they come).
_ROW_LAPS = 4


class ClientTx(TxEndpoint):
    """Client side of an S2M ring: write into our own buffers and publish head."""

    def __init__(
        self,
        ring: Ring,
        region: memoryview,
        region_index: int,
        buffers: array[int],
        buffer_size: int,
        headroom: int,
        counters: QueueCounters,
        sink: ByteSink | None = None,
    ) -> None:
        self.ring = ring
        self.region = region
        self.region_index = region_index
        #: Offset of the buffer behind each slot (rewritten by zero-copy forwarding).
        self.buffers = buffers
        self.buffer_size = buffer_size
        self.headroom = headroom
        self.capacity = buffer_size - headroom
        self.counters = counters
        self.head = 0
        self.reservation: TxReservation | None = None
        #: Where each slot's data starts (its buffer + headroom): the offset its descriptor
        #: carries for a copied packet.
        self.data = array("I", (b + headroom for b in buffers))
        #: The same offsets as a list (its ints compare by identity in :attr:`cuts`).
        self.data_list = self.data.tolist()
        #: Slices that cut the views of zero-copy reservations of chains, and the getters
        #: that cut those of one buffer each (forgotten when forwarding moves a buffer).
        self.cuts = SliceTable(ring.size)
        self.run_cuts = RunCuts(self.data_list)
        #: Clean descriptors of runs of equal packets, per (first slot, count, size); and
        #: how many slots they cover (forgotten when forwarding moves a buffer).
        self._rows: dict[tuple[int, int, int], bytes] = {}
        self._rows_held = 0
        #: The descriptors of packets of each size, for runs of chains of many sizes.
        self.shapes = ChainShapes(self.capacity)
        #: Per slot, 1 if the next slot's data starts where this slot's capacity ends (a
        #: chain over them is then one piece of memory, copied in one go).
        self.follows = bytearray(ring.size)
        self._set_follows(range(ring.size))
        #: Slots still to be written in full (flags, offset) before every descriptor is
        #: known to hold flags 0 and its slot's data offset; until then the bulk path
        #: rewrites those words too. Chains and forwarding make the ring dirty again.
        self.dirty = ring.size
        #: Where copies go: the region's mmap if the OS layer gave it (faster), else the view.
        self.sink: ByteSink = region if sink is None else sink
        self._plain_limit = min(MAX_PACKET, self.capacity * ring.size)

    def drop_sinks(self) -> None:
        """The link is down: stop referring to the region's mmap, so that a mapping a
        user's view still pins is freed together with that view."""
        self.sink = self.region

    def free(self) -> int:
        """Slots free for new packets.

        Raises:
            RemoteProtocolError: tail is ahead of head or more than a ring behind it.
        """
        ring = self.ring
        used = (self.head - ring.header[ring.tail_index]) & _MASK
        if used > ring.size:
            raise RemoteProtocolError("Ring tail out of range")
        return ring.size - used

    def _data_run(self, start: int, count: int) -> array[int]:
        """Data offsets of ``count`` slots from free-running index ``start`` (wrapping)."""
        s, size, data = start & self.ring.mask, self.ring.size, self.data
        return data[s : s + count] if s + count <= size else data[s:] + data[: s + count - size]

    def _run(self, n: int) -> tuple[ByteSink, array[int], int]:
        return self.sink, self._data_run(self.head, n), self.capacity

    def _publish(self, lengths: array[int], flags: array[int] | None) -> None:
        self._publish_at(lengths, None, flags)

    def _publish_same(self, size: int, n: int) -> None:
        """:meth:`_publish` of ``n`` packets of ``size`` bytes, no flags. In a clean ring
        the run's descriptors are stored whole, from a remembered copy (one contiguous
        copy is cheaper than a strided store of the length words alone)."""
        ring, head = self.ring, self.head
        s = head & ring.mask
        if self.dirty > 0 or s + n > ring.size:
            self._publish_at(_uniform_column(size, n), None, None)
            return
        rows = self._rows.get((s, n, size))
        if rows is None:
            rows = self._remember_rows(s, n, size)
        ring.desc[_ROW * s : _ROW * (s + n)] = rows
        self.head = head = (head + n) & _MASK
        ring.header[_HEAD] = head

    def _remember_rows(self, slot: int, n: int, size: int) -> bytes:
        """The clean descriptors of ``n`` slots from ring slot ``slot`` (inside the ring)
        holding ``size`` bytes each: flags 0, this region, the slots' own data offsets."""
        if self._rows_held + n > _ROW_LAPS * self.ring.size:
            self._forget_rows()
        rows = bytearray(_ROW * n)
        for k, offset in enumerate(self.data_list[slot : slot + n]):
            w.DESC.pack_into(rows, _ROW * k, 0, self.region_index, size, offset, 0)
        self._rows[slot, n, size] = blob = bytes(rows)
        self._rows_held += n
        return blob

    def _forget_rows(self) -> None:
        self._rows.clear()
        self._rows_held = 0

    def _publish_at(
        self, lengths: array[int], offsets: array[int] | None, flags: array[int] | None
    ) -> None:
        """Write descriptors from ``head`` (``offsets``: None for each slot's own data
        offset; others mark the ring dirty first) and publish them by moving head."""
        ring, head = self.ring, self.head
        n = len(lengths)
        if flags is not None or self.dirty > 0:
            if offsets is None:
                offsets = self._data_run(head, n)
            ring.write_descriptors(head, lengths, flags, offsets)
            self.dirty = ring.size if flags is not None else self.dirty - n
        else:  # clean: flags are 0 and offsets the slots' own, so only lengths change
            s = head & ring.mask
            if s + n <= ring.size:
                ring.words[4 * s + 1 : 4 * (s + n) : 4] = lengths
            else:
                ring.write_descriptors(head, lengths, None, None)
        self.head = (head + n) & _MASK
        ring.header[_HEAD] = self.head

    def _write_chains(self, seq: Sequence[Any], size: int, free: int, cap: int) -> int:
        """:meth:`write` of packets that all have the same size, over one buffer: each is
        a chain of ``k`` buffers; as many whole chains as fit. Where each chain's buffers
        follow each other in memory, a packet is one copy."""
        head = self.head
        k = -(-size // cap)
        count = min(len(seq), free // k)
        if not count:
            return 0
        offsets = self._data_run(head, count * k)
        gaps = self._gaps(head, count * k)
        if gaps.count(0) == gaps[k - 1 :: k].count(0):  # no gap inside a chain
            copied = _copy_run(self.sink, offsets[::k], seq[:count], (), size)
        else:
            copied = _copy_chains(self.sink, offsets, seq[:count], size, cap, gaps)
        if not copied:
            return self._write_each(seq, 0, free)
        lengths, flags = _chain_columns(size, cap, count)
        self._publish_at(lengths, offsets, flags)  # (the offsets the copy just used)
        self.counters.chained += count
        return _count_sent(self.counters, count, size * count)

    def _write_mixed(self, seq: Sequence[Any], lengths: list[int], free: int, cap: int) -> int:
        plan = self.shapes.plan(lengths)
        if plan.widest > self.ring.size:
            return self._write_each(seq, 0, free)  # it reports the packet
        if plan.slots > free:
            count = bisect_right(plan.ends, free)  # whole packets that fit
            if not count:
                return 0
            plan = plan.part(count)
        count, head = plan.count, self.head
        offsets = self._data_run(head, plan.slots)
        gaps = self._gaps(head, plan.slots)
        if whole(gaps, plan.lasts):  # every packet in one piece
            firsts = pick(offsets, plan.firsts)
            copied = _copy_run(self.sink, firsts, _run_of(seq, 0, count), lengths, 0)
        else:
            copied = _copy_pieces(self.sink, offsets, seq, lengths, plan.ends, cap, gaps)
        if not copied:
            return self._write_each(seq, 0, free)
        self._publish_at(plan.lengths, offsets, plan.flags)
        self.counters.chained += plan.chained
        return _count_sent(self.counters, count, plan.nbytes)

    def _gaps(self, start: int, count: int) -> bytes:
        """:attr:`follows` of ``count`` slots from free-running index ``start`` (wrapping)."""
        s, size, follows = start & self.ring.mask, self.ring.size, self.follows
        if s + count <= size:
            return bytes(follows[s : s + count])
        return bytes(follows[s:] + follows[: s + count - size])

    def _set_follows(self, slots: Iterable[int]) -> None:
        """Recompute :attr:`follows` of these slots (their data offsets are current)."""
        data, mask, cap = self.data, self.ring.mask, self.capacity
        for s in slots:
            self.follows[s & mask] = data[(s + 1) & mask] == data[s & mask] + cap

    def _write_one(self, packets: Sequence[Any], start: int, free: int) -> int:
        """:meth:`write` of one packet that fits one buffer (else the general path)."""
        p = packets[start]
        try:
            k = len(p)
        except TypeError:
            return self._write_each(packets, start, free)
        if not 0 < k <= self.capacity:
            return self._write_each(packets, start, free)
        ring, head = self.ring, self.head
        s = head & ring.mask
        o = self.data[s]
        try:
            self.sink[o : o + k] = p
        except (TypeError, ValueError, IndexError, BufferError):
            return self._write_each(packets, start, free)
        words = ring.words
        words[4 * s + 1] = k
        if self.dirty > 0:
            words[4 * s + 2] = o
            ring.halves[8 * s] = 0
            self.dirty -= 1
        self.head = head = (head + 1) & _MASK
        ring.header[_HEAD] = head
        c = self.counters
        c.packets += 1
        c.bytes += k
        return 1

    def _write_each(self, packets: Sequence[object], start: int, free: int) -> int:
        """The per-packet path of :meth:`write` (chains, conversions, errors)."""
        region, cap, mask = self.region, self.capacity, self.ring.mask
        bufs, head, room = self.buffers, self.head, self.headroom
        lengths, offsets = array("I"), array("I")
        add_len, add_off = lengths.append, offsets.append
        flags: array[int] | None = None
        used = nbytes = chained = 0
        i = start
        for i in range(start, len(packets)):
            p = packets[i]
            if type(p) is not bytes:
                p = as_wire_buffer(p)
            n = len(p)
            if 0 < n <= cap:
                if used == free:
                    break
                o = bufs[(head + used) & mask] + room
                region[o : o + n] = p
                add_len(n)
                add_off(o)
                if flags is not None:
                    flags.append(0)
                used += 1
                nbytes += n
                continue
            if n == 0 or n > MAX_PACKET:
                raise _bad_size(n)
            nseg = -(-n // cap)
            if nseg > self.ring.size:
                raise _too_large(n, f"needs {nseg} buffers; the ring has {self.ring.size}")
            if used + nseg > free:
                break
            if flags is None:
                flags = array("H", bytes(2 * len(lengths)))
            view = memoryview(p).cast("B") if not isinstance(p, memoryview) else p
            for k in range(nseg):
                seg = view[k * cap : (k + 1) * cap]
                o = bufs[(head + used) & mask] + room
                region[o : o + len(seg)] = seg
                add_len(len(seg))
                add_off(o)
                flags.append(_NEXT if k < nseg - 1 else 0)
                used += 1
            nbytes += n
            chained += 1
        else:
            i = len(packets)
        if not used:
            return 0
        self._publish_at(lengths, offsets, flags)
        c = self.counters
        c.packets += i - start
        c.bytes += nbytes
        c.chained += chained
        return i - start

    # -- zero-copy transmit ------------------------------------------------------------
    def reserve(self, count: int, size: int) -> TxReservation | None:
        """Reserve ``count`` packets of ``size`` bytes (chained if over one buffer).

        Returns None if they do not all fit now. Nothing is visible to the peer until
        :meth:`commit`.

        Raises:
            EmptyPacketError: ``size`` is 0.
            PacketTooLargeError: ``size`` is over 65535, or needs more slots than the ring.
            ConfigurationError: the packets together need more slots than the ring has.
            LocalProtocolError: a reservation is already open on this ring.
            RemoteProtocolError: the peer's tail is out of range (see :meth:`free`).
        """
        if self.reservation is not None:
            raise LocalProtocolError("a reservation is already open on this queue")
        ring = self.ring
        ring_size = ring.size
        cap = self.capacity
        if 0 < size <= cap:  # one buffer each: views straight from the data offsets
            if count > ring_size:
                raise _never_fits(count, size, count, ring_size)
            head = self.head
            used = (head - ring.header[ring.tail_index]) & _MASK  # (free(), inline)
            if used > ring_size:
                raise RemoteProtocolError("Ring tail out of range")
            if count > ring_size - used:
                return None
            views = self.run_cuts.cut(self.region, head & ring.mask, count, size)
            res = self.reservation = TxReservation(head, size, views)
            return res
        if not 0 < size <= MAX_PACKET:
            raise _bad_size(size)
        nseg = -(-size // cap)
        if nseg > ring_size:
            raise _too_large(size, f"needs {nseg} buffers; the ring has {ring_size}")
        used = count * nseg
        if used > ring_size:
            raise _never_fits(count, size, used, ring_size)
        if used > self.free():
            return None
        res = TxReservation(self.head, size)
        views = self._views(used, ([cap] * (nseg - 1) + [size - cap * (nseg - 1)]) * count)
        res.segments = list(map(list, zip(*[iter(views)] * nseg, strict=True)))
        res.used = used
        self.reservation = res
        return res

    def _views(self, count: int, lengths: list[int]) -> tuple[memoryview, ...]:
        """Views of ``lengths[k]`` bytes at the data offsets of ``count`` slots from head."""
        s, ring_size, data, region = (
            self.head & self.ring.mask,
            self.ring.size,
            self.data_list,
            self.region,
        )
        if s + count <= ring_size:
            return self.cuts.cut(region, s, data[s : s + count], lengths)
        first = ring_size - s
        return self.cuts.cut(region, s, data[s:], lengths[:first]) + self.cuts.cut(
            region, 0, data[: count - first], lengths[first:]
        )

    # -- zero-copy forwarding --------------------------------------------------------
    def forward_from(
        self,
        rx: ClientRx,
        packets: Sequence[tuple[int, int, int]],
        claim: Callable[[list[int]], None] | None = None,
    ) -> list[int]:
        """Send received packets of ``rx`` by swapping buffers between the two rings.

        ``packets`` lists ``(index, first slot, buffers)`` of each candidate, in order (see
        ``Batch``). Each packet's descriptors are read again and must lie inside the buffers
        of their own slots (:meth:`ClientRx.owned_segments`); one that does not is skipped
        and counted as a bad descriptor. Stops at the first packet that does not fit whole.
        ``claim`` is called with the indexes about to be sent before anything changes; if
        it raises, nothing is sent. Returns the indexes of the packets sent; their buffers
        now belong to this ring and this ring's free buffers to theirs.

        Raises:
            RemoteProtocolError: see :meth:`free`.
            Whatever ``claim`` raises.
        """
        room = self.free()
        segments: list[tuple[int, int, int]] = []
        flags = array("H")
        moved: list[int] = []
        nbytes = bad = chained = 0
        for index, first, nseg in packets:
            if len(segments) + nseg > room:
                break
            segs = rx.owned_segments(first, nseg)
            if segs is None:
                bad += 1
                continue
            segments.extend(segs)
            flags.extend([_NEXT] * (nseg - 1) + [0])
            nbytes += sum(length for _, length, _ in segs)
            chained += nseg > 1
            moved.append(index)
        if moved and claim is not None:
            claim(moved)
        if segments:
            self._swap_in(segments, rx.buffers, flags)
            rx.retable([slot for _, _, slot in segments])
        c = self.counters
        c.packets += len(moved)
        c.bytes += nbytes
        c.bad_descriptors += bad
        c.chained += chained
        return moved

    def _swap_in(
        self, segments: Sequence[tuple[int, int, int]], rx_buffers: array[int], flags: array[int]
    ) -> None:
        """Publish received buffers as transmitted packets by swapping buffers.

        ``segments[k]`` is ``(offset, length, rx_slot)`` of the k-th segment (already
        checked to lie inside the rx buffer of ``rx_slot``); the tx slot's own (free)
        buffer goes to that rx slot in exchange. The caller checked there is room.
        """
        mask, rx_mask = self.ring.mask, len(rx_buffers) - 1
        bufs = self.buffers
        lens, offs = array("I"), array("I")
        for k, (off, length, rx_slot) in enumerate(segments):
            s = (self.head + k) & mask
            r = rx_slot & rx_mask
            bufs[s], rx_buffers[r] = rx_buffers[r], bufs[s]
            self.data[s] = self.data_list[s] = bufs[s] + self.headroom
            self._set_follows((s - 1, s))
            lens.append(length)
            offs.append(off)
        self.run_cuts.forget()  # (the getters cut the slots' old buffers)
        self._forget_rows()  # (and the rows name them)
        self.dirty = self.ring.size  # offsets inside buffers, not at their data start
        self._publish_at(lens, offs, flags)  # (with flags given, it keeps the ring dirty)
