"""The bincode envelope of Lattica's ``/rpc/req-resp/1.0.0`` messages, nothing more.

Lattica (lattica/src/rpc/protocol.rs) sends one ``RpcMessage`` per stream
direction, encoded with ``bincode::config::standard()`` (bincode 2: little
endian, variable-length integers), written whole and followed by a
half-close; the reader reads to the end of the stream::

    enum RpcMessage { Request(RpcRequest), Response(RpcResponse), Error(RpcError) }
    struct RpcRequest  { id: String, method: String, data: Vec<u8>,
                         compression: Option<CompressionAlgorithm> }
    struct RpcResponse { id: String, data: Vec<u8>, compression: Option<CompressionAlgorithm> }
    struct RpcError    { id: String, error: String }
    enum CompressionAlgorithm { None, Gzip, Zstd, Lz4, Brotli }

bincode 2's standard encoding of those pieces:

- an unsigned integer below 251 is one byte; otherwise a marker byte (251,
  252, 253, 254) followed by the value as a little-endian u16, u32, u64 or
  u128;
- an enum is its variant index (a u32, as above) followed by its fields;
- ``String`` and ``Vec<u8>`` are a length (a u64, as above) and the bytes;
- ``Option`` is a byte, 0 (None) or 1 (Some), then the value.

``data`` is opaque bytes here, always: the SDK's Python layer pickles it, and
this module never unpickles anything. The decoder is bounded: the message
size, every length and every integer is checked before anything is sliced
or allocated, and any malformed input raises :class:`BincodeError`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "COMPRESSION_ALGORITHMS",
    "MAX_MESSAGE_BYTES",
    "BincodeError",
    "RpcError",
    "RpcMessage",
    "RpcRequest",
    "RpcResponse",
    "decode_message",
    "decode_varint",
    "encode_message",
    "encode_varint",
]

MAX_MESSAGE_BYTES = 1 << 20
"""Largest envelope :func:`decode_message` accepts by default (the tests send tiny ones)."""

MAX_TEXT_BYTES = 64 * 1024
"""Largest ``id``, ``method`` or ``error`` string accepted."""

COMPRESSION_ALGORITHMS = ("none", "gzip", "zstd", "lz4", "brotli")
"""``CompressionAlgorithm`` variants, by index."""

_U8_MAX = 250
_MARK_U16, _MARK_U32, _MARK_U64, _MARK_U128 = 251, 252, 253, 254
_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1

_REQUEST, _RESPONSE, _ERROR = 0, 1, 2


class BincodeError(ValueError):
    """The bytes are not a well-formed ``RpcMessage`` within the limits."""


@dataclass(frozen=True, slots=True)
class RpcRequest:
    id: str
    method: str
    data: bytes = b""
    compression: int | None = None
    """Index into :data:`COMPRESSION_ALGORITHMS`, or None for no compression field."""


@dataclass(frozen=True, slots=True)
class RpcResponse:
    id: str
    data: bytes = b""
    compression: int | None = None


@dataclass(frozen=True, slots=True)
class RpcError:
    id: str
    error: str


RpcMessage = RpcRequest | RpcResponse | RpcError


# -- encoding --------------------------------------------------------------------------------
def encode_varint(value: int) -> bytes:
    """bincode 2's variable-length encoding of an unsigned integer (up to u64)."""
    if value < 0 or value > _U64_MAX:
        raise BincodeError(f"{value} is not a u64")
    if value <= _U8_MAX:
        return bytes((value,))
    if value <= 0xFFFF:
        return bytes((_MARK_U16,)) + value.to_bytes(2, "little")
    if value <= _U32_MAX:
        return bytes((_MARK_U32,)) + value.to_bytes(4, "little")
    return bytes((_MARK_U64,)) + value.to_bytes(8, "little")


def _encode_bytes(value: bytes) -> bytes:
    return encode_varint(len(value)) + value


def _encode_text(value: str) -> bytes:
    return _encode_bytes(value.encode("utf-8"))


def _encode_compression(value: int | None) -> bytes:
    if value is None:
        return b"\x00"
    if not 0 <= value < len(COMPRESSION_ALGORITHMS):
        raise BincodeError(f"compression index {value} is not a CompressionAlgorithm")
    return b"\x01" + encode_varint(value)


def encode_message(message: RpcMessage) -> bytes:
    """Encode one ``RpcMessage`` as Lattica's codec writes it."""
    if isinstance(message, RpcRequest):
        return b"".join((
            encode_varint(_REQUEST),
            _encode_text(message.id),
            _encode_text(message.method),
            _encode_bytes(bytes(message.data)),
            _encode_compression(message.compression),
        ))
    if isinstance(message, RpcResponse):
        return b"".join((
            encode_varint(_RESPONSE),
            _encode_text(message.id),
            _encode_bytes(bytes(message.data)),
            _encode_compression(message.compression),
        ))
    if isinstance(message, RpcError):
        return encode_varint(_ERROR) + _encode_text(message.id) + _encode_text(message.error)
    raise BincodeError(f"not an RpcMessage: {type(message).__name__}")


# -- decoding --------------------------------------------------------------------------------
def decode_varint(data: bytes, offset: int = 0, *, max_value: int = _U64_MAX) -> tuple[int, int]:
    """Decode one bincode 2 varint at ``offset``; return ``(value, next_offset)``.

    Like bincode, a value may use a wider form than it needs; it must still
    fit in ``max_value`` (u32 for enum variants, u64 for lengths). The u128
    form is refused: nothing in this envelope can hold such a value.
    """
    if offset >= len(data):
        raise BincodeError("truncated: a varint was expected")
    marker = data[offset]
    if marker <= _U8_MAX:
        value, end = marker, offset + 1
    else:
        width = {_MARK_U16: 2, _MARK_U32: 4, _MARK_U64: 8}.get(marker)
        if width is None:
            raise BincodeError(f"varint marker {marker} (u128 or invalid) is not accepted")
        end = offset + 1 + width
        if end > len(data):
            raise BincodeError("truncated: a varint runs past the end")
        value = int.from_bytes(data[offset + 1 : end], "little")
    if value > max_value:
        raise BincodeError(f"varint {value} exceeds {max_value}")
    return value, end


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varint(self, max_value: int) -> int:
        value, self.pos = decode_varint(self.data, self.pos, max_value=max_value)
        return value

    def raw(self, limit: int, what: str) -> bytes:
        length = self.varint(_U64_MAX)
        if length > limit:
            raise BincodeError(f"{what} of {length} bytes exceeds the limit of {limit}")
        end = self.pos + length
        if end > len(self.data):
            raise BincodeError(f"truncated: {what} claims {length} bytes")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def text(self, what: str) -> str:
        raw = self.raw(MAX_TEXT_BYTES, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BincodeError(f"{what} is not valid UTF-8") from exc

    def compression(self) -> int | None:
        if self.pos >= len(self.data):
            raise BincodeError("truncated: the compression option is missing")
        tag = self.data[self.pos]
        self.pos += 1
        if tag == 0:
            return None
        if tag != 1:
            raise BincodeError(f"Option tag {tag} is neither 0 nor 1")
        index = self.varint(_U32_MAX)
        if index >= len(COMPRESSION_ALGORITHMS):
            raise BincodeError(f"CompressionAlgorithm variant {index} does not exist")
        return index


def decode_message(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> RpcMessage:
    """Decode exactly one ``RpcMessage`` filling all of ``data``.

    ``data`` stays opaque: a response's payload is returned as bytes and
    never interpreted (in particular, never unpickled).
    """
    data = bytes(data)
    if len(data) > max_bytes:
        raise BincodeError(f"message of {len(data)} bytes exceeds {max_bytes}")
    reader = _Reader(data)
    variant = reader.varint(_U32_MAX)
    message: RpcMessage
    if variant == _REQUEST:
        message = RpcRequest(
            id=reader.text("id"),
            method=reader.text("method"),
            data=reader.raw(max_bytes, "data"),
            compression=reader.compression(),
        )
    elif variant == _RESPONSE:
        message = RpcResponse(
            id=reader.text("id"),
            data=reader.raw(max_bytes, "data"),
            compression=reader.compression(),
        )
    elif variant == _ERROR:
        message = RpcError(id=reader.text("id"), error=reader.text("error"))
    else:
        raise BincodeError(f"RpcMessage variant {variant} does not exist")
    if reader.pos != len(data):
        raise BincodeError(f"{len(data) - reader.pos} bytes follow the message")
    return message
