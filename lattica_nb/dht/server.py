"""Answers to inbound Kademlia requests, sans-IO (libp2p/specs kad-dht, "RPC messages").

:class:`KadServer` turns one decoded request from ``sender`` into the answer
to send back, or None:

* ``FIND_NODE``: the ``k`` peers of the routing table closest to
  ``sha256(key)``, the requester left out.
* ``GET_VALUE``: the record held under ``key`` (if any, unexpired) and the
  closer peers.
* ``PUT_VALUE``: the record is validated (:class:`~.records.Validators`),
  compared with the one held (the validator's ``select`` keeps the better;
  a new value wins a tie, as go-libp2p-kad-dht does) and stored; the answer
  echoes the request. None (the driver resets the stream) when the record is
  invalid, its key differs from the message key, an older value than the one
  held, or refused by the store's limits.
* ``ADD_PROVIDER``: only provider entries naming the sender itself are
  stored; always None, as the spec has no answer to it.
* ``GET_PROVIDERS``: up to ``k`` providers of ``key`` and the closer peers.
* ``PING``: echoed (deprecated in the spec, still answered).

The server never adds ``sender`` to the routing table: only the driver knows
whether it is a DHT server (identify, the protocols it speaks). Answers stay
under ``max_response_bytes`` (rust-libp2p's 16 KiB packet limit) by leaving
out the farthest closer peers. ``now`` is wall-clock seconds (record expiry is
absolute); nothing here reads a clock.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from ..errors import DecodeError, VerificationError
from ..identity import PeerId
from ..multiaddr import Multiaddr
from .keys import key_for_bytes, key_for_peer
from .messages import Message, MessageType, PeerEntry, WireRecord
from .records import Validators, signed_expiry
from .routing import RoutingTable
from .store import ProviderRecord, ProviderStore, RecordStore, StoredRecord

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "KadServer"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024
"""rust-libp2p's default maximum kad packet."""
DEFAULT_RECORD_TTL_S = 36 * 3600.0
DEFAULT_PROVIDER_TTL_S = 48 * 3600.0

# Protobuf overhead bounds used to size an answer without encoding it.
_MESSAGE_OVERHEAD_BYTES = 32
_PEER_OVERHEAD_BYTES = 8
_ADDR_OVERHEAD_BYTES = 3
_RECORD_OVERHEAD_BYTES = 64


class KadServer:
    """Sans-IO answers to Kademlia requests; see the module docstring."""

    def __init__(
        self,
        local: PeerId,
        routing: RoutingTable,
        records: RecordStore,
        providers: ProviderStore,
        validators: Validators,
        *,
        k: int = 20,
        record_ttl_s: float = DEFAULT_RECORD_TTL_S,
        provider_ttl_s: float = DEFAULT_PROVIDER_TTL_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._local = local
        self._routing = routing
        self._records = records
        self._providers = providers
        self._validators = validators
        self._k = k
        self._record_ttl_s = record_ttl_s
        self._provider_ttl_s = provider_ttl_s
        self._max_response_bytes = max_response_bytes
        # id(RoutingEntry) -> its PeerEntry and encoded size, reused while the entry holds the
        # same peer and addresses (checked by identity, so a reused id is harmless).
        self._entries: dict[int, tuple[PeerEntry, int]] = {}

    def handle(self, sender: PeerId, request: Message, now: float) -> Message | None:
        """The answer to ``request`` from ``sender``; None to refuse (or for ADD_PROVIDER)."""
        kind = request.type
        if kind is MessageType.FIND_NODE:
            closer, sizes = self._closer(request.key, sender)
            return self._fit(Message(MessageType.FIND_NODE, key=request.key, closer_peers=closer,
                                     cluster_level=request.cluster_level), sizes)
        if kind is MessageType.GET_VALUE:
            return self._get_value(sender, request, now)
        if kind is MessageType.PUT_VALUE:
            return self._put_value(sender, request, now)
        if kind is MessageType.ADD_PROVIDER:
            self._add_provider(sender, request, now)
            return None
        if kind is MessageType.GET_PROVIDERS:
            return self._get_providers(sender, request, now)
        if kind is MessageType.PING:
            return Message(MessageType.PING, cluster_level=request.cluster_level)
        return None  # unreachable: decode_message refuses unknown types

    # -- requests ------------------------------------------------------------------------

    def _get_value(self, sender: PeerId, request: Message, now: float) -> Message | None:
        key = request.key
        if not key:
            logger.debug("peer %s: GET_VALUE without a key", sender.short())
            return None
        stored = self._records.get(key, now)
        record = None
        if stored is not None:
            remaining = int(stored.expires_at - now)
            record = WireRecord(key, stored.value, time_received=_rfc3339(stored.received_at),
                                ttl_s=remaining if 0 < remaining < 1 << 32 else None)
        closer, sizes = self._closer(key, sender)
        return self._fit(Message(MessageType.GET_VALUE, key=key, record=record,
                                 closer_peers=closer, cluster_level=request.cluster_level), sizes)

    def _put_value(self, sender: PeerId, request: Message, now: float) -> Message | None:
        record = request.record
        key = request.key
        if record is None or not key or record.key != key:
            logger.warning("peer %s: PUT_VALUE whose record key does not match %r",
                           sender.short(), key)
            return None
        try:
            self._validators.validate(key, record.value, now)
        except (DecodeError, VerificationError) as exc:
            logger.warning("peer %s: invalid record for %r refused: %s", sender.short(), key, exc)
            return None
        held = self._records.get(key, now)
        if held is not None and held.value != record.value:
            try:
                better = self._validators.select(key, [record.value, held.value])
            except (DecodeError, VerificationError):
                better = 0  # the held value no longer validates: replace it
            if better != 0:
                logger.debug("peer %s: PUT_VALUE of an older %r refused", sender.short(), key)
                return None
        ttl_s = self._record_ttl_s
        if record.ttl_s is not None and 0 < record.ttl_s < ttl_s:
            ttl_s = float(record.ttl_s)
        expires_at = now + ttl_s
        signed = signed_expiry(key, record.value)
        if signed is not None:
            expires_at = min(expires_at, signed)  # a copy never outlives its signed expiry
        if not self._records.put(StoredRecord(key, record.value, now, expires_at), now):
            logger.debug("peer %s: record %r refused by the store limits", sender.short(), key)
            return None
        return request

    def _add_provider(self, sender: PeerId, request: Message, now: float) -> None:
        key = request.key
        if not key:
            return
        for entry in request.provider_peers:
            if entry.peer_id != sender:
                logger.warning("peer %s: ADD_PROVIDER for another peer %s ignored",
                               sender.short(), entry.peer_id.short())
                continue
            record = ProviderRecord(key, sender, entry.addrs, now + self._provider_ttl_s)
            self._providers.add(record, now)

    def _get_providers(self, sender: PeerId, request: Message, now: float) -> Message | None:
        key = request.key
        if not key:
            return None
        providers = tuple(PeerEntry(r.provider, r.addrs)
                          for r in self._providers.get(key, now, limit=self._k))
        closer, sizes = self._closer(key, sender)
        return self._fit(Message(MessageType.GET_PROVIDERS, key=key, provider_peers=providers,
                                 closer_peers=closer, cluster_level=request.cluster_level), sizes)

    # -- helpers ---------------------------------------------------------------------------

    def _closer(self, key: bytes, sender: PeerId) -> tuple[tuple[PeerEntry, ...], list[int]]:
        """The k closest entries to ``sha256(key)`` but the sender, and their encoded sizes."""
        sender_key = key_for_peer(sender)
        cache = self._entries
        if len(cache) > 4 * len(self._routing) + 64:
            cache.clear()  # forget entries long gone from the table
        out: list[PeerEntry] = []
        sizes: list[int] = []
        for entry in self._routing.closest(key_for_bytes(key), self._k + 1):
            if entry.key == sender_key:
                continue
            cached = cache.get(id(entry))
            if cached is None or cached[0].peer_id is not entry.peer_id \
                    or cached[0].addrs is not entry.addrs:
                made = PeerEntry(entry.peer_id, entry.addrs)
                cached = cache[id(entry)] = (made, _peer_bytes(made))
            out.append(cached[0])
            sizes.append(cached[1])
            if len(out) == self._k:
                break
        return tuple(out), sizes

    def _fit(self, message: Message, closer_sizes: list[int]) -> Message:
        """``message`` with the farthest closer peers left out until it fits the size bound."""
        size = _MESSAGE_OVERHEAD_BYTES + len(message.key)
        if message.record is not None:
            size += _RECORD_OVERHEAD_BYTES + len(message.record.key) + len(message.record.value)
        providers = _fit_providers(message.provider_peers,
                                   self._max_response_bytes - size)
        size += sum(_peer_bytes(e) for e in providers)
        keep = len(closer_sizes)
        total = size + sum(closer_sizes)
        while keep and total > self._max_response_bytes:
            keep -= 1
            total -= closer_sizes[keep]
        if keep == len(closer_sizes) and providers is message.provider_peers:
            return message
        return Message(message.type, key=message.key, record=message.record,
                       closer_peers=message.closer_peers[:keep],
                       provider_peers=providers,
                       cluster_level=message.cluster_level)


def _fit_providers(entries: tuple[PeerEntry, ...], budget: int) -> tuple[PeerEntry, ...]:
    """Provider entries within ``budget`` bytes: each keeps its first addresses that fit
    (at least one), and entries that no longer fit are left out (the asker can ask again)."""
    if sum(_peer_bytes(e) for e in entries) <= budget:
        return entries
    kept: list[PeerEntry] = []
    per_entry = max(budget // max(len(entries), 1), _PEER_OVERHEAD_BYTES + 64)
    for entry in entries:
        addrs: list[Multiaddr] = []
        size = _PEER_OVERHEAD_BYTES + len(entry.peer_id.to_bytes())
        for addr in entry.addrs:
            extra = _ADDR_OVERHEAD_BYTES + len(addr.to_bytes())
            if addrs and size + extra > per_entry:
                break
            addrs.append(addr)
            size += extra
        if size > budget:
            break
        budget -= size
        kept.append(PeerEntry(entry.peer_id, tuple(addrs), entry.connection))
    return tuple(kept)


def _peer_bytes(entry: PeerEntry) -> int:
    size = _PEER_OVERHEAD_BYTES + len(entry.peer_id.to_bytes())
    for addr in entry.addrs:
        size += _ADDR_OVERHEAD_BYTES + len(addr.to_bytes())
    return size


def _rfc3339(unix_s: float) -> str:
    """``timeReceived`` as go-libp2p-kad-dht writes it: RFC 3339, UTC (microseconds here)."""
    try:
        moment = datetime.fromtimestamp(unix_s, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
