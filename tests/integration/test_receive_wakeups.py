"""Receive wake-ups and server chains over real links: a polling receive reacts to set_mode
and close, a cancelled interrupt receive leaves the next one signalled, a woken receive
leaves the eventfd drained, and a server chains packets again after the client lowers its
receive headroom. The interrupt reader's wake-then-drain order is checked on its own too.
"""

from __future__ import annotations

import asyncio
import select

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
from aiomemif._aio.rx_queue import _Interrupt
from aiomemif._core import wire as w
from aiomemif._core.ring import QueueCounters
from aiomemif._os.eventfd import EventFd
from aiomemif.errors import RemoteProtocolError

MASK_INT = w.RING_FLAG_MASK_INT


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


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


async def test_interrupt_wakes_first_and_the_receive_drains_before_sleeping() -> None:
    """The reader wakes a receive asleep without reading the eventfd; the receive drains it
    (``settle``) before it sleeps again. A report the loop queued before that drain reads
    nothing and wakes only for unread slots; a signal with nothing new in the ring wakes
    nobody; and a signal for a new slot wakes the receive whichever report handles it."""
    loop = asyncio.get_running_loop()
    efd = EventFd()
    published = [False]
    errors: list[RemoteProtocolError] = []
    counters = QueueCounters()
    irq = _Interrupt(loop, efd, counters, errors.append, lambda: published[0])
    irq._armed = True  # (as arm() leaves it; the test calls the reader itself)
    try:
        first = irq.waiter()
        published[0] = True  # the peer published a slot and signalled
        efd.signal()
        irq._ready()
        assert first.result() is True
        assert _readable(efd.fd), "the wake-up read the eventfd before the receive ran"
        irq.clear()
        published[0] = False  # the receive took the slot, and before it sleeps again:
        irq.settle()
        assert not _readable(efd.fd) and counters.interrupts_received == 1
        asleep = irq.waiter()
        irq._ready()  # the report asyncio queued before that drain
        assert not asleep.done(), "woken by a stale report with nothing new in the ring"
        efd.signal()  # a spurious signal: nothing new in the ring
        irq._ready()
        assert not asleep.done(), "woken although nothing new was published"
        assert not _readable(efd.fd) and counters.interrupts_received == 2
        published[0] = True
        efd.signal()
        irq._ready()
        assert asleep.result() is True
        irq.clear()
        published[0] = False
        irq.settle()
        asleep = irq.waiter()
        published[0] = True  # a new slot, signalled before the stale report is handled
        efd.signal()
        irq._ready()
        assert asleep.result() is True, "a stale report hid the signal of a new slot"
        irq.clear()
        irq._ready()  # the eventfd is still readable: the loop reports it again
        assert not _readable(efd.fd) and counters.interrupts_received == 4
        assert not errors
    finally:
        irq.clear()
        irq.stop()
        efd.close()


@pytest.mark.parametrize("receiver", ROLES)
async def test_woken_receive_leaves_the_eventfd_drained(sock_path: str, receiver: str) -> None:
    """INTERRUPT mode: every signal wakes the sleeping receive once, and once the woken
    task has run the eventfd is empty again (no reader left ready, no extra sleeps)."""
    async with linked(sock_path, SMALL, **modes(receiver, RxMode.INTERRUPT)) as (s, c):
        tx, rx = queues(s, c, receiver)
        for k in range(3):
            waiting = asyncio.create_task(rx.receive())
            await eventually(lambda k=k: rx.interrupt_sleeps == k + 1, "the receive asleep")
            tx.send_nowait(payload(k, 64))
            async with asyncio.timeout(TIMEOUT):
                batch = await waiting
            assert batch.keep(0) == payload(k, 64)
            batch.release()
            await eventually(
                lambda k=k: rx.counters.interrupts_received == k + 1, "the eventfd drained"
            )
            assert not _readable(rx._efd.fd)
            assert tx.counters.interrupts_sent == k + 1
            assert rx.interrupt_sleeps == k + 1
