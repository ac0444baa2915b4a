"""Runs the sans-IO queries (:mod:`.queries`) over the network.

One :class:`QueryRunner` per node: it asks the peers a query names, feeds
the answers back, teaches the node's address book the addresses answers
carry, keeps the routing table current (peers that answered are live DHT
servers; peers that failed count a failure; peers that broke the protocol
are banned) and enforces the whole query's deadline.

Queries get the wall clock as ``now``: the same clock validates record
expiry (absolute, signed by the publisher) and times their requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import anyio

from ..errors import LatticaError, ProtocolNegotiationError, RemoteProtocolError
from ..identity import PeerId
from .messages import Message, PeerEntry
from .queries import Query
from .routing import RoutingTable
from .streams import DhtHost, Requester

__all__ = ["QueryRunner"]

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 3600.0


class QueryRunner:
    """Drives queries for one node (see the module docstring)."""

    def __init__(self, host: DhtHost, requester: Requester, routing: RoutingTable, *,
                 request_timeout_s: float, query_timeout_s: float,
                 is_banned: Callable[[PeerId], bool],
                 penalize: Callable[[PeerId, str], None],
                 seen_alive: Callable[[PeerId], None]) -> None:
        self._host = host
        self._requester = requester
        self._routing = routing
        self._request_timeout_s = request_timeout_s
        self._query_timeout_s = query_timeout_s
        self._is_banned = is_banned
        self._penalize = penalize
        self._seen_alive = seen_alive
        self._local = host.peer_id

    async def request(self, peer: PeerId, message: Message) -> Message | None:
        """One request to one peer (no routing-table bookkeeping)."""
        return await self._requester.request(peer, message, timeout_s=self._request_timeout_s)

    async def run(self, query: Query) -> None:
        """Run ``query`` until it is done or ``query_timeout_s`` passed."""
        self._routing.touch_bucket(query.lookup.target, time.time())
        wake = anyio.Event()

        async def visit(peer: PeerId) -> None:
            nonlocal wake
            answer = await self._ask(peer, query)
            if answer is None:
                query.on_failure(peer, time.time())
            else:
                query.on_response(peer, answer, time.time())
            wake.set()

        with anyio.move_on_after(self._query_timeout_s):
            async with anyio.create_task_group() as tg:
                while not query.done:
                    now = time.time()
                    query.handle_timer(now)
                    for peer in query.next_requests(now):
                        tg.start_soon(visit, peer)
                    if query.done:
                        break
                    timer = query.get_timer()
                    with anyio.move_on_after(IDLE_WAIT_S if timer is None
                                             else max(timer - now, 0.0)):
                        await wake.wait()
                    wake = anyio.Event()
                tg.cancel_scope.cancel()

    async def _ask(self, peer: PeerId, query: Query) -> Message | None:
        """The peer's answer with unusable peer entries removed; None if it failed."""
        try:
            answer = await self.request(peer, query.request)
        except ProtocolNegotiationError:
            self._routing.remove(peer)  # not (or no longer) a DHT server
            return None
        except RemoteProtocolError as exc:
            self._penalize(peer, str(exc))
            return None
        except (LatticaError, OSError, anyio.BrokenResourceError) as exc:
            logger.debug("dht: request to %s failed: %r", peer.short(), exc)
            self._routing.failed(peer, time.time())
            return None
        except Exception:  # a bug below us: one failed request, not a dead node
            logger.exception("dht: request to %s failed unexpectedly", peer.short())
            self._routing.failed(peer, time.time())
            return None
        if answer is None:
            return None
        self._seen_alive(peer)
        return replace(answer, closer_peers=self._usable(answer.closer_peers),
                       provider_peers=self._usable(answer.provider_peers, keep_local=True))

    def _usable(self, entries: tuple[PeerEntry, ...], *, keep_local: bool = False
                ) -> tuple[PeerEntry, ...]:
        """Entries worth following; their addresses go to the address book."""
        kept = []
        for entry in entries:
            peer = entry.peer_id
            if self._is_banned(peer):
                continue
            if peer == self._local:
                if keep_local:
                    kept.append(entry)
                continue
            if entry.addrs:
                self._host.add_addresses(peer, list(entry.addrs))
            kept.append(entry)
        return tuple(kept)
