"""The benchmark's "validation off" switch (``benchmarks/harness.apply_validation_hook``)
must take every descriptor check and the memo of checked runs out of the data path, or the
validation on/off row compares nothing. Runs in a child process: the hook rebinds library
globals for good."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import inspect, json, sys
sys.path[:0] = [sys.argv[1] + "/benchmarks", sys.argv[1] + "/tests"]
import harness
from aiomemif._core import descriptors
from support.rig import MmapRig

checks = sorted(n for n, f in vars(descriptors).items()
                if inspect.isfunction(f) and (n.endswith("_ok") or n == "check_run"))

def receive(rig, direction, n):
    rx = rig.receiver(direction)
    rx.max_frame = 16  # every 64-byte packet below is too large: a check must refuse it
    first = rig.client_tx.head if direction == "s2m" else rig.server_tx.tail
    pkts = [bytes([i]) * 64 for i in range(n)]
    rig.publish(direction, rig.stage(direction, first, pkts))
    run = rx.poll(64)
    got = [bytes(p) for p in run.packets]
    for p in run.packets:
        p.release()
    return {"packets": len(got), "bad": rx.counters.bad_descriptors, "same": got == pkts}

out = {"checks": checks}
for hooked in (False, True):
    if hooked:
        out["replaced"] = harness.apply_validation_hook()
        def no_memo(*a, **k):
            raise AssertionError("the memo was consulted with validation off")
        descriptors.CheckedRuns.recall = no_memo
        descriptors.CheckedRuns.remember = no_memo
    for direction in ("s2m", "m2s"):
        for n in (1, 6):
            rig = MmapRig(log2=3, bsize=64)
            try:
                out[f"{hooked}-{direction}-{n}"] = receive(rig, direction, n)
            finally:
                rig.close()
print(json.dumps(out))
"""


def test_validation_off_bypasses_every_check_and_the_memo() -> None:
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    hooked_names = {name.rsplit(".", 1)[1] for name in out["replaced"]}
    assert set(out["checks"]) <= hooked_names, "a descriptor check the hook does not replace"
    assert any(name.startswith("aiomemif._core.rx.") for name in out["replaced"])
    assert any(name.startswith("aiomemif._core.server_tx.") for name in out["replaced"])
    for direction in ("s2m", "m2s"):
        for n in (1, 6):
            on, off = out[f"False-{direction}-{n}"], out[f"True-{direction}-{n}"]
            assert (on["packets"], on["bad"]) == (0, n), on  # checked: all refused
            assert (off["packets"], off["bad"], off["same"]) == (n, 0, True), off
