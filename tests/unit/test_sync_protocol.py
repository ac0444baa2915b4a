"""``/lattica-nb/yjs/1.0.0`` messages (sync/protocol.py): layout, round trips, bounds, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.errors import ConfigError, DecodeError, LocalProtocolError
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.sync.envelope import Envelope, room_id
from lattica_nb.sync.protocol import (
    PROTOCOL_ID,
    Ack,
    Awareness,
    Goodbye,
    GoodbyeReason,
    Hello,
    HelloFlags,
    Message,
    ProtocolLimits,
    SyncStep1,
    SyncStep2,
    Update,
    decode_message,
    encode_message,
    frame_message,
)
from lattica_nb.wire.protobuf import ProtoWriter
from lattica_nb.wire.varint import decode_uvarint

ROOM = room_id("lab", "sweep")
GUID = b"G" * 16
KEYS = [PrivateKey.generate() for _ in range(3)]
IDS = [PeerId.from_public_key(key.public_key) for key in KEYS]
ENVELOPES = [
    Envelope.create(key, ROOM, seq, b"u" * seq, guid=GUID, epoch=0)
    for key in KEYS
    for seq in (1, 2)
]


def kind(number: int, inner: bytes) -> bytes:
    return ProtoWriter().bytes(number, inner).finish()


# -- layout -----------------------------------------------------------------------------------


def test_protocol_id() -> None:
    assert PROTOCOL_ID == "/lattica-nb/yjs/1.0.0"


def test_hello_layout() -> None:
    hello = Hello(ROOM, GUID, 3, HelloFlags.READ_ONLY)
    inner = b"\x0a\x20" + ROOM + b"\x12\x10" + GUID + b"\x18\x03" + b"\x20\x01"
    assert encode_message(hello) == b"\x0a" + bytes([len(inner)]) + inner
    joining = Hello(ROOM, None)
    assert encode_message(joining) == kind(1, b"\x0a\x20" + ROOM + b"\x18\x00")


def test_vector_layout_is_sorted_by_author() -> None:
    vector = {IDS[1]: 5, IDS[0]: 300}
    entries = b"".join(
        ProtoWriter()
        .bytes(1, ProtoWriter().bytes(1, author.to_bytes()).uint(2, seq).finish())
        .finish()
        for author, seq in sorted(vector.items())
    )
    assert encode_message(SyncStep1(vector)) == kind(2, entries)
    assert encode_message(Ack(vector)) == kind(6, entries)


def test_step2_update_awareness_goodbye_layout() -> None:
    one, two = ENVELOPES[:2]
    step2 = ProtoWriter().bytes(1, one.encode()).bytes(1, two.encode()).uint(2, 1).finish()
    assert encode_message(SyncStep2((one, two), final=True)) == kind(3, step2)
    assert encode_message(SyncStep2((), final=False)) == kind(3, b"")
    assert encode_message(Update(one)) == kind(4, ProtoWriter().bytes(1, one.encode()).finish())
    assert encode_message(Awareness(b"\x01\x02")) == kind(5, b"\x0a\x02\x01\x02")
    assert encode_message(Goodbye(GoodbyeReason.GUID_MISMATCH, "no")) == kind(
        7, b"\x08\x02\x12\x02no"
    )


def test_frame_is_uvarint_length_then_body() -> None:
    message = SyncStep2(tuple(ENVELOPES))
    framed = frame_message(message)
    length, start = decode_uvarint(framed)
    assert framed[start:] == encode_message(message)
    assert length == len(framed) - start > 127  # a two-byte prefix


# -- round trips ------------------------------------------------------------------------------

authors = st.sampled_from(IDS)
vectors = st.dictionaries(authors, st.integers(1, 2**63 - 1), max_size=3)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello,
        st.just(ROOM),
        st.just(GUID),
        st.integers(0, 2**63 - 1),
        st.integers(0, 2**20).map(HelloFlags),
    ),
    st.builds(Hello, st.just(ROOM), st.none()),
    st.builds(SyncStep1, vectors),
    st.builds(
        SyncStep2,
        st.lists(st.sampled_from(ENVELOPES), max_size=6).map(tuple),
        st.booleans(),
    ),
    st.builds(Update, st.sampled_from(ENVELOPES)),
    st.builds(Awareness, st.binary(max_size=64)),
    st.builds(Ack, vectors),
    st.builds(Goodbye, st.sampled_from(GoodbyeReason), st.text(max_size=40)),
)


@given(messages)
@settings(max_examples=300)
def test_round_trip(message: Message) -> None:
    decoded = decode_message(encode_message(message))
    assert decoded == message
    assert encode_message(decoded) == encode_message(message)


def test_unknown_flag_bits_are_kept() -> None:
    hello = decode_message(encode_message(Hello(ROOM, GUID, 0, HelloFlags(0b1011))))
    assert isinstance(hello, Hello)
    assert HelloFlags.READ_ONLY in hello.flags
    assert int(hello.flags) == 0b1011


def test_unknown_goodbye_code_reads_as_other() -> None:
    decoded = decode_message(kind(7, b"\x08\x63\x12\x03bye"))
    assert decoded == Goodbye(GoodbyeReason.OTHER, "bye")


def test_unknown_fields_inside_a_message_are_ignored() -> None:
    inner = b"\x0a\x20" + ROOM + b"\x12\x10" + GUID + b"\x18\x01" + b"\xa0\x06\x07"  # field 100
    assert decode_message(kind(1, inner)) == Hello(ROOM, GUID, 1)


# -- refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "exactly one known kind, found 0"),
        (kind(9, b""), "exactly one known kind, found 0"),
        (kind(5, b"") + kind(6, b""), "exactly one known kind, found 2"),
        (b"\x08\x01", "wrong wire type"),
        (kind(1, b""), "field 1 is missing"),
        (kind(1, b"\x0a\x01x"), "room id is 1 bytes"),
        (kind(1, b"\x0a\x20" + ROOM + b"\x12\x03abc"), "guid is 3 bytes"),
        (kind(1, b"\x0a\x20" + ROOM + b"\x18\x01"), "epoch but no guid"),
        (kind(2, kind(1, b"")), "field 1 is missing"),
        (kind(2, kind(1, kind(1, IDS[0].to_bytes()))), "field 2 is missing"),
        (kind(2, kind(1, kind(1, IDS[0].to_bytes()) + b"\x10\x00")), "seq 0"),
        (kind(2, kind(1, kind(1, b"\x00\x03abc") + b"\x10\x01")), "peer id"),
        (
            kind(6, 2 * kind(1, kind(1, IDS[0].to_bytes()) + b"\x10\x01")),
            "twice",
        ),
        (kind(3, kind(1, b"garbage")), ""),
        (kind(4, b""), "field 1 is missing"),
        (kind(4, kind(1, ENVELOPES[0].encode() + b"\x40\x01")), "canonically"),
        (kind(7, b"\x12\x02\xff\xfe"), "UTF-8"),
    ],
)
def test_malformed_messages_are_refused(raw: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_message(raw)


def test_decoding_is_bounded() -> None:
    limits = ProtocolLimits(
        max_message_bytes=4096,
        max_envelope_bytes=200,
        max_vector_authors=2,
        max_envelopes_per_step2=3,
        max_awareness_bytes=8,
        max_reason_bytes=4,
    )
    cases: list[tuple[Message, str]] = [
        (Awareness(bytes(5000)), "exceeds 4096"),
        (SyncStep1({IDS[0]: 1, IDS[1]: 1, IDS[2]: 1}), "3 authors exceeds the limit of 2"),
        (Ack({IDS[0]: 1, IDS[1]: 1, IDS[2]: 1}), "3 authors"),
        (SyncStep2(tuple(ENVELOPES[:4])), "4 envelopes, more than 3"),
        (Update(Envelope.create(KEYS[0], ROOM, 1, bytes(100), guid=GUID, epoch=0)), "exceeds"),
        (Awareness(bytes(9)), "9 bytes exceeds 8"),
        (Goodbye(GoodbyeReason.NORMAL, "hello"), "5 bytes exceeds 4"),
    ]
    for message, match in cases:
        with pytest.raises(DecodeError, match=match):
            decode_message(encode_message(message), limits)
    within: list[Message] = [
        SyncStep1({IDS[0]: 1, IDS[1]: 1}),
        SyncStep2(tuple(ENVELOPES[:3])),
        Awareness(bytes(8)),
        Goodbye(GoodbyeReason.NORMAL, "bye!"),
    ]
    for message in within:
        assert decode_message(encode_message(message), limits) == message


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_vector_authors"):
        ProtocolLimits(max_vector_authors=0)
    with pytest.raises(ConfigError, match="must fit in one step2"):
        ProtocolLimits(max_message_bytes=1024 * 1024, max_envelope_bytes=1024 * 1024)
    limits = ProtocolLimits()
    assert limits.step2_budget_bytes >= limits.max_envelope_bytes


def test_a_full_step2_batch_fits_the_message_limit() -> None:
    # The budget leaves room for each envelope's tag and length: a batch filled up to it
    # still fits the message limit.
    limits = ProtocolLimits(
        max_message_bytes=8192, max_envelope_bytes=2100, max_envelopes_per_step2=4
    )
    update_bytes = limits.step2_budget_bytes // 4
    while 4 * Envelope.create(KEYS[0], ROOM, 1, bytes(update_bytes), guid=GUID, epoch=0).size > (
        limits.step2_budget_bytes
    ):
        update_bytes -= 1
    batch = tuple(
        Envelope.create(KEYS[0], ROOM, seq, bytes(update_bytes), guid=GUID, epoch=0)
        for seq in (1, 2, 3, 4)
    )
    assert sum(e.size for e in batch) <= limits.step2_budget_bytes
    assert sum(e.size for e in batch) > limits.step2_budget_bytes - 8
    body = encode_message(SyncStep2(batch))
    assert len(body) <= limits.max_message_bytes
    assert decode_message(body, limits) == SyncStep2(batch)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Hello(b"short", GUID),
        lambda: Hello(ROOM, b"short"),
        lambda: Hello(ROOM, None, 1),
        lambda: Hello(ROOM, GUID, -1),
        lambda: SyncStep1({IDS[0]: 0}),
        lambda: Ack({IDS[0]: 2**63}),
        lambda: SyncStep1({"not a peer": 1}),  # type: ignore[dict-item]
    ],
)
def test_messages_refuse_invalid_values(build: object) -> None:
    with pytest.raises(LocalProtocolError):
        build()  # type: ignore[operator]


@given(st.binary(max_size=600))
@settings(max_examples=1000)
def test_random_bytes_only_raise_decode_error(raw: bytes) -> None:
    try:
        decode_message(raw)
    except DecodeError:
        pass


@given(messages, st.data())
@settings(max_examples=500)
def test_mutated_messages_only_raise_decode_error(message: Message, data: st.DataObject) -> None:
    raw = bytearray(encode_message(message))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        decode_message(bytes(raw[:cut]))
    except DecodeError:
        pass
