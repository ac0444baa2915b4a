"""Typed request/response RPC over ``/lattica-nb/rpc/1.0.0``: safe msgpack, no pickle.

::

    from lattica_nb.protocols.rpc import CallContext, RpcClient, RpcService

    service = RpcService()

    @service.unary("echo")
    async def echo(ctx: CallContext, req: EchoReq) -> EchoResp:
        return EchoResp(req.data)

    service.attach(node)
    resp = await RpcClient(other_node).call(node.peer_id, "echo", EchoReq(b"hi"),
                                            response=EchoResp, timeout_s=5)

Modules: :mod:`.codec` (wire format, sans-IO), :mod:`.schema` (typed
payloads, sans-IO), :mod:`.channel` (frames over a stream), :mod:`.service` (registration),
:mod:`.server` (serving a stream), :mod:`.client` and :mod:`.calls` (the
caller), :mod:`.config`. The wire format is
described in docs/protocols.md, section "RPC".
"""

from __future__ import annotations

from ...errors import RpcDeadlineExceeded, RpcError, StatusCode
from .calls import ResponseStream, StreamingCall
from .channel import RpcHost
from .client import RpcClient
from .codec import PROTOCOL_ID, Shape
from .config import RpcConfig
from .schema import Schema, schema_for
from .service import (
    BidiStreamHandler,
    CallContext,
    ClientStreamHandler,
    RpcService,
    ServerStreamHandler,
    UnaryHandler,
)

__all__ = [
    "PROTOCOL_ID",
    "BidiStreamHandler",
    "CallContext",
    "ClientStreamHandler",
    "ResponseStream",
    "RpcClient",
    "RpcConfig",
    "RpcDeadlineExceeded",
    "RpcError",
    "RpcHost",
    "RpcService",
    "Schema",
    "ServerStreamHandler",
    "Shape",
    "StatusCode",
    "StreamingCall",
    "UnaryHandler",
    "schema_for",
]
