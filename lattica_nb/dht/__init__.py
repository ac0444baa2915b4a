"""Kademlia DHT (libp2p kad-dht wire protocol): peer routing, signed records, providers.

Sans-IO cores: :mod:`.keys` (keyspace), :mod:`.messages` (wire codec),
:mod:`.routing` (k-buckets), :mod:`.lookup` and :mod:`.queries` (iterative
lookups), :mod:`.records` (signed envelopes, validators), :mod:`.store` and
:mod:`.database` (records, providers, SQLite), :mod:`.server` (answers to
requests). Drivers: :mod:`.streams` (messages over streams) and
:mod:`.service` (``node.dht``).
"""

from __future__ import annotations

from .config import DEFAULT_PROTOCOL_ID, LATTICA_PROTOCOL_ID, DhtConfig

__all__ = ["DEFAULT_PROTOCOL_ID", "LATTICA_PROTOCOL_ID", "DhtConfig"]
