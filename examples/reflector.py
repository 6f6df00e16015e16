"""Reflector: send every received packet back out on the interface it came from.

Run it against any memif peer (VPP, DPDK's net_memif, libmemif, another aiomemif)::

    python examples/reflector.py --socket /run/vpp/memif.sock            # client (slave)
    python examples/reflector.py --socket /tmp/memif.sock --role server  # server (master)
    python examples/reflector.py --socket /tmp/memif.sock --count 1000   # stop after 1000

As a client it reflects without copying (``TxQueue.forward``: the received buffers move to
the transmit ring) whatever fits in the transmit ring, and copies the rest; a server owns no
buffers, so it always copies with ``send_batch`` (as does a client given ``--copy``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence

import aiomemif


@contextlib.asynccontextmanager
async def open_link(args: argparse.Namespace) -> AsyncIterator[aiomemif.Connection]:
    """One memif connection, as a client (connect) or as a server (wait for one client)."""
    config = aiomemif.InterfaceConfig(interface_id=args.id, app_name="reflector")
    if args.role == "client":
        async with aiomemif.connect(args.socket, config) as conn:
            yield conn
    else:
        async with aiomemif.serve(args.socket, [config], app_name="reflector") as server:
            print(f"listening on {server.address}", flush=True)
            async with await server.accept() as conn:
                yield conn


def fitting(batch: aiomemif.Batch, free: int) -> int:
    """How many packets from the start of ``batch`` fit in ``free`` ring slots."""
    n = 0
    for packet in batch:  # a chained packet takes one slot per buffer
        free -= len(packet.segments) if isinstance(packet, aiomemif.ChainedPacket) else 1
        if free < 0:
            break
        n += 1
    return n


async def drain(tx: aiomemif.TxQueue, ring_size: int, timeout: float = 1.0) -> None:
    """Give the peer up to ``timeout`` seconds to read what we sent before we hang up."""
    with contextlib.suppress(aiomemif.DisconnectedError):  # or until it hangs up itself
        for _ in range(int(timeout / 0.001)):
            if tx.free_slots() >= ring_size:
                return
            await asyncio.sleep(0.001)


async def reflect(args: argparse.Namespace) -> int:
    reflected = forwarded = 0
    async with open_link(args) as conn:
        rx, tx = conn.rx_queues[0], conn.tx_queues[0]
        zero_copy = conn.role is aiomemif.Role.CLIENT and not args.copy
        how = "zero-copy forwarding" if zero_copy else "copying"
        print(f"connected to {conn.peer_app_name!r} as {args.role}, {how}", flush=True)
        try:
            async for batch in rx:  # a Batch of zero-copy views into shared memory
                rest: Sequence[aiomemif.Packet] = batch
                if zero_copy:
                    # Move the buffers of the packets that fit to the transmit ring...
                    n = fitting(batch, tx.free_slots())
                    forwarded += tx.forward(batch, range(n))
                    rest = batch[n:]
                if rest:  # ...and copy the others (send_batch waits for ring space)
                    await tx.send_batch(rest)
                reflected += len(batch)
                if args.count and reflected >= args.count:
                    break
        except (aiomemif.DisconnectedError, aiomemif.RemoteProtocolError) as exc:
            # the peer went away, or it broke the protocol
            print(f"link down: {exc.reason}", flush=True)
        else:
            await drain(tx, conn.details().tx_queues[0].ring_size)
    print(f"reflected {reflected} packets ({forwarded} without copying)", flush=True)
    return 0 if not args.count or reflected >= args.count else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="/run/vpp/memif.sock", help="socket path or @name")
    parser.add_argument("--role", choices=["client", "server"], default="client")
    parser.add_argument("--id", type=int, default=0, help="interface id (0)")
    parser.add_argument("--count", type=int, default=0, help="stop after N packets (0: never)")
    parser.add_argument("--copy", action="store_true", help="copy even as a client")
    args = parser.parse_args()
    try:
        return asyncio.run(reflect(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
