"""Driver-side Yamux stream: an anyio ByteStream fed by a :class:`YamuxConnection`.

It holds the bytes received for one stream and reports reads back, so the
session can return credit to the peer. Semantics match QUIC streams here:
``receive`` raises EndOfStream after the peer's FIN and StreamResetError
after its RST (once earlier bytes are read); ``send`` waits for credit;
``aclose`` sends FIN and stops reading; ``reset`` sends RST.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from ...errors import LatticaError, StreamResetError
from ..base import RawStream

if TYPE_CHECKING:
    from .connection import YamuxConnection


class YamuxStream(RawStream):
    """One Yamux stream as an anyio ByteStream."""

    def __init__(self, connection: YamuxConnection, stream_id: int) -> None:
        self._conn = connection
        self._id = stream_id
        self._chunks: deque[bytes | memoryview] = deque()
        self._eof = False
        self._error: LatticaError | None = None
        self._readable = anyio.Event()
        self._writable = anyio.Event()
        self._write_closed = False
        self._read_closed = False

    @property
    def stream_id(self) -> int:
        return self._id

    def __repr__(self) -> str:
        return f"<YamuxStream {self._id} of {self._conn!r}>"

    # -- fed by the connection -------------------------------------------------------
    def _on_data(self, data: bytes | memoryview) -> None:
        if not self._read_closed:
            self._chunks.append(data)
            self._readable.set()

    def _on_end(self) -> None:
        self._eof = True
        self._readable.set()

    def _on_error(self, error: LatticaError) -> None:
        if self._error is None:
            self._error = error
        self._readable.set()
        self._writable.set()

    @property
    def _finished(self) -> bool:
        if self._error is not None:
            return True
        return self._write_closed and (self._read_closed or self._eof)

    # -- anyio ByteStream ------------------------------------------------------------
    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return available bytes; EndOfStream after the peer's FIN.

        Raises StreamResetError once the peer reset the stream and
        ConnectionClosedError once the connection is gone (after any bytes
        that arrived before).
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        chunks = self._chunks
        while not chunks:
            if self._eof or self._read_closed:
                raise anyio.EndOfStream
            if self._error is not None:
                raise self._error
            if self._readable.is_set():
                self._readable = anyio.Event()
            await self._readable.wait()
        chunk = chunks[0]
        if len(chunk) > max_bytes:
            view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
            out: bytes | memoryview = view[:max_bytes]
            chunks[0] = view[max_bytes:]
        else:
            out = chunk
            chunks.popleft()
        self._conn._consumed(self, len(out))
        return out if type(out) is bytes else bytes(out)

    async def send(self, item: bytes) -> None:
        """Send all of ``item``, waiting for the peer's credit and for the writer."""
        conn = self._conn
        session = conn._session
        view = memoryview(item)
        while True:
            if self._error is not None:
                raise self._error
            if self._write_closed:
                raise anyio.ClosedResourceError
            if not view:
                await anyio.lowlevel.checkpoint()
                return
            sent = session.send(self._id, view)
            if sent:
                conn._wake_writer()
                view = view[sent:]
            elif session.output_full:
                await conn._wait_drained()
            else:
                if self._writable.is_set():
                    self._writable = anyio.Event()
                await self._writable.wait()

    async def send_eof(self) -> None:
        """Finish our side (FIN); reading goes on."""
        self._finish_writing()
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Finish our side (FIN, no reset) and stop reading; done even if cancelled.

        Data that still arrives is dropped and earns no credit, so a peer that
        keeps writing stalls at one window; memory stays bounded.
        """
        self._finish_writing()
        self._read_closed = True
        self._chunks.clear()
        self._conn._session.close_stream(self._id)
        self._conn._maybe_forget(self)
        await anyio.lowlevel.checkpoint()

    async def reset(self) -> None:
        """Abort the stream in both directions (RST); done even if cancelled."""
        if self._error is None:
            self._conn._session.reset_stream(self._id)
            self._conn._wake_writer()
            self._on_error(StreamResetError(f"yamux stream {self._id} was reset locally"))
        self._chunks.clear()
        self._conn._maybe_forget(self)
        await anyio.lowlevel.checkpoint()

    def _finish_writing(self) -> None:
        if self._write_closed:
            return
        self._write_closed = True
        if self._error is None:
            self._conn._session.end_stream(self._id)
            self._conn._wake_writer()
        self._conn._maybe_forget(self)
