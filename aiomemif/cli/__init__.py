"""The ``aiomemif`` command (console script and ``python -m aiomemif``).

Each subcommand lives in its own module with ``register(subparsers)`` (which sets
``run=<coroutine function>`` as a default) and an ``async def run(args) -> int``.

One rule for every subcommand:

- exit status 0 success, 1 peer, protocol or OS failure, 2 bad options, 130 SIGINT
  (Ctrl-C), 143 SIGTERM;
- SIGINT and SIGTERM cancel the running command, which closes its link with DISCONNECT
  and prints its summary;
- a failure is one line on stderr (``aiomemif CMD: ...``), never a traceback (an
  unexpected exception is reported as an internal error; ``-v`` adds its traceback);
- with ``--json`` exactly one JSON document goes to stdout, also on failure
  (``{"command": ..., "ok": false, "error": ..., "exit_status": ...}``);
- the command runs on uvloop when it is installed, else on asyncio's default loop;
  ``--loop asyncio|uvloop`` (before or after the subcommand) or ``$AIOMEMIF_LOOP`` choose.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .. import __version__
from ..errors import DisconnectedError, MemifError, RemoteProtocolError
from .common import CommandError, UsageError, ending_text, os_text, print_json

__all__ = ["build_parser", "main"]

#: Subcommand modules, in the order ``aiomemif --help`` lists them. A name whose module is
#: not installed is left out (modules land one by one); a module that fails to import is
#: an error, not skipped.
SUBCOMMANDS = ("responder", "ping", "gen", "sink", "capture", "probe", "loopback")

#: Exit status by the signal that ended the run.
_SIGNAL_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class _BadArguments(Exception):
    """argparse found bad arguments (raised instead of exiting, to add a JSON document)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _BadArguments(self, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aiomemif",
        description="asyncio-native memif (shared-memory packet interface) tools",
    )
    parser.add_argument("--version", action="version", version=f"aiomemif {__version__}")
    _add_loop_option(parser, os.environ.get(LOOP_ENV) or "auto")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            importlib.import_module(f"{__name__}.{name}").register(sub)
    for command in sub.choices.values():  # after the subcommand too; the later one wins
        _add_loop_option(command, argparse.SUPPRESS)
    return parser


#: Environment variable giving the default of ``--loop``.
LOOP_ENV = "AIOMEMIF_LOOP"
LOOPS = ("auto", "asyncio", "uvloop")


def _add_loop_option(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--loop",
        choices=LOOPS,
        default=default,
        help=f"event loop: uvloop if installed (auto), asyncio or uvloop (${LOOP_ENV})",
    )


def loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The event loop a command runs on: ``(name, factory)`` for ``--loop`` ``choice``.

    Raises:
        UsageError: ``choice`` is not one of ``LOOPS``, or is ``uvloop`` and uvloop is
            not installed.
    """
    if choice not in LOOPS:
        raise UsageError(f"--loop: {choice!r} is not one of {', '.join(LOOPS)}")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise UsageError("--loop uvloop: uvloop is not installed") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


async def _run(args: argparse.Namespace) -> int:
    """Run the subcommand; SIGINT / SIGTERM cancel it and give 130 / 143."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum)
        task.cancel()

    installed = []
    for signum in _SIGNAL_STATUS:
        # A job started with '&' by a non-interactive shell has SIGINT ignored: keep it so.
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue
        loop.add_signal_handler(signum, on_signal, signum)
        installed.append(signum)
    try:
        return int(await args.run(args))
    except asyncio.CancelledError:
        if not received:
            raise
        task.uncancel()
        return _SIGNAL_STATUS[received[0]]
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _not_a_refusal(record: logging.LogRecord) -> bool:
    """Server refusals are printed by the commands themselves (from the server's events)."""
    return not str(record.msg).startswith("memif server %s: refused")


def _library_log(args: argparse.Namespace) -> logging.Handler:
    """Show the library's own log records on stderr as ``aiomemif CMD: ...``: warnings,
    and with ``-vv`` information too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"aiomemif {args.command}: %(message)s"))
    handler.addFilter(_not_a_refusal)
    handler.setLevel(logging.INFO if getattr(args, "verbose", 0) >= 2 else logging.WARNING)
    return handler


def _report(args: argparse.Namespace, status: int, message: str) -> int:
    """Print a failure: one line on stderr; with --json also the JSON document (unless the
    command printed its own)."""
    print(f"aiomemif {args.command}: {message}", file=sys.stderr, flush=True)
    if getattr(args, "json", False) and not getattr(args, "json_printed", False):
        doc: dict[str, Any] = {"command": args.command, "ok": False, "error": message,
                               "exit_status": status}  # fmt: skip
        with contextlib.suppress(OSError):
            print_json(args, doc)
    return status


def _interrupted(args: argparse.Namespace, status: int) -> int:
    if getattr(args, "json", False) and not getattr(args, "json_printed", False):
        name = "SIGINT" if status == 130 else "SIGTERM"
        with contextlib.suppress(OSError):
            print_json(args, {"command": args.command, "ok": False,
                              "error": f"interrupted by {name}",
                              "exit_status": status})  # fmt: skip
    return status


def _message(exc: BaseException) -> str:
    """One line about an exception a command let through."""
    if isinstance(exc, DisconnectedError):
        return ending_text(exc)
    if isinstance(exc, RemoteProtocolError):
        return f"protocol error: {exc.reason}"
    if isinstance(exc, OSError):
        return os_text(exc)
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except _BadArguments as exc:
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr, flush=True)
        if "--json" in argv:
            command = next((a for a in argv if not a.startswith("-")), None)
            print_json(argparse.Namespace(), {"command": command, "ok": False,
                                              "error": exc.message, "exit_status": 2})  # fmt: skip
        return 2
    log = logging.getLogger("aiomemif")
    handler = _library_log(args)
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(handler.level)
    log.propagate = False
    try:
        return _main(args)
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def _main(args: argparse.Namespace) -> int:
    try:
        args.loop, factory = loop_factory(getattr(args, "loop", "auto"))
        with asyncio.Runner(loop_factory=factory) as runner:
            status = runner.run(_run(args))
        if status in (130, 143):
            return _interrupted(args, status)
        return status
    except UsageError as exc:
        return _report(args, 2, str(exc))
    except CommandError as exc:
        return _report(args, 1, str(exc))
    except KeyboardInterrupt:
        return _interrupted(args, 130)
    except BrokenPipeError:  # e.g. piped into head(1): not an error of ours
        sys.stderr.close()
        return 0
    except (MemifError, OSError) as exc:
        return _report(args, 1, _message(exc))
    except Exception as exc:  # a bug: still one line, the traceback only with -v
        if getattr(args, "verbose", 0):
            traceback.print_exc()
        return _report(args, 1, f"internal error: {type(exc).__name__}: {exc}")
