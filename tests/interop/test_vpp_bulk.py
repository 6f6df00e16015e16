"""Bulk traffic through VPP: two memif interfaces on VPP cross-connected at layer 2, aiomemif
sending into one and receiving from the other, every packet accounted for on both sides.

VPP counts a packet in its interface's ``tx packets`` when it reaches the memif tx node,
also when it then drops it because the ring towards us is full: those drops are the
``no free tx slots`` error of node ``memifS/I-tx``. So the books balance as
sent = VPP rx on A = VPP tx on B = received by the sink + VPP's ``no free tx slots``.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from typing import Any

import pytest
from support.cli import AIOMEMIF
from support.dpdk import frame

import aiomemif
from aiomemif.testing.vpp import Vpp

pytestmark = [pytest.mark.vpp, pytest.mark.timeout(120)]


async def _xconnect(vpp: Vpp, a: str, b: str, role: str = "master") -> tuple[str, str]:
    names = []
    for path in (a, b):
        sid = await vpp.create_socket(path)
        names.append(await vpp.create_memif(sid, 0, role=role))
    na, nb = names
    await vpp.cli(f"set interface l2 xconnect {na} {nb}")
    await vpp.cli(f"set interface l2 xconnect {nb} {na}")
    return na, nb


def _no_free_slots(errors: list[Any], name: str) -> int:
    return sum(e.count for e in errors if e.node == f"{name}-tx" and e.reason == "no free tx slots")


async def _drained(vpp: Vpp, name: str, sent: int) -> None:
    """Wait until VPP has passed all ``sent`` packets to ``name``'s tx node and the peer has
    taken everything off the ring towards it: on a master-to-slave ring the slave offers
    empty buffers (head) and VPP fills them (tail), so drained is head - tail == ring size."""
    async with asyncio.timeout(30):
        while True:
            counters = (await vpp.interfaces())[name]
            iface = await vpp.memif_interface(name)
            towards = [r for r in iface.rings if r.direction == "m2s"]
            if counters.tx_packets >= sent and all(
                (r.head - r.tail) & 0xFFFF == r.ring_size for r in towards
            ):
                return
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("size", "count", "rate"),
    [(64, 50_000, 0), (1500, 20_000, 0), (9000, 3000, 0), (9000, 3000, 20_000)],
    ids=["64B-flat-out", "1500B-flat-out", "9000B-chains-flat-out", "9000B-chains-paced"],
)
def test_gen_through_xconnect_to_sink(size: int, count: int, rate: int, sock_dir: Any) -> None:
    async def main() -> None:
        from support.vpp import need_vpp

        async with Vpp(need_vpp()) as vpp:
            a, b = f"{sock_dir}/a.sock", f"{sock_dir}/b.sock"
            na, nb = await _xconnect(vpp, a, b)
            sink = await asyncio.create_subprocess_exec(
                *AIOMEMIF, "sink", "--socket", b, "--role", "client", "--verify", "--json",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                await vpp.wait_memif(nb)
                pace = ["--rate", str(rate)] if rate else []
                gen = await asyncio.create_subprocess_exec(
                    *AIOMEMIF, "gen", "--socket", a, "--role", "client", "--count", str(count),
                    "--size", str(size), "--json", *pace,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                gen_out, gen_err = await asyncio.wait_for(gen.communicate(), 60)
                assert gen.returncode == 0, gen_err.decode()
                sent = json.loads(gen_out)["sent"]
                assert sent == count
                await _drained(vpp, nb, sent)
                sink.send_signal(signal.SIGINT)
                sink_out, sink_err = await asyncio.wait_for(sink.communicate(), 30)
            finally:
                if sink.returncode is None:
                    sink.kill()
                    await sink.wait()
            assert sink.returncode in (0, 1, 130), sink_err.decode()
            got = json.loads(sink_out)
            counters = await vpp.interfaces()
            nofree = _no_free_slots(await vpp.errors(), nb)
            assert counters[na].rx_packets == sent
            assert counters[na].rx_bytes == sent * size
            assert counters[nb].tx_packets == sent
            assert got["received"] + nofree == sent, (got, nofree)
            assert got["bytes"] == got["received"] * size
            # Every gap the sink saw is one of VPP's drops; drops after the last packet that
            # arrived leave no gap, so the sink can count fewer.
            assert got["drops"] <= nofree
            assert (got["out_of_order"], got["duplicates"], got["corrupt"]) == (0, 0, 0)
            assert counters[na].drops == counters[nb].drops == 0

    asyncio.run(main())


async def test_mixed_sizes_through_xconnect_byte_identical(vpp: Vpp, sock_dir: Any) -> None:
    """64..9000-byte frames in random order: each arrives byte-identical, in order (paced so
    VPP never finds the ring towards us full; any drop would show as a gap)."""
    a, b = f"{sock_dir}/a.sock", f"{sock_dir}/b.sock"
    na, nb = await _xconnect(vpp, a, b)
    rng = random.Random(14)
    frames = [frame(i, rng.choice((64, 65, 1500, 2048, 2049, 4096, 9000))) for i in range(3000)]
    async with aiomemif.connect(a) as tx_conn, aiomemif.connect(b) as rx_conn:
        await vpp.wait_memif(na)
        await vpp.wait_memif(nb)
        tx, rx = tx_conn.tx_queues[0], rx_conn.rx_queues[0]
        got: list[bytes] = []
        sent = 0
        async with asyncio.timeout(60):
            while len(got) < len(frames):
                if sent < len(frames) and sent - len(got) < 64:
                    sent += await tx.send_batch(frames[sent : sent + 16])
                    continue
                batch = await rx.receive()
                got.extend(bytes(p) for p in batch)
                batch.release()
        assert got == frames
        assert rx_conn.details().rx_queues[0].chained == sum(len(f) > 2048 for f in frames)
        counters = await vpp.interfaces()
        total = sum(len(f) for f in frames)
        assert counters[na].rx_packets == counters[nb].tx_packets == len(frames)
        assert counters[na].rx_bytes == counters[nb].tx_bytes == total
        assert _no_free_slots(await vpp.errors(), nb) == 0


async def test_vpp_slaves_xconnected_between_aiomemif_servers(vpp: Vpp, sock_dir: Any) -> None:
    """The other role: VPP's two slaves (zero-copy) cross-connected between two aiomemif
    servers; frames up to 9000 bytes each way."""
    a, b = f"{sock_dir}/a.sock", f"{sock_dir}/b.sock"
    async with aiomemif.serve(a) as sa, aiomemif.serve(b) as sb:
        na, nb = await _xconnect(vpp, a, b, role="slave")
        ca = await asyncio.wait_for(sa.accept(), 15)
        cb = await asyncio.wait_for(sb.accept(), 15)
        async with ca, cb:
            await vpp.wait_memif(na)
            await vpp.wait_memif(nb)
            for src, dst in ((ca, cb), (cb, ca)):
                frames = [frame(i, (64, 1500, 9000)[i % 3]) for i in range(900)]
                got: list[bytes] = []
                sent = 0
                async with asyncio.timeout(60):
                    while len(got) < len(frames):
                        if sent < len(frames) and sent - len(got) < 64:
                            sent += await src.tx_queues[0].send_batch(frames[sent : sent + 16])
                            continue
                        batch = await dst.rx_queues[0].receive()
                        got.extend(bytes(p) for p in batch)
                        batch.release()
                assert got == frames
            counters = await vpp.interfaces()
            assert counters[na].rx_packets == counters[nb].tx_packets == 900
            assert counters[nb].rx_packets == counters[na].tx_packets == 900
