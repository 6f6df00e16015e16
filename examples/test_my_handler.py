"""How to test your own packet handler with aiomemif's pytest plugin (no VPP or DPDK).

Run it with::

    python -m pytest -p aiomemif examples/test_my_handler.py

(``-p aiomemif`` loads the plugin explicitly; it is also loaded automatically wherever
aiomemif and pytest are installed together.) The async tests need pytest-asyncio; they are
marked ``@pytest.mark.asyncio`` so they run in its strict mode as well as in auto mode.

The plugin provides two fixtures, and :func:`aiomemif.testing.memif_pair` for more control:

- ``memif_pair``: a connected loopback pair, ``.server`` and ``.client`` Connections, closed
  after the test. Put the code under test on one end and drive it from the other.
- ``memif_socket_path``: a fresh socket path in a private temporary directory, for tests
  that start their own server or client.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

import aiomemif
import aiomemif.testing

# --- the code under test -----------------------------------------------------------------


def swap_macs(frame: bytes) -> bytes | None:
    """Turn an Ethernet frame around (swap destination and source MAC); drop runts."""
    if len(frame) < 14:
        return None
    return frame[6:12] + frame[0:6] + frame[12:]


async def mac_swapper(conn: aiomemif.Connection) -> int:
    """Answer every frame received on queue 0 with its MACs swapped, until the link closes.

    Returns how many frames were answered, once the link ended normally (the peer sent
    DISCONNECT or this side closed the connection).
    """
    rx, tx = conn.rx_queues[0], conn.tx_queues[0]
    answered = 0
    async for batch in rx:  # ends when either side closes the connection normally
        replies = [r for r in (swap_macs(bytes(p)) for p in batch) if r is not None]
        if replies:
            answered += await tx.send_batch(replies)
    return answered


# --- the tests ---------------------------------------------------------------------------

A, B = bytes.fromhex("02aa00000001"), bytes.fromhex("02bb00000002")


def frame(seq: int, size: int = 64) -> bytes:
    """An Ethernet frame from A to B carrying a sequence number, ``size`` bytes long."""
    return (A + B + struct.pack("!HI", 0x88B5, seq)).ljust(size, b"\0")


async def receive(rx: aiomemif.RxQueue, count: int) -> list[bytes]:
    """Copy ``count`` packets out of ``rx`` (batches are only valid until released)."""
    got: list[bytes] = []
    async with asyncio.timeout(5):  # never hang a test on a lost packet
        while len(got) < count:
            with await rx.receive() as batch:
                got.extend(bytes(p) for p in batch)
    return got


@pytest.mark.asyncio
async def test_handler_answers_every_frame(memif_pair: aiomemif.testing.MemifPair) -> None:
    # The handler plays the server; the test drives it as the client.
    handler = asyncio.create_task(mac_swapper(memif_pair.server))
    frames = [frame(i) for i in range(100)] + [b"runt"]
    await memif_pair.client.tx_queues[0].send_batch(frames)
    replies = await receive(memif_pair.client.rx_queues[0], 100)
    assert replies == [B + A + f[12:] for f in frames[:100]]  # in order, runt dropped
    # Closing the handler's end makes its `async for` stop: the task returns its count.
    await memif_pair.server.aclose()
    assert await handler == 100


@pytest.mark.asyncio
@pytest.mark.memif_pair(ring_size=64, rx_mode=aiomemif.RxMode.POLLING)
async def test_handler_with_small_ring_and_polling(memif_pair: aiomemif.testing.MemifPair) -> None:
    # The marker configures the pair: more frames than ring slots exercise backpressure.
    assert memif_pair.server.rx_queues[0].mode is aiomemif.RxMode.POLLING
    handler = asyncio.create_task(mac_swapper(memif_pair.server))
    tx, rx = memif_pair.client.tx_queues[0], memif_pair.client.rx_queues[0]
    sender = asyncio.create_task(tx.send_batch([frame(i) for i in range(500)]))
    replies = await receive(rx, 500)
    await sender
    assert [struct.unpack_from("!I", r, 14)[0] for r in replies] == list(range(500))
    await memif_pair.server.aclose()
    assert await handler == 500


@pytest.mark.asyncio
async def test_handler_with_jumbo_frames() -> None:
    # The helper directly: any InterfaceConfig setting, for one block of the test.
    async with aiomemif.testing.memif_pair(buffer_size=1024) as pair:
        handler = asyncio.create_task(mac_swapper(pair.client))  # the handler as client
        await pair.server.tx_queues[0].send(frame(7, size=9000))  # a chain of 9 buffers
        [reply] = await receive(pair.server.rx_queues[0], 1)
        assert reply == B + A + frame(7, size=9000)[12:]
        await pair.client.aclose()
        assert await handler == 1


@pytest.mark.asyncio
async def test_handler_behind_a_real_server(memif_socket_path: str) -> None:
    # Your own server on a private socket path, e.g. to test the code that accepts clients.
    config = aiomemif.InterfaceConfig(interface_id=3)
    async with aiomemif.serve(memif_socket_path, [config]) as server:
        async with aiomemif.connect(memif_socket_path, config) as client:
            conn = await server.accept()
            handler = asyncio.create_task(mac_swapper(conn))
            await client.tx_queues[0].send(frame(1))
            assert await receive(client.rx_queues[0], 1) == [B + A + frame(1)[12:]]
        # The client has left (it sent DISCONNECT): the handler's `async for` ends, and the
        # connection says who closed it and why.
        assert await handler == 1
        assert conn.closed_by_peer
        assert conn.close_reason == "closed by application 'aiomemif'"


def test_swap_macs_drops_runts() -> None:
    # Plain functions need no memif at all.
    assert swap_macs(b"short") is None
    assert swap_macs(frame(0)) == B + A + frame(0)[12:]
