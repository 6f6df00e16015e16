"""The ``aiomemif`` command (console script and ``python -m aiomemif``).

Each subcommand lives in its own module with ``register(subparsers)`` (which sets
``run=<coroutine function>`` as a default) and an ``async def run(args) -> int``.
Exit status: 0 success, 1 peer or protocol failure, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import DisconnectedError, MemifError
from .common import UsageError

__all__ = ["build_parser", "main"]

#: Subcommand modules, in the order ``aiomemif --help`` lists them. A name whose module is
#: not installed is left out (modules land one by one); a module that fails to import is
#: an error, not skipped.
SUBCOMMANDS = ("responder", "ping", "gen", "sink", "capture", "probe", "loopback")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiomemif",
        description="asyncio-native memif (shared-memory packet interface) tools",
    )
    parser.add_argument("--version", action="version", version=f"aiomemif {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 failure, 2 usage)."""
    args = build_parser().parse_args(argv)
    try:
        return int(asyncio.run(args.run(args)))
    except UsageError as exc:
        print(f"aiomemif {args.command}: {exc}", file=sys.stderr)
        return 2
    except DisconnectedError as exc:
        print(f"aiomemif {args.command}: link down: {exc.reason}", file=sys.stderr)
        return 1
    except MemifError as exc:
        print(f"aiomemif {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into head(1): not an error of ours
        sys.stderr.close()
        return 0
