"""The anyio Noise driver over in-memory byte streams."""

from __future__ import annotations

import os

import anyio
import pytest
from anyio.abc import ByteStream

from lattica_nb.errors import (
    ConnectionClosedError,
    DecodeError,
    HandshakeError,
    PeerIdMismatch,
    RemoteProtocolError,
)
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.testing.streams import memory_stream_pair
from lattica_nb.transport.noise import PROTOCOL_ID, NoiseStream, noise_handshake

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

TIMEOUT_S = 10


async def connect(
    a: ByteStream,
    b: ByteStream,
    *,
    a_key: PrivateKey | None = None,
    b_key: PrivateKey | None = None,
    expect_b: PeerId | None = None,
    expect_a: PeerId | None = None,
) -> tuple[NoiseStream, NoiseStream]:
    a_key = a_key or PrivateKey.generate()
    b_key = b_key or PrivateKey.generate()
    results: dict[str, NoiseStream] = {}

    async def responder() -> None:
        results["b"] = await noise_handshake(b, b_key, is_initiator=False, expected_peer=expect_a)

    with anyio.fail_after(TIMEOUT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(responder)
            results["a"] = await noise_handshake(
                a, a_key, is_initiator=True, expected_peer=expect_b
            )
    return results["a"], results["b"]


async def receive_exactly(stream: ByteStream, size: int, max_bytes: int = 65536) -> bytes:
    parts = []
    got = 0
    while got < size:
        chunk = await stream.receive(max_bytes)
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


async def test_protocol_id() -> None:
    assert PROTOCOL_ID == "/noise"


async def test_handshake_both_roles_and_data_both_ways() -> None:
    a, b = memory_stream_pair()
    a_key, b_key = PrivateKey.generate(), PrivateKey.generate()
    a_id, b_id = PeerId.from_public_key(a_key.public_key), PeerId.from_public_key(b_key.public_key)
    alice, bob = await connect(a, b, a_key=a_key, b_key=b_key, expect_b=b_id, expect_a=a_id)
    assert alice.remote_peer == b_id and alice.remote_public_key == b_key.public_key
    assert bob.remote_peer == a_id and bob.remote_public_key == a_key.public_key
    with anyio.fail_after(TIMEOUT_S):
        await alice.send(b"ping")
        assert await bob.receive() == b"ping"
        await bob.send(b"pong")
        assert await alice.receive() == b"pong"


@pytest.mark.parametrize("max_receive_bytes", [65536, 1000])
async def test_five_mib_writes_both_ways(max_receive_bytes: int) -> None:
    a, b = memory_stream_pair(256 * 1024, max_receive_bytes=max_receive_bytes)
    alice, bob = await connect(a, b)
    data_ab, data_ba = os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024 + 7)
    received: dict[str, bytes] = {}

    async def read(name: str, stream: NoiseStream, size: int) -> None:
        received[name] = await receive_exactly(stream, size, max_bytes=1 << 20)

    with anyio.fail_after(TIMEOUT_S * 3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, "ab", bob, len(data_ab))
            tg.start_soon(read, "ba", alice, len(data_ba))
            tg.start_soon(alice.send, data_ab)
            tg.start_soon(bob.send, data_ba)
    assert received["ab"] == data_ab
    assert received["ba"] == data_ba


async def test_receive_respects_max_bytes() -> None:
    a, b = memory_stream_pair(256 * 1024)
    alice, bob = await connect(a, b)
    data = os.urandom(200_000)
    with anyio.fail_after(TIMEOUT_S):
        await alice.send(data)
        await alice.send(b"tail")
        chunks = []
        while sum(len(c) for c in chunks) < len(data) + 4:
            chunk = await bob.receive(4096)
            assert 1 <= len(chunk) <= 4096
            chunks.append(chunk)
    assert b"".join(chunks) == data + b"tail"


async def test_small_writes_are_joined_up_to_max_bytes() -> None:
    a, b = memory_stream_pair()
    alice, bob = await connect(a, b)
    with anyio.fail_after(TIMEOUT_S):
        for index in range(10):
            await alice.send(bytes([index]) * 10)
        await alice.send_eof()
        data = await receive_exactly(bob, 100, max_bytes=1000)
    assert data == b"".join(bytes([index]) * 10 for index in range(10))


async def test_eof_after_all_data() -> None:
    a, b = memory_stream_pair()
    alice, bob = await connect(a, b)
    with anyio.fail_after(TIMEOUT_S):
        await alice.send(b"last words")
        await alice.send_eof()
        assert await bob.receive() == b"last words"
        with pytest.raises(anyio.EndOfStream):
            await bob.receive()
        # The other direction still works after a half-close.
        await bob.send(b"reply")
        assert await alice.receive() == b"reply"
        await bob.aclose()
        with pytest.raises(anyio.EndOfStream):
            await alice.receive()
        await alice.aclose()


async def test_wrong_expected_peer_fails_the_handshake() -> None:
    a, b = memory_stream_pair()
    stranger = PeerId.from_public_key(PrivateKey.generate().public_key)
    bob_key = PrivateKey.generate()

    async def responder() -> None:
        with pytest.raises(HandshakeError):
            await noise_handshake(b, bob_key, is_initiator=False)

    with anyio.fail_after(TIMEOUT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(responder)
            with pytest.raises(PeerIdMismatch):
                await noise_handshake(
                    a, PrivateKey.generate(), is_initiator=True, expected_peer=stranger
                )
            await a.aclose()  # the dialer hangs up; the responder sees EOF


async def test_peer_closing_mid_handshake_is_a_handshake_error() -> None:
    a, b = memory_stream_pair()

    async def hang_up_after_message_1() -> None:
        assert len(await b.receive()) == 34
        await b.send_eof()

    with anyio.fail_after(TIMEOUT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hang_up_after_message_1)
            with pytest.raises(HandshakeError, match="closed"):
                await noise_handshake(a, PrivateKey.generate(), is_initiator=True)


async def test_broken_stream_during_handshake_is_connection_closed() -> None:
    a, b = memory_stream_pair()
    with anyio.fail_after(TIMEOUT_S):
        await b.aclose()
        with pytest.raises(ConnectionClosedError):
            await noise_handshake(a, PrivateKey.generate(), is_initiator=True)


async def test_truncated_frame_mid_handshake_is_a_decode_error() -> None:
    a, b = memory_stream_pair()
    with anyio.fail_after(TIMEOUT_S):
        await a.send(b"\x00\x20" + bytes(10))
        await a.send_eof()
        with pytest.raises(DecodeError):
            await noise_handshake(b, PrivateKey.generate(), is_initiator=False)


async def test_garbage_instead_of_handshake_is_refused() -> None:
    a, b = memory_stream_pair()
    with anyio.fail_after(TIMEOUT_S):
        await a.send(b"\x00\x05hello")
        with pytest.raises(HandshakeError):
            await noise_handshake(b, PrivateKey.generate(), is_initiator=False)


async def test_corrupted_frame_breaks_the_stream() -> None:
    a, b = memory_stream_pair()
    alice, bob = await connect(a, b)
    with anyio.fail_after(TIMEOUT_S):
        await alice.send(b"good")
        assert await bob.receive() == b"good"
        # Write a forged frame straight onto the underlying stream.
        await a.send(b"\x00\x20" + bytes(32))
        with pytest.raises(RemoteProtocolError):
            await bob.receive()
        with pytest.raises(RemoteProtocolError):
            await bob.receive()
        with pytest.raises(RemoteProtocolError):
            await bob.send(b"anything")


async def test_stream_ending_inside_a_frame_is_a_decode_error() -> None:
    a, b = memory_stream_pair()
    _, bob = await connect(a, b)
    with anyio.fail_after(TIMEOUT_S):
        await a.send(b"\x00\x40" + bytes(10))
        await a.send_eof()
        with pytest.raises(DecodeError):
            await bob.receive()


class GatedStream(ByteStream):
    """Delays its second receive until ``gate`` is set (so bytes pile up behind it)."""

    def __init__(self, inner: ByteStream, gate: anyio.Event) -> None:
        self.inner = inner
        self.gate = gate
        self.receives = 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        self.receives += 1
        if self.receives == 2:
            await self.gate.wait()
        return await self.inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_initiator_data_pipelined_behind_message_3() -> None:
    a, b = memory_stream_pair()
    key = PrivateKey.generate()
    sent = anyio.Event()

    async def initiator() -> None:
        stream = await noise_handshake(a, key, is_initiator=True)
        await stream.send(b"right behind message 3")
        sent.set()

    with anyio.fail_after(TIMEOUT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(initiator)
            gated = GatedStream(b, sent)
            bob = await noise_handshake(gated, PrivateKey.generate(), is_initiator=False)
        assert bob.remote_peer == PeerId.from_public_key(key.public_key)
        await a.send_eof()
        assert await bob.receive() == b"right behind message 3"
        with pytest.raises(anyio.EndOfStream):
            await bob.receive()


async def test_corrupted_frame_right_behind_message_3_fails_the_first_receive() -> None:
    a, b = memory_stream_pair()
    sent = anyio.Event()

    async def initiator() -> None:
        await noise_handshake(a, PrivateKey.generate(), is_initiator=True)
        await a.send(b"\x00\x20" + bytes(32))  # a forged transport frame
        sent.set()

    with anyio.fail_after(TIMEOUT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(initiator)
            bob = await noise_handshake(
                GatedStream(b, sent), PrivateKey.generate(), is_initiator=False
            )
        with pytest.raises(RemoteProtocolError):
            await bob.receive()


async def test_empty_send_sends_nothing() -> None:
    a, b = memory_stream_pair()
    alice, bob = await connect(a, b)
    with anyio.fail_after(TIMEOUT_S):
        await alice.send(b"")
        await alice.send(b"x")
        assert await bob.receive() == b"x"
