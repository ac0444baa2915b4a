"""Mesh-core benchmark: lattica_nb QUIC vs a Lattica SDK pair vs raw TCP, in one run.

    python bench/quic.py [--size-mib 256] [--pings 500] [--skip-lattica]

Prints one table (and ``--json`` prints the raw figures). Everything runs on
loopback; the Lattica SDK pair runs inside a loopback-only network namespace
(it sends STUN requests when built). Each figure comes from two processes,
one per peer, as two kernels on one machine would be.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from lattica_nb import Node, NodeConfig, PeerId
from lattica_nb.transport.quic.session import QuicSettings

HERE = Path(__file__).resolve().parent
SINK_PROTOCOL = "/lattica-nb/bench/sink/1.0.0"
CHUNK_BYTES = 1 << 20


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- lattica_nb over QUIC ------------------------------------------------------------
async def _lattica_nb(
    size: int, pings: int, connects: int, datagram_bytes: int
) -> dict[str, float]:
    knobs = {"max_datagram_bytes": datagram_bytes}
    async with sink_peer(knobs) as addr:
        async with Node(NodeConfig(ephemeral=True, quic=QuicSettings(**knobs))) as node:
            connect_ms = []
            for _ in range(connects):
                async with Node(NodeConfig(ephemeral=True)) as fresh:
                    start = time.perf_counter()
                    await fresh.connect(addr)
                    connect_ms.append((time.perf_counter() - start) * 1000)
            info = await node.connect(addr)
            rtts = [r * 1000 for r in await node.ping(info.peer_id, count=pings)]
            throughput = await send_to_sink(node, info.peer_id, size)
    return {
        "throughput_MBps": throughput,
        "rtt_p50_ms": statistics.median(rtts),
        "rtt_p99_ms": _percentile(rtts, 0.99),
        "connect_identify_p50_ms": statistics.median(connect_ms),
    }


@asynccontextmanager
async def sink_peer(knobs: dict[str, object], transport: str = "quic-v1") -> AsyncIterator[str]:
    """Run bench/sink_peer.py with these QuicSettings on one transport; yield its multiaddr."""
    peer = subprocess.Popen(
        [sys.executable, str(HERE / "sink_peer.py"), "--settings", json.dumps(knobs),
         "--transport", transport],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        if peer.stdout is None:
            raise RuntimeError("no stdout from the benchmark peer")
        addr = peer.stdout.readline().strip()
        if not addr:
            raise RuntimeError("the benchmark peer did not start")
        yield addr
    finally:
        if peer.stdin is not None:
            peer.stdin.close()
        peer.wait(timeout=10)


async def send_to_sink(node: Node, peer: PeerId, size: int) -> float:
    """Send ``size`` bytes on one stream; MB/s until the sink confirmed the count."""
    chunk = b"\x00" * CHUNK_BYTES
    start = time.perf_counter()
    stream = await node.open_stream(peer, SINK_PROTOCOL)
    sent = 0
    while sent < size:
        await stream.send(chunk)
        sent += len(chunk)
    await stream.send_eof()
    received = int.from_bytes(await stream.receive(8), "big")
    elapsed = time.perf_counter() - start
    await stream.aclose()
    if received != size:
        raise RuntimeError(f"sink counted {received} bytes, sent {size}")
    return size / elapsed / 1e6


# -- raw TCP socket copy: the practical limit ----------------------------------------------
_TCP_SINK = """
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept(); buf = bytearray(1 << 20); view = memoryview(buf); total = 0
while True:
    n = conn.recv_into(view)
    if not n: break
    total += n
conn.sendall(total.to_bytes(8, "big")); conn.close()
"""


def _raw_tcp(size: int) -> dict[str, float]:
    sink = subprocess.Popen([sys.executable, "-c", _TCP_SINK], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        chunk = b"\x00" * CHUNK_BYTES
        with socket.create_connection(("127.0.0.1", port)) as conn:
            start = time.perf_counter()
            sent = 0
            while sent < size:
                conn.sendall(chunk)
                sent += len(chunk)
            conn.shutdown(socket.SHUT_WR)
            received = int.from_bytes(conn.recv(8), "big")
            elapsed = time.perf_counter() - start
        if received != size:
            raise RuntimeError("raw TCP sink lost bytes")
        return {"throughput_MBps": size / elapsed / 1e6}
    finally:
        sink.wait(timeout=10)


# -- the Lattica SDK pair ----------------------------------------------------------------------
def _lattica_pair(size: int, pings: int, *, rpc_calls: int = 0) -> dict[str, float] | str:
    from lattica_nb.testing.netns import loopback_namespace_available, netns_command

    reason = loopback_namespace_available()
    if reason is not None:
        return f"skipped: {reason}"
    argv = [sys.executable, str(HERE / "lattica_pair.py"), "--size-mib", str(size >> 20),
            "--pings", str(pings), "--rpc-calls", str(rpc_calls)]
    try:
        out = subprocess.run(netns_command(argv), capture_output=True, text=True, timeout=300,
                             check=False)
    except subprocess.TimeoutExpired:
        return "failed: timed out after 300 s"
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            figures: dict[str, float] = json.loads(line)
            return figures
    return f"failed: {out.stderr.strip()[-300:]}"


def _fmt(value: float | None, unit: str) -> str:
    return "—" if value is None else f"{value:,.2f} {unit}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs in (None, 0):
        return "—"
    return f"{ours / theirs:.2f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--connects", type=int, default=20)
    parser.add_argument("--datagram-bytes", type=int, default=1452)
    parser.add_argument("--skip-lattica", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.size_mib << 20

    ours = anyio.run(_lattica_nb, size, args.pings, args.connects, args.datagram_bytes)
    raw = _raw_tcp(size)
    lattica = "skipped: --skip-lattica" if args.skip_lattica else _lattica_pair(size, args.pings)
    lat = lattica if isinstance(lattica, dict) else {}

    cpu = os.cpu_count()
    print(f"\nmesh core, loopback, {args.size_mib} MiB one stream, {args.pings} pings, "
          f"{args.datagram_bytes}-byte datagrams, {cpu} cores\n")
    rows = [
        ("one-stream throughput", ours["throughput_MBps"], lat.get("quic_throughput_MBps"),
         raw["throughput_MBps"], "MB/s"),
        ("ping RTT p50", ours["rtt_p50_ms"], lat.get("rtt_p50_ms"), None, "ms"),
        ("ping RTT p99", ours["rtt_p99_ms"], lat.get("rtt_p99_ms"), None, "ms"),
        ("connect + identify p50", ours["connect_identify_p50_ms"], None, None, "ms"),
    ]
    print(f"| {'figure':<24} | {'lattica_nb QUIC':>16} | {'Lattica SDK QUIC':>16} | "
          f"{'ours/Lattica':>12} | {'raw TCP copy':>14} | {'ours/raw':>8} |")
    print(f"|{'-' * 26}|{'-' * 18}|{'-' * 18}|{'-' * 14}|{'-' * 16}|{'-' * 10}|")
    for name, mine, theirs, limit, unit in rows:
        print(f"| {name:<24} | {_fmt(mine, unit):>16} | {_fmt(theirs, unit):>16} | "
              f"{_ratio(mine, theirs):>12} | {_fmt(limit, unit):>14} | {_ratio(mine, limit):>8} |")
    if not isinstance(lattica, dict):
        print(f"\nLattica SDK pair: {lattica}")
    elif "rtt_method" in lattica:
        print(f"\nLattica RTT measured by: {lattica['rtt_method']}")
    if args.json:
        print(json.dumps({"lattica_nb": ours, "lattica": lattica, "raw_tcp": raw}))


if __name__ == "__main__":
    main()
