"""lattica_nb <-> py-libp2p 0.8.1 (an independent Python implementation), each side dialing.

Over QUIC (libp2p TLS) and over TCP (multistream, Noise XX, Yamux).

py-libp2p lives in its own virtualenv (its pins clash with ours) and listens on
127.0.0.1 with discovery off, so this runs on the host's loopback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from lattica_nb import Node, NodeConfig, PeerId
from lattica_nb.testing.foreign_peers import (
    PeerProcess,
    find_pylibp2p_python,
    pylibp2p_unavailable,
)

pytestmark = [pytest.mark.interop, pytest.mark.anyio, pytest.mark.timeout(120)]

PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "pylibp2p_peer.py"
LISTEN = {"quic-v1": "/ip4/127.0.0.1/udp/0/quic-v1", "tcp": "/ip4/127.0.0.1/tcp/0"}


@pytest.fixture(params=sorted(LISTEN))
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pylibp2p(transport: str) -> Iterator[PeerProcess]:
    reason = pylibp2p_unavailable()
    if reason is not None:
        pytest.skip(reason)
    python = find_pylibp2p_python()
    assert python is not None
    argv = [str(python), str(PEER_SCRIPT), "--listen", LISTEN[transport]]
    with PeerProcess(argv, name="py-libp2p") as peer:
        peer.start(timeout_s=60)
        yield peer


async def request(process: PeerProcess, **command: object) -> dict:
    return await anyio.to_thread.run_sync(lambda: process.request(command, timeout_s=30))


def only(transport: str) -> NodeConfig:
    return NodeConfig(ephemeral=True, listen=(LISTEN[transport],))


async def test_we_dial_py_libp2p_identify_and_ping(pylibp2p: PeerProcess, transport: str):
    async with Node(only(transport)) as node:
        info = await node.connect(pylibp2p.ready.addr(transport))
        assert str(info.peer_id) == pylibp2p.ready.peer_id
        assert info.agent_version is not None and info.agent_version.startswith("py-libp2p/")
        assert {"/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"} <= set(info.protocols)
        rtts = await node.ping(info.peer_id, count=5)
        assert len(rtts) == 5 and all(0 < r < 1.0 for r in rtts)
        (conn,) = node._manager.connections(info.peer_id)
        assert conn.remote_addr.transport() == transport


async def test_py_libp2p_dials_us_identifies_and_pings(pylibp2p: PeerProcess, transport: str):
    async with Node(only(transport)) as node:
        reply = await request(pylibp2p, cmd="dial", addr=str(node.listen_addrs[0]))
        assert reply["peer"] == str(node.peer_id)
        info = (await request(pylibp2p, cmd="peer_info", peer=str(node.peer_id)))["info"]
        assert info["agent_version"].startswith("lattica-nb/")
        assert "/ipfs/ping/1.0.0" in info["protocols"]
        rtts = (await request(pylibp2p, cmd="ping", peer=str(node.peer_id), count=5))["rtts_ms"]
        assert len(rtts) == 5 and all(0 < r < 1000 for r in rtts)
        assert PeerId.from_string(pylibp2p.ready.peer_id) in [p.peer_id for p in node.peers()]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
