"""TCP transport: a listener and dialer that upgrade sockets to libp2p connections.

Every TCP connection is upgraded the way libp2p specifies (connections/README.md):

1. multistream-select ``/noise`` on the raw socket,
2. the Noise XX handshake, which authenticates the peer's identity key,
3. multistream-select ``/yamux/1.0.0`` over the encrypted channel,
4. a Yamux session: a :class:`~lattica_nb.transport.base.Connection` exactly
   like a QUIC connection, so nothing above knows which transport it is.

:func:`upgrade` runs steps 1–4 over any byte stream; a relayed circuit
(circuit relay v2) goes through the same function. :class:`TcpTransport`
owns the listening socket, the task of every live connection, and the
handshakes in progress; leaving its ``async with`` closes all of them.
"""

from __future__ import annotations

import builtins
import logging
from dataclasses import dataclass, field
from types import TracebackType

import anyio
import anyio.abc
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import (
    ConfigError,
    ConnectionClosedError,
    DialError,
    LatticaError,
    TimeoutError,
    TransportError,
)
from ..identity import PeerId, PrivateKey
from ..multiaddr import Multiaddr
from . import noise, yamux
from .negotiate import select_inbound, select_outbound

logger = logging.getLogger(__name__)

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class TcpSettings:
    """Tunables of the TCP transport.

    ``upgrade_timeout_s`` bounds the whole upgrade (both negotiations and
    the Noise handshake): a peer that connects and then says nothing is
    dropped after it. ``max_pending_upgrades`` bounds inbound sockets in the
    middle of an upgrade; more are closed at once (a flood of half-open
    peers costs at most that many sockets).
    """

    upgrade_timeout_s: float = 10.0
    max_pending_upgrades: int = 64
    yamux: yamux.YamuxSettings = field(default_factory=yamux.YamuxSettings)

    def __post_init__(self) -> None:
        if self.upgrade_timeout_s <= 0:
            raise ConfigError("upgrade_timeout_s must be positive")
        if self.max_pending_upgrades < 1:
            raise ConfigError("max_pending_upgrades must be at least 1")


async def upgrade(
    stream: ByteStream,
    identity: PrivateKey,
    *,
    is_initiator: bool,
    expected_peer: PeerId | None,
    local_addr: Multiaddr,
    remote_addr: Multiaddr,
    settings: TcpSettings,
) -> yamux.YamuxConnection:
    """Secure and multiplex ``stream``; the caller runs the result's ``run``.

    Raises HandshakeError/PeerIdMismatch when authentication fails,
    ProtocolNegotiationError when the peer speaks neither Noise nor Yamux,
    TimeoutError past ``settings.upgrade_timeout_s``. On failure the stream
    is left open: the caller closes it.
    """
    timeout_s = settings.upgrade_timeout_s
    with anyio.move_on_after(timeout_s) as scope:
        if is_initiator:
            _, plain = await select_outbound(stream, (noise.PROTOCOL_ID,), timeout_s=timeout_s)
        else:
            _, plain = await select_inbound(
                stream, lambda p: p == noise.PROTOCOL_ID, lambda: (noise.PROTOCOL_ID,),
                timeout_s=timeout_s,
            )
        secure = await noise.noise_handshake(
            plain, identity, is_initiator=is_initiator, expected_peer=expected_peer
        )
        if is_initiator:
            _, muxed = await select_outbound(secure, (yamux.PROTOCOL_ID,), timeout_s=timeout_s)
        else:
            _, muxed = await select_inbound(
                secure, lambda p: p == yamux.PROTOCOL_ID, lambda: (yamux.PROTOCOL_ID,),
                timeout_s=timeout_s,
            )
        return yamux.YamuxConnection(
            muxed,
            is_initiator=is_initiator,
            remote_peer=secure.remote_peer,
            local_addr=local_addr,
            remote_addr=remote_addr,
            settings=settings.yamux,
        )
    if scope.cancelled_caught:
        raise TimeoutError(f"connection upgrade took longer than {timeout_s:g} s")
    raise TransportError("connection upgrade ended without a connection")  # pragma: no cover


class TcpTransport:
    """A TCP listener plus dialer producing authenticated Yamux connections.

    Use as an async context manager::

        async with TcpTransport(identity, TcpSettings(), "127.0.0.1", 0) as tcp:
            conn = await tcp.dial(("127.0.0.1", 4001), expected_peer)
            inbound = await tcp.accept()
    """

    name = "tcp"

    def __init__(
        self,
        identity: PrivateKey,
        settings: TcpSettings,
        host: str | None,
        port: int = 0,
        *,
        max_connections: int = 1024,
        accept_backlog: int = 64,
    ) -> None:
        self._identity = identity
        self._settings = settings
        self._host = host
        self._port = port
        self._max_connections = max_connections
        self._listener: anyio.abc.SocketListener | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._connections: set[yamux.YamuxConnection] = set()
        self._pending_upgrades = 0
        self._accepted_send: MemoryObjectSendStream[yamux.YamuxConnection]
        self._accepted_receive: MemoryObjectReceiveStream[yamux.YamuxConnection]
        self._accepted_send, self._accepted_receive = anyio.create_memory_object_stream[
            yamux.YamuxConnection
        ](accept_backlog)
        self.listen_addr: Multiaddr | None = None
        """Where the listener accepts; None for a dial-only transport (``host=None``)."""
        self.refused_connections = 0
        """Inbound sockets closed unheard because of a limit (a counter for tests and logs)."""

    # -- lifecycle -----------------------------------------------------------------------
    async def __aenter__(self) -> TcpTransport:
        listener: anyio.abc.SocketListener | None = None
        if self._host is not None:
            try:
                multi = await anyio.create_tcp_listener(
                    local_host=self._host, local_port=self._port
                )
            except OSError as exc:
                raise TransportError(
                    f"cannot listen on tcp {self._host}:{self._port}: {exc}"
                ) from exc
            first = multi.listeners[0]
            if not isinstance(first, anyio.abc.SocketListener):  # pragma: no cover
                raise TransportError(f"unexpected TCP listener type {type(first).__name__}")
            listener = first
            host, port = _host_port(listener.extra(SocketAttribute.local_address))
            self.listen_addr = Multiaddr.from_host_port("tcp", str(host), int(port))
        self._listener = listener
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        if listener is not None:
            self._tg.start_soon(self._accept_loop, listener, self._tg)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        with anyio.move_on_after(2.0, shield=True):
            for conn in list(self._connections):
                await conn.aclose("node shutting down")
            if self._listener is not None:
                await self._listener.aclose()
        self._accepted_send.close()
        self._accepted_receive.close()
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(exc_type, exc, tb)
        return None

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # -- dialing and accepting ----------------------------------------------------------------
    async def dial(
        self, addr: Address, expected_peer: PeerId | None, *, timeout_s: float | None = None
    ) -> yamux.YamuxConnection:
        """Connect to ``addr`` and upgrade; the peer must be ``expected_peer`` if given."""
        tg = self._require_running()
        host, port = addr
        timeout = timeout_s or self._settings.upgrade_timeout_s
        try:
            with anyio.fail_after(timeout):
                sock = await anyio.connect_tcp(host, port)
        except builtins.TimeoutError:
            raise DialError(f"TCP connect to {host}:{port} timed out") from None
        except OSError as exc:
            raise DialError(f"TCP connect to {host}:{port} failed: {exc}") from exc
        try:
            conn = await upgrade(
                sock,
                self._identity,
                is_initiator=True,
                expected_peer=expected_peer,
                local_addr=_addr_of(sock, local=True),
                remote_addr=_addr_of(sock, local=False),
                settings=self._settings,
            )
            if self._tg is not tg:  # the transport closed during the upgrade
                await conn.aclose("the TCP transport is closing")
                raise ConnectionClosedError("the TCP transport closed while dialing")
            await tg.start(self._run_connection, conn)
        except BaseException as exc:
            with anyio.move_on_after(1.0, shield=True):
                await sock.aclose()
            if isinstance(exc, (anyio.EndOfStream, anyio.BrokenResourceError)):
                raise DialError(f"{host}:{port} closed the connection during the upgrade") from exc
            raise
        return conn

    async def accept(self) -> yamux.YamuxConnection:
        """The next inbound connection whose upgrade completed."""
        return await self._accepted_receive.receive()

    # -- internals ----------------------------------------------------------------------------
    def _require_running(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise ConnectionClosedError("the TCP transport is not running")
        return self._tg

    async def _accept_loop(
        self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup
    ) -> None:
        while True:
            try:
                sock = await listener.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:  # e.g. EMFILE: keep serving the connections we have
                logger.warning("TCP accept failed: %s", exc)
                await anyio.sleep(0.1)  # back off from a busy error loop, not a readiness wait
                continue
            too_many = len(self._connections) >= self._max_connections
            if too_many or self._pending_upgrades >= self._settings.max_pending_upgrades:
                self.refused_connections += 1
                logger.warning("refusing a TCP connection: %s",
                               "connection limit" if too_many else "too many pending handshakes")
                await sock.aclose()
                continue
            self._pending_upgrades += 1
            tg.start_soon(self._upgrade_inbound, sock, tg)

    async def _upgrade_inbound(
        self, sock: anyio.abc.SocketStream, tg: anyio.abc.TaskGroup
    ) -> None:
        remote = _addr_of(sock, local=False)
        try:
            try:
                conn = await upgrade(
                    sock,
                    self._identity,
                    is_initiator=False,
                    expected_peer=None,
                    local_addr=_addr_of(sock, local=True),
                    remote_addr=remote,
                    settings=self._settings,
                )
            finally:
                self._pending_upgrades -= 1
        except (LatticaError, anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
            logger.info("inbound TCP connection from %s failed its upgrade: %s", remote, exc)
            with anyio.move_on_after(1.0, shield=True):
                await sock.aclose()
            return
        await tg.start(self._run_connection, conn)
        try:
            self._accepted_send.send_nowait(conn)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            logger.warning("accept backlog full; closing TCP connection from %s", remote)
            await conn.aclose("accept backlog full")

    async def _run_connection(
        self,
        conn: yamux.YamuxConnection,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self._connections.add(conn)
        try:
            await conn.run(task_status=task_status)
        finally:
            self._connections.discard(conn)


def _addr_of(sock: anyio.abc.SocketStream, *, local: bool) -> Multiaddr:
    attribute = SocketAttribute.local_address if local else SocketAttribute.remote_address
    try:
        address = sock.extra(attribute)
    except anyio.TypedAttributeLookupError as exc:  # the socket is already closed
        raise ConnectionClosedError("the TCP connection closed as it was set up") from exc
    host, port = _host_port(address)
    return Multiaddr.from_host_port("tcp", host, port)


def _host_port(address: object) -> tuple[str, int]:
    """(host, port) of an IPv4 or IPv6 socket address tuple."""
    if not isinstance(address, tuple) or len(address) < 2:
        raise TransportError(f"not an IP socket address: {address!r}")
    return str(address[0]), int(address[1])
