"""The DHT service of a node: ``node.dht``.

This is the driver around the sans-IO cores: it runs lookups
(:class:`~.lookup.Lookup`) by sending Kademlia requests over streams, answers
inbound requests with :class:`~.server.KadServer`, keeps the routing table
fed from identify and from answers, and runs the maintenance loop (expiry,
republish, bucket refresh, persistence).

Clocks: records, providers, the routing table and queries use wall-clock
time (record expiry is absolute, signed, and survives restarts); only the
per-request and per-query deadlines use the event loop's clock.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from ..errors import (
    LatticaError,
    LimitExceeded,
    LocalProtocolError,
    QuorumFailed,
    RecordTooLarge,
)
from ..identity import PeerId, PrivateKey
from ..multiaddr import Multiaddr
from .config import DhtConfig
from .keys import KadKey, key_for_bytes, key_for_peer, preimage_in_bucket
from .messages import Message, MessageLimits, MessageType, PeerEntry, WireRecord
from .queries import ClosestPeersQuery, FindPeerQuery, GetProvidersQuery, GetValueQuery
from .querying import QueryRunner
from .records import OUR_PREFIX, SignedRecord, Validators, signed_expiry
from .routing import InsertStatus, RoutingTable
from .server import KadServer
from .store import Database, ProviderRecord, ProviderStore, RecordStore, StoredRecord, StoreLimits
from .streams import IDLE_STREAM_S, DhtHost, InboundRequests, Requester

__all__ = ["Dht", "Provider", "PutResult"]

logger = logging.getLogger(__name__)

MAX_REFRESH_PER_ROUND = 16
"""Buckets refreshed in one maintenance round at most."""
MAX_WIRE_TTL_S = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class Provider:
    """A peer that announced it can serve a key."""

    peer_id: PeerId
    addrs: tuple[Multiaddr, ...]


@dataclass(frozen=True, slots=True)
class PutResult:
    """Where a record went: the peers that confirmed storing it."""

    key: bytes
    stored_on: tuple[PeerId, ...]




class Dht:
    """Kademlia over the node's connections. Created and started by the Node."""

    def __init__(self, host: DhtHost, identity: PrivateKey, config: DhtConfig) -> None:
        self.config = config
        self._host = host
        self._identity = identity
        self._local = host.peer_id
        self._limits = MessageLimits(max_message_bytes=config.max_message_bytes,
                                     max_key_bytes=1024)
        store_limits = StoreLimits(
            max_records=config.max_records, max_local_records=config.max_local_records,
            max_provider_keys=config.max_provider_keys,
            max_providers_per_key=config.max_providers_per_key,
        )
        self._db = (None if config.db_path is None else
                    Database.open(config.db_path,
                                  max_routing_entries=store_limits.max_routing_entries))
        local_key = key_for_peer(self._local)
        now = time.time()
        self.routing = RoutingTable(self._local, k=config.k)
        self.records = RecordStore(local_key, store_limits, self._db, now=now)
        self.providers = ProviderStore(local_key, store_limits, self._db, now=now)
        self.validators = Validators(max_value_bytes=config.max_value_bytes)
        self._server = KadServer(self._local, self.routing, self.records, self.providers,
                                 self.validators, k=config.k, record_ttl_s=config.record_ttl_s,
                                 provider_ttl_s=config.provider_ttl_s)
        self._inbound = InboundRequests(self._answer, self.penalize, self._limits)
        self._requester = Requester(host, config.protocol_id, self._limits)
        self._runner = QueryRunner(
            host, self._requester, self.routing, request_timeout_s=config.request_timeout_s,
            query_timeout_s=config.query_timeout_s, is_banned=self._is_banned,
            penalize=self.penalize, seen_alive=lambda peer: self._seen_alive(peer, ()))
        self._banned: dict[PeerId, float] = {}
        self._seq = 0
        self._mode: str = "client"
        self._tg: anyio.abc.TaskGroup | None = None
        self._pinging: set[PeerId] = set()
        self._rng = random.Random()
        self._last_republish = time.time()
        self._last_provider_republish = time.time()

    # -- lifecycle -------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until cancelled (the Node runs this in its task group)."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._restore_routing()
                mode = self.config.mode
                if mode == "auto":
                    mode = "server" if self._host.listen_addrs else "client"
                self.set_mode(mode)
                task_status.started()
                tg.start_soon(self._maintenance_loop)
                tg.start_soon(self._prune_loop)
        finally:
            self._tg = None
            await self._requester.aclose()
            self._save_routing()
            if self._db is not None:
                self._db.close()

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        """``"server"``: answer queries (others add us to their tables); ``"client"``: only ask."""
        if mode not in ("server", "client"):
            raise LocalProtocolError(f"dht mode must be 'server' or 'client', not {mode!r}")
        if mode == self._mode:
            return
        if mode == "server":
            self._host.set_handler(self.config.protocol_id, self._inbound.serve)
        else:
            self._host.remove_handler(self.config.protocol_id)
        self._mode = mode
        logger.info("dht: %s mode", mode)

    # -- node events -------------------------------------------------------------------
    def peer_identified(self, peer: PeerId, protocols: Sequence[str],
                        addrs: Sequence[Multiaddr]) -> None:
        """Identify told us what ``peer`` speaks: DHT servers enter the routing table."""
        if self.config.protocol_id not in protocols:
            self.routing.remove(peer)  # it switched to client mode (or never served)
            return
        was_empty = len(self.routing) == 0
        self._seen_alive(peer, addrs)
        if (was_empty and self.config.auto_bootstrap and len(self.routing) > 0
                and self._tg is not None):
            self._tg.start_soon(self._bootstrap_quietly)

    def _seen_alive(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> None:
        if self._is_banned(peer):
            return
        known = tuple(addrs) or tuple(self._host.known_addresses(peer))
        result = self.routing.update(peer, known, time.time())
        if result.status is InsertStatus.PENDING and result.to_ping is not None:
            if self._tg is not None and result.to_ping not in self._pinging:
                self._pinging.add(result.to_ping)
                self._tg.start_soon(self._ping_entry, result.to_ping)

    async def _ping_entry(self, peer: PeerId) -> None:
        """Is the least-recently-seen entry of a full bucket still a DHT server?"""
        try:
            await self._request(peer, Message(MessageType.FIND_NODE, key=self._local.to_bytes()))
            alive = True
        except Exception:
            alive = False
        finally:
            self._pinging.discard(peer)
        self.routing.ping_result(peer, alive, time.time())

    # -- misbehaviour ---------------------------------------------------------------------
    def penalize(self, peer: PeerId, reason: str) -> None:
        """``peer`` sent malformed or forged data: drop it and ignore it for a while."""
        logger.warning("dht: peer %s misbehaved (%s); ignoring it for %.0f s",
                       peer.short(), reason, self.config.misbehaviour_ban_s)
        self._banned[peer] = time.time() + self.config.misbehaviour_ban_s
        self.routing.remove(peer)

    def _is_banned(self, peer: PeerId) -> bool:
        until = self._banned.get(peer)
        if until is None:
            return False
        if until <= time.time():
            del self._banned[peer]
            return False
        return True

    # -- requests ------------------------------------------------------------------------
    def _answer(self, peer: PeerId, message: Message) -> Message | None:
        if self._is_banned(peer):
            return None
        return self._server.handle(peer, message, time.time())

    async def _request(self, peer: PeerId, message: Message) -> Message | None:
        return await self._runner.request(peer, message)

    def _seeds(self, target: KadKey) -> list[PeerId]:
        return [e.peer_id for e in self.routing.closest(target, self.config.k)
                if not self._is_banned(e.peer_id)]

    def _query_args(self, target: KadKey) -> dict[str, Any]:
        cfg = self.config
        return {"seeds": self._seeds(target), "now": time.time(), "k": cfg.k,
                "alpha": cfg.alpha, "request_timeout_s": cfg.request_timeout_s,
                "local": self._local}

    async def closest_peers(self, key: bytes) -> list[PeerId]:
        """The k closest DHT servers to ``key`` that answered (an iterative FIND_NODE).

        ``key`` is what goes on the wire (a record key, a peer id's bytes);
        its keyspace point is its sha256.
        """
        target = key_for_bytes(key)
        query = ClosestPeersQuery(key, target, **self._query_args(target))
        await self._runner.run(query)
        return query.closest(self.config.k)

    async def bootstrap(self) -> int:
        """Look up our own id (fills nearby buckets), then refresh far buckets. Table size."""
        await self.closest_peers(self._local.to_bytes())
        await self._refresh(force=True)
        return len(self.routing)

    async def _bootstrap_quietly(self) -> None:
        try:
            await self.bootstrap()
        except LatticaError as exc:
            logger.info("dht: bootstrap lookup failed: %s", exc)

    # -- records -------------------------------------------------------------------------
    @staticmethod
    def our_key(key: str | bytes) -> bytes:
        """The DHT key of a signed record named ``key`` (``/lnb/<key>``)."""
        raw = key.encode() if isinstance(key, str) else bytes(key)
        if not raw:
            raise LocalProtocolError("a DHT key cannot be empty")
        return raw if raw.startswith(OUR_PREFIX) else OUR_PREFIX + raw

    def _next_seq(self, now: float) -> int:
        self._seq = max(self._seq + 1, int(now * 1000))
        return self._seq

    async def put(self, key: str | bytes, value: bytes, *, ttl_s: float | None = None,
                  quorum: int | None = None) -> PutResult:
        """Sign ``value`` as ours and store it under ``key`` on the k closest peers.

        Raises RecordTooLarge before anything is sent, and QuorumFailed when
        fewer than ``quorum`` (default ``config.put_quorum``) peers stored it;
        the record then stays local and is republished.
        """
        full_key = self.our_key(key)
        now = time.time()
        ttl = self.config.record_ttl_s if ttl_s is None else ttl_s
        if ttl <= 0:
            raise LocalProtocolError("ttl_s must be positive")
        record = SignedRecord.create(full_key, bytes(value), self._identity,
                                     seq=self._next_seq(now), expires_at=now + ttl)
        return await self._put_value(full_key, record.encode(), now + ttl, quorum)

    async def put_raw(self, key: bytes, value: bytes, *, ttl_s: float | None = None,
                      quorum: int | None = None) -> PutResult:
        """Store unsigned bytes under an exact key (a foreign mesh's namespace)."""
        if bytes(key).startswith(OUR_PREFIX):
            raise LocalProtocolError(f"keys under {OUR_PREFIX!r} are signed: use put()")
        now = time.time()
        ttl = self.config.record_ttl_s if ttl_s is None else ttl_s
        return await self._put_value(bytes(key), bytes(value), now + ttl, quorum)

    async def _put_value(self, key: bytes, value: bytes, expires_at: float,
                         quorum: int | None) -> PutResult:
        if len(value) > self.config.max_value_bytes:
            raise RecordTooLarge(len(value), self.config.max_value_bytes)
        now = time.time()
        self.validators.validate(key, value, now)
        stored = self.records.put(StoredRecord(key, value, now, expires_at, local=True), now)
        if not stored:
            raise LimitExceeded(
                f"this node already publishes {self.config.max_local_records} records and "
                "provider keys; raise dht.max_local_records or let some expire")
        needed = self.config.put_quorum if quorum is None else quorum
        peers = await self.closest_peers(key)
        confirmed = await self._send_put(peers, key, value, expires_at, wait_for=needed)
        if len(confirmed) < needed:
            raise QuorumFailed(
                f"record {key!r} stored locally but on {len(confirmed)} of {len(peers)} peers "
                f"found (needed {needed}); it will be republished", stored=len(confirmed),
                needed=needed)
        return PutResult(key, tuple(confirmed))

    async def _send_put(self, peers: Sequence[PeerId], key: bytes, value: bytes,
                        expires_at: float, *, wait_for: int | None = None) -> list[PeerId]:
        """PUT_VALUE to ``peers``; the peers that confirmed.

        Waits for every answer, or with ``wait_for`` only until that many
        peers confirmed: the other copies keep going in the background.
        """
        remaining_s = min(max(1, int(expires_at - time.time())), MAX_WIRE_TTL_S)
        # rust-libp2p peers expect a publisher and read the ttl as the copy's lifetime
        record = WireRecord(key, value, publisher=self._local.to_bytes(), ttl_s=remaining_s)
        message = Message(MessageType.PUT_VALUE, key=key, record=record)
        confirmed: list[PeerId] = []
        answered = 0
        target = len(peers) if wait_for is None else min(wait_for, len(peers))
        enough = anyio.Event()

        async def one(peer: PeerId) -> None:
            nonlocal answered
            try:
                answer = await self._request(peer, message)
                if answer is not None and answer.record is not None and answer.record.key == key:
                    confirmed.append(peer)
            except (LatticaError, OSError, anyio.BrokenResourceError) as exc:
                logger.debug("dht: put to %s failed: %r", peer.short(), exc)
            finally:
                answered += 1
                if len(confirmed) >= target or answered == len(peers):
                    enough.set()

        if wait_for is None or self._tg is None:
            async with anyio.create_task_group() as tg:
                for peer in peers:
                    tg.start_soon(one, peer)
            return confirmed
        if target == 0:
            enough.set()
        for peer in peers:
            self._tg.start_soon(one, peer)
        await enough.wait()
        return list(confirmed)

    async def get(self, key: str | bytes, *, quorum: int | None = None) -> bytes | None:
        """The value of the signed record ``key``, or None.

        With quorum 1 (the default) a copy this node holds (stored, published
        or cached by an earlier get) answers at once; a larger quorum asks the
        network for that many copies and returns the newest valid one.
        """
        record = await self.get_record(key, quorum=quorum)
        return None if record is None else record.value

    async def get_record(self, key: str | bytes, *, quorum: int | None = None
                         ) -> SignedRecord | None:
        """The newest valid signed record ``key`` with its publisher, sequence and expiry."""
        full_key = self.our_key(key)
        raw = await self._get_value(full_key, quorum)
        if raw is None:
            return None
        return SignedRecord.decode(raw, max_bytes=self.config.max_value_bytes)

    async def get_raw(self, key: bytes, *, quorum: int | None = None) -> bytes | None:
        """The exact bytes stored under ``key`` (never decoded), or None."""
        return await self._get_value(bytes(key), quorum)

    async def _get_value(self, key: bytes, quorum: int | None) -> bytes | None:
        wanted = self.config.get_quorum if quorum is None else quorum
        if wanted < 1:
            raise LocalProtocolError("quorum must be at least 1")
        now = time.time()
        local = self.records.get(key, now)
        if local is not None and wanted <= 1:
            return local.value
        target = key_for_bytes(key)
        needed = wanted - (local is not None)
        query = GetValueQuery(key, validators=self.validators, quorum=needed,
                              **self._query_args(target))
        await self._runner.run(query)
        for peer in query.invalid_peers:
            self.penalize(peer, f"sent an invalid record for {key!r}")
        values = [value for _, value in query.values]
        if local is not None:
            values.append(local.value)
        if not values:
            return None
        distinct = list(dict.fromkeys(values))
        best = distinct[self.validators.select(key, distinct)]
        stale = [peer for peer, value in query.values if value != best]
        if stale:
            await self._correct(stale, key, best)
        if local is None or local.value != best:
            self._cache(key, best, now)
        return best

    def _cache(self, key: bytes, value: bytes, now: float) -> None:
        """Keep a record we fetched (validated) so the next get is local."""
        existing = self.records.get(key, now)
        if existing is not None and existing.local:
            return
        self.records.put(StoredRecord(key, value, now, self._expiry(key, value, now)), now)

    def _expiry(self, key: bytes, value: bytes, now: float) -> float:
        """When a stored copy of a record lapses: our TTL, never past a signed expiry."""
        expires = now + self.config.record_ttl_s
        signed = signed_expiry(key, value)
        return expires if signed is None else min(expires, signed)

    async def _correct(self, peers: Sequence[PeerId], key: bytes, best: bytes) -> None:
        """Send the best record to peers that returned an older one."""
        logger.debug("dht: correcting %d peers holding a stale %r", len(peers), key)
        await self._send_put(peers, key, best, self._expiry(key, best, time.time()))

    # -- providers --------------------------------------------------------------------------
    @staticmethod
    def _provider_key(key: str | bytes) -> bytes:
        raw = key.encode() if isinstance(key, str) else bytes(key)
        if not raw:
            raise LocalProtocolError("a provider key cannot be empty")
        return raw

    async def provide(self, key: str | bytes) -> int:
        """Announce that this node serves ``key``; the number of peers told."""
        raw = self._provider_key(key)
        now = time.time()
        addrs = tuple(self._host.listen_addrs)
        record = ProviderRecord(raw, self._local, addrs, now + self.config.provider_ttl_s,
                                local=True)
        if not self.providers.add(record, now):
            raise LimitExceeded(
                f"this node already publishes {self.config.max_local_records} records and "
                "provider keys; raise dht.max_local_records or stop providing some")
        return await self._announce(raw, addrs)

    async def _announce(self, raw: bytes, addrs: tuple[Multiaddr, ...]) -> int:
        peers = await self.closest_peers(raw)
        entry = PeerEntry(self._local, tuple(a.without_peer_id() for a in addrs))
        message = Message(MessageType.ADD_PROVIDER, key=raw, provider_peers=(entry,))
        told = 0

        async def one(peer: PeerId) -> None:
            nonlocal told
            try:
                await self._request(peer, message)
            except (LatticaError, OSError, anyio.BrokenResourceError) as exc:
                logger.debug("dht: add-provider to %s failed: %r", peer.short(), exc)
                return
            told += 1

        async with anyio.create_task_group() as tg:
            for peer in peers:
                tg.start_soon(one, peer)
        return told

    def stop_providing(self, key: str | bytes) -> None:
        """Stop announcing ``key`` (peers forget us when our records expire)."""
        self.providers.remove_local(self._provider_key(key))

    async def find_providers(self, key: str | bytes, *, count: int = 20) -> list[Provider]:
        """Peers that announced ``key``, up to ``count`` (ourselves included if we do)."""
        raw = self._provider_key(key)
        found: dict[PeerId, Provider] = {}
        for record in self.providers.get(raw, time.time(), limit=count):
            found[record.provider] = Provider(record.provider, record.addrs)
        if len(found) >= count:
            return list(found.values())[:count]
        target = key_for_bytes(raw)
        query = GetProvidersQuery(raw, count=count, **self._query_args(target))
        await self._runner.run(query)
        for entry in query.providers:
            if entry.peer_id not in found:
                found[entry.peer_id] = Provider(entry.peer_id, entry.addrs)
        return list(found.values())[:count]

    # -- peers ---------------------------------------------------------------------------
    async def find_peer(self, peer: PeerId | str) -> PeerEntry | None:
        """Addresses of ``peer`` from the DHT (added to the node's address book), or None."""
        target = PeerId.from_string(peer) if isinstance(peer, str) else peer
        if self._host.is_connected(target):
            return PeerEntry(target, tuple(self._host.known_addresses(target)))
        query = FindPeerQuery(target, **self._query_args(key_for_peer(target)))
        await self._runner.run(query)
        found = query.found
        if found is not None and found.addrs:
            self._host.add_addresses(target, list(found.addrs))
        known = self._host.known_addresses(target)
        return PeerEntry(target, tuple(known)) if known else None

    # -- maintenance -------------------------------------------------------------------------
    async def _maintenance_loop(self) -> None:
        while True:
            await anyio.sleep(self.config.maintenance_interval_s)
            try:
                await self.maintain()
            except LatticaError as exc:
                logger.info("dht: maintenance round failed: %s", exc)

    async def _prune_loop(self) -> None:
        """Close kept request streams once idle, so idle connections can close too."""
        while True:
            await anyio.sleep(IDLE_STREAM_S / 2)
            await self._requester.prune()

    async def maintain(self) -> None:
        """One maintenance round: expire, republish what is due, refresh buckets, save."""
        now = time.time()
        await self._requester.prune()
        self.records.expire(now)
        self.providers.expire(now)
        if now - self._last_republish >= self.config.republish_interval_s:
            self._last_republish = now
            for record in self.records.local_records():
                await self._send_put(await self.closest_peers(record.key), record.key,
                                     record.value, record.expires_at)
        if now - self._last_provider_republish >= self.config.provider_republish_interval_s:
            self._last_provider_republish = now
            addrs = tuple(self._host.listen_addrs)
            for key in self.providers.local_keys():
                # renew our own record too: providing lasts until stop_providing()
                self.providers.add(ProviderRecord(key, self._local, addrs,
                                                  now + self.config.provider_ttl_s, local=True),
                                   now)
                await self._announce(key, addrs)
        await self._refresh(force=False)
        self._save_routing()

    async def _refresh(self, *, force: bool) -> None:
        interval = 0.0 if force else self.config.refresh_interval_s
        due = self.routing.buckets_to_refresh(time.time(), interval)
        local_key = key_for_peer(self._local)
        for index in due[:MAX_REFRESH_PER_ROUND]:
            if len(self.routing) == 0:
                return
            key = preimage_in_bucket(local_key, index, self._rng)
            if key is not None:  # deep buckets: covered by the lookup of our own id
                await self.closest_peers(key)

    def _save_routing(self) -> None:
        if self._db is None:
            return
        rows = [(e.peer_id, e.addrs, e.last_seen) for e in self.routing.entries()]
        try:
            self._db.save_routing(rows)
        except LatticaError as exc:
            logger.warning("dht: could not save the routing table: %s", exc)

    def _restore_routing(self) -> None:
        if self._db is None:
            return
        for peer, addrs, last_seen in self._db.load_routing():
            if peer == self._local:
                continue
            self._host.add_addresses(peer, list(addrs))
            self.routing.update(peer, addrs, last_seen)

