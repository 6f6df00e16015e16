"""Receive wake-ups and server chains over real links: a polling receive reacts to set_mode
and close, a cancelled interrupt receive leaves the next one signalled, and a server chains
packets again after the client lowers its receive headroom.
"""

from __future__ import annotations

import asyncio

import pytest
from support.links import (
    ROLES,
    SMALL,
    TIMEOUT,
    eventually,
    linked,
    modes,
    payload,
    queues,
    receive_all,
)

from aiomemif import (
    ClosedResourceError,
    InterfaceConfig,
    RxMode,
)
from aiomemif._core import wire as w

MASK_INT = w.RING_FLAG_MASK_INT


async def test_link_server_chains_after_client_lowers_rx_headroom(sock_path: str) -> None:
    """A real pair: the client receives with 192 bytes of headroom in 256-byte buffers (64
    usable), then ``set_headroom(0)``. 200-byte frames from the server must still arrive
    as plain one-buffer packets, as they do on a server that never saw the small offers."""
    cfg = InterfaceConfig(ring_size=16, buffer_size=256, rx_headroom=192)
    async with linked(sock_path, cfg) as (server, client):
        tx, rx = server.tx_queues[0], client.rx_queues[0]
        small = [payload(j, 32) for j in range(16)]
        assert tx.send_batch_nowait(small) == 16  # 64-byte offers, checked and cached
        rx.set_headroom(0)
        assert [d for d, _ in await receive_all(rx, 16)] == small  # refilled: 256 bytes
        assert tx.send_batch_nowait(small) == 16  # 256-byte offers, checked and cached
        assert [d for d, _ in await receive_all(rx, 16)] == small  # the same offers again
        frames = [payload(100 + j, 200) for j in range(4)]
        assert tx.send_batch_nowait(frames) == 4
        assert await receive_all(rx, 4) == [(f, False) for f in frames]
        assert tx.counters.chained == rx.counters.chained == 0


@pytest.mark.parametrize("event", ["set_mode", "close"])
@pytest.mark.parametrize("receiver", ROLES)
async def test_polling_receive_reacts_to_set_mode_and_close(
    sock_path: str, receiver: str, event: str
) -> None:
    async with linked(sock_path, SMALL, **modes(receiver, RxMode.POLLING)) as (s, c):
        tx, rx = queues(s, c, receiver)
        rx.set_mode(RxMode.POLLING, spin_budget=0, poll_interval=30.0)
        waiting = asyncio.create_task(rx.receive())
        await asyncio.sleep(0.05)  # the receive is asleep for its poll interval
        try:
            async with asyncio.timeout(1.0):
                if event == "set_mode":
                    rx.set_mode(RxMode.INTERRUPT)
                    tx.send_nowait(payload(1, 64))
                    assert (await waiting).keep(0) == payload(1, 64)
                else:
                    await (s if receiver == "server" else c).aclose()
                    with pytest.raises(ClosedResourceError):
                        await waiting
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)


@pytest.mark.parametrize("receiver", ROLES)
async def test_cancelled_interrupt_receive_then_receive_is_signalled(
    sock_path: str, receiver: str
) -> None:
    """INTERRUPT mode: a receive cancelled while asleep (``wait_for`` timing out) may leave
    MASK_INT set (its sleep masks on the way out). The next receive must clear it before it
    sleeps, so the next packet is signalled and wakes it; closing the connection then
    leaves no safety re-scan timer behind."""
    async with linked(sock_path, SMALL, **modes(receiver, RxMode.INTERRUPT)) as (s, c):
        tx, rx = queues(s, c, receiver)
        ring = rx._endpoint.ring
        for k in range(3):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(rx.receive(), 0.02)
            waiting = asyncio.create_task(rx.receive())
            await eventually(
                lambda k=k: rx.interrupt_sleeps == 2 * k + 2 and not ring.flags & MASK_INT,
                "the next receive asleep with MASK_INT clear",
            )
            tx.send_nowait(payload(k, 64))
            assert tx.counters.interrupts_sent == k + 1
            async with asyncio.timeout(TIMEOUT):
                batch = await waiting
            assert batch.keep(0) == payload(k, 64)
            batch.release()
        interrupt = rx._interrupt
        await (s if receiver == "server" else c).aclose()
        assert interrupt._safety is None
