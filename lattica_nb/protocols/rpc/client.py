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
from collections.abc import AsyncIterable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import anyio

from ...errors import (
    DecodeError,
    LatticaError,
    LocalProtocolError,
    MessageTooLarge,
    ProtocolNegotiationError,
    RpcError,
    StatusCode,
    TransportError,
)
from ...identity import PeerId
from .calls import (
    SEND_FAILURE_GRACE_S,
    ResponseStream,
    StreamingCall,
    deadline_error,
    decode_reply,
    encode_request,
    frame_error,
    timeout_ms_until,
)
from .channel import FramedStream, RpcHost
from .codec import PROTOCOL_ID, Frame, Shape, Status, encode_call
from .config import RpcConfig
from .schema import Schema, schema_for

__all__ = ["RpcClient"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PRUNE_INTERVAL_S = 1.0
"""At most this often, a finished call closes the expired kept streams of every peer."""



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
        payload = encode_request(request)
        deadline = self._deadline(timeout_s)
        with anyio.CancelScope(deadline=deadline):
            chan, frame = await self._start(target, method, Shape.UNARY, payload, deadline)
            return await self._single_result(chan, frame, schema, method)
        raise deadline_error(method, target, timeout_s, self.config)

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
        payload = encode_request(request)
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
        call: StreamingCall[T] = StreamingCall(
            self, _as_peer(peer), method, schema_for(response), self._deadline(timeout_s),
            timeout_s, Shape.CLIENT_STREAM,
        )
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
        data = encode_call(method, timeout_ms_until(deadline), shape, payload, max_bytes=max_bytes)
        for attempt in (0, 1):
            if attempt:
                data = encode_call(method, timeout_ms_until(deadline), shape, payload,
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
                frame = decode_reply(body, max_bytes, method, peer)
                handed_over = True
                return chan, frame
            except (MessageTooLarge, DecodeError) as exc:
                raise frame_error(exc, method, peer) from exc
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


def _as_peer(peer: PeerId | str) -> PeerId:
    return PeerId.from_string(peer) if isinstance(peer, str) else peer
