"""The Noise XX handshake and libp2p's use of it, as sans-IO state machines.

:class:`XXHandshakeState` is the Noise Protocol Framework's HandshakeState
(rev 34, sections 5.2-5.3) for ``Noise_XX_25519_ChaChaPoly_SHA256``::

    -> e
    <- e, ee, s, es
    -> s, se

It takes and returns Noise messages; its keys can be injected, so the
official test vectors drive it. :class:`NoiseHandshake` adds libp2p's rules
(libp2p/specs noise/README.md): 2-byte length framing, an empty prologue, an
empty first message, and a :class:`~.payload.HandshakePayload` in messages 2
(responder) and 3 (initiator) whose signature binds the sender's X25519
static key to its libp2p identity key. It takes received bytes and returns
bytes to send; the driver (``stream.py``) moves them and applies a timeout.

Errors: HandshakeError for anything wrong with the peer's messages (a
message that does not authenticate, a malformed or wrongly signed payload, a
bad key), PeerIdMismatch when the peer is not the one expected, and
LocalProtocolError for calls out of turn.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ...errors import (
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from ...identity import PeerId, PrivateKey, PublicKey
from .cipher import (
    Buffer,
    CipherState,
    FrameReader,
    NoiseTransport,
    SymmetricState,
    encode_frame,
)
from .payload import make_payload, verify_payload

__all__ = [
    "DH_BYTES",
    "PROTOCOL_NAME",
    "HandshakeResult",
    "NoiseHandshake",
    "XXHandshakeState",
    "public_bytes",
]

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
DH_BYTES = 32

_XX_MESSAGES: tuple[tuple[str, ...], ...] = (("e",), ("e", "ee", "s", "es"), ("s", "se"))


def public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """The 32-byte RFC 7748 encoding of an X25519 public key."""
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _load_public(data: bytes, what: str) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(data)
    except ValueError:
        raise HandshakeError(f"the peer's {what} is not an X25519 public key") from None


def _dh(private: X25519PrivateKey, public: X25519PublicKey) -> bytes:
    try:
        return private.exchange(public)
    except ValueError:  # an all-zero result: the peer sent a low-order point
        raise HandshakeError("the peer sent a weak X25519 key (low-order point)") from None


class XXHandshakeState:
    """Noise XX over 25519/ChaChaPoly/SHA256; keys injectable for test vectors.

    Call :meth:`write_message` and :meth:`read_message` in turn (the
    initiator writes first); after the third message :meth:`split` gives the
    transport cipher states. A failed read leaves the state unusable.
    """

    __slots__ = (
        "_ephemeral",
        "_failed",
        "_index",
        "_initiator",
        "_remote_ephemeral",
        "_remote_static",
        "_static",
        "_symmetric",
    )

    def __init__(
        self,
        *,
        initiator: bool,
        static_key: X25519PrivateKey,
        ephemeral_key: X25519PrivateKey | None = None,
        prologue: bytes = b"",
    ) -> None:
        self._initiator = initiator
        self._static = static_key
        self._ephemeral = ephemeral_key
        self._remote_ephemeral: X25519PublicKey | None = None
        self._remote_static: X25519PublicKey | None = None
        self._symmetric = SymmetricState(PROTOCOL_NAME)
        self._symmetric.mix_hash(prologue)
        self._index = 0
        self._failed = False

    @property
    def complete(self) -> bool:
        return self._index == len(_XX_MESSAGES)

    @property
    def messages_done(self) -> int:
        """Handshake messages written or read so far (0..3)."""
        return self._index

    @property
    def writes_next(self) -> bool:
        """True when the next message is ours to write."""
        return not self.complete and (self._index % 2 == 0) == self._initiator

    @property
    def handshake_hash(self) -> bytes:
        return self._symmetric.handshake_hash

    @property
    def local_static(self) -> bytes:
        """Our X25519 static public key."""
        return public_bytes(self._static)

    @property
    def remote_static(self) -> bytes | None:
        """The peer's X25519 static public key, once its ``s`` token was read."""
        return None if self._remote_static is None else public_bytes(self._remote_static)

    def _check_turn(self, writing: bool) -> None:
        if self._failed:
            raise LocalProtocolError("this Noise handshake already failed; start a new one")
        if self.complete:
            raise LocalProtocolError("the Noise handshake is already complete")
        if writing != self.writes_next:
            raise LocalProtocolError(
                f"out of turn: message {self._index + 1} of XX is the "
                f"{'initiator' if self._index % 2 == 0 else 'responder'}'s to write"
            )

    def _mix_dh(self, token: str) -> None:
        ours = self._ephemeral if token[0 if self._initiator else 1] == "e" else self._static
        theirs = (
            self._remote_ephemeral
            if token[1 if self._initiator else 0] == "e"
            else self._remote_static
        )
        if ours is None or theirs is None:  # pragma: no cover - the pattern orders the tokens
            raise LocalProtocolError(f"XX token {token} before its keys are known")
        self._symmetric.mix_key(_dh(ours, theirs))

    def write_message(self, payload: Buffer) -> bytes:
        """The next handshake message carrying ``payload`` (encrypted once a key exists)."""
        self._check_turn(writing=True)
        symmetric = self._symmetric
        out = bytearray()
        for token in _XX_MESSAGES[self._index]:
            if token == "e":
                if self._ephemeral is None:
                    self._ephemeral = X25519PrivateKey.generate()
                ephemeral = public_bytes(self._ephemeral)
                out += ephemeral
                symmetric.mix_hash(ephemeral)
            elif token == "s":
                out += symmetric.encrypt_and_hash(public_bytes(self._static))
            else:
                self._mix_dh(token)
        out += symmetric.encrypt_and_hash(payload)
        self._index += 1
        return bytes(out)

    def read_message(self, message: Buffer) -> bytes:
        """Process the peer's next message and return its payload; HandshakeError if bad."""
        self._check_turn(writing=False)
        try:
            payload = self._read(memoryview(message))
        except BaseException:
            self._failed = True
            raise
        self._index += 1
        return payload

    def _read(self, view: memoryview) -> bytes:
        symmetric = self._symmetric
        number = self._index + 1
        pos = 0
        for token in _XX_MESSAGES[self._index]:
            if token == "e":
                if len(view) - pos < DH_BYTES:
                    raise HandshakeError(
                        f"Noise message {number} of {len(view)} bytes is too short "
                        "for an ephemeral key"
                    )
                ephemeral = bytes(view[pos : pos + DH_BYTES])
                pos += DH_BYTES
                self._remote_ephemeral = _load_public(ephemeral, "ephemeral key")
                symmetric.mix_hash(ephemeral)
            elif token == "s":
                size = DH_BYTES + (16 if symmetric.has_key else 0)
                if len(view) - pos < size:
                    raise HandshakeError(
                        f"Noise message {number} of {len(view)} bytes is too short for a static key"
                    )
                static = self._decrypt(view[pos : pos + size], number, "static key")
                pos += size
                self._remote_static = _load_public(static, "static key")
            else:
                self._mix_dh(token)
        return self._decrypt(view[pos:], number, "payload")

    def _decrypt(self, ciphertext: memoryview, number: int, what: str) -> bytes:
        try:
            return self._symmetric.decrypt_and_hash(ciphertext)
        except RemoteProtocolError as exc:
            raise HandshakeError(
                f"the {what} in Noise message {number} does not decrypt "
                "(corrupted or forged handshake)"
            ) from exc

    def split(self) -> tuple[CipherState, CipherState]:
        """(initiator-to-responder, responder-to-initiator) cipher states."""
        if not self.complete or self._failed:
            raise LocalProtocolError("the Noise handshake is not complete; cannot split")
        return self._symmetric.split()


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """What a finished handshake yields.

    ``leftover`` holds bytes received after the last handshake message (the
    initiator may send transport frames right behind message 3); feed them
    to ``transport`` first.
    """

    transport: NoiseTransport
    remote_public_key: PublicKey
    remote_peer: PeerId
    handshake_hash: bytes
    leftover: bytes


class NoiseHandshake:
    """libp2p's Noise XX handshake, bytes in and bytes out.

    The initiator sends :meth:`start`'s bytes first (the responder's are
    empty); after that, each call to :meth:`receive` takes bytes from the
    peer and returns bytes to send (possibly none) until :attr:`complete`.
    """

    __slots__ = (
        "_expected_peer",
        "_identity",
        "_initiator",
        "_reader",
        "_remote",
        "_result",
        "_started",
        "_state",
    )

    def __init__(
        self,
        identity: PrivateKey,
        *,
        is_initiator: bool,
        expected_peer: PeerId | None = None,
        static_key: X25519PrivateKey | None = None,
        ephemeral_key: X25519PrivateKey | None = None,
    ) -> None:
        self._identity = identity
        self._initiator = is_initiator
        self._expected_peer = expected_peer
        self._state = XXHandshakeState(
            initiator=is_initiator,
            static_key=X25519PrivateKey.generate() if static_key is None else static_key,
            ephemeral_key=ephemeral_key,
        )
        self._reader = FrameReader()
        self._remote: tuple[PublicKey, PeerId] | None = None
        self._result: HandshakeResult | None = None
        self._started = False

    @property
    def complete(self) -> bool:
        return self._result is not None

    def start(self) -> bytes:
        """Bytes to send first: message 1 for the initiator, nothing for the responder."""
        if self._started:
            raise LocalProtocolError("NoiseHandshake.start() was already called")
        self._started = True
        if not self._initiator:
            return b""
        return encode_frame(self._state.write_message(b""))

    def receive(self, data: Buffer) -> bytes:
        """Take bytes from the peer; return the bytes to send in answer."""
        if not self._started:
            raise LocalProtocolError("call NoiseHandshake.start() before receive()")
        if self._result is not None:
            raise LocalProtocolError("the Noise handshake is complete; use the transport")
        out = bytearray()
        frames = self._reader.split(data)
        for index, frame in enumerate(frames):
            out += self._on_message(frame)
            if self._state.complete:
                rest = b"".join(encode_frame(f) for f in frames[index + 1 :])
                self._result = self._make_result(rest + self._reader.take_remaining())
                break
        return bytes(out)

    def receive_eof(self) -> None:
        """The peer ended its stream before the handshake completed: always raises.

        DecodeError if it stopped inside a frame, else HandshakeError.
        """
        self._reader.check_eof()
        raise HandshakeError(
            "the peer closed the connection during the Noise handshake "
            "(it may have refused our identity)"
        )

    def _on_message(self, message: memoryview) -> bytes:
        state = self._state
        first = state.messages_done == 0
        payload = state.read_message(message)
        if first:
            # Message 1 holds only an ephemeral key. rust-libp2p refuses a payload; so do we.
            if payload:
                raise HandshakeError(
                    f"Noise message 1 carries a {len(payload)}-byte payload; libp2p sends none"
                )
        else:
            static = state.remote_static
            if static is None:  # pragma: no cover - messages 2 and 3 carry ``s``
                raise HandshakeError("the peer's static key is missing")
            self._remote = verify_payload(payload, static, self._expected_peer)
        if not state.writes_next:
            return b""
        payload_out = make_payload(self._identity, state.local_static)
        return encode_frame(state.write_message(payload_out.encode()))

    def _make_result(self, leftover: bytes) -> HandshakeResult:
        remote = self._remote
        if remote is None:  # pragma: no cover - set before completion
            raise LocalProtocolError("the peer's identity is not known yet")
        to_responder, to_initiator = self._state.split()
        if self._initiator:
            transport = NoiseTransport(sender=to_responder, receiver=to_initiator)
        else:
            transport = NoiseTransport(sender=to_initiator, receiver=to_responder)
        return HandshakeResult(
            transport=transport,
            remote_public_key=remote[0],
            remote_peer=remote[1],
            handshake_hash=self._state.handshake_hash,
            leftover=leftover,
        )

    def result(self) -> HandshakeResult:
        """The transport and the peer's identity; LocalProtocolError before completion."""
        if self._result is None:
            raise LocalProtocolError("the Noise handshake is not complete")
        return self._result
