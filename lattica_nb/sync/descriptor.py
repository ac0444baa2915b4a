"""A room's identity card, signed by its owner (sans-IO).

A :class:`RoomDescriptor` names one document: the room id, the document's
guid and epoch, the owner, and whether the room is closed. The owner signs
it when the room is created (and when it moves the document to a new
epoch); every HELLO carries it, so a peer joining by name learns the guid,
the owner (who alone writes ``params`` and member lists) and the kind of
room from any member, and can check that the owner vouched for them.

A joiner that knows nothing but the room's name trusts the first valid
descriptor it is shown (trust on first use); pass the owner's peer id when
joining to pin it (:meth:`RoomDescriptor.check_owner`).

Wire format (canonical protobuf; the decoder refuses any other)::

    message RoomDescriptor {
      bytes  owner  = 1;  // owner peer id (identity multihash of an Ed25519 key)
      bytes  room   = 2;  // room id, 32 bytes
      bytes  guid   = 3;  // document guid, 16 bytes
      uint64 epoch  = 4;  // written even when 0
      uint64 closed = 5;  // 1: a closed room (an owner-signed member list decides), 0: open
      bytes  signature = 6;  // Ed25519 by the owner over b"lattica-nb-room:" || fields 1..5
    }
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DecodeError, LocalProtocolError, VerificationError
from ..identity import KeyType, PeerId, PrivateKey
from ..wire.protobuf import ProtoWriter, parse_fields
from .envelope import check_ids

__all__ = ["MAX_DESCRIPTOR_BYTES", "SIGNATURE_DOMAIN", "RoomDescriptor"]

SIGNATURE_DOMAIN = b"lattica-nb-room:"
MAX_DESCRIPTOR_BYTES = 1024
_SIGNATURE_BYTES = 64


@dataclass(frozen=True, slots=True)
class RoomDescriptor:
    """Owner, room id, guid, epoch and kind of one room's document; see the module docs."""

    owner: PeerId
    room: bytes
    guid: bytes
    epoch: int
    closed: bool
    signature: bytes

    def __post_init__(self) -> None:
        key = self.owner.public_key()
        if key is None or key.key_type is not KeyType.ED25519:
            raise LocalProtocolError(f"room owner {self.owner} is not an Ed25519 peer id")
        check_ids(self.room, self.guid, self.epoch, LocalProtocolError)

    @classmethod
    def create(
        cls, identity: PrivateKey, room: bytes, guid: bytes, *, epoch: int = 0, closed: bool
    ) -> RoomDescriptor:
        """Sign a descriptor as the room's owner (``identity``)."""
        owner = PeerId.from_public_key(identity.public_key)
        unsigned = cls(owner, bytes(room), bytes(guid), epoch, closed, b"")
        signature = identity.sign(SIGNATURE_DOMAIN + unsigned._unsigned())
        return cls(owner, bytes(room), bytes(guid), epoch, closed, signature)

    def _unsigned(self) -> bytes:
        return (
            ProtoWriter()
            .bytes(1, self.owner.to_bytes())
            .bytes(2, self.room)
            .bytes(3, self.guid)
            .uint(4, self.epoch)
            .uint(5, int(self.closed))
            .finish()
        )

    def encode(self) -> bytes:
        return self._unsigned() + ProtoWriter().bytes(6, self.signature).finish()

    @classmethod
    def decode(cls, data: bytes, *, max_bytes: int = MAX_DESCRIPTOR_BYTES) -> RoomDescriptor:
        """Read a canonical descriptor; DecodeError otherwise. The signature is not checked."""
        fields = parse_fields(data, max_bytes=max_bytes)
        for number in range(1, 7):
            if number not in fields:
                raise DecodeError(f"room descriptor has no field {number}")
        owner = PeerId(fields.bytes(1))
        key = owner.public_key()
        if key is None or key.key_type is not KeyType.ED25519:
            raise DecodeError(f"room owner {owner} is not an Ed25519 peer id")
        room, guid, epoch = fields.bytes(2), fields.bytes(3), fields.uint(4)
        check_ids(room, guid, epoch, DecodeError)
        closed = fields.uint(5)
        if closed > 1:
            raise DecodeError(f"room descriptor 'closed' is {closed}, not 0 or 1")
        signature = fields.bytes(6)
        if len(signature) != _SIGNATURE_BYTES:
            raise DecodeError(f"room descriptor signature is {len(signature)} bytes, not 64")
        descriptor = cls(owner, room, guid, epoch, bool(closed), signature)
        if descriptor.encode() != bytes(data):
            raise DecodeError("room descriptor is not canonically encoded")
        return descriptor

    def verify(self) -> None:
        """Check the owner's signature; VerificationError if it does not hold."""
        key = self.owner.public_key()
        if key is None or not key.verify(self.signature, SIGNATURE_DOMAIN + self._unsigned()):
            raise VerificationError(
                f"room descriptor of {self.room.hex()[:16]}… does not verify for owner {self.owner}"
            )

    def check_owner(self, owner: PeerId | None) -> None:
        """VerificationError if a pinned ``owner`` is not this descriptor's (None: no pin)."""
        if owner is not None and owner != self.owner:
            raise VerificationError(
                f"room {self.room.hex()[:16]}… is owned by {self.owner}, not by the pinned "
                f"owner {owner}; this is another room under the same name"
            )
