"""Where rings, descriptors and buffers sit in shared memory (pure arithmetic).

The client lays out one region like DPDK's copy mode: all ring headers back to back from
offset 0 (S2M rings first, then M2S), then one buffer per slot of every ring. Ring stride
is ``2·CL + 16·N``.
"""

from __future__ import annotations

import enum

import attrs

from . import wire as w

__all__ = [
    "ClientLayout",
    "RegionLayout",
    "RingPlacement",
    "implied_cacheline",
    "plan_client_layout",
    "ring_bytes",
]


def ring_bytes(log2_ring_size: int, cacheline: int) -> int:
    """Bytes one ring occupies: a two-cacheline header plus the descriptor array."""
    return 2 * cacheline + w.DESC_SIZE * (1 << log2_ring_size)


def implied_cacheline(distance: int, log2_ring_size: int, cacheline: int) -> int | None:
    """The other cacheline size that two rings ``distance`` bytes apart were packed with.

    Every real client packs rings back to back, so the distance from one ring to the next
    in the same region is that client's ring size, ``2·CL + 16·N``. Returns the known
    cacheline size other than ``cacheline`` whose ring size equals ``distance`` (a
    128-byte client seen by a 64-byte server leaves exactly 128 bytes more than this
    server's ring size), or None.
    """
    for other in w.KNOWN_CACHELINES:
        if other != cacheline and distance == ring_bytes(log2_ring_size, other):
            return other
    return None


@attrs.frozen
class RingPlacement:
    """One ring of the client's layout: where its header is and where its buffers start."""

    ring_type: w.RingType
    index: int
    region: int
    offset: int
    #: Offset (in the buffer region) of the buffer that serves slot 0; slot ``s`` is at
    #: ``buffers + s * buffer_size``.
    buffers: int


class RegionLayout(enum.Enum):
    """How the client arranges its shared memory."""

    #: Rings then buffers in region 0 (DPDK and VPP copy mode; the default).
    SINGLE = "single"
    #: Rings in region 0, buffers in region 1 (libmemif 4.0).
    SPLIT = "split"


@attrs.frozen
class ClientLayout:
    """A complete client layout for one connection."""

    region_sizes: tuple[int, ...]
    #: Index of the region holding the packet buffers.
    buffer_region: int
    log2_ring_size: int
    buffer_size: int
    cacheline: int
    s2m: tuple[RingPlacement, ...]
    m2s: tuple[RingPlacement, ...]

    @property
    def region_size(self) -> int:
        """Total bytes over all regions."""
        return sum(self.region_sizes)

    @property
    def ring_size(self) -> int:
        return 1 << self.log2_ring_size

    @property
    def rings(self) -> tuple[RingPlacement, ...]:
        """All rings in the order the client announces them (S2M first, then M2S)."""
        return self.s2m + self.m2s


def plan_client_layout(
    n_s2m: int,
    n_m2s: int,
    log2_ring_size: int,
    buffer_size: int,
    cacheline: int,
    layout: RegionLayout = RegionLayout.SINGLE,
) -> ClientLayout:
    """Plan the client's copy-mode layout.

    With ``n`` S2M and ``m`` M2S rings of ``N`` slots and buffers of ``B`` bytes, S2M ring
    ``i`` is at ``i·S`` and M2S ring ``j`` at ``(n + j)·S`` of region 0, where ``S = 2·CL +
    16·N`` and ``R = (n + m)·S``. Buffer ``k = ring·N + slot`` is at ``R + k·B`` of region 0
    (SINGLE: one region of exactly ``R + (n + m)·N·B`` bytes) or at ``k·B`` of region 1
    (SPLIT: regions of ``R`` and ``(n + m)·N·B`` bytes).
    """
    stride = ring_bytes(log2_ring_size, cacheline)
    n = 1 << log2_ring_size
    total_rings = n_s2m + n_m2s
    rings_end = total_rings * stride
    buffers_size = total_rings * n * buffer_size
    split = layout is RegionLayout.SPLIT
    first_buffer = 0 if split else rings_end
    placements = []
    for k in range(total_rings):
        rtype, idx = (w.RingType.S2M, k) if k < n_s2m else (w.RingType.M2S, k - n_s2m)
        placements.append(
            RingPlacement(rtype, idx, 0, k * stride, first_buffer + k * n * buffer_size)
        )
    return ClientLayout(
        region_sizes=(rings_end, buffers_size) if split else (rings_end + buffers_size,),
        buffer_region=1 if split else 0,
        log2_ring_size=log2_ring_size,
        buffer_size=buffer_size,
        cacheline=cacheline,
        s2m=tuple(placements[:n_s2m]),
        m2s=tuple(placements[n_s2m:]),
    )
