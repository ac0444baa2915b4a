"""The iterative Kademlia lookup, sans-IO (libp2p/specs kad-dht, "Peer routing").

A :class:`Lookup` walks toward a target key. It keeps the candidates it has
heard of sorted by XOR distance to the target and asks the closest ones it has
not asked yet, at most ``alpha`` at a time and only among the ``k`` closest
candidates still believed in (a farther one is never worth a request: it
cannot change the result). Each answer brings closer peers;
a peer that fails or does not answer within ``request_timeout_s`` is dropped.
The lookup is done when the ``k`` closest peers it still believes in have all
answered: nothing closer is waiting or left to ask (go-libp2p-kad-dht's
termination rule). When ``alpha`` answers in a row bring nothing closer than
the best peer known, the lookup is *stalled* and asks up to ``k`` at a time,
as rust-libp2p's ``ClosestPeersIter`` does.

Memory is bounded whatever peers send: only the ``max_candidates`` closest
candidates are kept (default ``4 * k``) and each answer contributes at most
its ``k`` closest peers, so a peer answering with thousands of bogus ids costs
time (those ids are asked and time out) but neither memory nor the real peers
already known.

The driver moves the messages::

    for peer in lookup.next_requests(now): send FIND_NODE (or GET_VALUE...) to peer
    on an answer:  lookup.on_response(peer, closer_ids, now)
    on an error:   lookup.on_failure(peer, now)
    when now >= lookup.get_timer(): lookup.handle_timer(now); for peer in
        lookup.pop_timed_out(): cancel that request, tell the routing table
    until lookup.done

Nothing here reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain, islice

from ..errors import LocalProtocolError
from ..identity import PeerId
from .keys import KadKey, key_for_peer

__all__ = ["Lookup", "LookupStats"]

DEFAULT_K = 20
DEFAULT_ALPHA = 3
DEFAULT_REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class LookupStats:
    """What a lookup did so far."""

    requests: int = 0
    """Requests the lookup asked the driver to send."""
    responses: int = 0
    """Answers taken in (a late answer after a timeout counts too)."""
    failures: int = 0
    """Requests the driver reported failed (:meth:`Lookup.on_failure`)."""
    timeouts: int = 0
    """Requests with no answer within the request timeout."""


# Candidate states (plain ints: compared on every step).
_NOT_CONTACTED = 0
_WAITING = 1
_SUCCEEDED = 2
_FAILED = 3
_TIMED_OUT = 4  # failed for the lookup, but a late answer is still taken


class _Peer:
    __slots__ = ("hops", "peer", "state")

    def __init__(self, peer: PeerId, hops: int) -> None:
        self.peer = peer
        self.hops = hops
        self.state = _NOT_CONTACTED


class Lookup:
    """An iterative Kademlia lookup toward ``target``; see the module docstring.

    ``seeds`` (typically the k closest peers of the routing table) are 1 hop
    away; ``local`` is never a candidate. ``now`` is the start time (request
    deadlines are set by :meth:`next_requests`).
    """

    def __init__(
        self,
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
        if k < 1 or alpha < 1:
            raise LocalProtocolError(f"a lookup needs k >= 1 and alpha >= 1 (k={k}, alpha={alpha})")
        if not request_timeout_s > 0:
            raise LocalProtocolError(f"request_timeout_s must be positive, got {request_timeout_s}")
        if max_candidates is None:
            max_candidates = 4 * k
        if max_candidates < k:
            raise LocalProtocolError(f"max_candidates ({max_candidates}) must be at least k ({k})")
        self._target = target
        self._target_int = int.from_bytes(target, "big")
        self._k = k
        self._alpha = alpha
        self._timeout_s = request_timeout_s
        self._local_dist = -1 if local is None else self._distance(local)
        self._max_candidates = max_candidates
        # Peers are keyed by their XOR distance to the target (unique per peer; int keys
        # hash fast). _dists: the candidates still believed in (not failed), ascending.
        self._dists: list[int] = []
        # Every candidate in _dists plus every peer ever asked (dedup, hops, late answers).
        self._peers: dict[int, _Peer] = {}
        self._waiting: dict[int, float] = {}  # distance -> deadline
        self._timed_out: list[PeerId] = []
        self._no_progress = 0
        self._stalled = False
        self._stopped = False
        self._done = False
        self._requests = self._responses = self._failures = self._timeouts = 0
        self._add_candidates(seeds, hops=1, source=-1, limit=max_candidates)
        self._refresh()

    # -- what the driver reads ------------------------------------------------------------

    @property
    def target(self) -> KadKey:
        return self._target

    @property
    def done(self) -> bool:
        """Stopped, or the ``k`` closest live candidates all answered and none is waiting."""
        return self._done

    @property
    def stats(self) -> LookupStats:
        return LookupStats(self._requests, self._responses, self._failures, self._timeouts)

    @property
    def candidates(self) -> int:
        """Candidates held (never more than ``max_candidates``)."""
        return len(self._dists)

    @property
    def in_flight(self) -> int:
        """Requests sent and neither answered, failed nor timed out."""
        return len(self._waiting)

    def closest(self, count: int | None = None) -> list[PeerId]:
        """Peers that answered, ascending distance to the target (``k`` of them by default)."""
        limit = self._k if count is None else count
        out: list[PeerId] = []
        peers = self._peers
        for dist in self._dists:
            if len(out) >= limit:
                break
            info = peers[dist]
            if info.state == _SUCCEEDED:
                out.append(info.peer)
        return out

    def hops(self, peer: PeerId) -> int:
        """Seeds are 1 hop; a peer first heard of from a peer at hop ``h`` is ``h + 1``.

        A peer heard of from several peers keeps the smallest count. Raises
        LocalProtocolError for a peer this lookup does not know (or has forgotten:
        a candidate pushed out of the bounded set and never asked).
        """
        info = self._peers.get(self._distance(peer))
        if info is None:
            raise LocalProtocolError(f"peer {peer.short()} is not known to this lookup")
        return info.hops

    def awaiting(self, peer: PeerId) -> bool:
        """Whether an answer from ``peer`` is expected (asked, not yet answered or failed).

        A peer whose request timed out still counts: its late answer is taken.
        """
        info = self._peers.get(self._distance(peer))
        return info is not None and info.state in (_WAITING, _TIMED_OUT)

    def get_timer(self) -> float | None:
        """When the earliest outstanding request times out; None when nothing is waiting."""
        if self._done or not self._waiting:
            return None
        return min(self._waiting.values())

    # -- what the driver feeds in ---------------------------------------------------------

    def next_requests(self, now: float) -> list[PeerId]:
        """Peers to send a request to now; marks them waiting until ``now + request_timeout_s``."""
        self._expire(now)
        if self._done:
            return []
        room = (self._k if self._stalled else self._alpha) - len(self._waiting)
        out: list[PeerId] = []
        if room <= 0:
            return out
        deadline = now + self._timeout_s
        peers = self._peers
        for dist in self._dists[: self._k]:
            info = peers[dist]
            if info.state == _NOT_CONTACTED:
                info.state = _WAITING
                self._waiting[dist] = deadline
                out.append(info.peer)
                room -= 1
                if room == 0:
                    break
        self._requests += len(out)
        self._refresh()
        return out

    def on_response(self, peer: PeerId, closer: Iterable[PeerId], now: float) -> None:
        """``peer`` answered with ``closer`` peers. Answers nobody asked for are ignored."""
        if self._done:
            return
        dist = self._distance(peer)
        info = self._peers.get(dist)
        if info is None or info.state not in (_WAITING, _TIMED_OUT):
            return
        if info.state == _WAITING:
            del self._waiting[dist]
        else:  # a late answer: the peer is back among the candidates
            self._insert(dist)
        info.state = _SUCCEEDED
        self._responses += 1
        best = self._dists[0]
        self._add_candidates(closer, hops=info.hops + 1, source=dist, limit=self._k)
        if self._dists[0] < best:
            self._no_progress = 0
            self._stalled = False
        else:
            self._no_progress += 1
            if self._no_progress >= self._alpha:
                self._stalled = True
        self._refresh()

    def on_failure(self, peer: PeerId, now: float) -> None:
        """The request to ``peer`` failed (no connection, reset, undecodable answer)."""
        dist = self._distance(peer)
        info = self._peers.get(dist)
        if info is None:
            return
        if info.state == _WAITING:
            del self._waiting[dist]
            self._failures += 1
            self._drop(dist)
        elif info.state != _TIMED_OUT:
            return
        info.state = _FAILED
        self._refresh()

    def handle_timer(self, now: float) -> None:
        """Requests past their deadline count as failed (see :meth:`pop_timed_out`)."""
        self._expire(now)

    def pop_timed_out(self) -> list[PeerId]:
        """Peers whose request timed out since the last call: cancel those requests.

        The lookup still takes a late answer from them (rust-libp2p does the same).
        """
        out, self._timed_out = self._timed_out, []
        return out

    def stop(self) -> None:
        """End the lookup now; it sends nothing more and ignores answers."""
        self._stopped = True
        self._done = True
        self._waiting.clear()

    # -- internals ------------------------------------------------------------------------

    def _distance(self, peer: PeerId) -> int:
        return int.from_bytes(key_for_peer(peer), "big") ^ self._target_int

    def _expire(self, now: float) -> None:
        if not self._waiting:
            return
        expired = [dist for dist, deadline in self._waiting.items() if deadline <= now]
        if not expired:
            return
        for dist in expired:
            del self._waiting[dist]
            info = self._peers[dist]
            info.state = _TIMED_OUT
            self._drop(dist)
            self._timed_out.append(info.peer)
        self._timeouts += len(expired)
        self._refresh()

    def _add_candidates(self, peers: Iterable[PeerId], *, hops: int, source: int,
                        limit: int) -> None:
        """Take the ``limit`` closest of ``peers`` (bounded memory however many there are)."""
        target = self._target_int
        it = iter(peers)
        scored = [(int.from_bytes(key_for_peer(p), "big") ^ target, p) for p in islice(it, limit)]
        extra = next(it, None)
        if extra is not None:  # more than an honest peer sends
            rest = ((int.from_bytes(key_for_peer(p), "big") ^ target, p)
                    for p in chain((extra,), it))
            scored = heapq.nsmallest(limit, chain(scored, rest), key=_first)
        peers_by_dist = self._peers
        dists = self._dists
        local = self._local_dist
        for dist, peer in scored:
            if dist == local or dist == source:
                continue
            info = peers_by_dist.get(dist)
            if info is not None:
                if hops < info.hops:
                    info.hops = hops
                continue
            if len(dists) >= self._max_candidates and dist >= dists[-1]:
                continue
            peers_by_dist[dist] = _Peer(peer, hops)
            self._insert(dist)

    def _insert(self, dist: int) -> None:
        dists = self._dists
        dists.insert(bisect.bisect_left(dists, dist), dist)
        while len(dists) > self._max_candidates:
            dropped = dists.pop()
            if self._peers[dropped].state == _NOT_CONTACTED:
                del self._peers[dropped]  # never asked: forget it entirely

    def _drop(self, dist: int) -> None:
        index = bisect.bisect_left(self._dists, dist)
        if index < len(self._dists) and self._dists[index] == dist:
            del self._dists[index]

    def _refresh(self) -> None:
        if self._stopped:
            self._done = True
            return
        peers = self._peers
        for dist in self._dists[: self._k]:
            if peers[dist].state != _SUCCEEDED:
                self._done = False
                return
        # The k closest live candidates answered (or fewer exist, all answered).
        self._done = True
        self._waiting.clear()


def _first(item: tuple[int, PeerId]) -> int:
    return item[0]
