"""A connected pair of in-memory byte streams for tests.

``memory_stream_pair()`` returns two :class:`anyio.abc.ByteStream` objects
wired back to back, like the two ends of a QUIC or Yamux stream: what one
sends the other receives, ``send_eof()`` half-closes one direction, and
``aclose()`` closes both directions of one end. Each direction buffers at most
``buffer_bytes``; a sender blocks while the buffer is full (backpressure).
``max_receive_bytes`` caps what one ``receive`` returns, to make a reader see
data in small pieces (a tiny *buffer* would instead deadlock protocols whose
both sides write before they read, as with any real stream whose buffers are
smaller than the messages).
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
from anyio.abc import ByteStream

__all__ = ["MemoryByteStream", "memory_stream_pair"]

DEFAULT_BUFFER_BYTES = 64 * 1024


class _Pipe:
    """One direction: a bounded byte buffer with EOF and close flags."""

    __slots__ = ("_readable", "_writable", "buf", "capacity", "eof", "reader_closed")

    def __init__(self, capacity: int) -> None:
        self.buf = bytearray()
        self.capacity = capacity
        self.eof = False
        self.reader_closed = False
        self._readable = anyio.Event()
        self._writable = anyio.Event()

    def wake_reader(self) -> None:
        self._readable.set()

    def wake_writer(self) -> None:
        self._writable.set()

    async def wait_readable(self) -> None:
        self._readable = anyio.Event()
        await self._readable.wait()

    async def wait_writable(self) -> None:
        self._writable = anyio.Event()
        await self._writable.wait()


class MemoryByteStream(ByteStream):
    """One end of a :func:`memory_stream_pair`."""

    def __init__(self, incoming: _Pipe, outgoing: _Pipe, *, max_receive_bytes: int) -> None:
        self._incoming = incoming
        self._outgoing = outgoing
        self._max_receive_bytes = max_receive_bytes
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        max_bytes = min(max_bytes, self._max_receive_bytes)
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            pipe = self._incoming
            if pipe.buf:
                chunk = bytes(pipe.buf[:max_bytes])
                del pipe.buf[:max_bytes]
                pipe.wake_writer()
                await anyio.lowlevel.checkpoint()
                return chunk
            if pipe.eof:
                raise anyio.EndOfStream
            await pipe.wait_readable()

    async def send(self, item: bytes) -> None:
        view = memoryview(bytes(item))
        await anyio.lowlevel.checkpoint()
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            pipe = self._outgoing
            if pipe.eof:
                raise anyio.ClosedResourceError
            if pipe.reader_closed:
                raise anyio.BrokenResourceError
            if not view:
                return
            space = pipe.capacity - len(pipe.buf)
            if space > 0:
                pipe.buf += view[:space]
                view = view[space:]
                pipe.wake_reader()
                continue
            await pipe.wait_writable()

    async def send_eof(self) -> None:
        await anyio.lowlevel.checkpoint()
        if self._closed:
            raise anyio.ClosedResourceError
        self._outgoing.eof = True
        self._outgoing.wake_reader()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._outgoing.eof = True
            self._outgoing.wake_reader()
            self._incoming.reader_closed = True
            self._incoming.buf.clear()
            self._incoming.wake_writer()
        await anyio.lowlevel.checkpoint()


def memory_stream_pair(
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    *,
    max_receive_bytes: int = 65536,
) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected streams; each direction buffers at most ``buffer_bytes``."""
    if buffer_bytes < 1 or max_receive_bytes < 1:
        raise ValueError("buffer_bytes and max_receive_bytes must be at least 1")
    a_to_b = _Pipe(buffer_bytes)
    b_to_a = _Pipe(buffer_bytes)
    return (
        MemoryByteStream(b_to_a, a_to_b, max_receive_bytes=max_receive_bytes),
        MemoryByteStream(a_to_b, b_to_a, max_receive_bytes=max_receive_bytes),
    )
