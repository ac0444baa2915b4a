"""ConnectionManager: dial racing, backoff, best-connection choice, duplicates.

Fake transports stand in for QUIC and TCP so the policies are tested on
their own; tests/node/test_tcp.py covers the real transports together.
"""

from __future__ import annotations

import anyio
import pytest

from lattica_nb.errors import DialError
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.multiaddr import Multiaddr
from lattica_nb.transport.manager import ConnectionManager

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


def new_peer() -> PeerId:
    return PeerId.from_public_key(PrivateKey.generate().public_key)


LOCAL = new_peer()


class FakeConnection:
    def __init__(self, peer: PeerId, addr: Multiaddr, *, initiator: bool = True) -> None:
        self.remote_peer = peer
        self.remote_addr = addr
        self.local_addr = addr
        self.is_initiator = initiator
        self.open_stream_count = 0
        self.close_error = None
        self.closed = anyio.Event()

    @property
    def is_closed(self) -> bool:
        return self.closed.is_set()

    async def aclose(self, reason: str = "") -> None:
        self.closed.set()

    async def wait_closed(self) -> None:
        await self.closed.wait()


class FakeDialer:
    """Dials succeed or fail per port; a dial to a "hanging" port waits until cancelled."""

    def __init__(self, name: str, peer: PeerId, *, fail: set[int] = frozenset(),
                 hang: set[int] = frozenset()) -> None:
        self.name = name
        self.peer = peer
        self.fail = set(fail)
        self.hang = set(hang)
        self.dialed: list[int] = []
        self.cancelled: list[int] = []

    async def dial(self, addr, expected_peer, *, timeout_s=None):
        port = addr[1]
        self.dialed.append(port)
        if port in self.fail:
            raise DialError(f"port {port} refused")
        if port in self.hang:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                self.cancelled.append(port)
                raise
        suffix = f"/udp/{port}/quic-v1" if self.name == "quic-v1" else f"/tcp/{port}"
        return FakeConnection(self.peer, Multiaddr("/ip4/127.0.0.1" + suffix))


def manager(*dialers, idle_timeout_s: float = 0.0, **kwargs) -> ConnectionManager:
    return ConnectionManager(
        local_peer=LOCAL, dialers=list(dialers), max_connections=kwargs.get("max_connections", 8),
        max_connections_per_peer=kwargs.get("per_peer", 4), idle_timeout_s=idle_timeout_s,
        dial_timeout_s=5.0, on_connection=lambda conn: None,
    )


async def test_a_failed_address_starts_the_next_at_once():
    peer = new_peer()
    tcp = FakeDialer("tcp", peer, fail={1})
    mgr = manager(tcp)
    with anyio.fail_after(0.2):  # under the happy-eyeballs delay: no waiting on a failure
        conn = await mgr.connect(peer, [Multiaddr("/ip4/127.0.0.1/tcp/1"),
                                        Multiaddr("/ip4/127.0.0.1/tcp/2")])
    assert tcp.dialed == [1, 2]
    assert conn.remote_addr.host_port()[1] == 2
    assert mgr.best_connection(peer) is conn


async def test_a_hanging_address_is_raced_and_cancelled_when_another_wins():
    peer = new_peer()
    tcp = FakeDialer("tcp", peer, hang={1})
    mgr = manager(tcp)
    conn = await mgr.connect(peer, [Multiaddr("/ip4/127.0.0.1/tcp/1"),
                                    Multiaddr("/ip4/127.0.0.1/tcp/2")])
    assert conn.remote_addr.host_port()[1] == 2
    assert tcp.cancelled == [1]


async def test_every_address_failing_names_each_one():
    peer = new_peer()
    mgr = manager(FakeDialer("tcp", peer, fail={1, 2}))
    with pytest.raises(DialError) as caught:
        await mgr.connect(peer, [Multiaddr("/ip4/127.0.0.1/tcp/1"),
                                 Multiaddr("/ip4/127.0.0.1/tcp/2")])
    assert "/tcp/1" in str(caught.value) and "/tcp/2" in str(caught.value)


async def test_book_dials_prefer_tcp_and_skip_addresses_in_backoff():
    peer = new_peer()
    tcp = FakeDialer("tcp", peer, fail={5})
    quic = FakeDialer("quic-v1", peer)
    mgr = manager(quic, tcp)
    mgr.add_addresses(peer, [Multiaddr("/ip4/127.0.0.1/udp/6/quic-v1"),
                             Multiaddr("/ip4/127.0.0.1/tcp/5")])
    first = await mgr.connect(peer, [])
    assert tcp.dialed == [5] and quic.dialed == [6]  # TCP tried first, then QUIC
    await first.aclose()
    mgr.remove(first)
    second = await mgr.connect(peer, [])
    assert tcp.dialed == [5], "the failed TCP address is in backoff"
    assert second.remote_addr.transport() == "quic-v1"


async def test_all_book_addresses_in_backoff_says_when_to_retry():
    peer = new_peer()
    mgr = manager(FakeDialer("tcp", peer, fail={7}))
    mgr.add_addresses(peer, [Multiaddr("/ip4/127.0.0.1/tcp/7")])
    with pytest.raises(DialError):
        await mgr.connect(peer, [])
    with pytest.raises(DialError, match="failed recently; next retry in"):
        await mgr.connect(peer, [])


async def test_an_unsupported_transport_is_named():
    peer = new_peer()
    mgr = manager(FakeDialer("quic-v1", peer))
    with pytest.raises(DialError, match="this node dials: quic-v1"):
        await mgr.connect(peer, [Multiaddr("/ip4/127.0.0.1/tcp/9")])


async def test_best_connection_is_tcp_then_the_lower_initiator_on_both_sides():
    a, b = sorted([new_peer(), new_peer()])  # a < b
    addr_q = Multiaddr("/ip4/127.0.0.1/udp/1/quic-v1")
    addr_t = Multiaddr("/ip4/127.0.0.1/tcp/1")

    def side(local: PeerId) -> ConnectionManager:
        return ConnectionManager(
            local_peer=local, dialers=[], max_connections=8, max_connections_per_peer=8,
            idle_timeout_s=0, dial_timeout_s=1, on_connection=lambda conn: None,
        )

    # a dialed b and b dialed a at once, over TCP; plus a QUIC connection.
    a_mgr, b_mgr = side(a), side(b)
    a_out, a_in = FakeConnection(b, addr_t, initiator=True), FakeConnection(b, addr_t,
                                                                            initiator=False)
    b_in, b_out = FakeConnection(a, addr_t, initiator=False), FakeConnection(a, addr_t,
                                                                             initiator=True)
    a_quic = FakeConnection(b, addr_q, initiator=True)
    for conn in (a_quic, a_in, a_out):
        assert a_mgr.admit(conn)
    for conn in (b_out, b_in):
        assert b_mgr.admit(conn)
    # The connection a initiated is the same link as the one b accepted: both keep it.
    assert a_mgr.best_connection(b) is a_out
    assert b_mgr.best_connection(a) is b_in
    assert a_mgr.is_redundant(a_in) and b_mgr.is_redundant(b_out)
    assert not a_mgr.is_redundant(a_quic), "a QUIC connection beside TCP is kept"


async def test_the_sweep_closes_a_redundant_connection_only_when_it_carries_no_stream():
    a, b = sorted([new_peer(), new_peer()])
    mgr = ConnectionManager(
        local_peer=a, dialers=[], max_connections=8, max_connections_per_peer=8,
        idle_timeout_s=0, dial_timeout_s=1, on_connection=lambda conn: None,
    )
    addr = Multiaddr("/ip4/127.0.0.1/tcp/1")
    keep, extra = FakeConnection(b, addr, initiator=True), FakeConnection(b, addr,
                                                                          initiator=False)
    mgr.admit(keep)
    mgr.admit(extra)
    extra.open_stream_count = 1
    await mgr.sweep(anyio.current_time())
    assert not extra.is_closed, "a stream is still open on it"
    extra.open_stream_count = 0
    await mgr.sweep(anyio.current_time())
    assert extra.is_closed and not keep.is_closed


async def test_idle_timeout_closes_a_connection_without_streams():
    peer = new_peer()
    mgr = manager(idle_timeout_s=10.0)
    conn = FakeConnection(peer, Multiaddr("/ip4/127.0.0.1/tcp/1"))
    mgr.admit(conn)
    await mgr.sweep(anyio.current_time() + 5)
    assert not conn.is_closed
    await mgr.sweep(anyio.current_time() + 11)
    assert conn.is_closed
