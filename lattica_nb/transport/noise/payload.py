"""The libp2p Noise handshake payload (libp2p/specs noise/README.md).

::

    message NoiseHandshakePayload {
      optional bytes identity_key = 1;      // libp2p PublicKey protobuf
      optional bytes identity_sig = 2;      // sig("noise-libp2p-static-key:" || static key)
      optional NoiseExtensions extensions = 4;
    }

:func:`make_payload` signs our X25519 static key with our identity key;
:func:`verify_payload` checks the peer's and returns its identity.

We send no extensions and ignore any we receive (and any other unknown
field), as protobuf's forward-compatibility rule asks. Decoding is bounded:
the message by ``MAX_PAYLOAD_BYTES``, the key by the key module's limit and
the signature by ``MAX_SIGNATURE_BYTES``; anything malformed raises
DecodeError.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import DecodeError, HandshakeError, PeerIdMismatch
from ...identity import PeerId, PrivateKey, PublicKey
from ...keys import MAX_PUBLIC_KEY_BYTES
from ...wire.protobuf import ProtoWriter, parse_fields

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_SIGNATURE_BYTES",
    "STATIC_KEY_SIGNATURE_PREFIX",
    "HandshakePayload",
    "make_payload",
    "verify_payload",
]

STATIC_KEY_SIGNATURE_PREFIX = b"noise-libp2p-static-key:"
"""What the identity key signs, followed by the 32-byte X25519 static public key."""

MAX_PAYLOAD_BYTES = 65535 - 32 - 48 - 16
"""The most a handshake payload can be: message 2's room after e, s and the tag."""

MAX_SIGNATURE_BYTES = 1024
"""Largest identity signature: RSA-8192 (the largest RSA key we accept) signs 1024 bytes."""

_IDENTITY_KEY = 1
_IDENTITY_SIG = 2


@dataclass(frozen=True, slots=True)
class HandshakePayload:
    """``identity_key`` is a libp2p PublicKey protobuf; ``identity_sig`` its signature."""

    identity_key: bytes
    identity_sig: bytes

    def encode(self) -> bytes:
        return (
            ProtoWriter()
            .bytes(_IDENTITY_KEY, self.identity_key)
            .bytes(_IDENTITY_SIG, self.identity_sig)
            .finish()
        )

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> HandshakePayload:
        """Parse a payload; DecodeError if it is malformed, oversize or lacks a field."""
        fields = parse_fields(data, max_bytes=MAX_PAYLOAD_BYTES)
        key = fields.bytes_or_none(_IDENTITY_KEY)
        signature = fields.bytes_or_none(_IDENTITY_SIG)
        if not key:
            raise DecodeError("Noise handshake payload carries no identity key (field 1)")
        if not signature:
            raise DecodeError("Noise handshake payload carries no identity signature (field 2)")
        if len(key) > MAX_PUBLIC_KEY_BYTES:
            raise DecodeError(
                f"identity key of {len(key)} bytes exceeds {MAX_PUBLIC_KEY_BYTES} bytes"
            )
        if len(signature) > MAX_SIGNATURE_BYTES:
            raise DecodeError(
                f"identity signature of {len(signature)} bytes exceeds {MAX_SIGNATURE_BYTES} bytes"
            )
        return cls(identity_key=key, identity_sig=signature)


def make_payload(identity: PrivateKey, static_public: bytes) -> HandshakePayload:
    """Our payload: identity key and its signature over the static key."""
    return HandshakePayload(
        identity_key=identity.public_key.to_protobuf(),
        identity_sig=identity.sign(STATIC_KEY_SIGNATURE_PREFIX + static_public),
    )


def verify_payload(
    data: bytes, static_public: bytes, expected_peer: PeerId | None
) -> tuple[PublicKey, PeerId]:
    """The peer's identity, once its payload proves it owns ``static_public``."""
    try:
        payload = HandshakePayload.decode(data)
        key = PublicKey.from_protobuf(payload.identity_key)
    except DecodeError as exc:
        raise HandshakeError(f"the peer's Noise handshake payload is malformed: {exc}") from exc
    if not key.verify(payload.identity_sig, STATIC_KEY_SIGNATURE_PREFIX + static_public):
        raise HandshakeError(
            "the peer's Noise handshake payload is not signed by the identity key it carries"
        )
    peer = PeerId.from_public_key(key)
    if expected_peer is not None and peer != expected_peer:
        raise PeerIdMismatch(f"dialed {expected_peer} but the peer authenticated as {peer}")
    return key, peer
