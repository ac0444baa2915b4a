"""The QUIC endpoint: ONE UDP socket per node, for listening and dialing.

Sharing the socket between the listener and every outgoing connection is
what makes hole punching possible later (DCUtR): the NAT mapping created by
an outgoing packet is the same one an incoming connection arrives on.

The endpoint owns two tasks. The receive task drains every datagram the
socket holds (batched receive: the per-datagram Python cost dominates QUIC
here), routes each to its connection by destination connection id, and then
lets each touched connection process events and send once. The timer task
sleeps until the earliest connection timer. Nothing else sleeps.
"""

from __future__ import annotations

import datetime
import logging
import math
import socket
from types import TracebackType
from typing import Any

import anyio
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ...errors import DialError, TransportError
from ...identity import PeerId, PrivateKey
from ...multiaddr import Multiaddr
from ..tls import make_certificate
from .connection import QuicConnection
from .session import QUIC_V1, Address, QuicSession, QuicSettings

logger = logging.getLogger(__name__)

CONNECTION_ID_BYTES = 8
MAX_DATAGRAM_RECEIVE_BYTES = 65536
MIN_INITIAL_BYTES = 1200
QUIC_INTERNAL_ERROR = 0x1
"""RFC 9000 transport error code INTERNAL_ERROR."""


class QuicEndpoint:
    """A UDP socket that dials and accepts libp2p QUIC connections.

    Use as an async context manager inside the owner's task group lifetime::

        async with QuicEndpoint(identity, settings, "127.0.0.1", 0) as endpoint:
            conn = await endpoint.dial(("127.0.0.1", 4001), expected_peer)
            inbound = await endpoint.accept()
    """

    name = "quic-v1"

    def __init__(
        self,
        identity: PrivateKey,
        settings: QuicSettings,
        host: str,
        port: int,
        *,
        max_connections: int = 1024,
        accept_backlog: int = 64,
    ) -> None:
        self._identity = identity
        self._settings = settings
        self._host = host
        self._port = port
        self._max_connections = max_connections
        self._sock: socket.socket | None = None
        self._by_cid: dict[bytes, QuicConnection] = {}
        self._connections: set[QuicConnection] = set()
        self._accepted_send: MemoryObjectSendStream[QuicConnection]
        self._accepted_receive: MemoryObjectReceiveStream[QuicConnection]
        self._accepted_send, self._accepted_receive = anyio.create_memory_object_stream[
            QuicConnection
        ](accept_backlog)
        self._timer_deadline = math.inf
        self._timer_changed = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._certified = make_certificate(identity, now=_wall_now())
        self.dropped_datagrams = 0
        self.send_errors = 0

    # -- lifecycle ------------------------------------------------------------------
    async def __aenter__(self) -> QuicEndpoint:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, self._settings.socket_buffer_bytes)
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise TransportError(
                f"cannot listen on udp {self._host}:{self._port}: {exc.strerror or exc}"
            ) from exc
        sock.setblocking(False)
        self._sock = sock
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._receive_loop)
        self._tg.start_soon(self._timer_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        with anyio.move_on_after(1.0, shield=True):
            for conn in list(self._connections):
                await conn.aclose("endpoint closing")
        self._accepted_send.close()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(exc_type, exc, tb)
        if self._sock is not None:
            self._sock.close()
        return None

    @property
    def listen_addr(self) -> Multiaddr:
        if self._sock is None:
            raise TransportError("the QUIC endpoint is not running")
        host, port = self._sock.getsockname()[:2]
        return Multiaddr.from_host_port("quic-v1", host, port)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # -- public operations ----------------------------------------------------------
    async def dial(
        self, addr: Address, expected_peer: PeerId | None, *, timeout_s: float | None = None
    ) -> QuicConnection:
        """Connect to ``addr``; the remote must authenticate as ``expected_peer``."""
        if len(self._connections) >= self._max_connections:
            raise DialError(f"connection limit ({self._max_connections}) reached")
        session = QuicSession(
            settings=self._settings,
            certified_key=self._certified,
            is_client=True,
            wall_time=_wall_now(),
            expected_peer=expected_peer,
        )
        conn = self._new_connection(session, addr)
        self._register_cid(session.host_cid, conn)
        session.connect(addr, anyio.current_time())
        conn._flush()
        try:
            with anyio.fail_after(timeout_s or self._settings.handshake_timeout_s + 1.0):
                await conn.wait_established()
        except TimeoutError:
            await conn.aclose("dial timed out")
            raise DialError(f"QUIC handshake with {addr[0]}:{addr[1]} timed out") from None
        except BaseException:
            await conn.aclose("dial abandoned")
            raise
        return conn

    async def accept(self) -> QuicConnection:
        """The next inbound connection whose handshake completed."""
        return await self._accepted_receive.receive()

    # -- the receive path ---------------------------------------------------------------
    async def _receive_loop(self) -> None:
        sock = self._sock
        if sock is None:
            raise TransportError("socket missing")
        touched: dict[QuicConnection, None] = {}
        batch = self._settings.receive_batch
        while True:
            await anyio.wait_readable(sock)
            now = anyio.current_time()
            for _ in range(batch):
                try:
                    data, addr = sock.recvfrom(MAX_DATAGRAM_RECEIVE_BYTES)
                except BlockingIOError:
                    break
                except OSError as exc:  # e.g. ICMP port unreachable surfacing as ECONNREFUSED
                    logger.debug("udp receive error: %s", exc)
                    continue
                conn = self._route(data, addr[:2], now)
                if conn is not None:
                    touched[conn] = None
            for conn in touched:
                try:
                    conn._process_events()
                    if not conn._session.is_terminated:
                        conn._flush()
                except Exception as exc:
                    self._contain(conn, exc)
            touched.clear()

    def _route(self, data: bytes, addr: Address, now: float) -> QuicConnection | None:
        if not data:
            return None
        if not data[0] & 0x80:  # short header: destination cid right after the first byte
            conn = self._by_cid.get(data[1 : 1 + CONNECTION_ID_BYTES])
            if conn is None:
                self.dropped_datagrams += 1
                return None
            return self._deliver(conn, data, addr, now)
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_BYTES)
        except ValueError:
            self.dropped_datagrams += 1
            logger.debug("dropped a malformed datagram from %s:%s", *addr)
            return None
        conn = self._by_cid.get(header.destination_cid)
        if conn is None:
            conn = self._maybe_accept(data, header, addr)
            if conn is None:
                return None
        return self._deliver(conn, data, addr, now)

    def _deliver(
        self, conn: QuicConnection, data: bytes, addr: Address, now: float
    ) -> QuicConnection | None:
        try:
            conn._receive(data, addr, now)
        except Exception as exc:
            self._contain(conn, exc)
            return None
        return conn

    def _contain(self, conn: QuicConnection, exc: Exception) -> None:
        """A connection whose QUIC state machine raised is dropped; the node goes on.

        aioquic handles malformed packets itself; an exception escaping it is
        a bug that hostile input may trigger, and it must cost one connection,
        not the endpoint that serves every other peer.
        """
        logger.error("dropping QUIC connection %r after an internal error", conn, exc_info=exc)
        try:  # best effort: tell the peer, so it does not wait for its idle timeout
            conn._session.close(error_code=QUIC_INTERNAL_ERROR, reason="internal error")
            self._send_datagrams(conn._session.datagrams_to_send(anyio.current_time()))
        except Exception:
            logger.debug("could not send CONNECTION_CLOSE to %r", conn)
        conn._mark_closed(TransportError(f"QUIC connection failed internally: {exc!r}"))
        self._forget(conn)

    def _maybe_accept(self, data: bytes, header: Any, addr: Address) -> QuicConnection | None:
        """Start a server session for a client's first Initial; drop anything else.

        RFC 9000 §6.1/§14.1: a Version Negotiation packet is never answered
        (version 0), and nothing is sent in reply to a datagram shorter than
        1200 bytes, so a spoofed packet cannot start a reflection loop.
        """
        if len(data) < MIN_INITIAL_BYTES or not header.version:
            self.dropped_datagrams += 1
            return None
        if header.version != QUIC_V1:
            negotiation = encode_quic_version_negotiation(
                source_cid=header.destination_cid,
                destination_cid=header.source_cid,
                supported_versions=[QUIC_V1],
            )
            self._send_datagrams([(negotiation, addr)])
            return None
        if header.packet_type != QuicPacketType.INITIAL:
            self.dropped_datagrams += 1
            return None
        if len(self._connections) >= self._max_connections:
            logger.warning("refusing a QUIC connection from %s:%s: connection limit", *addr)
            self.dropped_datagrams += 1
            return None
        odcid: bytes = header.destination_cid
        session = QuicSession(
            settings=self._settings,
            certified_key=self._certified,
            is_client=False,
            wall_time=_wall_now(),
            original_destination_connection_id=odcid,
        )
        conn = self._new_connection(session, addr)
        self._register_cid(odcid, conn)
        self._register_cid(session.host_cid, conn)
        return conn

    def _new_connection(self, session: QuicSession, addr: Address) -> QuicConnection:
        conn = QuicConnection(
            self,
            session,
            addr,
            max_incoming_streams=self._settings.max_incoming_streams,
            clock=anyio.current_time,
        )
        self._connections.add(conn)
        return conn

    # -- sending and timers -----------------------------------------------------------------
    def _send_datagrams(self, datagrams: list[tuple[bytes, Address]]) -> None:
        sock = self._sock
        if sock is None:
            return
        for data, addr in datagrams:
            try:
                sock.sendto(data, addr)
            except BlockingIOError:
                self.send_errors += 1  # the socket buffer is full; QUIC retransmits
            except OSError as exc:
                self.send_errors += 1
                logger.debug("udp send to %s:%s failed: %s", addr[0], addr[1], exc)

    def _timer_updated(self, deadline: float) -> None:
        if deadline < self._timer_deadline:
            self._timer_deadline = deadline
            self._timer_changed.set()

    async def _timer_loop(self) -> None:
        while True:
            now = anyio.current_time()
            earliest = math.inf
            for conn in list(self._connections):
                if conn.timer <= now:
                    try:
                        conn._on_timer(now)
                    except Exception as exc:
                        self._contain(conn, exc)
                        continue
                    if conn._session.is_terminated:
                        self._forget(conn)
                        continue
                earliest = min(earliest, conn.timer)
            self._timer_deadline = earliest
            self._timer_changed = anyio.Event()
            with anyio.move_on_after(max(0.0, earliest - anyio.current_time())):
                await self._timer_changed.wait()

    # -- bookkeeping called by connections ------------------------------------------------------
    def _register_cid(self, cid: bytes, conn: QuicConnection) -> None:
        self._by_cid[bytes(cid)] = conn

    def _unregister_cid(self, cid: bytes) -> None:
        self._by_cid.pop(bytes(cid), None)

    def _on_established(self, conn: QuicConnection) -> None:
        if conn.is_initiator:
            return
        try:
            self._accepted_send.send_nowait(conn)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            logger.warning("accept backlog full; closing connection from %s", conn.remote_addr)
            conn._session.close(error_code=0x2, reason="accept backlog full")

    def _on_closed(self, conn: QuicConnection) -> None:
        # Keep routing until the session is terminated on the wire (it must
        # still answer with CONNECTION_CLOSE); the timer loop forgets it then.
        self._timer_updated(conn.timer)

    def _forget(self, conn: QuicConnection) -> None:
        self._connections.discard(conn)
        for cid in [cid for cid, c in self._by_cid.items() if c is conn]:
            del self._by_cid[cid]


def _wall_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)

