"""identify: message codec, merging of split messages, stream service."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.errors import (
    DecodeError,
    LatticaError,
    LocalProtocolError,
    RemoteProtocolError,
    TimeoutError,
)
from lattica_nb.identity import PrivateKey
from lattica_nb.multiaddr import Multiaddr
from lattica_nb.protocols.identify import (
    MAX_MESSAGE_BYTES,
    MAX_MESSAGES,
    IdentifyInfo,
    receive_identify,
    send_identify,
)
from lattica_nb.testing.streams import memory_stream_pair
from lattica_nb.wire.framing import frame
from lattica_nb.wire.protobuf import ProtoWriter

KEY = PrivateKey.generate().public_key
ADDR = Multiaddr("/ip4/127.0.0.1/udp/4001/quic-v1")
OBSERVED = Multiaddr("/ip4/198.18.0.7/udp/5555/quic-v1")

INFO = IdentifyInfo(
    protocol_version="/lattica/1.0.0",
    agent_version="lattica-nb/0.1.0",
    public_key=KEY,
    listen_addrs=(ADDR,),
    observed_addr=OBSERVED,
    protocols=("/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"),
    signed_peer_record=None,
)


def test_round_trip() -> None:
    assert IdentifyInfo.decode(INFO.encode()) == INFO


def test_field_numbers_follow_the_spec() -> None:
    data = (
        ProtoWriter()
        .string(5, "/pv")
        .string(6, "agent")
        .bytes(1, KEY.to_protobuf())
        .bytes(2, ADDR.to_bytes())
        .string(3, "/p/1")
        .bytes(4, OBSERVED.to_bytes())
        .bytes(8, b"envelope")
        .uint(99, 7)  # unknown fields are ignored
        .finish()
    )
    info = IdentifyInfo.decode(data)
    assert info == IdentifyInfo(
        protocol_version="/pv",
        agent_version="agent",
        public_key=KEY,
        listen_addrs=(ADDR,),
        observed_addr=OBSERVED,
        protocols=("/p/1",),
        signed_peer_record=b"envelope",
    )


def test_empty_message_decodes_to_defaults() -> None:
    info = IdentifyInfo.decode(b"")
    assert (info.protocol_version, info.public_key, info.listen_addrs, info.observed_addr) == (
        "",
        None,
        (),
        None,
    )


def test_bad_listen_addrs_are_skipped() -> None:
    data = (
        ProtoWriter().bytes(2, b"\xff" * 8).bytes(2, ADDR.to_bytes()).bytes(4, b"\xff\xff").finish()
    )
    info = IdentifyInfo.decode(data)
    assert info.listen_addrs == (ADDR,)
    assert info.observed_addr is None


@pytest.mark.parametrize(
    "data",
    [b"\x0a\x05ab", b"\x08\x01", b"\x2a\x02\xff\xfe", b"\x0a\x02\x08\x09"],
    ids=["truncated", "wrong-wire-type", "bad-utf8", "bad-key"],
)
def test_malformed_is_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        IdentifyInfo.decode(data)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_decode_raises_only_lattica_errors(data: bytes) -> None:
    try:
        IdentifyInfo.decode(data)
    except LatticaError:
        pass


# -- over a stream ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_send_and_receive_one_message() -> None:
    a, b = memory_stream_pair()
    async with anyio.create_task_group() as tg:
        tg.start_soon(send_identify, a, INFO)
        assert await receive_identify(b, timeout_s=5) == INFO


@pytest.mark.anyio
async def test_split_messages_are_merged_as_go_libp2p_sends_them() -> None:
    first = IdentifyInfo(
        protocol_version="/lattica/1.0.0",
        agent_version="go-libp2p/0.40",
        public_key=KEY,
        listen_addrs=(ADDR,),
        observed_addr=None,
        protocols=("/a",),
        signed_peer_record=None,
    ).encode()
    second = ProtoWriter().bytes(8, b"record").string(3, "/b").finish()
    a, b = memory_stream_pair(max_receive_bytes=7)
    await a.send(frame(first) + frame(second))
    await a.send_eof()
    info = await receive_identify(b, timeout_s=5)
    assert info.signed_peer_record == b"record"
    assert info.protocols == ("/a", "/b")
    assert info.agent_version == "go-libp2p/0.40" and info.public_key == KEY


@pytest.mark.anyio
async def test_limits() -> None:
    a, b = memory_stream_pair()
    await a.send(frame(b"") * (MAX_MESSAGES + 1))
    await a.send_eof()
    with pytest.raises(RemoteProtocolError, match="more than"):
        await receive_identify(b, timeout_s=5)

    a, b = memory_stream_pair()
    await a.send(frame(b"\x00" * (MAX_MESSAGE_BYTES + 1)))
    with pytest.raises(DecodeError, match="exceeds"):
        await receive_identify(b, timeout_s=5)

    a, b = memory_stream_pair()
    await a.send_eof()
    with pytest.raises(RemoteProtocolError, match="without sending"):
        await receive_identify(b, timeout_s=5)


@pytest.mark.anyio
async def test_peer_that_never_closes_times_out() -> None:
    a, b = memory_stream_pair()
    await a.send(frame(INFO.encode()))
    with pytest.raises(TimeoutError):
        await receive_identify(b, timeout_s=0.01)


@pytest.mark.anyio
async def test_refuses_to_send_what_rust_libp2p_cannot_read() -> None:
    big = IdentifyInfo(
        protocol_version="",
        agent_version="",
        public_key=None,
        listen_addrs=(),
        observed_addr=None,
        protocols=tuple(f"/protocol/{i:04d}" for i in range(400)),
        signed_peer_record=None,
    )
    a, _ = memory_stream_pair()
    with pytest.raises(LocalProtocolError, match="4096"):
        await send_identify(a, big)
