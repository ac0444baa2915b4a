"""The libp2p Kademlia wire message (``/ipfs/kad/1.0.0``), encoded and decoded.

The schema is the kad-dht spec's ``Message`` plus rust-libp2p's two record
extras (``publisher = 666``, ``ttl = 777``)::

    message Record { bytes key = 1; bytes value = 2; string timeReceived = 5;
                     bytes publisher = 666; uint32 ttl = 777; }
    message Message {
      message Peer { bytes id = 1; repeated bytes addrs = 2; ConnectionType connection = 3; }
      MessageType type = 1; int32 clusterLevelRaw = 10; bytes key = 2; Record record = 3;
      repeated Peer closerPeers = 8; repeated Peer providerPeers = 9;
    }

Encoding follows proto3: fields holding their default (type PUT_VALUE, empty
key, connection NOT_CONNECTED, cluster level 0) are not written, so a
``FIND_NODE`` request for key ``X`` is ``08 04 12 <len> X``. The optional
record fields (``publisher``, ``ttl_s``) are written whenever they are not
None, so they round-trip.

Decoding is bounded by :class:`MessageLimits` and raises
:class:`~lattica_nb.errors.DecodeError` for anything malformed. The top
level is scanned here rather than with :func:`~lattica_nb.wire.protobuf.parse_fields`
because ``clusterLevelRaw`` is an int32: a negative value travels as a
10-byte varint, which the shared (63-bit) varint reader refuses. Nested
``Peer`` and ``Record`` messages use ``parse_fields``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import ConfigError, DecodeError, LocalProtocolError, MultiaddrError
from ..identity import PeerId
from ..multiaddr import Multiaddr
from ..wire.protobuf import (
    MAX_FIELDS,
    WIRE_FIXED32,
    WIRE_FIXED64,
    WIRE_LEN,
    WIRE_VARINT,
    ProtoWriter,
    parse_fields,
)

__all__ = [
    "ConnectionType",
    "Message",
    "MessageLimits",
    "MessageType",
    "PeerEntry",
    "WireRecord",
    "decode_message",
    "encode_message",
]

_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1
_UINT32_MAX = (1 << 32) - 1
_UINT64_MASK = (1 << 64) - 1
_MAX_VARINT64_BYTES = 10

# Field numbers (kad-dht spec; publisher/ttl are rust-libp2p's).
_MSG_TYPE = 1
_MSG_KEY = 2
_MSG_RECORD = 3
_MSG_CLOSER = 8
_MSG_PROVIDER = 9
_MSG_CLUSTER_LEVEL = 10
_PEER_ID = 1
_PEER_ADDRS = 2
_PEER_CONNECTION = 3
_REC_KEY = 1
_REC_VALUE = 2
_REC_TIME_RECEIVED = 5
_REC_PUBLISHER = 666
_REC_TTL = 777
_MSG_WIRE_TYPES = {
    _MSG_TYPE: WIRE_VARINT,
    _MSG_KEY: WIRE_LEN,
    _MSG_RECORD: WIRE_LEN,
    _MSG_CLOSER: WIRE_LEN,
    _MSG_PROVIDER: WIRE_LEN,
    _MSG_CLUSTER_LEVEL: WIRE_VARINT,
}


class MessageType(enum.IntEnum):
    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


class ConnectionType(enum.IntEnum):
    NOT_CONNECTED = 0
    CONNECTED = 1
    CAN_CONNECT = 2
    CANNOT_CONNECT = 3


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """One ``Message.Peer``: a peer id, the addresses the sender knows, its connectedness."""

    peer_id: PeerId
    addrs: tuple[Multiaddr, ...] = ()
    connection: ConnectionType = ConnectionType.NOT_CONNECTED


@dataclass(frozen=True, slots=True)
class WireRecord:
    """A ``Record`` as it travels; ``value`` is opaque here (validators judge it)."""

    key: bytes
    value: bytes
    time_received: str = ""
    publisher: bytes | None = None
    ttl_s: int | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One kad request or response."""

    type: MessageType
    key: bytes = b""
    record: WireRecord | None = None
    closer_peers: tuple[PeerEntry, ...] = ()
    provider_peers: tuple[PeerEntry, ...] = ()
    cluster_level: int = 0


@dataclass(frozen=True, slots=True)
class MessageLimits:
    """Bounds applied while decoding a message from a peer.

    ``max_message_bytes``: the whole protobuf body. ``max_peers``: entries in
    closerPeers, and separately in providerPeers (more is an error: a flood).
    ``max_addrs_per_peer``: address entries looked at per peer (the rest are
    dropped). ``max_key_bytes``: the message key and the record key.
    """

    max_message_bytes: int = 65536
    max_peers: int = 64
    max_addrs_per_peer: int = 32
    max_key_bytes: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_peers", "max_addrs_per_peer", "max_key_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"MessageLimits.{name} must be a positive integer, got {value!r}")


# -- encoding ---------------------------------------------------------------------------------


def encode_message(message: Message) -> bytes:
    """The protobuf body of ``message`` (no length prefix).

    Raises LocalProtocolError for values the schema cannot carry (a cluster
    level outside int32, a ttl outside uint32).
    """
    writer = ProtoWriter()
    if message.type != MessageType.PUT_VALUE:
        writer.uint(_MSG_TYPE, int(message.type))
    if message.key:
        writer.bytes(_MSG_KEY, message.key)
    if message.record is not None:
        writer.bytes(_MSG_RECORD, _encode_record(message.record))
    for peer in message.closer_peers:
        writer.bytes(_MSG_CLOSER, _encode_peer(peer))
    for peer in message.provider_peers:
        writer.bytes(_MSG_PROVIDER, _encode_peer(peer))
    body = writer.finish()
    level = message.cluster_level
    if level:
        if not _INT32_MIN <= level <= _INT32_MAX:
            raise LocalProtocolError(f"cluster level {level} does not fit in an int32")
        tag = _encode_varint64((_MSG_CLUSTER_LEVEL << 3) | WIRE_VARINT)
        body += tag + _encode_varint64(level & _UINT64_MASK)
    return body


def _encode_record(record: WireRecord) -> bytes:
    writer = ProtoWriter()
    if record.key:
        writer.bytes(_REC_KEY, record.key)
    if record.value:
        writer.bytes(_REC_VALUE, record.value)
    if record.time_received:
        writer.string(_REC_TIME_RECEIVED, record.time_received)
    if record.publisher is not None:
        writer.bytes(_REC_PUBLISHER, record.publisher)
    if record.ttl_s is not None:
        if not 0 <= record.ttl_s <= _UINT32_MAX:
            raise LocalProtocolError(f"record ttl of {record.ttl_s} s does not fit in a uint32")
        writer.uint(_REC_TTL, record.ttl_s)
    return writer.finish()


def _encode_peer(peer: PeerEntry) -> bytes:
    writer = ProtoWriter().bytes(_PEER_ID, peer.peer_id.to_bytes())
    writer.repeated_bytes(_PEER_ADDRS, (addr.to_bytes() for addr in peer.addrs))
    if peer.connection != ConnectionType.NOT_CONNECTED:
        writer.uint(_PEER_CONNECTION, int(peer.connection))
    return writer.finish()


def _encode_varint64(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# -- decoding ---------------------------------------------------------------------------------


def decode_message(data: bytes, limits: MessageLimits = MessageLimits()) -> Message:
    """Decode one protobuf body (no length prefix); DecodeError on anything malformed."""
    if len(data) > limits.max_message_bytes:
        raise DecodeError(
            f"kad message of {len(data)} bytes exceeds the limit of {limits.max_message_bytes}"
        )
    data = bytes(data)
    type_value = 0
    key = b""
    record_raw: bytes | None = None
    closer_raw: list[bytes] = []
    provider_raw: list[bytes] = []
    cluster_level = 0
    pos = 0
    end = len(data)
    count = 0
    while pos < end:
        tag, pos = _read_varint64(data, pos)
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise DecodeError("kad message has a protobuf field number 0")
        count += 1
        if count > MAX_FIELDS:
            raise DecodeError(f"kad message has more than {MAX_FIELDS} protobuf fields")
        expected = _MSG_WIRE_TYPES.get(field)
        if expected is not None and expected != wire_type:
            raise DecodeError(f"kad message field {field} has the wrong wire type {wire_type}")
        if wire_type == WIRE_VARINT:
            number, pos = _read_varint64(data, pos)
            if field == _MSG_TYPE:
                type_value = number
            elif field == _MSG_CLUSTER_LEVEL:
                cluster_level = _as_int32(number)
        elif wire_type == WIRE_LEN:
            length, pos = _read_varint64(data, pos)
            if length > end - pos:
                raise DecodeError(f"kad message field {field} runs past the end of the message")
            value = data[pos : pos + length]
            pos += length
            if field == _MSG_KEY:
                key = value
            elif field == _MSG_RECORD:
                record_raw = value
            elif field == _MSG_CLOSER:
                closer_raw.append(value)
                _check_peer_count(len(closer_raw), "closer", limits)
            elif field == _MSG_PROVIDER:
                provider_raw.append(value)
                _check_peer_count(len(provider_raw), "provider", limits)
        elif wire_type in (WIRE_FIXED64, WIRE_FIXED32):
            size = 8 if wire_type == WIRE_FIXED64 else 4
            if end - pos < size:
                raise DecodeError(f"kad message field {field} is truncated")
            pos += size
        else:
            raise DecodeError(f"kad message uses unsupported protobuf wire type {wire_type}")

    try:
        message_type = MessageType(type_value)
    except ValueError:
        raise DecodeError(f"unknown kad message type {type_value}") from None
    if len(key) > limits.max_key_bytes:
        raise DecodeError(
            f"kad message key of {len(key)} bytes exceeds the limit of {limits.max_key_bytes}"
        )
    return Message(
        type=message_type,
        key=key,
        record=None if record_raw is None else _decode_record(record_raw, limits),
        closer_peers=tuple(_decode_peer(raw, "closer", limits) for raw in closer_raw),
        provider_peers=tuple(_decode_peer(raw, "provider", limits) for raw in provider_raw),
        cluster_level=cluster_level,
    )


def _check_peer_count(count: int, kind: str, limits: MessageLimits) -> None:
    if count > limits.max_peers:
        raise DecodeError(f"kad message carries more than {limits.max_peers} {kind} peers")


def _decode_record(data: bytes, limits: MessageLimits) -> WireRecord:
    fields = parse_fields(data, max_bytes=len(data))
    key = fields.bytes_or_none(_REC_KEY) or b""
    if len(key) > limits.max_key_bytes:
        raise DecodeError(
            f"kad record key of {len(key)} bytes exceeds the limit of {limits.max_key_bytes}"
        )
    ttl = fields.uint_or_none(_REC_TTL)
    return WireRecord(
        key=key,
        value=fields.bytes_or_none(_REC_VALUE) or b"",
        time_received=fields.string_or_none(_REC_TIME_RECEIVED) or "",
        publisher=fields.bytes_or_none(_REC_PUBLISHER),
        # uint32: protobuf truncates wider varints to their low 32 bits.
        ttl_s=None if ttl is None else ttl & _UINT32_MAX,
    )


def _decode_peer(data: bytes, kind: str, limits: MessageLimits) -> PeerEntry:
    fields = parse_fields(data, max_bytes=len(data))
    raw_id = fields.bytes_or_none(_PEER_ID)
    if raw_id is None:
        raise DecodeError(f"kad {kind} peer entry has no peer id")
    try:
        peer_id = PeerId.from_bytes(raw_id)
    except DecodeError as exc:
        raise DecodeError(f"kad {kind} peer entry has a bad peer id: {exc}") from None
    addrs: list[Multiaddr] = []
    for raw_addr in fields.all_bytes(_PEER_ADDRS)[: limits.max_addrs_per_peer]:
        try:
            addrs.append(Multiaddr.from_bytes(raw_addr))
        except (MultiaddrError, DecodeError):
            continue  # an address we cannot read (or an unknown protocol): skip it
    connection_value = fields.uint_or_none(_PEER_CONNECTION) or 0
    try:
        connection = ConnectionType(connection_value)
    except ValueError:
        connection = ConnectionType.NOT_CONNECTED  # open enum: unknown values read as default
    return PeerEntry(peer_id=peer_id, addrs=tuple(addrs), connection=connection)


def _read_varint64(data: bytes, pos: int) -> tuple[int, int]:
    """A protobuf varint of up to 10 bytes (negative int32/int64 use all 10)."""
    value = 0
    shift = 0
    end = len(data)
    for _ in range(_MAX_VARINT64_BYTES):
        if pos >= end:
            raise DecodeError("kad message ends inside a varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & _UINT64_MASK, pos
        shift += 7
    raise DecodeError(f"kad message has a varint longer than {_MAX_VARINT64_BYTES} bytes")


def _as_int32(value: int) -> int:
    """An int32 field's value: the low 32 bits of the varint, two's complement."""
    value &= _UINT32_MAX
    return value - (1 << 32) if value > _INT32_MAX else value
