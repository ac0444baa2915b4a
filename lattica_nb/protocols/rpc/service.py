"""The RPC service: methods registered by name with types, served on one protocol id.

Handlers are registered with a decorator per call shape (or
:meth:`RpcService.register`); their request and response types come from
their annotations and are compiled into schemas at registration, so a
handler that cannot be served fails then, not on the first call. How one
stream is served (deadlines, cancellation, limits) is in :mod:`.server`.
"""

from __future__ import annotations

import collections.abc as abc
import inspect
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ...errors import LocalProtocolError, SchemaError
from ..router import Stream
from .channel import RpcHost
from .codec import MAX_METHOD_BYTES, PROTOCOL_ID, Shape
from .config import RpcConfig
from .schema import schema_for
from .server import CallContext, Method, PeerLimits, serve_stream

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

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")

UnaryHandler = Callable[[CallContext, ReqT], Awaitable[RespT]]
ServerStreamHandler = Callable[[CallContext, ReqT], AsyncIterator[RespT]]
ClientStreamHandler = Callable[[CallContext, AsyncIterator[ReqT]], Awaitable[RespT]]
BidiStreamHandler = Callable[[CallContext, AsyncIterator[ReqT]], AsyncIterator[RespT]]

_INFER: Any = object()


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
        self._methods: dict[str, Method] = {}
        self._limits = PeerLimits(self.config.max_concurrent_calls_per_peer)

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
        _check_async(name, handler, shape)
        if request is _INFER or response is _INFER:
            inferred_request, inferred_response = _infer_types(name, handler, shape)
            request = inferred_request if request is _INFER else request
            response = inferred_response if response is _INFER else response
        self._methods[name] = Method(
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
        await serve_stream(stream, self._methods, self._limits, self.config)



def _check_async(name: str, handler: Callable[..., Any], shape: Shape) -> None:
    """Refuse a plain function that cannot be awaited (or iterated) as its shape needs."""
    if not inspect.isfunction(handler) and not inspect.ismethod(handler):
        return  # a callable object: checked when called
    if shape.streams_responses:
        if inspect.iscoroutinefunction(handler):
            raise LocalProtocolError(
                f"the handler of {name!r} streams responses: make it an async generator "
                "(async def with yield)"
            )
    elif not inspect.iscoroutinefunction(handler):
        raise LocalProtocolError(f"the handler of {name!r} must be an 'async def' function")


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


