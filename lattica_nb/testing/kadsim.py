"""A discrete-event Kademlia network in memory, running the real DHT cores.

Every simulated node has a :class:`~lattica_nb.dht.routing.RoutingTable`, a
:class:`~lattica_nb.dht.server.KadServer` over in-memory stores, and runs
:class:`~lattica_nb.dht.lookup.Lookup` and the queries of
:mod:`lattica_nb.dht.queries` exactly as a node does. Only the transport is
simulated: a heap of timed events, a random one-way latency per message,
optional message loss, and a clock that jumps from event to event. Messages
travel as :class:`~lattica_nb.dht.messages.Message` objects (the codec is not
exercised here; it has its own tests).

A run (:func:`simulate`):

1. **Join.** Nodes join one at a time, as a node bootstraps: the newcomer
   knows one random node already in, looks up its own id through it, and
   keeps every peer that answered (if nobody did, it tries again through
   another node, up to 3 times). Peers that receive a request add the
   requester (all nodes are DHT servers). A full bucket pings its
   least-recently-seen entry (the ping protocol of the routing table).
2. **Publish.** ``records`` values (PUT_VALUE) and ``records`` provider
   records (ADD_PROVIDER) go from random nodes to the k closest peers a
   lookup finds.
3. **Query.** ``lookups`` of each kind start every ``lookup_interval_s`` from
   random nodes that stay up: FIND_NODE of a random node that stays up,
   GET_VALUE and GET_PROVIDERS of random published keys. With ``churn``, that
   fraction of the nodes leaves at random times during the first half of this
   phase: they stop answering (requests to them time out) and stay in the
   others' tables until failures evict them.

Success: the peer was named by an answer (or was already in the requester's
table: 0 hops), the published value came back, the provider was found. Hops
are those of the peer whose answer delivered it (seeds = 1).
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from ..dht.keys import KadKey, key_for_bytes, key_for_peer, preimage_in_bucket
from ..dht.lookup import Lookup
from ..dht.messages import Message, MessageType, PeerEntry, WireRecord
from ..dht.queries import FindPeerQuery, GetProvidersQuery, GetValueQuery
from ..dht.records import Validators
from ..dht.routing import RoutingTable
from ..dht.server import KadServer
from ..dht.store import ProviderRecord, ProviderStore, RecordStore, StoredRecord
from ..errors import ConfigError
from ..identity import PeerId

__all__ = ["KindReport", "SimConfig", "SimReport", "simulate"]

KINDS = ("FIND_NODE", "GET_VALUE", "GET_PROVIDERS")
_TTL_S = 1e9
_MAX_REFRESH = 16  # buckets refreshed per round, as Dht does
_PREIMAGE_TRIES = 1 << 10  # a bucket needing more is deep: the own-id lookup covers it


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulated run; see the module docstring."""

    nodes: int = 1000
    lookups: int = 1000
    """Lookups of each kind."""
    churn: float = 0.0
    """Fraction of the nodes leaving during the query phase."""
    records: int = 100
    """Values published, and as many provider records."""
    k: int = 20
    alpha: int = 3
    request_timeout_s: float = 1.0
    min_latency_s: float = 0.005
    max_latency_s: float = 0.050
    loss: float = 0.0
    """Probability that one message (request or answer) is lost."""
    lookup_interval_s: float = 0.02
    refresh_on_join: bool = False
    """After its own-id lookup a joining node also looks up a key in each bucket up to the
    nearest non-empty one (+1), as ``Dht.bootstrap`` does; ~15x the join cost."""
    seed: int = 1

    def __post_init__(self) -> None:
        if self.nodes < 2 or self.lookups < 1 or self.records < 1:
            raise ConfigError("a simulation needs at least 2 nodes, 1 lookup and 1 record")
        if not 0.0 <= self.churn < 1.0 or not 0.0 <= self.loss < 1.0:
            raise ConfigError("churn and loss are fractions in [0, 1)")
        if not 0.0 <= self.min_latency_s <= self.max_latency_s:
            raise ConfigError("latency bounds must satisfy 0 <= min <= max")


@dataclass(frozen=True, slots=True)
class KindReport:
    kind: str
    lookups: int
    successes: int
    hops_median: float
    hops_p99: float
    requests_per_lookup: float
    timeouts_per_lookup: float
    """Requests that timed out while the query ran (those still waiting when it ended are
    not counted)."""
    departed_per_lookup: float
    """Requests sent to nodes that had left (answered by nobody)."""
    latency_median_s: float
    latency_p99_s: float

    @property
    def success_rate(self) -> float:
        return self.successes / self.lookups if self.lookups else 0.0


@dataclass(frozen=True, slots=True)
class SimReport:
    config: SimConfig
    rows: tuple[KindReport, ...]
    alive_at_end: int
    join_requests_per_node: float
    messages: int
    """Every request sent in the whole run (joins, publishing, pings, queries)."""
    table_size_median: float


class _Steppable(Protocol):
    @property
    def done(self) -> bool: ...
    def next_requests(self, now: float) -> list[PeerId]: ...
    def pop_timed_out(self) -> list[PeerId]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def stop(self) -> None: ...


class _Node:
    __slots__ = ("alive", "peer", "providers", "records", "routing", "server")

    def __init__(self, peer: PeerId, k: int, validators: Validators) -> None:
        self.peer = peer
        self.routing = RoutingTable(peer, k=k)
        local_key = key_for_peer(peer)
        self.records = RecordStore(local_key)
        self.providers = ProviderStore(local_key)
        self.server = KadServer(peer, self.routing, self.records, self.providers, validators, k=k,
                                record_ttl_s=_TTL_S, provider_ttl_s=_TTL_S)
        self.alive = True


Feed = Callable[[PeerId, Message], None]
Done = Callable[["_Run"], None]


@dataclass(slots=True, eq=False)
class _Run:
    node: _Node
    query: _Steppable
    request: Message
    feed: Feed
    on_done: Done
    started: float
    timer_at: float | None = None
    finished: bool = False
    ended: float = 0.0
    to_departed: int = 0
    """Requests sent to nodes that had already left."""


@dataclass(slots=True)
class _Outcome:
    successes: int = 0
    lookups: int = 0
    hops: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    timeouts: list[int] = field(default_factory=list)
    to_departed: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


class KadSim:
    """The simulated network; :func:`simulate` drives a whole run."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.now = 0.0
        self.messages = 0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._validators = Validators()
        self.nodes = [_Node(self._peer_id(), config.k, self._validators)
                      for _ in range(config.nodes)]
        self.by_id = {node.peer: node for node in self.nodes}
        self._ping = Message(MessageType.PING)

    def _peer_id(self) -> PeerId:
        return PeerId(bytes([0x12, 32]) + self.rng.randbytes(32))

    # -- event loop ------------------------------------------------------------------------

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, action))

    def run(self) -> None:
        """Process events until none is left."""
        events = self._events
        while events:
            when, _, action = heapq.heappop(events)
            self.now = when
            action()

    def _latency(self) -> float:
        return self.rng.uniform(self.config.min_latency_s, self.config.max_latency_s)

    # -- transport -------------------------------------------------------------------------

    def send(self, src: _Node, dst: PeerId, request: Message,
             reply: Callable[[Message], None] | None) -> None:
        """One request; ``reply`` sees the answer unless something was lost or nobody answered."""
        self.messages += 1
        node = self.by_id.get(dst)
        if node is None or (self.config.loss and self.rng.random() < self.config.loss):
            return
        self.at(self.now + self._latency(), partial(self._deliver, src, node, request, reply))

    def _deliver(self, src: _Node, dst: _Node, request: Message,
                 reply: Callable[[Message], None] | None) -> None:
        if not dst.alive:
            return
        self.seen(dst, src.peer)
        answer = dst.server.handle(src.peer, request, self.now)
        if answer is None or reply is None:
            return
        if self.config.loss and self.rng.random() < self.config.loss:
            return
        self.at(self.now + self._latency(), partial(self._answer, src, dst.peer, answer, reply))

    def _answer(self, src: _Node, dst: PeerId, answer: Message,
                reply: Callable[[Message], None]) -> None:
        if src.alive:
            self.seen(src, dst)
            reply(answer)

    def seen(self, node: _Node, peer: PeerId) -> None:
        """``peer`` is alive (it asked or answered): the routing table hears of it."""
        result = node.routing.update(peer, (), self.now)
        if result.to_ping is not None:
            self._ping_peer(node, result.to_ping)

    def _ping_peer(self, node: _Node, peer: PeerId) -> None:
        state = {"open": True}

        def outcome(alive: bool) -> None:
            if state["open"]:
                state["open"] = False
                node.routing.ping_result(peer, alive, self.now)

        self.send(node, peer, self._ping, lambda _answer: outcome(True))
        self.at(self.now + self.config.request_timeout_s, lambda: outcome(False))

    # -- queries ---------------------------------------------------------------------------

    def start(self, node: _Node, query: _Steppable, request: Message, feed: Feed,
              on_done: Done) -> _Run:
        run = _Run(node, query, request, feed, on_done, started=self.now)
        self._pump(run)
        return run

    def _pump(self, run: _Run) -> None:
        query = run.query
        now = self.now
        for peer in query.next_requests(now):
            if not self.by_id[peer].alive:
                run.to_departed += 1
            self.send(run.node, peer, run.request, partial(self._on_answer, run, peer))
        for peer in query.pop_timed_out():
            run.node.routing.failed(peer, now)
        if query.done:
            if not run.finished:
                run.finished = True
                run.ended = now
                run.on_done(run)
            return
        timer = query.get_timer()
        if timer is None:  # cannot happen with a live lookup; never spin
            query.stop()
            self._pump(run)
        elif timer != run.timer_at:
            run.timer_at = timer
            self.at(timer, partial(self._on_timer, run, timer))

    def _on_answer(self, run: _Run, peer: PeerId, answer: Message) -> None:
        if run.finished:
            return
        run.feed(peer, answer)
        self._pump(run)

    def _on_timer(self, run: _Run, timer: float) -> None:
        if run.finished or run.timer_at != timer:
            return
        run.timer_at = None
        run.query.handle_timer(self.now)
        self._pump(run)

    def seeds(self, node: _Node, point: KadKey) -> list[PeerId]:
        return [e.peer_id for e in node.routing.closest(point, self.config.k)]

    def find_node(self, node: _Node, point: KadKey, key: bytes, on_done: Done,
                  seeds: list[PeerId] | None = None) -> Lookup:
        """An iterative FIND_NODE for ``key`` (keyspace point ``point``) from ``node``."""
        cfg = self.config
        lookup = Lookup(point, self.seeds(node, point) if seeds is None else seeds, now=self.now,
                        k=cfg.k, alpha=cfg.alpha, request_timeout_s=cfg.request_timeout_s,
                        local=node.peer)

        def feed(peer: PeerId, answer: Message) -> None:
            lookup.on_response(peer, [e.peer_id for e in answer.closer_peers], self.now)

        self.start(node, lookup, Message(MessageType.FIND_NODE, key=key), feed, on_done)
        return lookup

    # -- the phases of a run -----------------------------------------------------------------

    def join(self, node: _Node, joined: int, *, attempts: int = 3) -> None:
        """``node`` bootstraps through one of the first ``joined`` nodes: a lookup of its own
        id, run to the end; tried again through another node if nobody answered."""
        for _ in range(attempts):
            via = self.nodes[self.rng.randrange(joined)]
            self.seen(node, via.peer)
            lookup = self.find_node(node, key_for_peer(node.peer), node.peer.to_bytes(), _ignore,
                                    seeds=[via.peer])
            self.run()
            if lookup.closest():
                break
        if self.config.refresh_on_join:  # as Dht._refresh: key bytes hashing into each bucket
            local_key = key_for_peer(node.peer)
            for index in node.routing.buckets_to_refresh(self.now, 0.0)[:_MAX_REFRESH]:
                key = preimage_in_bucket(local_key, index, self.rng, max_tries=_PREIMAGE_TRIES)
                if key is not None:  # deep buckets: covered by the lookup of the own id
                    self.find_node(node, key_for_bytes(key), key, _ignore)
            self.run()

    def publish_value(self, node: _Node, key: bytes, value: bytes) -> None:
        node.records.put(StoredRecord(key, value, self.now, _TTL_S, local=True), self.now)
        put = Message(MessageType.PUT_VALUE, key=key, record=WireRecord(key, value))

        def store(run: _Run) -> None:
            for peer in lookup.closest():
                self.send(node, peer, put, _ignore)

        lookup = self.find_node(node, key_for_bytes(key), key, store)

    def publish_provider(self, node: _Node, key: bytes) -> None:
        node.providers.add(ProviderRecord(key, node.peer, (), _TTL_S, local=True), self.now)
        announce = Message(MessageType.ADD_PROVIDER, key=key,
                           provider_peers=(PeerEntry(node.peer),))

        def announce_all(run: _Run) -> None:
            for peer in lookup.closest():
                self.send(node, peer, announce, None)

        lookup = self.find_node(node, key_for_bytes(key), key, announce_all)

    def query(self, kind: str, node: _Node, subject: bytes, expected: bytes,
              outcome: _Outcome) -> None:
        """One measured query of ``kind`` from ``node``; the result goes to ``outcome``."""
        cfg, now, local = self.config, self.now, node.peer
        k, alpha, timeout_s = cfg.k, cfg.alpha, cfg.request_timeout_s
        query: FindPeerQuery | GetValueQuery | GetProvidersQuery
        if kind == "FIND_NODE":
            target = PeerId(subject)
            query = FindPeerQuery(target, self.seeds(node, key_for_peer(target)), now=now, k=k,
                                  alpha=alpha, request_timeout_s=timeout_s, local=local)
        elif kind == "GET_VALUE":
            query = GetValueQuery(subject, self.seeds(node, key_for_bytes(subject)), now=now,
                                  validators=self._validators, k=k, alpha=alpha,
                                  request_timeout_s=timeout_s, local=local)
        else:
            query = GetProvidersQuery(subject, self.seeds(node, key_for_bytes(subject)), now=now,
                                      count=1, k=k, alpha=alpha, request_timeout_s=timeout_s,
                                      local=local)

        def feed(peer: PeerId, answer: Message) -> None:
            query.on_response(peer, answer, self.now)

        def done(run: _Run) -> None:
            if isinstance(query, FindPeerQuery):
                ok = query.found is not None
            elif isinstance(query, GetValueQuery):
                ok = query.best() == expected
            else:
                ok = any(e.peer_id.to_bytes() == expected for e in query.providers)
            outcome.lookups += 1
            stats = query.stats
            outcome.requests.append(stats.requests)
            outcome.timeouts.append(stats.timeouts)
            outcome.to_departed.append(run.to_departed)
            outcome.latencies.append(run.ended - run.started)
            if ok and query.delivered_hops is not None:
                outcome.successes += 1
                outcome.hops.append(query.delivered_hops)

        self.start(node, query, query.request, feed, done)


def _ignore(*_: object) -> None:
    return None


def simulate(config: SimConfig) -> SimReport:
    """Join ``config.nodes`` nodes, publish, then run the measured queries; see the module doc."""
    sim = KadSim(config)
    rng, nodes = sim.rng, sim.nodes
    for index in range(1, len(nodes)):
        sim.join(nodes[index], index)
    join_requests = sim.messages / (len(nodes) - 1)

    values = [(b"/sim/value/%d" % i, b"value %d" % i) for i in range(config.records)]
    for key, value in values:
        sim.publish_value(rng.choice(nodes), key, value)
    providers = [(b"/sim/provider/%d" % i, rng.choice(nodes)) for i in range(config.records)]
    for key, provider in providers:
        sim.publish_provider(provider, key)
    sim.run()

    leaving = rng.sample(range(len(nodes)), int(config.churn * len(nodes)))
    gone = set(leaving)
    staying = [node for i, node in enumerate(nodes) if i not in gone]
    start = sim.now + 1.0
    span = 3 * config.lookups * config.lookup_interval_s
    for index in leaving:
        sim.at(start + rng.uniform(0.0, span / 2), partial(_leave, nodes[index]))
    outcomes = {kind: _Outcome() for kind in KINDS}

    def launch(kind: str) -> None:
        node = rng.choice(staying)
        if kind == "FIND_NODE":
            target = rng.choice(staying)
            while target is node:
                target = rng.choice(staying)
            subject, expected = target.peer.to_bytes(), b""
        elif kind == "GET_VALUE":
            subject, expected = rng.choice(values)
        else:
            subject, provider = rng.choice(providers)
            expected = provider.peer.to_bytes()
        sim.query(kind, node, subject, expected, outcomes[kind])

    for i in range(3 * config.lookups):
        sim.at(start + i * config.lookup_interval_s, partial(launch, KINDS[i % 3]))
    sim.run()
    rows = tuple(_row(kind, outcomes[kind]) for kind in KINDS)
    sizes = [len(node.routing) for node in nodes if node.alive]
    return SimReport(config, rows, alive_at_end=len(sizes), join_requests_per_node=join_requests,
                     messages=sim.messages, table_size_median=statistics.median(sizes))


def _leave(node: _Node) -> None:
    node.alive = False


def _row(kind: str, outcome: _Outcome) -> KindReport:
    return KindReport(kind, outcome.lookups, outcome.successes,
                      hops_median=_median(outcome.hops), hops_p99=_p99(outcome.hops),
                      requests_per_lookup=statistics.fmean(outcome.requests or [0]),
                      timeouts_per_lookup=statistics.fmean(outcome.timeouts or [0]),
                      departed_per_lookup=statistics.fmean(outcome.to_departed or [0]),
                      latency_median_s=_median(outcome.latencies),
                      latency_p99_s=_p99(outcome.latencies))


def _median(data: list[int] | list[float]) -> float:
    return float(statistics.median(data)) if data else float("nan")


def _p99(data: list[int] | list[float]) -> float:
    if len(data) < 2:
        return _median(data)
    return float(statistics.quantiles(data, n=100, method="inclusive")[98])
