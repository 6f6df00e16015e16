"""``aiomemif responder``, ``ping`` and ``probe``, run as subprocesses like a user would.

Every process is started with a timeout and killed in ``finally``; sockets live in private
temporary directories.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.cli import AIOMEMIF, FAST, check_five_replies


def _default_sigint() -> None:
    # A child of a shell job started with '&' inherits SIGINT ignored; Ctrl-C must work.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def started(*args: str) -> Iterator[subprocess.Popen[str]]:
    """An ``aiomemif`` subprocess, killed (if still running) when the block ends."""
    proc = subprocess.Popen(
        [*AIOMEMIF, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def finish(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AIOMEMIF, *args], capture_output=True, text=True, timeout=timeout)


def wait_for_socket(path: str, proc: subprocess.Popen[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


def responder_counts(text: str) -> tuple[int, int]:
    """(echo replies, ARP replies) from a responder summary."""
    m = re.search(r"(\d+) echo replies, (\d+) ARP replies", text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


# --- responder <-> ping, both roles, both modes ------------------------------------------------


@pytest.mark.parametrize("mode", ["ethernet", "ip"])
def test_responder_server_ping_client(sock_path: str, mode: str) -> None:
    with started("responder", "--role", "server", "--socket", sock_path, "--mode", mode) as resp:
        wait_for_socket(sock_path, resp)
        ping = run("ping", "--role", "client", "--socket", sock_path, "192.168.1.1", "-c", "5",
                   "--mode", mode, *FAST)  # fmt: skip
        assert ping.returncode == 0, ping.stderr
        check_five_replies(ping.stdout)
        assert resp.poll() is None  # a server responder waits for the next client
        # ... and serves it: a second ping on the same responder.
        again = run("ping", "--socket", sock_path, "192.168.1.1", "-c", "2", "--mode", mode, *FAST)
        assert again.returncode == 0 and "2 received" in again.stdout, again.stderr
        resp.send_signal(signal.SIGINT)
        code, out, err = finish(resp)
    assert code in (130, 0), err
    assert responder_counts(out) == (7, 2 if mode == "ethernet" else 0)
    assert "2 links" in out and "interrupted" in out
    assert err.count("link up:") == 2


@pytest.mark.parametrize("mode", ["ethernet", "ip"])
def test_responder_client_ping_server(sock_path: str, mode: str) -> None:
    with started("ping", "--role", "server", "--socket", sock_path, "192.168.1.1", "-c", "5",
                 "--mode", mode, *FAST) as ping:  # fmt: skip
        wait_for_socket(sock_path, ping)
        with started("responder", "--role", "client", "--socket", sock_path, "--mode", mode,
                     "-v") as resp:  # fmt: skip
            code, out, err = finish(ping)
            assert code == 0, err
            check_five_replies(out)
            # The ping server closes the link when done: the client responder ends by itself.
            rcode, rout, rerr = finish(resp)
    assert rcode == 0, rerr
    assert responder_counts(rout) == (5, 1 if mode == "ethernet" else 0)
    assert "peer disconnected: closed by application 'aiomemif'" in rout
    assert (
        len(re.findall(r"ICMP echo request 192\.168\.1\.2 > 192\.168\.1\.1 .*replied", rout)) == 5
    )
    if mode == "ethernet":
        assert "ARP who-has 192.168.1.1 tell 192.168.1.2: replied" in rout


def test_responder_count_ends_and_ping_json(sock_path: str) -> None:
    with started("responder", "--socket", sock_path, "--role", "server", "--count", "3",
                 "--ip", "10.1.2.3", "--mac", "02:00:00:00:00:aa", "--json") as resp:  # fmt: skip
        wait_for_socket(sock_path, resp)
        ping = run("ping", "--socket", sock_path, "10.1.2.3", "--ip", "10.1.2.4", "-c", "3",
                   "-s", "1000", "--json", *FAST)  # fmt: skip
        code, out, err = finish(resp)
    assert ping.returncode == 0, ping.stderr
    result = json.loads(ping.stdout)
    assert result["transmitted"] == result["received"] == 3
    assert result["target_mac"] == "02:00:00:00:00:aa"
    assert result["loss_percent"] == 0 and result["rtt_ms"]["min"] > 0
    assert [r["bytes"] for r in result["replies"]] == [1008] * 3
    assert code == 0, err
    summary = json.loads(out)
    assert summary["echo_replies"] == 3 and summary["arp_replies"] == 1
    assert summary["ip"] == "10.1.2.3" and summary["links"] == 1


def test_chained_packets_and_several_queues(sock_path: str) -> None:
    """9000-byte pings travel as buffer chains; two queues are served."""
    with started("responder", "--role", "server", "--socket", sock_path, "--queues", "2") as resp:
        wait_for_socket(sock_path, resp)
        ping = run("ping", "--socket", sock_path, "192.168.1.1", "-c", "3", "-s", "9000",
                   "--queues", "2", *FAST)  # fmt: skip
        resp.send_signal(signal.SIGINT)
        code, out, err = finish(resp)
    assert ping.returncode == 0, ping.stderr
    assert code in (130, 0), err
    assert ping.stdout.count("9008 bytes from 192.168.1.1") == 3
    assert responder_counts(out) == (3, 1)
    assert "2 rx / 2 tx queue(s)" in err  # the link-up line


def test_responder_pcap(sock_path: str, sock_dir: Path) -> None:
    pcap = sock_dir / "responder.pcapng"
    with started("responder", "--role", "server", "--socket", sock_path, "--count", "2",
                 "--pcap", str(pcap)) as resp:  # fmt: skip
        wait_for_socket(sock_path, resp)
        ping = run("ping", "--socket", sock_path, "192.168.1.1", "-c", "2", *FAST)
        code, _, err = finish(resp)
    assert ping.returncode == 0 and code == 0, err
    dpkt = pytest.importorskip("dpkt")
    with pcap.open("rb") as f:
        frames = [dpkt.ethernet.Ethernet(buf) for _, buf in dpkt.pcapng.Reader(f)]
    # The ARP request and its reply, then two echo requests and two replies.
    kinds = [
        ("arp", f.data.op) if isinstance(f.data, dpkt.arp.ARP) else ("icmp", f.data.data.type)
        for f in frames
    ]
    assert kinds[:2] == [("arp", 1), ("arp", 2)]
    assert sorted(kinds[2:]) == [("icmp", 0), ("icmp", 0), ("icmp", 8), ("icmp", 8)]


def test_ping_without_answers_exits_1(sock_path: str) -> None:
    with started("responder", "--role", "server", "--socket", sock_path) as resp:
        wait_for_socket(sock_path, resp)
        # Wrong target: no ARP reply.
        arp = run("ping", "--socket", sock_path, "192.168.1.99", "-c", "2", "-W", "0.2")
        assert arp.returncode == 1
        assert "ARP failed: no ARP reply from 192.168.1.99 (3 tries)" in arp.stderr
        # The summary says what happened, not "0 packets transmitted, 0% packet loss".
        assert "ARP failed (no ARP reply from 192.168.1.99 (3 tries)): no echo request sent" in (
            arp.stdout
        )
        assert "packet loss" not in arp.stdout and "transmitted" not in arp.stdout
        arp_json = run("ping", "--socket", sock_path, "192.168.1.99", "-c", "2", "-W", "0.2",
                       "--json")  # fmt: skip
        assert arp_json.returncode == 1
        doc = json.loads(arp_json.stdout)
        assert doc["ok"] is False and doc["transmitted"] == 0 and doc["loss_percent"] is None
        assert doc["arp_error"] == "no ARP reply from 192.168.1.99 (3 tries)"
        # Known MAC, wrong IP: echo requests go out, nothing comes back.
        lost = run("ping", "--socket", sock_path, "192.168.1.99", "--target-mac",
                   "02:fe:00:00:00:01", "-c", "2", "-i", "0.05", "-W", "0.2")  # fmt: skip
        assert lost.returncode == 1
        assert "2 packets transmitted, 0 received, 100% packet loss" in lost.stdout
        assert "rtt" not in lost.stdout


# --- Ctrl-C -------------------------------------------------------------------------------------


def test_ctrl_c_ends_responder_with_summary_and_disconnect(sock_path: str) -> None:
    with started("responder", "--role", "server", "--socket", sock_path) as resp:
        wait_for_socket(sock_path, resp)
        with started("ping", "--socket", sock_path, "192.168.1.1", "-c", "500", "-i", "0.02",
                     "-q") as ping:  # fmt: skip
            time.sleep(1.0)  # some replies go by
            resp.send_signal(signal.SIGINT)
            code, out, err = finish(resp)
            pcode, pout, perr = finish(ping)
    assert code in (130, 0), err
    assert "--- responder 192.168.1.1 (02:fe:00:00:00:01) statistics ---" in out
    assert "interrupted" in out and responder_counts(out)[0] > 5
    assert "Traceback" not in err
    # The responder said goodbye with DISCONNECT (its reason reached the ping) ...
    assert "peer disconnected: closed by application 'aiomemif'" in perr
    # ... and the ping, cut short, still printed its summary and failed.
    assert pcode == 1
    assert "packets transmitted" in pout and "rtt min/avg/max/mdev" in pout


def test_ctrl_c_ends_ping_with_summary(sock_path: str) -> None:
    with started("responder", "--role", "server", "--socket", sock_path) as resp:
        wait_for_socket(sock_path, resp)
        with started("ping", "--socket", sock_path, "192.168.1.1", "-c", "500", "-i",
                     "0.02") as ping:  # fmt: skip
            time.sleep(1.0)
            ping.send_signal(signal.SIGINT)
            pcode, pout, perr = finish(ping)
        resp.send_signal(signal.SIGINT)
        finish(resp)
    assert pcode in (130, 0), perr
    assert "--- 192.168.1.1 ping statistics ---" in pout and "Traceback" not in perr


# --- probe --------------------------------------------------------------------------------------


def test_probe_against_aiomemif_server(sock_path: str) -> None:
    with started("responder", "--role", "server", "--socket", sock_path, "--id", "3",
                 "--secret", "s3cret", "--name", "probe-me") as resp:  # fmt: skip
        wait_for_socket(sock_path, resp)
        hello = run("probe", "--socket", sock_path)
        assert hello.returncode == 0, hello.stderr
        assert "memif server 'probe-me'" in hello.stdout
        assert "protocol version:   2.0 .. 2.0" in hello.stdout
        assert "max region index:   255" in hello.stdout
        assert "max log2 ring size: 14 (16384 slots)" in hello.stdout
        assert "interface id" not in hello.stdout

        ok = run("probe", "--socket", sock_path, "--id", "3", "--secret", "s3cret")
        assert ok.returncode == 0, ok.stderr
        assert "interface id 3: accepted (peer interface 'memif3')" in ok.stdout

        unknown = run("probe", "--socket", sock_path, "--id", "4", "--secret", "s3cret")
        assert unknown.returncode == 1
        assert "interface id 4: refused: ID not found" in unknown.stdout

        wrong = run("probe", "--socket", sock_path, "--id", "3", "--secret", "nope", "--json")
        assert wrong.returncode == 1
        result = json.loads(wrong.stdout)
        assert result["accepted"] is False and result["reason"] == "Incorrect secret"
        assert result["hello"]["name"] == "probe-me"

        assert resp.poll() is None  # the probes did not disturb the server
        resp.send_signal(signal.SIGINT)
        _, _, err = finish(resp)
    # One accepted probe connection, closed by the probe with DISCONNECT. The responder
    # reports its end if it got to serve it; a link that came up and went down with
    # nothing to read before accept() returned it is skipped (uvloop is often that fast).
    assert ("peer disconnected: aiomemif probe done" in err) == ("link up:" in err), err


def test_probe_unreachable(sock_dir: Path) -> None:
    out = run("probe", "--socket", str(sock_dir / "nobody.sock"))
    assert out.returncode == 1
    assert "No such file or directory" in out.stderr
    plain = sock_dir / "plain"
    plain.write_text("not a socket")
    out = run("probe", "--socket", str(plain), "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["reachable"] is False


# --- usage errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ping", "999.1.1.1"], "invalid IPv4 address '999.1.1.1'"),
        (["ping", "192.168.1.1", "--socket", "tcp:1.2.3.4"], "unknown address scheme"),
        (["ping", "192.168.1.1", "-s", "70000"], "must be 0..65507"),
        (["ping", "192.168.1.1", "-s", "65500"], "does not fit an Ethernet frame"),
        (["ping", "192.168.1.1", "-W", "0"], "must be more than 0 seconds"),
        (["ping", "192.168.1.1", "-i", "-1"], "non-negative"),
        (["ping", "192.168.1.1", "-c", "0"], "must be positive"),
        (["ping", "192.168.1.1", "--target-mac", "xx"], "invalid MAC address"),
        (["ping"], "the following arguments are required: TARGET"),
        (["responder", "--mac", "02:fe:00:00:00"], "invalid MAC address"),
        (["responder", "--ip", "1.2.3"], "invalid IPv4 address"),
        (["responder", "--role", "peer"], "must be server|client"),
        (["responder", "--socket", ""], "invalid socket address"),
        (["responder", "--ring-size", "1000"], "ring_size must be a power of two"),
        (["probe", "--role", "server"], "probe always connects as a client"),
        (["probe", "--timeout", "0"], "must be a positive number of seconds"),
        (["probe", "--secret", "x" * 30], "memif allows at most 23"),
    ],
)
def test_bad_options_exit_2(args: Sequence[str], message: str, sock_dir: Path) -> None:
    if "--socket" not in args:
        args = [*args, "--socket", str(sock_dir / "unused.sock")]
    out = run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", ["responder", "ping", "probe"])
def test_help_has_examples(command: str) -> None:
    out = run(command, "--help")
    assert out.returncode == 0
    assert "\nexamples:\n  aiomemif " + command in out.stdout
