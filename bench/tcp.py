"""Fast-path benchmark: TCP + Noise + Yamux and RPC vs the Lattica SDK vs raw TCP, in one run.

    python bench/tcp.py [--size-mib 256] [--rpc-calls 2000] [--skip-lattica] [--json]

Everything runs on 127.0.0.1, two processes per figure (one per peer), as two
kernels on one machine would be. The Lattica SDK pair (bench/lattica_pair.py)
runs inside a loopback-only network namespace (it sends STUN requests when
built). Prints one Markdown table with ratios; ``--json`` also prints the raw
figures as one JSON line.

- throughput: our node opens streams to bench/sink_peer.py over TCP + Noise +
  Yamux and writes 1 MiB chunks; one stream carries ``--size-mib``, four
  streams carry a quarter each, concurrently. Time runs from opening the
  streams to the sink's byte counts. Lattica's figure is its best TCP
  transfer in the same run: the faster of one ``@rpc_stream_iter`` stream and
  bitswap (1 MiB blocks, 4 requests in flight).
- RPC: unary calls of lattica_nb's RPC (``/lattica-nb/rpc/1.0.0``, msgpack)
  over TCP against an echo handler in bench/sink_peer.py: 128 B payload p50 and
  p99 latency and sequential calls per second; 8 concurrent callers; 256 KiB
  payload calls per second (echoed: 256 KiB each way). Lattica's figures are
  the same shapes with ``@rpc_method`` over its TCP transport.
- raw TCP copy: ``sendall`` of the same bytes to a ``recv_into`` child process:
  the ceiling for moving bytes between two Python processes here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quic import CHUNK_BYTES, SINK_PROTOCOL, _fmt, _lattica_pair, _raw_tcp, sink_peer
from rpc_micro import measure as measure_rpc

from lattica_nb import Node, NodeConfig, PeerId

TCP_ONLY = ("/ip4/127.0.0.1/tcp/0",)


async def _send_streams(node: Node, peer: PeerId, size: int, streams: int) -> float:
    """MB/s moving ``size`` bytes split over ``streams`` concurrent streams."""
    chunk = b"\x00" * CHUNK_BYTES
    share = size // streams

    async def one() -> None:
        stream = await node.open_stream(peer, SINK_PROTOCOL)
        sent = 0
        while sent < share:
            await stream.send(chunk)
            sent += len(chunk)
        await stream.send_eof()
        received = int.from_bytes(await stream.receive(8), "big")
        await stream.aclose()
        if received != sent:
            raise RuntimeError(f"sink counted {received} bytes, sent {sent}")

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(streams):
            tg.start_soon(one)
    return share * streams / (time.perf_counter() - start) / 1e6


async def _lattica_nb(size: int) -> dict[str, float]:
    async with sink_peer({}, "tcp") as addr:
        async with Node(NodeConfig(ephemeral=True, listen=TCP_ONLY)) as node:
            info = await node.connect(addr)
            one = await _send_streams(node, info.peer_id, size, 1)
            four = await _send_streams(node, info.peer_id, size, 4)
    return {"one_stream_MBps": one, "four_streams_MBps": four}


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or not theirs:
        return "—"
    return f"{ours / theirs:.2f}×"


def _table(rows: list[tuple[str, float | None, float | None, float | None, str]]) -> None:
    print(f"| {'figure':<30} | {'lattica_nb TCP':>16} | {'Lattica SDK TCP':>16} | "
          f"{'ours/Lattica':>12} | {'raw TCP copy':>14} | {'ours/raw':>8} |")
    print(f"|{'-' * 32}|{'-' * 18}|{'-' * 18}|{'-' * 14}|{'-' * 16}|{'-' * 10}|")
    for name, mine, theirs, limit, unit in rows:
        print(f"| {name:<30} | {_fmt(mine, unit):>16} | {_fmt(theirs, unit):>16} | "
              f"{_ratio(mine, theirs):>12} | {_fmt(limit, unit):>14} | "
              f"{_ratio(mine, limit):>8} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rpc-calls", type=int, default=2000)
    parser.add_argument("--skip-lattica", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.size_mib << 20

    ours = anyio.run(_lattica_nb, size)
    rpc = anyio.run(measure_rpc, args.rpc_calls, "tcp")
    raw = _raw_tcp(size)
    lattica = ("skipped: --skip-lattica" if args.skip_lattica
               else _lattica_pair(size, 100, rpc_calls=args.rpc_calls))
    lat: dict[str, Any] = lattica if isinstance(lattica, dict) else {}
    best_tcp = max((v for k in ("tcp_throughput_MBps", "tcp_bitswap_MBps")
                    if isinstance(v := lat.get(k), (int, float))), default=None)

    print(f"\nfast path, loopback, {args.size_mib} MiB, {os.cpu_count()} cores\n")
    _table([
        ("one-stream throughput", ours["one_stream_MBps"], best_tcp, raw["throughput_MBps"],
         "MB/s"),
        ("four-stream throughput", ours["four_streams_MBps"], best_tcp, raw["throughput_MBps"],
         "MB/s"),
    ])
    print()
    _table([
        ("RPC 128 B p50", rpc["reuse_p50_ms"], lat.get("tcp_rpc128_p50_ms"), None, "ms"),
        ("RPC 128 B p99", rpc["reuse_p99_ms"], lat.get("tcp_rpc128_p99_ms"), None, "ms"),
        ("RPC 128 B sequential", rpc["reuse_seq_qps"], lat.get("tcp_rpc128_seq_qps"), None,
         "calls/s"),
        ("RPC 128 B, 8 concurrent", rpc["concurrent8_qps"], lat.get("tcp_rpc128_conc8_qps"),
         None, "calls/s"),
        ("RPC 256 KiB echo", rpc["large_echo_qps"], lat.get("tcp_rpc256k_qps"), None,
         "calls/s"),
        ("RPC 128 B p50, new stream/call", rpc["fresh_p50_ms"], lat.get("tcp_rpc128_p50_ms"),
         None, "ms"),
    ])
    print("\nFor latency a ratio below 1 means lattica_nb is faster; for the rest above 1.")
    if not lat:
        print(f"\nLattica SDK pair: {lattica}")
    else:
        print("\nLattica's throughput column is its best TCP transfer in this run "
              f"(stream RPC {lat.get('tcp_throughput_MBps')} MB/s, "
              f"bitswap {lat.get('tcp_bitswap_MBps')} MB/s)")
    if args.json:
        print(json.dumps({"lattica_nb": ours, "rpc": rpc, "raw_tcp": raw, "lattica": lattica}))


if __name__ == "__main__":
    main()
