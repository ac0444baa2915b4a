"""The libp2p TLS certificate: make one for our host key, verify a peer's.

libp2p does not sign the X.509 certificate with the host key. The certificate
is self-signed by an ephemeral key, and a private extension (OID
``1.3.6.1.4.1.53594.1.1``) carries ``SignedKey{publicKey, signature}``: the host
key as a libp2p protobuf and the host key's signature over
``"libp2p-tls-handshake:" || DER(SubjectPublicKeyInfo of the certificate key)``.
See libp2p/specs ``tls/tls.md``.

This module is sans-IO: it never reads a clock, ``now`` is always passed in.
Every verification failure raises :class:`~lattica_nb.errors.HandshakeError`
with a message naming the reason.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from ..errors import ConfigError, DecodeError, HandshakeError, PeerIdMismatch
from ..identity import PeerId, PrivateKey, PublicKey

__all__ = [
    "DEFAULT_VALIDITY",
    "LIBP2P_EXTENSION_OID",
    "MAX_CERTIFICATE_BYTES",
    "NOT_BEFORE_SKEW",
    "SIGNATURE_PREFIX",
    "CertifiedKey",
    "SignedKey",
    "make_certificate",
    "verify_certificate",
    "verify_certificate_chain",
    "verify_certificate_der",
]

LIBP2P_EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
SIGNATURE_PREFIX = b"libp2p-tls-handshake:"

DEFAULT_VALIDITY = datetime.timedelta(days=365)
"""How long a certificate made by :func:`make_certificate` stays valid."""
NOT_BEFORE_SKEW = datetime.timedelta(hours=1)
"""``notBefore`` is set this far before ``now`` to tolerate peers' clock skew."""
MAX_CERTIFICATE_BYTES = 16 * 1024
"""Largest DER certificate :func:`verify_certificate_der` accepts."""
MAX_SIGNED_KEY_BYTES = 8 * 1024
"""Largest ``SignedKey`` extension value accepted (an RSA-4096 host key fits)."""

_ALLOWED_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_MIN_RSA_BITS = 2048

_TAG_OCTET_STRING = 0x04
_TAG_SEQUENCE = 0x30
_TAG_VERSION = 0xA0  # [0] EXPLICIT Version in TBSCertificate
_MAX_LENGTH_OCTETS = 3  # long-form lengths up to 16 MiB; far above our bounds
_MAX_TBS_ELEMENTS = 16


@dataclass(frozen=True, slots=True)
class CertifiedKey:
    """A certificate and its (ephemeral, never the host) private key."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:
        return f"CertifiedKey(serial={self.certificate.serial_number:#x}, private_key=..)"


# -- minimal strict DER (definite lengths, minimal encoding, no trailing bytes) --


def _read_tlv(data: bytes, pos: int, limit: int) -> tuple[int, int, int]:
    """Read the element at ``pos``; return (tag, content start, content end)."""
    if limit - pos < 2:
        raise DecodeError("DER element is truncated")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DecodeError("DER high-number tags are not supported")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DecodeError("DER forbids indefinite lengths")
    else:
        count = first & 0x7F
        if count > _MAX_LENGTH_OCTETS:
            raise DecodeError(f"DER length of {count} octets is too large")
        if limit - pos < count:
            raise DecodeError("DER length is truncated")
        length = int.from_bytes(data[pos : pos + count], "big")
        if data[pos] == 0 or length < 0x80:
            raise DecodeError("DER length is not minimally encoded")
        pos += count
    if length > limit - pos:
        raise DecodeError(f"DER element of {length} bytes overruns its input ({limit - pos} left)")
    return tag, pos, pos + length


def _encode_tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        header = bytes((tag, length))
    else:
        octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes((tag, 0x80 | len(octets))) + octets
    return header + content


@dataclass(frozen=True, slots=True)
class SignedKey:
    """``SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }``."""

    public_key: bytes
    """The host key as a libp2p ``PublicKey`` protobuf."""
    signature: bytes
    """The host key's signature over ``SIGNATURE_PREFIX || DER(SPKI)``."""

    def to_der(self) -> bytes:
        content = _encode_tlv(_TAG_OCTET_STRING, self.public_key) + _encode_tlv(
            _TAG_OCTET_STRING, self.signature
        )
        return _encode_tlv(_TAG_SEQUENCE, content)

    @classmethod
    def from_der(cls, data: bytes) -> SignedKey:
        """Decode strictly; raise :class:`DecodeError` on anything else."""
        if len(data) > MAX_SIGNED_KEY_BYTES:
            raise DecodeError(f"SignedKey of {len(data)} bytes exceeds {MAX_SIGNED_KEY_BYTES}")
        tag, start, end = _read_tlv(data, 0, len(data))
        if tag != _TAG_SEQUENCE:
            raise DecodeError(f"SignedKey must be a SEQUENCE, found tag {tag:#04x}")
        if end != len(data):
            raise DecodeError(f"SignedKey has {len(data) - end} trailing bytes")
        values: list[bytes] = []
        pos = start
        while pos < end:
            if len(values) == 2:
                raise DecodeError("SignedKey has more than two fields")
            tag, value_start, pos = _read_tlv(data, pos, end)
            if tag != _TAG_OCTET_STRING:
                raise DecodeError(f"SignedKey field must be an OCTET STRING, found tag {tag:#04x}")
            values.append(bytes(data[value_start:pos]))
        if len(values) != 2:
            raise DecodeError(f"SignedKey has {len(values)} fields, expected 2")
        return cls(public_key=values[0], signature=values[1])


def _tbs_elements(tbs: bytes) -> list[tuple[int, bytes]]:
    """The top-level (tag, raw TLV) elements of a TBSCertificate."""
    tag, start, end = _read_tlv(tbs, 0, len(tbs))
    if tag != _TAG_SEQUENCE or end != len(tbs):
        raise DecodeError("TBSCertificate is not one DER SEQUENCE")
    elements: list[tuple[int, bytes]] = []
    pos = start
    while pos < end:
        if len(elements) == _MAX_TBS_ELEMENTS:
            raise DecodeError("TBSCertificate has too many fields")
        element_start = pos
        tag, _, pos = _read_tlv(tbs, pos, end)
        elements.append((tag, tbs[element_start:pos]))
    return elements


def _raw_subject_public_key_info(certificate: x509.Certificate) -> bytes:
    """The certificate key's SubjectPublicKeyInfo exactly as it was signed.

    Taken from the TBS bytes rather than re-encoded, so a peer that encodes its
    key differently (e.g. a compressed EC point) still verifies. Also enforces
    the spec's rule that ``issuerUniqueID``/``subjectUniqueID`` are absent.
    """
    try:
        elements = _tbs_elements(certificate.tbs_certificate_bytes)
    except DecodeError as exc:
        raise HandshakeError(f"certificate TBS is malformed: {exc}") from exc
    index = 6 if elements and elements[0][0] == _TAG_VERSION else 5
    if len(elements) <= index or elements[index][0] != _TAG_SEQUENCE:
        raise HandshakeError("certificate TBS has no SubjectPublicKeyInfo")
    for tag, _ in elements[index + 1 :]:
        if tag & 0xC0 == 0x80 and tag & 0x1F in (1, 2):
            raise HandshakeError(
                "certificate carries the deprecated issuerUniqueID/subjectUniqueID field"
            )
    return elements[index][1]


# -- making a certificate --


def make_certificate(
    identity: PrivateKey,
    *,
    now: datetime.datetime,
    validity: datetime.timedelta = DEFAULT_VALIDITY,
) -> CertifiedKey:
    """A fresh self-signed ECDSA P-256 certificate binding ``identity``'s key.

    The certificate key is generated here and is unrelated to the host key.
    It is valid from ``now - NOT_BEFORE_SKEW`` to ``now + validity``.
    """
    _require_aware(now)
    if validity <= datetime.timedelta(0):
        raise ConfigError(f"validity must be positive, got {validity}")
    certificate_key = ec.generate_private_key(ec.SECP256R1())
    spki = certificate_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signed_key = SignedKey(
        public_key=identity.public_key.to_protobuf(),
        signature=identity.sign(SIGNATURE_PREFIX + spki),
    )
    # Like go-libp2p: a random serialNumber attribute, so the name is non-empty
    # (RFC 5280 wants a non-empty issuer) yet says nothing about us.
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, str(secrets.randbits(64)))])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(certificate_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - NOT_BEFORE_SKEW)
        .not_valid_after(now + validity)
        # The spec says the extension MAY be critical; rust-libp2p marks it so.
        .add_extension(
            x509.UnrecognizedExtension(LIBP2P_EXTENSION_OID, signed_key.to_der()),
            critical=True,
        )
        .sign(certificate_key, hashes.SHA256())
    )
    return CertifiedKey(certificate=certificate, private_key=certificate_key)


# -- verifying a certificate --


def _require_aware(now: datetime.datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ConfigError("now must be timezone-aware; pass datetime.datetime.now(datetime.UTC)")


def _check_validity(certificate: x509.Certificate, now: datetime.datetime) -> None:
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    if now < not_before:
        raise HandshakeError(
            f"certificate is not yet valid (notBefore {not_before.isoformat()}, "
            f"now {now.isoformat()}); check the clocks"
        )
    if now > not_after:
        raise HandshakeError(
            f"certificate expired at {not_after.isoformat()} (now {now.isoformat()})"
        )


def _find_signed_key(certificate: x509.Certificate) -> SignedKey:
    try:
        extensions = list(certificate.extensions)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise HandshakeError(f"certificate extensions are malformed: {exc}") from exc
    raw: bytes | None = None
    for extension in extensions:
        if extension.oid == LIBP2P_EXTENSION_OID:
            value = extension.value
            if not isinstance(value, x509.UnrecognizedExtension):
                raise HandshakeError("libp2p public key extension has an unexpected form")
            raw = value.value
        elif extension.critical:
            raise HandshakeError(
                f"certificate has a critical extension we do not understand "
                f"(OID {extension.oid.dotted_string})"
            )
    if raw is None:
        raise HandshakeError(
            f"certificate has no libp2p public key extension "
            f"(OID {LIBP2P_EXTENSION_OID.dotted_string})"
        )
    try:
        return SignedKey.from_der(raw)
    except DecodeError as exc:
        raise HandshakeError(f"libp2p public key extension is malformed: {exc}") from exc


def _check_hash(algorithm: object) -> None:
    if not isinstance(algorithm, _ALLOWED_HASHES):
        name = getattr(algorithm, "name", "none")
        raise HandshakeError(
            f"certificate signature hash {name} is not allowed (need SHA-256, -384 or -512)"
        )


def _check_self_signature(certificate: x509.Certificate) -> None:
    """The certificate's signature must verify under its own public key."""
    algorithm = certificate.signature_algorithm_oid.dotted_string
    try:
        key = certificate.public_key()
        parameters = certificate.signature_algorithm_parameters
        hash_algorithm = certificate.signature_hash_algorithm
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise HandshakeError(
            f"certificate key or signature algorithm (OID {algorithm}) is not supported"
        ) from exc
    mismatch = f"certificate signature algorithm (OID {algorithm}) does not match its key type"
    signature = certificate.signature
    tbs = certificate.tbs_certificate_bytes
    try:
        if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            if parameters is not None:
                raise HandshakeError(mismatch)
            key.verify(signature, tbs)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(parameters, ec.ECDSA):
                raise HandshakeError(mismatch)
            if not isinstance(key.curve, _ALLOWED_CURVES):
                raise HandshakeError(f"certificate key curve {key.curve.name} is not allowed")
            _check_hash(parameters.algorithm)
            key.verify(signature, tbs, parameters)
        elif isinstance(key, rsa.RSAPublicKey):
            if not isinstance(parameters, padding.PKCS1v15 | padding.PSS):
                raise HandshakeError(mismatch)
            if key.key_size < _MIN_RSA_BITS:
                raise HandshakeError(f"certificate RSA key of {key.key_size} bits is too small")
            _check_hash(hash_algorithm)
            if hash_algorithm is None:  # for mypy; _check_hash already refused it
                raise HandshakeError(mismatch)
            key.verify(signature, tbs, parameters, hash_algorithm)
        else:
            raise HandshakeError(f"certificate key type {type(key).__name__} is not supported")
    except (InvalidSignature, ValueError) as exc:
        raise HandshakeError("certificate self-signature does not verify") from exc


def verify_certificate(
    certificate: x509.Certificate,
    *,
    now: datetime.datetime,
    expected_peer_id: PeerId | None = None,
) -> PeerId:
    """Check a peer's certificate as libp2p's TLS spec requires; return its PeerId.

    Checks, in order: validity period at ``now``; no deprecated unique-ID
    fields; no critical extension other than libp2p's; the libp2p extension is
    present and well-formed; the self-signature (ECDSA P-256/384/521, Ed25519,
    Ed448, RSA PKCS#1 v1.5 or PSS, with SHA-256/384/512); the host key's
    signature over the certificate key. If ``expected_peer_id`` is given, a
    different peer raises :class:`~lattica_nb.errors.PeerIdMismatch`.
    """
    _require_aware(now)
    _check_validity(certificate, now)
    spki = _raw_subject_public_key_info(certificate)
    signed_key = _find_signed_key(certificate)
    _check_self_signature(certificate)
    try:
        host_key = PublicKey.from_protobuf(signed_key.public_key)
    except DecodeError as exc:
        raise HandshakeError(f"libp2p extension carries an unusable host key: {exc}") from exc
    if not host_key.verify(signed_key.signature, SIGNATURE_PREFIX + spki):
        raise HandshakeError("libp2p extension signature does not verify")
    peer_id = PeerId.from_public_key(host_key)
    if expected_peer_id is not None and peer_id != expected_peer_id:
        raise PeerIdMismatch(f"peer authenticated as {peer_id} but {expected_peer_id} was dialed")
    return peer_id


def verify_certificate_der(
    der: bytes,
    *,
    now: datetime.datetime,
    expected_peer_id: PeerId | None = None,
) -> PeerId:
    """Parse a DER certificate (at most ``MAX_CERTIFICATE_BYTES``) and verify it."""
    if len(der) > MAX_CERTIFICATE_BYTES:
        raise HandshakeError(
            f"certificate of {len(der)} bytes exceeds {MAX_CERTIFICATE_BYTES} bytes"
        )
    try:
        certificate = x509.load_der_x509_certificate(bytes(der))
    except (ValueError, x509.InvalidVersion) as exc:
        raise HandshakeError(f"certificate is not valid DER X.509: {exc}") from exc
    return verify_certificate(certificate, now=now, expected_peer_id=expected_peer_id)


def verify_certificate_chain(
    chain: Sequence[bytes],
    *,
    now: datetime.datetime,
    expected_peer_id: PeerId | None = None,
) -> PeerId:
    """Verify a received chain, which the spec says must hold exactly one certificate."""
    if len(chain) != 1:
        raise HandshakeError(f"peer sent {len(chain)} certificates; libp2p requires exactly one")
    return verify_certificate_der(chain[0], now=now, expected_peer_id=expected_peer_id)
