"""The DHT's SQLite file: stored records, provider records and the routing table.

:class:`Database` is a write-through copy of what the in-memory stores
(:mod:`.store`) hold, so a node restarted on the same file gets its records,
providers and routing table back. It uses the standard library's ``sqlite3``
in WAL mode with ``synchronous=NORMAL`` (a commit does not wait for the disk;
a power cut may lose the last changes, never corrupt the file) and an
exclusive lock: a second node opening the same file fails at once with
:class:`~lattica_nb.errors.StorageError` instead of blocking.

Every change is one small transaction. Every ``sqlite3`` error is translated
to StorageError naming the file. Rows that no longer parse (an address
format this version does not know, a hand-edited row) are skipped with a
warning. The connection may be used from any thread, one at a time.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..errors import DecodeError, LatticaError, MultiaddrError, StorageError
from ..identity import PeerId
from ..multiaddr import Multiaddr
from ..wire.protobuf import ProtoWriter, parse_fields

__all__ = [
    "DEFAULT_MAX_ROUTING_ENTRIES",
    "Database",
    "ProviderRecord",
    "RoutingRow",
    "StoredRecord",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROUTING_ENTRIES = 5_000
"""Routing-table rows kept by :meth:`Database.save_routing` (the most recently seen)."""
APPLICATION_ID = 0x4C4E4244
"""``PRAGMA application_id`` of our files ("LNBD"): marks a file as a lattica_nb DHT database."""
SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the schema below."""
LOCK_TIMEOUT_S = 0.5
"""How long opening waits for another connection's lock before giving up."""
MAX_ADDRS_BYTES = 64 * 1024
"""Largest encoded address list read back from a row."""

_SCHEMA = (
    "CREATE TABLE records (key BLOB PRIMARY KEY, value BLOB NOT NULL, received_at REAL NOT NULL,"
    " expires_at REAL NOT NULL, local INTEGER NOT NULL, ord INTEGER NOT NULL)",
    "CREATE TABLE providers (key BLOB NOT NULL, provider BLOB NOT NULL, addrs BLOB NOT NULL,"
    " expires_at REAL NOT NULL, local INTEGER NOT NULL, ord INTEGER NOT NULL,"
    " PRIMARY KEY (key, provider))",
    "CREATE TABLE routing (peer BLOB PRIMARY KEY, addrs BLOB NOT NULL, last_seen REAL NOT NULL)",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

RoutingRow = tuple[PeerId, tuple[Multiaddr, ...], float]
"""A saved routing-table entry: peer, its addresses, when it was last seen (unix s)."""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A value held for ``key``; ``local`` if this node published it (it republishes it)."""

    key: bytes
    value: bytes
    received_at: float
    expires_at: float
    local: bool = False


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    """``provider`` announced that it serves ``key``; ``local`` if the provider is us."""

    key: bytes
    provider: PeerId
    addrs: tuple[Multiaddr, ...]
    expires_at: float
    local: bool = False


class Database:
    """The SQLite file behind a node's DHT stores. Create it with :meth:`open`."""

    __slots__ = ("_conn", "_max_routing_entries", "_order", "_path")

    def __init__(self, conn: sqlite3.Connection, path: Path, max_routing_entries: int) -> None:
        self._conn = conn
        self._path = path
        self._max_routing_entries = max_routing_entries
        self._order = 0

    @classmethod
    def open(
        cls, path: Path, *, max_routing_entries: int = DEFAULT_MAX_ROUTING_ENTRIES
    ) -> Database:
        """Open (or create) the database at ``path``; StorageError if it cannot be used."""
        path = Path(path)
        try:
            conn = sqlite3.connect(
                path, timeout=LOCK_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot open the DHT database {str(path)!r} ({exc}); check that its "
                "directory exists and is writable"
            ) from exc
        db = cls(conn, path, max_routing_entries)
        try:
            with db._errors("open"):
                db._prepare()
        except BaseException:
            conn.close()
            raise
        return db

    def _prepare(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")  # takes the exclusive lock now, held until close
        try:
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if application_id == 0 and version == 0 and tables == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
            elif application_id != APPLICATION_ID:
                raise StorageError(
                    f"{str(self._path)!r} is an SQLite file but not a lattica_nb DHT database; "
                    "choose another db_path"
                )
            elif version != SCHEMA_VERSION:
                raise StorageError(
                    f"DHT database {str(self._path)!r} has schema version {version}; this "
                    f"lattica_nb reads version {SCHEMA_VERSION} (move the file aside to start "
                    "afresh)"
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        (highest,) = conn.execute(
            "SELECT max(coalesce((SELECT max(ord) FROM records), 0),"
            " coalesce((SELECT max(ord) FROM providers), 0))"
        ).fetchone()
        self._order = int(highest)

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        """Close the file (idempotent); later calls raise StorageError."""
        with self._errors("close"):
            self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except sqlite3.Error as exc:
            if "locked" in str(exc):
                raise StorageError(
                    f"DHT database {str(self._path)!r} is locked by another node or process; give "
                    "each node its own db_path"
                ) from exc
            raise StorageError(
                f"DHT database {str(self._path)!r}: {action} failed ({exc}); if the file is "
                "damaged, move it aside and the node starts with an empty one"
            ) from exc

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._errors(action):
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    # -- records ---------------------------------------------------------------------------
    def save_record(self, record: StoredRecord, *, evicted: Iterable[bytes] = ()) -> None:
        """Store ``record`` (replacing one under its key) and delete the ``evicted`` keys."""
        with self._transaction("saving a record") as conn:
            conn.executemany("DELETE FROM records WHERE key = ?", [(key,) for key in evicted])
            conn.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?)",
                (record.key, record.value, record.received_at, record.expires_at,
                 int(record.local), self._next_order()),
            )

    def delete_records(self, keys: Iterable[bytes]) -> None:
        with self._transaction("deleting records") as conn:
            conn.executemany("DELETE FROM records WHERE key = ?", [(key,) for key in keys])

    def load_records(self) -> list[StoredRecord]:
        """Every stored record, oldest change first."""
        with self._errors("reading records"):
            rows = self._conn.execute(
                "SELECT key, value, received_at, expires_at, local FROM records ORDER BY ord"
            ).fetchall()
        records = []
        for key, value, received_at, expires_at, local in rows:
            if not (isinstance(key, bytes) and isinstance(value, bytes)):
                logger.warning("dht database %s: skipping a record row with a non-blob key or "
                               "value", self._path)
                continue
            records.append(
                StoredRecord(key, value, float(received_at), float(expires_at), bool(local))
            )
        return records

    # -- providers -------------------------------------------------------------------------
    def save_provider(
        self,
        record: ProviderRecord,
        *,
        evicted: Iterable[tuple[bytes, PeerId]] = (),
        evicted_keys: Iterable[bytes] = (),
    ) -> None:
        """Store ``record``; delete the ``evicted`` providers and all of ``evicted_keys``."""
        with self._transaction("saving a provider") as conn:
            self._delete_providers(conn, evicted, evicted_keys)
            conn.execute(
                "INSERT OR REPLACE INTO providers VALUES (?, ?, ?, ?, ?, ?)",
                (record.key, record.provider.to_bytes(), _encode_addrs(record.addrs),
                 record.expires_at, int(record.local), self._next_order()),
            )

    def delete_providers(
        self, evicted: Iterable[tuple[bytes, PeerId]] = (), evicted_keys: Iterable[bytes] = ()
    ) -> None:
        with self._transaction("deleting providers") as conn:
            self._delete_providers(conn, evicted, evicted_keys)

    @staticmethod
    def _delete_providers(
        conn: sqlite3.Connection,
        evicted: Iterable[tuple[bytes, PeerId]],
        evicted_keys: Iterable[bytes],
    ) -> None:
        conn.executemany(
            "DELETE FROM providers WHERE key = ? AND provider = ?",
            [(key, peer.to_bytes()) for key, peer in evicted],
        )
        conn.executemany("DELETE FROM providers WHERE key = ?", [(key,) for key in evicted_keys])

    def load_providers(self) -> list[ProviderRecord]:
        """Every provider record, oldest change first."""
        with self._errors("reading providers"):
            rows = self._conn.execute(
                "SELECT key, provider, addrs, expires_at, local FROM providers ORDER BY ord"
            ).fetchall()
        records = []
        # One peer announces many keys from the same addresses: parse each blob once.
        peers: dict[bytes, PeerId] = {}
        addr_lists: dict[bytes, tuple[Multiaddr, ...]] = {}
        for key, provider, addrs, expires_at, local in rows:
            try:
                if not isinstance(key, bytes):
                    raise DecodeError("key is not a blob")
                peer = peers.get(provider)
                if peer is None:
                    peer = peers[provider] = PeerId.from_bytes(provider)
                decoded = addr_lists.get(addrs)
                if decoded is None:
                    decoded = addr_lists[addrs] = _decode_addrs(addrs)
                record = ProviderRecord(key, peer, decoded, float(expires_at), bool(local))
            except (LatticaError, TypeError, ValueError) as exc:
                logger.warning("dht database %s: skipping a provider row: %s", self._path, exc)
                continue
            records.append(record)
        return records

    # -- routing table ---------------------------------------------------------------------
    def save_routing(self, entries: Sequence[RoutingRow]) -> None:
        """Replace the saved routing table with ``entries`` (the most recently seen are kept)."""
        kept = sorted(entries, key=lambda entry: entry[2], reverse=True)
        kept = kept[: self._max_routing_entries]
        with self._transaction("saving the routing table") as conn:
            conn.execute("DELETE FROM routing")
            conn.executemany(
                "INSERT OR REPLACE INTO routing VALUES (?, ?, ?)",
                [(peer.to_bytes(), _encode_addrs(addrs), last_seen)
                 for peer, addrs, last_seen in kept],
            )

    def load_routing(self) -> list[RoutingRow]:
        """The saved routing table, most recently seen first."""
        with self._errors("reading the routing table"):
            rows = self._conn.execute(
                "SELECT peer, addrs, last_seen FROM routing ORDER BY last_seen DESC LIMIT ?",
                (self._max_routing_entries,),
            ).fetchall()
        entries: list[RoutingRow] = []
        for peer, addrs, last_seen in rows:
            try:
                entries.append((PeerId.from_bytes(peer), _decode_addrs(addrs), float(last_seen)))
            except (LatticaError, TypeError, ValueError) as exc:
                logger.warning("dht database %s: skipping a routing row: %s", self._path, exc)
        return entries


def _encode_addrs(addrs: Iterable[Multiaddr]) -> bytes:
    """Addresses as protobuf ``repeated bytes addrs = 1`` (each a binary multiaddr)."""
    return ProtoWriter().repeated_bytes(1, (addr.to_bytes() for addr in addrs)).finish()


def _decode_addrs(data: bytes) -> tuple[Multiaddr, ...]:
    """Addresses saved by :func:`_encode_addrs`; ones this version cannot parse are skipped."""
    if not isinstance(data, bytes):
        raise DecodeError("address list is not a blob")
    addrs = []
    for raw in parse_fields(data, max_bytes=MAX_ADDRS_BYTES).all_bytes(1):
        try:
            addrs.append(Multiaddr.from_bytes(raw))
        except MultiaddrError:
            continue
    return tuple(addrs)
