"""Process plumbing shared by every benchmark group (imported by spawned children too).

Every measurement runs in fresh processes started with the ``spawn`` method. A worker is a
module-level function ``target(out, *args)``: it pins itself to a CPU, does one side of one
case and sends exactly one result dict (or ``{"error": ...}``) through ``out`` before it
exits. :func:`run_workers` starts a set of workers, collects their results under a
watchdog, and always reaps them (and any ``dpdk-testpmd`` or VPP they started).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import importlib.metadata
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as PipeEnd
from multiprocessing.connection import wait
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "GRACE",
    "Json",
    "Opts",
    "Worker",
    "ForeignLoad",
    "apply_validation_hook",
    "background_load",
    "cpu_sample",
    "errors_of",
    "machine_info",
    "percentiles",
    "preemptions",
    "reap_testpmd",
    "reap_vpp",
    "rss_bytes",
    "run_async",
    "run_peer_session",
    "run_sync",
    "run_workers",
    "validation_hook_available",
]

Json = dict[str, Any]

#: Extra seconds the parent allows on top of a case's timeout (spawn, imports, teardown).
GRACE = 15.0

#: The library's descriptor checks, as the receive and transmit paths call them through
#: module globals (in ``aiomemif._core.descriptors`` and wherever they were imported): the
#: single, per-row and run checks against regions and against a client's offered buffers,
#: and ``check_run``, which also holds the memo of runs already checked.
VALIDATION_NAMES = (
    "run_ok",
    "offered_run_ok",
    "span_ok",
    "offered_span_ok",
    "descriptor_ok",
    "offered_ok",
    "each_ok",
    "each_offered_ok",
    "check_run",
)


@dataclass(frozen=True, kw_only=True)
class Opts:
    """How a worker runs (picklable): CPU, event loop, deadline, profiling, validation."""

    role: str
    cpu: int | None
    timeout: float
    loop: str = "asyncio"  # "asyncio" or "uvloop"
    profile_path: str = ""
    #: Switch descriptor validation off in this process (benchmark-only hook).
    no_validation: bool = False


@dataclass(frozen=True)
class Worker:
    """One process of a case: its name in the results, entry point and arguments."""

    name: str
    target: Callable[..., None]
    args: tuple[object, ...]


# -- in the child ----------------------------------------------------------------------------


def _validation_functions() -> list[tuple[ModuleType, str]]:
    import aiomemif  # noqa: F401 - loads the data-path modules

    found = []
    for name, mod in sorted(sys.modules.items()):
        if name == "aiomemif" or name.startswith("aiomemif."):
            for attr in VALIDATION_NAMES:
                if callable(getattr(mod, attr, None)):
                    found.append((mod, attr))
    return found


def validation_hook_available() -> list[str]:
    """The validation functions the library exposes now (``module.name`` strings)."""
    return [f"{mod.__name__}.{attr}" for mod, attr in _validation_functions()]


def _accept(*_args: object, **_kwargs: object) -> bool:
    return True


def _accept_each(rows: Sequence[object], *_args: object, **_kwargs: object) -> list[bool]:
    return [True] * len(rows)


_FLAGS_MASK = 0xFFFF


def _parse_run(
    raw: bytes, _slot: int, _sizes: object, _memo: object, *, offers: bool = False, **_kw: object
) -> tuple[int, list[int], list[int]] | None:
    """``check_run`` without a check or the memo: parse the snapshot, trust every field.
    Chains (a flags word) still go to the caller's per-descriptor path, unchecked there too."""
    words = memoryview(raw).cast("I")
    first = words[0]
    if not offers and first & _FLAGS_MASK:
        return None
    return first >> 16, words[2::4].tolist(), words[1::4].tolist()


_STAND_INS: dict[str, Callable[..., Any]] = {
    "run_ok": _accept,
    "offered_run_ok": _accept,
    "span_ok": _accept,
    "offered_span_ok": _accept,
    "descriptor_ok": _accept,
    "offered_ok": _accept,
    "each_ok": _accept_each,
    "each_offered_ok": _accept_each,
    "check_run": _parse_run,
}


def apply_validation_hook() -> list[str]:
    """Replace every descriptor check of the library with a stand-in that trusts the peer,
    and the run check with a parse that neither checks nor consults its memo.

    Benchmark workers only: measures what validation costs. Returns what was replaced.
    """
    done = []
    for mod, attr in _validation_functions():
        setattr(mod, attr, _STAND_INS[attr])
        done.append(f"{mod.__name__}.{attr}")
    return done


def rss_bytes() -> int:
    """This process's resident set size (VmRSS) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def percentiles(samples: Sequence[float]) -> Json:
    """min, p50, p90, p99, p99.9, max and mean of ``samples`` (any unit)."""
    if not samples:
        return {"n": 0}
    s = sorted(samples)
    n = len(s)

    def at(q: float) -> float:
        return s[min(n - 1, int(q * n))]

    return {
        "n": n,
        "min": s[0],
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": s[-1],
        "mean": sum(s) / n,
    }


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def _terminate_on_sigterm() -> None:
    """Turn the watchdog's SIGTERM into an exception so cleanup (testpmd!) runs."""

    def handler(_sig: int, _frame: object) -> None:
        raise SystemExit("terminated by the benchmark watchdog")

    signal.signal(signal.SIGTERM, handler)


def _prologue(opts: Opts) -> Json:
    _terminate_on_sigterm()
    if opts.cpu is not None:
        os.sched_setaffinity(0, {opts.cpu})
    info: Json = {"role": opts.role, "cpus": sorted(os.sched_getaffinity(0)), "pid": os.getpid()}
    if opts.no_validation:
        info["validation_hooked"] = apply_validation_hook()
    return info


def _usage(r0: resource.struct_rusage, r1: resource.struct_rusage, ticks: int = 0) -> Json:
    # nivcsw: involuntary context switches (something else wanted this CPU); ``ticks``:
    # wake-ups of aiomemif's own watchdog thread meanwhile (see WATCHDOG_SWITCHES).
    return {
        "utime": r1.ru_utime - r0.ru_utime,
        "stime": r1.ru_stime - r0.ru_stime,
        "nvcsw": r1.ru_nvcsw - r0.ru_nvcsw,
        "nivcsw": r1.ru_nivcsw - r0.ru_nivcsw,
        "watchdog_ticks": ticks,
    }


def _send(out: PipeEnd, result: Json) -> None:
    try:
        out.send(result)
    finally:
        out.close()


def run_async(opts: Opts, out: PipeEnd, body: Callable[[], Awaitable[Json]]) -> None:
    """Pin, run ``body`` on the chosen loop under the deadline, report, never raise."""
    from aiomemif._os import watchdog  # (here: this module loads without aiomemif too)

    result: Json
    profiler = cProfile.Profile() if opts.profile_path else None
    try:
        info = _prologue(opts)

        async def guarded() -> Json:
            async with asyncio.timeout(opts.timeout):
                return await body()

        with asyncio.Runner(loop_factory=_loop_factory(opts.loop)) as runner:
            info["loop_module"] = type(runner.get_loop()).__module__
            if profiler is not None:
                profiler.enable()
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), watchdog.ticks()
            try:
                result = runner.run(guarded())
            finally:
                if profiler is not None:
                    profiler.disable()
            r1, t1 = resource.getrusage(resource.RUSAGE_SELF), watchdog.ticks()
        result.update(info)
        result["rusage"] = _usage(r0, r1, t1 - t0)
    except TimeoutError:
        result = {"role": opts.role, "error": f"{opts.role} timed out after {opts.timeout} s"}
    except BaseException as exc:  # report anything, including SystemExit from SIGTERM
        detail = "".join(traceback.format_exception(exc))
        result = {"role": opts.role, "error": f"{opts.role} failed: {exc!r}\n{detail}"}
    if profiler is not None:
        with contextlib.suppress(OSError):
            profiler.dump_stats(opts.profile_path)
    _send(out, result)


def run_sync(opts: Opts, out: PipeEnd, body: Callable[[], Json]) -> None:
    """Like :func:`run_async` for plain (no event loop) workers; the parent's watchdog is
    the only deadline."""
    result: Json
    try:
        info = _prologue(opts)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        result = body()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        result.update(info)
        result["rusage"] = _usage(r0, r1)
    except BaseException as exc:
        detail = "".join(traceback.format_exception(exc))
        result = {"role": opts.role, "error": f"{opts.role} failed: {exc!r}\n{detail}"}
    _send(out, result)


# -- in the parent ---------------------------------------------------------------------------


def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else ""


def machine_info(loops: Sequence[str]) -> Json:
    """CPU, kernel, Python, event loops, DPDK and aiomemif (version and git commit)."""
    import aiomemif

    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    loop_versions = {"asyncio": f"asyncio (selector, Python {platform.python_version()})"}
    try:
        import uvloop

        libuv = ""
        with_libuv = getattr(getattr(uvloop, "loop", None), "libuv_get_version", None)
        if callable(with_libuv):
            v = int(with_libuv())
            libuv = f", libuv {v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}"
        loop_versions["uvloop"] = f"uvloop {importlib.metadata.version('uvloop')}{libuv}"
    except ImportError:
        loop_versions["uvloop"] = "uvloop (not installed)"
    dpdk = _first_line(["pkg-config", "--modversion", "libdpdk"]) or _first_line(
        ["dpkg-query", "-W", "-f", "${Version}", "dpdk"]
    )
    commit = _first_line(
        ["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"]
    )
    return {
        "cpu_model": model,
        "cpus_online": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "loops": {k: v for k, v in loop_versions.items() if k in loops},
        "dpdk": dpdk or "not installed",
        "testpmd": shutil.which("dpdk-testpmd") or "not installed",
        "aiomemif": f"{aiomemif.__version__} ({commit or 'no git'})",
    }


def cpu_sample() -> dict[int, tuple[int, int]]:
    """Per-CPU (busy, total) clock ticks from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            vals = [int(v) for v in fields[:8]]
            out[int(name[3:])] = (sum(vals) - vals[3] - vals[4], sum(vals))
    return out


def background_load(cpus: Sequence[int], seconds: float = 0.4) -> dict[int, float]:
    """Fraction of each CPU something else keeps busy right now (from /proc/stat)."""
    a = cpu_sample()
    time.sleep(seconds)
    b = cpu_sample()
    return {c: (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in cpus if c in a and c in b}


class ForeignLoad:
    """How much CPU processes other than this one and its children used on ``cpus`` while
    the context was open, as a fraction of those CPUs' capacity (``.fraction``)."""

    def __init__(self, cpus: Sequence[int]) -> None:
        self.cpus = list(cpus)
        self.fraction = 0.0

    @staticmethod
    def _ours() -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for descendants
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def __enter__(self) -> ForeignLoad:
        self._t, self._cpu, self._ours0 = time.monotonic(), cpu_sample(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._t
        after = cpu_sample()
        hz = os.sysconf("SC_CLK_TCK")
        busy = sum(after[c][0] - self._cpu[c][0] for c in self.cpus if c in after) / hz
        foreign = busy - (self._ours() - self._ours0)
        self.fraction = max(0.0, foreign / (wall * len(self.cpus))) if wall > 0 else 0.0


def _testpmd_processes(owner_pids: Sequence[int]) -> list[tuple[int, str]]:
    """(pid, file prefix) of dpdk-testpmd processes started by any of ``owner_pids``.

    aiomemif's TestPmd controller names its EAL file prefix ``aiomemif-<controller pid>-*``.
    """
    wanted = [f"--file-prefix=aiomemif-{pid}-" for pid in owner_pids]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"dpdk-testpmd"):
            continue
        for arg in argv:
            text = arg.decode(errors="replace")
            if any(text.startswith(w) for w in wanted):
                found.append((int(entry.name), text.split("=", 1)[1]))
    return found


def reap_testpmd(owner_pids: Sequence[int]) -> list[int]:
    """SIGKILL (by pid) any testpmd a worker left behind; return the pids killed."""
    killed = []
    for pid, prefix in _testpmd_processes(owner_pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        shutil.rmtree(Path("/var/run/dpdk") / prefix, ignore_errors=True)
    if killed:
        time.sleep(0.2)
    return killed


def reap_vpp(owner_pids: Sequence[int]) -> list[int]:
    """SIGKILL any VPP a worker left behind (aiomemif's Vpp controller names its API
    segment prefix ``aiomemif-vpp-<controller pid>-*`` in the startup.conf it passes with
    ``-c``); return the pids killed. (The controller removes its own directory; a killed
    worker's is left in the temp dir.)"""
    wanted = [f"prefix aiomemif-vpp-{pid}-" for pid in owner_pids]
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not argv[0].endswith(b"/vpp") or b"-c" not in argv:
                continue
            conf = Path(argv[argv.index(b"-c") + 1].decode()).read_text()
        except (OSError, IndexError, UnicodeDecodeError):
            continue
        if any(w in conf for w in wanted):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


def _stop(procs: Sequence[SpawnProcess], deadline: float) -> None:
    """Join ``procs`` until ``deadline``; terminate, then kill, whatever is left."""
    procs = [p for p in procs if p.pid is not None]  # started ones only
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(5.0)
        if proc.is_alive():
            proc.kill()
            proc.join(3.0)


def run_workers(ctx: SpawnContext, workers: Sequence[Worker], timeout: float) -> dict[str, Json]:
    """Start ``workers`` (in order), collect one result from each under a watchdog.

    Sockets among the arguments are closed in the parent once the children have their
    own copies. Every worker is reaped, and so is any testpmd it started.
    """
    deadline = time.monotonic() + timeout + GRACE
    pipes: dict[PipeEnd, str] = {}
    writers: list[PipeEnd] = []
    procs: list[SpawnProcess] = []
    results: dict[str, Json] = {}
    try:
        for wk in workers:
            r, w = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=wk.target, args=(w, *wk.args), name=f"bench-{wk.name}")
            pipes[r] = wk.name
            writers.append(w)
            procs.append(proc)
            proc.start()
            w.close()
        for wk in workers:
            for obj in wk.args:
                if isinstance(obj, socket.socket):
                    obj.close()
        pending = dict(pipes)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for ready in wait(list(pending), timeout=left):
                assert isinstance(ready, PipeEnd)
                name = pending.pop(ready)
                try:
                    results[name] = ready.recv()
                except EOFError:
                    results[name] = {"error": f"{name} exited without a result"}
        for name in pending.values():
            results[name] = {"error": f"{name}: watchdog expired after {timeout + GRACE:.0f} s"}
    finally:
        _stop(procs, deadline if len(results) == len(workers) else time.monotonic() + 1.0)
        owners = [p.pid for p in procs if p.pid is not None]
        leaked = reap_testpmd(owners) + reap_vpp(owners)
        for end in (*pipes, *writers):
            end.close()
        for wk in workers:
            for obj in wk.args:
                if isinstance(obj, socket.socket):
                    obj.close()
    for wk, proc in zip(workers, procs, strict=True):
        res = results.setdefault(wk.name, {"error": f"{wk.name} did not start"})
        res["exitcode"] = proc.exitcode
        if proc.exitcode not in (0, None) and "error" not in res:
            res["error"] = f"{wk.name} exit code {proc.exitcode}"
    if leaked:
        for res in results.values():
            res.setdefault("warnings", []).append(f"killed leftover peers {leaked}")
    return results


def run_peer_session(
    ctx: SpawnContext,
    target: Callable[..., None],
    spec: object,
    *,
    cpu: int | None,
    loop: str,
    timeout: float,
    failure: str,
) -> Json:
    """One aiomemif worker measuring against a real peer (testpmd, VPP): its result, with
    the verdict (``failure`` when its own check failed) and its preemption count."""
    opts = Opts(role="aiomemif", cpu=cpu, timeout=timeout, loop=loop)
    results = run_workers(ctx, [Worker("aiomemif", target, (opts, spec))], timeout)
    res = results["aiomemif"]
    res["ok"], res["errors"] = verdict(results, bool(res.get("ok")), failure)
    res["preempt"] = preemptions(results)
    return res


def errors_of(results: dict[str, Json]) -> list[str]:
    """Every worker's error line (first line only)."""
    return [
        f"{name}: {str(r['error']).splitlines()[0]}" for name, r in results.items() if "error" in r
    ]


def verdict(results: dict[str, Json], passed: bool, failure: str) -> tuple[bool, list[str]]:
    """(ok, errors) of a step: the workers' errors if any failed, else ``failure`` (as a
    "check failed" line) unless the step's own check ``passed``."""
    errors = errors_of(results)
    if errors:
        return False, errors
    if not passed:
        return False, [f"check failed: {failure}"]
    return True, []


#: Involuntary context switches of a busy loop thread per wake-up of aiomemif's watchdog
#: thread on its cpu (the wake-up, and the GIL handed over and back): measured here as
#: 2.9-3.6 per tick (about 300 per second), against about 30 per second without it.
WATCHDOG_SWITCHES = 3


def preemptions(results: dict[str, Json]) -> int:
    """Involuntary context switches of the busiest worker, beyond those its
    own watchdog thread causes (:data:`WATCHDOG_SWITCHES` per tick)."""
    return max(
        (
            max(0, int(u.get("nivcsw", 0)) - WATCHDOG_SWITCHES * int(u.get("watchdog_ticks", 0)))
            for u in (r.get("rusage", {}) for r in results.values())
        ),
        default=0,
    )
