"""The two handshake state machines, driven in memory without sockets or an event loop.

fds are plain integers and what the I/O layer would learn about them is an ``FdInfo``:
``FdInfo(REGULAR, size, F_SEAL_SHRINK)`` for a memfd region, ``FdInfo(EVENTFD)`` for a ring's
interrupt. Every message crosses an ``encode`` / ``decode_untrusted`` round trip on the way,
as it would on the socket.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiomemif import InterfaceConfig
from aiomemif._core.handshake import (
    F_SEAL_SHRINK,
    ClientHandshake,
    ClientState,
    Established,
    FdInfo,
    FdKind,
    HelloReceived,
    MapRegions,
    Output,
    RegionRecord,
    RingRecord,
    SendMessage,
    ServerHandshake,
    ServerState,
    check_secret,
)
from aiomemif._core.layout import ClientLayout, plan_client_layout, ring_bytes
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
from aiomemif._core.wire import Mode, MsgType, RingType
from aiomemif.errors import (
    HandshakeRefusedError,
    LocalProtocolError,
    PeerDisconnectedError,
    RemoteProtocolError,
    ResourceError,
)

FAST = settings(max_examples=60, deadline=None)

REGION_FD = 1000
RING_FD = 2000
EVENTFD = FdInfo(FdKind.EVENTFD)
MiB = 1 << 20


def region_info(size: int, seals: int = F_SEAL_SHRINK) -> FdInfo:
    return FdInfo(FdKind.REGULAR, size, seals=seals)


def region_file(size: int, inode: int) -> FdInfo:
    """A sealed memfd region that ``fstat`` says is inode ``inode`` of device 5."""
    return FdInfo(FdKind.REGULAR, size, seals=F_SEAL_SHRINK, file_id=(5, inode))


def info_for(msg: Message) -> FdInfo | None:
    """What ``describe_fd`` would report for the fd a well-behaved client attaches."""
    if isinstance(msg, AddRegion):
        return region_info(msg.size)
    if isinstance(msg, AddRing):
        return EVENTFD
    return None


def wire(msg: Message) -> Message:
    return decode_untrusted(encode(msg))


def state_of(machine: ClientHandshake | ServerHandshake) -> ClientState | ServerState:
    """The machine's state, read afresh (keeps type checkers from over-narrowing it)."""
    return machine.state


@attrs.define
class Registry:
    """The server's interface table and busy set (what server.py keeps)."""

    interfaces: dict[int, InterfaceConfig] = attrs.field(factory=dict)
    busy: set[int] = attrs.field(factory=set)

    def add(self, cfg: InterfaceConfig) -> None:
        self.interfaces[cfg.interface_id] = cfg

    def lookup(self, interface_id: int) -> InterfaceConfig | None:
        return self.interfaces.get(interface_id)

    def is_busy(self, interface_id: int) -> bool:
        return interface_id in self.busy

    def server(self, app_name: str = "srv-app") -> ServerHandshake:
        return ServerHandshake(self.lookup, self.is_busy, app_name)


@attrs.define
class Exchange:
    """Everything seen while pumping one handshake to completion."""

    client: ClientHandshake
    server: ServerHandshake
    layout: ClientLayout | None = None
    hello_received: HelloReceived | None = None
    #: (destination, message as received, fd) in delivery order.
    log: list[tuple[str, Message, int | None]] = attrs.field(factory=list)
    client_up: Established | None = None
    server_up: Established | None = None
    map_requests: int = 0

    def sent_by(self, side: str) -> list[Message]:
        dest = "server" if side == "client" else "client"
        return [m for d, m, _ in self.log if d == dest]


def pump(
    client_cfg: InterfaceConfig,
    registry: Registry,
    hello: Hello | None = None,
    buffer_size: int = 2048,
) -> Exchange:
    """Run a complete handshake in memory, checking strict lockstep on the way."""
    server = registry.server()
    ex = Exchange(ClientHandshake(client_cfg), server)
    first = server.hello() if hello is None else SendMessage(hello)
    in_flight: deque[tuple[str, SendMessage]] = deque([("client", first)])
    next_region_fd, next_ring_fd = REGION_FD, RING_FD
    while in_flight:
        # Lockstep: never more than one message on the wire.
        assert len(in_flight) == 1, in_flight
        dest, out = in_flight.popleft()
        msg = wire(out.message)
        ex.log.append((dest, msg, out.fd))
        outputs: list[Output]
        if dest == "client":
            assert out.fd is None  # the server never sends fds
            outputs = ex.client.receive(msg)
            while outputs:
                o = outputs.pop(0)
                if isinstance(o, HelloReceived):
                    ex.hello_received = o
                    ex.layout = plan_client_layout(
                        o.n_s2m, o.n_m2s, o.log2_ring_size, buffer_size, client_cfg.cacheline
                    )
                    ring_fds = list(range(next_ring_fd, next_ring_fd + len(ex.layout.rings)))
                    next_ring_fd += len(ring_fds)
                    outputs += ex.client.begin(ex.layout, [next_region_fd], ring_fds)
                    next_region_fd += 1
                elif isinstance(o, SendMessage):
                    in_flight.append(("server", o))
                elif isinstance(o, Established):
                    assert ex.client_up is None
                    ex.client_up = o
                else:  # pragma: no cover - a client never emits MapRegions
                    raise AssertionError(o)
        else:
            outputs = server.receive(msg, out.fd, info_for(msg) if out.fd is not None else None)
            if server.interface_id is not None:
                registry.busy.add(server.interface_id)  # as server.py claims the id
            while outputs:
                o = outputs.pop(0)
                if isinstance(o, SendMessage):
                    in_flight.append(("client", o))
                elif isinstance(o, MapRegions):
                    ex.map_requests += 1
                    outputs += server.mapped()
                elif isinstance(o, Established):
                    assert ex.server_up is None
                    ex.server_up = o
                else:  # pragma: no cover - a server never emits HelloReceived
                    raise AssertionError(o)
    return ex


def expected_client_messages(layout: ClientLayout, cfg: InterfaceConfig) -> list[Message]:
    msgs: list[Message] = [
        Init(
            version=0x0200,
            interface_id=cfg.interface_id,
            mode=cfg.mode,
            secret=cfg.secret_bytes,
            name=cfg.app_name,
        ),
        AddRegion(0, layout.region_size),
    ]
    for ring_type, places in ((RingType.S2M, layout.s2m), (RingType.M2S, layout.m2s)):
        for i, place in enumerate(places):
            msgs.append(AddRing(ring_type, i, 0, place.offset, layout.log2_ring_size, 0))
    msgs.append(Connect(cfg.if_name))
    return msgs


# --------------------------------------------------------------------------- full exchange


def test_full_exchange_single_rings() -> None:
    cfg = InterfaceConfig(interface_id=7, app_name="pyprobe", interface_name="pyprobe-if")
    reg = Registry()
    reg.add(InterfaceConfig(interface_id=7, interface_name="net_memif0"))
    ex = pump(cfg, reg)
    assert ex.layout is not None
    assert [type(m) for _, m, _ in ex.log] == [
        Hello, Init, Ack, AddRegion, Ack, AddRing, Ack, AddRing, Ack, Connect, Connected,
    ]  # fmt: skip
    assert [d for d, _, _ in ex.log] == ["client", "server"] * 5 + ["client"]
    assert ex.sent_by("client") == expected_client_messages(ex.layout, cfg)
    assert ex.log[0][1] == Hello(name="srv-app")
    assert ex.log[-1][1] == Connected("net_memif0")
    assert ex.client_up == Established("net_memif0")
    assert ex.server_up == Established("pyprobe-if")
    assert ex.client.state is ClientState.CONNECTED
    assert ex.server.state is ServerState.CONNECTED
    assert ex.map_requests == 1
    assert ex.server.interface_id == 7
    assert ex.server.init is not None and ex.server.init.name == "pyprobe"
    assert ex.server.peer_if_name == "pyprobe-if"
    assert ex.client.peer_if_name == "net_memif0"
    assert ex.client.hello == Hello(name="srv-app")


@FAST
@given(
    n_tx=st.integers(1, 5),
    n_rx=st.integers(1, 5),
    spare_rx=st.integers(0, 2),
    spare_tx=st.integers(0, 2),
    log2=st.integers(1, 14),
    secret=st.sampled_from([None, "abc123", "x" * 23]),
    mode=st.sampled_from(Mode),
    interface_id=st.integers(0, 0xFFFF_FFFF),
)
def test_full_exchange_lockstep_order(
    n_tx: int,
    n_rx: int,
    spare_rx: int,
    spare_tx: int,
    log2: int,
    secret: str | None,
    mode: Mode,
    interface_id: int,
) -> None:
    cfg = InterfaceConfig(
        interface_id=interface_id,
        secret=secret,
        mode=mode,
        tx_queue_count=n_tx,
        rx_queue_count=n_rx,
        ring_size=1 << log2,
        buffer_size=64,
    )
    reg = Registry()
    reg.add(
        InterfaceConfig(
            interface_id=interface_id,
            secret=secret,
            mode=mode,
            rx_queue_count=n_tx + spare_rx,  # the server receives on S2M rings
            tx_queue_count=n_rx + spare_tx,
        )
    )
    ex = pump(cfg, reg, buffer_size=64)
    layout = ex.layout
    assert layout is not None
    assert (len(layout.s2m), len(layout.m2s), layout.log2_ring_size) == (n_tx, n_rx, log2)
    n_rings = n_tx + n_rx

    # INIT, ADD_REGION, all S2M rings, all M2S rings, CONNECT; each answered before the next.
    assert ex.sent_by("client") == expected_client_messages(layout, cfg)
    assert ex.sent_by("server") == [Hello(name="srv-app")] + [Ack()] * (2 + n_rings) + [
        Connected(f"memif{interface_id}")
    ]
    assert [d for d, _, _ in ex.log] == ["client", "server"] * (3 + n_rings) + ["client"]

    # fds travel with exactly ADD_REGION and ADD_RING, one each, in layout order.
    fds = [(type(m).__name__, fd) for d, m, fd in ex.log if d == "server"]
    assert fds == (
        [("Init", None), ("AddRegion", REGION_FD)]
        + [("AddRing", RING_FD + k) for k in range(n_rings)]
        + [("Connect", None)]
    )
    assert ex.server.regions == [RegionRecord(0, layout.region_size, REGION_FD)]
    assert ex.server.rings == [
        RingRecord(p.ring_type, p.index, 0, p.offset, log2, RING_FD + k)
        for k, p in enumerate(layout.rings)
    ]
    assert ex.server.received_fds == [REGION_FD, *range(RING_FD, RING_FD + n_rings)]
    assert ex.client.state is ClientState.CONNECTED
    assert ex.server.state is ServerState.CONNECTED
    assert ex.server_up == Established(f"memif{interface_id}")
    assert ex.client_up == Established(f"memif{interface_id}")


def test_full_exchange_with_dpdk_secret_init() -> None:
    """The INIT testpmd sent in §9.2 (id 3, secret abc123) is accepted by a server."""
    raw = bytearray(128)
    raw[:16] = bytes.fromhex("0300 0002 03000000 00 616263313233 00")
    raw[33:46] = b"DPDK 22.11.11"
    raw[20:30] = b"\xaa" * 10  # stale bytes after the secret's NUL do not count
    reg = Registry()
    reg.add(InterfaceConfig(interface_id=3, secret="abc123"))
    server = reg.server()
    assert server.receive(decode_untrusted(bytes(raw))) == [SendMessage(Ack())]
    assert server.state is ServerState.CONFIGURING
    assert server.interface_id == 3


# --------------------------------------------------------------------------- clamping


@FAST
@given(
    max_s2m=st.integers(0, 0xFFFF),
    max_m2s=st.integers(0, 0xFFFF),
    max_log2=st.integers(0, 14),
    tx=st.integers(1, 256),
    rx=st.integers(1, 256),
    log2=st.integers(1, 14),
)
def test_hello_maxima_are_indexes_and_clamp_the_client(
    max_s2m: int, max_m2s: int, max_log2: int, tx: int, rx: int, log2: int
) -> None:
    cfg = InterfaceConfig(tx_queue_count=tx, rx_queue_count=rx, ring_size=1 << log2)
    client = ClientHandshake(cfg)
    hello = Hello(max_m2s_ring=max_m2s, max_s2m_ring=max_s2m, max_log2_ring_size=max_log2)
    (out,) = client.receive(wire(hello))
    assert out == HelloReceived(
        hello,
        n_s2m=min(max_s2m + 1, tx),
        n_m2s=min(max_m2s + 1, rx),
        log2_ring_size=min(max_log2, log2),
    )
    assert client.state is ClientState.PREPARING
    assert client.hello == hello


def test_zero_maxima_mean_one_ring_each() -> None:
    client = ClientHandshake(InterfaceConfig(tx_queue_count=4, rx_queue_count=4))
    (out,) = client.receive(Hello(max_m2s_ring=0, max_s2m_ring=0))
    assert isinstance(out, HelloReceived)
    assert (out.n_s2m, out.n_m2s) == (1, 1)


def test_full_exchange_with_a_clamping_hello() -> None:
    cfg = InterfaceConfig(interface_id=1, tx_queue_count=4, rx_queue_count=4, ring_size=1024)
    reg = Registry()
    reg.add(InterfaceConfig(interface_id=1, rx_queue_count=4, tx_queue_count=4))
    hello = Hello(name="small", max_region=0, max_m2s_ring=1, max_s2m_ring=0, max_log2_ring_size=6)
    ex = pump(cfg, reg, hello=hello)
    rings = [m for m in ex.sent_by("client") if isinstance(m, AddRing)]
    assert [(r.ring_type, r.index, r.log2_ring_size) for r in rings] == [
        (RingType.S2M, 0, 6),
        (RingType.M2S, 0, 6),
        (RingType.M2S, 1, 6),
    ]
    assert ex.server.state is ServerState.CONNECTED


@pytest.mark.parametrize(
    ("vmin", "vmax", "ok"),
    [
        (0x0200, 0x0200, True),
        (0x0100, 0x0200, True),
        (0x0200, 0x0300, True),
        (0x0100, 0xFFFF, True),
        (0x0201, 0x0300, False),
        (0x0100, 0x01FF, False),
        (0x0300, 0x0100, False),
    ],
)
def test_client_checks_hello_version_range(vmin: int, vmax: int, ok: bool) -> None:
    client = ClientHandshake(InterfaceConfig())
    hello = Hello(min_version=vmin, max_version=vmax)
    if ok:
        (out,) = client.receive(hello)
        assert isinstance(out, HelloReceived)
    else:
        with pytest.raises(RemoteProtocolError) as info:
            client.receive(hello)
        assert info.value.reason == "Incompatible memif version"
        assert client.state is ClientState.CLOSED


def test_client_begin_misuse_is_a_local_error() -> None:
    client = ClientHandshake(InterfaceConfig())
    layout = plan_client_layout(1, 1, 10, 2048, 64)
    with pytest.raises(LocalProtocolError):
        client.begin(layout, [1], [2, 3])  # before HELLO
    client.receive(Hello())
    with pytest.raises(LocalProtocolError):
        client.begin(layout, [1], [2])  # one ring fd short
    with pytest.raises(LocalProtocolError):
        client.begin(layout, [], [2, 3])  # no region fd
    (out,) = client.begin(layout, [1], [2, 3])
    assert isinstance(out, SendMessage)
    assert isinstance(out.message, Init)
    with pytest.raises(LocalProtocolError):
        client.begin(layout, [1], [2, 3])  # twice


def test_closed_machines_refuse_everything() -> None:
    client = ClientHandshake(InterfaceConfig())
    with pytest.raises(RemoteProtocolError):
        client.receive(Ack())
    with pytest.raises(LocalProtocolError):
        client.receive(Hello())
    with pytest.raises(LocalProtocolError):
        client.receive(Disconnect("late"))
    server = Registry().server()
    with pytest.raises(RemoteProtocolError):
        server.receive(Init(interface_id=5))  # unknown id
    with pytest.raises(LocalProtocolError):
        server.receive(Init(interface_id=5))
    with pytest.raises(LocalProtocolError):
        server.mapped()


def test_fail_closes_a_machine() -> None:
    client = ClientHandshake(InterfaceConfig())
    client.fail()
    assert client.state is ClientState.CLOSED
    server = Registry().server()
    server.fail()
    assert server.state is ServerState.CLOSED


def test_mapped_only_after_connect() -> None:
    reg = Registry()
    reg.add(InterfaceConfig(interface_id=1))
    server = reg.server()
    with pytest.raises(LocalProtocolError):
        server.mapped()
    server.receive(Init(interface_id=1))
    with pytest.raises(LocalProtocolError):
        server.mapped()


# --------------------------------------------------------------------------- server validation

Step = tuple[Message, int | None, FdInfo | None]

REGION0: Step = (AddRegion(0, MiB), 10, region_info(MiB))
S2M0: Step = (AddRing(RingType.S2M, 0, 0, 0, 10), 20, EVENTFD)
M2S0: Step = (AddRing(RingType.M2S, 0, 0, 16512, 10), 21, EVENTFD)


def init(interface_id: int = 1, **kw: object) -> Step:
    return (Init(interface_id=interface_id, **kw), None, None)  # type: ignore[arg-type]


def ring(rtype: RingType, index: int, **kw: int) -> Step:
    args = {"region": 0, "offset": 0, "log2_ring_size": 10, **kw}
    return (AddRing(rtype, index, **args), 20 + index, EVENTFD)


def many_regions() -> list[Step]:
    return [init(6)] + [(AddRegion(i, 1), 10 + i, region_info(1)) for i in range(256)]


def server_registry() -> Registry:
    reg = Registry()
    reg.add(InterfaceConfig(interface_id=1))  # 1 queue each way, no secret, ethernet
    reg.add(InterfaceConfig(interface_id=2, secret="abc123"))
    reg.add(InterfaceConfig(interface_id=3, mode=Mode.IP))
    reg.add(InterfaceConfig(interface_id=4))
    reg.busy.add(4)
    reg.add(InterfaceConfig(interface_id=5, max_region_bytes=1000))
    reg.add(InterfaceConfig(interface_id=6, rx_queue_count=2, tx_queue_count=2))
    reg.add(InterfaceConfig(interface_id=7, secret="abc123", mode=Mode.IP))
    reg.busy.add(7)
    return reg


R = RemoteProtocolError
X = ResourceError

#: (name, steps that succeed, failing step, exception class, reason)
SERVER_FAILURES: list[tuple[str, list[Step], Step, type[RemoteProtocolError], str]] = [
    # INIT, checked in the order version, id, busy, mode, secret (DPDK's order, §4.4)
    ("old version", [], init(version=0x0100), R, "Incompatible memif version"),
    ("new version", [], init(version=0x0201), R, "Incompatible memif version"),
    ("version before id", [], init(99, version=0x0100), R, "Incompatible memif version"),
    ("unknown id", [], init(99), R, "ID not found"),
    ("busy id", [], init(4), R, "Already connected"),
    ("busy before mode/secret", [], init(7, secret=b"bad"), R, "Already connected"),
    ("mode ip for ethernet", [], init(1, mode=Mode.IP), R, "Mode mismatch"),
    ("mode ethernet for ip", [], init(3), R, "Mode mismatch"),
    ("secret missing", [], init(2), R, "Secret required"),
    ("secret prefix", [], init(2, secret=b"abc12"), R, "Incorrect secret"),
    ("secret longer", [], init(2, secret=b"abc1234"), R, "Incorrect secret"),
    ("secret case", [], init(2, secret=b"ABC123"), R, "Incorrect secret"),
    ("init with an fd", [], (Init(interface_id=1), 9, region_info(MiB)), R, "Unexpected fd"),
    # ADD_REGION
    ("region without fd", [init()], (AddRegion(0, MiB), None, None), R, "Missing region fd"),
    ("region index 1 first", [init()], (AddRegion(1, MiB), 10, region_info(MiB)), R,
     "Invalid region index"),
    ("region index twice", [init(), REGION0], REGION0, R, "Invalid region index"),
    ("region size 0", [init()], (AddRegion(0, 0), 10, region_info(0)), R, "Invalid region size"),
    ("region fd not described", [init()], (AddRegion(0, MiB), 10, None), X,
     "Region fd is not a regular file"),
    ("region fd is an eventfd", [init()], (AddRegion(0, MiB), 10, EVENTFD), X,
     "Region fd is not a regular file"),
    ("region fd is a socket", [init()], (AddRegion(0, MiB), 10, FdInfo(FdKind.OTHER)), X,
     "Region fd is not a regular file"),
    ("region file too small", [init()], (AddRegion(0, MiB), 10, region_info(MiB - 1)), X,
     "Region fd is smaller than its announced size"),
    ("region not sealed", [init()], (AddRegion(0, MiB), 10, region_info(MiB, 0)), X,
     "Region fd is not sealed against shrinking"),
    ("region sealed but not shrink", [init()],
     (AddRegion(0, MiB), 10, region_info(MiB, 0x1 | 0x4 | 0x8)), X,
     "Region fd is not sealed against shrinking"),
    ("one region over the cap", [init(5)], (AddRegion(0, 1001), 10, region_info(1001)), X,
     "Regions exceed the size limit"),
    ("regions over the cap", [init(5), (AddRegion(0, 600), 10, region_info(600))],
     (AddRegion(1, 401), 11, region_info(401)), X, "Regions exceed the size limit"),
    ("region 1 is region 0's file", [init(), (AddRegion(0, MiB), 10, region_file(MiB, 7))],
     (AddRegion(1, MiB), 11, region_file(MiB, 7)), X, "Region 1 is the same file as region 0"),
    ("region 2 is region 0's file",
     [init(), (AddRegion(0, MiB), 10, region_file(MiB, 7)),
      (AddRegion(1, MiB), 11, region_file(MiB, 8))],
     (AddRegion(2, 4096), 12, region_file(MiB, 7)), X, "Region 2 is the same file as region 0"),
    ("257th region", many_regions(), (AddRegion(256, 1), 9, region_info(1)), R, "Too many regions"),
    # ADD_RING
    ("ring without fd", [init(), REGION0], (S2M0[0], None, None), R, "Missing interrupt fd"),
    ("ring fd not described", [init(), REGION0], (S2M0[0], 20, None), X,
     "Interrupt fd is not an eventfd"),
    ("ring fd is a file", [init(), REGION0], (S2M0[0], 20, region_info(MiB)), X,
     "Interrupt fd is not an eventfd"),
    ("ring fd is a semaphore eventfd", [init(), REGION0],
     (S2M0[0], 20, FdInfo(FdKind.EVENTFD, semaphore=True)), X,
     "Interrupt fd is an EFD_SEMAPHORE eventfd"),
    ("ring fd may be a semaphore eventfd", [init(), REGION0],
     (M2S0[0], 21, FdInfo(FdKind.EVENTFD, semaphore=None)), X,
     "Interrupt fd may be an EFD_SEMAPHORE eventfd"),
    ("private header", [init(), REGION0], ring(RingType.S2M, 0, private_hdr_size=1), R,
     "Private headers not supported"),
    ("s2m index 1 first", [init(6), REGION0], ring(RingType.S2M, 1), R, "Invalid ring index"),
    ("m2s index 1 first", [init(6), REGION0], ring(RingType.M2S, 1), R, "Invalid ring index"),
    ("s2m index twice", [init(6), REGION0, S2M0], S2M0, R, "Invalid ring index"),
    ("more s2m than rx queues", [init(1), REGION0, S2M0], ring(RingType.S2M, 1, offset=32768),
     R, "Invalid ring index 1: interface 1 allows 1 s2m ring"),
    ("more m2s than tx queues", [init(1), REGION0, M2S0], ring(RingType.M2S, 1, offset=32768),
     R, "Invalid ring index 1: interface 1 allows 1 m2s ring"),
    ("log2 15", [init(), REGION0], ring(RingType.S2M, 0, log2_ring_size=15), R,
     "Ring size too large"),
    ("ring before any region", [init()], S2M0, R, "Invalid ring region"),
    ("ring in region 1", [init(), REGION0], ring(RingType.S2M, 0, region=1), R,
     "Invalid ring region"),
    ("misaligned ring", [init(), REGION0], ring(RingType.S2M, 0, offset=4), R,
     "Misaligned ring offset"),
    ("ring aligned to 8, not 16", [init(), REGION0], ring(RingType.S2M, 0, offset=16392), R,
     "Misaligned ring offset"),
    ("ring past region end", [init(), REGION0],
     ring(RingType.S2M, 0, offset=MiB - ring_bytes(10, 64) + 16), R, "Ring outside its region"),
    ("ring offset beyond region", [init(), REGION0], ring(RingType.S2M, 0, offset=2 * MiB), R,
     "Ring outside its region"),
    ("ring fd on connect", [init(), REGION0, S2M0, M2S0], (Connect("c"), 30, EVENTFD), R,
     "Unexpected fd"),
    # CONNECT
    ("rings packed with a 128-byte cacheline", [init(), REGION0, S2M0,
     ring(RingType.M2S, 0, offset=ring_bytes(10, 128))], (Connect("c"), None, None), R,
     "Ring stride suggests a 128-byte cacheline peer"),
    ("connect without rings", [init()], (Connect("c"), None, None), R,
     "At least one ring in each direction is required"),
    ("connect without m2s", [init(), REGION0, S2M0], (Connect("c"), None, None), R,
     "At least one ring in each direction is required"),
    ("connect without s2m", [init(), REGION0, M2S0], (Connect("c"), None, None), R,
     "At least one ring in each direction is required"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("steps", "bad", "exc_type", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in SERVER_FAILURES],
)
def test_server_validation_failures(
    steps: list[Step], bad: Step, exc_type: type[RemoteProtocolError], reason: str
) -> None:
    server = server_registry().server()
    for msg, fd, info in steps:
        assert server.receive(wire(msg), fd, info) == [SendMessage(Ack())]
    kept = list(server.received_fds)
    msg, fd, info = bad
    with pytest.raises(RemoteProtocolError) as exc_info:
        server.receive(wire(msg), fd, info)
    assert type(exc_info.value) is exc_type
    assert exc_info.value.reason == reason
    assert str(exc_info.value) == reason
    assert server.state is ServerState.CLOSED
    # The refused message's fd stays the caller's to close; accepted ones are still listed.
    assert server.received_fds == kept
    with pytest.raises(LocalProtocolError):
        server.receive(wire(msg), fd, info)


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([init(1, secret=b"anything")], id="no secret configured: any accepted"),
        pytest.param([init(2, secret=b"abc123")], id="right secret"),
        pytest.param([init(3, mode=Mode.IP)], id="ip mode matches"),
        pytest.param([init(5), (AddRegion(0, 1000), 10, region_info(1000))], id="exactly the cap"),
        pytest.param([init(), (AddRegion(0, MiB), 10, region_info(2 * MiB))], id="file larger"),
        pytest.param([init(), (AddRegion(0, MiB), 10, region_info(MiB, 0xF))], id="all seals"),
        pytest.param(
            [
                init(),
                (AddRegion(0, MiB), 10, region_file(MiB, 7)),
                (AddRegion(1, MiB), 11, region_file(MiB, 8)),
            ],
            id="two regions, two files",
        ),
        pytest.param(
            [init(), REGION0, ring(RingType.S2M, 0, offset=MiB - ring_bytes(10, 64))],
            id="ring ends at region end",
        ),
        pytest.param([init(), REGION0, ring(RingType.M2S, 0, log2_ring_size=14)], id="log2 14"),
        pytest.param(
            [
                init(6),
                REGION0,
                S2M0,
                ring(RingType.M2S, 0, offset=32768),
                ring(RingType.S2M, 1, offset=65536),
                ring(RingType.M2S, 1, offset=98304),
            ],
            id="interleaved directions",
        ),
    ],
)
def test_server_accepts(steps: list[Step]) -> None:
    server = server_registry().server()
    for msg, fd, info in steps:
        assert server.receive(wire(msg), fd, info) == [SendMessage(Ack())]
    assert server.state is ServerState.CONFIGURING


def test_server_connect_then_mapped() -> None:
    reg = server_registry()
    server = reg.server()
    for msg, fd, info in [init(6), REGION0, S2M0, M2S0]:
        server.receive(wire(msg), fd, info)
    assert server.receive(Connect("peer-if")) == [MapRegions("peer-if")]
    assert server.state is ServerState.MAPPING
    assert server.mapped() == [SendMessage(Connected("memif6")), Established("peer-if")]
    assert state_of(server) is ServerState.CONNECTED
    assert server.config is reg.interfaces[6]
    assert server.received_fds == [10, 20, 21]


def test_too_many_regions_after_256() -> None:
    server = server_registry().server()
    for msg, fd, info in many_regions():
        server.receive(msg, fd, info)
    assert len(server.regions) == 256
    with pytest.raises(RemoteProtocolError, match="Too many regions"):
        server.receive(AddRegion(256, 1), 9, region_info(1))


# --------------------------------------------------------------------------- transition tables

CLIENT_TABLE = {
    (ClientState.AWAIT_HELLO, MsgType.HELLO),
    (ClientState.AWAIT_ACK, MsgType.ACK),
    (ClientState.AWAIT_CONNECTED, MsgType.CONNECTED),
}
SERVER_TABLE = {
    (ServerState.AWAIT_INIT, MsgType.INIT),
    (ServerState.CONFIGURING, MsgType.ADD_REGION),
    (ServerState.CONFIGURING, MsgType.ADD_RING),
    (ServerState.CONFIGURING, MsgType.CONNECT),
    (ServerState.CONFIGURING, MsgType.ACK),  # a stray ACK is ignored, as reference servers do
}


def test_server_ignores_a_stray_ack_while_configuring() -> None:
    server = server_in(ServerState.CONFIGURING)
    assert server.receive(Ack()) == []
    assert server.state is ServerState.CONFIGURING
    with pytest.raises(RemoteProtocolError, match="Unexpected fd"):
        server.receive(Ack(), 99)
    assert server.state is ServerState.CLOSED  # type: ignore[comparison-overlap]  # receive() moved it


def test_tables_are_what_the_protocol_allows() -> None:
    assert set(ClientHandshake._table) == CLIENT_TABLE
    assert set(ServerHandshake._table) == SERVER_TABLE


def client_in(state: ClientState) -> ClientHandshake:
    """A client driven by well-formed input into ``state``."""
    client = ClientHandshake(InterfaceConfig(interface_name="cli"))
    if state is ClientState.AWAIT_HELLO:
        return client
    (ready,) = client.receive(Hello())
    assert isinstance(ready, HelloReceived)
    if state is ClientState.PREPARING:
        return client
    layout = plan_client_layout(ready.n_s2m, ready.n_m2s, ready.log2_ring_size, 2048, 64)
    client.begin(layout, [10], [20, 21])
    if state is ClientState.AWAIT_ACK:
        return client
    for _ in range(4):  # INIT, ADD_REGION, two ADD_RINGs acknowledged; CONNECT sent
        client.receive(Ack())
    assert client.state is ClientState.AWAIT_CONNECTED
    if state is ClientState.AWAIT_CONNECTED:
        return client
    client.receive(Connected("srv"))
    assert state_of(client) is state is ClientState.CONNECTED
    return client


def server_in(state: ServerState) -> ServerHandshake:
    """A server driven by well-formed input into ``state``."""
    server = server_registry().server()
    if state is ServerState.AWAIT_INIT:
        return server
    for msg, fd, info in [init(6), REGION0, S2M0, M2S0]:
        server.receive(msg, fd, info)
    if state is ServerState.CONFIGURING:
        return server
    server.receive(Connect("cli"))
    if state is ServerState.MAPPING:
        return server
    server.mapped()
    assert server.state is state is ServerState.CONNECTED
    return server


u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
short = st.text(st.characters(codec="ascii", exclude_characters="\0"), max_size=31)
non_disconnect: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ack),
    st.builds(Hello, name=short, min_version=u16, max_version=u16, max_region=u16,
              max_m2s_ring=u16, max_s2m_ring=u16, max_log2_ring_size=u8),
    st.builds(Init, version=u16, interface_id=u32, mode=u8, name=short),
    st.builds(AddRegion, index=u16, size=st.integers(0, 1 << 40)),
    st.builds(AddRing, ring_type=st.sampled_from(RingType), index=u16, region=u16,
              offset=u32, log2_ring_size=u8, private_hdr_size=u16),
    st.builds(Connect, if_name=short),
    st.builds(Connected, if_name=short),
)  # fmt: skip
OPEN_CLIENT_STATES = [s for s in ClientState if s is not ClientState.CLOSED]
OPEN_SERVER_STATES = [s for s in ServerState if s is not ServerState.CLOSED]
fds = st.one_of(st.none(), st.integers(3, 5000))


def _check_unexpected(
    machine: ClientHandshake | ServerHandshake,
    state: ClientState | ServerState,
    msg: Message,
    fd: int | None,
    closed: ClientState | ServerState,
) -> None:
    before = list(machine.received_fds) if isinstance(machine, ServerHandshake) else []
    with pytest.raises(RemoteProtocolError) as info:
        machine.receive(wire(msg), fd, info_for(msg) if fd is not None else None)
    assert type(info.value) is RemoteProtocolError
    assert info.value.reason == "Unexpected message"
    assert machine.state is closed
    if isinstance(machine, ServerHandshake):
        assert machine.received_fds == before  # a refused fd is never kept
    with pytest.raises(LocalProtocolError):
        machine.receive(wire(msg), fd)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(OPEN_CLIENT_STATES), non_disconnect, fds)
def test_client_unexpected_messages(state: ClientState, msg: Message, fd: int | None) -> None:
    if (state, msg.type) in CLIENT_TABLE:
        return
    _check_unexpected(client_in(state), state, msg, fd, ClientState.CLOSED)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(OPEN_SERVER_STATES), non_disconnect, fds)
def test_server_unexpected_messages(state: ServerState, msg: Message, fd: int | None) -> None:
    if (state, msg.type) in SERVER_TABLE:
        return
    _check_unexpected(server_in(state), state, msg, fd, ServerState.CLOSED)


@pytest.mark.parametrize("state", OPEN_CLIENT_STATES, ids=lambda s: s.name)
@pytest.mark.parametrize("t", [t for t in MsgType if t not in (MsgType.NONE, MsgType.DISCONNECT)],
                         ids=lambda t: t.name)  # fmt: skip
def test_client_state_message_grid(state: ClientState, t: MsgType) -> None:
    """Exhaustive companion of the Hypothesis test: every pair, fixed field values."""
    if (state, t) in CLIENT_TABLE:
        return
    _check_unexpected(client_in(state), state, SAMPLE[t], None, ClientState.CLOSED)


@pytest.mark.parametrize("state", OPEN_SERVER_STATES, ids=lambda s: s.name)
@pytest.mark.parametrize("t", [t for t in MsgType if t not in (MsgType.NONE, MsgType.DISCONNECT)],
                         ids=lambda t: t.name)  # fmt: skip
def test_server_state_message_grid(state: ServerState, t: MsgType) -> None:
    if (state, t) in SERVER_TABLE:
        return
    _check_unexpected(server_in(state), state, SAMPLE[t], None, ServerState.CLOSED)


SAMPLE: dict[MsgType, Message] = {
    MsgType.ACK: Ack(),
    MsgType.HELLO: Hello(),
    MsgType.INIT: Init(interface_id=6),
    MsgType.ADD_REGION: AddRegion(0, MiB),
    MsgType.ADD_RING: AddRing(RingType.S2M, 0, 0, 0, 10),
    MsgType.CONNECT: Connect("x"),
    MsgType.CONNECTED: Connected("y"),
}


# --------------------------------------------------------------------------- DISCONNECT

reasons = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=40).filter(
    lambda s: len(s.encode()) <= 95
)


def _check_disconnect(
    machine: ClientHandshake | ServerHandshake, reason: str, up: bool, closed: object
) -> None:
    with pytest.raises(PeerDisconnectedError) as info:
        machine.receive(wire(Disconnect(reason)))
    if up:
        assert type(info.value) is PeerDisconnectedError
    else:
        assert type(info.value) is HandshakeRefusedError
    assert info.value.reason == reason
    assert machine.state is closed


@FAST
@given(st.sampled_from(OPEN_CLIENT_STATES), reasons)
def test_client_disconnect_in_any_state(state: ClientState, reason: str) -> None:
    _check_disconnect(client_in(state), reason, state is ClientState.CONNECTED, ClientState.CLOSED)


@FAST
@given(st.sampled_from(OPEN_SERVER_STATES), reasons)
def test_server_disconnect_in_any_state(state: ServerState, reason: str) -> None:
    _check_disconnect(server_in(state), reason, state is ServerState.CONNECTED, ServerState.CLOSED)


@pytest.mark.parametrize(
    ("reason", "make"),
    [
        ("Incorrect secret", lambda: client_in(ClientState.AWAIT_ACK)),
        ("ID not found", lambda: client_in(ClientState.AWAIT_ACK)),
        ("Only ethernet mode supported", lambda: client_in(ClientState.AWAIT_ACK)),
        ("Incompatible memif version", lambda: client_in(ClientState.AWAIT_HELLO)),
    ],
)
def test_refusals_carry_the_peer_reason(reason: str, make: Callable[[], ClientHandshake]) -> None:
    client = make()
    with pytest.raises(HandshakeRefusedError, match=reason) as info:
        client.receive(wire(Disconnect(reason)))
    assert info.value.reason == reason


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("received", "configured", "ok"),
    [
        (b"abc123", b"abc123", True),
        (b"abc123\0", b"abc123", True),
        (b"abc123\0junk after the nul", b"abc123", True),
        (b"abc123" + bytes(18), b"abc123", True),
        (b"abc12", b"abc123", False),
        (b"abc1234", b"abc123", False),
        (b"ABC123", b"abc123", False),
        (b"", b"abc123", False),
        (b"\0abc123", b"abc123", False),
        (b"", b"", True),
        (b"\0junk", b"", True),
        (b"x" * 23, b"x" * 23, True),
        (b"x" * 23 + b"\0yyyy", b"x" * 23, True),
        (b"x" * 24, b"x" * 23, False),  # an unterminated 24th byte is part of the string
        (b"x" * 24 + b"zzz", b"x" * 24, True),  # only 24 bytes are ever compared
    ],
)
def test_check_secret_c_string_semantics(received: bytes, configured: bytes, ok: bool) -> None:
    assert check_secret(received, configured) is ok


secret_bytes = st.binary(max_size=23).filter(lambda b: b"\0" not in b)


@FAST
@given(secret_bytes, secret_bytes, st.binary(max_size=30))
def test_check_secret_matches_c_string_equality(a: bytes, b: bytes, junk: bytes) -> None:
    assert check_secret(a + b"\0" + junk, b) is (a == b)
    assert check_secret(a, b) is (a == b)
    assert check_secret(a, a) is True
