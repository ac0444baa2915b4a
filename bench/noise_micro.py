"""Noise micro-benchmark: the sans-IO core and the anyio driver over loopback TCP.

    python bench/noise_micro.py [--size-mib 256] [--repeat 3] [--one-process] [--json]

Rows:

* ``core encrypt`` / ``core decrypt``: :class:`NoiseTransport` alone, 1 MiB
  writes encrypted into frames, fed back in 256 KiB reads (no I/O).
* ``tcp plain``: anyio TCP on 127.0.0.1 without Noise (the ceiling).
* ``tcp noise``: ``noise_handshake`` on both ends, then the same transfer
  through :class:`NoiseStream` (1 MiB sends, ``receive(1 MiB)`` and the
  default ``receive()`` of 64 KiB).

TCP rows run the receiver in a second process (two peers on two cores, as
two kernels would be) and, with ``--one-process``, both ends on one event
loop. Throughput counts plaintext bytes, from the first byte sent to the last
byte received. Each row is the median of ``--repeat`` runs (loopback figures
on a shared 2-core VM vary by tens of percent from run to run); ``--json``
also gives every run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.streams.stapled
from anyio.abc import ByteStream, SocketListener, SocketStream

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lattica_nb.identity import PrivateKey
from lattica_nb.transport.noise import noise_handshake
from lattica_nb.transport.noise.handshake import NoiseHandshake

MIB = 1 << 20
WRITE_BYTES = MIB
CORE_READ_BYTES = 256 * 1024


# -- core ---------------------------------------------------------------------------
def bench_core(size: int) -> dict[str, float]:
    initiator = NoiseHandshake(PrivateKey.generate(), is_initiator=True)
    responder = NoiseHandshake(PrivateKey.generate(), is_initiator=False)
    responder.start()
    responder.receive(initiator.receive(responder.receive(initiator.start())))
    sender, receiver = initiator.result().transport, responder.result().transport
    block = os.urandom(WRITE_BYTES)
    writes = size // WRITE_BYTES
    encrypt_s = decrypt_s = 0.0
    received = 0
    for _ in range(writes):
        start = time.perf_counter()
        wire = sender.encrypt(block)
        middle = time.perf_counter()
        view = memoryview(wire)
        for offset in range(0, len(view), CORE_READ_BYTES):
            received += sum(map(len, receiver.feed(view[offset : offset + CORE_READ_BYTES])))
        encrypt_s += middle - start
        decrypt_s += time.perf_counter() - middle
    if received != writes * WRITE_BYTES:
        raise SystemExit(f"core: received {received} of {writes * WRITE_BYTES} bytes")
    total = writes * WRITE_BYTES / 1e6
    return {
        "core encrypt": total / encrypt_s,
        "core decrypt": total / decrypt_s,
        "core encrypt+decrypt": total / (encrypt_s + decrypt_s),
    }


# -- TCP ----------------------------------------------------------------------------
async def _accept(listener: anyio.abc.Listener[SocketStream]) -> SocketStream:
    """Accept one connection from a listener made by ``create_tcp_listener``."""
    inner = listener
    if isinstance(listener, anyio.streams.stapled.MultiListener):
        inner = listener.listeners[0]
    if not isinstance(inner, SocketListener):
        raise SystemExit("expected a TCP socket listener")
    return await inner.accept()


async def _upgrade(stream: SocketStream, noise: bool, initiator: bool) -> ByteStream:
    if not noise:
        return stream
    with anyio.fail_after(10):
        return await noise_handshake(stream, PrivateKey.generate(), is_initiator=initiator)


async def _send_all(stream: ByteStream, size: int) -> None:
    block = os.urandom(WRITE_BYTES)
    for _ in range(size // WRITE_BYTES):
        await stream.send(block)
    await stream.send_eof()


async def _receive_all(stream: ByteStream, read_bytes: int) -> tuple[int, float]:
    """Bytes received and the time the first byte arrived."""
    received = len(await stream.receive(read_bytes))
    first = time.perf_counter()
    try:
        while True:
            received += len(await stream.receive(read_bytes))
    except anyio.EndOfStream:
        pass
    return received, first


async def _serve_once(noise: bool, read_bytes: int, port_out: Any, result_out: Any) -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0) as listener:
        port_out.send(listener.extra(anyio.abc.SocketAttribute.local_port))
        stream = await _accept(listener)
        async with stream:
            secure = await _upgrade(stream, noise, initiator=False)
            received, _ = await _receive_all(secure, read_bytes)
            result_out.send((received, time.perf_counter()))


def _receiver_process(noise: bool, read_bytes: int, conn: Any) -> None:
    anyio.run(_serve_once, noise, read_bytes, conn, conn)


async def _tcp_two_processes(size: int, noise: bool, read_bytes: int) -> float:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_receiver_process, args=(noise, read_bytes, child)
    )
    process.start()
    try:
        port = await anyio.to_thread.run_sync(parent.recv)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            secure = await _upgrade(stream, noise, initiator=True)
            start = time.perf_counter()
            await _send_all(secure, size)
            received, end = await anyio.to_thread.run_sync(parent.recv)
            received, end = int(received), float(end)
    finally:
        process.join(timeout=30)
    if received != size:
        raise SystemExit(f"tcp: received {received} of {size} bytes")
    return size / 1e6 / (end - start)  # perf_counter is system-wide on Linux


async def _tcp_one_process(size: int, noise: bool, read_bytes: int) -> float:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0) as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        done: dict[str, int] = {}

        async def serve() -> None:
            stream = await _accept(listener)
            async with stream:
                secure = await _upgrade(stream, noise, initiator=False)
                done["received"], _ = await _receive_all(secure, read_bytes)

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                secure = await _upgrade(stream, noise, initiator=True)
                start = time.perf_counter()
                async with anyio.create_task_group() as inner:
                    inner.start_soon(_send_all, secure, size)
        elapsed = time.perf_counter() - start
    if done["received"] != size:
        raise SystemExit(f"tcp: received {done['received']} of {size} bytes")
    return size / 1e6 / elapsed


async def bench_tcp(size: int, one_process: bool, repeat: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {}
    cases = [
        ("tcp plain, receive(1 MiB)", False, MIB),
        ("tcp noise, receive(1 MiB)", True, MIB),
        ("tcp noise, receive() 64 KiB", True, 65536),
    ]
    for _ in range(repeat):
        for name, noise, read_bytes in cases:
            runs.setdefault(f"{name}, 2 processes", []).append(
                await _tcp_two_processes(size, noise, read_bytes)
            )
            if one_process:
                runs.setdefault(f"{name}, 1 process", []).append(
                    await _tcp_one_process(size, noise, read_bytes)
                )
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (median shown)")
    parser.add_argument("--one-process", action="store_true", help="also run both ends in one loop")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    size = args.size_mib * MIB
    runs: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        for name, value in bench_core(size).items():
            runs.setdefault(name, []).append(value)
    runs.update(anyio.run(bench_tcp, size, args.one_process, args.repeat))
    if args.json:
        medians = {name: statistics.median(values) for name, values in runs.items()}
        print(json.dumps({"median_MBps": medians, "runs_MBps": runs}, indent=2))
        return
    print(f"Noise micro-benchmark, {args.size_mib} MiB, plaintext MB/s (median of {args.repeat})")
    width = max(map(len, runs))
    for name, values in runs.items():
        low, high = min(values), max(values)
        print(f"  {name:<{width}}  {statistics.median(values):6.0f}   ({low:.0f}..{high:.0f})")


if __name__ == "__main__":
    main()
