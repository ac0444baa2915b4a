"""DHT latency: the Lattica SDK vs lattica_nb, side by side, in one run.

    python bench/dht_lattica.py [--ops 200] [--chain 8] [--value-bytes 256]
                                [--transport tcp|quic-v1] [--max-seconds 300]
                                [--skip-lattica] [--skip-ours] [--json]

Everything runs inside one loopback-only network namespace (a Lattica node
sends STUN requests to public servers whenever it is built): started from an
ordinary shell, the script re-runs itself inside a fresh namespace
(``lattica_nb.testing.netns``, needs root) and prints what that run printed.

Two layouts per system, each node its own key and listen address:

- ``pair``: node A, node B bootstrapped to A. A stores / provides, B gets.
- ``chain``: ``--chain`` nodes (default 8), node i bootstrapped to node i-1.
  The first node stores / provides, the last one gets. rust-libp2p's
  bootstrap walks the whole (small) mesh, so the last node may already be
  connected to the first: the number of peers the getter was connected to
  before and after the run is reported (``*_getter_peers_*``).

Per layout and operation, ``--ops`` sequential calls, each with a fresh key,
after ``WARMUP_OPS`` uncounted ones; p50 / p99 of the call latency:

- ``put``: store a ``--value-bytes`` value (Lattica: ``store_with_subkey`` of
  the SDK core, i.e. ``Lattica.store`` without the pickle step; rust-libp2p
  ``put_record`` with Quorum::One: local store, a closest-peers lookup, then
  PUT_VALUE to those peers).
- ``get``: read it back on the other node and compare the bytes (Lattica:
  ``get_with_subkey``, which first looks up ``<key>#index`` (the subkey index,
  absent here: a full failed lookup) and then ``<key>``).
- ``provide``: Lattica ``start_providing`` (local record, lookup, ADD_PROVIDER).
- ``get_providers``: Lattica ``get_providers`` on the other node, checked to
  contain the provider. It returns on the first provider answer (its own
  store first, else the first peer that answers), not after a full lookup.

In meshes this small every node is among the k = 20 closest to every key, so
a put or provide reaches every node and the getter usually answers from its
own store: Lattica's get is then mostly the failed ``#index`` lookup, and
its get_providers a local read. Both systems are measured the same way.

The Lattica figures are timed inside each Lattica process around the SDK call
(tests/interop/peers/lattica_peer.py ``dht_timed``), so the JSON control
channel is not in them. lattica_nb's column is filled by
:func:`measure_lattica_nb` (a stub until ``node.dht`` exists: the column says
n/a). Errors and wrong answers are counted and left out of the latencies.
A watchdog ends the run after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import base64
import faulthandler
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lattica_nb.testing.foreign_peers import PeerProcess  # noqa: E402

LATTICA_PEER = REPO / "tests" / "interop" / "peers" / "lattica_peer.py"
LISTEN = {"tcp": "/ip4/127.0.0.1/tcp/0", "quic-v1": "/ip4/127.0.0.1/udp/0/quic-v1"}
OPS = ("put", "get", "provide", "get_providers")
LAYOUTS = ("pair", "chain")
WARMUP_OPS = 10
START_TIMEOUT_S = 30.0
MEET_TIMEOUT_S = 15.0
OP_TIMEOUT_S = 10.0
"""Deadline of one lattica_nb call; a Lattica batch gets this per key."""
INSIDE_FLAG = "--inside-namespace"


# -- shared --------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(prefix: str, latencies: list[float], errors: int, mismatches: int,
              first_error: str | None = None) -> dict[str, Any]:
    """``<prefix>_p50_ms`` / ``_p99_ms`` (None when every call failed), ``_n``, ``_errors``,
    ``_mismatches`` and the first error seen."""
    figures: dict[str, Any] = {
        f"{prefix}_p50_ms": statistics.median(latencies) if latencies else None,
        f"{prefix}_p99_ms": percentile(latencies, 0.99) if latencies else None,
        f"{prefix}_n": len(latencies),
        f"{prefix}_errors": errors,
        f"{prefix}_mismatches": mismatches,
    }
    if first_error:
        figures[f"{prefix}_first_error"] = first_error
    return figures


def loopback_only() -> bool:
    with open("/proc/net/dev", encoding="ascii") as table:
        names = [line.split(":")[0].strip() for line in table.readlines()[2:]]
    return names == ["lo"]


def value_for(size: int) -> bytes:
    return bytes((i * 131 + 7) % 256 for i in range(size))


# -- the Lattica SDK -------------------------------------------------------------------------
def _lattica_layout(stack: ExitStack, count: int, transport: str) -> list[PeerProcess]:
    """``count`` lattica_peer.py processes, each bootstrapped to the previous one."""
    peers: list[PeerProcess] = []
    base = [sys.executable, str(LATTICA_PEER), "--listen", LISTEN[transport],
            "--protocol", "/lattica/1.0.0"]
    for index in range(count):
        argv = list(base)
        if peers:
            argv += ["--bootstrap", peers[-1].ready.addr(transport)]
        peer = stack.enter_context(PeerProcess(argv, name=f"lattica-{index}"))
        peer.start(timeout_s=START_TIMEOUT_S)
        peers.append(peer)
    for before, after in itertools.pairwise(peers):
        for waiter, other in ((after, before), (before, after)):
            met = waiter.request({"cmd": "wait_peer", "peer": other.ready.peer_id,
                                  "timeout": MEET_TIMEOUT_S, "identified": True},
                                 MEET_TIMEOUT_S + 5)
            if not met["found"]:
                raise RuntimeError(f"{waiter.name} never met {other.name}")
    return peers


def _timed(peer: PeerProcess, op: str, keys: list[str], **extra: Any) -> dict[str, Any]:
    command = {"cmd": "dht_timed", "op": op, "keys": keys, **extra}
    return peer.request(command, timeout_s=OP_TIMEOUT_S * max(1, len(keys)))


def measure_lattica(ops: int, chain: int, value_bytes: int, transport: str) -> dict[str, Any]:
    """Lattica SDK figures for both layouts (keys ``<layout>_<op>_p50_ms`` etc.)."""
    value_b64 = base64.b64encode(value_for(value_bytes)).decode("ascii")
    run = os.urandom(4).hex()
    figures: dict[str, Any] = {}
    for layout, count in (("pair", 2), ("chain", chain)):
        with ExitStack() as stack:
            peers = _lattica_layout(stack, count, transport)
            first, last = peers[0], peers[-1]
            figures[f"{layout}_getter_peers_before"] = len(last.request({"cmd": "peers"})["peers"])
            provider = first.ready.peer_id

            def keys(op: str, n: int, tag: str = "", layout: str = layout) -> list[str]:
                return [f"bench/{run}/{layout}/{op}{tag}/{i}" for i in range(n)]

            # warm-up: connections, streams and caches (not counted)
            _timed(first, "put", keys("put", WARMUP_OPS, "-warm"), value_b64=value_b64)
            _timed(last, "get", keys("put", WARMUP_OPS, "-warm"), value_b64=value_b64)
            put = _timed(first, "put", keys("put", ops), value_b64=value_b64)
            get = _timed(last, "get", keys("put", ops), value_b64=value_b64)
            provide = _timed(first, "provide", keys("prov", ops))
            found = _timed(last, "providers", keys("prov", ops), provider=provider)
            for op, batch in (("put", put), ("get", get), ("provide", provide),
                              ("get_providers", found)):
                figures.update(summarize(f"{layout}_{op}", batch["latencies_ms"],
                                         batch["errors"], batch["mismatches"],
                                         batch.get("first_error")))
            figures[f"{layout}_getter_peers_after"] = len(last.request({"cmd": "peers"})["peers"])
            figures[f"{layout}_nodes"] = count
    return figures


# -- lattica_nb ----------------------------------------------------------------------------
async def measure_lattica_nb(ops: int, chain: int, value_bytes: int,
                             transport: str) -> dict[str, Any] | str:
    """STUB for the lead: lattica_nb's figures, same keys as :func:`measure_lattica`.

    Written against the planned API (``await node.dht.put(key, value)``,
    ``get(key)``, ``provide(key)``, ``find_providers(key)``, nodes built with
    ``NodeConfig(ephemeral=True, listen=..., bootstrap=(previous node,))``);
    it returns ``"n/a: ..."`` while ``Node.dht`` does not exist. All nodes
    run in this process on one event loop (Lattica's are one process each):
    change that here if the comparison needs it.
    """
    from lattica_nb import Node, NodeConfig

    if not isinstance(getattr(Node, "dht", None), property):
        return "n/a: node.dht does not exist yet"

    import anyio

    value = value_for(value_bytes)
    run = os.urandom(4).hex()
    figures: dict[str, Any] = {}

    async def timed(call: Any, keys: list[str], check: Any = None) -> dict[str, Any]:
        latencies: list[float] = []
        errors = mismatches = 0
        first_error = None
        for key in keys:
            start = time.perf_counter()
            try:
                with anyio.fail_after(OP_TIMEOUT_S):
                    answer = await call(key)
            except Exception as exc:  # counted, the batch goes on
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            latencies.append((time.perf_counter() - start) * 1000.0)
            mismatches += check is not None and not check(answer)
        return {"latencies_ms": latencies, "errors": errors, "mismatches": mismatches,
                "first_error": first_error}

    for layout, count in (("pair", 2), ("chain", chain)):
        async with AsyncExitStack() as stack:
            nodes: list[Any] = []
            for _ in range(count):
                bootstrap = (str(nodes[-1].listen_addrs[0]),) if nodes else ()
                config = NodeConfig(ephemeral=True, listen=(LISTEN[transport],),
                                    bootstrap=bootstrap)
                nodes.append(await stack.enter_async_context(Node(config)))
            # Same starting line as the Lattica layouts (each node met its bootstrap node):
            # connect() returns once the connection is up and identified.
            for before, node in itertools.pairwise(nodes):
                with anyio.fail_after(MEET_TIMEOUT_S):
                    await node.connect(before.listen_addrs[0])
            for node in nodes[1:]:
                with anyio.fail_after(MEET_TIMEOUT_S):
                    await node.dht.bootstrap()
            first, last = nodes[0], nodes[-1]
            figures[f"{layout}_getter_peers_before"] = len(last.peers())

            def keys(op: str, n: int, tag: str = "", layout: str = layout) -> list[str]:
                return [f"bench/{run}/{layout}/{op}{tag}/{i}" for i in range(n)]

            def store(key: str, first: Any = first) -> Any:
                return first.dht.put(key, value)

            def has_provider(found: Any, first: Any = first) -> bool:
                # find_providers may return PeerIds or Provider(peer_id, addrs) entries
                return first.peer_id in [getattr(p, "peer_id", p) for p in found]

            await timed(store, keys("put", WARMUP_OPS, "-warm"))
            await timed(last.dht.get, keys("put", WARMUP_OPS, "-warm"))
            put = await timed(store, keys("put", ops))
            get = await timed(last.dht.get, keys("put", ops), lambda got: got == value)
            provide = await timed(first.dht.provide, keys("prov", ops))
            found = await timed(last.dht.find_providers, keys("prov", ops), has_provider)
            # Like Lattica's get_providers (it returns on its first answer): stop at one.
            first_found = await timed(lambda key, last=last: last.dht.find_providers(key, count=1),
                                      keys("prov", ops), has_provider)
            # The network path of a get: the record is held by the first node only
            # (stored there directly, never replicated), so the getter must look it up.
            from lattica_nb.dht.store import StoredRecord

            now = time.time()
            for key in keys("remote", ops):
                first.dht.records.put(StoredRecord(key.encode(), value, now, now + 3600,
                                                   local=True), now)
            remote = await timed(lambda key, last=last: last.dht.get_raw(key.encode()),
                                 keys("remote", ops), lambda got: got == value)
            for op, batch in (("get_providers_first", first_found), ("get_remote", remote)):
                figures.update(summarize(f"{layout}_{op}", batch["latencies_ms"],
                                         batch["errors"], batch["mismatches"],
                                         batch["first_error"]))
            for op, batch in (("put", put), ("get", get), ("provide", provide),
                              ("get_providers", found)):
                figures.update(summarize(f"{layout}_{op}", batch["latencies_ms"],
                                         batch["errors"], batch["mismatches"],
                                         batch["first_error"]))
            figures[f"{layout}_getter_peers_after"] = len(last.peers())
            figures[f"{layout}_nodes"] = count
    return figures


# -- report --------------------------------------------------------------------------------
def _cell(figures: dict[str, Any] | str, key: str) -> str:
    if isinstance(figures, str):
        return "n/a"
    value = figures.get(key)
    if value is None:
        return "—"
    text = f"{value:,.2f} ms"
    prefix = key.rsplit("_", 2)[0]
    bad = figures.get(f"{prefix}_errors", 0) + figures.get(f"{prefix}_mismatches", 0)
    return f"{text} ({bad} bad)" if bad else text


def _ratio(ours: dict[str, Any] | str, theirs: dict[str, Any] | str, key: str) -> str:
    if isinstance(ours, str) or isinstance(theirs, str):
        return "—"
    a, b = ours.get(key), theirs.get(key)
    return f"{a / b:.2f}×" if a is not None and b else "—"


def print_table(command: str, ours: dict[str, Any] | str, lattica: dict[str, Any] | str,
                ops: int, chain: int) -> None:
    print(f"\nDHT latency, loopback, one namespace, {os.cpu_count()} cores — `{command}`\n")
    print(f"| {'figure':<34} | {'lattica_nb':>18} | {'Lattica SDK':>18} | {'ours/Lattica':>12} |")
    print(f"|{'-' * 36}|{'-' * 20}|{'-' * 20}|{'-' * 14}|")
    names = {"pair": "2 nodes", "chain": f"{chain}-node chain"}
    for layout in LAYOUTS:
        for op in OPS:
            for q in ("p50", "p99"):
                key = f"{layout}_{op}_{q}_ms"
                label = f"{names[layout]}: {op} {q}"
                print(f"| {label:<34} | {_cell(ours, key):>18} | {_cell(lattica, key):>18} | "
                      f"{_ratio(ours, lattica, key):>12} |")
    print("\nlattica_nb only (no Lattica equivalent):")
    for layout in LAYOUTS:
        for op, what in (("get_providers_first", "find_providers(count=1), as Lattica's "
                          "get_providers returns on its first answer"),
                         ("get_remote", "get of a record only the first node holds "
                          "(the network path; the rows above read a replicated copy)")):
            cells = " / ".join(_cell(ours, f"{layout}_{op}_{q}_ms") for q in ("p50", "p99"))
            print(f"- {names[layout]}: {what}: p50 / p99 {cells}")
    print(f"\n{ops} sequential calls per row after {WARMUP_OPS} warm-up calls; "
          "'bad' = calls that failed or answered wrongly (left out of the latencies).")
    for name, figures in (("lattica_nb", ours), ("Lattica SDK", lattica)):
        if isinstance(figures, str):
            print(f"{name}: {figures}")
            continue
        peers = ", ".join(f"{layout} {figures.get(f'{layout}_getter_peers_before')}→"
                          f"{figures.get(f'{layout}_getter_peers_after')}" for layout in LAYOUTS)
        print(f"{name}: getter connected to (before→after): {peers}")
        for key, value in figures.items():
            if key.endswith("_first_error"):
                print(f"{name}: {key}: {value}")


# -- main ----------------------------------------------------------------------------------
def _run_inside_namespace(argv: list[str], max_seconds: float) -> int:
    from lattica_nb.testing.netns import loopback_namespace_available, netns_command

    reason = loopback_namespace_available()
    if reason is not None:
        print(f"dht_lattica.py: needs a loopback-only network namespace: {reason}",
              file=sys.stderr)
        return 2
    command = netns_command([sys.executable, str(Path(__file__).resolve()), *argv, INSIDE_FLAG])
    try:
        done = subprocess.run(command, timeout=max_seconds + 30, check=False)
    except subprocess.TimeoutExpired:
        print(f"dht_lattica.py: no result after {max_seconds + 30:.0f} s", file=sys.stderr)
        return 1
    return done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=200, help="calls per operation and layout")
    parser.add_argument("--chain", type=int, default=8, help="nodes in the chain layout")
    parser.add_argument("--value-bytes", type=int, default=256)
    parser.add_argument("--transport", choices=tuple(LISTEN), default="tcp")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--skip-lattica", action="store_true")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument(INSIDE_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.ops <= 5000 or not 2 <= args.chain <= 32:
        parser.error("--ops must be 1..5000 and --chain 2..32")
    if not 1 <= args.value_bytes <= 15 * 1024:
        parser.error("--value-bytes must be 1..15360 (rust-libp2p kad packets are <= 16 KiB)")
    argv = [a for a in sys.argv[1:] if a != INSIDE_FLAG]

    if not getattr(args, INSIDE_FLAG.lstrip("-").replace("-", "_")):
        sys.exit(_run_inside_namespace(argv, args.max_seconds))
    if not loopback_only():
        sys.exit("dht_lattica.py: this namespace has interfaces besides lo; not building "
                 "Lattica nodes here")
    faulthandler.dump_traceback_later(args.max_seconds, exit=True)

    lattica: dict[str, Any] | str = "skipped: --skip-lattica"
    if not args.skip_lattica:
        try:
            lattica = measure_lattica(args.ops, args.chain, args.value_bytes, args.transport)
        except Exception as exc:  # reported in the table instead of losing the other column
            lattica = f"failed: {type(exc).__name__}: {exc}"
    ours: dict[str, Any] | str = "skipped: --skip-ours"
    if not args.skip_ours:
        import anyio

        try:
            ours = anyio.run(measure_lattica_nb, args.ops, args.chain, args.value_bytes,
                             args.transport)
        except Exception as exc:
            ours = f"failed: {type(exc).__name__}: {exc}"
    command = shlex.join(["python", "bench/dht_lattica.py", *argv])
    print_table(command, ours, lattica, args.ops, args.chain)
    if args.json:
        print(json.dumps({"command": command, "lattica_nb": ours, "lattica": lattica}))


if __name__ == "__main__":
    main()
