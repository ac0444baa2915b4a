"""YamuxConnection driver tests: in-memory streams and loopback TCP, waiting on events."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from lattica_nb.errors import (
    ConnectionClosedError,
    LimitExceeded,
    RemoteProtocolError,
    StreamResetError,
    TimeoutError,
)
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.multiaddr import Multiaddr
from lattica_nb.testing.streams import memory_stream_pair
from lattica_nb.transport.base import Connection
from lattica_nb.transport.yamux import YamuxConnection, YamuxSettings, YamuxStream
from lattica_nb.transport.yamux.frames import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    FrameReader,
    Header,
    encode_header,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

KIB = 1024
MIB = 1024 * KIB
PEER_A = PeerId.from_public_key(PrivateKey.generate().public_key)
PEER_B = PeerId.from_public_key(PrivateKey.generate().public_key)
ADDR_A = Multiaddr.from_host_port("tcp", "127.0.0.1", 4001)
ADDR_B = Multiaddr.from_host_port("tcp", "127.0.0.1", 4002)
QUIET = YamuxSettings(keepalive_s=None)


def make(
    stream: anyio.abc.ByteStream, *, initiator: bool, settings: YamuxSettings = QUIET
) -> YamuxConnection:
    return YamuxConnection(
        stream,
        is_initiator=initiator,
        remote_peer=PEER_B if initiator else PEER_A,
        local_addr=ADDR_A if initiator else ADDR_B,
        remote_addr=ADDR_B if initiator else ADDR_A,
        settings=settings,
    )


@asynccontextmanager
async def running(
    a_end: anyio.abc.ByteStream,
    b_end: anyio.abc.ByteStream,
    a_settings: YamuxSettings = QUIET,
    b_settings: YamuxSettings = QUIET,
) -> AsyncIterator[tuple[YamuxConnection, YamuxConnection]]:
    a = make(a_end, initiator=True, settings=a_settings)
    b = make(b_end, initiator=False, settings=b_settings)
    async with anyio.create_task_group() as tg:
        await tg.start(a.run)
        await tg.start(b.run)
        yield a, b
        await a.aclose("test over")
        await b.aclose("test over")


@asynccontextmanager
async def memory_pair(
    **kwargs: YamuxSettings,
) -> AsyncIterator[tuple[YamuxConnection, YamuxConnection]]:
    left, right = memory_stream_pair(256 * KIB, max_receive_bytes=64 * KIB)
    async with running(left, right, **kwargs) as pair:
        yield pair


@asynccontextmanager
async def tcp_ends() -> AsyncIterator[tuple[anyio.abc.SocketStream, anyio.abc.SocketStream]]:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        inner = listener.listeners[0]
        port = inner.extra(anyio.abc.SocketAttribute.local_port)
        client = await anyio.connect_tcp("127.0.0.1", port)
        server = await inner.accept()
        yield client, server


async def read_all(stream: YamuxStream) -> bytes:
    out = bytearray()
    while True:
        try:
            out += await stream.receive(1 * MIB)
        except anyio.EndOfStream:
            return bytes(out)


async def echo_one(conn: YamuxConnection) -> None:
    stream = await conn.accept_stream()
    data = await read_all(stream)
    await stream.send(data)
    await stream.aclose()


class RawPeer:
    """The other end of the underlying stream, speaking frames by hand."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.reader = FrameReader(1 << 32)
        self.pending: list[tuple[Header, bytes]] = []

    async def send(self, *frames: bytes) -> None:
        await self.stream.send(b"".join(frames))

    async def next_frame(self) -> tuple[Header, bytes]:
        while not self.pending or self.reader.in_frame:
            data = await self.stream.receive()
            for item in self.reader.feed(data):
                if isinstance(item, Header):
                    self.pending.append((item, b""))
                else:
                    header, payload = self.pending[-1]
                    self.pending[-1] = (header, payload + bytes(item))
            if self.pending and not self.reader.in_frame:
                break
        return self.pending.pop(0)

    async def expect(self, frame_type: int) -> tuple[Header, bytes]:
        while True:
            header, payload = await self.next_frame()
            if header.type == frame_type:
                return header, payload


@asynccontextmanager
async def raw_pair(
    settings: YamuxSettings = QUIET, *, initiator: bool = False
) -> AsyncIterator[tuple[YamuxConnection, RawPeer]]:
    ours, theirs = memory_stream_pair(1 * MIB)
    conn = make(ours, initiator=initiator, settings=settings)
    async with anyio.create_task_group() as tg:
        await tg.start(conn.run)
        yield conn, RawPeer(theirs)
        await conn.aclose()
        tg.cancel_scope.cancel()


# -- happy paths ---------------------------------------------------------------------------


async def test_satisfies_the_connection_protocol():
    left, right = memory_stream_pair()
    conn: Connection = make(left, initiator=True)
    assert conn.remote_peer == PEER_B
    assert conn.remote_addr == ADDR_B and conn.local_addr == ADDR_A
    assert conn.is_initiator and not conn.is_closed and conn.open_stream_count == 0
    await conn.aclose()
    assert conn.is_closed
    await right.aclose()


async def test_request_response_then_both_sides_forget_the_stream():
    async with memory_pair() as (a, b), anyio.create_task_group() as tg:
        tg.start_soon(echo_one, b)
        stream = await a.open_stream()
        assert stream.stream_id == 1
        await stream.send(b"hello yamux")
        await stream.send_eof()
        assert await read_all(stream) == b"hello yamux"
        with anyio.fail_after(5):
            await anyio.wait_all_tasks_blocked()
        assert a.open_stream_count == 0
        assert b.open_stream_count == 0


async def test_bulk_transfer_keeps_bytes_in_order_under_flow_control():
    small = YamuxSettings(
        keepalive_s=None, receive_window_bytes=256 * KIB, max_frame_bytes=16 * KIB
    )
    payload = os.urandom(8 * MIB + 123)
    async with memory_pair(a_settings=small, b_settings=small) as (a, b):
        async with anyio.create_task_group() as tg:
            tg.start_soon(echo_one, b)
            stream = await a.open_stream()

            async def upload() -> None:
                for start in range(0, len(payload), 1_000_000):
                    await stream.send(payload[start : start + 1_000_000])
                await stream.send_eof()

            tg.start_soon(upload)
            echoed = await read_all(stream)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


async def test_many_streams_in_parallel_both_directions():
    async with memory_pair() as (a, b), anyio.create_task_group() as tg:
        results: dict[int, bytes] = {}

        async def serve() -> None:
            async with anyio.create_task_group() as inner:
                for _ in range(16):
                    inner.start_soon(echo_one_stream, await b.accept_stream())

        async def echo_one_stream(stream: YamuxStream) -> None:
            await stream.send(await read_all(stream))
            await stream.aclose()

        async def client(index: int) -> None:
            stream = await a.open_stream()
            data = bytes([index]) * (300 * KIB + index)
            await stream.send(data)
            await stream.send_eof()
            results[index] = await read_all(stream)

        tg.start_soon(serve)
        for index in range(16):
            tg.start_soon(client, index)
    assert results == {i: bytes([i]) * (300 * KIB + i) for i in range(16)}


async def test_over_loopback_tcp():
    payload = os.urandom(16 * MIB)
    async with tcp_ends() as (client, server), running(client, server) as (a, b):
        async with anyio.create_task_group() as tg:
            tg.start_soon(echo_one, a)  # the listener side opens this time
            stream = await b.open_stream()
            assert stream.stream_id == 2

            async def upload() -> None:
                await stream.send(payload)
                await stream.send_eof()

            tg.start_soon(upload)
            echoed = await read_all(stream)
        assert echoed == payload


# -- closing and errors -------------------------------------------------------------------------


async def test_a_writer_stalls_at_the_window_while_nobody_reads():
    small = YamuxSettings(keepalive_s=None, receive_window_bytes=256 * KIB)
    async with memory_pair(a_settings=small, b_settings=small) as (a, b):
        stream = await a.open_stream()
        await stream.send(b"open")
        inbound = await b.accept_stream()
        done = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def write() -> None:
                await stream.send(bytes(1 * MIB))
                await stream.send_eof()
                done.set()

            tg.start_soon(write)
            await anyio.wait_all_tasks_blocked()
            assert not done.is_set()  # blocked on credit: at most one window is buffered
            assert len(await read_all(inbound)) == 4 + 1 * MIB
        assert done.is_set()


async def test_reset_by_the_peer_fails_both_directions():
    async with memory_pair() as (a, b):
        stream = await a.open_stream()
        await stream.send(b"x")
        inbound = await b.accept_stream()
        assert await inbound.receive() == b"x"
        await inbound.reset()
        with pytest.raises(StreamResetError, match="locally"):
            await inbound.receive()
        with anyio.fail_after(5):
            with pytest.raises(StreamResetError, match="by the peer"):
                await stream.receive()
        with pytest.raises(StreamResetError):
            await stream.send(b"more")
        assert a.open_stream_count == b.open_stream_count == 0


async def test_aclose_finishes_our_side_and_the_peer_still_writes_its_reply():
    async with memory_pair() as (a, b):
        stream = await a.open_stream()
        await stream.send(b"request")
        await stream.send_eof()
        inbound = await b.accept_stream()
        assert await read_all(inbound) == b"request"
        await inbound.send(b"reply")
        await inbound.aclose()  # FIN, no reset
        assert await read_all(stream) == b"reply"
        with pytest.raises(anyio.ClosedResourceError):
            await inbound.send(b"after close")


async def test_data_after_our_aclose_is_dropped():
    async with memory_pair() as (a, b):
        stream = await a.open_stream()
        inbound = await b.accept_stream()
        await stream.aclose()
        assert await read_all(inbound) == b""
        await inbound.send(b"nobody reads this")
        await inbound.send_eof()
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()


async def test_aclose_of_the_connection_sends_go_away_and_fails_streams_on_both_sides():
    async with memory_pair() as (a, b):
        stream = await a.open_stream()
        await stream.send(b"buffered before close")
        inbound = await b.accept_stream()
        with anyio.fail_after(5):
            assert await inbound.receive() == b"buffered before close"
        await a.aclose("done")
        with anyio.fail_after(5):
            await b.wait_closed()
        assert a.is_closed and b.is_closed
        assert a.close_error is None and b.close_error is None  # GoAway code 0 is clean
        with pytest.raises(ConnectionClosedError):
            await inbound.receive()
        with pytest.raises(ConnectionClosedError):
            await stream.send(b"x")
        with pytest.raises(ConnectionClosedError):
            await b.accept_stream()
        with pytest.raises(ConnectionClosedError):
            await a.open_stream()


async def test_buffered_bytes_stay_readable_after_the_connection_closes():
    async with memory_pair() as (a, b):
        stream = await a.open_stream()
        await stream.send(b"last words")
        await stream.send_eof()
        inbound = await b.accept_stream()
        await a.aclose()
        await b.wait_closed()
        assert await read_all(inbound) == b"last words"


async def test_accept_stream_waiters_wake_on_close():
    async with memory_pair() as (a, b):
        async with anyio.create_task_group() as tg:
            failed = anyio.Event()

            async def waiter() -> None:
                with pytest.raises(ConnectionClosedError):
                    await b.accept_stream()
                failed.set()

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await a.aclose()
            with anyio.fail_after(5):
                await failed.wait()


async def test_losing_the_underlying_stream_fails_everything_with_connection_closed():
    async with raw_pair(initiator=True) as (conn, raw):
        stream = await conn.open_stream()
        await raw.expect(TYPE_WINDOW_UPDATE)  # the SYN
        await raw.stream.aclose()
        with anyio.fail_after(5):
            await conn.wait_closed()
        assert isinstance(conn.close_error, ConnectionClosedError)
        with pytest.raises(ConnectionClosedError):
            await stream.receive()
        with pytest.raises(ConnectionClosedError):
            await stream.send(b"x")


async def test_run_returns_when_cancelled_and_closes_the_stream():
    ours, _theirs = memory_stream_pair()
    conn = make(ours, initiator=True)
    async with anyio.create_task_group() as tg:
        await tg.start(conn.run)
        stream = await conn.open_stream()
        tg.cancel_scope.cancel()
    assert conn.is_closed
    await conn.wait_closed()
    with pytest.raises(ConnectionClosedError):
        await stream.send(b"x")
    with pytest.raises(anyio.ClosedResourceError):
        await ours.receive()


# -- a misbehaving or silent peer --------------------------------------------------------------


async def test_protocol_error_sends_go_away_and_closes():
    async with raw_pair() as (conn, raw):
        await raw.send(encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0))  # wrong parity
        header, _ = await raw.expect(TYPE_GO_AWAY)
        assert header.length == GO_AWAY_PROTOCOL_ERROR
        with anyio.fail_after(5):
            await conn.wait_closed()
        assert isinstance(conn.close_error, RemoteProtocolError)


async def test_ping_is_answered():
    async with raw_pair() as (_conn, raw):
        await raw.send(encode_header(TYPE_PING, FLAG_SYN, 0, 77))
        header, _ = await raw.expect(TYPE_PING)
        assert header == Header(TYPE_PING, FLAG_ACK, 0, 77)


async def test_a_silent_peer_is_detected_by_keepalive():
    settings = YamuxSettings(keepalive_s=0.05, keepalive_timeout_s=0.2)
    async with raw_pair(settings) as (conn, raw):
        header, _ = await raw.expect(TYPE_PING)
        assert header.flags == FLAG_SYN
        with anyio.fail_after(5):
            await conn.wait_closed()  # the peer never answers
        assert isinstance(conn.close_error, TimeoutError)


async def test_answered_keepalive_pings_keep_the_connection_open():
    settings = YamuxSettings(keepalive_s=0.05, keepalive_timeout_s=0.3)
    async with raw_pair(settings) as (conn, raw):
        for _ in range(10):  # 0.5 s in all: longer than the timeout
            header, _ = await raw.expect(TYPE_PING)
            await raw.send(encode_header(TYPE_PING, FLAG_ACK, 0, header.length))
        assert not conn.is_closed
        assert conn.rtt_s is not None


async def test_unaccepted_streams_beyond_the_backlog_are_reset():
    settings = YamuxSettings(keepalive_s=None, max_accept_backlog=8)
    async with raw_pair(settings) as (conn, raw):
        await raw.send(
            *(encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * i + 1, 0) for i in range(12))
        )
        resets = []
        while len(resets) < 4:
            header, _ = await raw.next_frame()
            assert header.flags & FLAG_RST
            resets.append(header.stream_id)
        assert resets == [17, 19, 21, 23]
        accepted = [(await conn.accept_stream()).stream_id for _ in range(8)]
        assert accepted == [1, 3, 5, 7, 9, 11, 13, 15]
        for stream_id in accepted:
            header, _ = await raw.next_frame()
            assert header.flags == FLAG_ACK and header.stream_id == stream_id


async def test_a_stream_reset_before_accept_is_not_delivered():
    async with raw_pair() as (conn, raw):
        await raw.send(
            encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0),
            encode_header(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0),
            encode_header(TYPE_DATA, FLAG_SYN | FLAG_FIN, 3, 2) + b"hi",
        )
        stream = await conn.accept_stream()
        assert stream.stream_id == 3
        assert await read_all(stream) == b"hi"


async def test_open_stream_waits_while_the_ack_backlog_is_full():
    settings = YamuxSettings(keepalive_s=None, max_ack_backlog=4)
    async with raw_pair(settings, initiator=True) as (conn, raw):
        streams = [await conn.open_stream() for _ in range(4)]
        opened: list[YamuxStream] = []
        async with anyio.create_task_group() as tg:

            async def open_one() -> None:
                opened.append(await conn.open_stream())

            tg.start_soon(open_one)
            await anyio.wait_all_tasks_blocked()
            assert opened == []  # blocked on the backlog
            await raw.send(encode_header(TYPE_WINDOW_UPDATE, FLAG_ACK, streams[0].stream_id, 0))
        assert [s.stream_id for s in opened] == [9]


async def test_open_stream_beyond_max_streams_raises():
    settings = YamuxSettings(
        keepalive_s=None, max_streams=2, max_ack_backlog=2, max_accept_backlog=2
    )
    async with raw_pair(settings, initiator=True) as (conn, raw):
        await conn.open_stream()
        await conn.open_stream()
        for stream_id in (1, 3):
            await raw.send(encode_header(TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id, 0))
        await raw.expect(TYPE_WINDOW_UPDATE)
        await raw.expect(TYPE_WINDOW_UPDATE)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(LimitExceeded, match="max_streams"):
            await conn.open_stream()


async def test_peer_window_update_with_syn_lets_us_send_more_than_the_initial_window():
    async with raw_pair() as (conn, raw):
        await raw.send(encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 4 * MIB))
        stream = await conn.accept_stream()
        with anyio.fail_after(5):
            await stream.send(bytes(1 * MIB))  # beyond 256 KiB without any further update
        got = 0
        while got < 1 * MIB:
            header, payload = await raw.next_frame()
            if header.type == TYPE_DATA:
                got += len(payload)
        assert got == 1 * MIB


async def test_go_away_from_the_peer_closes_cleanly():
    async with raw_pair() as (conn, raw):
        await raw.send(encode_header(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL))
        with anyio.fail_after(5):
            await conn.wait_closed()
        assert conn.close_error is None
