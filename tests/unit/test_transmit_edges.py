"""Transmit edge cases at ring level (no event loop): server chains once offers grow, an
oversized packet left for later is reported, a chain run leaves a larger offer unused.
"""

from __future__ import annotations

from array import array

import pytest
from support.links import (
    payload,
)
from support.rig import NEXT, MmapRig, snapshot, take

from aiomemif import (
    ChainedPacket,
    PacketTooLargeError,
)


def _lap(r: MmapRig, packets: list[bytes]) -> tuple[int, list[bool], list[bytes]]:
    """The server writes ``packets``; the client receives and releases them (refill).
    Returns (packets sent, arrived as a chain each, bytes received)."""
    sent = r.server_tx.write(packets)
    views = r.client_rx.poll(64).packets
    chained = [isinstance(v, ChainedPacket) for v in views]
    got = take(views)
    r.client_rx.release()
    return sent, chained, got


def test_server_chains_packets_that_fit_after_offers_grow() -> None:
    """The client offers 16-byte buffers for one lap (headroom 48 of 64), then 64-byte
    buffers again. Four 40-byte packets fit one offered buffer each, as the per-packet
    path sends them; the bulk path instead sends two 3-buffer chains (16+16+8) and leaves
    the other two for later."""
    r = MmapRig(log2=3, bsize=64, start=0)
    try:
        tx = r.server_tx
        r.client_rx.set_headroom(48)
        assert _lap(r, [b"a" * 10] * 8)[0] == 8  # into 64-byte offers; refilled with 16
        assert _lap(r, [b"b" * 10] * 8)[0] == 8  # into 16-byte offers (checked, cached)
        r.client_rx.set_headroom(0)
        assert _lap(r, [b"c" * 10] * 8)[0] == 8  # refilled with 64-byte offers
        assert _lap(r, [b"d" * 10] * 8)[0] == 8  # the same 64-byte offers: cache hits
        assert tx.free() == 8
        assert {r.get(r.m2s_client, s)[2] for s in range(8)} == {64}  # every offer: 64 bytes
        packets = [payload(j, 40) for j in range(4)]
        sent, chained, got = _lap(r, packets)
        assert (sent, chained, got) == (4, [False] * 4, packets)
        assert tx.counters.chained == 0
    finally:
        r.close()


def _wide_view() -> memoryview:
    """70000 bytes as a 2-D byte view: len() is 10 (rows), the packet is 70000 bytes."""
    return memoryview(bytearray(70_000)).cast("B", (10, 7_000))


def _short_array() -> array[int]:
    """70000 bytes as 35000 u16 items: len() is 35000, within 65535."""
    return array("H", bytes(70_000))


@pytest.mark.parametrize(
    ("side", "make"),
    [("client", _wide_view), ("server", _wide_view), ("server", _short_array)],
    ids=["client-2d-view", "server-2d-view", "server-array-H"],
)
def test_transmit_reports_an_oversized_buffer_left_for_later(side: str, make: object) -> None:
    """As test_ring.test_transmit_checks_the_first_packet_left_for_later, for buffers whose
    len() is not their size in bytes (the per-packet path measures the bytes)."""
    assert callable(make)
    r = MmapRig(log2=3, bsize=64, start=0)
    try:
        tx, ring = (r.client_tx, r.s2m_client) if side == "client" else (r.server_tx, r.m2s_server)
        before = snapshot(ring)
        room = tx.free()
        with pytest.raises(PacketTooLargeError):
            tx.write([b"x" * 10] * room + [make()])
        assert snapshot(ring) == before  # nothing of the call published
        assert tx.counters.packets == 0
    finally:
        r.close()


def test_server_chain_run_leaves_a_larger_offer_unused() -> None:
    """Offers of 64 bytes except slot 6 (256 bytes, still inside the client's region).
    Three 150-byte packets: the per-packet path sends two 3-buffer chains (slots 0..5) and
    the third packet unchained in slot 6 -- all three fit now. (The rig's ClientRx did not
    offer that larger buffer, so it takes the two chains and refuses slot 6.)"""
    r = MmapRig(log2=3, bsize=64, start=0)
    try:
        r.put(r.m2s_client, 6, 0, r.breg, 256, r.tx_table[0])  # a client's larger buffer
        packets = [payload(j, 150) for j in range(3)]
        assert r.server_tx.write(packets) == 3
        assert [r.get(r.m2s_server, s)[0] for s in range(7)] == [NEXT, NEXT, 0] * 2 + [0]
        assert r.get(r.m2s_server, 6)[2:] == (150, r.tx_table[0])
        assert r.read(r.breg, r.tx_table[0], 150) == packets[2]
        views = r.client_rx.poll(64).packets
        assert [isinstance(v, ChainedPacket) for v in views] == [True, True]
        assert take(views) == packets[:2]
        assert r.client_rx.counters.bad_descriptors == 1
    finally:
        r.close()
