"""Soak: traffic both ways for minutes, with a reconnect every 30 s, watching for leaks.

::

    python -m aiomemif.testing.soak --minutes 2
    python -m aiomemif.testing.soak --seconds 10 --reconnect-every 3 --report-every 2

Two paths run side by side, each a stream of numbered frames (:mod:`.frames`: sizes cycle
through 64 to 9000 bytes, the 9000-byte ones chained over 2048-byte buffers), every frame
checked on arrival:

- **pair**: a loopback pair in this process (:func:`~aiomemif.testing.memif_pair`), a stream
  each way. At a reconnect both senders stop, the direction into the side that closes is
  let catch up, then that side (client and server in turn) closes at once: the frames it
  had just sent must all still reach the other side (the library hands out what a leaving
  peer published) before its ``async for`` ends. Then a new pair.
- **child**: a client here and an echo server in a child process
  (:mod:`.child_peer` ``echo``). At a reconnect the sender stops, every echo comes back,
  the client closes with DISCONNECT and connects again.

Once per ``--report-every`` seconds (60) it prints frames sent/received/dropped per path
(dropped: what the library counted as bad descriptors), the reconnects so far, the open fd
count and the RSS. It fails (exit status 1) if, at any reconnect or at the end, a stream's
frames sent differ from frames received plus counted drops (the library's own queue counters
must agree), if a frame arrives out of order or damaged, if the fd count at a report is
above the first report's, or if the RSS grows more than ``--rss-limit`` (2 MiB) past the
first report (taken after one minute, or after the first ``--report-every``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Final

import attrs

from .. import Connection, RxQueue, TxQueue, connect
from ..errors import MemifError
from . import gauges
from .child_peer import config
from .children import PeerChild
from .frames import check_frame, frame, frame_size
from .pair import memif_pair

__all__ = ["Soak", "SoakChecks", "Stream", "main", "run_soak"]

_BATCH: Final = 32
#: Seconds a stream may take to catch up at a reconnect, or a link to come up.
_WAIT: Final = 10.0
_MIB: Final = 1 << 20


@attrs.define
class Stream:
    """One direction of numbered frames, counted over every link it ran on."""

    name: str
    sent: int = 0
    received: int = 0
    #: Frames the library counted as dropped (bad descriptors on the receiving queue).
    dropped: int = 0
    problems: list[str] = attrs.field(factory=list)
    _progress: asyncio.Event = attrs.field(factory=asyncio.Event)

    def balance(self) -> str | None:
        """None if every frame sent arrived or was counted as dropped, else the numbers."""
        if self.sent == self.received + self.dropped:
            return None
        return f"{self.name}: sent {self.sent} != received {self.received} + dropped {self.dropped}"

    async def send(self, tx: TxQueue, stop: asyncio.Event, rate: float) -> None:
        """Send batches at about ``rate`` frames a second until ``stop`` is set, and one
        last batch right before returning.

        Raises:
            MemifError: the link went down.
        """
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            seqs = range(self.sent, self.sent + _BATCH)
            self.sent += await tx.send_batch([frame(s, frame_size(s)) for s in seqs])
            if stop.is_set():
                return
            due += _BATCH / rate
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def receive(self, rx: RxQueue) -> None:
        """Check and count every frame until the link ends; add the library's drops.

        Raises:
            MemifError: the link ended abnormally (after the frames it still handed out).
        """
        before = rx.counters.packets
        got = 0
        try:
            async for batch in rx:
                for pkt in batch:
                    data = bytes(pkt)
                    problem = check_frame(data, self.received)
                    if problem is None and len(data) != frame_size(self.received):
                        problem = f"frame {self.received} has {len(data)} bytes"
                    if problem is not None and len(self.problems) < 10:
                        self.problems.append(f"{self.name}: {problem}")
                    self.received += 1
                    got += 1
                self._progress.set()
        finally:
            self.dropped += rx.counters.bad_descriptors
            if rx.counters.packets - before != got and len(self.problems) < 10:
                self.problems.append(
                    f"{self.name}: the queue counted {rx.counters.packets - before} frames,"
                    f" the receiver {got}"
                )

    async def caught_up(self) -> None:
        """Until everything sent has been received (or counted as dropped).

        Raises:
            TimeoutError: not within 10 s.
        """
        async with asyncio.timeout(_WAIT):
            while self.balance() is not None:
                self._progress.clear()
                await self._progress.wait()


@attrs.define
class SoakChecks:
    """The soak's pass/fail rules over its readings (kept apart so they can be tested)."""

    rss_limit: int = 2 * _MIB
    first_fds: int | None = None
    first_rss: int | None = None
    failures: list[str] = attrs.field(factory=list)

    def reading(self, fds: int, rss: int) -> None:
        """Check one report's fd count and RSS against the first report's."""
        if self.first_fds is None or self.first_rss is None:
            self.first_fds, self.first_rss = fds, rss
            return
        if fds > self.first_fds:
            self.failures.append(f"open fds grew from {self.first_fds} to {fds}")
        if rss - self.first_rss > self.rss_limit:
            self.failures.append(
                f"RSS grew {(rss - self.first_rss) / _MIB:.2f} MiB past the first report"
                f" ({self.first_rss / _MIB:.1f} -> {rss / _MIB:.1f} MiB)"
            )

    def balanced(self, streams: list[Stream], when: str) -> None:
        """Check that every stream's frames add up, and collect their problems."""
        for stream in streams:
            problem = stream.balance()
            if problem is not None:
                self.failures.append(f"{when}: {problem}")
            self.failures += stream.problems
            stream.problems.clear()


class Soak:
    """Both paths, their reconnects and reports (see the module docstring)."""

    def __init__(self, rate: float, say: Callable[[str], None], rss_limit: int) -> None:
        self.rate = rate
        self.say = say
        self.c2s = Stream("pair client->server")
        self.s2c = Stream("pair server->client")
        self.echo = Stream("child echo")
        self.checks = SoakChecks(rss_limit)
        self.reconnects = 0
        #: Frames the closing side of a pair had sent but the other had not yet received
        #: when it closed (all of them must arrive all the same).
        self.in_flight_at_close = 0
        self._cycle = 0
        self._started = 0.0

    # -- the pair ----------------------------------------------------------------------
    async def _pair_link(self, stop: asyncio.Event) -> None:
        """One pair, until ``stop``. Then the direction into the side that closes (client
        and server in turn) stops and catches up, the closing side sends a last batch and
        closes at once: what it sent must still come out at the other end."""
        client_closes = self._cycle % 2 == 0
        async with memif_pair(attrs.evolve(config("soak"), ring_size=512)) as pair:
            cli, srv = pair.client, pair.server
            closer, other = (cli, srv) if client_closes else (srv, cli)
            out_of, into = (self.c2s, self.s2c) if client_closes else (self.s2c, self.c2s)
            stop_closer, stop_other = asyncio.Event(), asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(out_of.receive(other.rx_queues[0]))
                tasks.create_task(into.receive(closer.rx_queues[0]))
                last = tasks.create_task(out_of.send(closer.tx_queues[0], stop_closer, self.rate))
                feed = tasks.create_task(into.send(other.tx_queues[0], stop_other, self.rate))
                await stop.wait()
                stop_other.set()
                await feed
                await into.caught_up()
                stop_closer.set()
                await last
                self.in_flight_at_close += out_of.sent - out_of.received
                await closer.aclose("soak reconnect")  # the other side drains, then ends

    # -- the child ---------------------------------------------------------------------
    async def _child_link(self, address: str, stop: asyncio.Event) -> None:
        """One link with the echo child, until ``stop``; every echo back, then DISCONNECT."""
        async with asyncio.timeout(_WAIT):
            conn: Connection = await connect(address, config("soak"))
        async with conn, asyncio.TaskGroup() as tasks:
            tasks.create_task(self.echo.receive(conn.rx_queues[0]))
            await self.echo.send(conn.tx_queues[0], stop, self.rate)
            await self.echo.caught_up()
            await conn.aclose("soak reconnect")

    # -- schedule ----------------------------------------------------------------------
    def _report(self, final: bool = False) -> None:
        fds, rss = gauges.open_fds(), gauges.rss_bytes()
        elapsed = asyncio.get_running_loop().time() - self._started
        minutes, seconds = divmod(elapsed, 60)
        pair = (self.c2s.sent + self.s2c.sent, self.c2s.received + self.s2c.received)
        pair_drops = self.c2s.dropped + self.s2c.dropped
        self.say(
            f"soak {int(minutes)}:{seconds:04.1f}{' end' if final else ''}  "
            f"pair sent {pair[0]} received {pair[1]} dropped {pair_drops}  "
            f"child sent {self.echo.sent} received {self.echo.received} "
            f"dropped {self.echo.dropped}  reconnects {self.reconnects}  "
            f"fds {fds}  rss {rss / _MIB:.1f} MiB"
            + (f"  (pair frames in flight at close: {self.in_flight_at_close})" if final else "")
        )
        if not final:
            self.checks.reading(fds, rss)

    async def run(self, seconds: float, reconnect_every: float, report_every: float) -> bool:
        """Run for ``seconds``; True if every check held (failures are also printed)."""
        loop = asyncio.get_running_loop()
        self._started = start = loop.time()
        end = start + seconds
        next_report = start + report_every
        address = f"@aiomemif-soak-{id(self):x}"
        async with await PeerChild.start("server", address, "echo") as child:
            await child.expect("listening", _WAIT)
            while loop.time() < end and not self.checks.failures:
                stop = asyncio.Event()
                cycle_end = min(end, loop.time() + reconnect_every)
                links = asyncio.gather(self._pair_link(stop), self._child_link(address, stop))
                try:
                    while (now := loop.time()) < cycle_end:
                        done, _ = await asyncio.wait(
                            {links}, timeout=min(cycle_end, next_report) - now
                        )
                        if done:
                            break  # a link failed: its error comes out below
                        if loop.time() >= next_report:
                            self._report()
                            next_report += report_every
                    stop.set()
                    await links
                except (MemifError, TimeoutError, ExceptionGroup) as exc:
                    self.checks.failures.append(f"link failed: {exc!r}")
                finally:
                    stop.set()
                    links.cancel()
                    with contextlib.suppress(BaseException):
                        await links
                self._cycle += 1
                self.reconnects += 2
                self.checks.balanced([self.c2s, self.s2c, self.echo], f"reconnect {self._cycle}")
            self.reconnects -= 2  # the last close was the end, not a reconnect
            child.terminate()
            status, lines = await child.reap()
        self._report(final=True)
        if status != 0 or any(line.startswith("error") for line in lines):
            self.checks.failures.append(f"the echo child exited with {status}: {lines}")
        for failure in self.checks.failures:
            self.say(f"soak FAIL: {failure}")
        self.say("soak OK" if not self.checks.failures else "soak FAILED")
        return not self.checks.failures


async def run_soak(
    seconds: float,
    *,
    reconnect_every: float = 30.0,
    report_every: float = 60.0,
    rate: float = 10_000.0,
    rss_limit: int = 2 * _MIB,
    say: Callable[[str], None] = print,
) -> tuple[bool, Soak]:
    """Run a soak (see the module docstring); whether it passed, and the :class:`Soak`."""
    soak = Soak(rate, say, rss_limit)
    ok = await soak.run(seconds, reconnect_every, report_every)
    return ok, soak


def main(argv: list[str] | None = None) -> int:
    """The command line; 0 if every check held, else 1.

    Raises:
        SystemExit: bad options (status 2).
    """
    parser = argparse.ArgumentParser(
        prog="python -m aiomemif.testing.soak",
        description="Traffic both ways through a loopback pair and a child peer, with "
        "reconnects, checking counts, fds and RSS.",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="how long to run (default 2)")
    length.add_argument("--seconds", type=float, help="how long to run, in seconds")
    parser.add_argument("--reconnect-every", type=float, default=30.0, metavar="S")
    parser.add_argument("--report-every", type=float, default=60.0, metavar="S")
    parser.add_argument("--rate", type=float, default=10_000.0, help="frames/s per stream")
    parser.add_argument("--rss-limit", type=float, default=2.0, help="MiB (2)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60.0 * (args.minutes or 2.0)
    if seconds <= 0 or args.reconnect_every <= 0 or args.report_every <= 0 or args.rate <= 0:
        parser.error("durations and the rate must be positive")
    logging.getLogger("aiomemif").setLevel(logging.ERROR)
    print(f"soak: {seconds:g} s, reconnect every {args.reconnect_every:g} s, report every"
          f" {args.report_every:g} s, {args.rate:g} frames/s per stream, {args.loop}",
          flush=True)  # fmt: skip

    def say(line: str) -> None:
        print(line, flush=True)

    coro = run_soak(
        seconds,
        reconnect_every=args.reconnect_every,
        report_every=args.report_every,
        rate=args.rate,
        rss_limit=int(args.rss_limit * _MIB),
        say=say,
    )
    try:
        if args.loop == "uvloop":
            import uvloop

            ok, _ = uvloop.run(coro)
        else:
            ok, _ = asyncio.run(coro)
    except KeyboardInterrupt:
        return 130
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
