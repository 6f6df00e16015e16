"""``--pcap FILE``: record what a subcommand sends and receives as pcapng.

::

    add_pcap_option(parser)
    ...
    with open_tap(args, args.mode) as tap:  # None without --pcap
        if tap is not None:
            tap.write(packet, "in")  # bytes-like, memoryview or ChainedPacket

Packets are copied at once (a view into shared memory may go away right after). The file
is flushed at least every quarter second while packets come, and when the block ends;
``--pcap -`` writes to standard output, flushed after every packet.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import IO, Final

from .. import ChainedPacket
from ..tools.pcapng import (
    DIRECTION_INBOUND,
    DIRECTION_OUTBOUND,
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    PcapngWriter,
)
from .common import UsageError

__all__ = ["Tap", "add_pcap_option", "linktype_of", "open_pcap_stream", "open_tap"]

_DIRECTIONS: Final = {"in": DIRECTION_INBOUND, "out": DIRECTION_OUTBOUND}
#: How stale buffered tap output may get while packets keep coming.
_FLUSH_INTERVAL: Final = 0.25


def add_pcap_option(p: argparse.ArgumentParser) -> None:
    """Add ``--pcap FILE`` (record the packets seen as pcapng; ``-`` for stdout)."""
    p.add_argument(
        "--pcap",
        metavar="FILE",
        default=None,
        help="also record the packets seen to FILE as pcapng (- for stdout)",
    )


def linktype_of(mode: int) -> int:
    """The pcapng link type of a memif mode: 0 ethernet -> ETHERNET, 1 ip -> RAW."""
    return LINKTYPE_RAW if mode == 1 else LINKTYPE_ETHERNET


@contextlib.contextmanager
def open_pcap_stream(path: str, option: str, args: argparse.Namespace) -> Iterator[IO[bytes]]:
    """The binary stream behind ``option`` (``-`` is stdout), closed afterwards.

    Raises:
        UsageError: the file cannot be opened, or ``-`` while stdout is a terminal or is
            taken by ``--json``.
    """
    if path == "-":
        if getattr(args, "json", False):
            raise UsageError(f"{option} - and --json both want standard output")
        if sys.stdout.isatty():
            raise UsageError(
                f"refusing to write binary pcapng to a terminal; redirect it or use {option} FILE"
            )
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        f = open(path, "wb")  # noqa: SIM115 (closed in finally)
    except OSError as exc:
        raise UsageError(f"cannot open {option} {path}: {exc.strerror}") from None
    try:
        yield f
    finally:
        f.close()


def interface_name(args: argparse.Namespace) -> str:
    return f"memif{getattr(args, 'id', 0)}"


def interface_description(args: argparse.Namespace) -> str:
    command = getattr(args, "command", None) or "aiomemif"
    role = getattr(args, "role", None)
    socket = getattr(args, "socket", None)
    parts = [f"aiomemif {command}"]
    if role:
        parts.append(f"as {role}")
    if socket:
        parts.append(f"on {socket}")
    return " ".join(parts)


class Tap:
    """A pcapng recorder for one memif interface (one pcapng interface, index 0)."""

    def __init__(self, stream: IO[bytes], linktype: int, *, name: str, description: str,
                 flush_each: bool = False) -> None:  # fmt: skip
        self._writer = PcapngWriter(stream)
        self._writer.add_interface(linktype, name=name, description=description)
        self._flush_each = flush_each
        self._last_flush = time.monotonic()

    @property
    def packets(self) -> int:
        """Packets written so far."""
        return self._writer.packets

    def write(
        self,
        packet: bytes | bytearray | memoryview | ChainedPacket,
        direction: str = "in",
        *,
        queue: int | None = None,
    ) -> None:
        """Record one packet seen now; ``direction`` is ``"in"`` or ``"out"`` (epb_flags).

        ``queue`` (optional) is recorded as the pcapng ``epb_queue`` option.

        Raises:
            ValueError: another direction.
        """
        try:
            flags = _DIRECTIONS[direction]
        except KeyError:
            raise ValueError(f"direction must be 'in' or 'out', got {direction!r}") from None
        self._writer.write_packet(packet, direction=flags, queue=queue)
        if self._flush_each:
            self._writer.flush()
        else:
            now = time.monotonic()
            if now - self._last_flush >= _FLUSH_INTERVAL:
                self._last_flush = now
                self._writer.flush()

    def flush(self) -> None:
        self._writer.flush()


@contextlib.contextmanager
def _tap(args: argparse.Namespace, mode: int) -> Iterator[Tap]:
    path = str(args.pcap)
    with open_pcap_stream(path, "--pcap", args) as stream:
        tap = Tap(
            stream,
            linktype_of(mode),
            name=interface_name(args),
            description=interface_description(args),
            flush_each=path == "-",
        )
        try:
            yield tap
        finally:
            with contextlib.suppress(BrokenPipeError):
                tap.flush()


def open_tap(args: argparse.Namespace, mode: int) -> contextlib.AbstractContextManager[Tap | None]:
    """A context manager giving a :class:`Tap` writing ``--pcap FILE``, or ``None`` when
    the option was not given. ``mode`` (0 ethernet, 1 ip) picks the link type.

    Raises (on entering):
        UsageError: the file cannot be opened (exit status 2).
    """
    if getattr(args, "pcap", None) is None:
        return contextlib.nullcontext(None)
    return _tap(args, mode)
