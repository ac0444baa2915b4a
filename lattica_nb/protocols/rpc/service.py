"""The RPC server: methods registered by name with types, served on one protocol id.

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

import collections.abc as abc
import inspect
import logging
import math
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ...errors import (
    DecodeError,
    LimitExceeded,
    LocalProtocolError,
    MessageTooLarge,
    RpcError,
    SchemaError,
    StatusCode,
    TransportError,
)
from ...identity import PeerId
from ..router import Stream
from .channel import FramedStream, RpcHost
from .codec import (
    MAX_METHOD_BYTES,
    PROTOCOL_ID,
    Call,
    End,
    Message,
    Shape,
    decode_frame,
    encode_message,
    encode_status,
)
from .config import RpcConfig
from .schema import Schema, schema_for

if typing.TYPE_CHECKING:
    from .client import RpcClient

__all__ = [
    "BidiStreamHandler",
    "CallContext",
    "ClientStreamHandler",
    "RpcService",
    "ServerStreamHandler",
    "UnaryHandler",
]

logger = logging.getLogger(__name__)

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")


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


UnaryHandler = Callable[[CallContext, ReqT], Awaitable[RespT]]
ServerStreamHandler = Callable[[CallContext, ReqT], AsyncIterator[RespT]]
ClientStreamHandler = Callable[[CallContext, AsyncIterator[ReqT]], Awaitable[RespT]]
BidiStreamHandler = Callable[[CallContext, AsyncIterator[ReqT]], AsyncIterator[RespT]]

_INFER: Any = object()


@dataclass(frozen=True, slots=True)
class _Method:
    name: str
    shape: Shape
    handler: Callable[..., Any]
    request: Schema[Any]
    response: Schema[Any]


class RpcService:
    """A set of RPC methods served on ``/lattica-nb/rpc/1.0.0``.

    ::

        service = RpcService()

        @service.unary("echo")
        async def echo(ctx: CallContext, req: EchoReq) -> EchoResp: ...

        service.attach(node)

    Request and response types come from the handler's annotations (or
    ``request=`` / ``response=``) and are compiled by
    :func:`~.schema.schema_for` when the method is registered. A node serves
    one protocol id, so it has one service: give the same service to every
    component that adds methods (prefix their names, e.g. ``"dht.find"``).
    """

    def __init__(self, config: RpcConfig | None = None) -> None:
        self.config = config or RpcConfig()
        self._methods: dict[str, _Method] = {}
        self._slots: dict[PeerId, _PeerSlots] = {}

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self._methods)

    # -- registration ---------------------------------------------------------------------
    def unary(
        self, name: str, *, request: Any = _INFER, response: Any = _INFER
    ) -> Callable[[UnaryHandler[ReqT, RespT]], UnaryHandler[ReqT, RespT]]:
        """Register ``async def handler(ctx, request) -> response``."""

        def register(handler: UnaryHandler[ReqT, RespT]) -> UnaryHandler[ReqT, RespT]:
            self.register(name, handler, shape=Shape.UNARY, request=request, response=response)
            return handler

        return register

    def server_stream(
        self, name: str, *, request: Any = _INFER, response: Any = _INFER
    ) -> Callable[[ServerStreamHandler[ReqT, RespT]], ServerStreamHandler[ReqT, RespT]]:
        """Register an async generator ``handler(ctx, request) -> AsyncIterator[response]``."""

        def register(
            handler: ServerStreamHandler[ReqT, RespT],
        ) -> ServerStreamHandler[ReqT, RespT]:
            self.register(
                name, handler, shape=Shape.SERVER_STREAM, request=request, response=response
            )
            return handler

        return register

    def client_stream(
        self, name: str, *, request: Any = _INFER, response: Any = _INFER
    ) -> Callable[[ClientStreamHandler[ReqT, RespT]], ClientStreamHandler[ReqT, RespT]]:
        """Register ``async def handler(ctx, requests: AsyncIterator[request]) -> response``."""

        def register(
            handler: ClientStreamHandler[ReqT, RespT],
        ) -> ClientStreamHandler[ReqT, RespT]:
            self.register(
                name, handler, shape=Shape.CLIENT_STREAM, request=request, response=response
            )
            return handler

        return register

    def bidi_stream(
        self, name: str, *, request: Any = _INFER, response: Any = _INFER
    ) -> Callable[[BidiStreamHandler[ReqT, RespT]], BidiStreamHandler[ReqT, RespT]]:
        """Register an async generator ``handler(ctx, requests) -> AsyncIterator[response]``."""

        def register(handler: BidiStreamHandler[ReqT, RespT]) -> BidiStreamHandler[ReqT, RespT]:
            self.register(
                name, handler, shape=Shape.BIDI_STREAM, request=request, response=response
            )
            return handler

        return register

    def register(
        self,
        name: str,
        handler: Callable[..., Any],
        *,
        shape: Shape = Shape.UNARY,
        request: Any = _INFER,
        response: Any = _INFER,
    ) -> None:
        """Register ``handler`` for ``name``; types not given are read from its annotations."""
        if not isinstance(name, str) or not name or len(name.encode()) > MAX_METHOD_BYTES:
            raise LocalProtocolError(f"method name must be 1..{MAX_METHOD_BYTES} UTF-8 bytes")
        if name in self._methods:
            raise LocalProtocolError(f"method {name!r} is already registered")
        if request is _INFER or response is _INFER:
            inferred_request, inferred_response = _infer_types(name, handler, shape)
            request = inferred_request if request is _INFER else request
            response = inferred_response if response is _INFER else response
        self._methods[name] = _Method(
            name, shape, handler, schema_for(request), schema_for(response)
        )

    def unregister(self, name: str) -> None:
        """Stop serving ``name`` (calls already running finish)."""
        self._methods.pop(name, None)

    # -- hosting ----------------------------------------------------------------------------
    def attach(self, host: RpcHost) -> None:
        """Serve this service's methods on ``host`` (a Node)."""
        host.set_handler(PROTOCOL_ID, self.serve)

    def detach(self, host: RpcHost) -> None:
        host.remove_handler(PROTOCOL_ID)

    def client(self, host: RpcHost) -> RpcClient:
        """An RpcClient on ``host`` with this service's config."""
        from .client import RpcClient

        return RpcClient(host, self.config)

    async def serve(self, stream: Stream) -> None:
        """Serve one negotiated RPC stream (the protocol handler)."""
        await _StreamServer(self, stream).run()

    # -- per-peer concurrency -----------------------------------------------------------------
    def _take_slots(self, peer: PeerId) -> _PeerSlots:
        slots = self._slots.get(peer)
        if slots is None:
            slots = self._slots[peer] = _PeerSlots(self.config.max_concurrent_calls_per_peer)
        slots.users += 1
        return slots

    def _drop_slots(self, peer: PeerId, slots: _PeerSlots) -> None:
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


def _infer_types(name: str, handler: Callable[..., Any], shape: Shape) -> tuple[Any, Any]:
    what = f"handler of {name!r}"
    if not (inspect.isfunction(handler) or inspect.ismethod(handler)):
        handler = getattr(handler, "__call__", handler)  # noqa: B004 - a callable object
    try:
        hints = typing.get_type_hints(handler)
        params = list(inspect.signature(handler).parameters.values())
    except Exception as exc:
        raise SchemaError(f"cannot read the annotations of the {what}: {exc}") from exc
    if len(params) < 2:
        raise SchemaError(f"the {what} must take (ctx, request)")
    request = hints.get(params[1].name, _INFER)
    response = hints.get("return", _INFER)
    if request is _INFER or response is _INFER:
        raise SchemaError(
            f"annotate the request parameter and return type of the {what}, "
            "or pass request= and response="
        )
    if shape.streams_requests:
        request = _item_type(request, f"request parameter of the {what}")
    if shape.streams_responses:
        response = _item_type(response, f"return type of the {what}")
    return request, response


def _item_type(hint: Any, what: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (abc.AsyncIterator, abc.AsyncIterable, abc.AsyncGenerator) and typing.get_args(
        hint
    ):
        return typing.get_args(hint)[0]
    raise SchemaError(f"the {what} must be AsyncIterator[T] (got {hint!r})")


# -- serving one stream ----------------------------------------------------------------------
class _StreamBroken(Exception):
    """The stream failed while we wrote to it; no status can be sent."""


_RequestChannel = tuple[MemoryObjectSendStream[object], MemoryObjectReceiveStream[object]]


class _ActiveCall:
    __slots__ = ("bad_request", "call", "deadline", "ended", "finished", "requests", "scope")

    def __init__(self, call: Call, deadline: float | None) -> None:
        self.call = call
        self.deadline = deadline
        self.requests: _RequestChannel | None = None
        self.ended = False
        """The caller sent END (or its side of the stream ended)."""
        self.finished = False
        """The status is being sent; late requests are dropped."""
        self.scope: anyio.CancelScope | None = None
        self.bad_request: str | None = None


_KEEP, _CLOSE, _BROKEN = 0, 1, 2


class _StreamServer:
    """Reader and executor of one inbound RPC stream (see the module docstring)."""

    __slots__ = (
        "_active", "_broken", "_chan", "_config", "_fatal", "_peer", "_read_scope", "_service",
        "_tg",
    )

    def __init__(self, service: RpcService, stream: Stream) -> None:
        self._service = service
        self._config = service.config
        self._chan = FramedStream(stream, max_bytes=service.config.max_message_bytes)
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
                    active.ended = True
                    active.requests[0].close()
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
                active = _ActiveCall(frame, deadline_at)
                if frame.shape.streams_requests:
                    active.requests = anyio.create_memory_object_stream[object](
                        self._config.request_buffer_messages
                    )
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
                active.ended = True
                active.requests[0].close()
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
                if outcome != _KEEP:
                    self._broken = outcome == _BROKEN
                    if self._tg is not None:
                        self._tg.cancel_scope.cancel()
                    return

    async def _run_call(self, active: _ActiveCall) -> int:
        call = active.call
        method = self._service._methods.get(call.method)
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
        if status is None:
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

    async def _invoke(self, method: _Method, active: _ActiveCall) -> bytes | None:
        ctx = CallContext(self._peer, method.name, active.deadline)
        slots = self._service._take_slots(self._peer)
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
            self._service._drop_slots(self._peer, slots)
        if active.bad_request is not None:
            return self._status(StatusCode.INVALID_ARGUMENT, active.bad_request)
        return self._status(
            StatusCode.DEADLINE_EXCEEDED, f"{method.name!r} did not finish before its deadline"
        )

    async def _dispatch(self, method: _Method, ctx: CallContext, active: _ActiveCall
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

    def _reply(self, method: _Method, result: object) -> bytes:
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

    async def _stream_out(self, method: _Method, responses: object) -> bytes:
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
                 method: _Method) -> None:
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
