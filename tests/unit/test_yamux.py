"""The Yamux core, pumped by hand: two sessions, a hand-driven clock, no sockets."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.errors import (
    ConfigError,
    ConnectionClosedError,
    DecodeError,
    LimitExceeded,
    LocalProtocolError,
    RemoteProtocolError,
    TimeoutError,
)
from lattica_nb.transport.yamux import PROTOCOL_ID, YamuxSettings
from lattica_nb.transport.yamux import events as ev
from lattica_nb.transport.yamux.frames import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_INTERNAL_ERROR,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    HEADER_BYTES,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    FrameReader,
    Header,
    decode_header,
    encode_header,
)
from lattica_nb.transport.yamux.session import YamuxSession

pytestmark = pytest.mark.timeout(60)

KIB = 1024
MIB = 1024 * KIB
INITIAL = 256 * KIB


def frames_in(data: bytes) -> list[tuple[Header, bytes]]:
    """Split bytes a session wrote into (header, payload) pairs."""
    reader = FrameReader(1 << 32)
    out: list[tuple[Header, bytes]] = []
    for item in reader.feed(data):
        if isinstance(item, Header):
            out.append((item, b""))
        else:
            header, payload = out[-1]
            out[-1] = (header, payload + bytes(item))
    assert not reader.in_frame
    return out


def data_frame(stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    return encode_header(TYPE_DATA, flags, stream_id, len(payload)) + payload


def window_update(stream_id: int, delta: int, flags: int = 0) -> bytes:
    return encode_header(TYPE_WINDOW_UPDATE, flags, stream_id, delta)


class Side:
    """One session and what it emitted so far."""

    def __init__(self, session: YamuxSession) -> None:
        self.session = session
        self.events: list[ev.YamuxEvent] = []
        self.received: dict[int, bytearray] = {}

    def drain(self, *, consume: bool) -> None:
        while (event := self.session.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, ev.StreamData):
                self.received.setdefault(event.stream_id, bytearray()).extend(event.data)
                if consume:
                    self.session.consumed(event.stream_id, len(event.data))

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


class Pair:
    """A dialer session ``a`` and a listener session ``b`` joined back to back."""

    def __init__(self, a: YamuxSettings | None = None, b: YamuxSettings | None = None) -> None:
        self.now = 0.0
        quiet = YamuxSettings(keepalive_s=None)
        self.a = Side(YamuxSession(is_initiator=True, settings=a or quiet, now=0.0))
        self.b = Side(YamuxSession(is_initiator=False, settings=b or quiet, now=0.0))
        self.consume = {id(self.a): True, id(self.b): True}

    def pump(self, *, max_rounds: int = 10_000) -> None:
        for _ in range(max_rounds):
            moved = False
            for src, dst in ((self.a, self.b), (self.b, self.a)):
                data = src.session.data_to_send()
                if data:
                    moved = True
                    dst.session.receive_data(data, self.now)
                src.drain(consume=self.consume[id(src)])
                dst.drain(consume=self.consume[id(dst)])
            if not moved:
                return
        raise AssertionError("sessions did not go quiet")

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for side in (self.a, self.b):
            side.session.handle_timer(self.now)
            side.drain(consume=True)

    def open_accepted(self) -> int:
        stream_id = self.a.session.open_stream()
        self.pump()
        self.b.session.acknowledge(stream_id)
        self.pump()
        return stream_id


def feed_raw(side: Side, data: bytes, now: float = 0.0) -> list[tuple[Header, bytes]]:
    """Deliver hand-made bytes to one session; return the frames it answered with."""
    side.session.receive_data(data, now)
    side.drain(consume=True)
    return frames_in(side.session.data_to_send())


def listener(**kwargs: object) -> Side:
    settings = YamuxSettings(keepalive_s=None, **kwargs)  # type: ignore[arg-type]
    return Side(YamuxSession(is_initiator=False, settings=settings, now=0.0))


def assert_protocol_error(side: Side, answered: list[tuple[Header, bytes]], words: str) -> None:
    assert side.session.is_terminated
    assert answered[-1][0] == Header(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR)
    terminated = side.of(ev.ConnectionTerminated)
    assert len(terminated) == 1
    assert isinstance(terminated[0].error, RemoteProtocolError)
    assert re.search(words, str(terminated[0].error))


# -- frames -------------------------------------------------------------------------------


def test_protocol_id():
    assert PROTOCOL_ID == "/yamux/1.0.0"


def test_header_round_trip_and_spec_layout():
    raw = encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_ACK, 0x01020304, 0x0A0B0C0D)
    assert raw == bytes([0, 1, 0, 3, 1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D])
    assert decode_header(raw) == Header(TYPE_WINDOW_UPDATE, 3, 0x01020304, 0x0A0B0C0D)


@pytest.mark.parametrize(
    ("args", "words"),
    [((4, 0, 1, 0), "type"), ((0, 0x10, 1, 0), "flags"), ((0, 0, 1 << 32, 0), "32 bits")],
)
def test_encoding_refuses_values_that_do_not_fit(args, words):
    with pytest.raises(LocalProtocolError, match=words):
        encode_header(*args)


def test_decoding_refuses_unknown_version_and_type():
    with pytest.raises(DecodeError, match="version 1"):
        decode_header(bytes([1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]))
    with pytest.raises(DecodeError, match="type 4"):
        decode_header(bytes([0, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]))
    with pytest.raises(DecodeError, match="12 bytes"):
        decode_header(b"\x00" * 11)


def test_reader_gives_the_same_frames_for_every_split():
    stream = (
        data_frame(1, b"hello", FLAG_SYN)
        + window_update(1, 7)
        + data_frame(3, bytes(range(200)) * 3)
        + data_frame(3, b"", FLAG_FIN)
        + encode_header(TYPE_PING, FLAG_SYN, 0, 42)
    )
    whole = frames_in(stream)
    assert [h.type for h, _ in whole] == [0, 1, 0, 0, 2]
    for cut in range(len(stream) + 1):
        reader = FrameReader(1 << 20)
        items = list(reader.feed(stream[:cut])) + list(reader.feed(stream[cut:]))
        rebuilt: list[tuple[Header, bytes]] = []
        for item in items:
            if isinstance(item, Header):
                rebuilt.append((item, b""))
            else:
                rebuilt[-1] = (rebuilt[-1][0], rebuilt[-1][1] + bytes(item))
        assert rebuilt == whole


def test_reader_refuses_a_data_frame_above_its_bound_at_the_header():
    reader = FrameReader(1000)
    with pytest.raises(DecodeError, match="1001 bytes"):
        list(reader.feed(encode_header(TYPE_DATA, 0, 1, 1001)))
    # a window update may carry any 32-bit delta
    assert list(FrameReader(1000).feed(window_update(1, 5000))) == [Header(1, 0, 1, 5000)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_reader_on_random_bytes_raises_only_decode_errors(data, cuts):
    reader = FrameReader(256)
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    try:
        for start, end in itertools.pairwise(points):
            for _ in reader.feed(data[start:end]):
                pass
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_session_on_random_bytes_only_ever_fails_with_a_remote_protocol_error(data):
    side = listener(receive_window_bytes=INITIAL, max_connection_receive_bytes=INITIAL)
    side.session.receive_data(data, 0.0)
    side.drain(consume=True)
    side.session.data_to_send()
    for event in side.of(ev.ConnectionTerminated):
        assert isinstance(event.error, RemoteProtocolError | LimitExceeded | ConnectionClosedError)
    assert side.session.open_stream_count <= YamuxSettings().max_streams


frame_strategy = st.tuples(
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=0, max_value=15),
    st.sampled_from([0, 1, 2, 3, 5, 7, 0xFFFF_FFFF]),
    st.one_of(st.integers(min_value=0, max_value=300), st.sampled_from([INITIAL, 0xFFFF_FFFF])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frame_strategy, max_size=40), st.integers(min_value=1, max_value=64))
def test_session_on_random_well_formed_frames_keeps_its_bounds(frames, read_size):
    window = INITIAL
    side = listener(
        receive_window_bytes=window,
        max_connection_receive_bytes=window,
        max_streams=4,
        max_ack_backlog=4,
        max_accept_backlog=4,
    )
    wire = b""
    for frame_type, flags, stream_id, length in frames:
        body = bytes(min(length, 300)) if frame_type == TYPE_DATA else b""
        wire += encode_header(frame_type, flags, stream_id, length) + body
    for start in range(0, len(wire), read_size):
        side.session.receive_data(wire[start : start + read_size], 0.0)
        side.drain(consume=False)
        assert side.session.open_stream_count <= 4
        for event in side.of(ev.StreamOpened):
            assert side.session.buffered(event.stream_id) <= window
    for event in side.of(ev.ConnectionTerminated):
        assert isinstance(event.error, RemoteProtocolError | ConnectionClosedError | type(None))


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"receive_window_bytes": 1000},
        {"max_frame_bytes": MIB + 1},
        {"max_streams": 0},
        {"max_ack_backlog": 600},
        {"keepalive_s": 0},
        {"max_connection_receive_bytes": 1 * MIB},
    ],
)
def test_settings_are_validated(kwargs):
    with pytest.raises(ConfigError):
        YamuxSettings(**kwargs)


# -- streams ----------------------------------------------------------------------------


def test_dialer_uses_odd_ids_and_listener_even_ones():
    pair = Pair()
    assert [pair.a.session.open_stream() for _ in range(3)] == [1, 3, 5]
    assert [pair.b.session.open_stream() for _ in range(2)] == [2, 4]
    pair.pump()
    assert [e.stream_id for e in pair.b.of(ev.StreamOpened)] == [1, 3, 5]
    assert [e.stream_id for e in pair.a.of(ev.StreamOpened)] == [2, 4]


def test_syn_and_ack_carry_the_larger_window():
    pair = Pair()
    stream_id = pair.a.session.open_stream()
    ((syn, _),) = frames_in(pair.a.session.data_to_send())
    window = YamuxSettings().receive_window_bytes
    assert syn == Header(TYPE_WINDOW_UPDATE, FLAG_SYN, stream_id, window - INITIAL)
    pair.b.session.receive_data(encode_header(*syn), 0.0)
    assert pair.b.session.send_window(stream_id) == window  # granted before any ACK
    assert pair.a.session.send_window(stream_id) == INITIAL  # until the peer accepts
    pair.b.session.acknowledge(stream_id)
    ((ack, _),) = frames_in(pair.b.session.data_to_send())
    assert ack == Header(TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id, window - INITIAL)
    pair.a.session.receive_data(encode_header(*ack), 0.0)
    assert pair.a.session.send_window(stream_id) == window
    assert pair.a.session.ack_backlog == 0


def test_data_both_ways_then_fin_both_ways_forgets_the_stream():
    pair = Pair()
    stream_id = pair.open_accepted()
    assert pair.a.session.send(stream_id, b"ping") == 4
    assert pair.b.session.send(stream_id, b"pong") == 4
    pair.a.session.end_stream(stream_id)
    pair.pump()
    assert pair.b.received[stream_id] == b"ping"
    assert pair.a.received[stream_id] == b"pong"
    assert [e.stream_id for e in pair.b.of(ev.StreamEnded)] == [stream_id]
    assert pair.b.session.open_stream_count == 1  # half closed
    with pytest.raises(LocalProtocolError, match="closed for sending"):
        pair.a.session.send(stream_id, b"more")
    pair.b.session.end_stream(stream_id)
    pair.pump()
    assert pair.a.session.open_stream_count == 0
    assert pair.b.session.open_stream_count == 0


def test_fin_on_a_data_frame_comes_after_its_payload():
    side = listener()
    side.session.receive_data(data_frame(1, b"abc", FLAG_SYN | FLAG_FIN), 0.0)
    side.drain(consume=False)
    kinds = [type(e) for e in side.events]
    assert kinds == [ev.StreamOpened, ev.StreamData, ev.StreamEnded]


def test_sender_stops_at_the_window_and_resumes_on_credit():
    settings = YamuxSettings(keepalive_s=None, receive_window_bytes=INITIAL)
    pair = Pair(settings, settings)
    pair.consume[id(pair.b)] = False
    stream_id = pair.open_accepted()
    payload = bytes(3 * INITIAL)
    sent = 0
    while (n := pair.a.session.send(stream_id, payload[sent:])) > 0:
        sent += n
        pair.pump()
    assert sent == INITIAL  # exactly one window
    assert pair.b.session.buffered(stream_id) == INITIAL
    # the application reads less than half: no credit yet
    pair.b.session.consumed(stream_id, INITIAL // 2 - 1)
    pair.pump()
    assert pair.a.session.send_window(stream_id) == 0
    pair.b.session.consumed(stream_id, 1)
    pair.pump()
    assert pair.a.session.send_window(stream_id) == INITIAL // 2


def test_receive_buffer_never_exceeds_the_window_and_updates_are_batched():
    settings = YamuxSettings(
        keepalive_s=None, receive_window_bytes=1 * MIB, max_frame_bytes=16 * KIB
    )
    pair = Pair(settings, settings)
    pair.consume[id(pair.b)] = False
    stream_id = pair.open_accepted()
    total = 8 * MIB
    payload = bytes(total)
    sent = 0
    updates = 0
    while len(pair.b.received.get(stream_id, b"")) < total:
        sent += pair.a.session.send(stream_id, payload[sent:])
        pair.a.session.receive_data(b"", 0.0)
        wire = pair.a.session.data_to_send()
        pair.b.session.receive_data(wire, 0.0)
        pair.b.drain(consume=False)
        assert pair.b.session.buffered(stream_id) <= 1 * MIB
        # the application reads everything that arrived
        pair.b.session.consumed(stream_id, pair.b.session.buffered(stream_id))
        back = pair.b.session.data_to_send()
        updates += sum(1 for h, _ in frames_in(back) if h.type == TYPE_WINDOW_UPDATE)
        pair.a.session.receive_data(back, 0.0)
        pair.a.drain(consume=True)
    assert sent == total
    assert updates <= total // (512 * KIB) + 1  # one update per half window, not per frame


def test_data_beyond_the_window_is_a_protocol_error():
    side = listener()
    side.session.receive_data(window_update(1, 0, FLAG_SYN), 0.0)
    answered = feed_raw(side, data_frame(1, bytes(INITIAL)) + data_frame(1, b"x"))
    assert_protocol_error(side, answered, "only 0 bytes of window left")


def test_a_data_frame_above_the_hard_maximum_is_refused_before_its_payload():
    side = listener(receive_window_bytes=INITIAL, max_connection_receive_bytes=INITIAL)
    answered = feed_raw(side, encode_header(TYPE_DATA, FLAG_SYN, 1, INITIAL + 1))
    assert_protocol_error(side, answered, "exceeds the largest window")
    assert not side.of(ev.StreamOpened)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (bytes([1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]), "version"),
        (bytes([0, 9, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]), "type"),
    ],
)
def test_unknown_version_or_type_closes_with_a_protocol_error(raw, words):
    side = listener()
    answered = feed_raw(side, raw)
    assert_protocol_error(side, answered, words)
    # nothing more is processed
    assert feed_raw(side, window_update(1, 0, FLAG_SYN)) == []
    assert not side.of(ev.StreamOpened)


def test_frames_for_unknown_streams_are_skipped_without_buffering():
    side = listener()
    answered = feed_raw(
        side,
        data_frame(7, bytes(1000))  # never opened
        + window_update(9, 100)
        + window_update(11, 0, FLAG_FIN)
        + window_update(13, 0, FLAG_RST)
        + data_frame(1, b"ok", FLAG_SYN),  # parsing resumes right after the skipped payload
    )
    assert answered == []
    assert not side.session.is_terminated
    assert [type(e) for e in side.events] == [ev.StreamOpened, ev.StreamData]
    assert side.received == {1: bytearray(b"ok")}


@pytest.mark.parametrize(
    ("stream_id", "words"),
    [(2, "odd"), (0, "odd")],
)
def test_a_syn_with_the_wrong_parity_is_a_protocol_error(stream_id, words):
    side = listener()
    answered = feed_raw(side, window_update(stream_id, 0, FLAG_SYN))
    assert_protocol_error(side, answered, words)


def test_a_syn_reusing_a_live_stream_id_is_a_protocol_error():
    side = listener()
    feed_raw(side, window_update(1, 0, FLAG_SYN))
    answered = feed_raw(side, data_frame(1, b"again", FLAG_SYN))
    assert_protocol_error(side, answered, "twice")


def test_a_closed_stream_id_may_be_opened_again():
    side = listener()
    feed_raw(side, window_update(1, 0, FLAG_SYN) + window_update(1, 0, FLAG_RST))
    feed_raw(side, window_update(1, 0, FLAG_SYN))
    assert [e.stream_id for e in side.of(ev.StreamOpened)] == [1, 1]
    assert not side.session.is_terminated


def test_a_peer_opening_streams_without_end_is_reset_and_memory_stays_bounded():
    side = listener()
    flood = b"".join(data_frame(2 * i + 1, b"x" * 10, FLAG_SYN) for i in range(2000))
    answered = feed_raw(side, flood)
    backlog = YamuxSettings().max_accept_backlog
    assert len(side.of(ev.StreamOpened)) == backlog
    assert side.session.open_stream_count == backlog
    resets = [h for h, _ in answered if h.flags & FLAG_RST]
    assert len(resets) == 2000 - backlog
    assert all(h.type == TYPE_WINDOW_UPDATE for h in resets)
    assert sum(len(v) for v in side.received.values()) == 10 * backlog
    # accepting them all lets more in, up to max_streams
    for event in side.of(ev.StreamOpened):
        side.session.acknowledge(event.stream_id)
    side.session.data_to_send()
    more = b"".join(window_update(5001 + 2 * i, 0, FLAG_SYN) for i in range(1000))
    answered = feed_raw(side, more)
    assert side.session.open_stream_count == YamuxSettings().max_streams
    assert sum(1 for h, _ in answered if h.flags & FLAG_RST) == 1000 - (512 - backlog)


def test_a_peer_making_us_queue_replies_without_reading_is_cut_off():
    side = listener(max_control_backlog_bytes=1200)
    pings = b"".join(encode_header(TYPE_PING, FLAG_SYN, 0, i) for i in range(200))
    side.session.receive_data(pings, 0.0)
    side.drain(consume=True)
    (terminated,) = side.of(ev.ConnectionTerminated)
    assert isinstance(terminated.error, LimitExceeded)
    answered = frames_in(side.session.data_to_send())
    assert len(answered) <= 1200 // HEADER_BYTES + 2
    assert answered[-1][0] == Header(TYPE_GO_AWAY, 0, 0, GO_AWAY_INTERNAL_ERROR)


def test_window_update_overflow_is_a_protocol_error():
    side = listener()
    answered = feed_raw(side, window_update(1, 0xFFFF_FFFF, FLAG_SYN))
    assert_protocol_error(side, answered, "overflows")


# -- FIN and RST in every state ---------------------------------------------------------------


def test_rst_of_an_unacknowledged_stream_refuses_it_and_frees_the_backlog():
    pair = Pair()
    stream_id = pair.a.session.open_stream()
    assert pair.a.session.ack_backlog == 1
    pair.a.session.receive_data(window_update(stream_id, 0, FLAG_RST), 0.0)
    pair.a.drain(consume=True)
    assert [e.stream_id for e in pair.a.of(ev.StreamReset)] == [stream_id]
    assert pair.a.session.ack_backlog == 0
    assert pair.a.session.open_stream_count == 0
    with pytest.raises(LocalProtocolError):
        pair.a.session.send(stream_id, b"late")


def test_rst_after_fin_resets_and_fin_after_rst_is_ignored():
    pair = Pair()
    stream_id = pair.open_accepted()
    pair.b.session.receive_data(data_frame(stream_id, b"", FLAG_FIN), 0.0)
    pair.b.session.receive_data(data_frame(stream_id, b"", FLAG_FIN), 0.0)  # twice: once
    pair.b.session.receive_data(window_update(stream_id, 0, FLAG_RST), 0.0)
    pair.b.session.receive_data(window_update(stream_id, 0, FLAG_FIN), 0.0)
    pair.b.drain(consume=True)
    kinds = [type(e) for e in pair.b.events if getattr(e, "stream_id", None) == stream_id]
    assert [k for k in kinds if k is not ev.StreamWritable] == [
        ev.StreamOpened,
        ev.StreamEnded,
        ev.StreamReset,
    ]
    assert pair.b.session.open_stream_count == 0
    assert not pair.b.session.is_terminated


def test_data_after_fin_is_dropped():
    side = listener()
    feed_raw(side, data_frame(1, b"a", FLAG_SYN | FLAG_FIN) + data_frame(1, b"late"))
    assert side.received == {1: bytearray(b"a")}
    assert not side.session.is_terminated


def test_local_reset_sends_rst_and_forgets_the_stream():
    pair = Pair()
    stream_id = pair.open_accepted()
    pair.a.session.reset_stream(stream_id)
    wire = pair.a.session.data_to_send()
    assert frames_in(wire) == [(Header(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0), b"")]
    pair.b.session.receive_data(wire, 0.0)
    pair.b.drain(consume=True)
    assert pair.b.of(ev.StreamReset)
    assert pair.a.session.open_stream_count == pair.b.session.open_stream_count == 0
    pair.a.session.reset_stream(stream_id)  # again: nothing
    assert pair.a.session.data_to_send() == b""


def test_close_stream_sends_fin_once_and_ignores_later_data():
    pair = Pair()
    stream_id = pair.open_accepted()
    pair.a.session.close_stream(stream_id)
    assert frames_in(pair.a.session.data_to_send()) == [
        (Header(TYPE_DATA, FLAG_FIN, stream_id, 0), b"")
    ]
    pair.a.session.receive_data(data_frame(stream_id, b"ignored"), 0.0)
    pair.a.drain(consume=True)
    assert not pair.a.of(ev.StreamData)
    assert pair.a.session.data_to_send() == b""


# -- ACK backlog ----------------------------------------------------------------------------


def test_open_stream_stops_at_the_ack_backlog():
    pair = Pair()
    ids = [pair.a.session.open_stream() for _ in range(256)]
    with pytest.raises(LimitExceeded, match="ACK"):
        pair.a.session.open_stream()
    pair.pump()
    assert len(pair.b.of(ev.StreamOpened)) == 256  # the listener buffers all of them
    pair.b.session.acknowledge(ids[0])
    pair.pump()
    assert pair.a.session.ack_backlog == 255
    pair.a.session.open_stream()


def test_the_connection_receive_budget_limits_large_windows():
    settings = YamuxSettings(
        keepalive_s=None, receive_window_bytes=4 * MIB, max_connection_receive_bytes=9 * MIB
    )
    pair = Pair(settings, settings)
    windows = []
    for _ in range(3):
        stream_id = pair.open_accepted()
        windows.append(pair.b.session.send_window(stream_id))
    # 4 MiB, 4 MiB, then what is left of 9 MiB (each stream counted at least at 256 KiB)
    assert windows == [4 * MIB, 4 * MIB, 9 * MIB - 8 * MIB]


# -- ping, GoAway, keepalive ------------------------------------------------------------------


def test_ping_is_echoed_with_ack():
    side = listener()
    answered = feed_raw(side, encode_header(TYPE_PING, FLAG_SYN, 0, 0xDEADBEEF))
    assert answered == [(Header(TYPE_PING, FLAG_ACK, 0, 0xDEADBEEF), b"")]


@pytest.mark.parametrize(
    ("code", "clean"), [(GO_AWAY_NORMAL, True), (GO_AWAY_PROTOCOL_ERROR, False), (2, False)]
)
def test_go_away_ends_the_session(code, clean):
    side = listener()
    feed_raw(side, window_update(1, 0, FLAG_SYN))
    answered = feed_raw(
        side, encode_header(TYPE_GO_AWAY, 0, 0, code) + window_update(3, 0, FLAG_SYN)
    )
    assert answered == []  # no GoAway back, and nothing after it is processed
    (terminated,) = side.of(ev.ConnectionTerminated)
    if clean:
        assert terminated.error is None
    else:
        assert isinstance(terminated.error, ConnectionClosedError)
        assert "GoAway" in str(terminated.error)
    assert len(side.of(ev.StreamOpened)) == 1
    assert side.session.open_stream_count == 0
    with pytest.raises(ConnectionClosedError):
        side.session.open_stream()


def test_local_close_sends_go_away_normal():
    pair = Pair()
    pair.open_accepted()
    pair.a.session.close()
    pair.a.drain(consume=True)
    assert frames_in(pair.a.session.data_to_send()) == [
        (Header(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL), b"")
    ]
    assert pair.a.of(ev.ConnectionTerminated) == [ev.ConnectionTerminated(None)]


def test_keepalive_pings_and_measures_rtt():
    settings = YamuxSettings(keepalive_s=10.0, keepalive_timeout_s=5.0)
    pair = Pair(settings, settings)
    assert pair.a.session.get_timer() == 10.0
    pair.advance(10.0)
    pair.now += 0.25  # the pong arrives a quarter second later
    pair.pump()
    assert pair.a.of(ev.PingAnswered) == [ev.PingAnswered(0.25)]
    assert pair.a.session.rtt_s == 0.25
    assert pair.a.session.get_timer() == pytest.approx(20.25)
    assert not pair.a.session.is_terminated


def test_a_half_open_peer_is_detected_by_an_unanswered_ping():
    settings = YamuxSettings(keepalive_s=10.0, keepalive_timeout_s=5.0)
    pair = Pair(settings, settings)
    pair.advance(10.0)  # ping queued, never delivered: the peer went silent
    assert pair.a.session.get_timer() == 15.0
    pair.advance(4.9)
    assert not pair.a.session.is_terminated
    pair.advance(0.1)
    (terminated,) = pair.a.of(ev.ConnectionTerminated)
    assert isinstance(terminated.error, TimeoutError)
    assert "keepalive" in str(terminated.error)


def test_bytes_from_a_busy_peer_keep_the_connection_alive_while_the_pong_is_queued():
    settings = YamuxSettings(keepalive_s=10.0, keepalive_timeout_s=5.0)
    side = Side(YamuxSession(is_initiator=False, settings=settings, now=0.0))
    side.session.handle_timer(10.0)
    side.session.receive_data(window_update(1, 0, FLAG_SYN), 14.0)
    side.session.handle_timer(15.0)
    assert not side.session.is_terminated
    assert side.session.get_timer() == 19.0
    side.session.handle_timer(19.0)
    assert side.session.is_terminated


def test_connection_lost_fails_everything():
    pair = Pair()
    pair.open_accepted()
    error = ConnectionClosedError("socket gone")
    pair.a.session.connection_lost(error)
    pair.a.drain(consume=True)
    assert pair.a.of(ev.ConnectionTerminated) == [ev.ConnectionTerminated(error)]
    assert pair.a.session.data_to_send() == b""
    with pytest.raises(ConnectionClosedError, match="socket gone"):
        pair.a.session.open_stream()


def test_send_stops_when_the_output_buffer_is_full():
    settings = YamuxSettings(keepalive_s=None, send_buffer_bytes=64 * KIB, max_frame_bytes=16 * KIB)
    pair = Pair(settings, settings)
    stream_id = pair.open_accepted()
    taken = pair.a.session.send(stream_id, bytes(MIB))
    assert 64 * KIB <= taken < 64 * KIB + 16 * KIB + HEADER_BYTES
    assert pair.a.session.output_full
    assert pair.a.session.send(stream_id, b"more") == 0
    pair.a.session.data_to_send()
    assert not pair.a.session.output_full


def test_mutable_buffers_are_copied_and_bytes_are_not():
    pair = Pair()
    stream_id = pair.open_accepted()
    buffer = bytearray(b"before")
    pair.a.session.send(stream_id, buffer)
    buffer[:] = b"after!"
    pair.pump()
    assert pair.b.received[stream_id] == b"before"
