"""The VPP controller: finding VPP, its startup config, CLI failures, parsers and cleanup."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import pytest
from support.vpp import need_vpp

from aiomemif.testing.vpp import Vpp, VppError, VppInstall, find_vpp, sweep_orphans
from aiomemif.testing.vpp_show import parse_errors, parse_interfaces, parse_memif

pytestmark = [pytest.mark.vpp, pytest.mark.timeout(60)]


def test_locations_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = tmp_path / "tree"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib" / "vpp_plugins").mkdir(parents=True)
    (prefix / "lib" / "libvppinfra.so.26.10").touch()
    for prog in ("vpp", "vppctl"):
        (prefix / "bin" / prog).touch(mode=0o755)
    want = VppInstall(
        vpp=f"{prefix}/bin/vpp",
        vppctl=f"{prefix}/bin/vppctl",
        lib_dir=f"{prefix}/lib",
        plugin_dir=f"{prefix}/lib/vpp_plugins",
    )
    assert VppInstall.resolve(prefix) == want
    assert VppInstall.resolve(prefix / "bin" / "vpp") == want
    tar = tmp_path / "vpp-1.0.tar.gz"
    tar.touch()
    script = tmp_path / "run-vpp"
    script.touch()
    assert VppInstall.resolve(tar) == VppInstall(tarball=str(tar))
    assert VppInstall.resolve(script) == VppInstall(tarball=str(tar))
    assert VppInstall.resolve(tmp_path) == VppInstall(tarball=str(tar))
    with pytest.raises(VppError):
        VppInstall.resolve(tmp_path / "nothing")
    monkeypatch.setenv("AIOMEMIF_VPP", str(prefix))
    assert find_vpp() == want
    monkeypatch.setenv("AIOMEMIF_VPP", str(tmp_path / "nothing"))
    assert find_vpp() is None
    monkeypatch.setenv("PATH", str(prefix / "bin"))
    monkeypatch.delenv("AIOMEMIF_VPP")
    assert find_vpp() == want


def test_parsers_on_recorded_output() -> None:
    memif = """sockets
  id  listener    filename
  0   no          /run/vpp/memif.sock
  1   yes (1)     abstract:foo

interface memif1/0
  remote-name "aiomemif"
  remote-interface "memif0"
  socket-id 1 id 0 mode ethernet
  flags admin-up connected
  listener-fd 14 conn-fd 13
  num-s2m-rings 1 num-m2s-rings 1 buffer-size 0 num-regions 1
  region 0 size 4227328 fd 15
    master-to-slave ring 0:
      region 0 offset 16512 ring-size 1024 int-fd 18
      head 1024 tail 0 flags 0x0000 interrupts 0
    slave-to-master ring 0:
      region 0 offset 0 ring-size 1024 int-fd 16
      head 7 tail 7 flags 0x0001 interrupts 3
interface memif1/1
  socket-id 1 id 1 mode ip
  flags admin-up slave zero-copy
  local-disc-reason "incorrect secret"
"""
    sockets, ifaces = parse_memif(memif)
    assert [(s.socket_id, s.listener, s.filename) for s in sockets] == [
        (0, False, "/run/vpp/memif.sock"),
        (1, True, "abstract:foo"),
    ]
    a, b = ifaces
    assert a.connected and not a.zero_copy and a.remote_name == "aiomemif"
    assert a.regions == ((0, 4227328),)
    assert [(r.direction, r.head, r.flags, r.interrupts) for r in a.rings] == [
        ("m2s", 1024, 0, 0),
        ("s2m", 7, 1, 3),
    ]
    assert (b.mode, b.zero_copy, b.connected, b.rings) == ("ip", True, False, ())
    assert b.local_disc_reason == "incorrect secret"
    shown = parse_interfaces(
        "              Name               Idx    State  MTU (L3/IP4/IP6/MPLS)     Counter"
        "          Count     \n"
        "local0                            0     down          0/0/0/0       \n"
        "memif1/0                          1      up          9000/0/0/0     rx packets"
        "                     4\n"
        "                                                                    tx-error"
        "                       2\n"
    )
    assert not shown["local0"].up and shown["local0"].counters == {}
    assert shown["memif1/0"].rx_packets == 4 and shown["memif1/0"].get("tx-error") == 2
    errors = parse_errors(
        "   Count                  Node                              Reason               "
        "Severity \n"
        "         3           ip4-icmp-input                   echo replies sent            "
        "info   \n"
    )
    assert [(e.count, e.node, e.reason, e.severity) for e in errors] == [
        (3, "ip4-icmp-input", "echo replies sent", "info")
    ]


def _vpp_segments() -> set[str]:
    """VPP's shared-memory files (its segments carry the controller's prefix): other
    processes' files in /dev/shm (multiprocessing semaphores, say) come and go."""
    return set(glob.glob("/dev/shm/aiomemif-vpp-*"))


async def test_start_stop_leaves_nothing_behind() -> None:
    vpp = Vpp(need_vpp())
    shm_before = set(_vpp_segments())
    async with vpp:
        assert vpp.dir is not None and vpp.pid is not None
        work, pid = vpp.dir, vpp.pid
        conf = (work / "startup.conf").read_text()
        assert f"cli-listen {work}/cli.sock" in conf and "poll-sleep-usec 100" in conf
        assert "memif_plugin.so { enable }" in conf
        assert "vpp v" in await vpp.cli("show version")
        with pytest.raises(VppError, match="unknown input"):
            await vpp.cli("no such command")
        with pytest.raises(VppError, match="create interface memif"):
            await vpp.cli("create interface memif socket-id 99 id 0")
        assert "unknown input" in await vpp.cli("no such command", check=False)
        assert set(_vpp_segments()) > shm_before
    assert not work.exists()
    assert vpp.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert set(_vpp_segments()) == shm_before
    with pytest.raises(VppError, match="not running"):
        await vpp.cli("show version")


async def test_kill_cleans_up_like_stop() -> None:
    shm_before = set(_vpp_segments())
    vpp = await Vpp(need_vpp()).start()
    work = vpp.dir
    assert work is not None
    await vpp.kill()  # SIGKILL: VPP cannot remove its own shared-memory files
    assert not work.exists()
    assert set(_vpp_segments()) == shm_before
    await vpp.start()  # the same object starts again
    try:
        assert "vpp v" in await vpp.cli("show version")
    finally:
        await vpp.stop()


async def test_a_vpp_that_cannot_start_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "vpp").write_text("#!/bin/sh\necho 'no luck' >&2\nexit 3\n")
    (fake / "vpp").chmod(0o755)
    (fake / "vppctl").touch(mode=0o755)
    with pytest.raises(VppError, match="status 3") as info:
        await Vpp(VppInstall.at_prefix(tmp_path)).start()
    assert "no luck" in str(info.value)


def test_orphaned_segments_are_swept(tmp_path: Path) -> None:
    """Files of a VPP whose controller died go; those of live controllers (this process)
    and files of other names stay."""
    child = subprocess.Popen(["true"])
    child.wait()  # a pid that has just ended
    dead = tmp_path / f"aiomemif-vpp-{child.pid}-0123abcd-global_vm"
    live = tmp_path / f"aiomemif-vpp-{os.getpid()}-0123abcd-global_vm"
    other = tmp_path / "aiomemif-vpp-notapid-vpe-api"
    for f in (dead, live, other):
        f.write_bytes(b"x")
    assert sweep_orphans(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and live.exists() and other.exists()
