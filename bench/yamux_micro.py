"""Yamux micro-benchmark: YamuxConnection throughput over plain loopback TCP (no Noise).

    python bench/yamux_micro.py [--size-mib 256] [--streams 1,4] [--where same,child] [--noise]
                                [--window-kib N] [--frame-kib N] [--send-buffer-kib N] [--json]

For each stream count, the dialer opens that many streams and pushes
``size / streams`` bytes on each (1 MiB writes, then FIN); the listener reads
every stream to its end and answers with the byte count. The figure is the
total payload over the time until the last answer arrived, in MB/s (10^6).
``same``: both ends in this process (one event loop, so they share one core);
``child``: the listener runs in a child process, as two kernels would.
A plain-TCP row (anyio socket streams, same pattern, one stream) is the ceiling.
``--noise`` runs Yamux over Noise (``noise_handshake``) as a real TCP connection would.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import anyio.abc
from anyio.abc import SocketListener

from lattica_nb.errors import ConnectionClosedError
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.multiaddr import Multiaddr
from lattica_nb.transport.noise import noise_handshake
from lattica_nb.transport.yamux import YamuxConnection, YamuxSettings, YamuxStream

WRITE_BYTES = 1 << 20
PEER = PeerId.from_public_key(PrivateKey.generate().public_key)


def _settings(knobs: dict[str, Any]) -> YamuxSettings:
    return YamuxSettings(keepalive_s=None, **knobs)


async def _connection(
    stream: anyio.abc.SocketStream, *, initiator: bool, knobs: dict[str, Any]
) -> YamuxConnection:
    """Yamux over ``stream``; over Noise first when ``knobs`` asks for it."""
    remote = stream.extra(anyio.abc.SocketAttribute.remote_address)
    local = stream.extra(anyio.abc.SocketAttribute.local_address)
    knobs = dict(knobs)
    inner: anyio.abc.ByteStream = stream
    if knobs.pop("noise", False):
        inner = await noise_handshake(stream, PrivateKey.generate(), is_initiator=initiator)
    return YamuxConnection(
        inner,
        is_initiator=initiator,
        remote_peer=PEER,
        local_addr=Multiaddr.from_host_port("tcp", str(local[0]), int(local[1])),
        remote_addr=Multiaddr.from_host_port("tcp", str(remote[0]), int(remote[1])),
        settings=_settings(knobs),
    )


def _inner(listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> SocketListener:
    """The one socket listener of a ``create_tcp_listener`` multi-listener."""
    return cast(SocketListener, cast(Any, listener).listeners[0])


# -- the two ends ------------------------------------------------------------------------
async def _drain(stream: YamuxStream) -> None:
    total = 0
    while True:
        try:
            total += len(await stream.receive(WRITE_BYTES))
        except anyio.EndOfStream:
            break
    await stream.send(str(total).encode())
    await stream.aclose()


async def serve_sink(conn: YamuxConnection) -> None:
    """Accept streams until the connection closes; read each to its end, answer the count."""
    async with anyio.create_task_group() as tg:
        while True:
            try:
                stream = await conn.accept_stream()
            except ConnectionClosedError:
                return
            tg.start_soon(_drain, stream)


async def _push(conn: YamuxConnection, nbytes: int, payload: bytes) -> None:
    stream = await conn.open_stream()
    sent = 0
    while sent < nbytes:
        size = min(WRITE_BYTES, nbytes - sent)
        await stream.send(payload if size == WRITE_BYTES else payload[:size])
        sent += size
    await stream.send_eof()
    reply = b""
    while True:
        try:
            reply += await stream.receive()
        except anyio.EndOfStream:
            break
    if int(reply) != nbytes:
        raise RuntimeError(f"the sink read {reply!r} bytes, expected {nbytes}")


async def push_all(conn: YamuxConnection, size: int, streams: int) -> float:
    """Send ``size`` bytes over ``streams`` streams; return MB/s."""
    payload = bytes(WRITE_BYTES)
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(streams):
            tg.start_soon(_push, conn, size // streams, payload)
    return size / (time.perf_counter() - start) / 1e6


# -- placements ------------------------------------------------------------------------------
@asynccontextmanager
async def _dial(port: int, knobs: dict[str, Any]) -> AsyncIterator[YamuxConnection]:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    conn = await _connection(stream, initiator=True, knobs=knobs)
    async with anyio.create_task_group() as tg:
        await tg.start(conn.run)
        yield conn
        await conn.aclose()


async def run_same(size: int, streams: int, knobs: dict[str, Any]) -> float:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        inner = _inner(listener)
        port = inner.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:

            async def accept_one() -> None:
                conn = await _connection(await inner.accept(), initiator=False, knobs=knobs)
                async with anyio.create_task_group() as inner_tg:
                    await inner_tg.start(conn.run)
                    await serve_sink(conn)

            tg.start_soon(accept_one)
            async with _dial(port, knobs) as conn:
                return await push_all(conn, size, streams)
    raise AssertionError("unreachable")


async def run_child(size: int, streams: int, knobs: dict[str, Any]) -> float:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", json.dumps(knobs)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if child.stdout is None:
            raise RuntimeError("no stdout from the sink process")
        line = child.stdout.readline().strip()
        if not line:
            raise RuntimeError("the sink process did not start")
        async with _dial(int(line), knobs) as conn:
            return await push_all(conn, size, streams)
    finally:
        child.wait(timeout=30)


async def serve_once(knobs: dict[str, Any]) -> None:
    """Child mode: print the port, serve one connection, exit when it closes."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        inner = _inner(listener)
        print(inner.extra(anyio.abc.SocketAttribute.local_port), flush=True)
        conn = await _connection(await inner.accept(), initiator=False, knobs=knobs)
        async with anyio.create_task_group() as tg:
            await tg.start(conn.run)
            await serve_sink(conn)


async def plain_tcp(size: int) -> float:
    """The same push over a bare anyio TCP stream: the ceiling for this machine."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        inner = _inner(listener)
        port = inner.extra(anyio.abc.SocketAttribute.local_port)
        result = 0.0
        async with anyio.create_task_group() as tg:

            async def sink() -> None:
                async with await inner.accept() as server:
                    total = 0
                    while True:
                        try:
                            total += len(await server.receive(256 * 1024))
                        except anyio.EndOfStream:
                            break
                    await server.send(str(total).encode())

            tg.start_soon(sink)
            async with await anyio.connect_tcp("127.0.0.1", port) as client:
                payload = bytes(WRITE_BYTES)
                start = time.perf_counter()
                for _ in range(size // WRITE_BYTES):
                    await client.send(payload)
                await client.send_eof()
                await client.receive()
                result = size / (time.perf_counter() - start) / 1e6
        return result


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    knobs: dict[str, Any] = {"noise": True} if args.noise else {}
    if args.window_kib:
        knobs["receive_window_bytes"] = args.window_kib * 1024
        knobs["max_connection_receive_bytes"] = max(128 << 20, 4 * args.window_kib * 1024)
    if args.frame_kib:
        knobs["max_frame_bytes"] = args.frame_kib * 1024
    if args.send_buffer_kib:
        knobs["send_buffer_bytes"] = args.send_buffer_kib * 1024
    size = args.size_mib << 20
    results: dict[str, float] = {"plain TCP, 1 stream, same process": await plain_tcp(size)}
    for where in args.where.split(","):
        for streams in (int(s) for s in args.streams.split(",")):
            runner = run_same if where == "same" else run_child
            label = f"yamux, {streams} stream{'s' if streams > 1 else ''}, " + (
                "same process" if where == "same" else "child process"
            )
            results[label] = await runner(size, streams, knobs)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--streams", default="1,4")
    parser.add_argument("--where", default="same,child")
    parser.add_argument("--window-kib", type=int, default=0)
    parser.add_argument("--frame-kib", type=int, default=0)
    parser.add_argument("--send-buffer-kib", type=int, default=0)
    parser.add_argument("--noise", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        anyio.run(serve_once, json.loads(args.serve))
        return
    results = anyio.run(main_async, args)
    if args.json:
        print(json.dumps(results))
        return
    over = "Noise over loopback TCP" if args.noise else "loopback TCP"
    print(f"{args.size_mib} MiB over {over}, settings: {_settings_text(args)}")
    for label, mbps in results.items():
        print(f"  {label:40s} {mbps:8.0f} MB/s")


def _settings_text(args: argparse.Namespace) -> str:
    parts = []
    if args.window_kib:
        parts.append(f"window {args.window_kib} KiB")
    if args.frame_kib:
        parts.append(f"frame {args.frame_kib} KiB")
    if args.send_buffer_kib:
        parts.append(f"send buffer {args.send_buffer_kib} KiB")
    return ", ".join(parts) or "defaults"


if __name__ == "__main__":
    main()
