"""Independently written Yjs peers in a room through the bridge (lattica_nb.sync.bridge).

Two real nodes on 127.0.0.1 share a room: A created it (the owner), B joined it. A Node
``yjs`` + ``y-protocols`` client (``yjs_node/yjs_bridge_client.mjs``) connects over a local
TCP socket to a bridge served by B, so its edits are signed by B and replicate to A, and A's
edits reach it; y-py applies the room's updates and its own go in through a bridge and as a
local edit. Waiting is on room events and on the client's own wait commands, never a sleep.
"""

from __future__ import annotations

import functools
import itertools
import json
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import IO, Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from pycrdt import Array, Map, Text

from lattica_nb import Node, NodeConfig
from lattica_nb.sync.bridge import (
    SYNC_UPDATE,
    BridgeEvent,
    ClientSynced,
    ClientUpdateRefused,
    YjsBridge,
    listen_bridge,
    serve_bridge_tcp,
)
from lattica_nb.sync.config import SyncConfig
from lattica_nb.sync.driver import RoomDriver
from lattica_nb.sync.rules import author_key
from lattica_nb.testing.yjs_peers import (
    YJS_NODE_DIR,
    SyncType,
    YpyPeer,
    find_node,
    random_client_id,
    strip_sync_prefix,
    sync_message,
    yjs_node_unavailable,
    ypy_unavailable,
)

pytestmark = [pytest.mark.interop, pytest.mark.anyio, pytest.mark.timeout(30)]

ROOM = "bridge-sweep"
BRIDGE_CLIENT = YJS_NODE_DIR / "yjs_bridge_client.mjs"
TYPES = {"params": "map", "metrics": "map", "notes": "text"}
STEP_TIMEOUT_S = 10.0
MAX_LINE_BYTES = 1 << 20


# -- helpers ----------------------------------------------------------------------------------


@asynccontextmanager
async def two_nodes() -> AsyncIterator[tuple[RoomDriver, RoomDriver]]:
    """Room ``ROOM`` on node A (created: A owns it) and node B (joined through A)."""
    config = NodeConfig(ephemeral=True, sync=SyncConfig(join_timeout_s=STEP_TIMEOUT_S))
    async with Node(config) as a, Node(config) as b:
        room_a = await a.sync.open(ROOM, create=True)
        await b.connect(a.listen_addrs[0].with_peer_id(a.peer_id))
        room_b = await b.sync.open(ROOM, create=False)
        yield room_a, room_b


def view(driver: RoomDriver) -> dict[str, Any]:
    doc = driver.doc
    return {
        "params": doc.get("params", type=Map).to_py(),
        "metrics": doc.get("metrics", type=Map).to_py(),
        "notes": str(doc.get("notes", type=Text)),
    }


def notes(driver: RoomDriver) -> Text:
    text: Text = driver.doc.get("notes", type=Text)
    return text


async def settle(driver: RoomDriver, done: Callable[[], bool], what: str) -> None:
    """Wait (on room events, never a sleep) until ``done()`` holds in ``driver``'s room."""
    changed = anyio.Event()

    def on_event(_: object) -> None:
        changed.set()

    unsubscribe = driver.observe(on_event)
    try:
        with anyio.move_on_after(STEP_TIMEOUT_S):
            while not done():
                await changed.wait()
                changed = anyio.Event()
        assert done(), f"room {driver.name} never reached: {what}; it holds {view(driver)}"
    finally:
        unsubscribe()


class BridgeClient:
    """``yjs_bridge_client.mjs`` as a child process: one JSON command line, one reply line."""

    def __init__(self, process: anyio.abc.Process, stderr: IO[bytes]) -> None:
        if process.stdin is None or process.stdout is None:
            raise AssertionError("the client's stdio must be pipes")
        self._process = process
        self._stdin = process.stdin
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self._stderr = stderr
        self._ids = itertools.count(1)
        self.client_id = 0

    @classmethod
    @asynccontextmanager
    async def start(cls, port: int, client_id: int) -> AsyncIterator[BridgeClient]:
        node = find_node()
        assert node is not None
        argv = [node, str(BRIDGE_CLIENT), "--port", str(port), "--client-id", str(client_id)]
        with tempfile.TemporaryFile() as stderr:
            process = await anyio.open_process(argv, cwd=YJS_NODE_DIR, stderr=stderr)
            client = cls(process, stderr)
            try:
                ready = await client._read_line()
                assert ready.get("ready") is True, ready
                client.client_id = int(ready["client_id"])
                yield client
            finally:
                await client._stop()

    async def request(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send one command; its reply (AssertionError, with the client's stderr, if not ok)."""
        ident = next(self._ids)
        line = json.dumps({"id": ident, **command}).encode() + b"\n"
        await self._stdin.send(line)
        reply = await self._read_line()
        assert reply.get("id") == ident, reply
        assert reply.get("ok") is True, f"{command['cmd']}: {reply.get('error')}{self._tail()}"
        return reply

    async def dump(self) -> dict[str, Any]:
        reply = await self.request({"cmd": "dump", "types": TYPES})
        return dict(reply["doc"])

    async def wait(self, name: str, equals: Any) -> None:
        timeout_ms = int(STEP_TIMEOUT_S * 1000)
        await self.request(
            {"cmd": "wait", "name": name, "kind": TYPES[name], "equals": equals,
             "timeout_ms": timeout_ms}
        )

    async def _read_line(self) -> dict[str, Any]:
        try:
            with anyio.fail_after(STEP_TIMEOUT_S + 5):
                line = await self._stdout.receive_until(b"\n", MAX_LINE_BYTES)
        except (anyio.EndOfStream, anyio.IncompleteRead) as exc:
            raise AssertionError(f"the Node client exited{self._tail()}") from exc
        parsed = json.loads(line)
        assert isinstance(parsed, dict), line
        return parsed

    def _tail(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read()[-2000:].decode("utf-8", "replace").strip()
        return f"; its stderr ends with:\n{text}" if text else ""

    async def _stop(self) -> None:
        process = self._process
        with anyio.move_on_after(5, shield=True):
            await self._stdin.aclose()  # the client closes its connection and exits
            await process.wait()
        if process.returncode is None:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
        with anyio.CancelScope(shield=True):
            await process.aclose()


def needs_node() -> None:
    reason = yjs_node_unavailable()
    if reason is not None:
        pytest.skip(f"the Node yjs client cannot run: {reason}")


def needs_ypy() -> None:
    reason = ypy_unavailable()
    if reason is not None:
        pytest.skip(f"y-py is not available: {reason}")


# -- Node yjs + y-protocols -------------------------------------------------------------------


async def test_node_client_through_a_bridge_converges_with_two_nodes() -> None:
    needs_node()
    async with two_nodes() as (room_a, room_b), anyio.create_task_group() as tg:
        room_a.doc.get("params", type=Map)["lr"] = 0.1
        notes(room_a).insert(0, "A: data loaded. ")
        await settle(room_b, lambda: view(room_b) == view(room_a), "A's first edits")

        events: list[BridgeEvent] = []
        port = await tg.start(functools.partial(serve_bridge_tcp, room_b, on_event=events.append))
        async with BridgeClient.start(port, random_client_id()) as client:
            await client.request({"cmd": "wait_synced"})
            assert await client.dump() == view(room_a)

            # The Node client writes what B may write: notes, and metrics under B's own key.
            rows = author_key(room_b.room.peer_id, "node")
            await client.request({"cmd": "text_insert", "text": "notes", "index": 16,
                                  "value": "node: warmup done. "})
            await client.request({"cmd": "append_row", "map": "metrics", "key": rows,
                                  "value": {"step": 1, "loss": 2.5}})
            await client.request({"cmd": "append_row", "map": "metrics", "key": rows,
                                  "value": {"step": 2, "loss": 1.25}})
            expected_metrics = {rows: [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 1.25}]}
            await settle(room_a, lambda: view(room_a)["metrics"] == expected_metrics
                         and "node: warmup done. " in view(room_a)["notes"], "the Node edits")
            assert view(room_a)["notes"] == "A: data loaded. node: warmup done. "

            # A's edit reaches the Node client.
            notes(room_a).insert(len(notes(room_a)), "A: ack.")
            await client.wait("notes", "A: data loaded. node: warmup done. A: ack.")

            # Concurrent edits on both ends merge the same everywhere.
            notes(room_a).insert(0, "[A] ")
            await client.request({"cmd": "text_insert", "text": "notes", "index": 0,
                                  "value": "[node] "})
            await settle(room_a, lambda: "[node] " in view(room_a)["notes"]
                         and "[A] " in view(room_a)["notes"], "both concurrent inserts")
            await client.wait("notes", view(room_a)["notes"])
            await settle(room_b, lambda: view(room_b) == view(room_a), "B converging")

            final = await client.dump()
            assert final == view(room_a) == view(room_b)
            for entry in TYPES:  # entry by entry, for a readable failure
                assert final[entry] == view(room_a)[entry], entry
            assert final["params"] == {"lr": 0.1}
            assert [e for e in events if isinstance(e, ClientSynced)] == [ClientSynced()]
            assert not [e for e in events if isinstance(e, ClientUpdateRefused)]
        tg.cancel_scope.cancel()


async def test_a_misbehaving_node_client_is_disconnected_and_the_room_goes_on() -> None:
    needs_node()
    events: list[BridgeEvent] = []
    async with two_nodes() as (room_a, room_b):
        room_a.doc.get("params", type=Map)["lr"] = 0.1
        await settle(room_b, lambda: view(room_b) == view(room_a), "A's params")
        async with listen_bridge(room_b, on_event=events.append) as port:
            # params is the owner's (A's): through B's bridge the edit is refused at B.
            async with BridgeClient.start(port, random_client_id()) as client:
                await client.request({"cmd": "wait_synced"})
                await client.request({"cmd": "set", "map": "params", "key": "lr", "value": 9.0})
                await client.request({"cmd": "wait_closed"})
            (refused,) = [e for e in events if isinstance(e, ClientUpdateRefused)]
            assert (refused.entry, refused.rule) == ("params", "owner-only")

            # Bytes that are no y-protocols message end that client's connection only.
            async with BridgeClient.start(port, random_client_id()) as client:
                await client.request({"cmd": "wait_synced"})
                await client.request({"cmd": "send_raw", "data_b64": "AAIEanVuaw=="})
                await client.request({"cmd": "wait_closed"})

            assert view(room_a)["params"] == view(room_b)["params"] == {"lr": 0.1}
            assert room_a.status().refused == room_b.status().refused == 0
            notes(room_a).insert(0, "still syncing")
            await settle(room_b, lambda: view(room_b)["notes"] == "still syncing", "A's notes")

            async with BridgeClient.start(port, random_client_id()) as client:  # a new one works
                await client.request({"cmd": "wait_synced"})
                await client.request({"cmd": "text_insert", "text": "notes", "index": 0,
                                      "value": "ok: "})
                await settle(room_a, lambda: view(room_a)["notes"] == "ok: still syncing",
                             "the new client's edit")


# -- y-py ---------------------------------------------------------------------------------------


def ypy_view(peer: YpyPeer) -> dict[str, Any]:
    return {"params": peer.map("params"), "metrics": peer.map("metrics"),
            "notes": peer.text("notes")}


def deliver(bridge: YjsBridge, peer: YpyPeer) -> list[bytes]:
    """Move the bridge's messages into y-py (and y-py's replies back); the messages moved."""
    moved = []
    while messages := bridge.messages_to_send():
        for message in messages:
            moved.append(message)
            reply = peer.handle_sync(strip_sync_prefix(message))
            if reply is not None:
                bridge.receive(b"\x00" + reply)
    return moved


async def test_ypy_applies_room_updates_and_its_updates_replicate() -> None:
    needs_ypy()
    async with two_nodes() as (room_a, room_b):
        own = author_key(room_a.room.peer_id, "run-1")
        room_a.doc.get("params", type=Map)["lr"] = 0.25
        room_a.doc.get("params", type=Map)["layers"] = [64, 64]
        with room_a.doc.transaction():
            room_a.doc.get("metrics", type=Map)[own] = Array([{"step": 1, "loss": 0.75}])
        notes(room_a).insert(0, "from A. ")
        await settle(room_b, lambda: view(room_b) == view(room_a), "A's first edits")

        # The full state, as a room's document gives it.
        ypy = YpyPeer(client_id=random_client_id())
        ypy.apply_update(room_a.doc.get_update())
        assert ypy_view(ypy) == view(room_a)

        # Incremental updates: the ones B's bridge captures from B's room.
        bridge = YjsBridge(room_b.room)
        try:
            bridge.start()
            deliver(bridge, ypy)
            bridge.receive(b"\x00" + ypy.sync_step1())
            deliver(bridge, ypy)
            assert bridge.synced

            room_a.doc.get("metrics", type=Map)[own].append({"step": 2, "loss": 0.5})
            notes(room_a).insert(len(notes(room_a)), "more from A. ")
            await settle(room_b, lambda: view(room_b) == view(room_a), "A's later edits")
            moved = deliver(bridge, ypy)
            assert [strip_sync_prefix(m)[0] for m in moved] == [SYNC_UPDATE, SYNC_UPDATE]
            assert ypy_view(ypy) == view(room_a)

            # A y-py update through the bridge: signed by B, replicated to A.
            update = ypy.text_insert("notes", len(ypy.text("notes")), "y-py via B.")
            bridge.receive(b"\x00" + sync_message(SyncType.UPDATE, update))
            assert bridge.messages_to_send() == []  # never echoed
            await settle(room_a, lambda: view(room_a)["notes"].endswith("y-py via B."),
                         "y-py's update through the bridge")

            # A y-py update as a local edit of A: signed by A, replicated to B.
            update = ypy.text_insert("notes", 0, "[y-py] ")
            room_a.doc.apply_update(update)
            await settle(room_b, lambda: view(room_b) == view(room_a), "y-py's local edit on A")
            deliver(bridge, ypy)  # B's copy comes back to y-py: already there
            assert bridge.next_event() == ClientSynced()
            assert bridge.next_event() is None  # nothing held, nothing refused
        finally:
            bridge.close()

        expected = "[y-py] from A. more from A. y-py via B."
        assert ypy_view(ypy) == view(room_a) == view(room_b)
        assert view(room_a)["notes"] == expected
        assert ypy.map("metrics") == {own: [{"step": 1, "loss": 0.75}, {"step": 2, "loss": 0.5}]}
