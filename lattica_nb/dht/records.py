"""DHT record values: our signed envelope and the validators that judge values.

Keys under ``/lnb/`` (:data:`OUR_PREFIX`) hold a signed envelope; any other
key is *foreign* (a Lattica peer, for one, stores
``bincode(ValueWithTime{pickled value, expiration})`` under plain string keys)
and is only size-checked, never decoded.

Signed record envelope
----------------------

A value stored under ``/lnb/…`` is this protobuf message::

    message SignedRecord {
      bytes  key           = 1;  // the DHT key the value is stored under
      bytes  value         = 2;  // the application's bytes
      bytes  publisher     = 3;  // libp2p PublicKey protobuf; Ed25519 only
      uint64 seq           = 4;  // publisher's sequence number, 0 .. 2**63-1
      uint64 expires_at_ms = 5;  // unix time in milliseconds, at most 2**50
      bytes  signature     = 6;  // Ed25519, 64 bytes
    }

``signature`` is the publisher's Ed25519 signature over::

    b"lattica-nb-dht-record:" || encoding of fields 1..5

The encoding is canonical and a decoder refuses any other: every field present
exactly once, in field order 1..6, no unknown fields, minimal varints (``seq``
0 is written, not omitted). So the signed bytes are exactly the envelope up to
field 6, and two envelopes are equal iff their bytes are. The string prefix
separates these signatures from every other use of the identity key.

A value is accepted (:meth:`SignedValidator.validate`) when it decodes within
the size bound, its ``key`` equals the key it is stored under, it has not
expired (``expires_at_ms`` later than now), its signature verifies, and, for an
owner-only key (:data:`OWNER_PREFIX`: ``/lnb/o/<peer id>`` or under
``/lnb/o/<peer id>/``, the peer id spelled in base58btc), its publisher *is*
that peer. Among several values for one key
the best is the highest ``seq``; ties go to the larger publisher peer-id bytes,
then to the larger envelope bytes, so every node picks the same one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import DecodeError, LocalProtocolError, VerificationError
from ..identity import KeyType, PeerId, PrivateKey, PublicKey
from ..wire.protobuf import ProtoWriter, parse_fields

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "OUR_PREFIX",
    "OWNER_PREFIX",
    "SIGNATURE_DOMAIN",
    "RawValidator",
    "SignedRecord",
    "SignedValidator",
    "Validator",
    "Validators",
    "key_owner",
    "owner_key",
]

OUR_PREFIX = b"/lnb/"
"""Keys under this prefix hold a :class:`SignedRecord` envelope."""
OWNER_PREFIX = b"/lnb/o/"
"""``/lnb/o/<peer id base58>/…``: only that peer may publish under the key."""
SIGNATURE_DOMAIN = b"lattica-nb-dht-record:"
"""Prepended to fields 1..5 before signing (domain separation)."""
DEFAULT_MAX_VALUE_BYTES = 15 * 1024
"""Largest value stored; keeps a PUT_VALUE under rust-libp2p's 16 KiB packet."""

MAX_SEQ = (1 << 63) - 1
"""Largest ``seq`` (our varints carry 63 bits)."""
MAX_EXPIRES_AT_MS = 1 << 50
"""Largest ``expires_at_ms`` (year ~37,600): milliseconds survive the trip through a float."""
ED25519_SIGNATURE_BYTES = 64
_FIELDS = (1, 2, 3, 4, 5, 6)


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """One signed envelope. ``expires_at`` is unix seconds, carried in milliseconds."""

    key: bytes
    value: bytes
    publisher: PublicKey
    seq: int
    expires_at: float
    signature: bytes

    def __post_init__(self) -> None:
        if self.publisher.key_type is not KeyType.ED25519:
            raise LocalProtocolError("a signed DHT record's publisher must be an Ed25519 key")
        if not 0 <= self.seq <= MAX_SEQ:
            raise LocalProtocolError(f"record seq {self.seq} is outside 0..2**63-1")
        _check_expiry(self.expires_at)

    @classmethod
    def create(
        cls, key: bytes, value: bytes, identity: PrivateKey, *, seq: int, expires_at: float
    ) -> SignedRecord:
        """Sign ``value`` under ``key``; ``expires_at`` is rounded to the millisecond."""
        _check_expiry(expires_at)
        unsigned = cls(key, value, identity.public_key, seq, _ms(expires_at) / 1000, b"")
        signature = identity.sign(SIGNATURE_DOMAIN + unsigned._unsigned_encoding())
        return cls(key, value, identity.public_key, seq, unsigned.expires_at, signature)

    @property
    def publisher_id(self) -> PeerId:
        return PeerId.from_public_key(self.publisher)

    @property
    def expires_at_ms(self) -> int:
        return _ms(self.expires_at)

    def _unsigned_encoding(self) -> bytes:
        return (
            ProtoWriter()
            .bytes(1, self.key)
            .bytes(2, self.value)
            .bytes(3, self.publisher.to_protobuf())
            .uint(4, self.seq)
            .uint(5, self.expires_at_ms)
            .finish()
        )

    def encode(self) -> bytes:
        return self._unsigned_encoding() + ProtoWriter().bytes(6, self.signature).finish()

    @classmethod
    def decode(cls, data: bytes, *, max_bytes: int) -> SignedRecord:
        """Read a canonical envelope of at most ``max_bytes``; DecodeError otherwise.

        The signature is *not* checked here: call :meth:`verify`.
        """
        fields = parse_fields(data, max_bytes=max_bytes)
        for field in _FIELDS:
            if field not in fields:
                raise DecodeError(f"signed DHT record has no field {field}")
        publisher = PublicKey.from_protobuf(fields.bytes(3))
        if publisher.key_type is not KeyType.ED25519:
            raise DecodeError(
                f"signed DHT record publisher is a {publisher.key_type.name} key, not Ed25519"
            )
        expires_at_ms = fields.uint(5)
        if expires_at_ms > MAX_EXPIRES_AT_MS:
            raise DecodeError(f"signed DHT record expiry {expires_at_ms} ms is out of range")
        signature = fields.bytes(6)
        if len(signature) != ED25519_SIGNATURE_BYTES:
            raise DecodeError(f"signed DHT record signature is {len(signature)} bytes, not 64")
        record = cls(
            fields.bytes(1),
            fields.bytes(2),
            publisher,
            fields.uint(4),
            expires_at_ms / 1000,
            signature,
        )
        # Canonical form: same bytes when written back (order, repeats, unknown fields).
        if record.encode() != bytes(data):
            raise DecodeError("signed DHT record is not canonically encoded")
        return record

    def verify(self) -> None:
        """Check the publisher's signature; VerificationError if it does not hold."""
        message = SIGNATURE_DOMAIN + self._unsigned_encoding()
        if not self.publisher.verify(self.signature, message):
            raise VerificationError(
                f"signature on DHT record {_show(self.key)} does not verify "
                f"for publisher {self.publisher_id}"
            )


def _check_expiry(expires_at: float) -> None:
    if not 0 <= expires_at * 1000 <= MAX_EXPIRES_AT_MS:
        raise LocalProtocolError(f"record expiry {expires_at} is not a valid unix time")


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _show(key: bytes) -> str:
    """A key for a message: its text if printable, else hex; at most 80 characters."""
    text = key.decode("ascii") if key.isascii() else ""
    shown = text if text.isprintable() else key.hex()
    return repr(shown if len(shown) <= 80 else shown[:77] + "...")


def owner_key(owner: PeerId, name: bytes) -> bytes:
    """The owner-only key ``/lnb/o/<owner>/<name>``."""
    return OWNER_PREFIX + str(owner).encode("ascii") + b"/" + name


def key_owner(key: bytes) -> PeerId | None:
    """The peer an owner-only key belongs to; None if ``key`` is not under /lnb/o/.

    DecodeError if the key is under /lnb/o/ but does not name a peer id in
    base58btc (the only spelling accepted, so each owner has one key space).
    """
    if not key.startswith(OWNER_PREFIX):
        return None
    text = key[len(OWNER_PREFIX) :].split(b"/", 1)[0]
    try:
        owner = PeerId.from_string(text.decode("ascii"))
    except (DecodeError, UnicodeDecodeError):
        raise DecodeError(f"owner-only key {_show(key)} does not name a peer id") from None
    if str(owner).encode("ascii") != text:
        raise DecodeError(f"owner-only key {_show(key)} must spell its peer id in base58btc")
    return owner


class Validator(Protocol):
    """Judges the values of one key namespace."""

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        """Accept ``value`` for ``key`` or raise VerificationError / DecodeError."""
        ...

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """Index of the best of ``values``; VerificationError if none is acceptable."""
        ...


class SignedValidator:
    """Our namespace: values are :class:`SignedRecord` envelopes (see the module docs)."""

    __slots__ = ("_max_value_bytes",)

    def __init__(self, *, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> None:
        self._max_value_bytes = max_value_bytes

    def check(self, key: bytes, value: bytes) -> SignedRecord:
        """Decode and verify ``value`` as the record for ``key``, ignoring expiry."""
        record = SignedRecord.decode(value, max_bytes=self._max_value_bytes)
        if record.key != key:
            raise VerificationError(
                f"signed record for {_show(record.key)} was stored under {_show(key)}"
            )
        owner = key_owner(key)
        if owner is not None and record.publisher_id != owner:
            raise VerificationError(
                f"only {owner} may publish under {_show(key)}, "
                f"not {record.publisher_id}"
            )
        record.verify()
        return record

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        record = self.check(key, value)
        if record.expires_at <= now:
            raise VerificationError(f"signed record for {_show(key)} has expired")

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        _check_not_empty(values)
        best: tuple[int, bytes, bytes] | None = None
        best_index = -1
        for index, value in enumerate(values):
            try:
                record = self.check(key, value)
            except (DecodeError, VerificationError):
                continue
            rank = (record.seq, record.publisher_id.to_bytes(), value)
            if best is None or rank > best:
                best, best_index = rank, index
        if best is None:
            raise VerificationError(_none_valid(key, values))
        return best_index


class RawValidator:
    """Foreign keys: values are opaque bytes, bounded in size and never decoded."""

    __slots__ = ("_max_value_bytes",)

    def __init__(self, *, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> None:
        self._max_value_bytes = max_value_bytes

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        _check_size(value, self._max_value_bytes)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """The first value within the size bound (nothing else can be judged)."""
        _check_not_empty(values)
        for index, value in enumerate(values):
            if len(value) <= self._max_value_bytes:
                return index
        raise VerificationError(_none_valid(key, values))


class Validators:
    """The validator for each key namespace, chosen by longest matching prefix.

    ``OUR_PREFIX`` starts with a :class:`SignedValidator`; every other key
    falls to a :class:`RawValidator` (the prefix ``b""``).
    """

    __slots__ = ("_by_prefix", "_max_value_bytes")

    def __init__(self, *, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> None:
        if max_value_bytes <= 0:
            raise LocalProtocolError(f"max_value_bytes must be positive, got {max_value_bytes}")
        self._max_value_bytes = max_value_bytes
        self._by_prefix: list[tuple[bytes, Validator]] = []
        self.register(b"", RawValidator(max_value_bytes=max_value_bytes))
        self.register(OUR_PREFIX, SignedValidator(max_value_bytes=max_value_bytes))

    @property
    def max_value_bytes(self) -> int:
        return self._max_value_bytes

    def register(self, prefix: bytes, validator: Validator) -> None:
        """Judge keys starting with ``prefix`` with ``validator`` (replaces an earlier one)."""
        entries = [entry for entry in self._by_prefix if entry[0] != prefix]
        entries.append((bytes(prefix), validator))
        entries.sort(key=lambda entry: len(entry[0]), reverse=True)
        self._by_prefix = entries

    def for_key(self, key: bytes) -> Validator:
        for prefix, validator in self._by_prefix:
            if key.startswith(prefix):
                return validator
        raise AssertionError("unreachable: the empty prefix matches every key")

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        """Size first (DecodeError naming the limit), then the key's validator."""
        _check_size(value, self._max_value_bytes)
        self.for_key(key).validate(key, value, now)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """Index of the best value; values over the size bound are never chosen."""
        _check_not_empty(values)
        fitting = [i for i, value in enumerate(values) if len(value) <= self._max_value_bytes]
        if not fitting:
            raise VerificationError(_none_valid(key, values))
        return fitting[self.for_key(key).select(key, [values[i] for i in fitting])]


def _check_size(value: bytes, max_value_bytes: int) -> None:
    if len(value) > max_value_bytes:
        raise DecodeError(
            f"DHT value of {len(value)} bytes exceeds max_value_bytes={max_value_bytes}"
        )


def _check_not_empty(values: Sequence[bytes]) -> None:
    if not values:
        raise LocalProtocolError("select needs at least one value")


def _none_valid(key: bytes, values: Sequence[bytes]) -> str:
    return f"none of the {len(values)} values for {_show(key)} is valid"


def signed_expiry(key: bytes, value: bytes) -> float | None:
    """The expiry a signed record carries (unix seconds); None for foreign or unreadable ones.

    A stored copy must never outlive it, whatever TTL the store would give.
    """
    if not key.startswith(OUR_PREFIX):
        return None
    try:
        return SignedRecord.decode(value, max_bytes=max(len(value), 1)).expires_at
    except DecodeError:
        return None
