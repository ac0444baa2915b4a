"""Noise ChaChaPoly cipher states and libp2p's 2-byte frame codec. Sans-IO.

A :class:`CipherState` is the Noise Protocol Framework's (rev 34, section 5.1):
a 32-byte key and a 64-bit nonce, ChaCha20-Poly1305 with the nonce as 32 zero
bits followed by the little-endian counter. Nonce 2**64-1 is reserved, so a
state encrypts or decrypts at most 2**64-1 messages and then refuses.
:class:`SymmetricState` (section 5.2) adds the chaining key and handshake hash
(SHA-256, HMAC-based HKDF) that the handshake mixes its DH results into.

libp2p frames every Noise message as ``u16 big-endian length || message``
(libp2p/specs noise/README.md, "Wire Format"), so a message is at most 65535
bytes and a transport message carries at most 65519 bytes of plaintext.
:class:`FrameReader` splits a byte stream into frames; :class:`NoiseTransport`
is the pair of cipher states a finished handshake yields, turning plaintext
into framed ciphertext and framed ciphertext back into plaintext.

Nothing here reads a clock or a socket; the driver (``stream.py``) moves bytes.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ...errors import DecodeError, LocalProtocolError, RemoteProtocolError

__all__ = [
    "HASH_BYTES",
    "KEY_BYTES",
    "LENGTH_PREFIX_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_NONCE",
    "MAX_PLAINTEXT_BYTES",
    "TAG_BYTES",
    "Buffer",
    "CipherState",
    "FrameReader",
    "NoiseTransport",
    "SymmetricState",
    "byte_view",
    "encode_frame",
]

KEY_BYTES = 32
HASH_BYTES = 32
TAG_BYTES = 16
LENGTH_PREFIX_BYTES = 2
MAX_FRAME_BYTES = 65535
"""Largest Noise message (the 2-byte length prefix's range, and Noise's own limit)."""
MAX_PLAINTEXT_BYTES = MAX_FRAME_BYTES - TAG_BYTES
"""Most plaintext one transport message carries (65519)."""
MAX_NONCE = 2**64 - 1
"""Reserved nonce: a cipher state that reaches it refuses to go on."""

_NONCE = struct.Struct("<4xQ")
_LENGTH = struct.Struct(">H")

Buffer = bytes | bytearray | memoryview


class CipherState:
    """One direction of Noise encryption: a key (or none yet) and a nonce counter.

    Without a key, encryption and decryption return their input (Noise's rule
    for handshake payloads sent before any DH). ``nonce`` may be set for tests
    of nonce exhaustion.
    """

    __slots__ = ("_aead", "_nonce")

    def __init__(self, key: bytes | None = None, *, nonce: int = 0) -> None:
        if key is not None and len(key) != KEY_BYTES:
            raise LocalProtocolError(f"a Noise cipher key is {KEY_BYTES} bytes, not {len(key)}")
        if not 0 <= nonce <= MAX_NONCE:
            raise LocalProtocolError(f"nonce {nonce} is outside 0..2**64-1")
        self._aead = None if key is None else ChaCha20Poly1305(key)
        self._nonce = nonce

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    @property
    def nonce(self) -> int:
        """The nonce the next message will use."""
        return self._nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: Buffer) -> bytes:
        """Encrypt one message; LocalProtocolError once the nonces are used up."""
        aead = self._aead
        if aead is None:
            return bytes(plaintext)
        nonce = self._nonce
        if nonce >= MAX_NONCE:
            raise LocalProtocolError(
                "Noise send nonce exhausted (2**64-1 messages); open a new connection"
            )
        self._nonce = nonce + 1
        return aead.encrypt(_NONCE.pack(nonce), plaintext, ad)

    def encrypt_into(self, plaintext: Buffer, out: memoryview) -> None:
        """Encrypt one transport message (empty AD) into ``out`` (plaintext + 16 bytes)."""
        aead = self._aead
        if aead is None:
            raise LocalProtocolError("this cipher state has no key yet")
        nonce = self._nonce
        if nonce >= MAX_NONCE:
            raise LocalProtocolError(
                "Noise send nonce exhausted (2**64-1 messages); open a new connection"
            )
        self._nonce = nonce + 1
        aead.encrypt_into(_NONCE.pack(nonce), plaintext, None, out)

    def decrypt_with_ad(self, ad: bytes, ciphertext: Buffer) -> bytes:
        """Decrypt one message; RemoteProtocolError if it does not authenticate.

        The nonce advances only on success (Noise section 5.1).
        """
        aead = self._aead
        if aead is None:
            return bytes(ciphertext)
        nonce = self._nonce
        if nonce >= MAX_NONCE:
            raise RemoteProtocolError(
                "the peer sent more than 2**64-2 Noise messages (receive nonce exhausted)"
            )
        if len(ciphertext) < TAG_BYTES:
            raise DecodeError(
                f"Noise message of {len(ciphertext)} bytes is shorter than its "
                f"{TAG_BYTES}-byte authentication tag"
            )
        try:
            plaintext = aead.decrypt(_NONCE.pack(nonce), ciphertext, ad)
        except InvalidTag:
            raise RemoteProtocolError(
                "a Noise message failed authentication (corrupted, reordered or forged); "
                "the connection cannot be used any more"
            ) from None
        self._nonce = nonce + 1
        return plaintext


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def _hmac_sha256(key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def _hkdf2(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """Noise's HKDF with two outputs (section 4.3)."""
    temp_key = _hmac_sha256(chaining_key, input_key_material)
    first = _hmac_sha256(temp_key, b"\x01")
    return first, _hmac_sha256(temp_key, first + b"\x02")


class SymmetricState:
    """Noise's SymmetricState: chaining key, handshake hash, and a cipher state."""

    __slots__ = ("_chaining_key", "_cipher", "_hash")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_BYTES:
            initial = protocol_name.ljust(HASH_BYTES, b"\x00")
        else:
            initial = _sha256(protocol_name)
        self._hash = initial
        self._chaining_key = initial
        self._cipher = CipherState()

    @property
    def handshake_hash(self) -> bytes:
        return self._hash

    @property
    def has_key(self) -> bool:
        return self._cipher.has_key

    def mix_key(self, input_key_material: bytes) -> None:
        self._chaining_key, key = _hkdf2(self._chaining_key, input_key_material)
        self._cipher = CipherState(key)

    def mix_hash(self, data: Buffer) -> None:
        self._hash = _sha256(self._hash + bytes(data))

    def encrypt_and_hash(self, plaintext: Buffer) -> bytes:
        ciphertext = self._cipher.encrypt_with_ad(self._hash, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: Buffer) -> bytes:
        """RemoteProtocolError (or DecodeError) if ``ciphertext`` does not authenticate."""
        plaintext = self._cipher.decrypt_with_ad(self._hash, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        first, second = _hkdf2(self._chaining_key, b"")
        return CipherState(first), CipherState(second)


def byte_view(data: Buffer) -> memoryview:
    """A flat memoryview of unsigned bytes over ``data`` (no copy)."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def encode_frame(message: Buffer) -> bytes:
    """``u16 length || message``; LocalProtocolError above 65535 bytes."""
    if len(message) > MAX_FRAME_BYTES:
        raise LocalProtocolError(
            f"Noise message of {len(message)} bytes exceeds the {MAX_FRAME_BYTES}-byte frame limit"
        )
    return _LENGTH.pack(len(message)) + bytes(message)


class FrameReader:
    """Split a byte stream into libp2p Noise frames.

    :meth:`split` returns every frame completed by the bytes fed so far; an
    incomplete frame waits (copied, so at most 65537 bytes) for the next
    call. Frames are returned as memoryviews, those wholly inside ``data``
    without copying: use them before changing ``data``.
    """

    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial = bytearray()

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._partial)

    def split(self, data: Buffer) -> list[memoryview]:
        view = byte_view(data)
        frames: list[memoryview] = []
        pos = 0
        end = len(view)
        partial = self._partial
        if partial:
            if len(partial) < LENGTH_PREFIX_BYTES:
                take = min(LENGTH_PREFIX_BYTES - len(partial), end)
                partial += view[:take]
                pos = take
                if len(partial) < LENGTH_PREFIX_BYTES:
                    return frames
            size = LENGTH_PREFIX_BYTES + _LENGTH.unpack_from(partial)[0]
            take = min(size - len(partial), end - pos)
            partial += view[pos : pos + take]
            pos += take
            if len(partial) < size:
                return frames
            # A fresh buffer takes over; the old one is never resized, so the view stays valid.
            frames.append(memoryview(partial)[LENGTH_PREFIX_BYTES:])
            self._partial = partial = bytearray()
        while end - pos >= LENGTH_PREFIX_BYTES:
            stop = pos + LENGTH_PREFIX_BYTES + ((view[pos] << 8) | view[pos + 1])
            if stop > end:
                break
            frames.append(view[pos + LENGTH_PREFIX_BYTES : stop])
            pos = stop
        if pos < end:
            partial += view[pos:]
        return frames

    def take_remaining(self) -> bytes:
        """Hand over the bytes of an incomplete frame and forget them."""
        remaining = bytes(self._partial)
        self._partial = bytearray()
        return remaining

    def check_eof(self) -> None:
        """DecodeError if the stream ended inside a frame."""
        if self._partial:
            raise DecodeError(
                f"the connection ended inside a Noise frame ({len(self._partial)} bytes "
                "of an incomplete frame)"
            )


class NoiseTransport:
    """The two cipher states of a finished handshake, with framing.

    :meth:`encrypt` turns any amount of plaintext into frames of at most
    65535 bytes, written back to back into one buffer. :meth:`feed` takes
    received bytes and returns the plaintext of every frame they complete. A
    frame that fails authentication raises RemoteProtocolError, and every
    later call raises it again: the connection is unusable.
    """

    __slots__ = ("_failure", "_reader", "_receiver", "_sender")

    def __init__(self, sender: CipherState, receiver: CipherState) -> None:
        if not (sender.has_key and receiver.has_key):
            raise LocalProtocolError("a Noise transport needs keyed cipher states")
        self._sender = sender
        self._receiver = receiver
        self._reader = FrameReader()
        self._failure: str | None = None

    @property
    def send_nonce(self) -> int:
        return self._sender.nonce

    @property
    def receive_nonce(self) -> int:
        return self._receiver.nonce

    @property
    def buffered_bytes(self) -> int:
        """Received bytes of an incomplete frame, not yet decrypted."""
        return self._reader.buffered_bytes

    def encrypt(self, plaintext: Buffer) -> bytearray:
        """Frames carrying ``plaintext`` (nothing for empty input), in one new buffer."""
        view = byte_view(plaintext)
        size = len(view)
        frames = -(-size // MAX_PLAINTEXT_BYTES)
        out = bytearray(size + frames * (LENGTH_PREFIX_BYTES + TAG_BYTES))
        target = memoryview(out)
        sender = self._sender
        pos = 0
        for start in range(0, size, MAX_PLAINTEXT_BYTES):
            chunk = view[start : start + MAX_PLAINTEXT_BYTES]
            length = len(chunk) + TAG_BYTES
            _LENGTH.pack_into(out, pos, length)
            pos += LENGTH_PREFIX_BYTES
            sender.encrypt_into(chunk, target[pos : pos + length])
            pos += length
        return out

    def encrypt_frame(self, plaintext: Buffer) -> bytes:
        """One frame; LocalProtocolError above 65519 bytes of plaintext."""
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise LocalProtocolError(
                f"{len(plaintext)} bytes do not fit one Noise frame (at most {MAX_PLAINTEXT_BYTES})"
            )
        return encode_frame(self._sender.encrypt_with_ad(b"", plaintext))

    def feed(self, data: Buffer) -> list[bytes]:
        """Plaintext of every frame that ``data`` completes (empty frames give nothing)."""
        if self._failure is not None:
            raise RemoteProtocolError(self._failure)
        receiver = self._receiver
        plaintexts: list[bytes] = []
        try:
            for frame in self._reader.split(data):
                plaintext = receiver.decrypt_with_ad(b"", frame)
                if plaintext:
                    plaintexts.append(plaintext)
        except RemoteProtocolError as exc:
            self._failure = f"Noise transport failed earlier: {exc}"
            raise
        return plaintexts

    def check_eof(self) -> None:
        """DecodeError if the peer's stream ended inside a frame."""
        self._reader.check_eof()
