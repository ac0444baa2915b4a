"""The Kademlia routing table: k-buckets by common-prefix length (sans-IO).

Bucket ``i`` holds peers whose key shares exactly ``i`` leading bits with the
local key (0 = the farthest half of the keyspace, 255 = the nearest). Each
bucket keeps at most ``k`` entries plus a replacement cache of at most ``k``
candidates. Buckets are created on first use: most of the 256 stay empty.

Eviction is the classic ping protocol, driven from outside:

* :meth:`RoutingTable.update` with a new peer for a full bucket puts it in the
  replacement cache and answers PENDING with ``to_ping`` = the bucket's
  least-recently-seen entry (one ping per bucket at a time).
* The driver pings that peer and reports :meth:`RoutingTable.ping_result`
  (a timeout is ``alive=False``). Alive: the entry stays, refreshed. Dead: it
  is removed and the most recently seen candidate takes its place. The
  driver should always report; a ping not reported within ``ping_timeout_s``
  is forgotten (the next candidate asks for a new one). Seeing the pinged
  peer alive through :meth:`RoutingTable.update` also counts as the answer.

Requests that fail are counted with :meth:`RoutingTable.failed`; after
``max_failures`` in a row (a success in between resets the count) the entry
is removed and a candidate promoted.

Keys passed to :meth:`RoutingTable.closest` and :meth:`RoutingTable.touch_bucket`
are keyspace points (32 bytes, a :class:`~.keys.KadKey`): hash a record key
with :func:`~.keys.key_for_bytes` and a peer with :func:`~.keys.key_for_peer` first.
"""

from __future__ import annotations

import bisect
import enum
import operator
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ..errors import ConfigError, LocalProtocolError
from ..identity import PeerId
from ..multiaddr import Multiaddr
from .keys import KEY_BITS, KEY_BYTES, KadKey, key_for_peer

__all__ = ["InsertResult", "InsertStatus", "RoutingEntry", "RoutingTable"]

_FIRST = operator.itemgetter(0)


@dataclass(slots=True)
class RoutingEntry:
    """A peer in the table (or in a bucket's replacement cache)."""

    peer_id: PeerId
    key: KadKey
    addrs: tuple[Multiaddr, ...]
    added_at: float
    last_seen: float
    failures: int = 0


class InsertStatus(enum.Enum):
    ADDED = "added"
    """The peer is new and its bucket had room."""
    UPDATED = "updated"
    """The peer was already in the table; it is refreshed."""
    PENDING = "pending"
    """The bucket is full: the peer waits in the replacement cache."""
    REJECTED = "rejected"
    """The peer is the local peer."""


@dataclass(frozen=True, slots=True)
class InsertResult:
    status: InsertStatus
    to_ping: PeerId | None = None
    """With PENDING: the entry the driver should ping now, if a ping is not already pending."""


class _Bucket:
    __slots__ = ("entries", "ping_started", "pinging", "replacements")

    def __init__(self) -> None:
        # Insertion order: entries are moved to the end when seen, so the first is
        # (normally) the least recently seen; eviction still picks by last_seen.
        self.entries: dict[PeerId, RoutingEntry] = {}
        self.replacements: dict[PeerId, RoutingEntry] = {}  # oldest candidate first
        self.pinging: PeerId | None = None
        self.ping_started = 0.0


class RoutingTable:
    """Kademlia k-buckets around ``local``; see the module docstring for the protocol."""

    __slots__ = (
        "_buckets",
        "_entries",
        "_ints",
        "_k",
        "_local",
        "_local_int",
        "_local_key",
        "_max_failures",
        "_nonempty",
        "_ping_timeout_s",
        "_refreshed",
    )

    def __init__(
        self, local: PeerId, *, k: int = 20, max_failures: int = 2, ping_timeout_s: float = 60.0
    ) -> None:
        if k < 1:
            raise ConfigError(f"routing table k must be at least 1, got {k}")
        if max_failures < 1:
            raise ConfigError(f"routing table max_failures must be at least 1, got {max_failures}")
        if not ping_timeout_s > 0:
            raise ConfigError(
                f"routing table ping_timeout_s must be positive, got {ping_timeout_s}"
            )
        self._local = local
        self._local_key = key_for_peer(local)
        self._local_int = self._local_key.as_int()
        self._k = k
        self._max_failures = max_failures
        self._ping_timeout_s = ping_timeout_s
        self._buckets: dict[int, _Bucket] = {}
        self._entries: dict[PeerId, RoutingEntry] = {}
        self._ints: dict[PeerId, int] = {}  # key as int, for entries only
        self._nonempty: list[int] = []  # sorted indexes of buckets holding entries
        self._refreshed: dict[int, float] = {}

    @property
    def local_key(self) -> KadKey:
        return self._local_key

    @property
    def k(self) -> int:
        return self._k

    # -- membership ---------------------------------------------------------------------------

    def update(self, peer: PeerId, addrs: Sequence[Multiaddr], now: float) -> InsertResult:
        """A server-mode peer was seen alive (it answered, or connected and identified).

        ``addrs`` replaces the known addresses unless it is empty.
        """
        if peer == self._local:
            return InsertResult(InsertStatus.REJECTED)
        entry = self._entries.get(peer)
        if entry is not None:
            self._refresh(entry, addrs, now)
            return InsertResult(InsertStatus.UPDATED)
        key = key_for_peer(peer)
        index = self._index_of(key)
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        candidate = bucket.replacements.pop(peer, None)
        if candidate is None:
            candidate = RoutingEntry(peer, key, tuple(addrs), added_at=now, last_seen=now)
        else:
            candidate.last_seen = now
            candidate.failures = 0
            if addrs:
                candidate.addrs = tuple(addrs)
        if len(bucket.entries) < self._k:
            candidate.added_at = now
            self._insert(index, bucket, candidate)
            return InsertResult(InsertStatus.ADDED)
        bucket.replacements[peer] = candidate  # most recent last
        if len(bucket.replacements) > self._k:
            del bucket.replacements[next(iter(bucket.replacements))]
        if bucket.pinging is not None and now - bucket.ping_started < self._ping_timeout_s:
            return InsertResult(InsertStatus.PENDING)
        oldest = min(bucket.entries.values(), key=_last_seen)
        bucket.pinging = oldest.peer_id
        bucket.ping_started = now
        return InsertResult(InsertStatus.PENDING, to_ping=oldest.peer_id)

    def ping_result(self, peer: PeerId, alive: bool, now: float) -> None:
        """The outcome of a ping asked for by :meth:`update` (a timeout counts as dead)."""
        entry = self._entries.get(peer)
        if entry is None:
            return
        if alive:
            self._refresh(entry, (), now)
        else:
            self._evict(entry, now)

    def failed(self, peer: PeerId, now: float) -> None:
        """A request to ``peer`` failed; after ``max_failures`` in a row it is removed.

        A candidate in a replacement cache that fails is dropped from the cache.
        """
        entry = self._entries.get(peer)
        if entry is None:
            bucket = self._buckets.get(self._index_of(key_for_peer(peer)))
            if bucket is not None:
                bucket.replacements.pop(peer, None)
            return
        entry.failures += 1
        if entry.failures >= self._max_failures:
            self._evict(entry, now)

    def remove(self, peer: PeerId) -> bool:
        """Drop ``peer`` (entry and replacement candidate); True if it was an entry.

        A replacement candidate, if any, takes its place in the bucket.
        """
        entry = self._entries.get(peer)
        if entry is None:
            bucket = self._buckets.get(self._index_of(key_for_peer(peer)))
            if bucket is not None:
                bucket.replacements.pop(peer, None)
            return False
        self._evict(entry, None)
        return True

    def get(self, peer: PeerId) -> RoutingEntry | None:
        return self._entries.get(peer)

    def entries(self) -> list[RoutingEntry]:
        """Every entry, by bucket index (farthest first)."""
        return [e for i in self._nonempty for e in self._buckets[i].entries.values()]

    def replacements(self, index: int) -> list[RoutingEntry]:
        """The replacement candidates of bucket ``index``, oldest first."""
        bucket = self._buckets.get(index)
        return [] if bucket is None else list(bucket.replacements.values())

    def bucket_entries(self, index: int) -> list[RoutingEntry]:
        """The entries of bucket ``index``."""
        bucket = self._buckets.get(index)
        return [] if bucket is None else list(bucket.entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer: object) -> bool:
        return peer in self._entries

    # -- queries ------------------------------------------------------------------------------

    def closest(
        self, key: bytes, count: int, *, exclude: Collection[PeerId] = ()
    ) -> list[RoutingEntry]:
        """Up to ``count`` entries in ascending XOR distance to the keyspace point ``key``.

        No sort of the whole table: buckets are totally ordered by distance to
        ``key``, so only the entries of the buckets actually used are sorted.
        With ``d = key ^ local`` and ``c`` its leading zero bits: bucket ``c``
        comes first (its entries share more than ``c`` bits with ``key``), then
        every bucket ``i > c`` whose bit ``i`` of ``d`` is set, ascending, then
        all the others descending.
        """
        target = _point(key)
        if count <= 0 or not self._entries:
            return []
        if exclude and not isinstance(exclude, set | frozenset):
            exclude = set(exclude)
        d = target ^ self._local_int
        c = KEY_BITS - d.bit_length()
        first: list[int] = []
        nearer: list[int] = []
        farther: list[int] = []
        for index in self._nonempty:
            if index == c:
                first.append(index)
            elif index > c and (d >> (KEY_BITS - 1 - index)) & 1:
                nearer.append(index)
            else:
                farther.append(index)
        farther.reverse()
        result: list[RoutingEntry] = []
        ints = self._ints
        buckets = self._buckets
        for index in (*first, *nearer, *farther):
            ranked = [
                (target ^ ints[peer], entry)
                for peer, entry in buckets[index].entries.items()
                if not exclude or peer not in exclude
            ]
            ranked.sort(key=_FIRST)
            result.extend(entry for _, entry in ranked[: count - len(result)])
            if len(result) >= count:
                break
        return result

    # -- refresh ------------------------------------------------------------------------------

    def touch_bucket(self, key: bytes, now: float) -> None:
        """A lookup for the keyspace point ``key`` ran: its bucket counts as refreshed."""
        index = min(KEY_BITS - (_point(key) ^ self._local_int).bit_length(), KEY_BITS - 1)
        self._refreshed[index] = now

    def buckets_to_refresh(self, now: float, interval_s: float) -> list[int]:
        """Buckets 0 .. (highest non-empty + 1) not refreshed within ``interval_s``."""
        top = self._nonempty[-1] if self._nonempty else -1
        last = min(top + 1, KEY_BITS - 1)
        due: list[int] = []
        for index in range(last + 1):
            refreshed = self._refreshed.get(index)
            if refreshed is None or now - refreshed >= interval_s:
                due.append(index)
        return due

    def random_key_in_bucket(self, index: int, rng: random.Random) -> KadKey:
        """A random key sharing exactly ``index`` leading bits with the local key."""
        if not 0 <= index < KEY_BITS:
            raise LocalProtocolError(f"bucket index {index} is outside 0..{KEY_BITS - 1}")
        free_bits = KEY_BITS - 1 - index
        prefix = (self._local_int >> free_bits) ^ 1  # keep `index` bits, flip the next
        value = (prefix << free_bits) | rng.getrandbits(free_bits)
        return KadKey(value.to_bytes(KEY_BYTES, "big"))

    # -- internals ----------------------------------------------------------------------------

    def _index_of(self, key: KadKey) -> int:
        return KEY_BITS - (key.as_int() ^ self._local_int).bit_length()

    def _refresh(self, entry: RoutingEntry, addrs: Sequence[Multiaddr], now: float) -> None:
        entry.last_seen = max(entry.last_seen, now)
        entry.failures = 0
        if addrs:
            entry.addrs = tuple(addrs)
        bucket = self._buckets[self._index_of(entry.key)]
        bucket.entries[entry.peer_id] = bucket.entries.pop(entry.peer_id)  # to the tail
        if bucket.pinging == entry.peer_id:
            bucket.pinging = None  # seen alive: that answers the pending ping

    def _insert(self, index: int, bucket: _Bucket, entry: RoutingEntry) -> None:
        if not bucket.entries:
            bisect.insort(self._nonempty, index)
        bucket.entries[entry.peer_id] = entry
        self._entries[entry.peer_id] = entry
        self._ints[entry.peer_id] = entry.key.as_int()

    def _evict(self, entry: RoutingEntry, now: float | None) -> None:
        """Remove ``entry`` and promote the most recently seen replacement candidate."""
        peer = entry.peer_id
        index = self._index_of(entry.key)
        bucket = self._buckets[index]
        del bucket.entries[peer]
        del self._entries[peer]
        del self._ints[peer]
        if not bucket.entries:
            self._nonempty.remove(index)
        if bucket.pinging == peer:
            bucket.pinging = None
        if bucket.replacements:
            newest = max(bucket.replacements.values(), key=_last_seen)
            del bucket.replacements[newest.peer_id]
            newest.added_at = newest.last_seen if now is None else now
            newest.failures = 0
            self._insert(index, bucket, newest)


def _point(key: bytes) -> int:
    if len(key) != KEY_BYTES:
        raise LocalProtocolError(
            f"a keyspace point is {KEY_BYTES} bytes, got {len(key)}; "
            "hash record keys with key_for_bytes() first"
        )
    return int.from_bytes(key, "big")


def _last_seen(entry: RoutingEntry) -> float:
    return entry.last_seen
