"""Fuzz target: the control channel, through the real decoder into both handshake machines.

Input: three configuration bytes (bit 0 of the first: 0 runs the server's machine, 1 the
client's; the other bits pick secrets, mode, queue counts, ring and region limits), then
records of one fd-kind byte and one 128-byte message (a shorter last one reaches the size
check). Each record is decoded with ``decode_untrusted`` and fed to the machine with a
real fd of that kind, described by ``describe_fd`` as the I/O layer does: none, a memfd
sealed against shrinking at the announced size or one byte under it, an unsealed memfd, a
dup of an earlier region fd (the same file twice), an eventfd, an ``EFD_SEMAPHORE``
eventfd, a pipe. The target plays the I/O layer: it answers ``MapRegions`` with
``mapped()`` and ``HelloReceived`` with a layout and ``begin()``, and closes what it owns.

Checked on every input:

- ``receive``, ``begin`` and ``mapped`` raise only what they document, and an error
  leaves the machine closed;
- every message a machine sends encodes, and decodes back to itself;
- fds: the server's machine holds exactly the fds of the ADD_REGION / ADD_RING messages
  it accepted, each once and still open, never one of a message it refused; once the
  target has closed those, every fd the input made is closed;
- what the server accepted obeys its rules (README "Protocol notes"): sequential indexes,
  regions of sealed regular files large enough, no file twice, at most
  ``max_region_bytes``; rings inside their region, 16-byte aligned, not overlapping,
  within the interface's queue counts, on counter-mode eventfds, both directions at
  CONNECT; at most 256 regions;
- the client clamps HELLO's maxima as documented, and sends INIT, its regions and rings
  (with exactly the fds given to ``begin``, each once) and CONNECT, one message per ACK.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: import from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attrs

from aiomemif._core import wire as w
from aiomemif._core.config import InterfaceConfig
from aiomemif._core.handshake import (
    ClientHandshake,
    ClientState,
    Established,
    HelloReceived,
    MapRegions,
    Output,
    SendMessage,
    ServerHandshake,
    ServerState,
)
from aiomemif._core.layout import ClientLayout, RegionLayout, plan_client_layout, ring_bytes
from aiomemif._core.messages import (
    Ack,
    AddRegion,
    AddRing,
    Connect,
    Init,
    Message,
    decode_untrusted,
    encode,
)
from aiomemif._os.fds import describe_fd
from aiomemif.errors import PeerDisconnectedError, RemoteProtocolError
from fuzz.harness import Finding, Reader, attempt, check, main

#: The fd kinds of a record (its first byte, modulo 8).
NO_FD, SEALED, SEALED_SHORT, UNSEALED, SAME_FILE, EVENTFD, SEMAPHORE, PIPE = range(8)
#: memfds are made at most this large (sparse); larger announced sizes get a short file.
MEMFD_MAX = 1 << 30
#: The client's own fds, given to ``begin``: plain numbers (the machine never uses them).
CLIENT_FDS = 1 << 24
SECRETS = (None, b"abc123", b"s" * w.SECRET_MAX_CHARS, None)
#: Interface ids the server knows (tests/data's INITs name 3 and 7).
SERVER_IDS = (0, 3, 7)
#: What a server may receive: receive() documents these (LocalProtocolError only once the
#: machine is closed, which the target never feeds).
RECEIVE_ERRORS = (RemoteProtocolError, PeerDisconnectedError)


@attrs.frozen
class _Fd:
    """What the target made: its kind, file size, and which file (dups share it)."""

    kind: int
    size: int = 0
    file: int = 0


class _Fds:
    """The fds one input made, and which of them are still open."""

    def __init__(self) -> None:
        self.facts: dict[int, _Fd] = {}
        self.open: set[int] = set()
        self._files = 0
        self._last_memfd: int | None = None

    def make(self, kind: int, raw: bytes) -> int | None:
        """A new fd of ``kind`` for a message whose raw bytes are ``raw`` (None: no fd)."""
        if kind == NO_FD:
            return None
        if kind == SAME_FILE and self._last_memfd in self.open:
            assert self._last_memfd is not None
            fd = os.dup(self._last_memfd)
            return self._add(fd, self.facts[self._last_memfd])
        if kind in (SEALED, SEALED_SHORT, UNSEALED, SAME_FILE):
            announced = int.from_bytes(raw[4:12], "little") if len(raw) >= 12 else 0
            size = min(announced - (kind == SEALED_SHORT), MEMFD_MAX)
            fd = os.memfd_create("fuzz", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, max(size, 0))
            if kind != UNSEALED:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
            self._files += 1
            self._last_memfd = fd
            return self._add(
                fd, _Fd(SEALED if kind == SAME_FILE else kind, max(size, 0), self._files)
            )
        if kind in (EVENTFD, SEMAPHORE):
            flags = (
                os.EFD_CLOEXEC | os.EFD_NONBLOCK | (os.EFD_SEMAPHORE if kind == SEMAPHORE else 0)
            )
            return self._add(os.eventfd(0, flags), _Fd(kind))
        r, wr = os.pipe2(os.O_CLOEXEC)
        os.close(wr)
        return self._add(r, _Fd(PIPE))

    def _add(self, fd: int, fact: _Fd) -> int:
        check(fd not in self.open, f"fd {fd} is open twice")
        self.facts[fd] = fact
        self.open.add(fd)
        return fd

    def close(self, fd: int) -> None:
        check(fd in self.open, f"fd {fd} closed twice (or never made by the target)")
        self.open.discard(fd)
        os.close(fd)

    def close_all(self) -> None:
        for fd in list(self.open):
            self.close(fd)


def _sent(out: Output) -> Message | None:
    """The message of a SendMessage output (checked to encode and decode back), else None."""
    if not isinstance(out, SendMessage):
        return None
    raw = encode(out.message)
    check(len(raw) == w.MSG_SIZE, f"{out.message!r} encodes to {len(raw)} bytes")
    back = decode_untrusted(raw)
    check(back == out.message, f"{out.message!r} decodes back as {back!r}")
    return out.message


def one_input(data: bytes) -> None:
    r = Reader(data)
    cfg = r.take(3).ljust(3, b"\0")
    fds = _Fds()
    try:
        if cfg[0] & 1:
            _client(r, cfg, fds)
        else:
            _server(r, cfg, fds)
    finally:
        leaked = sorted(fds.open)
        fds.close_all()
    check(not leaked, f"fds left open after the session: {leaked}")


def _records(r: Reader) -> list[tuple[int, bytes]]:
    out = []
    while r.left():
        kind = r.byte() & 7
        out.append((kind, r.take(w.MSG_SIZE)))
    return out


# ------------------------------------------------------------------------------- server


def _server_config(cfg: bytes, interface_id: int) -> InterfaceConfig:
    return InterfaceConfig(
        interface_id=interface_id,
        secret=SECRETS[(cfg[0] >> 1) & 3],
        mode=(cfg[0] >> 4) % 3,
        cacheline=128 if cfg[0] & 0x40 else 64,
        rx_queue_count=256 if cfg[1] & 15 == 15 else 1 + (cfg[1] & 15),
        tx_queue_count=256 if cfg[1] >> 4 == 15 else 1 + (cfg[1] >> 4),
        max_region_bytes=(1 << 12) << (cfg[2] % 24),
    )


def _server(r: Reader, cfg: bytes, fds: _Fds) -> None:
    interfaces = {i: _server_config(cfg, i) for i in SERVER_IDS}
    busy = bool(cfg[0] & 8)
    machine = ServerHandshake(interfaces.get, lambda _id: busy, "fuzz")
    _sent(machine.hello())
    try:
        for kind, raw in _records(r):
            fd = fds.make(kind, raw)
            if not _server_step(machine, interfaces, fds, fd, raw):
                break
    finally:
        held = machine.received_fds
        check(len(set(held)) == len(held), f"the machine holds an fd twice: {held}")
        for fd in held:
            check(fd in fds.open, f"the machine holds fd {fd}, which is not open")
            fds.close(fd)


def _server_step(
    machine: ServerHandshake,
    interfaces: dict[int, InterfaceConfig],
    fds: _Fds,
    fd: int | None,
    raw: bytes,
) -> bool:
    """One record; False when the session ends (the caller closes what the machine holds)."""
    msg = attempt((RemoteProtocolError,), decode_untrusted, raw)
    if isinstance(msg, RemoteProtocolError):
        if fd is not None:
            fds.close(fd)
        return False
    held_before = machine.received_fds
    info = describe_fd(fd) if fd is not None else None
    outputs = attempt(RECEIVE_ERRORS, machine.receive, msg, fd, info)
    if isinstance(outputs, Exception):
        check(machine.state is ServerState.CLOSED, f"{outputs!r} left state {machine.state}")
        check(machine.received_fds == held_before, "a refused message changed the held fds")
        if fd is not None:
            fds.close(fd)  # the caller closes the fd of a refused message
        return False
    if fd is not None:
        check(isinstance(msg, AddRegion | AddRing), f"{msg!r} accepted with an fd")
        held = sorted(machine.received_fds)
        check(held == sorted([*held_before, fd]), f"accepted fd {fd}: the machine holds {held}")
    else:
        check(machine.received_fds == held_before, f"{msg!r} without an fd changed the fds")
    assert machine.config is not None
    _check_server(machine, fds)
    while outputs:
        out = outputs.pop(0)
        sent = _sent(out)
        if sent is not None:
            check(isinstance(out, SendMessage) and out.fd is None, "the server sent an fd")
        elif isinstance(out, MapRegions):
            check(isinstance(msg, Connect), f"MapRegions after {msg!r}")
            _check_server(machine, fds, connecting=True)
            more = attempt((), machine.mapped)
            assert not isinstance(more, Exception)
            outputs += more
        elif isinstance(out, Established):
            check(machine.state is ServerState.CONNECTED, f"established in {machine.state}")
        else:
            raise Finding(f"unexpected server output {out!r}")
    return True


def _check_server(machine: ServerHandshake, fds: _Fds, connecting: bool = False) -> None:
    """What the server's machine accepted so far obeys the rules it claims."""
    cfg = machine.config
    assert cfg is not None
    regions, rings = machine.regions, machine.rings
    check(len(regions) <= w.MAX_REGION_INDEX + 1, f"{len(regions)} regions")
    files = set()
    for i, reg in enumerate(regions):
        fact = fds.facts[reg.fd]
        check(reg.index == i and reg.size > 0, f"region {i}: {reg!r}")
        check(fact.kind == SEALED and fact.size >= reg.size, f"region {i} on {fact!r}")
        check(fact.file not in files, f"region {i} is a file already taken")
        files.add(fact.file)
    total = sum(reg.size for reg in regions)
    check(total <= cfg.max_region_bytes, f"{total} region bytes > {cfg.max_region_bytes}")
    limits = {w.RingType.S2M: cfg.rx_queue_count, w.RingType.M2S: cfg.tx_queue_count}
    for rtype, limit in limits.items():
        mine = [ring for ring in rings if ring.ring_type == rtype]
        check([ring.index for ring in mine] == list(range(len(mine))), f"{rtype!r} indexes")
        check(len(mine) <= limit, f"{len(mine)} {rtype.name} rings > {limit}")
        check(not connecting or bool(mine), f"CONNECT accepted without a {rtype.name} ring")
    spans: list[tuple[int, int, int]] = []
    for ring in rings:
        fact = fds.facts[ring.fd]
        check(fact.kind == EVENTFD, f"ring {ring!r} on {fact!r}")
        check(ring.log2_ring_size <= w.MAX_LOG2_RING_SIZE, f"ring {ring!r} too large")
        check(ring.region < len(regions), f"ring {ring!r} names no region")
        end = ring.offset + ring_bytes(ring.log2_ring_size, cfg.cacheline)
        check(ring.offset % w.RING_OFFSET_ALIGN == 0, f"ring {ring!r} misaligned")
        check(end <= regions[ring.region].size, f"ring {ring!r} outside its region")
        for region, start, stop in spans:
            check(region != ring.region or stop <= ring.offset or end <= start, "rings overlap")
        spans.append((ring.region, ring.offset, end))


# ------------------------------------------------------------------------------- client


def _client_config(cfg: bytes) -> InterfaceConfig:
    return InterfaceConfig(
        interface_id=int.from_bytes(cfg[1:3], "little"),
        secret=SECRETS[(cfg[0] >> 1) & 3],
        mode=(cfg[0] >> 4) % 3,
        cacheline=128 if cfg[0] & 0x40 else 64,
        layout=RegionLayout.SPLIT if cfg[0] & 0x80 else RegionLayout.SINGLE,
        rx_queue_count=1 + (cfg[1] & 7),
        tx_queue_count=1 + (cfg[1] >> 5),
        ring_size=1 << (1 + cfg[2] % w.MAX_LOG2_RING_SIZE),
        buffer_size=64 << (cfg[2] >> 6),
    )


def _expected(cfg: InterfaceConfig, layout: ClientLayout) -> list[tuple[Message, int | None]]:
    """What a client sends after HELLO, in order: INIT, regions, rings, CONNECT."""
    out: list[tuple[Message, int | None]] = [
        (Init(interface_id=cfg.interface_id, mode=cfg.mode, secret=cfg.secret_bytes,
              name=cfg.app_name), None),
    ]  # fmt: skip
    for i, size in enumerate(layout.region_sizes):
        out.append((AddRegion(i, size), CLIENT_FDS + i))
    for j, ring in enumerate(layout.rings):
        msg = AddRing(ring.ring_type, ring.index, ring.region, ring.offset, layout.log2_ring_size)
        out.append((msg, CLIENT_FDS + len(layout.region_sizes) + j))
    out.append((Connect(cfg.if_name), None))
    return out


def _client(r: Reader, cfg: bytes, fds: _Fds) -> None:
    config = _client_config(cfg)
    machine = ClientHandshake(config)
    sent: list[tuple[Message, int | None]] = []
    expected: list[tuple[Message, int | None]] | None = None
    for kind, raw in _records(r):
        fd = fds.make(kind, raw)
        try:
            msg = attempt((RemoteProtocolError,), decode_untrusted, raw)
            if isinstance(msg, RemoteProtocolError):
                return
            info = describe_fd(fd) if fd is not None else None
            outputs = attempt(RECEIVE_ERRORS, machine.receive, msg, fd, info)
        finally:
            if fd is not None:
                fds.close(fd)  # a client keeps no fd it receives
        if isinstance(outputs, Exception):
            check(machine.state is ClientState.CLOSED, f"{outputs!r} left {machine.state}")
            return
        if isinstance(msg, Ack):
            check(len(outputs) == 1 and isinstance(outputs[0], SendMessage), "one per ACK")
        while outputs:
            out = outputs.pop(0)
            message = _sent(out)
            if message is not None:
                assert isinstance(out, SendMessage)
                sent.append((message, out.fd))
                check(expected is not None and sent == expected[: len(sent)], f"sent {out!r}")
            elif isinstance(out, HelloReceived):
                layout = _on_hello(config, out)
                expected = _expected(config, layout)
                nreg = len(layout.region_sizes)
                region_fds = [CLIENT_FDS + i for i in range(nreg)]
                ring_fds = [CLIENT_FDS + nreg + j for j in range(len(layout.rings))]
                more = attempt((), machine.begin, layout, region_fds, ring_fds)
                assert not isinstance(more, Exception)
                outputs += more
            elif isinstance(out, Established):
                check(machine.state is ClientState.CONNECTED, f"established in {machine.state}")
                check(sent == expected, "established before everything was sent")
            else:
                raise Finding(f"unexpected client output {out!r}")


def _on_hello(cfg: InterfaceConfig, out: HelloReceived) -> ClientLayout:
    """Check HELLO's clamping (README "Protocol notes") and plan the layout."""
    hello = out.hello
    check(hello.min_version <= w.PROTOCOL_VERSION <= hello.max_version, "HELLO version")
    check(out.n_s2m == min(hello.max_s2m_ring + 1, cfg.tx_queue_count), "S2M rings")
    check(out.n_m2s == min(hello.max_m2s_ring + 1, cfg.rx_queue_count), "M2S rings")
    check(out.log2_ring_size == min(hello.max_log2_ring_size, cfg.log2_ring_size), "log2")
    return plan_client_layout(
        out.n_s2m, out.n_m2s, out.log2_ring_size, cfg.buffer_size, cfg.cacheline, cfg.layout
    )


if __name__ == "__main__":
    main(one_input)
