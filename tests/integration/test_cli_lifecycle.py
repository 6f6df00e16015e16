"""The command line never hangs and never shows a traceback (issue 13, item 6).

Each test is a reproduction from the issue: ``aiomemif`` commands run as subprocesses
against each other, against an example program, or against a scripted raw peer that never
offers receive buffers (tests/support/hostile.py). Timeouts here are hang guards, not
assertions about speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli import AIOMEMIF, aio_run, starved_client

ROOT = Path(__file__).resolve().parents[2]
#: Hang guard: any one command of these tests ends well within this.
GUARD = 30.0


def run(*args: str, timeout: float = GUARD) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AIOMEMIF, *args], capture_output=True, text=True, timeout=timeout)


def only_json(stdout: str) -> dict[str, Any]:
    """The one JSON document ``stdout`` must consist of."""
    doc, end = json.JSONDecoder().raw_decode(stdout.strip())
    assert end == len(stdout.strip()), f"more than one document: {stdout!r}"
    assert isinstance(doc, dict)
    return doc


def wait_for(path: Path | str, proc: subprocess.Popen[str], what: bytes | None = None) -> None:
    """Until ``path`` exists (and, with ``what``, contains it)."""
    deadline = time.monotonic() + GUARD
    p = Path(path)
    while not (p.exists() and (what is None or what in p.read_bytes())):
        if proc.poll() is not None:
            raise AssertionError(f"exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear (or show {what!r})")
        time.sleep(0.02)


@contextlib.contextmanager
def started(*args: str, err: Path, cmd: list[str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """A subprocess with stderr to ``err``; killed (if still running) when the block ends."""
    with err.open("w") as ef:
        proc = subprocess.Popen(
            [*(AIOMEMIF if cmd is None else cmd), *args],
            stdout=subprocess.PIPE,
            stderr=ef,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=GUARD)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=GUARD)
    return proc.returncode, out


# -- gen reads what comes back ----------------------------------------------------------


def test_gen_against_a_reflector_does_not_stall(sock_path: str, sock_dir: Path) -> None:
    reflector = [sys.executable, str(ROOT / "examples" / "reflector.py")]
    with started("--socket", sock_path, "--role", "server", "--count", "100000",
                 cmd=reflector, err=sock_dir / "reflector.err") as refl:  # fmt: skip
        wait_for(sock_path, refl)
        gen = run("gen", "--socket", sock_path, "--count", "100000", "--json")
        code, out = finish(refl)
    assert gen.returncode == 0, gen.stderr
    summary = only_json(gen.stdout)
    assert summary["sent"] == 100000 and summary["ok"] is True
    assert 0 < summary["received"] <= 100000
    assert code == 0 and "reflected 100000 packets" in out


async def test_gen_warns_when_nothing_moves_and_honours_duration(sock_path: str) -> None:
    gen = asyncio.ensure_future(
        aio_run("gen", "--role", "server", "--socket", sock_path, "--duration", "2.5")
    )
    try:
        async with starved_client(sock_path) as peer:
            code, out, err = await asyncio.wait_for(asyncio.shield(gen), GUARD)
            assert await peer.expect_disconnect(wait=GUARD) == "closed by application 'aiomemif'"
    finally:
        if not gen.done():
            gen.cancel()
        with contextlib.suppress(BaseException):
            await gen
    assert code == 0, err
    assert "gen: warning: nothing sent or received for 1 s" in err
    assert "gen: sent 0 packets" in out and "Traceback" not in err


# -- ping honours -c and -W -------------------------------------------------------------


@pytest.mark.parametrize("arp", [False, True], ids=["target-mac", "arp"])
async def test_ping_server_never_waits_past_its_bounds(sock_path: str, arp: bool) -> None:
    args = ["ping", "--role", "server", "--socket", sock_path, "192.168.1.1", "-c", "3",
            "-i", "0.1", "-W", "0.5"]  # fmt: skip
    if not arp:
        args += ["--target-mac", "02:fe:00:00:00:01"]
    ping = asyncio.ensure_future(aio_run(*args))
    try:
        async with starved_client(sock_path):
            code, out, err = await asyncio.wait_for(asyncio.shield(ping), GUARD)
    finally:
        if not ping.done():
            ping.cancel()
        with contextlib.suppress(BaseException):
            await ping
    assert code == 1, err
    assert "Traceback" not in err
    if arp:
        assert "ARP failed: no ARP request could be sent" in err
        assert "no echo request sent" in out
    else:
        assert out.count("not sent: no room in the transmit ring") == 3
        assert "0 packets transmitted, 0 received, 3 not sent" in out
        assert "3 of 3 echo requests not sent" in err


# -- loopback ---------------------------------------------------------------------------


def test_loopback_send_failure_is_one_line_and_exit_1() -> None:
    out = run("loopback", "--ring-size", "2", "--size", "9000", "--count", "3")
    assert out.returncode == 1
    assert out.stderr == (
        "aiomemif loopback: packet of 9000 bytes needs 5 buffers; the ring has 2\n"
    )
    js = run("loopback", "--ring-size", "2", "--size", "9000", "--count", "3", "--json")
    assert js.returncode == 1
    assert only_json(js.stdout)["ok"] is False


@pytest.mark.parametrize("command", ["loopback", "gen", "sink", "ping", "responder"])
def test_bad_ring_size_exits_2_everywhere(command: str, sock_dir: Path) -> None:
    args = [command, "--ring-size", "3"]
    if command != "loopback":
        args += ["--socket", str(sock_dir / "unused.sock")]
    if command == "ping":
        args.append("192.168.1.1")
    out = run(*args)
    assert out.returncode == 2, out.stderr
    assert "ring_size must be a power of two" in out.stderr and "Traceback" not in out.stderr


# -- write errors -----------------------------------------------------------------------

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")


@needs_dev_full
def test_capture_to_dev_full_is_one_line(sock_dir: Path) -> None:
    out = run("capture", "-w", "/dev/full", "--socket", str(sock_dir / "nobody.sock"))
    assert out.returncode == 1
    assert out.stderr == "aiomemif capture: cannot write /dev/full: No space left on device\n"


@needs_dev_full
@pytest.mark.parametrize("side", ["gen", "sink"])
def test_pcap_to_dev_full_is_one_line(side: str, sock_path: str, sock_dir: Path) -> None:
    srv = ["sink", "--socket", sock_path, "--count", "20000"]
    cli = ["gen", "--socket", sock_path, "--count", "20000"]
    (srv if side == "sink" else cli).extend(["--pcap", "/dev/full"])
    err = sock_dir / "server.err"
    with started(*srv, err=err) as server:
        wait_for(err, server, b"listening on")
        client = run(*cli)
        code, _ = finish(server)  # it ends by itself: by failing, or when gen left early
    failed_code, failed_err = (code, err.read_text()) if side == "sink" else (
        client.returncode, client.stderr)  # fmt: skip
    assert failed_code == 1, failed_err
    assert f"aiomemif {side}: cannot write /dev/full: No space left on device\n" in failed_err
    assert "Traceback" not in failed_err and "OSError" not in failed_err


@needs_dev_full
def test_responder_pcap_to_dev_full_is_one_line(sock_path: str, sock_dir: Path) -> None:
    err = sock_dir / "responder.err"
    with started("responder", "--socket", sock_path, "--pcap", "/dev/full", err=err) as resp:
        wait_for(err, resp, b"listening on")
        run("ping", "--socket", sock_path, "192.168.1.1", "-c", "30", "-i", "0.02", "-W", "0.5")
        code, _ = finish(resp)
    text = err.read_text()
    assert code == 1, text
    assert "aiomemif responder: cannot write /dev/full: No space left on device\n" in text
    assert "Traceback" not in text


def test_capture_without_packets_leaves_no_file(sock_path: str, sock_dir: Path) -> None:
    nobody = str(sock_dir / "nobody.sock")
    gone, kept = sock_dir / "gone.pcapng", sock_dir / "kept.pcapng"
    assert run("capture", "-w", str(gone), "--socket", nobody).returncode == 1
    assert not gone.exists()
    assert run("capture", "-w", str(kept), "--socket", nobody, "--keep-empty").returncode == 1
    assert kept.stat().st_size > 0  # the pcapng header
    # The link came up, but nothing arrived.
    err = sock_dir / "responder.err"
    with started("responder", "--socket", sock_path, err=err) as resp:
        wait_for(err, resp, b"listening on")
        out = run("capture", "-w", str(gone), "--socket", sock_path, "--duration", "0.3")
        resp.send_signal(signal.SIGINT)
        finish(resp)
    assert out.returncode == 0, out.stderr
    assert "0 packets (0 bytes)" in out.stderr and not gone.exists()


# -- --json always prints one document --------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["gen"],
        ["sink", "--role", "client"],
        ["capture", "-w", "out.pcapng"],
        ["ping", "192.168.1.1"],
        ["responder", "--role", "client"],
        ["probe"],
    ],
    ids=lambda a: "-".join(a[:2]),
)
def test_json_on_connect_failure(args: list[str], sock_dir: Path) -> None:
    nobody = str(sock_dir / "nobody.sock")
    args = [str(sock_dir / a) if a.endswith(".pcapng") else a for a in args]
    out = run(*args, "--socket", nobody, "--json")
    assert out.returncode == 1, out.stderr
    doc = only_json(out.stdout)
    assert doc["ok"] is False
    if args[0] != "probe":
        assert doc["error"] == f"cannot connect to {nobody}: No such file or directory"
        assert out.stderr.splitlines()[-1] == f"aiomemif {args[0]}: {doc['error']}"
        assert out.stderr.count("\n") <= 2 and "Traceback" not in out.stderr


def test_json_on_bad_options() -> None:
    out = run("gen", "--count", "0", "--json")
    assert out.returncode == 2
    doc = only_json(out.stdout)
    assert doc["ok"] is False and "--count: must be positive" in doc["error"]


# -- signals ----------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_closes_with_disconnect_and_prints_summary(
    signum: signal.Signals, status: int, sock_path: str, sock_dir: Path
) -> None:
    err, gen_err = sock_dir / "sink.err", sock_dir / "gen.err"
    with started("sink", "--socket", sock_path, "--json", err=err) as sink:
        wait_for(err, sink, b"listening on")
        with started("gen", "--socket", sock_path, "--rate", "1000", "--json",
                     err=gen_err) as gen:  # fmt: skip
            wait_for(gen_err, gen, b"link up")
            time.sleep(0.3)  # some packets go by
            gen.send_signal(signum)
            gcode, gout = finish(gen)
        scode, sout = finish(sink)
    assert gcode == status, gen_err.read_text()
    summary = only_json(gout)
    assert summary["interrupted"] is True and summary["sent"] > 0
    # The sink saw DISCONNECT: a normal end, with gen's reason.
    assert scode == 0, err.read_text()
    assert only_json(sout)["ended"] == "peer disconnect"


@pytest.mark.parametrize("command", ["sink", "ping"])
def test_sigterm_while_waiting_for_a_client(command: str, sock_path: str, sock_dir: Path) -> None:
    err = sock_dir / "server.err"
    args = [command, "--role", "server", "--socket", sock_path, "--json"]
    if command == "ping":
        args.append("192.168.1.1")
    with started(*args, err=err) as server:
        wait_for(err, server, b"listening on")
        server.send_signal(signal.SIGTERM)
        code, out = finish(server)
    assert code == 143
    doc = only_json(out)
    assert doc["ok"] is False
    if command == "sink":  # its own summary
        assert doc["interrupted"] is True and doc["received"] == 0
    else:  # nothing of its own to say
        assert doc.pop("loop") in ("asyncio", "uvloop")
        assert doc == {"command": "ping", "ok": False, "error": "interrupted by SIGTERM",
                       "exit_status": 143}  # fmt: skip
    assert "Traceback" not in err.read_text()


# -- what a failed set-up says -----------------------------------------------------------


def test_refused_handshake_is_not_link_down(sock_path: str, sock_dir: Path) -> None:
    err = sock_dir / "sink.err"
    with started("sink", "--socket", sock_path, "--secret", "right", err=err) as sink:
        wait_for(err, sink, b"listening on")
        gen = run("gen", "--socket", sock_path, "--secret", "wrong", "--count", "10")
        sink.send_signal(signal.SIGINT)
        finish(sink)
    assert gen.returncode == 1
    assert gen.stderr == "aiomemif gen: handshake refused: Incorrect secret\n"
    assert gen.stdout == ""  # no summary of a run that never started


def test_fewer_queues_than_asked_are_reported(sock_path: str, sock_dir: Path) -> None:
    err = sock_dir / "sink.err"
    with started("sink", "--socket", sock_path, "--count", "100", err=err) as sink:
        wait_for(err, sink, b"listening on")
        gen = run("gen", "--socket", sock_path, "--queues", "4", "--count", "100")
        code, _ = finish(sink)
    assert gen.returncode == 0 and code == 0, gen.stderr
    assert "gen: link up with 'aiomemif' (1 queue(s) of the 4 asked for)" in gen.stderr


@pytest.mark.parametrize("command", ["responder", "sink", "capture", "ping", "gen"])
def test_servers_print_refused_handshakes(command: str, sock_path: str, sock_dir: Path) -> None:
    err = sock_dir / "server.err"
    args = [command, "--role", "server", "--socket", sock_path, "--secret", "right"]
    if command == "capture":
        args += ["-w", str(sock_dir / "x.pcapng")]
    if command == "ping":
        args.append("192.168.1.1")
    with started(*args, err=err) as server:
        wait_for(err, server, b"listening on")
        wrong = run("probe", "--socket", sock_path, "--id", "0", "--secret", "wrong")
        unknown = run("probe", "--socket", sock_path, "--id", "7")
        wait_for(err, server, b"ID not found")
        server.send_signal(signal.SIGTERM)
        code, _ = finish(server)
    assert wrong.returncode == unknown.returncode == 1
    text = err.read_text()
    assert code == 143, text
    assert f"aiomemif {command}: refused interface 0: Incorrect secret\n" in text
    assert f"aiomemif {command}: refused interface 7: ID not found\n" in text
    assert text.count("refused interface") == 2 and "link down" not in text
    # The HELLO-only half of each probe (the client left before INIT) is no refusal.
    assert "probe done" not in text
