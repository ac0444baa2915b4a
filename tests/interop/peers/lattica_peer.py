#!/usr/bin/env python
"""A Lattica SDK (rust-libp2p) peer driven over JSON lines, for interop tests.

Run it ONLY inside a loopback-only network namespace: every ``build()`` of a
Lattica node sends STUN requests to public servers. The script refuses to
start when it sees any interface other than ``lo``.

    python lattica_peer.py [--listen MADDR]... [--bootstrap MADDR/p2p/ID]...
                           [--protocol /lattica/1.0.0] [--key-dir DIR]

mDNS and UPnP are off; keys, blocks and the DHT database live in a temporary
directory (or ``--key-dir``). When the node listens, one JSON line goes to
stdout::

    {"peer_id": "12D3KooW...",
     "listen_addrs": ["/ip4/127.0.0.1/udp/41234/quic-v1/p2p/12D3KooW...", ...]}

Then each JSON line on stdin is one command and gets one JSON reply line:
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

    {"cmd": "peers"}                                   -> {"peers": [id, ...]}
    {"cmd": "peer_info", "peer": id}                   -> {"info": {...} | null}
    {"cmd": "wait_peer", "peer": id, "timeout": s,
     "identified": false}                              -> {"found": bool, "elapsed_s": s}
    {"cmd": "rtt", "peer": id}                         -> {"rtt_ms": ms}
    {"cmd": "addresses", "peer": id}                   -> {"addresses": [...]}
    {"cmd": "put_block", "data_b64": ...}              -> {"cid": "bafkrei..."}
    {"cmd": "get_block", "cid": c, "timeout": s}       -> {"data_b64": ...}
    {"cmd": "dht_put_raw", "key": k, "value_b64": v,
     "ttl_s": 600}                                     -> {}
    {"cmd": "dht_get_raw", "key": k}                   -> {"found": bool, "value_b64", "expiration"}
    {"cmd": "provide", "key": k}                       -> {}
    {"cmd": "providers", "key": k}                     -> {"providers": [...]}
    {"cmd": "dht_timed", "op": "put"|"get"|"provide"|"providers",
     "keys": [k, ...], "value_b64": v, "ttl_s": 600,
     "provider": id}                                   -> {"latencies_ms": [...], "errors": n,
                                                           "mismatches": n, "first_error": str|null}
    {"cmd": "quit"}                                    -> {} and the process exits

``dht_timed`` runs one SDK call per key, one after the other, and times each
call inside this process (no JSON round trip in the figure): ``put`` stores
``value_b64`` raw (as ``dht_put_raw``), ``get`` reads raw and counts a
mismatch when the value differs from ``value_b64``, ``provide`` is
``start_providing``, ``providers`` is ``get_providers`` and counts a mismatch
when ``provider`` is not in the answer. A call that raises counts as an error
and is left out of the latencies. At most ``MAX_TIMED_KEYS`` keys per command.

``dht_*_raw`` bypass the SDK's pickle layer on purpose: ``Lattica.get`` would
unpickle whatever a remote peer stored, and records written by our own nodes
must never be unpickled.

How the listen ports are found: the SDK has no getter for its own addresses.
The ``Listening on`` log lines exist, but only when ``RUST_LOG`` enables
``lattica=info``, they are written to this process's own stderr by a background
task at an unspecified time after ``build()``, and their wording is not an API.
Instead the script asks the kernel: ``/proc/self/net/{tcp,udp}[6]`` list the
sockets of this network namespace (other peers in the same namespace show up
too), and ``/proc/self/fd`` links name the socket inodes this process owns. A
listen address is resolved by the socket with the same protocol and IP, owned
by this process, in LISTEN state (TCP) or unconnected (UDP), and the requested
port when it was not 0. The sockets exist as soon as ``build()`` returns; the
script still polls with a deadline in case a future SDK binds them later.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

DEFAULT_LISTEN = ("/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0")
LISTEN_RESOLVE_TIMEOUT_S = 10.0
MAX_TIMED_KEYS = 10_000
POLL_INTERVAL_S = 0.01
TCP_LISTEN_STATE = 0x0A
UDP_UNCONNECTED_STATE = 0x07


class CommandError(Exception):
    """A command could not be carried out; the message goes back to the caller."""


# -- safety ---------------------------------------------------------------------------
def interfaces() -> list[str]:
    """Interfaces of this process's network namespace (``/proc/net/dev`` follows it)."""
    with open("/proc/net/dev", encoding="ascii") as table:
        return [line.split(":")[0].strip() for line in table.readlines()[2:]]


def refuse_unless_loopback_only() -> None:
    others = [name for name in interfaces() if name != "lo"]
    if others:
        sys.exit(
            "lattica_peer.py: refusing to build a Lattica node: this network namespace has "
            f"interfaces besides lo ({', '.join(others)}) and the SDK sends STUN requests to "
            "public servers; run it through lattica_nb.testing.netns.netns_command"
        )


# -- listen addresses ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One requested listen multiaddr, split into what the kernel can tell us."""

    text: str
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    transport: str  # "tcp" or "udp"
    port: int
    suffix: str  # what follows the port, e.g. "/quic-v1"


@dataclass(frozen=True, slots=True)
class KernelSocket:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    state: int
    inode: int


def parse_listen(text: str) -> ListenSpec:
    parts = text.split("/")
    # ["", "ip4", "127.0.0.1", "udp", "0", "quic-v1"]
    if len(parts) < 5 or parts[0] != "" or parts[1] not in ("ip4", "ip6"):
        raise ValueError(f"listen address {text!r} is not /ip4|ip6/<ip>/tcp|udp/<port>[/...]")
    if parts[3] not in ("tcp", "udp"):
        raise ValueError(f"listen address {text!r}: expected tcp or udp after the IP")
    ip = ipaddress.ip_address(parts[2])
    suffix = "/" + "/".join(parts[5:]) if len(parts) > 5 else ""
    if parts[3] == "udp" and suffix != "/quic-v1":
        raise ValueError(f"listen address {text!r}: UDP is only supported as /quic-v1")
    return ListenSpec(text, ip, parts[3], int(parts[4]), suffix)


def _kernel_ip(hex_text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_text)
    # The kernel prints each 32-bit word of the address in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def kernel_sockets(table: str) -> list[KernelSocket]:
    try:
        with open(f"/proc/self/net/{table}", encoding="ascii") as handle:
            lines = handle.readlines()[1:]
    except FileNotFoundError:  # no IPv6 in this kernel
        return []
    found = []
    for line in lines:
        fields = line.split()
        ip_hex, port_hex = fields[1].split(":")
        found.append(
            KernelSocket(_kernel_ip(ip_hex), int(port_hex, 16), int(fields[3], 16), int(fields[9]))
        )
    return found


def own_socket_inodes() -> set[int]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since listdir
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def match_listen_sockets(specs: list[ListenSpec]) -> list[int] | None:
    """The bound port of each spec, or ``None`` while some are not bound yet."""
    owned = own_socket_inodes()
    taken: set[int] = set()
    ports = []
    for spec in specs:
        table = spec.transport + ("6" if spec.ip.version == 6 else "")
        wanted_state = TCP_LISTEN_STATE if spec.transport == "tcp" else UDP_UNCONNECTED_STATE
        candidates = sorted(
            (
                sock
                for sock in kernel_sockets(table)
                if sock.inode in owned
                and sock.inode not in taken
                and sock.state == wanted_state
                and sock.ip == spec.ip
                and (spec.port == 0 or sock.port == spec.port)
            ),
            key=lambda sock: sock.inode,
        )
        if not candidates:
            return None
        taken.add(candidates[0].inode)
        ports.append(candidates[0].port)
    return ports


def resolve_listen_addrs(specs: list[ListenSpec], peer_id: str) -> list[str]:
    deadline = time.monotonic() + LISTEN_RESOLVE_TIMEOUT_S
    while True:
        ports = match_listen_sockets(specs)
        if ports is not None:
            break
        if time.monotonic() > deadline:
            raise SystemExit(
                f"lattica_peer.py: no socket of this process matches {[s.text for s in specs]} "
                f"after {LISTEN_RESOLVE_TIMEOUT_S} s"
            )
        time.sleep(POLL_INTERVAL_S)
    return [
        f"/ip{spec.ip.version}/{spec.ip}/{spec.transport}/{port}{spec.suffix}/p2p/{peer_id}"
        for spec, port in zip(specs, ports, strict=True)
    ]


# -- commands ------------------------------------------------------------------------
def _peer_arg(command: dict[str, Any]) -> str:
    peer = command.get("peer")
    if not isinstance(peer, str) or not peer:
        raise CommandError("missing 'peer' (a peer id string)")
    return peer


def _str_arg(command: dict[str, Any], name: str) -> str:
    value = command.get(name)
    if not isinstance(value, str):
        raise CommandError(f"missing {name!r} (a string)")
    return value


def peer_info_json(info: Any) -> dict[str, Any] | None:
    if info is None:
        return None
    return {
        "agent_version": info.agent_version,
        "protocol_version": info.protocol_version,
        "protocols": sorted(info.protocols or []),
        "listen_addresses": list(info.listen_addresses or []),
        "addresses": list(info.addresses or []),
        "rtt_ms": info.rtt_ms,
        "last_seen": info.last_seen,
        "failures": info.failures,
    }


class Controller:
    def __init__(self, node: Any) -> None:
        self.node = node
        self.core = node._lattica_instance  # raw (unpickled) DHT access
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "peers": self.peers,
            "peer_info": self.peer_info,
            "wait_peer": self.wait_peer,
            "rtt": self.rtt,
            "addresses": self.addresses,
            "put_block": self.put_block,
            "get_block": self.get_block,
            "dht_put_raw": self.dht_put_raw,
            "dht_get_raw": self.dht_get_raw,
            "provide": self.provide,
            "providers": self.providers,
            "dht_timed": self.dht_timed,
        }

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        name = command.get("cmd")
        handler = self.handlers.get(name) if isinstance(name, str) else None
        if handler is None:
            raise CommandError(f"unknown command {name!r}; known: quit, {', '.join(self.handlers)}")
        return handler(command)

    def peers(self, command: dict[str, Any]) -> dict[str, Any]:
        return {"peers": list(self.node.get_all_peers())}

    def peer_info(self, command: dict[str, Any]) -> dict[str, Any]:
        return {"info": peer_info_json(self.node.get_peer_info(_peer_arg(command)))}

    def wait_peer(self, command: dict[str, Any]) -> dict[str, Any]:
        peer = _peer_arg(command)
        timeout_s = float(command.get("timeout", 10.0))
        identified = bool(command.get("identified", False))
        start = time.monotonic()
        while True:
            present = peer in self.node.get_all_peers()
            if present and identified:
                info = self.node.get_peer_info(peer)
                present = info is not None and bool(info.agent_version)
            elapsed = time.monotonic() - start
            if present or elapsed > timeout_s:
                return {"found": present, "elapsed_s": elapsed}
            time.sleep(POLL_INTERVAL_S)

    def rtt(self, command: dict[str, Any]) -> dict[str, Any]:
        # get_peer_rtt returns seconds (the latest /ipfs/ping/1.0.0 sample; pinged every 15 s).
        return {"rtt_ms": float(self.node.get_peer_rtt(_peer_arg(command))) * 1000.0}

    def addresses(self, command: dict[str, Any]) -> dict[str, Any]:
        return {"addresses": list(self.node.get_peer_addresses(_peer_arg(command)))}

    def put_block(self, command: dict[str, Any]) -> dict[str, Any]:
        data = base64.b64decode(_str_arg(command, "data_b64"))
        return {"cid": self.node.put_block(data)}

    def get_block(self, command: dict[str, Any]) -> dict[str, Any]:
        timeout_s = int(command.get("timeout", 10))
        source, data = self.node.get_block(_str_arg(command, "cid"), timeout_secs=timeout_s)
        return {"data_b64": base64.b64encode(bytes(data)).decode("ascii"), "source": source}

    def dht_put_raw(self, command: dict[str, Any]) -> dict[str, Any]:
        value = base64.b64decode(_str_arg(command, "value_b64"))
        expiration = time.time() + float(command.get("ttl_s", 600.0))
        subkey = command.get("subkey")
        self.core.store_with_subkey(_str_arg(command, "key"), value, expiration, subkey)
        return {}

    def dht_get_raw(self, command: dict[str, Any]) -> dict[str, Any]:
        found = self.core.get_with_subkey(_str_arg(command, "key"))
        if found is None:
            return {"found": False}
        if isinstance(found, dict):
            return {
                "found": True,
                "subkeys": {
                    str(subkey): {
                        "value_b64": base64.b64encode(bytes(value)).decode("ascii"),
                        "expiration": expiration,
                    }
                    for subkey, (value, expiration) in found.items()
                },
            }
        value, expiration = found
        return {
            "found": True,
            "value_b64": base64.b64encode(bytes(value)).decode("ascii"),
            "expiration": expiration,
        }

    def provide(self, command: dict[str, Any]) -> dict[str, Any]:
        self.node.start_providing(_str_arg(command, "key"))
        return {}

    def providers(self, command: dict[str, Any]) -> dict[str, Any]:
        return {"providers": list(self.node.get_providers(_str_arg(command, "key")))}

    def dht_timed(self, command: dict[str, Any]) -> dict[str, Any]:
        op = _str_arg(command, "op")
        keys = command.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CommandError("missing 'keys' (a list of strings)")
        if len(keys) > MAX_TIMED_KEYS:
            raise CommandError(f"at most {MAX_TIMED_KEYS} keys per dht_timed command")
        value = base64.b64decode(command.get("value_b64") or "")
        ttl_s = float(command.get("ttl_s", 600.0))
        provider = command.get("provider")
        core = self.core

        def put(key: str) -> bool:
            core.store_with_subkey(key, value, time.time() + ttl_s, None)
            return True

        def get(key: str) -> bool:
            found = core.get_with_subkey(key)
            return isinstance(found, tuple) and bytes(found[0]) == value

        def provide(key: str) -> bool:
            self.node.start_providing(key)
            return True

        def providers(key: str) -> bool:
            return provider in list(self.node.get_providers(key))

        ops: dict[str, Callable[[str], bool]] = {
            "put": put, "get": get, "provide": provide, "providers": providers,
        }
        call = ops.get(op)
        if call is None:
            raise CommandError(f"unknown op {op!r}; known: {', '.join(ops)}")
        latencies: list[float] = []
        errors = mismatches = 0
        first_error: str | None = None
        for key in keys:
            start = time.perf_counter()
            try:
                matched = call(key)
            except Exception as exc:  # every failure is counted, the batch goes on
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            latencies.append((time.perf_counter() - start) * 1000.0)
            mismatches += not matched
        return {"latencies_ms": latencies, "errors": errors, "mismatches": mismatches,
                "first_error": first_error}


def serve(controller: Controller, commands: IO[str], replies: IO[str]) -> None:
    for line in commands:
        if not line.strip():
            continue
        try:
            command = json.loads(line)
            if not isinstance(command, dict):
                raise CommandError("a command is a JSON object")
            if command.get("cmd") == "quit":
                replies.write(json.dumps({"ok": True}) + "\n")
                replies.flush()
                return
            reply = {"ok": True, **controller.handle(command)}
        except Exception as exc:  # every failure is reported, the peer keeps serving
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


# -- main -----------------------------------------------------------------------------
def build_node(args: argparse.Namespace, listen: list[str], state_dir: str) -> Any:
    from lattica import Lattica

    builder = (
        Lattica.builder()
        .with_listen_addrs(listen)
        .with_mdns(False)
        .with_upnp(False)
        .with_key_path(state_dir)
        .with_storage_path(os.path.join(state_dir, "blocks"))
        .with_dht_db_path(os.path.join(state_dir, "dht"))
    )
    if args.bootstrap:
        builder = builder.with_bootstraps(list(args.bootstrap))
    if args.protocol is not None:
        builder = builder.with_protocol(args.protocol)
    return builder.build()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", action="append", help="listen multiaddr (repeatable)")
    parser.add_argument("--bootstrap", action="append", help="multiaddr with /p2p/ to dial")
    parser.add_argument("--protocol", help="identify protocol_version and Kademlia protocol id")
    parser.add_argument("--key-dir", help="keep key, blocks and DHT here (default: a temp dir)")
    args = parser.parse_args()

    refuse_unless_loopback_only()
    # Replies go to the real stdout; anything else that prints (the SDK wrapper
    # prints some errors) is sent to stderr so it cannot corrupt the protocol.
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)

    listen = list(args.listen or DEFAULT_LISTEN)
    specs = [parse_listen(text) for text in listen]
    with tempfile.TemporaryDirectory(prefix="lattica-peer-") as temp_dir:
        state_dir = args.key_dir or temp_dir
        node = build_node(args, listen, state_dir)
        try:
            peer_id = node.peer_id()
            ready = {"peer_id": peer_id, "listen_addrs": resolve_listen_addrs(specs, peer_id)}
            replies.write(json.dumps(ready) + "\n")
            replies.flush()
            serve(Controller(node), sys.stdin, replies)
        finally:
            node.close()


if __name__ == "__main__":
    main()
