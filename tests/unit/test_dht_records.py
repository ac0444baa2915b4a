"""DHT record values: the signed envelope and the validators (sans-IO)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.dht.records import (
    OUR_PREFIX,
    OWNER_PREFIX,
    SIGNATURE_DOMAIN,
    RawValidator,
    SignedRecord,
    SignedValidator,
    Validators,
    key_owner,
    owner_key,
)
from lattica_nb.errors import DecodeError, LocalProtocolError, VerificationError
from lattica_nb.identity import PeerId, PrivateKey, PublicKey
from lattica_nb.wire.protobuf import ProtoWriter
from lattica_nb.wire.varint import encode_uvarint

# libp2p/specs peer-ids test vector (also in test_identity.py): a fixed Ed25519 key.
ED25519_PRIV = bytes.fromhex(
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
    "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SECP256K1_PUB = bytes.fromhex(
    "08021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99"
)
MAX = 15 * 1024
NOW = 1_700_000_000.0
ALICE = PrivateKey.from_protobuf(ED25519_PRIV)
BOB = PrivateKey.generate()


def signed(
    key: bytes = b"/lnb/run",
    value: bytes = b"v",
    identity: PrivateKey = ALICE,
    *,
    seq: int = 1,
    expires_at: float = NOW + 60,
) -> SignedRecord:
    return SignedRecord.create(key, value, identity, seq=seq, expires_at=expires_at)


# -- the envelope --------------------------------------------------------------------------
def test_round_trip_and_verify() -> None:
    record = signed(value=b"hello", seq=7)
    decoded = SignedRecord.decode(record.encode(), max_bytes=MAX)
    assert decoded == record
    decoded.verify()
    assert decoded.publisher_id == PeerId.from_public_key(ALICE.public_key)
    assert decoded.publisher_id == PeerId.from_string(
        "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"
    )


def test_encoding_is_the_documented_protobuf() -> None:
    record = signed(b"/lnb/k", b"val", seq=3, expires_at=1234.5678)
    assert record.expires_at == 1234.568  # carried in milliseconds
    fields_1_to_5 = (
        b"\x0a\x06/lnb/k"
        + b"\x12\x03val"
        + b"\x1a\x24" + ALICE.public_key.to_protobuf()
        + b"\x20\x03"
        + b"\x28" + encode_uvarint(1_234_568)
    )
    assert record.encode() == fields_1_to_5 + b"\x32\x40" + record.signature
    assert ALICE.public_key.verify(record.signature, SIGNATURE_DOMAIN + fields_1_to_5)
    assert SIGNATURE_DOMAIN == b"lattica-nb-dht-record:"


def test_seq_zero_is_written() -> None:
    record = signed(seq=0)
    assert b"\x20\x00" in record.encode()
    assert SignedRecord.decode(record.encode(), max_bytes=MAX).seq == 0


@pytest.mark.parametrize(
    "change",
    [
        {"key": b"/lnb/other"},
        {"value": b"forged"},
        {"seq": 2},
        {"expires_at": NOW + 3600},
        {"publisher": BOB.public_key},
        {"signature": bytes(64)},
    ],
)
def test_tampered_record_does_not_verify(change: dict[str, object]) -> None:
    tampered = dataclasses.replace(signed(), **change)  # type: ignore[arg-type]
    again = SignedRecord.decode(tampered.encode(), max_bytes=MAX)
    with pytest.raises(VerificationError):
        again.verify()


def test_signature_without_the_domain_prefix_does_not_verify() -> None:
    record = signed()
    bare = ALICE.sign(record.encode()[: -66])  # fields 1..5, no domain separation
    with pytest.raises(VerificationError):
        dataclasses.replace(record, signature=bare).verify()


def test_decode_is_bounded() -> None:
    data = signed(value=b"x" * 2000).encode()
    with pytest.raises(DecodeError, match="exceeds 1000"):
        SignedRecord.decode(data, max_bytes=1000)


def _fields(*, publisher: bytes | None = None, signature: bytes | None = None) -> ProtoWriter:
    record = signed()
    return (
        ProtoWriter()
        .bytes(1, record.key)
        .bytes(2, record.value)
        .bytes(3, publisher or record.publisher.to_protobuf())
        .uint(4, record.seq)
        .uint(5, record.expires_at_ms)
        .bytes(6, signature or record.signature)
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no field 1"),
        (signed().encode()[:-66], "no field 6"),
        (signed().encode() + b"\x3a\x00", "not canonically"),  # unknown field 7
        (signed().encode() + b"\x20\x05", "not canonically"),  # field 4 repeated
        (
            ProtoWriter().uint(4, 1).finish() + signed().encode().replace(b"\x20\x01", b"", 1),
            "not canonically",
        ),  # fields out of order
        (_fields(signature=b"\x01" * 63).finish(), "not 64"),
        (_fields(publisher=SECP256K1_PUB).finish(), "not Ed25519"),
        (_fields(publisher=b"\x08\x01\x12\x01x").finish(), "Ed25519 public key"),
    ],
)
def test_malformed_envelopes_are_decode_errors(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        SignedRecord.decode(data, max_bytes=MAX)


def test_expiry_beyond_the_range_is_a_decode_error() -> None:
    data = (
        ProtoWriter().bytes(1, b"k").bytes(2, b"v").bytes(3, ALICE.public_key.to_protobuf())
        .uint(4, 1).uint(5, (1 << 50) + 1).bytes(6, bytes(64)).finish()
    )
    with pytest.raises(DecodeError, match="out of range"):
        SignedRecord.decode(data, max_bytes=MAX)


def test_bad_local_arguments_are_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        signed(seq=-1)
    with pytest.raises(LocalProtocolError):
        signed(seq=1 << 63)
    with pytest.raises(LocalProtocolError):
        signed(expires_at=float("nan"))
    with pytest.raises(LocalProtocolError):
        SignedRecord(b"k", b"v", PublicKey.from_protobuf(SECP256K1_PUB), 1, NOW, bytes(64))


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    try:
        SignedRecord.decode(data, max_bytes=MAX)
    except DecodeError:
        pass


@settings(max_examples=300)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_a_changed_byte_never_yields_an_accepted_other_record(position: int, xor: int) -> None:
    original = signed(value=b"some value", seq=5).encode()
    position %= len(original)
    data = bytearray(original)
    data[position] ^= xor or 1
    try:
        record = SignedRecord.decode(bytes(data), max_bytes=MAX)
    except DecodeError:
        return
    with pytest.raises(VerificationError):
        record.verify()


@settings(max_examples=100, deadline=None)
@given(
    st.binary(max_size=64),
    st.binary(max_size=256),
    st.integers(min_value=0, max_value=(1 << 63) - 1),
    st.integers(min_value=0, max_value=1 << 50),
)
def test_round_trip_any_fields(key: bytes, value: bytes, seq: int, expires_ms: int) -> None:
    record = signed(key, value, seq=seq, expires_at=expires_ms / 1000)
    assert record.expires_at_ms == expires_ms
    decoded = SignedRecord.decode(record.encode(), max_bytes=MAX)
    assert decoded == record
    decoded.verify()


# -- owner-only keys -----------------------------------------------------------------------
def test_owner_key_names_its_owner() -> None:
    alice = PeerId.from_public_key(ALICE.public_key)
    key = owner_key(alice, b"addrs")
    assert key == OWNER_PREFIX + str(alice).encode() + b"/addrs"
    assert key_owner(key) == alice
    assert key_owner(OWNER_PREFIX + str(alice).encode()) == alice
    assert key_owner(b"/lnb/addrs") is None
    with pytest.raises(DecodeError):
        key_owner(OWNER_PREFIX + b"not-a-peer/x")
    with pytest.raises(DecodeError, match="base58btc"):
        key_owner(OWNER_PREFIX + alice.to_cid_string().encode() + b"/x")


def test_only_the_owner_may_publish_under_its_key() -> None:
    alice = PeerId.from_public_key(ALICE.public_key)
    key = owner_key(alice, b"status")
    validator = SignedValidator()
    validator.validate(key, signed(key).encode(), NOW)
    with pytest.raises(VerificationError, match="only"):
        validator.validate(key, signed(key, identity=BOB).encode(), NOW)
    with pytest.raises(DecodeError):
        validator.validate(b"/lnb/o/garbage/x", signed(b"/lnb/o/garbage/x").encode(), NOW)


# -- validators ----------------------------------------------------------------------------
def test_signed_validator_accepts_a_good_record() -> None:
    SignedValidator().validate(b"/lnb/run", signed().encode(), NOW)


def test_expired_record_is_rejected() -> None:
    value = signed(expires_at=NOW + 10).encode()
    SignedValidator().validate(b"/lnb/run", value, NOW + 9.999)
    with pytest.raises(VerificationError, match="expired"):
        SignedValidator().validate(b"/lnb/run", value, NOW + 10)


def test_record_stored_under_another_key_is_rejected() -> None:
    with pytest.raises(VerificationError, match="stored under"):
        SignedValidator().validate(b"/lnb/elsewhere", signed(b"/lnb/run").encode(), NOW)


def test_garbage_under_our_prefix_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        Validators().validate(b"/lnb/run", b"\x80\x80", NOW)


def test_oversize_values_fail_first_naming_the_limit() -> None:
    validators = Validators(max_value_bytes=100)
    big_signed = signed(value=b"x" * 200).encode()
    with pytest.raises(DecodeError, match="max_value_bytes=100"):
        validators.validate(b"/lnb/run", big_signed, NOW)
    with pytest.raises(DecodeError, match="max_value_bytes=100"):
        validators.validate(b"foreign", b"x" * 101, NOW)
    validators.validate(b"foreign", b"x" * 100, NOW)


def test_foreign_values_are_never_decoded() -> None:
    # What a Lattica peer stores: bincode(ValueWithTime{pickled value, expiration}).
    pickle_like = b"\x10\x00\x00\x00\x00\x00\x00\x00\x80\x04\x95\x05" + b"\xff" * 20
    validators = Validators()
    assert isinstance(validators.for_key(b"model_weights"), RawValidator)
    validators.validate(b"model_weights", pickle_like, NOW)
    validators.validate(b"/lnbx", b"\x00", NOW)  # not our prefix: no slash after lnb
    assert validators.select(b"model_weights", [b"b", b"a"]) == 0


def test_for_key_uses_the_longest_registered_prefix() -> None:
    validators = Validators()

    class RejectAll:
        def validate(self, key: bytes, value: bytes, now: float) -> None:
            raise VerificationError("no")

        def select(self, key: bytes, values: object) -> int:
            raise VerificationError("no")

    special = RejectAll()
    validators.register(b"/lnb/special/", special)
    assert validators.for_key(b"/lnb/special/x") is special
    assert isinstance(validators.for_key(b"/lnb/other"), SignedValidator)
    with pytest.raises(VerificationError):
        validators.validate(b"/lnb/special/x", signed(b"/lnb/special/x").encode(), NOW)
    assert OUR_PREFIX == b"/lnb/"


def test_select_prefers_the_newest_seq() -> None:
    values = [signed(seq=s).encode() for s in (3, 9, 1)]
    assert Validators().select(b"/lnb/run", values) == 1


def test_select_breaks_seq_ties_by_publisher_id_bytes() -> None:
    mine, theirs = signed(seq=4), signed(identity=BOB, seq=4)
    order = sorted([mine, theirs], key=lambda r: r.publisher_id.to_bytes())
    values = [order[1].encode(), order[0].encode()]
    assert Validators().select(b"/lnb/run", values) == 0
    assert Validators().select(b"/lnb/run", values[::-1]) == 1


def test_select_is_the_same_whatever_the_order() -> None:
    values = [signed(seq=2, value=bytes([i])).encode() for i in range(5)]
    best = values[Validators().select(b"/lnb/run", values)]
    assert values[::-1][Validators().select(b"/lnb/run", values[::-1])] == best


def test_select_never_picks_an_invalid_value() -> None:
    good = signed(seq=1).encode()
    forged = dataclasses.replace(signed(seq=99), value=b"forged").encode()
    wrong_key = signed(b"/lnb/other", seq=100).encode()
    oversize = signed(seq=101, value=b"x" * 200).encode()
    values = [forged, b"junk", wrong_key, oversize, good]
    assert Validators(max_value_bytes=150).select(b"/lnb/run", values) == 4


def test_select_with_nothing_valid_raises() -> None:
    with pytest.raises(VerificationError):
        Validators().select(b"/lnb/run", [b"junk", signed(b"/lnb/x").encode()])
    with pytest.raises(VerificationError):
        Validators(max_value_bytes=1).select(b"foreign", [b"ab"])
    with pytest.raises(LocalProtocolError):
        Validators().select(b"/lnb/run", [])


def test_select_ignores_expiry() -> None:
    # Expiry needs a clock; validate() checks it before a value reaches select().
    old = signed(seq=5, expires_at=1.0).encode()
    assert Validators().select(b"/lnb/run", [signed(seq=1).encode(), old]) == 1
