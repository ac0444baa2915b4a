"""Kademlia messages over libp2p streams: one request (and its answer) per stream.

The outbound side opens a stream per request, writes one uvarint-framed
message and reads one framed answer (none for ADD_PROVIDER). The inbound
side reads requests one after another on a stream (rust-libp2p may send
several) and answers each with what the sans-IO :class:`KadServer` returns.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import anyio

from ..errors import DecodeError, LatticaError, TransportError
from ..identity import PeerId
from ..multiaddr import Multiaddr
from ..protocols.router import Stream
from ..wire.framing import FrameReader, frame, read_frame
from .messages import Message, MessageLimits, MessageType, decode_message, encode_message

__all__ = ["DhtHost", "InboundRequests", "request"]

logger = logging.getLogger(__name__)

INBOUND_IDLE_TIMEOUT_S = 30.0
"""An inbound stream with no next request for this long is closed."""


class DhtHost(Protocol):
    """What the DHT needs from the node it runs in (the Node implements it)."""

    @property
    def peer_id(self) -> PeerId: ...

    @property
    def listen_addrs(self) -> list[Multiaddr]: ...

    async def open_stream(self, peer: PeerId | str, protocols: str | Sequence[str], *,
                          lazy: bool = False, discover: bool = True) -> Stream: ...

    def set_handler(self, protocol: str, handler: Callable[[Stream], Awaitable[None]]
                    ) -> None: ...

    def remove_handler(self, protocol: str) -> None: ...

    def add_addresses(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> None: ...

    def known_addresses(self, peer: PeerId) -> list[Multiaddr]: ...

    def is_connected(self, peer: PeerId) -> bool: ...


async def request(host: DhtHost, peer: PeerId, protocol: str, message: Message, *,
                  limits: MessageLimits, timeout_s: float) -> Message | None:
    """Send ``message`` to ``peer`` and return its answer (None for ADD_PROVIDER).

    Raises TimeoutError, TransportError/DialError when the peer cannot be
    reached, DecodeError (and RemoteProtocolError) when it answers badly.
    """
    expects_answer = message.type is not MessageType.ADD_PROVIDER
    with anyio.fail_after(timeout_s):
        try:
            stream = await host.open_stream(peer, protocol, lazy=True, discover=False)
            async with stream:
                await stream.send(frame(encode_message(message)))
                if not expects_answer:
                    await stream.send_eof()
                    return None
                data = await read_frame(stream, max_bytes=limits.max_message_bytes)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream) as exc:
            raise TransportError(f"kad stream to {peer.short()} broke: {exc!r}") from exc
    answer = decode_message(data, limits)
    if answer.type is not message.type:
        raise DecodeError(
            f"peer answered a {message.type.name} request with {answer.type.name}"
        )
    return answer


Answer = Callable[[PeerId, Message], "Message | None"]
Penalize = Callable[[PeerId, str], None]


class InboundRequests:
    """Serves inbound Kademlia streams with a request handler."""

    def __init__(self, answer: Answer, penalize: Penalize, limits: MessageLimits) -> None:
        self._answer = answer
        self._penalize = penalize
        self._limits = limits

    async def serve(self, stream: Stream) -> None:
        peer = stream.remote_peer
        reader = FrameReader(stream, max_bytes=self._limits.max_message_bytes)
        while True:
            try:
                with anyio.fail_after(INBOUND_IDLE_TIMEOUT_S):
                    data = await reader.read_or_none()
            except DecodeError as exc:
                self._penalize(peer, f"malformed kad frame: {exc}")
                await stream.reset()
                return
            except builtins.TimeoutError:
                await stream.reset()
                return
            if data is None:
                return
            try:
                message = decode_message(data, self._limits)
            except DecodeError as exc:
                self._penalize(peer, f"malformed kad message: {exc}")
                await stream.reset()
                return
            try:
                answer = self._answer(peer, message)
            except LatticaError as exc:
                logger.info("peer %s: kad %s refused: %s", peer.short(), message.type.name, exc)
                await stream.reset()
                return
            if message.type is MessageType.ADD_PROVIDER:
                continue
            if answer is None:
                await stream.reset()
                return
            await stream.send(frame(encode_message(answer)))

