from __future__ import annotations

import base64
import os
import pathlib
import pickle
import stat

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from lattica_nb.errors import ConfigError, DecodeError
from lattica_nb.identity import (
    KeyType,
    PeerId,
    PrivateKey,
    PublicKey,
    default_key_path,
    load_or_create_identity,
)

# Key vectors: libp2p/specs peer-ids/peer-ids.md, "Test vectors" (hex protobufs).
ED25519_PRIV = bytes.fromhex(
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
    "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
ED25519_PUB = bytes.fromhex(
    "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SECP256K1_PRIV = bytes.fromhex(
    "0802122053DADF1D5A164D6B4ACDB15E24AA4C5B1D3461BDBD42ABEDB0A4404D56CED8FB"
)
SECP256K1_PUB = bytes.fromhex(
    "08021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99"
)
ECDSA_PRIV = bytes.fromhex(
    "08031279307702010104203E5B1FE9712E6C314942A750BD67485DE3C1EFE85B1BFB520A"
    "E8F9AE3DFA4A4CA00A06082A8648CE3D030107A14403420004DE3D300FA36AE0E8F5D530"
    "899D83ABAB44ABF3161F162A4BC901D8E6ECDA020E8B6D5F8DA30525E71D6851510C098E"
    "5C47C646A597FB4DCEC034E9F77C409E62"
)
ECDSA_PUB = bytes.fromhex(
    "0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004de3d300fa3"
    "6ae0e8f5d530899d83abab44abf3161f162a4bc901d8e6ecda020e8b6d5f8da30525e71d"
    "6851510c098e5c47c646a597fb4dcec034e9f77c409e62"
)
RSA_PUB = bytes.fromhex(
    "080012a60430820222300d06092a864886f70d01010105000382020f003082020a028202"
    "0100e1beab071d08200bde24eef00d049449b07770ff9910257b2d7d5dda242ce8f0e2f1"
    "2e1af4b32d9efd2c090f66b0f29986dbb645dae9880089704a94e5066d594162ae6ee889"
    "2e6ec70701db0a6c445c04778eb3de1293aa1a23c3825b85c6620a2bc3f82f9b0c309bc0"
    "ab3aeb1873282bebd3da03c33e76c21e9beb172fd44c9e43be32e2c99827033cf8d0f0c6"
    "06f4579326c930eb4e854395ad941256542c793902185153c474bed109d6ff5141ebf9cd"
    "256cf58893a37f83729f97e7cb435ec679d2e33901d27bb35aa0d7e20561da08885ef0ab"
    "bf8e2fb48d6a5487047a9ecb1ad41fa7ed84f6e3e8ecd5d98b3982d2a901b4454991766d"
    "a295ab78822add5612a2df83bcee814cf50973e80d7ef38111b1bd87da2ae92438a2c8cb"
    "cc70b31ee319939a3b9c761dbc13b5c086d6b64bf7ae7dacc14622375d92a8ff9af7eb96"
    "2162bbddebf90acb32adb5e4e4029f1c96019949ecfbfeffd7ac1e3fbcc6b6168c34be3d"
    "5a2e5999fcbb39bba7adbca78eab09b9bc39f7fa4b93411f4cc175e70c0a083e96bfaefb"
    "04a9580b4753c1738a6a760ae1afd851a1a4bdad231cf56e9284d832483df215a46c1c21"
    "bdf0c6cfe951c18f1ee4078c79c13d63edb6e14feaeffabc90ad317e4875fe648101b086"
    "4097e998f0ca3025ef9638cd2b0caecd3770ab54a1d9c6ca959b0f5dcbc90caeefc4135b"
    "aca6fd475224269bbe1b0203010001"
)

# The spec gives no peer ids for its key vectors. These were derived here and
# agree with independently written libp2p ports (Haskell, Lua) that publish them.
VECTOR_IDS = [
    (
        ED25519_PUB,
        KeyType.ED25519,
        "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq",
        "bafzaajaiaejcahwr5d5ofrfbis4l5d6uwr57hu5tjodrypfm6yaq6dsc2r2pzyt6",
    ),
    (
        SECP256K1_PUB,
        KeyType.SECP256K1,
        "16Uiu2HAmLhLvBoYaoZfaMUKuibM6ac163GwKY74c5kiSLg5KvLpY",
        "bafzaajiiaijcca3xo7uzjzcsyilaj6i54cj44qk7kqzpoao5rti2pjx6udtdbp6kte",
    ),
    (
        ECDSA_PUB,
        KeyType.ECDSA,
        "QmVMT29id3TUASyfZZ6k9hmNyc2nYabCo4uMSpDw4zrgDk",
        "bafzbeidigywdclqvl5hxfefwp5onbffcfife7pza57mmfb4tiqmtkdjw64",
    ),
    (
        RSA_PUB,
        KeyType.RSA,
        "QmaeANgBs1DTSxWSrPPtobgQuxW8XTfsS4ydbK4rCHzqxG",
        "bafzbeifwzcumbiyql7bhv7fe7mixg6i7aohegq75k234m63bnw6dbicmzu",
    ),
]

# Peer id strings as Lattica / rust-libp2p / go-libp2p print them.
KNOWN_IDS = [
    "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",  # peer-ids.md example
    "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # peer-ids.md example
    "QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",  # an IPFS bootstrap peer
    "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq",
    "16Uiu2HAmLhLvBoYaoZfaMUKuibM6ac163GwKY74c5kiSLg5KvLpY",
]


# --- spec vectors ---------------------------------------------------------


@pytest.mark.parametrize(("proto", "key_type", "b58", "cid"), VECTOR_IDS)
def test_spec_public_key_vectors_give_expected_peer_ids(
    proto: bytes, key_type: KeyType, b58: str, cid: str
) -> None:
    key = PublicKey.from_protobuf(proto)
    assert key.key_type is key_type
    assert key.to_protobuf() == proto
    peer = PeerId.from_public_key(key)
    assert str(peer) == b58
    assert peer.to_cid_string() == cid
    assert PeerId.from_string(b58) == peer == PeerId.from_string(cid)
    assert peer.matches(key)
    if len(proto) <= 42:  # spec: identity multihash, the key inline
        assert peer.to_bytes() == bytes([0x00, len(proto)]) + proto
        assert peer.public_key() == key
    else:  # spec: sha2-256 multihash
        assert peer.to_bytes()[:2] == b"\x12\x20" and len(peer.to_bytes()) == 34
        assert peer.public_key() is None


def test_spec_ed25519_private_key_vector() -> None:
    key = PrivateKey.from_protobuf(ED25519_PRIV)
    assert key.public_key == PublicKey.from_protobuf(ED25519_PUB)
    assert key.to_protobuf() == ED25519_PRIV  # seed||pub, as go and rust write it
    assert str(PeerId.from_public_key(key.public_key)).startswith("12D3KooW")


def test_spec_ed25519_private_key_other_encodings() -> None:
    seed, pub = ED25519_PRIV[4:36], ED25519_PRIV[36:]
    from_seed = PrivateKey.from_protobuf(b"\x08\x01\x12\x20" + seed)
    legacy = PrivateKey.from_protobuf(b"\x08\x01\x12\x60" + seed + pub + pub)
    assert from_seed.public_key == legacy.public_key == PublicKey.from_protobuf(ED25519_PUB)
    with pytest.raises(DecodeError, match="two different public keys"):
        PrivateKey.from_protobuf(b"\x08\x01\x12\x60" + seed + pub + bytes(32))
    with pytest.raises(DecodeError, match="does not match"):
        PrivateKey.from_protobuf(b"\x08\x01\x12\x40" + seed + bytes(32))


def _public_of(private: object) -> bytes:
    assert isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_spec_private_key_vectors_of_other_types_match_their_public_keys() -> None:
    # PrivateKey is Ed25519 only: other private keys parse as protobufs and are
    # refused by name. Their key material must produce the spec's public keys.
    for proto in (SECP256K1_PRIV, ECDSA_PRIV):
        with pytest.raises(DecodeError, match="only Ed25519"):
            PrivateKey.from_protobuf(proto)
    scalar = int.from_bytes(SECP256K1_PRIV[4:], "big")
    secp = ec.derive_private_key(scalar, ec.SECP256K1()).public_key()
    compressed = secp.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    assert PublicKey(KeyType.SECP256K1, compressed).to_protobuf() == SECP256K1_PUB
    ecdsa_der = ECDSA_PRIV[4:]  # SEC1 "EC PRIVATE KEY", as go writes it
    ecdsa_pub = _public_of(serialization.load_der_private_key(ecdsa_der, None))
    assert PublicKey(KeyType.ECDSA, ecdsa_pub).to_protobuf() == ECDSA_PUB


def test_spec_string_examples() -> None:
    cid = PeerId.from_string("bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe")
    assert str(cid) == "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
    ed = PeerId.from_string("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")
    assert ed.to_bytes()[:2] == b"\x00\x24"
    key = ed.public_key()
    assert key is not None and key.key_type is KeyType.ED25519 and ed.matches(key)


@pytest.mark.parametrize("text", KNOWN_IDS)
def test_known_id_strings_round_trip(text: str) -> None:
    peer = PeerId.from_string(text)
    assert str(peer) == text
    assert PeerId.from_bytes(peer.to_bytes()) == peer
    cid = peer.to_cid_string()
    assert cid.startswith("bafz")
    assert PeerId.from_string(cid) == peer
    assert PeerId.from_string(cid.upper()) == peer  # multibase 'B': base32 upper
    assert PeerId.from_string(cid + "===") == peer  # padding is tolerated
    assert peer.short() == text[-6:]


# --- keys -----------------------------------------------------------------


def test_generated_key_signs_and_verifies() -> None:
    key = PrivateKey.generate()
    signature = key.sign(b"hello")
    assert key.public_key.verify(signature, b"hello")
    assert not key.public_key.verify(signature, b"hellO")
    assert not key.public_key.verify(b"short", b"hello")
    assert not key.public_key.verify(b"", b"hello")
    peer = PeerId.from_public_key(key.public_key)
    assert str(peer).startswith("12D3KooW")
    assert key.public_key.to_protobuf()[:4] == b"\x08\x01\x12\x20"
    assert PublicKey.from_ed25519_raw(key.public_key.data) == key.public_key
    assert isinstance(key.to_cryptography(), ed25519.Ed25519PrivateKey)
    assert PrivateKey.from_protobuf(key.to_protobuf()).public_key == key.public_key


def test_verify_other_key_types() -> None:
    message = b"libp2p"
    secp = ec.generate_private_key(ec.SECP256K1())
    point = secp.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    p256 = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = [
        (PublicKey(KeyType.SECP256K1, point), secp.sign(message, ec.ECDSA(hashes.SHA256()))),
        (
            PublicKey(KeyType.ECDSA, _public_of(p256)),
            p256.sign(message, ec.ECDSA(hashes.SHA256())),
        ),
        (
            PublicKey(KeyType.RSA, _public_of(rsa_key)),
            rsa_key.sign(message, padding.PKCS1v15(), hashes.SHA256()),
        ),
    ]
    for key, signature in cases:
        assert key.verify(signature, message)
        assert not key.verify(signature, message + b"!")
        assert not key.verify(b"\x30\x00", message)
        assert not key.verify(b"", message)
        assert PublicKey.from_protobuf(key.to_protobuf()) == key


def test_public_key_equality_hash_immutability_pickle() -> None:
    a = PublicKey.from_protobuf(ED25519_PUB)
    b = PublicKey.from_ed25519_raw(ED25519_PUB[4:])
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != PublicKey.from_protobuf(SECP256K1_PUB)
    assert pickle.loads(pickle.dumps(a)) == a
    with pytest.raises(AttributeError):
        a.data = b""  # type: ignore[misc]


@pytest.mark.parametrize(
    ("proto", "message"),
    [
        (b"", "no key type"),
        (b"\x08\x07\x12\x00", "unknown key type 7"),
        (b"\x08\x01", "field 2 is missing"),
        (b"\x08\x01\x12\x03abc", "must be 32 bytes"),
        (b"\x08\x02\x12\x21\x04" + bytes(32), "compressed point"),
        (b"\x08\x02\x12\x21\x02" + b"\xff" * 32, "does not load"),
        (b"\x08\x03\x12\x03abc", "does not load"),
        (b"\x08\x00\x12\x03abc", "does not load"),
        (b"\x08\x03" + RSA_PUB[2:], "P-256"),  # an RSA key under the ECDSA type
        (b"\x08\x00" + ECDSA_PUB[2:], "not an RSA"),
        (b"\x08\x01\x12\x20" + bytes(31), "runs past the end"),
        (b"\x08\x01\x12\x20" + bytes(32) + bytes(3000), "exceeds 2048"),
    ],
)
def test_bad_public_keys(proto: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        PublicKey.from_protobuf(proto)


def test_weak_rsa_key_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(DecodeError, match="1024 bits"):
        PublicKey(KeyType.RSA, _public_of(weak))


def test_private_key_never_leaks() -> None:
    key = PrivateKey.from_protobuf(ED25519_PRIV)
    seed = ED25519_PRIV[4:36]
    secret_forms = [
        seed.hex(),
        seed.hex().upper(),
        base64.b64encode(seed).decode().rstrip("="),
        base64.b64encode(ED25519_PRIV).decode()[:40],
        ED25519_PRIV.hex(),
    ]
    shown = [repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})]
    assert repr(key) == "SecretKey(..)"
    for text in shown:
        for secret in secret_forms:
            assert secret not in text
    with pytest.raises(TypeError):
        pickle.dumps(key)
    # Errors about a bad private key do not echo the bytes either.
    bad = b"\x08\x01\x12\x40" + seed + bytes(32)
    with pytest.raises(DecodeError) as info:
        PrivateKey.from_protobuf(bad)
    assert seed.hex() not in str(info.value) and info.value.__cause__ is None


# --- peer ids -------------------------------------------------------------


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().lower().rstrip("=")


def test_peer_id_ordering_hash_pickle() -> None:
    ids = sorted(PeerId.from_string(text) for text in KNOWN_IDS)
    assert [p.to_bytes() for p in ids] == sorted(p.to_bytes() for p in ids)
    assert ids[0] < ids[1] <= ids[1] and ids[-1] > ids[0] >= ids[0]
    assert len(set(ids + ids)) == len(ids)
    assert pickle.loads(pickle.dumps(ids[0])) == ids[0]
    assert repr(ids[0]) == f"PeerId({ids[0]})"
    with pytest.raises(AttributeError):
        ids[0].digest = b""


def test_matches_is_false_for_another_key() -> None:
    peer = PeerId.from_public_key(PublicKey.from_protobuf(ECDSA_PUB))
    assert not peer.matches(PublicKey.from_protobuf(RSA_PUB))
    assert not peer.matches(PrivateKey.generate().public_key)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty peer id"),
        ("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5", "digest"),  # one char short
        ("Qm0OIl", "not valid base58btc"),
        ("12D3KooW" + "x" * 200, "too long"),
        ("xyz", "neither base58btc"),
        ("bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xq!e", "not valid base32"),
        ("bafybeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe", "codec 0x70"),
        ("b" + _b32(b"\x02\x72\x12\x20" + bytes(32)), "version 2, expected 1"),
        ("b" + _b32(b"\x12\x20" + bytes(32)), "version 18"),  # a bare multihash
        ("b" + _b32(b"\x01\x72\x12\x20" + bytes(31)), "has 31"),
        ("b", "truncated"),
    ],
)
def test_bad_peer_id_strings(text: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        PeerId.from_string(text)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\x12\x20" + bytes(31), "says 32 digest bytes but has 31"),
        (b"\x12\x10" + bytes(16), "must be 32 bytes"),
        (b"\x11\x14" + bytes(20), "neither identity nor sha2-256"),
        (b"\x00\x2b" + bytes(43), "exceeds 42"),
        (b"\x00\x03abc", "does not hold a public key"),  # identity must hold a real key
        (b"\x12\x20" + bytes(33), "has 33"),
    ],
)
def test_bad_peer_id_bytes(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        PeerId.from_bytes(data)


@given(st.binary(max_size=80))
def test_random_bytes_into_decoders_raise_only_decode_error(data: bytes) -> None:
    for decode in (PublicKey.from_protobuf, PeerId.from_bytes, PrivateKey.from_protobuf):
        try:
            decode(data)
        except DecodeError:
            pass


@given(st.binary(max_size=40).map(lambda b: b"\x08\x01\x12" + bytes([len(b)]) + b))
def test_near_valid_key_protobufs_raise_only_decode_error(data: bytes) -> None:
    for decode in (PublicKey.from_protobuf, PrivateKey.from_protobuf):
        try:
            decode(data)
        except DecodeError:
            pass
    try:
        PeerId.from_bytes(b"\x00" + bytes([len(data)]) + data)
    except DecodeError:
        pass


@given(st.text(max_size=70))
def test_random_text_into_from_string_raises_only_decode_error(text: str) -> None:
    for candidate in (text, "1" + text, "Qm" + text, "b" + text, "z" + text):
        try:
            PeerId.from_string(candidate)
        except DecodeError:
            pass


# --- the key file ---------------------------------------------------------


def test_default_key_path(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_key_path() == tmp_path / "lattica_nb" / "identity.key"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_key_path() == tmp_path / "home" / ".config" / "lattica_nb" / "identity.key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert default_key_path() == tmp_path / "home" / ".config" / "lattica_nb" / "identity.key"


def test_key_file_created_private_and_reused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a" / "b" / "identity.key"
    first = load_or_create_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert path.read_bytes() == first.to_protobuf()
    assert sorted(os.listdir(path.parent)) == ["identity.key"]  # no temp file left
    second = load_or_create_identity(path)
    assert PeerId.from_public_key(second.public_key) == PeerId.from_public_key(first.public_key)


def test_key_file_default_location(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    key = load_or_create_identity()
    assert (tmp_path / "lattica_nb" / "identity.key").read_bytes() == key.to_protobuf()


def test_existing_go_style_key_file_is_used(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "identity.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, ED25519_PRIV)
    os.close(fd)
    key = load_or_create_identity(path)
    assert str(PeerId.from_public_key(key.public_key)) == VECTOR_IDS[0][2]


@pytest.mark.parametrize("content", [b"", b"garbage", ED25519_PRIV[:-1], SECP256K1_PRIV])
def test_corrupt_key_file(tmp_path: pathlib.Path, content: bytes) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_or_create_identity(path)
    text = str(info.value)
    assert str(path) in text and "corrupt" in text
    if content:
        assert content.hex() not in text and repr(content) not in text
    assert path.read_bytes() == content  # never overwritten


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: pathlib.Path, mode: int) -> None:
    path = tmp_path / "identity.key"
    load_or_create_identity(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=r"chmod 600") as info:
        load_or_create_identity(path)
    assert str(path) in str(info.value)


def test_key_file_that_is_a_directory(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "identity.key"
    path.mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        load_or_create_identity(path)
