"""Node driver tests: real nodes on 127.0.0.1 in one process, waiting on events."""

from __future__ import annotations

import os
import socket

import anyio
import pytest

from lattica_nb import Node, NodeConfig, PeerConnected, PeerDisconnected, PeerIdentified, Stream
from lattica_nb.dht import DhtConfig
from lattica_nb.errors import (
    ConfigError,
    DialError,
    LatticaError,
    LocalProtocolError,
    PeerIdMismatch,
    ProtocolNegotiationError,
    TransportError,
)
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.transport.multistream import MAX_MESSAGE_BYTES
from lattica_nb.transport.quic.session import QuicSettings
from lattica_nb.wire.varint import encode_uvarint

pytestmark = pytest.mark.anyio

ECHO = "/test/echo/1.0.0"


def config(**kwargs) -> NodeConfig:
    return NodeConfig(ephemeral=True, **kwargs)


async def echo(stream: Stream) -> None:
    while True:
        try:
            data = await stream.receive()
        except anyio.EndOfStream:
            return
        await stream.send(data)


async def next_event(events, kind, *, timeout_s: float = 5.0):
    with anyio.fail_after(timeout_s):
        async for event in events:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"event stream ended before a {kind.__name__}")


async def test_connect_identifies_both_sides():
    async with Node(config()) as a, Node(config()) as b, a.subscribe() as a_events:
        info = await b.connect(a.listen_addrs[0])
        assert info.peer_id == a.peer_id
        assert info.agent_version and info.agent_version.startswith("lattica-nb/")
        assert "/ipfs/ping/1.0.0" in info.protocols
        assert info.observed_addr is not None
        assert info.observed_addr.host_port()[0] == "127.0.0.1"
        connected = await next_event(a_events, PeerConnected)
        assert connected.peer == b.peer_id and connected.inbound
        identified = await next_event(a_events, PeerIdentified)
        assert identified.peer == b.peer_id
        assert identified.info.listen_addrs == tuple(x.without_peer_id() for x in b.listen_addrs)
        assert [p.peer_id for p in a.peers()] == [b.peer_id]


async def test_ping_round_trips():
    async with Node(config()) as a, Node(config()) as b:
        await b.connect(a.listen_addrs[0])
        rtts = await b.ping(a.peer_id, count=3)
        assert len(rtts) == 3 and all(0 < r < 1.0 for r in rtts)


async def test_application_protocol_with_fallback_proposals():
    async with Node(config()) as a, Node(config()) as b:
        a.set_handler(ECHO, echo)
        await b.connect(a.listen_addrs[0])
        async with await b.open_stream(a.peer_id, ["/test/missing/1.0.0", ECHO]) as stream:
            assert stream.protocol == ECHO
            await stream.send(b"hello mesh")
            assert await stream.receive() == b"hello mesh"


async def test_unknown_protocol_is_refused_and_node_keeps_serving():
    async with Node(config()) as a, Node(config()) as b:
        a.set_handler(ECHO, echo)
        await b.connect(a.listen_addrs[0])
        with pytest.raises(ProtocolNegotiationError):
            await b.open_stream(a.peer_id, "/test/nobody-speaks-this/1.0.0")
        async with await b.open_stream(a.peer_id, ECHO) as stream:
            await stream.send(b"still here")
            assert await stream.receive() == b"still here"


async def test_wrong_peer_id_in_address_fails_and_node_keeps_serving():
    async with Node(config()) as a, Node(config()) as b:
        impostor = PeerId.from_public_key(PrivateKey.generate().public_key)
        wrong = a.listen_addrs[0].with_peer_id(impostor)
        with pytest.raises(DialError) as excinfo:
            await b.connect(wrong)
        assert str(impostor) in str(excinfo.value)
        assert isinstance(excinfo.value.__context__, PeerIdMismatch) or "authenticated as" in str(
            excinfo.value
        )
        info = await b.connect(a.listen_addrs[0])
        assert info.peer_id == a.peer_id


async def test_garbage_datagrams_are_ignored():
    async with Node(config()) as a, Node(config()) as b:
        host, port = a.listen_addrs[0].host_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
            for size in (0, 1, 7, 100, 1200, 1500, 9000):
                junk.sendto(os.urandom(size), (host, port))
            junk.sendto(b"\xc0" + b"\x00\x00\x00\x01" + b"\xff" * 1300, (host, port))
        info = await b.connect(a.listen_addrs[0])
        assert info.peer_id == a.peer_id
        assert await b.ping(a.peer_id)


async def test_a_connection_whose_quic_state_raises_is_dropped_alone():
    async with Node(config()) as a, Node(config()) as b, Node(config()) as c:
        await b.connect(a.listen_addrs[0])
        await c.connect(a.listen_addrs[0])
        endpoint = a._endpoints[0]
        (broken,) = [x for x in endpoint._connections if x.remote_peer == b.peer_id]

        def explode(*args: object) -> None:
            raise RuntimeError("simulated aioquic bug")

        broken._session.receive_datagram = explode
        with pytest.raises(LatticaError):
            await b.ping(a.peer_id, timeout_s=2.0)
        await broken.wait_closed()
        assert isinstance(broken.close_error, TransportError)
        assert broken not in endpoint._connections
        assert await c.ping(a.peer_id)


async def test_oversize_multistream_line_resets_only_that_stream():
    async with Node(config()) as a, Node(config()) as b:
        a.set_handler(ECHO, echo)
        await b.connect(a.listen_addrs[0])
        conn = b._manager.connections(a.peer_id)[0]  # a raw stream, below multistream
        raw = await conn.open_stream()
        line = b"/" + b"x" * (MAX_MESSAGE_BYTES + 100) + b"\n"
        await raw.send(b"\x13/multistream/1.0.0\n" + encode_uvarint(len(line)) + line)
        with pytest.raises((LatticaError, anyio.EndOfStream)):
            with anyio.fail_after(5):
                while await raw.receive():
                    pass
        async with await b.open_stream(a.peer_id, ECHO) as stream:
            await stream.send(b"ok")
            assert await stream.receive() == b"ok"


async def test_connection_limit_refuses_extra_peers():
    async with (
        Node(config(max_connections=1)) as a,
        Node(config()) as b,
        Node(config()) as c,
    ):
        await b.connect(a.listen_addrs[0])
        async with c.subscribe() as c_events:
            try:
                await c.connect(a.listen_addrs[0], identify_timeout_s=1.0)
            except LatticaError:
                pass  # refused during or right after the handshake
            else:
                await next_event(c_events, PeerDisconnected)
        assert [p.peer_id for p in a.peers()] == [b.peer_id]


async def test_stream_limit_blocks_extra_streams_until_one_closes():
    settings = QuicSettings(max_incoming_streams=4)
    no_dht = DhtConfig(enabled=False)  # its kept request streams would count against the limit
    async with Node(config(quic=settings, dht=no_dht)) as a, Node(config(dht=no_dht)) as b:
        a.set_handler(ECHO, echo)
        await b.connect(a.listen_addrs[0])
        held: list[Stream] = []
        with anyio.move_on_after(2.0) as scope:  # a's limit stops this well before 8
            for _ in range(8):
                held.append(await b.open_stream(a.peer_id, ECHO))
        assert scope.cancelled_caught
        assert len(held) == 4  # exactly the limit a granted
        for stream in held:
            await stream.aclose()
        with anyio.fail_after(5):
            async with await b.open_stream(a.peer_id, ECHO) as stream:
                await stream.send(b"room again")
                assert await stream.receive() == b"room again"


async def test_idle_connections_close():
    # without the DHT: its answered request streams stay open a few seconds for reuse
    no_dht = DhtConfig(enabled=False)
    async with Node(config(idle_timeout_s=0.3, dht=no_dht)) as a, Node(config(dht=no_dht)) as b:
        async with b.subscribe() as b_events:
            await b.connect(a.listen_addrs[0])
            gone = await next_event(b_events, PeerDisconnected)
            assert gone.peer == a.peer_id
        assert b.peers() == []


async def test_identify_push_announces_new_protocols():
    async with Node(config()) as a, Node(config()) as b:
        await b.connect(a.listen_addrs[0])
        async with b.subscribe() as b_events:
            a.set_handler(ECHO, echo)
            while True:
                event = await next_event(b_events, PeerIdentified)
                if ECHO in event.info.protocols:
                    break
        assert ECHO in b.peer_info(a.peer_id).protocols


async def test_shutdown_leaves_no_task_or_socket():
    import asyncio

    before_tasks = len(asyncio.all_tasks())
    before_fds = set(os.listdir("/proc/self/fd"))
    async with Node(config()) as a, Node(config()) as b:
        a.set_handler(ECHO, echo)
        await b.connect(a.listen_addrs[0])
        stream = await b.open_stream(a.peer_id, ECHO)
        await stream.send(b"left open on purpose")
        port = a.listen_addrs[0].host_port()[1]
    assert len(asyncio.all_tasks()) == before_tasks
    assert set(os.listdir("/proc/self/fd")) <= before_fds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", port))  # the port is free again


async def test_api_errors_are_clear():
    with pytest.raises(ConfigError, match="/p2p/"):
        NodeConfig(ephemeral=True, bootstrap=("/ip4/127.0.0.1/udp/1/quic-v1",))
    with pytest.raises(ConfigError, match=r"quic-v1 or /ip4/127\.0\.0\.1/tcp/0"):
        NodeConfig(ephemeral=True, listen=("/ip4/127.0.0.1/udp/0",))
    node = Node(config())
    with pytest.raises(LocalProtocolError, match="not running"):
        node.peers()
    async with node:
        with pytest.raises(DialError, match="no known address"):
            await node.open_stream(PeerId.from_public_key(PrivateKey.generate().public_key), ECHO)


async def test_spoofed_version_negotiation_is_not_answered():
    """A packet with another node's source address must not start a reflection loop."""
    async with Node(config()) as a:
        host, port = a.listen_addrs[0].host_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as victim:
            victim.bind(("127.0.0.1", 0))
            victim.setblocking(False)
            # long header, version 0 (a Version Negotiation packet), tiny
            victim.sendto(b"\xc0\x00\x00\x00\x00\x08" + b"a" * 8 + b"\x08" + b"b" * 8, (host, port))
            # long header, unknown version, under 1200 bytes
            victim.sendto(b"\xc0\x0a\x0a\x0a\x0a\x08" + b"a" * 8 + b"\x08" + b"b" * 8, (host, port))
            # a full-size Initial of an unknown version does get one answer
            unknown = b"\xc0\x0a\x0a\x0a\x0a\x08" + b"a" * 8 + b"\x08" + b"b" * 8
            victim.sendto(unknown + b"\x00" * 1200, (host, port))
            with anyio.fail_after(5):
                await anyio.wait_readable(victim)
            replies = []
            while True:
                try:
                    replies.append(victim.recv(2048))
                except BlockingIOError:
                    break
        assert len(replies) == 1 and replies[0][1:5] == b"\x00\x00\x00\x00"


async def test_late_data_for_a_finished_inbound_stream_is_not_a_new_stream():
    opened = 0

    async def read_ten_then_close(stream: Stream) -> None:
        nonlocal opened
        opened += 1
        await stream.receive(10)
        await stream.aclose()

    async with Node(config()) as a, Node(config()) as b:
        a.set_handler("/test/short/1.0.0", read_ten_then_close)
        await b.connect(a.listen_addrs[0])
        for _ in range(10):
            stream = await b.open_stream(a.peer_id, "/test/short/1.0.0")
            try:
                for _ in range(20):
                    await stream.send(b"x" * 4096)
            except LatticaError:
                pass  # a stopped reading: expected
            await stream.reset()
        async with await b.open_stream(a.peer_id, "/test/short/1.0.0") as last:
            await last.send(b"0123456789")
            with pytest.raises((anyio.EndOfStream, LatticaError)):
                with anyio.fail_after(5):
                    while True:
                        await last.receive()
        assert opened == 11
