"""The command-line options of ``benchmarks/run.py``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results.json"


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of ``run.py`` (``description``: its help text), with ``loops`` and the
    quick/full defaults of ``repeat`` and ``wait_quiet`` filled in."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="representative subset, short runs")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only matching cases: a glob over the id, or whole id components\n"
        "('rtt', 'one-way/memif', '64B/b32'); repeatable, or comma-separated",
    )
    p.add_argument("--skip", action="append", default=[], help="leave out matching cases")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], help="only this event loop")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every duration")
    p.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="runs of the key cases: 64 B b32, 9000 B b32 (one size and mixed),\n"
        "1500 B zero-copy c2s, and the RTT cases with their floors (3; quick 1)",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results ({DEFAULT_JSON})")
    p.add_argument("--plot", type=Path, help="PNG path (default: next to --json, if matplotlib)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-testpmd", action="store_true", help="skip everything needing testpmd")
    p.add_argument("--no-vpp", action="store_true", help="skip everything needing VPP")
    p.add_argument("--list", action="store_true", help="print the case ids and exit")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        help="before each step, wait up to this many seconds for other processes to leave\n"
        "the benchmark cpus alone (default 5; quick 1); steps that start busy are marked",
    )
    p.add_argument("--profile", type=Path, help="cProfile the flow workers into DIR")
    args = p.parse_args(argv)
    if args.loop:
        args.loops = [args.loop]
    else:
        args.loops = ["asyncio"] if args.quick else ["asyncio", "uvloop"]
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.wait_quiet is None:
        args.wait_quiet = 1.0 if args.quick else 5.0
    return args
