"""The DHT between real nodes on 127.0.0.1 in one process (TCP + Noise + Yamux)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest

from lattica_nb import Node, NodeConfig, Stream
from lattica_nb.dht.config import DhtConfig
from lattica_nb.dht.messages import (
    Message,
    MessageType,
    PeerEntry,
    WireRecord,
    decode_message,
    encode_message,
)
from lattica_nb.dht.records import SignedRecord
from lattica_nb.errors import LocalProtocolError, QuorumFailed, RecordTooLarge
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.multiaddr import Multiaddr
from lattica_nb.wire.framing import frame, read_frame, read_frame_or_none

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

PROTO = "/lattica-nb/kad/1.0.0"


def config(dht: DhtConfig | None = None, **kwargs: object) -> NodeConfig:
    return NodeConfig(ephemeral=True, idle_timeout_s=0, dht=dht or DhtConfig(),
                      **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def chain(count: int, dht: DhtConfig | None = None) -> AsyncIterator[list[Node]]:
    """``count`` nodes; node i knows only node i-1 (a line, like a bootstrap chain)."""
    async with AsyncExitStack() as stack:
        nodes: list[Node] = []
        for _ in range(count):
            node = await stack.enter_async_context(Node(config(dht)))
            if nodes:
                await node.connect(nodes[-1].listen_addrs[0])
            nodes.append(node)
        yield nodes


async def test_put_on_one_end_of_a_chain_get_on_the_other() -> None:
    async with chain(5) as nodes:
        for node in nodes:
            await node.dht.bootstrap()
        result = await nodes[0].dht.put("sweep/params", b"lr=0.01")
        assert result.stored_on, "the record reached at least one peer"
        assert await nodes[-1].dht.get("sweep/params") == b"lr=0.01"
        record = await nodes[-1].dht.get_record("sweep/params")
        assert record is not None and record.publisher_id == nodes[0].peer_id


async def test_a_newer_put_wins_and_stale_holders_are_corrected() -> None:
    async with chain(3) as nodes:
        for node in nodes:
            await node.dht.bootstrap()
        await nodes[0].dht.put("run", b"v1")
        await nodes[1].dht.put("run", b"v2")
        assert await nodes[2].dht.get("run", quorum=3) == b"v2"
        # nodes[0] held v1; the get above corrected it
        assert await nodes[0].dht.get("run", quorum=1) == b"v2"


async def test_missing_key_is_none() -> None:
    async with chain(2) as nodes:
        assert await nodes[1].dht.get("nothing-here") is None
        assert await nodes[1].dht.get_raw(b"nothing-here") is None


async def test_providers_are_found_across_the_chain() -> None:
    async with chain(4) as nodes:
        for node in nodes:
            await node.dht.bootstrap()
        assert await nodes[0].dht.provide("minilm") >= 1
        providers = await nodes[-1].dht.find_providers("minilm")
        assert [p.peer_id for p in providers] == [nodes[0].peer_id]
        assert providers[0].addrs, "a provider comes with addresses to dial"


async def test_find_peer_and_connect_by_peer_id_only() -> None:
    async with chain(3, DhtConfig(auto_bootstrap=False)) as nodes:
        await nodes[1].dht.bootstrap()
        last, first = nodes[-1], nodes[0]
        assert not last.is_connected(first.peer_id)
        found = await last.dht.find_peer(first.peer_id)
        assert found is not None and found.addrs
        info = await last.connect(str(first.peer_id))
        assert info.peer_id == first.peer_id and info.connected


async def test_open_stream_finds_an_unknown_peer_through_the_dht() -> None:
    async with chain(3) as nodes:
        for node in nodes:
            await node.dht.bootstrap()
        got = anyio.Event()

        async def hello(stream: Stream) -> None:
            await stream.send(b"hi")
            got.set()

        nodes[0].set_handler("/test/hello/1", hello)
        async with Node(config(DhtConfig(auto_bootstrap=False))) as newcomer:
            await newcomer.connect(nodes[-1].listen_addrs[0])
            assert newcomer.known_addresses(nodes[0].peer_id) == []
            async with await newcomer.open_stream(nodes[0].peer_id, "/test/hello/1") as s:
                assert await s.receive() == b"hi"
        await got.wait()


async def test_record_too_large_is_refused_before_sending() -> None:
    async with chain(2, DhtConfig(max_value_bytes=1024)) as nodes:
        with pytest.raises(RecordTooLarge, match="1024"):
            await nodes[0].dht.put("big", b"x" * 2000)


async def test_put_without_peers_fails_its_quorum_but_stays_local() -> None:
    async with Node(config()) as alone:
        with pytest.raises(QuorumFailed) as info:
            await alone.dht.put("solo", b"1")
        assert info.value.stored == 0
        assert await alone.dht.get("solo") == b"1"
        result = await alone.dht.put("solo2", b"2", quorum=0)
        assert result.stored_on == ()


async def test_raw_records_keep_their_exact_bytes() -> None:
    async with chain(3) as nodes:
        for node in nodes:
            await node.dht.bootstrap()
        blob = bytes(range(256)) * 4  # e.g. a foreign (bincode + pickle) value: never decoded
        await nodes[0].dht.put_raw(b"lattica-key", blob)
        assert await nodes[2].dht.get_raw(b"lattica-key") == blob
        with pytest.raises(LocalProtocolError):
            await nodes[0].dht.put_raw(b"/lnb/forged", b"unsigned")


async def test_client_mode_nodes_stay_out_of_routing_tables() -> None:
    async with chain(2) as nodes, Node(config(DhtConfig(mode="client"))) as client:
        await client.connect(nodes[0].listen_addrs[0])
        assert PROTO not in client.protocols
        await client.dht.bootstrap()
        await nodes[0].dht.bootstrap()
        assert client.peer_id not in nodes[0].dht.routing
        await nodes[1].dht.put("from-server", b"ok")
        assert await client.dht.get("from-server") == b"ok"
        await client.dht.put("from-client", b"ok2")
        assert await nodes[1].dht.get("from-client") == b"ok2"


async def test_a_restarted_node_keeps_records_and_routing_table(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    db = tmp_path / "dht.sqlite"
    async with chain(2) as nodes:
        persistent = NodeConfig(identity=key, idle_timeout_s=0, dht=DhtConfig(db_path=db))
        async with Node(persistent) as node:
            await node.connect(nodes[-1].listen_addrs[0])
            await node.dht.bootstrap()
            await node.dht.put("kept", b"across restarts")
        async with Node(persistent) as node:
            assert nodes[-1].peer_id in node.dht.routing
            assert await node.dht.get("kept", quorum=1) == b"across restarts"
            # it rejoins from the saved table, no bootstrap address given
            assert await node.dht.bootstrap() >= 1
            assert await node.dht.get_raw(b"/lnb/kept") is not None


# -- misbehaving peers -------------------------------------------------------------------


@asynccontextmanager
async def rogue(answer: Callable[[PeerId, Message], Message | None]
                ) -> AsyncIterator[Node]:
    """A node whose kad handler answers with ``answer`` (DHT service off)."""
    async with Node(config(DhtConfig(enabled=False))) as node:
        async def serve(stream: Stream) -> None:
            data = await read_frame(stream, max_bytes=1 << 20)
            reply = answer(stream.remote_peer, decode_message(data))
            if reply is not None:
                await stream.send(frame(encode_message(reply)))

        node.set_handler(PROTO, serve)
        yield node


async def test_a_forged_record_is_rejected_and_its_sender_banned() -> None:
    impostor = PrivateKey.generate()

    def forge(peer: PeerId, request: Message) -> Message:
        record = SignedRecord.create(request.key, b"evil", impostor, seq=10**15,
                                     expires_at=4_000_000_000)
        raw = bytearray(record.encode())
        raw[-1] ^= 1  # break the signature
        return Message(request.type, key=request.key,
                       record=WireRecord(request.key, bytes(raw)))

    async with chain(2) as nodes, rogue(forge) as bad:
        await nodes[1].connect(bad.listen_addrs[0])
        await nodes[0].dht.put("honest", b"good")
        assert await nodes[1].dht.get("honest", quorum=5) == b"good"
        assert bad.peer_id not in nodes[1].dht.routing


async def test_a_flood_of_bogus_closer_peers_is_refused() -> None:
    def flood(peer: PeerId, request: Message) -> Message:
        junk = tuple(PeerEntry(PeerId.from_public_key(PrivateKey.generate().public_key),
                               (Multiaddr("/ip4/10.255.0.1/tcp/1"),)) for _ in range(2000))
        return Message(request.type, key=request.key, closer_peers=junk)

    async with chain(2) as nodes, rogue(flood) as bad:
        await nodes[1].connect(bad.listen_addrs[0])
        await nodes[0].dht.put("still-works", b"yes")
        assert await nodes[1].dht.get("still-works", quorum=5) == b"yes"
        assert bad.peer_id not in nodes[1].dht.routing
        assert len(nodes[1].dht.routing) <= 2


async def test_a_provider_record_for_another_peer_is_ignored() -> None:
    async with chain(2) as nodes, Node(config(DhtConfig(enabled=False))) as sender:
        await sender.connect(nodes[0].listen_addrs[0])
        victim = nodes[1].peer_id
        addr = (Multiaddr("/ip4/127.0.0.1/tcp/9"),)
        forged = Message(MessageType.ADD_PROVIDER, key=b"model",
                         provider_peers=(PeerEntry(victim, addr),))
        honest = Message(MessageType.ADD_PROVIDER, key=b"model",
                         provider_peers=(PeerEntry(sender.peer_id, addr),))
        ask = Message(MessageType.GET_PROVIDERS, key=b"model")
        async with await sender.open_stream(nodes[0].peer_id, PROTO) as stream:
            # several requests on one stream are answered in order (rust-libp2p does this)
            for message in (forged, honest, ask):
                await stream.send(frame(encode_message(message)))
            answer = decode_message(await read_frame(stream, max_bytes=1 << 16))
        assert [p.peer_id for p in answer.provider_peers] == [sender.peer_id]


async def test_malformed_and_oversize_messages_reset_the_stream() -> None:
    async with chain(2) as nodes, Node(config(DhtConfig(enabled=False))) as sender:
        await sender.connect(nodes[0].listen_addrs[0])
        for payload in (frame(b"\xff\xff\xff"), b"\xff\xff\xff\xff\x0f" + b"x" * 10):
            async with await sender.open_stream(nodes[0].peer_id, PROTO) as stream:
                await stream.send(payload)
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                    while True:
                        await stream.receive()
        # the node keeps serving others
        assert await nodes[1].dht.get("x") is None


# -- stream reuse -------------------------------------------------------------------------


async def test_requests_to_a_peer_reuse_an_answered_stream_and_survive_its_close() -> None:
    from lattica_nb.dht.messages import MessageLimits
    from lattica_nb.dht.streams import Requester

    streams_seen = []
    kept_stream_closed = anyio.Event()

    async with Node(config(DhtConfig(enabled=False))) as server, \
            Node(config(DhtConfig(enabled=False))) as client:
        async def one_answer_per_stream(stream: Stream) -> None:
            streams_seen.append(stream)
            request = decode_message(await read_frame(stream, max_bytes=1 << 16))
            await stream.send(frame(encode_message(Message(request.type, key=request.key))))
            if len(streams_seen) > 1:  # from the second stream on: keep answering
                while (data := await read_frame_or_none(stream, max_bytes=1 << 16)) is not None:
                    request = decode_message(data)
                    await stream.send(frame(encode_message(Message(request.type,
                                                                   key=request.key))))
                kept_stream_closed.set()

        server.set_handler(PROTO, one_answer_per_stream)
        await client.connect(server.listen_addrs[0])
        requester = Requester(client, PROTO, MessageLimits())
        for i in range(4):
            answer = await requester.request(
                server.peer_id, Message(MessageType.FIND_NODE, key=b"k%d" % i), timeout_s=5)
            assert answer is not None and answer.key == b"k%d" % i
        # stream 1 answered once and closed: request 2 found it broken and went out on a
        # fresh stream, which then carried requests 2, 3 and 4
        assert len(streams_seen) == 2
        await requester.aclose()
        with anyio.fail_after(5):
            await kept_stream_closed.wait()  # closing the requester ended the kept stream


async def test_kept_request_streams_are_closed_once_idle() -> None:
    from lattica_nb.dht.messages import MessageLimits
    from lattica_nb.dht.streams import Requester

    ended = anyio.Event()
    async with Node(config(DhtConfig(enabled=False))) as server, \
            Node(config(DhtConfig(enabled=False))) as client:
        async def answer_all(stream: Stream) -> None:
            while (data := await read_frame_or_none(stream, max_bytes=1 << 16)) is not None:
                request = decode_message(data)
                await stream.send(frame(encode_message(Message(request.type, key=request.key))))
            ended.set()

        server.set_handler(PROTO, answer_all)
        await client.connect(server.listen_addrs[0])
        requester = Requester(client, PROTO, MessageLimits(), idle_stream_s=0.1)
        await requester.request(server.peer_id, Message(MessageType.FIND_NODE, key=b"x"),
                                timeout_s=5)
        await requester.prune()
        assert not ended.is_set(), "a fresh kept stream survives a prune"
        await anyio.sleep(0.15)  # let the kept stream age past idle_stream_s
        await requester.prune()
        with anyio.fail_after(5):
            await ended.wait()
