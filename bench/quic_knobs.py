"""What each QUIC tuning knob gives: one-stream throughput with one knob changed at a time.

    python bench/quic_knobs.py [--size-mib 128]

Two processes on loopback (bench/sink_peer.py is the receiver). The
baseline is the shipped QuicSettings(); each row changes one field on both
peers. Prints a table of MB/s and the ratio to the baseline, measured in one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quic import send_to_sink, sink_peer

from lattica_nb import Node, NodeConfig
from lattica_nb.transport.quic.session import QuicSettings

VARIANTS: list[tuple[str, dict[str, object]]] = [
    ("baseline (shipped defaults)", {}),
    ("datagram 1200 B (QUIC minimum)", {"max_datagram_bytes": 1200}),
    ("datagram 8952 B (loopback/jumbo only)", {"max_datagram_bytes": 8952}),
    ("stream window 256 KiB", {"stream_window_bytes": 256 * 1024,
                               "connection_window_bytes": 1024 * 1024}),
    ("stream window 1 MiB", {"stream_window_bytes": 1024 * 1024}),
    ("stream window 16 MiB", {"stream_window_bytes": 16 * 1024 * 1024,
                              "connection_window_bytes": 64 * 1024 * 1024}),
    ("socket buffers 208 KiB (Linux default)", {"socket_buffer_bytes": 212992}),
    ("receive batch 1 (no batching)", {"receive_batch": 1}),
    ("receive batch 16", {"receive_batch": 16}),
    ("aioquic's own pacer (burst fix off)", {"pacer_burst_packets": 0}),
    ("pacer burst 64 packets", {"pacer_burst_packets": 64}),
    ("congestion control cubic", {"congestion_control": "cubic"}),
]


async def measure(knobs: dict[str, object], size: int) -> float:
    async with sink_peer(knobs) as addr:
        async with Node(NodeConfig(ephemeral=True, quic=QuicSettings(**knobs))) as node:  # type: ignore[arg-type]
            info = await node.connect(addr)
            return await send_to_sink(node, info.peer_id, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=128)
    args = parser.parse_args()
    size = args.size_mib << 20
    results = [(name, anyio.run(measure, knobs, size)) for name, knobs in VARIANTS]
    baseline = results[0][1]
    print(f"\nQUIC knobs, one stream, {args.size_mib} MiB, loopback, two processes\n")
    print(f"| {'variant':<40} | {'MB/s':>8} | {'vs baseline':>11} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 13}|")
    for name, mbps in results:
        print(f"| {name:<40} | {mbps:>8.1f} | {mbps / baseline:>10.2f}x |")


if __name__ == "__main__":
    main()
