"""The command-line tools against dpdk-testpmd: probe sees its HELLO and its refusals, and
ping gets answers from its icmpecho forwarding (a C implementation checks our frames).
"""

from __future__ import annotations

import asyncio

import pytest
from support.cli import AIOMEMIF, FAST, check_five_replies

from aiomemif.testing.testpmd import TestPmd


@pytest.mark.usefixtures("need_testpmd")
@pytest.mark.dpdk
@pytest.mark.timeout(120)
def test_probe_and_ping_against_testpmd(sock_path: str) -> None:
    async def main() -> None:
        async with TestPmd(role="server", socket=sock_path, forward_mode="icmpecho") as pmd:
            probe = await _aio_run("probe", "--socket", sock_path, "--id", "0")
            assert probe[0] == 0, probe
            assert "memif server 'DPDK 22.11" in probe[1]
            assert "max log2 ring size: 14" in probe[1]
            assert "interface id 0: accepted (peer interface 'net_memif0')" in probe[1]
            refused = await _aio_run("probe", "--socket", sock_path, "--id", "0", "--mode", "ip")
            assert refused[0] == 1 and "refused: Only ethernet mode supported" in refused[1]
            # testpmd's icmpecho forwarding answers ARP and ping: our frames and checksums
            # pass a C implementation (it updates the ICMP checksum incrementally, so a
            # wrong one would come back wrong and be dropped by our ping).
            ping = await asyncio.create_subprocess_exec(
                *AIOMEMIF, "ping", "--socket", sock_path, "192.168.1.1", "-c", "5", *FAST,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                await pmd.start_forwarding()  # ping retries ARP until forwarding starts
                out, err = await asyncio.wait_for(ping.communicate(), 30)
            finally:
                if ping.returncode is None:
                    ping.kill()
                    await ping.wait()
            assert ping.returncode == 0, err.decode()
            check_five_replies(out.decode())

    asyncio.run(main())


async def _aio_run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *AIOMEMIF, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
