"""libp2p keys (libp2p/specs peer-ids/peer-ids.md, "Keys").

A :class:`PublicKey` is the ``Type`` and ``Data`` of libp2p's ``PublicKey``
protobuf; signatures of all four key types can be verified. Our own key is
always an Ed25519 :class:`PrivateKey`, whose repr is ``SecretKey(..)``: secret
key bytes never appear in a repr, a log line or an exception message.

Import these names from :mod:`lattica_nb.identity`, which re-exports them.
"""

from __future__ import annotations

import enum
import secrets
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .errors import DecodeError
from .wire.protobuf import ProtoWriter, parse_fields

__all__ = ["KeyType", "PrivateKey", "PublicKey"]

MAX_PUBLIC_KEY_BYTES = 2048
"""Largest PublicKey protobuf accepted (an 8192-bit RSA key needs about 1,060)."""
MAX_PRIVATE_KEY_BYTES = 8192
RSA_MIN_BITS = 2048
"""go-libp2p refuses smaller RSA keys as too weak; so do we."""
RSA_MAX_BITS = 8192

_ECDSA_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

_VerifyKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyType(enum.IntEnum):
    RSA = 0
    ED25519 = 1
    SECP256K1 = 2
    ECDSA = 3


def _load_public(key_type: KeyType, data: bytes) -> _VerifyKey:
    """Load key material; DecodeError saying what is wrong with it."""
    if key_type is KeyType.ED25519 and len(data) != 32:
        raise DecodeError(f"Ed25519 public key must be 32 bytes, got {len(data)}")
    if key_type is KeyType.SECP256K1 and (len(data) != 33 or data[0] not in (2, 3)):
        raise DecodeError("Secp256k1 public key must be a 33-byte compressed point")
    try:
        if key_type is KeyType.ED25519:
            return ed25519.Ed25519PublicKey.from_public_bytes(data)
        if key_type is KeyType.SECP256K1:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), data)
        loaded = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DecodeError(f"{key_type.name} public key material does not load") from exc
    if key_type is KeyType.ECDSA:
        if not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(
            loaded.curve, _ECDSA_CURVES
        ):
            raise DecodeError("ECDSA public key must be a P-256, P-384 or P-521 key")
        return loaded
    if not isinstance(loaded, rsa.RSAPublicKey):
        raise DecodeError("RSA public key data is not an RSA SubjectPublicKeyInfo")
    if not RSA_MIN_BITS <= loaded.key_size <= RSA_MAX_BITS:
        raise DecodeError(
            f"RSA key of {loaded.key_size} bits is outside {RSA_MIN_BITS}..{RSA_MAX_BITS}"
        )
    return loaded


def _key_type(value: int) -> KeyType:
    try:
        return KeyType(value)
    except ValueError:
        raise DecodeError(f"unknown key type {value}") from None


class PublicKey:
    """A libp2p public key: immutable, hashable, equal by (key_type, data)."""

    __slots__ = ("_data", "_key", "_key_type")

    _key_type: KeyType
    _data: bytes
    _key: _VerifyKey

    def __init__(self, key_type: KeyType, data: bytes) -> None:
        key_type = _key_type(key_type)
        data = bytes(data)
        key = _load_public(key_type, data)
        object.__setattr__(self, "_key_type", key_type)
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_key", key)

    @property
    def key_type(self) -> KeyType:
        return self._key_type

    @property
    def data(self) -> bytes:
        return self._data

    @classmethod
    def from_ed25519_raw(cls, raw: bytes) -> PublicKey:
        return cls(KeyType.ED25519, raw)

    @classmethod
    def from_protobuf(cls, data: bytes) -> PublicKey:
        fields = parse_fields(data, max_bytes=MAX_PUBLIC_KEY_BYTES)
        if 1 not in fields:
            raise DecodeError("PublicKey protobuf has no key type (field 1)")
        return cls(_key_type(fields.uint(1)), fields.bytes(2))

    def to_protobuf(self) -> bytes:
        return ProtoWriter().uint(1, self._key_type).bytes(2, self._data).finish()

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True if ``signature`` signs ``message``; False for any bad signature."""
        key = self._key
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, message)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            else:
                key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return (self._key_type, self._data) == (other._key_type, other._data)

    def __hash__(self) -> int:
        return hash((self._key_type, self._data))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PublicKey is immutable")

    def __reduce__(self) -> tuple[type[PublicKey], tuple[KeyType, bytes]]:
        return (PublicKey, (self._key_type, self._data))

    def __repr__(self) -> str:
        return f"PublicKey({self._key_type.name}, {self._data.hex()[:16]}..)"


class PrivateKey:
    """Our Ed25519 identity key. Its repr is ``SecretKey(..)``."""

    __slots__ = ("_key", "_public")

    _key: ed25519.Ed25519PrivateKey
    _public: PublicKey

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_public", PublicKey(KeyType.ED25519, raw))

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_protobuf(cls, data: bytes) -> PrivateKey:
        """Read a libp2p PrivateKey protobuf holding an Ed25519 key.

        ``Data`` may be seed||public (64 bytes, as go and rust write it),
        the legacy seed||public||public (96 bytes), or a bare 32-byte seed.
        """
        fields = parse_fields(data, max_bytes=MAX_PRIVATE_KEY_BYTES)
        if 1 not in fields:
            raise DecodeError("PrivateKey protobuf has no key type (field 1)")
        key_type = _key_type(fields.uint(1))
        if key_type is not KeyType.ED25519:
            raise DecodeError(f"only Ed25519 private keys are supported, got {key_type.name}")
        raw = fields.bytes(2)
        if len(raw) not in (32, 64, 96):
            raise DecodeError(f"Ed25519 private key must be 32, 64 or 96 bytes, got {len(raw)}")
        key = cls(ed25519.Ed25519PrivateKey.from_private_bytes(raw[:32]))
        public = raw[32:64]
        if len(raw) == 96 and raw[64:] != public:
            raise DecodeError("Ed25519 private key (96-byte form) has two different public keys")
        if public and not secrets.compare_digest(public, key._public.data):
            raise DecodeError("Ed25519 private key does not match the public key stored with it")
        return key

    def to_protobuf(self) -> bytes:
        return ProtoWriter().uint(1, KeyType.ED25519).bytes(2, self._raw()).finish()

    def _raw(self) -> bytes:
        seed = self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return seed + self._public.data

    @property
    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def to_cryptography(self) -> ed25519.Ed25519PrivateKey:
        return self._key

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PrivateKey is immutable")

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a private key is not picklable; store it with to_protobuf()")

    def __repr__(self) -> str:
        return "SecretKey(..)"

    __str__ = __repr__
