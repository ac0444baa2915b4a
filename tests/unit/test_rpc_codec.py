"""RPC wire format (sans-IO): frames, safe msgpack, bounds."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.errors import (
    DecodeError,
    LimitExceeded,
    MessageTooLarge,
    SchemaError,
    StatusCode,
)
from lattica_nb.protocols.rpc.codec import (
    MAX_METHOD_BYTES,
    MAX_STATUS_MESSAGE_CHARS,
    Call,
    End,
    FrameDecoder,
    Message,
    Shape,
    Status,
    decode_frame,
    encode_call,
    encode_end,
    encode_message,
    encode_status,
    pack,
    unpack,
)
from lattica_nb.wire.varint import encode_uvarint

LIMIT = 64 * 1024


def body_of(frame: bytes) -> bytes:
    """Split one encoded frame and check its length prefix."""
    decoder = FrameDecoder(max_bytes=LIMIT)
    decoder.feed(frame)
    body = decoder.next_frame()
    assert body is not None and decoder.buffered == 0
    return body


def roundtrip(frame: bytes) -> object:
    return decode_frame(body_of(frame), max_bytes=LIMIT)


def raw(value: object) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


# -- frames --------------------------------------------------------------------------------
def test_unary_call_carries_the_request() -> None:
    frame = encode_call("echo", 1500, Shape.UNARY, {"data": b"hi"}, max_bytes=LIMIT)
    assert roundtrip(frame) == Call("echo", 1500, Shape.UNARY, {"data": b"hi"})
    assert msgpack.unpackb(body_of(frame)) == [0, "echo", 1500, 0, {"data": b"hi"}]


def test_streaming_call_has_no_request_and_may_have_no_deadline() -> None:
    frame = encode_call("sum", None, Shape.CLIENT_STREAM, None, max_bytes=LIMIT)
    assert msgpack.unpackb(body_of(frame)) == [0, "sum", None, 2]
    assert roundtrip(frame) == Call("sum", None, Shape.CLIENT_STREAM)


def test_message_end_and_status_frames() -> None:
    assert roundtrip(encode_message([1, "x"], max_bytes=LIMIT)) == Message([1, "x"])
    assert encode_end() == encode_uvarint(len(raw([2]))) + raw([2])
    assert roundtrip(encode_end()) == End()
    ok = encode_status(StatusCode.OK, response={"n": 1}, has_response=True, max_bytes=LIMIT)
    assert msgpack.unpackb(body_of(ok)) == [3, 0, "", {"n": 1}]
    assert roundtrip(ok) == Status(StatusCode.OK, "", {"n": 1}, True)
    # a None response is still a response
    assert roundtrip(
        encode_status(StatusCode.OK, response=None, has_response=True, max_bytes=LIMIT)
    ) == Status(StatusCode.OK, "", None, True)
    err = encode_status(StatusCode.NOT_FOUND, "no run", max_bytes=LIMIT)
    assert roundtrip(err) == Status(StatusCode.NOT_FOUND, "no run")


def test_status_message_is_cut_and_only_ok_carries_a_response() -> None:
    long = encode_status(StatusCode.INTERNAL, "x" * 5000, max_bytes=LIMIT)
    status = roundtrip(long)
    assert isinstance(status, Status) and len(status.message) == MAX_STATUS_MESSAGE_CHARS
    with pytest.raises(SchemaError):
        encode_status(StatusCode.INTERNAL, response=1, has_response=True, max_bytes=LIMIT)
    with pytest.raises(DecodeError, match="only an OK"):
        decode_frame(raw([3, 13, "boom", 1]), max_bytes=LIMIT)


def test_unknown_status_code_becomes_unknown_with_the_number() -> None:
    status = decode_frame(raw([3, 99, "later"]), max_bytes=LIMIT)
    assert status == Status(StatusCode.UNKNOWN, "(status code 99) later")


def test_oversize_frame_is_refused_when_encoding() -> None:
    with pytest.raises(LimitExceeded, match="max_message_bytes"):
        encode_message(b"x" * LIMIT, max_bytes=LIMIT)
    with pytest.raises(LimitExceeded, match="'echo'"):
        encode_call("echo", None, Shape.UNARY, b"x" * LIMIT, max_bytes=LIMIT)


@pytest.mark.parametrize(
    "value, reason",
    [
        ({"kind": 0}, "array"),
        ([], "array"),
        ([9], "unknown"),
        ([True], "unknown"),
        (["0"], "unknown"),
        ([1], "2 elements"),
        ([1, 2, 3], "2 elements"),
        ([2, 0], "1 element"),
        ([0, "m", None], "4 or 5"),
        ([0, "", None, 0, 1], "method"),
        ([0, 5, None, 0, 1], "method"),
        ([0, "m" * (MAX_METHOD_BYTES + 1), None, 0, 1], "longer"),
        ([0, "m", -1, 0, 1], "timeout"),
        ([0, "m", 1.5, 0, 1], "timeout"),
        ([0, "m", True, 0, 1], "timeout"),
        ([0, "m", None, 4, 1], "shape"),
        ([0, "m", None, 0], "carries the request"),
        ([0, "m", None, 2, 1], "no request"),
        ([3, -1, ""], "code"),
        ([3, 0, b"bytes"], "message"),
        ([3, 0], "3 or 4"),
    ],
)
def test_malformed_frames_raise_decode_error(value: object, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_frame(raw(value), max_bytes=LIMIT)


# -- safe msgpack ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        raw(msgpack.ExtType(5, b"abc")),
        raw(msgpack.ExtType(5, b"")),
        raw(msgpack.Timestamp(1, 2)),
        b"\xd6\xff\x00\x00\x00\x01",  # timestamp 32 built by hand
        b"\xa2\xff\xfe",  # invalid UTF-8 in a str
        b"\x81\x01\x02",  # int map key
        b"\x81\xc0\x02",  # nil map key
        b"\x91" * 5000 + b"\xc0",  # nesting
        b"\xc1",  # never-used byte
        b"\x92\x01",  # truncated
        b"\x01\x02",  # trailing bytes
        b"",
    ],
)
def test_unsafe_or_malformed_msgpack_is_refused(data: bytes) -> None:
    with pytest.raises(DecodeError):
        unpack(data, max_bytes=LIMIT)


def test_lengths_are_bounded_by_the_limit() -> None:
    with pytest.raises(MessageTooLarge):
        unpack(raw(b"x" * 2000), max_bytes=1024)
    # a length that claims more than the body holds
    with pytest.raises(DecodeError):
        unpack(b"\xc6\x7f\xff\xff\xff" + b"x" * 10, max_bytes=LIMIT)
    with pytest.raises(DecodeError):
        unpack(b"\xdd\x7f\xff\xff\xff", max_bytes=LIMIT)


def test_integers_are_64_bit() -> None:
    assert unpack(pack(2**64 - 1), max_bytes=LIMIT) == 2**64 - 1
    assert unpack(pack(-(2**63)), max_bytes=LIMIT) == -(2**63)
    with pytest.raises(SchemaError, match="64-bit"):
        pack(2**64)
    with pytest.raises(SchemaError, match="64-bit"):
        pack(-(2**63) - 1)
    with pytest.raises(SchemaError):
        pack({1, 2})


# -- frame splitting -----------------------------------------------------------------------------
def test_frame_decoder_splits_bytes_fed_one_at_a_time() -> None:
    frames = [encode_message(i, max_bytes=LIMIT) for i in range(3)] + [
        encode_message(b"x" * 300, max_bytes=LIMIT)
    ]
    decoder = FrameDecoder(max_bytes=LIMIT)
    bodies = []
    for byte in b"".join(frames):
        decoder.feed(bytes([byte]))
        while (body := decoder.next_frame()) is not None:
            bodies.append(body)
    assert [decode_frame(b, max_bytes=LIMIT) for b in bodies] == [
        Message(0), Message(1), Message(2), Message(b"x" * 300)
    ]
    assert decoder.buffered == 0


def test_frame_decoder_refuses_an_oversize_length_before_the_body() -> None:
    decoder = FrameDecoder(max_bytes=1024)
    decoder.feed(encode_uvarint(1025))
    with pytest.raises(MessageTooLarge) as excinfo:
        decoder.next_frame()
    assert excinfo.value.size == 1025 and excinfo.value.limit == 1024
    assert isinstance(excinfo.value, DecodeError)


def test_frame_decoder_refuses_a_bad_prefix() -> None:
    decoder = FrameDecoder(max_bytes=LIMIT)
    decoder.feed(b"\x80\x00")  # not minimal
    with pytest.raises(DecodeError):
        decoder.next_frame()
    decoder = FrameDecoder(max_bytes=LIMIT)
    decoder.feed(b"\xff" * 10)
    with pytest.raises(DecodeError):
        decoder.next_frame()


# -- properties ---------------------------------------------------------------------------------
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_decode_errors(data: bytes) -> None:
    try:
        decode_frame(data, max_bytes=128)
    except DecodeError:
        pass
    decoder = FrameDecoder(max_bytes=128)
    decoder.feed(data)
    try:
        while decoder.next_frame() is not None:
            pass
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(msgpack_values, max_size=6))
def test_structured_junk_only_raises_decode_errors(value: list[object]) -> None:
    try:
        frame = decode_frame(raw(value), max_bytes=LIMIT)
    except DecodeError:
        return
    assert isinstance(frame, Call | Message | End | Status)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40), st.none() | st.integers(0, 2**40), msgpack_values)
def test_unary_calls_roundtrip(method: str, timeout_ms: int | None, request: object) -> None:
    frame = encode_call(method, timeout_ms, Shape.UNARY, request, max_bytes=LIMIT)
    decoded = roundtrip(frame)
    assert isinstance(decoded, Call)
    assert (decoded.method, decoded.timeout_ms, decoded.shape) == (method, timeout_ms, Shape.UNARY)
    assert raw(decoded.request) == raw(request)
