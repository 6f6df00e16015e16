"""The peer-kill storm at CI size: one round of every kill point in each role, on both
loops (the full storm is ``python -m aiomemif.testing.storm --kills 200``)."""

from __future__ import annotations

import collections
import os
import random

import pytest

from aiomemif.testing import storm
from aiomemif.testing.children import PeerChild

#: A fresh seed each run unless one is given; every report line names it.
SEED = int(os.environ.get("AIOMEMIF_STORM_SEED", random.randrange(1 << 32)))


@pytest.mark.parametrize("role", ["server", "client"])
async def test_every_kill_point_once_leaves_aiomemif_up_and_nothing_behind(role: str) -> None:
    report = await storm.run_role(role, len(storm.KILL_POINTS), SEED)
    text = "\n".join(report.lines())
    assert report.ok, text
    assert report.points == collections.Counter(storm.KILL_POINTS), text
    assert report.start is not None and report.end == report.start, text
    assert report.unsettled == 0, text
    # Two bursts, two chains and the warm-up burst brought links up, each lost to a kill.
    assert report.links >= 5 and report.ends["ConnectionLostError"] >= 5, text
    assert report.frames_received > 0 and report.frames_sent > 0, text
    if role == "client":
        assert len(report.reconnects) >= 5, text
        assert max(report.reconnects) <= 3.0, text
        assert len(report.reached) == storm.HANDSHAKE_STEPS + 1, text  # with the warm-up


async def test_an_fd_left_open_after_a_kill_fails_the_storm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    leaked: list[int] = []
    start = PeerChild.start

    async def leaky(cls: type[PeerChild], role: str, address: str, scenario: str) -> PeerChild:
        if len(leaked) == len(storm.WARMUP):  # the first child after the warm-up
            leaked.append(os.open("/dev/null", os.O_RDONLY))
        elif len(leaked) < len(storm.WARMUP):
            leaked.append(-1)
        return await start(role, address, scenario)

    monkeypatch.setattr(PeerChild, "start", classmethod(leaky))
    monkeypatch.setattr(storm, "SETTLE", 0.2)  # it is not coming back
    try:
        report = await storm.run_role("server", 1, SEED)
    finally:
        for fd in leaked:
            if fd >= 0:
                os.close(fd)
    assert not report.ok
    assert any(f.startswith("after kill 1 ") and "fds" in f for f in report.failures), list(
        report.lines()
    )


def test_kill_plans_cover_every_point_each_round() -> None:
    plan = storm.kill_plan(3 * len(storm.KILL_POINTS) + 5, random.Random(3))
    rounds = [plan[i : i + len(storm.KILL_POINTS)] for i in range(0, 48, 16)]
    assert all(collections.Counter(r) == collections.Counter(storm.KILL_POINTS) for r in rounds)
    assert len(plan) == 3 * len(storm.KILL_POINTS) + 5
    assert rounds[0] != rounds[1]  # shuffled
