"""Sans-IO Yamux session: bytes and the time in, bytes and events out.

A :class:`YamuxSession` parses what the underlying stream delivered
(:meth:`receive_data`), keeps per-stream flow-control state, and queues the
frames to write (:meth:`data_to_send`). It never reads a clock, opens a
socket or sleeps; the driver (:mod:`.connection`) moves the bytes, holds the
stream buffers and calls :meth:`consumed` as the application reads.

Rules followed (hashicorp/yamux spec.md, libp2p/specs yamux/README.md, and
what rust-yamux, go-yamux and py-libp2p do on the wire):

- the dialer's streams have odd ids, the listener's even; a SYN with the
  wrong parity or reusing an open id is a protocol error (GoAway code 1);
- a stream opens with a window update carrying SYN, and is accepted with a
  window update carrying ACK; both carry the extra window we grant, since
  peers may add a delta to the 256 KiB initial window in that frame;
- data beyond a stream's window is a protocol error; credit is returned in
  batches once the application has read half the window;
- frames for streams we do not know (closed or never opened) are ignored,
  their payload skipped without buffering (rust-yamux issue 110);
- FIN is a zero-length data frame, RST a window update (as go-yamux);
- a GoAway ends the session (as rust-yamux): code 0 cleanly, others with an error.
"""

from __future__ import annotations

import logging
from collections import deque

from ...errors import (
    ConnectionClosedError,
    LatticaError,
    LimitExceeded,
    LocalProtocolError,
    RemoteProtocolError,
    TimeoutError,
)
from . import events as ev
from .frames import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_INTERNAL_ERROR,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    U32_MAX,
    FrameReader,
    Header,
)
from .keepalive import Keepalive
from .output import OutputQueue
from .settings import YamuxSettings
from .window import StreamState

logger = logging.getLogger(__name__)


class YamuxSession:
    """One Yamux connection as a pure state machine."""

    def __init__(self, *, is_initiator: bool, settings: YamuxSettings, now: float) -> None:
        self.is_initiator = is_initiator
        self._settings = settings
        self._streams: dict[int, StreamState] = {}
        self._next_id = 1 if is_initiator else 2
        self._ack_backlog = 0  # our streams the peer has not acknowledged
        self._accept_backlog = 0  # peer's streams we have not acknowledged
        self._granted_total = 0
        self._refused = 0  # inbound streams reset for exceeding a limit
        self._reader = FrameReader(settings.receive_window_bytes)
        self._data_left = 0  # payload bytes of the current data frame still to come
        self._data_stream: StreamState | None = None  # where they go (None: skipped)
        self._data_fin = False  # the current data frame carries FIN
        self._out = OutputQueue(
            limit=settings.send_buffer_bytes,
            reply_limit=settings.max_control_backlog_bytes,
            max_frame=settings.max_frame_bytes,
        )
        self._events: deque[ev.YamuxEvent] = deque()
        self._terminated = False
        self.close_error: LatticaError | None = None
        self._keepalive = Keepalive(settings.keepalive_s, settings.keepalive_timeout_s, now)
        self.rtt_s: float | None = None

    # -- state -------------------------------------------------------------------
    @property
    def is_terminated(self) -> bool:
        return self._terminated

    @property
    def open_stream_count(self) -> int:
        return len(self._streams)

    @property
    def ack_backlog(self) -> int:
        """Streams we opened that the peer has not acknowledged yet."""
        return self._ack_backlog

    @property
    def accept_backlog(self) -> int:
        """Streams the peer opened that we have not acknowledged yet."""
        return self._accept_backlog

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    @property
    def output_full(self) -> bool:
        """True while writers should wait for :meth:`data_to_send` to be called."""
        return self._out.full

    def send_window(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.send_window

    def buffered(self, stream_id: int) -> int:
        """Bytes delivered for a stream and not yet consumed (never above its window)."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.buffered

    # -- output --------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """Everything queued for the underlying stream, as one buffer (small frames coalesced)."""
        return self._out.take()

    def next_event(self) -> ev.YamuxEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        return None if self._terminated else self._keepalive.timer()

    # -- input -------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> None:
        """Process bytes from the underlying stream (any split of the byte stream)."""
        if self._terminated or not data:
            return
        self._keepalive.received(now)
        try:
            for item in self._reader.feed(data):
                if type(item) is Header:
                    self._on_header(item, now)
                    if self._terminated:
                        return
                else:
                    self._on_payload(item)  # type: ignore[arg-type]
        except RemoteProtocolError as exc:
            logger.warning("yamux peer broke the protocol: %s", exc)
            self._fail(exc, GO_AWAY_PROTOCOL_ERROR)
        except LimitExceeded as exc:
            logger.warning("yamux peer exceeded a limit: %s", exc)
            self._fail(exc, GO_AWAY_INTERNAL_ERROR)

    def handle_timer(self, now: float) -> None:
        """Send a keepalive ping when due; end the session when one stays unanswered."""
        if self._terminated:
            return
        if self._keepalive.expired(now):
            self._terminate(
                TimeoutError(
                    f"the peer sent nothing for {self._settings.keepalive_timeout_s:g} s after "
                    "a keepalive ping; treating the connection as lost"
                )
            )
        elif (opaque := self._keepalive.ping_due(now)) is not None:
            self._out.frame(TYPE_PING, FLAG_SYN, 0, opaque)

    def connection_lost(self, error: LatticaError | None) -> None:
        """The underlying stream ended or failed."""
        self._terminate(error)

    # -- local actions ----------------------------------------------------------------
    def open_stream(self) -> int:
        """Open a stream (window update with SYN granting our window); return its id."""
        if self._terminated:
            raise self._closed_error()
        if len(self._streams) >= self._settings.max_streams:
            raise LimitExceeded(
                f"{len(self._streams)} yamux streams are open (max_streams); close some first"
            )
        if self._ack_backlog >= self._settings.max_ack_backlog:
            raise LimitExceeded(
                f"{self._ack_backlog} opened streams wait for the peer's ACK (max_ack_backlog)"
            )
        stream_id = self._next_id
        if stream_id > U32_MAX:
            raise LimitExceeded("this yamux connection used all its stream ids; open a new one")
        self._next_id += 2
        stream = self._add(stream_id, outbound=True)
        self._ack_backlog += 1
        self._out.frame(TYPE_WINDOW_UPDATE, FLAG_SYN, stream_id, self._grant(stream))
        return stream_id

    def acknowledge(self, stream_id: int) -> None:
        """Accept a stream the peer opened: window update with ACK granting our window."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.outbound or stream.acked:
            return
        stream.acked = True
        self._accept_backlog -= 1
        self._out.frame(TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id, self._grant(stream))

    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue data frames within the send window and buffer; return the bytes taken.

        Returns 0 when the window is exhausted (wait for StreamWritable) or the
        output buffer is full (wait for :meth:`data_to_send`). ``bytes`` are
        queued without a copy; mutable buffers are copied.
        """
        if self._terminated:
            raise self._closed_error()
        stream = self._streams.get(stream_id)
        if stream is None or stream.send_fin:
            raise LocalProtocolError(f"yamux stream {stream_id} is closed for sending")
        view = data if isinstance(data, memoryview) else memoryview(data)
        sent = self._out.data(stream_id, view, stream.send_window)
        stream.send_window -= sent
        return sent

    def end_stream(self, stream_id: int) -> None:
        """Finish our side of a stream (FIN)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.send_fin or self._terminated:
            return
        stream.send_fin = True
        self._out.frame(TYPE_DATA, FLAG_FIN, stream_id, 0)
        if stream.recv_fin:
            self._remove(stream)

    def close_stream(self, stream_id: int) -> None:
        """FIN if not sent, then forget the stream: later frames for it are ignored."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self.end_stream(stream_id)
        if not stream.removed:
            self._remove(stream)

    def reset_stream(self, stream_id: int) -> None:
        """Abort a stream in both directions (RST)."""
        stream = self._streams.get(stream_id)
        if stream is None or self._terminated:
            return
        self._out.frame(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0)
        self._remove(stream)

    def consumed(self, stream_id: int, nbytes: int) -> None:
        """The application read ``nbytes``; return credit once half the window is read."""
        stream = self._streams.get(stream_id)
        if stream is None or self._terminated:
            return
        credit = stream.consume(nbytes)
        if credit:
            self._out.frame(TYPE_WINDOW_UPDATE, 0, stream_id, credit)

    def close(self) -> None:
        """End the session cleanly: GoAway with code 0."""
        self._fail(None, GO_AWAY_NORMAL)

    # -- frames from the peer ----------------------------------------------------------
    def _on_header(self, header: Header, now: float) -> None:
        frame_type = header.type
        if frame_type == TYPE_DATA:
            self._on_data_header(header)
        elif frame_type == TYPE_WINDOW_UPDATE:
            self._on_window_update(header)
        elif frame_type == TYPE_PING:
            self._on_ping(header, now)
        elif frame_type == TYPE_GO_AWAY:
            self._on_go_away(header)

    def _on_data_header(self, header: Header) -> None:
        _, flags, stream_id, length = header
        self._data_left = length
        self._data_stream = None
        self._data_fin = False
        if flags & FLAG_RST:
            self._on_reset(stream_id)
            return
        stream = self._on_syn(stream_id) if flags & FLAG_SYN else self._streams.get(stream_id)
        if stream is None:
            return  # unknown, closed or refused: the payload is skipped
        if flags & FLAG_ACK:
            self._on_ack(stream)
        stream.charge(length)
        if stream.recv_fin:
            logger.debug("yamux: dropping %d bytes after FIN on stream %d", length, stream_id)
        elif length:
            self._data_stream = stream
        if flags & FLAG_FIN:
            if self._data_stream is not None:
                self._data_fin = True  # applied once the payload is in
            else:
                self._on_fin(stream)

    def _on_payload(self, piece: bytes | memoryview) -> None:
        size = len(piece)
        self._data_left -= size
        stream = self._data_stream
        if stream is not None and not stream.removed:
            stream.buffered += size
            self._events.append(ev.StreamData(stream.stream_id, piece))
        if self._data_left == 0:
            if self._data_fin and stream is not None and not stream.removed:
                self._on_fin(stream)
            self._data_stream = None
            self._data_fin = False

    def _on_window_update(self, header: Header) -> None:
        _, flags, stream_id, delta = header
        if flags & FLAG_RST:
            self._on_reset(stream_id)
            return
        stream = self._on_syn(stream_id) if flags & FLAG_SYN else self._streams.get(stream_id)
        if stream is None:
            return
        if flags & FLAG_ACK:
            self._on_ack(stream)
        if delta:
            stream.add_send_credit(delta)
            if not stream.send_fin:
                self._events.append(ev.StreamWritable(stream_id))
        if flags & FLAG_FIN:
            self._on_fin(stream)

    def _on_syn(self, stream_id: int) -> StreamState | None:
        ours = 1 if self.is_initiator else 0
        if stream_id == 0 or stream_id & 1 == ours:
            raise RemoteProtocolError(
                f"peer opened yamux stream {stream_id}; as the "
                f"{'listener' if self.is_initiator else 'dialer'} it must use "
                f"{'even' if self.is_initiator else 'odd'} non-zero ids"
            )
        if stream_id in self._streams:
            raise RemoteProtocolError(f"peer opened yamux stream {stream_id} twice")
        settings = self._settings
        if (
            len(self._streams) >= settings.max_streams
            or self._accept_backlog >= settings.max_accept_backlog
        ):
            logger.log(
                logging.DEBUG if self._refused else logging.WARNING,
                "yamux peer opened stream %d beyond the limits (%d open, %d unaccepted); "
                "resetting it (further ones are logged at DEBUG)",
                stream_id,
                len(self._streams),
                self._accept_backlog,
            )
            self._refused += 1
            self._out.reply(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0)
            return None
        stream = self._add(stream_id, outbound=False)
        self._accept_backlog += 1
        self._events.append(ev.StreamOpened(stream_id))
        return stream

    def _on_ack(self, stream: StreamState) -> None:
        if stream.outbound and not stream.acked:
            stream.acked = True
            self._ack_backlog -= 1

    def _on_fin(self, stream: StreamState) -> None:
        if stream.recv_fin:
            return
        stream.recv_fin = True
        self._events.append(ev.StreamEnded(stream.stream_id))
        if stream.send_fin:
            self._remove(stream)

    def _on_reset(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._remove(stream)
        self._events.append(ev.StreamReset(stream_id))

    def _on_ping(self, header: Header, now: float) -> None:
        if header.flags & FLAG_SYN:
            self._out.reply(TYPE_PING, FLAG_ACK, 0, header.length)
        elif header.flags & FLAG_ACK:
            rtt = self._keepalive.answered(header.length, now)
            if rtt is not None:
                self.rtt_s = rtt
                self._events.append(ev.PingAnswered(rtt))

    def _on_go_away(self, header: Header) -> None:
        code = header.length
        if code == GO_AWAY_NORMAL:
            self._terminate(None)
            return
        meaning = {
            GO_AWAY_PROTOCOL_ERROR: "a protocol error on our side",
            GO_AWAY_INTERNAL_ERROR: "an internal error",
        }.get(code, f"error code {code}")
        self._terminate(
            ConnectionClosedError(f"the peer closed the connection (GoAway: {meaning})")
        )

    # -- helpers ---------------------------------------------------------------------
    def _add(self, stream_id: int, *, outbound: bool) -> StreamState:
        stream = StreamState(stream_id, outbound=outbound)
        self._streams[stream_id] = stream
        self._granted_total += stream.max_window
        return stream

    def _grant(self, stream: StreamState) -> int:
        """Raise a stream's window to receive_window_bytes within the connection budget."""
        room = self._settings.max_connection_receive_bytes - self._granted_total
        extra = min(self._settings.receive_window_bytes - stream.max_window, room)
        if extra <= 0:
            return 0
        stream.widen(extra)
        self._granted_total += extra
        return extra

    def _remove(self, stream: StreamState) -> None:
        del self._streams[stream.stream_id]
        stream.removed = True
        self._granted_total -= stream.max_window
        if not stream.acked:
            if stream.outbound:
                self._ack_backlog -= 1
            else:
                self._accept_backlog -= 1

    def _fail(self, error: LatticaError | None, code: int) -> None:
        if not self._terminated:
            self._out.frame(TYPE_GO_AWAY, 0, 0, code)
            self._terminate(error)

    def _terminate(self, error: LatticaError | None) -> None:
        if self._terminated:
            return
        self._terminated = True
        self.close_error = error
        self._keepalive.stop()
        self._streams.clear()
        self._data_stream = None
        self._events.append(ev.ConnectionTerminated(error))

    def _closed_error(self) -> ConnectionClosedError:
        if self.close_error is None:
            return ConnectionClosedError("the yamux connection is closed")
        return ConnectionClosedError(f"the yamux connection is closed: {self.close_error}")
