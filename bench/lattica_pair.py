"""A pair of Lattica SDK nodes on loopback: throughput, RTT and unary RPC rates, per transport.

    python bench/lattica_pair.py [--size-mib 256] [--pings 500] [--chunk-mib 4]
                                 [--rpc-calls 2000] [--max-seconds 115]

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
- unary RPC figures (``<t>_rpc*`` keys, ``<t>`` = ``tcp`` or ``quic``), all
  against one ``@rpc_method`` ``echo(value: bytes) -> bytes`` on the server
  that returns its argument; the client checks every reply equals what it sent.
  N = ``--rpc-calls`` (default 2000; 0 skips them). Before them 50 sequential
  128-byte calls warm the connection up and are not counted.

  - ``<t>_rpc128_p50_ms`` / ``<t>_rpc128_p99_ms``: latency of N sequential
    calls with a 128-byte payload echoed back (``stub.echo(p).result()``, one
    at a time; issue to result, so pickling both ways and Python dispatch on
    both sides are included).
  - ``<t>_rpc128_seq_qps``: that same sequential loop's calls per second.
  - ``<t>_rpc128_conc8_qps``: 8 threads, each a closed loop of blocking
    ``stub.echo(p).result()`` calls, N calls in total (N // 8 each); calls per
    second from the moment all 8 are released (a barrier) until the last
    returns. This is the headline concurrency figure.
  - ``<t>_rpc128_inflight8_qps``: one thread, batches of 8: issue 8 calls,
    then wait for all 8, N calls in total. A second view of the same thing,
    without threads.
  - ``<t>_rpc256k_qps``: N // 10 (at least 10) sequential calls with a
    256 KiB payload ECHOED back (256 KiB each way per call), after 5 uncounted
    warm-up calls; calls per second.
  - ``<t>_rpc128_seq_errors``, ``<t>_rpc128_conc8_errors``,
    ``<t>_rpc128_inflight8_errors``, ``<t>_rpc256k_errors``: calls that raised
    or came back different; they are left out of the latencies and rates
    (rates count successful calls only) instead of ending the run.

  What the SDK allows, as explored in 1.0.21 over both transports:
  ``stub.method(args)`` does not block. It pickles the arguments, hands the
  request to the Rust runtime and returns in ~0.02-0.1 ms. What it returns is
  the SDK's ``FutureWrapper`` around a native ``LFuture``, which has only
  ``result(timeout)`` (it releases the GIL while it blocks) and ``__await__``.
  There is no ``add_done_callback``, so one thread cannot keep a sliding
  window of calls in flight except through asyncio. All three ways of having 8
  calls in flight gave real concurrency, 2-3x the sequential ~2k calls/s on
  this 2-core VM: 8 threads ~3.0-6.2k calls/s, one thread with batches of 8
  futures ~3.4-5.6k, 8 asyncio tasks awaiting the stubs ~4.3k. Threads were
  the fastest, which is why they give the headline figure. With the default
  N these runs last only ~0.4 s, so they varied up to 2x between runs (in
  seven runs); pass a larger ``--rpc-calls`` for steadier figures. With more than
  about 100 calls in flight on one connection the SDK's request-response
  behaviour refuses new sub-streams ("max sub-streams reached"). The SDK then
  retries the call itself after ~100 ms (logged as "RPC call attempt 1
  failed ... retrying"), so at 128 in flight the caller saw no errors, but the
  rate fell to ~1.2-1.8k calls/s. 8 in flight is far below that limit.

The SDK pickles RPC payloads; both ends here are local copies of the SDK, so
that is fine for this benchmark. Nothing from our own nodes is ever unpickled.

Prints one JSON line: ``quic_throughput_MBps``, ``rtt_p50_ms``, ``rtt_p99_ms``
(over QUIC), ``rtt_method``, ``tcp_throughput_MBps``, the RPC figures above for
both transports (``rpc_method`` describes them) and the extra figures.
The whole run is bounded: a watchdog ends it after ``--max-seconds``
(default 115 s; a default run, both transports, took about 18 s here).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import faulthandler
import hashlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
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
RPC_WARMUP_CALLS = 50
RPC_SMALL_BYTES = 128
RPC_BIG_BYTES = 256 << 10
RPC_BIG_WARMUP_CALLS = 5
RPC_CONCURRENCY = 8
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


@contextlib.contextmanager
def state_directory(prefix: str) -> Iterator[str]:
    """A temporary node directory, removed even if the SDK still writes into it.

    ``close()`` returns before the SDK's background tasks stop: a block store
    subdirectory can gain a file while it is being removed ("Directory not
    empty"), which once cost a whole run. Retry the removal for a moment.
    """
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        for _ in range(40):
            try:
                shutil.rmtree(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
        else:
            shutil.rmtree(path, ignore_errors=True)


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
    with state_directory("lattica-bench-server-") as state_dir:
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


def echo_ok(stub: Any, value: bytes) -> bool:
    """One blocking echo call; False if it raised or came back different."""
    try:
        return bool(stub.echo(value).result(timeout=RPC_TIMEOUT_S) == value)
    except Exception:  # any SDK failure counts as one failed call
        return False


def measure_rpc(stub: Any, calls: int) -> dict[str, float]:
    """The unary RPC figures (see the module docstring), keys without the transport."""
    small = payload(RPC_SMALL_BYTES)
    for _ in range(RPC_WARMUP_CALLS):
        echo_ok(stub, small)

    # sequential, 128 bytes: latencies and rate of the same loop
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    for _ in range(calls):
        began = time.perf_counter()
        if echo_ok(stub, small):
            latencies.append((time.perf_counter() - began) * 1000.0)
        else:
            errors += 1
    elapsed = time.perf_counter() - start
    figures: dict[str, float] = {
        "rpc128_p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "rpc128_p99_ms": percentile(latencies, 0.99) if latencies else float("nan"),
        "rpc128_seq_qps": len(latencies) / elapsed,
        "rpc128_seq_errors": errors,
    }

    # 8 threads, each a closed loop of blocking calls
    per_thread = max(1, calls // RPC_CONCURRENCY)
    barrier = threading.Barrier(RPC_CONCURRENCY + 1)

    def caller() -> int:
        barrier.wait()
        return sum(not echo_ok(stub, small) for _ in range(per_thread))

    with ThreadPoolExecutor(RPC_CONCURRENCY) as pool:
        pending = [pool.submit(caller) for _ in range(RPC_CONCURRENCY)]
        barrier.wait()
        start = time.perf_counter()
        errors = sum(job.result() for job in pending)
        elapsed = time.perf_counter() - start
    total = per_thread * RPC_CONCURRENCY
    figures["rpc128_conc8_qps"] = (total - errors) / elapsed
    figures["rpc128_conc8_errors"] = errors

    # one thread, batches of 8 futures
    errors = 0
    start = time.perf_counter()
    for _ in range(per_thread):
        batch = []
        for _ in range(RPC_CONCURRENCY):
            try:
                batch.append(stub.echo(small))
            except Exception:
                errors += 1
        for future in batch:
            try:
                if future.result(timeout=RPC_TIMEOUT_S) != small:
                    errors += 1
            except Exception:
                errors += 1
    elapsed = time.perf_counter() - start
    figures["rpc128_inflight8_qps"] = (total - errors) / elapsed
    figures["rpc128_inflight8_errors"] = errors

    # sequential, 256 KiB echoed
    big = payload(RPC_BIG_BYTES)
    big_calls = max(10, calls // 10)
    for _ in range(RPC_BIG_WARMUP_CALLS):
        echo_ok(stub, big)
    start = time.perf_counter()
    errors = sum(not echo_ok(stub, big) for _ in range(big_calls))
    elapsed = time.perf_counter() - start
    figures["rpc256k_qps"] = (big_calls - errors) / elapsed
    figures["rpc256k_errors"] = errors
    return figures


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_transport(
    transport: str,
    size: int,
    pings: int,
    chunk: int,
    bitswap: bool,
    data: bytes | None,
    rpc_calls: int = 0,
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
        with state_directory("lattica-bench-client-") as state_dir:
            node = build_node(listen, state_dir, bootstrap=ready.listen_addrs[0])
            try:
                connect_s = wait_connected(node, ready.peer_id)
                stub = service_class()(node).get_stub(ready.peer_id)
                rtts = measure_rtts(stub, pings)
                # before the bulk transfers, so their buffers do not weigh on it
                rpc = measure_rpc(stub, rpc_calls) if rpc_calls > 0 else {}
                figures = {
                    "throughput_MBps": measure_stream(stub, size, chunk),
                    "rtt_p50_ms": statistics.median(rtts),
                    "rtt_p99_ms": percentile(rtts, 0.99),
                    "connect_ms": connect_s * 1000.0,
                    "ping_rtt_ms_sample": float(node.get_peer_rtt(ready.peer_id)) * 1000.0,
                }
                figures.update(rpc)
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
    parser.add_argument(
        "--rpc-calls",
        type=int,
        default=2000,
        help="calls per 128-byte RPC figure (the 256 KiB figure makes a tenth); 0 skips them",
    )
    parser.add_argument("--max-seconds", type=float, default=115.0)
    parser.add_argument("--serve", choices=("quic-v1", "tcp"), help=argparse.SUPPRESS)
    parser.add_argument("--bitswap", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size_mib << 20
    if size <= 0 or args.pings <= 0 or args.chunk_mib <= 0:
        parser.error("--size-mib, --pings and --chunk-mib must be positive")
    if args.rpc_calls < 0:
        parser.error("--rpc-calls must not be negative")

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
    quic = run_transport("quic-v1", size, args.pings, chunk, bitswap, data, args.rpc_calls)
    tcp = run_transport("tcp", size, args.pings, chunk, bitswap, data, args.rpc_calls)
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
    if args.rpc_calls > 0:
        for prefix, figures in (("tcp", tcp), ("quic", quic)):
            for key, value in figures.items():
                if not key.startswith("rpc"):
                    continue
                if key.endswith("_errors"):
                    result[f"{prefix}_{key}"] = int(value)
                elif value != value:  # NaN: every call failed; JSON null, not NaN
                    result[f"{prefix}_{key}"] = None
                else:
                    result[f"{prefix}_{key}"] = round(value, 3 if key.endswith("_ms") else 1)
        big_calls = max(10, args.rpc_calls // 10)
        result["rpc_method"] = (
            f"unary @rpc_method echo of bytes, checked; {RPC_WARMUP_CALLS} warm-up calls; "
            f"rpc128: {args.rpc_calls} sequential 128-byte calls (p50/p99, seq_qps); "
            f"conc8: {RPC_CONCURRENCY} threads of blocking calls, "
            f"{args.rpc_calls // RPC_CONCURRENCY * RPC_CONCURRENCY} in total; "
            f"inflight8: one thread, batches of {RPC_CONCURRENCY} futures; "
            f"rpc256k: {big_calls} sequential 256 KiB echoes (256 KiB each way)"
        )
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
