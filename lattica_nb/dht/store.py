"""The DHT's record and provider stores: bounded, in memory, optionally persisted.

Both stores are sans-IO: the time is passed in, nothing reads a clock. Given a
:class:`~.database.Database` they write every change through to it and load
what it holds when constructed.

Limits and eviction (:class:`StoreLimits`), in this exact order:

* Records we published (``local=True``) and records other peers stored here
  (remote) are counted apart. A remote record never evicts a local one. A
  remote put under a key we publish replaces it only because the caller
  selected it as the better (newer) value: it takes over that slot, stops
  counting as local, and we stop republishing ours.
* A new remote key when ``max_records`` remote records are held is stored only
  if its keyspace point (``key_for_bytes(key)``) is strictly closer to our own
  key, by XOR, than that of the farthest remote record held, which is evicted.
  Otherwise the put is refused. (A node keeps what it is responsible for.)
* A new local key beyond ``max_local_records`` is refused (``put`` returns
  False); nothing local is ever evicted. A local put under a key holding a
  remote record replaces it.
* A key stays under its limit when its record is replaced (a newer value).
* Providers: each key holds at most ``max_providers_per_key`` providers; a new
  one evicts the least recently announced *remote* provider of that key (our
  own entry is never evicted). Keys with a local provider are capped by
  ``max_local_records`` (we announce them); the other keys by
  ``max_provider_keys``, with the record rule above: a new key must be closer
  than the farthest held key, which is evicted. A key whose local provider is
  removed or expires becomes remote and follows the same rule.
* Expired entries (``expires_at <= now``) are never returned; ``expire``
  removes them. Puts of already expired entries are refused.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass

from ..errors import ConfigError
from ..identity import PeerId
from .database import DEFAULT_MAX_ROUTING_ENTRIES, Database, ProviderRecord, StoredRecord
from .keys import KadKey, distance, key_for_bytes

__all__ = [
    "Database",
    "ProviderRecord",
    "ProviderStore",
    "RecordStore",
    "StoreLimits",
    "StoredRecord",
]


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """How much a node holds for others; see the module docs for the eviction rules."""

    max_records: int = 10_000
    """Records other peers stored here."""
    max_local_records: int = 1_000
    """Records we publish, and keys we provide (each counted apart)."""
    max_provider_keys: int = 10_000
    """Keys with providers other than us."""
    max_providers_per_key: int = 20
    max_routing_entries: int = DEFAULT_MAX_ROUTING_ENTRIES
    """Routing-table rows saved to the database (for Database.open)."""

    def __post_init__(self) -> None:
        for name in ("max_records", "max_local_records", "max_provider_keys",
                     "max_providers_per_key", "max_routing_entries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"store limit {name} must be at least 1")


_DEFAULT_LIMITS = StoreLimits()


class _ByDistance:
    """Keys ordered by XOR distance of their keyspace point from ``local_key``."""

    __slots__ = ("_items", "_local")

    def __init__(self, local_key: KadKey) -> None:
        self._local = local_key
        self._items: list[tuple[int, bytes]] = []

    def distance(self, key: bytes) -> int:
        return distance(key_for_bytes(key), self._local)

    def add(self, key: bytes) -> None:
        insort(self._items, (self.distance(key), key))

    def discard(self, key: bytes) -> None:
        item = (self.distance(key), key)
        index = bisect_left(self._items, item)
        if index < len(self._items) and self._items[index] == item:
            del self._items[index]

    def farthest(self) -> tuple[int, bytes]:
        return self._items[-1]

    def __len__(self) -> int:
        return len(self._items)


class RecordStore:
    """Values stored under keys, ours and other peers'; see the module docs for limits."""

    __slots__ = ("_db", "_limits", "_local", "_records", "_remote")

    def __init__(
        self,
        local_key: KadKey,
        limits: StoreLimits = _DEFAULT_LIMITS,
        db: Database | None = None,
        *,
        now: float | None = None,
    ) -> None:
        """With ``db``, load its records (those expired at ``now`` dropped, if given)."""
        self._limits = limits
        self._db = db
        self._records: dict[bytes, StoredRecord] = {}
        self._local: dict[bytes, None] = {}  # local keys in publication order
        self._remote = _ByDistance(local_key)
        if db is not None:
            self._load(db, now)

    def _load(self, db: Database, now: float | None) -> None:
        dropped: list[bytes] = []
        for record in db.load_records():
            if not self._admit(record, now, dropped):
                dropped.append(record.key)
        if dropped:
            db.delete_records(dropped)

    def _admit(self, record: StoredRecord, now: float | None, evicted: list[bytes]) -> bool:
        """Apply the limits to ``record`` in memory; evicted keys are appended to ``evicted``."""
        if now is not None and record.expires_at <= now:
            return False
        key = record.key
        existing = self._records.get(key)
        if record.local:
            if existing is None or not existing.local:
                if len(self._local) >= self._limits.max_local_records:
                    return False
                if existing is not None:
                    self._remote.discard(key)
            self._local.pop(key, None)
            self._local[key] = None  # publication order: the last put goes last
        elif existing is not None and existing.local:
            # A newer record (the caller selected it) supersedes one we published: it takes
            # over that slot and we stop republishing ours.
            del self._local[key]
            self._remote.add(key)
        elif existing is None:
            if len(self._remote) >= self._limits.max_records:
                far_distance, far_key = self._remote.farthest()
                if self._remote.distance(key) >= far_distance:
                    return False
                self._remote.discard(far_key)
                del self._records[far_key]
                evicted.append(far_key)
            self._remote.add(key)
        self._records[key] = record
        return True

    def put(self, record: StoredRecord, now: float) -> bool:
        """Store ``record`` (replacing the one under its key); False if the limits refuse it."""
        evicted: list[bytes] = []
        if not self._admit(record, now, evicted):
            return False
        if self._db is not None:
            self._db.save_record(record, evicted=evicted)
        return True

    def get(self, key: bytes, now: float) -> StoredRecord | None:
        record = self._records.get(key)
        if record is None or record.expires_at <= now:
            return None
        return record

    def remove(self, key: bytes) -> None:
        if self._drop(key) and self._db is not None:
            self._db.delete_records([key])

    def _drop(self, key: bytes) -> bool:
        record = self._records.pop(key, None)
        if record is None:
            return False
        if record.local:
            del self._local[key]
        else:
            self._remote.discard(key)
        return True

    def expire(self, now: float) -> int:
        """Remove every record expired at ``now``; how many were removed."""
        expired = [key for key, record in self._records.items() if record.expires_at <= now]
        for key in expired:
            self._drop(key)
        if expired and self._db is not None:
            self._db.delete_records(expired)
        return len(expired)

    def local_records(self) -> list[StoredRecord]:
        """The records we publish, the least recently put first."""
        return [self._records[key] for key in self._local]

    def __len__(self) -> int:
        """Records held, local and remote (expired ones until ``expire`` runs)."""
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records


class ProviderStore:
    """Who provides which key; see the module docs for limits."""

    __slots__ = ("_by_key", "_db", "_limits", "_local_keys", "_remote_keys")

    def __init__(
        self,
        local_key: KadKey,
        limits: StoreLimits = _DEFAULT_LIMITS,
        db: Database | None = None,
        *,
        now: float | None = None,
    ) -> None:
        """With ``db``, load its providers (those expired at ``now`` dropped, if given)."""
        self._limits = limits
        self._db = db
        # Per key, providers from least to most recently announced.
        self._by_key: dict[bytes, dict[PeerId, ProviderRecord]] = {}
        self._local_keys: dict[bytes, None] = {}
        self._remote_keys = _ByDistance(local_key)
        if db is not None:
            self._load(db, now)

    def _load(self, db: Database, now: float | None) -> None:
        evicted: list[tuple[bytes, PeerId]] = []
        evicted_keys: list[bytes] = []
        for record in db.load_providers():
            if not self._admit(record, now, evicted, evicted_keys):
                evicted.append((record.key, record.provider))
        if evicted or evicted_keys:
            db.delete_providers(evicted, evicted_keys)

    def _admit(
        self,
        record: ProviderRecord,
        now: float | None,
        evicted: list[tuple[bytes, PeerId]],
        evicted_keys: list[bytes],
    ) -> bool:
        if now is not None and record.expires_at <= now:
            return False
        key, peer = record.key, record.provider
        providers = self._by_key.get(key)
        if providers is None:
            if record.local:
                if len(self._local_keys) >= self._limits.max_local_records:
                    return False
            else:
                if not self._make_room_for_key(key, evicted_keys):
                    return False
                self._remote_keys.add(key)
            providers = self._by_key[key] = {}
        else:
            existing = providers.get(peer)
            if existing is not None and existing.local and not record.local:
                return False
            if record.local and key not in self._local_keys:
                if len(self._local_keys) >= self._limits.max_local_records:
                    return False
            if existing is None and len(providers) >= self._limits.max_providers_per_key:
                victim = next((p for p, r in providers.items() if not r.local), None)
                if victim is None:
                    return False
                del providers[victim]
                evicted.append((key, victim))
            if record.local and key not in self._local_keys:
                self._remote_keys.discard(key)
        if record.local:
            self._local_keys.pop(key, None)
            self._local_keys[key] = None  # announcement order: the last add goes last
        providers.pop(peer, None)
        providers[peer] = record
        return True

    def _make_room_for_key(self, key: bytes, evicted_keys: list[bytes]) -> bool:
        """Room for one more remote key: evict the farthest if ``key`` is closer."""
        if len(self._remote_keys) < self._limits.max_provider_keys:
            return True
        far_distance, far_key = self._remote_keys.farthest()
        if self._remote_keys.distance(key) >= far_distance:
            return False
        self._remote_keys.discard(far_key)
        del self._by_key[far_key]
        evicted_keys.append(far_key)
        return True

    def add(self, record: ProviderRecord, now: float) -> bool:
        """Store (or refresh) ``record``; False if the limits refuse it."""
        evicted: list[tuple[bytes, PeerId]] = []
        evicted_keys: list[bytes] = []
        if not self._admit(record, now, evicted, evicted_keys):
            return False
        if self._db is not None:
            self._db.save_provider(record, evicted=evicted, evicted_keys=evicted_keys)
        return True

    def get(self, key: bytes, now: float, limit: int = 20) -> list[ProviderRecord]:
        """Unexpired providers of ``key``, most recently announced first, at most ``limit``."""
        providers = self._by_key.get(key)
        if not providers or limit <= 0:
            return []
        found = []
        for record in reversed(providers.values()):
            if record.expires_at > now:
                found.append(record)
                if len(found) >= limit:
                    break
        return found

    def remove_local(self, key: bytes) -> None:
        """Stop providing ``key`` ourselves; the remote providers of it follow the key limits."""
        providers = self._by_key.get(key)
        if providers is None or key not in self._local_keys:
            return
        evicted = [(key, p) for p, r in providers.items() if r.local]
        for _, peer in evicted:
            del providers[peer]
        evicted_keys = self._demote(key)
        if self._db is not None:
            self._db.delete_providers(evicted, evicted_keys)

    def _demote(self, key: bytes) -> list[bytes]:
        """``key`` lost its local provider: keep it as a remote key if the limits allow.

        Returns the keys dropped entirely (``key`` itself, or the farthest key evicted).
        """
        del self._local_keys[key]
        if not self._by_key[key]:
            del self._by_key[key]
            return [key]
        evicted_keys: list[bytes] = []
        if not self._make_room_for_key(key, evicted_keys):
            del self._by_key[key]
            return [key]
        self._remote_keys.add(key)
        return evicted_keys

    def expire(self, now: float) -> int:
        """Remove every provider record expired at ``now``; how many were removed."""
        evicted: list[tuple[bytes, PeerId]] = []
        evicted_keys: list[bytes] = []
        removed = 0
        for key, providers in list(self._by_key.items()):
            if key not in self._by_key:
                continue  # evicted by a demotion earlier in this loop
            expired = [p for p, r in providers.items() if r.expires_at <= now]
            if not expired:
                continue
            removed += len(expired)
            for peer in expired:
                del providers[peer]
            evicted.extend((key, peer) for peer in expired)
            if key in self._local_keys:
                if not any(r.local for r in providers.values()):
                    evicted_keys.extend(self._demote(key))
            elif not providers:
                self._remote_keys.discard(key)
                del self._by_key[key]
        if (evicted or evicted_keys) and self._db is not None:
            self._db.delete_providers(evicted, evicted_keys)
        return removed

    def local_keys(self) -> list[bytes]:
        """The keys we provide, the least recently added first."""
        return list(self._local_keys)

    def __len__(self) -> int:
        """Keys with at least one provider (expired ones until ``expire`` runs)."""
        return len(self._by_key)
