"""Per-peer room sync sessions (sync/session.py), pumped against each other without IO."""

from __future__ import annotations

import random
from collections import deque

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.errors import LimitExceeded, LocalProtocolError
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.sync.envelope import Envelope, room_id
from lattica_nb.sync.log import EnvelopeLog, LogLimits, OfferStatus
from lattica_nb.sync.protocol import (
    Ack,
    Awareness,
    Goodbye,
    GoodbyeReason,
    Hello,
    HelloFlags,
    ProtocolLimits,
    SyncStep1,
    SyncStep2,
    Update,
    decode_message,
    frame_message,
)
from lattica_nb.sync.session import (
    AwarenessReceived,
    EnvelopesReceived,
    HandshakeCompleted,
    PeerAcknowledged,
    PeerSession,
    SessionClosed,
    SessionEvent,
    SessionState,
    SyncCompleted,
    unacknowledged_count,
)
from lattica_nb.wire.varint import decode_uvarint

ROOM = room_id("lab", "sweep")
GUID = b"G" * 16
KEYS = [PrivateKey.generate() for _ in range(4)]


class Peer:
    """A room member: a log, a session per linked peer, and what a room driver would do."""

    def __init__(
        self,
        index: int,
        *,
        guid: bytes | None = GUID,
        epoch: int = 0,
        log_limits: LogLimits | None = None,
        limits: ProtocolLimits | None = None,
    ) -> None:
        self.key = KEYS[index]
        self.id = PeerId.from_public_key(self.key.public_key)
        self.log = EnvelopeLog(ROOM, guid=guid, epoch=epoch, limits=log_limits or LogLimits())
        self.limits = limits or ProtocolLimits()
        self.sessions: dict[PeerId, PeerSession] = {}
        self.events: list[SessionEvent] = []

    def session(self, other: Peer, flags: HelloFlags = HelloFlags.NONE) -> PeerSession:
        session = PeerSession(self.log, other.id, flags=flags, limits=self.limits)
        self.sessions[other.id] = session
        return session

    def write(self, update: bytes) -> Envelope:
        guid = self.log.guid
        assert guid is not None
        envelope = Envelope.create(
            self.key, ROOM, self.log.seq(self.id) + 1, update, guid=guid, epoch=self.log.epoch
        )
        assert self.log.offer(envelope).status is OfferStatus.ACCEPTED
        self.forward()
        return envelope

    def forward(self) -> None:
        for session in self.sessions.values():
            session.forward_new()

    def handle_events(self, session: PeerSession) -> None:
        while (event := session.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, EnvelopesReceived):
                results = [self.log.offer(each) for each in event.envelopes]
                if any(r.status is OfferStatus.ACCEPTED for r in results):
                    self.forward()
                    session.acknowledge()
                if any(r.status in (OfferStatus.HELD, OfferStatus.DROPPED) for r in results):
                    session.resync()  # a driver would wait a little first


def wire(message_list: list[object], limits: ProtocolLimits) -> list[object]:
    """Frame, then decode again: what crosses a real stream."""
    out = []
    for message in message_list:
        framed = frame_message(message)  # type: ignore[arg-type]
        length, start = decode_uvarint(framed)
        assert length == len(framed) - start <= limits.max_message_bytes
        out.append(decode_message(framed[start:], limits))
    return out


def link(a: Peer, b: Peer) -> tuple[PeerSession, PeerSession]:
    ab, ba = a.session(b), b.session(a)
    ab.start()
    ba.start()
    pump((a, ab), (b, ba))
    return ab, ba


def pump(*ends: tuple[Peer, PeerSession]) -> None:
    """Move messages between pairs of sessions (ends[0]<->ends[1], ...) until all are quiet."""
    pairs = [(ends[i], ends[i + 1]) for i in range(0, len(ends), 2)]
    for _ in range(10_000):
        moved = False
        for (p, ps), (q, qs) in pairs:
            for sender, receiver in (((p, ps), (q, qs)), ((q, qs), (p, ps))):
                messages = sender[1].messages_to_send()
                for message in wire(messages, receiver[0].limits):  # type: ignore[arg-type]
                    receiver[1].receive(message)  # type: ignore[arg-type]
                    receiver[0].handle_events(receiver[1])
                moved = moved or bool(messages)
        if not moved:
            return
    raise AssertionError("sessions never went quiet")


# -- handshake and catch-up -------------------------------------------------------------------


def test_two_peers_catch_up_exactly_and_complete() -> None:
    a, b = Peer(0), Peer(1)
    for i in range(3):
        a.write(b"a%d" % i)
    b.write(b"b0")
    ab, ba = link(a, b)
    assert a.log.vector() == b.log.vector() == {a.id: 3, b.id: 1}
    assert list(a.log.envelopes()) == list(b.log.envelopes())
    assert ab.state is ba.state is SessionState.OPEN
    handshake = next(e for e in b.events if isinstance(e, HandshakeCompleted))
    assert handshake == HandshakeCompleted(GUID, 0, HelloFlags.NONE, adopted=False)
    received = [e for e in b.events if isinstance(e, EnvelopesReceived)]
    assert [env.seq for e in received for env in e.envelopes] == [1, 2, 3]  # nothing of its own
    assert SyncCompleted() in a.events and SyncCompleted() in b.events


def test_empty_logs_exchange_one_empty_final_step2() -> None:
    a, b = Peer(0), Peer(1)
    ab, ba = a.session(b), b.session(a)
    ab.start()
    assert ab.messages_to_send() == [Hello(ROOM, GUID, 0)]
    ba.receive(Hello(ROOM, GUID, 0))  # the peer spoke first: our HELLO goes out too
    assert ba.messages_to_send() == [Hello(ROOM, GUID, 0), SyncStep1({})]
    ba.receive(SyncStep1({}))
    assert ba.messages_to_send() == [SyncStep2((), final=True)]


def test_start_twice_is_a_local_error() -> None:
    a, b = Peer(0), Peer(1)
    session = a.session(b)
    session.start()
    with pytest.raises(LocalProtocolError, match="already started"):
        session.start()


def test_large_catch_up_is_split_into_bounded_step2_batches() -> None:
    limits = ProtocolLimits(
        max_message_bytes=4096, max_envelope_bytes=1024, max_envelopes_per_step2=5
    )
    a, b = Peer(0, limits=limits), Peer(1, limits=limits)
    for i in range(40):
        a.write(bytes(i * 10))
    ab, ba = a.session(b), b.session(a)
    ab.start()
    ba.start()
    ba.receive(ab.messages_to_send()[0])
    hello, step1 = ba.messages_to_send()
    ab.receive(hello)
    ab.messages_to_send()  # a's step1
    ab.receive(step1)  # b's: empty
    answer = ab.messages_to_send()
    assert all(isinstance(m, SyncStep2) for m in answer)
    steps = [m for m in answer if isinstance(m, SyncStep2)]
    assert [m.final for m in steps] == [False] * (len(steps) - 1) + [True]
    assert all(len(m.envelopes) <= 5 for m in steps)
    assert [e.seq for m in steps for e in m.envelopes] == list(range(1, 41))
    for message in wire(answer, limits):  # every batch decodes within the limits
        ba.receive(message)  # type: ignore[arg-type]
        b.handle_events(ba)
    assert b.log.vector() == {a.id: 40}


# -- documents --------------------------------------------------------------------------------


def test_different_guid_is_refused_both_ways_and_nothing_merges() -> None:
    a, b = Peer(0), Peer(1, guid=b"H" * 16)
    a.write(b"mine")
    b.write(b"theirs")
    ab, ba = link(a, b)
    assert ab.state is ba.state is SessionState.CLOSED
    closed = [e for e in a.events if isinstance(e, SessionClosed)]
    assert closed[0].reason is GoodbyeReason.GUID_MISMATCH
    assert not closed[0].by_peer
    assert closed[0].remote_guid == b"H" * 16
    assert "different document" in closed[0].message and "never merged" in closed[0].message
    assert a.log.vector() == {a.id: 1} and b.log.vector() == {b.id: 1}
    assert not any(isinstance(e, EnvelopesReceived) for e in a.events + b.events)


@pytest.mark.parametrize(("ours", "theirs"), [(1, 2), (2, 1)])
def test_different_epoch_is_refused_both_ways_with_the_epoch_reported(
    ours: int, theirs: int
) -> None:
    a, b = Peer(0, epoch=ours), Peer(1, epoch=theirs)
    b.write(b"x")
    ab, _ = link(a, b)
    assert ab.state is SessionState.CLOSED
    closed = next(e for e in a.events if isinstance(e, SessionClosed) and not e.by_peer)
    assert closed.reason is GoodbyeReason.EPOCH_MISMATCH
    assert closed.remote_epoch == theirs
    assert ("theirs is newer" if theirs > ours else "ours is newer") in closed.message
    assert (a.log.guid, a.log.epoch, len(a.log)) == (GUID, ours, 0)  # never moved by a peer


def test_joining_peer_adopts_the_document_and_catches_up() -> None:
    a, b = Peer(0, epoch=5), Peer(1, guid=None)
    a.write(b"x")
    a.write(b"y")
    ab, ba = link(a, b)
    assert (b.log.guid, b.log.epoch) == (GUID, 5)
    assert HandshakeCompleted(GUID, 5, HelloFlags.NONE, adopted=True) in b.events
    assert HandshakeCompleted(GUID, 5, HelloFlags.NONE, adopted=False) in a.events
    assert b.log.vector() == {a.id: 2}
    b.write(b"z")
    pump((a, ab), (b, ba))
    assert a.log.vector() == {a.id: 2, b.id: 1}


def test_two_joining_peers_have_no_document() -> None:
    a, b = Peer(0, guid=None), Peer(1, guid=None)
    ab, _ = link(a, b)
    assert ab.state is SessionState.CLOSED
    assert next(e for e in a.events if isinstance(e, SessionClosed)).reason is (
        GoodbyeReason.NO_DOCUMENT
    )


def test_hello_for_another_room_is_refused() -> None:
    a = Peer(0)
    session = a.session(Peer(1))
    session.receive(Hello(room_id("lab", "other"), GUID))
    sent = session.messages_to_send()
    assert isinstance(sent[-1], Goodbye)
    assert sent[-1].reason is GoodbyeReason.UNKNOWN_ROOM


# -- misbehaving peers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "early", [SyncStep1({}), SyncStep2(()), Awareness(b"x"), Ack({}), "update"]
)
def test_messages_before_hello_are_a_protocol_error(early: object) -> None:
    a, b = Peer(0), Peer(1)
    message = Update(b.write(b"x")) if early == "update" else early
    session = a.session(b)
    session.start()
    session.receive(message)  # type: ignore[arg-type]
    assert session.state is SessionState.CLOSED
    goodbye = session.messages_to_send()[-1]
    assert isinstance(goodbye, Goodbye) and goodbye.reason is GoodbyeReason.PROTOCOL_ERROR
    assert "before HELLO" in goodbye.message
    assert len(a.log) == 0
    session.receive(Hello(ROOM, GUID))  # closed: ignored
    assert session.messages_to_send() == []


def test_second_hello_is_a_protocol_error_and_goodbye_closes() -> None:
    a, b = Peer(0), Peer(1)
    ab, ba = link(a, b)
    ab.receive(Hello(ROOM, GUID))
    assert ab.state is SessionState.CLOSED
    pump((a, ab), (b, ba))
    assert ba.state is SessionState.CLOSED
    by_peer = next(e for e in b.events if isinstance(e, SessionClosed))
    assert by_peer.by_peer and by_peer.reason is GoodbyeReason.PROTOCOL_ERROR
    ab.close()  # already closed: nothing more
    assert ab.messages_to_send() == []


def test_forged_update_from_a_peer_is_rejected_by_the_log() -> None:
    a, b = Peer(0), Peer(1)
    ab, _ = link(a, b)
    real = Envelope.create(b.key, ROOM, 1, b"real", guid=GUID, epoch=0)
    forged = Envelope(real.author, ROOM, 1, b"evil", real.signature, guid=GUID, epoch=0)
    ab.receive(Update(forged))
    event = ab.next_event()
    assert isinstance(event, EnvelopesReceived)
    assert a.log.offer(event.envelopes[0]).status is OfferStatus.REJECTED
    assert len(a.log) == 0


# -- live updates -----------------------------------------------------------------------------


def test_new_envelopes_are_forwarded_once_and_never_echoed() -> None:
    a, b, c = Peer(0), Peer(1), Peer(2)
    ab, ba = link(a, b)
    bc, cb = link(b, c)
    written = a.write(b"hello")
    assert ab.messages_to_send() == [Update(written)]
    assert ab.forward_new() == 0  # already sent
    ba.receive(Update(written))
    b.handle_events(ba)
    assert ba.messages_to_send() == [Ack({a.id: 1})]  # ack, no echo
    pump((b, bc), (c, cb))
    assert c.log.get(a.id, 1) == written  # relayed unchanged
    assert cb.messages_to_send() == []


def test_nothing_is_forwarded_before_the_peers_step1() -> None:
    a, b = Peer(0), Peer(1)
    ab = a.session(b)
    ab.start()
    a.write(b"early")
    assert ab.forward_new() == 0
    assert ab.messages_to_send() == [Hello(ROOM, GUID, 0)]


def test_dropped_gap_envelope_is_recovered_by_resync() -> None:
    a, c = Peer(0), Peer(2, log_limits=LogLimits(max_held_per_author=0))
    ac, ca = link(a, c)
    first = Envelope.create(a.key, ROOM, 1, b"1", guid=GUID, epoch=0)
    second = Envelope.create(a.key, ROOM, 2, b"2", guid=GUID, epoch=0)
    assert a.log.offer(first).status is OfferStatus.ACCEPTED
    assert a.log.offer(second).status is OfferStatus.ACCEPTED
    ca.receive(Update(second))  # arrived first through another path
    c.handle_events(ca)
    assert c.log.vector() == {}
    assert ca.messages_to_send() == [SyncStep1({})]  # the resync asks for the gap
    ac.receive(SyncStep1({}))
    for message in ac.messages_to_send():
        ca.receive(message)
        c.handle_events(ca)
    assert c.log.vector() == {a.id: 2}


# -- acknowledgements -------------------------------------------------------------------------


def test_unacknowledged_local_updates_count_down_as_peers_ack() -> None:
    a, b = Peer(0), Peer(1)
    for i in range(3):
        a.write(b"%d" % i)
    assert unacknowledged_count(a.id, a.log, []) == 3
    ab, ba = link(a, b)
    assert unacknowledged_count(a.id, a.log, [ab]) == 0
    assert ab.acked_vector() == {a.id: 3}
    assert any(isinstance(e, PeerAcknowledged) for e in a.events)
    a.write(b"more")
    assert unacknowledged_count(a.id, a.log, [ab]) == 1
    pump((a, ab), (b, ba))
    assert unacknowledged_count(a.id, a.log, [ab]) == 0
    ba.acknowledge()  # nothing new since the last ack
    assert ba.messages_to_send() == []


def test_ack_carries_only_what_changed() -> None:
    a, b = Peer(0), Peer(1)
    b.write(b"b")
    ab, ba = link(a, b)
    a.write(b"a")
    ab_messages = ab.messages_to_send()
    for message in ab_messages:
        ba.receive(message)
    b.handle_events(ba)
    assert ba.messages_to_send() == [Ack({a.id: 1})]


# -- awareness and closing --------------------------------------------------------------------


def test_awareness_both_ways_and_bounds() -> None:
    limits = ProtocolLimits(max_awareness_bytes=4)
    a, b = Peer(0, limits=limits), Peer(1)
    ab = a.session(b)
    with pytest.raises(LocalProtocolError, match="idle"):
        ab.send_awareness(b"x")
    ab, ba = link(a, b)
    ab.send_awareness(b"\x01\x02")
    pump((a, ab), (b, ba))
    assert AwarenessReceived(b"\x01\x02") in b.events
    with pytest.raises(LimitExceeded, match="5 bytes"):
        ab.send_awareness(b"12345")


def test_goodbye_message_is_cut_to_what_the_peer_accepts() -> None:
    limits = ProtocolLimits(max_reason_bytes=10)
    a, b = Peer(0, limits=limits), Peer(1, limits=limits)
    ab, ba = link(a, b)
    ab.close(GoodbyeReason.OTHER, "é" * 20)
    pump((a, ab), (b, ba))
    closed = next(e for e in b.events if isinstance(e, SessionClosed))
    assert closed.message == "é" * 5


def test_close_says_goodbye_once() -> None:
    a, b = Peer(0), Peer(1)
    ab, ba = link(a, b)
    ab.close(GoodbyeReason.NORMAL, "leaving")
    ab.close()
    assert ab.messages_to_send() == [Goodbye(GoodbyeReason.NORMAL, "leaving")]
    assert ab.next_event() == SessionClosed(GoodbyeReason.NORMAL, "leaving", by_peer=False)
    assert ab.next_event() is None
    ba.receive(Goodbye(GoodbyeReason.NORMAL, "leaving"))
    assert ba.next_event() == SessionClosed(GoodbyeReason.NORMAL, "leaving", by_peer=True)
    ba.forward_new()
    ba.acknowledge()
    ba.resync()
    assert ba.messages_to_send() == []


def test_read_only_flag_reaches_the_peer() -> None:
    a, b = Peer(0), Peer(1)
    ab, ba = a.session(b, HelloFlags.READ_ONLY), b.session(a)
    ab.start()
    ba.start()
    pump((a, ab), (b, ba))
    assert ba.remote_flags == HelloFlags.READ_ONLY
    assert ab.remote_flags == HelloFlags.NONE


# -- convergence ------------------------------------------------------------------------------


class Mesh:
    """Peers, links that come and go, and per-link FIFO queues delivered in random order."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.peers = [Peer(i, log_limits=LogLimits(max_held_per_author=2)) for i in range(size)]
        self.rng = rng
        self.links: dict[tuple[int, int], tuple[PeerSession, PeerSession, deque, deque]] = {}

    def connect(self, i: int, j: int) -> None:
        if (i, j) in self.links:
            return
        p, q = self.peers[i], self.peers[j]
        pq, qp = p.session(q), q.session(p)
        pq.start()
        qp.start()
        self.links[(i, j)] = (pq, qp, deque(), deque())

    def disconnect(self, i: int, j: int) -> None:
        link = self.links.pop((i, j), None)
        if link is not None:
            del self.peers[i].sessions[self.peers[j].id]
            del self.peers[j].sessions[self.peers[i].id]

    def step(self) -> bool:
        """Collect outgoing messages, deliver one queued message on a random link."""
        for pq, qp, to_q, to_p in self.links.values():
            to_q.extend(pq.messages_to_send())
            to_p.extend(qp.messages_to_send())
        busy = [(key, d) for key, link in self.links.items() for d in (0, 1) if link[2 + d]]
        if not busy:
            return False
        (i, j), direction = self.rng.choice(busy)
        pq, qp, to_q, to_p = self.links[(i, j)]
        if direction == 0:
            qp.receive(to_q.popleft())
            self.peers[j].handle_events(qp)
        else:
            pq.receive(to_p.popleft())
            self.peers[i].handle_events(pq)
        return True

    def settle(self) -> None:
        for _ in range(100_000):
            if not self.step():
                return
        raise AssertionError("the mesh never settled")


actions = st.lists(
    st.tuples(
        st.sampled_from(["write", "write", "up", "down", "step", "step"]),
        st.integers(0, 3),
        st.integers(0, 3),
    ),
    min_size=10,
    max_size=80,
)


@given(actions, st.integers(0, 2**32))
@settings(max_examples=80, deadline=None)
def test_logs_converge_after_partitions_heal(plan: list[tuple[str, int, int]], seed: int) -> None:
    mesh = Mesh(4, random.Random(seed))
    for action, i, j in plan:
        if action == "write":
            mesh.peers[i].write(b"%d" % len(mesh.peers[i].log))
        elif action in ("up", "down") and i != j:
            (mesh.connect if action == "up" else mesh.disconnect)(min(i, j), max(i, j))
        else:
            for _ in range(i + j):
                mesh.step()
    for i in range(4):  # heal: a line is enough, updates travel through relays
        if i + 1 < 4:
            mesh.connect(i, i + 1)
    mesh.settle()
    vectors = [peer.log.vector() for peer in mesh.peers]
    assert all(v == vectors[0] for v in vectors)
    assert all(list(p.log.envelopes()) == list(mesh.peers[0].log.envelopes()) for p in mesh.peers)
    written = {p.id: p.log.seq(p.id) for p in mesh.peers if p.log.seq(p.id)}
    assert vectors[0] == written
    assert sum(vectors[0].values()) == sum(1 for action, _, _ in plan if action == "write")


def test_documents_converge_as_views_of_the_envelope_logs() -> None:
    """Yjs updates in envelopes: every peer's pycrdt Doc ends the same after a partition."""
    rng = random.Random(7)
    mesh = Mesh(3, rng)
    docs = [pycrdt.Doc(client_id=1000 + i) for i in range(3)]
    applied: list[set[tuple[PeerId, int]]] = [set(), set(), set()]

    def write(i: int, key: str, value: float) -> None:
        before = docs[i].get_state()
        docs[i].get("params", type=pycrdt.Map)[key] = value
        mesh.peers[i].write(docs[i].get_update(before))

    def apply_all() -> None:
        for i, peer in enumerate(mesh.peers):
            for envelope in peer.log.envelopes():
                if (envelope.author, envelope.seq) not in applied[i]:
                    applied[i].add((envelope.author, envelope.seq))
                    docs[i].apply_update(envelope.update)

    mesh.connect(0, 1)
    write(0, "lr", 0.1)
    mesh.settle()
    write(1, "lr", 0.2)  # concurrent with peer 2's write while 2 is partitioned
    write(2, "lr", 0.3)
    write(2, "batch", 64.0)
    mesh.settle()
    mesh.connect(1, 2)
    mesh.settle()
    apply_all()
    views = [doc.get("params", type=pycrdt.Map).to_py() for doc in docs]
    assert views[0] == views[1] == views[2]
    assert views[0]["batch"] == 64.0 and views[0]["lr"] in (0.2, 0.3)
