"""``aiomemif loopback``: a server and a client in one process, traffic checked both ways."""

from __future__ import annotations

import argparse
import asyncio
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import Connection, InterfaceConfig, RxQueue, TxQueue, __version__, connect, serve
from ..errors import ConfigurationError
from .common import UsageError, packet_size, positive, print_json

__all__ = ["register", "run"]

_SEQ = struct.Struct("<I")

LOOPBACK_EPILOG = """\
examples:
  aiomemif loopback                       1000 packets of 64 bytes each way
  aiomemif loopback --count 100000 --size 1500 --queues 2
  aiomemif loopback --json                machine-readable summary

Exit status 0 when every packet arrived intact, 1 when one did not or a send failed (for
example a packet that needs more buffers than the ring has), 2 for bad options, 130 on
Ctrl-C, 143 on SIGTERM.
"""


_PATTERN = bytes(range(256)) * 260  # 66560 bytes: any start below 256 plus 65535 fits


def _payload(seq: int, size: int) -> bytes:
    """Packet ``seq``: a 4-byte sequence number, then a pattern that depends on it."""
    start = seq & 0xFF
    return (_SEQ.pack(seq) + _PATTERN[start : start + max(0, size - 4)])[:size]


async def _pump(tx: TxQueue, rx: RxQueue, seqs: range, size: int) -> tuple[int, int]:
    """Send ``seqs`` on ``tx`` while receiving them on ``rx``; return (received, bad).

    Raises:
        MemifError: what sending or receiving raised (the other side is then stopped).
    """
    expected = {s: _payload(s, size) for s in seqs}

    async def sender() -> None:
        batch: list[bytes] = []
        for s in seqs:
            batch.append(expected[s])
            if len(batch) == 32:
                await tx.send_batch(batch)
                batch = []
        if batch:
            await tx.send_batch(batch)

    counts = [0, 0]  # received, bad

    async def receiver() -> None:
        while counts[0] < len(seqs):
            batch = await rx.receive()
            for pkt in batch:
                data = bytes(pkt)
                seq = _SEQ.unpack_from(data)[0] if len(data) >= 4 else -1
                if expected.get(seq) != data:
                    counts[1] += 1
                counts[0] += 1
            batch.release()

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(sender()), loop.create_task(receiver())]
    try:
        # Either failing ends both: a sender that cannot send leaves nothing to receive.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done():
                task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return counts[0], counts[1]


async def _both_ways(
    client: Connection, server: Connection, count: int, size: int
) -> dict[str, Any]:
    queues = min(len(client.tx_queues), len(server.rx_queues))
    per_queue = [range(q * count // queues, (q + 1) * count // queues) for q in range(queues)]
    result: dict[str, Any] = {}
    for label, src, dst in (
        ("client_to_server", client, server),
        ("server_to_client", server, client),
    ):
        t0 = time.perf_counter()
        outcomes = await asyncio.gather(
            *(_pump(src.tx_queues[q], dst.rx_queues[q], per_queue[q], size) for q in range(queues))
        )
        elapsed = time.perf_counter() - t0
        received = sum(r for r, _ in outcomes)
        bad = sum(b for _, b in outcomes)
        result[label] = {
            "sent": count,
            "received": received,
            "corrupt": bad,
            "seconds": round(elapsed, 6),
            "packets_per_second": round(received / elapsed) if elapsed else 0,
        }
    return result


async def _loopback(args: argparse.Namespace) -> int:
    try:
        cfg = InterfaceConfig(
            interface_id=args.id,
            rx_queue_count=args.queues,
            tx_queue_count=args.queues,
            ring_size=args.ring_size,
            buffer_size=args.buffer_size,
        )
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="aiomemif-") as tmp:
        path = str(Path(tmp) / "loopback.sock")
        async with serve(path, [cfg], app_name="aiomemif-loopback") as srv:
            async with connect(path, cfg) as client:
                server = await asyncio.wait_for(srv.accept(), cfg.handshake_timeout)
                async with server:
                    result = await _both_ways(client, server, args.count, args.size)
                    result["client_details"] = client.details().as_dict()
                    result["server_details"] = server.details().as_dict()
    ok = all(
        result[k]["received"] == args.count and result[k]["corrupt"] == 0
        for k in ("client_to_server", "server_to_client")
    )
    result["ok"] = ok
    if args.json:
        print_json(args, result)
    else:
        _print_loopback(result, args)
    return 0 if ok else 1


def _print_loopback(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"aiomemif {__version__} loopback: {args.count} packets of {args.size} bytes each way, "
          f"{args.queues} queue(s)")  # fmt: skip
    for label in ("client_to_server", "server_to_client"):
        r = result[label]
        print(
            f"  {label.replace('_', ' '):17} sent {r['sent']:>9}  received {r['received']:>9}  "
            f"corrupt {r['corrupt']}  {r['packets_per_second']:>10,} packets/s"
        )
    for role in ("client", "server"):
        d = result[f"{role}_details"]
        print(
            f"  {role} details: interface {d['interface_name']!r} "
            f"(peer {d['peer_interface_name']!r}, app {d['peer_app_name']!r}), "
            f"id {d['interface_id']}, {d['role']}, {d['mode']}, socket {d['socket_address']}"
        )
        for kind in ("rx_queues", "tx_queues"):
            for q in d[kind]:
                print(
                    f"    {kind[:2]} q{q['qid']}: ring {q['ring_size']} head {q['head']} "
                    f"tail {q['tail']} flags {q['flags']} packets {q['packets']} "
                    f"bytes {q['bytes']} bad {q['bad_descriptors']} ring-full {q['ring_full']}"
                )
        for r in d["regions"]:
            print(f"    region {r['index']}: {r['size']} bytes")
    print("OK: every byte arrived" if result["ok"] else "FAILED: packets lost or corrupted")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``loopback`` subcommand."""
    lb = sub.add_parser(
        "loopback",
        help="connect a server and a client in this process and check traffic both ways",
        description="Start a memif server and client on a temporary socket, send packets "
        "each way, verify every byte, and print counts, rates and connection details.",
        epilog=LOOPBACK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lb.add_argument("--count", type=positive, default=1000, help="packets each way (1000)")
    lb.add_argument("--size", type=packet_size, default=64, help="packet size in bytes (64)")
    lb.add_argument("--queues", type=positive, default=1, help="queues each way (1)")
    lb.add_argument("--id", type=int, default=0, help="interface id (0)")
    lb.add_argument("--ring-size", type=positive, default=1024, help="ring size (1024)")
    lb.add_argument("--buffer-size", type=positive, default=2048, help="buffer size (2048)")
    lb.add_argument("--json", action="store_true", help="print a JSON summary")
    lb.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    """Run the loopback check; 0 if every packet arrived intact.

    Raises:
        UsageError: a bad option value (e.g. a ring size that is not a power of two).
        MemifError: sending or receiving failed (e.g. PacketTooLargeError: a packet needs
            more buffers than the ring has).
    """
    return await _loopback(args)
