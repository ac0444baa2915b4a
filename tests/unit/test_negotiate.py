"""multistream-select drivers over the in-memory stream pair."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest
from anyio.abc import ByteStream

from lattica_nb.errors import ConnectionClosedError, ProtocolNegotiationError, TimeoutError
from lattica_nb.testing.streams import memory_stream_pair
from lattica_nb.transport.multistream import HEADER, encode_message
from lattica_nb.transport.negotiate import PrefixedStream, select_inbound, select_outbound

pytestmark = pytest.mark.anyio

ECHO = "/echo/1.0.0"
OTHER = "/other/1.0.0"


async def serve(stream: ByteStream, protocols: Sequence[str]) -> tuple[str, ByteStream]:
    return await select_inbound(
        stream, lambda p: p in protocols, lambda: tuple(protocols), timeout_s=5
    )


async def test_select_with_fallback_and_pipelined_data() -> None:
    a, b = memory_stream_pair()
    results: dict[str, object] = {}

    async def listener() -> None:
        protocol, stream = await serve(b, [ECHO])
        results["listener"] = protocol
        results["first"] = await stream.receive()
        await stream.send(b"pong")

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener)
        protocol, stream = await select_outbound(a, [OTHER, ECHO], timeout_s=5)
        await stream.send(b"ping")
        assert await stream.receive() == b"pong"
    assert protocol == results["listener"] == ECHO
    assert results["first"] == b"ping"


async def test_one_byte_reads_deliver_everything() -> None:
    a, b = memory_stream_pair(max_receive_bytes=1)

    async def listener() -> None:
        _, stream = await serve(b, [ECHO])
        await stream.send(await stream.receive())

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener)
        protocol, stream = await select_outbound(a, [OTHER, ECHO], timeout_s=5)
        await stream.send(b"x")
        assert await stream.receive() == b"x"
    assert protocol == ECHO


async def test_listener_leftover_is_returned_first() -> None:
    a, b = memory_stream_pair()
    await a.send(encode_message(HEADER) + encode_message(ECHO) + b"early-bytes")
    protocol, stream = await serve(b, [ECHO])
    assert protocol == ECHO
    assert await stream.receive(5) == b"early"
    assert await stream.receive() == b"-bytes"


async def test_dialer_leftover_is_returned_first() -> None:
    a, b = memory_stream_pair()
    await b.send(encode_message(HEADER) + encode_message(ECHO) + b"hello")
    _, stream = await select_outbound(a, [ECHO], timeout_s=5)
    assert isinstance(stream, PrefixedStream)
    assert await stream.receive() == b"hello"


async def test_lazy_returns_before_any_answer() -> None:
    a, b = memory_stream_pair()
    protocol, stream = await select_outbound(a, [ECHO], timeout_s=5, lazy=True)
    assert protocol == ECHO
    await stream.send(b"data")
    listened, inbound = await serve(b, [ECHO])
    assert listened == ECHO
    assert await inbound.receive() == b"data"
    await inbound.send(b"reply")
    assert await stream.receive() == b"reply"


async def test_lazy_refusal_surfaces_on_first_receive() -> None:
    a, b = memory_stream_pair()
    _, stream = await select_outbound(a, [ECHO], timeout_s=5, lazy=True)
    await stream.send(b"\x10some application data")

    async def listener() -> None:
        with pytest.raises(ProtocolNegotiationError):
            await serve(b, [OTHER])

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener)
        with pytest.raises(ProtocolNegotiationError):
            await stream.receive()


async def test_no_common_protocol() -> None:
    a, b = memory_stream_pair()

    async def listener() -> None:
        # The dialer gives up after two refusals and closes; the listener sees EOF.
        with pytest.raises(ProtocolNegotiationError):
            await serve(b, [ECHO])

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener)
        with pytest.raises(ProtocolNegotiationError) as info:
            await select_outbound(a, [OTHER, "/third"], timeout_s=5)
        assert info.value.proposed == (OTHER, "/third")
        await a.aclose()


async def test_peer_ending_its_side_mid_negotiation() -> None:
    a, b = memory_stream_pair()
    await b.send_eof()
    with pytest.raises(ProtocolNegotiationError, match="closed"):
        await select_outbound(a, [ECHO], timeout_s=5)


async def test_peer_closing_the_stream_mid_negotiation() -> None:
    a, b = memory_stream_pair()
    await b.aclose()
    with pytest.raises(ConnectionClosedError):
        await select_outbound(a, [ECHO], timeout_s=5)


async def test_timeouts_raise_our_error() -> None:
    a, _ = memory_stream_pair()
    with pytest.raises(TimeoutError):
        await select_outbound(a, [ECHO], timeout_s=0.01)
    _, b = memory_stream_pair()
    with pytest.raises(TimeoutError):
        await select_inbound(b, lambda p: True, lambda: (), timeout_s=0.01)
