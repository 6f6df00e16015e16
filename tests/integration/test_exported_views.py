"""Views still exported when their buffers are to be given up (issue 15 item 4).

Python cannot revoke a buffer export: an object that holds a packet view itself through
the buffer protocol (a ``pickle.PickleBuffer``, a ``struct.iter_unpack`` iterator, a C
extension keeping a ``Py_buffer``) keeps the memory readable and writable, and
``memoryview.release()`` refuses with ``BufferError``. Giving that buffer back to the ring
would let the peer overwrite what the user still looks at (or, on transmit, let the user
write into a buffer the peer reads). So every path that gives buffers up refuses with
``ExportedBufferError`` and gives up nothing until the export is gone: ``Batch.release``
(explicit, ``with batch:``, the next receive, ``async for``, ``receive_all``),
``TxQueue.forward``, ``commit`` and ``cancel``. Only the link going down releases
regardless; the exported memory then stays mapped until the export goes.

What Python does not count as an export of the view (slices, ``memoryview(pkt)``,
``cast``, and so ``numpy.frombuffer`` and ``ctypes`` ``from_buffer``, which take a view of
their own) cannot be seen at all: :func:`test_views_of_views_are_not_tracked` pins that
documented limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import pickle
import struct
from collections.abc import Iterator

import pytest
from support.leaks import memfd_mappings
from support.links import ROLES, TIMEOUT, ends, linked, payload, receive_count

import aiomemif
from aiomemif import Batch, ChainedPacket, InterfaceConfig, RxQueue, TxQueue
from aiomemif._core.rx import ServerRx

CFG = InterfaceConfig(ring_size=16, buffer_size=256)


class Export:
    """Something holding a view through the buffer protocol (not merely a view of the
    same memory); :meth:`drop` ends the export."""

    def __init__(self, view: memoryview, how: str = "picklebuffer") -> None:
        self.data = bytes(view)
        self.view = view
        self.holder: pickle.PickleBuffer | Iterator[tuple[int, ...]] | None = (
            struct.iter_unpack("B", view) if how == "iter_unpack" else pickle.PickleBuffer(view)
        )

    def read(self) -> bytes:
        """What the exporter sees now."""
        holder = self.holder
        if isinstance(holder, pickle.PickleBuffer):
            return bytes(holder.raw())
        assert holder is not None
        return bytes(b for (b,) in holder)  # (consumes it: the export ends here)

    def drop(self) -> None:
        if isinstance(self.holder, pickle.PickleBuffer):
            self.holder.release()
        self.holder = None  # (an iterator's export ends with the iterator)


@contextlib.contextmanager
def exported(view: memoryview, how: str = "picklebuffer") -> Iterator[Export]:
    held = Export(view, how)
    try:
        yield held
    finally:
        held.drop()


def given_back(rx: RxQueue) -> int:
    """How far the receiver has given buffers back: S2M tail (server) or M2S head."""
    ring = rx._endpoint.ring
    return ring.tail if isinstance(rx._endpoint, ServerRx) else ring.head


def one(packet: object) -> memoryview:
    """A packet that arrived in one buffer: its view."""
    assert isinstance(packet, memoryview)
    return packet


async def received(rx: RxQueue) -> Batch:
    async with asyncio.timeout(TIMEOUT):
        return await rx.receive()


def fill_ring(tx: TxQueue) -> int:
    """Send one-buffer packets until the ring is full; return how many went."""
    n = 0
    while True:
        try:
            tx.send_nowait(payload(100 + n, 64))
        except aiomemif.WouldBlockError:
            return n
        n += 1


# ---------------------------------------------------------------- releasing a batch
@pytest.mark.parametrize("how", ["picklebuffer", "iter_unpack"])
@pytest.mark.parametrize("sender", ROLES)
async def test_release_keeps_the_buffers_while_a_view_is_exported(
    sock_path: str, sender: str, how: str
) -> None:
    async with linked(sock_path, CFG) as (s, c):
        tx, rx = ends(s, c, sender)
        data = [payload(i, 100) for i in range(3)]
        await tx.send_batch(data)
        batch = await received(rx)
        start = given_back(rx)
        with exported(one(batch[1]), how) as held:
            with pytest.raises(aiomemif.ExportedBufferError) as info:
                batch.release()
            assert isinstance(info.value, BufferError) and info.value.indices == (1,)
            assert "packet 1 still exported" in str(info.value)
            assert not batch.released and len(batch) == 3
            assert given_back(rx) == start  # nothing went back to the ring
            with pytest.raises(ValueError, match="released"):
                bytes(batch[0])  # the other views are invalid already
            # The peer fills every other slot; the exported buffer is not one of them.
            assert fill_ring(tx) == CFG.ring_size - 3
            with pytest.raises(aiomemif.ExportedBufferError):
                batch.release()  # still exported: still refused
            assert held.read() == data[1]  # unchanged
        batch.release()
        assert batch.released
        assert given_back(rx) == (start + 3) & 0xFFFF
        with pytest.raises(aiomemif.StaleBatchError):
            batch[0]
        assert len(await receive_count(rx, CFG.ring_size - 3)) == CFG.ring_size - 3


@pytest.mark.parametrize("sender", ROLES)
async def test_a_chain_with_an_exported_segment_is_held_whole(sock_path: str, sender: str) -> None:
    async with linked(sock_path, CFG) as (s, c):
        tx, rx = ends(s, c, sender)
        big = payload(7, 600)  # three buffers
        await tx.send_batch([payload(6, 10), big])
        batch = await received(rx)
        chain = batch[1]
        assert isinstance(chain, ChainedPacket)
        start = given_back(rx)
        with exported(chain.segments[1]) as held:
            with pytest.raises(aiomemif.ExportedBufferError) as info:
                with batch:
                    pass  # leaving ``with batch:`` releases it
            assert info.value.indices == (1,)
            with pytest.raises(ValueError, match="released"):
                bytes(chain.segments[2])  # the chain's other segments are released
            assert given_back(rx) == start
            assert held.read() == big[256:512]
            with pytest.raises(BufferError):
                chain.release()
        chain.release()
        batch.release()
        assert given_back(rx) == (start + 4) & 0xFFFF


# ------------------------------------------------------- the receive that releases it
@pytest.mark.parametrize("sender", ROLES)
async def test_the_next_receive_refuses_and_takes_nothing(sock_path: str, sender: str) -> None:
    async with linked(sock_path, CFG) as (s, c):
        tx, rx = ends(s, c, sender)
        await tx.send_batch([payload(1, 50)])
        first = await received(rx)
        await tx.send_batch([payload(2, 50), payload(3, 50)])
        with exported(one(first[0])):
            with pytest.raises(aiomemif.ExportedBufferError):
                await received(rx)
            with pytest.raises(aiomemif.ExportedBufferError):
                rx.receive_nowait()
            assert not first.released
        second = await received(rx)  # releases the first now, and takes what waited
        assert first.released
        assert [bytes(p) for p in second] == [payload(2, 50), payload(3, 50)]


@pytest.mark.parametrize("sender", ROLES)
async def test_async_for_raises_out_of_the_loop(sock_path: str, sender: str) -> None:
    async with linked(sock_path, CFG) as (s, c):
        tx, rx = ends(s, c, sender)
        await tx.send_batch([payload(1, 50)])
        seen: list[tuple[Batch, Export]] = []

        async def consume() -> None:
            async with asyncio.timeout(TIMEOUT):
                async for batch in rx:
                    seen.append((batch, Export(one(batch[0]))))  # kept around
                    await tx.send_batch([payload(2, 50)])

        with pytest.raises(aiomemif.ExportedBufferError):
            await consume()  # the second iteration cannot release the first batch
        ((batch, held),) = seen
        held.drop()
        batch.release()
        assert [bytes(p) for p in await received(rx)] == [payload(2, 50)]


async def test_receive_all_keeps_the_batch_it_handed_out(sock_path: str) -> None:
    async with linked(sock_path, CFG) as (s, c):
        await c.tx_queues[0].send_batch([payload(1, 50)])
        async with s.receive_all() as batches:
            async with asyncio.timeout(TIMEOUT):
                _, batch = await anext(batches)
            await c.tx_queues[0].send_batch([payload(2, 50)])
            with exported(one(batch[0])):
                with pytest.raises(aiomemif.ExportedBufferError):
                    await anext(batches)
                assert not batch.released
            async with asyncio.timeout(TIMEOUT):
                _, nxt = await anext(batches)
            assert batch.released and [bytes(p) for p in nxt] == [payload(2, 50)]


# ------------------------------------------------------------------------ transmit
async def test_forward_moves_nothing_while_a_view_is_exported(sock_path: str) -> None:
    """Zero-copy forwarding (client only) hands the buffers to the transmit ring: an
    exported view would see the peer's next packets in them."""
    async with linked(sock_path, CFG) as (s, c):
        await s.tx_queues[0].send_batch([payload(i, 80) for i in range(3)])
        batch = await received(c.rx_queues[0])
        tx = c.tx_queues[0]
        with exported(one(batch[2])):
            with pytest.raises(aiomemif.ExportedBufferError) as info:
                tx.forward(batch)
            assert info.value.indices == (2,)
            assert tx.counters.packets == 0
            with pytest.raises(aiomemif.WouldBlockError):
                s.rx_queues[0].receive_nowait()  # nothing reached the peer
        assert tx.forward(batch) == 3
        got = await receive_count(s.rx_queues[0], 3)
        assert got == [payload(i, 80) for i in range(3)]


@pytest.mark.parametrize("sender", ROLES)
async def test_commit_sends_nothing_while_a_view_is_exported(sock_path: str, sender: str) -> None:
    async with linked(sock_path, CFG) as (s, c):
        tx, rx = ends(s, c, sender)
        bufs = await tx.alloc(2, 100)
        for i, view in enumerate(bufs.views):
            view[:] = payload(i, 100)
        with exported(bufs.views[1]):
            with pytest.raises(aiomemif.ExportedBufferError) as info:
                tx.commit(bufs)
            assert info.value.indices == (1,) and "nothing was sent" in str(info.value)
            with pytest.raises(aiomemif.WouldBlockError):
                rx.receive_nowait()
            with pytest.raises(aiomemif.BusyResourceError):
                tx.send_nowait(b"x")  # still reserved
        assert tx.commit(bufs) == 2  # the data written before the refusal goes out
        assert await receive_count(rx, 2) == [payload(0, 100), payload(1, 100)]


@pytest.mark.parametrize("sender", ROLES)
async def test_cancel_keeps_the_reservation_while_a_view_is_exported(
    sock_path: str, sender: str
) -> None:
    async with linked(sock_path, CFG) as (s, c):
        tx, rx = ends(s, c, sender)
        bufs = tx.alloc_nowait(1, 100)
        with exported(bufs.views[0]):
            with pytest.raises(aiomemif.ExportedBufferError, match="stay reserved"):
                tx.cancel(bufs)
            with pytest.raises(aiomemif.BusyResourceError):
                tx.send_nowait(b"x")
        tx.cancel(bufs)
        tx.cancel(bufs)  # idempotent
        await tx.send(b"after")
        assert await receive_count(rx, 1) == [b"after"]


# --------------------------------------------------------------------- link down
@pytest.mark.parametrize("sender", ROLES)
async def test_closing_releases_regardless_and_the_export_keeps_the_memory(
    sock_path: str, sender: str
) -> None:
    """Closing never raises: batches and reservations are released whatever is exported,
    fds are closed, and the exported memory stays mapped (and readable) until the export
    and the object holding the view (the batch, the reserved buffers) are gone."""
    before = len(memfd_mappings())
    async with linked(sock_path, CFG) as (s, c):
        tx, rx = ends(s, c, sender)
        await tx.send_batch([payload(1, 64)])
        batch = await received(rx)
        rx_held = Export(one(batch[0]))  # in the receiver's mapping
        bufs = tx.alloc_nowait(1, 64)
        bufs.views[0][:] = payload(2, 64)
        tx_held = Export(bufs.views[0])  # in the sender's mapping
        await s.aclose()
        await c.aclose()
    assert batch.released
    with pytest.raises(aiomemif.StaleBatchError):
        batch[0]
    with pytest.raises((aiomemif.ClosedResourceError, aiomemif.DisconnectedError)):
        tx.commit(bufs)  # (which one depends on whose close the loop saw first)
    tx.cancel(bufs)  # nothing left to cancel: no error
    assert rx_held.read() == payload(1, 64)  # still mapped: readable, no fault
    assert tx_held.read() == payload(2, 64)
    assert len(memfd_mappings()) == before + 2
    rx_held.drop()
    tx_held.drop()
    del batch, bufs, rx_held, tx_held
    gc.collect()  # (the tracebacks of the errors above hold frames that hold them)
    assert len(memfd_mappings()) == before


# ------------------------------------------------------------- the documented limit
@pytest.mark.parametrize("sender", ROLES)
async def test_views_of_views_are_not_tracked(sock_path: str, sender: str) -> None:
    """A slice, ``memoryview(pkt)`` or ``ctypes`` ``from_buffer`` is a view of the same
    memory, not an export of the packet's view: Python gives no way to see it, so release
    succeeds and the buffer goes back to the ring while it still reads it. This is the
    documented limit (copy what you keep); numpy.frombuffer behaves the same way."""
    async with linked(sock_path, CFG) as (s, c):
        tx, rx = ends(s, c, sender)
        await tx.send_batch([payload(1, 64)])
        batch = await received(rx)
        start = given_back(rx)
        pkt = one(batch[0])
        part, whole = pkt[10:20], memoryview(pkt)
        array = (ctypes.c_char * 64).from_buffer(pkt)
        batch.release()
        assert given_back(rx) == (start + 1) & 0xFFFF
        # Still readable (and writable): shared memory that is the ring's again.
        assert bytes(part) == bytes(whole)[10:20] == array.raw[10:20] == payload(1, 64)[10:20]
        del part, whole, array, pkt
