"""The fuzz targets (``fuzz/``) without the fuzzer: every kept input replayed, and the
checks shown to catch what they are for.

Every seed of ``fuzz/corpus/<target>/`` and every crash input kept in
``fuzz/regressions/<target>/`` goes through the target's ``one_input`` as the fuzzer
would call it; a regression that comes back fails here. The other tests break aiomemif on
purpose (a view one byte off, a packet written one byte late, a seal check skipped, an fd
kept from a refused message) and expect the target to say so, so that a target whose
checks rot cannot pass quietly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import aiomemif._core.descriptors
import aiomemif._core.handshake as handshake
import aiomemif._core.rx as rx
import aiomemif._core.server_tx as server_tx
from aiomemif._core import wire as w
from aiomemif.errors import ConfigurationError, ResourceError
from fuzz import fuzz_control, fuzz_receive, fuzz_server_tx, harness, run

TARGETS: dict[str, Callable[[bytes], None]] = {
    "control": fuzz_control.one_input,
    "receive": fuzz_receive.one_input,
    "server_tx": fuzz_server_tx.one_input,
}
KEPT = [(target, path) for target in run.TARGETS for path in run.kept_inputs(target)]


def seed(target: str, name: str) -> bytes:
    return (run.HERE / "corpus" / target / f"seed-{name}").read_bytes()


def test_every_target_has_seeds() -> None:
    assert set(TARGETS) == set(run.TARGETS)
    for target in run.TARGETS:
        assert len(list((run.HERE / "corpus" / target).iterdir())) >= 4, target


@pytest.mark.parametrize(
    ("target", "path"), KEPT, ids=[f"{t}/{p.parent.name}/{p.name}" for t, p in KEPT]
)
def test_kept_input(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


def test_receive_leaves_the_bulk_threshold_as_shipped() -> None:
    shipped = aiomemif._core.descriptors.UNIFORM_RUN
    lowered = seed("receive", "server-32-bytes")  # its first byte lowers the threshold
    assert lowered[0] & 4
    fuzz_receive.one_input(lowered)
    after = aiomemif._core.descriptors.UNIFORM_RUN
    assert after == shipped


def test_truncated_inputs_are_inputs_too() -> None:
    """Every prefix of a seed is a valid input (reads past the end give zeros)."""
    for target, one_input in TARGETS.items():
        data = run.kept_inputs(target)[0].read_bytes()
        for n in range(0, len(data), max(1, len(data) // 16)):
            one_input(data[:n])


# -- the checks catch what they are for ---------------------------------------------------


def test_receive_catches_a_view_outside_its_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    real = rx.RxEndpoint._views

    def shifted(self: rx.RxEndpoint, start: int, region: int, offsets: list[int], n: Any) -> Any:
        return real(self, start, region, [o + 1 for o in offsets], n)

    monkeypatch.setattr(rx.RxEndpoint, "_views", shifted)
    with pytest.raises(harness.Finding, match="outside its descriptor"):
        fuzz_receive.one_input(seed("receive", "server-8-wrap"))


def test_receive_catches_a_client_reading_past_its_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def loose(region: int, length: int, offset: int, slot: int, offers: Any, limit: int) -> bool:
        return region == offers.region and 0 < length <= limit  # any offset in the region

    monkeypatch.setattr(rx, "offered_ok", loose)
    # A client (8 slots, 64-byte buffers after the ring) whose server publishes one
    # descriptor in the client's region but outside every buffer offered: on the ring.
    client = bytes([1, 3, 0, 0, 0, 63, 0, 0, 1, 0, 0, 0])
    poke = bytes([fuzz_receive.POKE, 0]) + w.DESC.pack(0, 0, 16, 0, 0)
    publish_one_and_poll = bytes([fuzz_receive.ADVANCE, 0, fuzz_receive.POLL, 1])
    fuzz_receive.one_input(client + poke)  # unbroken without the poll
    with pytest.raises(harness.Finding, match="outside"):
        fuzz_receive.one_input(client + poke + publish_one_and_poll)


def test_server_tx_catches_a_packet_written_one_byte_late(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def late(self: server_tx.ServerTx, packets: Any, start: int, avail: int) -> int:
        ring, s = self.ring, self.tail & self.ring.mask
        _flags, region, _cap, offset, _meta = w.DESC.unpack_from(ring.desc, s * 16)
        p = packets[start]
        self.sinks[region][offset + 1 : offset + 1 + len(p)] = p
        ring.words[4 * s + 1] = len(p)
        self.tail = (self.tail + 1) & 0xFFFF
        ring.set_tail(self.tail)
        self.counters.packets += 1
        self.counters.bytes += len(p)
        return 1

    monkeypatch.setattr(server_tx.ServerTx, "_write_one", late)
    with pytest.raises(harness.Finding):
        fuzz_server_tx.one_input(seed("server_tx", "tx-8-wrap"))


def test_control_catches_an_unsealed_region(monkeypatch: pytest.MonkeyPatch) -> None:
    key = (handshake.ServerState.CONFIGURING, w.MsgType.ADD_REGION)
    real = handshake.ServerHandshake._table[key]

    def no_seal_check(self: Any, msg: Any, fd: int | None, info: Any) -> Any:
        return real(self, msg, fd, info and type(info)(info.kind, info.size, 2, info.file_id))

    monkeypatch.setitem(handshake.ServerHandshake._table, key, no_seal_check)
    with pytest.raises(harness.Finding, match="region 0 on"):
        fuzz_control.one_input(seed("control", "server-fd-kinds"))


def test_control_catches_an_fd_kept_from_a_refused_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = (handshake.ServerState.CONFIGURING, w.MsgType.ADD_REGION)

    def keeps_then_refuses(self: Any, msg: Any, fd: int | None, info: Any) -> Any:
        assert fd is not None
        self.regions.append(handshake.RegionRecord(msg.index, msg.size, fd))
        raise ResourceError("refused, but the fd was kept")

    monkeypatch.setitem(handshake.ServerHandshake._table, key, keeps_then_refuses)
    with pytest.raises(harness.Finding, match="changed the held fds"):
        fuzz_control.one_input(seed("control", "server-dpdk"))


def test_attempt_passes_documented_errors_only() -> None:
    def raises(exc: BaseException) -> None:
        raise exc

    bad = ConfigurationError("x")
    assert harness.attempt((ConfigurationError,), raises, bad) is bad
    with pytest.raises(harness.Finding, match="undocumented ConfigurationError"):
        harness.attempt((ResourceError,), raises, bad)
    with pytest.raises(IndexError):
        harness.attempt((ConfigurationError,), raises, IndexError("not an aiomemif error"))


def test_fd_watch_fails_when_fds_grow() -> None:
    leaked: list[int] = []
    watch = harness._FdWatch(lambda data: None, every=2)
    for _ in range(4):
        watch(b"")
    leaky = harness._FdWatch(lambda data: leaked.append(os.eventfd(0)), every=2)
    try:
        for _ in range(3):
            leaky(b"")  # the count at the 2nd input is the baseline
        with pytest.raises(harness.Finding, match="open fds grew"):
            leaky(b"")
    finally:
        for fd in leaked:
            os.close(fd)
