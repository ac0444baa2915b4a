"""Room sync on a node: ``node.sync`` serves ``/lattica-nb/yjs/1.0.0`` and opens rooms.

:class:`Sync` owns every :class:`~.driver.RoomDriver` of a node. An inbound
stream's first message (HELLO) names the room; the stream is handed to that
room's driver, or answered with GOODBYE ``UNKNOWN_ROOM``. Each room finds its
members through the DHT (it provides its room id and looks up the other
providers) and among the connected peers that speak the protocol, and links
to each of them; it retries on a timer and as soon as a member reconnects.

Opening a room (:meth:`Sync.open`): a room kept on disk is restored and syncs
only what it lacks; otherwise the node joins through the first member that
shows the room's document, or creates it (becoming its owner) when nobody has
it within ``join_timeout_s`` (``create=None``, the default).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ..errors import DecodeError, LatticaError, LocalProtocolError, TimeoutError, TransportError
from ..events import PeerConnected, PeerIdentified
from ..identity import PeerId, PrivateKey
from ..protocols.router import Stream
from ..wire.framing import FrameReader, write_frame
from .config import SyncConfig
from .driver import RoomDriver, decode_header
from .envelope import room_id
from .events import RoomEvent, SessionEnded
from .membership import WriteRule
from .protocol import PROTOCOL_ID, Goodbye, GoodbyeReason, Hello, decode_message, encode_message
from .room import Room
from .rules import DEFAULT_RULES
from .storage import RoomFile, RoomStore

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..node import Node

__all__ = ["Sync"]

logger = logging.getLogger(__name__)

_HELLO_TIMEOUT_S = 10.0
_CLOSE_GRACE_S = 5.0
"""How long closing a room waits for its GOODBYEs to be sent and its file closed."""


class Sync:
    """A node's rooms; see the module docs. Reach it as ``node.sync``."""

    def __init__(self, node: Node, identity: PrivateKey, config: SyncConfig) -> None:
        self._node = node
        self._identity = identity
        self.config = config
        self._rooms: dict[bytes, RoomDriver] = {}
        self._store = RoomStore(config.data_dir) if config.data_dir is not None else None
        self._tg: anyio.abc.TaskGroup | None = None
        self._dialing: set[tuple[bytes, PeerId]] = set()
        self._not_serving: set[tuple[bytes, PeerId]] = set()
        self._opening: dict[bytes, anyio.Lock] = {}

    @property
    def peer_id(self) -> PeerId:
        return self._node.peer_id

    def rooms(self) -> list[RoomDriver]:
        return list(self._rooms.values())

    def room(self, name: str, *, mesh: str | None = None) -> RoomDriver | None:
        return self._rooms.get(room_id(mesh or self.config.mesh, name))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._node.set_handler(PROTOCOL_ID, self._serve)
            tg.start_soon(self._watch_peers)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    # -- opening rooms ----------------------------------------------------------------------

    async def open(
        self,
        name: str,
        *,
        create: bool | None = None,
        owner: PeerId | str | None = None,
        closed: bool = False,
        members: Iterable[PeerId | str] = (),
        rules: Mapping[str, WriteRule] = DEFAULT_RULES,
        mesh: str | None = None,
        join_timeout_s: float | None = None,
    ) -> RoomDriver:
        """Open room ``name``: restore it, join it through a member, or create it.

        ``create``: True creates a new document now (we own it); False only
        joins (TimeoutError if no member shows it in time); None restores,
        else joins, else creates. ``owner`` pins whose room it must be.
        ``closed``/``members``: a new closed room and its member list.
        """
        rid = room_id(mesh or self.config.mesh, name)
        async with self._opening.setdefault(rid, anyio.Lock()):
            # A second open of the same room waits for the first and gets its driver.
            existing = self._rooms.get(rid)
            if existing is not None:
                return existing
            return await self._open(name, rid, create=create, owner=owner, closed=closed,
                                    members=members, rules=rules, join_timeout_s=join_timeout_s)

    async def _open(
        self,
        name: str,
        rid: bytes,
        *,
        create: bool | None,
        owner: PeerId | str | None,
        closed: bool,
        members: Iterable[PeerId | str],
        rules: Mapping[str, WriteRule],
        join_timeout_s: float | None,
    ) -> RoomDriver:
        pinned = PeerId.from_string(owner) if isinstance(owner, str) else owner
        member_ids = [PeerId.from_string(m) if isinstance(m, str) else m for m in members]
        limits = self.config.room_limits
        if create is not True and self._store is not None and self._store.exists(rid):
            return await self._start(name, *self._restore(rid, pinned, rules))

        def new_room() -> Room:
            return Room.create(self._identity, rid, closed=closed, members=member_ids,
                               rules=rules, limits=limits)

        if create is True:
            return await self._start(name, new_room())
        driver = await self._start(name, Room.join(self._identity, rid, owner=pinned, rules=rules,
                                                   limits=limits))
        timeout = self.config.join_timeout_s if join_timeout_s is None else join_timeout_s
        if await driver.wait_joined(timeout):
            return driver
        await self.close(driver)
        if create is False:
            raise TimeoutError(
                f"no member of room {name!r} showed its document within {timeout:g} s; "
                "connect to a member first, or create the room"
            )
        logger.info("room %s: no member found in %.1f s; creating it", name, timeout)
        return await self._start(name, new_room())

    def _restore(self, rid: bytes, pinned: PeerId | None, rules: Mapping[str, WriteRule]
                 ) -> tuple[Room, RoomFile]:
        if self._store is None:  # pragma: no cover - checked by the caller
            raise AssertionError("unreachable: restoring needs a store")
        path = self._store.path_for(rid)
        file, loaded = RoomFile.open(path, fsync=self.config.fsync)
        try:
            _, descriptor, member_list = decode_header(loaded.header)
            room = Room(self._identity, rid, descriptor=descriptor, member_list=member_list,
                        owner=pinned, rules=rules, limits=self.config.room_limits)
            room.restore(loaded.envelopes, snapshot=loaded.snapshot,
                         snapshot_vector=loaded.snapshot_vector, acked=loaded.acked)
        except (DecodeError, LatticaError):
            file.close()
            raise
        return room, file

    async def _start(self, name: str, room: Room, file: RoomFile | None = None) -> RoomDriver:
        """Run ``room`` (with ``file``, the room's file it was restored from)."""
        tg = self._tg
        if tg is None:
            if file is not None:
                file.close()
            raise LocalProtocolError("room sync is not running on this node")
        driver = RoomDriver(name, room, self.config, store=self._store, file=file,
                            relink=lambda peer: self._link(driver, peer))
        if file is None and room.descriptor is not None and self._store is not None:
            driver.create_file()
        self._rooms[room.room_id] = driver
        driver.observe(lambda event: self._on_room_event(driver, event))
        await tg.start(driver.run)
        tg.start_soon(self._discover, driver)
        return driver

    async def close(self, driver: RoomDriver) -> None:
        """Leave a room: GOODBYE to its peers, stop announcing it, close its file.

        Returns once the room's file is closed (the room can be opened again
        at once), or after a few seconds if a peer does not take its GOODBYE.
        """
        if self._rooms.get(driver.room_id) is driver:
            del self._rooms[driver.room_id]
        driver.stop()
        try:
            self._node.dht.stop_providing(driver.room_id)
        except LatticaError:
            pass
        with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
            await driver.finished.wait()

    async def aclose(self) -> None:
        """Leave every room (GOODBYE to each peer) before the node closes its connections."""
        drivers = list(self._rooms.values())
        with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
            async with anyio.create_task_group() as tg:
                for driver in drivers:
                    tg.start_soon(self.close, driver)

    # -- finding members --------------------------------------------------------------------

    async def _discover(self, driver: RoomDriver) -> None:
        """Announce the room and link to its members, now and every discovery interval."""
        rid = driver.room_id
        provided = False
        while self._rooms.get(rid) is driver and not driver.closing:
            for peer in self._connected_speakers():
                self._link(driver, peer)
            try:
                dht = self._node.dht
                if not provided and driver.joined.is_set():
                    # Announced again every round until some peer stored it (a node
                    # that opens a room before it knows any DHT server tells nobody).
                    provided = await dht.provide(rid) > 0
                for provider in await dht.find_providers(rid):
                    if provider.peer_id == self.peer_id:
                        continue
                    if provider.addrs:  # a record from our own store came through no query
                        self._node.add_addresses(provider.peer_id, provider.addrs)
                    self._link(driver, provider.peer_id)
            except LatticaError as exc:
                logger.debug("room %s: DHT lookup failed: %s", driver.name, exc)
            with anyio.move_on_after(self.config.discovery_interval_s):
                await driver.stopped.wait()

    def _connected_speakers(self) -> list[PeerId]:
        return [info.peer_id for info in self._node.peers() if PROTOCOL_ID in info.protocols]

    async def _watch_peers(self) -> None:
        async with self._node.subscribe() as events:
            async for event in events:
                if isinstance(event, PeerConnected):
                    for driver in self._rooms.values():
                        self._not_serving.discard((driver.room_id, event.peer))
                elif isinstance(event, PeerIdentified) and PROTOCOL_ID in event.info.protocols:
                    for driver in list(self._rooms.values()):
                        self._link(driver, event.peer)

    def _link(self, driver: RoomDriver, peer: PeerId) -> None:
        key = (driver.room_id, peer)
        if (peer == self.peer_id or driver.closing or driver.linked(peer)
                or driver.is_banned(peer) or key in self._dialing or key in self._not_serving
                or self._tg is None):
            return
        policy = driver.room.policy
        if policy is not None and not policy.is_member(peer):
            return  # a closed room shows not even its HELLO (descriptor, members) to outsiders
        self._dialing.add(key)
        self._tg.start_soon(self._dial, driver, peer)

    async def _dial(self, driver: RoomDriver, peer: PeerId) -> None:
        key = (driver.room_id, peer)
        try:
            stream = await self._node.open_stream(peer, PROTOCOL_ID, discover=False)
        except (LatticaError, OSError) as exc:
            logger.debug("room %s: could not open a stream to %s: %s", driver.name, peer, exc)
            return
        finally:
            self._dialing.discard(key)
        reader = FrameReader(stream, max_bytes=self.config.protocol_limits.max_message_bytes)
        link = driver.attach(peer, stream, None)
        if link is None:
            await stream.aclose()
            return
        try:
            await driver.serve(link, reader, None)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception:  # a bug in one link must not take the node down (as the router does)
            logger.exception("room %s: the link to %s failed", driver.name, peer.short())

    def _on_room_event(self, driver: RoomDriver, event: RoomEvent) -> None:
        if (isinstance(event, SessionEnded) and event.by_peer
                and event.reason is GoodbyeReason.UNKNOWN_ROOM):
            self._not_serving.add((driver.room_id, event.peer))

    # -- inbound streams --------------------------------------------------------------------

    async def _serve(self, stream: Stream) -> None:
        peer = stream.remote_peer
        limits = self.config.protocol_limits
        reader = FrameReader(stream, max_bytes=limits.max_message_bytes)
        try:
            with anyio.fail_after(_HELLO_TIMEOUT_S):
                first = decode_message(await reader.read(), limits)
        except (DecodeError, TransportError, builtins.TimeoutError) as exc:
            logger.debug("yjs stream from %s: no valid HELLO: %s", peer.short(), exc)
            await stream.aclose()
            return
        if not isinstance(first, Hello):
            await stream.aclose()
            return
        driver = self._rooms.get(first.room)
        link = driver.attach(peer, stream, first) if driver is not None else None
        if driver is None or link is None:
            reason = GoodbyeReason.UNKNOWN_ROOM if driver is None else GoodbyeReason.OTHER
            goodbye = Goodbye(reason, "this peer does not serve that room"
                              if driver is None else "a stream for this room is already open")
            try:
                await write_frame(stream, encode_message(goodbye))
            except (TransportError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            await stream.aclose()
            return
        await driver.serve(link, reader, first)
