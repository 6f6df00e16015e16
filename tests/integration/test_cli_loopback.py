"""The ``aiomemif loopback`` command, run as a subprocess like a user would."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiomemif", *args], capture_output=True, text=True, timeout=60
    )


def test_loopback_prints_counts_rate_and_details() -> None:
    out = run("loopback", "--count", "500")
    assert out.returncode == 0, out.stderr
    assert "sent       500  received       500  corrupt 0" in out.stdout
    assert "packets/s" in out.stdout and "region 0: 4227328 bytes" in out.stdout
    assert "OK: every byte arrived" in out.stdout


def test_loopback_json_chained_and_queues() -> None:
    out = run("loopback", "--count", "300", "--size", "9000", "--queues", "2", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] is True
    assert result["client_to_server"]["received"] == 300
    assert result["server_details"]["rx_queues"][1]["chained"] == 150


def test_loopback_usage_errors_exit_2() -> None:
    out = run("loopback", "--size", "70000")
    assert out.returncode == 2
    assert "must be 1..65535" in out.stderr
    assert run("no-such-command").returncode == 2
