"""Connection manager: which connections exist to which peer, and limits.

It knows addresses (an address book fed by dials and identify), dials
through the transports it was given, enforces the total and per-peer
connection limits, and closes connections that stayed idle (no open stream)
longer than the idle timeout. It tells its owner about new and closed
connections through two callbacks; it starts no tasks of its own except the
idle sweep the owner starts with :meth:`run_idle_sweep`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from ..errors import DialError, LatticaError, LimitExceeded
from ..identity import PeerId
from ..multiaddr import Multiaddr
from .base import Connection
from .quic.endpoint import QuicEndpoint

logger = logging.getLogger(__name__)

MAX_ADDRS_PER_PEER = 32


class ConnectionManager:
    def __init__(
        self,
        *,
        quic: QuicEndpoint | None,
        max_connections: int,
        max_connections_per_peer: int,
        idle_timeout_s: float,
        dial_timeout_s: float,
        on_connection: Callable[[Connection], None],
    ) -> None:
        self._quic = quic
        self._max_connections = max_connections
        self._max_per_peer = max_connections_per_peer
        self._idle_timeout_s = idle_timeout_s
        self._dial_timeout_s = dial_timeout_s
        self._on_connection = on_connection
        self._by_peer: dict[PeerId, list[Connection]] = {}
        self._last_busy: dict[Connection, float] = {}
        self._addrs: dict[PeerId, dict[Multiaddr, None]] = {}
        self._dialing: dict[PeerId, anyio.Event] = {}

    # -- queries -------------------------------------------------------------------
    def peers(self) -> list[PeerId]:
        return list(self._by_peer)

    def connections(self, peer: PeerId) -> list[Connection]:
        return [c for c in self._by_peer.get(peer, []) if not c.is_closed]

    def connection_count(self) -> int:
        return sum(len(conns) for conns in self._by_peer.values())

    def addresses(self, peer: PeerId) -> list[Multiaddr]:
        return list(self._addrs.get(peer, {}))

    def add_addresses(self, peer: PeerId, addrs: list[Multiaddr]) -> None:
        """Remember dialable addresses of a peer (bounded, newest kept)."""
        book = self._addrs.setdefault(peer, {})
        for addr in addrs:
            if addr.transport() is None:
                continue
            book.pop(addr, None)
            book[addr.without_peer_id()] = None
        while len(book) > MAX_ADDRS_PER_PEER:
            del book[next(iter(book))]

    # -- registration -----------------------------------------------------------------
    def admit(self, conn: Connection) -> bool:
        """Register a new connection; False (and the caller closes it) over a limit."""
        peer = conn.remote_peer
        if self.connection_count() >= self._max_connections:
            logger.warning("connection limit (%d) reached; refusing %s", self._max_connections,
                           peer.short())
            return False
        if len(self.connections(peer)) >= self._max_per_peer:
            logger.info("per-peer connection limit reached for %s", peer.short())
            return False
        self._by_peer.setdefault(peer, []).append(conn)
        self._last_busy[conn] = anyio.current_time()
        self._on_connection(conn)
        return True

    def remove(self, conn: Connection) -> bool:
        """Forget a closed connection; True if it was the peer's last one."""
        self._last_busy.pop(conn, None)
        peer = conn.remote_peer
        conns = self._by_peer.get(peer)
        if conns is None:
            return False
        if conn in conns:
            conns.remove(conn)
        if not conns:
            del self._by_peer[peer]
            return True
        return False

    def touch(self, conn: Connection) -> None:
        """Mark a connection busy now (a stream was opened or accepted)."""
        if conn in self._last_busy:
            self._last_busy[conn] = anyio.current_time()

    # -- dialing -----------------------------------------------------------------------
    async def connect(self, peer: PeerId | None, addrs: list[Multiaddr]) -> Connection:
        """A live connection to ``peer`` (reused if present), dialing ``addrs`` in order."""
        if peer is not None:
            existing = self.connections(peer)
            if existing:
                return existing[0]
            pending = self._dialing.get(peer)
            if pending is not None:  # another task is dialing this peer: share its result
                await pending.wait()
                existing = self.connections(peer)
                if existing:
                    return existing[0]
        candidates = addrs or (self.addresses(peer) if peer is not None else [])
        if not candidates:
            raise DialError(f"no known address for peer {peer}; pass a multiaddr to connect to")
        done = anyio.Event()
        if peer is not None:
            self._dialing[peer] = done
        try:
            return await self._dial_in_order(peer, candidates)
        finally:
            if peer is not None and self._dialing.get(peer) is done:
                del self._dialing[peer]
            done.set()

    async def _dial_in_order(self, peer: PeerId | None, candidates: list[Multiaddr]) -> Connection:
        errors: list[str] = []
        for addr in candidates:
            try:
                conn = await self._dial_one(peer, addr)
            except LatticaError as exc:
                errors.append(f"{addr}: {exc}")
                continue
            if not self.admit(conn):
                await conn.aclose("connection limit")
                raise LimitExceeded(
                    f"connection limit reached; not connecting to {conn.remote_peer}"
                )
            if peer is None or conn.remote_peer == peer:
                self.add_addresses(conn.remote_peer, [addr])
            return conn
        tried = "; ".join(errors)
        raise DialError(f"could not reach {peer or 'the peer'} ({len(errors)} tried: {tried})")

    async def _dial_one(self, peer: PeerId | None, addr: Multiaddr) -> Connection:
        expected = addr.peer_id or peer
        transport = addr.transport()
        if transport == "quic-v1" and self._quic is not None:
            host, port = addr.host_port()
            resolved = await _resolve(host)
            return await self._quic.dial((resolved, port), expected, timeout_s=self._dial_timeout_s)
        raise DialError(f"no transport can dial {addr} (supported: /udp/…/quic-v1)")

    # -- idle sweep ------------------------------------------------------------------------
    async def run_idle_sweep(self) -> None:
        """Close connections with no open stream for longer than the idle timeout."""
        if self._idle_timeout_s <= 0:
            return
        period = max(0.05, self._idle_timeout_s / 4)
        while True:
            await anyio.sleep(period)  # a periodic timer, not a readiness wait
            now = anyio.current_time()
            for conn, last in list(self._last_busy.items()):
                if conn.open_stream_count:
                    self._last_busy[conn] = now
                elif now - last >= self._idle_timeout_s:
                    logger.info("closing idle connection to %s", conn.remote_peer.short())
                    await conn.aclose("idle")


async def _resolve(host: str) -> str:
    """An IP literal for ``host`` (dns names are looked up)."""
    if _is_ip(host):
        return host
    try:
        infos = await anyio.getaddrinfo(host, None)
    except OSError as exc:
        raise DialError(f"cannot resolve {host}: {exc}") from exc
    if not infos:
        raise DialError(f"cannot resolve {host}")
    return str(infos[0][4][0])


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
