"""What both transmit endpoints share (pure): the reservation for zero-copy transmit, the
reservation bookkeeping, and the copy and column helpers of the bulk paths.

Packets larger than one buffer are split over consecutive slots with NEXT on every segment
but the last; head/tail is only ever published at packet boundaries.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigurationError, EmptyPacketError, LocalProtocolError, PacketTooLargeError
from . import wire as w
from .buffers import exported_error, release_views
from .ring import QueueCounters, Ring

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["MAX_PACKET", "ByteSink", "TxEndpoint", "TxReservation"]

_NEXT = w.DESC_FLAG_NEXT
#: The largest packet memif can describe as one chain (VPP/libmemif limit it to u16 too).
MAX_PACKET = 65535


class TxReservation:
    """Slots reserved for zero-copy transmit: writable views, published by ``commit``."""

    __slots__ = ("empty", "segments", "size", "start", "used", "views")

    def __init__(self, start: int, size: int, views: tuple[memoryview, ...] | None = None) -> None:
        self.start = start
        #: The reserved size of every packet.
        self.size = size
        #: One buffer per packet: the packets' writable views (then ``segments`` is empty).
        self.views = views
        #: Otherwise, per packet, the writable segment views (several for a chain).
        self.segments: list[list[memoryview]] = []
        #: Slots (relative to ``start``) the peer offered unusably: published empty.
        self.empty: list[int] = []
        #: Slots used (given: one per view; else the caller sets it).
        self.used = 0 if views is None else len(views)

    @property
    def count(self) -> int:
        """Packets reserved."""
        return len(self.views) if self.views is not None else len(self.segments)

    def one_view_each(self) -> Sequence[memoryview] | None:
        """Every packet's only view if none is chained (also when the reservation was made
        packet by packet, around unusable offers), else None."""
        if self.views is not None:
            return self.views
        segments = self.segments
        if any(len(segs) != 1 for segs in segments):
            return None
        return [segs[0] for segs in segments]

    def per_packet(self) -> list[list[memoryview]]:
        """Every packet's segment views (one-element lists in a one-buffer reservation)."""
        if self.views is not None:
            return [[v] for v in self.views]
        return self.segments

    def release_views(self) -> tuple[int, ...]:
        """Release every view; return the packets whose views are still exported."""
        if self.views is not None:
            return release_views(self.views)
        return tuple(i for i, segs in enumerate(self.segments) if release_views(segs))


class ByteSink(Protocol):
    """Where a transmitter copies packets: a region's memoryview, or (faster for slice
    assignment) the mmap behind it, which the OS layer hands in."""

    def __setitem__(self, key: slice, value: ReadableBuffer, /) -> None: ...


def _plain(packet: object, capacity: int) -> bool:
    """True if ``packet`` is bytes-like and fits one buffer: the first packet a write
    leaves for later may only be left if it is not an error (empty, too large, not bytes),
    which the per-packet path reports before anything of the call is published."""
    try:
        return 0 < memoryview(packet).nbytes <= capacity  # type: ignore[arg-type]
    except TypeError:
        return False


def _run_of(packets: Sequence[Any], start: int, n: int) -> Sequence[Any]:
    """``packets[start:start + n]`` (``packets`` itself if that is all of it)."""
    return packets if start == 0 and n == len(packets) else packets[start : start + n]


def _lengths_of(
    packets: Sequence[Any], start: int, n: int
) -> tuple[Sequence[Any], list[int]] | None:
    """``packets[start:start + n]`` and their lengths, or None if one has no length."""
    seq = _run_of(packets, start, n)
    try:
        return seq, list(map(len, seq))
    except TypeError:
        return None


def _size_guess(packets: Sequence[Any], start: int, n: int, limit: int) -> int:
    """The length of ``packets[start]`` if it is 1..``limit`` and the run's last packet
    has it too, else 0: a guess that all ``n`` packets have that size, which a copy with
    :func:`_copy_run` then proves (it refuses a packet of any other byte size), so no
    length is measured packet by packet."""
    try:
        size = len(packets[start])
        if 0 < size <= limit and len(packets[start + n - 1]) == size:
            return size
    except TypeError:
        pass
    return 0


def _count_sent(counters: QueueCounters, packets: int, nbytes: int) -> int:
    """Add a bulk send to ``counters``; return ``packets``."""
    counters.packets += packets
    counters.bytes += nbytes
    return packets


def _uniform_column(size: int, n: int) -> array[int]:
    """The length words of ``n`` descriptors of ``size`` bytes each."""
    return array("I", (size,)) * n


def _copy_run(
    sink: ByteSink,
    offsets: Sequence[int],
    seq: Sequence[Any],
    lengths: Sequence[int],
    size: int,
) -> bool:
    """Copy ``seq[k]`` to ``offsets[k]`` in ``sink`` (``size`` > 0: every packet must be
    exactly that many bytes, and ``lengths`` is not used). False if a packet is not a
    plain contiguous byte buffer of the expected size; nothing is published yet then, so
    the caller takes another path, which measures, converts or refuses it.
    The sequences have the same length (not re-checked here: ``strict`` costs)."""
    try:
        if size:
            for o, p in zip(offsets, seq):  # noqa: B905
                sink[o : o + size] = p
        else:
            for o, k, p in zip(offsets, lengths, seq):  # noqa: B905
                sink[o : o + k] = p
    except (TypeError, ValueError, IndexError, BufferError):
        return False
    return True


def _all_fit(lengths: list[int], same: bool, limit: int) -> bool:
    """True if every packet of a run is non-empty and at most ``limit`` bytes (``same``:
    all have the first one's length)."""
    size = lengths[0]
    return (same and 0 < size <= limit) or (min(lengths) > 0 and max(lengths) <= limit)


def _length_column(lengths: list[int], same: bool) -> array[int]:
    """The descriptors' length words for a run (``same``: all equal to the first)."""
    return _uniform_column(lengths[0], len(lengths)) if same else array("I", lengths)


def _copy_chains(
    sink: ByteSink,
    offsets: Sequence[int],
    seq: Sequence[Any],
    size: int,
    seg: int,
    gaps: bytes,
) -> bool:
    """Copy each ``size``-byte packet of ``seq`` in ``seg``-byte pieces to consecutive
    ``offsets`` (with ``gaps``, as for :func:`~aiomemif._core.chains.whole`): the packets
    with no gap inside their buffers in one piece each, as :func:`_copy_run` does, the
    others buffer by buffer. False as :func:`_copy_run`."""
    k = -(-size // seg)
    start = 0
    try:
        for i in _split_packets(gaps, k):
            if i > start and not _copy_run(
                sink, offsets[start * k : i * k : k], seq[start:i], (), size
            ):
                return False
            view = memoryview(seq[i])
            if view.format != "B" or view.ndim != 1:
                return False
            first = i * k
            for j in range(k):
                at = j * seg
                o, n = offsets[first + j], min(seg, size - at)
                sink[o : o + n] = view[at : at + n]
            start = i + 1
    except (TypeError, ValueError, IndexError, BufferError):
        return False
    return start >= len(seq) or _copy_run(sink, offsets[start * k :: k], seq[start:], (), size)


def _split_packets(gaps: bytes, k: int) -> list[int]:
    """The packets of ``k`` buffers each that ``gaps`` splits (a gap before a packet's
    last buffer), in order."""
    split: list[int] = []
    j = gaps.find(0)
    while j >= 0:
        if j % k != k - 1 and (not split or split[-1] != j // k):
            split.append(j // k)
        j = gaps.find(0, j + 1)
    return split


def _copy_pieces(
    sink: ByteSink,
    offsets: Sequence[int],
    seq: Sequence[Any],
    lengths: Sequence[int],
    ends: Sequence[int],
    cap: int,
    gaps: bytes,
) -> bool:
    """Copy packet ``i`` of ``seq`` (``lengths[i]`` bytes) into the ``cap``-byte buffers
    at ``offsets`` up to index ``ends[i]``: in one piece where no gap (as for
    :func:`~aiomemif._core.chains.whole`) falls inside it, else buffer by buffer. False as
    :func:`_copy_run`."""
    first = 0
    try:
        for p, n, end in zip(seq, lengths, ends):  # noqa: B905 (ends: one per packet)
            if gaps.find(0, first, end - 1) < 0:
                o = offsets[first]
                sink[o : o + n] = p
            else:
                view = memoryview(p)
                if view.format != "B" or view.ndim != 1 or view.nbytes != n:
                    return False
                for j in range(first, end):
                    at = (j - first) * cap
                    o = offsets[j]
                    take = min(cap, n - at)
                    sink[o : o + take] = view[at : at + take]
            first = end
    except (TypeError, ValueError, IndexError, BufferError):
        return False
    return True


def _chain_columns(size: int, seg: int, count: int) -> tuple[array[int], array[int]]:
    """Lengths and flags of ``count`` chains of ``size`` bytes in ``seg``-byte pieces."""
    k = -(-size // seg)
    lengths = array("I", [seg] * (k - 1) + [size - seg * (k - 1)]) * count
    flags = array("H", [_NEXT] * (k - 1) + [0]) * count
    return lengths, flags


def _too_large(n: int, what: str) -> PacketTooLargeError:
    return PacketTooLargeError(f"packet of {n} bytes {what}")


def _bad_size(n: int) -> EmptyPacketError | PacketTooLargeError:
    """The error for a packet size outside 1..65535: empty, or too large for memif."""
    if n == 0:
        return EmptyPacketError("empty packet: memif carries 1..65535 bytes")
    return _too_large(n, "cannot be sent (1..65535 bytes)")


def _never_fits(count: int, size: int, slots: int, ring_size: int) -> ConfigurationError:
    return ConfigurationError(
        f"{count} packets of {size} bytes need {slots} buffers; the ring has {ring_size}"
    )


class TxEndpoint:
    """One transmit template for both roles, with the role's hooks.

    :meth:`write` copies as many whole packets as fit: a run of packets that each fit one
    buffer goes in bulk into the buffers :meth:`_run` names, equal packets larger than one
    buffer go as chains (:meth:`_write_chains`), one packet alone takes
    :meth:`_write_one`, and everything else (conversions, errors, mixed chains, unusable
    offers) the per-packet path :meth:`_write_each`. :meth:`commit` publishes a zero-copy
    reservation. The subclasses say where buffers are (``ClientTx``: its own; ``ServerTx``:
    the ones the client offered) and how a publish moves the ring (head or tail).
    """

    ring: Ring
    counters: QueueCounters
    reservation: TxReservation | None
    #: The largest packet that can certainly be sent (alone, into an empty ring), for the
    #: packet after a run: one that is not is reported by the per-packet path.
    _plain_limit: int

    # -- role hooks -------------------------------------------------------------------
    def free(self) -> int:
        """Slots free for new packets (raises RemoteProtocolError on a bad peer index)."""
        raise NotImplementedError

    def _run(self, n: int) -> tuple[ByteSink, Sequence[int], int] | None:
        """Where the next ``n`` one-buffer packets go: (sink, data offsets, smallest
        capacity), or None when the bulk path cannot take them."""
        raise NotImplementedError

    def _publish(self, lengths: array[int], flags: array[int] | None) -> None:
        """Write the lengths and flags (zero if None) of the next slots (a client also its
        buffers' data offsets, where the ring needs them); then move the ring for the peer."""
        raise NotImplementedError

    def _publish_same(self, size: int, n: int) -> None:
        """:meth:`_publish` of ``n`` packets of ``size`` bytes each, no flags."""
        self._publish(_uniform_column(size, n), None)

    def _write_one(self, packets: Sequence[Any], start: int, free: int) -> int:
        raise NotImplementedError

    def _write_each(self, packets: Sequence[object], start: int, free: int) -> int:
        raise NotImplementedError

    def _write_chains(self, seq: Sequence[Any], size: int, free: int, cap: int) -> int:
        raise NotImplementedError

    def _write_mixed(self, seq: Sequence[Any], lengths: list[int], free: int, cap: int) -> int:
        """:meth:`write` of packets of 1..65535 bytes, some over one buffer (``cap``: the
        smallest capacity of the first slots), as whole packets in bulk where the
        buffers allow it; else the per-packet path."""
        raise NotImplementedError

    # -- the template -----------------------------------------------------------------
    def write(self, packets: Sequence[object], start: int = 0) -> int:
        """Copy as many whole packets of ``packets[start:]`` as fit; publish; return how many.

        Raises:
            EmptyPacketError: a packet is empty (nothing of this call is published).
            PacketTooLargeError: a packet is over 65535 bytes, or can never fit the ring
                (nothing of this call is published).
            TypeError: a packet is not bytes-like.
            RemoteProtocolError: the peer's ring index is out of range.
        """
        free = self.free()
        if free <= 0 or start >= len(packets):
            return 0
        n = min(len(packets) - start, free)
        if n < len(packets) - start and not _plain(packets[start + n], self._plain_limit):
            return self._write_each(packets, start, free)  # it decides about that packet
        if n == 1:
            return self._write_one(packets, start, free)
        run = self._run(n)
        if run is None:
            return self._write_each(packets, start, free)
        sink, offsets, cap = run
        limit = min(cap, MAX_PACKET)
        size = _size_guess(packets, start, n, limit)
        if size and _copy_run(sink, offsets, _run_of(packets, start, n), (), size):
            self._publish(_uniform_column(size, n), None)  # one size, as guessed
            return _count_sent(self.counters, n, size * n)
        measured = _lengths_of(packets, start, n)
        if measured is None:
            return self._write_each(packets, start, free)
        seq, lengths = measured
        size = lengths[0]
        same = lengths.count(size) == n
        if same and cap < size <= MAX_PACKET and -(-size // cap) <= self.ring.size:
            return self._write_chains(seq, size, free, cap)
        if not _all_fit(lengths, same, limit):
            if not same and min(lengths) > 0 and max(lengths) <= MAX_PACKET:
                return self._write_mixed(seq, lengths, free, cap)  # chains of many sizes
            return self._write_each(packets, start, free)
        # Every packet fits one buffer. Nothing is visible to the peer until the ring
        # moves, so a packet that turns out not to be plain bytes just sends the whole
        # call down the general path.
        if not _copy_run(sink, offsets, seq, lengths, size if same else 0):
            return self._write_each(packets, start, free)
        self._publish(_length_column(lengths, same), None)
        return _count_sent(self.counters, n, size * n if same else sum(lengths))

    def commit(self, res: TxReservation, lengths: Sequence[int] | None = None) -> int:
        """Publish a reservation (with the packets' final lengths); return packets sent.

        Raises:
            LocalProtocolError: not this endpoint's open reservation, a wrong number of
                lengths, or a length that is 0, above the reserved size or would leave a
                reserved segment empty.
            ExportedBufferError: a view is still exported to another object (nothing is
                sent; the reservation stays open).
        """
        if res is not self.reservation:
            raise LocalProtocolError("not the open reservation of this queue")
        views = res.views
        if views is not None and lengths is None:  # one buffer each, all of the reserved size
            exported = release_views(views)  # the user's views die before the peer may read
            if exported:
                raise exported_error("buffer", exported, "nothing was sent")
            n = len(views)
            self._publish_same(res.size, n)
            self.reservation = None
            c = self.counters
            c.packets += n
            c.bytes += res.size * n
            return n
        lens, flags = _segment_lengths(res, lengths)
        exported = res.release_views()  # the user's views die before the peer may read
        if exported:
            raise exported_error("buffer", exported, "nothing was sent")
        nbytes = sum(lens)
        if res.empty:  # slots the peer offered unusably go out empty, in their places
            lens, flags = _with_empty_slots(res, lens, flags)
        self._publish(lens, flags)
        return self._close(res, nbytes, len(res.empty))

    def _close(self, res: TxReservation, nbytes: int, bad: int = 0) -> int:
        """Close a committed reservation (its views already released): counters updated."""
        self.reservation = None
        c = self.counters
        n = res.count
        c.packets += n
        c.bytes += nbytes
        c.bad_descriptors += bad
        if res.used != n:  # some packet took more than one buffer
            c.chained += sum(1 for s in res.segments if len(s) > 1)
        return n

    def cancel(self, res: TxReservation, force: bool = False) -> None:
        """Drop a reservation without publishing anything. With ``force`` (the link is
        down) also when a view is still exported.

        Raises:
            ExportedBufferError: a view is still exported (the reservation stays open:
                its buffers would be reused while another object can still write them).
        """
        if res is self.reservation:
            exported = res.release_views()
            if exported and not force:
                raise exported_error("buffer", exported, "the buffers stay reserved")
            self.reservation = None


def _with_empty_slots(
    res: TxReservation, seg_lens: array[int], seg_flags: array[int] | None
) -> tuple[array[int], array[int]]:
    """The lengths and flags of every used slot of ``res``: the segments', with length 0
    interleaved at the slots listed in ``res.empty``."""
    empty = set(res.empty)
    lens, flags = array("I"), array("H")
    k = 0
    for slot in range(res.used):
        if slot in empty:
            lens.append(0)
            flags.append(0)
        else:
            lens.append(seg_lens[k])
            flags.append(seg_flags[k] if seg_flags is not None else 0)
            k += 1
    return lens, flags


def _segment_lengths(
    res: TxReservation, lengths: Sequence[int] | None
) -> tuple[array[int], array[int] | None]:
    """Segment lengths and flags of a reservation whose packets may have shrunk."""
    lens = array("I")
    flags: array[int] | None = None
    if lengths is not None and len(lengths) != res.count:
        raise LocalProtocolError("one length per reserved packet is required")
    size = res.size
    if res.views is not None:  # one buffer per packet, all reserved with the same size
        if lengths is None:
            return _uniform_column(size, len(res.views)), None
        wanted = list(lengths)
        if min(wanted) > 0 and max(wanted) <= size:
            return array("I", wanted), None
    for p, segs in enumerate(res.per_packet()):
        want = size if lengths is None else lengths[p]
        full = size - len(segs[-1])
        if not full < want <= size:
            raise LocalProtocolError(
                f"packet {p} was reserved as {size} bytes in {len(segs)} buffers; "
                f"its length must stay in {full + 1}..{size}"
            )
        for k, v in enumerate(segs):
            lens.append(len(v) if k < len(segs) - 1 else want - full)
        if len(segs) > 1 and flags is None:
            flags = array("H", bytes(2 * (len(lens) - len(segs))))
        if flags is not None:
            flags.extend([_NEXT] * (len(segs) - 1) + [0])
    return lens, flags
