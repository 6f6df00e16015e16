"""ICMP responder: answer ARP requests and pings for one IPv4 address (ethernet mode).

Frames are parsed and built with struct alone; --count N stops after N replies. Point it
at a memif peer that pings 192.168.1.2 (e.g. a VPP master with 192.168.1.1/24 on memif0/0):

    python examples/icmp_responder.py --socket /run/vpp/memif.sock --ip 192.168.1.2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import struct

import aiomemif

ETH = struct.Struct("!6s6sH")  # destination MAC, source MAC, ethertype
ARP = struct.Struct("!HHBBH6s4s6s4s")  # hw type, proto type, sizes, op, sender, target
ETH_IPV4, ETH_ARP = 0x0800, 0x0806


def checksum(data: bytes | bytearray) -> int:
    """RFC 1071: ones' complement of the ones' complement sum of 16-bit words."""
    data = bytes(data) + b"\0" * (len(data) % 2)
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def answer(frame: bytes, mac: bytes, ip: bytes) -> bytes | None:
    """Our reply to one Ethernet frame, or None when it is not an ARP request or ping for us."""
    if len(frame) < 42:  # Ethernet + ARP, or Ethernet + IPv4 + ICMP echo header
        return None
    _dst, src, ethertype = ETH.unpack_from(frame)
    if ethertype == ETH_ARP:
        *head, sha, spa, _tha, tpa = ARP.unpack_from(frame, ETH.size)
        if head != [1, ETH_IPV4, 6, 4, 1] or tpa != ip:  # Ethernet/IPv4 who-has our address
            return None
        reply = ARP.pack(1, ETH_IPV4, 6, 4, 2, mac, ip, sha, spa)  # op 2: is-at
        return (ETH.pack(src, mac, ETH_ARP) + reply).ljust(60, b"\0")
    ihl, total = (frame[14] & 0x0F) * 4, struct.unpack_from("!H", frame, 16)[0]
    packet = bytearray(frame[14 : 14 + total])  # the IPv4 packet without Ethernet padding
    if ethertype != ETH_IPV4 or frame[14] >> 4 != 4 or not 20 <= ihl <= total - 8:
        return None
    fragment = struct.unpack_from("!H", packet, 6)[0] & 0x3FFF  # MF flag or an offset
    if len(packet) < total or packet[9] != 1 or packet[16:20] != ip or fragment:
        return None  # truncated, not ICMP, not for us, or a fragment
    if checksum(packet[:ihl]) or packet[ihl : ihl + 2] != b"\x08\x00":
        return None  # a corrupt header, or not an echo request
    packet[12:16], packet[16:20] = ip, packet[12:16]  # swap source and destination
    packet[8], packet[10:12] = 64, b"\0\0"  # fresh TTL; header checksum recomputed below
    struct.pack_into("!H", packet, 10, checksum(packet[:ihl]))
    packet[ihl], packet[ihl + 2 : ihl + 4] = 0, b"\0\0"  # echo reply; id, seq, data as sent
    struct.pack_into("!H", packet, ihl + 2, checksum(packet[ihl:]))
    return ETH.pack(src, mac, ETH_IPV4) + packet


async def respond(args: argparse.Namespace) -> None:
    mac, ip = bytes.fromhex(args.mac.replace(":", "")), socket.inet_aton(args.ip)
    config = aiomemif.InterfaceConfig(interface_id=args.id, mode=aiomemif.Mode.ETHERNET)
    answered = 0
    async with contextlib.AsyncExitStack() as stack:  # closes whatever was opened, in reverse
        if args.role == "client":
            conn = await stack.enter_async_context(aiomemif.connect(args.socket, config))
        else:
            server = await stack.enter_async_context(aiomemif.serve(args.socket, [config]))
            conn = await stack.enter_async_context(await server.accept())
        rx, tx = conn.rx_queues[0], conn.tx_queues[0]
        try:
            async for batch in rx:  # ends quietly when the peer closes the link (DISCONNECT)
                replies = [r for r in (answer(bytes(p), mac, ip) for p in batch) if r]
                if replies:
                    answered += await tx.send_batch(replies)
                if args.count and answered >= args.count:
                    break
        except (aiomemif.DisconnectedError, aiomemif.RemoteProtocolError) as exc:
            # lost without DISCONNECT, or it broke the protocol
            print(f"link down: {exc.reason}")
        with contextlib.suppress(aiomemif.DisconnectedError):  # or until the peer hangs up
            for _ in range(1000):  # up to 1 s for the peer to read our last replies
                if tx.free_slots() == conn.details().tx_queues[0].ring_size:
                    break
                await asyncio.sleep(0.001)
    print(f"answered {answered} packets")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="answer ARP and ICMP echo over memif")
    p.add_argument("--socket", default="/run/vpp/memif.sock", help="socket path or @name")
    p.add_argument("--role", choices=["client", "server"], default="client")
    p.add_argument("--id", type=int, default=0, help="interface id (0)")
    p.add_argument("--ip", default="192.168.1.2", help="our IPv4 address")
    p.add_argument("--mac", default="02:fe:00:00:00:01", help="our MAC address")
    p.add_argument("--count", type=int, default=0, help="stop after N replies (0: never)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(respond(p.parse_args()))
