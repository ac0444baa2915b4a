"""The one error tree of lattica_nb.

Every error the package raises to a user is a :class:`LatticaError`. The split
follows h11: a :class:`LocalProtocolError` means *we* were asked to do
something the protocol forbids (a bug or bad input from the caller), a
:class:`RemoteProtocolError` means *the peer* broke the protocol. Foreign
exceptions (aioquic, struct, cryptography) are translated at the driver edge
with ``raise OurError(...) from exc`` and never reach a user untranslated.

Messages say what happened and what to do. They never contain key material.
"""

from __future__ import annotations

import builtins

__all__ = [
    "ConfigError",
    "ConnectionClosedError",
    "DecodeError",
    "DialError",
    "HandshakeError",
    "LatticaError",
    "LimitExceeded",
    "LocalProtocolError",
    "MultiaddrError",
    "PeerIdMismatch",
    "ProtocolError",
    "ProtocolNegotiationError",
    "RemoteProtocolError",
    "StreamResetError",
    "TimeoutError",
    "TransportError",
    "VerificationError",
]


class LatticaError(Exception):
    """Base of every error raised by lattica_nb."""


class ConfigError(LatticaError, ValueError):
    """A configuration value is invalid; the message names the field."""


class MultiaddrError(LatticaError, ValueError):
    """A multiaddr could not be parsed or encoded; the message names the part."""


class ProtocolError(LatticaError):
    """A wire protocol was violated."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The remote peer sent something the protocol forbids."""


class DecodeError(RemoteProtocolError, ValueError):
    """Bytes could not be decoded (malformed, truncated or over a size bound)."""


class ProtocolNegotiationError(RemoteProtocolError):
    """multistream-select found no protocol both sides speak."""

    def __init__(self, message: str, *, proposed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.proposed = proposed


class VerificationError(LatticaError):
    """A signature, certificate, hash or record failed verification."""


class HandshakeError(VerificationError):
    """A secure-channel handshake failed (TLS or Noise)."""


class PeerIdMismatch(HandshakeError):
    """The remote authenticated as a different peer than the one dialed."""


class TransportError(LatticaError, OSError):
    """A transport-level failure: socket error, connection lost."""


class DialError(TransportError):
    """No connection could be made to a peer; the message lists what was tried."""


class ConnectionClosedError(TransportError):
    """The connection was closed (locally or by the peer) while in use."""


class StreamResetError(TransportError):
    """The stream was reset by the peer or aborted locally."""


class TimeoutError(LatticaError, builtins.TimeoutError):
    """An operation did not finish within its deadline."""


class LimitExceeded(LatticaError):
    """A configured limit (connections, streams, message size) was reached."""
