"""The RPC caller: call a peer's method by name with typed requests and responses.

Unary and server-streaming calls reuse negotiated streams: a stream whose
call ended with a STATUS goes back to a small per-peer pool and carries the
next call, so a call costs one round trip instead of two (multistream-select
needs one on every new stream). A reused stream can turn out to have been
closed by the peer in the meantime; a call that finds it ended before any
reply (the peer never read the call) is retried once on a new stream.
Calls with streamed requests always use a new stream.

Every failure of a call raises :class:`~lattica_nb.errors.RpcError` (the
deadline: :class:`~lattica_nb.errors.RpcDeadlineExceeded`), except the
caller's own mistakes: a request that does not match its type
(SchemaError) or is over the size limit (LimitExceeded). Cancelling a call
(any anyio cancel scope) resets its stream, which cancels the handler.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel

from ...errors import (
    DecodeError,
    LatticaError,
    LocalProtocolError,
    MessageTooLarge,
    ProtocolNegotiationError,
    RpcDeadlineExceeded,
    RpcError,
    StatusCode,
    TransportError,
)
from ...identity import PeerId
from .channel import FramedStream, RpcHost
from .codec import (
    PROTOCOL_ID,
    Frame,
    Message,
    Shape,
    Status,
    decode_frame,
    encode_call,
    encode_end,
    encode_message,
)
from .config import RpcConfig
from .schema import Schema, schema_for

__all__ = ["ResponseStream", "RpcClient", "StreamingCall"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PRUNE_INTERVAL_S = 1.0
"""At most this often, a finished call closes the expired kept streams of every peer."""

SEND_FAILURE_GRACE_S = 1.0
"""After a failed send, how long to wait for the status the peer may have sent."""


class RpcClient:
    """Calls RPC methods on peers of ``host`` (a Node).

    ::

        client = RpcClient(node)
        resp = await client.call(peer_id, "echo", EchoReq(b"hi"), response=EchoResp)
        async with client.stream(peer_id, "count", CountReq(3), response=CountResp) as items:
            async for item in items: ...

    ``timeout_s`` of every call: None takes ``config.default_timeout_s``;
    ``math.inf`` means no deadline. The deadline is sent with the call, so
    the handler is cancelled when it passes. Use ``async with`` (or
    :meth:`aclose`) to close the streams kept for reuse.
    """

    def __init__(self, host: RpcHost, config: RpcConfig | None = None) -> None:
        self._host = host
        self.config = config or RpcConfig()
        self._idle: dict[PeerId, list[FramedStream]] = {}
        self._pruned_at = 0.0

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the streams kept for reuse."""
        idle, self._idle = self._idle, {}
        for chans in idle.values():
            for chan in chans:
                await chan.close()

    # -- calls ------------------------------------------------------------------------------
    async def call(
        self,
        peer: PeerId | str,
        method: str,
        request: object,
        *,
        response: type[T],
        timeout_s: float | None = None,
    ) -> T:
        """Call a unary method; return its response (of type ``response``)."""
        target = _as_peer(peer)
        schema: Schema[T] = schema_for(response)
        payload = _encode_request(request)
        deadline = self._deadline(timeout_s)
        with anyio.CancelScope(deadline=deadline) as scope:
            chan, frame = await self._start(target, method, Shape.UNARY, payload, deadline)
            return await self._single_result(chan, frame, schema, method)
        raise _deadline_error(method, target, scope.deadline, timeout_s, self.config)

    def stream(
        self,
        peer: PeerId | str,
        method: str,
        request: object,
        *,
        response: type[T],
        timeout_s: float | None = None,
    ) -> ResponseStream[T]:
        """Call a server-streaming method; iterate the result for its responses.

        ``async for item in client.stream(...)`` works. Leaving the loop
        early cancels the call: at once inside ``async with client.stream(...)
        as items``, or when the event loop finalizes the abandoned iterator
        in a bare ``async for``.
        """
        target = _as_peer(peer)
        payload = _encode_request(request)
        return ResponseStream(self, target, method, payload, schema_for(response),
                              self._deadline(timeout_s), timeout_s)

    async def client_stream(
        self,
        peer: PeerId | str,
        method: str,
        requests: AsyncIterable[Any] | Iterable[Any],
        *,
        response: type[T],
        timeout_s: float | None = None,
    ) -> T:
        """Call a client-streaming method with ``requests``; return its response.

        The handler may answer before it has read every request; sending
        then stops.
        """
        call: StreamingCall[T] = StreamingCall(self, _as_peer(peer), method, schema_for(response),
                             self._deadline(timeout_s), timeout_s, Shape.CLIENT_STREAM)
        async with call:
            return await call._send_all_and_result(requests)

    def bidi_stream(
        self,
        peer: PeerId | str,
        method: str,
        *,
        response: type[T],
        timeout_s: float | None = None,
    ) -> StreamingCall[T]:
        """Call a bidirectional-streaming method: ``async with client.bidi_stream(...) as call``,
        then ``await call.send(req)``, ``await call.done_writing()`` and ``async for resp in call``.
        """
        return StreamingCall(self, _as_peer(peer), method, schema_for(response),
                             self._deadline(timeout_s), timeout_s, Shape.BIDI_STREAM)

    # -- streams ------------------------------------------------------------------------------
    def _deadline(self, timeout_s: float | None) -> float:
        timeout = self.config.default_timeout_s if timeout_s is None else timeout_s
        if not timeout >= 0:
            raise LocalProtocolError("timeout_s must be >= 0 (math.inf for no deadline)")
        return anyio.current_time() + timeout

    async def _checkout(self, peer: PeerId, *, reuse: bool) -> tuple[FramedStream, bool]:
        """A stream to ``peer`` and whether it carried calls before."""
        if reuse:
            idle = self._idle.get(peer)
            now = anyio.current_time()
            while idle:
                chan = idle.pop()
                if chan.usable and now - chan.idle_since <= self.config.idle_stream_s:
                    return chan, True
                await chan.close()
        try:
            stream = await self._host.open_stream(peer, PROTOCOL_ID)
        except ProtocolNegotiationError as exc:
            raise RpcError(StatusCode.UNIMPLEMENTED,
                           f"peer {peer.short()} does not serve {PROTOCOL_ID}") from exc
        except LocalProtocolError:
            raise
        except LatticaError as exc:
            raise RpcError(StatusCode.UNAVAILABLE,
                           f"cannot open an RPC stream to {peer.short()}: {exc}") from exc
        return FramedStream(stream, max_bytes=self.config.max_message_bytes), False

    async def _checkin(self, chan: FramedStream) -> None:
        """Keep a stream whose call ended cleanly for the next call, or close it."""
        now = anyio.current_time()
        if now - self._pruned_at >= PRUNE_INTERVAL_S:
            self._pruned_at = now
            await self._prune(now)
        if not chan.usable:
            await chan.close()
            return
        idle = self._idle.setdefault(chan.peer, [])
        if len(idle) >= self.config.max_idle_streams_per_peer:
            await chan.close()
            return
        chan.idle_since = now
        idle.append(chan)

    async def _prune(self, now: float) -> None:
        """Close kept streams (of every peer) that are too old or known to be dead."""
        limit = self.config.idle_stream_s
        for peer, chans in list(self._idle.items()):
            stale = [c for c in chans if not c.usable or now - c.idle_since > limit]
            if not stale:
                continue
            chans[:] = [c for c in chans if c not in stale]
            if not chans:
                del self._idle[peer]
            for chan in stale:
                await chan.close()

    async def _start(
        self, peer: PeerId, method: str, shape: Shape, payload: object, deadline: float
    ) -> tuple[FramedStream, Frame]:
        """Send a single-request CALL and return the stream with the first frame of the reply."""
        max_bytes = self.config.max_message_bytes
        data = encode_call(method, _timeout_ms(deadline), shape, payload, max_bytes=max_bytes)
        for attempt in (0, 1):
            if attempt:
                data = encode_call(method, _timeout_ms(deadline), shape, payload,
                                   max_bytes=max_bytes)
            chan, reused = await self._checkout(
                peer, reuse=attempt == 0 and self.config.max_idle_streams_per_peer > 0
            )
            handed_over = False
            try:
                send_error: TransportError | None = None
                try:
                    await chan.send(data)
                except TransportError as exc:
                    send_error = exc
                read_error: TransportError | None = None
                body: bytes | None = None
                try:
                    if send_error is None:
                        body = await chan.read()
                    else:
                        with anyio.move_on_after(SEND_FAILURE_GRACE_S):
                            body = await chan.read()
                except TransportError as exc:
                    read_error = exc
                if body is None:
                    # Nothing came back. The peer never started our call if the stream
                    # ended cleanly or our frame did not get out.
                    unread = send_error is not None or read_error is None
                    if reused and unread:
                        logger.debug("reused RPC stream to %s had ended; retrying on a new one",
                                     peer.short())
                        continue
                    error = send_error or read_error
                    raise RpcError(
                        StatusCode.UNAVAILABLE,
                        f"{peer.short()} ended the RPC stream without answering {method!r}"
                        + (f": {error}" if error else ""),
                    ) from error
                frame = _decode(body, max_bytes, method, peer)
                handed_over = True
                return chan, frame
            except (MessageTooLarge, DecodeError) as exc:
                raise _frame_error(exc, method, peer) from exc
            finally:
                if not handed_over:
                    await chan.reset()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _single_result(
        self, chan: FramedStream, frame: Frame, schema: Schema[T], method: str
    ) -> T:
        """The response carried by a call's final STATUS; the stream is released."""
        if not isinstance(frame, Status) or (frame.code is StatusCode.OK) != frame.has_response:
            await chan.reset()
            raise RpcError(StatusCode.INTERNAL,
                           f"{chan.peer.short()} answered {method!r} with an unexpected frame")
        await self._checkin(chan)
        if frame.code is not StatusCode.OK:
            raise RpcError.from_status(frame.code, frame.message)
        try:
            return schema.decode(frame.response)
        except DecodeError as exc:
            raise RpcError(
                StatusCode.INTERNAL,
                f"the response to {method!r} from {chan.peer.short()} {exc}",
            ) from exc


class ResponseStream(Generic[T]):
    """The responses of a server-streaming call, in order. See :meth:`RpcClient.stream`."""

    def __init__(self, client: RpcClient, peer: PeerId, method: str, payload: object,
                 schema: Schema[T], deadline: float, timeout_s: float | None) -> None:
        self._client = client
        self._peer = peer
        self._method = method
        self._payload = payload
        self._schema = schema
        self._deadline = deadline
        self._timeout_s = timeout_s
        self._chan: FramedStream | None = None
        self._done = False

    async def __aenter__(self) -> ResponseStream[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        # An async generator, so that a bare ``async for`` left by ``break`` still ends
        # the call: the event loop's async-generator hook runs this ``finally``.
        try:
            while True:
                try:
                    item = await self.__anext__()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop the call early (its handler is cancelled); harmless once it ended."""
        self._done = True
        chan, self._chan = self._chan, None
        if chan is not None:
            await chan.reset()

    async def __anext__(self) -> T:
        if self._done:
            raise StopAsyncIteration
        client = self._client
        with anyio.CancelScope(deadline=self._deadline) as scope:
            try:
                if self._chan is None:
                    self._chan, frame = await client._start(
                        self._peer, self._method, Shape.SERVER_STREAM, self._payload,
                        self._deadline,
                    )
                else:
                    frame = await self._next_frame(self._chan)
            except BaseException:
                await self.aclose()
                raise
            chan = self._chan
            if isinstance(frame, Message):
                try:
                    return self._schema.decode(frame.payload)
                except DecodeError as exc:
                    await self.aclose()
                    raise RpcError(
                        StatusCode.INTERNAL,
                        f"a response of {self._method!r} from {self._peer.short()} {exc}",
                    ) from exc
            self._done = True
            self._chan = None
            if not isinstance(frame, Status) or frame.has_response:
                await chan.reset()
                raise RpcError(StatusCode.INTERNAL, f"{self._peer.short()} answered "
                               f"{self._method!r} with an unexpected frame")
            await client._checkin(chan)
            if frame.code is not StatusCode.OK:
                raise RpcError.from_status(frame.code, frame.message)
            raise StopAsyncIteration
        await self.aclose()
        raise _deadline_error(self._method, self._peer, scope.deadline, self._timeout_s,
                              client.config)

    async def _next_frame(self, chan: FramedStream) -> Frame:
        max_bytes = self._client.config.max_message_bytes
        try:
            body = await chan.read()
        except (MessageTooLarge, DecodeError) as exc:
            raise _frame_error(exc, self._method, self._peer) from exc
        except TransportError as exc:
            raise RpcError(StatusCode.UNAVAILABLE,
                           f"the stream of {self._method!r} broke: {exc}") from exc
        if body is None:
            raise RpcError(StatusCode.UNAVAILABLE, f"{self._peer.short()} ended the stream of "
                           f"{self._method!r} without a status")
        return _decode(body, max_bytes, self._method, self._peer)


class StreamingCall(Generic[T]):
    """A call with streamed requests (bidirectional, or client-streaming).

    ``send`` requests, ``done_writing`` when there are no more, and iterate
    the call for the responses; the iteration ends at the OK status and
    raises RpcError for any other. Leaving the ``async with`` block before
    the status arrived cancels the call.
    """

    def __init__(self, client: RpcClient, peer: PeerId, method: str, schema: Schema[T],
                 deadline: float, timeout_s: float | None, shape: Shape) -> None:
        self._client = client
        self._peer = peer
        self._method = method
        self._schema = schema
        self._deadline = deadline
        self._timeout_s = timeout_s
        self._shape = shape
        self._chan: FramedStream | None = None
        self._wrote_end = False
        self._status: Status | None = None

    async def __aenter__(self) -> StreamingCall[T]:
        with anyio.CancelScope(deadline=self._deadline) as scope:
            chan, _ = await self._client._checkout(self._peer, reuse=False)
            self._chan = chan
            data = encode_call(self._method, _timeout_ms(self._deadline), self._shape, None,
                               max_bytes=self._client.config.max_message_bytes)
            try:
                await chan.send(data)
            except TransportError as exc:
                await chan.reset()
                raise RpcError(StatusCode.UNAVAILABLE, f"cannot call {self._method!r}: {exc}"
                               ) from exc
            except BaseException:
                await chan.reset()
                raise
            return self
        if self._chan is not None:
            await self._chan.reset()
        raise self._timed_out(scope.deadline)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        chan, self._chan = self._chan, None
        if chan is None:
            return
        if exc is None and self._status is not None and self._wrote_end:
            await chan.close()
        else:
            await chan.reset()

    def _require(self) -> FramedStream:
        if self._chan is None:
            raise LocalProtocolError("use the call inside 'async with'")
        return self._chan

    def _timed_out(self, deadline: float) -> RpcDeadlineExceeded:
        return _deadline_error(self._method, self._peer, deadline, self._timeout_s,
                               self._client.config)

    async def send(self, request: object) -> None:
        """Send one request (its type is checked against the request's own class)."""
        chan = self._require()
        if self._wrote_end:
            raise LocalProtocolError("done_writing() was called; no more requests can be sent")
        payload = _encode_request(request)
        data = encode_message(payload, max_bytes=self._client.config.max_message_bytes)
        await self._write(chan, data)

    async def done_writing(self) -> None:
        """Tell the handler there are no more requests."""
        chan = self._require()
        if not self._wrote_end:
            self._wrote_end = True
            await self._write(chan, encode_end())

    async def _write(self, chan: FramedStream, data: bytes) -> None:
        with anyio.CancelScope(deadline=self._deadline) as scope:
            try:
                await chan.send(data)
                await anyio.lowlevel.checkpoint()  # a send may not yield; let the reader run
            except TransportError as exc:
                raise RpcError(StatusCode.UNAVAILABLE,
                               f"the stream of {self._method!r} broke: {exc}") from exc
            except BaseException:
                await chan.reset()
                raise
            return
        await chan.reset()
        raise self._timed_out(scope.deadline)

    def __aiter__(self) -> StreamingCall[T]:
        return self

    async def __anext__(self) -> T:
        frame = await self._read()
        if isinstance(frame, Message):
            try:
                return self._schema.decode(frame.payload)
            except DecodeError as exc:
                raise RpcError(
                    StatusCode.INTERNAL,
                    f"a response of {self._method!r} from {self._peer.short()} {exc}",
                ) from exc
        if frame is None or frame.has_response:
            raise RpcError(StatusCode.INTERNAL, f"{self._peer.short()} answered "
                           f"{self._method!r} with an unexpected frame")
        if frame.code is not StatusCode.OK:
            raise RpcError.from_status(frame.code, frame.message)
        raise StopAsyncIteration

    async def _read(self) -> Message | Status | None:
        """The next MESSAGE or the STATUS (None once the status was read)."""
        if self._status is not None:
            if self._status.code is StatusCode.OK:
                raise StopAsyncIteration
            raise RpcError.from_status(self._status.code, self._status.message)
        chan = self._require()
        max_bytes = self._client.config.max_message_bytes
        with anyio.CancelScope(deadline=self._deadline) as scope:
            try:
                body = await chan.read()
            except (MessageTooLarge, DecodeError) as exc:
                await chan.reset()
                raise _frame_error(exc, self._method, self._peer) from exc
            except TransportError as exc:
                raise RpcError(StatusCode.UNAVAILABLE,
                               f"the stream of {self._method!r} broke: {exc}") from exc
            if body is None:
                raise RpcError(StatusCode.UNAVAILABLE, f"{self._peer.short()} ended the stream "
                               f"of {self._method!r} without a status")
            frame = _decode(body, max_bytes, self._method, self._peer)
            if isinstance(frame, Status):
                self._status = frame
                return frame
            if isinstance(frame, Message):
                return frame
            raise RpcError(StatusCode.INTERNAL, f"{self._peer.short()} sent a caller's frame")
        await chan.reset()
        raise self._timed_out(scope.deadline)

    async def _send_all_and_result(self, requests: AsyncIterable[Any] | Iterable[Any]) -> T:
        """Client streaming: send ``requests`` while waiting for the single response."""
        local_error: BaseException | None = None

        async def pump() -> None:
            nonlocal local_error
            try:
                if isinstance(requests, AsyncIterable):
                    async for request in requests:
                        await self.send(request)
                else:
                    for request in requests:
                        await self.send(request)
                await self.done_writing()
            except RpcError:
                pass  # the stream broke or timed out; reading the status will say so
            except Exception as exc:
                local_error = exc
                tg.cancel_scope.cancel()

        result: Status | Message | None = None
        read_error: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            try:
                result = await self._read()
            except Exception as exc:
                read_error = exc
            tg.cancel_scope.cancel()
        if local_error is not None:
            raise local_error
        if read_error is not None:
            raise read_error
        if not isinstance(result, Status) or (result.code is StatusCode.OK) != result.has_response:
            raise RpcError(StatusCode.INTERNAL, f"{self._peer.short()} answered "
                           f"{self._method!r} with an unexpected frame")
        if not self._wrote_end:
            self._wrote_end = True  # the handler ended the call; nothing more to say
        if result.code is not StatusCode.OK:
            raise RpcError.from_status(result.code, result.message)
        try:
            return self._schema.decode(result.response)
        except DecodeError as exc:
            raise RpcError(
                StatusCode.INTERNAL, f"the response to {self._method!r} from "
                f"{self._peer.short()} {exc}",
            ) from exc


# -- helpers ---------------------------------------------------------------------------------
def _encode_request(request: object) -> object:
    schema: Schema[Any] = schema_for(type(request))
    return schema.encode(request)


def _as_peer(peer: PeerId | str) -> PeerId:
    return PeerId.from_string(peer) if isinstance(peer, str) else peer


def _timeout_ms(deadline: float) -> int | None:
    if math.isinf(deadline):
        return None
    return max(0, math.ceil((deadline - anyio.current_time()) * 1000))


def _decode(body: bytes, max_bytes: int, method: str, peer: PeerId) -> Frame:
    try:
        return decode_frame(body, max_bytes=max_bytes)
    except DecodeError as exc:
        raise _frame_error(exc, method, peer) from exc


def _frame_error(exc: DecodeError, method: str, peer: PeerId) -> RpcError:
    if isinstance(exc, MessageTooLarge):
        return RpcError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"the reply to {method!r} from {peer.short()} is a {exc.size}-byte frame, over this "
            f"client's limit of {exc.limit} bytes (RpcConfig.max_message_bytes)",
        )
    return RpcError(StatusCode.INTERNAL,
                    f"{peer.short()} sent a malformed RPC frame for {method!r}: {exc}")


def _deadline_error(method: str, peer: PeerId, deadline: float, timeout_s: float | None,
                    config: RpcConfig) -> RpcDeadlineExceeded:
    timeout = config.default_timeout_s if timeout_s is None else timeout_s
    return RpcDeadlineExceeded(
        f"{method!r} on {peer.short()} did not finish within {timeout:g} s"
    )
