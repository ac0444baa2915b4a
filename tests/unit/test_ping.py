"""ping over the in-memory stream pair."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import ByteStream

from lattica_nb.errors import (
    ConnectionClosedError,
    LocalProtocolError,
    RemoteProtocolError,
    TimeoutError,
)
from lattica_nb.protocols.ping import PAYLOAD_BYTES, Pinger, serve_ping
from lattica_nb.testing.streams import memory_stream_pair

pytestmark = pytest.mark.anyio


async def test_pings_over_one_stream_then_server_closes() -> None:
    a, b = memory_stream_pair(max_receive_bytes=5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_ping, b)
        pinger = Pinger(a)
        rtts = [await pinger.ping(timeout_s=5) for _ in range(3)]
        await a.send_eof()
        with pytest.raises(anyio.EndOfStream):
            await a.receive()
    assert all(rtt >= 0 for rtt in rtts)


async def test_rtt_uses_the_given_clock() -> None:
    a, b = memory_stream_pair()
    ticks = iter([10.0, 10.25])
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_ping, b)
        assert await Pinger(a).ping(now=lambda: next(ticks), timeout_s=5) == 0.25
        await a.send_eof()


async def test_server_closes_on_partial_payload() -> None:
    a, b = memory_stream_pair()
    await a.send(b"x" * (PAYLOAD_BYTES + 5))
    await a.send_eof()
    await serve_ping(b)
    assert await a.receive() == b"x" * PAYLOAD_BYTES
    with pytest.raises(anyio.EndOfStream):
        await a.receive()


async def mangling_server(stream: ByteStream) -> None:
    data = await stream.receive(PAYLOAD_BYTES)
    await stream.send(bytes([data[0] ^ 1]) + data[1:])


async def test_wrong_echo_is_remote_error_and_pinger_refuses_more() -> None:
    a, b = memory_stream_pair(max_receive_bytes=PAYLOAD_BYTES)
    pinger = Pinger(a)
    async with anyio.create_task_group() as tg:
        tg.start_soon(mangling_server, b)
        with pytest.raises(RemoteProtocolError, match="does not match"):
            await pinger.ping(timeout_s=5)
    with pytest.raises(LocalProtocolError):
        await pinger.ping(timeout_s=5)


async def test_silent_peer_times_out() -> None:
    a, _ = memory_stream_pair()
    with pytest.raises(TimeoutError):
        await Pinger(a).ping(timeout_s=0.01)


async def test_peer_closing_early() -> None:
    a, b = memory_stream_pair()
    await b.send_eof()
    with pytest.raises(ConnectionClosedError):
        await Pinger(a).ping(timeout_s=5)


async def test_pinger_aclose_ends_server() -> None:
    a, b = memory_stream_pair()
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_ping, b)
        pinger = Pinger(a)
        await pinger.ping(timeout_s=5)
        await pinger.aclose()
