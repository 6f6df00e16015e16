"""What every ``aiomemif`` subcommand that talks to a peer shares: options, link set-up."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .. import Connection, InterfaceConfig, Server, connect, serve
from .._os.channel import parse_address
from ..errors import (
    AddressInUseError,
    ConfigurationError,
    DisconnectedError,
    HandshakeRefusedError,
    HandshakeTimeoutError,
    MemifOSError,
    PeerDisconnectedError,
    RemoteProtocolError,
)

__all__ = [
    "SECRET_ENV",
    "CommandError",
    "UsageError",
    "add_link_options",
    "closed_text",
    "emit",
    "ending_text",
    "interface_config",
    "link_up_text",
    "open_link",
    "os_text",
    "packet_size",
    "positive",
    "print_json",
]

#: Environment variable read for the secret when neither --secret nor --secret-file is given.
SECRET_ENV = "AIOMEMIF_SECRET"

_ROLES = {"server": "server", "master": "server", "client": "client", "slave": "client"}
_MODES = {"ethernet": 0, "ip": 1}


class UsageError(Exception):
    """A bad option value found after parsing (exit status 2)."""


class CommandError(Exception):
    """A failure the command reports as one line on stderr (exit status 1): the link could
    not be set up (``cannot connect to X: ...``, ``handshake refused: ...``), a file could
    not be written, ... The message is complete; it is printed after ``aiomemif CMD: ``."""


def os_text(exc: OSError) -> str:
    """The system's words for an OSError (``No such file or directory``), without the
    context aiomemif adds to a :class:`~aiomemif.MemifOSError`."""
    if isinstance(exc, AddressInUseError):
        return str(exc.strerror or exc)
    if exc.errno:
        return os.strerror(exc.errno)
    return str(exc.strerror or exc)


def print_json(args: argparse.Namespace, document: dict[str, Any]) -> None:
    """Print the one JSON document of a ``--json`` run on stdout (and remember that it was
    printed, so that a later failure does not print a second one). The document also
    names the event loop the command ran on (``"loop"``)."""
    if "loop" not in document and isinstance(getattr(args, "loop", None), str):
        document = {**document, "loop": args.loop}
    print(json.dumps(document, indent=2), flush=True)
    args.json_printed = True


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


async def connect_link(args: argparse.Namespace, cfg: InterfaceConfig) -> Connection:
    """Connect once as a client (the caller closes the connection).

    Raises:
        CommandError: the socket cannot be reached (``cannot connect to X: <strerror>``),
            the server refused the handshake (``handshake refused: <reason>``), or the
            handshake failed otherwise (timeout, protocol error, connection lost).
    """
    try:
        return await connect(args.socket, cfg)
    except HandshakeRefusedError as exc:
        raise CommandError(f"handshake refused: {exc.reason}") from None
    except MemifOSError as exc:
        raise CommandError(f"cannot connect to {args.socket}: {os_text(exc)}") from None
    except HandshakeTimeoutError as exc:
        raise CommandError(f"handshake timed out: {exc}") from None
    except RemoteProtocolError as exc:
        raise CommandError(f"handshake failed: protocol error: {exc.reason}") from None
    except DisconnectedError as exc:
        raise CommandError(f"handshake failed: {exc.reason}") from None


@contextlib.asynccontextmanager
async def serving(args: argparse.Namespace, cfg: InterfaceConfig) -> AsyncIterator[Server]:
    """A started server for ``cfg``, closed when the block ends. Every handshake it refuses
    is printed on stderr as it happens (``aiomemif CMD: refused interface N: <reason>``),
    even without ``-v``.

    Raises (on entering):
        CommandError: the socket cannot be bound (``cannot listen on X: ...``).
    """
    command = getattr(args, "command", None) or "aiomemif"
    srv = serve(args.socket, [cfg], app_name=args.name)
    watcher = asyncio.get_running_loop().create_task(_print_refusals(command, srv))
    await asyncio.sleep(0)  # subscribed before the first client can be refused
    try:
        try:
            await srv.start()
        except MemifOSError as exc:
            raise CommandError(f"cannot listen on {args.socket}: {os_text(exc)}") from None
        yield srv
    finally:
        await srv.aclose()  # which ends the events, after those still queued
        await asyncio.gather(watcher, return_exceptions=True)


async def _print_refusals(command: str, srv: Server) -> None:
    async for event in srv.events():
        if event.kind != "refused":  # (a client that left by itself is not news)
            continue
        if event.interface_id is None:  # before INIT: timed out, or not allowed in
            text = f"refused a client: {event.reason}"
        else:
            text = f"refused interface {event.interface_id}: {event.reason}"
        print(f"aiomemif {command}: {text}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def open_link(args: argparse.Namespace) -> AsyncIterator[Connection]:
    """One established connection in the role the options ask for.

    A server waits for one client (printing refused handshakes); a client connects once.
    Leaving the block (also on Ctrl-C or SIGTERM) sends DISCONNECT.

    Raises (on entering):
        CommandError: the link could not be set up (see :func:`connect_link` and
            :func:`serving`).
        UsageError: an option value the library refuses.
    """
    cfg = interface_config(args)
    if args.role == "server":
        async with serving(args, cfg) as srv:
            if not args.quiet:
                emit(args, f"listening on {srv.address} (id {cfg.interface_id})")
            conn = await srv.accept()
            async with conn:
                yield conn
    else:
        async with await connect_link(args, cfg) as conn:
            yield conn


def link_up_text(label: str, args: argparse.Namespace, conn: Connection) -> str:
    """``gen: link up with 'vpp' (1 queue(s))``; says so when the peer granted fewer
    queues than ``--queues`` asked for."""
    got = min(len(conn.rx_queues), len(conn.tx_queues))
    asked = getattr(args, "queues", got)
    queues = f"{got} queue(s)" if got >= asked else f"{got} queue(s) of the {asked} asked for"
    return f"{label}: link up with {conn.peer_app_name!r} ({queues})"


def closed_text(conn: Connection) -> str | None:
    """How ``conn`` ended, in the words of :func:`ending_text`; None while it is up or
    when this side closed it."""
    error = conn.close_error
    if isinstance(error, DisconnectedError | RemoteProtocolError):
        return ending_text(error)
    return None


def ending_text(exc: DisconnectedError | RemoteProtocolError) -> str:
    """How a link that was up ended: ``peer disconnected: <reason>`` when the peer sent
    DISCONNECT, ``link down: <reason>`` (``link down: protocol error: <reason>``)
    otherwise."""
    if isinstance(exc, PeerDisconnectedError):
        return f"peer disconnected: {exc.reason}"
    if isinstance(exc, RemoteProtocolError):
        return f"link down: protocol error: {exc.reason}"
    return f"link down: {exc.reason}"


def emit(args: argparse.Namespace, text: str) -> None:
    """A human line on stderr (unless --quiet); with --json, callers print JSON to stdout."""
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)
