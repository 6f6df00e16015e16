"""Zero-copy reservations at ring level: views cut from remembered slices
(:class:`~aiomemif._core.slices.SliceTable`) and, for a client's one-buffer packets, from
remembered getters (:class:`~aiomemif._core.slices.RunCuts`), in both roles, across the
ring's end, after the buffers behind the slots moved, and the commit that releases them
(a client's clean commit stores remembered descriptor rows).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable

import pytest
from support.links import ROLES, payload
from support.rig import MASK, NEXT, MmapRig, descriptors, take

from aiomemif import LocalProtocolError
from aiomemif._core.client_tx import ClientTx
from aiomemif._core.rx import ClientRx, ServerRx
from aiomemif._core.server_tx import ServerTx
from aiomemif._core.slices import RunCuts, SliceTable


def test_slice_table_cuts_remembers_and_refreshes() -> None:
    buf = mmap.mmap(-1, 4096)
    view = memoryview(buf)
    try:
        buf[:] = bytes(range(256)) * 16
        table = SliceTable(8)
        cuts = table.cut(view, 2, [100, 300, 700], [10, 20, 1])
        assert [bytes(c) for c in cuts] == [buf[100:110], buf[300:320], buf[700:701]]
        kept = table._slices[2:5]
        again = table.cut(view, 2, [100, 300, 700], [10, 20, 1])
        assert (
            table._slices[2:5] == kept
            and all(  # the same slice objects, reused
                a is b for a, b in zip(table._slices[2:5], kept, strict=True)
            )
        )
        assert [bytes(c) for c in again] == [bytes(c) for c in cuts]
        moved = table.cut(view, 3, [301, 700], [20, 2])  # another offset, another length
        assert [bytes(c) for c in moved] == [buf[301:321], buf[700:702]]
        assert [bytes(c) for c in table.cut_equal(view, 0, [0, 4000], 96)] == [
            buf[0:96],
            buf[4000:4096],
        ]
        assert bytes(table.cut(view, 7, [5], [3])[0]) == buf[5:8]  # one view
        for view in (*cuts, *again, *moved):
            view.release()
        with pytest.raises(ValueError, match="released"):
            cuts[0][0] = 1
    finally:
        view.release()
        buf.close()


@pytest.mark.parametrize(
    ("slot", "offsets", "lengths"),
    [(7, [0, 10], [1, 1]), (0, [0, 10], [1])],
    ids=["past the ring's end", "one length short"],
)
def test_slice_table_refuses_a_bad_cut(slot: int, offsets: list[int], lengths: list[int]) -> None:
    """A caller bug is a ValueError, and nothing is remembered."""
    view = memoryview(bytearray(64))
    table = SliceTable(8)
    before = (list(table._offs), list(table._lens), list(table._slices))
    with pytest.raises(ValueError, match="inside the ring"):
        table.cut(view, slot, offsets, lengths)
    assert (table._offs, table._lens, table._slices) == before
    assert len(table._slices) == 8


def test_run_cuts_remember_wrap_and_forget() -> None:
    buf = mmap.mmap(-1, 4096)
    view = memoryview(buf)
    try:
        buf[:] = bytes(range(256)) * 16
        offsets = [100 * k for k in range(8)]
        cuts = RunCuts(offsets)
        run = cuts.cut(view, 6, 4, 10)  # slots 6, 7, 0, 1: across the ring's end
        assert [bytes(v) for v in run] == [buf[o : o + 10] for o in (600, 700, 0, 100)]
        getter = cuts._getters[6, 4, 10]
        again = cuts.cut(view, 6, 4, 10)
        assert cuts._getters[6, 4, 10] is getter and len(cuts._getters) == 1  # reused
        assert [bytes(v) for v in again] == [bytes(v) for v in run]
        shorter = cuts.cut(view, 6, 4, 3)  # another size: another getter
        assert [bytes(v) for v in shorter] == [buf[o : o + 3] for o in (600, 700, 0, 100)]
        assert len(cuts._getters) == 2
        assert [bytes(v) for v in cuts.cut(view, 3, 1, 5)] == [buf[300:305]]  # one view
        offsets[7] = 2000  # the owner moved a buffer and says so
        cuts.forget()
        assert not cuts._getters
        assert [bytes(v) for v in cuts.cut(view, 6, 2, 4)] == [buf[600:604], buf[2000:2004]]
        for slot in range(8):  # more runs than four rings' worth of slots: all forgotten
            for count in range(2, 8):
                cuts.cut(view, slot, count, 7)
                assert cuts._held <= 4 * 8
        assert sum(k for _, k, _ in cuts._getters) == cuts._held
        for v in (*run, *again, *shorter):
            v.release()
    finally:
        view.release()
        buf.close()
    with pytest.raises(ValueError, match="released"):
        cuts.cut(view, 0, 3, 10)


def endpoints(r: MmapRig, side: str) -> tuple[ClientTx | ServerTx, ServerRx | ClientRx]:
    if side == "client":
        return r.client_tx, r.server_rx
    return r.server_tx, r.client_rx


def own_data(r: MmapRig, side: str, idx: int) -> int:
    return r.own_buffer("s2m" if side == "client" else "m2s", idx)


@pytest.mark.parametrize("side", ROLES)
def test_reserved_views_over_laps_and_the_ring_end(rigs: Callable[..., MmapRig], side: str) -> None:
    """Laps of 5-packet reservations on an 8-slot ring (most of them across its end, and
    the u16 wrap): each view is the slot's buffer, exactly the reserved size; the commit
    publishes what was written and releases the views."""
    r = rigs(start=MASK - 3)
    tx, rx = endpoints(r, side)
    for lap in range(6):
        size = 40 if lap < 3 else 64  # a new size: the slices are made again
        first = tx.head if isinstance(tx, ClientTx) else tx.tail
        res = tx.reserve(5, size)
        assert res is not None and res.views is not None
        data = [payload(10 * lap + j, size) for j in range(5)]
        for j, (view, d) in enumerate(zip(res.views, data, strict=True)):
            assert len(view) == size and not view.readonly
            view[:] = d
            assert r.read(r.breg, own_data(r, side, first + j), size) == d
        views = res.views
        assert tx.commit(res) == 5
        with pytest.raises(ValueError, match="released"):
            views[0][0] = 1
        assert [
            d[0] for d in descriptors(r.s2m_server if side == "client" else r.m2s_client, first, 5)
        ] == [0] * 5
        assert take(rx.poll(64).packets) == data
        rx.release()
    assert (tx.counters.packets, tx.counters.bytes) == (30, 3 * 5 * 40 + 3 * 5 * 64)


def test_client_views_follow_buffers_moved_by_forwarding(rigs: Callable[..., MmapRig]) -> None:
    """After forwarding swapped a transmit slot's buffer, a reservation there cuts its
    view from the new buffer (the remembered slice of the old one is not used)."""
    r = rigs(start=MASK - 7)
    tx, rx = r.client_tx, r.client_rx
    res = tx.reserve(2, 16)  # slots 0 and 1: their slices are remembered
    assert res is not None
    tx.cancel(res)
    r.server_tx.write([payload(1, 16)])
    run = rx.poll(64)
    assert tx.forward_from(rx, [(0, run.start, 1)]) == [0]
    take(run.packets)
    rx.release()
    take(r.server_rx.poll(64).packets)
    r.server_rx.release()
    assert tx.buffers[0] != r.tx_table[0]  # slot 0 of the S2M ring has another buffer now
    res = tx.reserve(8, 16)
    assert res is not None and res.views is not None
    for j, view in enumerate(res.views):
        view[:] = payload(20 + j, 16)
    first = (tx.head + 7) & MASK  # slot 0 is the last of these 8 (the forward took one)
    assert r.read(r.breg, tx.buffers[first & r.mask], 16) == payload(27, 16)
    assert tx.commit(res) == 8
    assert take(r.server_rx.poll(64).packets) == [payload(20 + j, 16) for j in range(8)]


def test_client_reserves_chains_from_its_own_buffers(rigs: Callable[..., MmapRig]) -> None:
    """A chained reservation (3 buffers each): segments of capacity, capacity and the
    rest, in consecutive slots (across the ring's end); published with NEXT."""
    r = rigs(start=MASK - 2, tx_headroom=8)
    tx, rx = r.client_tx, r.server_rx
    cap = r.bsize - 8
    first = tx.head
    res = tx.reserve(2, 2 * cap + 5)
    assert res is not None and res.views is None
    assert [[len(s) for s in segs] for segs in res.segments] == [[cap, cap, 5]] * 2
    data = [payload(j, 2 * cap + 5) for j in range(2)]
    for j, (segs, d) in enumerate(zip(res.segments, data, strict=True)):
        at = 0
        for k, seg in enumerate(segs):
            seg[:] = d[at : at + len(seg)]
            where = r.s2m_slot_buffer(first + 3 * j + k) + 8
            assert r.read(r.breg, where, len(seg)) == d[at : at + len(seg)]
            at += len(seg)
    assert tx.commit(res) == 2
    got = descriptors(r.s2m_server, first, 6)
    assert [g[0] for g in got] == [NEXT, NEXT, 0] * 2
    assert [g[3] for g in got] == [r.s2m_slot_buffer(first + k) + 8 for k in range(6)]
    assert take(rx.poll(64).packets) == data
    assert tx.counters.chained == 2


@pytest.mark.parametrize("side", ROLES)
def test_commit_of_views_checks_its_reservation(rigs: Callable[..., MmapRig], side: str) -> None:
    """The commit fast path still refuses a reservation that is not the open one."""
    r = rigs()
    tx, _rx = endpoints(r, side)
    res = tx.reserve(2, 10)
    assert res is not None
    assert tx.commit(res) == 2
    with pytest.raises(LocalProtocolError):
        tx.commit(res)


@pytest.mark.parametrize("headroom", [0, 8])
def test_client_commit_rows_follow_buffers_moved_by_forwarding(
    rigs: Callable[..., MmapRig], headroom: int
) -> None:
    """A client's commit in a clean ring stores remembered descriptor rows: they hold flags
    0, the buffer region, the length and the slot's data offset (after its headroom), also
    after forwarding moved a slot's buffer (the rows of the old buffer are forgotten)."""
    r = rigs(start=MASK - 7, tx_headroom=headroom)
    tx, rx = r.client_tx, r.server_rx

    def lap(tag: int) -> None:  # 4 reservations of 2 packets: one lap of the 8-slot ring
        for k in range(4):
            first = tx.head
            res = tx.reserve(2, 20)
            assert res is not None and res.views is not None
            data = [payload(tag + 2 * k + j, 20) for j in range(2)]
            for v, d in zip(res.views, data, strict=True):
                v[:] = d
            assert tx.commit(res) == 2
            assert [r.get_full(r.s2m_server, first + j) for j in range(2)] == [
                (0, r.breg, 20, tx.data[(first + j) & r.mask], 0) for j in range(2)
            ]
            assert take(rx.poll(64).packets) == data
            rx.release()

    assert tx.data[0] == tx.buffers[0] + headroom
    lap(0)  # the first lap writes every descriptor in full
    assert tx.dirty <= 0 and not tx._rows
    lap(10)  # clean: from rows
    assert tx._rows
    r.server_tx.write([payload(90, 20)])
    run = rx_client = r.client_rx.poll(64)
    assert tx.forward_from(r.client_rx, [(0, run.start, 1)]) == [0]
    take(rx_client.packets)
    r.client_rx.release()
    moved = (tx.head - 1) & r.mask
    assert tx.write([payload(91, 20)]) == 1  # back to reservations at even slots
    assert take(rx.poll(64).packets) == [payload(90, 20), payload(91, 20)]
    rx.release()
    assert not tx._rows and not tx.run_cuts._getters and tx.dirty == 7
    assert tx.buffers[moved] != r.tx_table[moved]
    for tag in (20, 30, 40):  # dirty again, then clean from fresh rows
        lap(tag)
    assert tx._rows and tx.dirty <= 0
