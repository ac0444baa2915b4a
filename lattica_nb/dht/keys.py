"""Kademlia keys and the XOR metric.

Every point in the keyspace is the sha256 digest of something: a peer's id
bytes (its multihash) or a record/provider key as it travels on the wire.
That is what the libp2p spec (kad-dht) and rust-libp2p do, so our distances
agree with a Lattica peer's.
"""

from __future__ import annotations

import hashlib
import random

from ..identity import PeerId

__all__ = [
    "KEY_BITS",
    "KEY_BYTES",
    "KadKey",
    "bucket_index",
    "common_prefix_length",
    "distance",
    "key_for_bytes",
    "key_for_peer",
    "preimage_in_bucket",
]

KEY_BYTES = 32
KEY_BITS = KEY_BYTES * 8


class KadKey(bytes):
    """A 32-byte point in the keyspace (sha256 of a peer id or a record key)."""

    __slots__ = ()

    def __new__(cls, digest: bytes) -> KadKey:
        if len(digest) != KEY_BYTES:
            raise ValueError(f"a Kademlia key is {KEY_BYTES} bytes, got {len(digest)}")
        return super().__new__(cls, digest)

    def as_int(self) -> int:
        return int.from_bytes(self, "big")

    def __repr__(self) -> str:
        return f"KadKey({self.hex()[:16]}…)"


def key_for_bytes(key: bytes) -> KadKey:
    """The keyspace point of a record or provider key (sha256 of its wire bytes)."""
    return KadKey(hashlib.sha256(key).digest())


_PEER_KEYS: dict[PeerId, KadKey] = {}
_PEER_KEYS_MAX = 1 << 16


def key_for_peer(peer: PeerId) -> KadKey:
    """The keyspace point of a peer (sha256 of its id bytes); cached."""
    key = _PEER_KEYS.get(peer)
    if key is None:
        if len(_PEER_KEYS) >= _PEER_KEYS_MAX:
            _PEER_KEYS.clear()
        key = _PEER_KEYS[peer] = KadKey(hashlib.sha256(peer.to_bytes()).digest())
    return key


def distance(a: bytes, b: bytes) -> int:
    """XOR distance of two keys, as an integer (0 = same key)."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def common_prefix_length(a: bytes, b: bytes) -> int:
    """Leading bits two keys share (KEY_BITS when equal)."""
    d = distance(a, b)
    return KEY_BITS - d.bit_length()


def bucket_index(local: bytes, other: bytes) -> int:
    """The k-bucket ``other`` falls in, seen from ``local``: 0 (farthest half) .. KEY_BITS-1.

    Bucket ``i`` holds the keys that share exactly ``i`` leading bits with
    ``local``. Raises ValueError for ``local`` itself (it has no bucket).
    """
    cpl = common_prefix_length(local, other)
    if cpl == KEY_BITS:
        raise ValueError("a node's own key has no bucket")
    return cpl


def preimage_in_bucket(local: bytes, index: int, rng: random.Random, *,
                       max_tries: int = 1 << 15) -> bytes | None:
    """Random key bytes whose keyspace point falls in bucket ``index`` of ``local``.

    A FIND_NODE carries key bytes and the receiver hashes them, so a bucket
    refresh needs a preimage; one in bucket ``index`` turns up once in
    ``2**(index+1)`` tries. None when ``max_tries`` found none (deep buckets:
    the lookup of our own id covers those).
    """
    for _ in range(max_tries):
        candidate = rng.randbytes(KEY_BYTES)
        if common_prefix_length(local, hashlib.sha256(candidate).digest()) == index:
            return candidate
    return None
