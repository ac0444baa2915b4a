"""Connection manager: which connections exist to which peer, and limits.

It knows addresses (an address book fed by dials and identify), dials
through the transports it was given, enforces the total and per-peer
connection limits, and closes connections that stayed idle (no open stream)
longer than the idle timeout. It tells its owner about new connections
through a callback; it starts no tasks of its own except the sweep the
owner starts with :meth:`run_idle_sweep`.

One peer may have several connections (QUIC, TCP, later relayed). Streams
go to the *best* one: TCP before QUIC (Python TCP moves bytes an order of
magnitude faster), and among connections of the same transport the one
initiated by the peer with the smaller id. Both ends compute the same
answer, so when two peers dial each other at once both keep using the same
connection; the redundant one is closed by the sweep once it has no open
stream, so nothing in flight is cut.

Dialing races a peer's addresses happy-eyeballs style: the next address
starts when the previous one failed or after :data:`HAPPY_EYEBALLS_DELAY_S`;
the first to connect wins and the others are cancelled. An address that
fails is backed off exponentially for implicit dials (those that use the
address book); an address the caller names is always tried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import anyio

from ..errors import DialError, LatticaError, LimitExceeded
from ..identity import PeerId
from ..multiaddr import Multiaddr
from .base import Connection

logger = logging.getLogger(__name__)

MAX_ADDRS_PER_PEER = 32
HAPPY_EYEBALLS_DELAY_S = 0.25
"""How long one dial runs alone before the next address is tried too."""
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0
MAX_BACKOFF_ENTRIES = 4096
REDUNDANT_SWEEP_S = 1.0
"""How often redundant (duplicate) connections are checked when no idle timeout is set."""
TRANSPORT_RANK = {"tcp": 0, "quic-v1": 1}
"""Preference for streams, lower first: the fastest path first."""

Address = tuple[str, int]


class Dialer(Protocol):
    """A transport that dials: QuicEndpoint and TcpTransport."""

    name: str
    """The multiaddr transport it dials: "quic-v1" or "tcp"."""

    async def dial(
        self, addr: Address, expected_peer: PeerId | None, *, timeout_s: float | None = None
    ) -> Connection: ...


class Backoff:
    """Exponential backoff per address, bounded in size (oldest forgotten first)."""

    def __init__(self) -> None:
        self._entries: dict[Multiaddr, tuple[int, float]] = {}

    def failed(self, addr: Multiaddr, now: float) -> None:
        failures = self._entries.pop(addr, (0, 0.0))[0] + 1
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1))
        self._entries[addr] = (failures, now + delay)
        while len(self._entries) > MAX_BACKOFF_ENTRIES:
            del self._entries[next(iter(self._entries))]

    def succeeded(self, addr: Multiaddr) -> None:
        self._entries.pop(addr, None)

    def retry_at(self, addr: Multiaddr) -> float:
        """When ``addr`` may be dialed again (0.0: now)."""
        entry = self._entries.get(addr)
        return entry[1] if entry else 0.0


class ConnectionManager:
    def __init__(
        self,
        *,
        local_peer: PeerId,
        dialers: list[Dialer],
        max_connections: int,
        max_connections_per_peer: int,
        idle_timeout_s: float,
        dial_timeout_s: float,
        on_connection: Callable[[Connection], None],
    ) -> None:
        self._local_peer = local_peer
        self._dialers: dict[str, Dialer] = {}
        for dialer in dialers:
            self._dialers.setdefault(dialer.name, dialer)
        self._max_connections = max_connections
        self._max_per_peer = max_connections_per_peer
        self._idle_timeout_s = idle_timeout_s
        self._dial_timeout_s = dial_timeout_s
        self._on_connection = on_connection
        self._by_peer: dict[PeerId, list[Connection]] = {}
        self._last_busy: dict[Connection, float] = {}
        self._addrs: dict[PeerId, dict[Multiaddr, None]] = {}
        self._dialing: dict[PeerId, anyio.Event] = {}
        self._backoff = Backoff()

    # -- queries -------------------------------------------------------------------
    def peers(self) -> list[PeerId]:
        return list(self._by_peer)

    def connections(self, peer: PeerId) -> list[Connection]:
        return [c for c in self._by_peer.get(peer, []) if not c.is_closed]

    def best_connection(self, peer: PeerId) -> Connection | None:
        """The connection new streams to ``peer`` use (see the module docstring)."""
        conns = self.connections(peer)
        return min(conns, key=self._rank) if conns else None

    def is_redundant(self, conn: Connection) -> bool:
        """True for a second connection of the same transport as the best one."""
        best = self.best_connection(conn.remote_peer)
        return (
            best is not None
            and best is not conn
            and _transport_of(best) == _transport_of(conn)
        )

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

    def _rank(self, conn: Connection) -> tuple[int, bytes]:
        initiator = self._local_peer if conn.is_initiator else conn.remote_peer
        return _transport_rank(_transport_of(conn)), initiator.to_bytes()

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
        """The best live connection to ``peer`` (reused if present), else a new one.

        A live connection is reused when ``addrs`` is empty or names its
        transport. ``addrs`` are raced in the order given (the caller's choice wins);
        without them the address book is used, fastest transport first,
        skipping addresses in backoff.
        """
        if peer is not None:
            existing = self._reusable(peer, addrs)
            if existing is not None:
                return existing
            pending = self._dialing.get(peer)
            if pending is not None:  # another task is dialing this peer: share its result
                await pending.wait()
                existing = self._reusable(peer, addrs)
                if existing is not None:
                    return existing
        if addrs:
            candidates = list(addrs)
        else:
            candidates = self._dialable_from_book(peer)
        done = anyio.Event()
        if peer is not None:
            self._dialing[peer] = done
        try:
            return await self._dial_race(peer, candidates)
        finally:
            if peer is not None and self._dialing.get(peer) is done:
                del self._dialing[peer]
            done.set()

    def _reusable(self, peer: PeerId, addrs: list[Multiaddr]) -> Connection | None:
        """A live connection that serves a dial of ``addrs`` (any, when none are named).

        Naming addresses of another transport than every live connection's
        (say TCP while only QUIC is up) dials them: the caller asked for that path.
        """
        best = self.best_connection(peer)
        if best is None or not addrs:
            return best
        wanted = {a.transport() for a in addrs}
        for conn in sorted(self.connections(peer), key=self._rank):
            if _transport_of(conn) in wanted:
                return conn
        return None

    def _dialable_from_book(self, peer: PeerId | None) -> list[Multiaddr]:
        known = self.addresses(peer) if peer is not None else []
        if not known:
            raise DialError(f"no known address for peer {peer}; pass a multiaddr to connect to")
        now = anyio.current_time()
        ready = [a for a in known if self._backoff.retry_at(a) <= now]
        if not ready:
            wait_s = min(self._backoff.retry_at(a) for a in known) - now
            raise DialError(
                f"all {len(known)} known addresses of {peer} failed recently; "
                f"next retry in {wait_s:.1f} s (or pass an address to connect to)"
            )
        return sorted(ready, key=lambda a: _transport_rank(a.transport()))

    async def _dial_race(self, peer: PeerId | None, candidates: list[Multiaddr]) -> Connection:
        won: list[Connection] = []
        errors: list[str] = []
        failures: list[LatticaError] = []

        async def attempt(addr: Multiaddr, failed: anyio.Event) -> None:
            try:
                conn = await self._dial_one(peer, addr)
            except LatticaError as exc:
                self._backoff.failed(addr, anyio.current_time())
                errors.append(f"{addr}: {exc}")
                failures.append(exc)
                failed.set()
                return
            if won:  # another address won meanwhile
                await conn.aclose("another address connected first")
                return
            won.append(conn)
            self._backoff.succeeded(addr)
            if peer is None or conn.remote_peer == peer:
                self.add_addresses(conn.remote_peer, [addr])
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            for addr in candidates:
                failed = anyio.Event()
                tg.start_soon(attempt, addr, failed)
                with anyio.move_on_after(HAPPY_EYEBALLS_DELAY_S):
                    await failed.wait()
        if not won:
            tried = "; ".join(errors)
            cause = failures[0] if len(failures) == 1 else None
            raise DialError(
                f"could not reach {peer or 'the peer'} ({len(errors)} tried: {tried})"
            ) from cause
        conn = won[0]
        if not self.admit(conn):
            await conn.aclose("connection limit")
            raise LimitExceeded(f"connection limit reached; not connecting to {conn.remote_peer}")
        return conn

    async def _dial_one(self, peer: PeerId | None, addr: Multiaddr) -> Connection:
        expected = addr.peer_id or peer
        transport = addr.transport()
        dialer = self._dialers.get(transport or "")
        if dialer is None:
            supported = ", ".join(sorted(self._dialers)) or "none"
            raise DialError(f"no transport can dial {addr} (this node dials: {supported})")
        host, port = addr.host_port()
        resolved = await _resolve(host)
        return await dialer.dial((resolved, port), expected, timeout_s=self._dial_timeout_s)

    # -- idle sweep ------------------------------------------------------------------------
    async def run_idle_sweep(self) -> None:
        """Close idle connections, and redundant ones once they carry no stream."""
        if self._idle_timeout_s > 0:
            period = min(REDUNDANT_SWEEP_S, max(0.05, self._idle_timeout_s / 4))
        else:
            period = REDUNDANT_SWEEP_S
        while True:
            await anyio.sleep(period)  # a periodic timer, not a readiness wait
            await self.sweep(anyio.current_time())

    async def sweep(self, now: float) -> None:
        """One pass of the idle sweep (exposed for tests)."""
        for conn, last in list(self._last_busy.items()):
            if conn.open_stream_count:
                self._last_busy[conn] = now
            elif self.is_redundant(conn):
                logger.info("closing a redundant connection to %s", conn.remote_peer.short())
                await conn.aclose("redundant connection")
            elif self._idle_timeout_s > 0 and now - last >= self._idle_timeout_s:
                logger.info("closing idle connection to %s", conn.remote_peer.short())
                await conn.aclose("idle")


def _transport_rank(transport: str | None) -> int:
    """Preference of a transport for streams and dials; unknown ones come last."""
    return TRANSPORT_RANK.get(transport or "", len(TRANSPORT_RANK))


def _transport_of(conn: Connection) -> str | None:
    return conn.remote_addr.transport()


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
