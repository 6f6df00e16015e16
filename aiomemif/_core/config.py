"""Interface configuration: one frozen, validated value per memif interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final

import attrs

from ..errors import ConfigurationError
from . import wire as w
from .layout import RegionLayout

__all__ = ["InterfaceConfig", "Mode", "RegionLayout", "secret_bytes"]

Mode = w.Mode


def secret_bytes(secret: str | bytes | None) -> bytes:
    """Normalise a secret to the bytes sent in INIT (empty for no secret).

    Raises:
        ConfigurationError: longer than 23 bytes or containing a NUL byte.
    """
    if secret is None:
        return b""
    try:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    except UnicodeEncodeError:
        raise ConfigurationError("secret is not encodable as UTF-8") from None
    if b"\0" in raw:
        raise ConfigurationError("secret must not contain NUL bytes")
    if len(raw) > w.SECRET_MAX_CHARS:
        raise ConfigurationError(f"secret is {len(raw)} bytes; memif allows at most 23")
    return raw


_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _name(max_len: int) -> _Validator:
    def check(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
        try:
            raw = value.encode()
        except (UnicodeEncodeError, AttributeError):
            raw = b"\0"  # not text, or not encodable: reported below
        if b"\0" in raw or len(raw) > max_len:
            raise ConfigurationError(
                f"{attr.name} must be at most {max_len} bytes of UTF-8 without NUL"
            )

    return check


def _int_range(lo: int, hi: int) -> _Validator:
    def check(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigurationError(f"{attr.name} must be an integer in {lo}..{hi}, got {value!r}")

    return check


def _ring_size(_inst: object, _attr: attrs.Attribute[int], value: int) -> None:
    if (
        not isinstance(value, int)
        or value < 2
        or value > (1 << w.MAX_LOG2_RING_SIZE)
        or value & (value - 1)
    ):
        raise ConfigurationError(f"ring_size must be a power of two in 2..16384, got {value!r}")


def _cacheline(_inst: object, _attr: attrs.Attribute[int], value: int) -> None:
    if value not in (64, 128):
        raise ConfigurationError(f"cacheline must be 64 or 128, got {value!r}")


def _secret(_inst: object, _attr: attrs.Attribute[bytes | None], value: bytes | None) -> None:
    secret_bytes(value)


def _to_bytes(value: str | bytes | None) -> bytes | None:
    if isinstance(value, str):
        try:
            return value.encode()
        except UnicodeEncodeError:
            raise ConfigurationError("secret is not encodable as UTF-8") from None
    return value


def _mode(value: int | w.Mode) -> w.Mode:
    try:
        return w.Mode(value)
    except ValueError:
        raise ConfigurationError(f"mode must be 0, 1 or 2, got {value!r}") from None


@final
@attrs.frozen(kw_only=True)
class InterfaceConfig:
    """Configuration of one memif interface, for either role.

    Queue counts are from this side's point of view: a client's ``tx_queue_count`` counts
    S2M rings, a server's counts M2S rings. A client asks for these counts (clamped to what
    the server's HELLO allows); on a server they are maxima: its HELLO announces the largest
    counts among its interfaces, and a client asking one interface for more rings than it
    allows is refused ("Invalid ring index 1: interface 3 allows 1 s2m ring").

    A server ignores ``ring_size``, ``buffer_size``, the headrooms and ``layout``: the
    client builds the rings and buffers (as with VPP and DPDK servers, whose HELLO allows
    rings of up to 16384 slots); what a client may make a server map is bounded by
    ``max_region_bytes`` instead.

    Raises:
        ConfigurationError: any value out of range (see each field).
    """

    #: Interface id (u32); selects the interface on a shared socket.
    interface_id: int = attrs.field(default=0, validator=_int_range(0, 0xFFFFFFFF))
    #: Optional shared secret, at most 23 bytes.
    secret: bytes | None = attrs.field(
        default=None,
        converter=_to_bytes,
        validator=_secret,
    )
    mode: w.Mode = attrs.field(default=w.Mode.ETHERNET, converter=_mode)
    #: Receive queues: asked for by a client, the most a server accepts.
    rx_queue_count: int = attrs.field(default=1, validator=_int_range(1, 256))
    #: Transmit queues: asked for by a client, the most a server accepts.
    tx_queue_count: int = attrs.field(default=1, validator=_int_range(1, 256))
    #: Descriptors per ring (client only: the client builds the rings).
    ring_size: int = attrs.field(default=1 << w.DEFAULT_LOG2_RING_SIZE, validator=_ring_size)
    #: Bytes per packet buffer (client only: the client builds the buffers).
    buffer_size: int = attrs.field(default=w.DEFAULT_BUFFER_SIZE, validator=_int_range(1, 65535))
    #: Client only: bytes kept free in front of the data in the buffers offered for
    #: receiving (the data view starts after them), like ``memif_refill_queue(headroom)``.
    rx_headroom: int = attrs.field(default=0, validator=_int_range(0, 65534))
    #: Client only: bytes kept free in front of the data in transmitted buffers.
    tx_headroom: int = attrs.field(default=0, validator=_int_range(0, 65534))
    #: Client only: one region (DPDK style) or rings and buffers in two (libmemif 4.0).
    layout: RegionLayout = attrs.field(default=RegionLayout.SINGLE, converter=RegionLayout)
    #: Cacheline size that lays out ring headers; must match the peer's (64 on x86-64).
    cacheline: int = attrs.field(default=w.DEFAULT_CACHELINE, validator=_cacheline)
    #: Application (instance) name sent in INIT (client). A server ignores it: its HELLO,
    #: shared by every interface of the socket, carries the ``serve(app_name=...)`` name.
    app_name: str = attrs.field(default="aiomemif", validator=_name(31))
    #: Interface name sent in CONNECT or CONNECTED; defaults to ``memif<id>``.
    interface_name: str = attrs.field(default="", validator=_name(31))
    #: Seconds the peer gets to complete the handshake.
    handshake_timeout: float = attrs.field(default=5.0)
    #: Server only: the most bytes of shared memory (all regions together) one client may
    #: hand us. 256 MiB holds 8 queues each way of 4096 slots of 2048 B; VPP's and DPDK's
    #: default regions are a few MiB. Raise it for bigger rings or buffers.
    max_region_bytes: int = attrs.field(default=1 << 28, validator=_int_range(1, 1 << 48))
    #: Both roles: the largest packet taken on receive, in bytes of data (one descriptor's
    #: length, or a whole chain's), up to 16 MiB. Default 65,535: memif's largest frame,
    #: one u16-sized buffer (headroom in front of the data does not count). A larger
    #: packet is dropped and counted in ``bad_descriptors``, like a bad descriptor.
    max_frame_bytes: int = attrs.field(
        default=w.DEFAULT_MAX_FRAME_BYTES, validator=_int_range(1, 1 << 24)
    )

    def __attrs_post_init__(self) -> None:
        for name in ("rx_headroom", "tx_headroom"):
            if getattr(self, name) >= self.buffer_size:
                raise ConfigurationError(f"{name} must be smaller than buffer_size")

    @property
    def log2_ring_size(self) -> int:
        return self.ring_size.bit_length() - 1

    @property
    def secret_bytes(self) -> bytes:
        return secret_bytes(self.secret)

    @property
    def if_name(self) -> str:
        return self.interface_name or f"memif{self.interface_id}"[:31]
