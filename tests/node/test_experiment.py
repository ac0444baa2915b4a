"""The experiment API on real nodes (127.0.0.1, one process): params, runs, notes, presence,
change callbacks, the blocking facade over a runtime thread and ``lattica_nb.experiment``."""

from __future__ import annotations

import importlib.util
import math
import sys
import threading
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import numpy as np
import pytest

import lattica_nb
from lattica_nb import Node, NodeConfig
from lattica_nb.errors import (
    ConfigError,
    LocalProtocolError,
    PermissionDenied,
    UnsupportedValue,
    ValueRangeError,
)
from lattica_nb.notebook import session
from lattica_nb.notebook.runtime import Runtime, get_runtime
from lattica_nb.sync.config import SyncConfig
from lattica_nb.sync.events import SessionEnded
from lattica_nb.sync.experiment import (
    AsyncExperiment,
    Experiment,
    ExperimentChanged,
    Participant,
    experiment_async,
)

TIMEOUT_S = 5.0


def config(data_dir: Path) -> NodeConfig:
    return NodeConfig(ephemeral=True, sync=SyncConfig(data_dir=data_dir, join_timeout_s=5.0))


class Changes:
    """Collects an experiment's change events; ``until`` waits for a condition to hold."""

    def __init__(self, experiment: AsyncExperiment) -> None:
        self.events: list[ExperimentChanged] = []
        self._wake = anyio.Event()
        self.unsubscribe = experiment.on_change(self._on_change)

    def _on_change(self, event: ExperimentChanged) -> None:
        self.events.append(event)
        self._wake.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        with anyio.fail_after(TIMEOUT_S):
            while not condition():
                await self._wake.wait()
                self._wake = anyio.Event()

    def kinds(self, *, local: bool) -> list[str]:
        return [e.kind for e in self.events if e.local is local and e.kind != "presence"]


async def connect_to_member(joiner: Node, member: Node, room: str) -> None:
    """Connect ``joiner`` to ``member`` and wait until the member's room has tried the joiner
    (which does not serve the room yet), so that the join is the one stream between them.

    Without this wait both sides may open a stream for the room at once, and the driver's
    simultaneous-open tie-break can leave each side on a different stream (reported bug).
    """
    driver = member.sync.room(room)
    assert driver is not None
    tried = anyio.Event()

    def on_event(event: object) -> None:
        if isinstance(event, SessionEnded) and event.peer == joiner.peer_id:
            tried.set()

    unsubscribe = driver.observe(on_event)
    try:
        await joiner.connect(member.listen_addrs[0])
        with anyio.fail_after(TIMEOUT_S):
            await tried.wait()
    finally:
        unsubscribe()


@asynccontextmanager
async def two_peers(tmp_path: Path) -> AsyncIterator[tuple[AsyncExperiment, AsyncExperiment]]:
    """Alice creates and owns "sweep"; Bob connects to her and joins it."""
    async with Node(config(tmp_path / "a")) as a, Node(config(tmp_path / "b")) as b:
        alice = await experiment_async(a, "sweep", create=True, display_name="alice", run="lr")
        await connect_to_member(b, a, "sweep")
        bob = await AsyncExperiment.open(b, "sweep", create=False, display_name="bob")
        async with alice, bob:
            yield alice, bob


pytestmark = pytest.mark.anyio


async def test_params_only_the_owner_writes(tmp_path: Path) -> None:
    async with two_peers(tmp_path) as (alice, bob):
        seen = Changes(bob)
        assert alice.is_owner and not bob.is_owner and bob.owner == alice.peer
        alice.params["lr"] = 0.1
        alice.params.update({"batch": 32}, name="sgd", scale=1.0)
        await seen.until(lambda: len(bob.params) == 4)
        assert dict(bob.params) == {"lr": 0.1, "batch": 32, "name": "sgd", "scale": 1.0}
        assert type(bob.params["batch"]) is int and type(bob.params["scale"]) is float
        assert bob.params.to_dict() == alice.params.to_dict() and "lr" in bob.params
        assert {e.kind for e in seen.events if not e.local} == {"params"}
        assert all(e.authors == {alice.peer} for e in seen.events if e.kind == "params")

        before = bob.status
        with pytest.raises(PermissionDenied, match=alice.peer) as refused:
            bob.params["lr"] = 0.5
        assert refused.value.entry == "params"
        with pytest.raises(PermissionDenied):
            bob.params.update(lr=0.5)
        with pytest.raises(PermissionDenied):
            del bob.params["lr"]
        assert bob.params["lr"] == 0.1 and bob.status.envelopes == before.envelopes
        assert bob.status.unacknowledged == 0

        del alice.params["scale"]
        with pytest.raises(KeyError):
            del alice.params["scale"]
        await seen.until(lambda: "scale" not in bob.params)
        with pytest.raises(KeyError):
            bob.params["scale"]
        with pytest.raises(ValueRangeError):
            alice.params.update(ok=1, big=2**60)  # refused whole: "ok" is not written either
        assert "ok" not in alice.params


async def test_log_rows_round_trip_and_refusals(tmp_path: Path) -> None:
    async with two_peers(tmp_path) as (alice, bob):
        seen, at_alice = Changes(bob), Changes(alice)
        alice.log(step=0, loss=0.5, count=3, acc=np.float32(0.25), n=np.int64(7), ok=True,
                  nan=float("nan"), inf=float("inf"), whole=2.0, tags=["a", 1], info={"k": None})
        alice.log(loss=0.25)  # step defaults to the last one + 1
        bob.log(step=np.int64(10), loss=1.5)
        await seen.until(lambda: len(bob.rows()) == 3)
        await at_alice.until(lambda: len(alice.rows()) == 3)
        for rows in (alice.rows(), bob.rows()):
            first, second, third = rows
            assert (first["run"], first["peer"], first["step"]) == ("lr", alice.peer, 0)
            assert (second["step"], second["loss"]) == (1, 0.25)
            assert (third["run"], third["peer"], third["step"]) == (bob.run, bob.peer, 10)
            assert list(first)[:3] == ["run", "peer", "step"]
            assert type(first["count"]) is int and first["count"] == 3
            assert type(first["n"]) is int and first["n"] == 7
            assert type(first["acc"]) is float and first["acc"] == 0.25
            assert type(first["whole"]) is float and first["whole"] == 2.0
            assert first["ok"] is True and first["tags"] == ["a", 1]
            assert first["info"] == {"k": None}
            assert math.isnan(first["nan"]) and first["inf"] == math.inf
        assert bob.run == f"run-{bob.peer[-6:]}"
        assert [e.kind for e in seen.events if not e.local] == ["metrics", "metrics"]

        envelopes = alice.status.envelopes
        with pytest.raises(ValueRangeError, match="2\\*\\*53"):
            alice.log(step=2, loss=2**60)
        with pytest.raises(UnsupportedValue, match="object"):
            alice.log(step=2, loss=object())
        with pytest.raises(UnsupportedValue):
            alice.log(step=1.5, loss=0.1)
        with pytest.raises(LocalProtocolError, match="run"):
            alice.log(step=2, run=1)
        assert len(alice.rows()) == 3 and alice.status.envelopes == envelopes


async def test_runs_table_with_and_without_pandas(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async with Node(config(tmp_path)) as node:
        async with await experiment_async(node, "table", create=True) as exp:
            exp.log(step=0, loss=0.5)
            exp.log(step=1, loss=0.25, acc=0.9)
            rows = exp.rows()
            if importlib.util.find_spec("pandas") is None:
                assert exp.runs == rows  # what this machine has
            else:
                assert list(exp.runs.columns) == ["run", "peer", "step", "acc", "loss"]
                assert exp.runs["loss"].tolist() == [0.5, 0.25]

            made: list[tuple[object, object]] = []
            fake = types.ModuleType("pandas")
            fake.DataFrame = lambda data, columns: made.append((data, columns)) or "frame"  # type: ignore[attr-defined]
            monkeypatch.setitem(sys.modules, "pandas", fake)
            assert exp.runs == "frame"
            assert made == [(rows, ["run", "peer", "step", "acc", "loss"])]
            monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
            assert exp.runs == rows


async def test_notes_replace_and_append_non_ascii(tmp_path: Path) -> None:
    async with two_peers(tmp_path) as (alice, bob):
        at_alice, at_bob = Changes(alice), Changes(bob)
        alice.notes = "héllo wörld ✓\n"
        await at_bob.until(lambda: bob.notes == "héllo wörld ✓\n")
        bob.append_note("日本語のメモ")
        bob.append_note("ünïcode 🎉\n")
        expected = "héllo wörld ✓\n日本語のメモ\nünïcode 🎉\n"
        await at_alice.until(lambda: alice.notes == expected)
        assert bob.notes == expected
        alice.notes = "ça"
        await at_bob.until(lambda: bob.notes == "ça")
        alice.notes = ""
        await at_bob.until(lambda: bob.notes == "")
        notes_events = [e for e in at_alice.events if e.kind == "notes" and not e.local]
        assert notes_events and all(e.authors == {bob.peer} for e in notes_events)
        with pytest.raises(UnsupportedValue):
            alice.notes = 3  # type: ignore[assignment]
        with pytest.raises(UnsupportedValue):
            alice.append_note("\ud800")


async def test_on_change_reports_kind_author_and_origin(tmp_path: Path) -> None:
    async with two_peers(tmp_path) as (alice, bob):
        at_alice, at_bob = Changes(alice), Changes(bob)
        alice.notes = ""  # changes nothing: no update, no event
        alice.params["lr"] = 0.01
        alice.log(step=0, loss=1.0)
        alice.notes = "first"
        await at_bob.until(lambda: bob.notes == "first")
        assert at_bob.kinds(local=False) == ["params", "metrics", "notes"]
        assert all(e.authors == {alice.peer} for e in at_bob.events if not e.local)
        assert at_bob.kinds(local=True) == []
        await at_alice.until(lambda: len(at_alice.kinds(local=True)) == 3)
        assert at_alice.kinds(local=True) == ["params", "metrics", "notes"]
        assert all(e.authors == {alice.peer} for e in at_alice.events if e.local)

        bob.log(step=0, loss=2.0)
        await at_alice.until(lambda: len(alice.rows()) == 2)
        assert at_alice.kinds(local=False) == ["metrics"]

        at_bob.unsubscribe()
        count = len(at_bob.events)
        alice.notes = "second"
        await Changes(bob).until(lambda: bob.notes == "second")
        assert len(at_bob.events) == count


async def test_who_shows_names_and_status(tmp_path: Path) -> None:
    async with two_peers(tmp_path) as (alice, bob):
        at_alice = Changes(alice)
        await at_alice.until(lambda: len(alice.who()) == 2 and alice.who()[1].name == "bob")
        assert alice.who() == [Participant(alice.peer, "alice", None, True),
                               Participant(bob.peer, "bob", None, False)]
        bob.set_status(running="train.py epoch 3")
        await at_alice.until(lambda: alice.who()[1].running == "train.py epoch 3")
        assert any(e.kind == "presence" and e.authors == {bob.peer} and not e.local
                   for e in at_alice.events)
        me = bob.who()[0]
        assert (me.peer, me.name, me.running, me.you) == (bob.peer, "bob", "train.py epoch 3",
                                                          True)
        bob.set_status(None)
        await at_alice.until(lambda: alice.who()[1].running is None)
        await bob.close()
        await at_alice.until(lambda: len(alice.who()) == 1)
        with pytest.raises(LocalProtocolError, match="closed"):
            bob.who()


async def test_two_handles_share_one_room(tmp_path: Path) -> None:
    async with Node(config(tmp_path)) as node:
        first = await experiment_async(node, "shared", create=True, run="one")
        second = await experiment_async(node, "shared", run="two")
        seen = Changes(first)
        second.log(step=0, loss=0.5)
        assert len(first.rows()) == 1  # one document: at once
        await seen.until(lambda: bool(seen.events))  # the event comes after, from the room
        assert seen.events == [ExperimentChanged("metrics", frozenset({str(node.peer_id)}), True)]
        await second.close()
        first.log(step=0, loss=0.25)  # the room stays open for the other handle
        assert [row["run"] for row in first.rows()] == ["one", "two"]
        await first.close()
        assert node.sync.room("shared") is None and first.closed


# -- the blocking facade and the default node -------------------------------------------------


def test_experiment_facade_over_a_runtime_thread(tmp_path: Path) -> None:
    """Plain blocking calls from this (non-async) thread; callbacks run on the runtime's."""
    runtime = Runtime(name="test-experiment")
    runtime.start()
    try:
        a = runtime.call(runtime.enter, Node(config(tmp_path / "a")))
        b = runtime.call(runtime.enter, Node(config(tmp_path / "b")))
        alice = Experiment.open(runtime, a, "sweep", create=True, display_name="alice")
        runtime.call(connect_to_member, b, a, "sweep")
        with Experiment.open(runtime, b, "sweep", create=False, display_name="bob") as bob:
            got = threading.Event()
            threads: set[str] = set()
            inside: list[int] = []

            def on_change(event: ExperimentChanged) -> None:
                threads.add(threading.current_thread().name)
                inside.append(len(bob.rows()))  # the facade works inside a callback too
                if event.kind == "metrics" and not event.local:
                    got.set()

            unsubscribe = bob.on_change(on_change)
            alice.params.update(lr=0.1, epochs=3)
            alice.log(step=0, loss=0.5, n=np.int64(4))
            alice.notes = "ok ✓"
            assert got.wait(TIMEOUT_S)
            assert threads == {"test-experiment"} and inside[-1] == 1
            assert bob.rows() == alice.rows() == [
                {"run": alice.run, "peer": alice.peer, "step": 0, "loss": 0.5, "n": 4}]
            assert bob.runs == bob.rows()  # no pandas here; see the table test
            done = threading.Event()
            bob.on_change(lambda e: done.set() if bob.notes == "ok ✓" else None)
            if bob.notes != "ok ✓":
                assert done.wait(TIMEOUT_S)
            assert dict(bob.params) == {"lr": 0.1, "epochs": 3} and bob.params["epochs"] == 3
            with pytest.raises(PermissionDenied):
                bob.params["lr"] = 1.0
            bob.set_status(running="eval")
            bob.append_note("bob was here")
            alice.wait_acknowledged(TIMEOUT_S)
            assert alice.status.unacknowledged == 0 and bob.status.peers == (a.peer_id,)
            assert [p.name for p in bob.who()] == ["bob", "alice"]
            with pytest.raises(LocalProtocolError, match="another thread"):
                bob.async_experiment.log(step=1, loss=0.1)  # not on the loop's thread
            unsubscribe()
        assert bob.closed
        alice.close()
        with pytest.raises(LocalProtocolError, match="closed"):
            alice.log(step=1, loss=0.1)
    finally:
        runtime.stop()


def test_top_level_experiment_on_the_default_node(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("LATTICA_NB_EPHEMERAL", "1")
    monkeypatch.delenv("LATTICA_NB_BOOTSTRAP", raising=False)
    session.shutdown()
    try:
        exp = lattica_nb.experiment("smoke", display_name="solo", run="r1")
        assert isinstance(exp, Experiment) and exp.is_owner  # nobody to join: created at once
        exp.params["lr"] = 0.3
        exp.log(step=0, loss=0.75)
        assert exp.rows() == [{"run": "r1", "peer": exp.peer, "step": 0, "loss": 0.75}]
        assert exp.who() == [Participant(exp.peer, "solo", None, True)]
        node = session.default_node()
        assert str(node.peer_id) == exp.peer and session.default_node() is node
        assert list((tmp_path / "lattica-nb" / "rooms").glob("*"))
        with pytest.raises(ConfigError, match="bootstrap address"):
            session.default_node(bootstrap=["/ip4/127.0.0.1/tcp/1"])  # no /p2p/ part
        session.shutdown()
        assert exp.closed
        exp.close()  # nothing left to close
    finally:
        session.shutdown()
        get_runtime().stop()
