"""Interop driver, run INSIDE a loopback-only network namespace (see test_lattica_streams.py).

    python lattica_streams.py --transport quic|tcp [--streams 200] [--rpc-window 50]

One Lattica SDK peer (rust-libp2p 0.54) and one lattica_nb node, one
connection between them over the chosen transport. On that connection:

1. Bitswap, truly concurrent. The peer stores ``--streams`` small blocks
   (``put_block``). We open ``--streams`` streams of ``/ipfs/bitswap/1.2.0``
   at once with ``node.open_stream``; stream *i* sends a want-block for block
   *i* and stays open. The peer answers on its own bitswap stream to us (the
   bitswap way), so block *i* arriving proves the peer read stream *i*. Once
   every block has arrived, every stream sends a second message, a want-have
   for a CID the peer does not hold, and waits for the DONT_HAVE. Those
   second messages are read off streams that were all open at once, so the
   peer held every one of them open at the same time. Then each stream is
   closed (FIN).
2. Request/response. ``--streams`` exchanges of ``/rpc/req-resp/1.0.0``
   (Lattica's RPC: a bincode ``RpcMessage``, half-close, reply read to the
   end), all started at once but with at most ``--rpc-window`` streams
   negotiated and unanswered at any moment, because rust-libp2p's
   request_response handler drops inbound streams beyond 100 per connection.
   The method names a service the peer does not have, so the peer's Rust
   code answers ``RpcError{id, "Service ... not found"}`` without touching
   Python or pickle; only the bincode envelope is decoded
   (tests/interop/lattica_bincode.py).
3. Ping over the same connection (three pings, one stream each).

It prints one JSON line: per-phase counts, the first failures, timings,
connection observations, and any stream-drop warnings in the peer's log.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
for path in (REPO, HERE.parent):  # lattica_nb, then tests/interop (lattica_bincode)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import anyio  # noqa: E402
from anyio.abc import Process  # noqa: E402
from anyio.streams.text import TextReceiveStream  # noqa: E402
from lattica_bincode import BincodeError, RpcError, RpcRequest, decode_message, encode_message  # noqa: E402

from lattica_nb import Node, NodeConfig, PeerConnected, PeerDisconnected, PeerId, Stream  # noqa: E402
from lattica_nb.wire.framing import frame, read_frame_or_none  # noqa: E402
from lattica_nb.wire.protobuf import ProtoWriter, parse_fields  # noqa: E402

PEER_SCRIPT = HERE.parent / "peers" / "lattica_peer.py"
LATTICA_PROTOCOL = "/lattica/1.0.0"
BITSWAP = "/ipfs/bitswap/1.2.0"
RPC = "/rpc/req-resp/1.0.0"
RPC_METHOD = "nb.streams"  # service "nb" is not registered on the peer

LISTEN = {"quic": "/ip4/127.0.0.1/udp/0/quic-v1", "tcp": "/ip4/127.0.0.1/tcp/0"}

PEER_START_S = 30.0
PEER_COMMAND_S = 10.0
REPLY_S = 20.0
"""How long one stream waits for one answer of the peer; past it, that stream failed."""
PHASE_S = 60.0
"""Deadline of one phase (all its streams): nothing can hang the driver."""
MAX_BITSWAP_FRAME = 4 * 1024 * 1024  # beetswap's own MAX_MESSAGE_SIZE
MAX_RPC_REPLY = 64 * 1024
DROP_MARKERS = (
    "at capacity",  # request_response / identify handlers
    "buffer is full",  # libp2p-yamux inbound stream buffer
    "Channel is full",  # libp2p-stream
    "exceeds inbound substream limit",  # kad
    "maximum number of streams",  # yamux
)
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

# -- CIDs and bitswap messages ------------------------------------------------------------
RAW_SHA256_PREFIX = bytes((0x01, 0x55, 0x12, 0x20))
"""CIDv1, raw codec, sha2-256, 32-byte digest: what ``put_block`` makes (and bitswap's prefix)."""


def cid_of(data: bytes) -> bytes:
    return RAW_SHA256_PREFIX + hashlib.sha256(data).digest()


def cid_text(cid: bytes) -> str:
    """Multibase base32 (``b``, lower case, no padding), as the SDK prints CIDs."""
    return "b" + base64.b32encode(cid).decode("ascii").lower().rstrip("=")


WANT_BLOCK, WANT_HAVE = 0, 1
HAVE, DONT_HAVE = 0, 1


def want_message(cid: bytes, want_type: int) -> bytes:
    """One bitswap 1.2.0 ``Message`` with a single wantlist entry (not a full wantlist)."""
    entry = ProtoWriter().bytes(1, cid).uint(2, 1)  # block, priority
    if want_type != WANT_BLOCK:
        entry.uint(4, want_type)
    entry.uint(5, 1)  # sendDontHave
    wantlist = ProtoWriter().bytes(1, entry.finish())
    return frame(ProtoWriter().bytes(1, wantlist.finish()).finish())


class BitswapInbox:
    """Serves ``/ipfs/bitswap/1.2.0`` streams the peer opens to us; records what arrives.

    Only blocks and presences for CIDs we asked about are kept (bounded by
    what we asked); a block is accepted only if its bytes hash to its CID.
    """

    def __init__(self) -> None:
        self.blocks: dict[bytes, bytes] = {}
        self.presences: dict[bytes, int] = {}
        self._waiters: dict[tuple[str, bytes], anyio.Event] = {}
        self.bad_blocks = 0
        self.unexpected = 0
        self.messages = 0

    def expect(self, kind: str, cid: bytes) -> anyio.Event:
        return self._waiters.setdefault((kind, cid), anyio.Event())

    async def serve(self, stream: Stream) -> None:
        while True:
            body = await read_frame_or_none(stream, max_bytes=MAX_BITSWAP_FRAME)
            if body is None:
                return
            self.messages += 1
            message = parse_fields(body, max_bytes=MAX_BITSWAP_FRAME)
            for raw in message.all_bytes(3):  # payload: Block{prefix, data}
                block = parse_fields(raw, max_bytes=len(raw))
                data = block.bytes_or_none(2) or b""
                cid = cid_of(data)
                if block.bytes_or_none(1) != RAW_SHA256_PREFIX:
                    self.bad_blocks += 1
                elif ("block", cid) not in self._waiters:
                    self.unexpected += 1
                else:
                    self.blocks[cid] = data
                    self._waiters["block", cid].set()
            for raw in message.all_bytes(4):  # blockPresences: {cid, type}
                presence = parse_fields(raw, max_bytes=len(raw))
                cid = presence.bytes_or_none(1) or b""
                if ("presence", cid) not in self._waiters:
                    self.unexpected += 1
                    continue
                self.presences[cid] = presence.uint_or_none(2) or HAVE
                self._waiters["presence", cid].set()


# -- the Lattica peer process ---------------------------------------------------------------
class LatticaPeer:
    """lattica_peer.py spoken to over JSON lines; its stderr (RUST_LOG=warn) goes to a file."""

    def __init__(self, process: Process, log: IO[str]) -> None:
        self.process = process
        self.log = log
        self._lines = TextReceiveStream(process.stdout)  # type: ignore[arg-type]
        self._buffer = ""

    @classmethod
    async def start(cls, listen: str, log: IO[str]) -> tuple[LatticaPeer, dict[str, Any]]:
        env = dict(os.environ, RUST_LOG="warn")
        process = await anyio.open_process(
            [sys.executable, str(PEER_SCRIPT), "--listen", listen, "--protocol", LATTICA_PROTOCOL],
            stderr=log,
            env=env,
        )
        peer = cls(process, log)
        with anyio.fail_after(PEER_START_S):
            ready = await peer._readline()
        return peer, ready

    async def _readline(self) -> dict[str, Any]:
        while "\n" not in self._buffer:
            self._buffer += await self._lines.receive()
        line, self._buffer = self._buffer.split("\n", 1)
        return dict(json.loads(line))

    async def call(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        await self.process.stdin.send((json.dumps(command) + "\n").encode())
        with anyio.fail_after(PEER_COMMAND_S):
            reply = await self._readline()
        if not reply.get("ok"):
            raise RuntimeError(f"lattica peer could not do {command.get('cmd')}: {reply}")
        return reply

    async def quit(self) -> None:
        try:
            await self.call(cmd="quit")
            with anyio.fail_after(PEER_START_S):
                await self.process.wait()
        finally:
            if self.process.returncode is None:
                self.process.kill()

    def drop_warnings(self) -> list[str]:
        """Lines of the peer's log saying it dropped a stream (wording is not an API)."""
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as handle:
            lines = [ANSI_ESCAPE.sub("", line).strip() for line in handle]
        return [line[-300:] for line in lines if any(m in line for m in DROP_MARKERS)]


# -- running many streams -------------------------------------------------------------------
class Tally:
    """Per-stream outcomes of one phase, and how many of its streams were open at once."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.ok: set[int] = set()
        self.failures: dict[int, str] = {}
        self.open_now = 0
        self.max_open = 0
        self.connections: set[int] = set()

    def opened(self, stream: Stream) -> None:
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        self.connections.add(id(stream.connection))

    def closed(self) -> None:
        self.open_now -= 1

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        # Root causes first, then the streams stopped because of them.
        first = sorted(self.failures.items(),
                       key=lambda item: (item[1].startswith(PhaseAborted.__name__), item[0]))[:10]
        kinds: dict[str, int] = {}
        for error in self.failures.values():
            kinds[error.split(":")[0]] = kinds.get(error.split(":")[0], 0) + 1
        return {
            "streams": self.count,
            "succeeded": len(self.ok),
            "failed": len(self.failures),
            "failure_kinds": kinds,
            "first_failures": {str(i): error for i, error in first},
            "max_open_at_once": self.max_open,
            "elapsed_s": round(elapsed_s, 4),
        }


class PhaseAborted(RuntimeError):
    """This stream stopped because another stream of the phase failed."""


async def answered(event: anyio.Event, what: str) -> None:
    """Wait for the peer's answer to this stream; a missing answer fails the stream."""
    with anyio.move_on_after(REPLY_S):
        await event.wait()
        return
    raise TimeoutError(f"no {what} from the peer within {REPLY_S:g} s")


class Barrier:
    """Wait until ``parties`` arrived; broken (raising) as soon as any party failed."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.broken = False
        self._event = anyio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self._event.set()
        await self._event.wait()
        if self.broken:
            raise PhaseAborted("another stream failed, so the phase stopped")

    def break_(self) -> None:
        self.broken = True
        self._event.set()


async def run_all(count: int, one: Callable[[int], Awaitable[None]], tally: Tally,
                  on_failure: Callable[[], None] = lambda: None) -> float:
    async def guarded(i: int) -> None:
        try:
            await one(i)
        except Exception as exc:
            tally.failures[i] = f"{type(exc).__name__}: {exc}"[:300]
            on_failure()
        else:
            tally.ok.add(i)

    start = time.perf_counter()
    with anyio.fail_after(PHASE_S):
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(guarded, i)
    return time.perf_counter() - start


async def bitswap_phase(node: Node, peer: PeerId, lattica: LatticaPeer, inbox: BitswapInbox,
                        count: int) -> dict[str, Any]:
    blocks = [f"lattica-nb concurrent stream {i} of {count}".encode() for i in range(count)]
    wanted = [cid_of(data) for data in blocks]
    absent = [cid_of(f"lattica-nb absent block {i} of {count}".encode()) for i in range(count)]
    for data, cid in zip(blocks, wanted, strict=True):
        reply = await lattica.call(cmd="put_block", data_b64=base64.b64encode(data).decode())
        if reply["cid"] != cid_text(cid):
            raise RuntimeError(f"put_block returned {reply['cid']}, expected {cid_text(cid)}")

    tally = Tally(count)
    all_open = Barrier(count)
    first_replies = Barrier(count)
    seen = {"open_streams_on_connection": 0}

    def fail_fast() -> None:
        all_open.break_()
        first_replies.break_()

    async def one(i: int) -> None:
        got_block = inbox.expect("block", wanted[i])
        got_presence = inbox.expect("presence", absent[i])
        stream = await node.open_stream(peer, BITSWAP)
        tally.opened(stream)
        try:
            await stream.send(want_message(wanted[i], WANT_BLOCK))
            await all_open.wait()
            await answered(got_block, f"block {i}")
            await first_replies.wait()
            # Every stream is still open here: the peer must read this from all of them.
            seen["open_streams_on_connection"] = max(
                seen["open_streams_on_connection"], stream.connection.open_stream_count
            )
            await stream.send(want_message(absent[i], WANT_HAVE))
            await answered(got_presence, f"DONT_HAVE {i}")
            if inbox.blocks[wanted[i]] != blocks[i]:
                raise RuntimeError("block bytes differ")
            if inbox.presences[absent[i]] != DONT_HAVE:
                raise RuntimeError(f"presence {inbox.presences[absent[i]]}, expected DONT_HAVE")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.reset()
            raise
        else:
            await stream.aclose()
        finally:
            tally.closed()

    elapsed = await run_all(count, one, tally, fail_fast)
    result = tally.summary(elapsed)
    result.update(
        connections_used=len(tally.connections),
        open_streams_on_connection_at_second_message=seen["open_streams_on_connection"],
        blocks_received=len(inbox.blocks),
        dont_haves_received=sum(1 for v in inbox.presences.values() if v == DONT_HAVE),
        bad_blocks=inbox.bad_blocks,
        unexpected_items=inbox.unexpected,
        peer_messages=inbox.messages,
    )
    return result


async def rpc_phase(node: Node, peer: PeerId, count: int, window: int) -> dict[str, Any]:
    tally = Tally(count)
    slots = anyio.Semaphore(window)
    errors: dict[str, int] = {}

    async def one(i: int) -> None:
        request_id = f"lattica-nb-{i}"
        request = encode_message(RpcRequest(id=request_id, method=RPC_METHOD, data=b""))
        async with slots:
            stream = await node.open_stream(peer, RPC)
            tally.opened(stream)
            try:
                await stream.send(request)
                await stream.send_eof()
                reply = bytearray()
                with anyio.fail_after(REPLY_S):
                    while True:
                        try:
                            reply += await stream.receive()
                        except anyio.EndOfStream:
                            break
                        if len(reply) > MAX_RPC_REPLY:
                            raise BincodeError(f"reply longer than {MAX_RPC_REPLY} bytes")
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await stream.reset()
                raise
            else:
                await stream.aclose()
            finally:
                tally.closed()
        message = decode_message(bytes(reply), max_bytes=MAX_RPC_REPLY)
        if not isinstance(message, RpcError) or message.id != request_id:
            raise RuntimeError(f"expected RpcError for {request_id}, got {message!r}")
        errors[message.error] = errors.get(message.error, 0) + 1

    elapsed = await run_all(count, one, tally)
    result = tally.summary(elapsed)
    result.update(window=window, connections_used=len(tally.connections), replies=errors)
    return result


# -- main ----------------------------------------------------------------------------------
async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"transport": args.transport, "streams": args.streams}
    listen = LISTEN[args.transport]
    config = NodeConfig(ephemeral=True, protocol_version=LATTICA_PROTOCOL, listen=(listen,))
    events = {"connected": 0, "disconnected": 0}
    with tempfile.NamedTemporaryFile("w+", prefix="lattica-streams-peer-", suffix=".log") as log:
        lattica, ready = await LatticaPeer.start(listen, log)
        try:
            async with Node(config) as node, node.subscribe() as node_events:
                inbox = BitswapInbox()
                node.set_handler(BITSWAP, inbox.serve)

                async def count_events() -> None:
                    async for event in node_events:
                        if isinstance(event, PeerConnected):
                            events["connected"] += 1
                        elif isinstance(event, PeerDisconnected):
                            events["disconnected"] += 1

                async with anyio.create_task_group() as tg:
                    tg.start_soon(count_events)
                    start = time.perf_counter()
                    info = await node.connect(ready["listen_addrs"][0])
                    result["connect_s"] = round(time.perf_counter() - start, 4)
                    peer = info.peer_id
                    conns = node._manager.connections(peer)  # type: ignore[union-attr]
                    first = conns[0]
                    result["connection"] = {
                        "transport": first.remote_addr.transport(),
                        "at_start": len(conns),
                    }
                    result["bitswap"] = await bitswap_phase(node, peer, lattica, inbox,
                                                            args.streams)
                    result["rpc"] = await rpc_phase(node, peer, args.streams, args.rpc_window)
                    # One ping per stream: rust-libp2p 0.54's ping handler re-arms its
                    # inbound future without polling it (ping/src/handler.rs 263-267), so
                    # a second ping on the same stream waits for some unrelated wake-up of
                    # the peer's connection task (observed: 5 ms to 14.5 s).
                    result["ping_ms"] = [
                        round((await node.ping(peer, count=1))[0] * 1000, 3) for _ in range(3)
                    ]
                    conns = node._manager.connections(peer)  # type: ignore[union-attr]
                    result["connection"].update(
                        at_end=len(conns),
                        same_as_at_start=conns == [first],
                        peer_connected_events=events["connected"],
                        peer_disconnected_events=events["disconnected"],
                    )
                    result["peer_sees_us"] = str(node.peer_id) in (
                        await lattica.call(cmd="peers")
                    )["peers"]
                    tg.cancel_scope.cancel()
        finally:
            await lattica.quit()
        drops = lattica.drop_warnings()
        result["peer_drop_warnings"] = {"count": len(drops), "first": drops[:5]}
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=sorted(LISTEN), default="quic")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rpc-window", type=int, default=50)
    print(json.dumps(anyio.run(main, parser.parse_args())), flush=True)
