"""Events a :class:`~lattica_nb.transport.quic.session.QuicSession` emits."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import LatticaError
from ...identity import PeerId


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """The handshake finished and the remote proved it holds ``peer``'s key."""

    peer: PeerId


@dataclass(frozen=True, slots=True)
class StreamDataReceived:
    stream_id: int
    data: bytes
    end: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer aborted its sending side of a stream."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class StopSending:
    """The peer will not read more of a stream we write."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class ConnectionIdIssued:
    connection_id: bytes


@dataclass(frozen=True, slots=True)
class ConnectionIdRetired:
    connection_id: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection closed; ``error`` is None for a clean close."""

    error: LatticaError | None
    reason: str


QuicSessionEvent = (
    HandshakeDone
    | StreamDataReceived
    | StreamReset
    | StopSending
    | ConnectionIdIssued
    | ConnectionIdRetired
    | ConnectionClosed
)
