"""Room sync between real nodes on 127.0.0.1: ``node.sync``, its room drivers, streams and files.

Every test waits on room events (never a sleep) under ``anyio.fail_after``; the
one absence (a peer not redialed) is watched over a bounded window. Edits are
made on the test's loop, which is the nodes' loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pycrdt import Array, Map, Text

from lattica_nb import Node, NodeConfig
from lattica_nb.dht import DhtConfig
from lattica_nb.errors import TimeoutError
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.protocols import ping
from lattica_nb.sync.config import SyncConfig
from lattica_nb.sync.driver import RoomDriver
from lattica_nb.sync.events import (
    EnvelopesStored,
    OwnAcknowledged,
    PeerSynced,
    RoomEvent,
    SessionEnded,
    SessionOpened,
)
from lattica_nb.sync.protocol import (
    PROTOCOL_ID,
    Goodbye,
    GoodbyeReason,
    Hello,
    Message,
    SyncStep1,
    SyncStep2,
    Update,
    decode_message,
    encode_message,
)
from lattica_nb.sync.rules import author_key
from lattica_nb.wire.framing import FrameReader, write_frame

pytestmark = pytest.mark.anyio

ROOM = "sweep"
WAIT_S = 10.0
QUIET_INTERVAL_S = 60.0
"""A discovery interval no test outlives: links then come only from connections."""


def node_config(
    *,
    identity: PrivateKey | None = None,
    data_dir: Path | None = None,
    bootstrap: tuple[str, ...] = (),
    dht: DhtConfig | None = None,
    **sync: Any,
) -> NodeConfig:
    settings: dict[str, Any] = {"join_timeout_s": 2.0, "discovery_interval_s": 0.2,
                                "fsync": False}
    settings.update(sync)
    config = SyncConfig(data_dir=data_dir, **settings)
    common: dict[str, Any] = {"bootstrap": bootstrap, "sync": config, "dht": dht or DhtConfig()}
    if identity is None:
        return NodeConfig(ephemeral=True, **common)
    return NodeConfig(identity=identity, **common)


def addr(node: Node) -> str:
    return str(node.listen_addrs[0])


class Watch:
    """Every event of some rooms, and a way to wait until a condition over them holds."""

    def __init__(self, *drivers: RoomDriver) -> None:
        self.events: list[tuple[RoomDriver, RoomEvent]] = []
        self._changed = anyio.Event()
        for driver in drivers:
            self.add(driver)

    def add(self, driver: RoomDriver) -> None:
        driver.observe(functools.partial(self._on_event, driver))

    def _on_event(self, driver: RoomDriver, event: RoomEvent) -> None:
        self.events.append((driver, event))
        self._changed.set()

    def of(self, driver: RoomDriver, kind: type[Any]) -> list[Any]:
        return [e for d, e in self.events if d is driver and isinstance(e, kind)]

    async def until(self, condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        with anyio.fail_after(timeout_s):
            while not condition():
                self._changed = anyio.Event()
                await self._changed.wait()


class Received:
    """The messages a room received, per peer (the driver's protocol trace)."""

    def __init__(self, driver: RoomDriver) -> None:
        self.messages: list[tuple[PeerId, Message]] = []
        driver.observe_received(lambda peer, message: self.messages.append((peer, message)))

    def envelopes(self, peer: PeerId | None = None) -> int:
        count = 0
        for sender, message in self.messages:
            if peer is not None and sender != peer:
                continue
            if isinstance(message, SyncStep2):
                count += len(message.envelopes)
            elif isinstance(message, Update):
                count += 1
        return count

    def of(self, kind: type[Any]) -> list[Any]:
        return [m for _, m in self.messages if isinstance(m, kind)]


def rows(driver: RoomDriver, author: PeerId) -> list[Any]:
    metrics = driver.doc.get("metrics", type=Map)
    key = author_key(author)
    return list(metrics[key].to_py()) if key in metrics else []


def append_rows(driver: RoomDriver, values: Iterator[Any] | list[Any]) -> None:
    """Append each value as its own transaction (one envelope each) to our metrics array."""
    metrics = driver.doc.get("metrics", type=Map)
    key = author_key(driver.room.peer_id)
    for value in values:
        if key in metrics:
            metrics[key].append(value)
        else:
            metrics[key] = Array([value])


def content(driver: RoomDriver) -> dict[str, Any]:
    doc = driver.doc
    return {
        "params": doc.get("params", type=Map).to_py(),
        "metrics": doc.get("metrics", type=Map).to_py(),
        "notes": str(doc.get("notes", type=Text)),
    }


def write_note(driver: RoomDriver, text: str) -> None:
    notes = driver.doc.get("notes", type=Text)
    notes.insert(len(str(notes)), text)


def lost(watch: Watch, driver: RoomDriver, peer: PeerId) -> bool:
    """The room's session with ``peer`` ended without a GOODBYE (its stream went away)."""
    return any(e.peer == peer and not e.by_peer and e.reason is GoodbyeReason.OTHER
               for e in watch.of(driver, SessionEnded))


async def drop_connections(node: Node, peer: PeerId) -> None:
    """Close every connection between ``node`` and ``peer`` (a network cut, seen by both)."""
    while node.is_connected(peer):
        stream = await node.open_stream(peer, ping.PROTOCOL_ID, discover=False)
        await stream.connection.aclose("test: cut the network")


# -- create, join, edit ---------------------------------------------------------------------


async def test_create_join_and_edit_both_ways() -> None:
    with anyio.fail_after(20):
        async with Node(node_config()) as a, Node(node_config()) as b:
            room_a = await a.sync.open(ROOM, create=True)
            room_a.doc.get("params", type=Map)["lr"] = 0.1
            append_rows(room_a, ["a-0"])
            await b.connect(addr(a))
            room_b = await b.sync.open(ROOM, create=False)
            watch = Watch(room_a, room_b)
            assert room_b.status().owner == a.peer_id
            assert room_b.status().guid == room_a.status().guid
            await watch.until(lambda: content(room_b) == content(room_a))
            assert content(room_b)["params"] == {"lr": 0.1}

            append_rows(room_b, ["b-0", "b-1"])
            room_a.doc.get("params", type=Map)["lr"] = 0.2
            await watch.until(lambda: rows(room_a, b.peer_id) == ["b-0", "b-1"]
                              and content(room_b)["params"] == {"lr": 0.2})
            await watch.until(lambda: content(room_a) == content(room_b))
            assert room_a.linked(b.peer_id) and room_b.linked(a.peer_id)
            assert a.sync.room(ROOM) is room_a and await a.sync.open(ROOM) is room_a


async def test_two_joiners_that_met_without_the_document_link_once_one_has_it() -> None:
    # B and C both join at once; only C can reach the owner A. Their first session ends
    # with NO_DOCUMENT; once C has the document it links to B again at once (discovery
    # is slowed to a minute and the DHT is off, so nothing else could bring B in).
    slow = {"discovery_interval_s": 60.0, "join_timeout_s": 8.0,
            "dht": DhtConfig(enabled=False)}
    with anyio.fail_after(20):
        async with Node(node_config(**slow)) as a, Node(node_config(**slow)) as b, \
                Node(node_config(**slow)) as c:
            room_a = await a.sync.open(ROOM, create=True)
            append_rows(room_a, ["a-0"])
            await c.connect(addr(a))
            await b.connect(addr(c))
            opened: dict[str, RoomDriver] = {}

            async def join(name: str, node: Node) -> None:
                opened[name] = await node.sync.open(ROOM, create=False)

            async with anyio.create_task_group() as tg:
                tg.start_soon(join, "b", b)
                tg.start_soon(join, "c", c)
            room_b = opened["b"]
            assert not b.is_connected(a.peer_id)
            assert room_b.status().guid == room_a.status().guid
            await Watch(room_a, room_b).until(lambda: rows(room_b, a.peer_id) == ["a-0"])


async def test_late_joiner_catches_up_from_a_member_when_the_owner_is_gone() -> None:
    with anyio.fail_after(20):
        async with Node(node_config()) as b, Node(node_config()) as c:
            async with Node(node_config()) as a:
                room_a = await a.sync.open(ROOM, create=True)
                room_a.doc.get("params", type=Map)["batch"] = 32
                append_rows(room_a, [f"a-{i}" for i in range(5)])
                await b.connect(addr(a))
                room_b = await b.sync.open(ROOM, create=False)
                watch = Watch(room_a, room_b)
                append_rows(room_b, ["b-0"])
                await watch.until(lambda: content(room_a) == content(room_b))
                owner = a.peer_id
            # a is gone; c only ever meets b
            assert not b.is_connected(owner)
            await c.connect(addr(b))
            room_c = await c.sync.open(ROOM, create=False)
            watch.add(room_c)
            await watch.until(lambda: content(room_c) == content(room_b))
            assert room_c.status().owner == owner
            assert rows(room_c, owner) == [f"a-{i}" for i in range(5)]
            assert content(room_c)["params"] == {"batch": 32}
            append_rows(room_c, ["c-0"])
            await watch.until(lambda: rows(room_b, c.peer_id) == ["c-0"])
            assert not c.is_connected(owner)


# -- disconnection, restart ---------------------------------------------------------------


async def test_offline_edits_on_both_sides_merge_on_reconnect() -> None:
    with anyio.fail_after(20):
        quiet = node_config(discovery_interval_s=QUIET_INTERVAL_S)
        async with Node(quiet) as a, Node(quiet) as b:
            room_a = await a.sync.open(ROOM, create=True)
            await b.connect(addr(a))
            room_b = await b.sync.open(ROOM, create=False)
            watch = Watch(room_a, room_b)
            append_rows(room_a, ["a-0"])
            await watch.until(lambda: rows(room_b, a.peer_id) == ["a-0"])

            await drop_connections(b, a.peer_id)
            await watch.until(lambda: lost(watch, room_a, b.peer_id)
                              and lost(watch, room_b, a.peer_id))
            assert room_a.status().peers == () and room_b.status().peers == ()
            room_a.doc.get("params", type=Map)["lr"] = 0.5
            append_rows(room_a, ["a-1", "a-2"])
            append_rows(room_b, ["b-0"])
            write_note(room_b, "b was offline")
            assert room_a.status().unacknowledged == 3
            assert room_b.status().unacknowledged == 2
            assert rows(room_b, a.peer_id) == ["a-0"] and rows(room_a, b.peer_id) == []

            await b.connect(addr(a))  # both sides link at once on the new connection
            await watch.until(lambda: content(room_a) == content(room_b)
                              and room_a.status().unacknowledged == 0
                              and room_b.status().unacknowledged == 0)
            merged = content(room_a)
            assert merged["params"] == {"lr": 0.5}
            assert merged["metrics"] == {author_key(a.peer_id): ["a-0", "a-1", "a-2"],
                                         author_key(b.peer_id): ["b-0"]}
            assert merged["notes"] == "b was offline"


async def test_restart_restores_from_disk_and_receives_only_what_it_lacks(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    with anyio.fail_after(30):
        async with Node(node_config(data_dir=tmp_path / "b")) as b:
            async with Node(node_config(identity=key, data_dir=tmp_path / "a")) as a:
                room_a = await a.sync.open(ROOM, create=True)
                room_a.doc.get("params", type=Map)["lr"] = 0.1
                append_rows(room_a, [f"a-{i}" for i in range(5)])
                await b.connect(addr(a))
                room_b = await b.sync.open(ROOM, create=False)
                watch = Watch(room_a, room_b)
                append_rows(room_b, ["b-0", "b-1"])
                await watch.until(lambda: content(room_a) == content(room_b)
                                  and room_a.status().unacknowledged == 0)
                before = content(room_a)
                envelopes_before = room_a.status().envelopes
                owner_id = a.peer_id

            missed = [f"b-{i}" for i in range(2, 9)]  # written while a is down
            append_rows(room_b, missed)
            b_received = Received(room_b)

            async with Node(node_config(identity=key, data_dir=tmp_path / "a")) as a:
                assert a.peer_id == owner_id
                room_a = await a.sync.open(ROOM)
                # restored from disk before any peer is reachable
                assert a.peers() == []
                assert content(room_a) == before
                status = room_a.status()
                assert status.owner == a.peer_id and status.envelopes == envelopes_before
                assert status.unacknowledged == 0  # the acknowledgement was kept too
                received = Received(room_a)
                watch.add(room_a)
                await a.connect(addr(b))
                await watch.until(lambda: content(room_a) == content(room_b))
                assert rows(room_a, b.peer_id) == ["b-0", "b-1", *missed]
                # exactly the envelopes written while it was down, nothing it had on disk
                assert received.envelopes() == len(missed)
                stored = watch.of(room_a, EnvelopesStored)
                assert sum(len(e.envelopes) for e in stored) == len(missed)
                assert b_received.envelopes(a.peer_id) == 0


async def test_unacknowledged_rises_while_alone_and_returns_to_zero_once_acked() -> None:
    with anyio.fail_after(20):
        async with Node(node_config()) as a, Node(node_config()) as b:
            room_a = await a.sync.open(ROOM, create=True)
            watch = Watch(room_a)
            assert room_a.status().unacknowledged == 0
            append_rows(room_a, ["a-0", "a-1", "a-2"])
            assert room_a.status().unacknowledged == 3
            await b.connect(addr(a))
            room_b = await b.sync.open(ROOM, create=False)
            await watch.until(lambda: room_a.status().unacknowledged == 0)
            assert watch.of(room_a, OwnAcknowledged)[-1].seq == 3
            assert rows(room_b, a.peer_id) == ["a-0", "a-1", "a-2"]
            append_rows(room_a, ["a-3"])
            assert room_a.status().unacknowledged == 1
            await watch.until(lambda: room_a.status().unacknowledged == 0)
            assert watch.of(room_a, OwnAcknowledged)[-1].seq == 4


async def test_a_peer_that_falls_behind_is_dropped_and_loses_nothing() -> None:
    burst = [f"a-{i}" for i in range(200)]
    with anyio.fail_after(20):
        # No discovery rounds here: the link must come back because a redials at once.
        async with Node(node_config(sender_queue_messages=4,
                                    discovery_interval_s=QUIET_INTERVAL_S)) as a, \
                Node(node_config(discovery_interval_s=QUIET_INTERVAL_S)) as b:
            room_a = await a.sync.open(ROOM, create=True)
            await b.connect(addr(a))
            room_b = await b.sync.open(ROOM, create=False)
            watch = Watch(room_a, room_b)
            # b's catch-up came: a answers b's SYNC_STEP1 and now sends it UPDATEs
            await watch.until(lambda: any(e.peer == a.peer_id
                                          for e in watch.of(room_b, PeerSynced)))
            opened = len(watch.of(room_a, SessionOpened))
            append_rows(room_a, burst)  # 200 UPDATEs at once: far over 4 queued
            await watch.until(lambda: rows(room_b, a.peer_id) == burst, timeout_s=15)
            dropped = [e for e in watch.of(room_a, SessionEnded) if e.peer == b.peer_id]
            assert len(dropped) >= 1 and "behind" in dropped[0].message
            assert len(watch.of(room_a, SessionOpened)) > opened  # it came back
            await watch.until(lambda: room_a.status().unacknowledged == 0)
            assert room_b.status().envelopes == room_a.status().envelopes


# -- refusals -----------------------------------------------------------------------------


async def test_inbound_stream_for_an_unknown_room_gets_goodbye_unknown_room() -> None:
    with anyio.fail_after(10):
        async with Node(node_config()) as a, Node(node_config(enabled=False)) as client:
            await a.sync.open("another-room", create=True)
            await client.connect(addr(a))
            stream = await client.open_stream(a.peer_id, PROTOCOL_ID)
            async with stream:
                unknown = b"\x07" * 32
                await write_frame(stream, encode_message(Hello(unknown, None, 0)))
                reader = FrameReader(stream, max_bytes=64 * 1024)
                reply = decode_message(await reader.read(), SyncConfig().protocol_limits)
                assert isinstance(reply, Goodbye) and reply.reason is GoodbyeReason.UNKNOWN_ROOM
                assert await reader.read_or_none() is None  # and the stream ends


async def test_a_peer_without_the_room_is_not_redialed_in_a_loop() -> None:
    with anyio.fail_after(10):
        async with Node(node_config()) as a, \
                Node(node_config(discovery_interval_s=0.05)) as b:
            room_b = await b.sync.open(ROOM, create=True)
            received = Received(room_b)
            watch = Watch(room_b)
            await b.connect(addr(a))
            await watch.until(lambda: any(e.reason is GoodbyeReason.UNKNOWN_ROOM and e.by_peer
                                          for e in watch.of(room_b, SessionEnded)))
            # An absence can only be watched for a while: 20 discovery rounds.
            await anyio.sleep(20 * 0.05)
            assert len(received.of(Goodbye)) == 1
            assert len(received.of(Hello)) == 0
            assert not room_b.linked(a.peer_id)


async def test_a_closed_room_refuses_a_non_member_over_the_network() -> None:
    with anyio.fail_after(20):
        async with Node(node_config()) as a, Node(node_config()) as b, \
                Node(node_config()) as c:
            room_a = await a.sync.open(ROOM, create=True, closed=True, members=[b.peer_id])
            room_a.doc.get("params", type=Map)["secret"] = "s3"
            await b.connect(addr(a))
            room_b = await b.sync.open(ROOM, create=False)
            watch = Watch(room_a, room_b)
            append_rows(room_b, ["b-0"])
            await watch.until(lambda: content(room_a) == content(room_b))

            await c.connect(addr(a))
            await c.connect(addr(b))
            with pytest.raises(TimeoutError):  # nobody shows it the document
                await c.sync.open(ROOM, create=False, join_timeout_s=1.0)
            assert c.sync.room(ROOM) is None

            # Its own document under that name: written, but never taken by a or b.
            received_a = Received(room_a)
            room_c = await c.sync.open(ROOM, create=True)
            watch.add(room_c)
            write_note(room_c, "let me in")
            append_rows(room_c, ["c-0"])

            def refused_by() -> set[PeerId]:
                return {e.peer for e in watch.of(room_c, SessionEnded)
                        if e.by_peer and e.reason is GoodbyeReason.NOT_A_MEMBER}

            await watch.until(lambda: refused_by() == {a.peer_id, b.peer_id})
            assert received_a.envelopes(c.peer_id) == 0
            assert content(room_a) == content(room_b)
            assert content(room_a)["notes"] == "" and rows(room_a, c.peer_id) == []
            assert content(room_c)["params"] == {}
            assert room_a.status().peers == (b.peer_id,)


async def test_a_non_member_shown_a_members_hello_does_not_join() -> None:
    with anyio.fail_after(10):
        async with Node(node_config()) as a, Node(node_config()) as b, \
                Node(node_config()) as c:
            room_a = await a.sync.open(ROOM, create=True, closed=True, members=[b.peer_id])
            descriptor, policy = room_a.room.descriptor, room_a.room.policy
            assert descriptor is not None and policy is not None and policy.member_list
            hello = Hello(room_a.room_id, descriptor.guid, descriptor.epoch,
                          descriptor=descriptor.encode(), members=policy.member_list.encode())
            await a.connect(addr(c))
            async with anyio.create_task_group() as tg:
                outcome: list[object] = []

                async def join() -> None:
                    try:
                        outcome.append(await c.sync.open(ROOM, create=False, join_timeout_s=2))
                    except TimeoutError as exc:
                        outcome.append(exc)

                tg.start_soon(join)
                await anyio.wait_all_tasks_blocked()
                # What a member running an older lattica-nb (which dialed everyone) sends c:
                stream = await a.open_stream(c.peer_id, PROTOCOL_ID)
                async with stream:
                    await write_frame(stream, encode_message(hello))
                    reader = FrameReader(stream, max_bytes=64 * 1024)
                    replies = []
                    while (data := await reader.read_or_none()) is not None:
                        replies.append(decode_message(data, SyncConfig().protocol_limits))
                        if isinstance(replies[-1], Goodbye | SyncStep1):
                            break  # refused, or syncing (it took the document)
            assert isinstance(outcome[0], TimeoutError), outcome  # c did not join
            assert replies and isinstance(replies[-1], Goodbye)
            assert replies[-1].reason is GoodbyeReason.NOT_A_MEMBER


# -- discovery and linking ------------------------------------------------------------------


async def test_dht_providers_lead_to_the_only_holder() -> None:
    # a and c are DHT clients (notebooks behind NAT): neither is in a routing table, so
    # neither learns the other's address but from a's provider record, which b holds.
    # a opens the room before it knows any DHT server: its first announcement reaches
    # nobody and must be made again.
    client = DhtConfig(mode="client")
    with anyio.fail_after(30):
        async with Node(node_config(dht=client)) as a:
            room_a = await a.sync.open(ROOM, create=True)
            room_a.doc.get("params", type=Map)["lr"] = 0.3
            append_rows(room_a, ["a-0"])
            async with Node(node_config(bootstrap=(addr(a),))) as b, \
                    Node(node_config(dht=client)) as c:
                await c.connect(addr(b))  # c is told only b's address
                room_c = await c.sync.open(ROOM, create=False, join_timeout_s=WAIT_S)
                watch = Watch(room_a, room_c)
                await watch.until(lambda: content(room_c) == content(room_a))
                assert room_c.status().owner == a.peer_id
                assert b.sync.rooms() == []  # b only relayed the DHT answer
                providers = await c.dht.find_providers(room_a.room_id)
                assert [p.peer_id for p in providers] == [a.peer_id]


async def test_simultaneous_open_ends_with_one_link_each_way() -> None:
    for attempt in range(16):  # the interleavings differ from run to run
        with anyio.fail_after(10):
            await open_simultaneously(attempt)


async def open_simultaneously(attempt: int) -> None:
    quiet: dict[str, Any] = {"discovery_interval_s": QUIET_INTERVAL_S, "join_timeout_s": WAIT_S}
    async with Node(node_config(**quiet)) as a, Node(node_config(**quiet)) as b:
        room_a = await a.sync.open(ROOM, create=True)
        append_rows(room_a, [f"a-{attempt}"])
        joined: list[RoomDriver] = []
        async with anyio.create_task_group() as tg:

            async def join() -> None:
                joined.append(await b.sync.open(ROOM, create=False))

            tg.start_soon(join)
            # Both have the room now: the new connection makes both dial at once.
            await anyio.wait_all_tasks_blocked()
            await b.connect(addr(a))
        room_b = joined[0]
        watch = Watch(room_a, room_b)
        append_rows(room_b, [f"b-{attempt}"])
        await watch.until(lambda: content(room_a) == content(room_b)
                          and rows(room_a, b.peer_id) == [f"b-{attempt}"])
        assert room_a.status().peers == (b.peer_id,)
        assert room_b.status().peers == (a.peer_id,)
        assert room_a.linked(b.peer_id) and room_b.linked(a.peer_id)
        # the surviving link is the same stream on both sides: it carries edits
        append_rows(room_a, [f"a-{attempt}-late"])
        await watch.until(lambda: rows(room_b, a.peer_id)[-1] == f"a-{attempt}-late")
        assert not any(not e.by_peer and e.reason is GoodbyeReason.OTHER
                       for _, e in watch.events if isinstance(e, SessionEnded))


# -- shutdown -------------------------------------------------------------------------------


async def test_closing_a_room_says_goodbye_and_frees_its_file(tmp_path: Path) -> None:
    with anyio.fail_after(20):
        async with Node(node_config(data_dir=tmp_path / "a")) as a, Node(node_config()) as b:
            room_a = await a.sync.open(ROOM, create=True)
            append_rows(room_a, ["a-0"])
            await b.connect(addr(a))
            room_b = await b.sync.open(ROOM, create=False)
            watch = Watch(room_a, room_b)
            await watch.until(lambda: rows(room_b, a.peer_id) == ["a-0"])
            await a.sync.close(room_a)
            assert room_a.finished.is_set()  # the file is closed: the room reopens at once
            await watch.until(lambda: any(e.peer == a.peer_id and e.by_peer
                                          and e.reason is GoodbyeReason.NORMAL
                                          for e in watch.of(room_b, SessionEnded)))
            reopened = await a.sync.open(ROOM)
            assert reopened is not room_a and rows(reopened, a.peer_id) == ["a-0"]


async def test_node_shutdown_says_goodbye() -> None:
    with anyio.fail_after(15):
        async with Node(node_config()) as b:
            async with Node(node_config()) as a:
                room_a = await a.sync.open(ROOM, create=True)
                await b.connect(addr(a))
                room_b = await b.sync.open(ROOM, create=False)
                watch = Watch(room_b)
                await watch.until(lambda: room_b.status().peers == (a.peer_id,))
            await watch.until(lambda: bool(watch.of(room_b, SessionEnded)), timeout_s=5)
            ended = watch.of(room_b, SessionEnded)[0]
            assert ended.by_peer and ended.reason is GoodbyeReason.NORMAL, ended
            assert room_a.finished.is_set()


async def test_node_shutdown_leaves_no_task_running(tmp_path: Path) -> None:
    before = set(asyncio.all_tasks())
    with anyio.fail_after(15):
        async with Node(node_config(data_dir=tmp_path / "a")) as a, \
                Node(node_config(data_dir=tmp_path / "b")) as b:
            room_a = await a.sync.open(ROOM, create=True)
            await b.connect(addr(a))
            room_b = await b.sync.open(ROOM, create=False)
            watch = Watch(room_a, room_b)
            append_rows(room_a, ["a-0"])
            append_rows(room_b, ["b-0"])
            await watch.until(lambda: content(room_a) == content(room_b))
    assert room_a.finished.is_set() and room_b.finished.is_set()
    assert set(asyncio.all_tasks()) - before == set()
