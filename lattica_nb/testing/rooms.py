"""An in-memory network of sans-IO rooms, for tests and simulations.

:class:`RoomNetwork` carries every message through the real codec
(``encode_message``/``decode_message``) over per-link FIFO queues, and
delivers in an order chosen by a seeded ``random.Random``, so concurrent
edits, partitions (:meth:`RoomNetwork.cut`) and heals (:meth:`RoomNetwork.link`)
are replayable. Nothing here sleeps or opens a socket.
"""

from __future__ import annotations

import random
from collections import deque

from ..errors import DecodeError
from ..identity import PeerId
from ..sync.events import RoomEvent, SessionEnded
from ..sync.protocol import decode_message, encode_message
from ..sync.room import Room

__all__ = ["RoomNetwork"]


class RoomNetwork:
    """Rooms joined by links; :meth:`pump` runs the exchange until nothing is in flight."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random(0)
        self.rooms: dict[PeerId, Room] = {}
        self.events: dict[PeerId, list[RoomEvent]] = {}
        self._queues: dict[tuple[PeerId, PeerId], deque[bytes]] = {}
        self.delivered = 0

    def add(self, room: Room) -> Room:
        self.rooms[room.peer_id] = room
        self.events[room.peer_id] = []
        return room

    def linked(self, a: PeerId, b: PeerId) -> bool:
        return (a, b) in self._queues

    def link(self, a: PeerId, b: PeerId) -> None:
        """Connect ``a`` and ``b`` (``a`` says HELLO first); no-op if linked."""
        if self.linked(a, b):
            return
        self._queues[(a, b)] = deque()
        self._queues[(b, a)] = deque()
        self.rooms[a].connect(b)

    def cut(self, a: PeerId, b: PeerId) -> None:
        """Partition ``a`` from ``b``: in-flight messages are lost, both sessions forgotten."""
        self._queues.pop((a, b), None)
        self._queues.pop((b, a), None)
        self.rooms[a].disconnect(b)
        self.rooms[b].disconnect(a)

    def inject(self, src: PeerId, dst: PeerId, data: bytes) -> None:
        """Put raw bytes on a link as if ``src`` had sent them (for forged traffic)."""
        self._queues[(src, dst)].append(data)

    def pump(self, max_deliveries: int = 1_000_000) -> None:
        """Move messages until every queue is empty (random interleaving across links)."""
        for _ in range(max_deliveries):
            events = self._collect()
            busy = [key for key, queue in self._queues.items() if queue]
            if not busy:
                if events:
                    continue  # closing a link may have made more output or events
                return
            src, dst = self.rng.choice(busy)
            data = self._queues[(src, dst)].popleft()
            room = self.rooms[dst]
            try:
                message = decode_message(data)
            except DecodeError as exc:
                room.protocol_error(src, exc)
                continue
            room.receive(src, message)
            self.delivered += 1
        raise RuntimeError(f"the network did not settle within {max_deliveries} deliveries")

    def _collect(self) -> int:
        """Queue every room's output and record its events; how many events there were."""
        count = 0
        for peer, room in self.rooms.items():
            for dst, messages in room.outgoing():
                queue = self._queues.get((peer, dst))
                if queue is not None:
                    queue.extend(encode_message(message) for message in messages)
            while (event := room.next_event()) is not None:
                count += 1
                self.events[peer].append(event)
                if isinstance(event, SessionEnded) and self.linked(peer, event.peer):
                    # The driver closes the stream once the GOODBYE is out.
                    self._close_after_flush(peer, event.peer)
        return count

    def _close_after_flush(self, a: PeerId, b: PeerId) -> None:
        queue_ab = self._queues.get((a, b))
        pending = list(queue_ab) if queue_ab is not None else []
        self._queues.pop((a, b), None)
        self._queues.pop((b, a), None)
        self.rooms[a].disconnect(b)
        target = self.rooms[b]
        for data in pending:  # the GOODBYE and anything before it still arrive
            try:
                target.receive(a, decode_message(data))
            except DecodeError as exc:
                target.protocol_error(a, exc)
        target.disconnect(a)
