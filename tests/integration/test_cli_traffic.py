"""``aiomemif gen``, ``sink`` and ``capture`` run as subprocesses, like a user would, on
temporary socket paths; capture files are read back with dpkt (and tshark when installed)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from aiomemif import ChainedPacket
from aiomemif.cli.traffic import Checker, TestPacket

AIOMEMIF = [sys.executable, "-m", "aiomemif"]
TIMEOUT = 30


class Result(NamedTuple):
    returncode: int
    stdout: bytes
    stderr: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)  # type: ignore[no-any-return]


def run(*args: str) -> Result:
    out = subprocess.run([*AIOMEMIF, *args], capture_output=True, timeout=TIMEOUT)
    return Result(out.returncode, out.stdout, out.stderr.decode())


@contextlib.contextmanager
def server(tmp: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A server subprocess, yielded once it listens; killed if still running at the end."""
    err = tmp / f"server-{time.monotonic_ns()}.err"
    with err.open("wb") as ef:
        proc = subprocess.Popen([*AIOMEMIF, *args], stdout=subprocess.PIPE, stderr=ef)
        try:
            deadline = time.monotonic() + 10
            while b"listening on" not in err.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not start: {err.read_text()}")
                time.sleep(0.02)
            proc.err_path = err  # type: ignore[attr-defined]
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def finish(proc: subprocess.Popen[bytes]) -> Result:
    out, _ = proc.communicate(timeout=TIMEOUT)
    return Result(proc.returncode, out, proc.err_path.read_text())  # type: ignore[attr-defined]


def pair(tmp: Path, srv: list[str], cli: list[str]) -> tuple[Result, Result]:
    """Run a server command and a client command against each other; (server, client)."""
    with server(tmp, *srv) as proc:
        client = run(*cli)
        return finish(proc), client


# -- gen -> sink ----------------------------------------------------------------------


def test_gen_client_to_sink_server_verified(sock_path: str, sock_dir: Path) -> None:
    srv, cli = pair(
        sock_dir,
        ["sink", "--socket", sock_path, "--count", "3000", "--verify", "--json"],
        ["gen", "--socket", sock_path, "--count", "3000", "--size", "128", "--json"],
    )
    assert srv.returncode == 0, srv.stderr
    assert cli.returncode == 0, cli.stderr
    sink, gen = srv.json(), cli.json()
    assert sink["ok"] is True and sink["ended"] == "count"
    assert sink["received"] == 3000 and sink["bytes"] == 3000 * 128
    assert (sink["drops"], sink["out_of_order"], sink["duplicates"], sink["corrupt"]) == (
        0, 0, 0, 0,
    )  # fmt: skip
    assert gen["ok"] is True and gen["sent"] == 3000 and gen["transmit"] == "copy"
    assert gen["per_queue"] == [3000] and gen["mode"] == "ethernet"


def test_gen_server_zero_copy_to_sink_client(sock_path: str, sock_dir: Path) -> None:
    srv, cli = pair(
        sock_dir,
        ["gen", "--role", "server", "--socket", sock_path, "--count", "3000", "--zero-copy",
         "--json"],
        ["sink", "--role", "client", "--socket", sock_path, "--count", "3000", "--verify",
         "--json"],
    )  # fmt: skip
    assert srv.returncode == 0, srv.stderr
    assert cli.returncode == 0, cli.stderr
    gen, sink = srv.json(), cli.json()
    assert gen["transmit"] == "zero-copy" and gen["sent"] == 3000
    assert sink["received"] == 3000 and sink["drops"] == 0 and sink["corrupt"] == 0


@pytest.mark.parametrize("extra", [[], ["--zero-copy"]], ids=["copy", "zero-copy"])
def test_several_queues_ip_mode_chained(sock_path: str, sock_dir: Path, extra: list[str]) -> None:
    common = ["--socket", sock_path, "--queues", "3", "--mode", "ip", "--json"]
    srv, cli = pair(
        sock_dir,
        ["sink", *common, "--count", "1500", "--verify"],
        ["gen", *common, "--count", "1500", "--size", "3000", "--batch", "8", *extra],
    )
    assert srv.returncode == 0, srv.stderr
    assert cli.returncode == 0, cli.stderr
    sink, gen = srv.json(), cli.json()
    assert sink["queues"] == gen["queues"] == 3
    assert sum(sink["per_queue"]) == 1500 and all(n > 0 for n in sink["per_queue"])
    assert sink["per_queue"] == gen["per_queue"]
    assert sink["ok"] is True and sink["out_of_order"] == 0 and sink["corrupt"] == 0


def test_sink_reports_missing_packets(sock_path: str, sock_dir: Path) -> None:
    srv, cli = pair(
        sock_dir,
        ["sink", "--socket", sock_path, "--count", "500", "--verify", "--json"],
        ["gen", "--socket", sock_path, "--count", "300", "--json"],
    )
    assert cli.returncode == 0, cli.stderr
    assert srv.returncode == 1
    sink = srv.json()
    assert sink["ok"] is False and sink["ended"] == "peer disconnect"
    assert (sink["received"], sink["drops"], sink["corrupt"]) == (300, 200, 0)


def test_sink_duration_and_gen_rate_human_output(sock_path: str, sock_dir: Path) -> None:
    srv, cli = pair(
        sock_dir,
        ["sink", "--socket", sock_path, "--verify", "--duration", "8"],
        ["gen", "--socket", sock_path, "--rate", "2000", "--duration", "0.5", "--batch", "4"],
    )
    assert cli.returncode == 0, cli.stderr
    assert srv.returncode == 0, srv.stderr
    text = srv.stdout.decode()
    assert "drops 0, out of order 0, duplicates 0, corrupt 0" in text
    assert "ended by peer disconnect: OK" in text
    received = int(text.split("received ")[1].split()[0])
    assert 600 <= received <= 1100  # 2000/s for 0.5 s, rate-limited
    assert "gen: sent" in cli.stdout.decode() and "pps" in cli.stdout.decode()


def test_sink_ctrl_c_prints_summary_and_exits_130(sock_path: str, sock_dir: Path) -> None:
    gen: subprocess.Popen[bytes] | None = None
    gen_err = sock_dir / "gen.err"
    with (
        server(sock_dir, "sink", "--socket", sock_path, "--verify", "--json") as sink,
        gen_err.open("wb") as ef,
    ):
        try:
            gen = subprocess.Popen(
                [*AIOMEMIF, "gen", "--socket", sock_path, "--rate", "1000"],
                stdout=subprocess.DEVNULL,
                stderr=ef,
            )
            deadline = time.monotonic() + 10
            while b"link up" not in gen_err.read_bytes() and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.5)
            sink.send_signal(signal.SIGINT)
            res = finish(sink)
            gen.wait(timeout=TIMEOUT)
        finally:
            if gen is not None and gen.poll() is None:
                gen.kill()
                gen.wait()
    assert res.returncode == 130, res.stderr
    summary = res.json()
    assert summary["interrupted"] is True and summary["received"] > 0
    assert summary["corrupt"] == 0 and summary["out_of_order"] == 0
    assert gen.returncode == 1  # its peer went away mid-run


def test_progress_line_on_a_terminal(sock_path: str, sock_dir: Path) -> None:
    main, sub = os.openpty()
    try:
        with server(sock_dir, "sink", "--socket", sock_path, "--count", "1000") as sink:
            gen = subprocess.Popen(
                [*AIOMEMIF, "gen", "--socket", sock_path, "--count", "1000", "--rate", "2000"],
                stdout=subprocess.DEVNULL,
                stderr=sub,
            )
            try:
                gen.wait(timeout=TIMEOUT)
            finally:
                if gen.poll() is None:
                    gen.kill()
                    gen.wait()
            assert finish(sink).returncode == 0
        os.close(sub)
        sub = -1
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the writer side is gone and drained
            while chunk := os.read(main, 65536):
                shown += chunk
    finally:
        os.close(main)
        if sub >= 0:
            os.close(sub)
    text = shown.decode()
    assert gen.returncode == 0
    # redrawn in place several times (4 a second for 0.5 s), then erased
    assert text.count("\rgen: ") >= 2, text
    assert "pps" in text and "total 1,000/1,000 packets" in text


# -- capture --------------------------------------------------------------------------


def read_pcapng(data: bytes) -> tuple[int, list[bytes]]:
    dpkt = pytest.importorskip("dpkt")
    import io

    reader = dpkt.pcapng.Reader(io.BytesIO(data))
    return reader.datalink(), [bytes(buf) for _, buf in reader]


def expected(mode: int, size: int, count: int) -> list[bytes]:
    tp = TestPacket(mode, size)
    return [tp.build(seq) for seq in range(count)]


def test_capture_matches_what_gen_sent(sock_path: str, sock_dir: Path) -> None:
    sent, got = sock_dir / "sent.pcapng", sock_dir / "got.pcapng"
    srv, cli = pair(
        sock_dir,
        ["gen", "--role", "server", "--socket", sock_path, "--count", "400", "--size", "3000",
         "--pcap", str(sent)],
        ["capture", "--socket", sock_path, "-w", str(got), "-c", "400", "--json"],
    )  # fmt: skip
    assert srv.returncode == 0, srv.stderr
    assert cli.returncode == 0, cli.stderr
    assert cli.json()["packets"] == 400
    want = expected(0, 3000, 400)
    assert read_pcapng(sent.read_bytes()) == (1, want)
    assert read_pcapng(got.read_bytes()) == (1, want)


def test_capture_to_stdout_ip_mode_snaplen(sock_path: str, sock_dir: Path) -> None:
    srv, cli = pair(
        sock_dir,
        ["gen", "--role", "server", "--socket", sock_path, "--count", "100", "--mode", "ip",
         "--size", "200"],
        ["capture", "--socket", sock_path, "--mode", "ip", "-w", "-", "-c", "100",
         "--snaplen", "64", "--time-precision", "nano"],
    )  # fmt: skip
    assert srv.returncode == 0, srv.stderr
    assert cli.returncode == 0, cli.stderr
    assert "100 of 100 packets" in cli.stderr
    linktype, packets = read_pcapng(cli.stdout)
    assert linktype == 101
    assert packets == [p[:64] for p in expected(1, 200, 100)]


def test_capture_several_queues_and_sink_tap(sock_path: str, sock_dir: Path) -> None:
    got, tap = sock_dir / "got.pcapng", sock_dir / "tap.pcapng"
    # gen -> capture, then gen -> sink --pcap: the same packets both times
    srv, cli = pair(
        sock_dir,
        ["gen", "--role", "server", "--socket", sock_path, "--count", "600", "--queues", "2"],
        ["capture", "--socket", sock_path, "--queues", "2", "-w", str(got), "-c", "600"],
    )
    assert (srv.returncode, cli.returncode) == (0, 0), srv.stderr + cli.stderr
    srv, cli = pair(
        sock_dir,
        ["sink", "--socket", sock_path, "--count", "600", "--queues", "2", "--pcap", str(tap)],
        ["gen", "--socket", sock_path, "--count", "600", "--queues", "2", "--zero-copy"],
    )
    assert (srv.returncode, cli.returncode) == (0, 0), srv.stderr + cli.stderr
    want = expected(0, 64, 600)
    for path in (got, tap):
        _, packets = read_pcapng(path.read_bytes())
        # each queue is in order; across queues packets interleave
        assert sorted(packets, key=lambda p: p[14:22]) == want


def test_tshark_reads_a_capture(sock_path: str, sock_dir: Path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (apt-get install -y tshark)")
    got = sock_dir / "got.pcapng"
    srv, cli = pair(
        sock_dir,
        ["gen", "--role", "server", "--socket", sock_path, "--count", "50", "--size", "100"],
        ["capture", "--socket", sock_path, "-w", str(got), "-c", "50"],
    )
    assert (srv.returncode, cli.returncode) == (0, 0), srv.stderr + cli.stderr
    out = subprocess.run(
        [tshark, "-r", str(got), "-T", "fields", "-e", "eth.src", "-e", "eth.type",
         "-e", "frame.len", "-e", "frame.packet_flags_direction", "-e", "frame.interface_name"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert len(rows) == 50
    assert {tuple(r) for r in rows} == {
        ("02:00:00:00:00:01", "0x88b5", "100", "0x00000001", "memif0")
    }


# -- options --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["gen", "sink", "capture"])
def test_help_has_examples(command: str) -> None:
    out = run(command, "--help")
    assert out.returncode == 0
    assert "examples:\n  aiomemif " + command in out.stdout.decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gen", "--size", "10"], "at least 22 bytes"),
        (["gen", "--mode", "ip", "--size", "27"], "at least 28 bytes"),
        (["gen", "--rate", "0"], "--rate: must be a positive packets/second rate"),
        (["gen", "--count", "0"], "--count: must be positive"),
        (["sink", "--duration", "-1"], "--duration: must be a positive number of seconds"),
        (["sink", "--pcap", "/nonexistent/dir/x.pcapng"], "cannot open --pcap"),
        (["capture"], "required: -w/--write"),
        (["capture", "-w", "x", "--snaplen", "0"], "--snaplen: must be 1..65535"),
        (["capture", "-w", "-", "--json"], "-w - and --json both want standard output"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    out = run(*args, "--socket", "/nonexistent/memif.sock")
    assert out.returncode == 2, out.stderr
    assert message in out.stderr


# -- the test packet format -------------------------------------------------------------


@pytest.mark.parametrize("mode", [0, 1])
def test_test_packet_build_fill_parse(mode: int) -> None:
    tp = TestPacket(mode, 100)
    pkt = tp.build(0x0102030405060708)
    assert len(pkt) == 100
    h = 14 if mode == 0 else 20
    assert pkt[h : h + 8] == bytes.fromhex("0102030405060708")
    assert pkt[h + 8 :] == bytes((8 + i) & 0xFF for i in range(100 - h - 8))
    if mode == 0:
        assert pkt[:14] == bytes.fromhex("020000000002020000000001 88b5".replace(" ", ""))
    else:
        assert pkt[0] == 0x45 and pkt[9] == 253 and struct.unpack(">H", pkt[2:4])[0] == 100
        s = sum(struct.unpack(">10H", pkt[:20]))
        assert (s & 0xFFFF) + (s >> 16) == 0xFFFF  # header checksum verifies
    buf = bytearray(100)
    tp.fill(memoryview(buf), 0x0102030405060708)
    assert bytes(buf) == pkt
    assert tp.parse(pkt) == (0x0102030405060708, True)
    assert tp.parse(pkt[:-1] + b"!") == (0x0102030405060708, False)
    assert tp.parse(pkt[:10]) == (-1, False)


def test_checker_counts_drops_reorder_duplicates_corrupt() -> None:
    tp = TestPacket(0, 64)
    c = Checker(tp, queues=2)
    for seq in (0, 1, 3, 2, 3):  # 2 late, 3 twice
        c.check(memoryview(tp.build(seq)), 0)
    c.check(ChainedPacket([memoryview(tp.build(5)[:30]), memoryview(tp.build(5)[30:])]), 1)
    c.check(memoryview(b"\x00" * 64), 1)
    assert (c.unique, c.out_of_order, c.duplicates, c.corrupt) == (5, 1, 1, 1)
    assert c.drops() == 1  # 4 is missing
    assert c.drops(10) == 5
