"""One room peer in its own process, driven by JSON lines on stdio (for integration tests).

::

    python -m lattica_nb.testing.room_process --data-dir D --identity-file K --room NAME \\
        [--bootstrap ADDR]... [--create]

It runs a :class:`~lattica_nb.node.Node` (its key in ``K``, created on first
use, so a restart keeps its peer id) with the room ``NAME`` kept in ``D``:
restored from there if the file exists, else created (``--create``) or joined
through the bootstrap peers. When the room is open it prints one ready line::

    {"event": "ready", "peer": ..., "addr": ..., "peer_id": ..., "listen_addrs": [...],
     "restored": <envelopes loaded from D>}

(``peer_id``/``listen_addrs`` make it a ready line for
:class:`~lattica_nb.testing.foreign_peers.PeerProcess`, which drives it.) Then
every command line gets one reply line, ``{"ok": true, ...}`` or
``{"ok": false, "error": ...}``:

* ``{"cmd": "append", "key": K, "value": V}``: append ``V`` to this peer's
  metrics array ``K`` (``author_key(peer, K)``); replied once the envelope is
  in the room's file: ``{"seq": <our envelopes so far>, "rows": <rows in K>}``.
* ``{"cmd": "write", "key": K, "count": N, "every_s": S}``: append ``N`` rows
  ``"<K>/<i>"`` to array ``K`` (``i`` counts on from the rows already there,
  also after a restart) in the background, one every ``S`` seconds; replied
  at once.
* ``{"cmd": "connect", "addr": A}``: connect to the peer at multiaddr ``A``
  (the room links to it if it has the room).
* ``{"cmd": "state"}``: ``{"doc": {"params", "metrics", "notes"}, "status":
  {...}, "received": <envelopes received>, "received_from_disk": <of those,
  ones the room already had in its file at start>, "writing": <rows the
  background writers still have to write>}``.
* ``{"cmd": "wait", "count": N, "acked": true, "timeout_s": T}``: until the
  metrics rows total ``N`` (if given), nothing of ours is unacknowledged (if
  ``acked``) and the background writers are done; then as ``state``. With
  ``"at_least": N`` instead: until there are ``N`` rows or more, writers or
  not. ``"author": <peer id>`` counts only that author's rows.
* ``{"cmd": "quit"}``: leave the room (GOODBYE), stop the node, exit 0.

Logs go to stderr. Killing the process (SIGKILL) is how tests crash it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from pycrdt import Array, Map, Text

from ..config import NodeConfig
from ..errors import LatticaError
from ..identity import PeerId, load_or_create_identity
from ..node import Node
from ..sync.config import SyncConfig
from ..sync.driver import RoomDriver
from ..sync.envelope import room_id
from ..sync.events import EnvelopesStored, RoomEvent
from ..sync.protocol import Message, SyncStep2, Update
from ..sync.rules import author_key
from ..sync.storage import RoomStore

__all__ = ["RoomPeer", "main"]

logger = logging.getLogger(__name__)

DEFAULT_WAIT_S = 30.0


class CommandError(LatticaError):
    """A command line that cannot be carried out (replied as ``{"ok": false}``)."""


class RoomPeer:
    """The room of this process and what the commands do with it (on the node's loop)."""

    def __init__(self, node: Node, driver: RoomDriver) -> None:
        self.node = node
        self.driver = driver
        self.peer = driver.room.peer_id
        self.restored = driver.status().envelopes
        self._on_disk = driver.room.log.vector()
        self.received = 0
        self.received_from_disk = 0
        self.writing = 0
        self._changed = anyio.Event()
        driver.observe(self._on_event)
        driver.observe_received(self._on_message)

    # -- observing ------------------------------------------------------------------------
    def _on_event(self, event: RoomEvent) -> None:
        self._changed.set()

    def _on_message(self, peer: PeerId, message: Message) -> None:
        if isinstance(message, SyncStep2):
            envelopes = message.envelopes
        elif isinstance(message, Update):
            envelopes = (message.envelope,)
        else:
            return
        for envelope in envelopes:
            self.received += 1
            if envelope.seq <= self._on_disk.get(envelope.author, 0):
                self.received_from_disk += 1

    async def until(self, condition: Callable[[], bool], timeout_s: float) -> None:
        """Wait for room events until ``condition()`` holds (TimeoutError after ``timeout_s``)."""
        with anyio.fail_after(timeout_s):
            while not condition():
                self._changed = anyio.Event()
                await self._changed.wait()

    # -- the document ---------------------------------------------------------------------
    def rows(self, key: str) -> int:
        metrics = self.driver.doc.get("metrics", type=Map)
        name = author_key(self.peer, key)
        return len(metrics[name]) if name in metrics else 0

    def total_rows(self, author: str | None = None) -> int:
        """Rows in the metrics arrays (of ``author``'s keys only, if given)."""
        metrics = self.driver.doc.get("metrics", type=Map)
        return sum(len(rows) for name, rows in metrics.items()
                   if author is None or name == author or name.startswith(author + "/"))

    def append(self, key: str, value: Any) -> int:
        """Append ``value`` to our array ``key`` (one transaction); our seq after it."""
        metrics = self.driver.doc.get("metrics", type=Map)
        name = author_key(self.peer, key)
        if name in metrics:
            metrics[name].append(value)
        else:
            metrics[name] = Array([value])
        return self.driver.room.log.seq(self.peer)

    async def stored(self, seq: int, timeout_s: float) -> None:
        """Wait until our envelope ``seq`` went through the pump (so into the room's file)."""
        done = anyio.Event()

        def on_event(event: RoomEvent) -> None:
            if isinstance(event, EnvelopesStored) and any(
                e.author == self.peer and e.seq >= seq for e in event.envelopes
            ):
                done.set()

        unsubscribe = self.driver.observe(on_event)
        try:
            with anyio.fail_after(timeout_s):
                await done.wait()
        finally:
            unsubscribe()

    async def write(self, key: str, count: int, every_s: float) -> None:
        """Append ``count`` numbered rows, one every ``every_s`` seconds."""
        self.writing += count
        remaining = count
        try:
            while remaining:
                self.append(key, f"{key}/{self.rows(key)}")
                remaining -= 1
                self.writing -= 1
                self._changed.set()
                await anyio.sleep(every_s)
        finally:
            self.writing -= remaining

    def state(self) -> dict[str, Any]:
        doc = self.driver.doc
        status = self.driver.status()
        return {
            "doc": {
                "params": doc.get("params", type=Map).to_py(),
                "metrics": doc.get("metrics", type=Map).to_py(),
                "notes": str(doc.get("notes", type=Text)),
            },
            "status": {
                "envelopes": status.envelopes,
                "unacknowledged": status.unacknowledged,
                "peers": [str(p) for p in status.peers],
                "refused": status.refused,
                "pending": status.pending,
            },
            "received": self.received,
            "received_from_disk": self.received_from_disk,
            "writing": self.writing,
        }


async def _command(peer: RoomPeer, command: dict[str, Any], tg: anyio.abc.TaskGroup
                   ) -> dict[str, Any]:
    cmd = command.get("cmd")
    timeout_s = float(command.get("timeout_s", DEFAULT_WAIT_S))
    if cmd == "append":
        key = str(command.get("key", ""))
        seq = peer.append(key, command.get("value"))
        await peer.stored(seq, timeout_s)
        return {"seq": seq, "rows": peer.rows(key)}
    if cmd == "write":
        rows, every_s = int(command["count"]), float(command.get("every_s", 0.005))
        if rows < 0 or every_s < 0:
            raise CommandError("write needs count >= 0 and every_s >= 0")
        tg.start_soon(peer.write, str(command.get("key", "")), rows, every_s)
        return {}
    if cmd == "state":
        return peer.state()
    if cmd == "connect":
        info = await peer.node.connect(str(command["addr"]))
        return {"peer": str(info.peer_id)}
    if cmd == "wait":
        count, at_least = command.get("count"), command.get("at_least")
        author = command.get("author")
        acked = bool(command.get("acked", False))

        def reached() -> bool:
            if at_least is not None:  # rows (of author) so far, writers still running
                return peer.total_rows(author) >= int(at_least)
            return (peer.writing == 0
                    and (count is None or peer.total_rows(author) == int(count))
                    and (not acked or peer.driver.status().unacknowledged == 0))

        try:
            await peer.until(reached, timeout_s)
        except TimeoutError as exc:
            raise CommandError(f"waited {timeout_s:g} s: {peer.total_rows()} rows, "
                               f"{peer.driver.status()}") from exc
        return peer.state()
    raise CommandError(f"unknown command {cmd!r}")


def _reply(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def _serve_commands(peer: RoomPeer) -> None:
    async with anyio.create_task_group() as tg:
        while True:
            raw = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not raw:
                break  # stdin closed: the test is gone
            try:
                command = json.loads(raw)
                if not isinstance(command, dict):
                    raise CommandError(f"a command is a JSON object, got {raw!r}")
                if command.get("cmd") == "quit":
                    _reply({"ok": True})
                    break
                _reply({"ok": True, **await _command(peer, command, tg)})
            except (ValueError, KeyError, TypeError, LatticaError, TimeoutError) as exc:
                _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        tg.cancel_scope.cancel()


async def _run(args: argparse.Namespace) -> None:
    identity = load_or_create_identity(args.identity_file)
    sync = SyncConfig(data_dir=args.data_dir, join_timeout_s=args.join_timeout_s,
                      discovery_interval_s=args.discovery_interval_s)
    config = NodeConfig(identity=identity, sync=sync)
    kept = RoomStore(args.data_dir).exists(room_id(sync.mesh, args.room))
    async with Node(config) as node:
        for addr in args.bootstrap:  # connected before the room opens: it joins through them
            await node.connect(addr)
        driver = await node.sync.open(args.room, create=args.create and not kept)
        peer = RoomPeer(node, driver)
        addrs = [str(a) for a in node.listen_addrs]
        _reply({"event": "ready", "peer": str(node.peer_id), "addr": addrs[0],
                "peer_id": str(node.peer_id), "listen_addrs": addrs, "restored": peer.restored})
        await _serve_commands(peer)
        await node.sync.close(driver)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lattica_nb.testing.room_process",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--identity-file", type=Path, required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--create", action="store_true",
                        help="create the room unless its file exists (else join a member)")
    parser.add_argument("--join-timeout-s", type=float, default=10.0)
    parser.add_argument("--discovery-interval-s", type=float, default=0.5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        anyio.run(_run, args)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
