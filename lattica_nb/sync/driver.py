"""The anyio driver of one room: a stream per peer, a sender per peer, the room's file.

:class:`RoomDriver` moves bytes between a sans-IO :class:`~.room.Room` and
its peers' ``/lattica-nb/yjs/1.0.0`` streams, and its events to the room's
file and to observers. Each peer has one :class:`_Link`: a reader task that
decodes frames into :meth:`Room.receive`, and one sender task draining a
bounded queue of frames. A peer that lets its queue fill up is disconnected;
it loses nothing, because a new session starts with an exact catch-up.

A peer opens a stream for the room only when it has no link to us, so a
second stream means one of two things. The peer came back on a new
connection (it restarted, or lost the old one before we noticed): its stream
replaces ours if our session was open. Or both sides dialed at once: a stream
of ours whose dial completes after the peer's stream already opened a session
is closed unused (the peer then sees no HELLO on it); otherwise the stream
opened by the smaller peer id wins, which both sides decide alike. A message
read from a replaced stream never reaches the room. A link that ends without
a GOODBYE is reported as :class:`SessionEnded` (reason ``OTHER``,
``by_peer=False``).

Everything here runs on the node's event loop; so do observers, which must
not block. Edits made on :attr:`RoomDriver.doc` on the loop are picked up by
the room and sent by the pump task.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pycrdt import Doc

from ..errors import ConnectionClosedError, DecodeError, LatticaError, TransportError
from ..identity import PeerId
from ..protocols.router import Stream
from ..wire.framing import FrameReader
from ..wire.protobuf import ProtoWriter, parse_fields
from .config import SyncConfig
from .descriptor import RoomDescriptor
from .events import (
    DocumentJoined,
    EnvelopesStored,
    MembersChanged,
    OwnAcknowledged,
    PeerMisbehaved,
    RoomEvent,
    SessionEnded,
)
from .membership import MAX_MEMBER_LIST_BYTES, MemberList
from .protocol import GoodbyeReason, Message, decode_message, frame_message
from .room import Room, RoomStatus
from .session import SessionState
from .storage import RoomFile, RoomStore

__all__ = ["RoomDriver", "decode_header", "encode_header"]

logger = logging.getLogger(__name__)

Observer = Callable[[RoomEvent], None]
MessageObserver = Callable[[PeerId, Message], None]
_CLOSE_GRACE_S = 2.0


def encode_header(name: str, descriptor: RoomDescriptor, member_list: MemberList | None) -> bytes:
    """The room file's header: the room's name, descriptor and member list."""
    writer = ProtoWriter().string(1, name).bytes(2, descriptor.encode())
    if member_list is not None:
        writer.bytes(3, member_list.encode())
    return writer.finish()


def decode_header(header: bytes) -> tuple[str, RoomDescriptor, MemberList | None]:
    """Read a room file's header (DecodeError if it is not one)."""
    fields = parse_fields(header, max_bytes=len(header))
    name = fields.string_or_none(1) or ""
    descriptor = RoomDescriptor.decode(fields.bytes(2))
    raw = fields.bytes_or_none(3)
    member_list = MemberList.decode(raw, max_bytes=MAX_MEMBER_LIST_BYTES) if raw else None
    return name, descriptor, member_list


class _Link:
    """One peer's stream in one room: a reader task and a sender with a bounded queue."""

    def __init__(self, peer: PeerId, stream: Stream, capacity: int, *, outbound: bool) -> None:
        self.peer = peer
        self.stream = stream
        self.outbound = outbound
        """We opened the stream (else the peer did)."""
        send, receive = anyio.create_memory_object_stream[bytes](capacity)
        self.queue: MemoryObjectSendStream[bytes] = send
        self.outgoing: MemoryObjectReceiveStream[bytes] = receive
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.redial = False
        """Open a new stream once this one is closed (it was dropped for falling behind)."""

    def push(self, messages: list[Message]) -> bool:
        """Queue frames for the sender; False if the queue is full (the peer is too slow)."""
        try:
            for message in messages:
                self.queue.send_nowait(frame_message(message))
        except anyio.WouldBlock:
            return False
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return True  # the link is going away anyway
        return True


class RoomDriver:
    """Drives one :class:`Room` over a node's streams; see the module docs."""

    def __init__(
        self,
        name: str,
        room: Room,
        config: SyncConfig,
        *,
        store: RoomStore | None,
        file: RoomFile | None,
        relink: Callable[[PeerId], None] | None = None,
    ) -> None:
        """``relink(peer)`` is asked to open a new stream to a peer whose link was
        dropped because it fell behind (the new session catches it up exactly)."""
        self.name = name
        self.room = room
        self._config = config
        self._store = store
        self._file = file
        self._links: dict[PeerId, _Link] = {}
        self._no_document: set[PeerId] = set()
        self._observers: list[Observer] = []
        self._message_observers: list[MessageObserver] = []
        self._relink = relink
        self._lost: deque[SessionEnded] = deque()
        self._banned_until: dict[PeerId, float] = {}
        self._kick = anyio.Event()
        self._closed = False
        self.joined = anyio.Event()
        self.stopped = anyio.Event()
        """Set when the room starts leaving (nothing new is linked from then on)."""
        self.finished = anyio.Event()
        """Set once :meth:`run` returned: GOODBYEs sent, links and the room's file closed."""
        if room.descriptor is not None:
            self.joined.set()
        room.set_wakeup(self._wake)

    # -- public -----------------------------------------------------------------------------

    @property
    def doc(self) -> Doc[Any]:
        return self.room.doc

    @property
    def room_id(self) -> bytes:
        return self.room.room_id

    def status(self) -> RoomStatus:
        return self.room.status()

    def linked(self, peer: PeerId) -> bool:
        return peer in self._links

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(event)`` on the loop for every room event; returns an unsubscribe."""
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def observe_received(self, observer: MessageObserver) -> Callable[[], None]:
        """Call ``observer(peer, message)`` for every message a peer sent, before the room
        handles it (a protocol trace: count frames, envelopes, catch-up sizes); returns an
        unsubscribe."""
        self._message_observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._message_observers:
                self._message_observers.remove(observer)

        return unsubscribe

    @property
    def closing(self) -> bool:
        """The room is leaving or gone (:meth:`stop` was called)."""
        return self._closed

    def is_banned(self, peer: PeerId) -> bool:
        return self._banned_until.get(peer, 0.0) > anyio.current_time()

    # -- lifecycle (called by the service) --------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Pump until :meth:`stop`; then say GOODBYE, close every link and the file."""
        task_status.started()
        try:
            while not self._closed:
                await self._kick.wait()
                self._kick = anyio.Event()
                self.pump()
        finally:
            self._closed = True
            self.stopped.set()
            try:
                with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
                    await self._say_goodbye()
                for link in list(self._links.values()):
                    self._drop(link)
            finally:
                if self._file is not None:
                    self._file.close()
                self.finished.set()

    def stop(self) -> None:
        """Leave the room (the run task finishes the goodbyes and returns)."""
        self._closed = True
        self._kick.set()

    async def _say_goodbye(self) -> None:
        self.room.leave()
        self.pump()
        for link in list(self._links.values()):
            link.queue.close()
        for link in list(self._links.values()):
            await link.done.wait()

    def attach(self, peer: PeerId, stream: Stream, first: Message | None) -> _Link | None:
        """Make ``stream`` the room's link to ``peer`` (run it with :meth:`serve`); None if refused.

        ``first``: the peer's HELLO that opened an inbound stream; None for a
        stream we opened (our HELLO goes first).
        """
        if self._closed or self.is_banned(peer):
            return None
        outbound = first is None
        old = self._links.get(peer)
        if old is not None:
            replaces = self._replaces(old, stream, outbound=outbound)
            logger.debug("room %s: a second stream with %s (%s): %s", self.name, peer.short(),
                         "ours" if outbound else "theirs",
                         "it replaces the first" if replaces else "refused")
            if not replaces:
                return None
            self._drop(old)
        link = _Link(peer, stream, self._config.sender_queue_messages, outbound=outbound)
        self._links[peer] = link
        if outbound:
            self.room.connect(peer)
            self.pump()
        return link

    def _replaces(self, old: _Link, stream: Stream, *, outbound: bool) -> bool:
        """Whether a new ``stream`` to ``old.peer`` replaces ``old`` (see the module docs)."""
        session = self.room.sessions().get(old.peer)
        if session is None or session.state is SessionState.CLOSED:
            return True  # the old link is only winding down (its session ended)
        if session.is_open:
            if outbound and not old.outbound:
                return False  # the peer's stream came first and already works: keep it
            if not outbound and stream.connection is not old.stream.connection:
                return True  # the peer came back on a new connection: it lost the old one
        if old.outbound == outbound:
            return True
        # Both dialed at once: the stream opened by the smaller peer id wins on both sides.
        return outbound == (self.room.peer_id < old.peer)

    # -- the link tasks ---------------------------------------------------------------------

    async def serve(self, link: _Link, reader: FrameReader, first: Message | None) -> None:
        """Run a link from :meth:`attach` until it ends (its stream is closed on return)."""
        try:
            with link.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._send_loop, link)
                    await self._read_loop(link, reader, first)
                    tg.cancel_scope.cancel()
        finally:
            self._forget(link, "the stream closed without a GOODBYE")
            self.pump()
            link.queue.close()
            link.outgoing.close()
            with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
                await link.stream.aclose()
            link.done.set()
            # Only now: the peer sees this stream end before our next one begins, so it
            # does not take the new stream for a second one (see _replaces).
            if link.redial and self._relink is not None and not self._closed:
                self._relink(link.peer)

    async def _read_loop(self, link: _Link, reader: FrameReader, first: Message | None) -> None:
        peer, limits = link.peer, self._config.protocol_limits
        try:
            if first is not None:
                self._receive(link, first)
            limit = limits.max_message_bytes
            while (data := await reader.read_or_none(max_bytes=limit)) is not None:
                if not self._receive(link, decode_message(data, limits)):
                    return
        except DecodeError as exc:
            if self._links.get(peer) is link:
                self.room.protocol_error(peer, exc)
                self.pump()
        except (TransportError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            logger.debug("room %s: link to %s ended: %s", self.name, peer.short(), exc)

    def _receive(self, link: _Link, message: Message) -> bool:
        """Hand ``message`` to the room; False if ``link`` is no longer the peer's link.

        The room keeps one session per peer, so a replaced link's reader must not
        deliver even one more message (the new session would take it). It can:
        anyio lets a task whose read already completed run on after its scope was
        cancelled, and a buffered frame is read without a checkpoint.
        """
        peer = link.peer
        if self._links.get(peer) is not link:
            return False
        for observer in list(self._message_observers):
            try:
                observer(peer, message)
            except Exception:  # an observer's bug must not stop the room
                logger.exception("room %s: message observer failed", self.name)
        self.room.receive(peer, message)
        self.pump()
        return True

    async def _send_loop(self, link: _Link) -> None:
        try:
            async with link.outgoing:
                async for frame in link.outgoing:
                    await link.stream.send(frame)
        except (TransportError, anyio.BrokenResourceError, anyio.ClosedResourceError,
                ConnectionClosedError) as exc:
            logger.debug("room %s: sending to %s failed: %s", self.name, link.peer.short(), exc)
        link.scope.cancel()

    def _drop(self, link: _Link, why: str | None = None) -> None:
        """End ``link`` now; ``why`` (if its session was still open) is reported to observers."""
        self._forget(link, why)
        link.queue.close()
        link.scope.cancel()

    def _forget(self, link: _Link, why: str | None) -> None:
        """Remove ``link`` if it is still the peer's link; its session ends with it."""
        peer = link.peer
        if self._links.get(peer) is not link:
            return
        del self._links[peer]
        session = self.room.sessions().get(peer)
        self.room.disconnect(peer)
        if why is not None and session is not None and session.state is not SessionState.CLOSED:
            self._lost.append(SessionEnded(peer, GoodbyeReason.OTHER, why, by_peer=False))

    # -- pumping ----------------------------------------------------------------------------

    def _wake(self) -> None:
        self._kick.set()

    def pump(self) -> None:
        """Move the room's output to the links and its events to the file and observers."""
        room = self.room
        for peer, messages in room.outgoing():
            link = self._links.get(peer)
            if link is None:
                continue
            if not link.push(messages):
                limit = self._config.sender_queue_messages
                logger.warning("room %s: %s fell %d messages behind; disconnected (it catches "
                               "up on a new stream)", self.name, peer.short(), limit)
                link.redial = True
                self._drop(link, f"fell more than {limit} messages behind")
        while (event := room.next_event()) is not None:
            self._dispatch(event)
        while self._lost:
            self._dispatch(self._lost.popleft())

    def _dispatch(self, event: RoomEvent) -> None:
        self._handle(event)
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # an observer's bug must not stop the room
                logger.exception("room %s: observer failed", self.name)

    def _handle(self, event: RoomEvent) -> None:
        if isinstance(event, EnvelopesStored):
            self._persist(event)
        elif isinstance(event, OwnAcknowledged):
            if self._file is not None:
                self._file.append_acked(event.seq)
        elif isinstance(event, DocumentJoined):
            self.create_file()
            self.joined.set()
            self._link_again_after_joining()
        elif isinstance(event, MembersChanged):
            self._compact()
        elif isinstance(event, SessionEnded):
            if event.reason is GoodbyeReason.NO_DOCUMENT:
                self._no_document.add(event.peer)
                if self.joined.is_set():  # we got the document meanwhile: try again at once
                    self._link_again_after_joining()
            link = self._links.get(event.peer)
            if link is not None:
                link.queue.close()  # the sender ends after the GOODBYE, then the stream closes
        elif isinstance(event, PeerMisbehaved) and event.closed:
            self._banned_until[event.peer] = anyio.current_time() + self._config.ban_s

    def _link_again_after_joining(self) -> None:
        """Peers that were joining too ended their sessions with NO_DOCUMENT: link again now."""
        peers, self._no_document = self._no_document, set()
        for peer in peers:
            link = self._links.get(peer)
            if link is not None:
                link.redial = True  # once its stream is closed
            elif self._relink is not None and not self._closed:
                self._relink(peer)

    # -- the room's file --------------------------------------------------------------------

    def _header(self) -> bytes:
        descriptor = self.room.descriptor
        if descriptor is None:  # pragma: no cover - only called once the room has one
            raise AssertionError("unreachable: the room has a descriptor here")
        policy = self.room.policy
        return encode_header(self.name, descriptor, policy.member_list if policy else None)

    def create_file(self) -> None:
        """Start the room's file (a created room, or a joined one once its document is known)."""
        if self._store is None or self._file is not None:
            return
        path = self._store.path_for(self.room_id)
        self._file = RoomFile.create(path, self._header(), fsync=self._config.fsync)
        envelopes = list(self.room.log.envelopes())
        if envelopes:
            self._file.append(envelopes)

    def _persist(self, event: EnvelopesStored) -> None:
        file = self._file
        if file is None:
            return
        try:
            file.append(event.envelopes)
        except LatticaError:
            logger.exception("room %s: could not write to %s; the room goes on in memory",
                             self.name, file.path)
            self._file = None
            return
        if file.appended_since_compaction >= self._config.compact_after_envelopes:
            self._compact()

    def _compact(self) -> None:
        file, room = self._file, self.room
        if file is None:
            return
        snapshot = None if room.has_pending_updates else room.doc.get_update()
        file.compact(self._header(), room.log.envelopes(), snapshot=snapshot,
                     snapshot_vector=room.log.vector(), acked=room.acked_own)

    async def wait_joined(self, timeout_s: float) -> bool:
        with anyio.move_on_after(timeout_s if math.isfinite(timeout_s) else None):
            await self.joined.wait()
        return self.joined.is_set()

