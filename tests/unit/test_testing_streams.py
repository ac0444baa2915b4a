"""The in-memory ByteStream pair other tests rely on."""

from __future__ import annotations

import anyio
import pytest

from lattica_nb.testing.streams import memory_stream_pair

pytestmark = pytest.mark.anyio


async def test_both_directions_and_eof() -> None:
    a, b = memory_stream_pair()
    await a.send(b"to b")
    await b.send(b"to a")
    assert await b.receive() == b"to b"
    assert await a.receive() == b"to a"
    await a.send_eof()
    with pytest.raises(anyio.EndOfStream):
        await b.receive()
    await b.send(b"still open")  # half-closed: the other direction works
    assert await a.receive() == b"still open"
    with pytest.raises(anyio.ClosedResourceError):
        await a.send(b"after eof")


async def test_receive_respects_max_bytes() -> None:
    a, b = memory_stream_pair(max_receive_bytes=3)
    await a.send(b"abcdefg")
    assert await b.receive(2) == b"ab"
    assert await b.receive() == b"cde"
    assert await b.receive() == b"fg"


async def test_backpressure_blocks_sender_until_read() -> None:
    a, b = memory_stream_pair(buffer_bytes=4)
    sent = anyio.Event()

    async def sender() -> None:
        await a.send(b"123456789abc")
        sent.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(sender)
        assert await b.receive(100) == b"1234"  # never more than the buffer holds
        assert not sent.is_set()
        assert await b.receive(100) == b"5678"
        assert await b.receive(100) == b"9abc"
    assert sent.is_set()


async def test_close_breaks_the_peer() -> None:
    a, b = memory_stream_pair()
    await b.aclose()
    with pytest.raises(anyio.BrokenResourceError):
        await a.send(b"x")
    with pytest.raises(anyio.EndOfStream):
        await a.receive()
    with pytest.raises(anyio.ClosedResourceError):
        await b.receive()
