"""Child peer processes (:mod:`.child_peer`) as the storm and the soak drive them.

::

    async with await PeerChild.start("server", "@x", "burst") as child:
        await child.expect("listening")
        ...
        child.kill()
        status, lines = await child.reap()   # -9 and what it printed before it died

Every child runs the same aiomemif as this process (its directory goes first on
``PYTHONPATH``), dies with this process (``--parent``), and is killed and reaped when the
``async with`` block ends, on every path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from types import TracebackType

__all__ = ["ChildError", "PeerChild"]

_ROOT = str(Path(__file__).resolve().parent.parent.parent)


class ChildError(RuntimeError):
    """A child peer printed an error, exited, or did not say what was expected in time."""


class PeerChild:
    """One running ``python -m aiomemif.testing.child_peer`` and its status lines."""

    def __init__(self, proc: asyncio.subprocess.Process, what: str) -> None:
        self.proc = proc
        self.pid = proc.pid
        #: ``role scenario``, for messages.
        self.what = what
        self._reaped: tuple[int, list[str]] | None = None
        self._killed = False
        #: What the child wrote on stderr (known once it is reaped).
        self.stderr = ""

    @classmethod
    async def start(cls, role: str, address: str, scenario: str) -> PeerChild:
        """Start a child peer in ``role`` on ``address`` running ``scenario``.

        Raises:
            OSError: the interpreter could not be started.
        """
        env = dict(os.environ)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = _ROOT + (os.pathsep + old if old else "")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aiomemif.testing.child_peer",
            "--role", role, "--socket", address, "--scenario", scenario,
            "--parent", str(os.getpid()),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        return cls(proc, f"{role} {scenario}")

    @property
    def app_name(self) -> str:
        """The app name this child announces in its handshake."""
        return f"storm-peer-{self.pid}"

    async def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """Wait for the next status line; return it if it starts with ``prefix``.

        Raises:
            ChildError: another line came (an ``error`` line, say), the child exited, or
                nothing came within ``timeout`` seconds.
        """
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                raw = await self.proc.stdout.readline()
        except TimeoutError:
            raise ChildError(f"child {self.what}: no {prefix!r} within {timeout} s") from None
        line = raw.decode(errors="replace").rstrip("\n")
        if not line:
            status, _ = await self.reap()
            err = f":\n{self.stderr}" if self.stderr else ""
            raise ChildError(f"child {self.what} exited with status {status}{err}")
        if not line.startswith(prefix):
            raise ChildError(f"child {self.what}: {line!r} instead of {prefix!r}")
        return line

    def kill(self) -> None:
        """SIGKILL the child, once (nothing if it is gone already)."""
        if not self._killed:
            self._killed = True
            self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM the child (nothing if it is gone already)."""
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        # os.kill, not Popen.send_signal: that polls first, and a poll that reaps the
        # child (killed a moment ago) leaves asyncio's child watcher without its status.
        # Until the watcher has reaped it the pid is still ours, a zombie at worst.
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def reap(self, timeout: float = 10.0) -> tuple[int, list[str]]:
        """Wait for the child to exit (SIGKILL after ``timeout``); its exit status
        (``-9`` after :meth:`kill`) and the status lines it printed that were not read."""
        if self._reaped is not None:
            return self._reaped
        try:
            async with asyncio.timeout(timeout):
                out, err = await self.proc.communicate()
        except TimeoutError:
            self.kill()
            out, err = await self.proc.communicate()
        assert self.proc.returncode is not None
        self.stderr = err.decode(errors="replace").strip()
        self._reaped = (self.proc.returncode, out.decode(errors="replace").splitlines())
        return self._reaped

    async def __aenter__(self) -> PeerChild:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
        await self.reap()
