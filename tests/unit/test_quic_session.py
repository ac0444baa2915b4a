"""The libp2p QUIC session, pumped by hand: no sockets, no sleeps, time passed in."""

from __future__ import annotations

import datetime

import pytest

from lattica_nb.errors import HandshakeError, PeerIdMismatch
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.testing.quic import make_pair
from lattica_nb.transport.quic import events as ev
from lattica_nb.transport.quic.session import QuicSettings


def _of(kind: type, events: list[ev.QuicSessionEvent]) -> list:
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture
def keys() -> tuple[PrivateKey, PrivateKey]:
    return PrivateKey.generate(), PrivateKey.generate()


def test_mutual_authentication_yields_both_peer_ids(keys):
    client_key, server_key = keys
    server_id = PeerId.from_public_key(server_key.public_key)
    pair = make_pair(client_key, server_key, expected_peer=server_id)
    pair.pump()
    assert _of(ev.HandshakeDone, pair.client_events) == [ev.HandshakeDone(server_id)]
    assert _of(ev.HandshakeDone, pair.server_events) == [
        ev.HandshakeDone(PeerId.from_public_key(client_key.public_key))
    ]
    assert pair.client.remote_peer == server_id


def test_dialing_the_wrong_peer_id_fails_the_handshake(keys):
    client_key, server_key = keys
    someone_else = PeerId.from_public_key(PrivateKey.generate().public_key)
    pair = make_pair(client_key, server_key, expected_peer=someone_else)
    pair.pump()
    assert not _of(ev.HandshakeDone, pair.client_events)
    closed = _of(ev.ConnectionClosed, pair.client_events)
    assert len(closed) == 1
    assert isinstance(closed[0].error, PeerIdMismatch)
    assert str(someone_else) in str(closed[0].error)
    # the server learns too: the client's alert closes the connection
    assert _of(ev.ConnectionClosed, pair.server_events)
    assert not _of(ev.HandshakeDone, pair.server_events)


def test_expired_certificate_is_rejected_with_a_clear_error(keys):
    client_key, server_key = keys
    far_future = datetime.datetime(2300, 1, 1, tzinfo=datetime.UTC)
    pair = make_pair(client_key, server_key, client_wall_time=far_future)
    pair.pump()
    closed = _of(ev.ConnectionClosed, pair.client_events)
    assert closed and isinstance(closed[0].error, HandshakeError)
    assert "expire" in str(closed[0].error).lower()


def test_stream_data_flows_both_ways_with_end_of_stream(keys):
    pair = make_pair(*keys)
    pair.pump()
    sid = pair.client.open_stream()
    pair.client.send(sid, b"hello", end=True)
    pair.pump()
    data = _of(ev.StreamDataReceived, pair.server_events)
    assert b"".join(e.data for e in data) == b"hello" and data[-1].end
    pair.server.send(sid, b"world", end=True)
    pair.pump()
    back = _of(ev.StreamDataReceived, pair.client_events)
    assert b"".join(e.data for e in back) == b"world" and back[-1].end


def test_receive_credit_follows_what_the_application_consumed(keys):
    window = 64 * 1024
    settings = QuicSettings(stream_window_bytes=window, connection_window_bytes=1024 * 1024)
    pair = make_pair(*keys, settings=settings)
    pair.pump()
    sid = pair.client.open_stream()
    pair.client.send(sid, b"x" * (4 * window))
    for _ in range(20):
        pair.pump()
        pair.advance(0.05)
    received = sum(len(e.data) for e in _of(ev.StreamDataReceived, pair.server_events))
    assert received == window  # the receiver read nothing, so no more credit was granted
    pair.server.consumed(sid, received)
    for _ in range(20):
        pair.pump()
        pair.advance(0.05)
    received = sum(len(e.data) for e in _of(ev.StreamDataReceived, pair.server_events))
    assert received == 2 * window


def test_send_buffered_counts_unacknowledged_bytes(keys):
    pair = make_pair(*keys)
    pair.pump()
    sid = pair.client.open_stream()
    pair.client.send(sid, b"y" * 10_000)
    assert pair.client.send_buffered(sid) == 10_000
    pair.pump()
    pair.advance(0.05)
    pair.pump()
    assert pair.client.send_buffered(sid) == 0


def test_handshake_times_out_when_nobody_answers(keys):
    client_key, _ = keys
    pair = make_pair(client_key, PrivateKey.generate())
    pair.client.datagrams_to_send(pair.now)  # the Initial is lost
    for _ in range(100):
        pair.now += 0.25
        timer = pair.client.get_timer()
        if timer is not None and timer <= pair.now:
            pair.client.handle_timer(pair.now)
        pair.client.datagrams_to_send(pair.now)
        while (event := pair.client.next_event()) is not None:
            pair.client_events.append(event)
        if _of(ev.ConnectionClosed, pair.client_events):
            break
    closed = _of(ev.ConnectionClosed, pair.client_events)
    assert closed and isinstance(closed[0].error, HandshakeError)
    assert "timed out" in str(closed[0].error)
    assert pair.now <= QuicSettings().handshake_timeout_s + 0.5


def test_a_timed_out_handshake_runs_down_instead_of_spinning(keys):
    """Regression: the handshake deadline stayed the timer after it fired, so the
    endpoint's timer loop woke at once, forever (a node with an unreachable
    QUIC bootstrap address burned a CPU core)."""
    client_key, _ = keys
    pair = make_pair(client_key, PrivateKey.generate())
    pair.client.datagrams_to_send(pair.now)  # nobody will answer
    for _ in range(1000):
        timer = pair.client.get_timer()
        if timer is None or pair.client.is_terminated:
            break
        pair.now = max(pair.now, timer)
        pair.client.handle_timer(pair.now)
        pair.client.datagrams_to_send(pair.now)
        after = pair.client.get_timer()
        assert after is None or after > pair.now, "the timer must move past a fired deadline"
    assert pair.client.is_terminated
    assert pair.now <= QuicSettings().handshake_timeout_s + 10


def test_keep_alive_pings_keep_an_idle_connection_open(keys):
    pair = make_pair(*keys)
    pair.pump()
    for _ in range(40):  # 40 s of silence, 10 s idle timeout, 5 s keep-alive
        pair.advance(1.0)
        pair.pump()
    assert not _of(ev.ConnectionClosed, pair.client_events)
    assert not _of(ev.ConnectionClosed, pair.server_events)


def test_settings_are_validated():
    from lattica_nb.errors import ConfigError

    with pytest.raises(ConfigError, match="max_datagram_bytes"):
        QuicSettings(max_datagram_bytes=500)
    with pytest.raises(ConfigError, match="keep_alive_s"):
        QuicSettings(keep_alive_s=20.0, idle_timeout_s=10.0)
