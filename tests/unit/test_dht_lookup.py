"""The iterative lookup core, pumped against a fake network of peers with a hand-driven clock."""

from __future__ import annotations

import heapq
import random
import tracemalloc
from collections.abc import Callable

import pytest

from lattica_nb.dht.keys import KadKey, key_for_bytes, key_for_peer
from lattica_nb.dht.lookup import Lookup
from lattica_nb.errors import LocalProtocolError
from lattica_nb.identity import PeerId

K = 20


def random_peer(rng: random.Random) -> PeerId:
    return PeerId(bytes([0x12, 32]) + rng.randbytes(32))


def dist(peer: PeerId, target: bytes) -> int:
    return key_for_peer(peer).as_int() ^ int.from_bytes(target, "big")


def nearest(peers: list[PeerId], target: bytes, count: int) -> list[PeerId]:
    return sorted(peers, key=lambda p: dist(p, target))[:count]


Answer = Callable[[KadKey], list[PeerId]]


class FakeNet:
    """Peers answering FIND_NODE with the k closest peers they know.

    Each peer knows its ``near`` XOR-nearest peers and ``far`` random ones,
    roughly what a Kademlia routing table holds.
    """

    def __init__(self, n: int, seed: int, *, near: int = 25, far: int = 30) -> None:
        self.rng = random.Random(seed)
        self.peers = [random_peer(self.rng) for _ in range(n)]
        self.knows: dict[PeerId, list[PeerId]] = {}
        for peer in self.peers:
            others = [p for p in self.peers if p != peer]
            known = set(nearest(others, key_for_peer(peer), near))
            known.update(self.rng.sample(others, far))
            self.knows[peer] = sorted(known)
        self.silent: set[PeerId] = set()
        self.custom: dict[PeerId, Answer] = {}
        self.asked: list[PeerId] = []

    def answer(self, peer: PeerId, target: KadKey) -> list[PeerId]:
        if peer in self.custom:
            return self.custom[peer](target)
        return nearest(self.knows[peer], target, K)

    def latency(self) -> float:
        return self.rng.uniform(0.005, 0.05)


def pump(lookup: Lookup, net: FakeNet, *, now: float = 0.0, max_in_flight: int = K) -> float:
    """Run ``lookup`` to completion over ``net``; returns the clock when it finished."""
    replies: list[tuple[float, int, PeerId]] = []
    seq = 0
    while not lookup.done:
        for peer in lookup.next_requests(now):
            net.asked.append(peer)
            if peer not in net.silent:
                seq += 1
                heapq.heappush(replies, (now + net.latency(), seq, peer))
        assert lookup.in_flight <= max_in_flight
        timer = lookup.get_timer()
        if replies and (timer is None or replies[0][0] <= timer):
            now, _, peer = heapq.heappop(replies)
            lookup.on_response(peer, net.answer(peer, lookup.target), now)
        elif timer is not None:
            now = timer
            lookup.handle_timer(now)
        else:
            break
    return now


def test_converges_to_the_k_closest_peers() -> None:
    net = FakeNet(400, seed=1)
    rng = random.Random(2)
    for _ in range(15):
        local = rng.choice(net.peers)
        target = key_for_bytes(rng.randbytes(8))
        lookup = Lookup(target, nearest(net.knows[local], target, K), now=0.0, local=local)
        pump(lookup, net)
        assert lookup.done
        truth = nearest([p for p in net.peers if p != local], target, K)
        assert lookup.closest() == truth
        stats = lookup.stats
        assert stats.responses == stats.requests and stats.failures == stats.timeouts == 0
        assert stats.requests <= 80
        assert all(1 <= lookup.hops(p) <= 8 for p in truth)


def test_finds_a_peer_with_its_own_id_as_target() -> None:
    net = FakeNet(300, seed=3)
    local, target_peer = net.peers[0], net.peers[123]
    target = key_for_peer(target_peer)
    lookup = Lookup(target, net.rng.sample(net.knows[local], 3), now=0.0, local=local)
    pump(lookup, net)
    assert lookup.closest(1) == [target_peer]


def test_at_most_alpha_in_flight_until_stalled() -> None:
    rng = random.Random(4)
    seeds = [random_peer(rng) for _ in range(12)]
    lookup = Lookup(KadKey(bytes(32)), seeds, now=0.0, alpha=3)
    first = lookup.next_requests(0.0)
    assert len(first) == 3
    assert lookup.next_requests(0.0) == []  # full: nothing more until an answer
    ordered = nearest(seeds, bytes(32), 12)
    assert first == ordered[:3]  # the closest first
    lookup.on_response(first[0], [], 0.1)
    assert lookup.next_requests(0.1) == [ordered[3]]
    # Answers that bring nothing closer: after alpha of them the lookup is stalled
    # and asks every remaining candidate among the k closest at once.
    lookup.on_response(first[1], [], 0.2)
    lookup.on_response(first[2], [], 0.3)
    rest = lookup.next_requests(0.3)
    assert rest == ordered[4:]
    assert lookup.in_flight == 9


def test_progress_ends_the_stall() -> None:
    rng = random.Random(5)
    target = KadKey(bytes(32))
    seeds = nearest([random_peer(rng) for _ in range(30)], target, 30)
    closer_one = min((random_peer(rng) for _ in range(3000)), key=lambda p: dist(p, target))
    lookup = Lookup(target, seeds[5:], now=0.0, alpha=2, k=5)
    a, b = lookup.next_requests(0.0)
    lookup.on_response(a, [], 0.1)
    lookup.on_response(b, [], 0.1)  # stalled: up to k in flight
    assert len(lookup.next_requests(0.1)) == 3
    assert lookup.closest(5) == [a, b]
    waiting = seeds[7:10]
    lookup.on_response(waiting[0], [closer_one], 0.2)  # progress: back to alpha
    assert lookup.next_requests(0.2) == []  # 2 still in flight = alpha
    lookup.on_response(waiting[1], [], 0.3)
    assert lookup.next_requests(0.3) == [closer_one]


def test_finishes_when_k_closest_answered_even_with_farther_requests_in_flight() -> None:
    rng = random.Random(6)
    target = KadKey(bytes(32))
    peers = nearest([random_peer(rng) for _ in range(10)], target, 10)
    lookup = Lookup(target, peers[2:], now=0.0, k=2, alpha=3)
    sent = lookup.next_requests(0.0)
    assert sent == peers[2:4]  # only candidates among the k closest are asked
    # The answer names the two true closest; they are asked next.
    lookup.on_response(peers[2], peers[:2], 0.1)
    assert lookup.next_requests(0.1) == peers[:2]
    lookup.on_response(peers[0], [], 0.2)
    assert not lookup.done
    lookup.on_response(peers[1], [], 0.3)
    # peers[3] never answered, but the two closest did.
    assert lookup.done
    assert lookup.get_timer() is None
    assert lookup.closest() == peers[:2]


def test_not_done_while_a_closer_request_is_in_flight() -> None:
    rng = random.Random(7)
    target = KadKey(bytes(32))
    peers = nearest([random_peer(rng) for _ in range(4)], target, 4)
    lookup = Lookup(target, peers, now=0.0, k=2, alpha=4)
    assert lookup.next_requests(0.0) == peers[:2]  # only the k closest are asked
    lookup.on_response(peers[1], [], 0.1)
    assert not lookup.done  # peers[0] is closer and still waiting
    lookup.on_response(peers[0], [], 0.2)
    assert lookup.done


def test_silent_peers_time_out_and_the_lookup_goes_on() -> None:
    net = FakeNet(300, seed=8)
    local = net.peers[0]
    target = key_for_bytes(b"some key")
    truth = nearest(net.peers[1:], target, K)
    net.silent = set(truth[:5]) | set(net.rng.sample(net.peers[1:], 60))
    lookup = Lookup(target, nearest(net.knows[local], target, K), now=100.0, local=local,
                    request_timeout_s=2.0)
    end = pump(lookup, net, now=100.0)
    alive_truth = nearest([p for p in net.peers[1:] if p not in net.silent], target, K)
    assert lookup.closest() == alive_truth
    stats = lookup.stats
    assert stats.timeouts >= 5
    assert stats.timeouts == len([p for p in set(net.asked) if p in net.silent])
    assert end - 100.0 < 2.0 * 10  # timeouts overlap; a handful of rounds at most
    timed_out = lookup.pop_timed_out()
    assert set(timed_out) <= net.silent and len(timed_out) == stats.timeouts
    assert lookup.pop_timed_out() == []


def test_timer_is_the_earliest_deadline() -> None:
    rng = random.Random(9)
    seeds = [random_peer(rng) for _ in range(5)]
    lookup = Lookup(KadKey(bytes(32)), seeds, now=0.0, alpha=2, request_timeout_s=3.0)
    assert lookup.get_timer() is None
    a, _ = lookup.next_requests(10.0)
    assert lookup.get_timer() == 13.0
    lookup.on_response(a, [], 11.0)
    (c,) = lookup.next_requests(11.0)
    assert lookup.get_timer() == 13.0
    lookup.handle_timer(12.9)
    assert lookup.pop_timed_out() == []
    lookup.handle_timer(13.0)
    assert len(lookup.pop_timed_out()) == 1
    assert lookup.get_timer() == 14.0  # c's deadline
    assert lookup.awaiting(c)


def test_late_answer_after_a_timeout_is_taken() -> None:
    rng = random.Random(10)
    target = KadKey(bytes(32))
    seeds = nearest([random_peer(rng) for _ in range(3)], target, 3)
    newcomer = random_peer(rng)
    lookup = Lookup(target, seeds, now=0.0, k=2, request_timeout_s=1.0)
    assert lookup.next_requests(0.0) == seeds[:2]
    lookup.on_response(seeds[1], [], 0.5)
    lookup.handle_timer(1.0)
    assert lookup.pop_timed_out() == [seeds[0]]
    assert lookup.awaiting(seeds[0])
    assert lookup.next_requests(1.0) == [seeds[2]]  # the timed-out peer freed its slot
    lookup.on_response(seeds[0], [newcomer], 1.5)
    assert lookup.stats.responses == 2 and lookup.stats.timeouts == 1
    assert seeds[0] in lookup.closest()
    assert lookup.hops(newcomer) == 2


def test_failures_are_dropped() -> None:
    rng = random.Random(11)
    target = KadKey(bytes(32))
    seeds = nearest([random_peer(rng) for _ in range(3)], target, 3)
    lookup = Lookup(target, seeds, now=0.0, k=3)
    lookup.next_requests(0.0)
    lookup.on_failure(seeds[0], 0.1)
    lookup.on_failure(seeds[0], 0.1)  # twice: no effect
    lookup.on_response(seeds[0], [], 0.2)  # after a failure: ignored
    lookup.on_response(seeds[1], [], 0.2)
    lookup.on_response(seeds[2], [], 0.2)
    assert lookup.done
    assert lookup.closest() == seeds[1:]
    assert lookup.stats.failures == 1 and lookup.stats.responses == 2


def test_unsolicited_answers_are_ignored() -> None:
    rng = random.Random(12)
    seeds = [random_peer(rng) for _ in range(3)]
    stranger, other = random_peer(rng), random_peer(rng)
    lookup = Lookup(KadKey(bytes(32)), seeds, now=0.0)
    lookup.on_response(stranger, [other], 0.0)
    lookup.on_response(seeds[0], [other], 0.0)  # a seed not asked yet
    assert not lookup.awaiting(stranger)
    with pytest.raises(LocalProtocolError):
        lookup.hops(other)
    assert lookup.stats.responses == 0


def test_local_peer_and_responder_are_never_candidates() -> None:
    rng = random.Random(13)
    local = random_peer(rng)
    seed = random_peer(rng)
    lookup = Lookup(KadKey(bytes(32)), [seed, local, seed], now=0.0, local=local)
    assert lookup.next_requests(0.0) == [seed]
    lookup.on_response(seed, [local, seed, local], 0.1)
    assert lookup.done
    assert lookup.closest() == [seed]


def test_hops_count_from_the_seeds() -> None:
    rng = random.Random(14)
    target = KadKey(bytes(32))
    # Each peer of the chain is closer than the last, so each answer leads one hop on.
    chain = nearest([random_peer(rng) for _ in range(5)], target, 5)[::-1]
    lookup = Lookup(target, [chain[0]], now=0.0, k=1)
    for i, peer in enumerate(chain):
        assert lookup.hops(peer) == i + 1
        assert lookup.next_requests(float(i)) == [peer]
        lookup.on_response(peer, chain[i + 1 : i + 2], float(i))
    assert lookup.done and lookup.closest() == [chain[-1]]
    # A peer heard of again from a peer fewer hops away keeps the smaller count.
    lookup = Lookup(target, chain[:2], now=0.0, k=5, alpha=1)
    assert lookup.next_requests(0.0) == [chain[1]]
    lookup.on_response(chain[1], [chain[3]], 0.1)
    assert lookup.hops(chain[3]) == 2
    assert lookup.next_requests(0.1) == [chain[3]]
    lookup.on_response(chain[3], [chain[4]], 0.2)
    assert lookup.hops(chain[4]) == 3
    assert lookup.next_requests(0.2) == [chain[4]]
    lookup.on_response(chain[4], [], 0.3)
    assert lookup.next_requests(0.3) == [chain[0]]
    lookup.on_response(chain[0], [chain[4]], 0.4)
    assert lookup.hops(chain[4]) == 2


def test_stop_and_no_seeds() -> None:
    rng = random.Random(15)
    assert Lookup(KadKey(bytes(32)), [], now=0.0).done
    seeds = [random_peer(rng) for _ in range(3)]
    lookup = Lookup(KadKey(bytes(32)), seeds, now=0.0)
    sent = lookup.next_requests(0.0)
    lookup.stop()
    assert lookup.done and lookup.get_timer() is None
    assert lookup.next_requests(1.0) == []
    lookup.on_response(sent[0], [random_peer(rng)], 1.0)
    assert lookup.closest() == []


def test_bad_parameters() -> None:
    with pytest.raises(LocalProtocolError):
        Lookup(KadKey(bytes(32)), [], now=0.0, k=0)
    with pytest.raises(LocalProtocolError):
        Lookup(KadKey(bytes(32)), [], now=0.0, alpha=0)
    with pytest.raises(LocalProtocolError):
        Lookup(KadKey(bytes(32)), [], now=0.0, request_timeout_s=0)
    with pytest.raises(LocalProtocolError):
        Lookup(KadKey(bytes(32)), [], now=0.0, k=20, max_candidates=5)


def test_flood_of_bogus_closer_peers_stays_bounded_and_converges() -> None:
    net = FakeNet(300, seed=16)
    local, liar = net.peers[0], net.peers[1]
    bogus_rng = random.Random(17)
    target = key_for_bytes(b"flooded key")
    net.custom[liar] = lambda _target: [random_peer(bogus_rng) for _ in range(5000)]
    honest = [p for p in net.peers[2:]]
    seeds = [liar, *nearest(honest, target, 5)]
    lookup = Lookup(target, seeds, now=0.0, local=local, request_timeout_s=1.0)
    real = set(net.peers)
    end = pump(lookup, net)
    assert lookup.candidates <= 4 * K
    bogus_asked = [p for p in set(net.asked) if p not in real]
    assert len(bogus_asked) <= K  # one answer brings at most k candidates
    assert lookup.stats.timeouts == len(bogus_asked)
    assert lookup.closest() == nearest(net.peers[1:], target, K)
    assert end < 5.0


def test_flood_of_crafted_closest_ids_only_delays_the_lookup() -> None:
    """Bogus ids closer to the target than every real peer: they are asked, time out, dropped."""
    net = FakeNet(200, seed=18)
    local, liar = net.peers[0], net.peers[1]
    target = key_for_bytes(b"eclipse me")
    truth = nearest(net.peers[1:], target, K)
    bound = dist(truth[0], target)
    rng = random.Random(19)
    crafted: list[PeerId] = []
    while len(crafted) < 100:
        peer = random_peer(rng)
        if dist(peer, target) < bound:
            crafted.append(peer)
    net.custom[liar] = lambda _target: crafted
    lookup = Lookup(target, [liar, *truth[10:15]], now=0.0, local=local, request_timeout_s=1.0)
    pump(lookup, net)
    assert lookup.closest() == truth
    assert lookup.stats.timeouts <= K


def test_memory_of_one_flooded_answer_does_not_grow_with_its_size() -> None:
    rng = random.Random(20)
    seed = random_peer(rng)
    flood = [random_peer(rng) for _ in range(20_000)]
    for _ in range(2):  # twice: all 20,000 end up in keys.py's own (bounded) cache, whose
        for peer in flood:  # memory is not the lookup's
            key_for_peer(peer)

    def peak(count: int) -> int:
        lookup = Lookup(KadKey(bytes(32)), [seed], now=0.0)
        lookup.next_requests(0.0)
        answer = iter(flood[:count])
        tracemalloc.start()
        lookup.on_response(seed, answer, 0.1)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert lookup.candidates <= 4 * K
        return top

    small, large = peak(1_000), peak(20_000)
    assert large < small + 20_000
