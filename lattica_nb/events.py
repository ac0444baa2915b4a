"""Events a :class:`~lattica_nb.node.Node` publishes to its subscribers."""

from __future__ import annotations

from dataclasses import dataclass

from .identity import PeerId
from .multiaddr import Multiaddr
from .protocols.identify import IdentifyInfo


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """The first connection to ``peer`` was established."""

    peer: PeerId
    addr: Multiaddr
    inbound: bool


@dataclass(frozen=True, slots=True)
class PeerIdentified:
    """Identify (or identify push) told us who ``peer`` is and what it speaks."""

    peer: PeerId
    info: IdentifyInfo


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    """The last connection to ``peer`` closed."""

    peer: PeerId
    reason: str


NodeEvent = PeerConnected | PeerIdentified | PeerDisconnected
