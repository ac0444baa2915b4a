"""Messages of ``/lattica-nb/yjs/1.0.0``, the room sync protocol (sans-IO codec).

Modelled on y-protocols' sync step1/step2/update, but over signed envelopes
(:mod:`lattica_nb.sync.envelope`) instead of raw Yjs state: a step1 carries an
*envelope vector* (author -> highest contiguous seq) and a step2 answers with
exactly the envelopes the asker lacks. One stream per (room, peer); both sides
send HELLO first. :class:`~lattica_nb.sync.session.PeerSession` runs the exchange.

Wire format
-----------

Every message is ``uvarint(len(body)) || body`` where ``body`` is::

    message YjsMessage {
      oneof body {                       // exactly one is present
        Hello     hello     = 1;
        SyncStep1 step1     = 2;
        SyncStep2 step2     = 3;
        Update    update    = 4;
        Awareness awareness = 5;
        Ack       ack       = 6;
        Goodbye   goodbye   = 7;
        Members   members   = 8;
      }
    }
    message Hello {
      bytes  room  = 1;  // room id, 32 bytes
      bytes  guid  = 2;  // document guid, 16 bytes; absent: the sender is joining and has none
      uint64 epoch = 3;  // document epoch (0 when guid is absent)
      uint64 flags = 4;  // HelloFlags bits; unknown bits are kept and ignored
      bytes  descriptor = 5;  // owner-signed RoomDescriptor (descriptor.py); absent if joining
      bytes  members    = 6;  // the owner-signed MemberList of a closed room (membership.py)
    }
    message VectorEntry { bytes author = 1; uint64 seq = 2; }  // peer id; seq >= 1
    message SyncStep1 { repeated VectorEntry vector = 1; }     // each author once
    message SyncStep2 { repeated bytes envelopes = 1; bool final = 2; }
    message Update    { bytes envelope = 1; }
    message Awareness { bytes payload = 1; }  // y-protocols awareness update, opaque
    message Ack       { repeated VectorEntry vector = 1; }     // merged by maximum
    message Goodbye   { uint32 reason = 1; string message = 2; }
    message Members   { bytes member_list = 1; }  // a newer owner-signed MemberList

An envelope inside ``SyncStep2``/``Update`` is an encoded ``Envelope``. A
step2 answer is split into messages within the limits; the last one has
``final = true``. Unknown fields inside a message are ignored; an unknown
message kind is an error. Decoding is bounded by :class:`ProtocolLimits` and
raises :class:`~lattica_nb.errors.DecodeError` for anything malformed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from ..errors import ConfigError, DecodeError, LocalProtocolError
from ..identity import PeerId
from ..wire.protobuf import Fields, ProtoWriter, parse_fields
from ..wire.varint import encode_uvarint
from .envelope import DEFAULT_MAX_ENVELOPE_BYTES, GUID_BYTES, MAX_SEQ, ROOM_ID_BYTES, Envelope

__all__ = [
    "PROTOCOL_ID",
    "Ack",
    "Awareness",
    "Goodbye",
    "GoodbyeReason",
    "Hello",
    "HelloFlags",
    "Members",
    "Message",
    "ProtocolLimits",
    "SyncStep1",
    "SyncStep2",
    "Update",
    "decode_message",
    "encode_message",
    "frame_message",
]

PROTOCOL_ID = "/lattica-nb/yjs/1.0.0"

_HELLO, _STEP1, _STEP2, _UPDATE, _AWARENESS, _ACK, _GOODBYE, _MEMBERS = range(1, 9)
_STEP2_FIXED_OVERHEAD_BYTES = 7
"""Outer tag and length (<= 5 bytes) and ``final`` (2 bytes)."""
_STEP2_PER_ENVELOPE_BYTES = 5
"""Tag and length (<= 4 bytes for < 256 MiB) around each envelope."""


class HelloFlags(enum.IntFlag, boundary=enum.KEEP):
    """What a peer tells about itself in its HELLO."""

    NONE = 0
    READ_ONLY = 1
    """The sender will not author envelopes in this room (an observer)."""


class GoodbyeReason(enum.IntEnum):
    """Why a session ends. A code this version does not know reads as OTHER."""

    NORMAL = 0
    """Leaving the room, or shutting down."""
    UNKNOWN_ROOM = 1
    """The receiver does not serve the room named in the HELLO."""
    GUID_MISMATCH = 2
    """A different document under the same room id: never merged."""
    EPOCH_MISMATCH = 3
    """Another generation of the same document: never merged."""
    NO_DOCUMENT = 4
    """Neither side has the document yet (both are joining)."""
    NOT_A_MEMBER = 5
    """The room refuses this peer (closed room)."""
    PROTOCOL_ERROR = 6
    """The peer sent something malformed or out of order."""
    OTHER = 7


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """Bounds applied while decoding a peer's messages (and batching our answers).

    ``max_message_bytes``: one message body. ``max_envelope_bytes``: one
    envelope (a larger local update cannot be sent at all).
    ``max_vector_authors``: entries in a step1 or ack vector, so also the most
    authors a room can have. ``max_envelopes_per_step2``: envelopes in one
    step2 message. ``max_awareness_bytes`` and ``max_reason_bytes``: an
    awareness payload and a goodbye message.
    """

    max_message_bytes: int = 4 * 1024 * 1024
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    max_vector_authors: int = 4096
    max_envelopes_per_step2: int = 1024
    max_awareness_bytes: int = 64 * 1024
    max_reason_bytes: int = 1024
    max_descriptor_bytes: int = 64 * 1024
    """A room descriptor or member list carried in a HELLO or MEMBERS message."""

    def __post_init__(self) -> None:
        for name in (
            "max_message_bytes",
            "max_envelope_bytes",
            "max_vector_authors",
            "max_envelopes_per_step2",
            "max_awareness_bytes",
            "max_reason_bytes",
            "max_descriptor_bytes",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(
                    f"ProtocolLimits.{name} must be a positive integer, got {value!r}"
                )
        if self.max_message_bytes >= 1 << 28:
            raise ConfigError("ProtocolLimits.max_message_bytes must be under 256 MiB")
        if self.max_envelope_bytes > self.step2_budget_bytes:
            raise ConfigError(
                f"ProtocolLimits.max_envelope_bytes ({self.max_envelope_bytes}) must fit in one "
                f"step2 message ({self.step2_budget_bytes} bytes of envelopes with these limits)"
            )

    @property
    def step2_budget_bytes(self) -> int:
        """Encoded envelope bytes one step2 message may carry within ``max_message_bytes``."""
        overhead = (
            _STEP2_FIXED_OVERHEAD_BYTES + _STEP2_PER_ENVELOPE_BYTES * self.max_envelopes_per_step2
        )
        return self.max_message_bytes - overhead


# -- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """The first message each way: which room and document the sender holds."""

    room: bytes
    guid: bytes | None
    """None: the sender is joining and has no document yet (and so no envelopes)."""
    epoch: int = 0
    flags: HelloFlags = HelloFlags.NONE
    descriptor: bytes = b""
    """The encoded owner-signed room descriptor (empty while joining); checked by the room."""
    members: bytes = b""
    """The encoded owner-signed member list of a closed room (empty for an open one)."""

    def __post_init__(self) -> None:
        if len(self.room) != ROOM_ID_BYTES:
            raise LocalProtocolError(f"room id is {len(self.room)} bytes, not {ROOM_ID_BYTES}")
        if self.guid is not None and len(self.guid) != GUID_BYTES:
            raise LocalProtocolError(f"document guid is {len(self.guid)} bytes, not {GUID_BYTES}")
        if not 0 <= self.epoch <= MAX_SEQ or (self.guid is None and self.epoch):
            raise LocalProtocolError(f"epoch {self.epoch} is invalid for guid {self.guid!r}")
        if not 0 <= self.flags <= MAX_SEQ:
            raise LocalProtocolError(f"hello flags {int(self.flags)} are out of range")


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """The sender's envelope vector: send me what I lack."""

    vector: Mapping[PeerId, int]

    def __post_init__(self) -> None:
        _check_vector(self.vector)


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """Envelopes answering a step1, per author in seq order; ``final`` on the last batch."""

    envelopes: tuple[Envelope, ...]
    final: bool = True


@dataclass(frozen=True, slots=True)
class Update:
    """One envelope, new to the sender or forwarded unchanged."""

    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Awareness:
    """A y-protocols awareness update (cursor, presence), opaque here and never stored."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """Seqs the sender has accepted; entries merge by maximum, so an ack may carry only changes."""

    vector: Mapping[PeerId, int]

    def __post_init__(self) -> None:
        _check_vector(self.vector)


@dataclass(frozen=True, slots=True)
class Members:
    """A member list the owner signed (encoded), sent when it changes; checked by the room."""

    member_list: bytes


@dataclass(frozen=True, slots=True)
class Goodbye:
    """The sender ends the session; ``message`` says why, for a person to read."""

    reason: GoodbyeReason
    message: str = ""


Message: TypeAlias = (
    Hello | SyncStep1 | SyncStep2 | Update | Awareness | Ack | Goodbye | Members
)


def _check_vector(vector: Mapping[PeerId, int]) -> None:
    for author, seq in vector.items():
        if not isinstance(author, PeerId) or not 1 <= seq <= MAX_SEQ:
            raise LocalProtocolError(f"vector entry {author!r}: {seq!r} is invalid (seq >= 1)")


# -- encoding ---------------------------------------------------------------------------------


def encode_message(message: Message) -> bytes:
    """The protobuf body of ``message`` (no length prefix)."""
    inner = ProtoWriter()
    if isinstance(message, Hello):
        kind = _HELLO
        inner.bytes(1, message.room)
        if message.guid is not None:
            inner.bytes(2, message.guid)
        inner.uint(3, message.epoch)
        if message.flags:
            inner.uint(4, int(message.flags))
        if message.descriptor:
            inner.bytes(5, message.descriptor)
        if message.members:
            inner.bytes(6, message.members)
    elif isinstance(message, SyncStep1 | Ack):
        kind = _STEP1 if isinstance(message, SyncStep1) else _ACK
        for author, seq in sorted(message.vector.items()):
            inner.bytes(1, ProtoWriter().bytes(1, author.to_bytes()).uint(2, seq).finish())
    elif isinstance(message, SyncStep2):
        kind = _STEP2
        inner.repeated_bytes(1, (envelope.encode() for envelope in message.envelopes))
        if message.final:
            inner.uint(2, 1)
    elif isinstance(message, Update):
        kind = _UPDATE
        inner.bytes(1, message.envelope.encode())
    elif isinstance(message, Awareness):
        kind = _AWARENESS
        inner.bytes(1, message.payload)
    elif isinstance(message, Members):
        kind = _MEMBERS
        inner.bytes(1, message.member_list)
    else:
        kind = _GOODBYE
        inner.uint(1, int(message.reason))
        if message.message:
            inner.string(2, message.message)
    return ProtoWriter().bytes(kind, inner.finish()).finish()


def frame_message(message: Message) -> bytes:
    """``uvarint(len(body)) || body``: one message as it goes on the stream."""
    body = encode_message(message)
    return encode_uvarint(len(body)) + body


# -- decoding ---------------------------------------------------------------------------------


def decode_message(
    data: bytes | bytearray | memoryview, limits: ProtocolLimits = ProtocolLimits()
) -> Message:
    """Decode one message body (no length prefix); DecodeError on anything malformed."""
    outer = parse_fields(data, max_bytes=limits.max_message_bytes)
    kinds = [kind for kind in range(_HELLO, _MEMBERS + 1) if kind in outer]
    if len(kinds) != 1:
        raise DecodeError(f"a yjs message must hold exactly one known kind, found {len(kinds)}")
    kind = kinds[0]
    fields = parse_fields(outer.bytes(kind), max_bytes=limits.max_message_bytes)
    if kind == _HELLO:
        return _decode_hello(fields, limits)
    if kind in (_STEP1, _ACK):
        vector = _decode_vector(fields, limits)
        return SyncStep1(vector) if kind == _STEP1 else Ack(vector)
    if kind == _STEP2:
        raw = fields.all_bytes(1)
        if len(raw) > limits.max_envelopes_per_step2:
            raise DecodeError(
                f"step2 carries {len(raw)} envelopes, more than {limits.max_envelopes_per_step2}"
            )
        envelopes = tuple(Envelope.decode(e, max_bytes=limits.max_envelope_bytes) for e in raw)
        return SyncStep2(envelopes, final=bool(fields.uint_or_none(2)))
    if kind == _UPDATE:
        return Update(Envelope.decode(fields.bytes(1), max_bytes=limits.max_envelope_bytes))
    if kind == _AWARENESS:
        payload = fields.bytes_or_none(1) or b""
        if len(payload) > limits.max_awareness_bytes:
            raise DecodeError(
                f"awareness payload of {len(payload)} bytes exceeds {limits.max_awareness_bytes}"
            )
        return Awareness(payload)
    if kind == _MEMBERS:
        return Members(_bounded(fields.bytes(1), "member list", limits))
    return _decode_goodbye(fields, limits)


def _bounded(data: bytes, what: str, limits: ProtocolLimits) -> bytes:
    if len(data) > limits.max_descriptor_bytes:
        raise DecodeError(f"{what} of {len(data)} bytes exceeds {limits.max_descriptor_bytes}")
    return data


def _decode_hello(fields: Fields, limits: ProtocolLimits) -> Hello:
    room = fields.bytes(1)
    if len(room) != ROOM_ID_BYTES:
        raise DecodeError(f"hello room id is {len(room)} bytes, not {ROOM_ID_BYTES}")
    guid = fields.bytes_or_none(2) or None
    if guid is not None and len(guid) != GUID_BYTES:
        raise DecodeError(f"hello guid is {len(guid)} bytes, not {GUID_BYTES}")
    epoch = fields.uint_or_none(3) or 0
    if guid is None and epoch:
        raise DecodeError("hello has an epoch but no guid")
    descriptor = _bounded(fields.bytes_or_none(5) or b"", "hello descriptor", limits)
    members = _bounded(fields.bytes_or_none(6) or b"", "hello member list", limits)
    if guid is None and (descriptor or members):
        raise DecodeError("hello carries a room descriptor or member list but no guid")
    flags = HelloFlags(fields.uint_or_none(4) or 0)
    return Hello(room, guid, epoch, flags, descriptor, members)


def _decode_vector(fields: Fields, limits: ProtocolLimits) -> dict[PeerId, int]:
    entries = fields.all_bytes(1)
    if len(entries) > limits.max_vector_authors:
        raise DecodeError(
            f"vector of {len(entries)} authors exceeds the limit of {limits.max_vector_authors}"
        )
    vector: dict[PeerId, int] = {}
    for raw in entries:
        entry = parse_fields(raw, max_bytes=len(raw))
        author = PeerId(entry.bytes(1))
        seq = entry.uint(2)
        if seq < 1:
            raise DecodeError(f"vector entry for {author} has seq 0")
        if author in vector:
            raise DecodeError(f"vector names {author} twice")
        vector[author] = seq
    return vector


def _decode_goodbye(fields: Fields, limits: ProtocolLimits) -> Goodbye:
    code = fields.uint_or_none(1) or 0
    raw = fields.bytes_or_none(2) or b""
    if len(raw) > limits.max_reason_bytes:
        raise DecodeError(f"goodbye message of {len(raw)} bytes exceeds {limits.max_reason_bytes}")
    try:
        reason = GoodbyeReason(code)
    except ValueError:
        reason = GoodbyeReason.OTHER
    return Goodbye(reason, fields.string_or_none(2) or "")
