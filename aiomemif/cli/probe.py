"""``aiomemif probe``: what a memif server announces, and whether it would accept an id."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import attrs

from .._aio.client import _handshake
from .._aio.rx_queue import RxMode
from .._core.messages import Hello
from .._os.channel import format_address, parse_address
from ..errors import (
    ConfigurationError,
    HandshakeRefusedError,
    HandshakeTimeoutError,
    MemifError,
    MemifOSError,
)
from .common import UsageError, add_link_options, interface_config

__all__ = ["register", "run"]

PROBE_EPILOG = """\
examples:
  aiomemif probe --socket /run/vpp/memif.sock
      print the server's name, protocol versions and limits from its HELLO
  aiomemif probe --socket @memif --id 3 --secret s3cret
      ... and check whether interface id 3 with that secret would be accepted
  aiomemif probe --socket /tmp/x.sock --id 0 --mode ip --json

The server is only probed, over one connection: without --id the socket is closed right
after HELLO (no DISCONNECT: nothing was negotiated, and some servers crash on a DISCONNECT
before INIT); with --id the same connection goes on to a complete handshake, closed with
DISCONNECT once accepted. Exit status: 0 when the server answered (and accepted the id,
with --id), 1 when it refused or could not be reached.
"""

_PROBE_REASON = "aiomemif probe done"


class _HelloOnly(Exception):
    """Raised from the HELLO callback to end a probe without --id before INIT."""


def _version(v: int) -> str:
    return f"{v >> 8}.{v & 0xFF}"


def _hello_dict(h: Hello) -> dict[str, Any]:
    return {
        "name": h.name,
        "min_version": _version(h.min_version),
        "max_version": _version(h.max_version),
        "max_region_index": h.max_region,
        "max_m2s_ring_index": h.max_m2s_ring,
        "max_s2m_ring_index": h.max_s2m_ring,
        "max_log2_ring_size": h.max_log2_ring_size,
    }


async def run(args: argparse.Namespace) -> int:
    """Probe the server; 0 if it answered (and accepted the id, if one was given)."""
    if args.role != "client":
        raise UsageError("probe always connects as a client (drop --role server)")
    check_id = args.id is not None
    if not check_id:
        args.id = 0  # only HELLO is read, but bad --secret/--ring-size values still count
    cfg = interface_config(args)
    try:
        address = parse_address(args.socket)
    except ConfigurationError as exc:  # pragma: no cover - argparse checked it already
        raise UsageError(str(exc)) from None
    shown = format_address(address)
    result: dict[str, Any] = {"socket": shown, "reachable": False, "hello": None}
    hello: list[Hello] = []

    def seen(msg: Hello) -> None:
        hello.append(msg)
        if not check_id:
            raise _HelloOnly

    # --timeout bounds the whole attempt: the wait for HELLO and, with --id, the rest.
    cfg = attrs.evolve(cfg, handshake_timeout=args.timeout)
    try:
        conn = await _handshake(address, cfg, RxMode.INTERRUPT, on_hello=seen)
    except _HelloOnly:
        result.update(reachable=True, hello=_hello_dict(hello[0]))
        return _report(args, result, ok=True)
    except MemifError as exc:
        if not hello and isinstance(exc, MemifOSError):  # the socket could not be reached
            result["error"] = exc.strerror or str(exc)
            return _report(args, result, ok=False)
        result["reachable"] = True
        reason = getattr(exc, "reason", None) or str(exc)
        if not hello:
            result["error"] = _before_hello(shown, exc, reason, args.timeout)
            return _report(args, result, ok=False)
        result.update(hello=_hello_dict(hello[0]), interface_id=cfg.interface_id)
        result.update(accepted=False, reason=reason)
        return _report(args, result, ok=False)
    result.update(reachable=True, hello=_hello_dict(hello[0]), interface_id=cfg.interface_id)
    result.update(accepted=True, reason=None, peer_interface_name=conn.peer_interface_name)
    await conn.aclose(_PROBE_REASON)
    return _report(args, result, ok=True)


def _before_hello(shown: str, exc: MemifError, reason: str, timeout: float) -> str:
    """What went wrong before a HELLO was accepted, for the ``error`` field."""
    if isinstance(exc, HandshakeTimeoutError):
        return f"{shown}: no HELLO within {timeout:g} s"
    if isinstance(exc, HandshakeRefusedError):
        return f"{shown}: DISCONNECT instead of HELLO: {reason}"
    return f"{shown}: bad answer: {reason}"


def _report(args: argparse.Namespace, result: dict[str, Any], ok: bool) -> int:
    result["ok"] = ok
    if args.json:
        print(json.dumps(result, indent=2), flush=True)
        return 0 if ok else 1
    h = result["hello"]
    if h is None:
        print(f"aiomemif probe: {result['error']}", file=sys.stderr)
        return 1
    print(f"{result['socket']}: memif server {h['name']!r}")
    print(f"  protocol version:   {h['min_version']} .. {h['max_version']}")
    print(f"  max region index:   {h['max_region_index']}")
    print(f"  max m2s ring index: {h['max_m2s_ring_index']}")
    print(f"  max s2m ring index: {h['max_s2m_ring_index']}")
    log2 = h["max_log2_ring_size"]
    slots = f" ({1 << log2} slots)" if log2 < 32 else ""
    print(f"  max log2 ring size: {log2}{slots}")
    if "interface_id" in result:
        what = f"interface id {result['interface_id']}"
        if result["accepted"]:
            print(f"{what}: accepted (peer interface {result['peer_interface_name']!r})")
        else:
            print(f"{what}: refused: {result['reason']}")
    return 0 if ok else 1


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``probe`` subcommand."""
    p = sub.add_parser(
        "probe",
        help="show what a memif server announces and whether it accepts an id",
        description="Connect to a memif socket as a client, print the server's HELLO (name,\n"
        "protocol versions, region/ring limits) and, with --id, whether a handshake for\n"
        "that id (with --secret, --mode, --queues ...) would be accepted; then disconnect.",
        epilog=PROBE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--timeout", type=_positive_seconds, default=5.0,
                   help="seconds to wait for the server's HELLO and, with --id, for the"
                        " whole handshake (5)")  # fmt: skip
    add_link_options(p, default_role="client")
    # --id is optional here: without it only HELLO is read.
    p.set_defaults(run=run, id=None)
    for action in p._actions:
        if action.dest == "id":
            action.help = "interface id whose handshake to try (default: only read HELLO)"
