"""A mixed Kademlia mesh: three Lattica SDK peers (rust-libp2p 0.54) and three lattica_nb nodes.

The Lattica SDK sends STUN requests to public servers whenever a node is
built, so the whole mesh runs inside a fresh loopback-only network namespace
(tests/interop/drivers/lattica_dht_mesh.py), once per transport. The driver
gathers observations; these tests assert on them: every node finds every
other through the DHT, a record a Lattica peer stored reads back byte for
byte through ``node.dht.get_raw``, and provider records cross both ways.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lattica_nb.testing.foreign_peers import lattica_sdk_unavailable
from lattica_nb.testing.netns import loopback_namespace_available, netns_command

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

DRIVER = Path(__file__).resolve().parent / "drivers" / "lattica_dht_mesh.py"
DRIVER_TIMEOUT_S = 240
RECORD_VALUE = bytes(range(256)) + b"\x00lattica raw value\xff"  # the driver's RECORD_VALUE


@pytest.fixture(scope="module", params=["tcp", "quic-v1"])
def observed(request: pytest.FixtureRequest) -> dict:
    reason = loopback_namespace_available()
    if reason is not None:
        pytest.skip(f"needs a loopback-only network namespace: {reason}")
    reason = lattica_sdk_unavailable()
    if reason is not None:
        pytest.skip(reason)
    run = subprocess.run(
        netns_command([sys.executable, str(DRIVER), "--transport", request.param]),
        capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S, check=False,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode == 0 and lines, f"driver failed:\n{run.stderr[-3000:]}"
    return dict(json.loads(lines[-1]))


def lattica_names(observed: dict) -> list[str]:
    return sorted(name for name in observed["nodes"] if name.startswith("L"))


def our_names(observed: dict) -> list[str]:
    return sorted(name for name in observed["nodes"] if name.startswith("N"))


def test_the_mesh_has_three_of_each(observed):
    assert lattica_names(observed) == ["L0", "L1", "L2"]
    assert our_names(observed) == ["N0", "N1", "N2"]


def test_our_nodes_bootstrap(observed):
    for name, outcome in observed["ours_bootstrap"].items():
        assert outcome.get("ok"), f"{name}: {outcome}"


def test_every_lattica_peer_meets_every_node(observed):
    for name in lattica_names(observed):
        seen = observed["lattica_sees"][name]
        others = set(observed["nodes"]) - {name}
        assert set(seen) == others
        missing = {other: seen[other] for other in others if not seen[other].get("found")}
        assert not missing, f"{name} never met {missing}"


def test_a_routed_find_peer_goes_through_lattica_peers(observed):
    routed = observed["ours_find_routed"]
    assert "error" not in routed, routed
    assert not routed["connected_before"] and not routed["known_before"], routed
    assert set(routed["expected"]) & set(routed["addrs"]), routed


def test_every_lattica_nb_node_finds_every_node_through_the_dht(observed):
    for name in our_names(observed):
        found = observed["ours_find"][name]
        others = set(observed["nodes"]) - {name}
        assert set(found) == others
        for other in sorted(others):
            entry = found[other]
            assert "error" not in entry, f"{name} find_peer({other}): {entry['error']}"
            assert entry["found"], f"{name} did not find {other}"
            assert entry["listen_addr_found"], (
                f"{name} found {other} at {entry['addrs']}, none of them its listen address")


def test_lattica_stores_and_reads_its_own_record(observed):
    record = observed["record"]
    assert record["lattica_put"] == {"ok": True}
    assert record["lattica_get"]["found"]
    assert bytes.fromhex(record["lattica_get"]["value_hex"]) == RECORD_VALUE


def test_get_raw_returns_the_bytes_lattica_stored(observed):
    record = observed["record"]
    expected_raw = record["lattica_get"]["expected_raw_hex"]
    assert expected_raw is not None
    for name in our_names(observed):
        ours = record["ours_get"][name]
        assert "error" not in ours, f"{name} get_raw: {ours['error']}"
        assert ours["found"], f"{name} found no record"
        assert ours["raw_hex"] == expected_raw, f"{name} got other bytes than Lattica stored"
        assert bytes.fromhex(ours["value_hex"]) == RECORD_VALUE
        assert ours["expiration"] == record["lattica_get"]["expiration"]


def test_lattica_finds_our_provider_record(observed):
    providers = observed["providers"]
    assert providers["ours_provide"].get("ok"), providers["ours_provide"]
    for name in lattica_names(observed):
        answer = providers["lattica_find"][name]
        assert "error" not in answer, f"{name} get_providers: {answer['error']}"
        assert providers["our_provider"] in answer["providers"], f"{name}: {answer}"


def test_we_find_lattica_provider_record(observed):
    providers = observed["providers"]
    assert providers["lattica_provide"] == {"ok": True}
    for name in our_names(observed):
        answer = providers["ours_find"][name]
        assert "error" not in answer, f"{name} find_providers: {answer['error']}"
        assert providers["lattica_provider"] in answer["providers"], f"{name}: {answer}"


def test_no_lattica_peer_panicked(observed):
    assert observed["lattica_stderr_tails"] == {}
