"""The benchmark steps that need a real peer: dpdk-testpmd (macswap round trips, the C
baseline) and VPP (round trips through its L2 cross-connect). A mixin of ``run.Suite``,
which provides the attributes and helpers declared here.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence
from multiprocessing.context import SpawnContext

import bench_testpmd as bt
import bench_vpp as bv
from harness import Json
from report import Record, Results

__all__ = ["PeerSteps"]


class PeerSteps:
    """testpmd and VPP steps; ``run.Suite`` supplies the state and the helpers."""

    args: argparse.Namespace
    ctx: SpawnContext
    results: Results
    timeout: float
    a: int
    b: int
    pmd_missing: str | None
    vpp_missing: str | None

    def path(self, stem: str) -> str:
        raise NotImplementedError

    def add(self, ids: list[str], run: Callable[[], None]) -> None:
        raise NotImplementedError

    def progress(self, rec: Record, started: float, diag: str = "") -> None:
        raise NotImplementedError

    def skipped(self, ids: Sequence[str], group: str, why: str) -> None:
        raise NotImplementedError

    def c_sessions(self) -> None:
        """One testpmd txonly -> rxonly session (two processes): three records."""
        runs = (("separate", 64), ("separate", 1500), ("shared", 64))
        ids = [f"c-baseline/txonly-rxonly/{p}/{s}B" for p, s in runs]
        self.add(ids, functools.partial(self.c_baseline, runs, ids))

    # -- testpmd ------------------------------------------------------------------------------
    def plan_testpmd(self) -> None:
        q = self.args.quick
        sizes = (64,) if q else (64, 1500)
        modes = ("interrupt", "polling", "adaptive")
        for loop in self.args.loops[:1] if q else self.args.loops:
            for role in ("client",) if q else ("client", "server"):
                ids = [f"testpmd/macswap/{role}/{s}B/{loop}" for s in sizes]
                ids += [f"testpmd/macswap-rtt/{role}/{m}/{loop}" for m in modes]
                self.add(ids, functools.partial(self.macswap, role, loop, sizes, modes, ids))

    def c_baseline(self, runs: Sequence[tuple[str, int]], ids: list[str]) -> None:
        if self.pmd_missing:
            self.skipped(ids, "c-baseline", f"skipped: {self.pmd_missing}")
            return
        t0 = time.monotonic()
        spec = bt.CSpec(
            runs=tuple(runs),
            interval=(0.5 if self.args.quick else 1.0) * self.args.scale,
            cpus=(self.a, self.b),
            path=self.path("c"),
        )
        res = bt.run_c_baseline(self.ctx, spec, timeout=self.timeout + 30)
        by_key = {(r["placement"], r["size"]): r for r in res.get("rates", [])}
        for (placement, size), rid in zip(runs, ids, strict=True):
            rate = by_key.get((placement, size))
            run: Json = {"ok": res["ok"] and rate is not None, "errors": res["errors"]}
            run.update(rate or {"pps": 0.0})
            rx = self.a if placement == "separate" else self.b
            label = f"testpmd txonly -> rxonly {size}B, {placement} cores"
            rec = Record(rid, "c-baseline", label, "C", f"rx{rx} tx{self.b}", "rate", size=size)
            self.progress(self.results.add(rec, run), t0)

    def macswap(
        self, role: str, loop: str, sizes: Sequence[int], modes: Sequence[str], ids: list[str]
    ) -> None:
        if self.pmd_missing:
            self.skipped(ids, "testpmd", f"skipped: {self.pmd_missing}")
            return
        t0 = time.monotonic()
        q = self.args.quick
        spec = bt.MacswapSpec(
            role=role,
            sizes=tuple(sizes),
            lat_modes=tuple(modes),
            duration=(0.5 if q else 1.0) * self.args.scale,
            lat_duration=(0.3 if q else 0.5) * self.args.scale,
            cpus=(self.a, self.b),
            path=self.path("macswap"),
        )
        res = bt.run_macswap(self.ctx, spec, cpu=self.a, loop=loop, timeout=self.timeout + 30)
        what = f"aiomemif {role} <-> testpmd"
        self.session("testpmd", f"{what} macswap", what, res, loop, f"py{self.a} pmd{self.b}",
                     sizes, modes, ids, t0)  # fmt: skip

    def session(
        self,
        group: str,
        rate_label: str,
        rtt_label: str,
        res: Json,
        loop: str,
        cpus: str,
        sizes: Sequence[int],
        modes: Sequence[str],
        ids: list[str],
        t0: float,
    ) -> None:
        """Records of a peer session: a round-trip rate per size, then an RTT per mode.

        One worker measures every case of the session in turn, so its preemption count is
        shared out among them (each case measures about as long as a flow case)."""
        share = int(res.get("preempt", 0)) // max(1, len(sizes) + len(modes))
        base: Json = {"ok": res["ok"], "errors": res["errors"], "preempt": share}
        tput = {t["size"]: t for t in res.get("throughput", [])}
        for size, rid in zip(sizes, ids, strict=False):
            run = {**base, **tput.get(size, {"pps": 0.0})}
            run["ok"] = base["ok"] and size in tput
            label = f"{rate_label} {size}B round trips"
            rec = Record(rid, group, label, loop, cpus, "rate", size=size)
            self.progress(self.results.add(rec, run), t0)
        lat = {x["mode"]: x for x in res.get("latency", [])}
        for mode, rid in zip(modes, ids[len(sizes) :], strict=True):
            run = {**base, **lat.get(mode, {})}
            run["ok"] = base["ok"] and mode in lat
            label = f"{rtt_label} 64B RTT, {mode}"
            rec = Record(rid, group, label, loop, cpus, "rtt", size=64)
            self.progress(self.results.add(rec, run), t0)

    # -- VPP ----------------------------------------------------------------------------------
    def plan_vpp(self) -> None:
        q = self.args.quick
        sizes = (64, 1500)
        modes = ("interrupt", "polling", "adaptive")
        for loop in self.args.loops[:1] if q else self.args.loops:
            for role in ("client", "server"):
                ids = [f"vpp/xconnect/{role}/{s}B/{loop}" for s in sizes]
                ids += [f"vpp/xconnect-rtt/{role}/{m}/{loop}" for m in modes]
                self.add(ids, functools.partial(self.xconnect, role, loop, sizes, modes, ids))

    def xconnect(
        self, role: str, loop: str, sizes: Sequence[int], modes: Sequence[str], ids: list[str]
    ) -> None:
        if self.vpp_missing:
            self.skipped(ids, "vpp", f"skipped: {self.vpp_missing}")
            return
        t0 = time.monotonic()
        q = self.args.quick
        spec = bv.XconnectSpec(
            role=role,
            sizes=tuple(sizes),
            lat_modes=tuple(modes),
            duration=(0.5 if q else 1.0) * self.args.scale,
            lat_duration=(0.3 if q else 0.5) * self.args.scale,
            cpus=(self.a, self.b),
            path=self.path("vpp"),
        )
        res = bv.run_xconnect(self.ctx, spec, cpu=self.a, loop=loop, timeout=self.timeout + 30)
        what = f"aiomemif {role} -> VPP xconnect -> aiomemif"
        self.session("vpp", what, what, res, loop, f"py{self.a} vpp{self.b}", sizes, modes,
                     ids, t0)  # fmt: skip
