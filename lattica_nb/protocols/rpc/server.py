"""Serving one inbound RPC stream: a reader task and an executor task.

Every inbound ``/lattica-nb/rpc/1.0.0`` stream is served by two tasks: a
*reader* that reads every frame as it arrives, and an *executor* that runs
one call at a time and is the only writer. Because the reader never stops
reading during a call, a caller's reset (its cancellation or timeout)
cancels the running handler at once; the call's deadline is a cancel scope
around the handler. A stream carries calls one after another: after the
STATUS of a unary or server-streaming call the next CALL may follow (the
client keeps such streams for reuse); a call with streamed requests is the
stream's last.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ...errors import (
    DecodeError,
    LimitExceeded,
    MessageTooLarge,
    RpcError,
    SchemaError,
    StatusCode,
    TransportError,
)
from ...identity import PeerId
from ..router import Stream
from .channel import FramedStream
from .codec import Call, End, Message, Shape, decode_frame, encode_message, encode_status
from .config import RpcConfig
from .schema import Schema

__all__ = ["CallContext", "Method", "PeerLimits", "serve_stream"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler knows about its call."""

    peer: PeerId
    """The authenticated peer that called."""
    method: str
    deadline: float | None
    """When the call expires, on anyio's clock (``anyio.current_time()``); None: never."""

    def time_remaining_s(self) -> float | None:
        """Seconds until the deadline (at least 0), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - anyio.current_time())


@dataclass(frozen=True, slots=True)
class Method:
    """A registered method: its name, shape, handler and types."""

    name: str
    shape: Shape
    handler: Callable[..., Any]
    request: Schema[Any]
    response: Schema[Any]


class PeerLimits:
    """Per-peer semaphores bounding the handlers that run at once for one peer."""

    __slots__ = ("_limit", "_slots")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._slots: dict[PeerId, _PeerSlots] = {}

    def take(self, peer: PeerId) -> _PeerSlots:
        """The peer's slots, kept alive until :meth:`drop`."""
        slots = self._slots.get(peer)
        if slots is None:
            slots = self._slots[peer] = _PeerSlots(self._limit)
        slots.users += 1
        return slots

    def drop(self, peer: PeerId, slots: _PeerSlots) -> None:
        slots.users -= 1
        if slots.users == 0 and self._slots.get(peer) is slots:
            del self._slots[peer]


class _PeerSlots:
    """A per-peer semaphore, kept while any call of the peer holds or awaits it."""

    __slots__ = ("semaphore", "users")

    def __init__(self, limit: int) -> None:
        self.semaphore = anyio.Semaphore(limit)
        self.users = 0

    async def acquire(self, wait_s: float) -> bool:
        try:
            self.semaphore.acquire_nowait()
            return True
        except anyio.WouldBlock:
            if wait_s <= 0:
                return False
        with anyio.move_on_after(wait_s):
            await self.semaphore.acquire()
            return True
        return False


async def serve_stream(stream: Stream, methods: Mapping[str, Method], limits: PeerLimits,
                       config: RpcConfig) -> None:
    """Serve the calls of one negotiated inbound RPC stream until it ends."""
    await _StreamServer(stream, methods, limits, config).run()


class _StreamBroken(Exception):
    """The stream failed while we wrote to it; no status can be sent."""


_RequestChannel = tuple[MemoryObjectSendStream[object], MemoryObjectReceiveStream[object]]


class _ActiveCall:
    __slots__ = (
        "bad_request", "call", "deadline", "ended", "finished", "requests", "requests_ended",
        "scope",
    )

    def __init__(self, call: Call, deadline: float | None, buffer_messages: int) -> None:
        self.call = call
        self.deadline = deadline
        self.requests: _RequestChannel | None = None
        self.requests_ended: anyio.Event | None = None
        """Set when the caller sent END or ended its side (request-streaming calls only)."""
        if call.shape.streams_requests:
            self.requests = anyio.create_memory_object_stream[object](buffer_messages)
            self.requests_ended = anyio.Event()
        self.ended = False
        self.finished = False
        """The status is being sent; late requests are dropped."""
        self.scope: anyio.CancelScope | None = None
        self.bad_request: str | None = None

    def end_requests(self) -> None:
        self.ended = True
        if self.requests_ended is not None:
            self.requests_ended.set()
        if self.requests is not None:
            self.requests[0].close()


_KEEP, _CLOSE, _BROKEN = 0, 1, 2

DRAIN_GRACE_S = 1.0
"""After answering a call before its END, requests are read and dropped for this long
(so the caller's writes do not stall and it reads the status); then the stream is reset."""


class _StreamServer:
    """Reader and executor of one inbound RPC stream (see the module docstring)."""

    __slots__ = (
        "_active", "_broken", "_chan", "_config", "_fatal", "_limits", "_methods", "_peer",
        "_read_scope", "_tg",
    )

    def __init__(self, stream: Stream, methods: Mapping[str, Method], limits: PeerLimits,
                 config: RpcConfig) -> None:
        self._methods = methods
        self._limits = limits
        self._config = config
        self._chan = FramedStream(stream, max_bytes=config.max_message_bytes)
        self._peer = stream.remote_peer
        self._active: _ActiveCall | None = None
        self._read_scope: anyio.CancelScope | None = None
        self._fatal: tuple[StatusCode, str] | None = None
        self._broken = False
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                send, receive = anyio.create_memory_object_stream[_ActiveCall](1)
                tg.start_soon(self._execute, receive)
                with send:
                    clean = await self._read_loop(send)
                if not clean:
                    tg.cancel_scope.cancel()
        except BaseException:
            await self._chan.reset()
            raise
        if self._fatal is not None:
            code, message = self._fatal
            logger.warning("peer %s: RPC stream: %s", self._peer.short(), message)
            if not self._chan.corrupt:
                with anyio.move_on_after(1.0, shield=True):
                    try:
                        await self._chan.send(self._status(code, message))
                    except TransportError:
                        pass
            await self._chan.reset()
        elif self._broken:
            await self._chan.reset()

    # -- reader ------------------------------------------------------------------------
    async def _read_loop(self, calls: MemoryObjectSendStream[_ActiveCall]) -> bool:
        """Read frames until the stream ends; False if it broke or the peer misbehaved."""
        chan = self._chan
        max_bytes = self._config.max_message_bytes
        while True:
            idle = self._active is None
            idle_s = self._config.stream_idle_timeout_s
            deadline = anyio.current_time() + idle_s if idle else math.inf
            body: bytes | None = None
            with anyio.CancelScope(deadline=deadline) as scope:
                self._read_scope = scope
                try:
                    body = await chan.read()
                except MessageTooLarge as exc:
                    return self._violation(
                        StatusCode.RESOURCE_EXHAUSTED,
                        f"a frame of {exc.size} bytes exceeds this peer's limit of {exc.limit} "
                        "bytes (RpcConfig.max_message_bytes)",
                    )
                except DecodeError as exc:
                    return self._violation(StatusCode.INTERNAL, f"malformed RPC frame: {exc}")
                except TransportError as exc:
                    logger.debug("peer %s: RPC stream broke: %s", self._peer.short(), exc)
                    self._broken = True
                    return False
                finally:
                    self._read_scope = None
            if scope.cancelled_caught:
                if self._active is None:
                    logger.debug("peer %s: closing an idle RPC stream", self._peer.short())
                    return True
                continue
            if body is None:
                active = self._active
                if active is not None and active.requests is not None and not active.ended:
                    active.end_requests()
                return True
            try:
                frame = decode_frame(body, max_bytes=max_bytes)
            except DecodeError as exc:
                return self._violation(StatusCode.INTERNAL, f"malformed RPC frame: {exc}")
            active = self._active
            if isinstance(frame, Call):
                if active is not None:
                    return self._violation(
                        StatusCode.INTERNAL,
                        f"a CALL of {frame.method!r} arrived while {active.call.method!r} runs",
                    )
                deadline_at = (
                    None if frame.timeout_ms is None
                    else anyio.current_time() + frame.timeout_ms / 1000
                )
                active = _ActiveCall(frame, deadline_at, self._config.request_buffer_messages)
                self._active = active
                await calls.send(active)
            elif isinstance(frame, Message):
                if active is None or active.requests is None or active.ended:
                    return self._violation(
                        StatusCode.INTERNAL, "a MESSAGE arrived outside a request stream"
                    )
                if not active.finished:
                    try:
                        await active.requests[0].send(frame.payload)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass  # the handler has returned; the status is on its way
            elif isinstance(frame, End):
                if active is None or active.requests is None or active.ended:
                    return self._violation(
                        StatusCode.INTERNAL, "an END arrived outside a request stream"
                    )
                active.end_requests()
            else:
                return self._violation(StatusCode.INTERNAL, "a caller sent a STATUS frame")

    def _violation(self, code: StatusCode, message: str) -> bool:
        self._fatal = (code, message)
        return False

    # -- executor ------------------------------------------------------------------------
    async def _execute(self, calls: MemoryObjectReceiveStream[_ActiveCall]) -> None:
        with calls:
            async for active in calls:
                outcome = await self._run_call(active)
                if outcome == _CLOSE and active.requests_ended is not None and not active.ended:
                    with anyio.move_on_after(DRAIN_GRACE_S):
                        await active.requests_ended.wait()
                    if not active.ended:
                        outcome = _BROKEN
                if outcome != _KEEP:
                    self._broken = outcome == _BROKEN
                    if self._tg is not None:
                        self._tg.cancel_scope.cancel()
                    return

    async def _run_call(self, active: _ActiveCall) -> int:
        call = active.call
        method = self._methods.get(call.method)
        status: bytes | None
        if method is None:
            status = self._status(StatusCode.UNIMPLEMENTED, f"unknown method {call.method!r}")
        elif method.shape is not call.shape:
            status = self._status(
                StatusCode.UNIMPLEMENTED,
                f"{call.method!r} is a {_shape_name(method.shape)} method, "
                f"called as {_shape_name(call.shape)}",
            )
        else:
            status = await self._invoke(method, active)
        if status is None or self._chan.corrupt:  # a frame of ours may be half written
            return _BROKEN
        active.finished = True
        reusable = not call.shape.streams_requests
        if reusable:
            self._active = None
            if self._read_scope is not None:
                self._read_scope.deadline = (
                    anyio.current_time() + self._config.stream_idle_timeout_s
                )
        try:
            await self._chan.send(status)
        except TransportError:
            return _BROKEN
        return _KEEP if reusable else _CLOSE

    async def _invoke(self, method: Method, active: _ActiveCall) -> bytes | None:
        ctx = CallContext(self._peer, method.name, active.deadline)
        slots = self._limits.take(self._peer)
        try:
            deadline = math.inf if active.deadline is None else active.deadline
            with anyio.CancelScope(deadline=deadline) as scope:
                active.scope = scope
                if not await slots.acquire(self._config.admission_wait_s):
                    return self._status(
                        StatusCode.RESOURCE_EXHAUSTED,
                        f"{self._config.max_concurrent_calls_per_peer} calls from this peer are "
                        "already running (RpcConfig.max_concurrent_calls_per_peer); retry later",
                    )
                try:
                    status = await self._dispatch(method, ctx, active)
                finally:
                    slots.semaphore.release()
                if active.bad_request is None:
                    return status
        finally:
            self._limits.drop(self._peer, slots)
        if active.bad_request is not None:
            return self._status(StatusCode.INVALID_ARGUMENT, active.bad_request)
        return self._status(
            StatusCode.DEADLINE_EXCEEDED, f"{method.name!r} did not finish before its deadline"
        )

    async def _dispatch(self, method: Method, ctx: CallContext, active: _ActiveCall
                        ) -> bytes | None:
        shape = method.shape
        try:
            if shape.streams_requests:
                channel = active.requests
                if channel is None:  # pragma: no cover - the reader made it for this shape
                    raise RuntimeError("request-streaming call without a request channel")
                requests = _Requests(active, channel[1], method)
                try:
                    if shape is Shape.CLIENT_STREAM:
                        return self._reply(method, await method.handler(ctx, requests))
                    return await self._stream_out(method, method.handler(ctx, requests))
                finally:
                    channel[1].close()
            try:
                request = method.request.decode(active.call.request)
            except DecodeError as exc:
                return self._status(
                    StatusCode.INVALID_ARGUMENT, f"request to {method.name!r} {exc}"
                )
            if shape is Shape.UNARY:
                return self._reply(method, await method.handler(ctx, request))
            return await self._stream_out(method, method.handler(ctx, request))
        except _StreamBroken:
            return None
        except RpcError as exc:
            code = exc.code if exc.code is not StatusCode.OK else StatusCode.UNKNOWN
            return self._status(code, exc.message)
        except Exception:
            if active.bad_request is not None:
                return self._status(StatusCode.INVALID_ARGUMENT, active.bad_request)
            logger.exception("peer %s: the handler of %r failed", self._peer.short(), method.name)
            return self._status(
                StatusCode.INTERNAL,
                f"the handler of {method.name!r} failed; the details are in the serving peer's log",
            )

    def _reply(self, method: Method, result: object) -> bytes:
        """The OK status carrying a unary or client-streaming call's response."""
        try:
            wire = method.response.encode(result)
            return encode_status(
                StatusCode.OK, response=wire, has_response=True,
                max_bytes=self._config.max_message_bytes,
            )
        except SchemaError as exc:
            logger.error("peer %s: the handler of %r returned a bad response: %s",
                         self._peer.short(), method.name, exc)
            return self._status(
                StatusCode.INTERNAL,
                f"the handler of {method.name!r} returned a value that is not a "
                f"{method.response.name}",
            )
        except LimitExceeded as exc:
            return self._status(StatusCode.RESOURCE_EXHAUSTED, str(exc))

    async def _stream_out(self, method: Method, responses: object) -> bytes:
        """Send each item of a streaming handler as a MESSAGE, then the OK status."""
        if not isinstance(responses, AsyncIterator):
            raise TypeError(f"the handler of {method.name!r} must be an async generator")
        max_bytes = self._config.max_message_bytes
        try:
            async for item in responses:
                try:
                    frame = encode_message(method.response.encode(item), max_bytes=max_bytes)
                except SchemaError as exc:
                    logger.error("peer %s: the handler of %r yielded a bad response: %s",
                                 self._peer.short(), method.name, exc)
                    return self._status(
                        StatusCode.INTERNAL,
                        f"the handler of {method.name!r} yielded a value that is not a "
                        f"{method.response.name}",
                    )
                except LimitExceeded as exc:
                    return self._status(StatusCode.RESOURCE_EXHAUSTED, str(exc))
                try:
                    await self._chan.send(frame)
                except TransportError as exc:
                    raise _StreamBroken from exc
                await anyio.lowlevel.checkpoint()  # a send may not yield; let others run
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()
        return self._status(StatusCode.OK)

    def _status(self, code: StatusCode, message: str = "") -> bytes:
        return encode_status(code, message, max_bytes=self._config.max_message_bytes)


class _Requests(AsyncIterator[Any]):
    """The streamed requests of a call, checked against the method's request type."""

    __slots__ = ("_active", "_method", "_receive")

    def __init__(self, active: _ActiveCall, receive: MemoryObjectReceiveStream[object],
                 method: Method) -> None:
        self._active = active
        self._receive = receive
        self._method = method

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        try:
            payload = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        try:
            return self._method.request.decode(payload)
        except DecodeError as exc:
            active = self._active
            active.bad_request = f"request to {self._method.name!r} {exc}"
            if active.scope is not None:
                active.scope.cancel()
            await anyio.lowlevel.checkpoint()
            raise


def _shape_name(shape: Shape) -> str:
    return shape.name.lower().replace("_", "-")
