"""Regression tests for every aioquic internal that compat.py relies on.

If an aioquic upgrade renames or changes one of these, a test here fails and
names the piece to revisit in lattica_nb/transport/quic/compat.py.
"""

from __future__ import annotations

import datetime

from aioquic import tls
from aioquic.quic import stream as quic_stream
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lattica_nb.errors import HandshakeError
from lattica_nb.identity import PrivateKey
from lattica_nb.testing.quic import SERVER_ADDR, WALL_TIME, make_pair
from lattica_nb.transport.quic import events as ev
from lattica_nb.transport.quic.session import ALPN
from lattica_nb.transport.tls import CertifiedKey


def test_aioquic_internals_we_use_still_exist():
    context = tls.Context(is_client=False)
    assert context._request_client_certificate is False
    assert callable(context._set_peer_certificate)
    assert callable(context._server_handle_certificate)
    for name in ("_write_stream_limits", "_on_max_stream_data_delivery", "_initialize",
                 "_unblock_streams"):
        assert callable(getattr(QuicConnection, name)), name
    conn = QuicConnection(configuration=QuicConfiguration(is_client=True))
    assert conn._local_max_streams_bidi.value > 0
    assert conn._close_event is None
    assert hasattr(conn, "_state") and hasattr(conn, "_remote_max_data_used")
    assert conn._streams_blocked_bidi == []
    sender = quic_stream.QuicStreamSender(stream_id=0, writable=True)
    assert sender._buffer_start == sender._buffer_stop == 0


def _close_error(events):
    closed = [e for e in events if isinstance(e, ev.ConnectionClosed)]
    assert closed, "expected the connection to close"
    return closed[0].error


def test_server_refuses_a_client_without_certificate():
    server_key = PrivateKey.generate()
    pair = make_pair(PrivateKey.generate(), server_key)
    # replace the client with a bare aioquic client that offers no certificate
    bare = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=0)
    )
    bare.connect(SERVER_ADDR, now=0.0)

    class Bare:
        def datagrams_to_send(self, now):
            return bare.datagrams_to_send(now=now)

        def receive_datagram(self, data, addr, now):
            bare.receive_datagram(data, addr, now=now)

        def next_event(self):
            return None

    pair.client = Bare()  # type: ignore[assignment]
    pair.pump()
    error = _close_error(pair.server_events)
    assert isinstance(error, HandshakeError)
    assert "no certificate" in str(error)
    assert not [e for e in pair.server_events if isinstance(e, ev.HandshakeDone)]


def test_certificate_without_libp2p_extension_is_refused():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(WALL_TIME - datetime.timedelta(days=1))
        .not_valid_after(WALL_TIME + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pair = make_pair(
        PrivateKey.generate(),
        PrivateKey.generate(),
        client_key=CertifiedKey(certificate=cert, private_key=key),
    )
    pair.pump()
    error = _close_error(pair.server_events)
    assert isinstance(error, HandshakeError)
    assert "extension" in str(error)


def test_fin_only_frames_arrive_on_many_streams_at_once():
    pair = make_pair(PrivateKey.generate(), PrivateKey.generate())
    pair.pump()
    streams = [pair.client.open_stream() for _ in range(100)]
    for sid in streams:
        pair.client.send(sid, b"z" * 1300)  # nearly a full packet each
    for sid in streams:
        pair.client.send(sid, b"", end=True)  # then a FIN-only frame each
    for _ in range(50):
        pair.pump()
        pair.advance(0.05)
    ended = {
        e.stream_id
        for e in pair.server_events
        if isinstance(e, ev.StreamDataReceived) and e.end
    }
    assert ended == set(streams)


def _burst(pacer, now: float = 10.0) -> int:
    """Datagrams the pacer lets out back to back at one instant."""
    pacer.update_bucket(now=now)
    pacer.bucket_time = pacer.bucket_max
    sent = 0
    while pacer.next_send_time(now) is None and sent < 1000:
        pacer.update_after_send(now)
        sent += 1
    return sent


def test_pacer_keeps_a_burst_allowance_when_the_window_is_huge():
    from lattica_nb.transport.quic.compat import PACER_BURST_PACKETS, Libp2pQuicConnection

    def pacer(burst: int):
        conn = Libp2pQuicConnection(
            configuration=QuicConfiguration(is_client=True), verify_peer=lambda der: None,
            stream_window=1 << 20, max_incoming_streams=16, pacer_burst_packets=burst,
        )
        pacer = conn._loss._pacer  # the hook: aioquic still keeps its pacer here
        pacer.update_rate(congestion_window=64 << 20, smoothed_rtt=0.001)  # after slow start
        return pacer

    assert _burst(pacer(PACER_BURST_PACKETS)) >= PACER_BURST_PACKETS
    # Why the hook exists: aioquic's own pacer sends one datagram per wakeup here.
    # If this starts to fail, aioquic fixed it and compat item 7 can go.
    assert _burst(pacer(0)) <= 1
