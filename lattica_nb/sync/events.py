"""Events a :class:`~lattica_nb.sync.room.Room` reports to its driver and observers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from ..identity import PeerId
from .descriptor import RoomDescriptor
from .envelope import Envelope
from .membership import MemberList
from .protocol import GoodbyeReason

__all__ = [
    "AwarenessChanged",
    "DocumentChanged",
    "DocumentJoined",
    "EnvelopesStored",
    "MembersChanged",
    "OwnAcknowledged",
    "PeerMisbehaved",
    "PeerSynced",
    "RoomEvent",
    "SessionEnded",
    "SessionOpened",
    "UpdateRefused",
]


@dataclass(frozen=True, slots=True)
class DocumentJoined:
    """A joining room adopted its document from a peer (create the room's file now)."""

    descriptor: RoomDescriptor


@dataclass(frozen=True, slots=True)
class EnvelopesStored:
    """Envelopes the log accepted (ours or a peer's), in order: append them to the room's file."""

    envelopes: tuple[Envelope, ...]


@dataclass(frozen=True, slots=True)
class DocumentChanged:
    """The document changed: by our own edit (``local``) or by these authors' updates."""

    authors: frozenset[PeerId]
    local: bool


@dataclass(frozen=True, slots=True)
class UpdateRefused:
    """An accepted envelope's update broke a rule (or could not take effect); never applied."""

    author: PeerId
    seq: int
    entry: str | None
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerMisbehaved:
    """``peer`` sent something forged, foreign or malformed; ``closed``: its session ended."""

    peer: PeerId
    reason: str
    closed: bool


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """The HELLOs agree: syncing with ``peer``."""

    peer: PeerId


@dataclass(frozen=True, slots=True)
class PeerSynced:
    """``peer`` sent everything it had when it answered our SYNC_STEP1."""

    peer: PeerId


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The session with ``peer`` ended (GOODBYE either way); close its stream after sending."""

    peer: PeerId
    reason: GoodbyeReason
    message: str
    by_peer: bool
    remote_epoch: int | None = None


@dataclass(frozen=True, slots=True)
class AwarenessChanged:
    """``peer``'s presence changed (or it left)."""

    peer: PeerId


@dataclass(frozen=True, slots=True)
class MembersChanged:
    """A closed room adopted a newer member list (store it with the room)."""

    member_list: MemberList


@dataclass(frozen=True, slots=True)
class OwnAcknowledged:
    """Some peer has acknowledged our own envelopes up to ``seq``."""

    seq: int


RoomEvent: TypeAlias = (
    DocumentJoined
    | EnvelopesStored
    | DocumentChanged
    | UpdateRefused
    | PeerMisbehaved
    | SessionOpened
    | PeerSynced
    | SessionEnded
    | AwarenessChanged
    | MembersChanged
    | OwnAcknowledged
)
