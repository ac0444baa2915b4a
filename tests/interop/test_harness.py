"""The foreign-peer harness itself works: two Lattica peers, two py-libp2p peers.

These tests prove the tools the interop tests of our own node rely on
(``lattica_nb.testing.netns``, ``lattica_nb.testing.foreign_peers`` and the peer
scripts in ``tests/interop/peers``) before any of our code is involved.

Lattica SDK peers are only ever built inside a loopback-only network namespace
(the SDK sends STUN requests to public servers on every ``build()``), through a
driver script that runs in the namespace and starts the peers there. py-libp2p
peers run in such a namespace when one can be made, and otherwise on 127.0.0.1
with mDNS, UPnP and bootstrap off (checked with strace: they then send nothing
beyond loopback).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lattica_nb.testing.foreign_peers import (
    ForeignPeerError,
    PeerProcess,
    find_pylibp2p_python,
    lattica_sdk_unavailable,
    pylibp2p_unavailable,
)
from lattica_nb.testing.netns import (
    loopback_namespace_available,
    netns_command,
    netns_join_command,
    run_in_loopback_namespace,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
DRIVERS = HERE / "drivers"
DRIVER_TIMEOUT_S = 90.0
LATTICA_PROTOCOLS = {"/ipfs/id/1.0.0", "/ipfs/id/push/1.0.0", "/ipfs/ping/1.0.0", "/lattica/1.0.0"}


def _require_namespace() -> None:
    reason = loopback_namespace_available()
    if reason is not None:
        pytest.skip(reason)


def _require_lattica() -> None:
    _require_namespace()
    reason = lattica_sdk_unavailable()
    if reason is not None:
        pytest.skip(reason)


def _last_json_line(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    raise AssertionError(
        f"driver printed no JSON line (exit {done.returncode}); stderr ends with:\n"
        f"{done.stderr[-3000:]}"
    )


# -- the namespace -------------------------------------------------------------------------
def test_namespace_has_only_loopback_and_it_works() -> None:
    _require_namespace()
    probe = (
        "import socket\n"
        "names = [l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]]\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
        "s.bind(('127.0.0.1', 0)); s.sendto(b'x', s.getsockname())\n"
        "print(','.join(names), s.recv(1).decode())\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 9), timeout=1)\n"
        "except OSError as e:\n"
        "    print('unreachable', e.errno)\n"
    )
    done = run_in_loopback_namespace([sys.executable, "-c", probe], timeout_s=30)
    lines = done.stdout.split("\n")
    assert lines[0] == "lo x"
    assert lines[1].startswith("unreachable")


def test_lattica_peer_refuses_a_namespace_with_another_interface() -> None:
    """The peer script's own guard: it exits before building a node.

    Checked inside a namespace whose other interfaces are a veth pair with both
    ends inside it, no address and no route, so nothing could leave even if the
    guard failed.
    """
    _require_lattica()
    script = 'ip link set lo up && ip link add guard0 type veth peer name guard1 && exec "$@"'
    probe = ["unshare", "--net", "--", "sh", "-c", script, "sh", "true"]
    made = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot add a veth pair here: {made.stderr.strip()}")
    argv = [*probe[:-1], sys.executable, str(PEERS / "lattica_peer.py")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "refusing to build a Lattica node" in done.stderr
    assert "guard0" in done.stderr
    assert done.stdout == ""


# -- two Lattica peers ---------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["quic-v1", "tcp"])
def test_two_lattica_peers_meet_through_a_bootstrap(transport: str) -> None:
    _require_lattica()
    driver = [sys.executable, str(DRIVERS / "two_lattica_peers.py"), "--transport", transport]
    facts = _last_json_line(run_in_loopback_namespace(driver, timeout_s=DRIVER_TIMEOUT_S))

    a, b = facts["a"], facts["b"]
    assert a["peer_id"].startswith("12D3KooW") and b["peer_id"].startswith("12D3KooW")
    for addr in a["listen_addrs"]:
        assert addr.startswith("/ip4/127.0.0.1/")
        assert addr.endswith("/p2p/" + a["peer_id"])
    assert facts["b_found_a"]["found"], facts
    assert facts["a_found_b"]["found"], facts

    about_a = facts["info_b_about_a"]
    assert about_a["agent_version"].startswith("rust-libp2p/")
    assert about_a["protocol_version"] == "/lattica/1.0.0"
    assert LATTICA_PROTOCOLS <= set(about_a["protocols"])
    # A's identify listen addresses are its real ports (what the harness announced).
    announced = {addr.rsplit("/p2p/", 1)[0] for addr in a["listen_addrs"]}
    assert announced == set(about_a["listen_addresses"])
    # B reached A over the transport of the bootstrap address.
    assert any(f"/{transport}" in addr for addr in about_a["addresses"])

    about_b = facts["info_a_about_b"]
    assert about_b["agent_version"].startswith("rust-libp2p/")
    assert LATTICA_PROTOCOLS <= set(about_b["protocols"])
    assert facts["rtt_ms_b_to_a"] >= 0


# -- two py-libp2p peers -------------------------------------------------------------------
@pytest.fixture
def pylibp2p_python() -> str:
    reason = pylibp2p_unavailable()
    if reason is not None:
        pytest.skip(reason)
    python = find_pylibp2p_python()
    assert python is not None
    return str(python)


@pytest.fixture
def pylibp2p_pair(pylibp2p_python: str) -> Iterator[tuple[PeerProcess, PeerProcess]]:
    """Two py-libp2p peers; in one loopback-only namespace when one can be made."""
    peer = [pylibp2p_python, str(PEERS / "pylibp2p_peer.py"), "--echo", "/harness/echo/1.0.0"]
    in_namespace = loopback_namespace_available() is None
    with PeerProcess(netns_command(peer) if in_namespace else peer, name="py-a") as a:
        a.start(timeout_s=60)
        second = netns_join_command(a.pid, peer) if in_namespace else peer
        with PeerProcess(second, name="py-b") as b:
            b.start(timeout_s=60)
            yield a, b


@pytest.mark.parametrize("transport", ["quic-v1", "tcp"])
def test_two_pylibp2p_peers_dial_and_ping(
    pylibp2p_pair: tuple[PeerProcess, PeerProcess], transport: str
) -> None:
    a, b = pylibp2p_pair
    dialed = b.request({"cmd": "dial", "addr": a.ready.addr(transport)}, timeout_s=30)
    assert dialed["peer"] == a.ready.peer_id
    assert a.request({"cmd": "wait_peer", "peer": b.ready.peer_id, "timeout": 10})["found"]

    conns = b.request({"cmd": "conns"})["conns"]
    assert [c["transport"] for c in conns if c["peer"] == a.ready.peer_id] == [transport]

    rtts = b.request({"cmd": "ping", "peer": a.ready.peer_id, "count": 5})["rtts_ms"]
    assert len(rtts) == 5
    assert all(0 < rtt < 1000 for rtt in rtts)

    info = b.request({"cmd": "peer_info", "peer": a.ready.peer_id})["info"]
    assert info["agent_version"] == "py-libp2p/0.8.1"
    assert {"/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/harness/echo/1.0.0"} <= set(info["protocols"])

    data = base64.b64encode(b"harness").decode("ascii")
    echoed = b.request(
        {"cmd": "echo", "peer": a.ready.peer_id, "protocol": "/harness/echo/1.0.0",
         "data_b64": data}
    )  # fmt: skip
    assert echoed["data_b64"] == data


def test_peer_process_reports_command_errors(
    pylibp2p_pair: tuple[PeerProcess, PeerProcess],
) -> None:
    _, b = pylibp2p_pair
    with pytest.raises(ForeignPeerError, match="unknown command"):
        b.request({"cmd": "no-such-command"})
    # The peer keeps serving after an error.
    assert b.request({"cmd": "peers"})["peers"] == []
