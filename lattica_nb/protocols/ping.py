"""libp2p ping, ``/ipfs/ping/1.0.0`` (libp2p/specs ping/ping.md).

The dialer writes 32 random bytes; the listener echoes them; the dialer
measures the round trip. The dialer may repeat on the same stream and closes
its sending side when done; the listener then finishes and closes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import anyio
from anyio.abc import ByteStream

from ..errors import ConnectionClosedError, LocalProtocolError, RemoteProtocolError, TimeoutError
from ..wire.framing import receive_exactly

__all__ = ["PAYLOAD_BYTES", "PROTOCOL_ID", "Pinger", "serve_ping"]

logger = logging.getLogger(__name__)

PROTOCOL_ID = "/ipfs/ping/1.0.0"
PAYLOAD_BYTES = 32


async def _send(stream: ByteStream, data: bytes) -> None:
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise ConnectionClosedError("ping stream closed") from exc


async def serve_ping(stream: ByteStream) -> None:
    """Echo 32-byte payloads until the peer closes its side, then close the stream.

    A peer that ends with a partial payload gets nothing back for it; the
    stream is closed either way.
    """
    try:
        while True:
            payload = await receive_exactly(stream, PAYLOAD_BYTES)
            if len(payload) < PAYLOAD_BYTES:
                if payload:
                    logger.debug("ping: peer ended with a %d-byte partial payload", len(payload))
                return
            await _send(stream, payload)
    finally:
        with anyio.move_on_after(1.0, shield=True):
            await stream.aclose()


class Pinger:
    """Pings one peer over one stream, one ping at a time.

    After a timeout or a bad echo the stream's state is unknown and the
    Pinger refuses further pings: open a new stream.
    """

    __slots__ = ("_failed", "_lock", "_stream")

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._lock = anyio.Lock()
        self._failed = False

    async def ping(self, *, now: Callable[[], float] | None = None, timeout_s: float) -> float:
        """Send one payload and return the round-trip time in seconds.

        ``now`` is the clock (default ``time.perf_counter``). Raises
        TimeoutError if the echo does not arrive within ``timeout_s``,
        RemoteProtocolError if it differs from what we sent,
        ConnectionClosedError if the peer closed the stream.
        """
        clock = time.perf_counter if now is None else now
        async with self._lock:
            if self._failed:
                raise LocalProtocolError("an earlier ping on this stream failed; open a new stream")
            payload = os.urandom(PAYLOAD_BYTES)
            self._failed = True  # cleared only when the echo checks out
            with anyio.move_on_after(timeout_s) as scope:
                started = clock()
                await _send(self._stream, payload)
                echo = await receive_exactly(self._stream, PAYLOAD_BYTES)
                finished = clock()
            if scope.cancelled_caught:
                raise TimeoutError(f"no ping reply within {timeout_s:g} s")
            if len(echo) < PAYLOAD_BYTES:
                raise ConnectionClosedError(
                    f"peer closed the ping stream after {len(echo)} of {PAYLOAD_BYTES} bytes"
                )
            if echo != payload:
                raise RemoteProtocolError("ping reply does not match the payload sent")
            self._failed = False
            return finished - started

    async def aclose(self) -> None:
        """Close our side (the polite end of a ping stream) and the stream."""
        with anyio.move_on_after(1.0, shield=True):
            try:
                await self._stream.send_eof()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            await self._stream.aclose()
