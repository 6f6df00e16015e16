"""The sans-IO core imports nothing that does I/O, keeps time or runs threads.

Run in a fresh interpreter: ``aiomemif/__init__.py`` is replaced by a bare package object
so that only ``aiomemif._core`` (and what it imports) is loaded. Two checks: no module of
``aiomemif._core`` (or :mod:`aiomemif.errors`, which it uses) executes an import of a
banned module, and none of the banned modules that a bare interpreter has not loaded yet
(asyncio, socket, mmap, select, ...) got loaded at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomemif

BANNED = ("asyncio", "socket", "os", "mmap", "select", "time", "threading", "selectors")
PACKAGE = Path(aiomemif.__file__).parent

_PROBE = r"""
import builtins, json, pkgutil, sys, types
package_dir, banned = sys.argv[1], tuple(sys.argv[2].split(","))
before = set(sys.modules)
bare = types.ModuleType("aiomemif")
bare.__path__ = [package_dir]
sys.modules["aiomemif"] = bare
seen = []
real_import = builtins.__import__

def spying_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "")
    if importer.startswith("aiomemif._core") or importer == "aiomemif.errors":
        seen.append([importer, name, level, list(fromlist or ())])
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = spying_import
import aiomemif._core
for info in pkgutil.iter_modules(aiomemif._core.__path__, "aiomemif._core."):
    __import__(info.name)
builtins.__import__ = real_import
loaded = sorted(set(sys.modules) - before)
print(json.dumps({"imports": seen, "loaded": loaded}))
"""


Probe = dict[str, list[Any]]


def _probe() -> Probe:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(PACKAGE), ",".join(BANNED)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: Probe = json.loads(out.stdout)
    return result


def _top(name: str) -> str:
    return name.split(".")[0]


def test_core_modules_import_nothing_banned() -> None:
    probe = _probe()
    bad = []
    for importer, name, level, fromlist in probe["imports"]:
        if level == 0 and _top(name) in BANNED:
            bad.append(f"{importer} imports {name}")
        if level == 0 and name == "aiomemif" and fromlist:
            bad.append(f"{importer} imports from the aiomemif package itself: {fromlist}")
        if level > 0 and any(part in str(name) for part in ("_os", "_aio", "cli", "tools")):
            bad.append(f"{importer} imports {'.' * level}{name} (another layer)")
    assert not bad, bad


def test_core_loads_no_io_module() -> None:
    loaded = {_top(str(m)) for m in _probe()["loaded"]}
    # os, time and threading are loaded by every interpreter at start-up (site), so only the
    # import check above can see them; the others must not be loaded by anything the core
    # pulls in (attrs included).
    late = {"asyncio", "socket", "mmap", "select", "selectors"}
    assert not (loaded & late), sorted(loaded & late)
    assert not any(str(m).startswith(("aiomemif._os", "aiomemif._aio")) for m in loaded)


def test_probe_sees_a_banned_import(tmp_path: Path) -> None:
    """The probe is not blind: a core module that imports ``time`` is reported."""
    fake = tmp_path / "aiomemif"
    (fake / "_core").mkdir(parents=True)
    (fake / "errors.py").write_text("")
    (fake / "_core" / "__init__.py").write_text("")
    (fake / "_core" / "clock.py").write_text("import time\nfrom . import other\n")
    (fake / "_core" / "other.py").write_text("import socket\n")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(fake), ",".join(BANNED)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    probe = json.loads(out.stdout)
    names = {name for _importer, name, _level, _from in probe["imports"]}
    assert {"time", "socket"} <= names
    assert "socket" in {_top(m) for m in probe["loaded"]}
