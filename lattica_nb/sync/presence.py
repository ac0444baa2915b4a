"""Presence: who is in a room and what they are doing (sans-IO codec).

Each peer sends its own presence straight to the peers it syncs with, in
the AWARENESS message of ``/lattica-nb/yjs/1.0.0``; it is never stored nor
forwarded, and a receiver credits it to the authenticated peer of the
session it came on, whatever the payload says. The payload is a y-protocols
awareness update holding one client's state::

    uvarint(1) uvarint(client id) uvarint(clock) varstring(JSON state or "null")

so a bridge can hand it to a Yjs awareness unchanged. ``null`` means the
peer left. The JSON is parsed with :func:`json.loads` (never evaluated),
bounded in size and nesting, and must be an object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import DecodeError, LocalProtocolError
from ..wire.varint import decode_uvarint, encode_uvarint

__all__ = ["MAX_PRESENCE_BYTES", "Presence", "decode_presence", "encode_presence"]

MAX_PRESENCE_BYTES = 16 * 1024
"""Largest presence payload sent or accepted (a display name and what is running)."""
_MAX_DEPTH = 8


@dataclass(frozen=True, slots=True)
class Presence:
    """One peer's presence: its Yjs client id, a clock that grows, and its state (None: left)."""

    client_id: int
    clock: int
    state: Mapping[str, Any] | None


def encode_presence(presence: Presence) -> bytes:
    """The awareness payload for ``presence``; LocalProtocolError if the state is too large."""
    text = "null" if presence.state is None else json.dumps(dict(presence.state), allow_nan=False)
    raw = text.encode()
    out = (
        encode_uvarint(1)
        + encode_uvarint(presence.client_id)
        + encode_uvarint(presence.clock)
        + encode_uvarint(len(raw))
        + raw
    )
    if len(out) > MAX_PRESENCE_BYTES:
        raise LocalProtocolError(
            f"presence state of {len(out)} bytes exceeds {MAX_PRESENCE_BYTES}; keep it short"
        )
    return out


def decode_presence(payload: bytes) -> Presence:
    """Read one client's awareness state; DecodeError on anything else."""
    if len(payload) > MAX_PRESENCE_BYTES:
        raise DecodeError(f"presence payload of {len(payload)} bytes exceeds {MAX_PRESENCE_BYTES}")
    count, pos = decode_uvarint(payload, 0)
    if count != 1:
        raise DecodeError(f"presence must hold exactly one client's state, not {count}")
    client_id, pos = decode_uvarint(payload, pos)
    clock, pos = decode_uvarint(payload, pos)
    length, pos = decode_uvarint(payload, pos)
    if pos + length != len(payload):
        raise DecodeError("presence state length does not match the payload")
    try:
        state = json.loads(payload[pos:].decode(), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DecodeError(f"presence state is not JSON: {exc}") from None
    if state is not None and not isinstance(state, dict):
        raise DecodeError(f"presence state must be an object or null, not {type(state).__name__}")
    if state is not None and _depth(state) > _MAX_DEPTH:
        raise DecodeError(f"presence state nests deeper than {_MAX_DEPTH}")
    return Presence(client_id, clock, state)


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0
