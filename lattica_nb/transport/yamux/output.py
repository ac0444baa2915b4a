"""The frames a Yamux session queued for the underlying stream, flushed as one buffer.

Data payloads given as ``bytes`` are queued as views (no copy until the one
``join`` of a flush); mutable buffers are copied, since the caller may reuse
them as soon as ``send`` returns. Writers stop at ``limit`` bytes queued;
frames the peer makes us send (pongs, resets) are counted separately, and a
peer that makes us queue more than ``reply_limit`` of them is flooding.
"""

from __future__ import annotations

from ...errors import LimitExceeded
from .frames import HEADER, HEADER_BYTES, TYPE_DATA

_pack = HEADER.pack


class OutputQueue:
    __slots__ = ("_bytes", "_limit", "_max_frame", "_parts", "_reply_bytes", "_reply_limit")

    def __init__(self, *, limit: int, reply_limit: int, max_frame: int) -> None:
        self._parts: list[bytes | memoryview] = []
        self._bytes = 0
        self._reply_bytes = 0
        self._limit = limit
        self._reply_limit = reply_limit
        self._max_frame = max_frame

    def __bool__(self) -> bool:
        return bool(self._parts)

    @property
    def full(self) -> bool:
        return self._bytes >= self._limit

    def frame(self, frame_type: int, flags: int, stream_id: int, length: int) -> None:
        """Queue a frame without payload (window update, FIN, ping, GoAway)."""
        self._parts.append(_pack(0, frame_type, flags, stream_id, length))
        self._bytes += HEADER_BYTES

    def reply(self, frame_type: int, flags: int, stream_id: int, length: int) -> None:
        """Queue a frame the peer asked for; raise LimitExceeded when it asks too often."""
        self.frame(frame_type, flags, stream_id, length)
        self._reply_bytes += HEADER_BYTES
        if self._reply_bytes > self._reply_limit:
            raise LimitExceeded(
                f"the peer made us queue {self._reply_bytes} bytes of replies (pongs, resets) "
                "faster than the connection carries them"
            )

    def data(self, stream_id: int, view: memoryview, window: int) -> int:
        """Queue data frames of at most ``window`` bytes in total; return the bytes taken."""
        keep = view.readonly and isinstance(view.obj, bytes)
        total = len(view)
        max_frame = self._max_frame
        limit = self._limit
        parts = self._parts
        sent = 0
        while sent < total and window > 0 and self._bytes < limit:
            size = min(total - sent, window, max_frame)
            piece = view[sent : sent + size]
            parts.append(_pack(0, TYPE_DATA, 0, stream_id, size))
            parts.append(piece if keep else bytes(piece))
            self._bytes += HEADER_BYTES + size
            sent += size
            window -= size
        return sent

    def take(self) -> bytes:
        """Everything queued, as one buffer; the queue is empty afterwards."""
        parts = self._parts
        if not parts:
            return b""
        self._parts = []
        self._bytes = 0
        self._reply_bytes = 0
        first = parts[0]
        if len(parts) == 1 and type(first) is bytes:
            return first
        return b"".join(parts)
