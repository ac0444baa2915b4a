"""The libp2p TLS certificate: spec vectors, round trips, and every rejection."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.errors import ConfigError, DecodeError, HandshakeError, PeerIdMismatch
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.transport.tls import (
    LIBP2P_EXTENSION_OID,
    MAX_CERTIFICATE_BYTES,
    NOT_BEFORE_SKEW,
    SIGNATURE_PREFIX,
    SignedKey,
    make_certificate,
    verify_certificate,
    verify_certificate_chain,
    verify_certificate_der,
)

NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
YEAR = datetime.timedelta(days=365)

# libp2p/specs tls/tls.md "Test vectors". Valid 1975-01-01T13:00Z .. 4096-01-01T13:00Z.
SPEC_HEADER = (
    "a0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c69627032702e"
    "696f310a300806035504051301313020170d3735303130313133303030305a180f3430393630313031313330"
    "3030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a"
    "8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380"
    "b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea3"
)
ECDSA_EXT = (
    "81c23081bf3081bc060a2b0601040183a25a01010481ad3081aa045f0803125b3059301306072a8648ce3d0201"
    "06082a8648ce3d03010703420004bf30511f909414ebdd3242178fd290f093a551cf75c973155de0bb5a96fedf"
    "6cb5d52da7563e794b512f66e60c7f55ba8a3acf3dd72a801980d205e8a1ad29f20447"
)
VECTOR_ED25519 = bytes.fromhex(
    "308201ae30820156" + SPEC_HEADER + "7c307a3078060a2b0601040183a25a0101046a3068042408011220a7"
    "7f1d92fedb59dddaea5a1c4abd1ac2fbde7d7b879ed364501809923d7c11b90440d90d2769db992d5e6195dbb0"
    "8e706b6651e024fda6cfb8846694a435519941cac215a8207792e42849cccc6cd8136c6e4bde92a58c5e08cfd4"
    "206eb5fe0bf909300a06082a8648ce3d0403020346003043021f50f6b6c52711a881778718238f650c9fb48943"
    "ae6ee6d28427dc6071ae55e702203625f116a7a454db9c56986c82a25682f7248ea1cb764d322ea983ed36a31b77"
)
VECTOR_ECDSA = bytes.fromhex(
    "308201f63082019d" + SPEC_HEADER + ECDSA_EXT + "30450220064ea8124774caf8f50e57f436aa62350c"
    "e652418c019df5d98a3ac666c9386a022100aa59d704a931b5f72fb9222cb6cc51f954d04a4e2e5450f8805fe8"
    "918f71eaae300a06082a8648ce3d04030203470030440220799395b0b6c1e940a7e4484705f610ab51ed376f19"
    "ff9d7c16757cfbf61b8d4302206205c03fbb0f95205c779be86581d3e31c01871ad5d1f3435bcf375cb0e5088a"
)
VECTOR_SECP256K1 = bytes.fromhex(
    "308201ba3082015f" + SPEC_HEADER + "8184308181307f060a2b0601040183a25a01010471306f0425080212"
    "210206dc6968726765b820f050263ececf7f71e4955892776c0970542efd689d2382044630440220145e15a991"
    "961f0d08cd15425bb95ec93f6ffa03c5a385eedc34ecf464c7a8ab022026b3109b8a3f40ef833169777eb2aa33"
    "7cfb6282f188de0666d1bcec2a4690dd300a06082a8648ce3d0403020349003046022100e1a217eeef9ec9204b"
    "3f774a08b70849646b6a1e6b8b27f93dc00ed58545d9fe022100b00dafa549d0f03547878338c7b15e7502888f"
    "6d45db387e5ae6b5d46899cef0"
)
VECTOR_INVALID = bytes.fromhex(
    "308201f73082019d" + SPEC_HEADER + ECDSA_EXT + "3045022100bb6e03577b7cc7a3cd1558df0da2b117"
    "dfdcc0399bc2504ebe7de6f65cade72802206de96e2a5be9b6202adba24ee0362e490641ac45c240db71fe955f"
    "2c5cf8df6e300a06082a8648ce3d0403020348003045022100e847f267f43717358f850355bdcabbefb2cfbf8a"
    "3c043b203a14788a092fe8db022027c1d04a2d41fd6b57a7e8b3989e470325de4406e52e084e34a3fd56eef0d0df"
)


def spki_der(key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def build_certificate(
    *,
    extension_value: bytes | None,
    cert_key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
    signing_key: ec.EllipticCurvePrivateKey | None = None,
    critical: bool = True,
    extra: tuple[tuple[str, bool], ...] = (),
    algorithm: hashes.HashAlgorithm | None = None,
    rsa_padding: padding.PSS | padding.PKCS1v15 | None = None,
) -> x509.Certificate:
    """A certificate shaped as the test needs, built without the module under test."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(cert_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + YEAR)
    )
    if extension_value is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(LIBP2P_EXTENSION_OID, extension_value), critical=critical
        )
    for oid, is_critical in extra:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), b"\x05\x00"),
            critical=is_critical,
        )
    signer = signing_key if signing_key is not None else cert_key
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        return builder.sign(signer, None)
    return builder.sign(signer, algorithm or hashes.SHA256(), rsa_padding=rsa_padding)


def signed_key_for(identity: PrivateKey, cert_public_spki: bytes) -> bytes:
    return SignedKey(
        public_key=identity.public_key.to_protobuf(),
        signature=identity.sign(SIGNATURE_PREFIX + cert_public_spki),
    ).to_der()


@pytest.fixture(scope="module")
def identity() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture(scope="module")
def valid_der(identity: PrivateKey) -> bytes:
    cert = make_certificate(identity, now=NOW).certificate
    return cert.public_bytes(serialization.Encoding.DER)


# -- spec vectors --


@pytest.mark.parametrize(
    ("der", "expected"),
    [
        (VECTOR_ED25519, "12D3KooWM6CgA9iBFZmcYAHA6A2qvbAxqfkmrYiRQuz3XEsk4Ksv"),
        (VECTOR_ECDSA, "QmfXbAwNjJLXfesgztEHe8HwgVDCMMpZ9Eax1HYq6hn9uE"),
        (VECTOR_SECP256K1, "16Uiu2HAkutTMoTzDw1tCvSRtu6YoixJwS46S1ZFxW8hSx9fWHiPs"),
    ],
    ids=["ed25519", "ecdsa", "secp256k1"],
)
def test_spec_vectors_yield_their_peer_ids(der: bytes, expected: str) -> None:
    assert str(verify_certificate_der(der, now=NOW)) == expected
    assert verify_certificate_der(der, now=NOW, expected_peer_id=PeerId.from_string(expected))


def test_spec_invalid_vector_is_rejected_for_its_host_key_signature() -> None:
    with pytest.raises(HandshakeError, match="libp2p extension signature does not verify"):
        verify_certificate_der(VECTOR_INVALID, now=NOW)


def test_spec_vector_outside_its_validity_window_is_rejected() -> None:
    with pytest.raises(HandshakeError, match="not yet valid"):
        verify_certificate_der(
            VECTOR_ED25519, now=datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        )
    with pytest.raises(HandshakeError, match="expired at 4096-01-01"):
        verify_certificate_der(
            VECTOR_ED25519, now=datetime.datetime(4096, 1, 2, tzinfo=datetime.UTC)
        )


# -- our own certificates --


def test_generated_certificate_round_trips_to_our_peer_id(identity: PrivateKey) -> None:
    ours = PeerId.from_public_key(identity.public_key)
    certified = make_certificate(identity, now=NOW)
    assert verify_certificate(certified.certificate, now=NOW) == ours
    der = certified.certificate.public_bytes(serialization.Encoding.DER)
    assert verify_certificate_der(der, now=NOW, expected_peer_id=ours) == ours
    assert verify_certificate_chain([der], now=NOW) == ours


def test_generated_certificate_shape(identity: PrivateKey) -> None:
    certified = make_certificate(identity, now=NOW, validity=datetime.timedelta(days=30))
    cert = certified.certificate
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(certified.private_key.curve, ec.SECP256R1)
    assert cert.public_key() == certified.private_key.public_key()
    assert cert.extensions.get_extension_for_oid(LIBP2P_EXTENSION_OID).critical
    assert cert.not_valid_before_utc == NOW - NOT_BEFORE_SKEW
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=30)
    assert "private_key=.." in repr(certified)


def test_certificate_key_is_ephemeral_and_not_the_host_key(identity: PrivateKey) -> None:
    first = make_certificate(identity, now=NOW)
    second = make_certificate(identity, now=NOW)
    first_spki = spki_der(first.certificate.public_key())  # type: ignore[arg-type]
    assert first_spki != spki_der(second.certificate.public_key())  # type: ignore[arg-type]
    assert first.certificate.serial_number != second.certificate.serial_number
    host = identity.public_key.to_protobuf()
    assert identity.public_key.data not in first_spki
    value = first.certificate.extensions.get_extension_for_oid(LIBP2P_EXTENSION_OID).value
    assert isinstance(value, x509.UnrecognizedExtension)
    assert SignedKey.from_der(value.value).public_key == host


def test_validity_window_edges(identity: PrivateKey) -> None:
    cert = make_certificate(identity, now=NOW, validity=YEAR).certificate
    second = datetime.timedelta(seconds=1)
    verify_certificate(cert, now=NOW - NOT_BEFORE_SKEW)
    verify_certificate(cert, now=NOW + YEAR)
    with pytest.raises(HandshakeError, match="expired at"):
        verify_certificate(cert, now=NOW + YEAR + second)
    with pytest.raises(HandshakeError, match="not yet valid"):
        verify_certificate(cert, now=NOW - NOT_BEFORE_SKEW - second)


def test_time_must_be_timezone_aware(identity: PrivateKey) -> None:
    naive = datetime.datetime(2026, 3, 1, 12, 0)
    with pytest.raises(ConfigError):
        make_certificate(identity, now=naive)
    cert = make_certificate(identity, now=NOW).certificate
    with pytest.raises(ConfigError):
        verify_certificate(cert, now=naive)
    with pytest.raises(ConfigError):
        make_certificate(identity, now=NOW, validity=datetime.timedelta(0))


def test_expected_peer_id_mismatch(identity: PrivateKey) -> None:
    cert = make_certificate(identity, now=NOW).certificate
    other = PeerId.from_public_key(PrivateKey.generate().public_key)
    with pytest.raises(PeerIdMismatch):
        verify_certificate(cert, now=NOW, expected_peer_id=other)


def test_chain_must_hold_exactly_one_certificate(valid_der: bytes) -> None:
    for chain in ([], [valid_der, valid_der]):
        with pytest.raises(HandshakeError, match="exactly one"):
            verify_certificate_chain(chain, now=NOW)


# -- hostile certificates --


def test_missing_extension_is_rejected() -> None:
    cert = build_certificate(extension_value=None, cert_key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(HandshakeError, match=r"no libp2p public key extension \(OID 1\.3\.6"):
        verify_certificate(cert, now=NOW)


def test_extension_signed_by_another_host_key_is_rejected(identity: PrivateKey) -> None:
    cert_key = ec.generate_private_key(ec.SECP256R1())
    impostor = PrivateKey.generate()
    value = SignedKey(
        public_key=identity.public_key.to_protobuf(),
        signature=impostor.sign(SIGNATURE_PREFIX + spki_der(cert_key.public_key())),
    ).to_der()
    cert = build_certificate(extension_value=value, cert_key=cert_key)
    with pytest.raises(HandshakeError, match="libp2p extension signature does not verify"):
        verify_certificate(cert, now=NOW)


def test_extension_signing_another_certificate_key_is_rejected(identity: PrivateKey) -> None:
    cert_key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    value = signed_key_for(identity, spki_der(other.public_key()))
    cert = build_certificate(extension_value=value, cert_key=cert_key)
    with pytest.raises(HandshakeError, match="libp2p extension signature does not verify"):
        verify_certificate(cert, now=NOW)


def test_extension_lifted_into_another_certificate_is_rejected(identity: PrivateKey) -> None:
    stolen = make_certificate(identity, now=NOW).certificate
    value = stolen.extensions.get_extension_for_oid(LIBP2P_EXTENSION_OID).value
    assert isinstance(value, x509.UnrecognizedExtension)
    cert = build_certificate(
        extension_value=value.value, cert_key=ec.generate_private_key(ec.SECP256R1())
    )
    with pytest.raises(HandshakeError, match="libp2p extension signature does not verify"):
        verify_certificate(cert, now=NOW)


def test_bad_self_signature_is_rejected(identity: PrivateKey) -> None:
    cert_key = ec.generate_private_key(ec.SECP256R1())
    value = signed_key_for(identity, spki_der(cert_key.public_key()))
    cert = build_certificate(
        extension_value=value,
        cert_key=cert_key,
        signing_key=ec.generate_private_key(ec.SECP256R1()),
    )
    with pytest.raises(HandshakeError, match="self-signature does not verify"):
        verify_certificate(cert, now=NOW)


def test_unknown_critical_extension_is_rejected_and_non_critical_ignored(
    identity: PrivateKey,
) -> None:
    cert_key = ec.generate_private_key(ec.SECP256R1())
    value = signed_key_for(identity, spki_der(cert_key.public_key()))
    ours = PeerId.from_public_key(identity.public_key)
    lenient = build_certificate(
        extension_value=value, cert_key=cert_key, critical=False, extra=(("1.2.3.4", False),)
    )
    assert verify_certificate(lenient, now=NOW) == ours
    strict = build_certificate(extension_value=value, cert_key=cert_key, extra=(("1.2.3.4", True),))
    with pytest.raises(HandshakeError, match=r"critical extension .*OID 1\.2\.3\.4"):
        verify_certificate(strict, now=NOW)


@pytest.mark.parametrize(
    ("make_key", "algorithm", "rsa_padding"),
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()), hashes.SHA384(), None),
        (lambda: ec.generate_private_key(ec.SECP256R1()), hashes.SHA512(), None),
        (ed25519.Ed25519PrivateKey.generate, None, None),
        (lambda: rsa.generate_private_key(65537, 2048), hashes.SHA256(), padding.PKCS1v15()),
        (
            lambda: rsa.generate_private_key(65537, 2048),
            hashes.SHA256(),
            padding.PSS(padding.MGF1(hashes.SHA256()), 32),
        ),
    ],
    ids=["p384-sha384", "p256-sha512", "ed25519", "rsa-pkcs1", "rsa-pss"],
)
def test_other_certificate_key_types_are_accepted(
    identity: PrivateKey, make_key: object, algorithm: object, rsa_padding: object
) -> None:
    cert_key = make_key()  # type: ignore[operator]
    value = signed_key_for(identity, spki_der(cert_key.public_key()))
    cert = build_certificate(
        extension_value=value,
        cert_key=cert_key,
        algorithm=algorithm,  # type: ignore[arg-type]
        rsa_padding=rsa_padding,  # type: ignore[arg-type]
    )
    assert verify_certificate(cert, now=NOW) == PeerId.from_public_key(identity.public_key)


def test_weak_certificate_keys_and_hashes_are_rejected(identity: PrivateKey) -> None:
    small = rsa.generate_private_key(65537, 1024)
    value = signed_key_for(identity, spki_der(small.public_key()))
    cert = build_certificate(extension_value=value, cert_key=small, rsa_padding=padding.PKCS1v15())
    with pytest.raises(HandshakeError, match="too small"):
        verify_certificate(cert, now=NOW)
    cert_key = ec.generate_private_key(ec.SECP256R1())
    value = signed_key_for(identity, spki_der(cert_key.public_key()))
    cert = build_certificate(extension_value=value, cert_key=cert_key, algorithm=hashes.SHA224())
    with pytest.raises(HandshakeError, match="sha224 is not allowed"):
        verify_certificate(cert, now=NOW)


def _good_value(identity: PrivateKey) -> bytes:
    return signed_key_for(identity, b"irrelevant")


BAD_EXTENSION_VALUES = {
    "empty": lambda good: b"",
    "tag only": lambda good: b"\x30",
    "truncated": lambda good: good[:-1],
    "trailing byte": lambda good: good + b"\x00",
    "overlong outer length": lambda good: b"\x30\x81\xff" + good[2:],
    "indefinite length": lambda good: b"\x30\x80" + good[2:] + b"\x00\x00",
    "non-minimal length": lambda good: b"\x30\x81" + good[1:],
    "set not sequence": lambda good: b"\x31" + good[1:],
    "one field": lambda good: b"\x30\x03\x04\x01\x00",
    "three fields": lambda good: b"\x30\x09\x04\x01\x00\x04\x01\x00\x04\x01\x00",
    "bit strings": lambda good: b"\x30\x08\x03\x02\x00\x01\x03\x02\x00\x01",
    "inner overrun": lambda good: b"\x30\x04\x04\x05\x00\x00",
    "bad protobuf key": lambda good: SignedKey(b"\xff\xff", b"sig").to_der(),
}


@pytest.mark.parametrize("name", list(BAD_EXTENSION_VALUES))
def test_malformed_extension_values_are_rejected(identity: PrivateKey, name: str) -> None:
    value = BAD_EXTENSION_VALUES[name](_good_value(identity))
    cert = build_certificate(
        extension_value=value, cert_key=ec.generate_private_key(ec.SECP256R1())
    )
    with pytest.raises(HandshakeError, match="libp2p"):
        verify_certificate(cert, now=NOW)


def _tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes((tag, length)) + content
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + content


def _children(sequence: bytes) -> list[bytes]:
    """The raw child elements of one DER SEQUENCE (test helper, trusts its input)."""
    header = 2 if sequence[1] < 0x80 else 2 + (sequence[1] & 0x7F)
    content, children = sequence[header:], []
    while content:
        size = (
            content[1]
            if content[1] < 0x80
            else int.from_bytes(content[2 : 2 + (content[1] & 0x7F)], "big")
        )
        total = size + (2 if content[1] < 0x80 else 2 + (content[1] & 0x7F))
        children.append(content[:total])
        content = content[total:]
    return children


def test_deprecated_unique_id_fields_are_rejected(valid_der: bytes) -> None:
    tbs, algorithm, signature = _children(valid_der)
    fields = _children(tbs)
    assert fields[0][0] == 0xA0 and fields[-1][0] == 0xA3  # version ... extensions
    unique_id = b"\x81\x02\x00\x2a"  # issuerUniqueID [1] IMPLICIT BIT STRING
    tampered_tbs = _tlv(0x30, b"".join([*fields[:-1], unique_id, fields[-1]]))
    der = _tlv(0x30, tampered_tbs + algorithm + signature)
    with pytest.raises(HandshakeError, match="issuerUniqueID"):
        verify_certificate_der(der, now=NOW)


def test_garbage_and_oversized_der_are_rejected(valid_der: bytes) -> None:
    for der in (b"", b"\x00", b"not a certificate", valid_der[:-10], valid_der + b"\x00"):
        with pytest.raises(HandshakeError):
            verify_certificate_der(der, now=NOW)
    with pytest.raises(HandshakeError, match="exceeds"):
        verify_certificate_der(b"\x30" * (MAX_CERTIFICATE_BYTES + 1), now=NOW)


# -- properties --


@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_signed_key_round_trips(public_key: bytes, signature: bytes) -> None:
    signed = SignedKey(public_key, signature)
    assert SignedKey.from_der(signed.to_der()) == signed


@given(st.binary(max_size=300))
def test_signed_key_decoder_raises_only_decode_error(data: bytes) -> None:
    try:
        decoded = SignedKey.from_der(data)
    except DecodeError:
        return
    assert decoded.to_der() == data  # strict DER: one encoding per value


@given(st.binary(max_size=2000))
def test_random_bytes_never_raise_anything_but_handshake_error(data: bytes) -> None:
    with pytest.raises(HandshakeError):
        verify_certificate_der(data, now=NOW)


@settings(max_examples=300)
@given(st.data())
def test_mutated_certificates_fail_cleanly(valid_der: bytes, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(valid_der) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != valid_der[index]))
    mutated = valid_der[:index] + bytes([byte]) + valid_der[index + 1 :]
    try:
        verify_certificate_der(mutated, now=NOW)
    except HandshakeError:
        return


@settings(max_examples=100)
@given(value=st.binary(max_size=200))
def test_random_extension_values_fail_cleanly(identity: PrivateKey, value: bytes) -> None:
    cert = build_certificate(
        extension_value=value, cert_key=ec.generate_private_key(ec.SECP256R1())
    )
    with pytest.raises(HandshakeError):
        verify_certificate(cert, now=NOW)
