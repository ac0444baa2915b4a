"""Sans-IO libp2p QUIC session: aioquic's state machine plus libp2p's rules.

A :class:`QuicSession` takes datagrams and the time as arguments and returns
datagrams to send and events (:mod:`.events`). It never reads a clock, opens
a socket or sleeps. The driver (:mod:`.endpoint`) moves the bytes.

libp2p over QUIC (libp2p/specs quic/README.md): QUIC v1, ALPN ``libp2p``, no
SNI, a self-signed certificate carrying the libp2p public key extension on
both sides, one protocol per bidirectional stream.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration

from ...errors import ConfigError, HandshakeError, LatticaError, PeerIdMismatch, TransportError
from ...identity import PeerId
from ..tls import CertifiedKey, verify_certificate_der
from . import events as ev
from .compat import Libp2pQuicConnection

ALPN = "libp2p"
QUIC_V1 = 0x00000001

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class QuicSettings:
    """Tunables of the QUIC transport. Defaults suit rust-libp2p peers.

    ``max_datagram_bytes`` is the UDP payload size; 1452 fits a 1500-byte
    Ethernet MTU with IPv6 headers. ``stream_window_bytes`` and
    ``connection_window_bytes`` are receive credits (see compat.py: credit
    follows what the application consumed). rust-libp2p's QUIC closes a
    connection idle for 10 s and keeps it alive every 5 s; we do the same.
    """

    max_datagram_bytes: int = 1452
    stream_window_bytes: int = 4 * 1024 * 1024
    connection_window_bytes: int = 16 * 1024 * 1024
    max_incoming_streams: int = 256
    handshake_timeout_s: float = 5.0
    idle_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    congestion_control: str = "reno"
    socket_buffer_bytes: int = 4 * 1024 * 1024
    """SO_RCVBUF/SO_SNDBUF of the UDP socket; 4 MiB removed loopback drops here."""
    receive_batch: int = 256
    """Datagrams drained from the socket per wakeup before connections respond."""
    pacer_burst_packets: int = 16
    """Datagrams the pacer lets out back to back; 0 keeps aioquic's pacer (compat.py item 7)."""

    def __post_init__(self) -> None:
        if not 1200 <= self.max_datagram_bytes <= 65527:
            raise ConfigError("max_datagram_bytes must be in 1200..65527 (QUIC minimum is 1200)")
        if self.stream_window_bytes < 16 * 1024:
            raise ConfigError("stream_window_bytes must be at least 16 KiB")
        if self.connection_window_bytes < self.stream_window_bytes:
            raise ConfigError("connection_window_bytes must be >= stream_window_bytes")
        if not 1 <= self.max_incoming_streams <= 65536:
            raise ConfigError("max_incoming_streams must be in 1..65536")
        if not 0 < self.keep_alive_s < self.idle_timeout_s:
            raise ConfigError("keep_alive_s must be positive and below idle_timeout_s")
        if self.handshake_timeout_s <= 0:
            raise ConfigError("handshake_timeout_s must be positive")
        if self.socket_buffer_bytes < 64 * 1024:
            raise ConfigError("socket_buffer_bytes must be at least 64 KiB")
        if not 1 <= self.receive_batch <= 4096:
            raise ConfigError("receive_batch must be in 1..4096")
        if not 0 <= self.pacer_burst_packets <= 1024:
            raise ConfigError("pacer_burst_packets must be in 0..1024")
        if self.congestion_control not in ("reno", "cubic"):
            raise ConfigError("congestion_control must be 'reno' or 'cubic'")


class QuicSession:
    """One libp2p QUIC connection as a pure state machine."""

    def __init__(
        self,
        *,
        settings: QuicSettings,
        certified_key: CertifiedKey,
        is_client: bool,
        wall_time: datetime.datetime,
        expected_peer: PeerId | None = None,
        original_destination_connection_id: bytes | None = None,
    ) -> None:
        configuration = QuicConfiguration(
            alpn_protocols=[ALPN],
            is_client=is_client,
            idle_timeout=settings.idle_timeout_s,
            max_datagram_size=settings.max_datagram_bytes,
            max_data=settings.connection_window_bytes,
            max_stream_data=settings.stream_window_bytes,
            supported_versions=[QUIC_V1],
            congestion_control_algorithm=settings.congestion_control,
            verify_mode=0,  # ssl.CERT_NONE: the libp2p extension is verified in compat.py
        )
        configuration.certificate = certified_key.certificate
        configuration.private_key = certified_key.private_key
        self._settings = settings
        self._expected_peer = expected_peer
        self._wall_time = wall_time
        self._handshake_deadline: float | None = None
        self._last_activity = 0.0
        self._closed_event_sent = False
        self.is_client = is_client
        self.remote_peer: PeerId | None = None
        self._conn = Libp2pQuicConnection(
            configuration=configuration,
            verify_peer=self._verify,
            stream_window=settings.stream_window_bytes,
            max_incoming_streams=settings.max_incoming_streams,
            pacer_burst_packets=settings.pacer_burst_packets,
            original_destination_connection_id=original_destination_connection_id,
        )
        self._established = False
        self._next_stream_id = 0 if is_client else 1

    # -- identity checks -----------------------------------------------------
    def _verify(self, der: bytes) -> PeerId:
        peer = verify_certificate_der(der, now=self._wall_time)
        if self._expected_peer is not None and peer != self._expected_peer:
            raise PeerIdMismatch(
                f"dialed {self._expected_peer} but the remote authenticated as {peer}"
            )
        return peer

    # -- input -----------------------------------------------------------------
    def connect(self, addr: Address, now: float) -> None:
        self._handshake_deadline = now + self._settings.handshake_timeout_s
        self._last_activity = now
        self._conn.connect(addr, now=now)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if self._handshake_deadline is None:
            self._handshake_deadline = now + self._settings.handshake_timeout_s
        self._last_activity = now
        self._conn.receive_datagram(data, addr, now=now)

    def handle_timer(self, now: float) -> None:
        if not self._established and self._handshake_deadline is not None:
            if now >= self._handshake_deadline:
                # Once: from here on aioquic's own closing/draining timers run the connection
                # down (a deadline left in the past would be a timer that never moves).
                self._handshake_deadline = None
                self.close(reason="handshake timed out")
                return
        if self._established and now - self._last_activity >= self._settings.keep_alive_s:
            self._last_activity = now
            self._conn.send_ping(0)
        self._conn.handle_timer(now)

    # -- streams -----------------------------------------------------------------
    def open_stream(self) -> int:
        """Reserve the next locally initiated bidirectional stream id.

        aioquic only creates a stream when data is first written, and until
        then hands out the same id again; we keep our own counter.
        """
        stream_id = max(self._next_stream_id, self._conn.get_next_available_stream_id())
        self._next_stream_id = stream_id + 4
        return stream_id

    def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        try:
            self._conn.send_stream_data(stream_id, data, end_stream=end)
        except (ValueError, AssertionError) as exc:
            raise TransportError(f"cannot write to QUIC stream {stream_id}: {exc}") from exc

    def reset(self, stream_id: int, error_code: int = 0) -> None:
        """Abort both directions of a stream (RESET_STREAM + STOP_SENDING)."""
        self._conn.abort_stream(stream_id, error_code, send=True, receive=True)
        self._conn.forget_stream(stream_id)

    def consumed(self, stream_id: int, nbytes: int) -> bool:
        """Record application reads; True when a flush would send new credit."""
        self._conn.consume(stream_id, nbytes)
        return self._conn.credit_pending(stream_id)

    def send_buffered(self, stream_id: int) -> int:
        return self._conn.send_buffered(stream_id)

    def forget_stream(self, stream_id: int) -> None:
        self._conn.forget_stream(stream_id)

    def close(self, *, error_code: int = 0, reason: str = "") -> None:
        if self._conn.close_info() is None:
            self._conn.close(error_code=error_code, reason_phrase=reason)

    # -- output ----------------------------------------------------------------
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        return self._conn.datagrams_to_send(now=now)

    def get_timer(self) -> float | None:
        timer = self._conn.get_timer()
        if not self._established:
            deadline = self._handshake_deadline
        elif self._closed_event_sent:
            deadline = None
        else:
            deadline = self._last_activity + self._settings.keep_alive_s
        if deadline is None:
            return timer
        return deadline if timer is None else min(timer, deadline)

    def next_event(self) -> ev.QuicSessionEvent | None:
        """Translate aioquic events into ours; None when there are no more."""
        while True:
            event = self._conn.next_event()
            if event is None:
                return self._early_close()
            ours = self._translate(event)
            if ours is not None:
                return ours

    def _translate(self, event: qe.QuicEvent) -> ev.QuicSessionEvent | None:
        if isinstance(event, qe.StreamDataReceived):
            return ev.StreamDataReceived(event.stream_id, event.data, event.end_stream)
        if isinstance(event, qe.StreamReset):
            self._conn.forget_stream(event.stream_id)
            return ev.StreamReset(event.stream_id, event.error_code)
        if isinstance(event, qe.StopSendingReceived):
            return ev.StopSending(event.stream_id, event.error_code)
        if isinstance(event, qe.HandshakeCompleted):
            return self._handshake_completed(event)
        if isinstance(event, qe.ConnectionTerminated):
            return self._terminated(event)
        if isinstance(event, qe.ConnectionIdIssued):
            return ev.ConnectionIdIssued(event.connection_id)
        if isinstance(event, qe.ConnectionIdRetired):
            return ev.ConnectionIdRetired(event.connection_id)
        return None  # ProtocolNegotiated, PingAcknowledged, datagram frames: not used

    def _handshake_completed(self, event: qe.HandshakeCompleted) -> ev.QuicSessionEvent | None:
        peer = self._conn.peer_identity
        if event.alpn_protocol != ALPN:
            self.close(error_code=0x100, reason="ALPN libp2p required")
            return None
        if not isinstance(peer, PeerId):
            self._conn.verification_error = HandshakeError(
                "handshake finished without a verified libp2p certificate"
            )
            self.close(error_code=0x100, reason="no libp2p certificate")
            return None
        self.remote_peer = peer
        self._established = True
        return ev.HandshakeDone(peer)

    def _terminated(self, event: qe.ConnectionTerminated) -> ev.QuicSessionEvent | None:
        return self._closed(event.error_code, event.reason_phrase or "")

    def _early_close(self) -> ev.QuicSessionEvent | None:
        """Report a close as soon as it begins, not after the draining period."""
        info = self._conn.close_info()
        if info is None:
            return None
        return self._closed(*info)

    def _closed(self, error_code: int, reason: str) -> ev.QuicSessionEvent | None:
        if self._closed_event_sent:
            return None
        self._closed_event_sent = True
        error: LatticaError | None = self._conn.verification_error
        described = reason or f"QUIC error 0x{error_code:x}"
        if error is None and not self._established:
            error = HandshakeError(f"QUIC handshake failed: {described}")
        elif error is None and error_code != 0:
            error = TransportError(f"connection closed by error: {described}")
        return ev.ConnectionClosed(error, reason)

    @property
    def established(self) -> bool:
        return self._established

    @property
    def host_cid(self) -> bytes:
        return bytes(self._conn.host_cid)

    @property
    def is_closed(self) -> bool:
        """Closed for the application (a ConnectionClosed event was emitted)."""
        return self._closed_event_sent

    @property
    def is_terminated(self) -> bool:
        """Over on the wire too: the endpoint may drop the session."""
        return self._conn.is_terminated()
