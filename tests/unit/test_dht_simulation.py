"""The DHT cores in a simulated network of a few hundred nodes (lattica_nb.testing.kadsim)."""

from __future__ import annotations

import pytest

from lattica_nb.errors import ConfigError
from lattica_nb.testing.kadsim import SimConfig, SimReport, simulate

NODES = 250


@pytest.fixture(scope="module")
def churned() -> SimReport:
    return simulate(SimConfig(nodes=NODES, churn=0.1, lookups=150, records=30, seed=7))


def test_lookups_succeed_with_ten_percent_churn(churned: SimReport) -> None:
    assert churned.alive_at_end == NODES - NODES // 10
    assert [row.kind for row in churned.rows] == ["FIND_NODE", "GET_VALUE", "GET_PROVIDERS"]
    for row in churned.rows:
        assert row.lookups == 150
        assert row.success_rate >= 0.99, row


def test_hops_and_requests_stay_bounded(churned: SimReport) -> None:
    for row in churned.rows:
        assert 0 <= row.hops_median <= 3, row
        assert row.hops_p99 <= 6, row
        assert row.requests_per_lookup <= 12, row
        assert row.latency_p99_s < 3.0, row
    assert churned.join_requests_per_node <= 40
    assert churned.table_size_median >= 20


def test_departed_nodes_are_asked_and_cost_time(churned: SimReport) -> None:
    # The churn is real: departed nodes stay in tables and lookups send them requests.
    assert sum(row.departed_per_lookup for row in churned.rows) > 0


def test_the_same_seed_gives_the_same_run() -> None:
    config = SimConfig(nodes=120, churn=0.1, lookups=40, records=10, seed=3)
    assert simulate(config) == simulate(config)


def test_message_loss_and_heavy_churn_degrade_gracefully() -> None:
    lossy = simulate(SimConfig(nodes=150, churn=0.3, loss=0.05, lookups=60, records=15, seed=5))
    for row in lossy.rows:
        assert row.success_rate >= 0.9, row
        assert row.timeouts_per_lookup > 0 or row.departed_per_lookup > 0


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        SimConfig(nodes=1)
    with pytest.raises(ConfigError):
        SimConfig(churn=1.0)
    with pytest.raises(ConfigError):
        SimConfig(min_latency_s=0.1, max_latency_s=0.01)
