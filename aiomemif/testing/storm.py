"""Peer-kill storm: SIGKILL a child peer again and again, at chosen points, in each role.

::

    python -m aiomemif.testing.storm --kills 200 --role both          # the full storm
    python -m aiomemif.testing.storm --kills 16 --role client --seed 7

aiomemif stays up the whole time, as a :class:`~aiomemif.Server` (the child is a client)
or as a reconnecting :class:`~aiomemif.Client` (the child is a server, started again after
each kill). Each kill takes a point from rounds of :data:`KILL_POINTS` shuffled with a
seeded RNG (the seed is printed):

- ``step:K``: the child speaks the handshake itself and stops for good after step ``K``
  (see :mod:`.child_peer`): killed there, before HELLO, between any two messages, after
  CONNECT, after CONNECTED;
- ``burst``: the link is up and both sides stream 64-byte numbered frames; the child is
  killed once this side has received a random number of them (0 to 5,000);
- ``chain``: the same with 9000-byte frames in 2048-byte buffers (chains of five), killed
  after 0 to 500 of them, wherever the child is in writing its chains.

After each kill this side must settle: the link (if one came up) ends with
:class:`~aiomemif.ConnectionLostError` after handing out what the child had published,
every frame received is the next one and intact, no handshake is left pending, and the
open fds, memfd mappings and asyncio tasks are back to what they were after the warm-up.
As a client, the link with each new child must come up within ``reconnect_limit`` seconds
of that child listening (the figure reported as p50/max). Whatever does not hold is a
failure in the report (exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import logging
import os
import random
import statistics
import sys
from collections.abc import Callable, Iterator
from typing import Final

import attrs

from .. import Client, Connection, ReconnectPolicy, Server, connect
from ..errors import ConnectionLostError, MemifError, PeerDisconnectedError
from . import gauges
from .child_peer import HANDSHAKE_STEPS, SCENARIOS, config
from .children import ChildError, PeerChild
from .frames import check_frame, frame

__all__ = [
    "HANDSHAKE_STEPS",
    "KILL_POINTS",
    "RoleReport",
    "kill_plan",
    "main",
    "run_role",
    "run_storm",
]

#: One round of kill points: every handshake step once, and twice each of the traffic
#: scenarios. Rounds are shuffled and repeated for as many kills as asked.
KILL_POINTS: Final = tuple(f"step:{k}" for k in range(HANDSHAKE_STEPS)) + ("burst", "chain") * 2
#: Points run before the leak baseline is taken (not counted as kills).
WARMUP: Final = ("burst", "step:11")
#: The child is killed after a random number of received frames below this.
_KILL_WITHIN: Final = {"burst": 5000, "chain": 500}
_BATCH: Final = 32
#: Seconds any one wait may take (child start, a frame count, a link ending).
_WAIT: Final = 10.0
#: Seconds the readings may take to come back to the baseline after a kill.
SETTLE = 2.0
#: The app name of the client that checks the server after the storm.
_PROBE: Final = "storm-probe"
#: A run stops early after this many failures.
_MAX_FAILURES: Final = 20


def kill_plan(kills: int, rng: random.Random) -> list[str]:
    """``kills`` kill points: shuffled rounds of :data:`KILL_POINTS`, cut to length."""
    plan: list[str] = []
    while len(plan) < kills:
        round_ = list(KILL_POINTS)
        rng.shuffle(round_)
        plan += round_
    return plan[:kills]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@attrs.define
class RoleReport:
    """What a storm in one role did and found."""

    #: aiomemif's role (the child plays the other one).
    role: str
    seed: int
    kills: int = 0
    points: collections.Counter[str] = attrs.field(factory=collections.Counter)
    #: Links that came up, and how each one ended (exception type name).
    links: int = 0
    ends: collections.Counter[str] = attrs.field(factory=collections.Counter)
    frames_received: int = 0
    frames_sent: int = 0
    #: Frames received after the child was killed: what it had published, handed out.
    drained: int = 0
    #: Server role: whether a client still got through after the storm (None: no probe).
    probe_ok: bool | None = None
    #: Client role: seconds from a child listening to the link with it being up.
    reconnects: list[float] = attrs.field(factory=list)
    #: Client role: seconds from a child listening to it reaching its handshake step.
    reached: list[float] = attrs.field(factory=list)
    #: Readings after the warm-up and after the last kill.
    start: gauges.Reading | None = None
    end: gauges.Reading | None = None
    #: Quiet points (one after each kill) whose reading differed from ``start``.
    unsettled: int = 0
    failures: list[str] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and self.kills > 0 and self.probe_ok is not False

    def lines(self) -> Iterator[str]:
        """The report, line by line."""
        steps = sum(n for p, n in self.points.items() if p.startswith("step:"))
        yield (
            f"storm, aiomemif as {self.role}: {self.kills} kills (seed {self.seed}): "
            f"{steps} in the handshake (steps 0-{HANDSHAKE_STEPS - 1}), "
            f"{self.points['burst']} mid-burst, {self.points['chain']} mid-chain"
        )
        ends = ", ".join(f"{n} {kind}" for kind, n in sorted(self.ends.items())) or "none"
        yield (
            f"  links up {self.links} (ended: {ends}); frames received {self.frames_received}"
            f" (all checked; {self.drained} of them after the kill), sent {self.frames_sent}"
        )
        if self.reconnects:
            yield (
                f"  reconnect (child listening -> link up), {len(self.reconnects)} links: "
                f"p50 {statistics.median(self.reconnects):.3f} s, "
                f"p90 {_percentile(self.reconnects, 0.9):.3f} s, "
                f"max {max(self.reconnects):.3f} s"
            )
        if self.reached:
            yield (
                f"  handshake step reached (child listening -> paused), {len(self.reached)}: "
                f"p50 {statistics.median(self.reached):.3f} s, max {max(self.reached):.3f} s"
            )
        yield (
            f"  after warm-up: {self.start}; after the last kill: {self.end}; "
            f"quiet points off the baseline: {self.unsettled}"
        )
        if self.probe_ok is not None:
            yield f"  a client after the storm: {'served' if self.probe_ok else 'NOT served'}"
        for failure in self.failures:
            yield f"  FAIL: {failure}"
        yield f"  {'OK' if self.ok else 'FAILED'}"


class _BadFrame(Exception):
    pass


class _Link:
    """This side of one link: streams numbered frames and checks every frame received."""

    def __init__(self, conn: Connection, size: int, started: float) -> None:
        self.conn = conn
        self.size = size
        self.started = started
        self.received = 0
        self.sent = 0
        #: The exception that ended the link (None while it runs, or a quiet end).
        self.end: BaseException | None = None
        self.problem: str | None = None
        self.finished = False
        #: Whether the peer may end the link with DISCONNECT (else only a kill is right).
        self.quiet_end_ok = conn.peer_app_name == _PROBE
        self._progress = asyncio.Event()
        self._trigger: tuple[int, Callable[[], None]] | None = None
        #: Frames received when the kill was triggered (None: not killed from here).
        self.at_kill: int | None = None

    def at_count(self, count: int, action: Callable[[], None]) -> None:
        """Call ``action`` as soon as ``count`` frames have come (now if they have), from
        inside the receive loop: a kill lands right there, not a scheduling delay later."""
        if self.at_kill is not None:
            return
        if self.received >= count or self.finished:
            self.at_kill = self.received
            action()
        else:
            self._trigger = (count, action)

    async def wait_received(self, count: int) -> None:
        """Until ``count`` frames came (or the link ended).

        Raises:
            TimeoutError: not within the storm's wait.
        """
        async with asyncio.timeout(_WAIT):
            while self.received < count and not self.finished:
                self._progress.clear()
                await self._progress.wait()

    async def run(self) -> None:
        """Stream until the link ends; never raises (the end is kept in ``end``, anything
        wrong in ``problem``)."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._receive())
                tasks.create_task(self._send())
        except* _BadFrame as group:
            self.problem = str(group.exceptions[0])
        except* MemifError:
            pass  # the link ended: judged below by how
        except* Exception as group:
            self.problem = f"failed with {group.exceptions[0]!r}"
        finally:
            await self.conn.aclose()
            self.end = self.conn.close_error
            self.finished = True
            self._progress.set()
        expected = PeerDisconnectedError if self.quiet_end_ok else ConnectionLostError
        if self.problem is None and not isinstance(self.end, expected):
            self.problem = f"the link ended with {self.end!r}"

    async def _receive(self) -> None:
        async for batch in self.conn.rx_queues[0]:
            for pkt in batch:
                data = bytes(pkt)
                problem = check_frame(data, self.received)
                if problem is None and len(data) != self.size:
                    problem = f"frame {self.received}: {len(data)} bytes, not {self.size}"
                if problem is not None:
                    raise _BadFrame(problem)
                self.received += 1
            self._progress.set()
            if self._trigger is not None and self.received >= self._trigger[0]:
                self.at_kill = self.received
                self._trigger[1]()
                self._trigger = None

    async def _send(self) -> None:
        # Ends quietly with the link, never cutting short the receiver's drain.
        tx = self.conn.tx_queues[0]
        with contextlib.suppress(MemifError):
            while True:
                self.sent += await tx.send_batch(
                    [frame(self.sent + i, self.size) for i in range(_BATCH)]
                )


class _Storm:
    """A storm in one role: one long-lived aiomemif end, one child after another."""

    def __init__(
        self,
        role: str,
        seed: int,
        policy: ReconnectPolicy,
        reconnect_limit: float,
        say: Callable[[str], None],
    ) -> None:
        self.role = role
        self.rng = random.Random(f"{seed}:{role}")
        self.report = RoleReport(role, seed)
        self.policy = policy
        self.reconnect_limit = reconnect_limit
        self.say = say
        self.address = f"@aiomemif-storm-{os.getpid()}-{self.rng.getrandbits(32):08x}"
        self.size = SCENARIOS["burst"]
        #: Links by the app name of their peer (each child announces its pid).
        self.links: dict[str, _Link] = {}
        #: Kills to make from inside a link's receive loop, by the child's app name: after
        #: how many frames, and the kill.
        self.armed: dict[str, tuple[int, Callable[[], None]]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()
        self.server: Server | None = None
        self.client: Client | None = None

    # -- links -----------------------------------------------------------------------
    def _start_link(self, conn: Connection) -> asyncio.Task[None]:
        link = _Link(conn, self.size, asyncio.get_running_loop().time())
        self.links[conn.peer_app_name] = link
        armed = self.armed.pop(conn.peer_app_name, None)
        if armed is not None:  # before the first frame: the count is exact
            link.at_count(*armed)
        task = asyncio.get_running_loop().create_task(link.run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.changed.set()
        return task

    async def _accept_all(self, server: Server) -> None:
        async for conn in server.connections():
            self._start_link(conn)

    async def _consume(self, client: Client) -> None:
        async for conn in client.connections():
            await self._start_link(conn)

    async def _link_with(self, child: PeerChild, timeout: float) -> _Link:
        async with asyncio.timeout(timeout):
            while (link := self.links.get(child.app_name)) is None:
                self.changed.clear()
                await self.changed.wait()
        return link

    # -- one kill --------------------------------------------------------------------
    async def _kill_one(self, point: str) -> None:
        self.size = SCENARIOS.get(point, SCENARIOS["burst"])
        peer_role = "client" if self.role == "server" else "server"
        loop = asyncio.get_running_loop()
        target = self.rng.randrange(_KILL_WITHIN[point]) if point in _KILL_WITHIN else 0
        async with await PeerChild.start(peer_role, self.address, point) as child:
            if target:
                self.armed[child.app_name] = (target, child.kill)
            try:
                if peer_role == "server":
                    await child.expect("listening", _WAIT)
                ready = loop.time()
                if point.startswith("step:"):
                    await child.expect(f"paused {point[5:]} ", _WAIT)
                    if peer_role == "server":
                        self.report.reached.append(loop.time() - ready)
                else:
                    await child.expect("up", _WAIT)
                    link = await self._link_with(child, self.reconnect_limit + _WAIT)
                    if peer_role == "server":
                        took = link.started - ready
                        self.report.reconnects.append(took)
                        if took > self.reconnect_limit:
                            self._fail(f"{point}: link up {took:.3f} s after the child listened")
                    await link.wait_received(target)
            finally:
                self.armed.pop(child.app_name, None)
            child.kill()
            status, lines = await child.reap()
        if status != -9:
            self._fail(f"{point}: child exited with {status} before the kill: {child.stderr}")
        for line in lines:
            if line.startswith("error"):
                self._fail(f"{point}: child said {line!r}")

    async def _settle_links(self) -> None:
        """Wait for every link to end and this side to be idle; fold the links in."""
        async with asyncio.timeout(_WAIT):
            while True:
                if self.tasks:
                    await asyncio.wait(set(self.tasks))
                    continue
                if self.server is not None and (
                    self.server.pending_handshakes or self.server.connections_by_id
                ):
                    await asyncio.sleep(0.005)
                    continue
                if self.client is not None and self.client.connection is not None:
                    await asyncio.sleep(0.005)
                    continue
                break
        report = self.report
        for name, link in list(self.links.items()):
            if not link.finished:
                continue
            del self.links[name]
            if name == _PROBE:
                report.probe_ok = link.problem is None and link.received == 1
                if not report.probe_ok:
                    self._fail(f"probe after the storm: {link.problem or 'no frame'}")
                continue
            report.links += 1
            report.ends[type(link.end).__name__ if link.end else "quiet end"] += 1
            report.frames_received += link.received
            report.frames_sent += link.sent
            if link.at_kill is not None:
                report.drained += link.received - link.at_kill
            if link.problem is not None:
                self._fail(f"link with {name}: {link.problem}")

    def _fail(self, text: str) -> None:
        self.report.failures.append(text)
        self.say(f"storm {self.role}: FAIL {text}")

    async def _iteration(self, point: str) -> None:
        try:
            await self._kill_one(point)
        except (ChildError, TimeoutError, MemifError, OSError) as exc:
            self._fail(f"{point}: {type(exc).__name__}: {exc}")
        try:
            await self._settle_links()
        except TimeoutError:
            self._fail(f"{point}: this side did not settle within {_WAIT} s")

    async def _run_kills(self, kills: int) -> None:
        for point in WARMUP:
            await self._iteration(point)
        gc.collect()
        start = self.report.start = gauges.read()
        for n, point in enumerate(kill_plan(kills, self.rng), 1):
            await self._iteration(point)
            self.report.kills += 1
            self.report.points[point] += 1
            self.report.end = now = await gauges.settle(start, SETTLE)
            if now != start:
                self.report.unsettled += 1
                self._fail(f"after kill {n} ({point}): {now} (after warm-up: {start})")
            if n % 50 == 0 or n == kills:
                self.say(f"storm {self.role}: {n}/{kills} kills, {now}")
            if len(self.report.failures) >= _MAX_FAILURES:
                self.say(f"storm {self.role}: stopping after {_MAX_FAILURES} failures")
                return

    async def _probe(self) -> None:
        """The server still takes a client, and a frame goes each way."""
        self.size = SCENARIOS["burst"]
        async with connect(self.address, config(_PROBE)) as conn:
            await conn.tx_queues[0].send(frame(0, self.size))
            batch = await conn.rx_queues[0].receive()
            problem = check_frame(bytes(batch[0]), 0)
            batch.release()
            if problem is not None:
                self._fail(f"probe after the storm: {problem}")
            link = self.links[_PROBE]
            await link.wait_received(1)
        await self._settle_links()

    async def run(self, kills: int) -> RoleReport:
        helper: asyncio.Task[None] | None = None
        try:
            if self.role == "server":
                async with Server(self.address, [config()], app_name="storm") as server:
                    self.server = server
                    helper = asyncio.get_running_loop().create_task(self._accept_all(server))
                    await self._run_kills(kills)
                    await self._probe()
            else:
                async with Client(self.address, config(), reconnect=self.policy) as client:
                    self.client = client
                    helper = asyncio.get_running_loop().create_task(self._consume(client))
                    await self._run_kills(kills)
        except (MemifError, TimeoutError, KeyError) as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            if helper is not None:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            for task in list(self.tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return self.report


#: The reconnect policy of the storm's client: retries from 0.1 s, never more than 1 s apart.
DEFAULT_POLICY: Final = ReconnectPolicy(initial=0.1, maximum=1.0, jitter=0.1)


async def run_role(
    role: str,
    kills: int,
    seed: int,
    *,
    policy: ReconnectPolicy = DEFAULT_POLICY,
    reconnect_limit: float = 3.0,
    say: Callable[[str], None] = lambda line: None,
) -> RoleReport:
    """Run a storm of ``kills`` kills with aiomemif in ``role`` ("server" or "client").

    Never raises for what it finds: failures are listed in the report.

    Raises:
        ValueError: an unknown role.
    """
    if role not in ("server", "client"):
        raise ValueError(f"role must be 'server' or 'client', not {role!r}")
    return await _Storm(role, seed, policy, reconnect_limit, say).run(kills)


async def run_storm(
    roles: list[str],
    kills: int,
    seed: int,
    say: Callable[[str], None],
    *,
    policy: ReconnectPolicy = DEFAULT_POLICY,
    reconnect_limit: float = 3.0,
) -> list[RoleReport]:
    """:func:`run_role` for each role in turn, each report's lines passed to ``say``."""
    reports = []
    for role in roles:
        report = await run_role(
            role, kills, seed, policy=policy, reconnect_limit=reconnect_limit, say=say
        )
        for line in report.lines():
            say(line)
        reports.append(report)
    return reports


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring); 0 if every check held, else 1.

    Raises:
        SystemExit: bad options (status 2).
    """
    parser = argparse.ArgumentParser(
        prog="python -m aiomemif.testing.storm",
        description="SIGKILL a child memif peer again and again; aiomemif must stay up.",
    )
    parser.add_argument("--kills", type=int, default=200, help="kills per role (200)")
    parser.add_argument("--role", choices=("server", "client", "both"), default="both")
    parser.add_argument("--seed", type=int, help="RNG seed (default: random, printed)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--retry-initial", type=float, default=DEFAULT_POLICY.initial)
    parser.add_argument("--retry-max", type=float, default=DEFAULT_POLICY.maximum)
    parser.add_argument(
        "--reconnect-limit", type=float, default=3.0, help="seconds allowed to reconnect (3)"
    )
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    roles = ["server", "client"] if args.role == "both" else [args.role]
    policy = ReconnectPolicy(initial=args.retry_initial, maximum=args.retry_max, jitter=0.1)
    logging.getLogger("aiomemif").setLevel(logging.CRITICAL)  # every kill is a WARNING
    print(
        f"storm: seed {seed}, {args.kills} kills per role, {args.loop}, reconnect policy "
        f"{policy.initial}..{policy.maximum} s",
        flush=True,
    )

    def say(line: str) -> None:
        print(line, flush=True)

    coro = run_storm(
        roles, args.kills, seed, say, policy=policy, reconnect_limit=args.reconnect_limit
    )
    try:
        if args.loop == "uvloop":
            import uvloop

            reports = uvloop.run(coro)
        else:
            reports = asyncio.run(coro)
    except KeyboardInterrupt:
        return 130
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
