"""Configuration of the DHT: one frozen dataclass, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ConfigError

__all__ = ["DEFAULT_PROTOCOL_ID", "LATTICA_PROTOCOL_ID", "DhtConfig", "DhtMode"]

DEFAULT_PROTOCOL_ID = "/lattica-nb/kad/1.0.0"
LATTICA_PROTOCOL_ID = "/lattica/1.0.0"
"""The Kademlia protocol id of a Lattica mesh (its identify protocol version too)."""

DhtMode = Literal["auto", "server", "client"]

HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class DhtConfig:
    """How a node takes part in the DHT.

    ``protocol_id``: the Kademlia protocol id; nodes only talk to nodes with
    the same one. Use :data:`LATTICA_PROTOCOL_ID` (and the same identify
    ``protocol_version``) to join a Lattica mesh.

    ``mode``: ``"server"`` answers queries and is added to other nodes'
    routing tables; ``"client"`` only asks. ``"auto"`` starts as a server
    when the node listens on an address, as a client when it only dials;
    reachability checks (AutoNAT) switch it with :meth:`Dht.set_mode`.

    ``db_path``: a SQLite file keeping records, providers and the routing
    table across restarts; ``None`` keeps everything in memory.
    """

    enabled: bool = True
    protocol_id: str = DEFAULT_PROTOCOL_ID
    mode: DhtMode = "auto"
    k: int = 20
    """Bucket size and replication factor (the spec's k)."""
    alpha: int = 3
    """Requests a lookup keeps in flight."""
    request_timeout_s: float = 5.0
    """One request to one peer (dial included)."""
    query_timeout_s: float = 30.0
    """A whole lookup, put or get."""
    get_quorum: int = 1
    """A get stops once this many peers returned a valid value (it always stops
    when the lookup converges, with the best value found)."""
    put_quorum: int = 1
    """A put fails (the record stays local and is republished) unless at least
    this many peers stored it; 0 accepts a local-only put."""
    record_ttl_s: float = 36 * HOUR_S
    republish_interval_s: float = 12 * HOUR_S
    provider_ttl_s: float = 48 * HOUR_S
    provider_republish_interval_s: float = 22 * HOUR_S
    refresh_interval_s: float = 600.0
    """How often buckets without a lookup in that time are refreshed."""
    maintenance_interval_s: float = 60.0
    """How often expiry, republish and refresh are checked."""
    max_value_bytes: int = 15 * 1024
    """Largest record value on the wire (rust-libp2p refuses kad messages over 16 KiB)."""
    max_message_bytes: int = 64 * 1024
    """Largest inbound Kademlia message."""
    max_records: int = 10_000
    max_local_records: int = 1_000
    max_provider_keys: int = 10_000
    max_providers_per_key: int = 20
    db_path: Path | None = None
    auto_bootstrap: bool = True
    """Run a bootstrap lookup as soon as the first DHT server enters the routing table."""
    misbehaviour_ban_s: float = 600.0
    """How long a peer that sent malformed or forged data is ignored."""

    def __post_init__(self) -> None:
        if not self.protocol_id.startswith("/") or "\n" in self.protocol_id:
            raise ConfigError(f"dht protocol_id {self.protocol_id!r} must start with '/'")
        if self.mode not in ("auto", "server", "client"):
            raise ConfigError(f"dht mode must be auto, server or client, not {self.mode!r}")
        for name in ("k", "alpha", "max_value_bytes", "max_message_bytes", "max_records",
                     "max_local_records", "max_provider_keys", "max_providers_per_key"):
            if getattr(self, name) < 1:
                raise ConfigError(f"dht {name} must be at least 1")
        for name in ("request_timeout_s", "query_timeout_s", "record_ttl_s",
                     "republish_interval_s", "provider_ttl_s", "provider_republish_interval_s",
                     "refresh_interval_s", "maintenance_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"dht {name} must be positive")
        if self.get_quorum < 1:
            raise ConfigError("dht get_quorum must be at least 1")
        if self.put_quorum < 0:
            raise ConfigError("dht put_quorum must be >= 0")
        if self.max_value_bytes > self.max_message_bytes:
            raise ConfigError("dht max_value_bytes cannot exceed max_message_bytes")
