"""Cross-connect: packets received on memif interface A go out on B, and B's go out on A.

    python examples/xconnect.py --socket-a /run/vpp/memif.sock --id-a 0 \\
                                --socket-b /tmp/app.sock --role-b server
    python examples/xconnect.py ... --count 1000   # stop after 1000 packets (both ways)

The two links are separate connections with separate shared memory, so packets are copied
from A's receive buffers into B's transmit buffers (``send_batch``); zero-copy
``TxQueue.forward`` only works within one client connection (see reflector.py). A is set up
before B: as a server, A waits for its client before B starts listening. When either link
goes down, both are closed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import aiomemif


async def open_link(
    stack: contextlib.AsyncExitStack, socket: str, role: str, interface_id: int
) -> aiomemif.Connection:
    """One memif connection (as client or server), closed when ``stack`` closes."""
    config = aiomemif.InterfaceConfig(interface_id=interface_id, app_name="xconnect")
    if role == "client":
        return await stack.enter_async_context(aiomemif.connect(socket, config))
    server = await stack.enter_async_context(aiomemif.serve(socket, [config]))
    print(f"listening on {server.address}", flush=True)
    return await stack.enter_async_context(await server.accept())


async def drain(conn: aiomemif.Connection, timeout: float = 1.0) -> None:
    """Give the peer up to ``timeout`` seconds to read what we sent before we hang up."""
    tx, ring_size = conn.tx_queues[0], conn.details().tx_queues[0].ring_size
    with contextlib.suppress(aiomemif.DisconnectedError):  # or until it hangs up itself
        for _ in range(int(timeout / 0.001)):
            if tx.free_slots() >= ring_size:
                return
            await asyncio.sleep(0.001)


async def xconnect(args: argparse.Namespace) -> int:
    moved = {"a->b": 0, "b->a": 0}

    async def cross(src: aiomemif.Connection, dst: aiomemif.Connection, key: str) -> None:
        tx = dst.tx_queues[0]
        async for batch in src.rx_queues[0]:  # zero-copy views into src's shared memory
            await tx.send_batch(batch)  # copies; waits while dst's ring is full
            moved[key] += len(batch)
            if args.count and sum(moved.values()) >= args.count:
                return

    async with contextlib.AsyncExitStack() as stack:
        a = await open_link(stack, args.socket_a, args.role_a, args.id_a)
        b = await open_link(stack, args.socket_b, args.role_b, args.id_b)
        print(f"cross-connecting {a.peer_app_name!r} and {b.peer_app_name!r}", flush=True)
        tasks = [asyncio.create_task(cross(a, b, "a->b")), asyncio.create_task(cross(b, a, "b->a"))]
        try:  # run until one direction ends: --count reached, or a link went down
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        errors = [exc for task in done if (exc := task.exception()) is not None]
        link_errors = (aiomemif.DisconnectedError, aiomemif.RemoteProtocolError)
        if errors and not isinstance(errors[0], link_errors):
            raise errors[0]  # a bug, not the network
        if errors:
            print(f"link down: {errors[0]}", flush=True)
        else:
            await asyncio.gather(drain(a), drain(b))
    print(f"a->b {moved['a->b']} packets, b->a {moved['b->a']} packets", flush=True)
    return 0 if not args.count or sum(moved.values()) >= args.count else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="cross-connect two memif interfaces")
    for side in ("a", "b"):
        parser.add_argument(f"--socket-{side}", required=True, help="socket path or @name")
        parser.add_argument(f"--role-{side}", choices=["client", "server"], default="client")
        parser.add_argument(f"--id-{side}", type=int, default=0, help="interface id (0)")
    parser.add_argument("--count", type=int, default=0, help="stop after N packets (0: never)")
    args = parser.parse_args()
    try:
        return asyncio.run(xconnect(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
