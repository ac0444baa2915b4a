"""Yjs rooms: propagation latency, sustained updates/s and memory per room, in one run.

    python bench/sync_rooms.py [--peers 2 5 10] [--updates 200] [--interval-ms 15]
                               [--warmup 20] [--sustained 5000] [--receivers 1 4]
                               [--concurrent 20] [--memory-updates 100000]
                               [--tracemalloc-updates 20000] [--skip-lattica]
                               [--profile-dir DIR] [--max-seconds 300] [--json]

Everything runs on 127.0.0.1. Started from an ordinary shell, the script
re-runs itself inside a fresh loopback-only network namespace
(``lattica_nb.testing.netns``, needs root), because the Lattica SDK sends
STUN requests to public servers whenever a node is built. Without such a
namespace it runs here and the Lattica figures say ``skipped: <reason>``.

Sections (each prints one Markdown table; the command line is printed first):

1. **Propagation.** ``N`` lattica_nb nodes (``--peers``), one OS process each
   (multiprocessing, spawn), every node connected to every other over TCP
   (Noise + Yamux), all in one room. Node 0 appends one small metrics row
   (``metrics[author_key(peer, "bench")]``) every ``--interval-ms``,
   ``--updates`` times after ``--warmup`` uncounted ones. Latency = from
   ``time.monotonic_ns()`` just before the local write (signing included) to
   the ``DocumentChanged`` event at each other node (CLOCK_MONOTONIC is
   system-wide on Linux, so stamps of different processes compare). p50/p99
   over all receivers x updates, and of the last receiver per update.
   Beside it, in the same run: **raw TCP**, one writer process sending a
   payload of the same size as our framed UPDATE message over plain TCP
   (TCP_NODELAY) to ``N-1`` receiver processes, paced the same way, each
   receiver stamping on receipt; and the **CPU-only** cost of the same fan-out
   through sans-IO ``Room`` objects in one process (real codec, signatures,
   write-rule checks; no sockets): wall time per update until every room is
   quiet, and messages delivered per update.
2. **Concurrent writes.** Two Lattica SDK peers (one process each, in the
   loopback-only namespace) each store ``--concurrent`` subkeys of ONE DHT key
   at the same moment (``store_with_subkey`` from that many threads); one
   second later each reads the key back (``get_with_subkey``) and the subkeys
   found are counted. Ours: two lattica_nb nodes each append ``--concurrent``
   rows to their own metrics array at the same moment; rows counted on both
   nodes once they agree (at most 5 s).
3. **Sustained.** One writer appends ``--sustained`` rows as fast as it can
   (yielding to its event loop after each, so its senders run), to 1 and 4
   receivers (``--receivers``), one process each. Local rate: rows signed per
   second at the writer. Applied rate: rows per second from the writer's first
   write to the last ``DocumentChanged`` at a receiver. Sessions ended: during
   the run, in all processes (a full sender queue disconnects a slow peer,
   which then catches up on a new stream).
4. **Memory.** One room, ``--memory-updates`` appended rows, no network: the
   writer's sans-IO ``Room`` signs each row; a receiver ``Room`` (its session
   with the writer opened through ``RoomNetwork``) is then fed every envelope
   as a decoded UPDATE (signature check, write-rule check, apply). RSS delta
   and bytes per update for each, ``log.stored_bytes`` and the size of
   ``doc.get_update()``. tracemalloc (Python objects only; pycrdt's Rust heap
   is not traced) runs in a second process doing the same work for
   ``--tracemalloc-updates`` rows (bytes per row do not depend on the count),
   because tracing slows the work ~2x and its bookkeeping would inflate the
   RSS figure. Then restart recovery from the room file (``RoomFile`` +
   ``Room.restore``, as ``Sync._restore`` does): without a snapshot (own
   envelopes, trusted; a receiver's file, judged again), the compaction that
   writes a snapshot (as ``RoomDriver._compact``), and with the snapshot.

Sections 1-3 run one after another so that their processes do not compete for
the two cores; the two memory processes run side by side at the end. A
watchdog ends the run after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib.util
import json
import multiprocessing
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LATTICA_PEER = REPO / "tests" / "interop" / "peers" / "lattica_peer.py"
LISTEN = "/ip4/127.0.0.1/tcp/0"
INSIDE_FLAG = "--inside-namespace"
ROOM_NAME = "bench-rows"
ARRAY_NAME = "bench"
START_TIMEOUT_S = 60.0
"""A spawned process (interpreter start, imports, node start) must answer within this."""
COMMAND_TIMEOUT_S = 60.0
MESH_TIMEOUT_S = 20.0
DELIVERY_TIMEOUT_S = 20.0
"""How long receivers wait for the last row before reporting what they have."""
CONVERGE_TIMEOUT_S = 5.0
LATTICA_SETTLE_S = 1.0
RAW_SENTINEL = 0xFFFFFFFF
TRACED_TOP_SITES = 5


# -- small helpers ---------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def loopback_only() -> bool:
    with open("/proc/net/dev", encoding="ascii") as table:
        names = [line.split(":")[0].strip() for line in table.readlines()[2:]]
    return names == ["lo"]


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def row(step: int) -> dict[str, Any]:
    """One small metrics row, as a training loop would log it."""
    return {"step": step, "loss": 1.0 / (step + 1), "lr": 0.001}


def _ms(ns: float) -> float:
    return ns / 1e6


def latency_figures(sent: Sequence[int], received: Sequence[Sequence[int | None]],
                    warmup: int) -> dict[str, Any]:
    """p50/p99 over all receivers x counted updates, and of the last receiver per update."""
    every: list[float] = []
    last: list[float] = []
    missing = 0
    for index in range(warmup, len(sent)):
        stamps = [r[index] if index < len(r) else None for r in received]
        got = [s for s in stamps if s is not None]
        missing += len(stamps) - len(got)
        every += [_ms(s - sent[index]) for s in got]
        if len(got) == len(stamps) and got:
            last.append(_ms(max(got) - sent[index]))
    if not every:
        return {"n": 0, "missing": missing}
    return {
        "n": len(every), "missing": missing,
        "p50_ms": statistics.median(every), "p99_ms": percentile(every, 0.99),
        "last_p50_ms": statistics.median(last) if last else None,
        "last_p99_ms": percentile(last, 0.99) if last else None,
    }


class Worker:
    """One spawned process answering (command, kwargs) tuples over a pipe."""

    def __init__(self, ctx: Any, target: Callable[..., None], args: tuple[Any, ...],
                 name: str) -> None:
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.proc.start()
        child.close()
        self.hello: Any = self._receive(START_TIMEOUT_S, "its ready message")

    def _receive(self, timeout_s: float, what: str) -> Any:
        if not self.conn.poll(timeout_s):
            raise RuntimeError(f"{self.name} sent no {what} within {timeout_s:g} s "
                               f"(alive: {self.proc.is_alive()})")
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"{self.name}: {value}")
        return value

    def send(self, command: str, **kwargs: Any) -> None:
        self.conn.send((command, kwargs))

    def result(self, timeout_s: float = COMMAND_TIMEOUT_S) -> Any:
        return self._receive(timeout_s, "answer")

    def call(self, command: str, timeout_s: float = COMMAND_TIMEOUT_S, **kwargs: Any) -> Any:
        self.send(command, **kwargs)
        return self.result(timeout_s)

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("quit", {}))
            except OSError:
                pass
            self.proc.join(10.0)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5.0)
        self.conn.close()


def call_all(workers: Sequence[Worker], command: str, timeout_s: float = COMMAND_TIMEOUT_S,
             **kwargs: Any) -> list[Any]:
    for worker in workers:
        worker.send(command, **kwargs)
    return [worker.result(timeout_s) for worker in workers]


def _serve_sync(conn: Connection, handlers: dict[str, Callable[..., Any]]) -> None:
    while True:
        try:
            command, kwargs = conn.recv()
        except EOFError:
            return
        if command == "quit":
            return
        try:
            conn.send(("ok", handlers[command](**kwargs)))
        except Exception as exc:  # reported to the parent, which prints it
            conn.send(("error", f"{command}: {type(exc).__name__}: {exc}"))


# -- lattica_nb peer process -----------------------------------------------------------------

def _node_process(conn: Connection, name: str, profile_dir: str | None) -> None:
    import anyio

    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        anyio.run(_node_main, conn)
    except BaseException as exc:  # the parent reports it
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        if profiler is not None and profile_dir:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile_dir, f"{name}.prof"))


class _NodePeer:
    """Commands a lattica_nb node process answers (all run on its event loop)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.room: Any = None
        self.expected = 0
        self.complete: Any = None
        self.sessions_ended = 0
        self.cpu_start = 0.0
        self.watched: list[Any] = []
        self.counts: dict[int, list[int]] = {}

    async def connect(self, addrs: list[str]) -> int:
        for addr in addrs:
            await self.node.connect(addr)
        return len(self.node.peers())

    async def open(self, create: bool) -> str:
        from lattica_nb.sync.events import DocumentChanged, SessionEnded

        self.room = await self.node.sync.open(ROOM_NAME, create=create)

        def on_event(event: Any) -> None:
            if isinstance(event, SessionEnded):
                self.sessions_ended += 1
            elif isinstance(event, DocumentChanged) and not event.local and self.watched:
                now = time.monotonic_ns()
                for array in self.watched:
                    count = len(array)
                    stamps = self.counts.setdefault(id(array), [])
                    stamps.extend([now] * (count - len(stamps)))
                if self.complete is not None and self._total() >= self.expected:
                    self.complete.set()

        self.room.observe(on_event)
        return str(self.room.status().guid.hex())

    def _total(self) -> int:
        return sum(len(s) for s in self.counts.values())

    async def wait_mesh(self, peers: int) -> int:
        import anyio

        with anyio.move_on_after(MESH_TIMEOUT_S):
            while len(self.room.status().peers) < peers:
                await anyio.sleep(0.01)
        return len(self.room.status().peers)

    def _array(self, author: str) -> Any:
        from pycrdt import Array, Map

        from lattica_nb.identity import PeerId
        from lattica_nb.sync.rules import author_key

        key = author_key(PeerId.from_string(author), ARRAY_NAME)
        metrics = self.room.doc.get("metrics", type=Map)
        if key not in metrics:
            return None
        value = metrics[key]
        return value if isinstance(value, Array) else None

    async def prepare(self) -> int:
        """Create our own rows array (an empty one)."""
        from pycrdt import Array, Map

        from lattica_nb.sync.rules import author_key

        metrics = self.room.doc.get("metrics", type=Map)
        metrics[author_key(self.node.peer_id, ARRAY_NAME)] = Array()
        return 0

    async def arm(self, authors: list[str], expected: int) -> int:
        """Wait until every author's array is here, then stamp each new row as it arrives."""
        import anyio

        arrays: list[Any] = []
        with anyio.fail_after(MESH_TIMEOUT_S):
            for author in authors:
                while (array := self._array(author)) is None:
                    await anyio.sleep(0.005)
                arrays.append(array)
        self.watched = arrays
        self.counts = {id(a): [0] * len(a) for a in arrays}  # rows already here: not stamped
        self.expected = expected + self._total()
        self.complete = anyio.Event()
        self.sessions_ended = 0
        self.cpu_start = time.process_time()
        return self._total()

    async def collect(self, wait_s: float) -> dict[str, Any]:
        import anyio

        if self.complete is not None:
            with anyio.move_on_after(wait_s):
                await self.complete.wait()
        stamps = [list(self.counts.get(id(a), [])) for a in self.watched]
        self.watched, self.complete = [], None
        return {"stamps": stamps, "sessions_ended": self.sessions_ended,
                "peers": len(self.room.status().peers),
                "cpu_s": time.process_time() - self.cpu_start}

    async def write(self, count: int, interval_s: float, at_ns: int = 0) -> dict[str, Any]:
        """Append ``count`` rows, one transaction each; stamp each just before the write."""
        import anyio

        array = self._array(str(self.node.peer_id))
        if at_ns:
            await anyio.sleep(max(0.0, (at_ns - time.monotonic_ns()) / 1e9))
        self.sessions_ended = 0
        cpu_start = time.process_time()
        sent: list[int] = []
        base = len(array)
        for index in range(count):
            sent.append(time.monotonic_ns())
            array.append(row(base + index))
            await anyio.sleep(interval_s)
        done = time.monotonic_ns()
        return {"sent": sent, "done_ns": done, "sessions_ended": self.sessions_ended,
                "peers": len(self.room.status().peers),
                "cpu_s": time.process_time() - cpu_start}

    async def rows(self, authors: list[str], expected: int, wait_s: float) -> list[int]:
        """Rows of each author's array, once they add up to ``expected`` (or at the timeout)."""
        import anyio

        def counts() -> list[int]:
            return [len(a) if (a := self._array(author)) is not None else 0 for author in authors]

        with anyio.move_on_after(wait_s):
            while sum(counts()) < expected:
                await anyio.sleep(0.01)
        return counts()


async def _node_main(conn: Connection) -> None:
    import anyio

    from lattica_nb import Node, NodeConfig
    from lattica_nb.sync.config import SyncConfig

    config = NodeConfig(ephemeral=True, listen=(LISTEN,),
                        sync=SyncConfig(join_timeout_s=MESH_TIMEOUT_S))
    async with Node(config) as node:
        peer = _NodePeer(node)
        conn.send(("ok", (str(node.peer_id), str(node.listen_addrs[0]))))
        while True:
            try:
                command, kwargs = await anyio.to_thread.run_sync(conn.recv,
                                                                 abandon_on_cancel=True)
            except EOFError:
                return
            if command == "quit":
                return
            try:
                conn.send(("ok", await getattr(peer, command)(**kwargs)))
            except Exception as exc:  # reported to the parent, which prints it
                conn.send(("error", f"{command}: {type(exc).__name__}: {exc}"))


def start_mesh(ctx: Any, stack: ExitStack, count: int, profile_dir: str | None = None,
               tag: str = "") -> tuple[list[Worker], list[str]]:
    """``count`` node processes, all connected, all in one room created by node 0."""
    workers: list[Worker] = []
    for index in range(count):
        name = f"{tag}node-{index}"
        worker = Worker(ctx, _node_process, (name, profile_dir), name)
        stack.callback(worker.stop)
        workers.append(worker)
    ids = [w.hello[0] for w in workers]
    addrs = [w.hello[1] for w in workers]
    for index, worker in enumerate(workers):
        worker.call("connect", addrs=addrs[:index])
    workers[0].call("open", create=True)
    for index, worker in enumerate(workers[1:], 1):
        # One by one, each once it has a session with every node that opened before it.
        # Back to back, two nodes still joining sometimes meet (GOODBYE NO_DOCUMENT) and
        # nobody redials until the next discovery round, 15 s later (docs/benchmarks.md).
        worker.call("open", create=False)
        worker.call("wait_mesh", peers=index)
    linked = call_all(workers, "wait_mesh", peers=count - 1)
    if min(linked) < count - 1:
        raise RuntimeError(f"room mesh incomplete after {MESH_TIMEOUT_S:g} s: "
                           f"open sessions per node {linked}")
    return workers, ids


def run_propagation(ctx: Any, count: int, updates: int, warmup: int, interval_s: float,
                    profile_dir: str | None = None) -> dict[str, Any]:
    with ExitStack() as stack:
        workers, ids = start_mesh(ctx, stack, count, profile_dir, f"propagation{count}-")
        writer, receivers = workers[0], workers[1:]
        writer.call("prepare")
        call_all(receivers, "arm", authors=[ids[0]], expected=warmup + updates)
        wrote = writer.call("write", timeout_s=COMMAND_TIMEOUT_S + updates * interval_s * 2,
                            count=warmup + updates, interval_s=interval_s)
        got = call_all(receivers, "collect", timeout_s=DELIVERY_TIMEOUT_S + 10,
                       wait_s=DELIVERY_TIMEOUT_S)
    received = [g["stamps"][0] for g in got]
    figures = latency_figures(wrote["sent"], received, warmup)
    figures["sessions_ended"] = wrote["sessions_ended"] + sum(g["sessions_ended"] for g in got)
    total = warmup + updates
    figures["writer_cpu_ms_per_update"] = wrote["cpu_s"] * 1e3 / total
    figures["receiver_cpu_ms_per_update"] = statistics.mean(g["cpu_s"] for g in got) * 1e3 / total
    figures["all_cpu_ms_per_update"] = (wrote["cpu_s"] + sum(g["cpu_s"] for g in got)) * 1e3 / total
    return figures


# -- raw TCP baseline ------------------------------------------------------------------------

def _raw_receiver_process(conn: Connection, size: int) -> None:
    try:
        _raw_receive(conn, size)
    except Exception as exc:  # reported to the parent, which prints it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    conn.recv()  # quit


def _raw_receive(conn: Connection, size: int) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    conn.send(("ok", listener.getsockname()[1]))
    listener.settimeout(START_TIMEOUT_S)
    sock, _ = listener.accept()
    listener.close()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stamps: list[int] = []
    buffer = bytearray(size)
    view = memoryview(buffer)
    while True:
        got = 0
        while got < size:
            n = sock.recv_into(view[got:])
            if n == 0:
                raise RuntimeError("raw writer closed the connection early")
            got += n
        now = time.monotonic_ns()
        index = int.from_bytes(buffer[:4], "big")
        if index == RAW_SENTINEL:
            break
        stamps.extend([0] * (index + 1 - len(stamps)))
        stamps[index] = now
    sock.close()
    conn.send(("ok", stamps))


def _raw_writer_process(conn: Connection, ports: list[int], count: int, interval_s: float,
                        size: int) -> None:
    try:
        _raw_send(conn, ports, count, interval_s, size)
    except Exception as exc:  # reported to the parent, which prints it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    conn.recv()  # quit


def _raw_send(conn: Connection, ports: list[int], count: int, interval_s: float,
              size: int) -> None:
    socks = []
    for port in ports:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(sock)
    conn.send(("ok", len(socks)))
    conn.recv()  # go
    pad = bytes(size - 4)
    sent: list[int] = []
    for index in range(count):
        payload = index.to_bytes(4, "big") + pad
        sent.append(time.monotonic_ns())
        for sock in socks:
            sock.sendall(payload)
        time.sleep(interval_s)
    for sock in socks:
        sock.sendall(RAW_SENTINEL.to_bytes(4, "big") + pad)
        sock.close()
    conn.send(("ok", sent))


def run_raw(ctx: Any, count: int, updates: int, warmup: int, interval_s: float,
            size: int) -> dict[str, Any]:
    with ExitStack() as stack:
        receivers = []
        for index in range(count - 1):
            worker = Worker(ctx, _raw_receiver_process, (size,), f"raw-receiver-{index}")
            stack.callback(worker.stop)
            receivers.append(worker)
        writer = Worker(ctx, _raw_writer_process,
                        ([r.hello for r in receivers], warmup + updates, interval_s, size),
                        "raw-writer")
        stack.callback(writer.stop)
        writer.send("go")
        sent = writer.result(COMMAND_TIMEOUT_S + updates * interval_s * 2)
        received = [r.result() for r in receivers]
    return latency_figures(sent, [[s or None for s in r] for r in received], warmup)


# -- CPU only: sans-IO rooms in one process --------------------------------------------------

class _Fanout:
    """Sans-IO rooms in a full mesh, messages carried FIFO through the real codec."""

    def __init__(self, count: int) -> None:
        import random

        from lattica_nb.identity import PrivateKey
        from lattica_nb.sync.envelope import room_id
        from lattica_nb.sync.room import Room
        from lattica_nb.testing.rooms import RoomNetwork

        rid = room_id("bench", ROOM_NAME)
        keys = [PrivateKey.generate() for _ in range(count)]
        net = RoomNetwork(random.Random(1))
        self.rooms = [net.add(Room.create(keys[0], rid))]
        self.rooms += [net.add(Room.join(key, rid)) for key in keys[1:]]
        for a in range(count):  # first to the owner (to join), then to each other
            for b in range(a + 1, count):
                net.link(self.rooms[a].peer_id, self.rooms[b].peer_id)
            net.pump()
        linked = [len(room.open_peers()) for room in self.rooms]
        if min(linked) < count - 1:
            raise RuntimeError(f"in-memory mesh incomplete: open sessions per room {linked}")
        self.by_id = {room.peer_id: room for room in self.rooms}
        self.delivered = 0

    def settle(self) -> None:
        from collections import deque

        from lattica_nb.sync.protocol import decode_message, encode_message

        queue: deque[tuple[Any, Any, bytes]] = deque()

        def collect(room: Any) -> None:
            for dst, messages in room.outgoing():
                queue.extend((room.peer_id, dst, encode_message(m)) for m in messages)
            while room.next_event() is not None:
                pass

        for room in self.rooms:
            collect(room)
        while queue:
            src, dst, data = queue.popleft()
            room = self.by_id[dst]
            room.receive(src, decode_message(data))
            self.delivered += 1
            collect(room)


def run_cpu_only(count: int, updates: int, warmup: int) -> dict[str, Any]:
    from pycrdt import Array, Map

    from lattica_nb.sync.rules import author_key

    fanout = _Fanout(count)
    writer = fanout.rooms[0]
    metrics = writer.doc.get("metrics", type=Map)
    key = author_key(writer.peer_id, ARRAY_NAME)
    metrics[key] = Array()
    fanout.settle()
    array = metrics[key]
    per_update: list[float] = []
    delivered = 0
    for index in range(warmup + updates):
        before = fanout.delivered
        start = time.perf_counter_ns()
        array.append(row(index))
        fanout.settle()
        elapsed = time.perf_counter_ns() - start
        if index >= warmup:
            per_update.append(_ms(elapsed))
            delivered += fanout.delivered - before
    expected = warmup + updates
    converged = all(len(room.doc.get("metrics", type=Map)[key]) == expected
                    for room in fanout.rooms)
    return {"p50_ms": statistics.median(per_update), "p99_ms": percentile(per_update, 0.99),
            "messages_per_update": delivered / updates, "converged": converged}


def update_frame_bytes() -> int:
    """Bytes of one framed UPDATE message carrying one row, as our nodes send it."""
    from pycrdt import Array, Map

    from lattica_nb.identity import PrivateKey
    from lattica_nb.sync.envelope import room_id
    from lattica_nb.sync.protocol import Update, frame_message
    from lattica_nb.sync.room import Room
    from lattica_nb.sync.rules import author_key

    room = Room.create(PrivateKey.generate(), room_id("bench", ROOM_NAME))
    metrics = room.doc.get("metrics", type=Map)
    key = author_key(room.peer_id, ARRAY_NAME)
    metrics[key] = Array()
    array = metrics[key]
    for index in range(100):
        array.append(row(index))
    envelope = room.log.get(room.peer_id, room.log.seq(room.peer_id))
    if envelope is None:  # pragma: no cover - just written
        raise RuntimeError("no envelope was written")
    return len(frame_message(Update(envelope)))


# -- sustained updates/s ---------------------------------------------------------------------

def run_sustained(ctx: Any, receivers: int, updates: int) -> dict[str, Any]:
    with ExitStack() as stack:
        workers, ids = start_mesh(ctx, stack, receivers + 1, tag=f"sustained{receivers}-")
        writer, others = workers[0], workers[1:]
        writer.call("prepare")
        call_all(others, "arm", authors=[ids[0]], expected=updates)
        wrote = writer.call("write", timeout_s=COMMAND_TIMEOUT_S * 2, count=updates,
                            interval_s=0.0)
        got = call_all(others, "collect", timeout_s=DELIVERY_TIMEOUT_S + 10,
                       wait_s=DELIVERY_TIMEOUT_S)
    start = wrote["sent"][0]
    local_s = (wrote["done_ns"] - start) / 1e9
    rates = []
    received = []
    for g in got:
        stamps = [s for s in g["stamps"][0] if s]
        received.append(len(stamps))
        if stamps:
            rates.append(len(stamps) / ((max(stamps) - start) / 1e9))
    return {
        "local_per_s": updates / local_s,
        "applied_per_s_min": min(rates) if rates else 0.0,
        "applied_per_s_mean": statistics.mean(rates) if rates else 0.0,
        "received_min": min(received) if received else 0,
        "sessions_ended": wrote["sessions_ended"] + sum(g["sessions_ended"] for g in got),
        "writer_cpu_ms_per_update": wrote["cpu_s"] * 1e3 / updates,
    }


def run_local_sign_rate(updates: int) -> float:
    """Rows signed per second by a sans-IO Room with no peers (no network, no event loop)."""
    from pycrdt import Array, Map

    from lattica_nb.identity import PrivateKey
    from lattica_nb.sync.envelope import room_id
    from lattica_nb.sync.room import Room
    from lattica_nb.sync.rules import author_key

    room = Room.create(PrivateKey.generate(), room_id("bench", ROOM_NAME))
    metrics = room.doc.get("metrics", type=Map)
    key = author_key(room.peer_id, ARRAY_NAME)
    metrics[key] = Array()
    array = metrics[key]
    start = time.perf_counter()
    for index in range(updates):
        array.append(row(index))
        while room.next_event() is not None:
            pass
    return updates / (time.perf_counter() - start)


# -- concurrent writes: lattica_nb and the Lattica SDK ---------------------------------------

def run_concurrent_ours(ctx: Any, writes: int) -> dict[str, Any]:
    with ExitStack() as stack:
        workers, ids = start_mesh(ctx, stack, 2, tag="concurrent-")
        call_all(workers, "prepare")
        for worker in workers:
            worker.call("rows", authors=ids, expected=0, wait_s=0.0)
        call_all(workers, "arm", authors=ids, expected=0)
        at_ns = time.monotonic_ns() + 100_000_000
        call_all(workers, "write", count=writes, interval_s=0.0, at_ns=at_ns)
        counts = call_all(workers, "rows", authors=ids, expected=2 * writes,
                          wait_s=CONVERGE_TIMEOUT_S, timeout_s=CONVERGE_TIMEOUT_S + 10)
    return {"written": 2 * writes, "seen": [sum(c) for c in counts]}


def _load_lattica_peer_module() -> Any:
    spec = importlib.util.spec_from_file_location("lattica_peer_script", LATTICA_PEER)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {LATTICA_PEER}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _lattica_process(conn: Connection, bootstrap: str | None) -> None:
    """One Lattica SDK peer (only in a loopback-only namespace: it sends STUN on build)."""
    if not loopback_only():
        conn.send(("error", "refusing to build a Lattica node: this namespace has interfaces "
                            "besides lo"))
        return
    peer_script = _load_lattica_peer_module()
    from lattica import Lattica

    with tempfile.TemporaryDirectory(prefix="sync-rooms-lattica-") as state:
        builder = (Lattica.builder().with_listen_addrs([LISTEN]).with_mdns(False)
                   .with_upnp(False).with_key_path(state)
                   .with_storage_path(os.path.join(state, "blocks"))
                   .with_dht_db_path(os.path.join(state, "dht")))
        if bootstrap:
            builder = builder.with_bootstraps([bootstrap])
        node = builder.build()
        try:
            peer_id = node.peer_id()
            addr = peer_script.resolve_listen_addrs([peer_script.parse_listen(LISTEN)], peer_id)[0]
            conn.send(("ok", (peer_id, addr)))
            core = node._lattica_instance  # raw bytes: no pickle on either side

            def wait_peer(peer: str, wait_s: float) -> bool:
                deadline = time.monotonic() + wait_s
                while peer not in node.get_all_peers():
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.01)
                return True

            def burst(key: str, name: str, count: int, at_ns: int) -> dict[str, Any]:
                time.sleep(max(0.0, (at_ns - time.monotonic_ns()) / 1e9))
                errors: list[str] = []

                def store(index: int) -> None:
                    try:
                        core.store_with_subkey(key, b"%d" % index, time.time() + 600,
                                               f"{name}-{index}")
                    except Exception as exc:  # counted; the others go on
                        errors.append(f"{type(exc).__name__}: {exc}")

                with ThreadPoolExecutor(count) as pool:
                    list(pool.map(store, range(count)))
                return {"errors": len(errors), "first_error": errors[0] if errors else None}

            def read(key: str) -> list[str]:
                found = core.get_with_subkey(key)
                if isinstance(found, dict):
                    return sorted(str(subkey) for subkey in found)
                return [] if found is None else ["<plain value>"]

            _serve_sync(conn, {"wait_peer": wait_peer, "burst": burst, "read": read})
        finally:
            node.close()


def run_concurrent_lattica(ctx: Any, writes: int) -> dict[str, Any]:
    with ExitStack() as stack:
        first = Worker(ctx, _lattica_process, (None,), "lattica-0")
        stack.callback(first.stop)
        second = Worker(ctx, _lattica_process, (first.hello[1],), "lattica-1")
        stack.callback(second.stop)
        peers = [first, second]
        for waiter, other in ((second, first), (first, second)):
            if not waiter.call("wait_peer", peer=other.hello[0], wait_s=15.0, timeout_s=30):
                raise RuntimeError(f"{waiter.name} never met {other.name}")
        key = f"bench/sync-rooms/{os.urandom(4).hex()}"
        at_ns = time.monotonic_ns() + 200_000_000
        bursts = [None, None]
        for index, peer in enumerate(peers):
            peer.send("burst", key=key, name=f"p{index}", count=writes, at_ns=at_ns)
        for index, peer in enumerate(peers):
            bursts[index] = peer.result()
        time.sleep(LATTICA_SETTLE_S)
        found = call_all(peers, "read", key=key)
    union = set(found[0]) | set(found[1])
    return {"written": 2 * writes, "seen": [len(f) for f in found], "union": len(union),
            "errors": sum(b["errors"] for b in bursts if b),
            "first_error": next((b["first_error"] for b in bursts if b and b["first_error"]),
                                None)}


# -- memory per room and restart recovery ----------------------------------------------------

def _memory_process(conn: Connection, updates: int, traced: bool, restore: bool) -> None:
    try:
        conn.send(("ok", "started"))
        conn.send(("ok", measure_memory(updates, traced=traced, restore=restore)))
    except Exception as exc:  # reported to the parent, which prints it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    conn.recv()  # quit


def measure_memory(updates: int, *, traced: bool, restore: bool) -> dict[str, Any]:
    """Writer and receiver rooms after ``updates`` rows (see the module docs, section 4)."""
    import gc
    import random
    import tracemalloc

    from pycrdt import Array, Map

    from lattica_nb.identity import PrivateKey
    from lattica_nb.sync.envelope import room_id
    from lattica_nb.sync.protocol import Update, decode_message, encode_message
    from lattica_nb.sync.room import Room
    from lattica_nb.sync.rules import author_key
    from lattica_nb.testing.rooms import RoomNetwork

    rid = room_id("bench", ROOM_NAME)
    writer_key, receiver_key = PrivateKey.generate(), PrivateKey.generate()
    net = RoomNetwork(random.Random(1))
    writer = net.add(Room.create(writer_key, rid))
    receiver = net.add(Room.join(receiver_key, rid))
    net.link(writer.peer_id, receiver.peer_id)
    metrics = writer.doc.get("metrics", type=Map)
    key = author_key(writer.peer_id, ARRAY_NAME)
    metrics[key] = Array()
    net.pump()  # the receiver has joined and holds the (empty) rows array
    array = metrics[key]
    first_seq = writer.log.seq(writer.peer_id) + 1
    figures: dict[str, Any] = {"updates": updates, "traced": traced}

    def measure(name: str, work: Callable[[], None]) -> None:
        gc.collect()
        rss_before = rss_bytes()
        traced_before = tracemalloc.get_traced_memory()[0] if traced else 0
        start = time.perf_counter()
        work()
        seconds = time.perf_counter() - start
        gc.collect()
        figures[f"{name}_s"] = seconds
        figures[f"{name}_rss_bytes"] = rss_bytes() - rss_before
        if traced:
            figures[f"{name}_traced_bytes"] = tracemalloc.get_traced_memory()[0] - traced_before

    if traced:
        tracemalloc.start()

    def write_rows() -> None:
        for index in range(updates):
            array.append(row(index))
            writer.outgoing()  # what the driver's pump hands to the links
            while writer.next_event() is not None:
                pass

    def receive_rows() -> None:
        for seq in range(first_seq, first_seq + updates):
            envelope = writer.log.get(writer.peer_id, seq)
            # A fresh decoded copy, as from a stream (the writer's objects are not shared).
            receiver.receive(writer.peer_id, decode_message(encode_message(Update(envelope))))
            receiver.outgoing()
            while receiver.next_event() is not None:
                pass

    def top_sites(stats: list[Any]) -> list[str]:
        """The allocation sites holding the most, in bytes per update."""
        sites = []
        for stat in stats[:TRACED_TOP_SITES]:
            frame = stat.traceback[0]
            where = frame.filename.replace(str(REPO) + os.sep, "").split("site-packages/")[-1]
            size = getattr(stat, "size_diff", stat.size)
            sites.append(f"{where}:{frame.lineno} {size / updates:.0f} B")
        return sites

    def snapshot() -> Any:
        return tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])

    measure("writer", write_rows)
    if traced:
        after_writer = snapshot()
        figures["writer_traced_top"] = top_sites(after_writer.statistics("lineno"))
    measure("receiver", receive_rows)
    if traced:
        after_receiver = snapshot()
        tracemalloc.stop()
        figures["receiver_traced_top"] = top_sites(after_receiver.compare_to(after_writer,
                                                                             "lineno"))
    rows_seen = len(receiver.doc.get("metrics", type=Map)[key])
    if rows_seen != updates:
        raise RuntimeError(f"the receiver applied {rows_seen} of {updates} rows")
    for name, room in (("writer", writer), ("receiver", receiver)):
        figures[f"{name}_stored_bytes"] = room.log.stored_bytes
        figures[f"{name}_envelopes"] = len(room.log)
        figures[f"{name}_doc_update_bytes"] = len(room.doc.get_update())
    if restore:
        figures.update(measure_restore(writer, writer_key, receiver, receiver_key, key))
    return figures


def measure_restore(writer: Any, writer_key: Any, receiver: Any, receiver_key: Any,
                    key: str) -> dict[str, Any]:
    """Restart recovery from each room's file, without and with the compaction snapshot."""
    from pycrdt import Map

    from lattica_nb.sync.driver import decode_header, encode_header
    from lattica_nb.sync.room import Room
    from lattica_nb.sync.storage import RoomFile

    figures: dict[str, Any] = {}
    expected = len(writer.doc.get("metrics", type=Map)[key])

    def reopen(path: Path, identity: Any, name: str) -> None:
        start = time.perf_counter()
        file, loaded = RoomFile.open(path, fsync=False)
        _, descriptor, member_list = decode_header(loaded.header)
        room = Room(identity, descriptor.room, descriptor=descriptor, member_list=member_list)
        room.restore(loaded.envelopes, snapshot=loaded.snapshot,
                     snapshot_vector=loaded.snapshot_vector, acked=loaded.acked)
        figures[f"restore_{name}_s"] = time.perf_counter() - start
        file.close()
        rows = len(room.doc.get("metrics", type=Map)[key])
        if rows != expected:
            raise RuntimeError(f"restore {name}: {rows} rows, expected {expected}")

    with tempfile.TemporaryDirectory(prefix="sync-rooms-files-") as directory:
        for name, room, identity in (("writer", writer, writer_key),
                                     ("receiver", receiver, receiver_key)):
            path = Path(directory) / f"{name}.ylog"
            header = encode_header(ROOM_NAME, room.descriptor, None)
            with RoomFile.create(path, header, fsync=False) as file:
                file.append(list(room.log.envelopes()))
                figures[f"file_{name}_bytes"] = file.size_bytes
            reopen(path, identity, f"{name}_log")
        # Compaction as RoomDriver._compact does it: every envelope plus a snapshot.
        path = Path(directory) / "receiver.ylog"
        file, _ = RoomFile.open(path, fsync=False)
        start = time.perf_counter()
        snapshot = receiver.doc.get_update()
        file.compact(encode_header(ROOM_NAME, receiver.descriptor, None),
                     receiver.log.envelopes(), snapshot=snapshot,
                     snapshot_vector=receiver.log.vector(), acked=0)
        figures["compact_s"] = time.perf_counter() - start
        figures["file_compacted_bytes"] = file.size_bytes
        file.close()
        reopen(path, receiver_key, "receiver_snapshot")
    return figures


def run_memory(ctx: Any, updates: int, traced_updates: int) -> dict[str, Any]:
    """The untraced figures (and restore) and the tracemalloc figures, in two processes."""
    with ExitStack() as stack:
        plain = Worker(ctx, _memory_process, (updates, False, True), "memory")
        stack.callback(plain.stop)
        traced = None
        if traced_updates:
            traced = Worker(ctx, _memory_process, (traced_updates, True, False), "memory-traced")
            stack.callback(traced.stop)
        budget = COMMAND_TIMEOUT_S + updates * 2e-3
        figures = {"plain": plain.result(budget)}
        if traced is not None:
            figures["traced"] = traced.result(COMMAND_TIMEOUT_S + traced_updates * 2e-3)
    return figures


# -- report ----------------------------------------------------------------------------------

def _f(value: Any, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}{unit}"


def _ratio(ours: Any, theirs: Any) -> str:
    return f"{ours / theirs:,.1f}×" if ours is not None and theirs else "—"


def print_propagation(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n### 1. Propagation of one row to every other peer (loopback TCP, one process per "
          f"peer, full mesh, one row every {args.interval_ms:g} ms, {args.updates} rows after "
          f"{args.warmup} warm-up)\n")
    print("| peers | ours p50 | ours p99 | ours last-peer p50 / p99 | raw TCP p50 / p99 | "
          "raw last-peer p50 / p99 | ours/raw p50 | CPU-only per row p50 / p99 | "
          "messages per row | CPU per row, all processes |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for count in args.peers:
        ours, raw, cpu = (results[f"{kind}_{count}"] for kind in ("ours", "raw", "cpu"))
        if isinstance(ours, str):
            print(f"| {count} | {ours} | | | | | | | | |")
            continue
        lost = f" ({ours['missing']} missing)" if ours.get("missing") else ""
        raw_ok = isinstance(raw, dict) and raw.get("n")
        cpu_ok = isinstance(cpu, dict)
        print(
            f"| {count} | {_f(ours.get('p50_ms'))} ms{lost} | {_f(ours.get('p99_ms'))} ms | "
            f"{_f(ours.get('last_p50_ms'))} / {_f(ours.get('last_p99_ms'))} ms | "
            + (f"{_f(raw['p50_ms'], 3)} / {_f(raw['p99_ms'], 3)} ms | "
               f"{_f(raw['last_p50_ms'], 3)} / {_f(raw['last_p99_ms'], 3)} ms | "
               f"{_ratio(ours.get('p50_ms'), raw['p50_ms'])} | " if raw_ok
               else f"{raw} | | | ")
            + (f"{_f(cpu['p50_ms'])} / {_f(cpu['p99_ms'])} ms"
               f"{'' if cpu['converged'] else ' (NOT converged)'} | "
               f"{cpu['messages_per_update']:.0f} | " if cpu_ok else f"{cpu} | | ")
            + f"{_f(ours.get('all_cpu_ms_per_update'))} ms |"
        )
    print("\nours: local write (signing included) → DocumentChanged at each other peer; "
          "last-peer: the slowest receiver of each row. raw TCP: the same number of "
          f"{results['frame_bytes']}-byte messages (our framed UPDATE) from one process to "
          "N−1 receiver processes over plain TCP. CPU-only: the same fan-out through sans-IO "
          "Rooms in one process (codec, signatures, write rules; no sockets), wall time per row "
          "until every room is quiet. Messages per row: N−1 UPDATEs from the writer, "
          "(N−1)(N−2) relayed copies (every receiver forwards a new envelope to every other "
          "peer) and N−1 ACKs. CPU per row: process time of all N node processes during the "
          "run ÷ rows.")
    for count in args.peers:
        ours = results[f"ours_{count}"]
        if isinstance(ours, dict) and ours.get("sessions_ended"):
            print(f"- {count} peers: {ours['sessions_ended']} sessions ended during the run")


def print_concurrent(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n### 2. Concurrent writes: 2 peers × {args.concurrent} writes at the same moment\n")
    print("| system | what each peer writes | written | seen on peer A | seen on peer B | "
          "kept (union) |")
    print("|---|---|---:|---:|---:|---:|")
    ours = results["concurrent_ours"]
    if isinstance(ours, dict):
        print(f"| lattica_nb | appends rows to its own metrics array | {ours['written']} | "
              f"{ours['seen'][0]} | {ours['seen'][1]} | {max(ours['seen'])} |")
    else:
        print(f"| lattica_nb | {ours} | | | | |")
    lattica = results["concurrent_lattica"]
    if isinstance(lattica, dict):
        errors = f" ({lattica['errors']} store errors)" if lattica["errors"] else ""
        print(f"| Lattica SDK 1.0.21 | stores subkeys of one DHT key (`store_with_subkey`) | "
              f"{lattica['written']}{errors} | {lattica['seen'][0]} | {lattica['seen'][1]} | "
              f"{lattica['union']} |")
    else:
        print(f"| Lattica SDK | {lattica} | | | | |")
    print(f"\nLattica: read with `get_with_subkey` on each peer {LATTICA_SETTLE_S:g} s after the "
          f"stores returned; union = distinct subkeys seen by either peer. Ours: rows counted "
          f"once both nodes agree (at most {CONVERGE_TIMEOUT_S:g} s).")


def print_sustained(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n### 3. Sustained: one writer, {args.sustained:,} rows as fast as it can\n")
    print("| receivers | signed at the writer | applied at the slowest receiver | "
          "applied, mean of receivers | rows received (min) | sessions ended |")
    print("|---:|---:|---:|---:|---:|---:|")
    for count in args.receivers:
        figures = results[f"sustained_{count}"]
        if isinstance(figures, str):
            print(f"| {count} | {figures} | | | | |")
            continue
        print(f"| {count} | {figures['local_per_s']:,.0f} rows/s | "
              f"{figures['applied_per_s_min']:,.0f} rows/s | "
              f"{figures['applied_per_s_mean']:,.0f} rows/s | {figures['received_min']:,} | "
              f"{figures['sessions_ended']} |")
    local = results.get("local_sign_rate")
    if isinstance(local, float):
        print(f"\nNo network, no event loop (a sans-IO Room alone): {local:,.0f} rows signed/s. "
              "Applied: rows ÷ time from the writer's first write to the last DocumentChanged "
              "at that receiver.")


def print_memory(results: dict[str, Any], args: argparse.Namespace) -> None:
    memory = results.get("memory")
    print(f"\n### 4. Memory per room after {args.memory_updates:,} rows (one writer, "
          "in-process, no network)\n")
    if not isinstance(memory, dict):
        print(f"{memory}")
        return
    plain, traced = memory["plain"], memory.get("traced")
    updates = plain["updates"]
    traced_updates = traced["updates"] if traced else 0
    print(f"| room | time per row | RSS delta | RSS per row | tracemalloc per row "
          f"({traced_updates:,} rows) | log.stored_bytes | doc.get_update() |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, what in (("writer", "writer (signs)"),
                       ("receiver", "receiver (verifies, checks rules, applies)")):
        tm = (f"{traced[f'{name}_traced_bytes'] / traced_updates:,.0f} B" if traced else "—")
        print(f"| {what} | {plain[f'{name}_s'] / updates * 1e6:,.0f} µs | "
              f"{plain[f'{name}_rss_bytes'] / 2**20:,.1f} MiB | "
              f"{plain[f'{name}_rss_bytes'] / updates:,.0f} B | {tm} | "
              f"{plain[f'{name}_stored_bytes']:,} B ({plain[f'{name}_stored_bytes'] / updates:,.0f}"
              f" B/row) | {plain[f'{name}_doc_update_bytes']:,} B "
              f"({plain[f'{name}_doc_update_bytes'] / updates:,.1f} B/row) |")
    if traced:
        print()
        for name in ("writer", "receiver"):
            print(f"- tracemalloc, largest {name} sites per row: "
                  + "; ".join(traced[f"{name}_traced_top"]))
    if "restore_writer_log_s" in plain:
        print("\n| restart recovery (RoomFile.open + Room.restore) | file | time |")
        print("|---|---:|---:|")
        print(f"| writer's file, no snapshot (own envelopes: trusted, applied) | "
              f"{plain['file_writer_bytes'] / 2**20:,.1f} MiB | "
              f"{plain['restore_writer_log_s']:,.2f} s |")
        print(f"| receiver's file, no snapshot (the writer's envelopes: rules checked, applied) |"
              f" {plain['file_receiver_bytes'] / 2**20:,.1f} MiB | "
              f"{plain['restore_receiver_log_s']:,.2f} s |")
        print(f"| compaction with a snapshot (as RoomDriver._compact) | "
              f"{plain['file_compacted_bytes'] / 2**20:,.1f} MiB | {plain['compact_s']:,.2f} s |")
        print(f"| receiver's file after compaction (snapshot + envelopes, none re-applied) | "
              f"{plain['file_compacted_bytes'] / 2**20:,.1f} MiB | "
              f"{plain['restore_receiver_snapshot_s']:,.2f} s |")
    if traced:
        print("\ntracemalloc traces Python objects only (pycrdt's Rust heap is not traced); it "
              "ran in a second process beside the first, because tracing doubles the time and "
              "its own bookkeeping would inflate RSS.")


# -- main ------------------------------------------------------------------------------------

def _attempt(results: dict[str, Any], name: str, work: Callable[[], Any]) -> None:
    started = time.perf_counter()
    try:
        results[name] = work()
    except Exception as exc:  # reported in the table instead of losing the other figures
        results[name] = f"failed: {type(exc).__name__}: {exc}"
    print(f"[{time.perf_counter() - started:6.1f} s] {name}", file=sys.stderr, flush=True)


def run_all(args: argparse.Namespace, lattica_reason: str | None) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    interval_s = args.interval_ms / 1e3
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    _attempt(results, "frame_bytes", update_frame_bytes)
    size = results["frame_bytes"] if isinstance(results["frame_bytes"], int) else 227
    for count in args.peers:
        _attempt(results, f"ours_{count}", lambda c=count: run_propagation(
            ctx, c, args.updates, args.warmup, interval_s, args.profile_dir))
        _attempt(results, f"raw_{count}", lambda c=count: run_raw(
            ctx, c, args.updates, args.warmup, interval_s, size))
        _attempt(results, f"cpu_{count}", lambda c=count: run_cpu_only(
            c, args.updates, args.warmup))
    _attempt(results, "concurrent_ours", lambda: run_concurrent_ours(ctx, args.concurrent))
    if lattica_reason is None:
        _attempt(results, "concurrent_lattica",
                 lambda: run_concurrent_lattica(ctx, args.concurrent))
    else:
        results["concurrent_lattica"] = f"skipped: {lattica_reason}"
    _attempt(results, "local_sign_rate", lambda: run_local_sign_rate(args.sustained))
    for count in args.receivers:
        _attempt(results, f"sustained_{count}",
                 lambda c=count: run_sustained(ctx, c, args.sustained))
    if args.memory_updates:
        _attempt(results, "memory", lambda: run_memory(ctx, args.memory_updates,
                                                        args.tracemalloc_updates))
    else:
        results["memory"] = "skipped: --memory-updates 0"
    results["load_after"] = os.getloadavg()
    return results


def code_version() -> str:
    """The commit measured, and the package files changed since (the working tree is run)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout
        changed = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                  "lattica_nb"], capture_output=True, text=True, timeout=10,
                                 check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "lattica_nb (commit unknown)"
    text = f"lattica_nb at {head.strip()}"
    if changed:
        text += " + uncommitted: " + ", ".join(line[3:] for line in changed)
    return text


def print_report(command: str, results: dict[str, Any], args: argparse.Namespace,
                 seconds: float, where: str) -> None:
    import platform

    load = " / ".join(f"{x:.2f}" for x in results["load_before"])
    print(f"\n## Yjs rooms — `{command}`\n")
    print(f"{where}; {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"load average before the run {load} (1 / 5 / 15 min); run took {seconds:.0f} s; "
          f"{code_version()}.")
    print_propagation(results, args)
    print_concurrent(results, args)
    print_sustained(results, args)
    print_memory(results, args)


def _run_inside_namespace(argv: list[str], max_seconds: float) -> int | None:
    """Re-run this script in a fresh loopback-only namespace; None if none can be made."""
    from lattica_nb.testing.netns import loopback_namespace_available, netns_command

    if loopback_namespace_available() is not None:
        return None
    command = netns_command([sys.executable, str(Path(__file__).resolve()), *argv, INSIDE_FLAG])
    proc = subprocess.Popen(command, start_new_session=True)
    try:
        return proc.wait(timeout=max_seconds + 30)
    except BaseException:
        try:  # the whole group: the script and every process it started
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        print(f"sync_rooms.py: stopped (no result after {max_seconds + 30:.0f} s or interrupted)",
              file=sys.stderr)
        return 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--updates", type=int, default=200, help="counted rows per layout")
    parser.add_argument("--warmup", type=int, default=20, help="uncounted rows first")
    parser.add_argument("--interval-ms", type=float, default=15.0, help="pace of the writer")
    parser.add_argument("--sustained", type=int, default=5000, help="rows in the sustained run")
    parser.add_argument("--receivers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--concurrent", type=int, default=20, help="writes per peer")
    parser.add_argument("--memory-updates", type=int, default=100_000)
    parser.add_argument("--tracemalloc-updates", type=int, default=20_000,
                        help="rows of the traced memory run (0: skip); Python bytes per row "
                             "do not depend on the count, and tracing is slow")
    parser.add_argument("--skip-lattica", action="store_true")
    parser.add_argument("--profile-dir", help="cProfile every propagation node process into DIR")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument(INSIDE_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if (not all(2 <= n <= 32 for n in args.peers) or not all(1 <= n <= 16 for n in args.receivers)
            or not 1 <= args.updates <= 10_000 or not 0 <= args.warmup <= 1000
            or not 1 <= args.interval_ms <= 1000 or not 1 <= args.sustained <= 100_000
            or not 1 <= args.concurrent <= 200 or not 0 <= args.memory_updates <= 1_000_000
            or not 0 <= args.tracemalloc_updates <= 1_000_000):
        parser.error("sizes out of range: --peers 2..32, --receivers 1..16, --updates 1..10000, "
                     "--warmup 0..1000, --interval-ms 1..1000, --sustained 1..100000, "
                     "--concurrent 1..200, --memory-updates / --tracemalloc-updates 0..1000000")
    argv = [a for a in sys.argv[1:] if a != INSIDE_FLAG]
    inside = getattr(args, INSIDE_FLAG.lstrip("-").replace("-", "_"))
    lattica_reason: str | None = "--skip-lattica" if args.skip_lattica else None
    if not inside:
        from lattica_nb.testing.netns import loopback_namespace_available

        code = _run_inside_namespace(argv, args.max_seconds)
        if code is not None:
            sys.exit(code)
        lattica_reason = lattica_reason or (
            "no loopback-only network namespace: " + str(loopback_namespace_available()))
    where = ("127.0.0.1 inside a loopback-only network namespace" if inside
             else "127.0.0.1 (no namespace)")
    if lattica_reason is None:
        if importlib.util.find_spec("lattica") is None:
            lattica_reason = "the lattica package is not installed (pip install lattica==1.0.21)"
        elif not loopback_only():
            lattica_reason = "this namespace has interfaces besides lo"
    faulthandler.dump_traceback_later(args.max_seconds, exit=True)
    started = time.perf_counter()
    results = run_all(args, lattica_reason)
    command = shlex.join(["python", "bench/sync_rooms.py", *argv])
    print_report(command, results, args, time.perf_counter() - started, where)
    if args.json:
        print(json.dumps({"command": command, **results}, default=str))


if __name__ == "__main__":
    main()
