"""Control-message codec: round trips, exact layouts, padding, C strings, hostile input.

Sizes and offsets are written out here from the protocol doc (§3) rather than taken from
``aiomemif._core.wire``, so a wrong struct in the library cannot make its own test pass.
"""

from __future__ import annotations

import struct

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiomemif import InterfaceConfig
from aiomemif._core.messages import (
    Ack,
    AddRegion,
    AddRing,
    Connect,
    Connected,
    Disconnect,
    Hello,
    Init,
    Message,
    c_string,
    decode_untrusted,
    encode,
)
from aiomemif._core.wire import Mode, MsgType, RingType
from aiomemif.errors import ConfigurationError, LocalProtocolError, RemoteProtocolError

FAST = settings(max_examples=150, deadline=None)

#: Bytes each message defines (type included), from the doc's struct table (§3).
PAYLOAD_SIZE: dict[int, int] = {
    MsgType.ACK: 2,
    MsgType.HELLO: 45,
    MsgType.INIT: 65,
    MsgType.ADD_REGION: 12,
    MsgType.ADD_RING: 15,
    MsgType.CONNECT: 34,
    MsgType.CONNECTED: 34,
    MsgType.DISCONNECT: 102,
}

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)


def c_text(max_bytes: int) -> st.SearchStrategy[str]:
    """Text without NUL whose UTF-8 form fits ``max_bytes`` (a field of max_bytes + 1)."""
    chars = st.characters(codec="utf-8", exclude_characters="\0")
    return st.text(chars, max_size=max_bytes).filter(lambda s: len(s.encode()) <= max_bytes)


names = c_text(31)
reasons = c_text(95)
secrets = st.binary(max_size=23).filter(lambda b: b"\0" not in b)

acks = st.builds(Ack)
hellos = st.builds(
    Hello,
    name=names,
    min_version=u16,
    max_version=u16,
    max_region=u16,
    max_m2s_ring=u16,
    max_s2m_ring=u16,
    max_log2_ring_size=u8,
)
inits = st.builds(Init, version=u16, interface_id=u32, mode=u8, secret=secrets, name=names)
add_regions = st.builds(AddRegion, index=u16, size=u64)
add_rings = st.builds(
    AddRing,
    ring_type=st.sampled_from(RingType),
    index=u16,
    region=u16,
    offset=u32,
    log2_ring_size=u8,
    private_hdr_size=u16,
)
connects = st.builds(Connect, if_name=names)
connecteds = st.builds(Connected, if_name=names)
disconnects = st.builds(Disconnect, reason=reasons, code=u32)
messages: st.SearchStrategy[Message] = st.one_of(
    acks, hellos, inits, add_regions, add_rings, connects, connecteds, disconnects
)


def msg_type(data: bytes) -> int:
    return int.from_bytes(data[:2], "little")


# --------------------------------------------------------------------------- round trips


@FAST
@given(messages)
def test_round_trip_is_exact_128_bytes_zero_filled(msg: Message) -> None:
    data = encode(msg)
    assert isinstance(data, bytes)
    assert len(data) == 128
    assert msg_type(data) == msg.type
    assert data[PAYLOAD_SIZE[msg.type] :] == bytes(128 - PAYLOAD_SIZE[msg.type])
    decoded = decode_untrusted(data)
    assert type(decoded) is type(msg)
    assert decoded == msg


@FAST
@given(messages)
def test_decode_accepts_bytearray_and_memoryview(msg: Message) -> None:
    data = encode(msg)
    assert decode_untrusted(bytearray(data)) == msg
    assert decode_untrusted(memoryview(data)) == msg
    big = bytearray(b"\xee" * 16 + data + b"\xee" * 16)
    assert decode_untrusted(memoryview(big)[16:144]) == msg


@pytest.mark.parametrize(
    "msg",
    [
        Ack(),
        Hello(),
        Init(),
        AddRegion(0, 0),
        AddRing(RingType.M2S, 0, 0, 0, 0),
        Connect(),
        Connected(),
        Disconnect(),
    ],
    ids=lambda m: type(m).__name__,
)
def test_defaults_encode_to_type_then_zeros(msg: Message) -> None:
    """A value with every field at its zero/default packs only the defined fields."""
    data = encode(msg)
    assert data[:2] == struct.pack("<H", msg.type)
    assert decode_untrusted(data) == msg


def test_every_type_has_a_class() -> None:
    sample: list[Message] = [
        Ack(),
        Hello(),
        Init(),
        AddRegion(0, 1),
        AddRing(RingType.S2M, 0, 0, 0, 10),
        Connect(),
        Connected(),
        Disconnect(),
    ]
    assert sorted(m.type for m in sample) == list(range(1, 9))
    assert {int(m.type) for m in sample} == set(PAYLOAD_SIZE)


def test_messages_are_frozen() -> None:
    msg = Hello(name="x")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        msg.name = "y"  # type: ignore[misc]


# --------------------------------------------------------------------------- padding


@FAST
@given(messages, st.data())
def test_padding_is_ignored_on_decode(msg: Message, data: st.DataObject) -> None:
    size = PAYLOAD_SIZE[msg.type]
    junk = data.draw(st.binary(min_size=128 - size, max_size=128 - size), label="junk")
    raw = bytearray(encode(msg))
    raw[size:] = junk
    assert decode_untrusted(bytes(raw)) == msg


@FAST
@given(st.binary(min_size=4, max_size=4))
def test_libmemif_ack_with_junk_at_2_to_5(junk: bytes) -> None:
    raw = b"\x01\x00" + junk + bytes(122)
    assert decode_untrusted(raw) == Ack()


@FAST
@given(st.binary(min_size=126, max_size=126))
def test_ack_ignores_every_byte_after_the_type(rest: bytes) -> None:
    assert decode_untrusted(b"\x01\x00" + rest) == Ack()


# --------------------------------------------------------------------------- hostile input


@FAST
@given(st.binary(max_size=400))
def test_decode_untrusted_arbitrary_length(data: bytes) -> None:
    """Any length: a message (only if 128 bytes) or RemoteProtocolError, nothing else."""
    if len(data) != 128:
        with pytest.raises(RemoteProtocolError) as info:
            decode_untrusted(data)
        assert info.value.reason == "Invalid message size"
        return
    try:
        msg = decode_untrusted(data)
    except RemoteProtocolError as exc:
        reason = exc.reason
        msg = None
    if msg is None:
        assert reason.startswith("Unknown message type")
    else:
        assert 1 <= msg.type <= 8


type_codes = st.one_of(st.integers(0, 10), u16)


@FAST
@given(type_codes, st.binary(min_size=126, max_size=126))
def test_decode_untrusted_arbitrary_128_bytes(t: int, body: bytes) -> None:
    """128 bytes: known types decode (and can be re-encoded); others are refused."""
    data = struct.pack("<H", t) + body
    if 1 <= t <= 8:
        msg = decode_untrusted(data)
        assert msg.type == t
        again = encode(msg)  # whatever a peer sent, its decoded value can be logged/echoed
        assert len(again) == 128
    else:
        with pytest.raises(RemoteProtocolError) as info:
            decode_untrusted(data)
        assert info.value.reason.startswith("Unknown message type")


@pytest.mark.parametrize("size", [0, 1, 2, 64, 127, 129, 256, 4096])
def test_wrong_sizes_are_refused(size: int) -> None:
    data = (b"\x01\x00" + bytes(size))[:size]
    with pytest.raises(RemoteProtocolError) as info:
        decode_untrusted(data)
    assert info.value.reason == "Invalid message size"


@pytest.mark.parametrize("t", [0, 9, 0x100, 0x0201, 0xFFFF])
def test_unknown_types_are_refused(t: int) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_untrusted(struct.pack("<H", t) + bytes(126))
    assert info.value.reason.startswith("Unknown message type")


# --------------------------------------------------------------------------- layouts


def test_init_field_offsets() -> None:
    data = encode(
        Init(
            version=0x0200,
            interface_id=0x11223344,
            mode=Mode.PUNT_INJECT,
            secret=b"s3cr3t",
            name="app",
        )
    )
    assert data[0:2] == b"\x03\x00"
    assert data[2:4] == b"\x00\x02"
    assert data[4:8] == b"\x44\x33\x22\x11"
    assert data[8] == 2  # mode: one byte ...
    assert data[9:33] == b"s3cr3t" + bytes(18)  # ... immediately followed by the secret
    assert data[33:65] == b"app" + bytes(29)
    assert data[65:] == bytes(63)


def test_init_decodes_from_doc_offsets() -> None:
    raw = bytearray(128)
    raw[0:9] = bytes.fromhex("0300 0002 2a000000 01")
    raw[9:13] = b"pass"
    raw[33:37] = b"peer"
    msg = decode_untrusted(bytes(raw))
    assert msg == Init(version=0x0200, interface_id=42, mode=1, secret=b"pass", name="peer")


def test_hello_field_offsets() -> None:
    data = encode(
        Hello(
            name="n",
            min_version=0x0102,
            max_version=0x0304,
            max_region=0x0506,
            max_m2s_ring=0x0708,
            max_s2m_ring=0x090A,
            max_log2_ring_size=0x0B,
        )
    )
    assert data[2:34] == b"n" + bytes(31)
    assert data[34:45] == bytes.fromhex("0201 0403 0605 0807 0a09 0b")


def test_add_region_field_offsets() -> None:
    data = encode(AddRegion(index=0x0102, size=0x0807060504030201))
    assert data[:12] == bytes.fromhex("0400 0201 0102030405060708")


def test_add_ring_field_offsets_and_unaligned_private_hdr_size() -> None:
    data = encode(
        AddRing(
            RingType.S2M,
            index=0x0203,
            region=0x0405,
            offset=0x06070809,
            log2_ring_size=0x0A,
            private_hdr_size=0xABCD,
        )
    )
    assert data[:15] == bytes.fromhex("0500 0100 0302 0504 09080706 0a cdab")
    assert data[13:15] == b"\xcd\xab"
    assert encode(AddRing(RingType.M2S, 0, 0, 0, 0))[2:4] == b"\x00\x00"


def test_add_ring_decodes_private_hdr_size_at_13() -> None:
    raw = bytearray(128)
    raw[0:15] = bytes.fromhex("0500 0000 0100 0000 00010000 0c 3412")
    msg = decode_untrusted(bytes(raw))
    assert msg == AddRing(RingType.M2S, 1, 0, 256, 12, private_hdr_size=0x1234)


@pytest.mark.parametrize(
    ("flags", "ring_type"),
    [
        (0x0000, RingType.M2S),
        (0x0001, RingType.S2M),
        (0xFFFE, RingType.M2S),
        (0xFFFF, RingType.S2M),
    ],
)
def test_add_ring_only_bit0_of_flags_matters(flags: int, ring_type: RingType) -> None:
    raw = struct.pack("<HHHHIBH", 5, flags, 0, 0, 0, 10, 0).ljust(128, b"\0")
    msg = decode_untrusted(raw)
    assert isinstance(msg, AddRing)
    assert msg.ring_type is ring_type


def test_connect_connected_disconnect_offsets() -> None:
    assert encode(Connect("abc"))[:6] == b"\x06\x00abc\x00"
    assert encode(Connected("abc"))[:6] == b"\x07\x00abc\x00"
    data = encode(Disconnect("bye", code=0x01020304))
    assert data[:9] == b"\x08\x00\x04\x03\x02\x01bye"
    assert data[9:] == bytes(119)


# --------------------------------------------------------------------------- C strings


def test_c_string_helper() -> None:
    assert c_string(b"") == b""
    assert c_string(b"\0abc") == b""
    assert c_string(b"abc\0def\0") == b"abc"
    assert c_string(b"abc") == b"abc"


@FAST
@given(names, st.binary(max_size=40))
def test_name_fields_stop_at_first_nul(name: str, junk: bytes) -> None:
    """Bytes after the terminating NUL (stale memory in C peers) are not part of names."""
    field = (name.encode() + b"\0" + junk)[:32].ljust(32, b"\0")
    hello = struct.pack("<H32sHHHHHB", 2, field, 0x200, 0x200, 1, 2, 3, 14).ljust(128, b"\0")
    assert decode_untrusted(hello) == Hello(name, 0x200, 0x200, 1, 2, 3, 14)
    for t, cls in ((6, Connect), (7, Connected)):
        raw = struct.pack("<H32s", t, field).ljust(128, b"\0")
        assert decode_untrusted(raw) == cls(name)
    init = struct.pack("<HHIB24s32s", 3, 0x200, 1, 0, b"", field).ljust(128, b"\0")
    msg = decode_untrusted(init)
    assert isinstance(msg, Init)
    assert msg.name == name


@FAST
@given(secrets, st.binary(max_size=24))
def test_secret_field_stops_at_first_nul(secret: bytes, junk: bytes) -> None:
    field = (secret + b"\0" + junk)[:24]
    raw = struct.pack("<HHIB24s32s", 3, 0x200, 1, 0, field, b"x").ljust(128, b"\0")
    msg = decode_untrusted(raw)
    assert isinstance(msg, Init)
    assert msg.secret == secret


def test_all_zero_secret_means_no_secret() -> None:
    raw = struct.pack("<HHIB24s32s", 3, 0x200, 1, 0, bytes(24), b"x").ljust(128, b"\0")
    msg = decode_untrusted(raw)
    assert isinstance(msg, Init)
    assert msg.secret == b""


def test_unterminated_fields_from_a_buggy_peer_decode() -> None:
    """A peer that fills a whole field without a NUL: no error, every byte is kept."""
    raw = struct.pack("<H32s", 6, b"A" * 32).ljust(128, b"\0")
    msg = decode_untrusted(raw)
    assert isinstance(msg, Connect)
    assert msg.if_name.startswith("A" * 31)
    raw = struct.pack("<HHIB24s32s", 3, 0x200, 1, 0, b"S" * 24, b"N" * 32).ljust(128, b"\0")
    init = decode_untrusted(raw)
    assert isinstance(init, Init)
    assert init.secret.startswith(b"S" * 23)
    assert init.name.startswith("N" * 31)


def test_invalid_utf8_names_decode_without_error() -> None:
    raw = struct.pack("<H32s", 7, b"\xff\xfe ok").ljust(128, b"\0")
    msg = decode_untrusted(raw)
    assert isinstance(msg, Connected)
    assert msg.if_name.endswith(" ok")


def test_long_strings_are_truncated_with_a_terminating_nul() -> None:
    data = encode(Hello(name="h" * 40))
    assert data[2:34] == b"h" * 31 + b"\0"
    data = encode(Init(name="i" * 40))
    assert data[33:65] == b"i" * 31 + b"\0"
    data = encode(Connect("c" * 40))
    assert data[2:34] == b"c" * 31 + b"\0"
    data = encode(Disconnect("d" * 200))
    assert data[6:102] == b"d" * 95 + b"\0"


# --------------------------------------------------------------------------- secrets


def test_secret_of_23_chars_is_the_maximum_via_config() -> None:
    cfg = InterfaceConfig(secret="x" * 23)
    assert cfg.secret_bytes == b"x" * 23
    data = encode(Init(secret=cfg.secret_bytes))
    assert data[9:32] == b"x" * 23
    assert data[32] == 0  # the terminating NUL fits the 24-byte field
    msg = decode_untrusted(data)
    assert isinstance(msg, Init)
    assert msg.secret == b"x" * 23


@pytest.mark.parametrize("secret", ["x" * 24, "y" * 100, b"z" * 24, "ab\0c", b"\0"])
def test_config_refuses_long_or_nul_secrets(secret: str | bytes) -> None:
    with pytest.raises(ConfigurationError):
        InterfaceConfig(secret=secret)


def test_config_secret_forms() -> None:
    assert InterfaceConfig().secret_bytes == b""
    assert InterfaceConfig(secret="abc123").secret_bytes == b"abc123"
    assert InterfaceConfig(secret=b"abc123").secret_bytes == b"abc123"
    assert InterfaceConfig(secret="é" * 11).secret_bytes == "é".encode() * 11  # 22 bytes
    with pytest.raises(ConfigurationError):
        InterfaceConfig(secret="é" * 12)  # 24 bytes of UTF-8


def test_encode_truncates_an_overlong_secret_like_strlcpy() -> None:
    data = encode(Init(secret=b"s" * 30))
    assert data[9:33] == b"s" * 23 + b"\0"


# --------------------------------------------------------------------------- local errors


@pytest.mark.parametrize(
    "msg",
    [
        AddRegion(0x10000, 1),
        AddRegion(0, 1 << 64),
        AddRegion(-1, 0),
        AddRing(RingType.S2M, 0, 0, 1 << 32, 10),
        AddRing(RingType.S2M, 0, 0, 0, 256),
        AddRing(RingType.S2M, 0, 0, 0, 10, private_hdr_size=0x10000),
        Hello(max_log2_ring_size=256),
        Hello(min_version=-1),
        Init(interface_id=1 << 32),
        Init(mode=256),
        Disconnect(code=-1),
        Disconnect(code=1 << 32),
    ],
    ids=repr,
)
def test_out_of_range_fields_raise_local_protocol_error(msg: Message) -> None:
    with pytest.raises(LocalProtocolError):
        encode(msg)


@pytest.mark.parametrize(
    "msg",
    [
        Hello(name="a\0b"),
        Init(name="a\0b"),
        Init(secret=b"a\0b"),
        Connect("a\0"),
        Connected("\0"),
        Disconnect("why\0not"),
    ],
    ids=repr,
)
def test_nul_inside_strings_raises_local_protocol_error(msg: Message) -> None:
    with pytest.raises(LocalProtocolError):
        encode(msg)


@pytest.mark.parametrize(
    "msg",
    [
        Hello(name="\udcff"),
        Init(name="app \ud800"),
        Connect("if\udcff"),
        Connected("\udfff"),
        Disconnect("reason from a path: \udcff"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_unencodable_strings_raise_local_protocol_error(msg: Message) -> None:
    """Lone surrogates (e.g. from os.fsdecode of a path) cannot be sent as UTF-8.

    ``encode`` promises LocalProtocolError for fields it cannot encode; a bare
    UnicodeEncodeError escapes ``contextlib.suppress(MemifError, OSError)`` around
    DISCONNECT sends and breaks ``Connection.aclose()``'s "never raises".
    """
    with pytest.raises(LocalProtocolError):
        encode(msg)


@pytest.mark.parametrize("field", ["app_name", "interface_name", "secret"])
def test_config_refuses_unencodable_text(field: str) -> None:
    with pytest.raises(ConfigurationError):
        InterfaceConfig(**{field: "x\udcff"})  # type: ignore[arg-type]
