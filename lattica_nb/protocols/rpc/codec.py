"""The RPC wire format, sans-IO: msgpack bodies in uvarint-length frames.

A frame is ``uvarint(len(body)) || body``; the body is one msgpack array
whose first element says what the frame is:

=========  ==========================================================  ==========
kind       body                                                        sent by
=========  ==========================================================  ==========
CALL (0)   ``[0, method, timeout_ms | nil, shape]`` + ``[request]``     caller
           when the shape has a single request (unary, server stream)
MESSAGE    ``[1, payload]``: one streamed request or response           both
END (2)    ``[2]``: no more streamed requests                           caller
STATUS     ``[3, code, message]``, or ``[3, 0, "", response]`` when a   callee
           call that returns one value succeeds (unary, client stream)
=========  ==========================================================  ==========

Bodies are decoded with msgpack's safe options: no ext types (the
timestamp extension included), strings are UTF-8, map keys are strings or
bytes, and every length is bounded by the maximum message size. Integers
are at most 64-bit by construction of msgpack. Anything else raises
:class:`~lattica_nb.errors.DecodeError`; a frame whose announced length is
over the limit raises :class:`~lattica_nb.errors.MessageTooLarge` before its
body is read. Nothing here touches a stream or a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NoReturn

import msgpack

from ...errors import DecodeError, LimitExceeded, MessageTooLarge, SchemaError, StatusCode
from ...wire.varint import encode_uvarint, try_decode_uvarint

__all__ = [
    "MAX_METHOD_BYTES",
    "MAX_STATUS_MESSAGE_CHARS",
    "PROTOCOL_ID",
    "Call",
    "End",
    "Frame",
    "FrameDecoder",
    "Kind",
    "Message",
    "Shape",
    "Status",
    "decode_frame",
    "encode_call",
    "encode_end",
    "encode_message",
    "encode_status",
    "pack",
    "unpack",
]

PROTOCOL_ID = "/lattica-nb/rpc/1.0.0"

MAX_METHOD_BYTES = 256
"""Longest method name (UTF-8 bytes)."""

MAX_STATUS_MESSAGE_CHARS = 1024
"""Status messages we send are cut to this many characters."""


class Kind(enum.IntEnum):
    CALL = 0
    MESSAGE = 1
    END = 2
    STATUS = 3


class Shape(enum.IntEnum):
    """How many requests and responses a method takes and gives."""

    UNARY = 0
    SERVER_STREAM = 1
    CLIENT_STREAM = 2
    BIDI_STREAM = 3

    @property
    def streams_requests(self) -> bool:
        return self in (Shape.CLIENT_STREAM, Shape.BIDI_STREAM)

    @property
    def streams_responses(self) -> bool:
        return self in (Shape.SERVER_STREAM, Shape.BIDI_STREAM)


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    timeout_ms: int | None
    shape: Shape
    request: object = None
    """The request, for shapes without streamed requests (else None)."""


@dataclass(frozen=True, slots=True)
class Message:
    payload: object


@dataclass(frozen=True, slots=True)
class End:
    pass


@dataclass(frozen=True, slots=True)
class Status:
    code: StatusCode
    message: str
    response: object = None
    has_response: bool = False


Frame = Call | Message | End | Status

_END = End()


# -- msgpack ---------------------------------------------------------------------------------
def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"msgpack ext type {code} is not accepted")


def pack(value: object) -> bytes:
    """msgpack-encode ``value`` (plain builtins only); SchemaError for anything else."""
    try:
        return msgpack.packb(value, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]
    except OverflowError as exc:
        raise SchemaError("integer outside the 64-bit range msgpack can carry") from exc
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"cannot encode as msgpack: {exc}") from exc


def unpack(body: bytes, *, max_bytes: int) -> object:
    """Decode one msgpack value with safe options; DecodeError on anything else."""
    if len(body) > max_bytes:
        raise MessageTooLarge(len(body), max_bytes)
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=max_bytes,
            max_map_len=max_bytes,
            max_ext_len=0,
        )
    except RecursionError as exc:
        raise DecodeError("msgpack value is nested too deeply") from exc
    except Exception as exc:  # msgpack raises ValueError, FormatError, StackError, ExtraData…
        raise DecodeError(f"malformed msgpack: {exc}") from exc


# -- encoding frames --------------------------------------------------------------------------
def _frame(body: list[object], max_bytes: int, what: str) -> bytes:
    data = pack(body)
    if len(data) > max_bytes:
        raise LimitExceeded(
            f"{what} of {len(data)} bytes exceeds the maximum message size of {max_bytes} bytes "
            "(RpcConfig.max_message_bytes); send less per message or stream it"
        )
    return encode_uvarint(len(data)) + data


def encode_call(
    method: str, timeout_ms: int | None, shape: Shape, request: object, *, max_bytes: int
) -> bytes:
    """A CALL frame; ``request`` is sent only for shapes without streamed requests."""
    body: list[object] = [Kind.CALL.value, method, timeout_ms, shape.value]
    if not shape.streams_requests:
        body.append(request)
    return _frame(body, max_bytes, f"request to {method!r}")


def encode_message(payload: object, *, max_bytes: int) -> bytes:
    return _frame([Kind.MESSAGE.value, payload], max_bytes, "message")


def encode_end() -> bytes:
    return b"\x02\x91\x02"  # uvarint(2) || msgpack [2]


def encode_status(
    code: StatusCode, message: str = "", *, response: object = None, has_response: bool = False,
    max_bytes: int,
) -> bytes:
    """A STATUS frame; ``has_response`` only with OK (the single response of the call)."""
    body: list[object] = [Kind.STATUS.value, int(code), message[:MAX_STATUS_MESSAGE_CHARS]]
    if has_response:
        if code is not StatusCode.OK:
            raise SchemaError("only an OK status carries a response")
        body.append(response)
    return _frame(body, max_bytes, "response")


# -- decoding frames --------------------------------------------------------------------------
def decode_frame(body: bytes, *, max_bytes: int) -> Frame:
    """Decode one frame body; DecodeError if it is not a well-formed frame."""
    value = unpack(body, max_bytes=max_bytes)
    if type(value) is not list or not value:
        raise DecodeError("an RPC frame must be a non-empty msgpack array")
    kind = value[0]
    n = len(value)
    if kind == Kind.MESSAGE and type(kind) is int:
        if n != 2:
            raise DecodeError("a MESSAGE frame has 2 elements")
        return Message(value[1])
    if kind == Kind.STATUS and type(kind) is int:
        return _decode_status(value)
    if kind == Kind.CALL and type(kind) is int:
        return _decode_call(value)
    if kind == Kind.END and type(kind) is int:
        if n != 1:
            raise DecodeError("an END frame has 1 element")
        return _END
    raise DecodeError(f"unknown RPC frame kind {kind!r}")


def _decode_call(value: list[object]) -> Call:
    if len(value) not in (4, 5):
        raise DecodeError("a CALL frame has 4 or 5 elements")
    method, timeout_ms, shape_raw = value[1], value[2], value[3]
    if type(method) is not str or not method:
        raise DecodeError("CALL method must be a non-empty string")
    if len(method) > MAX_METHOD_BYTES or len(method.encode()) > MAX_METHOD_BYTES:
        raise DecodeError(f"CALL method name is longer than {MAX_METHOD_BYTES} bytes")
    if timeout_ms is not None and (type(timeout_ms) is not int or timeout_ms < 0):
        raise DecodeError("CALL timeout_ms must be a non-negative integer or nil")
    if type(shape_raw) is not int or not 0 <= shape_raw <= 3:
        raise DecodeError(f"CALL shape {shape_raw!r} is not 0..3")
    shape = Shape(shape_raw)
    if shape.streams_requests:
        if len(value) != 4:
            raise DecodeError("a CALL frame of a request-streaming call has no request")
        return Call(method, timeout_ms, shape)
    if len(value) != 5:
        raise DecodeError("a CALL frame of a single-request call carries the request")
    return Call(method, timeout_ms, shape, value[4])


_CODES = {int(code): code for code in StatusCode}


def _decode_status(value: list[object]) -> Status:
    if len(value) not in (3, 4):
        raise DecodeError("a STATUS frame has 3 or 4 elements")
    raw_code, message = value[1], value[2]
    if type(raw_code) is not int or raw_code < 0:
        raise DecodeError("STATUS code must be a non-negative integer")
    if type(message) is not str:
        raise DecodeError("STATUS message must be a string")
    code = _CODES.get(raw_code)
    if code is None:
        code, message = StatusCode.UNKNOWN, f"(status code {raw_code}) {message}"
    if len(value) == 4:
        if code is not StatusCode.OK:
            raise DecodeError("only an OK STATUS carries a response")
        return Status(code, message, value[3], True)
    return Status(code, message)


class FrameDecoder:
    """Splits received bytes into frame bodies, checking each announced length first.

    ``feed`` what the stream gives; ``next_frame`` returns the next complete
    body or None when more bytes are needed. Raises MessageTooLarge as soon
    as a length prefix over ``max_bytes`` is seen, DecodeError for a bad prefix.
    """

    __slots__ = ("_buf", "_max_bytes")

    def __init__(self, *, max_bytes: int) -> None:
        self._buf = bytearray()
        self._max_bytes = max_bytes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> bytes | None:
        buf = self._buf
        if not buf:
            return None
        decoded = try_decode_uvarint(buf)
        if decoded is None:
            return None
        length, start = decoded
        if length > self._max_bytes:
            raise MessageTooLarge(length, self._max_bytes)
        end = start + length
        if len(buf) < end:
            return None
        body = bytes(buf[start:end])
        del buf[:end]
        return body
