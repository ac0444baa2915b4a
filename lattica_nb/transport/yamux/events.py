"""Events a :class:`~lattica_nb.transport.yamux.session.YamuxSession` emits."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import LatticaError


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened a stream; it waits for :meth:`YamuxSession.acknowledge`."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamData:
    """Payload bytes for a stream, in arrival order.

    ``data`` may be a memoryview of a larger read; it is never written to.
    Report it with :meth:`YamuxSession.consumed` once the application has read it.
    """

    stream_id: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer finished its side of a stream (FIN): no more data will come."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer aborted a stream (RST), or refused one we opened."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """The peer granted more credit for a stream we write."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAnswered:
    """The peer answered our keepalive ping after ``rtt_s`` seconds."""

    rtt_s: float


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The session is over: GoAway either way, a protocol error, loss, or no keepalive answer.

    ``error`` is None for a clean close (GoAway with code 0 or a local close).
    Queued output (a GoAway of ours) may still be sent.
    """

    error: LatticaError | None


YamuxEvent = (
    StreamOpened
    | StreamData
    | StreamEnded
    | StreamReset
    | StreamWritable
    | PingAnswered
    | ConnectionTerminated
)
