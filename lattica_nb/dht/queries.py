"""Kademlia queries over a :class:`~.lookup.Lookup` (sans-IO): values, providers, a peer.

Each query owns a lookup and adds its own stop rule; the driver sends the
query's request message (``request``) to every peer :meth:`next_requests`
names and feeds each decoded answer to :meth:`on_response`:

* :class:`GetValueQuery` stops once ``quorum`` peers returned a valid value
  (checked with the :class:`~.records.Validators`) and keeps the peers that
  answered without the best value, for correction (``outdated_peers``).
* :class:`GetProvidersQuery` stops once ``count`` distinct providers are known.
* :class:`FindPeerQuery` stops as soon as an answer names the target (or the
  target itself answers).

Otherwise each runs until its lookup converges. ``delivered_by`` /
``delivered_hops`` say which peer first brought the result and how many hops
away it was (0: already known from the seeds).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import DecodeError, VerificationError
from ..identity import PeerId
from .keys import KadKey, key_for_bytes, key_for_peer
from .lookup import DEFAULT_ALPHA, DEFAULT_K, DEFAULT_REQUEST_TIMEOUT_S, Lookup, LookupStats
from .messages import Message, MessageType, PeerEntry

if TYPE_CHECKING:
    from .records import Validators

__all__ = ["ClosestPeersQuery", "FindPeerQuery", "GetProvidersQuery", "GetValueQuery", "Query"]

logger = logging.getLogger(__name__)


class Query:
    """A lookup plus a request message; subclasses read the answers."""

    def __init__(
        self,
        target: KadKey,
        request: Message,
        seeds: Iterable[PeerId],
        *,
        now: float,
        k: int,
        alpha: int,
        request_timeout_s: float,
        local: PeerId | None,
        max_candidates: int | None,
    ) -> None:
        self.request = request
        self._lookup = Lookup(
            target, seeds, now=now, k=k, alpha=alpha, request_timeout_s=request_timeout_s,
            local=local, max_candidates=max_candidates,
        )  # fmt: skip
        self._delivered_by: PeerId | None = None
        self._delivered_hops: int | None = None

    @property
    def lookup(self) -> Lookup:
        return self._lookup

    @property
    def done(self) -> bool:
        return self._lookup.done

    @property
    def stats(self) -> LookupStats:
        return self._lookup.stats

    @property
    def delivered_by(self) -> PeerId | None:
        """The peer whose answer first brought the result; None if none did (or it was local)."""
        return self._delivered_by

    @property
    def delivered_hops(self) -> int | None:
        """Hops of :attr:`delivered_by` (0 when a seed was the result); None without a result."""
        return self._delivered_hops

    def next_requests(self, now: float) -> list[PeerId]:
        return self._lookup.next_requests(now)

    def on_failure(self, peer: PeerId, now: float) -> None:
        self._lookup.on_failure(peer, now)

    def get_timer(self) -> float | None:
        return self._lookup.get_timer()

    def handle_timer(self, now: float) -> None:
        self._lookup.handle_timer(now)

    def pop_timed_out(self) -> list[PeerId]:
        return self._lookup.pop_timed_out()

    def stop(self) -> None:
        self._lookup.stop()

    def on_response(self, peer: PeerId, response: Message, now: float) -> None:
        """``peer`` answered ``response`` (already decoded and bounded by the driver)."""
        if self._lookup.done:
            return
        if not self._lookup.awaiting(peer):
            return  # nobody asked this peer (or it already answered)
        if self._take(peer, response, now) and self._delivered_by is None:
            self._delivered_by, self._delivered_hops = peer, self._lookup.hops(peer)
        self._lookup.on_response(peer, (e.peer_id for e in response.closer_peers), now)
        if self._enough():
            self._lookup.stop()

    def _take(self, peer: PeerId, response: Message, now: float) -> bool:
        """Read one answer; True when it brought (part of) the result."""
        raise NotImplementedError

    def _enough(self) -> bool:
        raise NotImplementedError


class GetValueQuery(Query):
    """GET_VALUE for ``key``: valid values from up to ``quorum`` peers."""

    def __init__(
        self,
        key: bytes,
        seeds: Iterable[PeerId],
        *,
        now: float,
        validators: Validators,
        quorum: int = 1,
        k: int = DEFAULT_K,
        alpha: int = DEFAULT_ALPHA,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        local: PeerId | None = None,
        max_candidates: int | None = None,
    ) -> None:
        self.key = bytes(key)
        self._validators = validators
        self._quorum = max(1, quorum)
        self._values: dict[PeerId, bytes] = {}
        self._without: set[PeerId] = set()  # answered with no (valid) value
        self._invalid: set[PeerId] = set()
        super().__init__(
            key_for_bytes(self.key), Message(MessageType.GET_VALUE, key=self.key), seeds,
            now=now, k=k, alpha=alpha, request_timeout_s=request_timeout_s, local=local,
            max_candidates=max_candidates,
        )  # fmt: skip

    @property
    def values(self) -> list[tuple[PeerId, bytes]]:
        """Valid values received, in arrival order, one per peer."""
        return list(self._values.items())

    @property
    def invalid_peers(self) -> list[PeerId]:
        """Peers that sent a record that failed validation (worth penalising)."""
        return sorted(self._invalid)

    def best(self) -> bytes | None:
        """The best valid value received (the key's validator chooses); None without one."""
        if not self._values:
            return None
        distinct = list(dict.fromkeys(self._values.values()))
        try:
            return distinct[self._validators.select(self.key, distinct)]
        except (DecodeError, VerificationError):
            return None

    def outdated_peers(self, best: bytes | None = None) -> list[PeerId]:
        """Peers that answered without ``best`` (no value, an invalid one or a worse one).

        Closest to the key first, at most ``k``; send them ``best`` (PUT_VALUE) to
        correct them. ``best`` defaults to :meth:`best`.
        """
        value = self.best() if best is None else best
        if value is None:
            return []
        answered = self._lookup.closest()
        return [peer for peer in answered if self._values.get(peer) != value]

    def _take(self, peer: PeerId, response: Message, now: float) -> bool:
        record = response.record
        if record is None or record.key != self.key:
            self._without.add(peer)
            return False
        try:
            self._validators.validate(self.key, record.value, now)
        except (DecodeError, VerificationError) as exc:
            logger.warning("dht: %s sent an invalid record for %r: %s", peer.short(), self.key, exc)
            self._invalid.add(peer)
            return False
        self._values[peer] = record.value
        return True

    def _enough(self) -> bool:
        return len(self._values) >= self._quorum


class GetProvidersQuery(Query):
    """GET_PROVIDERS for ``key``: up to ``count`` distinct providers."""

    def __init__(
        self,
        key: bytes,
        seeds: Iterable[PeerId],
        *,
        now: float,
        count: int = DEFAULT_K,
        k: int = DEFAULT_K,
        alpha: int = DEFAULT_ALPHA,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        local: PeerId | None = None,
        max_candidates: int | None = None,
    ) -> None:
        self.key = bytes(key)
        self._count = max(1, count)
        self._providers: dict[PeerId, PeerEntry] = {}
        super().__init__(
            key_for_bytes(self.key), Message(MessageType.GET_PROVIDERS, key=self.key), seeds,
            now=now, k=k, alpha=alpha, request_timeout_s=request_timeout_s, local=local,
            max_candidates=max_candidates,
        )  # fmt: skip

    @property
    def providers(self) -> list[PeerEntry]:
        """Providers found, in arrival order (the first entry seen for each peer), ≤ count."""
        return list(self._providers.values())

    def _take(self, peer: PeerId, response: Message, now: float) -> bool:
        found = False
        for entry in response.provider_peers:
            if len(self._providers) >= self._count:
                break
            if entry.peer_id not in self._providers:
                self._providers[entry.peer_id] = entry
                found = True
        return found

    def _enough(self) -> bool:
        return len(self._providers) >= self._count


class FindPeerQuery(Query):
    """FIND_NODE for a peer id, stopping as soon as some answer names it."""

    def __init__(
        self,
        target: PeerId,
        seeds: Iterable[PeerId],
        *,
        now: float,
        k: int = DEFAULT_K,
        alpha: int = DEFAULT_ALPHA,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        local: PeerId | None = None,
        max_candidates: int | None = None,
    ) -> None:
        self.target = target
        self._found: PeerEntry | None = None
        seeds = list(seeds)
        super().__init__(
            key_for_peer(target), Message(MessageType.FIND_NODE, key=target.to_bytes()), seeds,
            now=now, k=k, alpha=alpha, request_timeout_s=request_timeout_s, local=local,
            max_candidates=max_candidates,
        )  # fmt: skip
        if target in seeds:  # already known: nothing to ask
            self._found = PeerEntry(target)
            self._delivered_hops = 0
            self._lookup.stop()

    @property
    def found(self) -> PeerEntry | None:
        """The target as an answer named it (with the addresses it gave); None if not found."""
        return self._found

    def _take(self, peer: PeerId, response: Message, now: float) -> bool:
        if self._found is not None:
            return False
        if peer == self.target:
            self._found = PeerEntry(peer)
            return True
        for entry in response.closer_peers:
            if entry.peer_id == self.target:
                self._found = entry
                return True
        return False

    def _enough(self) -> bool:
        return self._found is not None


class ClosestPeersQuery(Query):
    """FIND_NODE for any key: the k closest peers that answered (no early stop)."""

    def __init__(
        self,
        key: bytes,
        target: KadKey,
        seeds: Iterable[PeerId],
        *,
        now: float,
        k: int = DEFAULT_K,
        alpha: int = DEFAULT_ALPHA,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        local: PeerId | None = None,
        max_candidates: int | None = None,
    ) -> None:
        super().__init__(
            target, Message(MessageType.FIND_NODE, key=bytes(key)), seeds,
            now=now, k=k, alpha=alpha, request_timeout_s=request_timeout_s, local=local,
            max_candidates=max_candidates,
        )  # fmt: skip

    def closest(self, count: int | None = None) -> list[PeerId]:
        """Peers that answered, closest to the target first."""
        return self._lookup.closest(count)

    def _take(self, peer: PeerId, response: Message, now: float) -> bool:
        return False

    def _enough(self) -> bool:
        return False
