"""aiomemif one-way throughput benchmark against an asyncio SOCK_SEQPACKET baseline.

Every case runs a receiver and a sender in two spawned processes pinned to different CPUs:

- ``memif``: aiomemif client -> aiomemif server (client ``tx_queues[0]``, server
  ``rx_queues[0]``), sender batches of ``--tx-batch`` packets via ``send_batch``.
- ``socket``: an ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair; ``sock.send`` per packet with a
  ``loop.sock_sendall`` fallback on a full buffer; the receiver drains up to ``--rx-batch``
  messages per ``add_reader`` wakeup.

The receiver measures packets/s from its first to its last packet of a fixed count, and
checks the count, every length and the payload marks. Usage::

    python benchmarks/run.py --quick            # asyncio only, < 1 min
    python benchmarks/run.py                    # asyncio and uvloop, 3 repeats each
    python benchmarks/run.py --loop uvloop --sizes 64 --json /tmp/r.json
    python benchmarks/run.py --quick --profile /tmp/prof   # cProfile both children
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection as PipeEnd
from multiprocessing.connection import wait
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

import bench_workers as bw

import aiomemif

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results.json"
TARGET_RATIO = 3.0
TARGET_SIZE = 64

#: Packets per case by size: (quick, full).
DEFAULT_COUNTS: dict[int, tuple[int, int]] = {
    64: (3_000_000, 6_000_000),
    1500: (2_000_000, 3_000_000),
}
#: More involuntary context switches than this in a child marks a case as disturbed.
PREEMPT_WARN = 300
#: Extra seconds the parent allows on top of the per-case timeout (spawn + imports).
GRACE = 15.0

Json = dict[str, Any]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run, asyncio loop only (< 1 min)")
    p.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default=None,
        help="run only this loop (default: asyncio with --quick, both loops otherwise)",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file ({DEFAULT_JSON})")
    p.add_argument("--sizes", default="64,1500", help="packet sizes in bytes (default 64,1500)")
    p.add_argument("--count", type=int, default=0, help="packets per case (default: by size)")
    p.add_argument("--repeat", type=int, default=0, help="runs per case (default 1 quick, 3 full)")
    p.add_argument("--tx-batch", type=int, default=32, help="packets per send batch (32)")
    p.add_argument("--rx-batch", type=int, default=32, help="most packets per receive (32)")
    p.add_argument("--ring-size", type=int, default=1024, help="memif descriptors per ring (1024)")
    p.add_argument("--buffer-size", type=int, default=2048, help="memif buffer bytes (2048)")
    p.add_argument(
        "--sock-buf",
        type=int,
        default=1 << 22,
        help="SO_SNDBUF/SO_RCVBUF request for the baseline, 0 = system default (4 MiB)",
    )
    p.add_argument(
        "--rx-mode",
        choices=["interrupt", "polling", "adaptive"],
        default="interrupt",
        help="aiomemif receive mode (interrupt: eventfd wakeups; polling: MASK_INT set; "
        "adaptive: spin briefly after traffic, then sleep on the eventfd)",
    )
    p.add_argument(
        "--shared-core",
        action="store_true",
        help="pin receiver and sender to the SAME cpu (shows a receiver does not starve a "
        "peer it shares a core with)",
    )
    p.add_argument(
        "--transports", default="memif,socket", help="which transports (default memif,socket)"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="per-case watchdog, s (60)")
    p.add_argument("--profile", type=Path, default=None, help="cProfile both children into DIR")
    args = p.parse_args(argv)
    args.size_list = [int(s) for s in args.sizes.split(",") if s]
    args.transport_list = [t for t in args.transports.split(",") if t]
    if args.loop is not None:
        args.loops = [args.loop]
    else:
        args.loops = ["asyncio"] if args.quick else ["asyncio", "uvloop"]
    if not args.repeat:
        args.repeat = 1 if args.quick else 3
    for t in args.transport_list:
        if t not in ("memif", "socket"):
            p.error(f"unknown transport {t!r}")
    for size in args.size_list:
        if not 0 < size <= args.buffer_size:
            p.error(f"packet size {size} does not fit a {args.buffer_size}-byte buffer")
    return args


# -- machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loop_version(name: str) -> str:
    if name == "uvloop":
        try:
            return f"uvloop {importlib.metadata.version('uvloop')}"
        except importlib.metadata.PackageNotFoundError:
            return "uvloop (not installed)"
    return f"asyncio (selector, {sys.version.split()[0]})"


def machine_info(loops: Sequence[str]) -> Json:
    return {
        "cpu_model": cpu_model(),
        "cpus_online": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "loops": {name: loop_version(name) for name in loops},
        "aiomemif": aiomemif.__version__,
    }


def _cpu_times() -> dict[int, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            vals = [int(v) for v in fields[:8]]
            idle = vals[3] + vals[4]  # idle + iowait
            out[int(name[3:])] = (sum(vals) - idle, sum(vals))
    return out


def background_load(cpus: Sequence[int], seconds: float = 0.5) -> dict[int, float]:
    """Fraction of each CPU in ``cpus`` that something else keeps busy (sampled now)."""
    before = _cpu_times()
    time.sleep(seconds)
    after = _cpu_times()
    load: dict[int, float] = {}
    for cpu in cpus:
        if cpu in before and cpu in after:
            busy = after[cpu][0] - before[cpu][0]
            total = after[cpu][1] - before[cpu][1]
            load[cpu] = busy / total if total > 0 else 0.0
    return load


def plan_pinning(shared: bool = False) -> tuple[int | None, int | None]:
    """Receiver and sender CPUs: two different allowed CPUs (or one shared CPU), or none."""
    allowed = sorted(os.sched_getaffinity(0))
    if shared:
        return allowed[0], allowed[0]
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[1]


# -- cases --------------------------------------------------------------------------------


def _stop(procs: Sequence[SpawnProcess], deadline: float) -> list[int | None]:
    """Join ``procs`` until ``deadline``; terminate, then kill, whatever is left."""
    procs = [proc for proc in procs if proc.pid is not None]  # started ones only
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(3.0)
        if proc.is_alive():
            proc.kill()
            proc.join(3.0)
    return [proc.exitcode for proc in procs]


def run_pair(
    ctx: SpawnContext,
    rx_target: Callable[..., None],
    tx_target: Callable[..., None],
    rx_spec: bw.WorkerSpec,
    tx_spec: bw.WorkerSpec,
    extra: tuple[object, object],
) -> tuple[Json, Json]:
    """Start receiver and sender, collect one result from each under a watchdog."""
    rx_read, rx_write = ctx.Pipe(duplex=False)
    tx_read, tx_write = ctx.Pipe(duplex=False)
    rx = ctx.Process(target=rx_target, args=(rx_spec, rx_write, extra[0]), name="bench-rx")
    tx = ctx.Process(target=tx_target, args=(tx_spec, tx_write, extra[1]), name="bench-tx")
    deadline = time.monotonic() + rx_spec.timeout + GRACE
    results: dict[str, Json] = {}
    pending: dict[PipeEnd, str] = {rx_read: "receiver", tx_read: "sender"}
    try:
        rx.start()
        tx.start()
        rx_write.close()
        tx_write.close()
        for obj in extra:  # our copies of the socketpair: the children have their own
            if isinstance(obj, socket.socket):
                obj.close()
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for ready in wait(list(pending), timeout=left):
                assert isinstance(ready, PipeEnd)
                role = pending.pop(ready)
                try:
                    results[role] = ready.recv()
                except EOFError:
                    results[role] = {"error": f"{role} exited without a result"}
    finally:
        _stop([rx, tx], deadline if not pending else time.monotonic() + 1.0)
        for end in (rx_read, tx_read, rx_write, tx_write):
            end.close()
        for obj in extra:
            if isinstance(obj, socket.socket):
                obj.close()
    codes = [rx.exitcode, tx.exitcode]
    for role in pending.values():
        results[role] = {"error": f"{role}: watchdog expired after {rx_spec.timeout + GRACE} s"}
    rx_res, tx_res = results["receiver"], results["sender"]
    rx_res["exitcode"], tx_res["exitcode"] = codes
    return rx_res, tx_res


def run_case(
    ctx: SpawnContext,
    args: argparse.Namespace,
    transport: str,
    loop: str,
    size: int,
    count: int,
    pins: tuple[int | None, int | None],
    tmpdir: str,
    seq: int,
) -> Json:
    case = f"{transport} {size}B"
    prof = ""
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        prof = str(args.profile / f"{transport}-{size}-{loop}-{seq}")
    common: Json = {
        "case": case,
        "transport": transport,
        "loop": loop,
        "size": size,
        "count": count,
        "tx_batch": args.tx_batch,
        "rx_batch": args.rx_batch,
        "timeout": args.timeout,
        "ring_size": args.ring_size,
        "buffer_size": args.buffer_size,
        "sock_buf": args.sock_buf,
        "rx_mode": args.rx_mode,
    }
    if transport == "memif":
        common["path"] = os.path.join(tmpdir, f"memif-{seq}.sock")
    rx_spec = bw.WorkerSpec(cpu=pins[0], profile_path=prof and f"{prof}-rx.prof", **common)
    tx_spec = bw.WorkerSpec(cpu=pins[1], profile_path=prof and f"{prof}-tx.prof", **common)
    if transport == "memif":
        ready = ctx.Event()
        rx_res, tx_res = run_pair(
            ctx, bw.memif_receiver, bw.memif_sender, rx_spec, tx_spec, (ready, ready)
        )
    else:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        rx_res, tx_res = run_pair(
            ctx, bw.socket_receiver, bw.socket_sender, rx_spec, tx_spec, (a, b)
        )
    errors = [r["error"] for r in (rx_res, tx_res) if "error" in r]
    errors += [
        f"{r.get('role', '?')} exit code {r['exitcode']}"
        for r in (rx_res, tx_res)
        if r.get("exitcode") != 0 and "error" not in r
    ]
    ok = not errors and bool(rx_res.get("ok")) and tx_res.get("sent") == count
    if not errors and not ok:
        errors.append(
            f"check failed: sent {tx_res.get('sent')}, received {rx_res.get('received')} "
            f"of {count}, {rx_res.get('bad_packets')} bad, {rx_res.get('extra_packets')} extra"
        )
    pps = float(rx_res.get("pps", 0.0)) if ok else 0.0
    run: Json = {
        "pps": pps,
        "gbps": pps * size * 8 / 1e9,
        "ok": ok,
        "errors": errors,
        "receiver": rx_res,
        "sender": tx_res,
    }
    if ok and "t_start" in tx_res:
        span = rx_res["t_last"] - tx_res["t_start"]
        run["end_to_end_pps"] = count / span if span > 0 else 0.0
        run["sender_pps"] = count / max(1e-9, tx_res["t_end"] - tx_res["t_start"])
    if prof:
        run["profiles"] = [rx_spec.profile_path, tx_spec.profile_path]
    return run


# -- report -------------------------------------------------------------------------------


def preemptions(run: Json) -> int:
    """Involuntary context switches of the busier child (other processes took its CPU)."""
    return max(int(run[role].get("rusage", {}).get("nivcsw", 0)) for role in ("receiver", "sender"))


def summarize(case: Json) -> None:
    good = [r["pps"] for r in case["runs"] if r["ok"]]
    case["ok"] = len(good) == len(case["runs"])
    case["preemptions"] = max((preemptions(r) for r in case["runs"]), default=0)
    case["pps"] = statistics.median(good) if good else 0.0
    case["gbps"] = case["pps"] * case["size"] * 8 / 1e9


def table(cases: Sequence[Json]) -> str:
    head = ("case", "loop", "packets", "Mpps", "Gbit/s", "vs socket", "preempt", "check")
    rows: list[tuple[str, ...]] = []
    for c in cases:
        ratio = c.get("ratio")
        runs = c["runs"]
        spread = ""
        if len(runs) > 1 and c["ok"]:
            lo, hi = min(r["pps"] for r in runs), max(r["pps"] for r in runs)
            spread = f" [{lo / 1e6:.3f}-{hi / 1e6:.3f}]"
        rows.append(
            (
                c["case"],
                c["loop"],
                f"{c['count']:,}",
                f"{c['pps'] / 1e6:.3f}{spread}",
                f"{c['gbps']:.3f}",
                "-" if ratio is None else f"{ratio:.2f}x",
                str(c["preemptions"]),
                "ok" if c["ok"] else "FAIL",
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = mp.get_context("spawn")
    pins = plan_pinning(args.shared_core)
    info = machine_info(args.loops)
    print(
        f"cpu: {info['cpu_model']} ({info['cpus_online']} online, allowed {info['cpus_allowed']})"
    )
    print(f"python: {info['python']} ({info['python_impl']}), kernel {info['kernel']}")
    print("loops: " + ", ".join(info["loops"].values()))
    if pins[0] is None:
        print("pinning: none (fewer than 2 CPUs allowed)")
    else:
        print(f"pinning: receiver -> cpu {pins[0]}, sender -> cpu {pins[1]} (os.sched_setaffinity)")
    load = background_load([c for c in pins if c is not None] or info["cpus_allowed"])
    shown_load = ", ".join(f"cpu {c} {f:.0%}" for c, f in load.items())
    print(f"background load before the run: {shown_load}")
    if any(f > 0.1 for f in load.values()):
        print("WARNING: another process is using the benchmark CPUs; results will be low/noisy")
    print(
        f"settings: tx batch {args.tx_batch}, rx batch {args.rx_batch}; memif ring "
        f"{args.ring_size} x {args.buffer_size} B, rx mode {args.rx_mode}; socket buffer "
        f"request {args.sock_buf} B; {args.repeat} run(s) per case; "
        f"mode {'quick' if args.quick else 'full'}"
    )
    print(flush=True)
    started = time.monotonic()
    cases: list[Json] = []
    tmpdir = tempfile.mkdtemp(prefix="aiomemif-bench-")
    seq = 0
    try:
        for loop in args.loops:
            for size in args.size_list:
                count = (
                    args.count
                    or DEFAULT_COUNTS.get(size, (500_000, 2_000_000))[0 if args.quick else 1]
                )
                by_transport = {
                    t: {
                        "case": f"{t} {size}B",
                        "transport": t,
                        "loop": loop,
                        "size": size,
                        "count": count,
                        "runs": [],
                    }
                    for t in args.transport_list
                }
                for _ in range(args.repeat):  # interleave transports to share any drift
                    for t, case in by_transport.items():
                        seq += 1
                        run = run_case(ctx, args, t, loop, size, count, pins, tmpdir, seq)
                        case["runs"].append(run)
                        status = "ok" if run["ok"] else "FAIL: " + "; ".join(run["errors"])
                        print(
                            f"  {case['case']:<12} {loop:<8} {run['pps'] / 1e6:8.3f} Mpps  "
                            f"preempt {preemptions(run):<6} {status.splitlines()[0]}",
                            flush=True,
                        )
                for case in by_transport.values():
                    summarize(case)
                base = by_transport.get("socket")
                for case in by_transport.values():
                    if base is not None and case is not base and base["pps"] > 0:
                        case["ratio"] = case["pps"] / base["pps"]
                    elif case is base:
                        case["ratio"] = 1.0 if base["pps"] > 0 else None
                cases += by_transport.values()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    elapsed = time.monotonic() - started

    print()
    print(table(cases))
    noisy = [c["case"] + " " + c["loop"] for c in cases if c["preemptions"] > PREEMPT_WARN]
    if noisy:
        print(
            f"WARNING: other processes preempted the benchmark (> {PREEMPT_WARN} involuntary "
            f"context switches) in: {', '.join(noisy)}; those numbers are low/noisy"
        )
    print()
    targets: list[Json] = []
    for loop in args.loops:
        mem = next(
            (
                c
                for c in cases
                if c["loop"] == loop and c["transport"] == "memif" and c["size"] == TARGET_SIZE
            ),
            None,
        )
        if mem is None or "socket" not in args.transport_list:
            continue
        ratio = mem.get("ratio")
        verdict = "PASS" if ratio is not None and ratio >= TARGET_RATIO else "SHORT"
        shown = "n/a" if ratio is None else f"{ratio:.2f}x"
        print(
            f"aiomemif >= {TARGET_RATIO:g}x socket baseline at {TARGET_SIZE} B [{loop}]: "
            f"{verdict} ({shown})"
        )
        targets.append({"loop": loop, "ratio": ratio, "target": TARGET_RATIO, "verdict": verdict})
    print(f"elapsed: {elapsed:.1f} s")

    report: Json = {
        "schema": 1,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": info,
        "pinning": {"receiver_cpu": pins[0], "sender_cpu": pins[1]},
        "background_load": {str(c): f for c, f in load.items()},
        "loadavg_after": os.getloadavg(),
        "settings": {
            "tx_batch": args.tx_batch,
            "rx_batch": args.rx_batch,
            "ring_size": args.ring_size,
            "buffer_size": args.buffer_size,
            "sock_buf": args.sock_buf,
            "rx_mode": args.rx_mode,
            "repeat": args.repeat,
            "timeout": args.timeout,
            "loops": args.loops,
            "sizes": args.size_list,
            "transports": args.transport_list,
            "profile": args.profile is not None,
        },
        "cases": cases,
        "targets": targets,
        "elapsed_s": elapsed,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.json}")

    if args.profile is not None:
        for c in cases:
            for run in c["runs"]:
                for path in run.get("profiles", []):
                    if os.path.exists(path):
                        print(f"\n=== {path} ===")
                        print(bw.profile_summary(path))
    return 0 if all(c["ok"] for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
