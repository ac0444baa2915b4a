"""Configuration of room sync: one frozen dataclass, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .protocol import ProtocolLimits

__all__ = ["DEFAULT_MESH", "RoomLimits", "SyncConfig"]

DEFAULT_MESH = "default"


@dataclass(frozen=True, slots=True)
class RoomLimits:
    """Bounds of one room beyond the log's and the protocol's own."""

    max_pending_updates: int = 4096
    """Accepted updates waiting for changes they build on; beyond it the oldest is dropped."""
    misbehaviour_limit: int = 3
    """Protocol violations from one peer before its session is closed."""
    max_local_backlog: int = 1024
    """Local transactions made while joining (before the document is known)."""

    def __post_init__(self) -> None:
        for name in ("max_pending_updates", "misbehaviour_limit", "max_local_backlog"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"RoomLimits.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """How a node shares rooms.

    ``mesh`` is mixed into every room id (``room_id(mesh, name)``), so equal
    room names in different meshes never meet. ``data_dir`` keeps one
    append-only file per room (restart recovery); ``None`` keeps rooms in
    memory only.
    """

    enabled: bool = True
    mesh: str = DEFAULT_MESH
    data_dir: Path | None = None
    sender_queue_messages: int = 4096
    """Messages queued for one peer; a peer that falls further behind is disconnected
    and catches up exactly (step1/step2) when it reconnects."""
    join_timeout_s: float = 10.0
    """How long opening a room waits for a member to show its document."""
    discovery_interval_s: float = 15.0
    """How often a room looks for members (DHT providers of its id, connected peers)."""
    compact_after_envelopes: int = 20_000
    """Envelopes appended to a room's file before it is rewritten with a snapshot."""
    fsync: bool = True
    """Flush every append to the disk (a power cut loses nothing acknowledged locally)."""
    ban_s: float = 300.0
    """How long a peer whose session was closed for misbehaviour is ignored by the room."""
    room_limits: RoomLimits = field(default_factory=RoomLimits)
    protocol_limits: ProtocolLimits = field(default_factory=ProtocolLimits)

    def __post_init__(self) -> None:
        if not self.mesh:
            raise ConfigError("SyncConfig.mesh must be a non-empty name")
        if self.sender_queue_messages < 1 or self.compact_after_envelopes < 1:
            raise ConfigError("sender_queue_messages and compact_after_envelopes must be positive")
        for name in ("join_timeout_s", "discovery_interval_s", "ban_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"SyncConfig.{name} must be positive")
