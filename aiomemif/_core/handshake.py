"""The memif handshake as two explicit state machines, one per role (sans-IO).

Each machine is fed decoded messages (with the fd that came with them, as a plain integer,
and a description of that fd gathered by the I/O layer) and answers with a list of outputs:
messages to send and events to act on. Transitions live in a table ``(state, type) ->
handler``; a message with no entry is "Unexpected message". Errors are raised:

- :class:`~aiomemif.errors.RemoteProtocolError` (or its subclass ``ResourceError``): the
  peer misbehaved; send DISCONNECT with ``exc.reason`` and close.
- :class:`~aiomemif.errors.PeerDisconnectedError` / ``HandshakeRefusedError``: the peer sent
  DISCONNECT; close.

fd ownership: a machine keeps the fds of accepted ADD_REGION / ADD_RING messages (listed in
``regions`` / ``rings``); the caller closes every other received fd, including the fd of a
message whose ``receive`` raised. The machine never opens or closes anything.
"""

from __future__ import annotations

import enum
import hmac
import itertools
from collections.abc import Callable
from typing import ClassVar, Final, TypeAlias

import attrs

from ..errors import (
    HandshakeRefusedError,
    LocalProtocolError,
    PeerDisconnectedError,
    RemoteProtocolError,
    ResourceError,
)
from . import wire as w
from .config import InterfaceConfig
from .layout import ClientLayout, implied_cacheline, ring_bytes
from .messages import (
    Ack,
    AddRegion,
    AddRing,
    Connect,
    Connected,
    Disconnect,
    Hello,
    Init,
    Message,
)

__all__ = [
    "MAX_STRAY_ACKS",
    "ClientHandshake",
    "ClientState",
    "Established",
    "FdInfo",
    "FdKind",
    "HelloReceived",
    "MapRegions",
    "Output",
    "RegionRecord",
    "RingRecord",
    "SendMessage",
    "ServerHandshake",
    "ServerState",
    "check_secret",
]

#: Stray ACKs a server tolerates from a client during one handshake (real clients send at
#: most one or two; more only hold the handshake open).
MAX_STRAY_ACKS: Final = 16


class FdKind(enum.Enum):
    REGULAR = "regular"
    EVENTFD = "eventfd"
    OTHER = "other"


@attrs.frozen
class FdInfo:
    """What the I/O layer learned about a received fd (``fstat``, seals, its kind)."""

    kind: FdKind
    size: int = 0
    #: ``F_GET_SEALS`` result (0 where the file cannot carry seals).
    seals: int = 0
    #: Regular files: ``(st_dev, st_ino)``, the file's identity however it was opened.
    file_id: tuple[int, int] | None = None
    #: Eventfds: whether it is ``EFD_SEMAPHORE`` (one unit per read, so a large count keeps
    #: its reader ready for as many reads); None if the I/O layer could not rule that out.
    semaphore: bool | None = False


#: ``F_SEAL_SHRINK`` from <fcntl.h>; duplicated here to keep the core free of OS modules.
F_SEAL_SHRINK = 0x0002


@attrs.frozen
class SendMessage:
    """Output: send ``message``, with ``fd`` attached if not None."""

    message: Message
    fd: int | None = None


@attrs.frozen
class HelloReceived:
    """Output (client): HELLO accepted. Build memory for these counts, then call ``begin``."""

    hello: Hello
    n_s2m: int
    n_m2s: int
    log2_ring_size: int


@attrs.frozen
class MapRegions:
    """Output (server): CONNECT arrived; map the regions, check cookies, then ``mapped()``."""

    peer_if_name: str


@attrs.frozen
class Established:
    """Output: the link is up."""

    peer_if_name: str


Output: TypeAlias = SendMessage | HelloReceived | MapRegions | Established


@attrs.frozen
class RegionRecord:
    index: int
    size: int
    fd: int
    #: ``FdInfo.file_id`` of the region's fd (None if the I/O layer did not say).
    file_id: tuple[int, int] | None = None


@attrs.frozen
class RingRecord:
    ring_type: w.RingType
    index: int
    region: int
    offset: int
    log2_ring_size: int
    fd: int


def check_secret(received: bytes, configured: bytes) -> bool:
    """Compare secrets as C strings of at most 24 bytes, in constant time."""
    a = received.split(b"\0", 1)[0][: w.SECRET_SIZE].ljust(w.SECRET_SIZE, b"\0")
    b = configured[: w.SECRET_SIZE].ljust(w.SECRET_SIZE, b"\0")
    return hmac.compare_digest(a, b)


class _Machine:
    """Shared dispatch: table lookup, DISCONNECT handling, fd-on-wrong-message checks."""

    _table: ClassVar[dict[tuple[enum.Enum, w.MsgType], Callable[..., list[Output]]]]
    state: enum.Enum
    _closed_state: enum.Enum
    _connected_state: enum.Enum

    def receive(
        self, msg: Message, fd: int | None = None, info: FdInfo | None = None
    ) -> list[Output]:
        """Feed one decoded message from the peer.

        Raises:
            RemoteProtocolError: the message is unexpected here or fails validation.
            PeerDisconnectedError: it is a DISCONNECT (``HandshakeRefusedError`` before the
                link was up).
            LocalProtocolError: the machine is already closed.
        """
        if self.state is self._closed_state:
            raise LocalProtocolError("the handshake is closed")
        if isinstance(msg, Disconnect):
            was_up = self.state is self._connected_state
            self.state = self._closed_state
            raise (PeerDisconnectedError if was_up else HandshakeRefusedError)(msg.reason)
        handler = self._table.get((self.state, msg.type))
        if handler is None:
            self.state = self._closed_state
            raise RemoteProtocolError("Unexpected message")
        if fd is not None and msg.type not in (w.MsgType.ADD_REGION, w.MsgType.ADD_RING):
            self.state = self._closed_state
            raise RemoteProtocolError("Unexpected fd")
        try:
            return handler(self, msg, fd, info)
        except RemoteProtocolError:
            self.state = self._closed_state
            raise

    def fail(self) -> None:
        """Mark the machine closed after a local failure (the caller sends DISCONNECT)."""
        self.state = self._closed_state


# ------------------------------------------------------------------------------- client


class ClientState(enum.Enum):
    AWAIT_HELLO = "await-hello"
    PREPARING = "preparing"  # HELLO accepted; the I/O layer builds memory and calls begin()
    AWAIT_ACK = "await-ack"
    AWAIT_CONNECTED = "await-connected"
    CONNECTED = "connected"
    CLOSED = "closed"


class ClientHandshake(_Machine):
    """The client side: answers HELLO with INIT, regions, S2M rings, M2S rings, CONNECT."""

    _closed_state = ClientState.CLOSED
    _connected_state = ClientState.CONNECTED

    def __init__(self, config: InterfaceConfig) -> None:
        self.config = config
        self.state: ClientState = ClientState.AWAIT_HELLO
        self.hello: Hello | None = None
        self.peer_if_name = ""
        self._queue: list[SendMessage] = []

    def _on_hello(self, msg: Hello, _fd: int | None, _info: FdInfo | None) -> list[Output]:
        if msg.min_version > w.PROTOCOL_VERSION or msg.max_version < w.PROTOCOL_VERSION:
            raise RemoteProtocolError("Incompatible memif version")
        cfg = self.config
        self.hello = msg
        self.state = ClientState.PREPARING
        return [
            HelloReceived(
                msg,
                n_s2m=min(msg.max_s2m_ring + 1, cfg.tx_queue_count),
                n_m2s=min(msg.max_m2s_ring + 1, cfg.rx_queue_count),
                log2_ring_size=min(msg.max_log2_ring_size, cfg.log2_ring_size),
            )
        ]

    def begin(
        self, layout: ClientLayout, region_fds: list[int], ring_fds: list[int]
    ) -> list[Output]:
        """Start the exchange once memory exists. ``ring_fds`` follow ``layout.rings`` order.

        Raises:
            LocalProtocolError: not in the PREPARING state, or fd counts do not match.
        """
        if self.state is not ClientState.PREPARING:
            raise LocalProtocolError(f"begin() in state {self.state.name}")
        if len(ring_fds) != len(layout.rings) or len(region_fds) != len(layout.region_sizes):
            raise LocalProtocolError("fd counts do not match the layout")
        cfg = self.config
        self._queue = [
            SendMessage(
                Init(
                    interface_id=cfg.interface_id,
                    mode=cfg.mode,
                    secret=cfg.secret_bytes,
                    name=cfg.app_name,
                )
            ),
        ]
        for index, (size, fd) in enumerate(zip(layout.region_sizes, region_fds, strict=True)):
            self._queue.append(SendMessage(AddRegion(index, size), fd))
        for ring, fd in zip(layout.rings, ring_fds, strict=True):
            msg = AddRing(
                ring.ring_type, ring.index, ring.region, ring.offset, layout.log2_ring_size
            )
            self._queue.append(SendMessage(msg, fd))
        self._queue.append(SendMessage(Connect(cfg.if_name)))
        self.state = ClientState.AWAIT_ACK
        return [self._queue.pop(0)]

    def _on_ack(self, _msg: Ack, _fd: int | None, _info: FdInfo | None) -> list[Output]:
        nxt = self._queue.pop(0)
        if not self._queue:
            self.state = ClientState.AWAIT_CONNECTED
        return [nxt]

    def _on_connected(self, msg: Connected, _fd: int | None, _info: FdInfo | None) -> list[Output]:
        self.peer_if_name = msg.if_name
        self.state = ClientState.CONNECTED
        return [Established(msg.if_name)]

    _table: ClassVar[dict[tuple[enum.Enum, w.MsgType], Callable[..., list[Output]]]] = {
        (ClientState.AWAIT_HELLO, w.MsgType.HELLO): _on_hello,
        (ClientState.AWAIT_ACK, w.MsgType.ACK): _on_ack,
        (ClientState.AWAIT_CONNECTED, w.MsgType.CONNECTED): _on_connected,
    }


# ------------------------------------------------------------------------------- server


class ServerState(enum.Enum):
    AWAIT_INIT = "await-init"
    CONFIGURING = "configuring"  # INIT accepted; regions and rings arrive
    MAPPING = "mapping"  # CONNECT received; the I/O layer maps and checks, then mapped()
    CONNECTED = "connected"
    CLOSED = "closed"


class ServerHandshake(_Machine):
    """The server side of one accepted connection.

    ``lookup(id)`` returns the interface configured for an id (or None); ``is_busy(id)``
    says whether that id already has a connection or handshake; ``max_queues`` is the
    most (S2M, M2S) rings any interface accepts, announced in HELLO. The caller marks the id
    busy as soon as ``receive`` accepts the INIT (``interface_id`` is then set).
    """

    _closed_state = ServerState.CLOSED
    _connected_state = ServerState.CONNECTED

    def __init__(
        self,
        lookup: Callable[[int], InterfaceConfig | None],
        is_busy: Callable[[int], bool],
        app_name: str = "aiomemif",
        max_queues: tuple[int, int] = (w.MAX_RING_INDEX + 1, w.MAX_RING_INDEX + 1),
    ) -> None:
        self._lookup = lookup
        #: Most (s2m, m2s) rings any interface takes: what HELLO announces.
        self._max_queues = max_queues
        #: The id the client's INIT named (set even when that INIT is refused).
        self.requested_id: int | None = None
        self._is_busy = is_busy
        self.state: ServerState = ServerState.AWAIT_INIT
        self.config: InterfaceConfig | None = None
        self.interface_id: int | None = None
        self.init: Init | None = None
        self.peer_if_name = ""
        self.regions: list[RegionRecord] = []
        self.rings: list[RingRecord] = []
        self._app_name = app_name
        self._stray_acks = 0

    def hello(self) -> SendMessage:
        """The HELLO to send right after accepting the connection."""
        s2m, m2s = self._max_queues
        return SendMessage(Hello(name=self._app_name, max_s2m_ring=s2m - 1, max_m2s_ring=m2s - 1))

    @property
    def received_fds(self) -> list[int]:
        """Every fd the machine holds; the caller closes them at teardown."""
        return [r.fd for r in self.regions] + [r.fd for r in self.rings]

    def _on_init(self, msg: Init, _fd: int | None, _info: FdInfo | None) -> list[Output]:
        if msg.version != w.PROTOCOL_VERSION:
            raise RemoteProtocolError("Incompatible memif version")
        self.requested_id = msg.interface_id
        cfg = self._lookup(msg.interface_id)
        if cfg is None:
            raise RemoteProtocolError("ID not found")
        if self._is_busy(msg.interface_id):
            raise RemoteProtocolError("Already connected")
        if msg.mode != cfg.mode:
            raise RemoteProtocolError("Mode mismatch")
        wanted = cfg.secret_bytes
        if wanted:
            if not msg.secret:
                raise RemoteProtocolError("Secret required")
            if not check_secret(msg.secret, wanted):
                raise RemoteProtocolError("Incorrect secret")
        self.config = cfg
        self.interface_id = msg.interface_id
        self.init = msg
        self.state = ServerState.CONFIGURING
        return [SendMessage(Ack())]

    def _on_add_region(self, msg: AddRegion, fd: int | None, info: FdInfo | None) -> list[Output]:
        assert self.config is not None
        if fd is None:
            raise RemoteProtocolError("Missing region fd")
        if msg.index != len(self.regions):
            raise RemoteProtocolError("Invalid region index")
        if msg.index > w.MAX_REGION_INDEX:
            raise RemoteProtocolError("Too many regions")
        if msg.size == 0:
            raise RemoteProtocolError("Invalid region size")
        if info is None or info.kind is not FdKind.REGULAR:
            raise ResourceError("Region fd is not a regular file")
        if info.size < msg.size:
            raise ResourceError("Region fd is smaller than its announced size")
        if not info.seals & F_SEAL_SHRINK:
            raise ResourceError("Region fd is not sealed against shrinking")
        for other in self.regions:  # one file twice: rings and buffers could alias
            if info.file_id is not None and other.file_id == info.file_id:
                raise ResourceError(f"Region {msg.index} is the same file as region {other.index}")
        if sum(r.size for r in self.regions) + msg.size > self.config.max_region_bytes:
            raise ResourceError("Regions exceed the size limit")
        self.regions.append(RegionRecord(msg.index, msg.size, fd, info.file_id))
        return [SendMessage(Ack())]

    def _on_add_ring(self, msg: AddRing, fd: int | None, info: FdInfo | None) -> list[Output]:
        cfg = self.config
        assert cfg is not None
        if fd is None:
            raise RemoteProtocolError("Missing interrupt fd")
        if info is None or info.kind is not FdKind.EVENTFD:
            raise ResourceError("Interrupt fd is not an eventfd")
        if info.semaphore:
            raise ResourceError("Interrupt fd is an EFD_SEMAPHORE eventfd")
        if info.semaphore is None:
            raise ResourceError("Interrupt fd may be an EFD_SEMAPHORE eventfd")
        if msg.private_hdr_size != 0:
            raise RemoteProtocolError("Private headers not supported")
        same_dir = [r for r in self.rings if r.ring_type == msg.ring_type]
        limit = cfg.rx_queue_count if msg.ring_type == w.RingType.S2M else cfg.tx_queue_count
        if msg.index != len(same_dir):
            raise RemoteProtocolError("Invalid ring index")
        if msg.index >= limit:
            kind = "s2m" if msg.ring_type == w.RingType.S2M else "m2s"
            rings = "ring" if limit == 1 else "rings"
            raise RemoteProtocolError(
                f"Invalid ring index {msg.index}: interface {cfg.interface_id}"
                f" allows {limit} {kind} {rings}"
            )
        if msg.log2_ring_size > w.MAX_LOG2_RING_SIZE:
            raise RemoteProtocolError("Ring size too large")
        if msg.region >= len(self.regions):
            raise RemoteProtocolError("Invalid ring region")
        if msg.offset % w.RING_OFFSET_ALIGN:
            raise RemoteProtocolError("Misaligned ring offset")
        end = msg.offset + ring_bytes(msg.log2_ring_size, cfg.cacheline)
        if end > self.regions[msg.region].size:
            raise RemoteProtocolError("Ring outside its region")
        for other in self.rings:  # with a cacheline mismatch, peer rings overlap ours
            if other.region == msg.region:
                other_end = other.offset + ring_bytes(other.log2_ring_size, cfg.cacheline)
                if msg.offset < other_end and other.offset < end:
                    raise RemoteProtocolError("Rings overlap (cacheline size mismatch?)")
        self.rings.append(
            RingRecord(msg.ring_type, msg.index, msg.region, msg.offset, msg.log2_ring_size, fd)
        )
        return [SendMessage(Ack())]

    def _on_connect(self, msg: Connect, _fd: int | None, _info: FdInfo | None) -> list[Output]:
        types = {r.ring_type for r in self.rings}
        if types != {w.RingType.S2M, w.RingType.M2S}:
            raise RemoteProtocolError("At least one ring in each direction is required")
        self._check_ring_strides()
        self.peer_if_name = msg.if_name
        self.state = ServerState.MAPPING
        return [MapRegions(msg.if_name)]

    def _check_ring_strides(self) -> None:
        """Refuse rings packed with another cacheline size than ours.

        A client with a larger cacheline than ours builds larger rings, so ours fit inside
        them and nothing overlaps; but in the one region where it packs them, each ring
        starts exactly its own ring size after the previous one. Rings in different regions,
        or not packed back to back, reveal nothing (see docs/protocol.md).

        Raises:
            RemoteProtocolError: "Ring stride suggests a 128-byte cacheline peer".
        """
        assert self.config is not None
        by_region: dict[int, list[RingRecord]] = {}
        for rec in self.rings:
            by_region.setdefault(rec.region, []).append(rec)
        for rings in by_region.values():
            rings.sort(key=lambda r: r.offset)
            for a, b in itertools.pairwise(rings):
                other = implied_cacheline(
                    b.offset - a.offset, a.log2_ring_size, self.config.cacheline
                )
                if other is not None:
                    raise RemoteProtocolError(f"Ring stride suggests a {other}-byte cacheline peer")

    def _on_stray_ack(self, _msg: Ack, _fd: int | None, _info: FdInfo | None) -> list[Output]:
        # Reference servers ignore an extra ACK from a client; a flood of them only holds
        # the handshake open, so a few are tolerated and the rest end it.
        self._stray_acks += 1
        if self._stray_acks > MAX_STRAY_ACKS:
            raise RemoteProtocolError("Too many stray ACK messages")
        return []

    def mapped(self) -> list[Output]:
        """The regions are mapped and every cookie checked: answer CONNECTED, link up.

        Raises:
            LocalProtocolError: not in the MAPPING state.
        """
        if self.state is not ServerState.MAPPING:
            raise LocalProtocolError(f"mapped() in state {self.state.name}")
        assert self.config is not None
        self.state = ServerState.CONNECTED
        return [SendMessage(Connected(self.config.if_name)), Established(self.peer_if_name)]

    _table: ClassVar[dict[tuple[enum.Enum, w.MsgType], Callable[..., list[Output]]]] = {
        (ServerState.AWAIT_INIT, w.MsgType.INIT): _on_init,
        (ServerState.CONFIGURING, w.MsgType.ADD_REGION): _on_add_region,
        (ServerState.CONFIGURING, w.MsgType.ADD_RING): _on_add_ring,
        (ServerState.CONFIGURING, w.MsgType.CONNECT): _on_connect,
        (ServerState.CONFIGURING, w.MsgType.ACK): _on_stray_ack,
    }
