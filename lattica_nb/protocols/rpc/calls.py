"""The caller's side of calls that are more than one request and one response.

:class:`ResponseStream` iterates the responses of a server-streaming call;
:class:`StreamingCall` sends the requests of a client-streaming or
bidirectional call and iterates its responses. Both keep the call's deadline
and reset the stream when they are left before the call ended, which
cancels the handler. The helpers at the end are shared with :mod:`.client`.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.lowlevel

from ...errors import (
    DecodeError,
    LocalProtocolError,
    MessageTooLarge,
    RpcDeadlineExceeded,
    RpcError,
    StatusCode,
    TransportError,
)
from ...identity import PeerId
from .channel import FramedStream
from .codec import (
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

if TYPE_CHECKING:
    from .client import RpcClient

__all__ = ["ResponseStream", "StreamingCall"]

T = TypeVar("T")

SEND_FAILURE_GRACE_S = 1.0
"""After a failed send, how long to wait for the status the peer may have sent."""


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
        with anyio.CancelScope(deadline=self._deadline):
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
        raise deadline_error(self._method, self._peer, self._timeout_s, client.config)

    async def _next_frame(self, chan: FramedStream) -> Frame:
        max_bytes = self._client.config.max_message_bytes
        try:
            body = await chan.read()
        except (MessageTooLarge, DecodeError) as exc:
            raise frame_error(exc, self._method, self._peer) from exc
        except TransportError as exc:
            raise RpcError(StatusCode.UNAVAILABLE,
                           f"the stream of {self._method!r} broke: {exc}") from exc
        if body is None:
            raise RpcError(StatusCode.UNAVAILABLE, f"{self._peer.short()} ended the stream of "
                           f"{self._method!r} without a status")
        return decode_reply(body, max_bytes, self._method, self._peer)


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
        with anyio.CancelScope(deadline=self._deadline):
            chan, _ = await self._client._checkout(self._peer, reuse=False)
            self._chan = chan
            data = encode_call(self._method, timeout_ms_until(self._deadline), self._shape, None,
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
        raise self._timed_out()

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

    def _timed_out(self) -> RpcDeadlineExceeded:
        return deadline_error(self._method, self._peer, self._timeout_s, self._client.config)

    async def send(self, request: object) -> None:
        """Send one request (its type is checked against the request's own class)."""
        chan = self._require()
        if self._wrote_end:
            raise LocalProtocolError("done_writing() was called; no more requests can be sent")
        payload = encode_request(request)
        data = encode_message(payload, max_bytes=self._client.config.max_message_bytes)
        await self._write(chan, data)

    async def done_writing(self) -> None:
        """Tell the handler there are no more requests."""
        chan = self._require()
        if not self._wrote_end:
            self._wrote_end = True
            await self._write(chan, encode_end())

    async def _write(self, chan: FramedStream, data: bytes) -> None:
        with anyio.CancelScope(deadline=self._deadline):
            try:
                await chan.send(data)
                await anyio.lowlevel.checkpoint()  # a send may not yield; let the reader run
            except TransportError as exc:
                await self._raise_status_after(exc)
            except BaseException:
                await chan.reset()
                raise
            return
        await chan.reset()
        raise self._timed_out()

    async def _raise_status_after(self, exc: TransportError) -> None:
        """A send failed: raise the error STATUS the peer may have sent before, else UNAVAILABLE."""
        status = self._status
        if status is None:
            with anyio.move_on_after(SEND_FAILURE_GRACE_S):
                try:
                    while not isinstance(frame := await self._read(), Status):
                        pass  # responses nobody will read now
                    status = frame
                except RpcError:
                    pass
        if status is not None and status.code is not StatusCode.OK:
            raise RpcError.from_status(status.code, status.message) from exc
        raise RpcError(StatusCode.UNAVAILABLE,
                       f"the stream of {self._method!r} broke: {exc}") from exc

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
        if frame.has_response:
            raise RpcError(StatusCode.INTERNAL, f"{self._peer.short()} answered "
                           f"{self._method!r} with an unexpected frame")
        if frame.code is not StatusCode.OK:
            raise RpcError.from_status(frame.code, frame.message)
        raise StopAsyncIteration

    async def _read(self) -> Message | Status:
        """The next MESSAGE, or the STATUS (after it: StopAsyncIteration or its error)."""
        if self._status is not None:
            if self._status.code is StatusCode.OK:
                raise StopAsyncIteration
            raise RpcError.from_status(self._status.code, self._status.message)
        chan = self._require()
        max_bytes = self._client.config.max_message_bytes
        with anyio.CancelScope(deadline=self._deadline):
            try:
                body = await chan.read()
            except (MessageTooLarge, DecodeError) as exc:
                await chan.reset()
                raise frame_error(exc, self._method, self._peer) from exc
            except TransportError as exc:
                raise RpcError(StatusCode.UNAVAILABLE,
                               f"the stream of {self._method!r} broke: {exc}") from exc
            if body is None:
                raise RpcError(StatusCode.UNAVAILABLE, f"{self._peer.short()} ended the stream "
                               f"of {self._method!r} without a status")
            frame = decode_reply(body, max_bytes, self._method, self._peer)
            if isinstance(frame, Status):
                self._status = frame
                return frame
            if isinstance(frame, Message):
                return frame
            raise RpcError(StatusCode.INTERNAL, f"{self._peer.short()} sent a caller's frame")
        await chan.reset()
        raise self._timed_out()

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

        result: Status | Message | None = None  # None only if the pump failed
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


# -- helpers (shared with the client) -------------------------------------------------------
def encode_request(request: object) -> object:
    schema: Schema[Any] = schema_for(type(request))
    return schema.encode(request)


def timeout_ms_until(deadline: float) -> int | None:
    if math.isinf(deadline):
        return None
    return max(0, math.ceil((deadline - anyio.current_time()) * 1000))


def decode_reply(body: bytes, max_bytes: int, method: str, peer: PeerId) -> Frame:
    try:
        return decode_frame(body, max_bytes=max_bytes)
    except DecodeError as exc:
        raise frame_error(exc, method, peer) from exc


def frame_error(exc: DecodeError, method: str, peer: PeerId) -> RpcError:
    if isinstance(exc, MessageTooLarge):
        return RpcError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"the reply to {method!r} from {peer.short()} is a {exc.size}-byte frame, over this "
            f"client's limit of {exc.limit} bytes (RpcConfig.max_message_bytes)",
        )
    return RpcError(StatusCode.INTERNAL,
                    f"{peer.short()} sent a malformed RPC frame for {method!r}: {exc}")


def deadline_error(method: str, peer: PeerId, timeout_s: float | None,
                   config: RpcConfig) -> RpcDeadlineExceeded:
    timeout = config.default_timeout_s if timeout_s is None else timeout_s
    return RpcDeadlineExceeded(
        f"{method!r} on {peer.short()} did not finish within {timeout:g} s"
    )
