"""Tunables of the Yamux multiplexer (one frozen dataclass, validated)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError

KIB = 1024
MIB = 1024 * KIB

INITIAL_WINDOW_BYTES = 256 * KIB
"""Every stream starts with this window in both directions (yamux spec)."""

MAX_WINDOW_BYTES = 0xFFFF_FFFF
"""Windows are 32-bit on the wire."""

MAX_FRAME_BYTES = 1 * MIB
"""rust-yamux refuses data frames above 1 MiB (frame/io.rs), py-libp2p above 16 MiB."""


@dataclass(frozen=True, slots=True)
class YamuxSettings:
    """Limits and buffer sizes of one Yamux connection.

    Windows: each stream starts at the spec's 256 KiB; when we open or accept
    a stream we grant the peer ``receive_window_bytes`` in the same frame
    (a window update carrying SYN or ACK), as rust-yamux and go-yamux accept.
    We send further credit once the application has read half a window, so a
    window update costs one frame per ``receive_window_bytes / 2`` bytes.
    ``max_connection_receive_bytes`` caps the windows granted across all
    streams of a connection (rust-yamux caps it too): once reached, new
    streams keep the spec's 256 KiB. What a peer can make us buffer is thus
    at most ``max(max_connection_receive_bytes, max_streams * 256 KiB)``.

    Streams: at most ``max_streams`` are open at once (an inbound SYN beyond
    it is answered with RST); at most ``max_accept_backlog`` inbound streams
    wait for :meth:`accept_stream` (beyond it they are reset: the spec asks
    to buffer at least 256); ``open_stream`` waits while ``max_ack_backlog``
    of our streams are not acknowledged (the spec's ACK backlog, 256).

    Sending: data frames carry at most ``max_frame_bytes`` (rust-yamux closes
    the connection above 1 MiB); writers wait while ``send_buffer_bytes``
    are queued for the underlying stream. Control frames the peer makes us
    send (pongs, RSTs) may queue ``max_control_backlog_bytes`` beyond that;
    a peer that makes us exceed it is flooding and the connection closes.

    Liveness: a ping every ``keepalive_s`` (None disables); when nothing at
    all arrives within ``keepalive_timeout_s`` of an unanswered ping the
    connection counts as lost (a half-open TCP connection). ``close_timeout_s``
    bounds how long closing waits to flush a GoAway.
    """

    receive_window_bytes: int = 16 * MIB
    max_connection_receive_bytes: int = 128 * MIB
    max_streams: int = 512
    max_ack_backlog: int = 256
    max_accept_backlog: int = 256
    max_frame_bytes: int = 256 * KIB
    send_buffer_bytes: int = 1 * MIB
    max_control_backlog_bytes: int = 256 * KIB
    keepalive_s: float | None = 10.0
    keepalive_timeout_s: float = 20.0
    close_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if not INITIAL_WINDOW_BYTES <= self.receive_window_bytes <= MAX_WINDOW_BYTES:
            raise ConfigError(
                f"receive_window_bytes must be in {INITIAL_WINDOW_BYTES}..{MAX_WINDOW_BYTES} "
                f"(the spec's initial window is 256 KiB), got {self.receive_window_bytes}"
            )
        if self.max_connection_receive_bytes < self.receive_window_bytes:
            raise ConfigError("max_connection_receive_bytes must be >= receive_window_bytes")
        if not 1 <= self.max_streams <= 1 << 20:
            raise ConfigError(f"max_streams must be in 1..{1 << 20}, got {self.max_streams}")
        if not 1 <= self.max_ack_backlog <= self.max_streams:
            raise ConfigError("max_ack_backlog must be in 1..max_streams")
        if not 1 <= self.max_accept_backlog <= self.max_streams:
            raise ConfigError("max_accept_backlog must be in 1..max_streams")
        if not 1 <= self.max_frame_bytes <= MAX_FRAME_BYTES:
            raise ConfigError(
                f"max_frame_bytes must be in 1..{MAX_FRAME_BYTES} (rust-yamux drops the "
                f"connection on larger frames), got {self.max_frame_bytes}"
            )
        if self.send_buffer_bytes < 1:
            raise ConfigError("send_buffer_bytes must be positive")
        if self.max_control_backlog_bytes < 12 * 64:
            raise ConfigError("max_control_backlog_bytes must be at least 768 (64 frames)")
        if self.keepalive_s is not None and not self.keepalive_s > 0:
            raise ConfigError("keepalive_s must be positive or None")
        if not self.keepalive_timeout_s > 0:
            raise ConfigError("keepalive_timeout_s must be positive")
        if not self.close_timeout_s >= 0:
            raise ConfigError("close_timeout_s must be >= 0")
