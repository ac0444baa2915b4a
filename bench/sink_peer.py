"""A lattica_nb peer serving the benchmark protocols; prints its address, runs until stdin closes.

    python bench/sink_peer.py [--settings JSON]

``--settings`` is a JSON object of QuicSettings fields (the knobs under test).
"""

from __future__ import annotations

import argparse
import json
import sys

import anyio

from lattica_nb import Node, NodeConfig, Stream
from lattica_nb.transport.quic.session import QuicSettings

SINK_PROTOCOL = "/lattica-nb/bench/sink/1.0.0"
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
    async with Node(NodeConfig(ephemeral=True, quic=settings)) as node:
        node.set_handler(SINK_PROTOCOL, sink)
        print(node.listen_addrs[0], flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", default="{}")
    anyio.run(main, parser.parse_args())
