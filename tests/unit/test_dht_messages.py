"""Kademlia wire messages (dht/messages.py): golden bytes, round trips, bounds."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.dht.messages import (
    ConnectionType,
    Message,
    MessageLimits,
    MessageType,
    PeerEntry,
    WireRecord,
    decode_message,
    encode_message,
)
from lattica_nb.errors import ConfigError, DecodeError, LocalProtocolError, MultiaddrError
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.multiaddr import Multiaddr


def sha_peer(seed: bytes) -> PeerId:
    return PeerId(b"\x12\x20" + hashlib.sha256(seed).digest())


ED_PEER = PeerId.from_public_key(PrivateKey.generate().public_key)
PEER_A = sha_peer(b"a")
ADDR = Multiaddr("/ip4/192.0.2.42/tcp/443")  # 04 c000022a 06 01bb
ADDR_BYTES = bytes.fromhex("04c000022a0601bb")
# Not multiaddrs we know: an unregistered protocol code, a truncated ip4, garbage.
BAD_ADDRS = [b"\xff\x7f\x00", b"\x04\xc0\x00", b"\x00"]


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field with a one-byte tag, written by hand (varint length)."""
    assert field < 16
    length = len(payload)
    prefix = bytearray()
    while length >= 0x80:
        prefix.append(length & 0x7F | 0x80)
        length >>= 7
    prefix.append(length)
    return bytes([field << 3 | 2]) + bytes(prefix) + payload


# -- golden bytes (built by hand from the .proto; pins the field numbers) ------------------------


def test_golden_find_node_request() -> None:
    wire = bytes.fromhex("0804") + ld(2, b"X")  # type=4 (field 1 varint), key (field 2)
    assert wire == b"\x08\x04\x12\x01X"
    message = Message(MessageType.FIND_NODE, key=b"X")
    assert encode_message(message) == wire
    assert decode_message(wire) == message


def test_golden_put_value_omits_the_default_type_and_nests_the_record() -> None:
    # PUT_VALUE is 0, proto3's default: not written. record = field 3 holding key(1), value(2),
    # timeReceived(5), publisher(666: tag 5330 = d2 29) and ttl(777: tag 6216 = c8 30).
    record = ld(1, b"k") + ld(2, b"v") + ld(5, b"t") + b"\xd2\x29\x01P" + b"\xc8\x30\x90\x1c"
    wire = ld(2, b"k") + ld(3, record)
    message = Message(
        MessageType.PUT_VALUE,
        key=b"k",
        record=WireRecord(b"k", b"v", time_received="t", publisher=b"P", ttl_s=3600),
    )
    assert encode_message(message) == wire
    assert decode_message(wire) == message


def test_golden_closer_and_provider_peers() -> None:
    peer = ld(1, PEER_A.to_bytes()) + ld(2, ADDR_BYTES) + b"\x18\x01"  # connection=CONNECTED
    wire = b"\x08\x03" + ld(2, b"k") + ld(8, peer) + ld(9, peer)
    entry = PeerEntry(PEER_A, (ADDR,), ConnectionType.CONNECTED)
    message = Message(
        MessageType.GET_PROVIDERS, key=b"k", closer_peers=(entry,), provider_peers=(entry,)
    )
    assert encode_message(message) == wire
    assert decode_message(wire) == message


@pytest.mark.parametrize(
    ("level", "varint"),
    [
        (1, "01"),
        (-1, "ffffffffffffffffff01"),  # int32 negatives are sign-extended to 64 bits: 10 bytes
        (-(2**31), "80808080f8ffffffff01"),
        (2**31 - 1, "ffffffff07"),
    ],
)
def test_golden_cluster_level_is_an_int32(level: int, varint: str) -> None:
    wire = b"\x08\x05" + b"\x50" + bytes.fromhex(varint)  # field 10, varint
    message = Message(MessageType.PING, cluster_level=level)
    assert encode_message(message) == wire
    assert decode_message(wire) == message


def test_cluster_level_keeps_the_low_32_bits_of_a_wider_varint() -> None:
    wire = b"\x50" + bytes.fromhex("ffffffff0f")  # 2**32 - 1 as a uint: -1 as an int32
    assert decode_message(wire).cluster_level == -1


def test_empty_body_is_a_put_value() -> None:
    assert decode_message(b"") == Message(MessageType.PUT_VALUE)
    assert encode_message(Message(MessageType.PUT_VALUE)) == b""


# -- round trips -------------------------------------------------------------------------------

peer_ids = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda d: PeerId(b"\x12\x20" + d)),
    st.just(ED_PEER),
)
addrs = st.one_of(
    st.builds(
        lambda ip, port: Multiaddr(f"/ip4/{ipaddress.IPv4Address(ip)}/tcp/{port}"),
        st.integers(0, 2**32 - 1),
        st.integers(0, 65535),
    ),
    st.integers(0, 65535).map(lambda port: Multiaddr(f"/ip6/::1/udp/{port}/quic-v1")),
    st.just(Multiaddr("/dns4/example.com/tcp/4001")),
)
peer_entries = st.builds(
    PeerEntry,
    peer_ids,
    st.lists(addrs, max_size=4).map(tuple),
    st.sampled_from(ConnectionType),
)
records = st.builds(
    WireRecord,
    st.binary(max_size=64),
    st.binary(max_size=256),
    st.text(max_size=20),
    st.none() | st.binary(max_size=40),
    st.none() | st.integers(0, 2**32 - 1),
)
messages = st.builds(
    Message,
    st.sampled_from(MessageType),
    st.binary(max_size=64),
    st.none() | records,
    st.lists(peer_entries, max_size=6).map(tuple),
    st.lists(peer_entries, max_size=3).map(tuple),
    st.integers(-(2**31), 2**31 - 1),
)


@given(messages)
def test_round_trip(message: Message) -> None:
    wire = encode_message(message)
    assert decode_message(wire) == message
    assert encode_message(decode_message(wire)) == wire


@given(st.binary(max_size=512))
@settings(max_examples=500)
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        decode_message(data)
    except DecodeError:
        pass


@given(messages, st.data())
@settings(max_examples=300)
def test_corrupted_messages_raise_only_decode_error(message: Message, data: st.DataObject) -> None:
    wire = bytearray(encode_message(message))
    if wire:
        for _ in range(data.draw(st.integers(1, 4))):
            wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
        wire = wire[: data.draw(st.integers(0, len(wire)))]
    try:
        decode_message(bytes(wire))
    except DecodeError:
        pass


# -- bounds and bad input ----------------------------------------------------------------------


def many_peers(field: int, count: int) -> bytes:
    peer = ld(1, PEER_A.to_bytes())
    return b"".join(ld(field, peer) for _ in range(count))


@pytest.mark.parametrize("field", [8, 9])
def test_peer_flood_is_refused(field: int) -> None:
    with pytest.raises(DecodeError, match="more than 64"):
        decode_message(b"\x08\x04" + many_peers(field, 1000))


@given(st.integers(0, 80), st.sampled_from([8, 9]))
@settings(max_examples=30)
def test_peer_count_limit_is_exact(count: int, field: int) -> None:
    limits = MessageLimits(max_peers=40)
    wire = many_peers(field, count)
    if count <= 40:
        message = decode_message(wire, limits)
        assert len(message.closer_peers if field == 8 else message.provider_peers) == count
    else:
        with pytest.raises(DecodeError, match="more than 40"):
            decode_message(wire, limits)


def test_message_over_the_size_limit_is_refused() -> None:
    wire = encode_message(Message(MessageType.GET_VALUE, key=b"k" * 200))
    with pytest.raises(DecodeError, match="exceeds the limit of 100"):
        decode_message(wire, MessageLimits(max_message_bytes=100))


def test_keys_over_the_limit_are_refused() -> None:
    limits = MessageLimits(max_key_bytes=16)
    assert decode_message(encode_message(Message(MessageType.GET_VALUE, key=b"k" * 16)), limits)
    with pytest.raises(DecodeError, match="key of 17 bytes"):
        decode_message(encode_message(Message(MessageType.GET_VALUE, key=b"k" * 17)), limits)
    record = Message(MessageType.PUT_VALUE, record=WireRecord(b"r" * 17, b"v"))
    with pytest.raises(DecodeError, match="record key of 17 bytes"):
        decode_message(encode_message(record), limits)


@pytest.mark.parametrize("value", [6, 100, 2**40])
def test_unknown_message_type_is_refused(value: int) -> None:
    wire = bytes([0x08]) + _varint(value)
    with pytest.raises(DecodeError, match=f"unknown kad message type {value}"):
        decode_message(wire)


@given(st.binary(max_size=50))
def test_bad_peer_ids_are_refused(raw_id: bytes) -> None:
    try:
        PeerId.from_bytes(raw_id)
    except DecodeError:
        pass
    else:
        return  # hypothesis found a valid peer id; nothing to test
    wire = b"\x08\x04" + ld(8, ld(1, raw_id))
    with pytest.raises(DecodeError, match="bad peer id"):
        decode_message(wire)


def test_peer_entry_without_id_is_refused() -> None:
    with pytest.raises(DecodeError, match="has no peer id"):
        decode_message(ld(9, ld(2, ADDR_BYTES)))


def test_unknown_addresses_are_skipped() -> None:
    for raw in BAD_ADDRS:
        with pytest.raises(MultiaddrError):
            Multiaddr.from_bytes(raw)
    peer = ld(1, PEER_A.to_bytes()) + ld(2, BAD_ADDRS[0]) + ld(2, ADDR_BYTES)
    peer += ld(2, BAD_ADDRS[1]) + ld(2, BAD_ADDRS[2])
    message = decode_message(ld(8, peer))
    assert message.closer_peers == (PeerEntry(PEER_A, (ADDR,)),)


@given(st.lists(st.sampled_from([ADDR_BYTES, *BAD_ADDRS]), max_size=12), st.integers(1, 6))
def test_only_the_first_max_addrs_entries_are_read(raw_addrs: list[bytes], limit: int) -> None:
    peer = ld(1, PEER_A.to_bytes()) + b"".join(ld(2, raw) for raw in raw_addrs)
    message = decode_message(ld(8, peer), MessageLimits(max_addrs_per_peer=limit))
    expected = tuple(ADDR for raw in raw_addrs[:limit] if raw == ADDR_BYTES)
    assert message.closer_peers[0].addrs == expected


def test_unknown_connection_type_reads_as_not_connected() -> None:
    peer = ld(1, PEER_A.to_bytes()) + b"\x18\x09"
    assert decode_message(ld(8, peer)).closer_peers[0].connection is ConnectionType.NOT_CONNECTED


def test_unknown_fields_are_ignored() -> None:
    # field 11 (providerStatus, a later extension) varint, field 12 fixed64, field 13 fixed32,
    # field 14 bytes; then a FIND_NODE.
    extras = b"\x58\x01" + b"\x61" + b"\x00" * 8 + b"\x6d" + b"\x00" * 4 + ld(14, b"zz")
    assert decode_message(extras + b"\x08\x04") == Message(MessageType.FIND_NODE)


@pytest.mark.parametrize(
    ("wire", "what"),
    [
        (b"\x0a\x01\x04", "wrong wire type"),  # type as bytes
        (b"\x10\x01", "wrong wire type"),  # key as a varint
        (b"\x45\x00\x00\x00\x00", "wrong wire type"),  # closer peer as fixed32
        (b"\x12\x05ab", "runs past the end"),
        (b"\x08", "ends inside a varint"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\x0b", "wire type 3"),  # a group
        (b"\x00\x00", "field number 0"),
        (b"\x61\x00\x00", "truncated"),
    ],
)
def test_malformed_protobuf_is_refused(wire: bytes, what: str) -> None:
    with pytest.raises(DecodeError, match=what):
        decode_message(wire)


def test_values_the_schema_cannot_carry_are_refused_on_encode() -> None:
    with pytest.raises(LocalProtocolError, match="int32"):
        encode_message(Message(MessageType.PING, cluster_level=2**31))
    with pytest.raises(LocalProtocolError, match="uint32"):
        encode_message(Message(MessageType.PUT_VALUE, record=WireRecord(b"k", b"v", ttl_s=2**32)))
    with pytest.raises(LocalProtocolError, match="uint32"):
        encode_message(Message(MessageType.PUT_VALUE, record=WireRecord(b"k", b"v", ttl_s=-1)))


def test_zero_ttl_and_empty_publisher_round_trip() -> None:
    message = Message(MessageType.PUT_VALUE, record=WireRecord(b"k", b"", publisher=b"", ttl_s=0))
    assert decode_message(encode_message(message)) == message


@pytest.mark.parametrize("field", ["max_message_bytes", "max_peers", "max_addrs_per_peer",
                                   "max_key_bytes"])  # fmt: skip
def test_limits_are_validated(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        MessageLimits(**{field: 0})


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
