"""lattica_nb <-> Lattica SDK (rust-libp2p 0.54) over QUIC and over TCP, each side dialing once.

The Lattica SDK sends STUN requests to public servers whenever a node is
built, so the whole exchange runs inside a fresh loopback-only network
namespace (tests/interop/drivers/lattica_connect.py), once per transport.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lattica_nb.testing.netns import loopback_namespace_available, netns_command

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

DRIVER = Path(__file__).resolve().parent / "drivers" / "lattica_connect.py"


@pytest.fixture(scope="module", params=["quic-v1", "tcp"])
def observed(request: pytest.FixtureRequest) -> dict:
    reason = loopback_namespace_available()
    if reason is not None:
        pytest.skip(f"needs a loopback-only network namespace: {reason}")
    if importlib.util.find_spec("lattica") is None:
        pytest.skip("the lattica SDK is not installed (pip install -e '.[interop]')")
    run = subprocess.run(
        netns_command([sys.executable, str(DRIVER), request.param]),
        capture_output=True, text=True, timeout=150, check=False,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode == 0 and lines, f"driver failed:\n{run.stderr[-3000:]}"
    result = dict(json.loads(lines[-1]))
    assert result["transports"] == [request.param], "only the transport under test was used"
    return result


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_we_identify_the_lattica_peer(observed, direction):
    ours = observed[direction]
    assert ours["agent_version"].startswith("rust-libp2p/")
    assert ours["protocol_version"] == "/lattica/1.0.0"
    assert {"/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/lattica/1.0.0"} <= set(ours["protocols"])
    assert ours["observed_addr"].startswith("/ip4/127.0.0.1/")


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_the_lattica_peer_identifies_us(observed, direction):
    theirs = observed[f"{direction}_lattica_view"]
    assert theirs["agent_version"].startswith("lattica-nb/")
    assert theirs["protocol_version"] == "/lattica/1.0.0"
    assert {"/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"} <= set(theirs["protocols"])
    assert any(observed["our_peer_id"] in addr for addr in theirs["addresses"])


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_ping_round_trips(observed, direction):
    rtts = observed[f"{direction}_ping_ms"]
    assert len(rtts) == 5 and all(0 < rtt < 1000 for rtt in rtts)


def test_lattica_pings_us_too(observed):
    assert 0 < observed["outbound_lattica_rtt"]["rtt_ms"] < 1000
