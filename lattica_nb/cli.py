"""The ``lattica-nb`` command.

    lattica-nb id                      print this machine's peer id
    lattica-nb node --listen ADDR      run a long-lived peer (a DHT bootstrap node)
    lattica-nb ping ADDR               connect to a peer and ping it
    lattica-nb dht get|put|provide|providers|find-peer ... --bootstrap ADDR
                                       one DHT operation through a bootstrap peer
    lattica-nb demo                    three peers on 127.0.0.1 finding each other, sharing a room
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import anyio

from . import __version__
from .config import DEFAULT_LISTEN, DEFAULT_PROTOCOL_VERSION, NodeConfig
from .dht.config import DEFAULT_PROTOCOL_ID, DhtConfig
from .errors import LatticaError
from .events import PeerConnected, PeerDisconnected, PeerIdentified
from .identity import PeerId, default_key_path, load_or_create_identity
from .node import Node


def _say(line: str) -> None:
    print(line, flush=True)


def _node_config(args: argparse.Namespace) -> NodeConfig:
    return NodeConfig(
        listen=tuple(args.listen or DEFAULT_LISTEN),
        bootstrap=tuple(args.bootstrap or ()),
        key_path=args.key,
        ephemeral=args.ephemeral,
        protocol_version=args.protocol_version,
        idle_timeout_s=args.idle_timeout,
        dht=DhtConfig(protocol_id=args.dht_protocol, db_path=args.dht_db),
    )


async def _run_node(args: argparse.Namespace) -> None:
    async with Node(_node_config(args)) as node, node.subscribe() as events:
        _say(f"peer id: {node.peer_id}")
        for addr in node.listen_addrs:
            _say(f"listening: {addr}")
        _say(f"dht: {node.dht.mode} mode, protocol {node.dht.config.protocol_id}, "
             f"{len(node.dht.routing)} peers in the routing table")
        async for event in events:
            if isinstance(event, PeerConnected):
                direction = "inbound" if event.inbound else "outbound"
                _say(f"connected: {event.peer} via {event.addr} ({direction})")
            elif isinstance(event, PeerIdentified):
                info = event.info
                _say(
                    f"identified: {event.peer} agent={info.agent_version} "
                    f"protocol={info.protocol_version} protocols={','.join(info.protocols)}"
                )
            elif isinstance(event, PeerDisconnected):
                _say(f"disconnected: {event.peer} ({event.reason})")


async def _run_ping(args: argparse.Namespace) -> None:
    config = NodeConfig(ephemeral=True, protocol_version=args.protocol_version)
    async with Node(config) as node:
        info = await node.connect(args.addr)
        _say(f"connected to {info.peer_id} ({info.agent_version or 'agent unknown'})")
        for rtt in await node.ping(info.peer_id, count=args.count):
            _say(f"rtt: {rtt * 1000:.3f} ms")


async def _run_demo(args: argparse.Namespace) -> None:
    """Start N peers on 127.0.0.1; each joins through peer 0, then meets the others by DHT."""
    count = args.peers
    nodes: list[Node] = []
    try:
        for _ in range(count):
            node = Node(NodeConfig(ephemeral=True, idle_timeout_s=0))
            await node.__aenter__()
            nodes.append(node)
        hub = nodes[0]
        _say(f"started {count} peers on 127.0.0.1:")
        for i, node in enumerate(nodes):
            _say(f"  peer {i}: {'  '.join(str(a) for a in node.listen_addrs)}")
        for i, node in enumerate(nodes[1:], start=1):
            info = await node.connect(hub.listen_addrs[0])
            peers = await node.dht.bootstrap()
            _say(f"peer {i} joined via peer 0 ({info.agent_version}); its DHT routing table "
                 f"holds {peers} peers")
        for i, node in enumerate(nodes[1:], start=1):
            for j, other in enumerate(nodes[1:], start=1):
                if j <= i:
                    continue
                entry = await node.dht.find_peer(other.peer_id)
                await node.connect(other.peer_id)
                where = entry.addrs[0] if entry is not None and entry.addrs else "?"
                _say(f"peer {i} looked up peer {j} by id: {where}")
        writer, reader = nodes[1], nodes[-1]
        put = await writer.dht.put("demo/greeting", b"hello from peer 1")
        _say(f"peer 1 put 'demo/greeting' (signed); confirmed by {len(put.stored_on)} peer(s), "
             "other copies sent in the background")
        value = await reader.dht.get("demo/greeting")
        _say(f"peer {count - 1} got it back: {value!r}")
        await writer.dht.provide("demo/model")
        providers = await reader.dht.find_providers("demo/model")
        names = ", ".join(p.peer_id.short() for p in providers)
        _say(f"peer {count - 1} asked who provides 'demo/model': {names} "
             f"(peer 1 is {writer.peer_id.short()})")
        await _demo_room(nodes)
        _say("mesh:")
        for i, node in enumerate(nodes):
            for peer in node.peers():
                rtts = await node.ping(peer.peer_id, count=5)
                best = min(rtts) * 1000
                _say(f"  peer {i} -> {peer.peer_id.short()}: ping {best:.2f} ms "
                     f"(observed us at {peer.observed_addr})")
    finally:
        for node in reversed(nodes):
            await node.__aexit__(None, None, None)
    _say("all peers stopped cleanly")


async def _demo_room(nodes: list[Node]) -> None:
    """Peer 0 creates a shared room; every peer joins it and logs a row; all converge."""
    from pycrdt import Array, Map

    from .sync.events import DocumentChanged
    from .sync.rules import author_key

    owner = await nodes[0].sync.open("demo-sweep", create=True)
    owner.doc.get("params", type=Map)["lr"] = 0.001
    rooms = [owner] + [await node.sync.open("demo-sweep", create=False) for node in nodes[1:]]
    _say(f"peer 0 created room 'demo-sweep' and set params; {len(rooms) - 1} peer(s) joined it")
    changed = anyio.Event()

    def on_event(event: object) -> None:
        if isinstance(event, DocumentChanged):
            changed.set()

    for room in rooms:
        room.observe(on_event)
    for i, room in enumerate(rooms):
        metrics = room.doc.get("metrics", type=Map)
        metrics[author_key(room.room.peer_id, "demo")] = Array([{"step": 1, "loss": 1.0 / (i + 2)}])
    with anyio.fail_after(10):
        while any(len(r.doc.get("metrics", type=Map)) < len(rooms) for r in rooms):
            await changed.wait()
            changed = anyio.Event()
    last = rooms[-1]
    _say(f"peer {len(rooms) - 1} sees params {last.doc.get('params', type=Map).to_py()} and "
         f"{len(last.doc.get('metrics', type=Map))} runs, every row signed by its author "
         f"({last.status().envelopes} envelopes)")


async def _run_dht(args: argparse.Namespace) -> None:
    config = NodeConfig(ephemeral=True, protocol_version=args.protocol_version,
                        idle_timeout_s=0, dht=DhtConfig(protocol_id=args.dht_protocol))
    async with Node(config) as node:
        for addr in args.bootstrap:
            await node.connect(addr)
        peers = await node.dht.bootstrap()
        _say(f"dht: {peers} peers in the routing table")
        op, dht = args.op, node.dht
        if op == "put":
            result = await dht.put(args.key, args.value.encode())
            _say(f"stored {args.key!r} on {len(result.stored_on)} peers")
        elif op == "get":
            value = await dht.get(args.key)
            _say("not found" if value is None else value.decode(errors="replace"))
        elif op == "provide":
            _say(f"announced {args.key!r} to {await dht.provide(args.key)} peers")
        elif op == "providers":
            for provider in await dht.find_providers(args.key):
                _say(f"{provider.peer_id} {' '.join(str(a) for a in provider.addrs)}")
        elif op == "find-peer":
            entry = await dht.find_peer(args.key)
            _say("not found" if entry is None else " ".join(str(a) for a in entry.addrs))


def _print_id(args: argparse.Namespace) -> None:
    key = load_or_create_identity(args.key)
    _say(str(PeerId.from_public_key(key.public_key)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lattica-nb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lattica-nb {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: info, -vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p_id = sub.add_parser("id", help="print this machine's peer id")
    p_id.add_argument("--key", type=Path, default=None,
                      help=f"identity key file (default {default_key_path()})")

    p_node = sub.add_parser("node", help="run a long-lived peer")
    p_node.add_argument("--listen", action="append", metavar="MULTIADDR",
                        help="listen address (repeatable; default: QUIC and TCP on 127.0.0.1, "
                             "random ports)")
    p_node.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                        help="peer to connect to at start, with /p2p/<id> (repeatable)")
    p_node.add_argument("--key", type=Path, default=None, help="identity key file")
    p_node.add_argument("--ephemeral", action="store_true", help="use a fresh, unsaved key")
    p_node.add_argument("--protocol-version", default=DEFAULT_PROTOCOL_VERSION,
                        help="identify protocol version (/lattica/1.0.0 to join Lattica peers)")
    p_node.add_argument("--idle-timeout", type=float, default=0.0,
                        help="close connections idle this many seconds (0: keep them)")
    p_node.add_argument("--dht-protocol", default=DEFAULT_PROTOCOL_ID,
                        help="Kademlia protocol id (/lattica/1.0.0 to join a Lattica mesh)")
    p_node.add_argument("--dht-db", type=Path, default=None,
                        help="SQLite file keeping DHT records and peers across restarts")

    p_dht = sub.add_parser("dht", help="one DHT operation through bootstrap peers")
    p_dht.add_argument("op", choices=["put", "get", "provide", "providers", "find-peer"])
    p_dht.add_argument("key", help="record or provider key, or a peer id for find-peer")
    p_dht.add_argument("value", nargs="?", default="", help="value to put (text)")
    p_dht.add_argument("--bootstrap", action="append", required=True, metavar="MULTIADDR")
    p_dht.add_argument("--protocol-version", default=DEFAULT_PROTOCOL_VERSION)
    p_dht.add_argument("--dht-protocol", default=DEFAULT_PROTOCOL_ID)

    p_ping = sub.add_parser("ping", help="connect to a peer and ping it")
    p_ping.add_argument("addr", help="the peer's multiaddr, ending in /p2p/<id>")
    p_ping.add_argument("--count", type=int, default=3)
    p_ping.add_argument("--protocol-version", default=DEFAULT_PROTOCOL_VERSION)

    p_demo = sub.add_parser("demo", help="start local peers on 127.0.0.1 and show them meet")
    p_demo.add_argument("--peers", type=int, default=3, choices=range(2, 9), metavar="N")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "id":
            _print_id(args)
        elif args.command == "node":
            anyio.run(_run_node, args)
        elif args.command == "ping":
            anyio.run(_run_ping, args)
        elif args.command == "demo":
            anyio.run(_run_demo, args)
        elif args.command == "dht":
            anyio.run(_run_dht, args)
    except LatticaError as exc:
        print(f"lattica-nb: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
