"""A pair of Lattica SDK nodes on loopback: one-stream throughput and RTT, per transport.

    python bench/lattica_pair.py [--size-mib 256] [--pings 500] [--chunk-mib 4]

Run it ONLY inside a loopback-only network namespace (each Lattica ``build()``
sends STUN requests to public servers); it refuses to start otherwise::

    python -c "from lattica_nb.testing.netns import netns_command; print(netns_command(['x']))"

Two processes, one node each, as two kernels on one machine would be: this one
(the client) and a server it starts. For each transport the server listens on
exactly one address (``/ip4/127.0.0.1/udp/P/quic-v1`` or ``/ip4/127.0.0.1/tcp/P``)
and the client listens on the same transport only, so the figures are for that
transport alone.

What is measured and why this way (explored in the SDK 1.0.21):

- throughput: one ``@rpc_stream_iter`` call; the server yields ``--chunk-mib``
  slices of a random (incompressible) buffer over one ``/rpc/stream/1.0.0``
  stream and the client counts them, then checks a SHA-256 of what arrived.
  It was the fastest single-stream path: a ``@rpc_stream`` upload or download
  of one 256 MiB value was 20–30 % slower (the value is pickled and buffered
  whole). Bitswap (``put_block``/``get_block``, 1 MiB blocks, 4 requests in
  flight) is faster still but uses many streams; it is reported separately as
  ``*_bitswap_MBps``.
- RTT: sequential unary ``@rpc_method`` round trips with a 1-byte payload.
  The SDK's own ping (``get_peer_rtt``) refreshes only every 15 s (rust-libp2p's
  ping interval), so it cannot give percentiles in a short run; one sample of it
  is reported as ``ping_rtt_ms_sample``. The RPC figure includes pickling and
  Python dispatch on both sides, so it is an upper bound on the transport RTT.

The SDK pickles RPC payloads; both ends here are local copies of the SDK, so
that is fine for this benchmark. Nothing from our own nodes is ever unpickled.

Prints one JSON line: ``quic_throughput_MBps``, ``rtt_p50_ms``, ``rtt_p99_ms``
(over QUIC), ``rtt_method``, ``tcp_throughput_MBps`` and the extra figures.
The whole run is bounded: a watchdog ends it after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import base64
import faulthandler
import hashlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lattica_nb.testing.foreign_peers import PeerProcess  # noqa: E402

MB = 1_000_000
CONNECT_TIMEOUT_S = 15.0
RPC_TIMEOUT_S = 30  # the SDK wants whole seconds
WARMUP_PINGS = 20
BLOCK_BYTES = 1 << 20
BITSWAP_IN_FLIGHT = 4
SEED = 20_251_124


# -- shared --------------------------------------------------------------------------------
def refuse_unless_loopback_only() -> None:
    with open("/proc/net/dev", encoding="ascii") as table:
        names = [line.split(":")[0].strip() for line in table.readlines()[2:]]
    others = [name for name in names if name != "lo"]
    if others:
        sys.exit(
            "lattica_pair.py: refusing to build Lattica nodes: this network namespace has "
            f"interfaces besides lo ({', '.join(others)}); run it through "
            "lattica_nb.testing.netns.netns_command"
        )


def payload(size: int) -> bytes:
    """The same incompressible bytes in both processes (numpy's seeded generator)."""
    import numpy as np

    return np.random.default_rng(SEED).bytes(size)


def raw_block_cid(block: bytes) -> str:
    """CIDv1, raw codec, sha2-256, base32 — what ``put_block`` returns."""
    digest = hashlib.sha256(block).digest()
    text = base64.b32encode(bytes([0x01, 0x55, 0x12, 0x20]) + digest).decode("ascii")
    return "b" + text.lower().rstrip("=")


def build_node(listen: str, state_dir: str, bootstrap: str | None = None) -> Any:
    from lattica import Lattica

    builder = (
        Lattica.builder()
        .with_listen_addrs([listen])
        .with_mdns(False)
        .with_upnp(False)
        .with_key_path(state_dir)
        .with_storage_path(os.path.join(state_dir, "blocks"))
        .with_dht_db_path(os.path.join(state_dir, "dht"))
    )
    if bootstrap is not None:
        builder = builder.with_bootstraps([bootstrap])
    return builder.build()


def service_class() -> type:
    from lattica import ConnectionHandler, rpc_method, rpc_stream_iter

    class BenchService(ConnectionHandler):  # type: ignore[misc]
        """Served by the server; the client registers it too, to get typed stubs."""

        data: bytes = b""

        @rpc_method  # type: ignore[misc]
        def echo(self, value: bytes) -> bytes:
            return value

        @rpc_method  # type: ignore[misc]
        def digest(self, size: int) -> str:
            return hashlib.sha256(self.data[:size]).hexdigest()

        @rpc_stream_iter  # type: ignore[misc]
        def pull(self, size: int, chunk: int) -> Any:
            view = self.data
            for start in range(0, size, chunk):
                yield view[start : min(size, start + chunk)]

    return BenchService


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- server process --------------------------------------------------------------------------
def serve(transport: str, size: int, bitswap: bool, replies: Any) -> None:
    """Build the server node, print its address as a ready line, wait for quit."""
    data = payload(size)
    if transport == "quic-v1":
        listen = f"/ip4/127.0.0.1/udp/{free_port(socket.SOCK_DGRAM)}/quic-v1"
    else:
        listen = f"/ip4/127.0.0.1/tcp/{free_port(socket.SOCK_STREAM)}"
    with tempfile.TemporaryDirectory(prefix="lattica-bench-server-") as state_dir:
        node = build_node(listen, state_dir)
        try:
            service = service_class()(node)
            service.data = data
            if bitswap:
                for start in range(0, size, BLOCK_BYTES):
                    node.put_block(data[start : start + BLOCK_BYTES])
            peer_id = node.peer_id()
            replies.write(
                json.dumps({"peer_id": peer_id, "listen_addrs": [f"{listen}/p2p/{peer_id}"]}) + "\n"
            )
            replies.flush()
            for line in sys.stdin:  # the client sends {"cmd": "quit"} or closes stdin
                if "quit" in line:
                    break
        finally:
            node.close()
        replies.write(json.dumps({"ok": True}) + "\n")
        replies.flush()


# -- client ---------------------------------------------------------------------------------
def wait_connected(node: Any, peer_id: str) -> float:
    start = time.monotonic()
    while peer_id not in node.get_all_peers():
        if time.monotonic() - start > CONNECT_TIMEOUT_S:
            raise SystemExit(
                f"lattica_pair.py: no connection to {peer_id} after {CONNECT_TIMEOUT_S} s"
            )
        time.sleep(0.005)
    return time.monotonic() - start


def measure_rtts(stub: Any, pings: int) -> list[float]:
    for _ in range(WARMUP_PINGS):
        stub.echo(b"x").result(timeout=RPC_TIMEOUT_S)
    rtts = []
    for _ in range(pings):
        start = time.perf_counter()
        stub.echo(b"x").result(timeout=RPC_TIMEOUT_S)
        rtts.append((time.perf_counter() - start) * 1000.0)
    return rtts


def measure_stream(stub: Any, size: int, chunk: int) -> float:
    received = hashlib.sha256()
    chunks: list[bytes] = []
    start = time.perf_counter()
    total = 0
    for piece in stub.pull(size, chunk):
        total += len(piece)
        chunks.append(piece)
    elapsed = time.perf_counter() - start
    if total != size:
        raise SystemExit(f"lattica_pair.py: stream delivered {total} of {size} bytes")
    for piece in chunks:
        received.update(piece)
    if received.hexdigest() != stub.digest(size).result(timeout=RPC_TIMEOUT_S):
        raise SystemExit("lattica_pair.py: the streamed bytes differ from the server's")
    return size / elapsed / MB


def measure_bitswap(node: Any, data: bytes) -> float:
    cids = [raw_block_cid(data[i : i + BLOCK_BYTES]) for i in range(0, len(data), BLOCK_BYTES)]

    def fetch(cid: str) -> int:
        _, block = node.get_block(cid, timeout_secs=RPC_TIMEOUT_S)
        return len(block)

    start = time.perf_counter()
    with ThreadPoolExecutor(BITSWAP_IN_FLIGHT) as pool:
        total = sum(pool.map(fetch, cids))
    elapsed = time.perf_counter() - start
    if total != len(data):
        raise SystemExit(f"lattica_pair.py: bitswap delivered {total} of {len(data)} bytes")
    return len(data) / elapsed / MB


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_transport(
    transport: str, size: int, pings: int, chunk: int, bitswap: bool, data: bytes | None
) -> dict[str, float]:
    server_argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        transport,
        "--size-mib",
        str(size >> 20),
    ]
    if bitswap:
        server_argv.append("--bitswap")
    with PeerProcess(server_argv, name=f"lattica-bench-server-{transport}") as server:
        ready = server.start(timeout_s=60.0)
        listen = (
            "/ip4/127.0.0.1/udp/0/quic-v1" if transport == "quic-v1" else "/ip4/127.0.0.1/tcp/0"
        )
        with tempfile.TemporaryDirectory(prefix="lattica-bench-client-") as state_dir:
            node = build_node(listen, state_dir, bootstrap=ready.listen_addrs[0])
            try:
                connect_s = wait_connected(node, ready.peer_id)
                stub = service_class()(node).get_stub(ready.peer_id)
                rtts = measure_rtts(stub, pings)
                figures = {
                    "throughput_MBps": measure_stream(stub, size, chunk),
                    "rtt_p50_ms": statistics.median(rtts),
                    "rtt_p99_ms": percentile(rtts, 0.99),
                    "connect_ms": connect_s * 1000.0,
                    "ping_rtt_ms_sample": float(node.get_peer_rtt(ready.peer_id)) * 1000.0,
                }
                if bitswap and data is not None:
                    figures["bitswap_MBps"] = measure_bitswap(node, data)
                return figures
            finally:
                node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--chunk-mib", type=int, default=4)
    parser.add_argument("--no-bitswap", action="store_true", help="skip the bitswap figures")
    parser.add_argument("--max-seconds", type=float, default=115.0)
    parser.add_argument("--serve", choices=("quic-v1", "tcp"), help=argparse.SUPPRESS)
    parser.add_argument("--bitswap", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size_mib << 20
    if size <= 0 or args.pings <= 0 or args.chunk_mib <= 0:
        parser.error("--size-mib, --pings and --chunk-mib must be positive")

    refuse_unless_loopback_only()
    faulthandler.dump_traceback_later(args.max_seconds, exit=True)
    # The SDK's Rust logger writes to stdout (tracing-subscriber's default):
    # keep the real stdout for our JSON and send everything else to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    if args.serve is not None:
        serve(args.serve, size, args.bitswap, out)
        return

    bitswap = not args.no_bitswap
    data = payload(size) if bitswap else None
    chunk = args.chunk_mib << 20
    quic = run_transport("quic-v1", size, args.pings, chunk, bitswap, data)
    tcp = run_transport("tcp", size, args.pings, chunk, bitswap, data)
    result: dict[str, Any] = {
        "quic_throughput_MBps": round(quic["throughput_MBps"], 1),
        "rtt_p50_ms": round(quic["rtt_p50_ms"], 3),
        "rtt_p99_ms": round(quic["rtt_p99_ms"], 3),
        "rtt_method": (
            f"unary @rpc_method round trip, 1-byte payload, {args.pings} sequential calls "
            "(get_peer_rtt refreshes only every 15 s)"
        ),
        "tcp_throughput_MBps": round(tcp["throughput_MBps"], 1),
        "throughput_method": (
            f"one @rpc_stream_iter stream, {args.chunk_mib} MiB chunks, {args.size_mib} MiB"
        ),
        "tcp_rtt_p50_ms": round(tcp["rtt_p50_ms"], 3),
        "tcp_rtt_p99_ms": round(tcp["rtt_p99_ms"], 3),
        "quic_connect_ms": round(quic["connect_ms"], 1),
        "ping_rtt_ms_sample": round(quic["ping_rtt_ms_sample"], 3),
        "size_mib": args.size_mib,
    }
    if bitswap:
        result["quic_bitswap_MBps"] = round(quic["bitswap_MBps"], 1)
        result["tcp_bitswap_MBps"] = round(tcp["bitswap_MBps"], 1)
        result["bitswap_method"] = (
            f"get_block of 1 MiB blocks, {BITSWAP_IN_FLIGHT} in flight (many streams)"
        )
    out.write(json.dumps(result) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
