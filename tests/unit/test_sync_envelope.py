"""Signed Yjs envelopes and room ids (sync/envelope.py): layout, canonical form, forgeries."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.errors import DecodeError, LocalProtocolError, VerificationError
from lattica_nb.identity import PeerId, PrivateKey, PublicKey
from lattica_nb.sync.envelope import (
    GUID_BYTES,
    MAX_SEQ,
    SIGNATURE_DOMAIN,
    Envelope,
    new_guid,
    room_id,
)
from lattica_nb.wire.protobuf import ProtoWriter

# libp2p/specs peer-ids test vector: a fixed Ed25519 key.
ED25519_PRIV = bytes.fromhex(
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
    "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SECP256K1_PUB = bytes.fromhex(
    "08021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99"
)
ALICE = PrivateKey.from_protobuf(ED25519_PRIV)
BOB = PrivateKey.generate()
ALICE_ID = PeerId.from_public_key(ALICE.public_key)
ROOM = room_id("lab", "sweep")
GUID = bytes(range(GUID_BYTES))
UPDATE = b"\x01\x01\xa8\xd4\x8d\xfc\x0b\x00\x04\x01\x06params\x01w\x01x\x00"


def envelope(
    identity: PrivateKey = ALICE, seq: int = 1, update: bytes = UPDATE, *, epoch: int = 0
) -> Envelope:
    return Envelope.create(identity, ROOM, seq, update, guid=GUID, epoch=epoch)


def fields_1_to_6(author: bytes, seq: int, update: bytes, epoch: int = 0) -> ProtoWriter:
    return (
        ProtoWriter()
        .bytes(1, author)
        .bytes(2, ROOM)
        .bytes(3, GUID)
        .uint(4, epoch)
        .uint(5, seq)
        .bytes(6, update)
    )


# -- room ids ---------------------------------------------------------------------------------


def test_room_id_is_sha256_over_a_domain_separated_encoding() -> None:
    expected = hashlib.sha256(b"lattica-nb-yjs-room:" + b"\x0a\x03lab\x12\x05sweep").digest()
    assert room_id("lab", "sweep") == expected
    assert len(expected) == 32


def test_room_id_separates_mesh_and_name() -> None:
    assert room_id("ab", "c") != room_id("a", "bc")
    assert room_id("", "sweep") != room_id("lab", "sweep")
    assert room_id("lab", "sweep") != room_id("lab", "Sweep")


def test_room_id_needs_a_name() -> None:
    with pytest.raises(LocalProtocolError, match="name"):
        room_id("lab", "")


def test_new_guid_is_random_16_bytes() -> None:
    assert len(new_guid()) == GUID_BYTES
    assert new_guid() != new_guid()


# -- layout and round trip --------------------------------------------------------------------


def test_layout_is_the_documented_protobuf_and_signature() -> None:
    env = envelope(seq=7, epoch=3)
    unsigned = fields_1_to_6(ALICE_ID.to_bytes(), 7, UPDATE, epoch=3).finish()
    assert env.encode() == unsigned + b"\x3a\x40" + env.signature
    assert ALICE.public_key.verify(env.signature, SIGNATURE_DOMAIN + unsigned)
    assert env.size == len(env.encode())
    # Ed25519 signing is deterministic: the same content, the same bytes.
    assert envelope(seq=7, epoch=3).encode() == env.encode()


def test_round_trip_and_verify() -> None:
    env = envelope(seq=42, update=b"")
    decoded = Envelope.decode(env.encode())
    assert decoded == env
    decoded.verify()
    assert decoded.author == ALICE_ID
    assert (decoded.room, decoded.guid, decoded.epoch, decoded.seq) == (ROOM, GUID, 0, 42)


def test_largest_seq_and_epoch_round_trip() -> None:
    env = envelope(seq=MAX_SEQ, epoch=MAX_SEQ)
    assert Envelope.decode(env.encode()) == env


@given(
    seq=st.integers(1, MAX_SEQ),
    epoch=st.integers(0, MAX_SEQ),
    update=st.binary(max_size=300),
)
@settings(max_examples=50)
def test_round_trip_property(seq: int, epoch: int, update: bytes) -> None:
    env = envelope(BOB, seq, update, epoch=epoch)
    decoded = Envelope.decode(env.encode())
    assert decoded == env
    decoded.verify()


# -- forgeries --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 2},
        {"update": UPDATE + b"\x00"},
        {"room": room_id("lab", "other")},
        {"guid": bytes(GUID_BYTES)},
        {"epoch": 1},
        {"author": PeerId.from_public_key(BOB.public_key)},
        {"signature": bytes(64)},
    ],
)
def test_any_change_breaks_the_signature(change: dict[str, object]) -> None:
    forged = dataclasses.replace(envelope(), **change)  # type: ignore[arg-type]
    decoded = Envelope.decode(forged.encode())  # well formed: only the signature fails
    with pytest.raises(VerificationError, match="does not verify"):
        decoded.verify()


def test_signature_without_the_domain_is_refused() -> None:
    unsigned = fields_1_to_6(ALICE_ID.to_bytes(), 1, UPDATE).finish()
    raw = unsigned + ProtoWriter().bytes(7, ALICE.sign(unsigned)).finish()
    with pytest.raises(VerificationError):
        Envelope.decode(raw).verify()


def test_same_content_ignores_the_signature_bytes() -> None:
    env = envelope()
    other = dataclasses.replace(env, signature=bytes(64))
    assert env.same_content(other)
    assert env != other
    assert not env.same_content(envelope(seq=2))


# -- refused on decode ------------------------------------------------------------------------


def signed_raw(writer: ProtoWriter) -> bytes:
    unsigned = writer.finish()
    return unsigned + ProtoWriter().bytes(7, ALICE.sign(SIGNATURE_DOMAIN + unsigned)).finish()


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "no field 1"),
        (fields_1_to_6(ALICE_ID.to_bytes(), 1, UPDATE).finish(), "no field 7"),
        (signed_raw(fields_1_to_6(ALICE_ID.to_bytes(), 0, UPDATE)), "seq 0"),
        (signed_raw(fields_1_to_6(b"\x00\x03abc", 1, UPDATE)), "peer id"),
        (
            signed_raw(fields_1_to_6(PeerId(b"\x12\x20" + bytes(32)).to_bytes(), 1, UPDATE)),
            "not an Ed25519 peer id",
        ),
        (
            signed_raw(
                fields_1_to_6(
                    PeerId.from_public_key(PublicKey.from_protobuf(SECP256K1_PUB)).to_bytes(),
                    1,
                    UPDATE,
                )
            ),
            "not an Ed25519 peer id",
        ),
        (
            signed_raw(
                ProtoWriter()
                .bytes(1, ALICE_ID.to_bytes())
                .bytes(2, ROOM[:31])
                .bytes(3, GUID)
                .uint(4, 0)
                .uint(5, 1)
                .bytes(6, UPDATE)
            ),
            "room id is 31 bytes",
        ),
        (
            signed_raw(
                ProtoWriter()
                .bytes(1, ALICE_ID.to_bytes())
                .bytes(2, ROOM)
                .bytes(3, GUID + b"\x00")
                .uint(4, 0)
                .uint(5, 1)
                .bytes(6, UPDATE)
            ),
            "guid is 17 bytes",
        ),
        (
            fields_1_to_6(ALICE_ID.to_bytes(), 1, UPDATE).bytes(7, bytes(63)).finish(),
            "63 bytes, not 64",
        ),
        (envelope().encode() + b"\x40\x01", "not canonically encoded"),  # unknown field 8
        (envelope().encode() + envelope().encode()[-66:], "not canonically encoded"),  # repeat
        (
            ProtoWriter()
            .bytes(2, ROOM)
            .bytes(1, ALICE_ID.to_bytes())
            .bytes(3, GUID)
            .uint(4, 0)
            .uint(5, 1)
            .bytes(6, UPDATE)
            .bytes(7, bytes(64))
            .finish(),
            "not canonically encoded",
        ),
        (b"\x0a\x05ab", "runs past the end"),
        (
            ProtoWriter()
            .uint(1, 5)
            .bytes(2, ROOM)
            .bytes(3, GUID)
            .uint(4, 0)
            .uint(5, 1)
            .bytes(6, UPDATE)
            .bytes(7, bytes(64))
            .finish(),
            "wrong wire type",
        ),
    ],
)
def test_malformed_envelopes_are_refused(raw: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        Envelope.decode(raw)


def test_decode_is_bounded() -> None:
    raw = envelope(update=bytes(1000)).encode()
    with pytest.raises(DecodeError, match="exceeds"):
        Envelope.decode(raw, max_bytes=len(raw) - 1)
    assert Envelope.decode(raw, max_bytes=len(raw)).size == len(raw)


@given(st.binary(max_size=400))
@settings(max_examples=500)
def test_random_bytes_only_raise_decode_error(raw: bytes) -> None:
    try:
        Envelope.decode(raw)
    except DecodeError:
        pass


@given(st.data())
@settings(max_examples=300)
def test_mutated_envelopes_decode_or_raise_decode_error(data: st.DataObject) -> None:
    raw = bytearray(envelope(seq=3).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decoded = Envelope.decode(bytes(raw))
    except DecodeError:
        return
    try:
        decoded.verify()
    except VerificationError:
        return
    assert decoded.same_content(envelope(seq=3))


# -- refused on creation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seq": 0}, "seq 0"),
        ({"seq": MAX_SEQ + 1}, "outside"),
        ({"room": b"short"}, "room id"),
        ({"guid": b"short"}, "guid"),
        ({"epoch": -1}, "epoch"),
        ({"epoch": MAX_SEQ + 1}, "epoch"),
    ],
)
def test_create_refuses_out_of_range_values(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"room": ROOM, "seq": 1, "update": UPDATE, "guid": GUID, "epoch": 0}
    args.update(kwargs)
    with pytest.raises(LocalProtocolError, match=match):
        Envelope.create(ALICE, **args)  # type: ignore[arg-type]


def test_constructor_refuses_a_bad_signature_length_and_hashed_author() -> None:
    env = envelope()
    with pytest.raises(LocalProtocolError, match="signature"):
        dataclasses.replace(env, signature=b"short")
    with pytest.raises(LocalProtocolError, match="Ed25519"):
        dataclasses.replace(env, author=PeerId(b"\x12\x20" + bytes(32)))


def test_envelope_is_immutable_and_hashable() -> None:
    env = envelope()
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.seq = 2  # type: ignore[misc]
    assert len({env, envelope(), envelope(seq=2)}) == 2
