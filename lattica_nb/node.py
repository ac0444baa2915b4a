"""The Node: composition root of transports, connections and protocols.

``async with Node(config) as node`` starts the listeners and the node's one
task group; leaving the block closes every connection and socket and
cancels every task it started. Protocols register by id on the node's
router (:meth:`Node.set_handler`); identify and ping are registered the same
way as any application protocol.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .config import NodeConfig
from .errors import DialError, LatticaError, LocalProtocolError, TransportError
from .events import NodeEvent, PeerConnected, PeerDisconnected, PeerIdentified
from .identity import PeerId, PrivateKey, load_or_create_identity
from .multiaddr import Multiaddr
from .protocols import identify, ping
from .protocols.identify import IdentifyInfo
from .protocols.router import Handler, Router, Stream, open_protocol_stream
from .transport.base import Connection
from .transport.manager import ConnectionManager, Dialer
from .transport.quic.endpoint import QuicEndpoint
from .transport.tcp import TcpTransport

if TYPE_CHECKING:
    from .dht.service import Dht
    from .sync.service import Sync

logger = logging.getLogger(__name__)

EVENT_BUFFER = 256
"""Events a subscriber may fall behind by before newer ones are dropped for it."""


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What the node knows about a peer."""

    peer_id: PeerId
    addrs: tuple[Multiaddr, ...]
    connected: bool
    agent_version: str | None
    protocol_version: str | None
    protocols: tuple[str, ...]
    observed_addr: Multiaddr | None
    """Our address as this peer saw it (from its identify message)."""


class Node:
    """A libp2p-compatible peer. See the module docstring."""

    def __init__(self, config: NodeConfig | None = None) -> None:
        self.config = config or NodeConfig()
        self._identity = _identity_for(self.config)
        self.peer_id = PeerId.from_public_key(self._identity.public_key)
        self._router = Router(negotiation_timeout_s=self.config.negotiation_timeout_s)
        self._endpoints: list[QuicEndpoint] = []
        self._tcp: list[TcpTransport] = []
        self._manager: ConnectionManager | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._identified: dict[PeerId, IdentifyInfo] = {}
        self._identify_done: dict[PeerId, anyio.Event] = {}
        self._subscribers: list[MemoryObjectSendStream[NodeEvent]] = []
        self._running = False
        self._stack: AsyncExitStack | None = None
        self._dht: Dht | None = None
        self._sync: Sync | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> Node:
        cfg = self.config
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._tg.cancel_scope.cancel)
            stack.callback(self._stopping)
            for addr in cfg.listen_addrs:
                host, port = addr.host_port()
                if addr.transport() == "tcp":
                    tcp = TcpTransport(self._identity, cfg.tcp, host, port,
                                       max_connections=cfg.max_connections)
                    await stack.enter_async_context(tcp)
                    self._tcp.append(tcp)
                    self._tg.start_soon(self._accept_loop, tcp)
                    continue
                endpoint = QuicEndpoint(
                    self._identity, cfg.quic, host, port, max_connections=cfg.max_connections
                )
                await stack.enter_async_context(endpoint)
                self._endpoints.append(endpoint)
                self._tg.start_soon(self._accept_loop, endpoint)
            if not self._tcp:  # dial-only: a node that does not listen on TCP still dials it
                tcp = TcpTransport(self._identity, cfg.tcp, None,
                                   max_connections=cfg.max_connections)
                await stack.enter_async_context(tcp)
                self._tcp.append(tcp)
            dialers: list[Dialer] = [*self._tcp[:1], *self._endpoints[:1]]
            self._manager = ConnectionManager(
                local_peer=self.peer_id,
                dialers=dialers,
                max_connections=cfg.max_connections,
                max_connections_per_peer=cfg.max_connections_per_peer,
                idle_timeout_s=cfg.idle_timeout_s,
                dial_timeout_s=cfg.dial_timeout_s,
                on_connection=self._on_connection,
            )
            self._router.add(identify.PROTOCOL_ID, self._serve_identify)
            self._router.add(identify.PUSH_PROTOCOL_ID, self._serve_identify_push)
            self._router.add(ping.PROTOCOL_ID, ping.serve_ping)
            self._router.on_change = self._protocols_changed
            self._tg.start_soon(self._manager.run_idle_sweep)
            self._running = True
            if cfg.dht.enabled:
                from .dht.service import Dht  # here: keeps `import lattica_nb.node` light

                self._dht = Dht(self, self._identity, cfg.dht)
                await self._tg.start(self._dht.run)
            if cfg.sync.enabled:
                from .sync.service import Sync  # here: pycrdt loads only when rooms are on

                self._sync = Sync(self, self._identity, cfg.sync)
                await self._tg.start(self._sync.run)
                # Unwinds before the transports close: rooms say GOODBYE on live connections.
                stack.push_async_callback(self._sync.aclose)
            for addr in cfg.bootstrap_addrs:
                self._tg.start_soon(self._bootstrap, addr)
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack
        logger.info("node %s listening on %s", self.peer_id,
                    ", ".join(str(a) for a in self.listen_addrs))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)
        return None

    def _stopping(self) -> None:
        """First step of shutdown (runs after the endpoints closed every connection)."""
        self._running = False
        self._dht = None
        self._sync = None
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()
        self._endpoints.clear()
        self._tcp.clear()

    # -- properties ------------------------------------------------------------------------
    @property
    def listen_addrs(self) -> list[Multiaddr]:
        """Full multiaddrs (with /p2p/) others can dial."""
        return [a.with_peer_id(self.peer_id) for a in self._listen_addrs()]

    def _listen_addrs(self) -> list[Multiaddr]:
        addrs = [e.listen_addr for e in self._endpoints]
        addrs += [t.listen_addr for t in self._tcp if t.listen_addr is not None]
        return addrs

    @property
    def protocols(self) -> tuple[str, ...]:
        return self._router.protocols

    @property
    def dht(self) -> Dht:
        """The Kademlia DHT: ``put``, ``get``, ``provide``, ``find_providers``, ``find_peer``."""
        if self._dht is None:
            if not self._running:
                raise LocalProtocolError("the node is not running; use 'async with Node(...)'")
            raise LocalProtocolError("the DHT is disabled in this node's config (dht.enabled)")
        return self._dht

    @property
    def sync(self) -> Sync:
        """Shared Yjs rooms: ``await node.sync.open("sweep")``."""
        if self._sync is None:
            if not self._running:
                raise LocalProtocolError("the node is not running; use 'async with Node(...)'")
            raise LocalProtocolError("room sync is disabled in this node's config (sync.enabled)")
        return self._sync

    # -- public API --------------------------------------------------------------------------
    async def connect(self, addr: Multiaddr | PeerId | str, *,
                      identify_timeout_s: float | None = None) -> PeerInfo:
        """Connect to a peer (reusing a live connection) and wait for identify.

        ``addr`` should end in ``/p2p/<peer id>``; the remote must then prove
        that identity in the handshake. A bare peer id (``PeerId`` or its
        text) is looked up in the address book, then in the DHT.
        """
        if isinstance(addr, PeerId) or (isinstance(addr, str) and not addr.startswith("/")):
            peer_id = addr if isinstance(addr, PeerId) else PeerId.from_string(addr)
            conn = await self._connect_peer(peer_id, discover=True)
        else:
            target = Multiaddr(addr) if isinstance(addr, str) else addr
            conn = await self._require_manager().connect(target.peer_id, [target])
        peer = conn.remote_peer
        done = self._identify_done.setdefault(peer, anyio.Event())
        with anyio.move_on_after(identify_timeout_s or self.config.identify_timeout_s):
            await done.wait()
        return self.peer_info(peer)

    def peers(self) -> list[PeerInfo]:
        """Peers with at least one open connection."""
        return [self.peer_info(p) for p in self._require_manager().peers()]

    def peer_info(self, peer: PeerId) -> PeerInfo:
        manager = self._require_manager()
        info = self._identified.get(peer)
        return PeerInfo(
            peer_id=peer,
            addrs=tuple(a.with_peer_id(peer) for a in manager.addresses(peer)),
            connected=bool(manager.connections(peer)),
            agent_version=info.agent_version if info else None,
            protocol_version=info.protocol_version if info else None,
            protocols=info.protocols if info else (),
            observed_addr=info.observed_addr if info else None,
        )

    async def ping(self, peer: PeerId | str, *, count: int = 1, timeout_s: float = 5.0
                   ) -> list[float]:
        """Round-trip times in seconds of ``count`` pings over one stream."""
        if count < 1:
            raise LocalProtocolError("count must be at least 1")
        async with await self.open_stream(peer, ping.PROTOCOL_ID) as stream:
            pinger = ping.Pinger(stream)
            return [await pinger.ping(timeout_s=timeout_s) for _ in range(count)]

    async def open_stream(self, peer: PeerId | str, protocols: str | Sequence[str], *,
                          lazy: bool = False, discover: bool = True) -> Stream:
        """Open a stream to ``peer`` speaking the first of ``protocols`` it accepts.

        ``lazy=True`` (one protocol the peer is known to speak) sends data
        without waiting for the peer to confirm the protocol. ``discover``:
        when no address of ``peer`` is known, look it up in the DHT.
        """
        target = PeerId.from_string(peer) if isinstance(peer, str) else peer
        wanted = (protocols,) if isinstance(protocols, str) else tuple(protocols)
        if not wanted:
            raise LocalProtocolError("name at least one protocol id")
        conn = await self._connect_peer(target, discover=discover)
        self._require_manager().touch(conn)
        return await open_protocol_stream(conn, wanted, lazy=lazy,
                                          timeout_s=self.config.negotiation_timeout_s)

    async def _connect_peer(self, peer: PeerId, *, discover: bool) -> Connection:
        manager = self._require_manager()
        if (discover and self._dht is not None and not manager.connections(peer)
                and not manager.addresses(peer)):
            found = await self._dht.find_peer(peer)
            if found is None:
                raise DialError(f"no known address for peer {peer}, and the DHT did not "
                                "find one; pass a multiaddr to connect to")
        return await manager.connect(peer, [])

    def add_addresses(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> None:
        """Remember addresses of ``peer`` for later dials."""
        self._require_manager().add_addresses(peer, list(addrs))

    def known_addresses(self, peer: PeerId) -> list[Multiaddr]:
        """Addresses of ``peer`` in the address book (without /p2p/)."""
        return self._require_manager().addresses(peer)

    def is_connected(self, peer: PeerId) -> bool:
        return bool(self._require_manager().connections(peer))

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Serve inbound streams of ``protocol`` with ``handler(stream)``."""
        self._router.add(protocol, handler)

    def remove_handler(self, protocol: str) -> None:
        self._router.remove(protocol)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[MemoryObjectReceiveStream[NodeEvent]]:
        """Receive node events (PeerConnected, PeerIdentified, PeerDisconnected)."""
        send, receive = anyio.create_memory_object_stream[NodeEvent](EVENT_BUFFER)
        self._subscribers.append(send)
        try:
            async with receive:
                yield receive
        finally:
            if send in self._subscribers:
                self._subscribers.remove(send)
            send.close()

    # -- connections -------------------------------------------------------------------------
    def _require_manager(self) -> ConnectionManager:
        if self._manager is None or not self._running:
            raise LocalProtocolError("the node is not running; use 'async with Node(...) as node'")
        return self._manager

    async def _accept_loop(self, endpoint: QuicEndpoint | TcpTransport) -> None:
        while True:
            try:
                conn = await endpoint.accept()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return
            manager = self._manager
            if manager is None or not manager.admit(conn):
                await conn.aclose("connection limit")

    def _on_connection(self, conn: Connection) -> None:
        """Called by the manager for every admitted connection."""
        if self._tg is None:
            return
        manager = self._require_manager()
        peer = conn.remote_peer
        if len(manager.connections(peer)) == 1:
            self._publish(PeerConnected(peer, conn.remote_addr, not conn.is_initiator))
        self._tg.start_soon(self._serve_connection, conn)
        self._tg.start_soon(self._identify_peer, conn)

    async def _serve_connection(self, conn: Connection) -> None:
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        raw = await conn.accept_stream()
                    except TransportError:
                        break
                    if self._manager is not None:
                        self._manager.touch(conn)
                    tg.start_soon(self._router.serve, raw, conn)
                tg.cancel_scope.cancel()
        finally:
            self._connection_gone(conn)

    def _connection_gone(self, conn: Connection) -> None:
        manager = self._manager
        if manager is None:
            return
        peer = conn.remote_peer
        if manager.remove(conn):
            self._identify_done.pop(peer, None)
            reason = str(conn.close_error or "closed")
            self._publish(PeerDisconnected(peer, reason))

    async def _bootstrap(self, addr: Multiaddr) -> None:
        try:
            info = await self.connect(addr)
        except LatticaError as exc:
            logger.warning("bootstrap peer %s unreachable: %s", addr, exc)
            return
        logger.info("connected to bootstrap peer %s", info.peer_id)

    # -- identify -------------------------------------------------------------------------------
    def _identify_info(self, conn: Connection) -> IdentifyInfo:
        return IdentifyInfo(
            protocol_version=self.config.protocol_version,
            agent_version=self.config.agent_version,
            public_key=self._identity.public_key,
            listen_addrs=tuple(self._listen_addrs()),
            observed_addr=conn.remote_addr,
            protocols=self._router.protocols,
            signed_peer_record=None,
        )

    async def _serve_identify(self, stream: Stream) -> None:
        await identify.send_identify(stream, self._identify_info(stream.connection))

    async def _serve_identify_push(self, stream: Stream) -> None:
        info = await identify.receive_identify(stream, timeout_s=self.config.identify_timeout_s)
        self._record_identify(stream.connection, info)

    async def _identify_peer(self, conn: Connection) -> None:
        peer = conn.remote_peer
        try:
            stream = await open_protocol_stream(
                conn, (identify.PROTOCOL_ID,), timeout_s=self.config.negotiation_timeout_s
            )
            async with stream:
                info = await identify.receive_identify(
                    stream, timeout_s=self.config.identify_timeout_s
                )
        except (LatticaError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            if not conn.is_closed:
                logger.info("identify with %s failed: %s", peer.short(), exc)
            return
        self._record_identify(conn, info)

    def _record_identify(self, conn: Connection, info: IdentifyInfo) -> None:
        peer = conn.remote_peer
        if info.public_key is not None and not peer.matches(info.public_key):
            logger.warning("peer %s sent identify with another peer's key; ignored", peer.short())
            return
        self._identified[peer] = info
        if self._manager is not None:
            self._manager.add_addresses(peer, list(info.listen_addrs))
        if self._dht is not None:
            self._dht.peer_identified(peer, info.protocols, info.listen_addrs)
        self._identify_done.setdefault(peer, anyio.Event()).set()
        self._publish(PeerIdentified(peer, info))

    def _protocols_changed(self) -> None:
        if self._tg is not None and self._running:
            self._tg.start_soon(self._push_identify)

    async def _push_identify(self) -> None:
        manager = self._require_manager()
        for peer in list(self._identified):
            conns = manager.connections(peer)
            info = self._identified.get(peer)
            if not conns or info is None or identify.PUSH_PROTOCOL_ID not in info.protocols:
                continue
            try:
                stream = await open_protocol_stream(
                    conns[0], (identify.PUSH_PROTOCOL_ID,),
                    timeout_s=self.config.negotiation_timeout_s,
                )
                async with stream:
                    await identify.send_identify(stream, self._identify_info(conns[0]))
            except (LatticaError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
                logger.debug("identify push to %s failed: %s", peer.short(), exc)

    # -- events ------------------------------------------------------------------------
    def _publish(self, event: NodeEvent) -> None:
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except anyio.WouldBlock:
                logger.warning("an event subscriber is %d events behind; dropping %s",
                               EVENT_BUFFER, type(event).__name__)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove(send)


def _identity_for(config: NodeConfig) -> PrivateKey:
    if config.identity is not None:
        return config.identity
    if config.ephemeral:
        return PrivateKey.generate()
    return load_or_create_identity(config.key_path)

