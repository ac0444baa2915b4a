"""Kademlia messages over libp2p streams: one request (and its answer) per stream.

The outbound side writes one uvarint-framed request and reads one framed
answer (none for ADD_PROVIDER, which gets a stream of its own); an answered
stream is kept a few seconds and carries the next request to that peer. The inbound
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

__all__ = ["DhtHost", "InboundRequests", "Requester"]

logger = logging.getLogger(__name__)

INBOUND_IDLE_TIMEOUT_S = 30.0
"""An inbound stream with no next request for this long is closed."""
IDLE_STREAM_S = 5.0
"""How long an answered outbound stream is kept for the next request to that peer."""
MAX_IDLE_STREAMS_PER_PEER = 2


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


class Requester:
    """Sends Kademlia requests, reusing answered streams for the next request to a peer.

    Opening a stream costs a round trip or two (rust-libp2p and our own
    server read further requests on a stream they answered), so a stream
    whose request was answered is kept for ``idle_stream_s`` and reused. A
    kept stream that broke meanwhile (the peer closed it) is dropped and the
    request goes out on a fresh one; requests are idempotent.
    """

    def __init__(self, host: DhtHost, protocol: str, limits: MessageLimits, *,
                 idle_stream_s: float = IDLE_STREAM_S,
                 max_idle_per_peer: int = MAX_IDLE_STREAMS_PER_PEER) -> None:
        self._host = host
        self._protocol = protocol
        self._limits = limits
        self._idle_s = idle_stream_s
        self._max_idle = max_idle_per_peer
        self._idle: dict[PeerId, list[tuple[Stream, float]]] = {}

    async def request(self, peer: PeerId, message: Message, *, timeout_s: float
                      ) -> Message | None:
        """Send ``message`` to ``peer`` and return its answer (None for ADD_PROVIDER).

        Raises TimeoutError, TransportError/DialError when the peer cannot be
        reached, DecodeError (and RemoteProtocolError) when it answers badly.
        """
        with anyio.fail_after(timeout_s):
            if message.type is MessageType.ADD_PROVIDER:
                await self._announce(peer, message)
                return None
            kept = self._take(peer)
            if kept is not None:
                try:
                    return await self._exchange(peer, kept, message)
                except TransportError as exc:
                    logger.debug("kept kad stream to %s broke (%s); opening another",
                                 peer.short(), exc)
            stream = await self._open(peer)
            return await self._exchange(peer, stream, message)

    async def aclose(self) -> None:
        """Close every kept stream."""
        idle, self._idle = self._idle, {}
        for kept in idle.values():
            for stream, _ in kept:
                await _close(stream)

    async def prune(self) -> None:
        """Close kept streams older than ``idle_stream_s``."""
        now = anyio.current_time()
        for peer in list(self._idle):
            kept = self._idle[peer]
            fresh = [(s, t) for s, t in kept if now - t < self._idle_s]
            for stream, t in kept:
                if now - t >= self._idle_s:
                    await _close(stream)
            if fresh:
                self._idle[peer] = fresh
            else:
                del self._idle[peer]

    def _take(self, peer: PeerId) -> Stream | None:
        """A kept stream still young enough; older ones are left to :meth:`prune`."""
        kept = self._idle.get(peer)
        now = anyio.current_time()
        while kept:
            stream, since = kept[-1]
            if stream.connection.is_closed:
                kept.pop()
                continue
            if now - since < self._idle_s:
                kept.pop()
                return stream
            return None
        return None

    def _give_back(self, peer: PeerId, stream: Stream) -> bool:
        kept = self._idle.setdefault(peer, [])
        if len(kept) >= self._max_idle:
            return False
        kept.append((stream, anyio.current_time()))
        return True

    async def _open(self, peer: PeerId) -> Stream:
        try:
            return await self._host.open_stream(peer, self._protocol, lazy=True, discover=False)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream) as exc:
            raise TransportError(f"kad stream to {peer.short()} broke: {exc!r}") from exc

    async def _exchange(self, peer: PeerId, stream: Stream, message: Message) -> Message:
        try:
            await stream.send(frame(encode_message(message)))
            data = await read_frame(stream, max_bytes=self._limits.max_message_bytes)
            answer = decode_message(data, self._limits)
            if answer.type is not message.type:
                raise DecodeError(
                    f"peer answered a {message.type.name} request with {answer.type.name}"
                )
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await stream.reset()
            if isinstance(exc, (anyio.BrokenResourceError, anyio.ClosedResourceError,
                                anyio.EndOfStream)):
                raise TransportError(f"kad stream to {peer.short()} broke: {exc!r}") from exc
            raise
        if not self._give_back(peer, stream):
            await _close(stream)
        return answer

    async def _announce(self, peer: PeerId, message: Message) -> None:
        stream = await self._open(peer)
        try:
            async with stream:
                await stream.send(frame(encode_message(message)))
                await stream.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise TransportError(f"kad stream to {peer.short()} broke: {exc!r}") from exc


async def _close(stream: Stream) -> None:
    with anyio.move_on_after(1.0, shield=True):
        try:
            await stream.aclose()
        except (LatticaError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


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

