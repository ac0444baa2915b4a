"""Nodes over TCP + Noise + Yamux: the second transport, end to end in one process.

Covers the upgrade pipeline, the node API over TCP, choosing TCP over QUIC
when both connect the same peers, simultaneous dials, and bad input at the
socket level (a silent peer, garbage instead of multistream, a peer that
claims another identity).
"""

from __future__ import annotations

import os

import anyio
import pytest

from lattica_nb import Node, NodeConfig, Stream
from lattica_nb.errors import DialError, LatticaError, PeerIdMismatch
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.transport.tcp import TcpSettings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

TCP = ("/ip4/127.0.0.1/tcp/0",)
BOTH = ("/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0")
ECHO = "/test/echo/1.0.0"


def config(**kwargs) -> NodeConfig:
    kwargs.setdefault("listen", TCP)
    return NodeConfig(ephemeral=True, **kwargs)


def tcp_addr(node: Node):
    return next(a for a in node.listen_addrs if a.transport() == "tcp")


async def echo(stream: Stream) -> None:
    while True:
        try:
            data = await stream.receive(1 << 20)
        except anyio.EndOfStream:
            break
        await stream.send(data)
    await stream.send_eof()


async def test_connect_identify_ping_over_tcp():
    async with Node(config()) as a, Node(config()) as b:
        info = await b.connect(tcp_addr(a))
        assert info.peer_id == a.peer_id
        assert info.agent_version is not None and info.agent_version.startswith("lattica-nb/")
        assert info.observed_addr is not None and info.observed_addr.transport() == "tcp"
        assert len(await b.ping(a.peer_id, count=3)) == 3
        assert a.peer_info(b.peer_id).connected


async def test_megabytes_both_ways_on_concurrent_streams():
    payload = os.urandom(3 << 20)
    async with Node(config()) as a, Node(config()) as b:
        a.set_handler(ECHO, echo)
        await b.connect(tcp_addr(a))

        async def round_trip() -> None:
            async with await b.open_stream(a.peer_id, ECHO) as stream:
                received = bytearray()
                async with anyio.create_task_group() as tg:
                    async def send() -> None:
                        view = memoryview(payload)
                        for start in range(0, len(view), 1 << 20):
                            await stream.send(view[start:start + (1 << 20)])
                        await stream.send_eof()

                    tg.start_soon(send)
                    while True:
                        try:
                            received += await stream.receive(1 << 20)
                        except anyio.EndOfStream:
                            break
                assert bytes(received) == payload

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(round_trip)


async def test_dialing_the_wrong_peer_id_fails_authentication():
    async with Node(config()) as a, Node(config()) as b:
        impostor = PeerId.from_public_key(PrivateKey.generate().public_key)
        wrong = tcp_addr(a).without_peer_id().with_peer_id(impostor)
        with pytest.raises(DialError) as caught:
            await b.connect(wrong)
        assert isinstance(caught.value.__cause__, PeerIdMismatch), caught.value
        assert await b.ping((await b.connect(tcp_addr(a))).peer_id)


async def test_a_silent_or_garbage_peer_is_dropped_and_others_are_served():
    fast = TcpSettings(upgrade_timeout_s=0.5)
    async with Node(config(tcp=fast)) as a, Node(config()) as b:
        host, port = tcp_addr(a).host_port()
        silent = await anyio.connect_tcp(host, port)
        garbage = await anyio.connect_tcp(host, port)
        await garbage.send(os.urandom(4096))
        with anyio.fail_after(5):  # the node closes both; we see EOF or a reset
            for sock in (garbage, silent):
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                    while True:
                        await sock.receive()
        await silent.aclose()
        await garbage.aclose()
        info = await b.connect(tcp_addr(a))
        assert await b.ping(info.peer_id)


async def test_streams_prefer_tcp_when_quic_also_connects_the_peers():
    async with Node(config(listen=BOTH)) as a, Node(config(listen=BOTH)) as b:
        quic_addr = next(x for x in a.listen_addrs if x.transport() == "quic-v1")
        await b.connect(quic_addr)
        await b.connect(tcp_addr(a))  # a second connection, over TCP
        a.set_handler(ECHO, echo)
        async with await b.open_stream(a.peer_id, ECHO) as stream:
            assert stream.connection.remote_addr.transport() == "tcp"


async def test_simultaneous_dials_settle_on_one_connection_on_both_sides():
    async with Node(config()) as a, Node(config()) as b:
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.connect, tcp_addr(b))
            tg.start_soon(b.connect, tcp_addr(a))
        a_best = a._manager.best_connection(b.peer_id)
        b_best = b._manager.best_connection(a.peer_id)
        # the same TCP link seen from its two ends
        assert a_best.local_addr == b_best.remote_addr and a_best.remote_addr == b_best.local_addr
        for node, peer in ((a, b.peer_id), (b, a.peer_id)):
            await node._manager.sweep(anyio.current_time())
            assert len(node._manager.connections(peer)) == 1
        assert await a.ping(b.peer_id) and await b.ping(a.peer_id)


async def test_connecting_to_a_closed_port_is_a_clear_dial_error():
    async with Node(config()) as a:
        port = tcp_addr(a).host_port()[1]
    async with Node(config()) as b:
        with pytest.raises(LatticaError, match=r"refused|failed"):
            await b.connect(f"/ip4/127.0.0.1/tcp/{port}/p2p/{a.peer_id}")
