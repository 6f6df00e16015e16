"""``aiomemif probe``: what a memif server announces, and whether it would accept an id."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

from .. import connect
from .._core.messages import Disconnect, Hello, decode_untrusted, encode
from .._os.channel import ControlChannel, connect_socket, format_address, parse_address
from .._os.fds import close_fd
from ..errors import (
    ConfigurationError,
    DisconnectedError,
    HandshakeRefusedError,
    HandshakeTimeoutError,
    MemifError,
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

The server is only probed: the connection is closed with DISCONNECT right after HELLO
(and after a complete handshake when --id is given). Exit status: 0 when the server
answered (and accepted the id, with --id), 1 when it refused or could not be reached.
"""

_PROBE_REASON = "aiomemif probe done"


def _version(v: int) -> str:
    return f"{v >> 8}.{v & 0xFF}"


async def _read_hello(address: str | bytes, timeout: float) -> Hello | str:
    """Connect, read the server's first message, say goodbye; the HELLO or why not."""
    channel = ControlChannel(await connect_socket(address))
    try:
        try:
            async with asyncio.timeout(timeout):
                data, fds = await channel.recv()
        except TimeoutError:
            return f"{format_address(address)}: no HELLO within {timeout:g} s"
        for fd in fds:
            close_fd(fd)
        msg = decode_untrusted(data)
        if isinstance(msg, Disconnect):
            return f"{format_address(address)}: DISCONNECT instead of HELLO: {msg.reason}"
        if not isinstance(msg, Hello):
            return f"{format_address(address)}: {type(msg).__name__.upper()} instead of HELLO"
        with contextlib.suppress(MemifError, OSError):
            channel.send_nowait(encode(Disconnect(_PROBE_REASON)))
        return msg
    except MemifError as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        return f"{format_address(address)}: bad answer: {reason}"
    finally:
        channel.close()


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
    if check_id:
        cfg = interface_config(args)
    else:
        args.id = 0
        interface_config(args)  # still report bad --secret/--ring-size values as usage errors
    try:
        address = parse_address(args.socket)
    except ConfigurationError as exc:  # pragma: no cover - argparse checked it already
        raise UsageError(str(exc)) from None
    shown = format_address(address)
    result: dict[str, Any] = {"socket": shown, "reachable": False, "hello": None}
    try:
        got = await _read_hello(address, args.timeout)
    except MemifError as exc:
        result["error"] = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return _report(args, result, ok=False)
    result["reachable"] = True
    if isinstance(got, str):
        result["error"] = got
        return _report(args, result, ok=False)
    result["hello"] = _hello_dict(got)
    if not check_id:
        return _report(args, result, ok=True)
    result["interface_id"] = cfg.interface_id
    try:
        conn = await connect(args.socket, cfg)
    except HandshakeRefusedError as exc:
        result.update(accepted=False, reason=exc.reason)
        return _report(args, result, ok=False)
    except (DisconnectedError, HandshakeTimeoutError, MemifError) as exc:
        result.update(accepted=False, reason=getattr(exc, "reason", None) or str(exc))
        return _report(args, result, ok=False)
    result.update(accepted=True, reason=None, peer_interface_name=conn.peer_interface_name)
    await conn.aclose(_PROBE_REASON)
    return _report(args, result, ok=True)


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
                   help="seconds to wait for the server's HELLO (5)")  # fmt: skip
    add_link_options(p, default_role="client")
    # --id is optional here: without it only HELLO is read.
    p.set_defaults(run=run, id=None)
    for action in p._actions:
        if action.dest == "id":
            action.help = "interface id whose handshake to try (default: only read HELLO)"
