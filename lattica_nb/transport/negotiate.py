"""anyio drivers for multistream-select: move bytes, apply one deadline.

:func:`select_outbound` and :func:`select_inbound` run the sans-IO machines
of :mod:`.multistream` over an ``anyio.abc.ByteStream`` and return the
selected protocol with a stream that first yields any bytes the peer sent
after the negotiation (pipelined application data), then the underlying
stream.

On failure the stream is left as it is: the caller resets or closes it.
Errors: ProtocolNegotiationError when no protocol is agreed (including a
peer closing the stream mid-negotiation), DecodeError for malformed messages,
ConnectionClosedError when the stream breaks, TimeoutError past ``timeout_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import ByteStream

from ..errors import ConnectionClosedError, ProtocolNegotiationError, TimeoutError
from .multistream import DialerNegotiation, ListenerNegotiation

__all__ = ["PrefixedStream", "select_inbound", "select_outbound"]

logger = logging.getLogger(__name__)

READ_BYTES = 65536


class PrefixedStream(ByteStream):
    """A stream that yields ``prefix`` before the bytes of ``inner``."""

    def __init__(self, inner: ByteStream, prefix: bytes = b"") -> None:
        self._inner = inner
        self._prefix = bytes(prefix)

    @property
    def inner(self) -> ByteStream:
        return self._inner

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._prefix:
            chunk, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            await anyio.lowlevel.checkpoint()
            return chunk
        return await self._inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._inner.send(item)

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        self._prefix = b""
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._inner.extra_attributes


class _LazyDialerStream(PrefixedStream):
    """A dialer stream whose last proposal was sent but not yet confirmed (V1Lazy).

    Sending goes straight through (the listener reads it after our proposal).
    The first receive reads the listener's header and echo; an ``na`` raises
    ProtocolNegotiationError there.
    """

    def __init__(self, inner: ByteStream, negotiation: DialerNegotiation) -> None:
        super().__init__(inner)
        self._negotiation: DialerNegotiation | None = negotiation

    async def receive(self, max_bytes: int = 65536) -> bytes:
        negotiation = self._negotiation
        if negotiation is not None:
            while not negotiation.confirmed:
                data = await _receive(self._inner, "before confirming the protocol")
                await _send(self._inner, negotiation.receive(data))
            self._prefix = negotiation.leftover
            self._negotiation = None
        return await super().receive(max_bytes)


async def _receive(stream: ByteStream, when: str) -> bytes:
    try:
        return await stream.receive(READ_BYTES)
    except anyio.EndOfStream:
        raise ProtocolNegotiationError(
            f"peer closed the stream {when}; it does not accept the protocol"
        ) from None
    except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise ConnectionClosedError(f"stream broke during protocol negotiation: {exc!r}") from exc


async def _send(stream: ByteStream, data: bytes) -> None:
    if not data:
        return
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise ConnectionClosedError(f"stream broke during protocol negotiation: {exc!r}") from exc


async def select_outbound(
    stream: ByteStream,
    protocols: Sequence[str],
    *,
    timeout_s: float,
    lazy: bool = False,
) -> tuple[str, ByteStream]:
    """Propose ``protocols`` in order; return the accepted one and the stream.

    With ``lazy=True`` the last proposal is not waited for (rust-libp2p's
    ``V1Lazy``): for a single protocol this returns as soon as the header
    and proposal are written, and the listener's answer is checked on the
    first ``receive`` of the returned stream, which raises
    ProtocolNegotiationError if it was ``na``. A peer that refuses is then
    only noticed by a protocol that reads.
    """
    negotiation = DialerNegotiation(protocols, lazy=lazy)
    with anyio.move_on_after(timeout_s) as scope:
        await _send(stream, negotiation.start())
        while negotiation.selected is None:
            data = await _receive(stream, "during negotiation")
            await _send(stream, negotiation.receive(data))
    if scope.cancelled_caught:
        raise TimeoutError(
            f"protocol negotiation for {', '.join(protocols)} took longer than {timeout_s:g} s"
        )
    selected = negotiation.selected
    if selected is None:  # pragma: no cover - the loop only ends with a selection
        raise ProtocolNegotiationError("negotiation ended without a protocol")
    if negotiation.confirmed:
        logger.debug("multistream: selected %s", selected)
        return selected, PrefixedStream(stream, negotiation.leftover)
    logger.debug("multistream: settled on %s without waiting (lazy)", selected)
    return selected, _LazyDialerStream(stream, negotiation)


async def select_inbound(
    stream: ByteStream,
    supported: Callable[[str], bool],
    list_protocols: Callable[[], Sequence[str]],
    *,
    timeout_s: float,
) -> tuple[str, ByteStream]:
    """Answer a dialer's proposals; return the accepted protocol and the stream."""
    negotiation = ListenerNegotiation(supported, list_protocols)
    with anyio.move_on_after(timeout_s) as scope:
        while negotiation.selected is None:
            data = await _receive(stream, "during negotiation")
            await _send(stream, negotiation.receive(data))
            if negotiation.error is not None:
                raise negotiation.error
    if scope.cancelled_caught:
        raise TimeoutError(f"inbound protocol negotiation took longer than {timeout_s:g} s")
    selected = negotiation.selected
    if selected is None:  # pragma: no cover - the loop only ends with a selection
        raise ProtocolNegotiationError("negotiation ended without a protocol")
    logger.debug("multistream: peer selected %s", selected)
    return selected, PrefixedStream(stream, negotiation.leftover)
