"""anyio driver of a :class:`~.session.YamuxSession` over any ByteStream.

It holds no protocol logic: one reader task feeds the session what the
underlying stream delivers, one writer task sends what the session queued
(frames produced meanwhile coalesce into one ``send``), and a timer task
fires keepalive pings. :class:`YamuxStream` objects hold the received bytes
and report reads back to the session, which returns credit to the peer.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import MutableMapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from ...errors import (
    ConnectionClosedError,
    LatticaError,
    LocalProtocolError,
    StreamResetError,
)
from ...identity import PeerId
from ...multiaddr import Multiaddr
from . import events as ev
from .session import YamuxSession
from .settings import YamuxSettings
from .stream import YamuxStream

__all__ = ["YamuxConnection", "YamuxStream"]

logger = logging.getLogger(__name__)

RECEIVE_BYTES = 256 * 1024
"""Largest read from the underlying stream (asyncio reads TCP in 256 KiB pieces)."""

_CLOSE_ERRORS = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.IncompleteRead,
    OSError,
    LatticaError,
)


class _PeerLog(logging.LoggerAdapter[logging.Logger]):
    """Prefix every message with the short peer id."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[{self.extra['peer'] if self.extra else '?'}] {msg}", kwargs


class YamuxConnection:
    """A libp2p connection multiplexed with Yamux over one secured byte stream.

    The owner runs it with ``await task_group.start(conn.run)``; ``run``
    returns once the connection is closed and the underlying stream with it.
    Satisfies :class:`~lattica_nb.transport.base.Connection`.
    """

    transport = "tcp"

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        is_initiator: bool,
        remote_peer: PeerId,
        local_addr: Multiaddr,
        remote_addr: Multiaddr,
        settings: YamuxSettings | None = None,
    ) -> None:
        self._stream = stream
        self._settings = settings or YamuxSettings()
        self._session = YamuxSession(
            is_initiator=is_initiator, settings=self._settings, now=anyio.current_time()
        )
        self._remote_peer = remote_peer
        self._local_addr = local_addr
        self._remote_addr = remote_addr
        self._streams: dict[int, YamuxStream] = {}
        self._incoming: deque[YamuxStream] = deque()
        self._incoming_ready = anyio.Event()
        self._can_open = anyio.Event()
        self._write_wanted = anyio.Event()
        self._drained = anyio.Event()
        self._timer_changed = anyio.Event()
        self._terminated = anyio.Event()
        self._writer_done = anyio.Event()
        self._closed = anyio.Event()
        self._running = False
        self.close_error: LatticaError | None = None
        self._log = _PeerLog(logger, {"peer": remote_peer.short()})

    # -- Connection protocol -----------------------------------------------------------
    @property
    def remote_peer(self) -> PeerId:
        return self._remote_peer

    @property
    def remote_addr(self) -> Multiaddr:
        return self._remote_addr

    @property
    def local_addr(self) -> Multiaddr:
        return self._local_addr

    @property
    def is_initiator(self) -> bool:
        return self._session.is_initiator

    @property
    def is_closed(self) -> bool:
        return self._session.is_terminated

    @property
    def open_stream_count(self) -> int:
        return len(self._streams)

    @property
    def rtt_s(self) -> float | None:
        """Round-trip time of the last answered keepalive ping."""
        return self._session.rtt_s

    async def open_stream(self) -> YamuxStream:
        """Open a stream; waits while max_ack_backlog of ours are unacknowledged."""
        session = self._session
        await anyio.lowlevel.checkpoint()
        while True:
            if session.is_terminated:
                raise self._closed_error()
            if session.ack_backlog < self._settings.max_ack_backlog:
                break
            if self._can_open.is_set():
                self._can_open = anyio.Event()
            await self._can_open.wait()
        stream_id = session.open_stream()
        stream = YamuxStream(self, stream_id)
        self._streams[stream_id] = stream
        self._wake_writer()
        return stream

    async def accept_stream(self) -> YamuxStream:
        """Next stream the peer opened; ConnectionClosedError once the connection is closed."""
        while not self._incoming:
            if self._session.is_terminated:
                raise self._closed_error()
            if self._incoming_ready.is_set():
                self._incoming_ready = anyio.Event()
            await self._incoming_ready.wait()
        stream = self._incoming.popleft()
        self._session.acknowledge(stream.stream_id)
        self._wake_writer()
        return stream

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def aclose(self, reason: str = "") -> None:
        """Send GoAway (code 0), flush it within close_timeout_s, close the underlying stream."""
        if not self._session.is_terminated:
            self._log.debug("closing yamux connection: %s", reason or "no reason given")
            self._session.close()
            self._process()
        if self._running:
            await self._closed.wait()
        elif not self._closed.is_set():
            with anyio.move_on_after(self._settings.close_timeout_s, shield=True):
                data = self._session.data_to_send()
                if data:
                    try:
                        await self._stream.send(data)
                    except _CLOSE_ERRORS:
                        pass
            await self._close_underlying()

    # -- tasks ---------------------------------------------------------------------------
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read, write and keep alive until the connection closes; then close the stream."""
        if self._running or self._closed.is_set():
            raise LocalProtocolError("YamuxConnection.run() was already called")
        self._running = True
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_loop)
                tg.start_soon(self._write_loop)
                if self._settings.keepalive_s is not None:
                    tg.start_soon(self._timer_loop)
                task_status.started()
                await self._terminated.wait()
                with anyio.move_on_after(self._settings.close_timeout_s):
                    await self._writer_done.wait()
                tg.cancel_scope.cancel()
        finally:
            if not self._session.is_terminated:
                self._session.connection_lost(ConnectionClosedError("the connection was shut down"))
                self._process()
            await self._close_underlying()

    async def _read_loop(self) -> None:
        session = self._session
        stream = self._stream
        try:
            while not session.is_terminated:
                data = await stream.receive(RECEIVE_BYTES)
                session.receive_data(data, anyio.current_time())
                self._process()
        except anyio.EndOfStream:
            self._lost(ConnectionClosedError("the peer closed the connection without a GoAway"))
        except _CLOSE_ERRORS as exc:
            self._lost(exc)

    async def _write_loop(self) -> None:
        session = self._session
        stream = self._stream
        try:
            while True:
                while not session.has_output:
                    if session.is_terminated:
                        return
                    self._write_wanted = anyio.Event()
                    await self._write_wanted.wait()
                data = session.data_to_send()
                drained, self._drained = self._drained, anyio.Event()
                drained.set()
                await stream.send(data)
        except _CLOSE_ERRORS as exc:
            self._lost(exc)
        finally:
            self._writer_done.set()

    async def _timer_loop(self) -> None:
        session = self._session
        while (deadline := session.get_timer()) is not None:
            self._timer_changed = anyio.Event()
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                await self._timer_changed.wait()
            session.handle_timer(anyio.current_time())
            self._process()

    # -- event routing -------------------------------------------------------------------
    def _process(self) -> None:
        session = self._session
        streams = self._streams
        while (event := session.next_event()) is not None:
            if type(event) is ev.StreamData:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._on_data(event.data)
            elif type(event) is ev.StreamWritable:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._writable.set()
            else:
                self._on_event(event)
        if session.has_output:
            self._write_wanted.set()
        if session.ack_backlog < self._settings.max_ack_backlog:
            self._can_open.set()

    def _on_event(self, event: ev.YamuxEvent) -> None:
        if isinstance(event, ev.StreamOpened):
            stream = YamuxStream(self, event.stream_id)
            self._streams[event.stream_id] = stream
            self._incoming.append(stream)
            self._incoming_ready.set()
        elif isinstance(event, ev.StreamEnded):
            found = self._streams.get(event.stream_id)
            if found is not None:
                found._on_end()
                self._maybe_forget(found)
        elif isinstance(event, ev.StreamReset):
            found = self._streams.get(event.stream_id)
            if found is not None:
                found._on_error(
                    StreamResetError(f"yamux stream {event.stream_id} reset by the peer")
                )
                self._maybe_forget(found)
                if found in self._incoming:  # never seen by the application: drop it
                    self._incoming.remove(found)
        elif isinstance(event, ev.PingAnswered):
            self._log.debug("keepalive ping answered in %.1f ms", event.rtt_s * 1000)
            self._timer_changed.set()
        elif isinstance(event, ev.ConnectionTerminated):
            self._on_terminated(event.error)

    def _on_terminated(self, error: LatticaError | None) -> None:
        self.close_error = error
        if error is not None:
            self._log.info("yamux connection closed: %s", error)
        closed = self._closed_error()
        for stream in self._streams.values():
            stream._on_error(closed)
        self._streams.clear()
        self._incoming.clear()
        for event in (
            self._incoming_ready,
            self._can_open,
            self._write_wanted,
            self._drained,
            self._timer_changed,
            self._terminated,
        ):
            event.set()

    def _lost(self, exc: BaseException) -> None:
        if self._session.is_terminated:
            return
        if isinstance(exc, LatticaError):
            error: LatticaError = exc  # e.g. the secure channel's DecodeError
        else:
            error = ConnectionClosedError(f"the connection failed: {exc!r}")
            error.__cause__ = exc
        self._session.connection_lost(error)
        self._process()

    # -- called by streams ----------------------------------------------------------------
    def _wake_writer(self) -> None:
        self._write_wanted.set()

    async def _wait_drained(self) -> None:
        await self._drained.wait()

    def _consumed(self, stream: YamuxStream, nbytes: int) -> None:
        if self._streams.get(stream.stream_id) is not stream:
            return  # finished (or its id reused by the peer): no credit to return
        session = self._session
        session.consumed(stream.stream_id, nbytes)
        if session.has_output:
            self._write_wanted.set()

    def _maybe_forget(self, stream: YamuxStream) -> None:
        if stream._finished and self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
        if self._session.has_output:
            self._write_wanted.set()
        if self._session.ack_backlog < self._settings.max_ack_backlog:
            self._can_open.set()

    # -- helpers ------------------------------------------------------------------------------
    async def _close_underlying(self) -> None:
        with anyio.move_on_after(self._settings.close_timeout_s, shield=True):
            try:
                await self._stream.aclose()
            except _CLOSE_ERRORS:
                pass
        self._closed.set()

    def _closed_error(self) -> ConnectionClosedError:
        error = self.close_error or self._session.close_error
        if isinstance(error, ConnectionClosedError):
            return error
        if error is None:
            return ConnectionClosedError("the yamux connection is closed")
        closed = ConnectionClosedError(f"the yamux connection is closed: {error}")
        closed.__cause__ = error
        return closed

    def __repr__(self) -> str:
        return f"<YamuxConnection {self._remote_peer.short()} {self._remote_addr}>"
