"""Results of one benchmark sitting: records, ratios, the table, targets, JSON and a plot.

A *record* is one case (an id such as ``oneway/memif/64B/b32/c2s/asyncio``) with one or
more runs; its value is the median of the runs (packets/s for rate cases, round-trip
percentiles in microseconds for latency cases, handshakes/s for handshake cases).
"""

from __future__ import annotations

import importlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Json = dict[str, Any]

#: More involuntary context switches than this in a worker marks a case as disturbed.
PREEMPT_WARN = 300
#: Other processes keeping the benchmark cpus busier than this (just before or during a
#: run, as a fraction of those cpus) mark it too.
BUSY_WARN = 0.15


@dataclass
class Record:
    id: str
    group: str
    label: str
    loop: str
    cpus: str
    kind: str  # "rate", "rtt", "handshake" or "skipped"
    size: int = 0
    runs: list[Json] = field(default_factory=list)
    note: str = ""
    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.kind == "skipped" or (bool(self.runs) and all(r["ok"] for r in self.runs))

    @property
    def good(self) -> list[Json]:
        return [r for r in self.runs if r["ok"]]

    @property
    def pps(self) -> float:
        vals = [float(r["pps"]) for r in self.good]
        return statistics.median(vals) if vals else 0.0

    def rtt(self, q: str = "p50") -> float:
        vals = [float(r["rtt_us"][q]) for r in self.good if q in r.get("rtt_us", {})]
        return statistics.median(vals) if vals else 0.0

    @property
    def disturbed(self) -> bool:
        """Other processes got in the way (preempted, or the cpus were busy before)."""
        return (self.preempt > PREEMPT_WARN and not sharing(self)) or self.busy > BUSY_WARN

    @property
    def busy(self) -> float:
        """How busy other processes kept the benchmark cpus just before or during a run."""
        return max((float(r.get("foreign_load", 0.0)) for r in self.runs), default=0.0)

    @property
    def preempt(self) -> int:
        return max((int(r.get("preempt", 0)) for r in self.runs), default=0)

    def value(self) -> float:
        if self.kind == "rate":
            return self.pps
        if self.kind == "rtt":
            return self.rtt()
        if self.kind == "handshake":
            return statistics.median([float(r["handshakes_per_s"]) for r in self.good] or [0.0])
        return 0.0

    def as_json(self) -> Json:
        out: Json = {
            "id": self.id,
            "group": self.group,
            "label": self.label,
            "loop": self.loop,
            "cpus": self.cpus,
            "kind": self.kind,
            "ok": self.ok,
            "size": self.size,
            "note": self.note,
            "ratios": self.ratios,
            "preempt": self.preempt,
            "busy": self.busy,
            "runs": self.runs,
        }
        if self.kind == "rate":
            out["pps"] = self.pps
            out["gbps"] = self.pps * self.size * 8 / 1e9
            out["runs_pps"] = [r["pps"] for r in self.runs]
        elif self.kind == "rtt":
            out["rtt_us"] = {q: self.rtt(q) for q in ("min", "p50", "p90", "p99", "p999")}
        elif self.kind == "handshake":
            out["handshakes_per_s"] = self.value()
        return out


class Results:
    """Records in the order they were first measured."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        #: Ids looked up with get() since this was last cleared (for targets' provenance).
        self.touched: set[str] = set()

    def add(self, rec: Record, run: Json | None) -> Record:
        have = self.records.setdefault(rec.id, rec)
        if run is not None:
            have.runs.append(run)
        return have

    def get(self, rid: str) -> Record | None:
        self.touched.add(rid)
        rec = self.records.get(rid)
        return rec if rec is not None and rec.kind != "skipped" and rec.good else None

    def ratio(self, num: str, den: str) -> float | None:
        """value(num) / value(den), or None if either is missing or failed."""
        a, b = self.get(num), self.get(den)
        if a is None or b is None or not b.value():
            return None
        return a.value() / b.value()

    def bytes_ratio(self, num: str, den: str) -> float | None:
        """Bytes per second of rate case ``num`` over those of ``den`` (their packets may
        differ in size), or None if either is missing or failed."""
        a, b = self.get(num), self.get(den)
        if a is None or b is None or not b.pps * b.size:
            return None
        return a.pps * a.size / (b.pps * b.size)


# -- formatting ---------------------------------------------------------------------------------


def fmt_rate(pps: float, size: int) -> str:
    gbps = pps * size * 8 / 1e9
    return f"{pps / 1e6:7.3f} Mpps {gbps:6.2f} Gb/s" if size else f"{pps / 1e6:7.3f} Mpps"


def fmt_result(rec: Record) -> str:
    if rec.kind == "skipped":
        return rec.note
    if not rec.good:
        errs = [e for r in rec.runs for e in r.get("errors", [])]
        return "FAILED: " + (errs[0] if errs else "no result")[:70]
    if rec.kind == "rate":
        text = fmt_rate(rec.pps, rec.size)
        if len(rec.good) > 1:
            lo = min(r["pps"] for r in rec.good) / 1e6
            hi = max(r["pps"] for r in rec.good) / 1e6
            text += f" [{lo:.3f}-{hi:.3f}]"
        return text
    if rec.kind == "rtt":
        return f"p50 {rec.rtt('p50'):7.2f} us  p99 {rec.rtt('p99'):7.2f} us"
    if rec.kind == "handshake":
        run = rec.good[-1]
        srv, cli = run["server"], run["client"]
        return (
            f"{rec.value():7.0f} hs/s  RSS/conn srv {srv['rss_per_conn'] / 1024:.0f} KiB "
            f"cli {cli['rss_per_conn'] / 1024:.0f} KiB  mapped/conn "
            f"{cli['mapped_per_conn'] / 2**20:.2f} MiB"
        )
    return ""


def fmt_ratios(rec: Record) -> str:
    return "  ".join(f"{v:.2f}x {k}" for k, v in rec.ratios.items())


def sharing(rec: Record) -> bool:
    """Cases that share a CPU on purpose (preemption is expected there)."""
    return rec.group == "shared-core"


GROUPS = (
    "one-way",
    "zero-copy",
    "validation",
    "cli",
    "shared-core",
    "queues",
    "rtt",
    "handshakes",
    "testpmd",
    "vpp",
    "c-baseline",
)


def table(records: Sequence[Record]) -> str:
    head = ("case", "loop", "cpus", "result", "ratios", "check")
    rows = []
    last_group = None
    order = {g: i for i, g in enumerate(GROUPS)}
    for rec in sorted(records, key=lambda r: order.get(r.group, len(order))):
        check = "skip" if rec.kind == "skipped" else ("ok" if rec.ok else "FAIL")
        if rec.ok and rec.preempt > PREEMPT_WARN and not sharing(rec):
            check = f"ok, preempted {rec.preempt}"
        if rec.ok and rec.busy > BUSY_WARN:
            check = f"{check}, busy {rec.busy:.0%}"
        if rec.group != last_group:
            rows.append((f"[{rec.group}]", "", "", "", "", ""))
            last_group = rec.group
        rows.append(("  " + rec.label, rec.loop, rec.cpus, fmt_result(rec), fmt_ratios(rec), check))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r).rstrip() for r in rows]
    return "\n".join(lines)


# -- targets ------------------------------------------------------------------------------------


@dataclass
class Target:
    label: str
    threshold: str
    ratio: float | None
    verdict: str  # PASS, SHORT, or "skipped: ..." / "n/a ..." / "not run"
    detail: str = ""  # the unit of ``ratio`` when it is not a ratio ("Mpps")

    def as_json(self) -> Json:
        return {
            "label": self.label,
            "threshold": self.threshold,
            "value": self.ratio,
            "unit": self.detail or "x",
            "verdict": self.verdict,
        }


def target(
    label: str,
    threshold: str,
    ratio: float | None,
    need: float,
    *,
    at_most: bool = False,
    missing: str = "not run",
    detail: str = "",
) -> Target:
    if ratio is None:
        return Target(label, threshold, None, missing, detail)
    passed = ratio <= need if at_most else ratio >= need
    return Target(label, threshold, ratio, "PASS" if passed else "SHORT", detail)


def targets_text(targets: Sequence[Target]) -> str:
    width = max(len(t.label) for t in targets) if targets else 0
    lines = []
    for t in targets:
        unit = t.detail or "x"
        shown = "" if t.ratio is None else f"{t.ratio:.2f}{'' if unit == 'x' else ' '}{unit}"
        lines.append(f"  {t.label:<{width}}  {t.threshold:<10} {shown:>10}  {t.verdict}")
    return "\n".join(lines)


# -- ratios and targets -----------------------------------------------------------------------


def ratios(res: Results) -> None:
    """Fill every record's ratios to its baselines (socket, C, floors, ...)."""
    get = res.get
    for rec in res.records.values():
        p = rec.id.split("/")
        if rec.kind == "skipped":
            continue
        if p[0] == "one-way" and p[1] == "memif" and "-" in p[2]:  # mixed sizes
            r = res.bytes_ratio(rec.id, "/".join([*p[:2], "9000B", *p[3:]]))
            if r is not None:
                rec.ratios["9000B, bytes/s"] = r
            continue
        if p[0] == "one-way" and p[1] == "memif":
            size, batch, loop = p[2], p[3], p[5]
            pairs = {
                "socket": f"one-way/socket/{size}/{batch}/{loop}",
                "C": f"c-baseline/txonly-rxonly/separate/{size}",
            }
        elif p[0] == "zero-copy":
            pairs = {
                "socket": f"one-way/socket/1500B/b32/{p[5]}",
                "C": "c-baseline/txonly-rxonly/separate/1500B",
            }
        elif p[0] == "shared-core" and p[1] == "memif":
            pairs = {
                "C 1 core": "c-baseline/txonly-rxonly/shared/64B",
                "socket": f"shared-core/socket/64B/{p[4]}",
            }
        elif p[0] == "queues":
            pairs = {"1 queue": f"queues/memif/64B/q1/{p[4]}"}
        elif p[0] == "validation" and p[3] == "off":
            on = get(rec.id.replace("/off/", "/on/"))
            if on is not None and rec.good and rec.pps:
                rec.ratios["on/off"] = on.pps / rec.pps
            continue
        elif p[0] == "cli" and p[3] == "verify":
            plain = get(rec.id.replace("/verify/", "/plain/"))
            if plain is not None and plain.good and plain.pps and rec.good:
                rec.ratios["verify/plain"] = rec.pps / plain.pps
            continue
        elif p[0] == "rtt" and p[1] == "memif":
            floor = "eventfd" if p[3] == "interrupt" else "busypoll"
            pairs = {f"{floor} p50": f"rtt/raw/{floor}/{p[4]}"}
        elif p[0] == "rtt" and p[1] == "raw" and len(p) == 4:
            pairs = {"no-loop p50": f"rtt/raw/{p[2]}-sync"}
        else:
            continue
        for name, other in pairs.items():
            r = res.ratio(rec.id, other)
            if r is not None and rec.id != other:
                rec.ratios[name] = r


def targets(res: Results, loops: Sequence[str], pmd_missing: str | None) -> list[Target]:
    """The targets of issues 6 and 16, each with its measured ratio and PASS / SHORT (and
    a mark when a record behind it was disturbed by other processes)."""

    def T(*args: Any, **kwargs: Any) -> Target:
        t = target(*args, **kwargs)
        rec = [res.records.get(i) for i in sorted(res.touched)]
        res.touched.clear()
        if any(r is not None and r.disturbed for r in rec) and t.ratio is not None:
            t.verdict += " (disturbed: rerun)"
        return t

    res.touched.clear()
    pmd = f"skipped: {pmd_missing}" if pmd_missing else "not run"
    out = []
    for loop in loops:
        mem = f"one-way/memif/64B/b32/c2s/{loop}"
        out.append(
            T(
                f"one-way 64B b32 c2s vs socket [{loop}]",
                ">= 5x",
                res.ratio(mem, f"one-way/socket/64B/b32/{loop}"),
                5.0,
            )
        )
        out.append(
            T(
                f"one-way 64B b32 c2s vs C txonly->rxonly [{loop}]",
                ">= 0.10x",
                res.ratio(mem, "c-baseline/txonly-rxonly/separate/64B"),
                0.1,
                missing=pmd,
            )
        )
    for loop in loops:
        for style in ("send_batch", "alloc"):
            rec = res.get(f"zero-copy/memif/1500B/{style}/c2s/{loop}")
            out.append(
                T(
                    f"1500B zero-copy views, {style} [{loop}]",
                    ">= 4 Mpps",
                    rec.pps / 1e6 if rec else None,
                    4.0,
                    detail="Mpps",
                )
            )
    for loop in loops:  # issue 16, item 4: writing in place costs at most 25% more
        for d in ("c2s", "s2c"):
            zc = f"zero-copy/memif/1500B/{{}}/{d}/{loop}"
            out.append(
                T(
                    f"1500B zero-copy alloc / send_batch {d} [{loop}]",
                    ">= 0.8x",
                    res.ratio(zc.format("alloc"), zc.format("send_batch")),
                    0.8,
                )
            )
    for loop in loops:  # issue 16, item 5: jumbo frames, of one size and of many
        for d in ("c2s", "s2c"):
            out.append(
                T(
                    f"one-way 9000B b32 {d} vs socket [{loop}]",
                    ">= 2x",
                    res.ratio(
                        f"one-way/memif/9000B/b32/{d}/{loop}", f"one-way/socket/9000B/b32/{loop}"
                    ),
                    2.0,
                )
            )
        for d in ("c2s", "s2c"):
            out.append(
                T(
                    f"mixed 2100-9000B / 9000B b32 {d}, bytes/s [{loop}]",
                    ">= 1x",
                    res.bytes_ratio(
                        f"one-way/memif/2100-9000B/b32/{d}/{loop}",
                        f"one-way/memif/9000B/b32/{d}/{loop}",
                    ),
                    1.0,
                )
            )
    for role in ("client", "server"):
        rec = res.get(f"testpmd/macswap/{role}/64B/{loops[0]}")
        out.append(
            T(
                f"testpmd macswap round trips 64B, aiomemif {role}",
                ">= 2 Mpps",
                rec.pps / 1e6 if rec else None,
                2.0,
                missing=pmd,
                detail="Mpps",
            )
        )
    for loop in loops:
        out.append(
            T(
                f"RTT p50 adaptive / raw busy-poll floor [{loop}]",
                "<= 2x",
                res.ratio(f"rtt/memif/64B/adaptive/{loop}", f"rtt/raw/busypoll/{loop}"),
                2.0,
                at_most=True,
            )
        )
        out.append(
            T(
                f"RTT p50 interrupt / raw eventfd floor [{loop}]",
                "<= 1.3x",
                res.ratio(f"rtt/memif/64B/interrupt/{loop}", f"rtt/raw/eventfd/{loop}"),
                1.3,
                at_most=True,
            )
        )
    out.append(
        T(
            "shared core: aiomemif interrupt / two C busy-pollers",
            ">= 10x",
            res.ratio(
                f"shared-core/memif/64B/interrupt/{loops[0]}", "c-baseline/txonly-rxonly/shared/64B"
            ),
            10.0,
            missing=pmd,
        )
    )
    for size in (64, 1500):
        off = res.records.get(f"validation/memif/{size}B/off/{loops[0]}")
        if off is not None and off.kind == "skipped":
            out.append(
                T(
                    f"validation on / off, {size}B",
                    ">= 0.85",
                    None,
                    0.85,
                    missing="n/a (hook missing)",
                )
            )
        elif off is not None or size == 64:
            on_off = off.ratios.get("on/off") if off is not None else None
            out.append(T(f"validation on / off, {size}B", ">= 0.85", on_off, 0.85))
    for loop in loops:
        verify = res.records.get(f"cli/gen-sink/64B/verify/{loop}")
        if verify is not None or loop == loops[0]:
            kept = verify.ratios.get("verify/plain") if verify is not None else None
            out.append(T(f"sink --verify keeps up with gen, 64B [{loop}]", ">= 0.9", kept, 0.9))
    return out


# -- files --------------------------------------------------------------------------------------


def write_json(path: Path, report: Json) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")


def plot(path: Path, results: Results) -> str | None:
    """A PNG of the one-way rates and the round-trip latencies (None: no matplotlib)."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return None
    rates = [
        r
        for r in results.records.values()
        if r.kind == "rate" and r.good and r.group in ("one-way", "zero-copy", "c-baseline")
    ]
    rtts = [r for r in results.records.values() if r.kind == "rtt" and r.good]
    fig, axes = plt.subplots(1, 2, figsize=(15, max(4.0, 0.22 * max(len(rates), len(rtts)))))
    ax = axes[0]
    colors = [
        "tab:green" if r.loop == "C" else "tab:gray" if "socket" in r.id else "tab:blue"
        for r in rates
    ]
    ax.barh([f"{r.label} [{r.loop}]" for r in rates], [r.pps / 1e6 for r in rates], color=colors)
    ax.set_xscale("log")
    ax.set_xlabel("Mpps (log)")
    ax.set_title("throughput")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax = axes[1]
    labels = [f"{r.label} [{r.loop}]" for r in rtts]
    ax.barh(labels, [r.rtt("p99") for r in rtts], color="tab:orange", label="p99")
    ax.barh(labels, [r.rtt("p50") for r in rtts], color="tab:blue", label="p50")
    ax.set_xscale("log")
    ax.set_xlabel("round trip, us (log)")
    ax.set_title("latency")
    ax.invert_yaxis()
    ax.legend()
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
