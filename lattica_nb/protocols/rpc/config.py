"""Configuration of the RPC service and client: one frozen dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import ConfigError

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "RpcConfig"]

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

_MIN_MESSAGE_BYTES = 1024
_MAX_MESSAGE_BYTES = (1 << 31) - 1


@dataclass(frozen=True, slots=True)
class RpcConfig:
    """Limits and timers of :class:`RpcService` (server) and :class:`RpcClient` (caller).

    Server side:

    * ``max_message_bytes`` (4 MiB): the largest frame body accepted or sent,
      in both roles. A bigger frame from a peer gets RESOURCE_EXHAUSTED and a
      reset stream; a bigger one of ours raises LimitExceeded before sending.
    * ``max_concurrent_calls_per_peer`` (64): handlers running at once for
      one peer. A call over the bound waits up to ``admission_wait_s``
      (0.1 s) for a slot, then ends with RESOURCE_EXHAUSTED (0 = no wait).
    * ``request_buffer_messages`` (16): streamed requests read ahead of a
      handler that has not consumed them yet.
    * ``stream_idle_timeout_s`` (30 s): a stream kept open for reuse with no
      call for this long is closed.

    Client side:

    * ``default_timeout_s`` (30 s): the deadline of calls that pass no
      ``timeout_s``; ``math.inf`` for none.
    * ``max_idle_streams_per_peer`` (16): negotiated streams kept for reuse
      by later unary and server-streaming calls (0 = a new stream per call,
      which costs one extra round trip for multistream-select).
    * ``idle_stream_s`` (10 s): a kept stream idle for longer is closed
      instead of reused; keep it below the server's ``stream_idle_timeout_s``.
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_concurrent_calls_per_peer: int = 64
    admission_wait_s: float = 0.1
    request_buffer_messages: int = 16
    stream_idle_timeout_s: float = 30.0
    default_timeout_s: float = 30.0
    max_idle_streams_per_peer: int = 16
    idle_stream_s: float = 10.0

    def __post_init__(self) -> None:
        if not _MIN_MESSAGE_BYTES <= self.max_message_bytes <= _MAX_MESSAGE_BYTES:
            raise ConfigError(
                f"max_message_bytes must be in {_MIN_MESSAGE_BYTES}..{_MAX_MESSAGE_BYTES}"
            )
        if self.max_concurrent_calls_per_peer < 1:
            raise ConfigError("max_concurrent_calls_per_peer must be at least 1")
        if self.request_buffer_messages < 0 or self.max_idle_streams_per_peer < 0:
            raise ConfigError(
                "request_buffer_messages and max_idle_streams_per_peer must be >= 0"
            )
        if self.admission_wait_s < 0 or math.isnan(self.admission_wait_s):
            raise ConfigError("admission_wait_s must be >= 0")
        for name in ("stream_idle_timeout_s", "default_timeout_s", "idle_stream_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{name} must be positive (math.inf for no limit)")
