"""The Yjs bridge (sync/bridge.py): one plain y-protocols client on a room's document.

The core is pumped by hand against a pycrdt client that runs pycrdt's own y-protocols
helpers, with the rooms on the in-memory RoomNetwork; the driver runs over an in-memory
byte stream pair. Nothing sleeps.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, create_sync_message, handle_sync_message

from lattica_nb.errors import ConfigError, DecodeError, LocalProtocolError, MessageTooLarge
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.sync.bridge import (
    SYNC_STEP1,
    SYNC_STEP2,
    SYNC_UPDATE,
    BridgeConfig,
    BridgeEvent,
    ClientSynced,
    ClientUpdateHeld,
    ClientUpdateRefused,
    YjsBridge,
    encode_sync_message,
    serve_bridge,
)
from lattica_nb.sync.config import SyncConfig
from lattica_nb.sync.driver import RoomDriver
from lattica_nb.sync.envelope import room_id
from lattica_nb.sync.room import Room
from lattica_nb.sync.rules import author_key
from lattica_nb.testing.rooms import RoomNetwork
from lattica_nb.testing.streams import memory_stream_pair
from lattica_nb.wire.framing import FrameReader, frame

ROOM = room_id("lab", "bridge")
CLIENT_ID = 0x5EED


# -- helpers ----------------------------------------------------------------------------------


class Client:
    """A plain y-protocols client: a pycrdt Doc and pycrdt's sync helpers, no envelopes."""

    def __init__(self, client_id: int = CLIENT_ID) -> None:
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self.outbox: list[bytes] = []
        self.received: list[bytes] = []
        self._remote = False
        self.doc.observe(self._on_transaction)

    @property
    def notes(self) -> Text:
        text: Text = self.doc.get("notes", type=Text)
        return text

    def _on_transaction(self, event: Any) -> None:
        update = bytes(event.update)
        if not self._remote and update != b"\x00\x00":
            self.outbox.append(encode_sync_message(SYNC_UPDATE, update))

    def apply_remote(self, update: bytes) -> None:
        """Take an update from elsewhere (not the client's own change, not sent)."""
        self._remote = True
        try:
            self.doc.apply_update(update)
        finally:
            self._remote = False

    def step1(self) -> bytes:
        return create_sync_message(self.doc)

    def receive(self, message: bytes) -> None:
        self.received.append(message)
        self._remote = True
        try:
            reply = handle_sync_message(message[1:], self.doc)  # pycrdt wants no outer byte
        finally:
            self._remote = False
        if reply is not None:
            self.outbox.append(reply)

    def take(self) -> list[bytes]:
        out, self.outbox = self.outbox, []
        return out


class Mesh:
    """Owner room A and room B (joined through A), with a bridge on B."""

    def __init__(self, config: BridgeConfig | None = None) -> None:
        self.keys = [PrivateKey.generate() for _ in range(2)]
        self.ids = [PeerId.from_public_key(k.public_key) for k in self.keys]
        self.net = RoomNetwork(random.Random(3))
        self.a = self.net.add(Room.create(self.keys[0], ROOM))
        self.b = self.net.add(Room.join(self.keys[1], ROOM))
        self.net.link(self.ids[0], self.ids[1])
        self.net.pump()
        self.bridge = YjsBridge(self.b, config)
        self.client = Client()

    def exchange(self) -> None:
        """Move messages between the bridge and the client until neither has any."""
        for _ in range(100):
            to_client = self.bridge.messages_to_send()
            to_bridge = self.client.take()
            if not to_client and not to_bridge:
                return
            for message in to_client:
                self.client.receive(message)
            for message in to_bridge:
                self.bridge.receive(message)
            self.bridge.retry_held()
        raise AssertionError("the bridge and the client did not settle")

    def connect(self) -> None:
        """Run the sync steps (the ClientSynced event is taken here)."""
        self.bridge.start()
        self.client.outbox.append(self.client.step1())
        self.exchange()
        assert self.events() == [ClientSynced()]

    def events(self) -> list[BridgeEvent]:
        out = []
        while (event := self.bridge.next_event()) is not None:
            out.append(event)
        return out


def content(doc: Doc[Any]) -> dict[str, Any]:
    return {
        "params": doc.get("params", type=Map).to_py(),
        "metrics": doc.get("metrics", type=Map).to_py(),
        "notes": str(doc.get("notes", type=Text)),
    }


def envelopes_by(room: Room, author: PeerId) -> int:
    return sum(1 for envelope in room.log.envelopes() if envelope.author == author)


def step_of(message: bytes) -> int:
    assert message[0] == 0, "a y-websocket sync message"
    return message[1]


# -- the sync steps ---------------------------------------------------------------------------


def test_handshake_merges_room_and_client_and_replicates() -> None:
    mesh = Mesh()
    mesh.a.doc.get("params", type=Map)["lr"] = 0.1
    mesh.a.doc.get("notes", type=Text).insert(0, "owner. ")
    mesh.net.pump()
    mesh.client.notes.insert(0, "client. ")
    mesh.client.take()  # written before connecting: the handshake carries it

    mesh.bridge.start()
    sent = mesh.bridge.messages_to_send()  # the room's changes since the bridge began, then step1
    assert [step_of(m) for m in sent] == [SYNC_UPDATE, SYNC_UPDATE, SYNC_STEP1]
    for message in sent:
        mesh.client.receive(message)
    mesh.client.outbox.append(mesh.client.step1())
    mesh.exchange()
    mesh.net.pump()

    assert mesh.bridge.synced
    assert [e for e in mesh.events() if isinstance(e, ClientSynced)] == [ClientSynced()]
    assert content(mesh.client.doc) == content(mesh.b.doc) == content(mesh.a.doc)
    assert "client. " in content(mesh.a.doc)["notes"]
    assert envelopes_by(mesh.a, mesh.ids[1]) == 1  # the client's text, signed by B


def test_client_update_is_signed_by_the_bridge_peer_and_never_echoed() -> None:
    mesh = Mesh()
    mesh.connect()
    before = envelopes_by(mesh.b, mesh.ids[1])

    mesh.client.notes.insert(0, "from the client")
    (update,) = mesh.client.take()
    mesh.bridge.receive(update)

    assert mesh.bridge.messages_to_send() == []  # no echo
    assert envelopes_by(mesh.b, mesh.ids[1]) == before + 1
    mesh.net.pump()
    assert content(mesh.a.doc)["notes"] == "from the client"
    assert mesh.bridge.messages_to_send() == []  # A's acknowledgement changes nothing


def test_a_remote_change_is_sent_exactly_once() -> None:
    mesh = Mesh()
    mesh.connect()

    mesh.a.doc.get("notes", type=Text).insert(0, "owner wrote this")
    mesh.net.pump()
    sent = mesh.bridge.messages_to_send()
    assert [step_of(m) for m in sent] == [SYNC_UPDATE]
    for message in sent:
        mesh.client.receive(message)
    assert str(mesh.client.notes) == "owner wrote this"
    assert mesh.client.take() == []  # the client does not send it back either
    mesh.net.pump()
    assert mesh.bridge.messages_to_send() == []


def test_a_local_edit_of_the_bridge_peer_is_sent_once() -> None:
    mesh = Mesh()
    mesh.connect()
    key = author_key(mesh.ids[1], "kernel")
    with mesh.b.doc.transaction():
        mesh.b.doc.get("metrics", type=Map)[key] = Array([{"step": 1}])
    sent = mesh.bridge.messages_to_send()
    assert [step_of(m) for m in sent] == [SYNC_UPDATE]
    mesh.client.receive(sent[0])
    assert content(mesh.client.doc)["metrics"] == {key: [{"step": 1.0}]}


def test_the_client_answers_our_step1_and_we_answer_its_step1() -> None:
    mesh = Mesh()
    mesh.a.doc.get("notes", type=Text).insert(0, "x")
    mesh.net.pump()
    mesh.bridge.messages_to_send()  # the owner's change, forwarded as it happened
    mesh.bridge.receive(mesh.client.step1())
    (step2,) = mesh.bridge.messages_to_send()
    assert step_of(step2) == SYNC_STEP2
    mesh.client.receive(step2)
    assert str(mesh.client.notes) == "x"
    assert not mesh.bridge.synced  # the client has not answered our step1 yet


# -- the rules, for the bridge's author ---------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "rule"),
    [("params", "owner-only"), ("metrics", "append-only per author"), ("other", "no rule")],
)
def test_an_edit_the_bridge_peer_may_not_make_is_refused_here(entry: str, rule: str) -> None:
    mesh = Mesh()
    mesh.connect()
    before_a, before_b, log = content(mesh.a.doc), content(mesh.b.doc), len(mesh.b.log)
    with mesh.client.doc.transaction():
        if entry == "metrics":  # another author's rows (A's key)
            mesh.client.doc.get("metrics", type=Map)[author_key(mesh.ids[0])] = Array([1])
        else:
            mesh.client.doc.get(entry, type=Map)["lr"] = 1.0
    mesh.exchange()
    mesh.net.pump()

    (refused,) = [e for e in mesh.events() if isinstance(e, ClientUpdateRefused)]
    assert (refused.entry, refused.rule) == (entry, rule)
    assert content(mesh.b.doc) == before_b and content(mesh.a.doc) == before_a
    assert len(mesh.b.log) == log  # nothing signed, so no other peer refuses anything
    assert mesh.a.status().refused == 0


def test_after_a_refused_edit_the_clients_later_edits_wait_in_yjs_order() -> None:
    mesh = Mesh()
    mesh.connect()
    mesh.client.doc.get("params", type=Map)["lr"] = 1.0
    mesh.client.notes.insert(0, "later")  # clock 1 of the client: needs the refused clock 0
    mesh.exchange()
    assert [type(e) for e in mesh.events()] == [ClientUpdateRefused, ClientUpdateHeld]
    assert content(mesh.b.doc)["notes"] == ""


def test_edits_the_bridge_peer_may_make_replicate() -> None:
    mesh = Mesh()
    mesh.connect()
    mine = author_key(mesh.ids[1], "node")
    with mesh.client.doc.transaction():
        mesh.client.doc.get("metrics", type=Map)[mine] = Array([{"step": 1}])
    mesh.client.doc.get("metrics", type=Map)[mine].append({"step": 2})
    mesh.client.notes.insert(0, "notes are anyone's")
    mesh.exchange()
    mesh.net.pump()
    assert mesh.events() == []
    expected = {
        "params": {},
        "metrics": {mine: [{"step": 1.0}, {"step": 2.0}]},
        "notes": "notes are anyone's",
    }
    assert content(mesh.client.doc) == content(mesh.b.doc) == content(mesh.a.doc) == expected


def test_owner_bridge_takes_params() -> None:
    key = PrivateKey.generate()
    room = Room.create(key, ROOM)
    bridge = YjsBridge(room)
    client = Client()
    client.doc.get("params", type=Map)["lr"] = 0.5
    (update,) = client.take()
    bridge.receive(update)
    assert room.doc.get("params", type=Map).to_py() == {"lr": 0.5}
    assert bridge.next_event() is None


def test_an_update_building_on_what_the_room_lacks_is_held_then_applied() -> None:
    mesh = Mesh()
    mesh.connect()
    mesh.a.doc.get("notes", type=Text).insert(0, "owner ")
    out_of_band = mesh.a.doc.get_update()  # the client sees it before room B does
    mesh.client.apply_remote(out_of_band)
    mesh.client.notes.insert(len(mesh.client.notes), "then client")
    (update,) = mesh.client.take()

    mesh.bridge.receive(update)
    assert [type(e) for e in mesh.events()] == [ClientUpdateHeld]
    assert mesh.bridge.held == 1
    assert content(mesh.b.doc)["notes"] == ""

    mesh.net.pump()  # B gets the owner's text
    mesh.bridge.retry_held()
    assert mesh.bridge.held == 0
    mesh.net.pump()
    assert content(mesh.a.doc)["notes"] == content(mesh.b.doc)["notes"] == "owner then client"


def test_held_updates_are_bounded() -> None:
    mesh = Mesh(BridgeConfig(max_held_updates=2))
    mesh.connect()
    ahead: Doc[Any] = Doc(client_id=99)
    ahead.get("notes", type=Text).insert(0, "elsewhere ")
    mesh.client.apply_remote(ahead.get_update())
    for index in range(3):
        mesh.client.notes.insert(len(mesh.client.notes), str(index))
    for message in mesh.client.take():
        mesh.bridge.receive(message)
    events = mesh.events()
    assert mesh.bridge.held == 2
    assert [type(e) for e in events].count(ClientUpdateRefused) == 1


# -- malformed and oversized input ----------------------------------------------------------------

def _an_update() -> bytes:
    doc: Doc[Any] = Doc(client_id=CLIENT_ID)
    doc.get("notes", type=Text).insert(0, "some text")
    return doc.get_update()


MALFORMED = {
    "empty": b"",
    "truncated type": b"\x80",
    "auth message": b"\x02\x00",
    "unknown step": b"\x00\x03\x00",
    "no step": b"\x00",
    "no length": b"\x00\x02",
    "short payload": b"\x00\x02\x05ab",
    "trailing bytes": b"\x00\x00\x01\x00\xff",
    "bad state vector": b"\x00\x00\x02\x01\xff",
    "junk update": b"\x00\x02\x04\x01\x02\x03\x04",
    "truncated update": encode_sync_message(SYNC_UPDATE, _an_update()[:-3]),
    "non-minimal varint": b"\x80\x00",
}


@pytest.mark.parametrize("message", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_input_raises_decode_error_and_leaves_the_room_alone(message: bytes) -> None:
    mesh = Mesh()
    mesh.connect()
    before, log = content(mesh.b.doc), len(mesh.b.log)

    with pytest.raises(DecodeError):
        mesh.bridge.receive(message)

    assert content(mesh.b.doc) == before and len(mesh.b.log) == log
    mesh.client.notes.insert(0, "still works")  # the bridge goes on
    mesh.exchange()
    mesh.net.pump()
    assert content(mesh.a.doc)["notes"] == "still works"


def test_oversized_message_is_refused_before_it_is_read() -> None:
    mesh = Mesh(BridgeConfig(max_message_bytes=64))
    mesh.connect()
    mesh.client.notes.insert(0, "x" * 100)
    (update,) = mesh.client.take()
    with pytest.raises(MessageTooLarge) as caught:
        mesh.bridge.receive(update)
    assert isinstance(caught.value, DecodeError) and caught.value.limit == 64
    assert content(mesh.b.doc)["notes"] == ""


def test_default_bound_is_one_mebibyte() -> None:
    mesh = Mesh()
    with pytest.raises(MessageTooLarge):
        mesh.bridge.receive(b"\x00\x02" + b"\x00" * (1 << 20))


def test_awareness_messages_are_ignored() -> None:
    mesh = Mesh()
    mesh.bridge.receive(b"\x01\x01\x00")
    mesh.bridge.receive(b"\x03")
    assert mesh.bridge.messages_to_send() == [] and mesh.bridge.next_event() is None


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from([b"", b"\x00", b"\x00\x00", b"\x00\x01", b"\x00\x02"]),
    body=st.binary(max_size=48),
)
def test_any_bytes_either_apply_or_raise_decode_error(prefix: bytes, body: bytes) -> None:
    room = Room.create(PrivateKey.generate(), ROOM)
    room.doc.get("notes", type=Text).insert(0, "kept")
    bridge = YjsBridge(room)
    state = room.doc.get_update()
    try:
        bridge.receive(prefix + body)
    except DecodeError:
        assert room.doc.get_update() == state


def test_closed_bridge_stops_observing() -> None:
    mesh = Mesh()
    mesh.connect()
    mesh.bridge.close()
    mesh.a.doc.get("notes", type=Text).insert(0, "later")
    mesh.net.pump()
    assert mesh.bridge.messages_to_send() == []
    with pytest.raises(LocalProtocolError):
        mesh.bridge.receive(mesh.client.step1())


@pytest.mark.parametrize(
    "field", ["max_message_bytes", "max_held_updates", "send_queue_messages"]
)
def test_config_is_validated(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        BridgeConfig(**{field: 0})


# -- the driver, over an in-memory stream ---------------------------------------------------------


class StreamClient:
    """A Client on one end of a memory stream pair, framed like the bridge's wire."""

    def __init__(self, stream: Any) -> None:
        self.client = Client()
        self.stream = stream
        self.reader = FrameReader(stream, max_bytes=1 << 20)

    async def send(self, message: bytes) -> None:
        await self.stream.send(frame(message))

    async def flush(self) -> None:
        for message in self.client.take():
            await self.send(message)

    async def until(self, done: Any) -> None:
        """Handle the bridge's messages until ``done()`` holds."""
        while not done():
            data = await self.reader.read_or_none()
            assert data is not None, "the bridge closed the stream"
            self.client.receive(data)
            await self.flush()


@pytest.mark.anyio
async def test_serve_bridge_over_a_stream() -> None:
    key = PrivateKey.generate()
    room = Room.create(key, ROOM)
    driver = RoomDriver("bridge", room, SyncConfig(), store=None, file=None)
    events: list[BridgeEvent] = []
    ours, theirs = memory_stream_pair()
    remote = StreamClient(theirs)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(driver.run)
            room.doc.get("params", type=Map)["lr"] = 0.1
            result: list[Any] = []

            async def bridge() -> None:
                result.append(await serve_bridge(driver, ours, on_event=events.append))

            tg.start_soon(bridge)
            await remote.send(remote.client.step1())
            await remote.until(lambda: remote.client.doc.get("params", type=Map).to_py())
            assert remote.client.doc.get("params", type=Map).to_py() == {"lr": 0.1}

            remote.client.doc.get("params", type=Map)["seed"] = 7
            await remote.flush()
            room.doc.get("notes", type=Text).insert(0, "go")  # the loop's own edit
            await remote.until(lambda: str(remote.client.notes) == "go")
            assert room.doc.get("params", type=Map).to_py() == {"lr": 0.1, "seed": 7.0}
            assert ClientSynced() in events

            await remote.send(b"\x00\x02\x04junk")  # malformed: the client is disconnected
            while await remote.reader.read_or_none() is not None:
                pass
            assert room.doc.get("params", type=Map).to_py() == {"lr": 0.1, "seed": 7.0}
            driver.stop()
    (ended,) = result
    assert isinstance(ended.error, DecodeError)
    assert str(room.doc.get("notes", type=Text)) == "go"


@pytest.mark.anyio
async def test_serve_bridge_ends_when_the_room_closes_and_on_an_oversized_frame() -> None:
    room = Room.create(PrivateKey.generate(), ROOM)
    driver = RoomDriver("bridge", room, SyncConfig(), store=None, file=None)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(driver.run)
            ours, theirs = memory_stream_pair()
            config = BridgeConfig(max_message_bytes=32)
            await theirs.send(frame(b"\x00" * 33))
            ended = await serve_bridge(driver, ours, config=config)
            assert isinstance(ended.error, DecodeError)

            ours, theirs = memory_stream_pair()
            done: list[Any] = []

            async def bridge(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
                done.append(await serve_bridge(driver, ours, task_status=task_status))

            await tg.start(bridge)
            driver.stop()
    assert done[0].reason == "the room was closed"
    assert done[0].error is None
