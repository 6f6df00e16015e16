"""The eight memif control messages: frozen values, ``encode`` and ``decode_untrusted``.

Pure code: bytes in, values out. ``encode`` always produces exactly 128 zero-filled bytes;
``decode_untrusted`` reads only the defined fields (padding is ignored, since libmemif sends
junk there) and raises only :class:`~aiomemif.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import struct
from typing import TypeAlias

import attrs

from ..errors import LocalProtocolError, RemoteProtocolError
from . import wire as w

__all__ = [
    "Ack",
    "AddRegion",
    "AddRing",
    "Connect",
    "Connected",
    "Disconnect",
    "Hello",
    "Init",
    "Message",
    "c_string",
    "decode_untrusted",
    "encode",
]


def c_string(raw: bytes) -> bytes:
    """Return ``raw`` up to (not including) its first NUL, like C's ``strlen``."""
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def _text(raw: bytes) -> str:
    return c_string(raw).decode("utf-8", "replace")


def _field(value: str | bytes, size: int, what: str) -> bytes:
    """Encode a NUL-terminated field of ``size`` bytes; at most size - 1 bytes are kept."""
    if isinstance(value, str):
        try:
            data = value.encode()
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(f"{what} is not encodable as UTF-8: {exc}") from exc
        if len(data) >= size:  # cut on a character boundary, not inside one
            data = data[: size - 1].decode("utf-8", "ignore").encode()
    else:
        data = bytes(value)[: size - 1]
    if b"\0" in data:
        raise LocalProtocolError(f"{what} must not contain NUL bytes")
    return data


@attrs.frozen
class Ack:
    """ACK (server → client): go ahead with the next message."""

    type = w.MsgType.ACK


@attrs.frozen
class Hello:
    """HELLO (server → client): the server's name and limits. Maxima are *indexes*."""

    name: str = ""
    min_version: int = w.PROTOCOL_VERSION
    max_version: int = w.PROTOCOL_VERSION
    max_region: int = w.MAX_REGION_INDEX
    max_m2s_ring: int = w.MAX_RING_INDEX
    max_s2m_ring: int = w.MAX_RING_INDEX
    max_log2_ring_size: int = w.MAX_LOG2_RING_SIZE
    type = w.MsgType.HELLO


@attrs.frozen
class Init:
    """INIT (client → server): which interface, in which mode, with which secret."""

    version: int = w.PROTOCOL_VERSION
    interface_id: int = 0
    mode: int = w.Mode.ETHERNET
    #: Raw secret bytes as a C string (no NUL), at most 23 bytes when we send it.
    secret: bytes = b""
    name: str = ""
    type = w.MsgType.INIT


@attrs.frozen
class AddRegion:
    """ADD_REGION (client → server), sent with the region's fd."""

    index: int
    size: int
    type = w.MsgType.ADD_REGION


@attrs.frozen
class AddRing:
    """ADD_RING (client → server), sent with the ring's eventfd."""

    ring_type: w.RingType
    index: int
    region: int
    offset: int
    log2_ring_size: int
    private_hdr_size: int = 0
    type = w.MsgType.ADD_RING


@attrs.frozen
class Connect:
    """CONNECT (client → server): the client's interface name."""

    if_name: str = ""
    type = w.MsgType.CONNECT


@attrs.frozen
class Connected:
    """CONNECTED (server → client): the server's interface name; the link is up."""

    if_name: str = ""
    type = w.MsgType.CONNECTED


@attrs.frozen
class Disconnect:
    """DISCONNECT (either way): a reason; the sender closes right after."""

    reason: str = ""
    code: int = 0
    type = w.MsgType.DISCONNECT


Message: TypeAlias = Ack | Hello | Init | AddRegion | AddRing | Connect | Connected | Disconnect


def encode(msg: Message) -> bytes:
    """Encode ``msg`` as exactly 128 bytes, zero-filled.

    Raises:
        LocalProtocolError: a field does not fit its wire type (e.g. an index above 65535)
            or a string contains a NUL byte.
    """
    return _pack(msg).ljust(w.MSG_SIZE, b"\0")


def _pack(msg: Message) -> bytes:
    t = msg.type
    try:
        if isinstance(msg, Ack):
            return w.TYPE.pack(t)
        if isinstance(msg, Hello):
            name = _field(msg.name, w.NAME_SIZE, "HELLO name")
            return w.HELLO.pack(
                t,
                name,
                msg.min_version,
                msg.max_version,
                msg.max_region,
                msg.max_m2s_ring,
                msg.max_s2m_ring,
                msg.max_log2_ring_size,
            )
        if isinstance(msg, Init):
            secret = _field(msg.secret, w.SECRET_SIZE, "secret")
            name = _field(msg.name, w.NAME_SIZE, "INIT name")
            return w.INIT.pack(t, msg.version, msg.interface_id, msg.mode, secret, name)
        if isinstance(msg, AddRegion):
            return w.ADD_REGION.pack(t, msg.index, msg.size)
        if isinstance(msg, AddRing):
            flags = w.ADD_RING_FLAG_S2M if msg.ring_type == w.RingType.S2M else 0
            return w.ADD_RING.pack(
                t,
                flags,
                msg.index,
                msg.region,
                msg.offset,
                msg.log2_ring_size,
                msg.private_hdr_size,
            )
        if isinstance(msg, Connect | Connected):
            return w.CONNECT.pack(t, _field(msg.if_name, w.NAME_SIZE, "interface name"))
        return w.DISCONNECT.pack(t, msg.code, _field(msg.reason, w.REASON_SIZE, "reason"))
    except (struct.error, OverflowError, TypeError) as exc:
        raise LocalProtocolError(f"cannot encode {msg!r}: {exc}") from exc


def decode_untrusted(data: bytes | bytearray | memoryview) -> Message:
    """Decode one control message received from the peer.

    Only the defined fields are read; padding is ignored.

    Raises:
        RemoteProtocolError: the datagram is not 128 bytes or its type is unknown. The
            exception's ``reason`` is what to send in the DISCONNECT.
    """
    if len(data) != w.MSG_SIZE:
        raise RemoteProtocolError("Invalid message size")
    buf = bytes(data)
    (t,) = w.TYPE.unpack_from(buf)
    if t == w.MsgType.ACK:
        return Ack()
    if t == w.MsgType.HELLO:
        _, name, vmin, vmax, mreg, mm2s, ms2m, mlog2 = w.HELLO.unpack_from(buf)
        return Hello(_text(name), vmin, vmax, mreg, mm2s, ms2m, mlog2)
    if t == w.MsgType.INIT:
        _, version, ifid, mode, secret, name = w.INIT.unpack_from(buf)
        return Init(version, ifid, mode, c_string(secret), _text(name))
    if t == w.MsgType.ADD_REGION:
        _, index, size = w.ADD_REGION.unpack_from(buf)
        return AddRegion(index, size)
    if t == w.MsgType.ADD_RING:
        _, flags, index, region, offset, log2, priv = w.ADD_RING.unpack_from(buf)
        rtype = w.RingType.S2M if flags & w.ADD_RING_FLAG_S2M else w.RingType.M2S
        return AddRing(rtype, index, region, offset, log2, priv)
    if t == w.MsgType.CONNECT:
        return Connect(_text(w.CONNECT.unpack_from(buf)[1]))
    if t == w.MsgType.CONNECTED:
        return Connected(_text(w.CONNECT.unpack_from(buf)[1]))
    if t == w.MsgType.DISCONNECT:
        _, code, reason = w.DISCONNECT.unpack_from(buf)
        return Disconnect(_text(reason), code)
    raise RemoteProtocolError(f"Unknown message type {t:#06x}")
