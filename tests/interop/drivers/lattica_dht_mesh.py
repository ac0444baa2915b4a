"""Interop driver, run INSIDE a loopback-only network namespace (see test_lattica_dht.py).

    python lattica_dht_mesh.py [--transport tcp|quic-v1]

A mixed Kademlia mesh on one Lattica protocol id, ``/lattica/1.0.0`` (identify
protocol version and Kademlia protocol id alike): three Lattica SDK peers
(rust-libp2p 0.54, tests/interop/peers/lattica_peer.py) and three lattica_nb
nodes, joined as a chain that alternates the two implementations, each one
bootstrapped to the one before::

    L0 <- N0 <- L1 <- N1 <- L2 <- N2

(N0 bootstraps to L0, L1 to N0, ...), so both implementations are bootstrap
node and bootstrapping node once each way. Then every lattica_nb node runs
``dht.bootstrap()``. The Lattica SDK has no bootstrap call and does not
expose its routing table; it bootstraps itself when it starts with a
bootstrap address and whenever its routing table is low (rust-libp2p's
automatic bootstrap), and it puts every identified peer that announces
listen addresses into its routing table.

Observations (one JSON line on stdout; the test asserts on it):

1. ``lattica_sees``: for each Lattica peer and each other node, whether the
   peer got connected to it within ``MEET_TIMEOUT_S`` (``wait_peer``), that is
   found it through the mesh: only its bootstrap node was given to it.
2. ``ours_find``: for each lattica_nb node and each other node,
   ``node.dht.find_peer(peer_id)``: the addresses found, whether one of them
   is the peer's real listen address, and whether the node was already
   connected to the peer before asking.
3. ``record``: L0 stores raw bytes under ``RECORD_KEY`` (``dht_put_raw``:
   the SDK's ``store`` without its pickle step). Each lattica_nb node reads it
   with ``node.dht.get_raw(key bytes)``, which returns the record value as
   stored on the wire: Lattica's bincode ``ValueWithTime { value: Vec<u8>,
   expiration_time: f64 }``. The driver decodes that envelope (never
   unpickling anything) and compares the bytes and the expiration with what
   L2 reads through the SDK (``dht_get_raw``).
4. ``providers``: N0 ``provide``s ``OUR_PROVIDER_KEY``, L1 ``provide``s
   ``LATTICA_PROVIDER_KEY``; every Lattica peer asks ``get_providers`` for
   ours and every lattica_nb node ``find_providers`` for Lattica's.

Each step records an exception as ``{"error": "..."}`` instead of stopping,
so one missing piece does not hide the others. The lattica_nb side uses the
planned API of ``lattica_nb.dht``: ``DhtConfig(protocol_id=...)`` in
``NodeConfig(dht=...)``, ``node.dht.bootstrap()``, ``find_peer(peer_id) ->
entry with .addrs | None``, ``get_raw(key: bytes) -> bytes | None``,
``provide(key: bytes)``, ``find_providers(key: bytes) -> list`` of peer ids
(or entries with ``.peer_id``).
"""

from __future__ import annotations

import argparse
import base64
import faulthandler
import json
import struct
import sys
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
for path in (REPO, HERE.parent):  # lattica_nb, then tests/interop (lattica_bincode)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import anyio  # noqa: E402
from lattica_bincode import BincodeError, decode_varint, encode_varint  # noqa: E402

from lattica_nb import Node, NodeConfig, PeerId  # noqa: E402
from lattica_nb.dht import DhtConfig  # noqa: E402
from lattica_nb.multiaddr import Multiaddr  # noqa: E402
from lattica_nb.testing.foreign_peers import PeerProcess  # noqa: E402

LATTICA_PEER = HERE.parent / "peers" / "lattica_peer.py"
PROTOCOL = "/lattica/1.0.0"
LISTEN = {"tcp": "/ip4/127.0.0.1/tcp/0", "quic-v1": "/ip4/127.0.0.1/udp/0/quic-v1"}
MESH_SIZE = 3
"""Lattica peers, and lattica_nb nodes (as many of each)."""

RECORD_KEY = "mesh/lattica-record"
RECORD_VALUE = bytes(range(256)) + b"\x00lattica raw value\xff"
RECORD_TTL_S = 600
OUR_PROVIDER_KEY = "mesh/provided-by-lattica-nb"
LATTICA_PROVIDER_KEY = "mesh/provided-by-lattica"

START_TIMEOUT_S = 30.0
MEET_TIMEOUT_S = 20.0
OP_TIMEOUT_S = 15.0
WATCHDOG_S = 200.0
"""The driver dumps its stacks and exits after this (the test's own deadline is longer)."""


# -- helpers ---------------------------------------------------------------------------------
_desynchronized: set[str] = set()


async def ask(peer: PeerProcess, command: dict[str, Any], timeout_s: float = OP_TIMEOUT_S
              ) -> dict[str, Any]:
    """One command to a Lattica peer, off the event loop (our nodes keep serving meanwhile).

    A peer that missed a deadline may still answer later, and that late line
    would be read as the reply to the next command: such a peer gets no more
    commands (each later one is recorded as an error).
    """
    if peer.name in _desynchronized:
        raise RuntimeError(f"{peer.name} missed an earlier deadline; not asked again")
    try:
        return await anyio.to_thread.run_sync(peer.request, command, timeout_s)
    except TimeoutError:
        _desynchronized.add(peer.name)
        raise


def error_of(exc: BaseException) -> dict[str, str]:
    return {"error": f"{type(exc).__name__}: {exc}"}


def decode_value_with_time(blob: bytes) -> tuple[bytes, float]:
    """Lattica's ``ValueWithTime`` (bincode 2 standard): varint length, bytes, f64 LE."""
    length, offset = decode_varint(blob, 0, max_value=len(blob))
    end = offset + length
    if end + 8 != len(blob):
        raise BincodeError(f"ValueWithTime of {len(blob)} bytes: value {length}, then not 8 bytes")
    (expiration,) = struct.unpack_from("<d", blob, end)
    return blob[offset:end], expiration


def same_listen_addr(found: list[str], listen: list[str]) -> bool:
    """Whether a found address names one of the peer's listen sockets (ip, transport, port)."""
    def socket_of(text: str) -> str:
        return str(Multiaddr(text).without_peer_id())

    wanted = {socket_of(a) for a in listen}
    return any(socket_of(a) in wanted for a in found)


def provider_ids(found: Any) -> list[str]:
    return sorted(str(getattr(item, "peer_id", item)) for item in found)


# -- the mesh --------------------------------------------------------------------------------
async def start_lattica(stack: ExitStack, name: str, transport: str,
                        bootstrap: str | None) -> PeerProcess:
    argv = [sys.executable, str(LATTICA_PEER), "--listen", LISTEN[transport],
            "--protocol", PROTOCOL]
    if bootstrap is not None:
        argv += ["--bootstrap", bootstrap]
    peer = stack.enter_context(PeerProcess(argv, name=name))
    await anyio.to_thread.run_sync(peer.start, START_TIMEOUT_S)
    return peer


async def start_ours(stack: AsyncExitStack, transport: str, bootstrap: str) -> Node:
    config = NodeConfig(
        ephemeral=True,
        protocol_version=PROTOCOL,
        listen=(LISTEN[transport],),
        # no lookup at start: the routed find_peer below must be the first one
        dht=DhtConfig(protocol_id=PROTOCOL, auto_bootstrap=False),
        bootstrap=(bootstrap,),
    )
    return await stack.enter_async_context(Node(config))


def our_addr(node: Node) -> str:
    addr = str(node.listen_addrs[0])
    return addr if "/p2p/" in addr else f"{addr}/p2p/{node.peer_id}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=tuple(LISTEN), default="tcp")
    args = parser.parse_args()
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    transport = args.transport
    result: dict[str, Any] = {"transport": transport, "protocol": PROTOCOL}

    with ExitStack() as peers_stack:
        async with AsyncExitStack() as nodes_stack:
            lattica: list[PeerProcess] = []
            ours: list[Node] = []
            for index in range(MESH_SIZE):
                peer = await start_lattica(peers_stack, f"L{index}", transport,
                                           our_addr(ours[-1]) if ours else None)
                lattica.append(peer)
                ours.append(await start_ours(nodes_stack, transport, peer.ready.addr(transport)))

            names: dict[str, str] = {}
            listen: dict[str, list[str]] = {}
            for index, peer in enumerate(lattica):
                names[peer.ready.peer_id] = f"L{index}"
                listen[peer.ready.peer_id] = list(peer.ready.listen_addrs)
            for index, node in enumerate(ours):
                names[str(node.peer_id)] = f"N{index}"
                listen[str(node.peer_id)] = [str(a) for a in node.listen_addrs]
            result["nodes"] = {name: peer_id for peer_id, name in names.items()}

            # 0. A routed lookup first: N2 knows only its bootstrap peer L2 and has never
            # looked anything up, so finding N0 takes the DHT (through Lattica peers).
            first, last = ours[0], ours[-1]
            routed: dict[str, Any] = {}
            try:
                with anyio.fail_after(OP_TIMEOUT_S):
                    await last.connect(lattica[-1].ready.addr(transport))
                    routed["connected_before"] = last.is_connected(first.peer_id)
                    routed["known_before"] = [str(a) for a in last.known_addresses(first.peer_id)]
                    entry = await last.dht.find_peer(first.peer_id)
                routed["addrs"] = [] if entry is None else [str(a) for a in entry.addrs]
                routed["expected"] = [str(a.without_peer_id()) for a in first.listen_addrs]
            except Exception as exc:
                routed.update(error_of(exc))
            result["ours_find_routed"] = routed

            started = time.monotonic()
            result["ours_bootstrap"] = {}
            for index, node in enumerate(ours):
                try:
                    with anyio.fail_after(OP_TIMEOUT_S):
                        answer = await node.dht.bootstrap()
                    result["ours_bootstrap"][f"N{index}"] = {"ok": True, "answer": repr(answer)}
                except Exception as exc:
                    result["ours_bootstrap"][f"N{index}"] = error_of(exc)

            # 1. Lattica peers meet every other node (one shared deadline, peers in parallel).
            lattica_sees: dict[str, dict[str, Any]] = {}
            meet_deadline = time.monotonic() + MEET_TIMEOUT_S

            async def meet_all(peer: PeerProcess) -> None:
                seen: dict[str, Any] = {}
                for other, name in names.items():
                    if other == peer.ready.peer_id:
                        continue
                    wait_s = max(0.1, meet_deadline - time.monotonic())
                    try:
                        seen[name] = await ask(peer, {
                            "cmd": "wait_peer", "peer": other, "timeout": wait_s,
                            "identified": True}, wait_s + 5)
                    except Exception as exc:
                        seen[name] = error_of(exc)
                lattica_sees[names[peer.ready.peer_id]] = seen

            async with anyio.create_task_group() as tg:
                for peer in lattica:
                    tg.start_soon(meet_all, peer)
            result["lattica_sees"] = lattica_sees

            # 2. Our nodes find every other node through the DHT (all lookups at once).
            ours_find: dict[str, dict[str, Any]] = {names[str(n.peer_id)]: {} for n in ours}

            async def find(node: Node, other: str) -> None:
                target = PeerId.from_string(other)
                connected = target in {info.peer_id for info in node.peers()}
                seen: dict[str, Any] = {"connected_before": connected}
                try:
                    with anyio.fail_after(OP_TIMEOUT_S):
                        entry = await node.dht.find_peer(target)
                except Exception as exc:
                    seen.update(error_of(exc))
                else:
                    addrs = [str(a) for a in getattr(entry, "addrs", ())] if entry else []
                    seen.update(found=entry is not None, addrs=addrs,
                                listen_addr_found=same_listen_addr(addrs, listen[other]))
                ours_find[names[str(node.peer_id)]][names[other]] = seen

            async with anyio.create_task_group() as tg:
                for node in ours:
                    for other in names:
                        if other != str(node.peer_id):
                            tg.start_soon(find, node, other)
            result["ours_find"] = ours_find
            result["discovery_s"] = time.monotonic() - started

            # 3. A record stored by Lattica, read by us byte for byte.
            record: dict[str, Any] = {"key": RECORD_KEY, "value_hex": RECORD_VALUE.hex()}
            value_b64 = base64.b64encode(RECORD_VALUE).decode("ascii")
            try:
                await ask(lattica[0], {"cmd": "dht_put_raw", "key": RECORD_KEY,
                                       "value_b64": value_b64, "ttl_s": RECORD_TTL_S})
                record["lattica_put"] = {"ok": True}
            except Exception as exc:
                record["lattica_put"] = error_of(exc)
            try:
                theirs = await ask(lattica[-1], {"cmd": "dht_get_raw", "key": RECORD_KEY})
                value = base64.b64decode(theirs.get("value_b64", ""))
                expiration = theirs.get("expiration")
                record["lattica_get"] = {
                    "found": theirs.get("found", False),
                    "value_hex": value.hex(),
                    "expiration": expiration,
                    # the record value on the wire, rebuilt from what the SDK decoded
                    "expected_raw_hex": (encode_varint(len(value)) + value
                                         + struct.pack("<d", expiration)).hex()
                    if isinstance(expiration, float) else None,
                }
            except Exception as exc:
                record["lattica_get"] = error_of(exc)
            record["ours_get"] = {}
            for index, node in enumerate(ours):
                try:
                    with anyio.fail_after(OP_TIMEOUT_S):
                        blob = await node.dht.get_raw(RECORD_KEY.encode())
                except Exception as exc:
                    record["ours_get"][f"N{index}"] = error_of(exc)
                    continue
                seen_record: dict[str, Any] = {"found": blob is not None}
                if blob is not None:
                    seen_record["raw_hex"] = bytes(blob).hex()
                    try:
                        value, expiration = decode_value_with_time(bytes(blob))
                        seen_record.update(value_hex=value.hex(), expiration=expiration)
                    except (BincodeError, struct.error) as exc:
                        seen_record["decode_error"] = str(exc)
                record["ours_get"][f"N{index}"] = seen_record
            result["record"] = record

            # 4. Provider records, both ways.
            providers: dict[str, Any] = {"our_key": OUR_PROVIDER_KEY,
                                         "lattica_key": LATTICA_PROVIDER_KEY,
                                         "our_provider": str(ours[0].peer_id),
                                         "lattica_provider": lattica[1].ready.peer_id}
            try:
                with anyio.fail_after(OP_TIMEOUT_S):
                    told = await ours[0].dht.provide(OUR_PROVIDER_KEY.encode())
                providers["ours_provide"] = {"ok": True, "answer": repr(told)}
            except Exception as exc:
                providers["ours_provide"] = error_of(exc)
            try:
                await ask(lattica[1], {"cmd": "provide", "key": LATTICA_PROVIDER_KEY})
                providers["lattica_provide"] = {"ok": True}
            except Exception as exc:
                providers["lattica_provide"] = error_of(exc)
            providers["lattica_find"] = {}
            for index, peer in enumerate(lattica):
                try:
                    answer = await ask(peer, {"cmd": "providers", "key": OUR_PROVIDER_KEY})
                    providers["lattica_find"][f"L{index}"] = {
                        "providers": sorted(answer["providers"])}
                except Exception as exc:
                    providers["lattica_find"][f"L{index}"] = error_of(exc)
            providers["ours_find"] = {}
            for index, node in enumerate(ours):
                try:
                    with anyio.fail_after(OP_TIMEOUT_S):
                        found_providers = await node.dht.find_providers(
                            LATTICA_PROVIDER_KEY.encode())
                    providers["ours_find"][f"N{index}"] = {
                        "providers": provider_ids(found_providers)}
                except Exception as exc:
                    providers["ours_find"][f"N{index}"] = error_of(exc)
            result["providers"] = providers

            result["lattica_stderr_tails"] = {
                f"L{index}": peer.stderr_tail()[-400:] for index, peer in enumerate(lattica)
                if "panic" in peer.stderr_tail().lower()
            }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    anyio.run(main)
