"""One room: its Yjs document, its envelope log and its sync with every peer (sans-IO).

A :class:`Room` owns a pycrdt ``Doc`` (32-bit client id), the room's
:class:`~.log.EnvelopeLog`, its :class:`~.membership.RoomPolicy` and one
:class:`~.session.PeerSession` per peer. It is driven like aioquic's
connection: the driver hands in the peers' decoded messages
(:meth:`Room.receive`) and sends what :meth:`Room.outgoing` returns; what
happened comes out of :meth:`Room.next_event`. It never does I/O.

* **Local edits**: any transaction on :attr:`Room.doc` (made on the driver's
  thread) is signed as our next envelope, appended to the log, and forwarded
  to every open session (:class:`EnvelopesStored` asks the driver to persist it).
* **Remote envelopes**: each one's author must be a member (else the relaying
  peer is scored down); the log checks signature, document and sequence; an
  accepted update is judged by the policy on a scratch copy and applied, kept
  aside until what it builds on arrives (MissingDependencies), or refused
  (kept in the log, so every peer reaches the same log, but never applied).
  New envelopes go on to every other session unchanged.
* **Document identity**: a created room has a fresh guid and an owner-signed
  :class:`~.descriptor.RoomDescriptor`; a joining room adopts the first valid
  descriptor a peer shows (or the pinned owner's). A live room is never
  re-seeded from a snapshot; other guids and epochs are never merged.
* **Misbehaviour**: forged, foreign or non-member envelopes and undecodable
  messages score the sending peer; at :attr:`RoomLimits.misbehaviour_limit`
  its session is closed (:class:`PeerMisbehaved` with ``closed=True``).
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, TransactionEvent

from ..errors import (
    ConfigError,
    DecodeError,
    LocalProtocolError,
    MissingDependencies,
    PermissionDenied,
    VerificationError,
)
from ..identity import PeerId, PrivateKey
from .config import RoomLimits
from .descriptor import RoomDescriptor
from .envelope import Envelope, new_guid
from .events import (
    AwarenessChanged,
    DocumentChanged,
    DocumentJoined,
    EnvelopesStored,
    MembersChanged,
    OwnAcknowledged,
    PeerMisbehaved,
    PeerSynced,
    RoomEvent,
    SessionEnded,
    SessionOpened,
    UpdateRefused,
)
from .log import EnvelopeLog, OfferStatus
from .membership import MemberList, RoomPolicy, WriteRule
from .presence import Presence, decode_presence, encode_presence
from .protocol import GoodbyeReason, Hello, Message, ProtocolLimits
from .rules import DEFAULT_RULES
from .session import (
    AwarenessReceived,
    EnvelopesReceived,
    HandshakeCompleted,
    MembersReceived,
    PeerAcknowledged,
    PeerSession,
    SessionClosed,
    SyncCompleted,
)

__all__ = ["Room", "RoomLimits", "RoomStatus", "new_client_id"]

logger = logging.getLogger(__name__)

_EMPTY_UPDATE = b"\x00\x00"
_DEFAULT_PROTOCOL_LIMITS = ProtocolLimits()
_DEFAULT_ROOM_LIMITS = RoomLimits()


def new_client_id() -> int:
    """A random 32-bit Yjs client id (y-py and Yjs in the browser lose larger ones)."""
    return secrets.randbits(32)


@dataclass(frozen=True, slots=True)
class RoomStatus:
    """A snapshot of a room's state for people (and the notebook surface)."""

    room: bytes
    guid: bytes | None
    epoch: int
    owner: PeerId | None
    closed: bool
    peers: tuple[PeerId, ...]
    """Peers with an open session."""
    envelopes: int
    unacknowledged: int
    """Our own updates no peer has acknowledged yet: lost if this machine is lost now."""
    pending: int
    refused: int
    held: int


class Room:
    """See the module docs. Build with :meth:`create`, :meth:`join` or the constructor."""

    def __init__(
        self,
        identity: PrivateKey,
        room: bytes,
        *,
        descriptor: RoomDescriptor | None,
        member_list: MemberList | None = None,
        owner: PeerId | None = None,
        rules: Mapping[str, WriteRule] = DEFAULT_RULES,
        client_id: int | None = None,
        limits: RoomLimits = _DEFAULT_ROOM_LIMITS,
        protocol_limits: ProtocolLimits = _DEFAULT_PROTOCOL_LIMITS,
    ) -> None:
        """``descriptor`` None: a room being joined; ``owner`` pins whose room it must be."""
        self._identity = identity
        self.peer_id = PeerId.from_public_key(identity.public_key)
        self._room = bytes(room)
        self._rules = dict(rules)
        self._pinned_owner = owner
        self._limits = limits
        self._protocol_limits = protocol_limits
        self.doc: Doc[Any] = Doc(client_id=new_client_id() if client_id is None else client_id)
        self._descriptor: RoomDescriptor | None = None
        self._policy: RoomPolicy | None = None
        self._log = EnvelopeLog(self._room, guid=None)
        self._sessions: dict[PeerId, PeerSession] = {}
        self._events: deque[RoomEvent] = deque()
        self._scores: dict[PeerId, int] = {}
        self._resynced: dict[PeerId, dict[PeerId, int]] = {}
        self._pending: deque[Envelope] = deque()
        self._refused: set[tuple[PeerId, int]] = set()
        self._backlog: list[bytes] = []
        self._applying = False
        self._acked_own = 0
        self._presence: dict[PeerId, Presence] = {}
        self._own_presence: Presence | None = None
        self._wakeup: Callable[[], None] | None = None
        if descriptor is not None:
            self._adopt(descriptor, member_list)
        self._subscription = self.doc.observe(self._on_transaction)

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        identity: PrivateKey,
        room: bytes,
        *,
        closed: bool = False,
        members: Iterable[PeerId] = (),
        rules: Mapping[str, WriteRule] = DEFAULT_RULES,
        client_id: int | None = None,
        limits: RoomLimits = _DEFAULT_ROOM_LIMITS,
    ) -> Room:
        """A new document (fresh guid, epoch 0) owned by ``identity``."""
        descriptor = RoomDescriptor.create(identity, room, new_guid(), closed=closed)
        member_list = MemberList.create(identity, room, members, version=1) if closed else None
        if members and not closed:
            raise ConfigError("a member list needs a closed room (closed=True)")
        return cls(identity, room, descriptor=descriptor, member_list=member_list, rules=rules,
                   client_id=client_id, limits=limits)

    @classmethod
    def join(
        cls,
        identity: PrivateKey,
        room: bytes,
        *,
        owner: PeerId | None = None,
        rules: Mapping[str, WriteRule] = DEFAULT_RULES,
        client_id: int | None = None,
        limits: RoomLimits = _DEFAULT_ROOM_LIMITS,
    ) -> Room:
        """A room whose document comes from the first member that shows a valid descriptor."""
        return cls(identity, room, descriptor=None, owner=owner, rules=rules,
                   client_id=client_id, limits=limits)

    def restore(
        self,
        envelopes: Iterable[Envelope],
        *,
        snapshot: bytes | None = None,
        snapshot_vector: Mapping[PeerId, int] | None = None,
        acked: int = 0,
    ) -> None:
        """Load what the room's file kept (our own file: signatures are not checked again).

        ``snapshot`` is a full-state update covering ``snapshot_vector``; the
        envelopes beyond it are judged and applied as if they had just arrived.
        """
        if self._descriptor is None:
            raise LocalProtocolError("restore needs the room's descriptor (from its file header)")
        loaded = list(envelopes)
        self._log.restore(loaded, verify=False)
        covered = dict(snapshot_vector or {})
        if snapshot is not None:
            self._apply(snapshot)
        self._acked_own = max(self._acked_own, acked)
        for envelope in self._log.envelopes():
            if envelope.seq > covered.get(envelope.author, 0):
                self._judge_and_apply(envelope, trusted=envelope.author == self.peer_id)
        self._events.clear()  # nothing new happened: the file already holds all of it

    # -- properties -------------------------------------------------------------------------

    @property
    def room_id(self) -> bytes:
        return self._room

    @property
    def descriptor(self) -> RoomDescriptor | None:
        return self._descriptor

    @property
    def policy(self) -> RoomPolicy | None:
        return self._policy

    @property
    def log(self) -> EnvelopeLog:
        return self._log

    @property
    def is_owner(self) -> bool:
        return self._descriptor is not None and self._descriptor.owner == self.peer_id

    @property
    def acked_own(self) -> int:
        return self._acked_own

    @property
    def unacknowledged(self) -> int:
        """Our own envelopes that no peer has acknowledged."""
        return max(self._log.seq(self.peer_id) - self._acked_own, 0)

    @property
    def has_pending_updates(self) -> bool:
        return bool(self._pending)

    def sessions(self) -> dict[PeerId, PeerSession]:
        return dict(self._sessions)

    def open_peers(self) -> list[PeerId]:
        return [peer for peer, session in self._sessions.items() if session.is_open]

    def presence(self) -> dict[PeerId, Presence]:
        """The last presence of every peer with an open session (ours included, if set)."""
        out = {p: s for p, s in self._presence.items() if p in self._sessions}
        if self._own_presence is not None:
            out[self.peer_id] = self._own_presence
        return out

    def status(self) -> RoomStatus:
        d = self._descriptor
        return RoomStatus(
            room=self._room,
            guid=self._log.guid,
            epoch=self._log.epoch,
            owner=d.owner if d else None,
            closed=d.closed if d else False,
            peers=tuple(self.open_peers()),
            envelopes=len(self._log),
            unacknowledged=self.unacknowledged,
            pending=len(self._pending),
            refused=len(self._refused),
            held=self._log.held_count,
        )

    def set_wakeup(self, wakeup: Callable[[], None] | None) -> None:
        """Called (on the room's thread) whenever output or events become available."""
        self._wakeup = wakeup

    # -- output -----------------------------------------------------------------------------

    def next_event(self) -> RoomEvent | None:
        return self._events.popleft() if self._events else None

    def outgoing(self) -> list[tuple[PeerId, list[Message]]]:
        """Messages to send, per peer, in order."""
        out = []
        for peer, session in self._sessions.items():
            messages = session.messages_to_send()
            if messages:
                out.append((peer, messages))
        return out

    # -- peers ------------------------------------------------------------------------------

    def connect(self, peer: PeerId) -> None:
        """Start a session with ``peer`` (we send HELLO first); no-op if one exists."""
        if peer == self.peer_id:
            raise LocalProtocolError("a room does not sync with itself")
        if peer not in self._sessions:
            self._new_session(peer).start()
            self._wake()

    def disconnect(self, peer: PeerId) -> None:
        """The stream to ``peer`` is gone: forget its session (a later connect starts afresh)."""
        self._sessions.pop(peer, None)
        self._resynced.pop(peer, None)
        if self._presence.pop(peer, None) is not None:
            self._emit(AwarenessChanged(peer))

    def leave(self) -> None:
        """Say GOODBYE to every peer (then send :meth:`outgoing` and close the streams)."""
        for peer, session in list(self._sessions.items()):
            session.close(GoodbyeReason.NORMAL, "leaving the room")
            self._drain(peer, session)
        self._wake()

    def receive(self, peer: PeerId, message: Message) -> None:
        """Handle one decoded message from ``peer`` (a session is made on its first HELLO)."""
        session = self._sessions.get(peer)
        if session is None:
            if not isinstance(message, Hello):
                return  # a late message for a session we dropped
            session = self._new_session(peer)
        if isinstance(message, Hello):
            refusal = self._check_hello(peer, message)
            if refusal is not None:
                session.close(*refusal)
                self._drain(peer, session)
                return
        session.receive(message)
        self._drain(peer, session)

    def protocol_error(self, peer: PeerId, error: Exception) -> None:
        """``peer`` sent bytes that do not decode: score it and end its session."""
        session = self._sessions.get(peer)
        self._penalize(peer, f"sent an undecodable message: {error}", severe=True)
        if session is not None:
            self._drain(peer, session)

    # -- presence and members -----------------------------------------------------------------

    def set_presence(self, state: Mapping[str, Any] | None) -> None:
        """Our presence (None: leaving); sent to every open session now and to new ones."""
        clock = self._own_presence.clock + 1 if self._own_presence else 1
        presence = Presence(self.doc.client_id, clock, None if state is None else dict(state))
        payload = encode_presence(presence)
        self._own_presence = presence
        for session in self._sessions.values():
            if session.is_open:
                session.send_awareness(payload)
        self._wake()

    def set_members(self, members: Iterable[PeerId]) -> MemberList:
        """As the owner of a closed room, replace its member list (the next version)."""
        policy, current = self._policy, self._policy.member_list if self._policy else None
        if policy is None or current is None:
            raise LocalProtocolError("only a closed room has a member list")
        if not self.is_owner:
            raise PermissionDenied(
                f"only the room owner {policy.owner} changes the member list",
                entry=None, rule="owner-only",
            )
        member_list = MemberList.create(
            self._identity, self._room, members, version=current.version + 1
        )
        policy.update_members(member_list)
        self._members_changed(member_list, source=None)
        return member_list

    # -- local edits --------------------------------------------------------------------------

    def _on_transaction(self, event: TransactionEvent) -> None:
        if self._applying:
            return
        update = bytes(event.update)
        if update == _EMPTY_UPDATE:
            return
        if self._log.guid is None:
            if len(self._backlog) >= self._limits.max_local_backlog:
                logger.warning("room %s: local edit dropped while joining (backlog full)",
                               self._room.hex()[:8])
                return
            self._backlog.append(update)
            return
        self._sign_local(update)
        self._wake()

    def _sign_local(self, update: bytes) -> None:
        log = self._log
        guid = log.guid
        if guid is None:  # pragma: no cover - callers check
            raise AssertionError("unreachable: the room has a document here")
        seq = log.seq(self.peer_id) + 1
        envelope = Envelope.create(self._identity, self._room, seq, update, guid=guid,
                                   epoch=log.epoch)
        result = log.offer(envelope)
        if result.status is not OfferStatus.ACCEPTED:
            # The edit stays in our document but cannot be sent (too large): say so loudly.
            self._emit(UpdateRefused(self.peer_id, seq, None, "local", result.reason))
            return
        self._emit(EnvelopesStored(result.accepted))
        self._emit(DocumentChanged(frozenset({self.peer_id}), local=True))
        for session in self._sessions.values():
            session.forward_new()

    # -- remote envelopes ---------------------------------------------------------------------

    def _on_envelopes(self, peer: PeerId, session: PeerSession, batch: Iterable[Envelope]) -> None:
        policy = self._policy
        accepted: list[Envelope] = []
        resync = False
        for envelope in batch:
            if policy is not None and not policy.is_member(envelope.author):
                self._penalize(peer, f"relayed an update by non-member {envelope.author}")
                continue
            result = self._log.offer(envelope)
            status = result.status
            if status is OfferStatus.ACCEPTED:
                accepted.extend(result.accepted)
            elif status is OfferStatus.DROPPED:
                resync = True
            elif status is OfferStatus.REJECTED:
                if result.equivocation:
                    logger.warning("room %s: %s equivocated: %s", self._room.hex()[:8],
                                   envelope.author, result.reason)
                else:
                    self._penalize(peer, result.reason)
        if not accepted:
            if resync:
                self._resync(peer, session)
            return
        authors: set[PeerId] = set()
        for envelope in accepted:
            authors |= self._judge_and_apply(envelope, trusted=False)
        self._emit(EnvelopesStored(tuple(accepted)))
        if authors:
            self._emit(DocumentChanged(frozenset(authors), local=False))
        for other in self._sessions.values():
            other.forward_new()
        session.acknowledge()
        if resync:
            self._resync(peer, session)

    def _judge_and_apply(self, envelope: Envelope, *, trusted: bool) -> set[PeerId]:
        """Apply ``envelope`` if the rules allow; the authors whose updates took effect."""
        if not self._try_apply(envelope, trusted=trusted):
            return set()
        applied = {envelope.author}
        progress = True
        while progress and self._pending:
            progress = False
            for _ in range(len(self._pending)):
                waiting = self._pending.popleft()
                if self._try_apply(waiting, trusted=waiting.author == self.peer_id):
                    applied.add(waiting.author)
                    progress = True
        return applied

    def _try_apply(self, envelope: Envelope, *, trusted: bool) -> bool:
        """True if applied; False if kept pending or refused."""
        policy = self._policy
        if not trusted and policy is not None:
            try:
                policy.check(envelope.author, envelope.update, self.doc)
            except MissingDependencies:
                if len(self._pending) >= self._limits.max_pending_updates:
                    dropped = self._pending.popleft()
                    self._refuse(dropped, None, "pending", "waited too long for what it builds on")
                self._pending.append(envelope)
                return False
            except PermissionDenied as exc:
                self._refuse(envelope, exc.entry, exc.rule, str(exc))
                return False
            except DecodeError as exc:
                self._refuse(envelope, None, "yjs", str(exc))
                return False
        self._apply(envelope.update)
        return True

    def _refuse(self, envelope: Envelope, entry: str | None, rule: str, reason: str) -> None:
        self._refused.add((envelope.author, envelope.seq))
        logger.warning("room %s: update %d of %s refused: %s", self._room.hex()[:8],
                       envelope.seq, envelope.author, reason)
        self._emit(UpdateRefused(envelope.author, envelope.seq, entry, rule, reason))

    def _apply(self, update: bytes) -> None:
        self._applying = True
        try:
            with self.doc.transaction():
                self.doc.apply_update(update)
        finally:
            self._applying = False

    # -- sessions -----------------------------------------------------------------------------

    def _new_session(self, peer: PeerId) -> PeerSession:
        session = PeerSession(self._log, peer, limits=self._protocol_limits,
                              hello_extra=self._hello_extra)
        self._sessions[peer] = session
        return session

    def _hello_extra(self) -> tuple[bytes, bytes]:
        d = self._descriptor
        member_list = self._policy.member_list if self._policy else None
        return (d.encode() if d else b"", member_list.encode() if member_list else b"")

    def _check_hello(self, peer: PeerId, hello: Hello) -> tuple[GoodbyeReason, str] | None:
        """The room's part of a HELLO: descriptor, member list, membership."""
        if hello.room != self._room or hello.guid is None:
            return self._membership_refusal(peer)  # the session answers the rest
        try:
            descriptor = RoomDescriptor.decode(hello.descriptor)
            descriptor.verify()
            if (descriptor.room, descriptor.guid, descriptor.epoch) != (
                hello.room, hello.guid, hello.epoch
            ):
                raise VerificationError("the descriptor names another document than the HELLO")
        except (DecodeError, VerificationError) as exc:
            self._penalize(peer, f"showed an invalid room descriptor: {exc}")
            return GoodbyeReason.PROTOCOL_ERROR, f"invalid room descriptor: {exc}"
        if self._descriptor is None:
            try:
                descriptor.check_owner(self._pinned_owner)
                member_list = self._hello_members(descriptor, hello.members)
            except (DecodeError, VerificationError) as exc:
                return GoodbyeReason.GUID_MISMATCH, str(exc)
            if member_list is not None and self.peer_id not in member_list:
                return GoodbyeReason.NOT_A_MEMBER, "we are not on this closed room's member list"
            self._adopt(descriptor, member_list)
            self._emit(DocumentJoined(descriptor))
            for update in self._backlog:
                self._sign_local(update)
            self._backlog.clear()
        elif descriptor == self._descriptor and hello.members and self._policy is not None:
            self._on_members(peer, hello.members)
        return self._membership_refusal(peer)

    def _hello_members(self, descriptor: RoomDescriptor, raw: bytes) -> MemberList | None:
        if not descriptor.closed:
            return None
        if not raw:
            raise VerificationError("a closed room's HELLO must carry its member list")
        member_list = MemberList.decode(raw, max_bytes=self._protocol_limits.max_descriptor_bytes)
        if member_list.owner != descriptor.owner or member_list.room != descriptor.room:
            raise VerificationError("the member list is not the room owner's")
        member_list.verify()
        return member_list

    def _membership_refusal(self, peer: PeerId) -> tuple[GoodbyeReason, str] | None:
        if self._policy is not None and not self._policy.is_member(peer):
            return GoodbyeReason.NOT_A_MEMBER, f"{peer} is not on this closed room's member list"
        return None

    def _adopt(self, descriptor: RoomDescriptor, member_list: MemberList | None) -> None:
        if descriptor.room != self._room:
            raise LocalProtocolError("the descriptor is for another room")
        descriptor.check_owner(self._pinned_owner)
        if self._log.guid is None:
            self._log.adopt(descriptor.guid, descriptor.epoch)
        self._descriptor = descriptor
        if descriptor.closed:
            if member_list is None:
                raise LocalProtocolError("a closed room needs its member list")
            self._policy = RoomPolicy.closed(self._room, descriptor.owner, member_list,
                                             rules=self._rules)
        else:
            self._policy = RoomPolicy.open(self._room, descriptor.owner, rules=self._rules)

    def _on_members(self, peer: PeerId, raw: bytes) -> None:
        policy = self._policy
        if policy is None or policy.is_open:
            self._penalize(peer, "sent a member list for an open room")
            return
        current = policy.member_list
        try:
            limit = self._protocol_limits.max_descriptor_bytes
            member_list = MemberList.decode(raw, max_bytes=limit)
            if current is not None and member_list.version < current.version:
                member_list.verify()  # an honest peer that missed a change: tell it the news
                session = self._sessions.get(peer)
                if session is not None:
                    session.send_members(current.encode())
                return
            adopted = policy.update_members(member_list)
        except (DecodeError, VerificationError) as exc:
            self._penalize(peer, f"sent an invalid member list: {exc}")
            return
        if adopted:
            self._members_changed(member_list, source=peer)

    def _members_changed(self, member_list: MemberList, *, source: PeerId | None) -> None:
        self._emit(MembersChanged(member_list))
        raw = member_list.encode()
        for peer, session in list(self._sessions.items()):
            if peer not in member_list:
                session.close(GoodbyeReason.NOT_A_MEMBER, "removed from the room's member list")
                self._drain(peer, session)
            elif peer != source:
                session.send_members(raw)
        self._wake()

    def _drain(self, peer: PeerId, session: PeerSession) -> None:
        """Turn the session's events into the room's work and events."""
        while (event := session.next_event()) is not None:
            if isinstance(event, EnvelopesReceived):
                self._on_envelopes(peer, session, event.envelopes)
            elif isinstance(event, HandshakeCompleted):
                self._emit(SessionOpened(peer))
                if self._own_presence is not None:
                    session.send_awareness(encode_presence(self._own_presence))
            elif isinstance(event, SyncCompleted):
                self._emit(PeerSynced(peer))
                if self._log.gaps():
                    self._resync(peer, session)
            elif isinstance(event, PeerAcknowledged):
                acked = event.vector.get(self.peer_id, 0)
                if acked > self._acked_own:
                    self._acked_own = min(acked, self._log.seq(self.peer_id))
                    self._emit(OwnAcknowledged(self._acked_own))
            elif isinstance(event, AwarenessReceived):
                self._on_awareness(peer, event.payload)
            elif isinstance(event, MembersReceived):
                self._on_members(peer, event.member_list)
            elif isinstance(event, SessionClosed):
                self._emit(SessionEnded(peer, event.reason, event.message, event.by_peer,
                                        event.remote_epoch))
        self._wake()

    def _resync(self, peer: PeerId, session: PeerSession) -> None:
        """Ask ``peer`` again for what we lack, unless we asked already with this same log:
        its answer would be the same (a gap nobody can fill must not loop)."""
        vector = self._log.vector()
        if self._resynced.get(peer) != vector:
            self._resynced[peer] = vector
            session.resync()

    def _on_awareness(self, peer: PeerId, payload: bytes) -> None:
        try:
            presence = decode_presence(payload)
        except DecodeError as exc:
            self._penalize(peer, f"sent invalid presence: {exc}")
            return
        if presence.state is None:
            self._presence.pop(peer, None)
        else:
            self._presence[peer] = presence
        self._emit(AwarenessChanged(peer))

    def _penalize(self, peer: PeerId, reason: str, *, severe: bool = False) -> None:
        score = self._scores.get(peer, 0) + (self._limits.misbehaviour_limit if severe else 1)
        self._scores[peer] = score
        closed = score >= self._limits.misbehaviour_limit
        logger.warning("room %s: peer %s %s", self._room.hex()[:8], peer, reason)
        self._emit(PeerMisbehaved(peer, reason, closed))
        session = self._sessions.get(peer)
        if closed and session is not None:
            session.close(GoodbyeReason.PROTOCOL_ERROR, reason)

    def _emit(self, event: RoomEvent) -> None:
        self._events.append(event)

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup()
