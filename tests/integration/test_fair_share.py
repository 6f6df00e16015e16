"""Fair share: a queue whose ring never makes it wait still lets the event loop run.

Shared memory fills without the loop's help, so a receive that always finds packets (or a
send that always finds room) would otherwise never suspend, and a task looping on it would
starve every other task of its loop, the control socket's reader included. Each such call
adds ``packets + FAIR_CALL`` to the queue's debt; at ``FAIR_SHARE`` the next call yields
once. These tests count the turns a ticker task gets while one task keeps calling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from support.links import ROLES, linked, modes, queues

from aiomemif import InterfaceConfig, RxMode
from aiomemif._aio.rx_queue import FAIR_CALL, FAIR_SHARE

#: Calls of one packet after which a queue must have yielded at least once.
CALLS = FAIR_SHARE // (1 + FAIR_CALL) + 2
CFG = InterfaceConfig(ring_size=1024, buffer_size=128)


class Ticker:
    """A task that counts the loop turns it gets."""

    def __init__(self) -> None:
        self.turns = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # it has run once
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _turns_during(calls: int, step: Callable[[], Awaitable[object]]) -> list[int]:
    """The ticker's turns, counted after each of ``calls`` awaited ``step()`` calls."""
    seen = []
    async with Ticker() as ticker:
        start = ticker.turns
        for _ in range(calls):
            await step()
            seen.append(ticker.turns - start)
    return seen


@pytest.mark.parametrize("mode", list(RxMode), ids=lambda m: m.value)
@pytest.mark.parametrize("receiver", ROLES)
async def test_receive_yields_while_packets_keep_coming(
    sock_path: str, receiver: str, mode: RxMode
) -> None:
    """A ring holding more packets than the receiver takes in ``CALLS`` receives of one
    packet: no receive has to wait, yet the ticker runs, and every packet arrives in order."""
    async with linked(sock_path, CFG, CFG, **modes(receiver, mode)) as (server, client):
        tx, rx = queues(server, client, receiver)
        frames = [i.to_bytes(4, "big") * 16 for i in range(CALLS + 10)]
        assert tx.send_batch_nowait(frames) == len(frames)
        got: list[bytes] = []

        async def one() -> None:
            batch = await rx.receive(max_packets=1)
            got.append(bytes(batch[0]))

        seen = await _turns_during(CALLS, one)
        assert seen[-1] >= 1, "the receiver never let the loop run"
        assert seen[FAIR_SHARE // (1 + FAIR_CALL) - 2] == 0  # (not before its share)
        assert got == frames[:CALLS]
        rest = await rx.receive()
        assert [bytes(p) for p in rest] == frames[CALLS:]
        rest.release()


@pytest.mark.parametrize("how", ["send", "send_batch", "alloc"])
@pytest.mark.parametrize("sender", ROLES)
async def test_send_yields_while_the_ring_has_room(sock_path: str, sender: str, how: str) -> None:
    """``CALLS`` sends of one packet into a ring with room for all of them (nobody reads):
    none has to wait, yet the ticker runs; every packet is then received in order."""
    receiver = "server" if sender == "client" else "client"
    async with linked(sock_path, CFG, CFG) as (server, client):
        tx, rx = queues(server, client, receiver)
        frames = iter([i.to_bytes(4, "big") * 16 for i in range(CALLS)])

        async def one() -> None:
            frame = next(frames)
            if how == "send":
                await tx.send(frame)
            elif how == "send_batch":
                await tx.send_batch([frame])
            else:
                bufs = await tx.alloc(1, len(frame))
                bufs.views[0][:] = frame
                tx.commit(bufs)

        seen = await _turns_during(CALLS, one)
        assert seen[-1] >= 1, "the sender never let the loop run"
        assert seen[FAIR_SHARE // (1 + FAIR_CALL) - 2] == 0
        got: list[bytes] = []
        while len(got) < CALLS:
            batch = await asyncio.wait_for(rx.receive(), 10)
            got.extend(bytes(p) for p in batch)
            batch.release()
        assert got == [i.to_bytes(4, "big") * 16 for i in range(CALLS)]
