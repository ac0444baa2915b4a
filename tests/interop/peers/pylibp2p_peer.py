#!/usr/bin/env python
"""A py-libp2p 0.8.1 host driven over JSON lines, for interop tests.

Run it with the python of the py-libp2p virtualenv (its pins clash with ours;
see ``lattica_nb.testing.foreign_peers.find_pylibp2p_python``):

    .venv-pylibp2p/bin/python pylibp2p_peer.py [--listen MADDR]...
        [--security noise|tls|any] [--muxer yamux|mplex] [--echo PROTOCOL]
        [--protocol-version /lattica/1.0.0]

The host listens on 127.0.0.1 only (default: QUIC v1 and TCP), with mDNS,
UPnP and bootstrap discovery off, so all its traffic stays on loopback. Over
QUIC, security is TLS 1.3 with the libp2p certificate extension (ALPN
``libp2p``); over TCP it is Noise or TLS (``--security``) and Yamux or Mplex
(``--muxer``). Identify (``/ipfs/id/1.0.0``, ``/ipfs/id/push/1.0.0``) and ping
(``/ipfs/ping/1.0.0``) are served. Identify announces protocol_version
``ipfs/0.1.0`` unless ``--protocol-version`` says otherwise: a Lattica peer
closes the connection of any peer whose protocol_version differs from its own
(``/lattica/1.0.0``) and does not contain ``common``. When it listens, one JSON line goes to
stdout::

    {"peer_id": "12D3KooW...", "listen_addrs": [".../p2p/12D3KooW...", ...]}

Then each JSON line on stdin is one command and gets one JSON reply line,
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``:

    {"cmd": "peers"}                              -> {"peers": [connected peer ids]}
    {"cmd": "dial", "addr": ".../p2p/ID"}         -> {"peer": id}
    {"cmd": "wait_peer", "peer": id, "timeout": s} -> {"found": bool, "elapsed_s": s}
    {"cmd": "peer_info", "peer": id}              -> {"info": {...}}  (runs identify now)
    {"cmd": "ping", "peer": id, "count": n}       -> {"rtts_ms": [...]}
    {"cmd": "conns"}                              -> {"conns": [{peer, transport, security, muxer}]}
    {"cmd": "echo", "peer": id, "protocol": p,
     "data_b64": ...}                             -> {"data_b64": ...}
    {"cmd": "quit"}                               -> {} and the process exits

py-libp2p stores identify's protocols and addresses in its peerstore but not
``agent_version``/``protocol_version``, so ``peer_info`` asks the peer again
(one ``/ipfs/id/1.0.0`` stream) and reports the message it got. ``ping`` times
each round trip itself with ``perf_counter`` because py-libp2p's ping service
rounds RTTs down to whole milliseconds.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any

import multiaddr
import trio
from libp2p import generate_new_ed25519_identity, new_host
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.tls.transport import PROTOCOL_ID as TLS_PROTOCOL_ID
from libp2p.security.tls.transport import TLSTransport

DEFAULT_LISTEN = ("/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0")
IDENTIFY = TProtocol("/ipfs/id/1.0.0")
PING = TProtocol("/ipfs/ping/1.0.0")
PING_BYTES = 32
COMMAND_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.01
MAX_IDENTIFY_BYTES = 64 * 1024


class CommandError(Exception):
    """A command could not be carried out; the message goes back to the caller."""


# -- stream helpers ------------------------------------------------------------------
async def read_exactly(stream: Any, size: int) -> bytes:
    data = b""
    while len(data) < size:
        try:
            chunk = await stream.read(size - len(data))
        except StreamEOF:
            chunk = b""
        if not chunk:
            raise CommandError(f"stream ended after {len(data)} of {size} bytes")
        data += chunk
    return data


async def read_to_end(stream: Any, limit: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = await stream.read(65536)
        except StreamEOF:
            return data
        if not chunk:
            return data
        data += chunk
        if len(data) > limit:
            raise CommandError(f"peer sent more than {limit} bytes")


def split_uvarint_prefixed(data: bytes) -> bytes:
    """Body of one ``uvarint(len) || body`` message."""
    length = 0
    for index, byte in enumerate(data[:10]):
        length |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            body = data[index + 1 :]
            if len(body) < length:
                raise CommandError(f"identify message truncated ({len(body)} of {length} bytes)")
            return body[:length]
    raise CommandError("identify message has no valid length prefix")


def maddr_text(raw: bytes) -> str:
    try:
        return str(multiaddr.Multiaddr(raw))
    except Exception:
        return "0x" + raw.hex()


def describe_connection(conn: Any) -> dict[str, str]:
    muxed = getattr(conn, "muxed_conn", None)
    muxer = type(muxed).__name__
    if muxer == "QUICConnection":
        return {"transport": "quic-v1", "security": "tls (QUIC)", "muxer": "QUIC streams"}
    secured = getattr(muxed, "secured_conn", None)
    security = getattr(secured, "negotiated_security_protocol", type(secured).__name__)
    return {"transport": "tcp", "security": str(security), "muxer": muxer}


# -- commands ------------------------------------------------------------------------
def _str_arg(command: dict[str, Any], name: str) -> str:
    value = command.get(name)
    if not isinstance(value, str) or not value:
        raise CommandError(f"missing {name!r} (a string)")
    return value


class Controller:
    def __init__(self, host: Any) -> None:
        self.host = host
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "peers": self.peers,
            "dial": self.dial,
            "wait_peer": self.wait_peer,
            "peer_info": self.peer_info,
            "ping": self.ping,
            "conns": self.conns,
            "echo": self.echo,
        }

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        name = command.get("cmd")
        handler = self.handlers.get(name) if isinstance(name, str) else None
        if handler is None:
            raise CommandError(f"unknown command {name!r}; known: quit, {', '.join(self.handlers)}")
        timeout_s = float(command.get("timeout", COMMAND_TIMEOUT_S)) + 5.0
        with trio.fail_after(timeout_s):
            return await handler(command)

    def _peer(self, command: dict[str, Any]) -> ID:
        return ID.from_base58(_str_arg(command, "peer"))

    async def peers(self, command: dict[str, Any]) -> dict[str, Any]:
        return {"peers": [str(peer) for peer in self.host.get_connected_peers()]}

    async def dial(self, command: dict[str, Any]) -> dict[str, Any]:
        info = info_from_p2p_addr(multiaddr.Multiaddr(_str_arg(command, "addr")))
        await self.host.connect(info)
        return {"peer": str(info.peer_id)}

    async def wait_peer(self, command: dict[str, Any]) -> dict[str, Any]:
        peer = self._peer(command)
        timeout_s = float(command.get("timeout", 10.0))
        start = time.monotonic()
        while True:
            found = peer in self.host.get_connected_peers()
            elapsed = time.monotonic() - start
            if found or elapsed > timeout_s:
                return {"found": found, "elapsed_s": elapsed}
            await trio.sleep(POLL_INTERVAL_S)

    async def peer_info(self, command: dict[str, Any]) -> dict[str, Any]:
        peer = self._peer(command)
        stream = await self.host.new_stream(peer, [IDENTIFY])
        try:
            raw = await read_to_end(stream, MAX_IDENTIFY_BYTES)
        finally:
            await stream.close()
        message = Identify()
        message.ParseFromString(split_uvarint_prefixed(raw))
        peerstore = self.host.get_peerstore()
        return {
            "info": {
                "agent_version": message.agent_version,
                "protocol_version": message.protocol_version,
                "protocols": sorted(message.protocols),
                "listen_addresses": [maddr_text(addr) for addr in message.listen_addrs],
                "observed_addr": maddr_text(message.observed_addr),
                "peerstore_protocols": sorted(peerstore.get_protocols(peer)),
                "peerstore_addrs": [str(addr) for addr in peerstore.addrs(peer)],
            }
        }

    async def ping(self, command: dict[str, Any]) -> dict[str, Any]:
        peer = self._peer(command)
        count = int(command.get("count", 1))
        if not 1 <= count <= 10_000:
            raise CommandError("'count' must be between 1 and 10000")
        stream = await self.host.new_stream(peer, [PING])
        rtts_ms = []
        try:
            for _ in range(count):
                payload = secrets.token_bytes(PING_BYTES)
                start = time.perf_counter()
                await stream.write(payload)
                echoed = await read_exactly(stream, PING_BYTES)
                rtts_ms.append((time.perf_counter() - start) * 1000.0)
                if echoed != payload:
                    raise CommandError("ping: the peer echoed different bytes")
        finally:
            await stream.close()
        return {"rtts_ms": rtts_ms}

    async def conns(self, command: dict[str, Any]) -> dict[str, Any]:
        described = []
        for peer, conns in self.host.get_network().connections.items():
            for conn in conns:
                described.append({"peer": str(peer), **describe_connection(conn)})
        return {"conns": described}

    async def echo(self, command: dict[str, Any]) -> dict[str, Any]:
        data = base64.b64decode(_str_arg(command, "data_b64"))
        stream = await self.host.new_stream(
            self._peer(command), [TProtocol(_str_arg(command, "protocol"))]
        )
        try:
            await stream.write(data)
            echoed = await read_exactly(stream, len(data))
        finally:
            await stream.close()
        return {"data_b64": base64.b64encode(echoed).decode("ascii")}


async def echo_handler(stream: Any) -> None:
    """Echo bytes back until the remote closes its side."""
    try:
        while True:
            try:
                chunk = await stream.read(65536)
            except StreamEOF:
                break
            if not chunk:
                break
            await stream.write(chunk)
    finally:
        await stream.close()


async def command_lines(fd: int) -> Any:
    stream = trio.lowlevel.FdStream(fd)
    buffer = b""
    async with stream:
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield line.decode("utf-8")


async def serve(controller: Controller, replies: IO[str]) -> None:
    async for line in command_lines(os.dup(0)):
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
            reply = {"ok": True, **await controller.handle(command)}
        except Exception as exc:  # every failure is reported, the peer keeps serving
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


# -- main -----------------------------------------------------------------------------
def security_options(choice: str, key_pair: Any) -> dict[TProtocol, Any] | None:
    if choice == "any":
        return None  # py-libp2p's default list: Noise, TLS, SECIO, plaintext
    if choice == "noise":
        return {
            NOISE_PROTOCOL_ID: NoiseTransport(
                key_pair, noise_privkey=create_new_x25519_key_pair().private_key
            )
        }
    return {TLS_PROTOCOL_ID: TLSTransport(key_pair)}


async def run(args: argparse.Namespace, replies: IO[str]) -> None:
    listen = [multiaddr.Multiaddr(text) for text in (args.listen or DEFAULT_LISTEN)]
    for addr in listen:
        ip = addr.value_for_protocol("ip4") if "ip4" in str(addr) else None
        if ip != "127.0.0.1":
            raise SystemExit(f"pylibp2p_peer.py: listens on 127.0.0.1 only, not {addr}")
    key_pair = generate_new_ed25519_identity()
    host = new_host(
        key_pair=key_pair,
        listen_addrs=listen,
        enable_quic=any("quic" in str(addr) for addr in listen),
        enable_tcp=any("/tcp/" in str(addr) for addr in listen),
        enable_mDNS=False,
        enable_upnp=False,
        bootstrap=None,
        sec_opt=security_options(args.security, key_pair),
        muxer_preference=args.muxer.upper(),
    )
    if args.echo:
        host.set_stream_handler(TProtocol(args.echo), echo_handler)
    async with host.run(listen_addrs=listen):
        ready = {
            "peer_id": str(host.get_id()),
            "listen_addrs": [str(addr) for addr in host.get_addrs()],
        }
        replies.write(json.dumps(ready) + "\n")
        replies.flush()
        await serve(Controller(host), replies)


def set_identify_protocol_version(version: str) -> None:
    """Make identify announce ``version`` (py-libp2p reads a module constant per message)."""
    import libp2p.identity.identify.identify as identify_module

    identify_module.PROTOCOL_VERSION = version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", action="append", help="listen multiaddr on 127.0.0.1")
    parser.add_argument(
        "--security",
        choices=("noise", "tls", "any"),
        default="noise",
        help="TCP security protocol (QUIC always uses TLS)",
    )
    parser.add_argument("--muxer", choices=("yamux", "mplex"), default="yamux")
    parser.add_argument("--echo", help="serve an echo handler on this protocol id")
    parser.add_argument("--protocol-version", help="identify protocol_version to announce")
    args = parser.parse_args()
    if args.protocol_version is not None:
        set_identify_protocol_version(args.protocol_version)
    # Replies go to the real stdout; stray prints from the library go to stderr.
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    trio.run(run, args, replies)


if __name__ == "__main__":
    main()
