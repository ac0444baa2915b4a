"""Interop driver, run INSIDE a loopback-only network namespace (see test_lattica_connect.py).

    python lattica_connect.py quic-v1|tcp

A lattica_nb node and two Lattica SDK (rust-libp2p) peers, over one transport
only (QUIC with libp2p TLS, or TCP with Noise and Yamux):
Lattica peer L1 dials us (bootstrap), we dial Lattica peer L2. Each side
reports what identify told it about the other, and we ping both. Prints one
JSON line with the observations; the test asserts on them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from lattica_nb import Node, NodeConfig, PeerId, PeerIdentified
from lattica_nb.multiaddr import Multiaddr

PEER_SCRIPT = Path(__file__).resolve().parent.parent / "peers" / "lattica_peer.py"
LATTICA_PROTOCOL = "/lattica/1.0.0"
LISTEN = {"quic-v1": "/ip4/127.0.0.1/udp/0/quic-v1", "tcp": "/ip4/127.0.0.1/tcp/0"}
TRANSPORT = sys.argv[1] if len(sys.argv) > 1 else "quic-v1"


class LatticaPeer:
    """A lattica_peer.py process spoken to over JSON lines."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self._lines = TextReceiveStream(process.stdout)  # type: ignore[arg-type]
        self._buffer = ""
        self.ready: dict[str, Any] = {}

    async def readline(self) -> dict[str, Any]:
        while "\n" not in self._buffer:
            self._buffer += await self._lines.receive()
        line, self._buffer = self._buffer.split("\n", 1)
        return dict(json.loads(line))

    async def call(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        await self.process.stdin.send((json.dumps(command) + "\n").encode())
        reply = await self.readline()
        if not reply.get("ok"):
            raise RuntimeError(f"lattica peer: {reply.get('error')}")
        return reply


async def start_peer(*extra: str) -> LatticaPeer:
    process = await anyio.open_process(
        [sys.executable, str(PEER_SCRIPT), "--listen", LISTEN[TRANSPORT],
         "--protocol", LATTICA_PROTOCOL, *extra],
        stderr=None,
    )
    peer = LatticaPeer(process)
    with anyio.fail_after(30):
        peer.ready = await peer.readline()
    return peer


async def wait_identified(events: Any, peer: PeerId) -> float:
    start = time.perf_counter()
    with anyio.fail_after(15):
        async for event in events:
            if isinstance(event, PeerIdentified) and event.peer == peer:
                return time.perf_counter() - start
    raise RuntimeError("event stream ended")


def our_view(node: Node, peer: PeerId) -> dict[str, Any]:
    info = node.peer_info(peer)
    return {
        "agent_version": info.agent_version,
        "protocol_version": info.protocol_version,
        "protocols": list(info.protocols),
        "observed_addr": str(info.observed_addr) if info.observed_addr else None,
    }


async def pings(node: Node, peer: PeerId) -> list[float]:
    """Five pings in ms, one stream each.

    rust-libp2p 0.54's ping handler does not poll the next read after
    answering (ping/src/handler.rs), so a second ping on the same stream
    waits for an unrelated wake-up (90 ms to 14 s measured). One stream per
    ping is what rust-libp2p itself does.
    """
    return [(await node.ping(peer))[0] * 1000 for _ in range(5)]


async def main() -> None:
    result: dict[str, Any] = {}
    config = NodeConfig(
        ephemeral=True, protocol_version=LATTICA_PROTOCOL, listen=(LISTEN[TRANSPORT],)
    )
    async with Node(config) as node, node.subscribe() as events:
        our_addr = str(node.listen_addrs[0])
        result["our_peer_id"] = str(node.peer_id)

        # 1. Lattica dials us.
        l1 = await start_peer("--bootstrap", our_addr)
        l1_id = PeerId.from_string(l1.ready["peer_id"])
        result["inbound_identify_s"] = await wait_identified(events, l1_id)
        result["inbound"] = our_view(node, l1_id)
        result["inbound_ping_ms"] = await pings(node, l1_id)
        await l1.call(cmd="wait_peer", peer=str(node.peer_id), timeout=10, identified=True)
        result["inbound_lattica_view"] = (await l1.call(cmd="peer_info", peer=str(node.peer_id)))[
            "info"
        ]

        # 2. We dial Lattica.
        l2 = await start_peer()
        l2_addr = next(a for a in l2.ready["listen_addrs"] if Multiaddr(a).transport() == TRANSPORT)
        start = time.perf_counter()
        info = await node.connect(l2_addr)
        result["outbound_connect_identify_s"] = time.perf_counter() - start
        result["outbound"] = our_view(node, info.peer_id)
        result["outbound_ping_ms"] = await pings(node, info.peer_id)
        await l2.call(cmd="wait_peer", peer=str(node.peer_id), timeout=10, identified=True)
        result["outbound_lattica_view"] = (
            await l2.call(cmd="peer_info", peer=str(node.peer_id))
        )["info"]
        result["outbound_lattica_rtt"] = await l2.call(cmd="rtt", peer=str(node.peer_id))
        result["transports"] = sorted(
            {c.remote_addr.transport() or "?" for p in (l1_id, info.peer_id)
             for c in node._manager.connections(p)}
        )

        for peer in (l1, l2):
            await peer.call(cmd="quit")
            with anyio.fail_after(10):
                await peer.process.wait()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    anyio.run(main)
