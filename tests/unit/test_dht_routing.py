"""Kademlia routing table (dht/routing.py): buckets, ping eviction, closest, refresh."""

from __future__ import annotations

import hashlib
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.dht.keys import (
    KEY_BITS,
    bucket_index,
    distance,
    key_for_bytes,
    key_for_peer,
)
from lattica_nb.dht.routing import InsertResult, InsertStatus, RoutingTable
from lattica_nb.errors import ConfigError, LocalProtocolError
from lattica_nb.identity import PeerId
from lattica_nb.multiaddr import Multiaddr

ADDR_1 = Multiaddr("/ip4/192.0.2.1/tcp/4001")
ADDR_2 = Multiaddr("/ip4/192.0.2.2/tcp/4001")
_counter = itertools.count()


def peer(seed: object = None) -> PeerId:
    if seed is None:
        seed = next(_counter)
    return PeerId(b"\x12\x20" + hashlib.sha256(repr(seed).encode()).digest())


LOCAL = peer("local")


def peers_in_bucket(local: PeerId, index: int, count: int) -> list[PeerId]:
    """Deterministic peers whose key falls in bucket ``index`` of ``local`` (index 0..3)."""
    found: list[PeerId] = []
    local_key = key_for_peer(local)
    for seed in itertools.count():
        candidate = peer(("bucket", index, seed))
        if bucket_index(local_key, key_for_peer(candidate)) == index:
            found.append(candidate)
            if len(found) == count:
                return found
    raise AssertionError("unreachable")


def full_table(k: int = 3, *, index: int = 0) -> tuple[RoutingTable, list[PeerId], list[PeerId]]:
    """A table whose bucket ``index`` holds k peers added at t=0,1,2..; plus spare peers."""
    table = RoutingTable(LOCAL, k=k)
    found = peers_in_bucket(LOCAL, index, 2 * k + 2)
    members, spares = found[:k], found[k:]
    for t, p in enumerate(members):
        assert table.update(p, [ADDR_1], float(t)).status is InsertStatus.ADDED
    return table, members, spares


# -- membership --------------------------------------------------------------------------------


def test_local_peer_is_rejected() -> None:
    table = RoutingTable(LOCAL)
    assert table.update(LOCAL, [ADDR_1], 0.0) == InsertResult(InsertStatus.REJECTED)
    assert LOCAL not in table
    assert len(table) == 0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ConfigError):
        RoutingTable(LOCAL, k=0)
    with pytest.raises(ConfigError):
        RoutingTable(LOCAL, max_failures=0)
    with pytest.raises(ConfigError):
        RoutingTable(LOCAL, ping_timeout_s=0.0)


@given(st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=40, unique=True))
def test_peers_land_in_the_bucket_of_their_common_prefix(seeds: list[bytes]) -> None:
    table = RoutingTable(LOCAL, k=1000)
    for seed in seeds:
        table.update(peer(seed), [], 0.0)
    assert len(table) == len(seeds)
    for seed in seeds:
        p = peer(seed)
        index = bucket_index(table.local_key, key_for_peer(p))
        assert p in {e.peer_id for e in table.bucket_entries(index)}
        entry = table.get(p)
        assert entry is not None and entry.key == key_for_peer(p)
    assert sum(len(table.bucket_entries(i)) for i in range(KEY_BITS)) == len(seeds)


def test_update_adds_then_refreshes() -> None:
    table = RoutingTable(LOCAL)
    p = peer()
    assert table.update(p, [ADDR_1], 1.0) == InsertResult(InsertStatus.ADDED)
    assert table.update(p, [ADDR_2], 5.0) == InsertResult(InsertStatus.UPDATED)
    entry = table.get(p)
    assert entry is not None
    assert (entry.addrs, entry.added_at, entry.last_seen) == ((ADDR_2,), 1.0, 5.0)
    table.update(p, [], 6.0)  # no addresses: the known ones stay
    assert entry.addrs == (ADDR_2,) and entry.last_seen == 6.0
    assert p in table and len(table) == 1 and table.entries() == [entry]


def test_full_bucket_asks_to_ping_the_least_recently_seen() -> None:
    table, members, spares = full_table()
    result = table.update(spares[0], [ADDR_2], 10.0)
    assert result == InsertResult(InsertStatus.PENDING, to_ping=members[0])
    assert spares[0] not in table
    assert [e.peer_id for e in table.replacements(0)] == [spares[0]]
    # One ping per bucket at a time.
    assert table.update(spares[1], [], 11.0) == InsertResult(InsertStatus.PENDING)
    assert [e.peer_id for e in table.replacements(0)] == spares[:2]


def test_ping_alive_keeps_the_entry_and_the_next_candidate_pings_the_next_oldest() -> None:
    table, members, spares = full_table()
    assert table.update(spares[0], [], 10.0).to_ping == members[0]
    table.ping_result(members[0], True, 11.0)
    assert members[0] in table and spares[0] not in table
    entry = table.get(members[0])
    assert entry is not None and entry.last_seen == 11.0
    # The ping is answered: a new candidate triggers a ping of the now-oldest entry.
    assert table.update(spares[1], [], 12.0).to_ping == members[1]


def test_ping_dead_evicts_and_promotes_the_most_recent_candidate() -> None:
    table, members, spares = full_table()
    table.update(spares[0], [ADDR_2], 10.0)
    table.update(spares[1], [ADDR_2], 11.0)
    table.ping_result(members[0], False, 12.0)
    assert members[0] not in table
    promoted = table.get(spares[1])
    assert promoted is not None
    assert (promoted.added_at, promoted.last_seen, promoted.addrs) == (12.0, 11.0, (ADDR_2,))
    assert [e.peer_id for e in table.replacements(0)] == [spares[0]]
    assert len(table.bucket_entries(0)) == 3
    # The ping is over: the next candidate asks for a new one.
    assert table.update(spares[2], [], 13.0).to_ping == members[1]


def test_seeing_the_pinged_peer_alive_answers_the_ping() -> None:
    table, members, spares = full_table()
    assert table.update(spares[0], [], 10.0).to_ping == members[0]
    assert table.update(members[0], [], 11.0).status is InsertStatus.UPDATED
    assert table.update(spares[1], [], 12.0).to_ping == members[1]


def test_an_unreported_ping_is_forgotten_after_the_ping_timeout() -> None:
    table = RoutingTable(LOCAL, k=3, ping_timeout_s=30.0)
    members = peers_in_bucket(LOCAL, 0, 6)
    for t, p in enumerate(members[:3]):
        table.update(p, [], float(t))
    assert table.update(members[3], [], 10.0).to_ping == members[0]
    assert table.update(members[4], [], 39.0).to_ping is None  # still waiting for the report
    assert table.update(members[5], [], 40.0).to_ping == members[0]  # asked again


def test_candidate_seen_again_is_refreshed_in_the_cache() -> None:
    table, _, spares = full_table()
    table.update(spares[0], [ADDR_1], 10.0)
    table.update(spares[1], [], 11.0)
    assert table.update(spares[0], [ADDR_2], 12.0).status is InsertStatus.PENDING
    cached = table.replacements(0)
    assert [e.peer_id for e in cached] == [spares[1], spares[0]]
    assert (cached[1].addrs, cached[1].last_seen) == ((ADDR_2,), 12.0)


def test_replacement_cache_is_bounded_to_k() -> None:
    table, _, spares = full_table(k=3)
    extra = peers_in_bucket(LOCAL, 0, 20)[3:]
    for t, p in enumerate(extra):
        table.update(p, [], 10.0 + t)
    assert [e.peer_id for e in table.replacements(0)] == extra[-3:]
    assert set(spares) <= set(extra)


def test_failures_evict_after_max_failures_and_promote() -> None:
    table, members, spares = full_table()
    table.update(spares[0], [], 10.0)
    table.failed(members[2], 11.0)
    entry = table.get(members[2])
    assert entry is not None and entry.failures == 1
    table.update(members[2], [], 12.0)  # a success resets the count
    assert entry.failures == 0
    table.failed(members[2], 13.0)
    table.failed(members[2], 14.0)
    assert members[2] not in table
    assert spares[0] in table
    assert table.replacements(0) == []


def test_failure_without_candidate_just_removes() -> None:
    table = RoutingTable(LOCAL, max_failures=1)
    p = peer()
    table.update(p, [], 0.0)
    table.failed(p, 1.0)
    assert p not in table and len(table) == 0 and table.entries() == []
    assert table.closest(key_for_peer(p), 5) == []


def test_failed_candidate_leaves_the_cache() -> None:
    table, _, spares = full_table()
    table.update(spares[0], [], 10.0)
    table.failed(spares[0], 11.0)
    assert table.replacements(0) == []
    table.failed(peer("never seen"), 12.0)  # unknown peers are ignored


def test_remove() -> None:
    table, members, spares = full_table()
    table.update(spares[0], [], 10.0)
    assert table.remove(members[1]) is True
    assert members[1] not in table and spares[0] in table
    assert table.remove(members[1]) is False
    table.update(spares[1], [], 11.0)
    assert table.remove(spares[1]) is False  # a candidate: dropped, not an entry
    assert table.replacements(0) == []


def test_removing_the_pinged_peer_ends_its_ping() -> None:
    table, members, spares = full_table()
    assert table.update(spares[0], [], 10.0).to_ping == members[0]
    table.remove(members[0])  # spares[0] promoted; bucket full again
    assert spares[0] in table
    assert table.update(spares[1], [], 11.0).to_ping == members[1]
    table.ping_result(members[0], False, 12.0)  # late report about a removed peer: ignored
    assert len(table.bucket_entries(0)) == 3


# -- closest -----------------------------------------------------------------------------------


def brute_force(table: RoutingTable, key: bytes, count: int, exclude: set[PeerId]) -> list[PeerId]:
    ranked = sorted(
        (e for e in table.entries() if e.peer_id not in exclude),
        key=lambda e: distance(key, e.key),
    )
    return [e.peer_id for e in ranked[:count]]


@given(
    st.lists(st.integers(0, 10**6), min_size=0, max_size=120, unique=True),
    st.binary(min_size=32, max_size=32),
    st.integers(0, 30),
    st.integers(1, 8),
    st.data(),
)
@settings(max_examples=200)
def test_closest_matches_brute_force(
    seeds: list[int], target: bytes, count: int, k: int, data: st.DataObject
) -> None:
    table = RoutingTable(LOCAL, k=k)
    for t, seed in enumerate(seeds):
        table.update(peer(seed), [], float(t))
    members = [e.peer_id for e in table.entries()]
    exclude = set(data.draw(st.lists(st.sampled_from(members), max_size=5))) if members else set()
    for key in (target, table.local_key, *(e.key for e in table.entries()[:3])):
        got = [e.peer_id for e in table.closest(key, count, exclude=exclude)]
        assert got == brute_force(table, key, count, exclude)
        assert [e.peer_id for e in table.closest(key, count, exclude=list(exclude))] == got


def test_closest_on_a_large_table_matches_brute_force() -> None:
    table = RoutingTable(LOCAL)
    for i in range(5000):
        table.update(peer(("big", i)), [], float(i))
    rng = random.Random(7)
    assert 150 < len(table) < 300
    for i in range(200):
        key = key_for_bytes(rng.randbytes(8)) if i % 2 else table.random_key_in_bucket(i % 12, rng)
        assert [e.peer_id for e in table.closest(key, 20)] == brute_force(table, key, 20, set())


def test_closest_needs_a_keyspace_point() -> None:
    table = RoutingTable(LOCAL)
    with pytest.raises(LocalProtocolError, match="key_for_bytes"):
        table.closest(b"/lnb/some-record", 20)


# -- refresh -----------------------------------------------------------------------------------


def test_refresh_due_list() -> None:
    table = RoutingTable(LOCAL)
    assert table.buckets_to_refresh(0.0, 600.0) == [0]  # empty table: a random lookup
    for p in peers_in_bucket(LOCAL, 2, 1) + peers_in_bucket(LOCAL, 0, 1):
        table.update(p, [], 0.0)
    assert table.buckets_to_refresh(0.0, 600.0) == [0, 1, 2, 3]  # never refreshed = due
    rng = random.Random(1)
    table.touch_bucket(table.random_key_in_bucket(1, rng), 100.0)
    table.touch_bucket(table.random_key_in_bucket(3, rng), 200.0)
    assert table.buckets_to_refresh(650.0, 600.0) == [0, 2]
    assert table.buckets_to_refresh(700.0, 600.0) == [0, 1, 2]
    assert table.buckets_to_refresh(800.0, 600.0) == [0, 1, 2, 3]
    # A lookup for our own key refreshes the nearest bucket.
    table.touch_bucket(table.local_key, 800.0)
    assert 255 not in table.buckets_to_refresh(800.0, 600.0)


def test_refresh_stops_at_the_last_bucket() -> None:
    table = RoutingTable(LOCAL)
    rng = random.Random(3)
    for i in range(KEY_BITS):
        table.touch_bucket(table.random_key_in_bucket(i, rng), 0.0)
    assert table.buckets_to_refresh(1.0, 600.0) == []
    assert table.buckets_to_refresh(600.0, 600.0) == [0]


@given(st.integers(0, KEY_BITS - 1), st.integers(0, 2**32))
def test_random_key_lands_in_its_bucket(index: int, seed: int) -> None:
    table = RoutingTable(LOCAL)
    key = table.random_key_in_bucket(index, random.Random(seed))
    assert bucket_index(table.local_key, key) == index


def test_random_key_index_is_checked() -> None:
    table = RoutingTable(LOCAL)
    for index in (-1, KEY_BITS):
        with pytest.raises(LocalProtocolError):
            table.random_key_in_bucket(index, random.Random(0))


def test_refresh_preimages_hash_into_the_wanted_bucket() -> None:
    import random as _random

    from lattica_nb.dht.keys import bucket_index, key_for_bytes, preimage_in_bucket

    local = key_for_bytes(b"local node")
    rng = _random.Random(7)
    for index in range(12):
        key = preimage_in_bucket(local, index, rng)
        assert key is not None and bucket_index(local, key_for_bytes(key)) == index
    assert preimage_in_bucket(local, 200, rng, max_tries=64) is None
