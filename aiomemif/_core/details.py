"""Frozen snapshots of a connection: names, role, queues, regions and counters."""

from __future__ import annotations

import enum
from typing import Any, final

import attrs

from . import wire as w

__all__ = ["ConnectionDetails", "QueueDetails", "RegionDetails"]


@final
@attrs.frozen
class QueueDetails:
    """One queue as libmemif's ``memif_queue_details_t`` plus counters."""

    qid: int
    ring_size: int
    #: Ring header flags (bit 0 MASK_INT: the receiver polls).
    flags: int
    head: int
    tail: int
    #: Buffer size (client); on a server, the capacity the client offered in slot 0 (or None).
    buffer_size: int | None
    packets: int
    bytes: int
    bad_descriptors: int
    ring_full: int
    interrupts_sent: int
    interrupts_received: int
    #: Packets that took more than one buffer (NEXT chains).
    chained: int


@final
@attrs.frozen
class RegionDetails:
    index: int
    size: int


@final
@attrs.frozen
class ConnectionDetails:
    """Everything ``memif_get_details`` returns, plus regions and per-queue counters."""

    interface_name: str
    app_name: str
    peer_interface_name: str
    peer_app_name: str
    interface_id: int
    secret_set: bool
    role: w.Role
    mode: w.Mode
    socket_address: str
    rx_queues: tuple[QueueDetails, ...]
    tx_queues: tuple[QueueDetails, ...]
    regions: tuple[RegionDetails, ...]
    link_up: bool

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as lower-case names)."""

        def convert(_inst: object, _field: object, value: Any) -> Any:
            return value.name.lower() if isinstance(value, enum.Enum) else value

        return attrs.asdict(self, value_serializer=convert)
