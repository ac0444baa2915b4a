"""lattica_nb's Noise <-> py-libp2p 0.8.1 (an independent implementation) over TCP.

py-libp2p (its own virtualenv, see ``find_pylibp2p_python``) listens on
127.0.0.1 with Noise and Yamux. We open a raw TCP connection, negotiate
``/noise`` with multistream-select, run our handshake and then negotiate
``/yamux/1.0.0`` *inside* the encrypted channel: the peer only answers that
proposal if it decrypted ours, and we only read its answer if we decrypt its
frames, so the channel is proven both ways. Then the reverse: py-libp2p dials
our listener, which runs the responder side.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream, SocketStream

from lattica_nb.errors import PeerIdMismatch
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.multiaddr import Multiaddr
from lattica_nb.testing.foreign_peers import (
    PeerProcess,
    find_pylibp2p_python,
    pylibp2p_unavailable,
)
from lattica_nb.transport.multistream import HEADER, encode_message
from lattica_nb.transport.negotiate import select_inbound, select_outbound
from lattica_nb.transport.noise import PROTOCOL_ID, NoiseStream, noise_handshake

pytestmark = [pytest.mark.interop, pytest.mark.anyio, pytest.mark.timeout(120)]

PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "pylibp2p_peer.py"
YAMUX = "/yamux/1.0.0"
ECHO = "/lattica-nb/test/echo/1.0.0"
STEP_TIMEOUT_S = 15.0


@pytest.fixture
def pylibp2p() -> Iterator[PeerProcess]:
    reason = pylibp2p_unavailable()
    if reason is not None:
        pytest.skip(reason)
    python = find_pylibp2p_python()
    assert python is not None
    argv = [
        str(python),
        str(PEER_SCRIPT),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--security",
        "noise",
        "--muxer",
        "yamux",
        "--echo",
        ECHO,
    ]
    with PeerProcess(argv, name="py-libp2p") as peer:
        peer.start(timeout_s=60)
        yield peer


async def request(process: PeerProcess, **command: object) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(lambda: process.request(command, timeout_s=30))


# -- just enough Yamux (yamux/README.md) to run one echo stream --------------------------
_YAMUX_HEADER = struct.Struct(">BBHII")  # version, type, flags, stream id, length
_DATA, _PING = 0, 2
_SYN, _ACK = 1, 2


async def yamux_echo(stream: ByteStream, protocol: str, payload: bytes) -> bytes:
    """Open stream 1, select ``protocol``, send ``payload``; return what comes back.

    ``payload`` plus the negotiation must fit Yamux's initial 256 KiB window
    both ways, so no window updates are needed. Pings are answered.
    """
    negotiation = encode_message(HEADER) + encode_message(protocol)
    out = _YAMUX_HEADER.pack(0, _DATA, _SYN, 1, len(negotiation)) + negotiation
    for start in range(0, len(payload), 65536):
        chunk = payload[start : start + 65536]
        out += _YAMUX_HEADER.pack(0, _DATA, 0, 1, len(chunk)) + chunk
    await stream.send(out)  # one write of many Noise frames
    buffer = bytearray()
    received = bytearray()
    while len(received) < len(negotiation) + len(payload):
        buffer += await stream.receive(1 << 20)
        while len(buffer) >= _YAMUX_HEADER.size:
            _, kind, flags, stream_id, length = _YAMUX_HEADER.unpack_from(buffer)
            body = length if kind == _DATA else 0
            if len(buffer) < _YAMUX_HEADER.size + body:
                break
            data = bytes(buffer[_YAMUX_HEADER.size : _YAMUX_HEADER.size + body])
            del buffer[: _YAMUX_HEADER.size + body]
            if kind == _DATA and stream_id == 1:
                received += data
            elif kind == _PING and flags & _SYN:
                await stream.send(_YAMUX_HEADER.pack(0, _PING, _ACK, 0, length))
    assert bytes(received[: len(negotiation)]) == negotiation
    return bytes(received[len(negotiation) :])


async def test_we_dial_py_libp2p_over_noise(pylibp2p: PeerProcess) -> None:
    their_id = PeerId.from_string(pylibp2p.ready.peer_id)
    host, port = Multiaddr(pylibp2p.ready.addr("tcp")).host_port()
    assert host == "127.0.0.1"
    with anyio.fail_after(STEP_TIMEOUT_S * 3):
        async with await anyio.connect_tcp(host, port) as tcp:
            protocol, plain = await select_outbound(tcp, [PROTOCOL_ID], timeout_s=STEP_TIMEOUT_S)
            assert protocol == PROTOCOL_ID
            secure = await noise_handshake(
                plain, PrivateKey.generate(), is_initiator=True, expected_peer=their_id
            )
            assert secure.remote_peer == their_id
            assert PeerId.from_public_key(secure.remote_public_key) == their_id
            muxer, muxed = await select_outbound(secure, [YAMUX], timeout_s=STEP_TIMEOUT_S)
            assert muxer == YAMUX
            # Bulk data through both Noise implementations: many full-size frames each way.
            payload = os.urandom(200_000)
            assert await yamux_echo(muxed, ECHO, payload) == payload


async def test_we_refuse_py_libp2p_posing_as_someone_else(pylibp2p: PeerProcess) -> None:
    someone_else = PeerId.from_public_key(PrivateKey.generate().public_key)
    host, port = Multiaddr(pylibp2p.ready.addr("tcp")).host_port()
    with anyio.fail_after(STEP_TIMEOUT_S * 2):
        async with await anyio.connect_tcp(host, port) as tcp:
            _, plain = await select_outbound(tcp, [PROTOCOL_ID], timeout_s=STEP_TIMEOUT_S)
            with pytest.raises(PeerIdMismatch):
                await noise_handshake(
                    plain, PrivateKey.generate(), is_initiator=True, expected_peer=someone_else
                )


async def test_py_libp2p_dials_our_noise_listener(pylibp2p: PeerProcess) -> None:
    their_id = PeerId.from_string(pylibp2p.ready.peer_id)
    identity = PrivateKey.generate()
    our_id = PeerId.from_public_key(identity.public_key)
    accepted: dict[str, Any] = {}
    done = anyio.Event()

    async def handle(tcp: SocketStream) -> None:
        async with tcp:
            _, plain = await select_inbound(
                tcp, lambda p: p == PROTOCOL_ID, lambda: [PROTOCOL_ID], timeout_s=STEP_TIMEOUT_S
            )
            secure: NoiseStream = await noise_handshake(
                plain, identity, is_initiator=False, expected_peer=their_id
            )
            accepted["peer"] = secure.remote_peer
            accepted["muxer"], _ = await select_inbound(
                secure, lambda p: p == YAMUX, lambda: [YAMUX], timeout_s=STEP_TIMEOUT_S
            )
            done.set()

    async def dial(addr: str) -> None:
        # We stop after negotiating Yamux, so py-libp2p's dial may report an error
        # once we hang up; what matters is what our side saw.
        try:
            accepted["dial"] = await request(pylibp2p, cmd="dial", addr=addr)
        except Exception as exc:  # the peer's own error report
            accepted["dial"] = exc

    with anyio.fail_after(STEP_TIMEOUT_S * 3):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener, anyio.create_task_group() as tg:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            tg.start_soon(listener.serve, handle)
            tg.start_soon(dial, f"/ip4/127.0.0.1/tcp/{port}/p2p/{our_id}")
            await done.wait()
            tg.cancel_scope.cancel()
    assert accepted["peer"] == their_id
    assert accepted["muxer"] == YAMUX


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
