"""Every Python block in README.md and docs/*.md runs as a test, on both loops.

How a block runs is said by an HTML comment just before it (``<!-- run: ... -->``; the keys
are listed in ``support/docblocks.py``, the harness is ``support/docrun.py``). In short: no
directive runs the block as is in a fresh namespace (top-level ``await`` allowed,
``asyncio.run(main())`` awaited on the test's loop); ``peer=server|client address=...``
starts an aiomemif peer on a private socket in place of that address; ``with=pair`` binds
``conn``/``rx``/``tx``/``pair`` from a loopback pair, ``with=server`` a listening ``server``
that the peer connects to; ``pytest`` runs a test file in an inner
pytest (strict and auto mode, both loops); ``skip reason="..."`` is for blocks that truly
cannot run. Test ids name the file and the block's first line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from support.docblocks import ROOT, Case, cases, doc_files
from support.docrun import run_case

CASES = cases()


def params(*, pytest_files: bool) -> list[object]:
    out: list[object] = []
    for case in CASES:
        d = case.directive
        if d.pytest != pytest_files:
            continue
        marks = [pytest.mark.skip(reason=d.skip)] if d.skip else []
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


def test_every_block_is_collected() -> None:
    # Every Markdown file under docs/ is read, with or without Python blocks today.
    assert {ROOT / "README.md", ROOT / "docs" / "protocol.md"} <= set(doc_files())
    # The README has Python blocks of both kinds: the collector must find them.
    assert [c for c in CASES if c.blocks[0].path.name == "README.md" and not c.directive.pytest]
    assert [c for c in CASES if c.directive.pytest]


@pytest.mark.parametrize("case", params(pytest_files=False))
async def test_block_runs(case: Case, tmp_path: Path) -> None:
    await run_case(case, tmp_path)


INNER_CONFTEST = """
import asyncio

import pytest
import uvloop
from support.leaks import memfd_mappings, open_fds


def pytest_asyncio_loop_factories(config, item):
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_configure(config):
    uvloop.new_event_loop().close()  # libuv's process-wide fds belong to the baseline


@pytest.fixture(autouse=True)
def no_leaks():
    fds, maps = open_fds(), memfd_mappings()
    yield
    import gc

    gc.collect()
    new = {fd: what for fd, what in open_fds().items() if fds.get(fd) != what}
    assert not new, f"fds left open: {new}"
    assert len(memfd_mappings()) <= len(maps), "memfd mappings left"
"""

INNER_INI = """[pytest]
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""


def plugin_option() -> list[str]:
    """Load the plugin by its entry-point name once installed, else by module."""
    if entry_points(group="pytest11", name="aiomemif"):
        return ["-p", "aiomemif"]
    return ["-p", "aiomemif.testing.plugin"]


@pytest.mark.parametrize("mode", ["strict", "auto"])
@pytest.mark.parametrize("case", params(pytest_files=True))
def test_pytest_block_passes(case: Case, mode: str, tmp_path: Path) -> None:
    (block,) = case.blocks
    (tmp_path / "test_block.py").write_text(block.code)
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "pytest.ini").write_text(INNER_INI)
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "pytest", *plugin_option(), "-p", "no:cacheprovider"]
    cmd += ["-o", f"asyncio_mode={mode}", "-v", "-rA", "test_block.py"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    passed = re.findall(r"^test_block\.py::(\S+) PASSED", out.stdout, re.M)
    assert passed, report
    assert re.search(r"\b(skipped|xfailed|xpassed|deselected|warnings?)\b", out.stdout) is None, (
        report
    )
    for loop in ("asyncio", "uvloop"):  # every async test ran on both loops
        assert any(re.search(rf"[\[-]{loop}[\]-]", name) for name in passed), report
