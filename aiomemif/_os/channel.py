"""The control channel: 128-byte SOCK_SEQPACKET datagrams with fds in SCM_RIGHTS.

Also socket addresses (filesystem paths and the abstract namespace) and the listener's
stale-socket probe. Synchronous syscalls plus tiny awaitable wrappers built on
:mod:`aiomemif._os.readers`.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import os
import socket
import stat
import struct
from typing import Final

from .._core import wire as w
from .._core.messages import Disconnect, encode
from ..errors import (
    AddressInUseError,
    ConfigurationError,
    ConnectionLostError,
    MemifError,
    RemoteProtocolError,
)
from . import readers
from .fds import close_fd, wrap_os_error

__all__ = [
    "ControlChannel",
    "Listener",
    "connect_socket",
    "format_address",
    "parse_address",
    "peer_credentials",
]

#: Room for SCM_CREDENTIALS (always first when the listener set SO_PASSCRED) plus up to 8
#: fds, so that a peer sending too many is seen (and every fd closed) instead of truncated.
_MAX_FDS: Final = 8
_ANCBUF: Final = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4 * _MAX_FDS)
_RECV_SIZE: Final = 2 * w.MSG_SIZE
#: How many datagrams in a row :meth:`ControlChannel.recv` takes before yielding the loop.
_YIELD_EVERY: Final = 8
_SOCK_FLAGS: Final = socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC

Address = str | bytes


def parse_address(address: str | bytes | os.PathLike[str]) -> Address:
    """Turn a user address into what ``socket.bind``/``connect`` take.

    ``@name`` and ``abstract:name`` are the abstract namespace (NUL + name, exact length);
    anything else is a filesystem path.

    Raises:
        ConfigurationError: empty, containing NUL, or too long for ``sockaddr_un``.
    """
    if isinstance(address, os.PathLike):
        address = os.fspath(address)
    raw = address.encode() if isinstance(address, str) else bytes(address)
    if raw.startswith(b"\0"):
        name = raw[1:]
        abstract = True
    elif raw.startswith(b"@") or raw.startswith(b"abstract:"):
        name = raw[1:] if raw.startswith(b"@") else raw[len(b"abstract:") :]
        abstract = True
    else:
        name = raw
        abstract = False
    if not name or b"\0" in name:
        raise ConfigurationError(f"invalid socket address {address!r}")
    if len(name) + (1 if abstract else 0) > 107:
        raise ConfigurationError(f"socket address {address!r} is too long (max 107 bytes)")
    return b"\0" + name if abstract else name.decode(errors="surrogateescape")


def format_address(address: Address) -> str:
    """Show an address the way users write it (``@name`` for abstract ones)."""
    if isinstance(address, bytes):
        return "@" + address[1:].decode(errors="replace")
    return address


class ControlChannel:
    """One connected control socket. Owns the socket; ``close()`` is idempotent."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        #: Datagrams :meth:`recv` returned without waiting since it last let the loop run.
        self._streak = 0

    def recv_nowait(self) -> tuple[bytes, list[int]] | None:
        """Receive one datagram and its fds, or None if nothing is waiting.

        The caller owns the returned fds.

        Raises:
            ConnectionLostError: EOF or a socket error.
            RemoteProtocolError: the ancillary data was truncated (all fds closed).
        """
        try:
            data, ancdata, flags, _ = self.sock.recvmsg(
                _RECV_SIZE, _ANCBUF, socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            raise ConnectionLostError(f"control socket error: {exc.strerror or exc}") from exc
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                fds.extend(arr)
        if not data and not fds and not ancdata:
            raise ConnectionLostError("peer closed the control socket")
        if flags & socket.MSG_CTRUNC:
            for fd in fds:
                close_fd(fd)
            raise RemoteProtocolError("Too many file descriptors")
        if flags & socket.MSG_TRUNC:
            for fd in fds:
                close_fd(fd)
            raise RemoteProtocolError("Invalid message size")
        return data, fds

    async def recv(self) -> tuple[bytes, list[int]]:
        """Wait for one datagram (see :meth:`recv_nowait` for errors).

        A peer that keeps the socket full would never make this wait; every
        :data:`_YIELD_EVERY` datagrams it lets the loop run anyway.
        """
        self._streak += 1
        if self._streak >= _YIELD_EVERY:
            self._streak = 0
            await asyncio.sleep(0)
        while True:
            got = self.recv_nowait()
            if got is not None:
                return got
            self._streak = 0
            await readers.wait_readable(self.fd, "control")

    def send_disconnect(self, reason: str) -> None:
        """Best-effort DISCONNECT with ``reason`` before closing: never raises (the peer
        may be gone already) and never blocks."""
        text = reason.encode("utf-8", "replace").decode("utf-8", "replace")
        with contextlib.suppress(MemifError, OSError):
            self.send_nowait(encode(Disconnect(text)))

    def send_nowait(self, data: bytes, fd: int | None = None) -> bool:
        """Send one datagram (with ``fd`` attached); False if the socket buffer is full.

        Raises:
            ConnectionLostError: the socket is broken (EPIPE, ECONNRESET, ...).
        """
        anc = []
        if fd is not None:
            anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes()))
        try:
            self.sock.sendmsg([data], anc)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            raise ConnectionLostError(f"control socket error: {exc.strerror or exc}") from exc
        return True

    async def send(self, data: bytes, fd: int | None = None) -> None:
        """Send one datagram, waiting for buffer space if needed."""
        while not self.send_nowait(data, fd):
            await readers.wait_writable(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            self.fd = -1
            self.sock.close()


async def connect_socket(address: Address) -> socket.socket:
    """Connect a non-blocking SOCK_SEQPACKET socket to a listener.

    Raises:
        MemifOSError: connection refused, no such socket, permission denied, ...
    """
    sock = socket.socket(socket.AF_UNIX, _SOCK_FLAGS)
    try:
        try:
            sock.connect(address)
        except BlockingIOError:
            # For AF_UNIX, EAGAIN means the listener's backlog is full: nothing is in
            # progress (unlike TCP), so report it; a Client retries later.
            raise OSError(errno.EAGAIN, "the listener's backlog is full") from None
    except OSError as exc:
        sock.close()
        raise wrap_os_error(exc, f"connecting to {format_address(address)}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


_CRED: Final = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process that connected ``sock`` (``SO_PEERCRED``).

    Raises:
        OSError: the socket has no peer credentials.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    pid, uid, gid = _CRED.unpack(raw)
    return pid, uid, gid


class Listener:
    """A listening SOCK_SEQPACKET socket; a stale socket file is probed and replaced."""

    def __init__(self, address: Address, backlog: int = 64, mode: int | None = 0o600) -> None:
        self.address = address
        self._inode: tuple[int, int] | None = None
        if isinstance(address, str):
            _remove_stale_socket(address)
        sock = socket.socket(socket.AF_UNIX, _SOCK_FLAGS)
        try:
            if mode is not None and isinstance(address, str):
                # Linux gives the socket file the socket inode's mode (less the umask), so
                # the file never exists with wider permissions than ``mode``.
                os.fchmod(sock.fileno(), mode)
            sock.bind(address)
            if mode is not None and isinstance(address, str):
                os.chmod(address, mode)  # exactly ``mode``, whatever the umask took away
            sock.listen(backlog)
            if isinstance(address, str):
                st = os.stat(address)
                self._inode = (st.st_dev, st.st_ino)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(exc.errno, f"{format_address(address)} is in use") from exc
            raise wrap_os_error(exc, f"listening on {format_address(address)}") from exc
        self.sock = sock
        self.fd = sock.fileno()

    def accept_nowait(self) -> socket.socket | None:
        """Accept one pending connection (non-blocking, close-on-exec) or return None.

        Raises:
            OSError: accept failed otherwise (``EMFILE``/``ENFILE`` when out of fds,
                ``ENOBUFS``/``ENOMEM``); the connection stays queued in the backlog.
        """
        try:
            sock, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return None
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        """Stop listening and remove our socket file (only if it is still ours)."""
        if self.fd < 0:
            return
        self.fd = -1
        self.sock.close()
        if isinstance(self.address, str) and self._inode is not None:
            with contextlib.suppress(OSError):
                st = os.stat(self.address)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.address)


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise wrap_os_error(exc, f"checking {path}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressInUseError(errno.EADDRINUSE, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, _SOCK_FLAGS)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # nobody listens: a leftover from a dead process
        return
    except BlockingIOError:
        pass  # backlog full: very much alive
    except OSError as exc:
        raise wrap_os_error(exc, f"probing {path}") from exc
    finally:
        probe.close()
    raise AddressInUseError(errno.EADDRINUSE, f"{path} is in use by a live listener")
