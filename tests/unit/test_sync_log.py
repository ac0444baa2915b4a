"""The per-room envelope log (sync/log.py): offers, gaps, equivocation, missing_for, restore."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.errors import ConfigError, LocalProtocolError, VerificationError
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.sync.envelope import Envelope, room_id
from lattica_nb.sync.log import EnvelopeLog, LogLimits, OfferStatus

ROOM = room_id("lab", "sweep")
GUID = b"G" * 16
KEYS = [PrivateKey.generate() for _ in range(3)]
IDS = [PeerId.from_public_key(key.public_key) for key in KEYS]
SEQS = 8
# A pool signed once: POOL[author][seq - 1]; updates differ in size.
POOL = [
    [
        Envelope.create(key, ROOM, seq, bytes([a, seq]) * (seq * 3), guid=GUID, epoch=0)
        for seq in range(1, SEQS + 1)
    ]
    for a, key in enumerate(KEYS)
]
ALL = [env for author in POOL for env in author]


def env(author: int, seq: int) -> Envelope:
    return POOL[author][seq - 1]


def new_log(limits: LogLimits | None = None) -> EnvelopeLog:
    return EnvelopeLog(ROOM, guid=GUID, limits=limits or LogLimits())


def feed(log: EnvelopeLog, envelopes: list[Envelope]) -> None:
    for each in envelopes:
        log.offer(each)


# -- accepting in order -----------------------------------------------------------------------


def test_next_seq_is_accepted_and_counted() -> None:
    log = new_log()
    result = log.offer(env(0, 1))
    assert result.status is OfferStatus.ACCEPTED
    assert result.accepted == (env(0, 1),)
    assert log.vector() == {IDS[0]: 1}
    assert log.seq(IDS[0]) == 1 and log.seq(IDS[1]) == 0
    assert len(log) == 1
    assert log.stored_bytes == env(0, 1).size
    assert log.get(IDS[0], 1) == env(0, 1)
    assert log.get(IDS[0], 2) is None and log.get(IDS[1], 1) is None


def test_same_envelope_again_is_a_duplicate() -> None:
    log = new_log()
    log.offer(env(0, 1))
    assert log.offer(env(0, 1)).status is OfferStatus.DUPLICATE
    # Same signed content with other signature bytes: nothing new either (not checked).
    assert log.offer(dataclasses.replace(env(0, 1), signature=bytes(64))).status is (
        OfferStatus.DUPLICATE
    )
    assert len(log) == 1


# -- gaps -------------------------------------------------------------------------------------


def test_gap_is_held_then_released_in_order() -> None:
    log = new_log()
    log.offer(env(0, 1))
    held = log.offer(env(0, 4))
    assert held.status is OfferStatus.HELD
    assert held.missing == (2, 3)
    assert log.offer(env(0, 3)).missing == (2, 2)
    assert log.offer(env(0, 4)).status is OfferStatus.DUPLICATE  # already held
    assert log.held_count == 2
    assert log.held_bytes == env(0, 3).size + env(0, 4).size
    assert log.gaps() == {IDS[0]: (2, 2)}
    assert log.vector() == {IDS[0]: 1}

    released = log.offer(env(0, 2))
    assert released.status is OfferStatus.ACCEPTED
    assert released.accepted == (env(0, 2), env(0, 3), env(0, 4))
    assert log.vector() == {IDS[0]: 4}
    assert log.held_count == 0 and log.held_bytes == 0 and log.gaps() == {}
    assert log.stored_bytes == sum(env(0, s).size for s in range(1, 5))


def test_author_with_only_held_envelopes_is_not_in_the_vector() -> None:
    log = new_log()
    assert log.offer(env(1, 3)).missing == (1, 2)
    assert log.vector() == {}
    assert list(log.envelopes()) == []


def test_envelope_too_far_ahead_is_dropped_without_a_signature_check() -> None:
    log = new_log(LogLimits(max_held_per_author=2))
    assert log.offer(env(0, 3)).status is OfferStatus.HELD  # 2 ahead of the next (1)
    forged = dataclasses.replace(env(0, 5), signature=bytes(64))
    result = log.offer(forged)
    assert result.status is OfferStatus.DROPPED
    assert result.missing == (1, 2)
    assert "too far ahead" in result.reason
    assert log.held_count == 1


def test_hold_bounds_across_authors_drop_and_report_the_gap() -> None:
    log = new_log(LogLimits(max_held_envelopes=2))
    assert log.offer(env(0, 2)).status is OfferStatus.HELD
    assert log.offer(env(1, 2)).status is OfferStatus.HELD
    dropped = log.offer(env(2, 3))
    assert dropped.status is OfferStatus.DROPPED
    assert dropped.missing == (1, 2)
    assert "already held" in dropped.reason
    # Filling a gap frees room in the buffer.
    log.offer(env(0, 1))
    assert log.offer(env(2, 3)).status is OfferStatus.HELD

    by_bytes = new_log(LogLimits(max_held_bytes=env(0, 2).size))
    assert by_bytes.offer(env(0, 2)).status is OfferStatus.HELD
    assert by_bytes.offer(env(1, 2)).status is OfferStatus.DROPPED
    assert by_bytes.held_bytes == env(0, 2).size


def test_nothing_is_held_with_zero_limits() -> None:
    log = new_log(LogLimits(max_held_per_author=0))
    assert log.offer(env(0, 2)).status is OfferStatus.DROPPED
    assert log.offer(env(0, 1)).status is OfferStatus.ACCEPTED


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_held_bytes"):
        LogLimits(max_held_bytes=-1)
    with pytest.raises(ConfigError, match="max_envelope_bytes"):
        LogLimits(max_envelope_bytes=0)


def test_oversized_envelope_is_rejected_even_our_own() -> None:
    log = new_log(LogLimits(max_envelope_bytes=env(0, 1).size))
    assert log.offer(env(0, 1)).status is OfferStatus.ACCEPTED
    result = log.offer(env(0, 2))  # a bigger update
    assert result.status is OfferStatus.REJECTED
    assert "over the limit" in result.reason


# -- rejections -------------------------------------------------------------------------------


def test_forged_envelope_is_rejected() -> None:
    log = new_log()
    forged = dataclasses.replace(env(0, 1), update=b"evil")
    result = log.offer(forged)
    assert result.status is OfferStatus.REJECTED
    assert "does not verify" in result.reason
    assert not result.equivocation
    assert log.vector() == {}
    # A forged held envelope is refused too, and the real one is accepted later.
    assert log.offer(dataclasses.replace(env(0, 3), update=b"evil")).status is (
        OfferStatus.REJECTED
    )
    assert log.held_count == 0


def test_envelope_of_another_document_is_rejected() -> None:
    log = new_log()
    for other in (
        Envelope.create(KEYS[0], room_id("lab", "other"), 1, b"u", guid=GUID, epoch=0),
        Envelope.create(KEYS[0], ROOM, 1, b"u", guid=b"H" * 16, epoch=0),
        Envelope.create(KEYS[0], ROOM, 1, b"u", guid=GUID, epoch=1),
    ):
        result = log.offer(other)
        assert result.status is OfferStatus.REJECTED
        assert "another document" in result.reason
    assert len(log) == 0


def test_equivocation_is_detected_and_the_author_frozen() -> None:
    log = new_log()
    feed(log, [env(0, 1), env(0, 2), env(0, 5)])
    twin = Envelope.create(KEYS[0], ROOM, 2, b"other", guid=GUID, epoch=0)
    result = log.offer(twin)
    assert result.status is OfferStatus.REJECTED
    assert result.equivocation
    assert log.equivocations() == {IDS[0]: (env(0, 2), twin)}
    assert log.held_count == 0  # its held envelopes are dropped
    # Nothing newer from that author; what was accepted stays, other authors are unaffected.
    assert log.offer(env(0, 3)).status is OfferStatus.REJECTED
    assert log.offer(env(0, 1)).status is OfferStatus.DUPLICATE
    assert log.offer(env(1, 1)).status is OfferStatus.ACCEPTED
    assert log.vector() == {IDS[0]: 2, IDS[1]: 1}


def test_equivocation_against_a_held_envelope() -> None:
    log = new_log()
    log.offer(env(0, 3))
    twin = Envelope.create(KEYS[0], ROOM, 3, b"other", guid=GUID, epoch=0)
    assert log.offer(twin).equivocation
    assert log.held_count == 0 and log.held_bytes == 0
    assert log.offer(env(0, 1)).status is OfferStatus.REJECTED


def test_a_forged_twin_never_flags_the_author() -> None:
    log = new_log()
    log.offer(env(0, 1))
    forged = dataclasses.replace(env(0, 1), update=b"other")
    result = log.offer(forged)
    assert result.status is OfferStatus.REJECTED
    assert not result.equivocation
    assert log.equivocations() == {}
    assert log.offer(env(0, 2)).status is OfferStatus.ACCEPTED


# -- documents --------------------------------------------------------------------------------


def test_a_joining_log_accepts_nothing_until_it_adopts_a_document() -> None:
    log = EnvelopeLog(ROOM, guid=None)
    assert log.guid is None
    assert log.offer(env(0, 1)).status is OfferStatus.REJECTED
    log.adopt(GUID, 0)
    assert (log.guid, log.epoch) == (GUID, 0)
    assert log.offer(env(0, 1)).status is OfferStatus.ACCEPTED
    with pytest.raises(LocalProtocolError, match="already belongs"):
        log.adopt(GUID, 0)


def test_log_ids_are_validated() -> None:
    with pytest.raises(LocalProtocolError, match="room id"):
        EnvelopeLog(b"short", guid=GUID)
    with pytest.raises(LocalProtocolError, match="guid"):
        EnvelopeLog(ROOM, guid=b"short")
    with pytest.raises(LocalProtocolError, match="guid"):
        EnvelopeLog(ROOM, guid=None).adopt(b"short", 0)


# -- missing_for ------------------------------------------------------------------------------


def test_missing_for_orders_by_author_bytes_then_seq() -> None:
    log = new_log()
    feed(log, [env(a, s) for s in range(1, 4) for a in range(3)])
    order = sorted(range(3), key=lambda a: IDS[a].to_bytes())
    assert log.missing_for({}) == [env(a, s) for a in order for s in range(1, 4)]
    assert list(log.envelopes()) == log.missing_for({})
    assert log.missing_for(log.vector()) == []
    first = order[0]
    assert log.missing_for({IDS[first]: 2, IDS[order[1]]: 99})[:1] == [env(first, 3)]
    assert log.missing_for({IDS[first]: 2, IDS[order[1]]: 99})[1:] == [
        env(order[2], s) for s in range(1, 4)
    ]


def test_missing_for_caps_by_count_and_bytes_but_never_to_nothing() -> None:
    log = new_log()
    feed(log, POOL[0])
    assert log.missing_for({}, max_count=3) == POOL[0][:3]
    sizes = [e.size for e in POOL[0]]
    assert log.missing_for({}, max_bytes=sizes[0] + sizes[1]) == POOL[0][:2]
    assert log.missing_for({}, max_bytes=sizes[0] + sizes[1] - 1) == POOL[0][:1]
    assert log.missing_for({}, max_bytes=1) == POOL[0][:1]
    assert log.missing_for({}, max_count=0) == POOL[0][:1]


def batches(source: EnvelopeLog, vector: dict[PeerId, int], **caps: int) -> list[Envelope]:
    """Everything ``source`` would send in capped batches, advancing the vector each time."""
    has = dict(vector)
    sent: list[Envelope] = []
    while batch := source.missing_for(has, **caps):
        for each in batch:
            assert each.seq == has.get(each.author, 0) + 1  # every batch extends without gaps
            has[each.author] = each.seq
        sent.extend(batch)
    return sent


partitions = st.lists(st.sampled_from(range(len(ALL))), max_size=3 * len(ALL))


@given(mine=partitions, theirs=partitions, seed=st.integers(0, 2**32))
@settings(max_examples=120, deadline=None)
def test_missing_for_is_exact(mine: list[int], theirs: list[int], seed: int) -> None:
    log = new_log()
    feed(log, [ALL[i] for i in mine])
    rng = random.Random(seed)
    vector = {a: rng.randint(0, SEQS + 1) for a in IDS if rng.random() < 0.7}
    expected = {e for e in log.envelopes() if e.seq > vector.get(e.author, 0)}
    got = log.missing_for(vector)
    assert set(got) == expected and len(got) == len(expected)
    for author in IDS:
        seqs = [e.seq for e in got if e.author == author]
        assert seqs == sorted(seqs)
    assert batches(log, vector, max_count=rng.randint(1, 5)) == got
    assert batches(log, vector, max_bytes=rng.randint(1, 400)) == got


@given(
    first=partitions,
    second=partitions,
    held_per_author=st.integers(0, 8),
    max_held=st.integers(0, 30),
)
@settings(max_examples=150, deadline=None)
def test_two_logs_exchanging_missing_envelopes_end_equal(
    first: list[int], second: list[int], held_per_author: int, max_held: int
) -> None:
    limits = LogLimits(max_held_per_author=held_per_author, max_held_envelopes=max_held)
    a, b = new_log(limits), new_log(limits)
    feed(a, [ALL[i] for i in first])
    feed(b, [ALL[i] for i in second])
    union = {a2: max(a.seq(a2), b.seq(a2)) for a2 in IDS}
    # Both ask at once, as two peers' step1s cross. Each answer is accepted whole (it extends
    # the receiver's log without gaps) but may release envelopes the receiver held, which the
    # other side lacks (a session forwards those with forward_new); here, another round.
    for _ in range(len(ALL) + 1):
        for_b = a.missing_for(b.vector())
        for_a = b.missing_for(a.vector())
        if not for_a and not for_b:
            break
        for each in for_b:
            assert b.offer(each).status in (OfferStatus.ACCEPTED, OfferStatus.DUPLICATE)
        for each in for_a:
            assert a.offer(each).status in (OfferStatus.ACCEPTED, OfferStatus.DUPLICATE)
    assert a.vector() == b.vector()
    assert list(a.envelopes()) == list(b.envelopes())
    assert a.stored_bytes == b.stored_bytes
    assert all(a.seq(author) >= seq for author, seq in union.items())
    assert a.missing_for(b.vector()) == [] and b.missing_for(a.vector()) == []


# -- persistence ------------------------------------------------------------------------------


def test_restore_loads_what_envelopes_gave() -> None:
    log = new_log()
    feed(log, [env(a, s) for s in range(SEQS, 0, -1) for a in range(3)])
    for verify in (True, False):
        again = new_log()
        again.restore(log.envelopes(), verify=verify)
        assert again.vector() == log.vector()
        assert list(again.envelopes()) == list(log.envelopes())
        assert again.stored_bytes == log.stored_bytes


def test_restore_refuses_gaps_forgeries_and_other_documents() -> None:
    with pytest.raises(VerificationError, match="held"):
        new_log().restore([env(0, 1), env(0, 3)])
    with pytest.raises(VerificationError, match="does not verify"):
        new_log().restore([dataclasses.replace(env(0, 1), update=b"x")])
    other = Envelope.create(KEYS[0], ROOM, 1, b"u", guid=GUID, epoch=2)
    for verify in (True, False):
        with pytest.raises(VerificationError):
            new_log().restore([other], verify=verify)
    # Without verification a forgery in our own file is trusted: that is what verify=False means.
    trusting = new_log()
    trusting.restore([dataclasses.replace(env(0, 1), update=b"x")], verify=False)
    assert trusting.vector() == {IDS[0]: 1}
