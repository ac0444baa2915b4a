"""Length-prefixed frames over in-memory streams."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.errors import ConnectionClosedError, DecodeError, LatticaError
from lattica_nb.testing.streams import memory_stream_pair
from lattica_nb.wire.framing import FrameReader, frame, read_frame, write_frame
from lattica_nb.wire.varint import encode_uvarint

pytestmark = pytest.mark.anyio


def test_frame_bytes() -> None:
    assert frame(b"") == b"\x00"
    assert frame(b"abc") == b"\x03abc"
    assert frame(b"x" * 300)[:2] == b"\xac\x02"


async def test_read_frame_does_not_over_read() -> None:
    a, b = memory_stream_pair()
    await a.send(frame(b"one") + frame(b"two") + b"raw tail")
    assert await read_frame(b, max_bytes=10) == b"one"
    assert await read_frame(b, max_bytes=10) == b"two"
    assert await b.receive() == b"raw tail"


async def test_frame_reader_reads_many_and_keeps_the_rest() -> None:
    a, b = memory_stream_pair()
    await a.send(b"".join(frame(bytes([i]) * i) for i in range(50)) + b"tail")
    await a.send_eof()
    reader = FrameReader(b, max_bytes=100)
    for i in range(50):
        assert await reader.read() == bytes([i]) * i
    assert await reader.stream.receive() == b"tail"
    assert await reader.read_or_none() is None


async def test_frame_reader_with_one_byte_reads() -> None:
    a, b = memory_stream_pair(max_receive_bytes=1)
    await a.send(frame(b"x" * 200) + frame(b"y"))
    reader = FrameReader(b, max_bytes=1000)
    assert await reader.read() == b"x" * 200
    assert await reader.read() == b"y"


async def test_oversize_is_refused_before_the_body_arrives() -> None:
    a, b = memory_stream_pair()
    await a.send(encode_uvarint(1_000_000))  # no body is ever sent
    with pytest.raises(DecodeError, match="1000000 bytes exceeds the limit of 1024"):
        await read_frame(b, max_bytes=1024)
    a, b = memory_stream_pair()
    await a.send(encode_uvarint(2000))
    with pytest.raises(DecodeError, match="2000 bytes"):
        await FrameReader(b, max_bytes=1024).read()


@pytest.mark.parametrize("use_reader", [False, True])
async def test_eof_mid_frame_and_between_frames(use_reader: bool) -> None:
    a, b = memory_stream_pair()
    await a.send(frame(b"complete") + b"\x05ab")
    await a.send_eof()
    reader = FrameReader(b, max_bytes=100)

    async def read() -> bytes:
        if use_reader:
            return await reader.read()
        return await read_frame(b, max_bytes=100)

    assert await read() == b"complete"
    with pytest.raises(DecodeError, match="got 2 of 5 bytes"):
        await read()

    a, b = memory_stream_pair()
    await a.send_eof()
    with pytest.raises(ConnectionClosedError):
        await read_frame(b, max_bytes=100)


async def test_eof_inside_length_prefix() -> None:
    a, b = memory_stream_pair()
    await a.send(b"\x80")
    await a.send_eof()
    with pytest.raises(DecodeError, match="length prefix"):
        await read_frame(b, max_bytes=100)


async def test_cancelled_read_keeps_its_bytes() -> None:
    a, b = memory_stream_pair()
    reader = FrameReader(b, max_bytes=100)
    await a.send(b"\x05ab")  # a partial frame
    with anyio.move_on_after(0.01):
        await reader.read()
    await a.send(b"cde")
    assert await reader.read() == b"abcde"


async def test_write_frame_round_trip_and_broken_stream() -> None:
    a, b = memory_stream_pair()
    await write_frame(a, b"hello")
    assert await read_frame(b, max_bytes=5) == b"hello"
    await b.aclose()
    with pytest.raises(ConnectionClosedError):
        await write_frame(a, b"more")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_reader_on_random_bytes_raises_only_lattica_errors(data: bytes) -> None:
    async def run() -> None:
        a, b = memory_stream_pair()
        await a.send(data)
        await a.send_eof()
        reader = FrameReader(b, max_bytes=16)
        try:
            while await reader.read_or_none() is not None:
                pass
        except LatticaError:
            pass

    anyio.run(run)
