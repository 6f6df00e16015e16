"""What every ``aiomemif`` subcommand that talks to a peer shares: options, link set-up."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from .. import Connection, InterfaceConfig, connect, serve
from .._os.channel import parse_address
from ..errors import ConfigurationError

__all__ = [
    "SECRET_ENV",
    "UsageError",
    "add_link_options",
    "emit",
    "interface_config",
    "open_link",
    "packet_size",
    "positive",
]

#: Environment variable read for the secret when neither --secret nor --secret-file is given.
SECRET_ENV = "AIOMEMIF_SECRET"

_ROLES = {"server": "server", "master": "server", "client": "client", "slave": "client"}
_MODES = {"ethernet": 0, "ip": 1}


class UsageError(Exception):
    """A bad option value found after parsing (exit status 2)."""


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def packet_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1..65535 (a memif packet), got {value}")
    return value


def _socket(text: str) -> str:
    try:
        parse_address(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc}; use a filesystem path, @name or abstract:name"
        ) from None
    if ":" in text.split("/", 1)[0] and not text.startswith("abstract:"):
        raise argparse.ArgumentTypeError(
            f"unknown address scheme in {text!r}; use a filesystem path, @name or abstract:name"
        )
    return text


def _role(text: str) -> str:
    try:
        return _ROLES[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError("must be server|client (or master|slave)") from None


def _mode(text: str) -> int:
    try:
        return _MODES[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError("must be ethernet or ip") from None


def add_link_options(p: argparse.ArgumentParser, default_role: str = "client") -> None:
    """The options shared by every subcommand that talks to a memif peer."""
    g = p.add_argument_group("memif link")
    g.add_argument(
        "--socket",
        type=_socket,
        default="/run/vpp/memif.sock",
        help="socket: a path, @name or abstract:name (default /run/vpp/memif.sock)",
    )
    g.add_argument(
        "--role",
        type=_role,
        default=default_role,
        help=f"server|client, also master|slave (default {default_role})",
    )
    g.add_argument("--id", type=int, default=0, help="interface id (0)")
    g.add_argument("--secret", default=None, help=f"shared secret (or ${SECRET_ENV})")
    g.add_argument("--secret-file", type=Path, default=None, help="read the secret from a file")
    g.add_argument("--mode", type=_mode, default=0, help="ethernet|ip (ethernet)")
    g.add_argument("--queues", type=positive, default=1, help="queues each way (1)")
    g.add_argument("--ring-size", type=positive, default=1024, help="descriptors per ring (1024)")
    g.add_argument("--buffer-size", type=positive, default=2048, help="buffer bytes (2048)")
    g.add_argument("--name", default="aiomemif", help="application name sent to the peer")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more output")
    g.add_argument("-q", "--quiet", action="store_true", help="only the summary / errors")
    g.add_argument("--json", action="store_true", help="machine-readable JSON output")  # fmt: skip


def _secret(args: argparse.Namespace) -> str | None:
    if args.secret is not None:
        return str(args.secret)
    if args.secret_file is not None:
        try:
            return str(args.secret_file.read_text()).rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read --secret-file: {exc.strerror}") from None
    return os.environ.get(SECRET_ENV) or None


def interface_config(args: argparse.Namespace) -> InterfaceConfig:
    """The InterfaceConfig the link options describe.

    Raises:
        UsageError: an option value the library refuses (message says which).
    """
    try:
        return InterfaceConfig(
            interface_id=args.id,
            secret=_secret(args),
            mode=args.mode,
            rx_queue_count=args.queues,
            tx_queue_count=args.queues,
            ring_size=args.ring_size,
            buffer_size=args.buffer_size,
            app_name=args.name,
        )
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None


@contextlib.asynccontextmanager
async def open_link(args: argparse.Namespace) -> AsyncIterator[Connection]:
    """One established connection in the role the options ask for.

    A server waits for one client; a client connects once. Leaving the block (also on
    Ctrl-C) sends DISCONNECT.
    """
    cfg = interface_config(args)
    if args.role == "server":
        async with serve(args.socket, [cfg], app_name=args.name) as srv:
            if not args.quiet:
                emit(args, f"listening on {srv.address} (id {cfg.interface_id})")
            conn = await srv.accept()
            async with conn:
                yield conn
    else:
        async with connect(args.socket, cfg) as conn:
            yield conn


def emit(args: argparse.Namespace, text: str) -> None:
    """A human line on stderr (unless --quiet); with --json, callers print JSON to stdout."""
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)
