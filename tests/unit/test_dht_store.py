"""DHT record and provider stores, and their SQLite file (sans-IO cores, real files)."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest

import lattica_nb.dht.database
import lattica_nb.dht.records
import lattica_nb.dht.store
from lattica_nb.dht.keys import KadKey, distance, key_for_bytes
from lattica_nb.dht.store import (
    Database,
    ProviderRecord,
    ProviderStore,
    RecordStore,
    StoredRecord,
    StoreLimits,
)
from lattica_nb.errors import ConfigError, StorageError
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.multiaddr import Multiaddr

NOW = 1_700_000_000.0
LATER = NOW + 3600
LOCAL = key_for_bytes(b"local node")
ADDR = Multiaddr("/ip4/10.0.0.1/tcp/4001")
ADDR6 = Multiaddr("/ip6/::1/udp/4001/quic-v1")


def by_distance(count: int, local: KadKey = LOCAL) -> list[bytes]:
    """``count`` keys, closest to ``local`` first."""
    keys = [b"key-%d" % i for i in range(count)]
    return sorted(keys, key=lambda k: distance(key_for_bytes(k), local))


def remote(key: bytes, value: bytes = b"v", expires_at: float = LATER) -> StoredRecord:
    return StoredRecord(key, value, NOW, expires_at)


def local(key: bytes, value: bytes = b"mine", expires_at: float = LATER) -> StoredRecord:
    return StoredRecord(key, value, NOW, expires_at, local=True)


def peer() -> PeerId:
    return PeerId.from_public_key(PrivateKey.generate().public_key)


ME = peer()


def provider(key: bytes, who: PeerId, expires_at: float = LATER) -> ProviderRecord:
    return ProviderRecord(key, who, (ADDR,), expires_at, local=who == ME)


def keys_of(store: RecordStore, candidates: list[bytes]) -> set[bytes]:
    return {k for k in candidates if store.get(k, NOW) is not None}


# -- records -------------------------------------------------------------------------------
def test_put_get_replace_remove() -> None:
    store = RecordStore(LOCAL)
    assert store.get(b"k", NOW) is None
    assert store.put(remote(b"k", b"one"), NOW)
    assert store.put(remote(b"k", b"two"), NOW)
    assert store.get(b"k", NOW) == remote(b"k", b"two")
    assert len(store) == 1
    store.remove(b"k")
    store.remove(b"k")
    assert store.get(b"k", NOW) is None and len(store) == 0


def test_expiry() -> None:
    store = RecordStore(LOCAL)
    assert not store.put(remote(b"old", expires_at=NOW), NOW)  # already expired
    store.put(remote(b"a", expires_at=NOW + 10), NOW)
    store.put(local(b"b", expires_at=NOW + 20), NOW)
    store.put(remote(b"c", expires_at=NOW + 30), NOW)
    assert store.get(b"a", NOW + 9.9) is not None
    assert store.get(b"a", NOW + 10) is None  # expired at expires_at exactly
    assert store.expire(NOW + 20) == 2
    assert len(store) == 1 and store.local_records() == []
    assert store.get(b"c", NOW + 20) is not None


def test_remote_eviction_keeps_the_closest_keys() -> None:
    c = by_distance(10)
    store = RecordStore(LOCAL, StoreLimits(max_records=4))
    for key in (c[2], c[4], c[6], c[8]):
        assert store.put(remote(key), NOW)
    assert not store.put(remote(c[9]), NOW)  # farther than the farthest held: refused
    assert keys_of(store, c) == {c[2], c[4], c[6], c[8]}
    assert store.put(remote(c[5]), NOW)  # closer: the farthest (c8) goes
    assert keys_of(store, c) == {c[2], c[4], c[5], c[6]}
    assert store.put(remote(c[0]), NOW)  # c6 goes
    assert keys_of(store, c) == {c[0], c[2], c[4], c[5]}
    assert not store.put(remote(c[6]), NOW)  # now farther than c5
    assert store.put(remote(c[5], b"newer"), NOW)  # a held key is replaced in place
    assert keys_of(store, c) == {c[0], c[2], c[4], c[5]}
    assert len(store) == 4


def test_local_records_have_their_own_limit_and_are_never_evicted() -> None:
    c = by_distance(10)
    store = RecordStore(LOCAL, StoreLimits(max_records=2, max_local_records=2))
    assert store.put(local(c[9]), NOW)  # the farthest key of all
    assert store.put(local(c[8]), NOW)
    assert not store.put(local(c[7]), NOW)  # local limit reached
    assert store.put(local(c[8], b"v2"), NOW)  # replacing a local record is fine
    for key in (c[0], c[1], c[2]):
        store.put(remote(key), NOW)
    assert keys_of(store, c) == {c[0], c[1], c[8], c[9]}
    assert [r.key for r in store.local_records()] == [c[9], c[8]]  # last put last
    # a newer remote record (selected by the caller) supersedes ours: we stop republishing it
    assert store.put(remote(c[9], b"theirs"), NOW)
    assert store.get(c[9], NOW) == remote(c[9], b"theirs")
    assert [r.key for r in store.local_records()] == [c[8]]
    assert keys_of(store, c) == {c[0], c[1], c[8], c[9]}


def test_local_put_takes_over_a_remote_key() -> None:
    c = by_distance(5)
    store = RecordStore(LOCAL, StoreLimits(max_records=2))
    store.put(remote(c[3]), NOW)
    store.put(remote(c[4]), NOW)
    assert store.put(local(c[4]), NOW)
    assert store.put(remote(c[2]), NOW)  # c4 left the remote table: room again
    assert keys_of(store, c) == {c[2], c[3], c[4]}
    assert store.local_records() == [local(c[4])]


# -- providers -----------------------------------------------------------------------------
def test_providers_add_get_refresh() -> None:
    store = ProviderStore(LOCAL)
    a, b = peer(), peer()
    assert store.add(provider(b"k", a), NOW)
    assert store.add(provider(b"k", b), NOW)
    assert [r.provider for r in store.get(b"k", NOW)] == [b, a]  # most recent first
    assert store.add(provider(b"k", a), NOW)  # re-announced: now the most recent
    assert [r.provider for r in store.get(b"k", NOW)] == [a, b]
    assert [r.provider for r in store.get(b"k", NOW, limit=1)] == [a]
    assert store.get(b"k", NOW, limit=0) == [] and store.get(b"nope", NOW) == []
    assert store.get(b"k", NOW)[0].addrs == (ADDR,)


def test_providers_per_key_cap_evicts_the_oldest_remote() -> None:
    store = ProviderStore(LOCAL, StoreLimits(max_providers_per_key=3))
    a, b, c, d = peer(), peer(), peer(), peer()
    store.add(provider(b"k", ME), NOW)  # ours: the oldest, but never evicted
    store.add(provider(b"k", a), NOW)
    store.add(provider(b"k", b), NOW)
    assert store.add(provider(b"k", c), NOW)  # a goes
    assert {r.provider for r in store.get(b"k", NOW)} == {ME, b, c}
    store.add(provider(b"k", b), NOW)  # b refreshed: c is now the oldest remote
    assert store.add(provider(b"k", d), NOW)
    assert {r.provider for r in store.get(b"k", NOW)} == {ME, b, d}


def test_provider_keys_cap_evicts_the_farthest_key() -> None:
    c = by_distance(6)
    store = ProviderStore(LOCAL, StoreLimits(max_provider_keys=3))
    for key in (c[1], c[3], c[4]):
        assert store.add(provider(key, peer()), NOW)
    assert not store.add(provider(c[5], peer()), NOW)  # farther: refused
    assert store.add(provider(c[4], peer()), NOW)  # a held key takes more providers
    assert store.add(provider(c[2], peer()), NOW)  # closer: c4 (both providers) goes
    assert store.get(c[4], NOW) == [] and len(store) == 3
    assert store.add(provider(c[0], peer()), NOW)  # c3 goes
    assert [k for k in c if store.get(k, NOW)] == [c[0], c[1], c[2]]


def test_local_provider_keys_have_their_own_limit() -> None:
    c = by_distance(6)
    store = ProviderStore(LOCAL, StoreLimits(max_provider_keys=1, max_local_records=2))
    assert store.add(provider(c[5], ME), NOW)
    assert store.add(provider(c[4], ME), NOW)
    assert not store.add(provider(c[3], ME), NOW)
    assert store.add(provider(c[0], peer()), NOW)  # the one remote key
    assert store.add(provider(c[5], peer()), NOW)  # joins our key, no remote key used
    assert store.local_keys() == [c[5], c[4]]
    assert len(store) == 3


def test_remove_local_demotes_the_key_under_the_remote_rule() -> None:
    c = by_distance(6)
    store = ProviderStore(LOCAL, StoreLimits(max_provider_keys=1))
    store.add(provider(c[1], ME), NOW)
    store.add(provider(c[1], other := peer()), NOW)
    store.add(provider(c[5], peer()), NOW)  # the one remote key, far away
    store.remove_local(c[1])  # c1 becomes remote and is closer: c5 goes
    assert store.local_keys() == []
    assert [r.provider for r in store.get(c[1], NOW)] == [other]
    assert store.get(c[5], NOW) == []
    store.add(provider(c[5], ME), NOW)
    store.remove_local(c[5])  # no other provider: the key is gone
    assert store.get(c[5], NOW) == [] and len(store) == 1
    store.remove_local(b"never provided")


def test_providers_expire() -> None:
    store = ProviderStore(LOCAL)
    a, b = peer(), peer()
    assert not store.add(provider(b"k", a, expires_at=NOW), NOW)
    store.add(provider(b"k", a, expires_at=NOW + 10), NOW)
    store.add(provider(b"k", b, expires_at=NOW + 20), NOW)
    store.add(provider(b"mine", ME, expires_at=NOW + 10), NOW)
    assert [r.provider for r in store.get(b"k", NOW + 10)] == [b]
    assert store.expire(NOW + 10) == 2
    assert store.local_keys() == [] and len(store) == 1
    assert store.expire(NOW + 20) == 1
    assert len(store) == 0


# -- persistence ---------------------------------------------------------------------------
def test_records_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "dht.db"
    with Database.open(path) as db:
        store = RecordStore(LOCAL, db=db)
        store.put(remote(b"a", b"\x00binary\xff"), NOW)
        store.put(local(b"/lnb/mine"), NOW)
        store.put(remote(b"gone"), NOW)
        store.remove(b"gone")
        store.put(remote(b"short", expires_at=NOW + 5), NOW)
        store.put(remote(b"a", b"replaced"), NOW)
    with Database.open(path) as db:
        store = RecordStore(LOCAL, db=db, now=NOW + 5)  # b"short" has expired
        assert store.get(b"a", NOW) == remote(b"a", b"replaced")
        assert store.local_records() == [local(b"/lnb/mine")]
        assert store.get(b"gone", NOW) is None and len(store) == 2
    with Database.open(path) as db:
        assert {r.key for r in db.load_records()} == {b"a", b"/lnb/mine"}  # expired row deleted


def test_reopening_with_smaller_limits_applies_the_eviction_rule(tmp_path: Path) -> None:
    c = by_distance(6)
    with Database.open(tmp_path / "dht.db") as db:
        store = RecordStore(LOCAL, db=db)
        for key in c:
            store.put(remote(key), NOW)
    with Database.open(tmp_path / "dht.db") as db:
        store = RecordStore(LOCAL, StoreLimits(max_records=2), db)
        assert keys_of(store, c) == {c[0], c[1]}
        assert not store.put(remote(c[2]), NOW)
    with Database.open(tmp_path / "dht.db") as db:
        assert len(RecordStore(LOCAL, db=db)) == 2


def test_providers_survive_close_and_reopen(tmp_path: Path) -> None:
    a = peer()
    with Database.open(tmp_path / "dht.db") as db:
        store = ProviderStore(LOCAL, db=db)
        store.add(ProviderRecord(b"k", a, (ADDR, ADDR6), LATER), NOW)
        store.add(provider(b"k", ME), NOW)
        store.add(provider(b"old", peer(), expires_at=NOW + 1), NOW)
        store.add(provider(b"dropped", ME), NOW)
        store.remove_local(b"dropped")
    with Database.open(tmp_path / "dht.db") as db:
        store = ProviderStore(LOCAL, db=db, now=NOW + 1)
        assert store.get(b"k", NOW) == [provider(b"k", ME), ProviderRecord(b"k", a, (ADDR, ADDR6),
                                                                           LATER)]
        assert store.local_keys() == [b"k"]
        assert store.get(b"old", NOW) == [] and store.get(b"dropped", NOW) == []
        assert len(store) == 1


def test_records_and_providers_share_one_file(tmp_path: Path) -> None:
    with Database.open(tmp_path / "dht.db") as db:
        RecordStore(LOCAL, db=db).put(remote(b"k"), NOW)
        ProviderStore(LOCAL, db=db).add(provider(b"k", ME), NOW)
    with Database.open(tmp_path / "dht.db") as db:
        assert RecordStore(LOCAL, db=db).get(b"k", NOW) == remote(b"k")
        assert ProviderStore(LOCAL, db=db).local_keys() == [b"k"]


def test_routing_rows_round_trip(tmp_path: Path) -> None:
    rows = [(peer(), (ADDR, ADDR6), NOW - i) for i in range(5)]
    with Database.open(tmp_path / "dht.db", max_routing_entries=3) as db:
        assert db.load_routing() == []
        db.save_routing(rows[::-1])
        db.save_routing(rows[::-1])  # saving replaces, it does not append
    with Database.open(tmp_path / "dht.db", max_routing_entries=3) as db:
        assert db.load_routing() == rows[:3]  # the most recently seen are kept
        db.save_routing([])
        assert db.load_routing() == []


def test_unparseable_rows_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "dht.db"
    a = peer()
    with Database.open(path) as db:
        db.save_routing([(a, (ADDR,), NOW)])
        ProviderStore(LOCAL, db=db).add(provider(b"k", a), NOW)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO routing VALUES (?, ?, ?)", (b"\x12\x01x", b"", NOW))
    conn.execute("INSERT INTO providers VALUES (?, ?, ?, ?, 0, 99)", (b"k", b"bad", b"", LATER))
    conn.execute("UPDATE routing SET addrs = ? WHERE peer = ?", (b"\x0a\x02\xff\xff" +
                 b"\x0a" + bytes([len(ADDR.to_bytes())]) + ADDR.to_bytes(), a.to_bytes()))
    conn.commit()
    conn.close()
    with Database.open(path) as db:
        assert db.load_routing() == [(a, (ADDR,), NOW)]  # bad row and bad address skipped
        assert [r.provider for r in ProviderStore(LOCAL, db=db).get(b"k", NOW)] == [a]


# -- database errors -----------------------------------------------------------------------
def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "dht.db"
    path.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(StorageError, match=r"dht\.db"):
        Database.open(path)


def test_a_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (text)")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="not a lattica_nb DHT database"):
        Database.open(path)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dht.db"
    Database.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StorageError, match="schema version 99"):
        Database.open(path)


def test_an_unopenable_path_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="directory exists"):
        Database.open(tmp_path / "missing" / "dht.db")


def test_a_second_node_on_the_same_file_is_refused(tmp_path: Path) -> None:
    with Database.open(tmp_path / "dht.db"):
        with pytest.raises(StorageError, match="locked by another node"):
            Database.open(tmp_path / "dht.db")
    Database.open(tmp_path / "dht.db").close()  # free again once closed


def test_a_closed_database_raises_storage_error(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "dht.db")
    store = RecordStore(LOCAL, db=db)
    db.close()
    db.close()
    with pytest.raises(StorageError):
        store.put(remote(b"k"), NOW)


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_records"):
        StoreLimits(max_records=0)


# -- sans-IO -------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [lattica_nb.dht.records, lattica_nb.dht.store,
                                    lattica_nb.dht.database])
def test_cores_read_no_clock_and_do_no_async_io(module: object) -> None:
    source = Path(str(getattr(module, "__file__", ""))).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert not imported & {"time", "anyio", "asyncio", "socket", "trio"}
