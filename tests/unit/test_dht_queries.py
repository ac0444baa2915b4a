"""GET_VALUE, GET_PROVIDERS and find-peer queries over a fake network of peers."""

from __future__ import annotations

import heapq
import random
from dataclasses import replace

from lattica_nb.dht.keys import key_for_bytes, key_for_peer
from lattica_nb.dht.messages import Message, MessageType, PeerEntry, WireRecord
from lattica_nb.dht.queries import FindPeerQuery, GetProvidersQuery, GetValueQuery
from lattica_nb.dht.records import SignedRecord, Validators
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.multiaddr import Multiaddr

K = 20
NOW = 1_700_000_000.0


def random_peer(rng: random.Random) -> PeerId:
    return PeerId(bytes([0x12, 32]) + rng.randbytes(32))


def nearest(peers: list[PeerId], target: bytes, count: int) -> list[PeerId]:
    t = int.from_bytes(target, "big")
    return sorted(peers, key=lambda p: key_for_peer(p).as_int() ^ t)[:count]


class FakeNet:
    """Every peer knows everyone and answers with the k closest plus what it stores."""

    def __init__(self, n: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.peers = [random_peer(self.rng) for _ in range(n)]
        self.values: dict[PeerId, WireRecord] = {}
        self.providers: dict[PeerId, list[PeerEntry]] = {}
        self.silent: set[PeerId] = set()
        self.requests: list[tuple[PeerId, Message]] = []

    def answer(self, peer: PeerId, request: Message) -> Message:
        target = (key_for_peer(PeerId(request.key)) if request.type is MessageType.FIND_NODE
                  else key_for_bytes(request.key))
        closer = tuple(PeerEntry(p) for p in nearest(self.peers, target, K + 1) if p != peer)
        record = self.values.get(peer) if request.type is MessageType.GET_VALUE else None
        providers = tuple(self.providers.get(peer, ()))
        if request.type is not MessageType.GET_PROVIDERS:
            providers = ()
        return Message(request.type, key=request.key, record=record, closer_peers=closer[:K],
                       provider_peers=providers)


Query = GetValueQuery | GetProvidersQuery | FindPeerQuery


def pump(query: Query, net: FakeNet, *, now: float = NOW) -> None:
    """Answer each request 10 ms later (silent peers never answer) until the query is done."""
    replies: list[tuple[float, int, PeerId]] = []
    while not query.done:
        for peer in query.next_requests(now):
            net.requests.append((peer, query.request))
            if peer not in net.silent:
                heapq.heappush(replies, (now + 0.01, len(net.requests), peer))
        timer = query.get_timer()
        if replies and (timer is None or replies[0][0] <= timer):
            now, _, peer = heapq.heappop(replies)
            query.on_response(peer, net.answer(peer, query.request), now)
        elif timer is not None:
            now = timer
            query.handle_timer(now)
        else:
            break


def seeds_of(net: FakeNet, local: PeerId, count: int = 3) -> list[PeerId]:
    return net.rng.sample([p for p in net.peers if p != local], count)


def test_get_value_stops_at_the_first_valid_value() -> None:
    net = FakeNet(300, seed=1)
    key = b"plain/key"
    holders = nearest(net.peers, key_for_bytes(key), 8)
    for peer in holders:
        net.values[peer] = WireRecord(key, b"value")
    local = net.peers[0] if net.peers[0] not in holders else net.peers[1]
    query = GetValueQuery(key, seeds_of(net, local), now=NOW, validators=Validators(),
                          local=local)
    assert query.request == Message(MessageType.GET_VALUE, key=key)
    pump(query, net)
    assert query.done
    assert query.values == [(query.delivered_by, b"value")]
    assert query.delivered_by in holders
    hops = query.delivered_hops
    assert hops is not None and 1 <= hops <= 6
    assert query.best() == b"value"
    assert query.stats.requests <= 30


def test_get_value_quorum_and_outdated_peers_with_signed_records() -> None:
    net = FakeNet(300, seed=2)
    identity = PrivateKey.generate()
    key = b"/lnb/config"
    old = SignedRecord.create(key, b"v1", identity, seq=1, expires_at=NOW + 3600).encode()
    new = SignedRecord.create(key, b"v2", identity, seq=2, expires_at=NOW + 3600).encode()
    closest = nearest(net.peers, key_for_bytes(key), K)
    local = closest[-1]
    holders = closest[:12]
    for peer in holders[:6]:
        net.values[peer] = WireRecord(key, old)
    for peer in holders[6:]:
        net.values[peer] = WireRecord(key, new)
    query = GetValueQuery(key, seeds_of(net, local), now=NOW, validators=Validators(),
                          quorum=100, local=local)
    pump(query, net)  # the quorum is never met: the lookup runs to convergence
    assert len(query.values) == 12
    assert query.best() == new
    outdated = query.outdated_peers()
    assert set(holders[:6]) <= set(outdated)
    assert not set(holders[6:]) & set(outdated)
    assert set(outdated) == set(query.lookup.closest()) - set(holders[6:])


def test_get_value_ignores_invalid_and_mismatched_records() -> None:
    net = FakeNet(200, seed=3)
    identity = PrivateKey.generate()
    key = b"/lnb/x"
    good = SignedRecord.create(key, b"ok", identity, seq=1, expires_at=NOW + 60)
    forged = replace(good, value=b"forged").encode()
    expired = SignedRecord.create(key, b"old", identity, seq=9, expires_at=NOW - 1).encode()
    closest = nearest(net.peers, key_for_bytes(key), 6)
    local = closest[5]
    net.values[closest[0]] = WireRecord(key, forged)
    net.values[closest[1]] = WireRecord(key, expired)
    net.values[closest[2]] = WireRecord(b"/lnb/other", good.encode())
    net.values[closest[3]] = WireRecord(key, good.encode())
    query = GetValueQuery(key, seeds_of(net, local), now=NOW, validators=Validators(),
                          quorum=2, local=local)
    pump(query, net)
    assert query.values == [(closest[3], good.encode())]
    assert query.best() == good.encode()
    assert set(query.invalid_peers) == {closest[0], closest[1]}
    assert closest[0] in query.outdated_peers() and closest[2] in query.outdated_peers()


def test_get_value_not_found() -> None:
    net = FakeNet(100, seed=4)
    query = GetValueQuery(b"nothing", seeds_of(net, net.peers[0]), now=NOW,
                          validators=Validators(), local=net.peers[0])
    pump(query, net)
    assert query.values == [] and query.best() is None and query.outdated_peers() == []
    assert query.delivered_by is None and query.delivered_hops is None
    assert len(query.lookup.closest()) == K


def test_get_providers_stops_at_count_and_dedups() -> None:
    net = FakeNet(300, seed=5)
    key = b"blob-cid"
    addr = Multiaddr("/ip4/10.0.0.1/tcp/4001")
    providers = [PeerEntry(random_peer(net.rng), (addr,)) for _ in range(4)]
    holders = nearest(net.peers, key_for_bytes(key), 6)
    for peer in holders:
        net.providers[peer] = providers[:2]
    net.providers[holders[0]] = providers[:2] + providers[2:3]
    local = net.peers[0] if net.peers[0] not in holders else net.peers[1]
    query = GetProvidersQuery(key, seeds_of(net, local), now=NOW, count=3, local=local)
    pump(query, net)
    found = query.providers
    assert {e.peer_id for e in found} == {e.peer_id for e in providers[:3]}
    assert len(found) == 3 and found[0].addrs == (addr,)
    assert query.delivered_by in holders
    assert query.done and query.lookup.in_flight == 0


def test_find_peer_stops_when_an_answer_names_the_target() -> None:
    net = FakeNet(300, seed=6)
    local, target = net.peers[0], net.peers[200]
    seeds = [p for p in seeds_of(net, local, 5) if p != target]
    query = FindPeerQuery(target, seeds, now=NOW, local=local)
    assert query.request == Message(MessageType.FIND_NODE, key=target.to_bytes())
    pump(query, net)
    found = query.found
    assert found is not None and found.peer_id == target
    assert query.delivered_hops is not None and query.delivered_hops >= 1
    assert all(peer != target for peer, _ in net.requests)  # named before it was asked


def test_find_peer_already_in_the_seeds() -> None:
    net = FakeNet(50, seed=7)
    query = FindPeerQuery(net.peers[3], net.peers[1:5], now=NOW, local=net.peers[0])
    assert query.done and query.next_requests(NOW) == []
    assert query.found == PeerEntry(net.peers[3]) and query.delivered_hops == 0


def test_find_peer_that_does_not_exist() -> None:
    net = FakeNet(200, seed=8)
    ghost = random_peer(net.rng)
    query = FindPeerQuery(ghost, seeds_of(net, net.peers[0]), now=NOW, local=net.peers[0])
    pump(query, net)
    assert query.done and query.found is None and query.delivered_hops is None
    assert query.lookup.closest() == nearest(net.peers[1:], key_for_peer(ghost), K)


def test_answers_from_peers_not_asked_are_ignored() -> None:
    net = FakeNet(50, seed=9)
    key = b"k"
    stranger = random_peer(net.rng)
    query = GetValueQuery(key, net.peers[1:4], now=NOW, validators=Validators())
    query.on_response(stranger, Message(MessageType.GET_VALUE, key=key,
                                        record=WireRecord(key, b"sneaky")), NOW)
    assert query.values == [] and not query.done


def test_timeouts_reach_the_driver() -> None:
    net = FakeNet(100, seed=10)
    local = net.peers[0]
    seeds = seeds_of(net, local, 5)
    query = FindPeerQuery(random_peer(net.rng), seeds, now=NOW, local=local,
                          request_timeout_s=1.0)
    sent = query.next_requests(NOW)
    assert query.get_timer() == NOW + 1.0
    query.handle_timer(NOW + 1.0)
    assert query.pop_timed_out() == sent
    query.on_failure(sent[0], NOW + 1.0)
    query.stop()
    assert query.done
