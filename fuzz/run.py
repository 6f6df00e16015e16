"""Run the fuzz targets (what CI runs; longer runs too).

``python fuzz/run.py`` runs every target for 200,000 executions, each from a copy of its
seed corpus and of its kept regressions in a temporary folder (so nothing is written into
the checkout), with libFuzzer's limit of 1 s per input, and fails if any target finds a
crash; the targets run side by side, as many at once as there are CPUs (``--jobs``).
``--max-total-time S`` runs each for S seconds instead; ``--corpus DIR`` keeps the
growing corpora in ``DIR/<target>`` between runs; ``--artifacts DIR`` keeps crash inputs
there (default: a temporary folder, printed). Arguments after ``--`` go to libFuzzer.

A crash input is printed (base64) with the commands that reproduce and minimise it; a
minimised input goes into ``fuzz/regressions/<target>/``, which the test suite replays.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ("control", "receive", "server_tx")
#: Largest input per target: 31 control records (17 ACKs flood a server); some dozens
#: of ring operations.
MAX_LEN = {"control": 4096, "receive": 512, "server_tx": 384}
DEFAULT_RUNS = 200_000


def script(target: str) -> Path:
    return HERE / f"fuzz_{target}.py"


def seed_dirs(target: str) -> list[Path]:
    """The kept inputs of a target: its seed corpus and its regressions."""
    return [d for d in (HERE / "corpus" / target, HERE / "regressions" / target) if d.is_dir()]


def kept_inputs(target: str) -> list[Path]:
    return sorted(p for d in seed_dirs(target) for p in d.iterdir() if p.is_file())


@dataclasses.dataclass
class Outcome:
    target: str
    passed: bool
    executions: int
    seconds: float
    cpu_seconds: float
    log: str


def fuzz_one(
    target: str, corpus: Path, artifacts: Path, budget: list[str], extra: list[str]
) -> Outcome:
    """Run one target from ``corpus`` (seeded with its kept inputs first)."""
    for path in kept_inputs(target):
        if not (corpus / path.name).exists():
            shutil.copyfile(path, corpus / path.name)
    cmd = [
        sys.executable,
        str(script(target)),
        *budget,
        "-timeout=1",
        f"-max_len={MAX_LEN[target]}",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/{target}-",
        *extra,
        str(corpus),
    ]
    print(f"--- {target}: {' '.join(cmd)}", flush=True)
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(proc.pid, 0)  # its own CPU time, however loaded
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        out.seek(0)
        log = out.read().decode(errors="replace")
    found = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    execs = int(found[-1]) if found else 0
    cpu = usage.ru_utime + usage.ru_stime
    return Outcome(target, proc.returncode == 0, execs, seconds, cpu, log)


def report_crash(target: str, artifacts: Path, log: str) -> None:
    print("\n".join(log.splitlines()[-60:]))
    for crash in sorted(artifacts.glob(f"{target}-*")):
        data = crash.read_bytes()
        print(f"\ncrash input {crash} ({len(data)} bytes), base64:")
        print(base64.b64encode(data).decode())
        print(
            f"reproduce: python {script(target)} {crash}\n"
            f"minimise:  python {script(target)} -minimize_crash=1 -runs=100000"
            f" -max_len={MAX_LEN[target]} {crash}\n"
            f"then keep the minimised input in {HERE / 'regressions' / target}/"
        )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args:
        at = args.index("--")
        args, extra = args[:at], args[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"some of {', '.join(TARGETS)} (all)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="executions per target")
    budget.add_argument("--max-total-time", type=int, help="seconds per target (not --runs)")
    parser.add_argument("--corpus", type=Path, help="keep the corpora in DIR/<target>")
    parser.add_argument("--artifacts", type=Path, help="keep crash inputs in DIR")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="targets run at once (CPUs)"
    )
    opts = parser.parse_args(args)
    targets = opts.targets or list(TARGETS)
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; the targets are {', '.join(TARGETS)}")
    if opts.max_total_time is not None:
        limit = [f"-max_total_time={opts.max_total_time}"]
    else:
        limit = [f"-runs={opts.runs}"]
    failed = []
    with (
        tempfile.TemporaryDirectory(prefix="aiomemif-fuzz-") as tmp,
        concurrent.futures.ThreadPoolExecutor(opts.jobs) as pool,
    ):
        artifacts = (opts.artifacts or Path(tmp) / "artifacts").resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        runs = []
        for target in targets:
            corpus = (opts.corpus or Path(tmp) / "corpus") / target
            corpus.mkdir(parents=True, exist_ok=True)
            runs.append(pool.submit(fuzz_one, target, corpus, artifacts, limit, extra))
        for done in concurrent.futures.as_completed(runs):
            o = done.result()
            rate = o.executions / o.seconds if o.seconds else 0.0
            print(
                f"{o.target}: {'ok' if o.passed else 'FAILED'}, {o.executions} executions"
                f" in {o.seconds:.1f} s ({rate:.0f}/s; {o.cpu_seconds:.1f} s of CPU)",
                flush=True,
            )
            if not o.passed:
                failed.append(o.target)
                report_crash(o.target, artifacts, o.log)
    if failed:
        print(f"fuzzing failed: {', '.join(failed)}")
        return 1
    print(f"fuzzing passed: {', '.join(targets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
