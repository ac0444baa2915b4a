"""A small protobuf codec: enough for libp2p's messages, bounded on input.

Messages are written with :class:`ProtoWriter` and read with
:func:`parse_fields`, which returns a :class:`Fields` view. Unknown fields are
kept and ignored (protobuf's forward-compatibility rule). Every decode is
bounded by the caller's ``max_bytes`` and by ``MAX_FIELDS``; malformed input
raises :class:`~lattica_nb.errors.DecodeError`.

Only wire types 0 (varint), 1 (64-bit), 2 (length-delimited) and 5 (32-bit)
exist in the messages we speak; groups (3, 4) are rejected.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable

from ..errors import DecodeError
from .varint import decode_uvarint, encode_uvarint

WIRE_VARINT = 0
WIRE_FIXED64 = 1
WIRE_LEN = 2
WIRE_FIXED32 = 5

MAX_FIELDS = 4096
"""Most fields one message may carry before it is refused."""

FieldValue = int | bytes


class ProtoWriter:
    """Append-only protobuf encoder. Fields are written in call order."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def _key(self, field: int, wire_type: int) -> None:
        self._buf += encode_uvarint((field << 3) | wire_type)

    def uint(self, field: int, value: int) -> ProtoWriter:
        """Write a varint field (uint32/uint64/enum/bool)."""
        self._key(field, WIRE_VARINT)
        self._buf += encode_uvarint(value)
        return self

    def bytes(self, field: int, value: bytes | bytearray | memoryview) -> ProtoWriter:
        """Write a length-delimited bytes field."""
        self._key(field, WIRE_LEN)
        self._buf += encode_uvarint(len(value))
        self._buf += value
        return self

    def string(self, field: int, value: str) -> ProtoWriter:
        return self.bytes(field, value.encode("utf-8"))

    def repeated_bytes(
        self, field: int, values: Iterable[builtins.bytes | bytearray | memoryview]
    ) -> ProtoWriter:
        for value in values:
            self.bytes(field, value)
        return self

    def repeated_string(self, field: int, values: Iterable[str]) -> ProtoWriter:
        for value in values:
            self.string(field, value)
        return self

    def finish(self) -> builtins.bytes:
        return bytes(self._buf)


class Fields:
    """Decoded fields of one message, by field number, in wire order."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[int, list[FieldValue]]) -> None:
        self._fields = fields

    def __contains__(self, field: int) -> bool:
        return field in self._fields

    def _values(self, field: int, kind: type) -> list[FieldValue]:
        values = self._fields.get(field, [])
        for value in values:
            if not isinstance(value, kind):
                raise DecodeError(f"protobuf field {field} has the wrong wire type")
        return values

    def bytes_or_none(self, field: int) -> bytes | None:
        """The last value of a bytes field (protobuf's last-one-wins), or None."""
        values = self._values(field, bytes)
        return values[-1] if values else None  # type: ignore[return-value]

    def bytes(self, field: int) -> bytes:
        """A required bytes field."""
        value = self.bytes_or_none(field)
        if value is None:
            raise DecodeError(f"protobuf field {field} is missing")
        return value

    def all_bytes(self, field: int) -> list[builtins.bytes]:
        return self._values(field, builtins.bytes)  # type: ignore[return-value]

    def string_or_none(self, field: int) -> str | None:
        value = self.bytes_or_none(field)
        return None if value is None else _utf8(value, field)

    def all_strings(self, field: int) -> list[str]:
        return [_utf8(value, field) for value in self.all_bytes(field)]

    def uint_or_none(self, field: int) -> int | None:
        values = self._values(field, int)
        return values[-1] if values else None  # type: ignore[return-value]

    def uint(self, field: int) -> int:
        value = self.uint_or_none(field)
        if value is None:
            raise DecodeError(f"protobuf field {field} is missing")
        return value


def _utf8(value: bytes, field: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"protobuf field {field} is not valid UTF-8") from exc


def parse_fields(data: bytes | bytearray | memoryview, *, max_bytes: int) -> Fields:
    """Decode one protobuf message of at most ``max_bytes`` bytes."""
    if len(data) > max_bytes:
        raise DecodeError(f"protobuf message of {len(data)} bytes exceeds {max_bytes}")
    view = memoryview(data)
    fields: dict[int, list[FieldValue]] = {}
    pos = 0
    count = 0
    end = len(view)
    while pos < end:
        key, pos = decode_uvarint(view, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise DecodeError("protobuf field number 0 is invalid")
        value: FieldValue
        if wire_type == WIRE_VARINT:
            value, pos = decode_uvarint(view, pos)
        elif wire_type == WIRE_LEN:
            length, pos = decode_uvarint(view, pos)
            if length > end - pos:
                raise DecodeError(f"protobuf field {field} runs past the end of the message")
            value = bytes(view[pos : pos + length])
            pos += length
        elif wire_type == WIRE_FIXED64:
            if end - pos < 8:
                raise DecodeError("truncated 64-bit protobuf field")
            value = int.from_bytes(view[pos : pos + 8], "little")
            pos += 8
        elif wire_type == WIRE_FIXED32:
            if end - pos < 4:
                raise DecodeError("truncated 32-bit protobuf field")
            value = int.from_bytes(view[pos : pos + 4], "little")
            pos += 4
        else:
            raise DecodeError(f"unsupported protobuf wire type {wire_type}")
        count += 1
        if count > MAX_FIELDS:
            raise DecodeError(f"protobuf message has more than {MAX_FIELDS} fields")
        fields.setdefault(field, []).append(value)
    return Fields(fields)
