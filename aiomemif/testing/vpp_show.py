"""Parsers for the VPP CLI output that memif tests need: ``show memif``, ``show interface``,
``show errors`` and the memif part of ``show hardware-interfaces``.

Each parser takes the text a command printed and returns frozen values; lines it does not
recognise are skipped, so a newer VPP that prints more still parses.
"""

from __future__ import annotations

import re

import attrs

__all__ = [
    "ErrorCounter",
    "InterfaceCounters",
    "MemifInterface",
    "MemifRing",
    "MemifSocket",
    "parse_errors",
    "parse_hardware_rings",
    "parse_interfaces",
    "parse_memif",
]


@attrs.frozen
class MemifSocket:
    """One row of ``show memif``'s socket table."""

    socket_id: int
    listener: bool
    filename: str


@attrs.frozen
class MemifRing:
    """One ring of a connected memif interface, as ``show memif`` prints it."""

    #: ``"m2s"`` (master-to-slave) or ``"s2m"`` (slave-to-master).
    direction: str
    index: int
    region: int
    offset: int
    ring_size: int
    head: int
    tail: int
    flags: int
    interrupts: int


@attrs.frozen
class MemifInterface:
    """One interface of ``show memif``."""

    name: str
    socket_id: int
    interface_id: int
    mode: str
    #: The words after ``flags``: ``admin-up``, ``connected``, ``slave``, ``zero-copy``, ...
    flags: frozenset[str]
    remote_name: str | None = None
    remote_interface: str | None = None
    num_s2m_rings: int = 0
    num_m2s_rings: int = 0
    buffer_size: int = 0
    num_regions: int = 0
    #: ``(index, size)`` of each mapped region.
    regions: tuple[tuple[int, int], ...] = ()
    rings: tuple[MemifRing, ...] = ()
    #: Why VPP last disconnected, in its own words (``local-disc-reason``).
    local_disc_reason: str | None = None
    #: What the peer said when it last disconnected (``remote-disc-reason``).
    remote_disc_reason: str | None = None

    @property
    def connected(self) -> bool:
        return "connected" in self.flags

    @property
    def zero_copy(self) -> bool:
        return "zero-copy" in self.flags


@attrs.frozen
class InterfaceCounters:
    """One interface of ``show interface``: its state and non-zero counters."""

    name: str
    index: int
    up: bool
    #: Counter name to value, e.g. ``"rx packets"``, ``"tx bytes"``, ``"drops"``,
    #: ``"tx-error"``; counters VPP does not print (zero) are absent.
    counters: dict[str, int] = attrs.field(factory=dict, eq=False)

    def get(self, name: str) -> int:
        """The counter ``name``, 0 when VPP did not print it."""
        return self.counters.get(name, 0)

    @property
    def rx_packets(self) -> int:
        return self.get("rx packets")

    @property
    def tx_packets(self) -> int:
        return self.get("tx packets")

    @property
    def rx_bytes(self) -> int:
        return self.get("rx bytes")

    @property
    def tx_bytes(self) -> int:
        return self.get("tx bytes")

    @property
    def drops(self) -> int:
        return self.get("drops")


@attrs.frozen
class ErrorCounter:
    """One row of ``show errors``."""

    count: int
    node: str
    reason: str
    severity: str


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


_IFACE = re.compile(r"^interface (\S+)$")
_SOCKET_ROW = re.compile(r"^\s*(\d+)\s+(yes|no)(?: \(\d+\))?\s+(\S.*?)\s*$")
_IDS = re.compile(r"socket-id (\d+) id (\d+) mode (\S+)")
_COUNTS = re.compile(r"num-s2m-rings (\d+) num-m2s-rings (\d+) buffer-size (\d+) num-regions (\d+)")
_REGION = re.compile(r"^region (\d+) size (\d+)")
_RING = re.compile(r"^(master-to-slave|slave-to-master) ring (\d+):")
_RING_AT = re.compile(r"^region (\d+) offset (\d+) ring-size (\d+)")
_RING_STATE = re.compile(r"^head (\d+) tail (\d+) flags 0x([0-9a-fA-F]+) interrupts (\d+)")


def parse_memif(text: str) -> tuple[list[MemifSocket], list[MemifInterface]]:
    """Parse ``show memif``: its socket table and its interfaces, in the order printed."""
    sockets: list[MemifSocket] = []
    interfaces: list[MemifInterface] = []
    cur: dict[str, object] | None = None
    regions: list[tuple[int, int]] = []
    rings: list[MemifRing] = []
    ring: dict[str, int | str] | None = None

    def finish_ring() -> None:
        nonlocal ring
        if ring is not None and "head" in ring:
            rings.append(MemifRing(**ring))  # type: ignore[arg-type]
        ring = None

    def finish() -> None:
        nonlocal cur
        finish_ring()
        if cur is not None:
            kw = {**cur, "regions": tuple(regions), "rings": tuple(rings)}
            interfaces.append(MemifInterface(**kw))  # type: ignore[arg-type]
        regions.clear()
        rings.clear()
        cur = None

    for raw in text.splitlines():
        line = raw.strip()
        if m := _IFACE.match(line):
            finish()
            cur = {"name": m.group(1), "socket_id": -1, "interface_id": -1, "mode": "",
                   "flags": frozenset()}  # fmt: skip
            continue
        if cur is None:
            if (m := _SOCKET_ROW.match(raw)) and not line.startswith("id "):
                sockets.append(MemifSocket(int(m.group(1)), m.group(2) == "yes", m.group(3)))
            continue
        if m := _RING.match(line):
            finish_ring()
            direction = "m2s" if m.group(1) == "master-to-slave" else "s2m"
            ring = {"direction": direction, "index": int(m.group(2))}
        elif ring is not None and (m := _RING_AT.match(line)):
            ring.update(region=int(m.group(1)), offset=int(m.group(2)), ring_size=int(m.group(3)))
        elif ring is not None and (m := _RING_STATE.match(line)):
            ring.update(head=int(m.group(1)), tail=int(m.group(2)), flags=int(m.group(3), 16),
                        interrupts=int(m.group(4)))  # fmt: skip
            finish_ring()
        elif m := _REGION.match(line):
            regions.append((int(m.group(1)), int(m.group(2))))
        elif m := _IDS.search(line):
            cur.update(socket_id=int(m.group(1)), interface_id=int(m.group(2)), mode=m.group(3))
        elif m := _COUNTS.search(line):
            cur.update(num_s2m_rings=int(m.group(1)), num_m2s_rings=int(m.group(2)),
                       buffer_size=int(m.group(3)), num_regions=int(m.group(4)))  # fmt: skip
        elif line.startswith("flags"):
            cur["flags"] = frozenset(line.split()[1:])
        else:
            key, _, value = line.partition(" ")
            field = {
                "remote-name": "remote_name",
                "remote-interface": "remote_interface",
                "local-disc-reason": "local_disc_reason",
                "remote-disc-reason": "remote_disc_reason",
            }.get(key)
            if field is not None:
                cur[field] = _unquote(value)
    finish()
    return sockets, interfaces


_IF_ROW = re.compile(r"^(\S+)\s+(\d+)\s+(up|down)\s+\S+(?:\s+(\S.*?)\s+(\d+))?\s*$")
_IF_MORE = re.compile(r"^\s+(\S.*?)\s+(\d+)\s*$")


def parse_interfaces(text: str) -> dict[str, InterfaceCounters]:
    """Parse ``show interface``: interface name to its state and counters."""
    out: dict[str, InterfaceCounters] = {}
    cur: InterfaceCounters | None = None
    for line in text.splitlines():
        if m := _IF_ROW.match(line):
            cur = InterfaceCounters(m.group(1), int(m.group(2)), m.group(3) == "up")
            out[cur.name] = cur
            if m.group(4):
                cur.counters[m.group(4)] = int(m.group(5))
        elif cur is not None and (m := _IF_MORE.match(line)):
            cur.counters[m.group(1)] = int(m.group(2))
    return out


_ERR_ROW = re.compile(r"^\s*(\d+)\s+(\S+)\s+(\S.*?)\s+(\S+)\s*$")


def parse_errors(text: str) -> list[ErrorCounter]:
    """Parse ``show errors``: one value per non-zero counter."""
    out = []
    for line in text.splitlines():
        if m := _ERR_ROW.match(line):
            out.append(ErrorCounter(int(m.group(1)), m.group(2), m.group(3), m.group(4)))
    return out


_HW_RING = re.compile(r"^(master-to-slave|slave-to-master) ring (\d+)$")
_HW_STAT = re.compile(r"^([a-z][a-z ]*?):\s*(\d+)$")


def parse_hardware_rings(text: str) -> dict[tuple[str, int], dict[str, int]]:
    """Parse the per-ring statistics of ``show hardware-interfaces NAME`` for a memif.

    Returns ``("tx", index)`` or ``("rx", index)``, VPP's own transmit or receive ring, to
    counters such as ``"packets sent"``, ``"no tx slot"`` (times VPP found the ring full)
    and ``"packets received"``. (VPP 26.10 labels its transmit rings "master-to-slave" and
    its receive rings "slave-to-master" in either role, so the labels are not used.)
    """
    out: dict[tuple[str, int], dict[str, int]] = {}
    cur: dict[str, int] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if m := _HW_RING.match(line):
            direction = "tx" if m.group(1) == "master-to-slave" else "rx"
            cur = out.setdefault((direction, int(m.group(2))), {})
        elif cur is not None and (m := _HW_STAT.match(line)):
            cur[m.group(1)] = int(m.group(2))
    return out
