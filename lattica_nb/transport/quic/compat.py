"""Every place where lattica_nb reaches into aioquic's private state.

aioquic is a good sans-IO QUIC core, but libp2p needs four things it does not
offer publicly. They are all here, each with a regression test in
``tests/unit/test_quic_compat.py`` that fails if an aioquic release changes
the internals we rely on:

1. **Client certificates.** A server asks for one only when the TLS context's
   private ``_request_client_certificate`` flag is set, and an empty client
   Certificate message is accepted as "no client auth". libp2p requires
   mutual authentication, so we set the flag and refuse the empty message.
2. **Certificate verification.** aioquic verifies a chain against a CA store;
   libp2p certificates are self-signed and verified by their extension. We
   hook ``_set_peer_certificate`` (called during the handshake, before
   CertificateVerify) so that a bad certificate aborts the handshake with a
   ``bad_certificate`` alert instead of being noticed afterwards.
3. **Receive flow control.** aioquic doubles a stream's receive window
   whenever the peer has used half of it, whatever the application has
   read, so memory is unbounded against a fast sender. We grant credit from
   what the application has *consumed* (``consumed + window``).
4. **Close state.** aioquic reports ``ConnectionTerminated`` only after the
   draining period (three PTOs); :meth:`Libp2pQuicConnection.close_info`
   tells as soon as a close has begun, so users learn of it at once.
5. **Aborting a blocked stream.** A stream opened beyond the peer's stream
   limit waits in aioquic until MAX_STREAMS arrives, but RESET_STREAM and
   STOP_SENDING for it go out at once, and the peer rightly closes the whole
   connection (STREAM_LIMIT_ERROR). :meth:`Libp2pQuicConnection.abort_stream`
   defers those frames until the stream is unblocked.
6. **Send backpressure.** ``send_stream_data`` buffers without limit; we
   expose the number of bytes buffered and not yet acknowledged so the
   driver can wait before writing more.
7. **Pacing bursts.** aioquic's pacer lets a burst of at most
   ``min(cwnd/4, 16 datagrams)`` worth of time build up, but clamps the
   time per packet at 1 µs. Once the congestion window is large (tens of
   MB after a long slow start on loopback) the burst allowance falls below
   one packet time and every ``datagrams_to_send`` call yields exactly one
   datagram: the driver then wakes once per packet and throughput drops
   threefold. :class:`BurstPacer` keeps the allowance at 16 packet times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.recovery import QuicPacketPacer
from aioquic.tls import AlertBadCertificate, AlertHandshakeFailure

from ...errors import LatticaError

# Capacity of a MAX_STREAM_DATA frame: type (1) + stream id (8) + value (8).
_MAX_STREAM_DATA_FRAME_CAPACITY = 17

PACER_BURST_PACKETS = 16
"""Datagrams the pacer may send back to back by default (aioquic's own intent)."""

CertificateVerifier = Callable[[bytes], Any]
"""Called with the peer's leaf certificate (DER); raises a LatticaError to reject it."""


class BurstPacer(QuicPacketPacer):
    """aioquic's pacer with a burst allowance of at least ``burst`` packet times (item 7)."""

    def __init__(self, *, max_datagram_size: int, burst: int = PACER_BURST_PACKETS) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._burst = burst

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        super().update_rate(congestion_window, smoothed_rtt)
        if self.packet_time is not None:
            self.bucket_max = max(self.bucket_max, self._burst * self.packet_time)


class Libp2pQuicConnection(QuicConnection):
    """A QuicConnection with libp2p's mutual authentication and bounded windows.

    ``verify_peer`` receives the DER certificate and raises a LatticaError to
    reject it; its return value is stored in :attr:`peer_identity`.
    ``stream_window`` is the receive credit granted beyond what the
    application has consumed on each stream. ``pacer_burst_packets`` of 0
    keeps aioquic's own pacer (item 7).
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        verify_peer: CertificateVerifier,
        stream_window: int,
        max_incoming_streams: int,
        pacer_burst_packets: int = PACER_BURST_PACKETS,
        **kwargs: Any,
    ) -> None:
        super().__init__(configuration=configuration, **kwargs)
        self._verify_peer = verify_peer
        self._stream_window = stream_window
        self._consumed: dict[int, int] = {}
        self.peer_identity: Any = None
        self.verification_error: LatticaError | None = None
        self._local_max_streams_bidi.value = max_incoming_streams
        self._local_max_streams_bidi.sent = max_incoming_streams
        self._deferred_aborts: dict[int, tuple[int, bool, bool]] = {}
        if pacer_burst_packets:
            self._loss._pacer = BurstPacer(
                max_datagram_size=configuration.max_datagram_size, burst=pacer_burst_packets
            )

    # -- 1 and 2: mutual authentication ------------------------------------
    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        tls = self.tls
        if not self._is_client:
            tls._request_client_certificate = True
        original_set_peer_certificate = tls._set_peer_certificate
        original_server_handle_certificate = tls._server_handle_certificate

        def set_peer_certificate(certificate: Any) -> None:
            original_set_peer_certificate(certificate)
            if len(certificate.certificates) != 1:
                self._reject("peer sent a certificate chain; libp2p allows exactly one")
            try:
                self.peer_identity = self._verify_peer(certificate.certificates[0][0])
            except LatticaError as exc:
                self.verification_error = exc
                raise AlertBadCertificate(str(exc)) from exc

        def server_handle_certificate(input_buf: Any) -> None:
            original_server_handle_certificate(input_buf)
            if self.peer_identity is None:
                self._reject("peer sent no certificate; libp2p requires mutual authentication")

        tls._set_peer_certificate = set_peer_certificate  # type: ignore[method-assign]
        tls._server_handle_certificate = server_handle_certificate  # type: ignore[method-assign]

    def _reject(self, reason: str) -> None:
        from ...errors import HandshakeError

        self.verification_error = HandshakeError(reason)
        raise AlertHandshakeFailure(reason)

    # -- 3: receive credit from consumption ---------------------------------
    def consume(self, stream_id: int, nbytes: int) -> None:
        """Record that the application has read ``nbytes`` more of a stream."""
        self._consumed[stream_id] = self._consumed.get(stream_id, 0) + nbytes

    def credit_pending(self, stream_id: int) -> bool:
        """True when enough was consumed that a MAX_STREAM_DATA should go out."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.max_stream_data_local:
            return False
        target = self._consumed.get(stream_id, 0) + self._stream_window
        return target - stream.max_stream_data_local_sent >= self._stream_window // 2

    def forget_stream(self, stream_id: int) -> None:
        self._consumed.pop(stream_id, None)

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        if not stream.max_stream_data_local:
            return
        target = self._consumed.get(stream.stream_id, 0) + self._stream_window
        # Batch updates: send once half a window has been freed.
        if target - stream.max_stream_data_local_sent < self._stream_window // 2:
            return
        if stream.receiver.is_finished:
            return
        stream.max_stream_data_local = target
        buf = builder.start_frame(
            QuicFrameType.MAX_STREAM_DATA,
            capacity=_MAX_STREAM_DATA_FRAME_CAPACITY,
            handler=self._on_max_stream_data_delivery,
            handler_args=(stream,),
        )
        buf.push_uint_var(stream.stream_id)
        buf.push_uint_var(target)
        stream.max_stream_data_local_sent = target

    # -- 5: aborting streams, also blocked ones ----------------------------
    def abort_stream(self, stream_id: int, error_code: int, *, send: bool, receive: bool) -> None:
        """RESET_STREAM (``send``) and/or STOP_SENDING (``receive``) for a stream."""
        stream = self._streams.get(stream_id)
        if stream is not None and stream.is_blocked:
            self._deferred_aborts[stream_id] = (error_code, send, receive)
            return
        if send:
            try:
                self.reset_stream(stream_id, error_code)
            except (ValueError, AssertionError):
                pass  # the send direction already finished
        if receive:
            try:
                self.stop_stream(stream_id, error_code)
            except (ValueError, AssertionError):
                pass  # the receive direction already finished

    def _unblock_streams(self, is_unidirectional: bool) -> None:
        super()._unblock_streams(is_unidirectional)
        for stream_id, (code, send, receive) in list(self._deferred_aborts.items()):
            stream = self._streams.get(stream_id)
            if stream is None or not stream.is_blocked:
                del self._deferred_aborts[stream_id]
                if stream is not None:
                    self.abort_stream(stream_id, code, send=send, receive=receive)

    # -- 6: send backpressure ----------------------------------------------
    def send_buffered(self, stream_id: int) -> int:
        """Bytes written to a stream and not yet acknowledged by the peer."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)

    def send_blocked(self) -> bool:
        """True when connection-level flow control stops new stream data."""
        return bool(self._remote_max_data_used >= self._remote_max_data)

    # -- 4: close state ------------------------------------------------------
    def close_info(self) -> tuple[int, str] | None:
        """(error code, reason) once a close has begun on either side, else None."""
        event = self._close_event
        if event is None and self._state not in _CLOSING_STATES:
            return None
        if event is None:
            return (0, "")
        return (int(event.error_code), str(event.reason_phrase or ""))

    def is_terminated(self) -> bool:
        """True when the session is over and the endpoint may forget it."""
        return bool(self._state == QuicConnectionState.TERMINATED)


_CLOSING_STATES = (
    QuicConnectionState.CLOSING,
    QuicConnectionState.DRAINING,
    QuicConnectionState.TERMINATED,
)
