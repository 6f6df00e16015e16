"""Packet generator with zero-copy transmit: frames are written straight into shared memory.

    python examples/zero_copy_gen.py --socket /run/vpp/memif.sock --count 1000000
    python examples/zero_copy_gen.py --socket /tmp/memif.sock --role server --size 1500

``TxQueue.alloc(n, size)`` reserves ``n`` transmit buffers (waiting for ring space), the
frames are built in place through their writable views, and ``commit`` publishes them all
at once (libmemif's ``memif_buffer_alloc`` + ``memif_tx_burst``). Each frame is an Ethernet
broadcast with the local experimental ethertype 0x88B5 and a 64-bit sequence number (from
0), padded with zeros to ``--size`` bytes. Packets received meanwhile are counted and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import sys
import time

import aiomemif

HEADER = struct.Struct("!6s6sHQ")  # destination MAC, source MAC, ethertype, sequence number
ETHERTYPE = 0x88B5  # IEEE 802 local experimental


async def discard(rx: aiomemif.RxQueue, received: list[int]) -> None:
    """Receive and drop what the peer sends: a peer that answers (a reflector, say) would
    otherwise stall on our full receive ring, and stop reading what we send."""
    with contextlib.suppress(aiomemif.DisconnectedError):
        async for batch in rx:  # ends when either side closes the link normally
            received[0] += len(batch)


async def generate(args: argparse.Namespace) -> int:
    config = aiomemif.InterfaceConfig(interface_id=args.id, app_name="zero-copy-gen")
    src = bytes.fromhex(args.mac.replace(":", ""))
    padding = bytes(args.size - HEADER.size)
    sent, received = 0, [0]
    async with contextlib.AsyncExitStack() as stack:  # closes what was opened, in reverse
        if args.role == "client":
            conn = await stack.enter_async_context(aiomemif.connect(args.socket, config))
        else:
            server = await stack.enter_async_context(aiomemif.serve(args.socket, [config]))
            print(f"listening on {server.address}", flush=True)
            conn = await stack.enter_async_context(await server.accept())
        tx = conn.tx_queues[0]
        ring_size = conn.details().tx_queues[0].ring_size
        sink = asyncio.create_task(discard(conn.rx_queues[0], received))
        start = time.perf_counter()
        try:
            while sent < args.count:
                # Reserve up to --batch frames; alloc() waits until the ring has room.
                bufs = await tx.alloc(min(args.batch, args.count - sent), args.size)
                if not bufs.chained:
                    # Each frame fits one buffer: bufs.views is one plain writable view per
                    # frame (the fast way, no per-frame objects beyond the views).
                    for seq, view in enumerate(bufs.views, sent):
                        HEADER.pack_into(view, 0, b"\xff" * 6, src, ETHERTYPE, seq)
                        view[HEADER.size :] = padding  # old data may still be there
                else:
                    for seq, buf in enumerate(bufs, sent):
                        # A chained frame: buf.view is its first segment, buf.write()
                        # spreads data over all of them.
                        HEADER.pack_into(buf.view, 0, b"\xff" * 6, src, ETHERTYPE, seq)
                        buf.write(padding, HEADER.size)
                sent += tx.commit(bufs)  # publish the whole batch, signal the peer once
        except aiomemif.PeerDisconnectedError as exc:  # the peer closed the link: stop here
            print(f"peer closed the link after {sent} packets: {exc.reason}", flush=True)
        except (aiomemif.DisconnectedError, aiomemif.RemoteProtocolError) as exc:
            # lost without DISCONNECT, or it broke the protocol
            print(f"link down after {sent} packets: {exc.reason}", flush=True)
            return 1
        elapsed = time.perf_counter() - start
        with contextlib.suppress(aiomemif.DisconnectedError):  # the peer may hang up first
            for _ in range(1000):  # up to 1 s for the peer to read the last frames
                if tx.free_slots() >= ring_size:
                    break
                await asyncio.sleep(0.001)
    await sink  # done: the connection is closed
    rate = sent / elapsed if elapsed > 0 else 0.0
    print(f"sent {sent} packets of {args.size} bytes in {elapsed:.3f} s ({rate:,.0f}/s)")
    print(f"received {received[0]} packets (dropped)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="zero-copy memif packet generator")
    parser.add_argument("--socket", default="/run/vpp/memif.sock", help="socket path or @name")
    parser.add_argument("--role", choices=["client", "server"], default="client")
    parser.add_argument("--id", type=int, default=0, help="interface id (0)")
    parser.add_argument("--count", type=int, default=10000, help="frames to send (10000)")
    parser.add_argument("--size", type=int, default=64, help="frame bytes, 60..65535 (64)")
    parser.add_argument("--batch", type=int, default=32, help="frames per alloc/commit (32)")
    parser.add_argument("--mac", default="02:fe:00:00:00:02", help="source MAC address")
    args = parser.parse_args()
    if not 60 <= args.size <= 65535 or args.count < 1 or args.batch < 1:
        parser.error("need 60 <= --size <= 65535, --count >= 1 and --batch >= 1")
    try:
        return asyncio.run(generate(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
