"""RPC micro-benchmark: two processes on 127.0.0.1 over QUIC, one serving, one calling.

    python bench/rpc_micro.py [--calls 3000] [--json]

Prints one table:

* 128-byte unary echo: p50 / p99 latency and sequential calls per second,
  with stream reuse (the default) and with a new stream per call
  (``max_idle_streams_per_peer=0``, one more round trip for multistream-select);
* the same 128-byte call from 8 concurrent tasks: calls per second;
* 256 KiB request, 8-byte response: calls per second and MB/s;
* 256 KiB echo (256 KiB each way): calls per second.

The serving process is this script with ``--serve`` (it prints its address
and runs until its stdin closes), as in bench/sink_peer.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from lattica_nb import Node, NodeConfig, PeerId
from lattica_nb.protocols.rpc import CallContext, RpcClient, RpcConfig, RpcService

SMALL_BYTES = 128
LARGE_BYTES = 256 * 1024
CONCURRENCY = 8
LATTICA_SDK_P50_MS = "0.57–0.66"
LATTICA_SDK_QPS = "1.0–1.7k"


@dataclass(frozen=True)
class Blob:
    data: bytes


def build_service() -> RpcService:
    service = RpcService()

    @service.unary("echo")
    async def echo(ctx: CallContext, req: Blob) -> Blob:
        return req

    @service.unary("size")
    async def size(ctx: CallContext, req: Blob) -> int:
        return len(req.data)

    return service


LISTEN = {"quic-v1": "/ip4/127.0.0.1/udp/0/quic-v1", "tcp": "/ip4/127.0.0.1/tcp/0"}


async def serve(transport: str) -> None:
    async with Node(NodeConfig(ephemeral=True, listen=(LISTEN[transport],))) as node:
        build_service().attach(node)
        print(node.listen_addrs[0], flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)


@asynccontextmanager
async def server_process(transport: str) -> AsyncIterator[str]:
    peer = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", "--transport", transport],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        if peer.stdout is None:
            raise RuntimeError("no stdout from the serving process")
        addr = peer.stdout.readline().strip()
        if not addr:
            raise RuntimeError("the serving process did not start")
        yield addr
    finally:
        if peer.stdin is not None:
            peer.stdin.close()
        peer.wait(timeout=10)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _timed_calls(n: int, call: Callable[[], Awaitable[object]]) -> tuple[list[float], float]:
    """Latencies (s) of ``n`` sequential calls and the wall time of all of them."""
    latencies = []
    started = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - t0)
    return latencies, time.perf_counter() - started


async def _concurrent(n: int, tasks: int, call: Callable[[], Awaitable[object]]) -> float:
    """Calls per second of ``n`` calls spread over ``tasks`` concurrent callers."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(tasks):
            tg.start_soon(worker, n // tasks + (1 if i < n % tasks else 0))
    return n / (time.perf_counter() - started)


async def measure(calls: int, transport: str = "quic-v1") -> dict[str, float]:
    small = Blob(os.urandom(SMALL_BYTES))
    large = Blob(os.urandom(LARGE_BYTES))
    figures: dict[str, float] = {}
    only = NodeConfig(ephemeral=True, listen=(LISTEN[transport],))
    async with server_process(transport) as addr, Node(only) as node:
        info = await node.connect(addr)
        peer: PeerId = info.peer_id
        for label, config in (("reuse", RpcConfig()),
                              ("fresh", RpcConfig(max_idle_streams_per_peer=0))):
            async with RpcClient(node, config) as client:

                async def echo_small(client: RpcClient = client) -> Blob:
                    return await client.call(peer, "echo", small, response=Blob)

                await _timed_calls(300, echo_small)  # warm-up
                n = calls if label == "reuse" else calls // 3
                latencies, wall = await _timed_calls(n, echo_small)
                figures[f"{label}_p50_ms"] = statistics.median(latencies) * 1000
                figures[f"{label}_p99_ms"] = _percentile(latencies, 0.99) * 1000
                figures[f"{label}_seq_qps"] = n / wall
                if label == "fresh":
                    continue
                figures["concurrent8_qps"] = await _concurrent(calls, CONCURRENCY, echo_small)

                async def upload(client: RpcClient = client) -> int:
                    return await client.call(peer, "size", large, response=int)

                async def echo_large(client: RpcClient = client) -> Blob:
                    return await client.call(peer, "echo", large, response=Blob)

                await _timed_calls(20, upload)
                big_calls = max(50, calls // 20)
                _, wall = await _timed_calls(big_calls, upload)
                figures["large_up_qps"] = big_calls / wall
                figures["large_up_MBps"] = big_calls * LARGE_BYTES / wall / 1e6
                _, wall = await _timed_calls(big_calls, echo_large)
                figures["large_echo_qps"] = big_calls / wall
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--transport", choices=sorted(LISTEN), default="quic-v1")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.serve:
        anyio.run(serve, args.transport)
        return
    f = anyio.run(measure, args.calls, args.transport)
    if args.json:
        print(json.dumps(f))
        return
    print(f"\nRPC over {args.transport}, two processes on 127.0.0.1, {os.cpu_count()} cores, "
          f"{args.calls} calls\n")
    rows = [
        ("128 B unary p50", f"{f['reuse_p50_ms']:.3f} ms", f"{f['fresh_p50_ms']:.3f} ms",
         f"{LATTICA_SDK_P50_MS} ms"),
        ("128 B unary p99", f"{f['reuse_p99_ms']:.3f} ms", f"{f['fresh_p99_ms']:.3f} ms", "—"),
        ("128 B sequential", f"{f['reuse_seq_qps']:,.0f} calls/s",
         f"{f['fresh_seq_qps']:,.0f} calls/s", f"{LATTICA_SDK_QPS} calls/s"),
        ("128 B, 8 concurrent", f"{f['concurrent8_qps']:,.0f} calls/s", "—", "—"),
        ("256 KiB up, 8 B back", f"{f['large_up_qps']:,.0f} calls/s "
         f"({f['large_up_MBps']:,.1f} MB/s)", "—", "—"),
        ("256 KiB echo", f"{f['large_echo_qps']:,.0f} calls/s", "—", "—"),
    ]
    print(f"| {'figure':<22} | {'streams reused':>28} | {'new stream per call':>20} | "
          f"{'Lattica SDK (reference)':>24} |")
    print(f"|{'-' * 24}|{'-' * 30}|{'-' * 22}|{'-' * 26}|")
    for name, reuse, fresh, ref in rows:
        print(f"| {name:<22} | {reuse:>28} | {fresh:>20} | {ref:>24} |")


if __name__ == "__main__":
    main()
