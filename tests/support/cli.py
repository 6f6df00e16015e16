"""Helpers for running the aiomemif command in tests: the command line, fast ping options
and checks of ping's output.
"""

from __future__ import annotations

import re
import sys

AIOMEMIF = [sys.executable, "-m", "aiomemif"]


REPLY = re.compile(
    r"^64 bytes from 192\.168\.1\.1: icmp_seq=(\d+) ttl=64 time=\d+\.\d{3} ms$", re.M
)


RTT = re.compile(r"^rtt min/avg/max/mdev = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms$", re.M)


FAST = ["-i", "0.02", "-W", "2"]


def check_five_replies(out: str) -> None:
    assert [int(s) for s in REPLY.findall(out)] == [1, 2, 3, 4, 5], out
    assert "5 packets transmitted, 5 received, 0% packet loss" in out
    assert RTT.search(out), out
