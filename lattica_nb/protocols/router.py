"""One router from protocol ids to handlers (iroh's ``Router::accept(alpn, handler)``).

Every inbound stream is negotiated with multistream-select against the
registered protocol ids and handed to that protocol's handler as a
:class:`Stream`. A handler that raises never takes the node down: the error
is logged against the peer and the stream is reset.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

import anyio
import anyio.abc

from ..errors import LatticaError, LocalProtocolError, ProtocolNegotiationError, TransportError
from ..identity import PeerId
from ..transport.base import Connection, RawStream
from ..transport.negotiate import select_inbound, select_outbound

logger = logging.getLogger(__name__)

MAX_PROTOCOL_ID_BYTES = 256


class Stream(anyio.abc.ByteStream):
    """A negotiated protocol stream to one peer."""

    def __init__(
        self,
        inner: anyio.abc.ByteStream,
        raw: RawStream,
        *,
        protocol: str,
        remote_peer: PeerId,
        connection: Connection,
    ) -> None:
        self._inner = inner
        self._raw = raw
        self.protocol = protocol
        self.remote_peer = remote_peer
        self.connection = connection

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._inner.send(item)

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def reset(self) -> None:
        """Abort the stream in both directions, telling the peer."""
        await self._raw.reset()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
            await self.reset()
        else:
            with anyio.move_on_after(1.0, shield=True):
                await self.aclose()

    def __repr__(self) -> str:
        return f"<Stream {self.protocol} {self.remote_peer.short()}>"


Handler = Callable[[Stream], Awaitable[None]]


def check_protocol_id(protocol: str) -> None:
    if not protocol.startswith("/") or "\n" in protocol:
        raise LocalProtocolError(
            f"protocol id {protocol!r} must start with '/' and have no newline"
        )
    if len(protocol.encode()) > MAX_PROTOCOL_ID_BYTES:
        raise LocalProtocolError(f"protocol id longer than {MAX_PROTOCOL_ID_BYTES} bytes")


class Router:
    """Maps protocol ids to handlers and serves inbound streams."""

    def __init__(self, *, negotiation_timeout_s: float) -> None:
        self._handlers: dict[str, Handler] = {}
        self._timeout_s = negotiation_timeout_s
        self.on_change: Callable[[], None] | None = None

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    def add(self, protocol: str, handler: Handler) -> None:
        check_protocol_id(protocol)
        if protocol in self._handlers:
            raise LocalProtocolError(f"a handler for {protocol} is already registered")
        self._handlers[protocol] = handler
        if self.on_change is not None:
            self.on_change()

    def remove(self, protocol: str) -> None:
        if self._handlers.pop(protocol, None) is not None and self.on_change is not None:
            self.on_change()

    async def serve(self, raw: RawStream, connection: Connection) -> None:
        """Negotiate one inbound stream and run its handler to completion."""
        peer = connection.remote_peer
        try:
            protocol, inner = await select_inbound(
                raw,
                lambda proposed: proposed in self._handlers,
                lambda: tuple(self._handlers),
                timeout_s=self._timeout_s,
            )
        except ProtocolNegotiationError as exc:
            logger.info("peer %s: no common protocol (%s)", peer.short(), exc)
            await raw.reset()
            return
        except (LatticaError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            logger.debug("peer %s: inbound negotiation failed: %s", peer.short(), exc)
            await raw.reset()
            return
        handler = self._handlers.get(protocol)
        if handler is None:  # removed while negotiating
            await raw.reset()
            return
        stream = Stream(inner, raw, protocol=protocol, remote_peer=peer, connection=connection)
        try:
            await handler(stream)
        except anyio.get_cancelled_exc_class():
            raise
        except (TransportError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            logger.debug("peer %s: %s stream ended under its handler: %s", peer.short(), protocol,
                         exc)
            await raw.reset()
            return
        except Exception as exc:
            logger.warning("peer %s: handler for %s failed: %r", peer.short(), protocol, exc)
            await raw.reset()
            return
        with anyio.move_on_after(1.0, shield=True):
            await stream.aclose()


async def open_protocol_stream(
    connection: Connection, protocols: tuple[str, ...], *, timeout_s: float, lazy: bool = False
) -> Stream:
    """Open a stream on ``connection`` and select the first protocol the peer accepts.

    ``lazy=True`` (one protocol only) does not wait for the peer to confirm
    it: the first bytes go out with the proposal, saving a round trip, and a
    refusal surfaces on the first read as ProtocolNegotiationError. Use it
    for a protocol the peer announced (identify), like rust-libp2p's V1Lazy.
    """
    for protocol in protocols:
        check_protocol_id(protocol)
    if lazy and len(protocols) != 1:
        raise LocalProtocolError("lazy negotiation proposes exactly one protocol")
    raw = await connection.open_stream()
    try:
        protocol, inner = await select_outbound(raw, protocols, timeout_s=timeout_s, lazy=lazy)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await raw.reset()
        raise
    return Stream(
        inner, raw, protocol=protocol, remote_peer=connection.remote_peer, connection=connection
    )
