"""The peer that the storm kills and the soak talks to, run as a child process.

::

    python -m aiomemif.testing.child_peer --role client --socket @x --scenario step:3
    python -m aiomemif.testing.child_peer --role server --socket @x --scenario chain

``--role`` is this process's role (its parent plays the other one). Scenarios:

- ``step:K``: speak the handshake over a plain blocking socket, driving aiomemif's sans-IO
  handshake machine by hand, and stop for good at step ``K`` (0 is "connected" or
  "accepted"; every message sent or received is one more step, :data:`HANDSHAKE_STEPS` in
  all for one queue each way). The client builds real shared memory, so a server that
  gets as far as CONNECT maps valid rings; the server never maps the client's memory.
- ``burst``: connect (or accept) with aiomemif, then send 64-byte numbered frames as fast
  as the ring allows while checking every frame received, until killed.
- ``chain``: the same with 9000-byte frames in 2048-byte buffers (chains of five).
- ``echo``: a server that sends every packet back on the queue it came from, for any
  number of connections one after the other, until killed or SIGTERM.

It says where it is in lines on stdout: ``listening`` (a server, once its socket listens),
``paused K WHAT`` (``step:K`` reached its step), ``up`` (a link is up), ``error TEXT``
(something is wrong: a bad frame, an unexpected failure). ``--parent PID`` makes it die
with that process (``PR_SET_PDEATHSIG``), and exit at once if it is gone already.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from typing import Final, NoReturn

from .. import Connection, InterfaceConfig, connect, serve
from .._aio.client import _Memory
from .._core.handshake import (
    ClientHandshake,
    Established,
    HelloReceived,
    MapRegions,
    Output,
    SendMessage,
    ServerHandshake,
)
from .._core.layout import plan_client_layout
from .._core.messages import Message, decode_untrusted, encode
from .._os.channel import parse_address
from .._os.fds import describe_fd
from ..errors import DisconnectedError, MemifError
from .frames import check_frame, frame

__all__ = ["BUFFER_SIZE", "HANDSHAKE_STEPS", "SCENARIOS", "main"]

#: Steps of a handshake with one queue each way, the same count in either role: connected
#: (accepted), then HELLO, INIT, ACK, ADD_REGION, ACK, ADD_RING, ACK, ADD_RING, ACK,
#: CONNECT and CONNECTED, each sent by one side and received by the other.
HANDSHAKE_STEPS: Final = 12
#: The buffer size both ends use (a 9000-byte frame takes five buffers).
BUFFER_SIZE: Final = 2048
#: Scenarios besides ``step:K``, and the size of the frames each one sends.
SCENARIOS: Final = {"burst": 64, "chain": 9000, "echo": 0}
_PR_SET_PDEATHSIG: Final = 1
_BATCH: Final = 32


def say(line: str) -> None:
    """One status line on stdout, flushed at once (the parent reads it while we run)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _die_with(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def config(app_name: str = "aiomemif") -> InterfaceConfig:
    """The interface both ends of a storm or soak link use."""
    return InterfaceConfig(interface_id=0, buffer_size=BUFFER_SIZE, app_name=app_name)


def _name() -> str:
    """The app name a child announces: its parent tells its links apart by it."""
    return f"storm-peer-{os.getpid()}"


# ------------------------------------------------------------------ stepped handshake


class _Steps:
    """Counts handshake steps and stops the process for good at step ``stop_at``."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at = stop_at
        self.done = 0

    def at(self, what: str) -> None:
        if self.done == self.stop_at:
            say(f"paused {self.done} {what}")
            while True:  # until the parent kills us
                signal.pause()
        self.done += 1


def _send(sock: socket.socket, out: SendMessage) -> None:
    anc = []
    if out.fd is not None:
        anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [out.fd]).tobytes()))
    sock.sendmsg([encode(out.message)], anc)


def _recv(sock: socket.socket) -> tuple[Message, int | None]:
    data, anc, _flags, _ = sock.recvmsg(256, socket.CMSG_SPACE(16))
    if not data:
        raise EOFError("the peer closed the socket")
    fds = array.array("i")
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return decode_untrusted(data), (fds[0] if fds else None)


def _stepped_client(address: str, steps: _Steps) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.connect(parse_address(address))
    steps.at("connected")
    cfg = config(_name())
    machine = ClientHandshake(cfg)
    while True:
        msg, _fd = _recv(sock)
        steps.at(f"received {msg.type.name}")
        outputs: list[Output] = machine.receive(msg)
        while outputs:
            out = outputs.pop(0)
            if isinstance(out, HelloReceived):
                layout = plan_client_layout(
                    out.n_s2m, out.n_m2s, out.log2_ring_size,
                    cfg.buffer_size, cfg.cacheline, cfg.layout,
                )  # fmt: skip
                memory = _Memory(layout)  # kept until we are killed
                region_fds = [r.fd for r in memory.regions]
                outputs += machine.begin(layout, region_fds, [e.fd for e in memory.efds])
            elif isinstance(out, SendMessage):
                _send(sock, out)
                steps.at(f"sent {out.message.type.name}")
            elif isinstance(out, Established):
                say(f"error the handshake ended after {steps.done} steps")
                return


def _stepped_server(address: str, steps: _Steps) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    listener.bind(parse_address(address))
    listener.listen(4)
    say("listening")
    sock, _ = listener.accept()
    steps.at("accepted")
    cfg = config(_name())
    machine = ServerHandshake(lambda i: cfg if i == 0 else None, lambda i: False, _name())
    outputs: list[Output] = [machine.hello()]
    while True:
        while outputs:
            out = outputs.pop(0)
            if isinstance(out, SendMessage):
                _send(sock, out)
                steps.at(f"sent {out.message.type.name}")
            elif isinstance(out, MapRegions):
                outputs += machine.mapped()  # never mapped: we only answer CONNECTED
            elif isinstance(out, Established):
                say(f"error the handshake ended after {steps.done} steps")
                return
        msg, fd = _recv(sock)
        steps.at(f"received {msg.type.name}")
        outputs = machine.receive(msg, fd, None if fd is None else describe_fd(fd))


# ---------------------------------------------------------------------------- traffic


async def _send_frames(conn: Connection, size: int) -> None:
    tx = conn.tx_queues[0]
    seq = 0
    while True:
        await tx.send_batch([frame(seq + i, size) for i in range(_BATCH)])
        seq += _BATCH


async def _check_frames(conn: Connection) -> None:
    seq = 0
    async for batch in conn.rx_queues[0]:
        for pkt in batch:
            problem = check_frame(bytes(pkt), seq)
            if problem is not None:
                say(f"error {problem}")
                return
            seq += 1


async def _traffic(conn: Connection, size: int) -> None:
    say("up")
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_send_frames(conn, size))
            tasks.create_task(_check_frames(conn))
    except* DisconnectedError:
        say("error the parent ended the link")
    except* MemifError as group:
        say(f"error {group.exceptions[0]!r}")


async def _reflect(conn: Connection) -> None:
    say("up")
    with contextlib.suppress(MemifError):
        async for batch in conn.rx_queues[0]:
            await conn.tx_queues[0].send_batch(batch)


async def _serve(address: str, scenario: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    handler = _reflect if scenario == "echo" else None
    async with serve(address, [config()], app_name=_name(), handler=handler) as server:
        say("listening")
        if handler is not None:
            await stop.wait()
            return
        async with await server.accept() as conn:
            await _traffic(conn, SCENARIOS[scenario])


async def _connect(address: str, scenario: str) -> None:
    async with connect(address, config(_name())) as conn:
        await _traffic(conn, SCENARIOS[scenario])


def _fail(text: str) -> NoReturn:
    say(f"error {text}")
    sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    """Run one child peer (see the module docstring); the exit status.

    Raises:
        SystemExit: bad options (status 2).
    """
    parser = argparse.ArgumentParser(prog="python -m aiomemif.testing.child_peer")
    parser.add_argument("--role", choices=("client", "server"), required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--scenario", required=True, help="step:K, burst, chain or echo")
    parser.add_argument("--parent", type=int, help="die with this process")
    args = parser.parse_args(argv)
    if args.parent is not None:
        _die_with(args.parent)
    scenario: str = args.scenario
    try:
        if scenario.startswith("step:"):
            steps = _Steps(int(scenario[5:]))
            (_stepped_client if args.role == "client" else _stepped_server)(args.socket, steps)
            return 1
        if scenario not in SCENARIOS or (scenario == "echo" and args.role != "server"):
            parser.error(f"unknown scenario {scenario!r} for a {args.role}")
        run = _connect if args.role == "client" else _serve
        asyncio.run(run(args.socket, scenario))
    except (MemifError, OSError, EOFError, ValueError) as exc:
        _fail(f"{type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
