"""``--loop``: the command runs on uvloop when it is installed, and the flag (before or after
the subcommand) or ``$AIOMEMIF_LOOP`` chooses; the JSON document names the loop it ran on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiomemif", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def loop_of(*args: str, env: dict[str, str] | None = None) -> str:
    out = run(*args, env=env)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is True
    return str(doc["loop"])


LOOPBACK = ("loopback", "--count", "200", "--json")


@pytest.mark.parametrize(
    ("args", "env", "loop"),
    [
        ((), {}, "uvloop"),  # installed in the test environment: the default
        (("--loop", "asyncio"), {}, "asyncio"),
        (("--loop", "uvloop"), {}, "uvloop"),
        ((), {"AIOMEMIF_LOOP": "asyncio"}, "asyncio"),
        (("--loop", "uvloop"), {"AIOMEMIF_LOOP": "asyncio"}, "uvloop"),
    ],
    ids=["default", "asyncio", "uvloop", "env", "flag-over-env"],
)
def test_loop_choice(args: tuple[str, ...], env: dict[str, str], loop: str) -> None:
    env = {"AIOMEMIF_LOOP": "", **env}
    assert loop_of(*args, *LOOPBACK, env=env) == loop  # before the subcommand
    assert loop_of(*LOOPBACK, *args, env=env) == loop  # after it


def test_after_the_subcommand_wins() -> None:
    assert loop_of("--loop", "uvloop", *LOOPBACK, "--loop", "asyncio") == "asyncio"


def test_without_uvloop(tmp_path: Path) -> None:
    (tmp_path / "uvloop.py").write_text("raise ImportError('no uvloop here')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]), "AIOMEMIF_LOOP": ""}
    assert loop_of(*LOOPBACK, env=env) == "asyncio"  # auto falls back
    out = run(*LOOPBACK, "--loop", "uvloop", env=env)
    assert out.returncode == 2
    assert "uvloop is not installed" in out.stderr
    assert json.loads(out.stdout)["exit_status"] == 2


def test_bad_loop_names_exit_2() -> None:
    assert run(*LOOPBACK, "--loop", "trio").returncode == 2
    out = run(*LOOPBACK, env={"AIOMEMIF_LOOP": "trio"})
    assert out.returncode == 2
    assert "--loop: 'trio' is not one of auto, asyncio, uvloop" in out.stderr
