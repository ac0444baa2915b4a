"""Signed envelopes of Yjs updates, and the room id (sans-IO).

Every Yjs update a member writes travels in an :class:`Envelope` signed by its
author's Ed25519 identity key. A room's state is the set of envelopes it has
accepted: per author, the contiguous sequence numbers ``1..n``
(:class:`~lattica_nb.sync.log.EnvelopeLog`). The pycrdt Doc is a view of that
set. Envelopes are forwarded unchanged, so any member can check any envelope
without trusting the peer that relayed it.

Wire format
-----------

::

    message Envelope {
      bytes  author    = 1;  // the author's peer id: identity multihash of an Ed25519 key
      bytes  room      = 2;  // room id, 32 bytes (room_id(mesh, name))
      bytes  guid      = 3;  // the document's guid, 16 bytes, fixed when the room is created
      uint64 epoch     = 4;  // the document's generation within that guid
      uint64 seq       = 5;  // the author's sequence number, 1 .. 2**63-1, no gaps
      bytes  update    = 6;  // one Yjs update (v1 encoding); opaque here
      bytes  signature = 7;  // Ed25519, 64 bytes
    }

``signature`` is the author's Ed25519 signature over::

    b"lattica-nb-yjs-envelope:" || encoding of fields 1..6

The encoding is canonical and the decoder refuses any other (every field once,
in order, no unknown fields, minimal varints, ``epoch`` 0 written): the signed
bytes are the envelope up to field 7. The author's public key is inside its
peer id, so an envelope verifies on its own. Binding ``guid`` and ``epoch``
into the signature means an envelope can never be replayed into another
document that reuses the room's name, nor into another generation of it.

Room id::

    room_id(mesh, name) = sha256(b"lattica-nb-yjs-room:" || ProtoWriter().string(1, mesh)
                                                             .string(2, name))

The same 32 bytes are the DHT key under which a room's members are found.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from ..errors import DecodeError, LocalProtocolError, VerificationError
from ..identity import KeyType, PeerId, PrivateKey
from ..wire.protobuf import ProtoWriter, parse_fields

__all__ = [
    "DEFAULT_MAX_ENVELOPE_BYTES",
    "GUID_BYTES",
    "MAX_SEQ",
    "ROOM_ID_BYTES",
    "SIGNATURE_DOMAIN",
    "Envelope",
    "check_ids",
    "new_guid",
    "room_id",
]

SIGNATURE_DOMAIN = b"lattica-nb-yjs-envelope:"
"""Prepended to fields 1..6 before signing (domain separation)."""
ROOM_ID_DOMAIN = b"lattica-nb-yjs-room:"
ROOM_ID_BYTES = 32
GUID_BYTES = 16
MAX_SEQ = (1 << 63) - 1
"""Largest ``seq`` and ``epoch`` (our varints carry 63 bits)."""
DEFAULT_MAX_ENVELOPE_BYTES = 1024 * 1024
"""Largest encoded envelope accepted from a peer by default."""
ED25519_SIGNATURE_BYTES = 64
_SIGNATURE_FIELD_BYTES = 2 + ED25519_SIGNATURE_BYTES
"""Field 7 at the end of every encoding: tag 0x3a, length 0x40, the signature."""
_FIELDS = (1, 2, 3, 4, 5, 6, 7)


def room_id(mesh: str, name: str) -> bytes:
    """The 32-byte id of room ``name`` in mesh ``mesh`` (see the module docs)."""
    if not name:
        raise LocalProtocolError("a room needs a non-empty name")
    encoded = ProtoWriter().string(1, mesh).string(2, name).finish()
    return hashlib.sha256(ROOM_ID_DOMAIN + encoded).digest()


def new_guid() -> bytes:
    """A fresh random document guid, for a room being created (never for one being joined)."""
    return secrets.token_bytes(GUID_BYTES)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One signed Yjs update. Build with :meth:`create`; read with :meth:`decode`."""

    author: PeerId
    room: bytes
    seq: int
    update: bytes
    signature: bytes
    guid: bytes = field(kw_only=True)
    epoch: int = field(kw_only=True)
    _encoded: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = self.author.public_key()
        if key is None or key.key_type is not KeyType.ED25519:
            raise LocalProtocolError(f"envelope author {self.author} is not an Ed25519 peer id")
        check_ids(self.room, self.guid, self.epoch, LocalProtocolError)
        if not 1 <= self.seq <= MAX_SEQ:
            raise LocalProtocolError(f"envelope seq {self.seq} is outside 1..2**63-1")
        if len(self.signature) != ED25519_SIGNATURE_BYTES:
            raise LocalProtocolError(f"envelope signature is {len(self.signature)} bytes, not 64")
        unsigned = _unsigned(self.author, self.room, self.guid, self.epoch, self.seq, self.update)
        encoded = unsigned + ProtoWriter().bytes(7, self.signature).finish()
        object.__setattr__(self, "_encoded", encoded)

    @classmethod
    def create(
        cls,
        identity: PrivateKey,
        room: bytes,
        seq: int,
        update: bytes,
        *,
        guid: bytes,
        epoch: int,
    ) -> Envelope:
        """Sign ``update`` as ``identity``'s envelope number ``seq`` in the document."""
        author = PeerId.from_public_key(identity.public_key)
        check_ids(room, guid, epoch, LocalProtocolError)
        if not 1 <= seq <= MAX_SEQ:
            raise LocalProtocolError(f"envelope seq {seq} is outside 1..2**63-1")
        update = bytes(update)
        unsigned = _unsigned(author, room, guid, epoch, seq, update)
        signature = identity.sign(SIGNATURE_DOMAIN + unsigned)
        return cls(author, bytes(room), seq, update, signature, guid=bytes(guid), epoch=epoch)

    @property
    def size(self) -> int:
        """Bytes of the encoding: what the envelope costs on the wire and in memory accounting."""
        return len(self._encoded)

    def encode(self) -> bytes:
        return self._encoded

    @classmethod
    def decode(
        cls, data: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    ) -> Envelope:
        """Read a canonical envelope of at most ``max_bytes``; DecodeError otherwise.

        The signature is *not* checked here: call :meth:`verify` (or offer the
        envelope to an :class:`EnvelopeLog`, which does).
        """
        fields = parse_fields(data, max_bytes=max_bytes)
        for number in _FIELDS:
            if number not in fields:
                raise DecodeError(f"envelope has no field {number}")
        author = PeerId(fields.bytes(1))
        key = author.public_key()
        if key is None or key.key_type is not KeyType.ED25519:
            raise DecodeError(f"envelope author {author} is not an Ed25519 peer id")
        room, guid, epoch = fields.bytes(2), fields.bytes(3), fields.uint(4)
        check_ids(room, guid, epoch, DecodeError)
        seq = fields.uint(5)
        if seq < 1:
            raise DecodeError("envelope seq 0 is invalid; sequence numbers start at 1")
        signature = fields.bytes(7)
        if len(signature) != ED25519_SIGNATURE_BYTES:
            raise DecodeError(f"envelope signature is {len(signature)} bytes, not 64")
        envelope = cls(author, room, seq, fields.bytes(6), signature, guid=guid, epoch=epoch)
        if envelope.encode() != bytes(data):
            raise DecodeError("envelope is not canonically encoded")
        return envelope

    def verify(self) -> None:
        """Check the author's signature; VerificationError if it does not hold."""
        key = self.author.public_key()
        unsigned = self._encoded[:-_SIGNATURE_FIELD_BYTES]
        if key is None or not key.verify(self.signature, SIGNATURE_DOMAIN + unsigned):
            raise VerificationError(
                f"signature on envelope {self.seq} of {self.author} does not verify"
            )

    def __repr__(self) -> str:
        return (
            f"Envelope({self.author.short()} #{self.seq}, room {self.room.hex()[:8]}, "
            f"guid {self.guid.hex()[:8]}, epoch {self.epoch}, {len(self.update)}-byte update)"
        )

    def same_content(self, other: Envelope) -> bool:
        """Equal in everything the author signed (the signature bytes may differ)."""
        return self._encoded[:-_SIGNATURE_FIELD_BYTES] == other._encoded[:-_SIGNATURE_FIELD_BYTES]


def _unsigned(
    author: PeerId, room: bytes, guid: bytes, epoch: int, seq: int, update: bytes
) -> bytes:
    return (
        ProtoWriter()
        .bytes(1, author.to_bytes())
        .bytes(2, room)
        .bytes(3, guid)
        .uint(4, epoch)
        .uint(5, seq)
        .bytes(6, update)
        .finish()
    )


def check_ids(
    room: bytes, guid: bytes, epoch: int, error: type[LocalProtocolError | DecodeError]
) -> None:
    """Raise ``error`` unless room id, guid and epoch have their sizes and range."""
    if len(room) != ROOM_ID_BYTES:
        raise error(f"room id is {len(room)} bytes, not {ROOM_ID_BYTES}")
    if len(guid) != GUID_BYTES:
        raise error(f"document guid is {len(guid)} bytes, not {GUID_BYTES}")
    if not 0 <= epoch <= MAX_SEQ:
        raise error(f"document epoch {epoch} is outside 0..2**63-1")
