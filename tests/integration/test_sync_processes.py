"""Three room peers in their own processes on 127.0.0.1; one is SIGKILLed mid-stream and restarted.

Each peer is ``python -m lattica_nb.testing.room_process`` driven over JSON
lines by :class:`~lattica_nb.testing.foreign_peers.PeerProcess`: every wait is
a read of the peer's next line under a deadline, never a sleep.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lattica_nb.testing.foreign_peers import PeerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ROOM = "sweep"
START_S = 30.0
WAIT_S = 30.0
TRANSPORT = "quic-v1"
"""A SIGKILLed peer's QUIC connections are only noticed dead at their idle timeout (10 s),
so the restarted peer's new connection must replace links that still look alive."""


class Peers:
    """The room peer processes of one test; every one is stopped at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[PeerProcess] = []

    def start(self, name: str, *, bootstrap: str | None = None, create: bool = False
              ) -> tuple[PeerProcess, dict[str, Any]]:
        """Start (or restart, same data dir and key) peer ``name``; its ready line."""
        argv = [sys.executable, "-m", "lattica_nb.testing.room_process",
                "--data-dir", str(self.root / name / "rooms"),
                "--identity-file", str(self.root / name / "identity.key"),
                "--room", ROOM, "--discovery-interval-s", "0.3"]
        if bootstrap is not None:
            argv += ["--bootstrap", bootstrap]
        if create:
            argv.append("--create")
        peer = PeerProcess(argv, name=name)
        self.started.append(peer)
        peer.start(timeout_s=START_S)
        ready = peer.request({"cmd": "state"}, timeout_s=WAIT_S)  # answers once it serves
        return peer, {"peer": peer.ready.peer_id, "addr": peer.ready.addr(TRANSPORT), **ready}

    def close(self) -> None:
        for peer in reversed(self.started):
            peer.close()


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    started = Peers(tmp_path)
    try:
        yield started
    finally:
        started.close()


def wait(peer: PeerProcess, **condition: Any) -> dict[str, Any]:
    return peer.request({"cmd": "wait", "timeout_s": WAIT_S, **condition}, timeout_s=WAIT_S + 5)


def numbered(rows: list[Any], key: str) -> bool:
    """``rows`` are exactly ``key/0``, ``key/1``, … (each once, none missing, in order)."""
    return rows == [f"{key}/{i}" for i in range(len(rows))]


def test_a_killed_peer_restarts_from_disk_and_nothing_is_lost(peers: Peers) -> None:
    p, p_info = peers.start("p", create=True)
    q, q_info = peers.start("q", bootstrap=p_info["addr"])
    r, r_info = peers.start("r", bootstrap=p_info["addr"])
    ids = {"p": p_info["peer"], "q": q_info["peer"], "r": r_info["peer"]}

    # Everyone writes a little, and everyone's rows reach everyone (r's are acknowledged).
    for peer in (p, q, r):
        for i in range(10):
            reply = peer.request({"cmd": "append", "key": "a", "value": f"a/{i}"})
        assert reply["rows"] == 10
    for peer in (p, q, r):
        wait(peer, count=30, acked=True)

    # All three stream rows; r is killed once p has 20 of r's streamed rows.
    p.request({"cmd": "write", "key": "s", "count": 200, "every_s": 0.01})
    q.request({"cmd": "write", "key": "s", "count": 200, "every_s": 0.01})
    r.request({"cmd": "write", "key": "s", "count": 5000, "every_s": 0.002})
    wait(p, author=ids["r"], at_least=10 + 20)
    os.kill(r.pid, signal.SIGKILL)
    assert r.close() == -signal.SIGKILL

    # p and q keep writing while r is down and while it comes back: first alone (its new
    # ports are unknown to p and q), with the room as its file kept it.
    r, restarted = peers.start("r")
    assert restarted["peer"] == ids["r"]  # the same identity
    assert restarted["status"]["peers"] == [] and restarted["received"] == 0
    kept = restarted["doc"]["metrics"]
    r_streamed = len(kept[f"{ids['r']}/s"])
    assert r_streamed >= 20  # what p had seen of r was on r's disk
    assert kept[f"{ids['r']}/a"] == [f"a/{i}" for i in range(10)]
    for name in ("p", "q"):  # all r had of p and q before the kill
        assert kept[f"{ids[name]}/a"] == [f"a/{i}" for i in range(10)]
        assert numbered(kept.get(f"{ids[name]}/s", []), "s")
    r.request({"cmd": "connect", "addr": p_info["addr"]})
    r.request({"cmd": "write", "key": "s", "count": 30, "every_s": 0.005})

    expected = {f"{ids['p']}/a": 10, f"{ids['q']}/a": 10, f"{ids['r']}/a": 10,
                f"{ids['p']}/s": 200, f"{ids['q']}/s": 200, f"{ids['r']}/s": r_streamed + 30}
    total = sum(expected.values())
    finals = {name: wait(peer, count=total, acked=True)
              for name, peer in (("p", p), ("q", q), ("r", r))}
    docs = {name: state["doc"] for name, state in finals.items()}
    assert docs["p"] == docs["q"] == docs["r"]
    metrics = docs["p"]["metrics"]
    assert {key: len(rows) for key, rows in metrics.items()} == expected
    for key, rows in metrics.items():
        assert numbered(rows, key.rsplit("/", 1)[1]), key  # every row once, none lost
    for state in finals.values():
        assert state["status"]["refused"] == 0 and state["status"]["pending"] == 0
    # The restarted peer was sent only what it lacked, never what its file held.
    assert finals["r"]["received_from_disk"] == 0
    assert finals["r"]["received"] > 0
    for peer in (p, q, r):
        assert peer.close() == 0
