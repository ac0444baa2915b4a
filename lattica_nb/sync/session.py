"""One peer's sync session in one room: the ``/lattica-nb/yjs/1.0.0`` exchange (sans-IO).

A :class:`PeerSession` is fed the peer's decoded messages (:meth:`receive`)
and hands back messages to send (:meth:`messages_to_send`) and events
(:meth:`next_event`). It shares the room's :class:`EnvelopeLog` with the
room's other sessions, reads it to answer, and never writes envelopes into
it: the room offers what :class:`EnvelopesReceived` carries to the log (after
its membership check), applies what is accepted, calls :meth:`forward_new` on
every session to pass new envelopes on, and :meth:`acknowledge` on the
session they came from.

The exchange:

1. Both sides send HELLO (room id, document guid, epoch, flags) at once.
2. On the peer's HELLO the document is checked (rules below); on a match we
   send SYNC_STEP1 with our envelope vector.
3. A SYNC_STEP1 is answered with SYNC_STEP2 batches holding exactly the
   envelopes the peer lacks (the last batch is ``final``; an empty final one
   if it lacks nothing). From then on, envelopes the log accepts are sent as
   UPDATEs, each at most once, never back to a peer known to have it.
4. ACK reports seqs accepted (merged by maximum); with step1 vectors they give
   :func:`unacknowledged_count`.

Document rules (checked on HELLO; a session never merges two documents):

* Different room id: GOODBYE ``UNKNOWN_ROOM``.
* Different guid: a different document that happens to share the room id.
  GOODBYE ``GUID_MISMATCH``; nothing is exchanged, nothing re-seeded.
* Same guid, different epoch: another generation of the document (an owner
  reset or compaction). GOODBYE ``EPOCH_MISMATCH`` in *both* directions, the
  higher epoch included. Envelopes sign their epoch, so nothing can cross
  generations anyway. A session never moves a room to another epoch by
  itself, since any peer could claim a higher one: :class:`SessionClosed`
  reports the peer's epoch, and the room decides (for instance after checking
  an owner-signed record) whether to drop its log and join the newer epoch.
* Our log has no guid yet (joining): the peer's guid and epoch are adopted
  (:meth:`EnvelopeLog.adopt`, reported by ``HandshakeCompleted.adopted``). If
  the peer has none either, GOODBYE ``NO_DOCUMENT``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from ..errors import LimitExceeded, LocalProtocolError
from ..identity import PeerId
from .envelope import Envelope
from .log import EnvelopeLog
from .protocol import (
    Ack,
    Awareness,
    Goodbye,
    GoodbyeReason,
    Hello,
    HelloFlags,
    Members,
    Message,
    ProtocolLimits,
    SyncStep1,
    SyncStep2,
    Update,
)

__all__ = [
    "AwarenessReceived",
    "EnvelopesReceived",
    "HandshakeCompleted",
    "MembersReceived",
    "PeerAcknowledged",
    "PeerSession",
    "SessionClosed",
    "SessionEvent",
    "SessionState",
    "SyncCompleted",
    "unacknowledged_count",
]

_DEFAULT_LIMITS = ProtocolLimits()


class SessionState(enum.Enum):
    IDLE = "idle"
    """Created; nothing sent."""
    HELLO_SENT = "hello-sent"
    """Our HELLO is out; waiting for the peer's."""
    OPEN = "open"
    """Both HELLOs agree: syncing."""
    CLOSED = "closed"
    """A GOODBYE went either way; nothing more is sent or handled."""


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """The peer holds our document. ``adopted``: we were joining and took its guid and epoch."""

    guid: bytes
    epoch: int
    flags: HelloFlags
    adopted: bool


@dataclass(frozen=True, slots=True)
class EnvelopesReceived:
    """Envelopes from a step2 or an update, unverified: offer them to the log in this order."""

    envelopes: tuple[Envelope, ...]


@dataclass(frozen=True, slots=True)
class SyncCompleted:
    """The peer's final step2 arrived: we have been sent all it had when it answered."""


@dataclass(frozen=True, slots=True)
class AwarenessReceived:
    payload: bytes


@dataclass(frozen=True, slots=True)
class MembersReceived:
    """The peer sent a member list (encoded, unverified): the room checks and adopts it."""

    member_list: bytes


@dataclass(frozen=True, slots=True)
class PeerAcknowledged:
    """The peer's acknowledged vector grew; this is the whole vector now."""

    vector: dict[PeerId, int]


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The session ended. ``by_peer``: the peer sent the GOODBYE; else we did.

    For a document mismatch the peer's guid and epoch are given.
    """

    reason: GoodbyeReason
    message: str
    by_peer: bool
    remote_guid: bytes | None = None
    remote_epoch: int | None = None


SessionEvent: TypeAlias = (
    HandshakeCompleted
    | EnvelopesReceived
    | SyncCompleted
    | AwarenessReceived
    | MembersReceived
    | PeerAcknowledged
    | SessionClosed
)


# -- the session ------------------------------------------------------------------------------


class PeerSession:
    """The sync state with one peer in one room; see the module docs."""

    __slots__ = (
        "_ack_sent",
        "_acked",
        "_events",
        "_flags",
        "_hello_extra",
        "_limits",
        "_log",
        "_outbox",
        "_peer_has",
        "_remote",
        "_remote_flags",
        "_state",
    )

    def __init__(
        self,
        log: EnvelopeLog,
        remote: PeerId,
        *,
        flags: HelloFlags = HelloFlags.NONE,
        limits: ProtocolLimits = _DEFAULT_LIMITS,
        hello_extra: Callable[[], tuple[bytes, bytes]] | None = None,
    ) -> None:
        """``hello_extra`` gives the encoded room descriptor and member list for our HELLO
        at the moment it is sent (the room may learn them after the session is made)."""
        self._log = log
        self._hello_extra = hello_extra
        self._remote = remote
        self._flags = flags
        self._limits = limits
        self._state = SessionState.IDLE
        self._remote_flags: HelloFlags | None = None
        self._outbox: list[Message] = []
        self._events: deque[SessionEvent] = deque()
        self._peer_has: dict[PeerId, int] | None = None  # None until the peer's first step1
        self._acked: dict[PeerId, int] = {}
        self._ack_sent: dict[PeerId, int] = {}

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is SessionState.OPEN

    @property
    def remote(self) -> PeerId:
        return self._remote

    @property
    def remote_flags(self) -> HelloFlags | None:
        """The flags of the peer's HELLO; None before it arrived."""
        return self._remote_flags

    def acked_seq(self, author: PeerId) -> int:
        """The highest seq of ``author`` the peer has reported accepting."""
        return self._acked.get(author, 0)

    def acked_vector(self) -> dict[PeerId, int]:
        return dict(self._acked)

    # -- output -------------------------------------------------------------------------------

    def messages_to_send(self) -> list[Message]:
        """Messages to write to the stream, in order (frame each with ``frame_message``)."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> SessionEvent | None:
        return self._events.popleft() if self._events else None

    # -- our actions --------------------------------------------------------------------------

    def start(self) -> None:
        """Send our HELLO (done for us if the peer's HELLO comes first)."""
        if self._state is not SessionState.IDLE:
            raise LocalProtocolError(f"session with {self._remote} was already started")
        log = self._log
        descriptor, members = self._hello_extra() if self._hello_extra else (b"", b"")
        if log.guid is None:
            descriptor, members = b"", b""
        self._outbox.append(Hello(log.room, log.guid, log.epoch, self._flags, descriptor, members))
        self._state = SessionState.HELLO_SENT

    def forward_new(self) -> int:
        """Send as UPDATEs the accepted envelopes the peer is not known to have; how many."""
        if self._state is not SessionState.OPEN or self._peer_has is None:
            return 0  # the answer to the peer's step1 will carry them
        envelopes = self._log.missing_for(self._peer_has)
        for envelope in envelopes:
            self._outbox.append(Update(envelope))
            self._peer_has[envelope.author] = envelope.seq
        return len(envelopes)

    def acknowledge(self) -> None:
        """Send an ACK for whatever the log accepted since the last one (nothing if nothing)."""
        if self._state is not SessionState.OPEN:
            return
        changes = {a: s for a, s in self._log.vector().items() if s > self._ack_sent.get(a, 0)}
        if changes:
            self._ack_sent.update(changes)
            self._outbox.append(Ack(changes))

    def resync(self) -> None:
        """Send a fresh SYNC_STEP1, e.g. when envelopes were held or dropped for a gap."""
        if self._state is SessionState.OPEN:
            self._send_step1()

    def _send_step1(self) -> None:
        vector = self._log.vector()
        self._outbox.append(SyncStep1(vector))
        self._ack_sent.update(vector)  # a step1 tells what we have as well as an ack would

    def send_members(self, member_list: bytes) -> None:
        """Send a (newer) encoded member list; nothing unless the session is open."""
        if self._state is SessionState.OPEN:
            self._outbox.append(Members(bytes(member_list)))

    def send_awareness(self, payload: bytes) -> None:
        if self._state is not SessionState.OPEN:
            raise LocalProtocolError(f"session with {self._remote} is {self._state.value}")
        if len(payload) > self._limits.max_awareness_bytes:
            raise LimitExceeded(
                f"awareness update of {len(payload)} bytes exceeds the limit of "
                f"{self._limits.max_awareness_bytes} bytes"
            )
        self._outbox.append(Awareness(bytes(payload)))

    def close(self, reason: GoodbyeReason = GoodbyeReason.NORMAL, message: str = "") -> None:
        """Send GOODBYE and stop (no-op once closed). Also for a message that failed to decode."""
        self._close(reason, message)

    # -- the peer's messages ------------------------------------------------------------------

    def receive(self, message: Message) -> None:
        """Handle one message from the peer; events and replies queue up."""
        if self._state is SessionState.CLOSED:
            return
        if isinstance(message, Goodbye):
            self._state = SessionState.CLOSED
            self._events.append(SessionClosed(message.reason, message.message, by_peer=True))
        elif isinstance(message, Hello):
            self._on_hello(message)
        elif self._state is not SessionState.OPEN:
            self._close(GoodbyeReason.PROTOCOL_ERROR, f"{type(message).__name__} before HELLO")
        elif isinstance(message, SyncStep1):
            self._note_acked(message.vector)
            self._answer(message.vector)
        elif isinstance(message, SyncStep2):
            self._on_envelopes(message.envelopes)
            if message.final:
                self._events.append(SyncCompleted())
        elif isinstance(message, Update):
            self._on_envelopes((message.envelope,))
        elif isinstance(message, Awareness):
            self._events.append(AwarenessReceived(message.payload))
        elif isinstance(message, Members):
            self._events.append(MembersReceived(message.member_list))
        else:
            self._note_acked(message.vector)

    def _on_hello(self, hello: Hello) -> None:
        if self._remote_flags is not None:
            self._close(GoodbyeReason.PROTOCOL_ERROR, "second HELLO")
            return
        if self._state is SessionState.IDLE:
            self.start()
        self._remote_flags = hello.flags
        log = self._log
        if hello.room != log.room:
            self._close(
                GoodbyeReason.UNKNOWN_ROOM,
                f"{self._remote} asked for room {hello.room.hex()[:16]}…, "
                f"this session serves {log.room.hex()[:16]}…",
            )
            return
        adopted = False
        if log.guid is None:
            if hello.guid is None:
                self._close(
                    GoodbyeReason.NO_DOCUMENT,
                    f"neither we nor {self._remote} has this room's document yet; "
                    "join through a member that has it",
                )
                return
            log.adopt(hello.guid, hello.epoch)
            adopted = True
        elif hello.guid is not None and hello.guid != log.guid:
            self._close(
                GoodbyeReason.GUID_MISMATCH,
                f"{self._remote} holds a different document under this room's name "
                f"(guid {hello.guid.hex()}, ours {log.guid.hex()}); the two are never merged: "
                "use another room name, or remove the local room to join theirs",
                hello,
            )
            return
        elif hello.guid is not None and hello.epoch != log.epoch:
            newer = "theirs" if hello.epoch > log.epoch else "ours"
            self._close(
                GoodbyeReason.EPOCH_MISMATCH,
                f"{self._remote} has epoch {hello.epoch} of this room's document, we have "
                f"{log.epoch}; generations are never merged ({newer} is newer): the older side "
                "must move to the newer epoch before syncing",
                hello,
            )
            return
        guid = log.guid
        if guid is None:  # pragma: no cover - adopted or checked above
            raise AssertionError("unreachable: the log has a guid here")
        self._state = SessionState.OPEN
        self._events.append(HandshakeCompleted(guid, log.epoch, hello.flags, adopted))
        self._send_step1()

    def _answer(self, vector: Mapping[PeerId, int]) -> None:
        has = dict(vector)
        limits = self._limits
        while True:
            batch = self._log.missing_for(
                has, max_bytes=limits.step2_budget_bytes, max_count=limits.max_envelopes_per_step2
            )
            for envelope in batch:
                has[envelope.author] = envelope.seq
            more = bool(batch) and bool(self._log.missing_for(has, max_count=1))
            self._outbox.append(SyncStep2(tuple(batch), final=not more))
            if not more:
                break
        # Replace rather than merge: the peer may have dropped what we sent it before.
        self._peer_has = has

    def _on_envelopes(self, envelopes: Iterable[Envelope]) -> None:
        batch = tuple(envelopes)
        if not batch:
            return
        if self._peer_has is not None:
            for envelope in batch:  # it has them, so they are never sent back to it
                if envelope.seq > self._peer_has.get(envelope.author, 0):
                    self._peer_has[envelope.author] = envelope.seq
        self._events.append(EnvelopesReceived(batch))

    def _note_acked(self, vector: Mapping[PeerId, int]) -> None:
        grew = False
        for author, seq in vector.items():
            if seq > self._acked.get(author, 0):
                self._acked[author] = seq
                grew = True
        if grew:
            self._events.append(PeerAcknowledged(dict(self._acked)))

    def _close(self, reason: GoodbyeReason, message: str, hello: Hello | None = None) -> None:
        if self._state is SessionState.CLOSED:
            return
        limit = self._limits.max_reason_bytes  # the peer refuses longer (same default)
        message = message.encode()[:limit].decode(errors="ignore")
        self._outbox.append(Goodbye(reason, message))
        self._state = SessionState.CLOSED
        guid = hello.guid if hello is not None else None
        epoch = hello.epoch if hello is not None else None
        self._events.append(SessionClosed(reason, message, False, guid, epoch))


def unacknowledged_count(author: PeerId, log: EnvelopeLog, sessions: Iterable[PeerSession]) -> int:
    """``author``'s accepted envelopes that no peer has acknowledged (step1 or ACK).

    With ``author`` our own peer id: local updates that would be lost with
    this machine.
    """
    best = max((session.acked_seq(author) for session in sessions), default=0)
    return max(log.seq(author) - best, 0)
