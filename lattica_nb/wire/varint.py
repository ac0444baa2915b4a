"""Unsigned LEB128 varints as used by multiformats and protobuf.

Decoders are bounded: at most ``MAX_VARINT_BYTES`` bytes (a 63-bit value),
and they raise :class:`~lattica_nb.errors.DecodeError` on truncated or
overlong input, never ``IndexError``.
"""

from __future__ import annotations

from ..errors import DecodeError, LocalProtocolError

MAX_VARINT_BYTES = 9
"""Nine 7-bit groups: values up to 2**63 - 1, as the multiformats spec allows."""

_MAX_VALUE = (1 << (7 * MAX_VARINT_BYTES)) - 1


def encode_uvarint(value: int) -> bytes:
    """Encode a non-negative integer as an unsigned varint."""
    if value < 0 or value > _MAX_VALUE:
        raise LocalProtocolError(f"varint value {value} is outside 0..2**63-1")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    """Decode a varint at ``offset``; return ``(value, next_offset)``.

    Raises DecodeError if the input ends inside the varint, if it is longer
    than MAX_VARINT_BYTES, or if it is not minimally encoded.
    """
    value = 0
    shift = 0
    end = len(data)
    pos = offset
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        if pos - offset >= MAX_VARINT_BYTES:
            raise DecodeError(f"varint longer than {MAX_VARINT_BYTES} bytes")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and pos - offset > 1:
                raise DecodeError("varint is not minimally encoded")
            return value, pos
        shift += 7


def try_decode_uvarint(
    data: bytes | bytearray | memoryview, offset: int = 0
) -> tuple[int, int] | None:
    """Like decode_uvarint, but return None when more bytes are needed.

    Used by incremental (sans-IO) parsers. Overlong or non-minimal varints
    still raise DecodeError.
    """
    end = len(data)
    limit = min(end, offset + MAX_VARINT_BYTES)
    for pos in range(offset, limit):
        if not data[pos] & 0x80:
            return decode_uvarint(data, offset)
    if end - offset >= MAX_VARINT_BYTES:
        raise DecodeError(f"varint longer than {MAX_VARINT_BYTES} bytes")
    return None
