"""uvarint length-prefixed messages over a byte stream.

A frame is ``uvarint(len(data)) || data``, the framing libp2p protocols
(identify, Kademlia, circuit relay, DCUtR) put around their protobufs.

Two ways to read:

* :func:`read_frame` works on any ``ByteReceiveStream`` and never consumes
  bytes past the frame: it asks the stream for the varint one byte at a time
  and then for exactly the body's remaining length (anyio streams return at
  most ``max_bytes``). Good for one message on a stream that other code keeps
  reading.
* :class:`FrameReader` is created once per stream and reads ahead in 64 KiB
  chunks, so many small frames cost one ``receive`` per chunk. Bytes read
  past a frame are pushed back into the
  :class:`~anyio.streams.buffered.BufferedByteReceiveStream` it holds
  (:attr:`FrameReader.stream`); read the rest of the stream through it.

The size limit is checked as soon as the length prefix is known, before the
body is read.
"""

from __future__ import annotations

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream
from anyio.streams.buffered import BufferedByteReceiveStream

from ..errors import ConnectionClosedError, DecodeError
from .varint import MAX_VARINT_BYTES, encode_uvarint, try_decode_uvarint

__all__ = [
    "FrameReader",
    "frame",
    "read_frame",
    "read_frame_or_none",
    "receive_exactly",
    "write_frame",
]

_READ_AHEAD_BYTES = 65536


def frame(data: bytes | bytearray | memoryview) -> bytes:
    """Prefix ``data`` with its length as an unsigned varint."""
    return encode_uvarint(len(data)) + bytes(data)


async def write_frame(stream: ByteSendStream, data: bytes | bytearray | memoryview) -> None:
    """Send one length-prefixed frame (a single ``send`` call)."""
    try:
        await stream.send(frame(data))
    except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise ConnectionClosedError("stream closed while writing a frame") from exc


async def receive_exactly(stream: ByteReceiveStream, count: int) -> bytes:
    """Receive ``count`` bytes, never asking the stream for more.

    Returns fewer than ``count`` bytes only if the stream ended first, so the
    caller can tell a clean end (``b""``) from a truncated one.
    """
    parts: list[bytes] = []
    got = 0
    while got < count:
        try:
            chunk = await stream.receive(count - got)
        except anyio.EndOfStream:
            break
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise ConnectionClosedError("stream closed while reading") from exc
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


async def _read_length(stream: ByteReceiveStream, max_bytes: int) -> int | None:
    """Read a frame's varint length; None on a clean end before its first byte."""
    prefix = bytearray()
    while True:
        byte = await receive_exactly(stream, 1)
        if not byte:
            if prefix:
                raise DecodeError("stream ended inside a frame's length prefix")
            return None
        prefix += byte
        decoded = try_decode_uvarint(prefix)
        if decoded is not None:
            length = decoded[0]
            break
        if len(prefix) >= MAX_VARINT_BYTES:  # pragma: no cover - try_decode raises first
            raise DecodeError("frame length prefix is too long")
    if length > max_bytes:
        raise DecodeError(f"frame of {length} bytes exceeds the limit of {max_bytes} bytes")
    return length


async def _read_body(stream: ByteReceiveStream, length: int) -> bytes:
    body = await receive_exactly(stream, length)
    if len(body) < length:
        raise DecodeError(f"stream ended inside a frame: got {len(body)} of {length} bytes")
    return body


async def read_frame_or_none(stream: ByteReceiveStream, *, max_bytes: int) -> bytes | None:
    """Read one frame; return None if the stream ends cleanly before it starts."""
    length = await _read_length(stream, max_bytes)
    if length is None:
        return None
    return await _read_body(stream, length)


async def read_frame(stream: ByteReceiveStream, *, max_bytes: int) -> bytes:
    """Read one frame of at most ``max_bytes`` bytes without over-reading.

    Raises DecodeError if the announced length exceeds ``max_bytes`` (before
    the body is read) or the stream ends inside the frame, and
    ConnectionClosedError if the stream ends before the frame starts.
    """
    data = await read_frame_or_none(stream, max_bytes=max_bytes)
    if data is None:
        raise ConnectionClosedError("stream ended before the next frame")
    return data


class FrameReader:
    """Reads consecutive frames from one stream, reading ahead in large chunks.

    Create one per stream and keep using it. Bytes read past the current frame
    are pushed back into a :class:`~anyio.streams.buffered.BufferedByteReceiveStream`
    (:attr:`stream`), where the next :meth:`read` finds them; read whatever
    follows the frames from :attr:`stream` too. If a read is cancelled (for
    instance by a timeout), the bytes it had taken are pushed back as well.
    """

    __slots__ = ("_max_bytes", "_pushed_back", "_stream")

    def __init__(self, stream: ByteReceiveStream, *, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        if isinstance(stream, BufferedByteReceiveStream):
            self._stream = stream
        else:
            self._stream = BufferedByteReceiveStream(stream)
        self._max_bytes = max_bytes
        self._pushed_back = 0

    @property
    def stream(self) -> BufferedByteReceiveStream:
        """The buffered stream; read any bytes after the frames from here."""
        return self._stream

    async def _receive_chunk(self) -> bytes | None:
        # Ask for exactly what we pushed back, if anything, so the buffer is
        # drained in one piece and later chunks come straight from the stream.
        size = self._pushed_back or _READ_AHEAD_BYTES
        self._pushed_back = 0
        try:
            return await self._stream.receive(size)
        except anyio.EndOfStream:
            return None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise ConnectionClosedError("stream closed while reading a frame") from exc

    def _push_back(self, data: bytes | bytearray) -> None:
        if data:
            self._stream.feed_data(data)
            self._pushed_back += len(data)

    async def read_or_none(self, *, max_bytes: int | None = None) -> bytes | None:
        """The next frame, or None if the stream ends cleanly between frames."""
        limit = self._max_bytes if max_bytes is None else max_bytes
        pending = bytearray()
        try:
            while (decoded := try_decode_uvarint(pending)) is None:
                chunk = await self._receive_chunk()
                if chunk is None:
                    if pending:
                        raise DecodeError("stream ended inside a frame's length prefix")
                    return None
                pending += chunk
            length, start = decoded
            if length > limit:
                raise DecodeError(f"frame of {length} bytes exceeds the limit of {limit} bytes")
            end = start + length
            while len(pending) < end:
                chunk = await self._receive_chunk()
                if chunk is None:
                    raise DecodeError(
                        f"stream ended inside a frame: got {len(pending) - start} of {length} bytes"
                    )
                pending += chunk
        except BaseException:
            self._push_back(pending)
            raise
        body = bytes(pending[start:end])
        self._push_back(pending[end:])
        return body

    async def read(self, *, max_bytes: int | None = None) -> bytes:
        """The next frame; ConnectionClosedError if the stream has ended."""
        data = await self.read_or_none(max_bytes=max_bytes)
        if data is None:
            raise ConnectionClosedError("stream ended before the next frame")
        return data
