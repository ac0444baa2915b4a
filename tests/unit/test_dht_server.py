"""KadServer: the answer to each kind of inbound Kademlia request."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from lattica_nb.dht.keys import key_for_bytes, key_for_peer
from lattica_nb.dht.messages import Message, MessageType, PeerEntry, WireRecord, encode_message
from lattica_nb.dht.records import SignedRecord, Validators
from lattica_nb.dht.routing import RoutingTable
from lattica_nb.dht.server import KadServer
from lattica_nb.dht.store import ProviderRecord, ProviderStore, RecordStore, StoredRecord
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.multiaddr import Multiaddr

K = 20
NOW = 1_700_000_000.0
ADDR = Multiaddr("/ip4/192.0.2.7/udp/4001/quic-v1")


def random_peer(rng: random.Random) -> PeerId:
    return PeerId(bytes([0x12, 32]) + rng.randbytes(32))


class Setup:
    def __init__(self, peers: int = 200, seed: int = 1, **server_options: float) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.local = random_peer(rng)
        self.routing = RoutingTable(self.local, k=K)
        self.peers = [random_peer(rng) for _ in range(peers)]
        for peer in self.peers:
            self.routing.update(peer, (ADDR,), NOW - 10)
        local_key = key_for_peer(self.local)
        self.records = RecordStore(local_key)
        self.providers = ProviderStore(local_key)
        self.server = KadServer(self.local, self.routing, self.records, self.providers,
                                Validators(), k=K, **server_options)
        self.sender = random_peer(rng)

    def ask(self, request: Message, now: float = NOW, sender: PeerId | None = None
            ) -> Message | None:
        return self.server.handle(self.sender if sender is None else sender, request, now)

    def expected_closer(self, key: bytes, exclude: PeerId | None = None) -> list[PeerId]:
        return [e.peer_id for e in self.routing.closest(key_for_bytes(key), K,
                                                        exclude={exclude} if exclude else ())]


@pytest.fixture
def s() -> Setup:
    return Setup()


def ids(entries: tuple[PeerEntry, ...]) -> list[PeerId]:
    return [e.peer_id for e in entries]


def test_find_node_answers_the_k_closest(s: Setup) -> None:
    target = random_peer(s.rng)
    answer = s.ask(Message(MessageType.FIND_NODE, key=target.to_bytes(), cluster_level=3))
    assert answer is not None and answer.type is MessageType.FIND_NODE
    assert answer.key == target.to_bytes() and answer.cluster_level == 3
    assert ids(answer.closer_peers) == s.expected_closer(target.to_bytes())
    assert len(answer.closer_peers) == K
    assert all(e.addrs == (ADDR,) for e in answer.closer_peers)
    point = key_for_peer(target).as_int()
    table = [e.peer_id for e in s.routing.entries()]
    by_distance = sorted(table, key=lambda p: key_for_peer(p).as_int() ^ point)
    assert ids(answer.closer_peers) == by_distance[:K]


def test_find_node_leaves_out_the_requester(s: Setup) -> None:
    sender = s.expected_closer(b"some key")[0]
    answer = s.ask(Message(MessageType.FIND_NODE, key=b"some key"), sender=sender)
    assert answer is not None
    assert sender not in ids(answer.closer_peers)
    assert ids(answer.closer_peers) == s.expected_closer(b"some key", exclude=sender)
    assert len(answer.closer_peers) == K


def test_find_node_with_an_empty_table() -> None:
    s = Setup(peers=0)
    answer = s.ask(Message(MessageType.FIND_NODE, key=b"x"))
    assert answer == Message(MessageType.FIND_NODE, key=b"x")


def test_put_then_get_a_raw_record(s: Setup) -> None:
    key = b"lattica/model"
    put = Message(MessageType.PUT_VALUE, key=key, record=WireRecord(key, b"value"))
    assert s.ask(put) == put
    answer = s.ask(Message(MessageType.GET_VALUE, key=key), now=NOW + 5)
    assert answer is not None and answer.record is not None
    assert (answer.record.key, answer.record.value) == (key, b"value")
    assert answer.record.time_received == "2023-11-14T22:13:20.000000Z"
    assert answer.record.ttl_s == 36 * 3600 - 5
    assert ids(answer.closer_peers) == s.expected_closer(key)


def test_get_value_of_an_unknown_key_gives_closer_peers_only(s: Setup) -> None:
    answer = s.ask(Message(MessageType.GET_VALUE, key=b"nothing here"))
    assert answer is not None and answer.record is None
    assert len(answer.closer_peers) == K


def test_requests_without_a_key_are_refused(s: Setup) -> None:
    assert s.ask(Message(MessageType.GET_VALUE)) is None
    assert s.ask(Message(MessageType.GET_PROVIDERS)) is None
    assert s.ask(Message(MessageType.PUT_VALUE, record=WireRecord(b"", b"v"))) is None


def test_put_with_a_mismatched_or_missing_record_is_refused(s: Setup) -> None:
    assert s.ask(Message(MessageType.PUT_VALUE, key=b"a", record=WireRecord(b"b", b"v"))) is None
    assert s.ask(Message(MessageType.PUT_VALUE, key=b"a")) is None
    assert s.records.get(b"a", NOW) is None and s.records.get(b"b", NOW) is None


def test_put_of_an_oversized_value_is_refused(s: Setup) -> None:
    key = b"big"
    put = Message(MessageType.PUT_VALUE, key=key, record=WireRecord(key, bytes(15 * 1024 + 1)))
    assert s.ask(put) is None
    assert s.records.get(key, NOW) is None


def test_wire_ttl_shortens_the_stored_lifetime(s: Setup) -> None:
    key = b"short-lived"
    put = Message(MessageType.PUT_VALUE, key=key, record=WireRecord(key, b"v", ttl_s=60))
    assert s.ask(put) == put
    stored = s.records.get(key, NOW)
    assert stored is not None and stored.expires_at == NOW + 60
    answer = s.ask(Message(MessageType.GET_VALUE, key=key), now=NOW + 61)
    assert answer is not None and answer.record is None


def test_record_ttl_option() -> None:
    s = Setup(peers=5, record_ttl_s=100.0)
    key = b"k"
    s.ask(Message(MessageType.PUT_VALUE, key=key, record=WireRecord(key, b"v", ttl_s=1000)))
    stored = s.records.get(key, NOW)
    assert stored is not None and stored.expires_at == NOW + 100


def _signed(key: bytes, value: bytes, identity: PrivateKey, seq: int) -> bytes:
    return SignedRecord.create(key, value, identity, seq=seq, expires_at=NOW + 3600).encode()


def test_signed_records_newer_replaces_older_is_refused(s: Setup) -> None:
    identity = PrivateKey.generate()
    key = b"/lnb/state"
    v1, v2 = _signed(key, b"one", identity, 1), _signed(key, b"two", identity, 2)
    put2 = Message(MessageType.PUT_VALUE, key=key, record=WireRecord(key, v2))
    put1 = Message(MessageType.PUT_VALUE, key=key, record=WireRecord(key, v1))
    assert s.ask(put1) == put1
    assert s.ask(put2) == put2
    assert s.ask(put1) is None  # older than the one held
    held = s.records.get(key, NOW)
    assert held is not None and held.value == v2
    assert s.ask(put2, now=NOW + 1) == put2  # the same value again refreshes it
    held = s.records.get(key, NOW + 1)
    assert held is not None and held.received_at == NOW + 1


def test_forged_signed_record_is_refused(s: Setup) -> None:
    identity = PrivateKey.generate()
    key = b"/lnb/state"
    good = SignedRecord.create(key, b"v", identity, seq=1, expires_at=NOW + 3600)
    forged = replace(good, value=b"w").encode()
    assert s.ask(Message(MessageType.PUT_VALUE, key=key, record=WireRecord(key, forged))) is None
    assert s.records.get(key, NOW) is None


def test_remote_put_under_a_local_key_must_be_newer(s: Setup) -> None:
    identity = PrivateKey.generate()
    key = b"/lnb/ours"
    v1, v2, v3 = (_signed(key, b"v%d" % i, identity, i) for i in (1, 2, 3))
    s.records.put(StoredRecord(key, v2, NOW, NOW + 3600, local=True), NOW)
    older = Message(MessageType.PUT_VALUE, key=key, record=WireRecord(key, v1))
    assert s.ask(older) is None
    held = s.records.get(key, NOW)
    assert held is not None and held.value == v2 and held.local
    # A newer value supersedes ours (the store then stops counting it as local).
    newer = Message(MessageType.PUT_VALUE, key=key, record=WireRecord(key, v3))
    assert s.ask(newer) == newer
    held = s.records.get(key, NOW)
    assert held is not None and held.value == v3 and not held.local


def test_add_provider_only_for_the_sender_then_get_providers(s: Setup) -> None:
    key = b"cid"
    other = random_peer(s.rng)
    announce = Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(
        PeerEntry(s.sender, (ADDR,)), PeerEntry(other, (ADDR,))))
    assert s.ask(announce) is None  # the spec has no answer to ADD_PROVIDER
    answer = s.ask(Message(MessageType.GET_PROVIDERS, key=key), sender=random_peer(s.rng))
    assert answer is not None and answer.type is MessageType.GET_PROVIDERS
    assert answer.provider_peers == (PeerEntry(s.sender, (ADDR,)),)
    assert len(answer.closer_peers) == K
    records = s.providers.get(key, NOW)
    assert [r.provider for r in records] == [s.sender]
    assert records[0].expires_at == NOW + 48 * 3600


def test_get_providers_lists_at_most_k(s: Setup) -> None:
    key = b"popular"
    for _ in range(K + 5):
        s.providers.add(ProviderRecord(key, random_peer(s.rng), (), NOW + 60), NOW)
    answer = s.ask(Message(MessageType.GET_PROVIDERS, key=key))
    assert answer is not None and len(answer.provider_peers) == K


def test_ping_is_echoed(s: Setup) -> None:
    assert s.ask(Message(MessageType.PING)) == Message(MessageType.PING)


def test_answers_stay_under_the_rust_packet_limit() -> None:
    s = Setup(peers=100)
    many = tuple(Multiaddr(f"/ip6/2001:db8::{i:x}/udp/{4000 + i}/quic-v1") for i in range(32))
    for peer in s.peers:
        s.routing.update(peer, many, NOW)
    answer = s.ask(Message(MessageType.FIND_NODE, key=b"k"))
    assert answer is not None
    assert 0 < len(answer.closer_peers) < K
    assert len(encode_message(answer)) <= 16 * 1024
    # The closest are kept, the farthest left out.
    assert ids(answer.closer_peers) == s.expected_closer(b"k")[: len(answer.closer_peers)]
    # A 15 KiB record leaves room for few peers, but is answered.
    key = b"large"
    s.ask(Message(MessageType.PUT_VALUE, key=key, record=WireRecord(key, bytes(15 * 1024))))
    answer = s.ask(Message(MessageType.GET_VALUE, key=key))
    assert answer is not None and answer.record is not None
    assert len(encode_message(answer)) <= 16 * 1024


def test_a_stored_copy_never_outlives_the_signed_expiry(s: Setup) -> None:
    key = b"/lnb/soon"
    value = SignedRecord.create(key, b"v", PrivateKey.generate(), seq=1,
                                expires_at=NOW + 30).encode()
    put = Message(MessageType.PUT_VALUE, key=key, record=WireRecord(key, value, ttl_s=3600))
    assert s.ask(put) == put
    stored = s.records.get(key, NOW)
    assert stored is not None and stored.expires_at == NOW + 30
    answer = s.ask(Message(MessageType.GET_VALUE, key=key), now=NOW + 31)
    assert answer is not None and answer.record is None


def test_provider_answers_are_trimmed_under_the_rust_packet_limit() -> None:
    from lattica_nb.dht.server import DEFAULT_MAX_RESPONSE_BYTES

    s = Setup(peers=50)
    rng = random.Random(3)
    long_addrs = tuple(Multiaddr(f"/dns4/host-{i}-{'x' * 200}.example/tcp/{4000 + i}")
                       for i in range(32))
    for _ in range(20):
        provider = random_peer(rng)
        s.providers.add(ProviderRecord(b"model", provider, long_addrs, NOW + 3600), NOW)
    answer = s.ask(Message(MessageType.GET_PROVIDERS, key=b"model"))
    assert answer is not None and answer.provider_peers
    assert all(entry.addrs for entry in answer.provider_peers)
    assert len(encode_message(answer)) <= DEFAULT_MAX_RESPONSE_BYTES
