"""A lattica_nb peer serving the benchmark protocols; prints its address, runs until stdin closes.

    python bench/sink_peer.py [--settings JSON] [--transport quic-v1|tcp] [--rpc]

``--settings`` is a JSON object of QuicSettings fields (the knobs under test).
``--transport`` picks the one transport it listens on (default QUIC).
"""

from __future__ import annotations

import argparse
import json
import sys

import anyio

from lattica_nb import Node, NodeConfig, Stream
from lattica_nb.transport.quic.session import QuicSettings

SINK_PROTOCOL = "/lattica-nb/bench/sink/1.0.0"
LISTEN = {"quic-v1": "/ip4/127.0.0.1/udp/0/quic-v1", "tcp": "/ip4/127.0.0.1/tcp/0"}
READ_BYTES = 1 << 20


async def sink(stream: Stream) -> None:
    """Read until EOF, then answer with the byte count (8 bytes, big-endian)."""
    total = 0
    while True:
        try:
            total += len(await stream.receive(READ_BYTES))
        except anyio.EndOfStream:
            break
    await stream.send(total.to_bytes(8, "big"))


async def main(args: argparse.Namespace) -> None:
    settings = QuicSettings(**json.loads(args.settings))
    listen = LISTEN[args.transport]
    async with Node(NodeConfig(ephemeral=True, quic=settings, listen=(listen,))) as node:
        node.set_handler(SINK_PROTOCOL, sink)
        print(node.listen_addrs[0], flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", default="{}")
    parser.add_argument("--transport", choices=sorted(LISTEN), default="quic-v1")
    anyio.run(main, parser.parse_args())
