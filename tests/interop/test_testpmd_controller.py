"""The TestPmd controller's lcore placement and memory options (used by the benchmarks)."""

from __future__ import annotations

import os

import pytest

from aiomemif.testing.testpmd import TestPmd

pytestmark = [pytest.mark.dpdk, pytest.mark.usefixtures("need_testpmd"), pytest.mark.timeout(60)]


async def test_lcores_mapped_with_eal_args(sock_path: str) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    fwd = cpus[-1]
    pmd = TestPmd(
        role="server",
        socket=sock_path,
        lcores=None,
        eal_args=[f"--lcores=0@{cpus[0]},1@{fwd}"],
        memory_mb=256,
    )
    assert "-l" not in pmd.argv
    assert pmd.argv[pmd.argv.index("-m") + 1] == "256"
    async with pmd:
        assert pmd.pid is not None
        assert await pmd.forwarding_lcores() == [1]  # lcore 1, mapped to CPU `fwd`
    assert pmd.pid is None
