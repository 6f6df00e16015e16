"""A scripted raw memif peer for hostile-input tests.

Nothing here goes through aiomemif's own channel, handshake or ring code: the peer speaks
to the library over a plain ``AF_UNIX``/``SOCK_SEQPACKET`` socket, sends whatever bytes and
fds a test asks for, and builds or inspects shared memory with ``struct`` on an ``mmap``.
Only the message codec (:mod:`aiomemif._core.messages`) is borrowed, to spell valid messages and
to read what the library sends back.

- :class:`RawPeer`: one connected control socket (either role). Datagrams of any size, with
  0..n fds attached via ``SCM_RIGHTS``; receiving keeps the attached fds.
- :class:`RawListener`: a listening socket for playing a fake server (server).
- :func:`memfd` / :func:`eventfd`: raw resources to hand over.
- :class:`ClientMemory`: a client-style (DPDK copy-mode) region: rings back to back from offset
  0, ring stride ``2·CL + 16·N``, then one buffer per slot; plus one eventfd per ring.
- :class:`RingView`: header and descriptor accessors for one ring inside a mapping.
- :class:`ServerSide`: what a fake server collected from a real client (mapped regions and
  ring eventfds), and :func:`client_handshake` / :func:`server_handshake`: the valid
  exchanges, for tests that misbehave only afterwards.
- :func:`watchdog` / :func:`steal_interrupt` / :func:`set_blocking`: for showing that the
  library never sits in a blocking syscall on an fd whose flags the peer controls (eventfds
  share their open file description, O_NONBLOCK included, with the peer).

Every object owns its fds and mappings and closes them in ``close()`` (idempotent), so the
suite's leak checks only see what the library under test leaked.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import mmap
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Final, TypeVar

from aiomemif._core import wire as w
from aiomemif._core.messages import (
    Ack,
    AddRegion,
    AddRing,
    Connect,
    Connected,
    Disconnect,
    Hello,
    Init,
    Message,
    decode_untrusted,
    encode,
)

__all__ = [
    "COOKIE",
    "M2S",
    "MSG_SIZE",
    "S2M",
    "ServerSide",
    "RawListener",
    "RawPeer",
    "RingView",
    "ClientMemory",
    "client_handshake",
    "eventfd",
    "server_handshake",
    "memfd",
    "raw_message",
    "set_blocking",
    "steal_interrupt",
    "watchdog",
]

MSG_SIZE: Final = 128
COOKIE: Final = 0x03E31F20
S2M: Final = w.RingType.S2M
M2S: Final = w.RingType.M2S

_SOCK_TYPE: Final = socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
#: Room for credentials plus many fds: a test may send a lot of them at the library.
_ANCBUF: Final = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4 * 64)
_RECV_SIZE: Final = 4096
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_DESC: Final = struct.Struct("<HHIII")

M = TypeVar("M", bound=Message)


def raw_message(msg_type: int, payload: bytes = b"", size: int = MSG_SIZE) -> bytes:
    """A datagram of ``size`` bytes: ``msg_type`` as u16, then ``payload``, zero padded."""
    data = _U16.pack(msg_type & 0xFFFF) + payload
    return data[:size].ljust(size, b"\0")


async def _wait_readable(fd: int) -> None:
    """Wait until ``fd`` is readable; the loop registration is always removed."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class RawPeer:
    """One raw control connection. Use as ``async with`` (or call ``close()``)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    @classmethod
    async def connect(cls, path: str) -> RawPeer:
        sock = socket.socket(socket.AF_UNIX, _SOCK_TYPE)
        try:
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def __aenter__(self) -> RawPeer:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- sending ---------------------------------------------------------------------------
    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send one datagram of any size with ``fds`` in one ``SCM_RIGHTS`` cmsg.

        Control datagrams are tiny and the library reads them promptly, so this never has to
        wait for buffer space (a full buffer raises ``BlockingIOError``).
        """
        anc = []
        if fds:
            anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes()))
        self.sock.sendmsg([data], anc)

    def send(self, msg: Message, fds: Sequence[int] = ()) -> None:
        """Send a valid 128-byte encoding of ``msg`` (with ``fds`` attached)."""
        self.send_raw(encode(msg), fds)

    # -- receiving -------------------------------------------------------------------------
    async def recv_raw(self, wait: float = 1.0) -> tuple[bytes, list[int]] | None:
        """Wait for one datagram: ``(data, fds)`` (the caller owns the fds), None on EOF.

        Raises:
            TimeoutError: nothing arrived within ``wait`` seconds.
        """
        async with asyncio.timeout(wait):
            while True:
                try:
                    data, ancdata, flags, _ = self.sock.recvmsg(
                        _RECV_SIZE, _ANCBUF, socket.MSG_CMSG_CLOEXEC
                    )
                except BlockingIOError:
                    await _wait_readable(self.sock.fileno())
                    continue
                except ConnectionResetError:
                    return None
                fds: list[int] = []
                for level, kind, payload in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        arr = array.array("i")
                        arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                        fds.extend(arr)
                if flags & socket.MSG_CTRUNC:
                    _close_all(fds)
                    raise AssertionError("ancillary data truncated")
                if not data and not ancdata:
                    return None
                return data, fds

    async def recv_with_fds(self, wait: float = 1.0) -> tuple[Message, list[int]]:
        """Receive and decode one message; the caller owns the returned fds.

        Raises:
            AssertionError: EOF instead of a message.
            RemoteProtocolError: the library sent something undecodable.
        """
        got = await self.recv_raw(wait)
        if got is None:
            raise AssertionError("peer closed the connection instead of sending a message")
        data, fds = got
        try:
            return decode_untrusted(data), fds
        except BaseException:
            _close_all(fds)
            raise

    async def recv(self, wait: float = 1.0) -> Message:
        """Receive and decode one message that must come without fds."""
        msg, fds = await self.recv_with_fds(wait)
        _close_all(fds)
        assert not fds, f"{msg!r} arrived with {len(fds)} fd(s)"
        return msg

    async def expect(self, kind: type[M], wait: float = 1.0) -> M:
        msg = await self.recv(wait)
        assert isinstance(msg, kind), f"expected {kind.__name__}, got {msg!r}"
        return msg

    async def expect_disconnect(self, wait: float = 1.0) -> str:
        """Wait for DISCONNECT followed by EOF; return the reason string."""
        msg = await self.recv(wait)
        assert isinstance(msg, Disconnect), f"expected DISCONNECT, got {msg!r}"
        await self.expect_eof(wait)
        return msg.reason

    async def expect_eof(self, wait: float = 1.0) -> None:
        """The next thing to arrive must be EOF (no more messages)."""
        got = await self.recv_raw(wait)
        if got is not None:
            _close_all(got[1])
            raise AssertionError(f"expected EOF, got {got[0][:16]!r}...")


class RawListener:
    """A listening raw socket at ``path``, for playing the server (master) role."""

    def __init__(self, path: str, backlog: int = 8) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, _SOCK_TYPE)
        try:
            self.sock.bind(path)
            self.sock.listen(backlog)
        except BaseException:
            self.sock.close()
            raise

    async def accept(self, wait: float = 1.0) -> RawPeer:
        async with asyncio.timeout(wait):
            while True:
                try:
                    sock, _ = self.sock.accept()
                except BlockingIOError:
                    await _wait_readable(self.sock.fileno())
                    continue
                return RawPeer(sock)

    async def __aenter__(self) -> RawListener:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)


# ------------------------------------------------------------------------------ resources


def memfd(size: int, *, seals: int = fcntl.F_SEAL_SHRINK, name: str = "hostile") -> int:
    """A memfd of ``size`` bytes with ``seals`` added (0: unsealed)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        if seals:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def eventfd(*, nonblocking: bool = True, semaphore: bool = False, count: int = 0) -> int:
    """An eventfd (``EFD_SEMAPHORE`` if ``semaphore``) whose counter already holds ``count``.

    ``count`` is written after creation, so it may exceed the u32 ``initval`` of eventfd(2)
    (up to ``2**64 - 2``).
    """
    flags = os.EFD_CLOEXEC | (os.EFD_NONBLOCK if nonblocking else 0)
    fd = os.eventfd(0, flags | (os.EFD_SEMAPHORE if semaphore else 0))
    try:
        if count:
            os.eventfd_write(fd, count)
    except BaseException:
        os.close(fd)
        raise
    return fd


def set_blocking(fd: int, blocking: bool) -> None:
    """Flip O_NONBLOCK on ``fd``'s open file description (shared with every holder)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    flags = flags & ~os.O_NONBLOCK if blocking else flags | os.O_NONBLOCK
    fcntl.fcntl(fd, fcntl.F_SETFL, flags)


@contextlib.contextmanager
def watchdog(rescue: Callable[[], object], after: float = 0.5) -> Iterator[threading.Event]:
    """Guard a block that might freeze this thread in a blocking syscall on a shared fd.

    A helper thread waits ``after`` seconds for the block to finish; if it has not, it sets
    the yielded event and calls ``rescue`` (e.g. reads or writes the eventfd the main thread
    is stuck on) so that the test can fail instead of hanging.
    """
    done = threading.Event()
    rescued = threading.Event()

    def watch() -> None:
        if not done.wait(after):
            rescued.set()
            rescue()

    thread = threading.Thread(target=watch, name="hostile-watchdog", daemon=True)
    thread.start()
    try:
        yield rescued
    finally:
        done.set()
        thread.join()


async def steal_interrupt(efd: int, settle: float = 0.05) -> int:
    """Signal eventfd ``efd`` and read the count back before the library's reader can.

    A pipe is made readable just before the eventfd, so the event loop (epoll reports ready
    fds in the order they became ready; asyncio and uvloop dispatch them in that order) runs
    our pipe callback first, in the same iteration in which it already decided that the
    library's interrupt reader is ready. Our callback drains the eventfd, so the library's
    reader then finds the counter at zero. Returns the count we stole (0: we lost the race).
    """
    loop = asyncio.get_running_loop()
    r, w_ = os.pipe()
    stolen = 0

    def steal() -> None:
        nonlocal stolen
        os.read(r, 1)
        poller = select.poll()
        poller.register(efd, select.POLLIN)
        if poller.poll(0):  # never block here ourselves
            stolen += os.eventfd_read(efd)

    loop.add_reader(r, steal)
    try:
        await asyncio.sleep(0.01)  # the loop registers the pipe with its poller
        os.write(w_, b"!")
        os.eventfd_write(efd, 1)
        await asyncio.sleep(settle)
    finally:
        loop.remove_reader(r)
        os.close(r)
        os.close(w_)
    return stolen


class RingView:
    """Header fields and descriptors of one ring at ``offset`` in ``buf``.

    Layout (cacheline ``CL``): cookie u32 at 0, flags u16 at 4, head u16 at 6, tail u16 at
    ``CL``, descriptors (16 bytes each) from ``2·CL``. Accesses use ``struct`` on the mapping
    (single 2-byte stores), and no memoryview is kept, so the mapping can always be closed.
    """

    def __init__(self, buf: mmap.mmap, offset: int, log2_ring_size: int, cacheline: int = 64):
        self.buf = buf
        self.offset = offset
        self.size = 1 << log2_ring_size
        self.cacheline = cacheline

    def _u16(self, off: int) -> int:
        return int(_U16.unpack_from(self.buf, self.offset + off)[0])

    @property
    def cookie(self) -> int:
        return int(_U32.unpack_from(self.buf, self.offset)[0])

    @cookie.setter
    def cookie(self, value: int) -> None:
        _U32.pack_into(self.buf, self.offset, value)

    @property
    def flags(self) -> int:
        return self._u16(4)

    @flags.setter
    def flags(self, value: int) -> None:
        _U16.pack_into(self.buf, self.offset + 4, value & 0xFFFF)

    @property
    def head(self) -> int:
        return self._u16(6)

    @head.setter
    def head(self, value: int) -> None:
        _U16.pack_into(self.buf, self.offset + 6, value & 0xFFFF)

    @property
    def tail(self) -> int:
        return self._u16(self.cacheline)

    @tail.setter
    def tail(self, value: int) -> None:
        _U16.pack_into(self.buf, self.offset + self.cacheline, value & 0xFFFF)

    def _desc_off(self, slot: int) -> int:
        return self.offset + 2 * self.cacheline + 16 * (slot & (self.size - 1))

    def desc(self, slot: int) -> tuple[int, int, int, int, int]:
        """``(flags, region, length, offset, metadata)`` of ``slot`` (masked)."""
        flags, region, length, offset, meta = _DESC.unpack_from(self.buf, self._desc_off(slot))
        return flags, region, length, offset, meta

    def set_desc(
        self, slot: int, *, flags: int = 0, region: int = 0, length: int, offset: int
    ) -> None:
        _DESC.pack_into(self.buf, self._desc_off(slot), flags, region, length, offset, 0)


class ClientMemory:
    """A client-side (client) region in the DPDK copy-mode layout, plus one eventfd per ring.

    With ``n`` S2M and ``m`` M2S rings of ``N`` slots, buffer size ``B`` and stride
    ``S = 2·CL + 16·N``: S2M ring ``i`` at ``i·S``, M2S ring ``j`` at ``(n + j)·S``; buffer of
    ring ``k`` (in that order) slot ``s`` at ``(n + m)·S + (k·N + s)·B``. Every ring starts
    with the cookie, flags/head/tail 0 and descriptors ``{0, region 0, B, buffer}``.
    """

    def __init__(
        self,
        n_s2m: int = 1,
        n_m2s: int = 1,
        log2_ring_size: int = 4,
        buffer_size: int = 256,
        cacheline: int = 64,
        *,
        seals: int = fcntl.F_SEAL_SHRINK,
        blocking_eventfds: bool = False,
    ) -> None:
        self.n_s2m = n_s2m
        self.n_m2s = n_m2s
        self.log2_ring_size = log2_ring_size
        self.ring_size = 1 << log2_ring_size
        self.buffer_size = buffer_size
        self.cacheline = cacheline
        self.stride = 2 * cacheline + 16 * self.ring_size
        self.rings_end = (n_s2m + n_m2s) * self.stride
        self.size = self.rings_end + (n_s2m + n_m2s) * self.ring_size * buffer_size
        self.efds: list[int] = []
        self.fd = memfd(self.size, seals=0)
        try:
            self.map = mmap.mmap(self.fd, self.size)
            if seals:
                fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, seals)
            for k in range(n_s2m + n_m2s):
                self.efds.append(eventfd(nonblocking=not blocking_eventfds))
                ring = RingView(self.map, k * self.stride, log2_ring_size, cacheline)
                ring.cookie = COOKIE
                for s in range(self.ring_size):
                    ring.set_desc(s, length=buffer_size, offset=self._buffer(k, s))
        except BaseException:
            self.close()
            raise

    def _k(self, ring_type: w.RingType, index: int) -> int:
        return index if ring_type is S2M else self.n_s2m + index

    def _buffer(self, k: int, slot: int) -> int:
        return self.rings_end + (k * self.ring_size + (slot & (self.ring_size - 1))) * (
            self.buffer_size
        )

    def ring_offset(self, ring_type: w.RingType, index: int = 0) -> int:
        return self._k(ring_type, index) * self.stride

    def ring(self, ring_type: w.RingType, index: int = 0) -> RingView:
        return RingView(
            self.map, self.ring_offset(ring_type, index), self.log2_ring_size, self.cacheline
        )

    def efd(self, ring_type: w.RingType, index: int = 0) -> int:
        return self.efds[self._k(ring_type, index)]

    def buffer_offset(self, ring_type: w.RingType, index: int, slot: int) -> int:
        return self._buffer(self._k(ring_type, index), slot)

    def add_region(self) -> AddRegion:
        return AddRegion(0, self.size)

    def add_ring(self, ring_type: w.RingType, index: int = 0, **changes: int) -> AddRing:
        """The ADD_RING for one of our rings; ``changes`` override fields (hostile tests)."""
        fields = {
            "index": index,
            "region": 0,
            "offset": self.ring_offset(ring_type, index),
            "log2_ring_size": self.log2_ring_size,
            "private_hdr_size": 0,
        }
        fields.update(changes)
        return AddRing(ring_type, **fields)

    def all_rings(self) -> list[tuple[w.RingType, int]]:
        """Rings in announcement order: all S2M, then all M2S."""
        return [(S2M, i) for i in range(self.n_s2m)] + [(M2S, j) for j in range(self.n_m2s)]

    def write_packet(
        self, slot: int, data: bytes, *, ring: int = 0, flags: int = 0
    ) -> tuple[int, int]:
        """Put ``data`` into the own buffer of S2M ring ``ring`` slot ``slot`` and describe it.

        Returns ``(offset, length)`` as written into the descriptor.
        """
        off = self.buffer_offset(S2M, ring, slot)
        assert len(data) <= self.buffer_size
        self.map[off : off + len(data)] = data
        self.ring(S2M, ring).set_desc(slot, flags=flags, length=len(data), offset=off)
        return off, len(data)

    def publish_s2m(self, head: int, ring: int = 0) -> None:
        """Store ``head`` on S2M ring ``ring`` and signal its eventfd (as a client would)."""
        view = self.ring(S2M, ring)
        view.head = head
        if not view.flags & w.RING_FLAG_MASK_INT:
            os.eventfd_write(self.efd(S2M, ring), 1)

    def close(self) -> None:
        _close_all(self.efds)
        self.efds = []
        mapping = getattr(self, "map", None)
        if mapping is not None and not mapping.closed:
            mapping.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ClientMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServerSide:
    """Resources a fake server received from a real client: regions (mapped) and rings."""

    def __init__(self) -> None:
        self.region_fds: list[int] = []
        self.region_sizes: list[int] = []
        self.maps: list[mmap.mmap] = []
        self.rings: list[tuple[AddRing, int]] = []
        self.init: Init | None = None

    def add_region(self, msg: AddRegion, fd: int) -> None:
        self.region_fds.append(fd)
        self.region_sizes.append(msg.size)

    def add_ring(self, msg: AddRing, fd: int) -> None:
        self.rings.append((msg, fd))

    def map_regions(self) -> None:
        for fd, size in zip(self.region_fds, self.region_sizes, strict=True):
            self.maps.append(mmap.mmap(fd, size))

    def _find(self, ring_type: w.RingType, index: int) -> tuple[AddRing, int]:
        for msg, fd in self.rings:
            if msg.ring_type is ring_type and msg.index == index:
                return msg, fd
        raise KeyError((ring_type, index))

    def ring(self, ring_type: w.RingType, index: int = 0, cacheline: int = 64) -> RingView:
        msg, _ = self._find(ring_type, index)
        return RingView(self.maps[msg.region], msg.offset, msg.log2_ring_size, cacheline)

    def efd(self, ring_type: w.RingType, index: int = 0) -> int:
        return self._find(ring_type, index)[1]

    def region(self, index: int = 0) -> mmap.mmap:
        return self.maps[index]

    def close(self) -> None:
        for m in self.maps:
            m.close()
        self.maps = []
        _close_all(self.region_fds + [fd for _, fd in self.rings])
        self.region_fds, self.rings = [], []


# ------------------------------------------------------------------------------ handshakes


async def client_handshake(
    peer: RawPeer,
    mem: ClientMemory,
    *,
    interface_id: int = 0,
    secret: bytes = b"",
    mode: int = 0,
) -> Connected:
    """Play a valid client handshake against a real server; return its CONNECTED."""
    await peer.expect(Hello)
    peer.send(Init(interface_id=interface_id, mode=mode, secret=secret, name="hostile"))
    await peer.expect(Ack)
    peer.send(mem.add_region(), [mem.fd])
    await peer.expect(Ack)
    for ring_type, index in mem.all_rings():
        peer.send(mem.add_ring(ring_type, index), [mem.efd(ring_type, index)])
        await peer.expect(Ack)
    peer.send(Connect("hostile-if"))
    return await peer.expect(Connected)


async def server_handshake(peer: RawPeer, hello: Hello | None = None) -> ServerSide:
    """Play a valid server handshake against a real client; return what it handed over.

    The regions are mapped. The caller closes the returned :class:`ServerSide`.
    """
    side = ServerSide()
    try:
        peer.send(hello or Hello(name="hostile-server"))
        side.init = await peer.expect(Init)
        peer.send(Ack())
        while True:
            msg, fds = await peer.recv_with_fds()
            if isinstance(msg, AddRegion | AddRing) and len(fds) == 1:
                if isinstance(msg, AddRegion):
                    side.add_region(msg, fds[0])
                else:
                    side.add_ring(msg, fds[0])
                peer.send(Ack())
                continue
            _close_all(fds)
            assert isinstance(msg, Connect), f"unexpected {msg!r} with {len(fds)} fd(s)"
            break
        side.map_regions()
        peer.send(Connected("hostile-server-if"))
    except BaseException:
        side.close()
        raise
    return side
