"""Drive DPDK's ``dpdk-testpmd`` with the ``net_memif`` driver as a memif peer.

Used by aiomemif's interop tests and benchmarks, and usable by anyone who wants a real C
peer in their own tests::

    async with TestPmd(role="server", socket=path, forward_mode="macswap") as pmd:
        async with aiomemif.connect(path) as conn:
            ...
        stats = await pmd.port_stats()

testpmd runs in interactive mode on a pipe; commands are written to its stdin and their
output is read up to the next ``testpmd>`` prompt. It busy-polls one core while forwarding.
``stop()`` always stops forwarding before the memif link goes down (testpmd's server can
crash otherwise), quits, reaps the process and removes its runtime files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import attrs

__all__ = ["PortStats", "TestPmd", "TestPmdError", "find_testpmd", "pmd_dir"]

PROMPT = b"testpmd> "
_PMD_DIRS = (
    "/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0",
    "/usr/lib/aarch64-linux-gnu/dpdk/pmds-23.0",
)


class TestPmdError(RuntimeError):
    """testpmd failed to start, died, or did not answer."""

    __test__ = False  # not a pytest test class


def find_testpmd() -> str | None:
    """Path of ``dpdk-testpmd`` (or None when DPDK is not installed)."""
    return shutil.which("dpdk-testpmd")


def pmd_dir() -> str | None:
    """The directory holding ``librte_net_memif.so`` (Debian's DPDK 22.11 layout)."""
    for d in _PMD_DIRS:
        if os.path.exists(os.path.join(d, "librte_net_memif.so")):
            return d
    return None


@attrs.frozen
class PortStats:
    rx_packets: int
    rx_errors: int
    rx_missed: int
    rx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_bytes: int


def _num(pattern: str, text: str) -> int:
    m = re.search(pattern + r":\s*(\d+)", text)
    return int(m.group(1)) if m else 0


class TestPmd:
    """One ``dpdk-testpmd`` process with one ``net_memif`` port.

    ``lcores`` is EAL's ``-l`` list: the main lcore (the lowest, unless ``eal_args`` holds
    ``--main-lcore=N``) runs the prompt, the others forward. Pass ``lcores=None`` to map
    lcores to CPUs with ``--lcores=...`` in ``eal_args`` instead (EAL takes only one of the
    two). ``eal_args`` go before testpmd's ``--`` separator, ``extra_args`` (testpmd's own
    options, e.g. ``--txpkts=64``) after it. ``memory_mb`` is EAL's ``-m`` (no hugepages: plain
    memory that testpmd touches at start; 1024 by default, 256 is plenty for 8192 mbufs).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        role: str,
        socket: str,
        abstract: bool = False,
        interface_id: int = 0,
        secret: str | None = None,
        forward_mode: str = "macswap",
        rxq: int = 1,
        txq: int = 1,
        bsize: int | None = None,
        rsize: int | None = None,
        extra_vdev: str = "",
        extra_args: Sequence[str] = (),
        lcores: str | None = "0-1",
        eal_args: Sequence[str] = (),
        memory_mb: int = 1024,
        start_timeout: float = 30.0,
    ) -> None:
        if role not in ("server", "client"):
            raise ValueError("role must be 'server' or 'client'")
        self.role = role
        self.prefix = f"aiomemif-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if socket.startswith("@"):  # aiomemif's spelling of the abstract namespace
            socket, abstract = socket[1:], True
        vdev = [f"net_memif0,role={role}", f"socket={socket}",
                f"socket-abstract={'yes' if abstract else 'no'}", f"id={interface_id}"]  # fmt: skip
        if secret is not None:
            vdev.append(f"secret={secret}")
        if bsize is not None:
            vdev.append(f"bsize={bsize}")
        if rsize is not None:
            vdev.append(f"rsize={rsize}")
        if extra_vdev:
            vdev.append(extra_vdev)
        self.socket = socket
        self.abstract = abstract
        exe = find_testpmd()
        pmds = pmd_dir()
        if exe is None or pmds is None:
            raise TestPmdError("dpdk-testpmd with net_memif is not installed")
        # testpmd prints command output with stdio, fully buffered on a pipe, while its
        # prompt is written directly: line-buffer stdout so output precedes the prompt.
        stdbuf = shutil.which("stdbuf")
        self.argv = [
            *([stdbuf, "-oL", "-eL"] if stdbuf else []),
            exe, *(["-l", lcores] if lcores else []), "--no-huge", "-m", str(memory_mb), "--no-pci",
            f"--file-prefix={self.prefix}", "--log-level=pmd.net.memif:info",
            "-d", f"{pmds}/librte_net_memif.so", "-d", f"{pmds}/librte_mempool_ring.so",
            f"--vdev={','.join(vdev)}", *eal_args,
            "--", "-i", "--total-num-mbufs=8192", f"--forward-mode={forward_mode}",
            f"--rxq={rxq}", f"--txq={txq}", *extra_args,
        ]  # fmt: skip
        self.start_timeout = start_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.log = bytearray()
        self._forwarding = False

    # -- process ---------------------------------------------------------------------
    async def start(self, forward: bool = False) -> TestPmd:
        """Start testpmd and wait for its prompt (and start forwarding if ``forward``).

        Forwarding is best started with :meth:`start_forwarding` once the memif link is up:
        testpmd's first transmit can race its own ring reset at connect time (a chained
        first frame was seen with NEXT missing on its first descriptor).

        Raises:
            TestPmdError: it exited or did not show its prompt in time.
        """
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            await self._read_prompt(self.start_timeout)
            if forward:
                await self.command("start")
                self._forwarding = True
        except BaseException:
            await self._kill()
            raise
        return self

    async def _read_prompt(self, timeout: float) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        start = len(self.log)
        try:
            async with asyncio.timeout(timeout):
                while len(self.log) == start or not self.log.endswith(PROMPT):
                    chunk = await self.proc.stdout.read(65536)
                    if not chunk:
                        raise TestPmdError(f"testpmd exited:\n{self.tail()}")
                    self.log += chunk
        except TimeoutError:
            raise TestPmdError(f"testpmd did not answer in {timeout} s:\n{self.tail()}") from None
        return bytes(self.log[start:])

    def tail(self, n: int = 40) -> str:
        """The last ``n`` lines testpmd printed (for error messages)."""
        return "\n".join(self.log.decode(errors="replace").splitlines()[-n:])

    async def command(self, line: str, timeout: float = 15.0) -> str:
        """Run one interactive command and return its output.

        Raises:
            TestPmdError: testpmd exited or did not answer.
        """
        if self.proc is None or self.proc.stdin is None or self.proc.returncode is not None:
            raise TestPmdError("testpmd is not running")
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        out = await self._read_prompt(timeout)
        return out.decode(errors="replace")

    async def port_stats(self, port: int = 0) -> PortStats:
        """testpmd's own counters for the memif port."""
        text = await self.command(f"show port stats {port}")
        return PortStats(
            rx_packets=_num("RX-packets", text),
            rx_errors=_num("RX-errors", text),
            rx_missed=_num("RX-missed", text),
            rx_bytes=_num("RX-bytes", text),
            tx_packets=_num("TX-packets", text),
            tx_errors=_num("TX-errors", text),
            tx_bytes=_num("TX-bytes", text),
        )

    async def forwarding_lcores(self) -> list[int]:
        """The lcore ids testpmd forwards on, from ``show config fwd`` (equal to CPU numbers
        unless ``--lcores`` maps them)."""
        text = await self.command("show config fwd")
        return sorted({int(n) for n in re.findall(r"Logical Core (\d+)", text)})

    @property
    def pid(self) -> int | None:
        """testpmd's process id while it runs (the session leader of its process group)."""
        return self.proc.pid if self.proc is not None else None

    async def link_up(self, port: int = 0) -> bool:
        text = await self.command(f"show port info {port}")
        return bool(re.search(r"Link status:\s*up", text))

    async def wait_link(self, up: bool = True, timeout: float = 10.0, port: int = 0) -> None:
        """Poll the port until its link is up (or down).

        Raises:
            TestPmdError: not in time.
        """
        async with asyncio.timeout(timeout):
            while await self.link_up(port) != up:  # noqa: ASYNC110 - polling another process
                await asyncio.sleep(0.05)

    async def start_forwarding(self, wait_link: bool = True) -> None:
        """Wait for the memif link to come up (by default), then start forwarding."""
        if wait_link:
            await self.wait_link(True)
        if not self._forwarding:
            await self.command("start")
            self._forwarding = True

    async def stop_forwarding(self) -> None:
        if self._forwarding:
            self._forwarding = False
            await self.command("stop")

    async def stop(self) -> None:
        """Stop forwarding, quit, reap the process and remove its runtime files."""
        if self.proc is None:
            return
        try:
            if self.proc.returncode is None:
                with contextlib.suppress(TestPmdError, OSError, TimeoutError):
                    await self.stop_forwarding()
                    assert self.proc.stdin is not None
                    self.proc.stdin.write(b"quit\n")
                    await self.proc.stdin.drain()
                    self.proc.stdin.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        assert self.proc.stdout is not None
                        while chunk := await self.proc.stdout.read(65536):
                            self.log += chunk
                        await self.proc.wait()
        finally:
            await self._kill()

    async def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
            # Let the pipe transports see EOF and close before the loop goes away.
            await asyncio.sleep(0)
        runtime = Path("/var/run/dpdk") / self.prefix
        shutil.rmtree(runtime, ignore_errors=True)
        if self.role == "server" and not self.abstract:
            with contextlib.suppress(OSError):
                os.unlink(self.socket)

    async def __aenter__(self) -> TestPmd:
        return await self.start()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
