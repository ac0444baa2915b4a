"""Driver-side QUIC connection and stream objects (anyio).

They hold no protocol logic: a :class:`QuicConnection` feeds its
:class:`~.session.QuicSession` and routes the session's events to
:class:`QuicStream` objects; the endpoint moves datagrams and fires timers.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ...errors import ConnectionClosedError, LatticaError, StreamResetError
from ...identity import PeerId
from ...multiaddr import Multiaddr
from ..base import RawStream
from . import events as ev
from .session import Address, QuicSession

if TYPE_CHECKING:
    from .endpoint import QuicEndpoint

logger = logging.getLogger(__name__)

SEND_CHUNK_BYTES = 256 * 1024
"""Largest piece handed to aioquic at once."""

SEND_HIGH_WATER_BYTES = 1024 * 1024
"""A writer waits while more than this is buffered and unacknowledged on its stream."""

RESET_CODE_REFUSED = 0x1
RESET_CODE_CANCEL = 0x0


class QuicStream(RawStream):
    """One bidirectional QUIC stream as an anyio ByteStream."""

    def __init__(self, connection: QuicConnection, stream_id: int) -> None:
        self._conn = connection
        self._id = stream_id
        self._chunks: deque[memoryview] = deque()
        self._eof = False
        self._error: LatticaError | None = None
        self._readable = anyio.Event()
        self._writable = anyio.Event()
        self._write_closed = False
        self._read_closed = False

    @property
    def stream_id(self) -> int:
        return self._id

    # -- fed by the connection ----------------------------------------------
    def _on_data(self, data: bytes, end: bool) -> None:
        if self._read_closed:
            return
        if data:
            self._chunks.append(memoryview(data))
        if end:
            self._eof = True
        self._readable.set()

    def _on_error(self, error: LatticaError, *, reading: bool, writing: bool) -> None:
        if self._error is None:
            self._error = error
        if reading:
            self._readable.set()
        if writing:
            self._write_closed = True
            self._writable.set()

    def _on_send_progress(self) -> None:
        self._writable.set()

    @property
    def _finished(self) -> bool:
        return self._write_closed and (self._read_closed or self._eof or self._error is not None)

    # -- anyio ByteStream -----------------------------------------------------
    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._chunks:
            if self._eof or self._read_closed:
                raise anyio.EndOfStream
            if self._error is not None:
                raise self._error
            if self._readable.is_set():
                self._readable = anyio.Event()
            await self._readable.wait()
        chunk = self._chunks[0]
        if len(chunk) > max_bytes:
            out = chunk[:max_bytes]
            self._chunks[0] = chunk[max_bytes:]
        else:
            out = chunk
            self._chunks.popleft()
        self._conn._consumed(self._id, len(out))
        return bytes(out)

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while True:
            if self._write_closed:
                raise self._error or anyio.ClosedResourceError()
            buffered = self._conn._session.send_buffered(self._id)
            if buffered >= SEND_HIGH_WATER_BYTES:
                self._writable = anyio.Event()
                await self._writable.wait()
                continue
            piece = view[:SEND_CHUNK_BYTES]
            view = view[SEND_CHUNK_BYTES:]
            self._conn._session.send(self._id, bytes(piece))
            self._conn._flush()
            if not view:
                return

    async def send_eof(self) -> None:
        if self._write_closed:
            return
        self._write_closed = True
        if not self._conn.is_closed:
            self._conn._session.send(self._id, b"", end=True)
            self._conn._flush()
        self._conn._maybe_forget(self)

    async def aclose(self) -> None:
        """Finish our side (FIN) and stop reading.

        No STOP_SENDING is sent: in libp2p's request/response protocols the
        peer half-closes right after, and several implementations (py-libp2p
        among them) treat STOP_SENDING as a reset of the whole stream and
        drop the reply they were reading. Data that still arrives is dropped
        and earns no new credit, so a peer that keeps writing stalls at one
        window; memory stays bounded.
        """
        if not self._write_closed:
            await self.send_eof()
        self._read_closed = True
        self._chunks.clear()
        self._conn._maybe_forget(self)

    async def reset(self) -> None:
        """Abort the stream in both directions."""
        self._on_error(StreamResetError("stream reset locally"), reading=True, writing=True)
        self._read_closed = True
        self._chunks.clear()
        self._conn._reset(self._id)
        self._conn._maybe_forget(self)


class QuicConnection:
    """A libp2p QUIC connection, driven by a :class:`~.endpoint.QuicEndpoint`."""

    transport = "quic-v1"

    def __init__(
        self,
        endpoint: QuicEndpoint,
        session: QuicSession,
        remote: Address,
        *,
        max_incoming_streams: int,
        clock: Callable[[], float],
    ) -> None:
        self._endpoint = endpoint
        self._session = session
        self._remote = remote
        self._clock = clock
        self._streams: dict[int, QuicStream] = {}
        incoming: tuple[MemoryObjectSendStream[QuicStream], MemoryObjectReceiveStream[QuicStream]]
        incoming = anyio.create_memory_object_stream[QuicStream](max_incoming_streams)
        self._incoming_send, self._incoming_receive = incoming
        self._established = anyio.Event()
        self._closed = anyio.Event()
        self.close_error: LatticaError | None = None
        self.timer: float = math.inf
        self._highest_inbound_id = -1
        """Peer-initiated stream ids only grow (RFC 9000 §2.1): a lower one is an old stream."""

    # -- Connection protocol -----------------------------------------------------
    @property
    def remote_peer(self) -> PeerId:
        peer = self._session.remote_peer
        if peer is None:
            raise ConnectionClosedError("the QUIC handshake has not finished")
        return peer

    @property
    def remote_addr(self) -> Multiaddr:
        return Multiaddr.from_host_port("quic-v1", self._remote[0], self._remote[1])

    @property
    def local_addr(self) -> Multiaddr:
        return self._endpoint.listen_addr

    @property
    def is_initiator(self) -> bool:
        return self._session.is_client

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    @property
    def open_stream_count(self) -> int:
        return len(self._streams)

    async def open_stream(self) -> QuicStream:
        if self.is_closed:
            raise self.close_error or ConnectionClosedError("connection is closed")
        stream_id = self._session.open_stream()
        stream = QuicStream(self, stream_id)
        self._streams[stream_id] = stream
        return stream

    async def accept_stream(self) -> QuicStream:
        try:
            return await self._incoming_receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise self.close_error or ConnectionClosedError("connection is closed") from None

    async def wait_established(self) -> None:
        """Return once the handshake finished; raise its error if it failed."""
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def watch_close() -> None:
                    await self._closed.wait()
                    scope.cancel()

                tg.start_soon(watch_close)
                await self._established.wait()
                tg.cancel_scope.cancel()
        if not self._established.is_set() or self.is_closed:
            raise self.close_error or ConnectionClosedError("connection closed during handshake")

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def aclose(self, reason: str = "") -> None:
        if not self._closed.is_set():
            self._session.close(reason=reason)
            self._flush()
            self._process_events()
            self._mark_closed(None)

    # -- called by the endpoint -------------------------------------------------
    def _receive(self, data: bytes, addr: Address, now: float) -> None:
        self._session.receive_datagram(data, addr, now)
        if addr != self._remote:
            logger.debug(
                "peer %s moved from %s to %s", self._session.remote_peer, self._remote, addr
            )
            self._remote = addr

    def _on_timer(self, now: float) -> None:
        self._session.handle_timer(now)
        self._process_events()
        self._flush()

    def _process_events(self) -> None:
        session = self._session
        while (event := session.next_event()) is not None:
            if isinstance(event, ev.StreamDataReceived):
                self._on_stream_data(event)
            elif isinstance(event, ev.StreamReset):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._on_error(
                        StreamResetError(f"stream reset by peer (code {event.error_code})"),
                        reading=True,
                        writing=False,
                    )
            elif isinstance(event, ev.StopSending):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._on_error(
                        StreamResetError("peer stopped reading the stream"),
                        reading=False,
                        writing=True,
                    )
                    self._session.reset(event.stream_id, RESET_CODE_CANCEL)
            elif isinstance(event, ev.HandshakeDone):
                self._established.set()
                self._endpoint._on_established(self)
            elif isinstance(event, ev.ConnectionIdIssued):
                self._endpoint._register_cid(event.connection_id, self)
            elif isinstance(event, ev.ConnectionIdRetired):
                self._endpoint._unregister_cid(event.connection_id)
            elif isinstance(event, ev.ConnectionClosed):
                self._mark_closed(event.error)
        for stream in self._streams.values():
            stream._on_send_progress()

    def _on_stream_data(self, event: ev.StreamDataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            if event.stream_id % 4 != (1 if self._session.is_client else 0):
                return  # late data for one of our own streams we already finished
            if event.stream_id <= self._highest_inbound_id:
                return  # late data for an inbound stream we already finished
            self._highest_inbound_id = event.stream_id
            stream = QuicStream(self, event.stream_id)
            try:
                self._incoming_send.send_nowait(stream)
            except anyio.WouldBlock:
                logger.warning(
                    "peer %s opened more streams than are being accepted; resetting stream %d",
                    self._session.remote_peer, event.stream_id,
                )
                self._session.reset(event.stream_id, RESET_CODE_REFUSED)
                return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._session.reset(event.stream_id, RESET_CODE_REFUSED)
                return
            self._streams[event.stream_id] = stream
        stream._on_data(event.data, event.end)

    def _mark_closed(self, error: LatticaError | None) -> None:
        if self._closed.is_set():
            return
        self.close_error = error
        closed = error or ConnectionClosedError("connection closed")
        for stream in list(self._streams.values()):
            stream._on_error(closed, reading=True, writing=True)
        self._incoming_send.close()
        self._closed.set()
        self._established.set()  # wake a waiting dialer, who will see the error
        self._endpoint._on_closed(self)

    def _flush(self) -> None:
        session = self._session
        now = self._clock()
        self._endpoint._send_datagrams(session.datagrams_to_send(now))
        timer = session.get_timer()
        self.timer = math.inf if timer is None else timer
        self._endpoint._timer_updated(self.timer)

    # -- called by streams ----------------------------------------------------------
    def _consumed(self, stream_id: int, nbytes: int) -> None:
        if self._session.consumed(stream_id, nbytes) and not self.is_closed:
            self._flush()

    def _reset(self, stream_id: int) -> None:
        if not self.is_closed:
            self._session.reset(stream_id, RESET_CODE_CANCEL)
            self._flush()

    def _maybe_forget(self, stream: QuicStream) -> None:
        if stream._finished and self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            self._session.forget_stream(stream.stream_id)

    def __repr__(self) -> str:
        peer = self._session.remote_peer
        host, port = self._remote
        return f"<QuicConnection {peer.short() if peer else '?'} {host}:{port}>"

