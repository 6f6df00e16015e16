"""Drive an FD.io VPP process as a memif peer (for interop tests), like :mod:`.testpmd`.

::

    async with Vpp() as vpp:                       # finds VPP via $AIOMEMIF_VPP or PATH
        sid = await vpp.create_socket(path)
        name = await vpp.create_memif(sid, 0, role="master")
        await vpp.cli(f"set interface ip address {name} 192.168.1.1/24")
        async with aiomemif.connect(path) as conn:
            ...
        print(await vpp.interfaces())

Each :class:`Vpp` writes its own ``startup.conf`` into a private temporary directory (its
CLI socket, logs, runtime files and, when started from a tarball, the unpacked programs all
live there), starts ``vpp -c startup.conf`` without root or hugepages (4k pages, a 512 MiB
heap, 16384 buffers of 2048 bytes, only the memif and ping plugins), and runs CLI commands
with ``vppctl``. ``stop()`` ends VPP and removes the directory and VPP's ``/dev/shm`` files;
``start()`` first removes those of VPPs whose controller died before it could.

The VPP process is a plain child process, not tied to one event loop: one instance can serve
tests running on different loops. The main loop sleeps ``poll_sleep_usec`` between polls so
an idle VPP does not take a whole core.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import glob
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

import attrs

from .vpp_show import (
    ErrorCounter,
    InterfaceCounters,
    MemifInterface,
    MemifSocket,
    parse_errors,
    parse_hardware_rings,
    parse_interfaces,
    parse_memif,
)

__all__ = [
    "ENV_VAR",
    "ErrorCounter",
    "InterfaceCounters",
    "MemifInterface",
    "MemifSocket",
    "Vpp",
    "VppError",
    "VppInstall",
    "find_vpp",
    "sweep_orphans",
]

#: Environment variable naming a VPP to use: a directory holding ``bin/vpp`` (an unpacked
#: tree or an install prefix such as ``/usr``), the ``vpp`` program, a ``vpp-*.tar.gz``
#: tarball of such a tree, or a directory or script (``run-vpp``) next to one.
ENV_VAR = "AIOMEMIF_VPP"


class VppError(RuntimeError):
    """VPP could not be found or started, died, or a CLI command failed."""


@attrs.frozen
class VppInstall:
    """Where VPP's programs are: either ``vpp``/``vppctl`` paths, or a tarball to unpack."""

    vpp: str = ""
    vppctl: str = ""
    #: ``LD_LIBRARY_PATH`` for both programs (None: the system's libraries).
    lib_dir: str | None = None
    #: VPP's plugin directory (None: VPP's built-in default, right for a packaged VPP).
    plugin_dir: str | None = None
    #: A ``.tar.gz`` with ``vpp/bin/vpp`` (or ``bin/vpp``) in it, unpacked at each start.
    tarball: str | None = None

    @classmethod
    def at_prefix(cls, prefix: str | os.PathLike[str]) -> VppInstall:
        """The VPP installed under ``prefix`` (``bin/vpp``, ``bin/vppctl``, ``lib/``).

        Raises:
            VppError: there is no ``bin/vpp`` under ``prefix``.
        """
        root = Path(prefix)
        vpp = root / "bin" / "vpp"
        if not os.access(vpp, os.X_OK):
            raise VppError(f"no executable {vpp}")
        lib = root / "lib"
        plugins = lib / "vpp_plugins"
        own_libs = bool(glob.glob(str(lib / "libvppinfra.so*")))
        return cls(
            vpp=str(vpp),
            vppctl=str(root / "bin" / "vppctl"),
            lib_dir=str(lib) if own_libs else None,
            plugin_dir=str(plugins) if own_libs and plugins.is_dir() else None,
        )

    @classmethod
    def resolve(cls, location: str | os.PathLike[str]) -> VppInstall:
        """Interpret ``location`` as :data:`ENV_VAR` describes.

        Raises:
            VppError: nothing usable there.
        """
        path = Path(location)
        if path.is_dir():
            if (path / "bin" / "vpp").exists():
                return cls.at_prefix(path)
            if (path / "vpp" / "bin" / "vpp").exists():
                return cls.at_prefix(path / "vpp")
            tars = sorted(path.glob("vpp-*.tar.gz"))
            if tars:
                return cls(tarball=str(tars[-1]))
        elif path.name.endswith((".tar.gz", ".tgz")) and path.is_file():
            return cls(tarball=str(path))
        elif path.name == "vpp" and os.access(path, os.X_OK):
            ctl = path.with_name("vppctl")
            if not ctl.exists():
                ctl = Path(shutil.which("vppctl") or ctl)
            if path.parent.name == "bin":
                with contextlib.suppress(VppError):
                    return cls.at_prefix(path.parent.parent)
            return cls(vpp=str(path), vppctl=str(ctl))
        elif path.is_file():
            return cls.resolve(path.parent)  # a script such as run-vpp next to its tarball
        raise VppError(f"no VPP at {location} (want bin/vpp, the vpp program or a tarball)")

    def unpacked(self, into: Path) -> VppInstall:
        """This install, with its tarball (if any) unpacked under ``into``.

        Raises:
            VppError: the tarball holds no ``bin/vpp``.
        """
        if self.tarball is None:
            return self
        with tarfile.open(self.tarball) as tar:
            tar.extractall(into, filter="tar")
        for prefix in (into / "vpp", into):
            if (prefix / "bin" / "vpp").exists():
                return VppInstall.at_prefix(prefix)
        raise VppError(f"{self.tarball} holds no bin/vpp")


def find_vpp(location: str | os.PathLike[str] | None = None) -> VppInstall | None:
    """The VPP to use: ``location``, else ``$AIOMEMIF_VPP``, else ``vpp`` on ``PATH``.

    Returns None when none of them names a VPP (a bad ``location`` or ``$AIOMEMIF_VPP``
    counts as none).
    """
    candidate = location or os.environ.get(ENV_VAR) or shutil.which("vpp")
    if not candidate:
        return None
    try:
        return VppInstall.resolve(candidate)
    except VppError:
        return None


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# The first line of a failed command: VPP prints "unknown input `...'" or "<command>: why"
# (for example "create interface memif: Subinterface already exists").
_FAILED = re.compile(r"^(unknown input|[a-z][a-z0-9 -]*[a-z0-9]: )")


_SEGMENT = re.compile(r"aiomemif-vpp-(\d+)-[0-9a-f]{8}-")


def sweep_orphans(shm: str = "/dev/shm") -> list[str]:
    """Remove the shared-memory files of VPPs whose controller process is gone, and return
    their paths. (A controller killed before it could stop its VPP takes VPP with it, by
    PR_SET_PDEATHSIG, but leaves VPP's files, named for the controller's pid, in RAM.)"""
    removed = []
    for path in glob.glob(os.path.join(shm, "aiomemif-vpp-*")):
        m = _SEGMENT.match(os.path.basename(path))
        if m is None or _alive(int(m[1])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(path)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # (it exists: another user's)
    return True


class Vpp:
    """One VPP process in a temporary directory, driven through ``vppctl``.

    ``install`` (or ``location``) says which VPP to run (:func:`find_vpp` by default).
    ``main_core`` pins VPP's main thread to that CPU (None: no pinning). ``startup_extra``
    is appended to the generated ``startup.conf``.
    """

    def __init__(
        self,
        install: VppInstall | None = None,
        *,
        location: str | os.PathLike[str] | None = None,
        main_core: int | None = None,
        poll_sleep_usec: int | None = 100,
        buffers: int = 16384,
        heap_mb: int = 512,
        startup_extra: str = "",
        start_timeout: float = 15.0,
    ) -> None:
        found = install or find_vpp(location)
        if found is None:
            raise VppError(f"no VPP found (set ${ENV_VAR} or put vpp on PATH)")
        self.install = found
        self.main_core = main_core
        self.poll_sleep_usec = poll_sleep_usec
        self.buffers = buffers
        self.heap_mb = heap_mb
        self.startup_extra = startup_extra
        self.start_timeout = start_timeout
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._prefix = f"aiomemif-vpp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._programs: VppInstall | None = None
        self._next_socket = 1

    # -- process ------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """VPP's process id while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _startup_conf(self, d: Path) -> str:
        unix = [f"nodaemon nosyslog cli-listen {d}/cli.sock log {d}/vpp.log runtime-dir {d}/run"]
        if self.poll_sleep_usec is not None:
            unix.append(f"poll-sleep-usec {self.poll_sleep_usec}")
        assert self._programs is not None
        plugins = "plugin default { disable } plugin memif_plugin.so { enable } "
        plugins += "plugin ping_plugin.so { enable }"
        if self._programs.plugin_dir is not None:
            plugins = f"path {self._programs.plugin_dir} {plugins}"
        lines = [
            f"unix {{ {' '.join(unix)} }}",
            f"api-segment {{ prefix {self._prefix} }}",
            f"socksvr {{ socket-name {d}/run/api.sock }}",
            f"statseg {{ socket-name {d}/run/stats.sock size 32M page-size 4k }}",
            f"memory {{ main-heap-size {self.heap_mb}M main-heap-page-size 4k }}",
            f"buffers {{ buffers-per-numa {self.buffers} default data-size 2048 page-size 4k }}",
            f"plugins {{ {plugins} }}",
        ]
        if self.main_core is not None:
            lines.append(f"cpu {{ main-core {self.main_core} }}")
        if self.startup_extra:
            lines.append(self.startup_extra)
        return "\n".join(lines) + "\n"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        assert self._programs is not None
        if self._programs.lib_dir is not None:
            old = env.get("LD_LIBRARY_PATH")
            env["LD_LIBRARY_PATH"] = self._programs.lib_dir + (f":{old}" if old else "")
        return env

    def _spawn(self, conf: Path) -> subprocess.Popen[bytes]:
        # A plain child (not an asyncio one): it outlives any one event loop. It gets
        # SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG), so a test run
        # that is killed does not leave a busy VPP behind.
        assert self.dir is not None and self._programs is not None
        with open(self.dir / "stdout.log", "wb") as out:
            return subprocess.Popen(
                [self._programs.vpp, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    async def start(self) -> Vpp:
        """Write the startup config, start VPP and wait until its CLI answers.

        Raises:
            VppError: it is already running, exited, or did not answer within
                ``start_timeout`` seconds (the message holds the end of its log).
        """
        if self.proc is not None:
            raise VppError("VPP is already running")
        sweep_orphans()
        self.dir = Path(tempfile.mkdtemp(prefix="aiomemif-vpp-"))
        try:
            self._programs = await asyncio.to_thread(self.install.unpacked, self.dir)
            (self.dir / "run").mkdir()
            conf = self.dir / "startup.conf"
            conf.write_text(self._startup_conf(self.dir))
            self.proc = self._spawn(conf)
            async with asyncio.timeout(self.start_timeout):
                while True:
                    if self.proc.poll() is not None:
                        raise VppError(f"VPP exited with status {self.proc.returncode}:\n"
                                       f"{self.tail()}")  # fmt: skip
                    if (self.dir / "cli.sock").exists():
                        with contextlib.suppress(VppError):
                            await self.cli("show version")
                            return self
                    await asyncio.sleep(0.02)
        except TimeoutError:
            await self.stop()
            raise VppError(f"VPP did not answer on its CLI in {self.start_timeout} s:\n"
                           f"{self.tail()}") from None  # fmt: skip
        except BaseException:
            await self.stop()
            raise

    def tail(self, n: int = 30) -> str:
        """The last ``n`` lines of VPP's output and log (for error messages)."""
        lines: list[str] = []
        if self.dir is not None:
            for name in ("stdout.log", "vpp.log"):
                with contextlib.suppress(OSError):
                    lines += (self.dir / name).read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines)

    async def kill(self) -> None:
        """SIGKILL VPP (as a crash would), reap it and clean up as :meth:`stop` does."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> None:
        """Stop VPP (SIGTERM, then SIGKILL after 5 s), reap it, remove its directory and its
        ``/dev/shm`` files. Does nothing when it is not running."""
        await self._end(signal.SIGTERM)

    async def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                async with asyncio.timeout(5):
                    while proc.poll() is None:  # noqa: ASYNC110 - not our loop's child
                        await asyncio.sleep(0.01)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
        for leftover in glob.glob(f"/dev/shm/{self._prefix}-*"):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self._programs = None
        self._next_socket = 1

    async def __aenter__(self) -> Vpp:
        return await self.start()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- CLI ----------------------------------------------------------------------------
    async def cli(self, command: str, *, check: bool = True, timeout: float = 30.0) -> str:
        """Run one CLI command through ``vppctl`` and return what it printed.

        With ``check``, output whose first line reads like a failure (``unknown input ...``
        or ``<command>: <reason>``) raises instead of being returned.

        Raises:
            VppError: VPP is not running, vppctl failed or timed out, or (with ``check``)
                the command failed.
        """
        if self.proc is None or self.dir is None or self._programs is None:
            raise VppError("VPP is not running")
        proc = await asyncio.create_subprocess_exec(
            self._programs.vppctl, "-s", str(self.dir / "cli.sock"), command,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self._env(),
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate()
        except TimeoutError:
            raise VppError(f"vppctl {command!r} did not finish in {timeout} s") from None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise VppError(f"vppctl {command!r} failed ({proc.returncode}): {err.decode()}")
        first = text.lstrip("\n").split("\n", 1)[0]
        if check and _FAILED.match(first):
            raise VppError(f"{command!r}: {first.strip()}")
        return text

    # -- memif helpers ------------------------------------------------------------------
    async def create_socket(self, filename: str, socket_id: int | None = None) -> int:
        """``create memif socket``; ``@name`` means the abstract name ``name``. Returns the
        socket id (the next free one unless given).

        Raises:
            VppError: VPP refused it.
        """
        if socket_id is None:
            socket_id = self._next_socket
        self._next_socket = max(self._next_socket, socket_id + 1)
        if filename.startswith("@"):
            filename = "abstract:" + filename[1:]
        await self.cli(f"create memif socket id {socket_id} filename {filename}")
        return socket_id

    async def create_memif(
        self,
        socket_id: int,
        interface_id: int = 0,
        *,
        role: str = "master",
        secret: str | None = None,
        mode: str | None = None,
        ring_size: int | None = None,
        buffer_size: int | None = None,
        rx_queues: int | None = None,
        tx_queues: int | None = None,
        zero_copy: bool = True,
        up: bool = True,
        address: str | None = None,
    ) -> str:
        """``create interface memif`` (``role`` ``"master"`` or ``"slave"``), set it up
        (unless ``up`` is false) and give it an IPv4 ``address`` (``"a.b.c.d/len"``) when
        asked. ``zero_copy=False`` adds ``no-zero-copy`` (a slave option). Returns VPP's
        interface name, ``memif<socket>/<id>``.

        Raises:
            VppError: VPP refused a command.
        """
        if role not in ("master", "slave"):
            raise ValueError("role must be 'master' or 'slave'")
        words = [f"create interface memif socket-id {socket_id} id {interface_id} {role}"]
        for key, value in (("secret", secret), ("mode", mode), ("ring-size", ring_size),
                           ("buffer-size", buffer_size), ("rx-queues", rx_queues),
                           ("tx-queues", tx_queues)):  # fmt: skip
            if value is not None:
                words.append(f"{key} {value}")
        if not zero_copy:
            words.append("no-zero-copy")
        await self.cli(" ".join(words))
        name = f"memif{socket_id}/{interface_id}"
        if up:
            await self.cli(f"set interface state {name} up")
        if address is not None:
            await self.cli(f"set interface ip address {name} {address}")
        return name

    async def memif(self) -> list[MemifInterface]:
        """The interfaces of ``show memif``."""
        return parse_memif(await self.cli("show memif"))[1]

    async def memif_sockets(self) -> list[MemifSocket]:
        """The socket table of ``show memif``."""
        return parse_memif(await self.cli("show memif"))[0]

    async def memif_interface(self, name: str) -> MemifInterface:
        """One interface of ``show memif``.

        Raises:
            VppError: VPP has no memif interface ``name``.
        """
        for iface in await self.memif():
            if iface.name == name:
                return iface
        raise VppError(f"no memif interface {name}")

    async def wait_memif(
        self, name: str, connected: bool = True, timeout: float = 15
    ) -> MemifInterface:
        """Poll ``show memif`` until ``name`` is connected (or not).

        Raises:
            VppError: not in ``timeout`` seconds, or no such interface.
        """
        try:
            async with asyncio.timeout(timeout):
                iface = await self.memif_interface(name)
                while iface.connected != connected:
                    await asyncio.sleep(0.05)
                    iface = await self.memif_interface(name)
        except TimeoutError:
            state = "connect" if connected else "disconnect"
            raise VppError(f"{name} did not {state} in {timeout} s") from None
        return iface

    async def interfaces(self) -> dict[str, InterfaceCounters]:
        """``show interface``: every interface's state and counters, by name."""
        return parse_interfaces(await self.cli("show interface"))

    async def errors(self) -> list[ErrorCounter]:
        """``show errors``: VPP's non-zero error (and info) counters."""
        return parse_errors(await self.cli("show errors"))

    async def ring_stats(self, name: str) -> dict[tuple[str, int], dict[str, int]]:
        """Per-ring memif statistics from ``show hardware-interfaces NAME`` (while it is
        connected): ``("tx", 0)`` to ``{"packets sent": ..., "no tx slot": ...}``,
        ``("rx", 0)`` to ``{"packets received": ...}`` and so on."""
        return parse_hardware_rings(await self.cli(f"show hardware-interfaces {name}"))

    async def clear_counters(self) -> None:
        """``clear interfaces``, ``clear errors`` and ``clear hardware-interfaces``."""
        for command in ("clear interfaces", "clear errors", "clear hardware-interfaces"):
            await self.cli(command)
