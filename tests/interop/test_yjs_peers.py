"""pycrdt against independently written Yjs peers: Node ``yjs`` + ``y-protocols``, and y-py.

The Node client (``tests/interop/yjs_node/yjs_peer.mjs``, driven by
``lattica_nb.testing.yjs_peers.YjsNodePeer``) speaks y-protocols sync and awareness over
stdio; pycrdt speaks it through its own ``handle_sync_message`` / ``create_sync_message`` /
``create_update_message`` / ``Awareness``. y-py (the older yrs binding) exchanges raw updates
and the sync steps ``YpyPeer`` puts on top of it. These tests are the yardstick the mesh's Yjs
rooms will be held to: whatever our rooms do to pycrdt documents, these peers must still read.

Every document uses a 32-bit client id, as Yjs does (with pycrdt's default 53-bit ids, y-py
and pycrdt diverge on concurrent writes: here pycrdt dropped y-py's concurrent array insert).
Nothing sleeps: each exchange is a request with a deadline, and each test has a timeout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from pycrdt import (
    Array,
    Awareness,
    Doc,
    Map,
    Text,
    create_sync_message,
    create_update_message,
    handle_sync_message,
)

from lattica_nb.testing.foreign_peers import ForeignPeerError
from lattica_nb.testing.yjs_peers import (
    YJS_NODE_VERSIONS,
    SyncType,
    YjsNodePeer,
    YjsReply,
    YpyPeer,
    read_sync_message,
    strip_sync_prefix,
    sync_message,
    yjs_node_unavailable,
    ypy_unavailable,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

START_TIMEOUT_S = 30.0
LOW_CLIENT, HIGH_CLIENT = 1_000, 4_000_000_000
VALUES_MODULE = "lattica_nb.sync.values"


# -- fixtures -----------------------------------------------------------------------------
NodeFactory = Callable[..., YjsNodePeer]


@pytest.fixture
def start_node() -> Iterator[NodeFactory]:
    """Start Node Yjs clients (``start_node(client_id=...)``); all are closed afterwards."""
    reason = yjs_node_unavailable()
    if reason is not None:
        pytest.skip(reason)
    started: list[YjsNodePeer] = []

    def start(client_id: int | None = None) -> YjsNodePeer:
        peer = YjsNodePeer(client_id=client_id, name=f"yjs-node-{len(started)}")
        started.append(peer)
        peer.start(timeout_s=START_TIMEOUT_S)
        return peer

    yield start
    for peer in started:
        assert peer.close() == 0, peer.stderr_tail()


@pytest.fixture
def node(start_node: NodeFactory) -> YjsNodePeer:
    return start_node(client_id=HIGH_CLIENT)


@pytest.fixture
def ypy() -> None:
    reason = ypy_unavailable()
    if reason is not None:
        pytest.skip(reason)


# -- the pycrdt side ----------------------------------------------------------------------
class PycrdtPeer:
    """A pycrdt Doc speaking bare y-protocols sync messages through pycrdt's own helpers."""

    def __init__(self, client_id: int) -> None:
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self.params = self.doc.get("params", type=Map)
        self.metrics = self.doc.get("metrics", type=Array)
        self.notes = self.doc.get("notes", type=Text)
        self._updates: list[bytes] = []
        self.doc.observe(lambda event: self._updates.append(event.update))

    def step1(self) -> bytes:
        return strip_sync_prefix(create_sync_message(self.doc))

    def handle(self, message: bytes) -> bytes | None:
        """Handle one bare sync message; return the bare SyncStep2 answering a SyncStep1."""
        before = len(self._updates)
        reply = handle_sync_message(message, self.doc)
        del self._updates[before:]  # what arrived is not ours to send back
        return None if reply is None else strip_sync_prefix(reply)

    def local_updates(self) -> list[bytes]:
        """Update messages for the local edits since the last call, in order."""
        updates, self._updates = self._updates, []
        return [strip_sync_prefix(create_update_message(update)) for update in updates]

    def view(self) -> dict[str, Any]:
        return {
            "params": self.params.to_py(),
            "metrics": self.metrics.to_py(),
            "notes": str(self.notes),
        }


def handshake(py: PycrdtPeer, node: YjsNodePeer) -> None:
    """Both sync steps in both directions, as a provider and its server do on connect."""
    reply = py.handle(node.step1())
    assert reply is not None and read_sync_message(reply)[0] is SyncType.STEP2
    assert node.send_sync(reply).messages == ()
    answer = node.send_sync(py.step1())
    assert answer.reply["sync_type"] == SyncType.STEP1
    (step2,) = answer.sync_messages()
    assert py.handle(step2) is None


def to_node(py: PycrdtPeer, node: YjsNodePeer) -> None:
    for message in py.local_updates():
        assert node.send_sync(message).messages == ()  # nothing echoed back


def to_py(reply: YjsReply, py: PycrdtPeer) -> None:
    for message in reply.sync_messages():
        assert read_sync_message(message)[0] is SyncType.UPDATE
        assert py.handle(message) is None


def node_view(node: YjsNodePeer) -> dict[str, Any]:
    doc = node.dump(types={"params": "map", "metrics": "array", "notes": "text"}).doc
    return {"params": doc["params"], "metrics": doc["metrics"], "notes": doc["notes"]}


# -- the Node client itself ---------------------------------------------------------------
def test_node_client_announces_pinned_versions_and_a_32_bit_client_id(
    start_node: NodeFactory,
) -> None:
    fixed = start_node(client_id=2**32 - 1)
    assert fixed.client_id == 2**32 - 1
    assert {k: fixed.ready.versions[k] for k in YJS_NODE_VERSIONS} == YJS_NODE_VERSIONS
    assert 0 <= start_node().client_id < 2**32
    with pytest.raises(ValueError, match="32-bit"):
        YjsNodePeer(client_id=2**32)


def test_node_client_refuses_bad_input_and_keeps_going(node: YjsNodePeer) -> None:
    for bad in (
        b"\x07\x00",  # no such sync message type
        sync_message(SyncType.UPDATE, b"\xff\xff\xff"),  # not a Yjs update
        sync_message(SyncType.STEP1, b"\x99"),  # truncated state vector
    ):
        with pytest.raises(ForeignPeerError, match="could not do 'sync'"):
            node.send_sync(bad)
    with pytest.raises(ForeignPeerError, match="unknown edit"):
        node.request({"cmd": "frobnicate"})
    with pytest.raises(ValueError, match="JSON cannot hold"):
        node.set("params", "lr", math.nan)
    (update,) = node.set("params", "lr", 0.1).sync_messages()
    assert read_sync_message(update)[0] is SyncType.UPDATE
    assert node.dump().doc == {"params": {"lr": 0.1}}


# -- pycrdt <-> Node yjs over y-protocols -------------------------------------------------
def test_handshake_merges_what_each_side_wrote_before_connecting(node: YjsNodePeer) -> None:
    py = PycrdtPeer(LOW_CLIENT)
    node.set("params", "lr", 0.001)
    node.push("metrics", {"step": 1, "loss": 2.5})
    node.text_insert("notes", 0, "node: warmup done. ")
    py.params["batch_size"] = 32
    py.params["optimizer"] = {"name": "adamw", "betas": [0.9, 0.999]}
    py.metrics.append({"step": 1, "loss": 2.75})
    py.notes += "py: data loaded. "
    py.local_updates()  # the handshake carries them

    handshake(py, node)

    merged = py.view()
    assert node_view(node) == merged
    assert merged["params"] == {
        "lr": 0.001,
        "batch_size": 32,
        "optimizer": {"name": "adamw", "betas": [0.9, 0.999]},
    }
    assert sorted(m["loss"] for m in merged["metrics"]) == [2.5, 2.75]
    assert sorted(merged["notes"].split(". ")) == ["", "node: warmup done", "py: data loaded"]


def test_live_updates_flow_both_ways(node: YjsNodePeer) -> None:
    py = PycrdtPeer(LOW_CLIENT)
    handshake(py, node)

    to_py(node.set("params", "lr", 0.01), py)
    to_py(node.push("metrics", {"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.25}), py)
    to_py(node.text_insert("notes", 0, "started"), py)
    assert py.params.to_py() == {"lr": 0.01}
    assert py.metrics.to_py() == [{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.25}]
    assert str(py.notes) == "started"

    py.params["lr"] = 0.02
    py.params["tags"] = ["baseline", "ünïcode ✓"]
    py.metrics.append({"step": 3, "loss": 1.0})
    py.notes.insert(len(py.notes), "; diverged at step 3")
    to_node(py, node)
    assert node_view(node) == {
        "params": {"lr": 0.02, "tags": ["baseline", "ünïcode ✓"]},
        "metrics": [
            {"step": 1, "loss": 1.5},
            {"step": 2, "loss": 1.25},
            {"step": 3, "loss": 1.0},
        ],
        "notes": "started; diverged at step 3",
    }

    to_py(node.delete("params", "tags"), py)
    del py.metrics[0]
    to_node(py, node)
    to_py(node.transact([{"cmd": "set", "map": "params", "key": "epochs", "value": 3}]), py)
    assert node_view(node) == py.view()
    assert py.params.to_py() == {"lr": 0.02, "epochs": 3}
    assert [m["step"] for m in py.metrics.to_py()] == [2, 3]


def test_a_transaction_in_node_is_one_update(node: YjsNodePeer) -> None:
    py = PycrdtPeer(LOW_CLIENT)
    handshake(py, node)
    reply = node.transact(
        [
            {"cmd": "set", "map": "params", "key": "lr", "value": 0.1},
            {"cmd": "set", "map": "params", "key": "seed", "value": 7},
            {"cmd": "push", "array": "metrics", "value": {"step": 0}},
        ]
    )
    assert len(reply.sync_messages()) == 1
    to_py(reply, py)
    assert py.view() == {"params": {"lr": 0.1, "seed": 7}, "metrics": [{"step": 0}], "notes": ""}


@pytest.mark.parametrize(
    ("py_client", "node_client"),
    [(LOW_CLIENT, HIGH_CLIENT), (HIGH_CLIENT, LOW_CLIENT)],
    ids=["node-id-higher", "pycrdt-id-higher"],
)
def test_concurrent_edits_merge_identically(
    start_node: NodeFactory, py_client: int, node_client: int
) -> None:
    node = start_node(client_id=node_client)
    py = PycrdtPeer(py_client)
    to_py(node.set("params", "lr", 0.1), py)
    to_py(node.set("params", "dropout", 0.2), py)
    to_py(node.push("metrics", {"step": 0, "by": "node"}), py)
    to_py(node.text_insert("notes", 0, "base"), py)
    assert node_view(node) == py.view()

    # Concurrent: neither side sees the other's edits until both have made theirs.
    from_node = [
        node.set("params", "lr", 0.5),
        node.delete("params", "dropout"),
        node.push("metrics", {"step": 1, "by": "node"}),
        node.text_insert("notes", 4, " [node]"),
    ]
    py.params["lr"] = 0.25
    py.params["dropout"] = 0.3  # concurrent with Node's delete
    py.metrics.append({"step": 1, "by": "py"})
    py.notes.insert(4, " [py]")
    to_node(py, node)
    for reply in from_node:
        to_py(reply, py)

    merged = py.view()
    assert node_view(node) == merged
    # Yjs orders concurrent inserts by client id: the higher id's map write wins, the lower
    # id's array and text inserts come first. All implementations must apply the same rule.
    node_first = node_client < py_client
    assert merged["params"]["lr"] == (0.25 if node_first else 0.5)
    assert merged["params"]["dropout"] == 0.3  # a concurrent set outlives a delete
    by = [m["by"] for m in merged["metrics"][1:]]
    assert by == (["node", "py"] if node_first else ["py", "node"])
    assert merged["notes"] == ("base [node] [py]" if node_first else "base [py] [node]")

    # A third implementation, fed both documents, must agree too.
    ypy_reason = ypy_unavailable()
    if ypy_reason is None:
        third = YpyPeer(client_id=42)
        third.apply_update(py.doc.get_update())
        assert third.map("params") == merged["params"]
        assert third.array("metrics") == merged["metrics"]
        assert third.text("notes") == merged["notes"]


def test_awareness_both_ways(node: YjsNodePeer) -> None:
    py = PycrdtPeer(LOW_CLIENT)
    awareness = Awareness(py.doc)
    mine = {"user": {"name": "py-kernel", "note": "naïve ✓"}, "cursor": None}
    awareness.set_local_state(mine)
    node.send_awareness(awareness.encode_awareness_update([awareness.client_id]))
    assert node.dump().awareness[LOW_CLIENT] == mine

    theirs = {"user": {"name": "node-client", "city": "Zürich 東京"}}
    awareness.apply_awareness_update(node.set_awareness(theirs), "node")
    assert awareness.states[node.client_id] == theirs
    assert node.dump().awareness == {LOW_CLIENT: mine, node.client_id: theirs}

    awareness.apply_awareness_update(node.set_awareness(None), "node")
    assert node.client_id not in awareness.states
    awareness.set_local_state(None)
    node.send_awareness(awareness.encode_awareness_update([awareness.client_id]))
    assert node.dump().awareness == {}


# -- y-py <-> pycrdt (and Node) -------------------------------------------------------------
@pytest.mark.usefixtures("ypy")
def test_ypy_and_pycrdt_apply_each_others_updates() -> None:
    py = PycrdtPeer(LOW_CLIENT)
    other = YpyPeer(client_id=HIGH_CLIENT)

    py.params["lr"] = 0.1
    py.params["layers"] = [64, 64, {"kind": "head"}]
    py.metrics.append({"step": 1, "loss": 0.75})
    py.notes += "from pycrdt"
    for message in py.local_updates():
        other.handle_sync(message)
    assert other.map("params") == {"lr": 0.1, "layers": [64, 64, {"kind": "head"}]}
    assert other.array("metrics") == [{"step": 1, "loss": 0.75}]
    assert other.text("notes") == "from pycrdt"

    for update in (
        other.set("params", "lr", 0.05),
        other.set("params", "name", "ypy-run"),
        other.push("metrics", {"step": 2, "loss": 0.5}),
        other.text_insert("notes", 0, "y-py + "),
        other.delete("params", "layers"),
    ):
        py.doc.apply_update(update)
    assert py.view() == {
        "params": {"lr": 0.05, "name": "ypy-run"},
        "metrics": [{"step": 1, "loss": 0.75}, {"step": 2, "loss": 0.5}],
        "notes": "y-py + from pycrdt",
    }


@pytest.mark.usefixtures("ypy")
@pytest.mark.parametrize(
    ("py_client", "ypy_client"),
    [(LOW_CLIENT, HIGH_CLIENT), (HIGH_CLIENT, LOW_CLIENT)],
    ids=["ypy-id-higher", "pycrdt-id-higher"],
)
def test_ypy_and_pycrdt_merge_concurrent_edits_identically(py_client: int, ypy_client: int) -> None:
    py = PycrdtPeer(py_client)
    other = YpyPeer(client_id=ypy_client)
    py.params["lr"] = 0.1
    py.metrics.append(0)
    other.apply_update(py.doc.get_update())
    shared = other.state_vector()

    py.params["lr"] = 0.25
    py.params["owner"] = "py"
    py.metrics.append("py")
    other.set("params", "lr", 0.5)
    other.set("params", "owner", "ypy")
    other.push("metrics", "ypy")

    ypy_missing = py.doc.get_update(other.state_vector())
    py.doc.apply_update(other.update(shared))
    other.apply_update(ypy_missing)
    merged = py.view()
    assert other.map("params") == merged["params"]
    assert other.array("metrics") == merged["metrics"]
    ypy_first = ypy_client < py_client  # the rule of test_concurrent_edits_merge_identically
    assert merged["params"] == (
        {"lr": 0.25, "owner": "py"} if ypy_first else {"lr": 0.5, "owner": "ypy"}
    )
    assert merged["metrics"][1:] == (["ypy", "py"] if ypy_first else ["py", "ypy"])


@pytest.mark.usefixtures("ypy")
def test_ypy_runs_the_sync_steps_with_node(node: YjsNodePeer) -> None:
    other = YpyPeer(client_id=LOW_CLIENT)
    other.set("params", "from", "ypy")
    node.set("params", "from_node", True)
    node.push("metrics", 1, 2, 3)

    reply = other.handle_sync(node.step1())
    assert reply is not None
    node.send_sync(reply)
    (step2,) = node.send_sync(other.sync_step1()).sync_messages()
    assert other.handle_sync(step2) is None

    for update in node.set("params", "lr", 0.125).sync_messages():
        other.handle_sync(update)
    assert other.map("params") == node.dump().doc["params"]
    assert other.map("params") == {"from": "ypy", "from_node": True, "lr": 0.125}
    assert other.array("metrics") == [1, 2, 3]


# -- values ---------------------------------------------------------------------------------
PLAIN_VALUES: dict[str, Any] = {
    "str": "résumé ✓",
    "empty": "",
    "true": True,
    "false": False,
    "none": None,
    "float": 0.1,
    "neg_float": -1.5e-300,
    "small_int": 7,
    "int32_max": 2**31 - 1,
    "safe_int": 2**53 - 1,
    "neg_int": -(2**40),
    "list": [1, 2.5, "x", None, [True]],
    "dict": {"a": {"b": [1, {"c": "d"}]}},
}


def test_plain_json_values_read_the_same_in_node_and_back(node: YjsNodePeer) -> None:
    py = PycrdtPeer(LOW_CLIENT)
    handshake(py, node)
    for key, value in PLAIN_VALUES.items():
        py.params[key] = value
    to_node(py, node)
    assert node.dump().doc["params"] == PLAIN_VALUES

    for key in PLAIN_VALUES:
        to_py(node.copy("params", key, "echo", key), py)
    echoed = py.doc.get("echo", type=Map).to_py()
    # pycrdt hands every number back as a float (7 -> 7.0); the values compare equal.
    assert echoed == PLAIN_VALUES
    assert isinstance(echoed["small_int"], float)


def test_pycrdt_integers_as_node_reads_them(node: YjsNodePeer) -> None:
    """Why values stop at 2**53 - 1: beyond it pycrdt's ints are no longer plain JS numbers."""
    py = PycrdtPeer(LOW_CLIENT)
    handshake(py, node)
    py.params["safe"] = 2**53 - 1
    py.params["neg_safe"] = -(2**53 - 1)
    py.params["beyond"] = 2**53 + 1
    py.params["i64_max"] = 2**63 - 1
    to_node(py, node)
    seen = node.dump().doc["params"]
    assert seen["safe"] == 2**53 - 1 and seen["neg_safe"] == -(2**53 - 1)
    assert seen["beyond"] == {"$bigint": str(2**53 + 1)}  # a JS BigInt, not a number
    # yrs writes an i64 that survives a (saturating) f64 round trip as a float64: 2**63 - 1
    # leaves as 2**63, while the writing doc still reads 2**63 - 1.
    assert float(seen["i64_max"]) == 2.0**63
    assert py.params["i64_max"] == 2**63 - 1


def _expected(value: Any) -> Any:
    """What a value should read back as: numpy scalars as Python ones, tuples as lists."""
    if isinstance(value, np.generic):  # first: np.float64 is a float subclass
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_expected(item) for item in value]
    if isinstance(value, dict):
        return {key: _expected(item) for key, item in value.items()}
    return value


def _same(got: Any, want: Any, *, json_numbers: bool = False) -> bool:
    """Equal values of the same types (NaN equals NaN).

    ``json_numbers``: ``got`` went through JSON text, where 2.0 and 2 are the same token,
    so a whole float may come back as an int; ints must still not come back as floats.
    """
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(_same(g, w, json_numbers=json_numbers) for g, w in zip(got, want, strict=True))
        )
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(_same(got[k], want[k], json_numbers=json_numbers) for k in want)
        )
    if json_numbers and type(want) is float and type(got) is int:
        return got == want
    return type(got) is type(want) and got == want


def test_lattica_value_encoding_reads_sensibly_in_node(node: YjsNodePeer) -> None:
    """Values written through lattica_nb.sync.values survive Node yjs (and y-py) and back."""
    values = pytest.importorskip(
        VALUES_MODULE,
        reason=(
            f"TODO(issue #5): {VALUES_MODULE} (encode_value/decode_value) is not written yet "
            "or cannot be imported yet; this test checks its encoding against Node yjs and "
            "y-py once it lands"
        ),
        exc_type=ImportError,
    )
    written: dict[str, Any] = {
        "int": 123,
        "neg_int": -(2**53 - 1),
        "zero": 0,
        "float": 0.1,
        "whole_float": 2.0,
        "nan": math.nan,
        "inf": math.inf,
        "neg_inf": -math.inf,
        "true": True,
        "none": None,
        "str": "naïve ✓",
        "list": [1, 2.5, "x", None],
        "tuple": (1, 2),
        "dict": {"step": 3, "loss": 0.25},
        "np_float32": np.float32(0.5),
        "np_float64": np.float64(1.25),
        "np_int64": np.int64(42),
        "np_bool": np.bool_(True),
    }
    py = PycrdtPeer(LOW_CLIENT)
    handshake(py, node)
    for key, value in written.items():
        py.params[key] = values.encode_value(value)
    to_node(py, node)

    seen_by_node = node.dump().doc["params"]
    for key, value in written.items():
        decoded = values.decode_value(seen_by_node[key])
        assert _same(decoded, _expected(value), json_numbers=True), key
    # What JavaScript code reading params sees for the values JSON holds as they are.
    for key in ("float", "str", "true", "none"):
        assert seen_by_node[key] == written[key], key

    for key in written:
        to_py(node.copy("params", key, "echo", key), py)  # a JS read-and-write round trip
    echoed = py.doc.get("echo", type=Map)
    for key, value in written.items():
        assert _same(values.decode_value(echoed[key]), _expected(value)), key

    if ypy_unavailable() is None:
        other = YpyPeer(client_id=HIGH_CLIENT)
        other.apply_update(py.doc.get_update())
        for key, stored in other.map("params").items():  # a y-py read-and-write round trip
            py.doc.apply_update(other.set("ypy_echo", key, stored))
        from_ypy = py.doc.get("ypy_echo", type=Map)
        for key, value in written.items():
            assert _same(values.decode_value(from_ypy[key]), _expected(value)), key
