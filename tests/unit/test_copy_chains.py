"""``_copy_chains``, the copy of equal chains into buffers that mostly adjoin: each packet
whose buffers follow each other goes in one piece, the others buffer by buffer, and the
memory must end up exactly as a buffer-by-buffer copy of every packet leaves it."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from aiomemif._core.chains import offset_gaps
from aiomemif._core.tx import _copy_chains

SEG = 64


def reference(memory: bytearray, offsets: list[int], seq: list[bytes], size: int) -> None:
    """Every packet buffer by buffer."""
    k = -(-size // SEG)
    for i, p in enumerate(seq):
        for j in range(k):
            o, n = offsets[i * k + j], min(SEG, size - j * SEG)
            memory[o : o + n] = p[j * SEG : j * SEG + n]


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(SEG + 1, 5 * SEG),
    count=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    scatter=st.floats(0.0, 1.0),
)
def test_same_memory_as_buffer_by_buffer(size: int, count: int, seed: int, scatter: float) -> None:
    """Buffers in order with gaps at random places (a buffer moved elsewhere), anywhere in
    a packet or between packets: the result equals the reference copy, byte for byte."""
    rng = random.Random(seed)
    k = -(-size // SEG)
    slots = count * k
    far = iter(range(slots + 1, 3 * slots + 1, 2))  # buffers that adjoin nothing in use
    offsets = [(next(far) if rng.random() < scatter else i) * SEG for i in range(slots)]
    seq = [rng.randbytes(size) for _ in range(count)]
    got = bytearray(3 * slots * SEG + SEG)
    want = bytearray(got)
    assert _copy_chains(memoryview(got), offsets, seq, size, SEG, offset_gaps(offsets, SEG))
    reference(want, offsets, seq, size)
    assert got == want


def test_a_packet_that_is_not_bytes_is_refused_where_it_is_split() -> None:
    """A split packet must be plain bytes (its pieces are sliced); the caller then takes
    the measuring path. In one piece, the run copy decides as for one-buffer packets."""
    size = 2 * SEG
    offsets = [0, SEG, 5 * SEG, 10 * SEG]  # packet 1 split
    words = memoryview(bytearray(size)).cast("I")
    memory = bytearray(16 * SEG)
    assert not _copy_chains(memoryview(memory), offsets, [bytes(size), words], size, SEG,
                            offset_gaps(offsets, SEG))  # fmt: skip
