"""Who may write to a room: open rooms, owner-signed member lists (sans-IO).

A room is *open* (any peer may write) or *closed* (only the owner and the
peers on the owner-signed :class:`MemberList`; the owner issues newer versions
to change it). :class:`RoomPolicy` holds a room's membership and its write
rules (:mod:`.rules`) and judges every update before it is applied.

Member list wire format (canonical protobuf; a decoder refuses any other)::

    message MemberList {
      bytes  owner   = 1;          // owner peer id (identity multihash of an Ed25519 key)
      bytes  room    = 2;          // the room id, 32 bytes
      repeated bytes members = 3;  // peer ids, strictly ascending bytes, owner not listed
      uint64 version = 4;          // a higher version replaces a lower one
      bytes  signature = 5;        // Ed25519 by the owner, 64 bytes
    }

``signature`` signs ``b"lattica-nb-member-list:" || fields 1..4``: every field
present once (``members`` may be empty) in field order, no unknown fields,
minimal varints, so two lists are equal iff their bytes are.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pycrdt import Doc

from ..errors import DecodeError, LocalProtocolError, PermissionDenied, VerificationError
from ..identity import KeyType, PeerId, PrivateKey, PublicKey
from ..wire.protobuf import ProtoWriter, parse_fields
from .rules import DEFAULT_RULES, Inspector, WriteRule, author_key

__all__ = [
    "DEFAULT_RULES",
    "MAX_MEMBERS",
    "MAX_MEMBER_LIST_BYTES",
    "SIGNATURE_DOMAIN",
    "MemberList",
    "RoomPolicy",
    "WriteRule",
    "author_key",
]

SIGNATURE_DOMAIN = b"lattica-nb-member-list:"
"""Prepended to fields 1..4 before signing (domain separation)."""
MAX_MEMBERS = 1024
"""Most peers on one member list, the owner not counted."""
MAX_MEMBER_LIST_BYTES = 64 * 1024
"""A bound for :meth:`MemberList.decode` that fits MAX_MEMBERS Ed25519 peer ids."""
ROOM_ID_BYTES = 32
MAX_VERSION = (1 << 63) - 1
_ED25519_SIGNATURE_BYTES = 64


@dataclass(frozen=True, slots=True)
class MemberList:
    """The owner-signed list of the peers that may write to a closed room.

    The owner is always a member and is not listed in ``members``.
    """

    owner: PeerId
    room: bytes
    members: frozenset[PeerId]
    version: int
    signature: bytes

    def __post_init__(self) -> None:
        _owner_key(self.owner, LocalProtocolError)
        if len(self.room) != ROOM_ID_BYTES:
            raise LocalProtocolError(f"room id must be {ROOM_ID_BYTES} bytes, got {len(self.room)}")
        if self.owner in self.members:
            raise LocalProtocolError("the owner is a member already and is not listed")
        if len(self.members) > MAX_MEMBERS:
            raise LocalProtocolError(f"{len(self.members)} members exceed the limit {MAX_MEMBERS}")
        if not 0 <= self.version <= MAX_VERSION:
            raise LocalProtocolError(f"member list version {self.version} is outside 0..2**63-1")

    @classmethod
    def create(
        cls, identity: PrivateKey, room: bytes, members: Iterable[PeerId], *, version: int
    ) -> MemberList:
        """Sign a member list for ``room`` as its owner (``identity``)."""
        owner = PeerId.from_public_key(identity.public_key)
        listed = frozenset(members) - {owner}
        unsigned = cls(owner, bytes(room), listed, version, b"")
        signature = identity.sign(SIGNATURE_DOMAIN + unsigned._unsigned_encoding())
        return cls(owner, bytes(room), listed, version, signature)

    def __contains__(self, peer: object) -> bool:
        return peer == self.owner or peer in self.members

    def _unsigned_encoding(self) -> bytes:
        return (
            ProtoWriter()
            .bytes(1, self.owner.to_bytes())
            .bytes(2, self.room)
            .repeated_bytes(3, sorted(m.to_bytes() for m in self.members))
            .uint(4, self.version)
            .finish()
        )

    def encode(self) -> bytes:
        return self._unsigned_encoding() + ProtoWriter().bytes(5, self.signature).finish()

    @classmethod
    def decode(cls, data: bytes, *, max_bytes: int) -> MemberList:
        """Read a canonical member list of at most ``max_bytes``; DecodeError otherwise.

        The signature is *not* checked here: call :meth:`verify`.
        """
        fields = parse_fields(data, max_bytes=max_bytes)
        for field in (1, 2, 4, 5):
            if field not in fields:
                raise DecodeError(f"member list has no field {field}")
        owner = PeerId(fields.bytes(1))
        _owner_key(owner, DecodeError)
        room = fields.bytes(2)
        if len(room) != ROOM_ID_BYTES:
            raise DecodeError(f"member list room id is {len(room)} bytes, not {ROOM_ID_BYTES}")
        raw_members = fields.all_bytes(3)
        if len(raw_members) > MAX_MEMBERS:
            raise DecodeError(f"member list of {len(raw_members)} exceeds {MAX_MEMBERS} members")
        if any(a >= b for a, b in itertools.pairwise(raw_members)):
            raise DecodeError("member list members are not in strictly ascending order")
        members = frozenset(PeerId(m) for m in raw_members)
        if owner in members:
            raise DecodeError("member list lists its owner as a member")
        signature = fields.bytes(5)
        if len(signature) != _ED25519_SIGNATURE_BYTES:
            raise DecodeError(f"member list signature is {len(signature)} bytes, not 64")
        version = fields.uint(4)
        if version > MAX_VERSION:
            raise DecodeError(f"member list version {version} is out of range")
        member_list = cls(owner, room, members, version, signature)
        if member_list.encode() != bytes(data):
            raise DecodeError("member list is not canonically encoded")
        return member_list

    def verify(self) -> None:
        """Check the owner's signature; VerificationError if it does not hold."""
        key = _owner_key(self.owner, VerificationError)
        if not key.verify(self.signature, SIGNATURE_DOMAIN + self._unsigned_encoding()):
            raise VerificationError(
                f"signature on member list version {self.version} of room "
                f"{self.room.hex()[:16]}… does not verify for owner {self.owner}"
            )


def _owner_key(owner: PeerId, error: type[Exception]) -> PublicKey:
    try:
        key = owner.public_key()
    except DecodeError:
        key = None
    if key is None or key.key_type is not KeyType.ED25519:
        raise error(f"room owner {owner} is not an Ed25519 peer id (its key must be inline)")
    return key


class RoomPolicy:
    """A room's membership and write rules; judges updates before they are applied."""

    def __init__(
        self,
        room: bytes,
        owner: PeerId,
        *,
        member_list: MemberList | None = None,
        rules: Mapping[str, WriteRule] = DEFAULT_RULES,
    ) -> None:
        """An open room if ``member_list`` is None, else a closed one (the list is verified)."""
        if len(room) != ROOM_ID_BYTES:
            raise LocalProtocolError(f"room id must be {ROOM_ID_BYTES} bytes, got {len(room)}")
        self._room = bytes(room)
        self._owner = owner
        self._member_list: MemberList | None = None
        if member_list is not None:
            self._check_list(member_list)
            self._member_list = member_list
        self._rules = MappingProxyType(dict(rules))
        self._inspector = Inspector(owner, self._rules)

    @classmethod
    def open(
        cls, room: bytes, owner: PeerId, *, rules: Mapping[str, WriteRule] = DEFAULT_RULES
    ) -> RoomPolicy:
        """A room any peer may write to, under ``rules``."""
        return cls(room, owner, rules=rules)

    @classmethod
    def closed(
        cls,
        room: bytes,
        owner: PeerId,
        member_list: MemberList,
        *,
        rules: Mapping[str, WriteRule] = DEFAULT_RULES,
    ) -> RoomPolicy:
        """A room only ``owner`` and the peers on ``member_list`` may write to.

        ``owner`` comes from what the caller trusts about the room (not from
        the list); VerificationError unless ``owner`` signed the list for ``room``.
        """
        return cls(room, owner, member_list=member_list, rules=rules)

    @property
    def room(self) -> bytes:
        return self._room

    @property
    def owner(self) -> PeerId:
        return self._owner

    @property
    def is_open(self) -> bool:
        return self._member_list is None

    @property
    def member_list(self) -> MemberList | None:
        return self._member_list

    @property
    def rules(self) -> Mapping[str, WriteRule]:
        return self._rules

    def is_member(self, peer: PeerId) -> bool:
        return self._member_list is None or peer in self._member_list

    def update_members(self, member_list: MemberList) -> bool:
        """Adopt a newer member list: True if adopted, False if it is the current one.

        VerificationError if it is not the owner's, not for this room, does
        not verify, is older than the current one, or differs from it under
        the same version.
        """
        current = self._member_list
        if current is None:
            raise LocalProtocolError("an open room has no member list to update")
        self._check_list(member_list)
        if member_list.version == current.version:
            if member_list.encode() == current.encode():
                return False
            raise VerificationError(
                f"owner {self._owner} signed two different member lists with version "
                f"{current.version}"
            )
        if member_list.version < current.version:
            raise VerificationError(
                f"member list version {member_list.version} is older than the current "
                f"version {current.version}"
            )
        self._member_list = member_list
        return True

    def _check_list(self, member_list: MemberList) -> None:
        if member_list.room != self._room:
            raise VerificationError(
                f"member list is for room {member_list.room.hex()[:16]}…, "
                f"not {self._room.hex()[:16]}…"
            )
        if member_list.owner != self._owner:
            raise VerificationError(
                f"member list is signed by {member_list.owner}, not the room owner {self._owner}"
            )
        member_list.verify()

    def check(self, author: PeerId, update: bytes, doc: Doc[Any]) -> None:
        """Judge ``author``'s ``update`` against the room's document ``doc``.

        Returns if it may be applied. Raises PermissionDenied (naming the entry
        and the rule) if it breaks a rule, DecodeError if it is not a Yjs v1
        update, MissingDependencies if it builds on changes ``doc`` lacks.
        ``doc`` itself is not changed.
        """
        if not self.is_member(author):
            raise PermissionDenied(
                f"{author} is not a member of this closed room", entry=None, rule="members only"
            )
        self._inspector.check(author, update, doc)
