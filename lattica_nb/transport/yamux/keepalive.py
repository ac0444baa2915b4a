"""Keepalive pings of a Yamux session as a small clock-free state machine.

One ping is outstanding at a time. The connection counts as lost when a ping
is unanswered and nothing at all arrived for ``timeout_s`` since it was sent:
a busy peer's pong can queue behind megabytes of data, but a half-open TCP
connection delivers nothing.
"""

from __future__ import annotations

U32_MASK = 0xFFFF_FFFF


class Keepalive:
    __slots__ = (
        "_interval_s",
        "_last_receive_at",
        "_next_ping_at",
        "_ping_id",
        "_sent_at",
        "_timeout_s",
    )

    def __init__(self, interval_s: float | None, timeout_s: float, now: float) -> None:
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._next_ping_at = None if interval_s is None else now + interval_s
        self._sent_at: float | None = None
        self._ping_id = 0
        self._last_receive_at = now

    def received(self, now: float) -> None:
        """Bytes arrived from the peer."""
        self._last_receive_at = now

    def timer(self) -> float | None:
        if self._next_ping_at is None:
            return None
        if self._sent_at is not None:
            return max(self._sent_at, self._last_receive_at) + self._timeout_s
        return self._next_ping_at

    def expired(self, now: float) -> bool:
        """True when an outstanding ping went unanswered with nothing received."""
        if self._sent_at is None:
            return False
        return now >= max(self._sent_at, self._last_receive_at) + self._timeout_s

    def ping_due(self, now: float) -> int | None:
        """The opaque value of a ping to send now, or None."""
        if self._next_ping_at is None or self._sent_at is not None or now < self._next_ping_at:
            return None
        self._ping_id = (self._ping_id + 1) & U32_MASK
        self._sent_at = now
        return self._ping_id

    def answered(self, opaque: int, now: float) -> float | None:
        """A pong arrived; return the round-trip time if it answers our ping."""
        if self._sent_at is None or opaque != self._ping_id:
            return None
        rtt = now - self._sent_at
        self._sent_at = None
        if self._interval_s is not None:
            self._next_ping_at = now + self._interval_s
        return rtt

    def stop(self) -> None:
        self._next_ping_at = None
        self._sent_at = None
