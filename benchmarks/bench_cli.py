"""The command-line tools as a user runs them: ``aiomemif gen`` into ``aiomemif sink``, with
and without ``--verify``, each command a process of its own pinned to one cpu.

The sink serves, the gen connects and sends ``count`` test packets as fast as the ring
lets it (it waits for space, so nothing is dropped); the rate is the sink's (packets it
received over the time from its first to its last packet). ``sink --verify`` keeps up when
its rate matches the rate without ``--verify``: the checks cost the pair nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

Json = dict[str, Any]

AIOMEMIF = [sys.executable, "-m", "aiomemif"]


def _pinned(cpu: int) -> Any:
    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def _doc(text: str) -> Json:
    try:
        doc = json.loads(text)
    except ValueError:
        return {"ok": False, "error": f"no JSON document: {text[-200:]!r}"}
    return doc if isinstance(doc, dict) else {"ok": False, "error": "not a JSON object"}


def run_gen_sink(
    path: str, *, verify: bool, size: int, count: int, loop: str, pins: tuple[int, int],
    timeout: float,
) -> Json:  # fmt: skip
    """One gen -> sink transfer; the run's record (``ok``, ``pps``, ``errors``, both docs).

    ``pins`` is (sink cpu, gen cpu).
    """
    sink_cmd = [*AIOMEMIF, "--loop", loop, "sink", "--socket", path, "--count", str(count),
                "--json", *(["--verify"] if verify else [])]  # fmt: skip
    gen_cmd = [*AIOMEMIF, "--loop", loop, "gen", "--socket", path, "--count", str(count),
               "--size", str(size), "--json"]  # fmt: skip
    errors: list[str] = []
    sink = subprocess.Popen(
        sink_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_pinned(pins[0]),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not Path(path).exists() and sink.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        gen = subprocess.run(
            gen_cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=_pinned(pins[1])
        )
        sink_out, sink_err = sink.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        sink.kill()
        sink.communicate()
        return {"ok": False, "errors": ["timed out"], "pps": 0.0}
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.communicate()
    g, s = _doc(gen.stdout), _doc(sink_out)
    if gen.returncode != 0:
        errors.append(f"gen exit {gen.returncode}: {gen.stderr.strip()[-300:]}")
    if sink.returncode != 0:
        errors.append(f"sink exit {sink.returncode}: {sink_err.strip()[-300:]}")
    received = int(s.get("received") or 0)
    if received != count:
        errors.append(f"sink received {received} of {count}")
    if verify and any(s.get(k) for k in ("drops", "out_of_order", "duplicates", "corrupt")):
        errors.append("sink --verify found drops, reordering, duplicates or corruption")
    seconds = float(s.get("seconds") or 0.0)
    return {
        "ok": not errors,
        "errors": errors,
        "pps": received / seconds if seconds > 0 else 0.0,
        "gen_pps": float(g.get("packets_per_second") or 0.0),
        "ring_full_waits": g.get("ring_full_waits"),
        "loop": s.get("loop"),
    }
