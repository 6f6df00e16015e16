"""``--pcap FILE``: record what a subcommand sends and receives as pcapng.

::

    add_pcap_option(parser)
    ...
    with open_tap(args, args.mode) as tap:  # None without --pcap
        if tap is not None:
            tap.write(packet, "in")  # bytes-like, memoryview or ChainedPacket

Packets are copied at once (a view into shared memory may go away right after). The file
is flushed at least every quarter second while packets come, and when the block ends;
``--pcap -`` writes to standard output, flushed after every packet. A failed write (disk
full, ...) raises :class:`OutputError` (``cannot write FILE: <strerror>``) once; the stream
is then left alone.
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
from .common import CommandError, UsageError, os_text

__all__ = [
    "OutputError",
    "PcapStream",
    "Tap",
    "add_pcap_option",
    "linktype_of",
    "open_pcap_stream",
    "open_tap",
]

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


class OutputError(CommandError):
    """Writing a pcapng file (or standard output) failed: ``cannot write FILE: <strerror>``."""


class PcapStream:
    """The binary stream a pcapng file is written to, and what went wrong with it.

    Writers call :meth:`failed` with the OSError a write or flush raised and raise what it
    returns; after that the stream is not written again (closing it drops what is left).
    """

    def __init__(self, path: str, stream: IO[bytes]) -> None:
        self.path = path
        self.stream = stream
        self.error: OutputError | None = None

    @property
    def where(self) -> str:
        return "standard output" if self.path == "-" else self.path

    def failed(self, exc: OSError) -> OutputError:
        """Record a failed write; return the :class:`OutputError` to raise. A
        BrokenPipeError on standard output (the reader went away) is returned as is."""
        if isinstance(exc, BrokenPipeError) and self.path == "-":
            raise exc
        if self.error is None:
            self.error = OutputError(f"cannot write {self.where}: {os_text(exc)}")
        return self.error

    def flush(self) -> None:
        """Flush (nothing once a write failed).

        Raises:
            OutputError: the flush failed.
            BrokenPipeError: standard output's reader went away.
        """
        if self.error is not None:
            return
        try:
            self.stream.flush()
        except OSError as exc:
            raise self.failed(exc) from None


@contextlib.contextmanager
def open_pcap_stream(path: str, option: str, args: argparse.Namespace) -> Iterator[PcapStream]:
    """The binary stream behind ``option`` (``-`` is stdout), flushed and closed afterwards.

    Raises:
        UsageError: (on entering) the file cannot be opened, or ``-`` while stdout is a
            terminal or is taken by ``--json``.
        OutputError: (on leaving normally) the last flush or the close failed and no write
            had failed before.
    """
    if path == "-":
        if getattr(args, "json", False):
            raise UsageError(f"{option} - and --json both want standard output")
        if sys.stdout.isatty():
            raise UsageError(
                f"refusing to write binary pcapng to a terminal; redirect it or use {option} FILE"
            )
        out = PcapStream(path, sys.stdout.buffer)
        yield out
        out.flush()
        return
    try:
        f = open(path, "wb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise UsageError(f"cannot open {option} {path}: {exc.strerror}") from None
    out = PcapStream(path, f)
    try:
        yield out
    except BaseException:
        _close_quietly(f)
        raise
    if out.error is not None:
        _close_quietly(f)
        return
    try:
        f.close()
    except OSError as exc:
        _close_quietly(f)
        raise out.failed(exc) from None


def _close_quietly(f: IO[bytes]) -> None:
    """Close ``f`` dropping unwritten data (a write already failed, or we are failing)."""
    with contextlib.suppress(OSError):
        f.close()
    with contextlib.suppress(OSError):  # the buffered data is gone; make sure the fd is too
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

    def __init__(self, out: PcapStream, linktype: int, *, name: str, description: str,
                 flush_each: bool = False) -> None:  # fmt: skip
        """Raises: OutputError, when writing the file header fails."""
        self._out = out
        self._writer = PcapngWriter(out.stream)
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
            OutputError: writing the file failed (now or before).
            BrokenPipeError: ``--pcap -`` and standard output's reader went away.
        """
        try:
            flags = _DIRECTIONS[direction]
        except KeyError:
            raise ValueError(f"direction must be 'in' or 'out', got {direction!r}") from None
        if self._out.error is not None:
            raise self._out.error
        try:
            self._writer.write_packet(packet, direction=flags, queue=queue)
        except OSError as exc:
            raise self._out.failed(exc) from None
        if self._flush_each:
            self._out.flush()
        else:
            now = time.monotonic()
            if now - self._last_flush >= _FLUSH_INTERVAL:
                self._last_flush = now
                self._out.flush()

    def flush(self) -> None:
        """Write out what is buffered. Raises as :meth:`write` (OutputError, BrokenPipeError)."""
        self._out.flush()


@contextlib.contextmanager
def _tap(args: argparse.Namespace, mode: int) -> Iterator[Tap]:
    path = str(args.pcap)
    with open_pcap_stream(path, "--pcap", args) as out:
        try:
            tap = Tap(
                out,
                linktype_of(mode),
                name=interface_name(args),
                description=interface_description(args),
                flush_each=path == "-",
            )
        except OSError as exc:
            raise out.failed(exc) from None
        yield tap


def open_tap(args: argparse.Namespace, mode: int) -> contextlib.AbstractContextManager[Tap | None]:
    """A context manager giving a :class:`Tap` writing ``--pcap FILE``, or ``None`` when
    the option was not given. ``mode`` (0 ethernet, 1 ip) picks the link type.

    Raises:
        UsageError: (on entering) the file cannot be opened (exit status 2).
        OutputError: (on leaving) the last flush failed and no write had failed before.
    """
    if getattr(args, "pcap", None) is None:
        return contextlib.nullcontext(None)
    return _tap(args, mode)
