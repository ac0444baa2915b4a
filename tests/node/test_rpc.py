"""RPC between real nodes on 127.0.0.1 in one process; handlers report through events."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import anyio
import pytest

from lattica_nb import Node, NodeConfig, Stream
from lattica_nb.errors import LimitExceeded, LocalProtocolError, SchemaError, TransportError
from lattica_nb.protocols.rpc import (
    PROTOCOL_ID,
    CallContext,
    RpcClient,
    RpcConfig,
    RpcDeadlineExceeded,
    RpcError,
    RpcService,
    StatusCode,
)
from lattica_nb.protocols.rpc.codec import (
    FrameDecoder,
    Shape,
    Status,
    decode_frame,
    encode_call,
    encode_end,
)
from lattica_nb.wire.varint import encode_uvarint

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

WAIT_S = 10.0


@dataclass(frozen=True)
class EchoReq:
    data: bytes


@dataclass(frozen=True)
class EchoResp:
    data: bytes


@dataclass(frozen=True)
class CountReq:
    n: int


@dataclass(frozen=True)
class Item:
    index: int
    label: str


@dataclass(frozen=True)
class WrongReq:
    payload: str


def config(**kwargs: object) -> NodeConfig:
    return NodeConfig(ephemeral=True, **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def serving(
    service: RpcService, *, client_config: RpcConfig | None = None
) -> AsyncIterator[tuple[Node, Node, RpcClient]]:
    """A server node with ``service`` attached and a connected client node."""
    async with Node(config()) as server, Node(config()) as caller:
        service.attach(server)
        await caller.connect(server.listen_addrs[0])
        async with RpcClient(caller, client_config) as client:
            yield server, caller, client


def echo_service(config: RpcConfig | None = None) -> RpcService:
    service = RpcService(config)

    @service.unary("echo")
    async def echo(ctx: CallContext, req: EchoReq) -> EchoResp:
        return EchoResp(req.data)

    return service


class Blocker:
    """A handler that blocks until released and reports start and cancellation."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cancelled = anyio.Event()
        self.release = anyio.Event()
        self.contexts: list[CallContext] = []

    async def __call__(self, ctx: CallContext, req: int) -> int:
        self.contexts.append(ctx)
        self.started.set()
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        return req


# -- call shapes -----------------------------------------------------------------------------
async def test_unary_calls_reuse_streams_and_see_the_caller() -> None:
    service = echo_service()
    seen: list[CallContext] = []

    @service.unary("whoami")
    async def whoami(ctx: CallContext, req: None) -> str:
        seen.append(ctx)
        return str(ctx.peer)

    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, caller, client):
            for i in range(20):
                resp = await client.call(server.peer_id, "echo", EchoReq(bytes([i]) * i),
                                         response=EchoResp)
                assert resp == EchoResp(bytes([i]) * i)
            assert await client.call(server.peer_id, "whoami", None, response=str,
                                     timeout_s=5) == str(caller.peer_id)
            ctx = seen[0]
            assert ctx.method == "whoami" and ctx.peer == caller.peer_id
            assert ctx.deadline is not None
            remaining = ctx.time_remaining_s()
            assert remaining is not None and 0 < remaining <= 5


async def test_concurrent_unary_calls() -> None:
    service = echo_service()
    results: dict[int, bytes] = {}
    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, _, client):

            async def one(i: int) -> None:
                resp = await client.call(server.peer_id, "echo", EchoReq(b"%d" % i),
                                         response=EchoResp)
                results[i] = resp.data

            async with anyio.create_task_group() as tg:
                for i in range(32):
                    tg.start_soon(one, i)
    assert results == {i: b"%d" % i for i in range(32)}


async def test_server_streaming_in_order() -> None:
    service = RpcService()

    @service.server_stream("count")
    async def count(ctx: CallContext, req: CountReq) -> AsyncIterator[Item]:
        for i in range(req.n):
            yield Item(i, f"#{i}")

    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, _, client):
            items = [item async for item in client.stream(server.peer_id, "count", CountReq(50),
                                                          response=Item)]
            assert items == [Item(i, f"#{i}") for i in range(50)]
            assert [x async for x in client.stream(server.peer_id, "count", CountReq(0),
                                                   response=Item)] == []


async def test_leaving_a_server_stream_early_stops_the_handler() -> None:
    service = RpcService()
    closed = anyio.Event()

    @service.server_stream("forever")
    async def forever(ctx: CallContext, req: None) -> AsyncIterator[int]:
        i = 0
        try:
            while True:
                yield i
                i += 1
        finally:  # cancelled while it awaits, or closed at its yield
            closed.set()

    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, _, client):
            async with client.stream(server.peer_id, "forever", None, response=int) as items:
                async for i in items:
                    if i == 5:
                        break
            await closed.wait()
            closed = anyio.Event()
            async for i in client.stream(server.peer_id, "forever", None, response=int):
                if i == 5:
                    break
            await closed.wait()


async def test_client_streaming_and_an_early_answer() -> None:
    service = RpcService()

    @service.client_stream("sum")
    async def total(ctx: CallContext, requests: AsyncIterator[int]) -> int:
        return sum([n async for n in requests])

    @service.client_stream("first")
    async def first(ctx: CallContext, requests: AsyncIterator[int]) -> int:
        async for n in requests:
            return n
        return -1

    async def numbers() -> AsyncIterator[int]:
        for i in range(100):
            yield i

    async def endless() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, _, client):
            assert await client.client_stream(server.peer_id, "sum", numbers(),
                                              response=int) == sum(range(100))
            assert await client.client_stream(server.peer_id, "sum", [], response=int) == 0
            assert await client.client_stream(server.peer_id, "first", endless(),
                                              response=int) == 0


async def test_bidirectional_streaming() -> None:
    service = RpcService()

    @service.bidi_stream("upper")
    async def upper(ctx: CallContext, requests: AsyncIterator[str]) -> AsyncIterator[str]:
        async for text in requests:
            yield text.upper()

    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, _, client):
            async with client.bidi_stream(server.peer_id, "upper", response=str) as call:
                for word in ("a", "bc", "def"):
                    await call.send(word)
                    assert await call.__anext__() == word.upper()
                await call.done_writing()
                assert [r async for r in call] == []


async def test_a_streaming_handler_that_fails_early() -> None:
    service = RpcService()

    @service.bidi_stream("picky")
    async def picky(ctx: CallContext, requests: AsyncIterator[str]) -> AsyncIterator[str]:
        async for text in requests:
            if text != "ok":
                raise RpcError(StatusCode.FAILED_PRECONDITION, f"refused {text!r}")
            yield text

    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, _, client):
            # a caller that reads sees the status
            async with client.bidi_stream(server.peer_id, "picky", response=str) as call:
                await call.send("ok")
                await call.send("no")
                await call.send("ignored")
                with pytest.raises(RpcError) as excinfo:
                    async for _ in call:
                        pass
                assert excinfo.value.code is StatusCode.FAILED_PRECONDITION
            # a caller that only writes learns it from a failing send
            async with client.bidi_stream(server.peer_id, "picky", response=str) as call:
                with pytest.raises(RpcError) as excinfo:
                    while True:
                        await call.send("no")
                assert excinfo.value.code is StatusCode.FAILED_PRECONDITION
                assert excinfo.value.message == "refused 'no'"


# -- errors ----------------------------------------------------------------------------------
async def test_unknown_method_and_wrong_shape() -> None:
    service = echo_service()
    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, _, client):
            with pytest.raises(RpcError) as excinfo:
                await client.call(server.peer_id, "nope", EchoReq(b""), response=EchoResp)
            assert excinfo.value.code is StatusCode.UNIMPLEMENTED
            assert "nope" in excinfo.value.message
            with pytest.raises(RpcError) as excinfo:
                async for _ in client.stream(server.peer_id, "echo", EchoReq(b""),
                                             response=EchoResp):
                    pass
            assert excinfo.value.code is StatusCode.UNIMPLEMENTED
            assert "unary" in excinfo.value.message
            # the stream that carried the errors still works
            assert await client.call(server.peer_id, "echo", EchoReq(b"ok"),
                                     response=EchoResp) == EchoResp(b"ok")


async def test_schema_violation_never_reaches_the_handler() -> None:
    service = RpcService()
    calls: list[EchoReq] = []

    @service.unary("echo")
    async def echo(ctx: CallContext, req: EchoReq) -> EchoResp:
        calls.append(req)
        return EchoResp(req.data)

    @service.client_stream("sum")
    async def total(ctx: CallContext, requests: AsyncIterator[int]) -> int:
        return sum([n async for n in requests])

    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, _, client):
            for bad in (WrongReq("x"), {"data": "not bytes"}, {"data": b"", "extra": 1}, 5):
                with pytest.raises(RpcError) as excinfo:
                    await client.call(server.peer_id, "echo", bad, response=EchoResp)
                assert excinfo.value.code is StatusCode.INVALID_ARGUMENT
                assert "EchoReq" in excinfo.value.message
            with pytest.raises(RpcError) as excinfo:
                await client.client_stream(server.peer_id, "sum", [1, 2, "three"], response=int)
            assert excinfo.value.code is StatusCode.INVALID_ARGUMENT
            assert "expected int, got str" in excinfo.value.message
            assert calls == []
            # a response of the wrong declared type is the caller's local mistake
            with pytest.raises(RpcError) as excinfo:
                await client.call(server.peer_id, "echo", EchoReq(b"x"), response=Item)
            assert excinfo.value.code is StatusCode.INTERNAL and "Item" in excinfo.value.message
            with pytest.raises(SchemaError):
                await client.call(server.peer_id, "echo", {1, 2}, response=EchoResp)


async def test_handler_errors_keep_their_secrets(caplog: pytest.LogCaptureFixture) -> None:
    service = RpcService()

    @service.unary("crash")
    async def crash(ctx: CallContext, req: None) -> None:
        raise KeyError("secret-token-123")

    @service.unary("refuse")
    async def refuse(ctx: CallContext, req: None) -> None:
        raise RpcError(StatusCode.PERMISSION_DENIED, "members only")

    @service.unary("bad-response")
    async def bad_response(ctx: CallContext, req: None) -> int:
        return "not an int"  # type: ignore[return-value]

    with anyio.fail_after(WAIT_S), caplog.at_level(logging.ERROR):
        async with serving(service) as (server, _, client):
            with pytest.raises(RpcError) as excinfo:
                await client.call(server.peer_id, "crash", None, response=type(None))
            assert excinfo.value.code is StatusCode.INTERNAL
            assert "secret-token-123" not in str(excinfo.value)
            assert "KeyError" not in str(excinfo.value) and "Traceback" not in str(excinfo.value)
            with pytest.raises(RpcError) as excinfo:
                await client.call(server.peer_id, "refuse", None, response=type(None))
            assert excinfo.value.code is StatusCode.PERMISSION_DENIED
            assert excinfo.value.message == "members only"
            with pytest.raises(RpcError) as excinfo:
                await client.call(server.peer_id, "bad-response", None, response=int)
            assert excinfo.value.code is StatusCode.INTERNAL
    logged = [r for r in caplog.records if r.exc_info and "crash" in r.getMessage()]
    assert logged and "secret-token-123" in str(logged[0].exc_info[1])  # type: ignore[index]


async def read_status(stream: Stream) -> Status | None:
    """The STATUS a server sends on a raw stream, or None if the stream ends or resets first."""
    decoder = FrameDecoder(max_bytes=1 << 20)
    while (body := decoder.next_frame()) is None:
        try:
            decoder.feed(await stream.receive())
        except (anyio.EndOfStream, TransportError):
            return None
    frame = decode_frame(body, max_bytes=1 << 20)
    assert isinstance(frame, Status)
    return frame


@pytest.mark.parametrize(
    "data, code",
    [
        (encode_uvarint(3) + b"\xc1\xc1\xc1", StatusCode.INTERNAL),  # not msgpack
        (encode_uvarint(2) + b"\x91\x03", StatusCode.INTERNAL),  # a STATUS from the caller
        (encode_end(), StatusCode.INTERNAL),  # END outside a request stream
        (encode_uvarint(1 << 30), StatusCode.RESOURCE_EXHAUSTED),  # only the length prefix
    ],
)
async def test_protocol_violations_get_a_status_and_a_reset(data: bytes, code: StatusCode) -> None:
    service = echo_service()
    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, caller, client):
            async with await caller.open_stream(server.peer_id, PROTOCOL_ID) as stream:
                await stream.send(data)
                status = await read_status(stream)
                assert status is not None and status.code is code
                if code is StatusCode.RESOURCE_EXHAUSTED:
                    assert str(1 << 30) in status.message
                assert await read_status(stream) is None
            assert await client.call(server.peer_id, "echo", EchoReq(b"fine"),
                                     response=EchoResp) == EchoResp(b"fine")


async def test_peer_without_rpc() -> None:
    with anyio.fail_after(WAIT_S):
        async with Node(config()) as server, Node(config()) as caller:
            await caller.connect(server.listen_addrs[0])
            with pytest.raises(RpcError) as excinfo:
                await RpcClient(caller).call(server.peer_id, "echo", None, response=int)
            assert excinfo.value.code is StatusCode.UNIMPLEMENTED


# -- deadlines and cancellation ------------------------------------------------------------------
async def test_deadline_cancels_the_handler() -> None:
    service = RpcService()
    blocker = Blocker()
    service.register("block", blocker)
    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, _, client):
            with pytest.raises(RpcDeadlineExceeded) as excinfo:
                await client.call(server.peer_id, "block", 1, response=int, timeout_s=0.2)
            assert excinfo.value.code is StatusCode.DEADLINE_EXCEEDED
            assert isinstance(excinfo.value, TimeoutError)
            await blocker.cancelled.wait()


async def test_the_server_enforces_the_deadline_it_was_sent() -> None:
    """A caller that never gives up still gets DEADLINE_EXCEEDED from the server."""
    service = RpcService()
    blocker = Blocker()
    service.register("block", blocker)
    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, caller, _):
            async with await caller.open_stream(server.peer_id, PROTOCOL_ID) as stream:
                await stream.send(encode_call("block", 50, Shape.UNARY, 1, max_bytes=1 << 20))
                status = await read_status(stream)
            assert status is not None and status.code is StatusCode.DEADLINE_EXCEEDED
            assert blocker.cancelled.is_set()


async def test_client_cancellation_reaches_the_handler() -> None:
    service = RpcService()
    blocker = Blocker()
    service.register("block", blocker)
    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, _, client):
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(client.call, server.peer_id, "block", 1, response=int))
                await blocker.started.wait()
                tg.cancel_scope.cancel()
            await blocker.cancelled.wait()
            # the node serves the next call
            blocker.release.set()
            assert await client.call(server.peer_id, "block", 7, response=int) == 7


# -- limits -----------------------------------------------------------------------------------
async def test_oversize_messages() -> None:
    limit = 1024 * 1024
    service = echo_service(RpcConfig(max_message_bytes=limit))

    @service.unary("big")
    async def big(ctx: CallContext, size: int) -> bytes:
        return b"x" * size

    with anyio.fail_after(WAIT_S):
        async with serving(service, client_config=RpcConfig(max_message_bytes=4 * limit)) as (
            server, _, client
        ):
            # over our own limit: refused before anything is sent
            with pytest.raises(LimitExceeded, match="max_message_bytes"):
                await client.call(server.peer_id, "echo", EchoReq(b"x" * 4 * limit),
                                  response=EchoResp)
            # within ours, over the server's: the server refuses it and says why
            with pytest.raises(RpcError) as excinfo:
                await client.call(server.peer_id, "echo", EchoReq(b"x" * 2 * limit),
                                  response=EchoResp)
            assert excinfo.value.code is StatusCode.RESOURCE_EXHAUSTED
            assert str(limit) in excinfo.value.message
            # also when the caller is still writing it as the server refuses it
            with pytest.raises(RpcError) as excinfo:
                await client.call(server.peer_id, "echo", EchoReq(b"x" * (4 * limit - 100)),
                                  response=EchoResp)
            assert excinfo.value.code is StatusCode.RESOURCE_EXHAUSTED
            # a response over the server's limit is refused by the server
            with pytest.raises(RpcError) as excinfo:
                await client.call(server.peer_id, "big", 2 * limit, response=bytes)
            assert excinfo.value.code is StatusCode.RESOURCE_EXHAUSTED
            # and the node keeps serving
            assert await client.call(server.peer_id, "echo", EchoReq(b"after"),
                                     response=EchoResp) == EchoResp(b"after")
            assert len(await client.call(server.peer_id, "big", limit // 2,
                                         response=bytes)) == limit // 2


async def test_oversize_response_for_the_caller() -> None:
    service = RpcService()

    @service.unary("big")
    async def big(ctx: CallContext, size: int) -> bytes:
        return b"x" * size

    with anyio.fail_after(WAIT_S):
        async with serving(service, client_config=RpcConfig(max_message_bytes=4096)) as (
            server, _, client
        ):
            with pytest.raises(RpcError) as excinfo:
                await client.call(server.peer_id, "big", 10_000, response=bytes)
            assert excinfo.value.code is StatusCode.RESOURCE_EXHAUSTED
            assert "4096" in excinfo.value.message
            assert await client.call(server.peer_id, "big", 10, response=bytes) == b"x" * 10


async def test_concurrency_bound_per_peer() -> None:
    service = RpcService(RpcConfig(max_concurrent_calls_per_peer=2, admission_wait_s=0.05))
    blockers = [Blocker(), Blocker()]
    service.register("block0", blockers[0])
    service.register("block1", blockers[1])
    results: list[int] = []
    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, _, client), Node(config()) as other:
            await other.connect(server.listen_addrs[0])

            async def call(method: str, value: int) -> None:
                results.append(await client.call(server.peer_id, method, value, response=int))

            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "block0", 0)
                tg.start_soon(call, "block1", 1)
                await blockers[0].started.wait()
                await blockers[1].started.wait()
                with pytest.raises(RpcError) as excinfo:
                    await client.call(server.peer_id, "block0", 2, response=int)
                assert excinfo.value.code is StatusCode.RESOURCE_EXHAUSTED
                assert "max_concurrent_calls_per_peer" in excinfo.value.message
                # another peer has its own slots
                blockers[0].release.set()
                blockers[1].release.set()
                assert await RpcClient(other).call(server.peer_id, "block0", 3,
                                                   response=int) == 3
    assert sorted(results) == [0, 1]


async def test_streams_closed_by_the_server_while_idle_are_replaced() -> None:
    """The server closes idle kept streams; the next call retries on a new one."""
    service = echo_service(RpcConfig(stream_idle_timeout_s=0.01))
    with anyio.fail_after(WAIT_S):
        async with serving(service) as (server, _, client):
            for i in range(10):
                await anyio.sleep(0.03)  # the condition under test: idle time passing
                assert await client.call(server.peer_id, "echo", EchoReq(b"%d" % i),
                                         response=EchoResp) == EchoResp(b"%d" % i)


async def test_registration_needs_types() -> None:
    service = RpcService()

    async def untyped(ctx, req):  # type: ignore[no-untyped-def]
        return req

    with pytest.raises(SchemaError, match="annotate"):
        service.register("untyped", untyped)
    service.register("typed", untyped, request=int, response=int)
    with pytest.raises(SchemaError, match="AsyncIterator"):
        service.server_stream("s")(_wrong_stream_annotation)  # type: ignore[arg-type]
    assert service.methods == ("typed",)

    def blocking(ctx: CallContext, req: int) -> int:
        return req

    with pytest.raises(LocalProtocolError, match="async def"):
        service.register("blocking", blocking)
    with pytest.raises(LocalProtocolError, match="async generator"):
        service.register("stream", untyped, shape=Shape.SERVER_STREAM, request=int, response=int)
    with pytest.raises(LocalProtocolError, match="already registered"):
        service.register("typed", untyped, request=int, response=int)


async def _wrong_stream_annotation(ctx: CallContext, req: int) -> int:  # type: ignore[misc]
    yield req
