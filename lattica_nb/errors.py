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
import enum

__all__ = [
    "ConfigError",
    "ConnectionClosedError",
    "DecodeError",
    "DhtError",
    "DialError",
    "HandshakeError",
    "LatticaError",
    "LimitExceeded",
    "LocalProtocolError",
    "MessageTooLarge",
    "MissingDependencies",
    "MultiaddrError",
    "PeerIdMismatch",
    "PermissionDenied",
    "ProtocolError",
    "ProtocolNegotiationError",
    "QuorumFailed",
    "RecordTooLarge",
    "RemoteProtocolError",
    "RpcDeadlineExceeded",
    "RpcError",
    "SchemaError",
    "StatusCode",
    "StorageError",
    "StreamResetError",
    "TimeoutError",
    "TransportError",
    "UnsupportedValue",
    "ValueRangeError",
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


# -- RPC (lattica_nb.protocols.rpc) ---------------------------------------------------------


class MessageTooLarge(DecodeError):
    """A peer announced a message larger than the configured maximum; nothing was read."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class SchemaError(LocalProtocolError, TypeError):
    """A type cannot be used in an RPC schema, or a value to send does not match its type."""


class StatusCode(enum.IntEnum):
    """How an RPC ended. The numbers and meanings are gRPC's."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(LatticaError):
    """An RPC ended with a status other than OK.

    A handler raises it on purpose to send that status to the caller, e.g.
    ``raise RpcError(StatusCode.NOT_FOUND, "no run named 'sweep'")``; the
    caller's ``call`` raises an RpcError with the same code and message.
    Any other exception in a handler reaches the caller as INTERNAL without
    its text or traceback (those are logged where the handler ran).
    """

    def __init__(self, code: StatusCode, message: str = "") -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.message = message

    @staticmethod
    def from_status(code: StatusCode, message: str) -> RpcError:
        """The error for a status received from a peer (DEADLINE_EXCEEDED gets its subclass)."""
        if code is StatusCode.DEADLINE_EXCEEDED:
            return RpcDeadlineExceeded(message)
        return RpcError(code, message)


class RpcDeadlineExceeded(RpcError, TimeoutError):
    """The call's deadline passed before it finished (``except TimeoutError`` catches it)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.DEADLINE_EXCEEDED, message)


# -- DHT (lattica_nb.dht) ---------------------------------------------------------------------


class DhtError(LatticaError):
    """A DHT operation could not be completed; the message says what was reached."""


class QuorumFailed(DhtError):
    """A put reached fewer peers than its quorum; the record stays local and is republished."""

    def __init__(self, message: str, *, stored: int, needed: int) -> None:
        super().__init__(message)
        self.stored = stored
        self.needed = needed


class RecordTooLarge(LocalProtocolError):
    """A value is larger than a DHT record may be; store it as a blob and put its id instead."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"a DHT record of {size} bytes exceeds the limit of {limit} bytes; store large data "
            "as a blob and put its content id in the DHT"
        )
        self.size = size
        self.limit = limit


# -- storage (lattica_nb.dht.database) -------------------------------------------------------


class StorageError(LatticaError):
    """A local database could not be opened, read or written; the message names the file."""


# -- shared state (lattica_nb.sync) ----------------------------------------------------------


class UnsupportedValue(LocalProtocolError, TypeError):
    """A value of a type a shared document cannot hold; the message says what to store instead."""


class ValueRangeError(LocalProtocolError, ValueError):
    """A value a shared document cannot hold exactly (an int beyond ±(2**53-1)); names the limit."""


class PermissionDenied(VerificationError):
    """An update breaks the room's membership or write rules.

    ``entry`` is the top-level document entry it touched (None when the
    author is not a member at all) and ``rule`` the rule it broke.
    """

    def __init__(self, message: str, *, entry: str | None, rule: str) -> None:
        super().__init__(message)
        self.entry = entry
        self.rule = rule


class MissingDependencies(LatticaError):
    """An update builds on changes not applied here yet: hold it and check it again later.

    Not a verdict on the update: it is judged once what it depends on has arrived.
    """
