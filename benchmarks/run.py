"""aiomemif performance suite: every measurement in one process tree and one sitting.

Groups (case ids look like ``one-way/memif/64B/b32/c2s/asyncio``; ``--list`` shows them):

- one-way: aiomemif client -> server (c2s) and server -> client (s2c), 64, 512, 1500 and
  9000 bytes (9000 travels as 5-buffer chains), batches of 1, 32 and 256, per event loop,
  next to an asyncio ``SOCK_SEQPACKET`` socketpair doing the same transfer (the "socket"
  ratio); and mixed-size chains at batch 32 (sizes 2100..9000 cycling, memif only: their
  bytes per second against the 9000 B case); 9000 B b32 runs ``--repeat`` times;
- zero-copy: 1500 B, the receiver takes up to 256 packets per call (the default) and reads
  every packet's first and last byte in place through its memoryview; the sender copies
  batches of 32 (``send_batch``) or writes them in place (``alloc``, ``TxBuffers.views``,
  ``commit``); the c2s cases run ``--repeat`` times, interleaved, like the key cases;
- validation: 64 B and 1500 B with descriptor validation switched off in the two worker
  processes only (next to the same case with it on);
- shared-core: both processes pinned to ONE cpu (compare: two C busy-pollers on one core);
- queues: 1, 2 and 4 queues, one sender task per queue, aggregate rate;
- rtt: ping-pong with one packet in flight in interrupt, polling and adaptive mode, next to
  two raw floors without aiomemif on the same loop (eventfd ping-pong through add_reader,
  and a task spinning on a shared-mmap ring), ``--repeat`` times; and both without a loop;
- handshakes: one server socket with 1, 16 and 64 interfaces, one client connecting all;
- testpmd: aiomemif <-> dpdk-testpmd macswap round trips (both roles);
- vpp: aiomemif -> VPP L2 cross-connect -> aiomemif round trips, 64 and 1500 B, and the
  64 B RTT per receive mode (both roles);
- c-baseline: testpmd txonly -> testpmd rxonly over memif, on two cores and on one;
- cli: the ``aiomemif gen`` command into ``aiomemif sink``, 64 B, with and without
  ``--verify`` (each command a process pinned to its cpu).

Usage::

    python benchmarks/run.py --quick              # representative subset, < 1 min
    python benchmarks/run.py                      # everything, < 10 min
    python benchmarks/run.py --only rtt --only 'one-way/*/64B/b32/*'
    python benchmarks/run.py --list               # the plan, without running it
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import functools
import multiprocessing as mp
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import bench_cli as bc
import bench_rtt as br
import bench_scale as bs
import bench_testpmd as bt
import bench_vpp as bv
import bench_workers as bw
import harness
import report
from harness import Json
from options import parse_args
from peer_steps import PeerSteps
from report import Record, Results

SIZES = (64, 512, 1500, 9000)
BATCHES = (1, 32, 256)
#: The mixed-size chains of the one-way group: 2100..9000 bytes (2 to 5 buffers), cycling.
MIXED_SIZES = tuple(range(2100, 9001, 230))
MIXED = "2100-9000B"


BUSY_WARN = report.BUSY_WARN


def quiet_or_busy(cpus: Sequence[int], patience: float) -> float:
    """Sample how busy other processes keep ``cpus`` (0.2 s); while that is above
    BUSY_WARN, keep sampling for up to ``patience`` seconds. Returns the last sample."""
    deadline = time.monotonic() + patience
    while True:
        busy = max(harness.background_load(cpus, 0.2).values(), default=0.0)
        if busy <= BUSY_WARN or time.monotonic() >= deadline:
            return busy
        time.sleep(0.2)


# -- the plan -----------------------------------------------------------------------------------


@dataclass
class Step:
    ids: list[str]  # the records this step measures (for --only / --skip / --list)
    run: Callable[[], None]


class Suite(PeerSteps):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ctx = mp.get_context("spawn")
        self.results = Results()
        self.steps: list[Step] = []
        self.tmp = tempfile.mkdtemp(prefix="aiomemif-bench-")
        self.seq = 0
        allowed = sorted(os.sched_getaffinity(0))
        self.two = len(allowed) >= 2
        self.a, self.b = (allowed[0], allowed[1]) if self.two else (allowed[0], allowed[0])
        self.pmd_missing = "disabled by --no-testpmd" if args.no_testpmd else bt.available()
        if self.pmd_missing is None and not self.two:
            self.pmd_missing = "needs 2 CPUs"
        self.vpp_missing = "disabled by --no-vpp" if args.no_vpp else bv.available()
        if self.vpp_missing is None and not self.two:
            self.vpp_missing = "needs 2 CPUs"
        self.hooks = harness.validation_hook_available()
        q = args.quick
        self.flow_s = (0.5 if q else 1.0) * args.scale
        self.rtt_s = (0.4 if q else 1.0) * args.scale
        self.timeout = 30.0 + 2 * self.flow_s

    def path(self, stem: str) -> str:
        self.seq += 1
        return os.path.join(self.tmp, f"{stem}-{self.seq}.sock")

    def selected(self, rid: str) -> bool:
        def hit(pat: str) -> bool:
            if any(c in pat for c in "*?["):
                return fnmatch.fnmatch(rid, pat)
            return f"/{pat.strip('/')}/" in f"/{rid}/"  # whole id components: "rtt", "64B/b32"

        only = [p for arg in self.args.only for p in arg.split(",") if p]
        skip = [p for arg in self.args.skip for p in arg.split(",") if p]
        return (not only or any(hit(p) for p in only)) and not any(hit(p) for p in skip)

    def add(self, ids: list[str], run: Callable[[], None]) -> None:
        if any(self.selected(i) for i in ids):
            self.steps.append(Step(ids, run))

    def progress(self, rec: Record, started: float, diag: str = "") -> None:
        run = rec.runs[-1] if rec.runs else {}
        shown = report.fmt_result(Record(**{**rec.__dict__, "runs": [run] if run else []}))
        took = f"{time.monotonic() - started:.1f} s"
        print(f"  {rec.id:<48} {shown}  ({', '.join(filter(None, (diag, took)))})", flush=True)

    # -- flows --------------------------------------------------------------------------------
    def flow(
        self,
        rid: str,
        group: str,
        label: str,
        loop: str,
        transport: str,
        pins: tuple[int, int],
        *,
        no_validation: bool = False,
        **spec_kw: object,
    ) -> None:
        def run() -> None:
            t0 = time.monotonic()
            spec = bw.FlowSpec(duration=self.flow_s, path=self.path("flow"), **spec_kw)  # type: ignore[arg-type]
            prof = ""
            if self.args.profile is not None:
                self.args.profile.mkdir(parents=True, exist_ok=True)
                prof = str(self.args.profile / rid.replace("/", "_"))
            res = bw.run_flow(
                self.ctx,
                transport=transport,
                spec=spec,
                loop=loop,
                pins=pins,
                timeout=self.timeout,
                no_validation=no_validation,
                profile=prof,
            )
            cpus = f"rx{pins[0]} tx{pins[1]}"
            rec = Record(rid, group, label, loop, cpus, "rate", size=round(spec.mean_size()))
            rx, tx = res["receiver"], res["sender"]
            diag = (
                f"rx sleeps {rx.get('interrupt_sleeps', '-')}, tx full {tx.get('ring_full', '-')}"
            )
            self.progress(self.results.add(rec, res), t0, diag if transport == "memif" else "")

        self.add([rid], run)

    def oneway(self, loop: str, size: int, batch: int, kinds: Sequence[str]) -> None:
        """One-way cases of ``kinds`` (and after 9000 B b32 memif ones, the mixed sizes)."""
        pins = (self.a, self.b)
        for kind in kinds:
            if kind == "socket":
                rid = f"one-way/socket/{size}B/b{batch}/{loop}"
                label = f"socket {size}B b{batch}"
                extra: Json = {}
            else:
                rid = f"one-way/memif/{size}B/b{batch}/{kind}/{loop}"
                label = f"memif {size}B b{batch} {kind}"
                extra = {"direction": kind}
            self.flow(
                rid,
                "one-way",
                label,
                loop,
                kind if kind == "socket" else "memif",
                pins,
                size=size,
                tx_batch=batch,
                rx_batch=batch,
                **extra,
            )
        if (size, batch) == (9000, 32) and "c2s" in kinds:
            self.mixed(loop, batch)

    def mixed(self, loop: str, batch: int) -> None:
        """memif one way, the batch cycling through MIXED_SIZES (against 9000 B, bytes/s)."""
        for kind in ("c2s", "s2c"):
            self.flow(
                f"one-way/memif/{MIXED}/b{batch}/{kind}/{loop}",
                "one-way",
                f"memif {MIXED} b{batch} {kind}",
                loop,
                "memif",
                (self.a, self.b),
                size=9000,
                sizes=MIXED_SIZES,
                tx_batch=batch,
                rx_batch=batch,
                direction=kind,
            )

    def zero_copy(self, loop: str, direction: str, style: str) -> None:
        self.flow(
            f"zero-copy/memif/1500B/{style}/{direction}/{loop}",
            "zero-copy",
            f"memif 1500B views tx32 rx256, {style} {direction}",
            loop,
            "memif",
            (self.a, self.b),
            size=1500,
            direction=direction,
            tx_style="copy" if style == "send_batch" else "alloc",
            rx_style="views",
            rx_batch=256,  # what receive() and ``async for`` take by default
        )

    def plan(self) -> None:
        """Every step in order. The C baseline runs at the start, the middle and the end of
        a full run (its rate is bimodal on some VMs: the spread shows it)."""
        q, loops = self.args.quick, self.args.loops
        pins = (self.a, self.b)
        if not q:
            self.c_sessions()
        # Key comparisons first, interleaved and repeated: memif 64 B b32 both ways vs
        # socket, and (full runs) 9000 B chains b32, of one size and of mixed sizes.
        key = [(64, 32)] if q else [(64, 32), (9000, 32)]
        for _ in range(self.args.repeat):
            for size, batch in key:
                self.oneway(loops[0], size, batch, ("c2s", "s2c", "socket"))
        for loop in loops:
            for size in (1500,) if q else SIZES:
                for batch in (32,) if q else BATCHES:
                    if (size, batch) not in key or loop != loops[0]:
                        self.oneway(
                            loop, size, batch, ("socket",) if q else ("socket", "c2s", "s2c")
                        )
        # Zero-copy: the c2s cases carry a target, so they are repeated (interleaved) too.
        rounds = [("c2s",)] * self.args.repeat + ([] if q else [("s2c",)])
        for directions in rounds:
            for loop in loops:
                for d in directions:
                    for style in ("send_batch", "alloc"):
                        self.zero_copy(loop, d, style)
        if not q:
            self.c_sessions()
        self.plan_validation()
        self.plan_cli()
        shared = (self.b, self.b)
        loop = loops[0]
        for mode in ("interrupt", "adaptive"):
            self.flow(
                f"shared-core/memif/64B/{mode}/{loop}",
                "shared-core",
                f"memif 64B b32 c2s {mode}",
                loop,
                "memif",
                shared,
                size=64,
                rx_mode=mode,
            )
        self.flow(
            f"shared-core/socket/64B/{loop}",
            "shared-core",
            "socket 64B b32",
            loop,
            "socket",
            shared,
            size=64,
        )
        if not q:
            for loop in loops:
                for n in (1, 2, 4):
                    self.flow(
                        f"queues/memif/64B/q{n}/{loop}",
                        "queues",
                        f"memif 64B b32 c2s, {n} queue(s)",
                        loop,
                        "memif",
                        pins,
                        size=64,
                        queues=n,
                    )
        self.plan_rtt()
        for loop in loops:
            for n in (16,) if q else (1, 16, 64):
                self.handshakes(n, loop)
        self.c_sessions()
        self.plan_testpmd()
        self.plan_vpp()

    def plan_validation(self) -> None:
        loop = self.args.loops[0]
        rounds = 2 if self.args.quick else 3
        for size in (64,) if self.args.quick else (64, 1500):
            ids = [f"validation/memif/{size}B/{v}/{loop}" for v in ("on", "off")]
            if not self.hooks:
                why = "n/a (hook missing)"
                self.add(ids, functools.partial(self.skipped, ids[1:], "validation", why))
                continue
            for _ in range(rounds):
                for rid, off in zip(ids, (False, True), strict=True):
                    label = f"memif {size}B b32 c2s, validation {'off' if off else 'on'}"
                    self.flow(
                        rid,
                        "validation",
                        label,
                        loop,
                        "memif",
                        (self.a, self.b),
                        no_validation=off,
                        size=size,
                    )

    def plan_cli(self) -> None:
        q = self.args.quick
        count = int((400_000 if q else 1_000_000) * self.args.scale)
        for loop in self.args.loops[:1] if q else self.args.loops:
            for _ in range(1 if q else 2):  # interleaved: the pair's rate drifts on a VM
                for verify in (False, True):
                    self.gen_sink(loop, verify, count)

    def gen_sink(self, loop: str, verify: bool, count: int) -> None:
        kind = "verify" if verify else "plain"
        rid = f"cli/gen-sink/64B/{kind}/{loop}"

        def run() -> None:
            t0 = time.monotonic()
            res = bc.run_gen_sink(
                self.path("cli"),
                verify=verify,
                size=64,
                count=count,
                loop=loop,
                pins=(self.a, self.b),
                timeout=self.timeout + 60,
            )
            label = f"aiomemif gen -> sink{' --verify' if verify else ''} 64B"
            rec = Record(rid, "cli", label, loop, f"sink{self.a} gen{self.b}", "rate", size=64)
            self.progress(self.results.add(rec, res), t0, f"ring full {res.get('ring_full_waits')}")

        self.add([rid], run)

    def plan_rtt(self) -> None:
        for kind in ("eventfd-sync", "busypoll-sync"):
            label = f"raw {kind.removesuffix('-sync')} floor, no event loop"
            self.rtt(f"rtt/raw/{kind}", label, "-", kind, "")
        for loop in [x for x in self.args.loops for _ in range(self.args.repeat)]:
            self.rtt(  # each floor next to the cases compared with it, --repeat times
                f"rtt/raw/eventfd/{loop}", "raw eventfd floor (add_reader)", loop, "eventfd", ""
            )
            self.rtt(
                f"rtt/memif/64B/interrupt/{loop}", "memif 64B interrupt", loop, "memif", "interrupt"
            )
            self.rtt(
                f"rtt/raw/busypoll/{loop}", "raw busypoll floor (task spin)", loop, "busypoll", ""
            )
            for mode in ("polling", "adaptive"):
                self.rtt(f"rtt/memif/64B/{mode}/{loop}", f"memif 64B {mode}", loop, "memif", mode)

    def rtt(self, rid: str, label: str, loop: str, kind: str, mode: str) -> None:
        def run() -> None:
            t0 = time.monotonic()
            spec = br.RttSpec(
                kind=kind, duration=self.rtt_s, rx_mode=mode or "interrupt", path=self.path("rtt")
            )
            pins = (self.a, self.b)
            res = br.run_rtt(
                self.ctx,
                spec,
                loop=loop if loop != "-" else "asyncio",
                pins=pins,
                timeout=self.timeout,
            )
            rec = Record(rid, "rtt", label, loop, f"pong{pins[0]} ping{pins[1]}", "rtt", size=64)
            self.progress(self.results.add(rec, res), t0)

        self.add([rid], run)

    def handshakes(self, n: int, loop: str) -> None:
        rid = f"handshakes/{n}/{loop}"

        def run() -> None:
            t0 = time.monotonic()
            spec = bs.HandshakeSpec(count=n, path=self.path("hs"))
            res = bs.run_handshakes(
                self.ctx, spec, loop=loop, pins=(self.a, self.b), timeout=self.timeout
            )
            rec = Record(
                rid,
                "handshakes",
                f"{n} interface(s) on one socket",
                loop,
                f"srv{self.a} cli{self.b}",
                "handshake",
            )
            self.progress(self.results.add(rec, res), t0)

        self.add([rid], run)

    def skipped(self, ids: Sequence[str], group: str, why: str) -> None:
        for rid in ids:
            rec = Record(rid, group, rid.split("/", 1)[1], "-", "-", "skipped", note=why)
            print(f"  {self.results.add(rec, None).id:<48} {why}")


# -- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    suite = Suite(args)
    suite.plan()
    if args.list:
        for step in suite.steps:
            print("\n".join(step.ids))
        return 0
    started = time.monotonic()
    res = suite.results
    info = harness.machine_info(args.loops)
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}")
    print(
        f"cpu: {info['cpu_model']} ({info['cpus_online']} online, allowed {info['cpus_allowed']})"
    )
    print(f"kernel {info['kernel']}; {info['python']}; " + "; ".join(info["loops"].values()))
    print(f"DPDK {info['dpdk']} ({info['testpmd']}); aiomemif {info['aiomemif']}")
    print(f"validation hook: {', '.join(suite.hooks) or 'missing (validation cases n/a)'}")
    a, b = suite.a, suite.b
    pinning = {
        "flows": f"receiver -> cpu {a}, sender -> cpu {b}",
        "shared-core": f"receiver and sender -> cpu {b}",
        "rtt": f"ponger -> cpu {a}, pinger -> cpu {b}",
        "handshakes": f"server -> cpu {a}, client -> cpu {b}",
        "testpmd macswap": f"aiomemif -> cpu {a}; testpmd forwarding lcore (and its idle "
        f"main lcore) -> cpu {b}",
        "c-baseline": f"rxonly forwarding -> cpu {a} (shared: cpu {b}), txonly forwarding "
        f"-> cpu {b}",
        "parent": "not pinned (waits on pipes)",
    }
    print("pinning (os.sched_setaffinity / testpmd --lcores):")
    for k, v in pinning.items():
        print(f"  {k:<16} {v}")
    load = harness.background_load(sorted({a, b}))
    print("background load: " + ", ".join(f"cpu {c} {f:.0%}" for c, f in load.items()))
    if any(f > 0.1 for f in load.values()):
        print("WARNING: something else is using the benchmark CPUs; results will be low/noisy")
    print(
        f"mode {'quick' if args.quick else 'full'}: {len(suite.steps)} steps, flows "
        f"{suite.flow_s:g} s, rtt {suite.rtt_s:g} s, key cases x{args.repeat}\n",
        flush=True,
    )
    try:
        for step in suite.steps:
            before = quiet_or_busy(sorted({a, b}), args.wait_quiet)
            with harness.ForeignLoad(sorted({a, b})) as during:
                step.run()
            busy = max(before, during.fraction)
            if busy > BUSY_WARN:
                print(
                    f"    (other processes used cpus {a},{b}: {before:.0%} just before this "
                    f"step, {during.fraction:.0%} during it)"
                )
            for rid in step.ids:
                rec = res.records.get(rid)
                if rec is not None and rec.runs and "foreign_load" not in rec.runs[-1]:
                    rec.runs[-1]["foreign_load"] = busy
                    rec.runs[-1]["foreign_before"] = before
                    rec.runs[-1]["foreign_during"] = during.fraction
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured")
    finally:
        shutil.rmtree(suite.tmp, ignore_errors=True)
        leaked = harness.reap_testpmd([os.getpid()])
        if leaked:
            print(f"killed leftover testpmd processes {leaked}")
    elapsed = time.monotonic() - started
    report.ratios(res)
    records = list(res.records.values())
    print("\n" + report.table(records) + "\n")
    tg = report.targets(res, args.loops, suite.pmd_missing)
    print("targets (ratio; PASS / SHORT):")
    print(report.targets_text(tg))
    noisy = [r.id for r in records if r.preempt > report.PREEMPT_WARN and not report.sharing(r)]
    noisy += [r.id for r in records if r.busy > BUSY_WARN and r.id not in noisy]
    if noisy:
        print(
            f"WARNING: {len(noisy)} case(s) disturbed by other processes (preempted more than "
            f"{report.PREEMPT_WARN} times, or cpus > {BUSY_WARN:.0%} busy before the run): "
            + ", ".join(noisy)
        )
    print(f"\nelapsed: {elapsed:.1f} s")
    doc: Json = {
        "schema": 2,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "mode": "quick" if args.quick else "full",
        "machine": info,
        "hostname": socket.gethostname(),
        "pinning": pinning,
        "background_load": {str(c): f for c, f in load.items()},
        "loadavg_after": os.getloadavg(),
        "validation_hook": suite.hooks,
        "settings": {
            "flow_s": suite.flow_s,
            "rtt_s": suite.rtt_s,
            "repeat": args.repeat,
            "loops": args.loops,
            "only": args.only,
            "skip": args.skip,
            "ring_size": 1024,
            "buffer_size": 2048,
        },
        "records": [r.as_json() for r in records],
        "targets": [t.as_json() for t in tg],
        "elapsed_s": elapsed,
    }
    report.write_json(args.json, doc)
    print(f"results: {args.json}")
    if not args.no_plot:
        png = report.plot(args.plot or args.json.with_suffix(".png"), res)
        print(f"plot: {png}" if png else "plot: skipped (matplotlib not installed)")
    if args.profile is not None:
        for prof in sorted(args.profile.glob("*.prof")):
            print(f"\n=== {prof} ===\n{profile_summary(prof)}")
    return 0 if all(r.ok for r in records) else 1


def profile_summary(path: Path, top: int = 20) -> str:
    import io
    import pstats

    buf = io.StringIO()
    pstats.Stats(str(path), stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
