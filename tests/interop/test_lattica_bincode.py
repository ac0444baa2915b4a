"""Unit tests of the Lattica RPC bincode envelope (tests/interop/lattica_bincode.py).

The byte strings are written out from bincode 2's specification of its
standard configuration; test_lattica_streams.py checks the same encoder and
decoder against the Lattica SDK itself.
"""

from __future__ import annotations

import pytest
from lattica_bincode import (
    MAX_MESSAGE_BYTES,
    BincodeError,
    RpcError,
    RpcRequest,
    RpcResponse,
    decode_message,
    decode_varint,
    encode_message,
    encode_varint,
)

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (250, b"\xfa"),
        (251, b"\xfb\xfb\x00"),
        (0xFFFF, b"\xfb\xff\xff"),
        (0x10000, b"\xfc\x00\x00\x01\x00"),
        (0xFFFF_FFFF, b"\xfc\xff\xff\xff\xff"),
        (0x1_0000_0000, b"\xfd\x00\x00\x00\x00\x01\x00\x00\x00"),
        ((1 << 64) - 1, b"\xfd" + b"\xff" * 8),
    ],
)
def test_varint_vectors(value, encoded):
    assert encode_varint(value) == encoded
    assert decode_varint(encoded) == (value, len(encoded))


def test_varint_wider_form_than_needed_is_accepted_like_bincode():
    assert decode_varint(b"\xfb\x05\x00") == (5, 3)


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_varint_out_of_range_is_refused(value):
    with pytest.raises(BincodeError):
        encode_varint(value)


@pytest.mark.parametrize(
    "encoded",
    [b"", b"\xfb\x01", b"\xfc\x00\x00\x00", b"\xfd" + b"\x00" * 7, b"\xfe" + b"\x00" * 16, b"\xff"],
)
def test_varint_truncated_or_invalid_marker(encoded):
    with pytest.raises(BincodeError):
        decode_varint(encoded)


def test_varint_bounded_by_max_value():
    with pytest.raises(BincodeError, match="exceeds"):
        decode_varint(b"\xfd\x00\x00\x00\x00\x01\x00\x00\x00", max_value=(1 << 32) - 1)


REQUEST = RpcRequest(id="r1", method="nb.echo", data=b"\x80\x04.", compression=None)
REQUEST_BYTES = b"\x00" + b"\x02r1" + b"\x07nb.echo" + b"\x03\x80\x04." + b"\x00"


def test_request_vector():
    assert encode_message(REQUEST) == REQUEST_BYTES
    assert decode_message(REQUEST_BYTES) == REQUEST


def test_response_with_compression_vector():
    response = RpcResponse(id="r1", data=b"xyz", compression=2)  # Zstd
    encoded = b"\x01" + b"\x02r1" + b"\x03xyz" + b"\x01\x02"
    assert encode_message(response) == encoded
    assert decode_message(encoded) == response


def test_error_vector():
    error = RpcError(id="r1", error="Service nb not found")
    encoded = b"\x02" + b"\x02r1" + b"\x14Service nb not found"
    assert encode_message(error) == encoded
    assert decode_message(encoded) == error


def test_long_payload_uses_a_wide_length():
    request = RpcRequest(id="", method="a.b", data=bytes(300))
    encoded = encode_message(request)
    assert encoded[:7] == b"\x00\x00\x03a.b\xfb" and encoded[7:9] == (300).to_bytes(2, "little")
    assert decode_message(encoded) == request


def test_utf8_text_round_trips():
    error = RpcError(id="é", error="ü ✓")
    assert decode_message(encode_message(error)) == error


def test_data_is_returned_as_opaque_bytes():
    pickled_looking = b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x01x\x94."
    decoded = decode_message(encode_message(RpcResponse(id="x", data=pickled_looking)))
    assert isinstance(decoded, RpcResponse)
    assert decoded.data == pickled_looking and isinstance(decoded.data, bytes)


@pytest.mark.parametrize("cut", range(len(REQUEST_BYTES)))
def test_every_truncation_is_refused(cut):
    with pytest.raises(BincodeError):
        decode_message(REQUEST_BYTES[:cut])


@pytest.mark.parametrize(
    ("encoded", "match"),
    [
        (REQUEST_BYTES + b"\x00", "follow the message"),
        (b"\x03\x00\x00", "variant 3"),
        (b"\x02\x01r\x01\xff", "UTF-8"),
        (b"\x01\x00\x00\x02", "Option tag 2"),
        (b"\x01\x00\x00\x01\x05", "variant 5"),
        (b"\x01\x00\xfd\x00\x00\x00\x00\x01\x00\x00\x00", "exceeds the limit"),
        (b"\x01\x00\x10abc\x00", "claims 16 bytes"),
        (b"\x02\xfc\x01\x00\x01\x00", "id of 65537 bytes exceeds"),
    ],
)
def test_malformed_messages_are_refused(encoded, match):
    with pytest.raises(BincodeError, match=match):
        decode_message(encoded)


def test_message_size_is_bounded():
    big = encode_message(RpcResponse(id="x", data=bytes(MAX_MESSAGE_BYTES)))
    with pytest.raises(BincodeError, match="exceeds"):
        decode_message(big)
    assert decode_message(big, max_bytes=len(big)) == RpcResponse(id="x",
                                                                  data=bytes(MAX_MESSAGE_BYTES))


def test_encoder_refuses_unknown_compression_and_non_messages():
    with pytest.raises(BincodeError):
        encode_message(RpcResponse(id="x", compression=5))
    with pytest.raises(BincodeError):
        encode_message("not a message")  # type: ignore[arg-type]
