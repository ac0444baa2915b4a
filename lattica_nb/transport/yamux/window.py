"""Per-stream state of a Yamux session: flags and both flow-control windows.

Receive side invariant: ``recv_window + in_flight + buffered + pending_credit
== max_window``, where ``in_flight`` is the rest of a data frame whose header
was charged but whose payload has not all arrived. So what the driver holds
for a stream never exceeds the window we granted.
"""

from __future__ import annotations

from ...errors import LocalProtocolError, RemoteProtocolError
from .settings import INITIAL_WINDOW_BYTES, MAX_WINDOW_BYTES


class StreamState:
    __slots__ = (
        "acked",
        "buffered",
        "max_window",
        "outbound",
        "pending_credit",
        "recv_fin",
        "recv_window",
        "removed",
        "send_fin",
        "send_window",
        "stream_id",
    )

    def __init__(self, stream_id: int, *, outbound: bool) -> None:
        self.stream_id = stream_id
        self.outbound = outbound
        self.acked = False  # outbound: the peer sent ACK; inbound: we sent ACK
        self.max_window = INITIAL_WINDOW_BYTES  # what we granted in total
        self.recv_window = INITIAL_WINDOW_BYTES  # what the peer may still send
        self.buffered = 0  # delivered to the driver, not yet consumed
        self.pending_credit = 0  # consumed, not yet returned in a window update
        self.send_window = INITIAL_WINDOW_BYTES
        self.recv_fin = False
        self.send_fin = False
        self.removed = False

    def widen(self, extra: int) -> None:
        """Grant the peer ``extra`` bytes beyond the current window."""
        self.max_window += extra
        self.recv_window += extra

    def charge(self, length: int) -> None:
        """A data frame of ``length`` bytes arrived; it must fit the window."""
        if length > self.recv_window:
            raise RemoteProtocolError(
                f"peer sent a {length}-byte data frame on yamux stream {self.stream_id} with "
                f"only {self.recv_window} bytes of window left"
            )
        self.recv_window -= length

    def consume(self, nbytes: int) -> int:
        """The application read ``nbytes``; return the credit to send now (0: keep batching).

        Credit goes back once half the window has been read, so a window
        update costs one frame per half window rather than one per frame.
        """
        if not 0 <= nbytes <= self.buffered:
            raise LocalProtocolError(
                f"consumed {nbytes} bytes of yamux stream {self.stream_id} but only "
                f"{self.buffered} were delivered"
            )
        self.buffered -= nbytes
        if self.recv_fin:
            return 0
        credit = self.pending_credit + nbytes
        if credit * 2 < self.max_window:
            self.pending_credit = credit
            return 0
        self.pending_credit = 0
        self.recv_window += credit
        return credit

    def add_send_credit(self, delta: int) -> None:
        window = self.send_window + delta
        if window > MAX_WINDOW_BYTES:
            raise RemoteProtocolError(
                f"peer's window update overflows the 32-bit window of yamux stream {self.stream_id}"
            )
        self.send_window = window
