"""A short soak (the CI one is ``python -m aiomemif.testing.soak --minutes 2``), and the
soak's pass/fail rules on their own."""

from __future__ import annotations

import asyncio

from aiomemif.testing.soak import SoakChecks, Stream, run_soak

MIB = 1 << 20


async def test_a_short_soak_balances_every_stream_at_every_reconnect() -> None:
    lines: list[str] = []
    ok, soak = await run_soak(6.0, reconnect_every=2.0, report_every=1.5, say=lines.append)
    text = "\n".join(lines)
    assert ok, text
    assert lines[-1] == "soak OK", text
    assert sum(line.startswith("soak ") and " rss " in line for line in lines) == 5, text
    assert soak.reconnects == 4, text  # three cycles: two reconnects each, less the last
    for stream in (soak.c2s, soak.s2c, soak.echo):
        assert stream.sent > 0 and stream.sent == stream.received, (stream, text)
        assert stream.dropped == 0, text


def test_fd_growth_and_rss_growth_fail_the_soak() -> None:
    checks = SoakChecks()
    checks.reading(20, 40 * MIB)
    checks.reading(20, 41 * MIB)  # within the 2 MiB
    assert checks.failures == []
    checks.reading(21, 41 * MIB)
    checks.reading(19, 43 * MIB)
    assert checks.failures == [
        "open fds grew from 20 to 21",
        "RSS grew 3.00 MiB past the first report (40.0 -> 43.0 MiB)",
    ]


def test_frames_unaccounted_for_fail_the_soak() -> None:
    checks = SoakChecks()
    ok, lost, counted = Stream("a", 10, 10), Stream("b", 10, 9), Stream("c", 10, 8, 2)
    lost.problems.append("b: expected frame 9, got 10")
    checks.balanced([ok, lost, counted], "reconnect 1")
    assert checks.failures == [
        "reconnect 1: b: sent 10 != received 9 + dropped 0",
        "b: expected frame 9, got 10",
    ]
    assert lost.problems == []  # collected once


async def test_caught_up_waits_for_the_receiver() -> None:
    stream = Stream("s", sent=3, received=1)

    async def arrive() -> None:
        for _ in range(2):
            await asyncio.sleep(0.01)
            stream.received += 1
            stream._progress.set()

    task = asyncio.create_task(arrive())
    await stream.caught_up()
    await task
    assert stream.received == 3
