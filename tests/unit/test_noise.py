"""Sans-IO Noise core: XX handshake state, libp2p handshake, transport framing.

Synchronous: two instances are pumped against each other, no sockets.
"""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.errors import (
    DecodeError,
    HandshakeError,
    LocalProtocolError,
    PeerIdMismatch,
    RemoteProtocolError,
)
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.transport.noise.cipher import (
    MAX_FRAME_BYTES,
    MAX_NONCE,
    MAX_PLAINTEXT_BYTES,
    CipherState,
    FrameReader,
    NoiseTransport,
    encode_frame,
)
from lattica_nb.transport.noise.handshake import (
    HandshakeResult,
    NoiseHandshake,
    XXHandshakeState,
)
from lattica_nb.transport.noise.payload import (
    STATIC_KEY_SIGNATURE_PREFIX,
    HandshakePayload,
    make_payload,
)
from lattica_nb.wire.protobuf import ProtoWriter

pytestmark = pytest.mark.timeout(60)

# Noise_XX_25519_ChaChaPoly_SHA256 from the cacophony test vectors
# (haskell-cryptography/cacophony, vectors/cacophony.txt), also used by snow.
VECTOR = {
    "prologue": "4a6f686e2047616c74",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "handshake_hash": "c8e5f64e846193be2a834104c2a009868d6c9f3bd3c186299888b488b2f1f58e",
    "messages": [
        (
            "4c756477696720766f6e204d69736573",
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944"
            "4c756477696720766f6e204d69736573",
        ),
        (
            "4d757272617920526f746862617264",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843"
            "81cbad1f276e038c48378ffce2b65285e08d6b68aaa3629a5a8639392490e5b9"
            "bd5269c2f1e4f488ed8831161f19b7815528f8982ffe09be9b5c412f8a0db50f"
            "8814c7194e83f23dbd8d162c9326ad",
        ),
        (
            "462e20412e20486179656b",
            "c7195ffacac1307ff99046f219750fc47693e23c3cb08b89c2af808b444850a8"
            "0ae475b9df0f169ae80a89be0865b57f58c9fea0d4ec82a286427402f113e4b6"
            "ae769a1d95941d49b25030",
        ),
        ("4361726c204d656e676572", "96763ed773f8e47bb3712f0e29b3060ffc956ffc146cee53d5e1df"),
        (
            "4a65616e2d426170746973746520536179",
            "3e40f15f6f3a46ae446b253bf8b1d9ffb6ed9b174d272328ff91a7e2e5c79c07f5",
        ),
        (
            "457567656e2042f6686d20766f6e2042617765726b",
            "eb3f3515110702e047a6c9da4478b6ead94873c11c0f2d710ddb3f09fce024b3a58502ae3f",
        ),
    ],
}


def _key(name: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(str(VECTOR[name])))


# -- Noise XX state against the official vectors ----------------------------------------
def test_xx_matches_cacophony_vector() -> None:
    prologue = bytes.fromhex(str(VECTOR["prologue"]))
    initiator = XXHandshakeState(
        initiator=True,
        static_key=_key("init_static"),
        ephemeral_key=_key("init_ephemeral"),
        prologue=prologue,
    )
    responder = XXHandshakeState(
        initiator=False,
        static_key=_key("resp_static"),
        ephemeral_key=_key("resp_ephemeral"),
        prologue=prologue,
    )
    messages = [(bytes.fromhex(p), bytes.fromhex(c)) for p, c in VECTOR["messages"]]
    for number, (payload, ciphertext) in enumerate(messages[:3]):
        writer, reader = (initiator, responder) if number % 2 == 0 else (responder, initiator)
        assert writer.write_message(payload) == ciphertext
        assert reader.read_message(ciphertext) == payload
    assert initiator.complete and responder.complete
    assert initiator.handshake_hash.hex() == VECTOR["handshake_hash"]
    assert responder.handshake_hash == initiator.handshake_hash
    assert initiator.remote_static == responder.local_static
    i_send, i_receive = initiator.split()
    r_receive, r_send = responder.split()
    for number, (payload, ciphertext) in enumerate(messages[3:], start=3):
        sender, receiver = (i_send, r_receive) if number % 2 == 0 else (r_send, i_receive)
        assert sender.encrypt_with_ad(b"", payload) == ciphertext
        assert receiver.decrypt_with_ad(b"", ciphertext) == payload


def test_xx_refuses_calls_out_of_turn() -> None:
    initiator = XXHandshakeState(initiator=True, static_key=X25519PrivateKey.generate())
    responder = XXHandshakeState(initiator=False, static_key=X25519PrivateKey.generate())
    with pytest.raises(LocalProtocolError):
        responder.write_message(b"")
    with pytest.raises(LocalProtocolError):
        initiator.read_message(b"\x00" * 32)
    with pytest.raises(LocalProtocolError):
        initiator.split()
    message = initiator.write_message(b"")
    with pytest.raises(LocalProtocolError):
        initiator.write_message(b"")
    responder.read_message(message)
    initiator.read_message(responder.write_message(b""))
    responder.read_message(initiator.write_message(b""))
    with pytest.raises(LocalProtocolError):
        responder.read_message(b"")
    assert initiator.split()[0].nonce == 0


def test_xx_failed_read_leaves_state_unusable() -> None:
    responder = XXHandshakeState(initiator=False, static_key=X25519PrivateKey.generate())
    with pytest.raises(HandshakeError):
        responder.read_message(b"short")
    with pytest.raises(LocalProtocolError):
        responder.write_message(b"")


# -- libp2p handshake --------------------------------------------------------------------
def pump(
    initiator: NoiseHandshake, responder: NoiseHandshake
) -> tuple[HandshakeResult, HandshakeResult]:
    responder.start()
    message_1 = initiator.start()
    message_2 = responder.receive(message_1)
    message_3 = initiator.receive(message_2)
    assert initiator.complete and not responder.complete
    assert responder.receive(message_3) == b""
    assert responder.complete
    return initiator.result(), responder.result()


def test_handshake_authenticates_both_sides_and_keys_agree() -> None:
    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    bob_id = PeerId.from_public_key(bob.public_key)
    alice_id = PeerId.from_public_key(alice.public_key)
    ours, theirs = pump(
        NoiseHandshake(alice, is_initiator=True, expected_peer=bob_id),
        NoiseHandshake(bob, is_initiator=False, expected_peer=alice_id),
    )
    assert ours.remote_peer == bob_id and ours.remote_public_key == bob.public_key
    assert theirs.remote_peer == alice_id and theirs.remote_public_key == alice.public_key
    assert ours.handshake_hash == theirs.handshake_hash
    assert ours.leftover == theirs.leftover == b""
    frames = ours.transport.encrypt(b"hello bob")
    assert theirs.transport.feed(frames) == [b"hello bob"]
    assert ours.transport.feed(theirs.transport.encrypt(b"hi alice")) == [b"hi alice"]


def test_handshake_with_fixed_keys_is_deterministic() -> None:
    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    keys = [X25519PrivateKey.generate() for _ in range(4)]

    def run() -> list[bytes]:
        initiator = NoiseHandshake(
            alice, is_initiator=True, static_key=keys[0], ephemeral_key=keys[1]
        )
        responder = NoiseHandshake(
            bob, is_initiator=False, static_key=keys[2], ephemeral_key=keys[3]
        )
        responder.start()
        one = initiator.start()
        two = responder.receive(one)
        three = initiator.receive(two)
        responder.receive(three)
        return [one, two, three, initiator.result().transport.encrypt(b"x")]

    assert run() == run()


def test_message_sizes_and_framing() -> None:
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    responder = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
    assert responder.start() == b""
    one = initiator.start()
    assert one[:2] == b"\x00\x20" and len(one) == 34  # 32-byte ephemeral key, empty payload
    two = responder.receive(one)
    assert int.from_bytes(two[:2], "big") == len(two) - 2


def test_handshake_bytes_may_arrive_one_at_a_time() -> None:
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    responder = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
    responder.start()

    def trickle(target: NoiseHandshake, data: bytes) -> bytes:
        out = b""
        for index in range(len(data)):
            out += target.receive(data[index : index + 1])
        return out

    two = trickle(responder, initiator.start())
    three = trickle(initiator, two)
    assert trickle(responder, three) == b""
    assert initiator.complete and responder.complete


def test_data_pipelined_behind_message_3_is_kept() -> None:
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    responder = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
    responder.start()
    three = initiator.receive(responder.receive(initiator.start()))
    transport = initiator.result().transport
    early = transport.encrypt(b"first") + transport.encrypt(b"second")
    responder.receive(three + bytes(early) + b"\x00")  # plus half a length prefix
    leftover = responder.result().leftover
    assert leftover == bytes(early) + b"\x00"
    assert responder.result().transport.feed(leftover) == [b"first", b"second"]


def test_wrong_expected_peer_raises_peer_id_mismatch() -> None:
    someone_else = PeerId.from_public_key(PrivateKey.generate().public_key)
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True, expected_peer=someone_else)
    responder = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
    responder.start()
    with pytest.raises(PeerIdMismatch):
        initiator.receive(responder.receive(initiator.start()))
    # ... and on the responder's side, checked against message 3.
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    responder = NoiseHandshake(
        PrivateKey.generate(), is_initiator=False, expected_peer=someone_else
    )
    responder.start()
    three = initiator.receive(responder.receive(initiator.start()))
    with pytest.raises(PeerIdMismatch):
        responder.receive(three)


def _flip(frame: bytes, index: int) -> bytes:
    data = bytearray(frame)
    data[index] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize("index", [2, 20, 33])
def test_tampered_message_1_fails_at_the_initiator(index: int) -> None:
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    responder = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
    responder.start()
    two = responder.receive(_flip(initiator.start(), index))
    with pytest.raises(HandshakeError):
        initiator.receive(two)  # transcript hashes differ: message 2 does not decrypt


@pytest.mark.parametrize("where", ["ephemeral", "static", "payload", "tag"])
def test_tampered_message_2_fails(where: str) -> None:
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    responder = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
    responder.start()
    two = responder.receive(initiator.start())
    index = {"ephemeral": 5, "static": 2 + 32 + 3, "payload": 2 + 80 + 4, "tag": len(two) - 1}
    with pytest.raises(HandshakeError):
        initiator.receive(_flip(two, index[where]))


@pytest.mark.parametrize("where", ["static", "payload", "tag"])
def test_tampered_message_3_fails(where: str) -> None:
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    responder = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
    responder.start()
    three = initiator.receive(responder.receive(initiator.start()))
    index = {"static": 4, "payload": 2 + 48 + 4, "tag": len(three) - 1}
    with pytest.raises(HandshakeError):
        responder.receive(_flip(three, index[where]))


def _forged_message_2(one: bytes, payload_for: object) -> bytes:
    """Message 2 from a hand-driven responder whose payload ``payload_for(static)`` makes."""
    state = XXHandshakeState(initiator=False, static_key=X25519PrivateKey.generate())
    state.read_message(one[2:])
    payload = payload_for(state.local_static)  # type: ignore[operator]
    return encode_frame(state.write_message(payload))


def test_payload_signed_by_a_different_key_is_refused() -> None:
    claimed, signer = PrivateKey.generate(), PrivateKey.generate()

    def forged(static: bytes) -> bytes:
        return HandshakePayload(
            identity_key=claimed.public_key.to_protobuf(),
            identity_sig=signer.sign(STATIC_KEY_SIGNATURE_PREFIX + static),
        ).encode()

    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    with pytest.raises(HandshakeError, match="not signed"):
        initiator.receive(_forged_message_2(initiator.start(), forged))


def test_payload_signing_another_static_key_is_refused() -> None:
    identity = PrivateKey.generate()
    other_static = bytes(32 * [9])
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    message = _forged_message_2(
        initiator.start(), lambda static: make_payload(identity, other_static).encode()
    )
    with pytest.raises(HandshakeError):
        initiator.receive(message)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xff",
        ProtoWriter().bytes(2, b"sig").finish(),
        ProtoWriter().bytes(1, b"k").finish(),
    ],
)
def test_malformed_payload_is_refused(payload: bytes) -> None:
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    with pytest.raises(HandshakeError):
        initiator.receive(_forged_message_2(initiator.start(), lambda static: payload))


def test_unknown_payload_fields_and_extensions_are_ignored() -> None:
    identity = PrivateKey.generate()

    def with_extensions(static: bytes) -> bytes:
        extensions = ProtoWriter().bytes(1, b"certhash").string(2, "/yamux/1.0.0").finish()
        return (
            make_payload(identity, static).encode()
            + ProtoWriter().bytes(4, extensions).uint(99, 7).finish()
        )

    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    initiator.receive(_forged_message_2(initiator.start(), with_extensions))
    assert initiator.result().remote_public_key == identity.public_key


def test_wrong_message_order_is_refused() -> None:
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    responder = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
    with pytest.raises(LocalProtocolError):
        responder.receive(b"\x00")  # before start()
    responder.start()
    with pytest.raises(LocalProtocolError):
        responder.start()
    one = initiator.start()
    two = responder.receive(one)
    # Message 2 sent to a responder as if it were message 1: it carries a payload.
    with pytest.raises(HandshakeError, match="message 1"):
        other = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
        other.start()
        other.receive(two)
    # Message 1 replayed in place of message 3: too short for a static key.
    with pytest.raises(HandshakeError, match="too short"):
        responder.receive(one)
    # Message 1 given to an initiator in place of message 2.
    with pytest.raises(HandshakeError, match="too short"):
        initiator.receive(one)
    with pytest.raises(LocalProtocolError):
        initiator.result()


def test_receive_after_completion_is_a_local_error() -> None:
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    responder = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
    pump(initiator, responder)
    with pytest.raises(LocalProtocolError):
        initiator.receive(b"\x00\x00")


def test_low_order_ephemeral_key_is_refused() -> None:
    responder = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
    responder.start()
    with pytest.raises(HandshakeError, match="low-order"):
        responder.receive(encode_frame(bytes(32)))


# -- frames and transport ----------------------------------------------------------------
def transport_pair() -> tuple[NoiseTransport, NoiseTransport]:
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    responder = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
    ours, theirs = pump(initiator, responder)
    return ours.transport, theirs.transport


def test_large_plaintext_is_split_into_max_size_frames() -> None:
    sender, receiver = transport_pair()
    data = bytes(range(256)) * 1000  # 256,000 bytes: 4 frames
    wire = bytes(sender.encrypt(data))
    sizes = []
    pos = 0
    while pos < len(wire):
        size = int.from_bytes(wire[pos : pos + 2], "big")
        sizes.append(size)
        pos += 2 + size
    assert sizes[:3] == [MAX_FRAME_BYTES] * 3 and sum(sizes) == len(data) + 16 * len(sizes)
    pieces: list[bytes] = []
    for start in range(0, len(wire), 7777):
        pieces += receiver.feed(wire[start : start + 7777])
    assert b"".join(pieces) == data
    assert sender.send_nonce == receiver.receive_nonce == 4
    assert bytes(sender.encrypt(b"")) == b""


def test_frame_limits() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(bytes(MAX_FRAME_BYTES + 1))
    assert len(encode_frame(bytes(MAX_FRAME_BYTES))) == MAX_FRAME_BYTES + 2
    sender, receiver = transport_pair()
    with pytest.raises(LocalProtocolError):
        sender.encrypt_frame(bytes(MAX_PLAINTEXT_BYTES + 1))
    frame = sender.encrypt_frame(bytes(MAX_PLAINTEXT_BYTES))
    assert len(frame) == MAX_FRAME_BYTES + 2
    assert receiver.feed(frame) == [bytes(MAX_PLAINTEXT_BYTES)]
    with pytest.raises(DecodeError, match="shorter than"):
        receiver.feed(encode_frame(bytes(10)))


def test_truncated_frame_at_eof_is_a_decode_error() -> None:
    sender, receiver = transport_pair()
    wire = bytes(sender.encrypt(b"payload"))
    assert receiver.feed(wire[:-3]) == []
    assert receiver.buffered_bytes == len(wire) - 3
    with pytest.raises(DecodeError):
        receiver.check_eof()
    assert receiver.feed(wire[-3:]) == [b"payload"]
    receiver.check_eof()


@pytest.mark.parametrize("damage", ["flip", "reorder", "replay"])
def test_bad_transport_frames_break_the_transport(damage: str) -> None:
    sender, receiver = transport_pair()
    first, second = bytes(sender.encrypt(b"one")), bytes(sender.encrypt(b"two"))
    wire = {
        "flip": _flip(first, 5) + second,
        "reorder": second + first,
        "replay": first + first,
    }[damage]
    with pytest.raises(RemoteProtocolError):
        receiver.feed(wire)
    with pytest.raises(RemoteProtocolError, match="failed earlier"):
        receiver.feed(second)


def test_nonce_exhaustion() -> None:
    key = bytes(range(32))
    sender = CipherState(key, nonce=MAX_NONCE - 1)
    receiver = CipherState(key, nonce=MAX_NONCE - 1)
    assert receiver.decrypt_with_ad(b"", sender.encrypt_with_ad(b"", b"last")) == b"last"
    with pytest.raises(LocalProtocolError, match="exhausted"):
        sender.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(RemoteProtocolError, match="exhausted"):
        receiver.decrypt_with_ad(b"", bytes(20))
    transport = NoiseTransport(CipherState(key, nonce=MAX_NONCE), CipherState(key))
    with pytest.raises(LocalProtocolError):
        transport.encrypt(b"x")


def test_cipher_state_checks_its_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        CipherState(b"short")
    with pytest.raises(LocalProtocolError):
        CipherState(bytes(32), nonce=-1)
    with pytest.raises(LocalProtocolError):
        NoiseTransport(CipherState(), CipherState(bytes(32)))
    assert CipherState().encrypt_with_ad(b"ad", b"clear") == b"clear"


# -- property tests ----------------------------------------------------------------------
@given(st.binary(max_size=4096))
@settings(max_examples=300, deadline=None)
def test_payload_decoder_raises_only_decode_error(data: bytes) -> None:
    try:
        HandshakePayload.decode(data)
    except DecodeError:
        pass


@given(st.lists(st.binary(max_size=70000), max_size=4))
@settings(max_examples=100, deadline=None)
def test_transport_feed_raises_only_remote_protocol_errors(chunks: list[bytes]) -> None:
    receiver = NoiseTransport(CipherState(bytes(32)), CipherState(bytes(range(32))))
    try:
        for chunk in chunks:
            receiver.feed(chunk)
        receiver.check_eof()
    except RemoteProtocolError:
        pass


@given(st.lists(st.binary(max_size=3000), max_size=8), st.lists(st.integers(0, 20000)))
@settings(max_examples=200, deadline=None)
def test_frame_reader_reassembles_frames_split_anywhere(
    messages: list[bytes], cuts: list[int]
) -> None:
    wire = b"".join(encode_frame(message) for message in messages)
    points = sorted({cut % (len(wire) + 1) for cut in cuts} | {0, len(wire)})
    reader = FrameReader()
    frames: list[bytes] = []
    for start, stop in itertools.pairwise(points):
        frames += [bytes(frame) for frame in reader.split(wire[start:stop])]
    assert frames == messages
    reader.check_eof()


@given(st.binary(max_size=400))
@settings(max_examples=200, deadline=None)
def test_handshake_fed_random_bytes_raises_only_handshake_or_decode_errors(data: bytes) -> None:
    for is_initiator in (True, False):
        handshake = NoiseHandshake(_IDENTITY, is_initiator=is_initiator)
        handshake.start()
        try:
            handshake.receive(data)
        except (HandshakeError, DecodeError):
            pass


_IDENTITY = PrivateKey.generate()


def test_eof_during_handshake() -> None:
    responder = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
    responder.start()
    with pytest.raises(HandshakeError, match="closed"):
        responder.receive_eof()
    assert responder.receive(b"\x00\x20" + bytes(5)) == b""
    with pytest.raises(DecodeError, match="inside a Noise frame"):
        responder.receive_eof()
