"""Sans-IO pumps for QUIC sessions: two sessions, a hand-driven clock, no sockets."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.packet import pull_quic_header

from ..identity import PeerId, PrivateKey
from ..transport.quic import events as ev
from ..transport.quic.session import QuicSession, QuicSettings
from ..transport.tls import CertifiedKey, make_certificate

CLIENT_ADDR = ("127.0.0.1", 40001)
SERVER_ADDR = ("127.0.0.1", 40002)
WALL_TIME = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)


@dataclass
class SessionPair:
    """A client and a server session joined by an in-memory 'network'."""

    client: QuicSession
    server: QuicSession | None
    server_key: CertifiedKey
    settings: QuicSettings
    server_wall_time: datetime.datetime
    now: float = 0.0
    client_events: list[ev.QuicSessionEvent] = field(default_factory=list)
    server_events: list[ev.QuicSessionEvent] = field(default_factory=list)
    delivered: int = 0

    def pump(self, *, max_rounds: int = 1000, step_s: float = 0.001) -> None:
        """Exchange datagrams until both sides are quiet.

        The clock moves ``step_s`` per round: aioquic paces packets, so a
        frozen clock would stall a sender.
        """
        for _ in range(max_rounds):
            self.now += step_s
            moved = False
            for data, _addr in self.client.datagrams_to_send(self.now):
                moved = True
                self._to_server(data)
            if self.server is not None:
                for data, _addr in self.server.datagrams_to_send(self.now):
                    moved = True
                    self.delivered += 1
                    self.client.receive_datagram(data, SERVER_ADDR, self.now)
            self._drain()
            if not moved:
                return
        raise RuntimeError("sessions did not go quiet")

    def advance(self, seconds: float) -> None:
        """Move the clock forward and fire due timers on both sides."""
        self.now += seconds
        for session in (self.client, self.server):
            if session is None:
                continue
            timer = session.get_timer()
            if timer is not None and timer <= self.now:
                session.handle_timer(self.now)
        self._drain()

    def _to_server(self, data: bytes) -> None:
        if self.server is None:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
            self.server = QuicSession(
                settings=self.settings,
                certified_key=self.server_key,
                is_client=False,
                wall_time=self.server_wall_time,
                original_destination_connection_id=header.destination_cid,
            )
        self.delivered += 1
        self.server.receive_datagram(data, CLIENT_ADDR, self.now)

    def _drain(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        if self.server is not None:
            while (event := self.server.next_event()) is not None:
                self.server_events.append(event)


def make_pair(
    client_identity: PrivateKey,
    server_identity: PrivateKey,
    *,
    expected_peer: PeerId | None = None,
    settings: QuicSettings | None = None,
    client_wall_time: datetime.datetime = WALL_TIME,
    server_wall_time: datetime.datetime = WALL_TIME,
    client_key: CertifiedKey | None = None,
) -> SessionPair:
    """A client session that has called connect(); the server appears on first datagram."""
    settings = settings or QuicSettings()
    client = QuicSession(
        settings=settings,
        certified_key=client_key or make_certificate(client_identity, now=WALL_TIME),
        is_client=True,
        wall_time=client_wall_time,
        expected_peer=expected_peer,
    )
    client.connect(SERVER_ADDR, 0.0)
    return SessionPair(
        client=client,
        server=None,
        server_key=make_certificate(server_identity, now=WALL_TIME),
        settings=settings,
        server_wall_time=server_wall_time,
    )
