"""multistream-select sans-IO cores: pumped against each other, no I/O."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.errors import (
    DecodeError,
    LatticaError,
    LocalProtocolError,
    ProtocolNegotiationError,
)
from lattica_nb.transport.multistream import (
    HEADER,
    MAX_MESSAGE_BYTES,
    MAX_PROPOSALS,
    DialerNegotiation,
    ListenerNegotiation,
    MessageReader,
    encode_ls_response,
    encode_message,
)
from lattica_nb.wire.varint import encode_uvarint

NOISE = "/noise"
YAMUX = "/yamux/1.0.0"
TLS = "/tls/1.0.0"


def listener_for(protocols: Sequence[str]) -> ListenerNegotiation:
    return ListenerNegotiation(lambda p: p in protocols, lambda: tuple(protocols))


def drive(listener: ListenerNegotiation, data: bytes) -> bytes:
    """What the driver does: take the responses, then raise a deferred error."""
    out = listener.receive(data)
    if listener.error is not None:
        raise listener.error
    return out


def read_all(data: bytes) -> list[str]:
    reader = MessageReader()
    reader.feed(data)
    out = []
    while (message := reader.next_message()) is not None:
        out.append(message)
    assert reader.take_remaining() == b""
    return out


def pump(dialer: DialerNegotiation, listener: ListenerNegotiation, first: bytes) -> int:
    """Shuttle bytes until neither side has anything to send; return round trips."""
    to_listener = first
    rounds = 0
    while to_listener:
        rounds += 1
        to_dialer = listener.receive(to_listener)
        to_listener = dialer.receive(to_dialer) if to_dialer else b""
    return rounds


# -- messages --------------------------------------------------------------------------------


def test_na_matches_spec_bytes() -> None:
    assert encode_message("na") == bytes.fromhex("036e610a")


def test_encode_rejects_newline_and_oversize() -> None:
    with pytest.raises(LocalProtocolError):
        encode_message("/a\nb")
    with pytest.raises(LocalProtocolError, match="1024"):
        encode_message("/" + "x" * MAX_MESSAGE_BYTES)
    assert len(encode_message("/" + "x" * (MAX_MESSAGE_BYTES - 2))) == MAX_MESSAGE_BYTES + 2


def test_reader_handles_byte_at_a_time_and_keeps_leftover() -> None:
    data = encode_message(HEADER) + encode_message(NOISE) + b"app"
    reader = MessageReader()
    got = []
    for i in range(len(data) - 3):
        reader.feed(data[i : i + 1])
        if (message := reader.next_message()) is not None:
            got.append(message)
    reader.feed(b"app")
    assert got == [HEADER, NOISE]
    assert reader.take_remaining() == b"app"


def test_reader_oversize_line_names_the_size() -> None:
    reader = MessageReader()
    reader.feed(encode_uvarint(5000))
    with pytest.raises(DecodeError, match="5000 bytes exceeds"):
        reader.next_message()


@pytest.mark.parametrize(
    "raw",
    [b"\x00", b"\x03abc", b"\x04a\nb\n", b"\x03\xff\xfe\n"],
    ids=["empty", "no-newline", "inner-newline", "bad-utf8"],
)
def test_reader_rejects_malformed(raw: bytes) -> None:
    reader = MessageReader()
    reader.feed(raw)
    with pytest.raises(DecodeError):
        reader.next_message()


def test_ls_response_is_one_message_of_messages() -> None:
    raw = encode_ls_response([NOISE, YAMUX])
    (outer,) = read_all_raw(raw)
    assert outer == encode_message(NOISE) + encode_message(YAMUX) + b"\n"


def read_all_raw(data: bytes) -> list[bytes]:
    """Split length-prefixed frames without interpreting them as text."""
    from lattica_nb.wire.varint import decode_uvarint

    out = []
    pos = 0
    while pos < len(data):
        length, pos = decode_uvarint(data, pos)
        out.append(data[pos : pos + length])
        pos += length
    return out


# -- dialer against listener -----------------------------------------------------------------


def test_pipelined_header_and_first_proposal() -> None:
    dialer = DialerNegotiation([NOISE])
    first = dialer.start()
    assert read_all(first) == [HEADER, NOISE]
    listener = listener_for([NOISE])
    answer = listener.receive(first)
    assert read_all(answer) == [HEADER, NOISE]
    assert listener.selected == NOISE
    assert dialer.receive(answer) == b""
    assert (dialer.selected, dialer.confirmed) == (NOISE, True)


def test_na_then_fallback() -> None:
    dialer = DialerNegotiation([TLS, NOISE])
    listener = listener_for([NOISE])
    rounds = pump(dialer, listener, dialer.start())
    assert rounds == 2
    assert dialer.selected == listener.selected == NOISE
    assert listener.proposed == (TLS, NOISE)


def test_all_refused_raises_with_proposals() -> None:
    dialer = DialerNegotiation([TLS, NOISE])
    listener = listener_for([YAMUX])
    with pytest.raises(ProtocolNegotiationError) as info:
        pump(dialer, listener, dialer.start())
    assert info.value.proposed == (TLS, NOISE)
    assert dialer.selected is None


def test_leftover_on_both_sides() -> None:
    dialer = DialerNegotiation([NOISE])
    listener = listener_for([NOISE])
    answer = listener.receive(dialer.start() + b"dialer-data")
    assert listener.leftover == b"dialer-data"
    dialer.receive(answer + b"listener-data")
    assert dialer.leftover == b"listener-data"


def test_split_answers_fed_byte_by_byte() -> None:
    dialer = DialerNegotiation([TLS, NOISE])
    listener = listener_for([NOISE])
    to_listener, to_dialer = dialer.start(), b""
    while to_listener or to_dialer:
        if to_listener:
            to_dialer += listener.receive(to_listener[:1])
            to_listener = to_listener[1:]
        if to_dialer:
            to_listener += dialer.receive(to_dialer[:1])
            to_dialer = to_dialer[1:]
    assert dialer.selected == listener.selected == NOISE and dialer.confirmed


def test_ls_is_answered_with_the_list() -> None:
    listener = listener_for([NOISE, YAMUX])
    out = listener.receive(encode_message(HEADER) + encode_message("ls"))
    header, listing = read_all_raw(out)
    assert header == HEADER.encode() + b"\n"
    assert listing == encode_message(NOISE) + encode_message(YAMUX) + b"\n"
    assert listener.selected is None
    listener.receive(encode_message(YAMUX))
    assert listener.selected == YAMUX


def test_lazy_settles_immediately_and_confirms_later() -> None:
    dialer = DialerNegotiation([NOISE], lazy=True)
    first = dialer.start()
    assert dialer.selected == NOISE and not dialer.confirmed
    answer = listener_for([NOISE]).receive(first + b"early")
    dialer.receive(answer + b"reply")
    assert dialer.confirmed and dialer.leftover == b"reply"


def test_lazy_refused_raises() -> None:
    dialer = DialerNegotiation([NOISE], lazy=True)
    listener = listener_for([YAMUX])
    answer = listener.receive(dialer.start())
    with pytest.raises(ProtocolNegotiationError):
        dialer.receive(answer)


def test_lazy_settles_only_on_last_proposal() -> None:
    dialer = DialerNegotiation([TLS, NOISE], lazy=True)
    first = dialer.start()
    assert dialer.selected is None
    listener = listener_for([NOISE])
    second = dialer.receive(listener.receive(first))
    assert read_all(second) == [NOISE]
    assert dialer.selected == NOISE and not dialer.confirmed


def test_listener_after_na_garbage_is_negotiation_failure() -> None:
    """A lazy dialer's data after a refused proposal reads as garbage."""
    listener = listener_for([YAMUX])
    out = listener.receive(encode_message(HEADER) + encode_message(NOISE) + b"\x10garbage-data!!!!")
    # The responses made before the failure are still handed out: the dialer needs the na.
    assert read_all(out) == [HEADER, "na"]
    assert isinstance(listener.error, ProtocolNegotiationError)
    with pytest.raises(ProtocolNegotiationError):
        listener.receive(b"")


def test_listener_error_without_responses_raises_at_once() -> None:
    listener = listener_for([YAMUX])
    listener.receive(encode_message(HEADER))
    with pytest.raises(DecodeError):
        listener.receive(b"\x03abc")
    assert listener.error is None


# -- misbehaving peers -----------------------------------------------------------------------


def test_listener_rejects_wrong_header() -> None:
    listener = listener_for([NOISE])
    with pytest.raises(ProtocolNegotiationError, match="multistream header"):
        drive(listener, encode_message("/multistream/0.9") + encode_message(NOISE))


def test_dialer_rejects_wrong_header() -> None:
    dialer = DialerNegotiation([NOISE])
    dialer.start()
    with pytest.raises(ProtocolNegotiationError, match="multistream header"):
        dialer.receive(encode_message(NOISE))


def test_dialer_rejects_answer_for_another_protocol() -> None:
    dialer = DialerNegotiation([NOISE])
    dialer.start()
    with pytest.raises(ProtocolNegotiationError, match="expected the same id"):
        dialer.receive(encode_message(HEADER) + encode_message(YAMUX))


def test_dialer_rejects_garbage() -> None:
    dialer = DialerNegotiation([NOISE])
    dialer.start()
    with pytest.raises(DecodeError):
        dialer.receive(b"\x05hello")


def test_too_many_proposals() -> None:
    listener = listener_for([])
    data = encode_message(HEADER) + b"".join(
        encode_message(f"/p/{i}") for i in range(MAX_PROPOSALS + 1)
    )
    with pytest.raises(ProtocolNegotiationError, match=f"more than {MAX_PROPOSALS}"):
        drive(listener, data)


def test_ls_counts_toward_the_proposal_bound() -> None:
    listener = listener_for([NOISE])
    listener.receive(encode_message(HEADER))
    with pytest.raises(ProtocolNegotiationError):
        drive(listener, encode_message("ls") * (MAX_PROPOSALS + 1))


def test_listener_refuses_ids_without_slash_and_control_words() -> None:
    listener = ListenerNegotiation(lambda p: True, lambda: ())
    out = listener.receive(encode_message(HEADER) + encode_message("noise"))
    assert read_all(out) == [HEADER, "na"]
    with pytest.raises(ProtocolNegotiationError):
        listener.receive(encode_message("na"))


def test_local_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        DialerNegotiation([])
    with pytest.raises(LocalProtocolError):
        DialerNegotiation(["noise"])
    dialer = DialerNegotiation([NOISE])
    with pytest.raises(LocalProtocolError):
        dialer.receive(b"")
    dialer.start()
    with pytest.raises(LocalProtocolError):
        dialer.start()


# -- properties ------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_reader_only_raises_lattica_errors(chunks: list[bytes]) -> None:
    reader = MessageReader()
    try:
        for chunk in chunks:
            reader.feed(chunk)
            while reader.next_message() is not None:
                pass
    except LatticaError:
        pass


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_listener_only_raises_lattica_errors(chunks: list[bytes], with_header: bool) -> None:
    listener = listener_for([NOISE, YAMUX])
    if with_header:
        chunks = [encode_message(HEADER), *chunks]
    try:
        for chunk in chunks:
            drive(listener, chunk)
            if listener.selected is not None:
                break
    except LatticaError:
        pass


@given(
    st.lists(st.sampled_from([TLS, NOISE, YAMUX, "/x/1"]), min_size=1, max_size=5, unique=True),
    st.lists(st.sampled_from([TLS, NOISE, YAMUX]), max_size=3),
    st.booleans(),
)
def test_negotiation_picks_first_common_protocol(
    ours: list[str], theirs: list[str], lazy: bool
) -> None:
    dialer = DialerNegotiation(ours, lazy=lazy)
    listener = listener_for(theirs)
    common = [p for p in ours if p in theirs]
    try:
        pump(dialer, listener, dialer.start())
    except ProtocolNegotiationError:
        assert not common
        return
    assert common and listener.selected == dialer.selected == common[0]
    assert dialer.confirmed
