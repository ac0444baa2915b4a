"""multistream-select 1.0 as a sans-IO state machine.

Every message is ``uvarint(len(text) + 1) || text || "\\n"``. A dialer sends
the header ``/multistream/1.0.0`` and, pipelined in the same write, its first
proposal; the listener echoes the header, then answers each proposal with the
same protocol id (accepted) or ``na`` (not available). ``ls`` asks for the
listener's protocols. Bytes that follow the accepting echo belong to the
application and are kept in ``leftover``.

The classes here only turn bytes into bytes: drivers (``negotiate.py``) move
them over a stream and apply timeouts. Nothing here reads a clock or a socket.

Limits:

* ``MAX_MESSAGE_BYTES`` (1024, the length prefix's value, newline included) is
  go-multistream's receive limit; rust-libp2p accepts up to 16383 (a two-byte
  varint). Protocol ids are short paths, so 1024 never refuses a real peer and
  everything we send is accepted by both.
* ``MAX_LS_RESPONSE_BYTES`` (16383) bounds our answer to ``ls`` so that
  rust-libp2p can read it; go-libp2p never sends ``ls``.
* ``MAX_PROPOSALS`` (16) bounds the messages a dialer may send after the
  header, so a peer cannot keep a stream busy with endless ``na`` rounds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ..errors import DecodeError, LocalProtocolError, ProtocolError, ProtocolNegotiationError
from ..wire.varint import encode_uvarint, try_decode_uvarint

__all__ = [
    "HEADER",
    "LS",
    "MAX_LS_RESPONSE_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_PROPOSALS",
    "NA",
    "DialerNegotiation",
    "ListenerNegotiation",
    "MessageReader",
    "encode_ls_response",
    "encode_message",
]

logger = logging.getLogger(__name__)

HEADER = "/multistream/1.0.0"
NA = "na"
LS = "ls"

MAX_MESSAGE_BYTES = 1024
"""Largest accepted length prefix (text plus newline); go-multistream's limit."""

MAX_LS_RESPONSE_BYTES = 16383
"""Largest ``ls`` answer we send: rust-libp2p's two-byte-varint frame limit."""

MAX_PROPOSALS = 16
"""Most messages (proposals and ``ls``) a listener answers on one stream."""


def _check_text(text: str) -> bytes:
    raw = text.encode("utf-8")
    if b"\n" in raw:
        raise LocalProtocolError(f"multistream message {text!r} contains a newline")
    if len(raw) + 1 > MAX_MESSAGE_BYTES:
        raise LocalProtocolError(
            f"multistream message of {len(raw) + 1} bytes exceeds {MAX_MESSAGE_BYTES}; "
            "use a shorter protocol id"
        )
    return raw


def encode_message(text: str) -> bytes:
    """Encode one multistream-select message (length prefix, text, newline)."""
    raw = _check_text(text)
    return encode_uvarint(len(raw) + 1) + raw + b"\n"


def _check_protocol_id(protocol: str) -> None:
    if not protocol.startswith("/"):
        raise LocalProtocolError(
            f"protocol id {protocol!r} must start with '/' (rust-libp2p refuses others)"
        )
    _check_text(protocol)


def encode_ls_response(protocols: Sequence[str]) -> bytes:
    """Encode the answer to ``ls``: one message holding one message per protocol.

    The outer message's body is the concatenation of ``encode_message(p)`` for
    each protocol followed by a newline, as go-multistream and rust-libp2p
    write it. Protocols that would push the body past MAX_LS_RESPONSE_BYTES are
    left out.
    """
    body = bytearray()
    for protocol in protocols:
        try:
            item = encode_message(protocol)
        except LocalProtocolError:
            logger.debug("ls: leaving out unencodable protocol id %r", protocol)
            continue
        if len(body) + len(item) + 1 > MAX_LS_RESPONSE_BYTES:
            logger.debug("ls: answer full, leaving out %r and later ids", protocol)
            break
        body += item
    body += b"\n"
    return encode_uvarint(len(body)) + bytes(body)


class MessageReader:
    """Incremental parser: feed bytes, pull messages one at a time.

    Messages are pulled with :meth:`next_message` rather than all at once so
    that the caller can stop at the message that ends a negotiation and hand
    the remaining bytes (application data) on untouched via :meth:`take_remaining`.
    """

    __slots__ = ("_buf", "_max_message_bytes")

    def __init__(self, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes < 1:
            raise LocalProtocolError("max_message_bytes must be at least 1")
        self._buf = bytearray()
        self._max_message_bytes = max_message_bytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        self._buf += data

    def next_message(self) -> str | None:
        """Return the next complete message's text, or None if more bytes are needed.

        Raises DecodeError for an oversize length, a zero length, a message
        without its trailing newline, an inner newline, or invalid UTF-8.
        """
        header = try_decode_uvarint(self._buf)
        if header is None:
            return None
        length, start = header
        if length > self._max_message_bytes:
            raise DecodeError(
                f"multistream message of {length} bytes exceeds the limit of "
                f"{self._max_message_bytes} bytes"
            )
        if length == 0:
            raise DecodeError("empty multistream message (length 0)")
        end = start + length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[start:end])
        del self._buf[:end]
        if body[-1:] != b"\n":
            raise DecodeError("multistream message does not end with a newline")
        text = body[:-1]
        if b"\n" in text:
            raise DecodeError("multistream message contains an inner newline")
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("multistream message is not valid UTF-8") from exc

    def take_remaining(self) -> bytes:
        """Return and clear the bytes not yet parsed."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


class DialerNegotiation:
    """The dialer side: propose protocols in order until one is accepted.

    ``start()`` returns the header and the first proposal (pipelined). Feed
    every received chunk to ``receive()`` and send what it returns. When
    ``selected`` is set, negotiation is over; ``confirmed`` tells whether the
    listener has echoed it yet.

    With ``lazy=True`` the dialer settles on its *last* proposal as soon as it
    is sent (rust-libp2p's ``V1Lazy``): ``selected`` is set at once and
    ``confirmed`` stays False until the echo arrives. A later ``na`` raises
    ProtocolNegotiationError. With a single protocol, that is right after
    ``start()``.
    """

    __slots__ = (
        "_index",
        "_lazy",
        "_protocols",
        "_reader",
        "_saw_header",
        "_started",
        "confirmed",
        "leftover",
        "selected",
    )

    def __init__(self, protocols: Sequence[str], *, lazy: bool = False) -> None:
        if not protocols:
            raise LocalProtocolError("multistream-select needs at least one protocol to propose")
        for protocol in protocols:
            _check_protocol_id(protocol)
        self._protocols = tuple(protocols)
        self._lazy = lazy
        self._reader = MessageReader()
        self._index = 0
        self._saw_header = False
        self._started = False
        self.selected: str | None = None
        self.confirmed = False
        self.leftover = b""

    @property
    def proposing(self) -> str:
        """The protocol currently proposed."""
        return self._protocols[self._index]

    def _settle_if_lazy(self) -> None:
        if self._lazy and self._index == len(self._protocols) - 1:
            self.selected = self._protocols[self._index]

    def start(self) -> bytes:
        """The opening bytes: header plus first proposal."""
        if self._started:
            raise LocalProtocolError("DialerNegotiation.start() called twice")
        self._started = True
        self._settle_if_lazy()
        return encode_message(HEADER) + encode_message(self.proposing)

    def receive(self, data: bytes | bytearray | memoryview) -> bytes:
        """Consume bytes from the listener; return bytes to send (maybe empty)."""
        if not self._started:
            raise LocalProtocolError("call DialerNegotiation.start() before receive()")
        if self.confirmed:
            raise LocalProtocolError("multistream negotiation already finished")
        self._reader.feed(data)
        out = bytearray()
        while not self.confirmed:
            message = self._reader.next_message()
            if message is None:
                break
            out += self._handle(message)
        return bytes(out)

    def _fail(self, reason: str) -> ProtocolNegotiationError:
        return ProtocolNegotiationError(reason, proposed=self._protocols[: self._index + 1])

    def _handle(self, message: str) -> bytes:
        if not self._saw_header:
            if message != HEADER:
                raise self._fail(
                    f"peer answered with {message[:80]!r} instead of the multistream header "
                    f"{HEADER!r}; it does not speak multistream-select 1.0"
                )
            self._saw_header = True
            return b""
        current = self.proposing
        if message == current:
            self.selected = current
            self.confirmed = True
            self.leftover = self._reader.take_remaining()
            logger.debug("multistream: peer accepted %s", current)
            return b""
        if message == NA:
            logger.debug("multistream: peer refused %s", current)
            if self.selected is not None or self._index + 1 >= len(self._protocols):
                raise self._fail(
                    "peer supports none of the proposed protocols: "
                    + ", ".join(self._protocols[: self._index + 1])
                )
            self._index += 1
            self._settle_if_lazy()
            return encode_message(self.proposing)
        raise self._fail(
            f"peer answered {message[:80]!r} to the proposal {current!r}; "
            "expected the same id or 'na'"
        )


class ListenerNegotiation:
    """The listener side: echo the header, accept a supported proposal.

    ``supported(protocol)`` decides each proposal; ``list_protocols()`` answers
    ``ls``. Feed every received chunk to ``receive()``, send what it returns,
    then raise ``error`` if it is set. Once ``selected`` is set, ``leftover``
    holds any application bytes the dialer pipelined after its proposal.
    """

    __slots__ = (
        "_error",
        "_last_sent_na",
        "_list_protocols",
        "_max_proposals",
        "_messages",
        "_proposed",
        "_reader",
        "_saw_header",
        "_supported",
        "leftover",
        "selected",
    )

    def __init__(
        self,
        supported: Callable[[str], bool],
        list_protocols: Callable[[], Sequence[str]],
        *,
        max_proposals: int = MAX_PROPOSALS,
    ) -> None:
        if max_proposals < 1:
            raise LocalProtocolError("max_proposals must be at least 1")
        self._supported = supported
        self._list_protocols = list_protocols
        self._max_proposals = max_proposals
        self._reader = MessageReader()
        self._saw_header = False
        self._last_sent_na = False
        self._proposed: list[str] = []
        self._messages = 0
        self._error: ProtocolError | None = None
        self.selected: str | None = None
        self.leftover = b""

    @property
    def proposed(self) -> tuple[str, ...]:
        """Every protocol the dialer has proposed so far."""
        return tuple(self._proposed)

    @property
    def error(self) -> ProtocolError | None:
        """The failure found after responses were already produced, if any.

        ``receive()`` returns the responses it made before a failure (the
        dialer needs our ``na`` to learn it was refused) and keeps the error
        here; send the responses, then raise it. Later calls raise it too.
        """
        return self._error

    def receive(self, data: bytes | bytearray | memoryview) -> bytes:
        """Consume bytes from the dialer; return the responses to send (maybe empty)."""
        if self._error is not None:
            raise self._error
        if self.selected is not None:
            raise LocalProtocolError("multistream negotiation already finished")
        self._reader.feed(data)
        out = bytearray()
        try:
            while self.selected is None:
                message = self._next_message()
                if message is None:
                    break
                out += self._handle(message)
        except ProtocolError as exc:
            if not out:
                raise
            self._error = exc
        return bytes(out)

    def _next_message(self) -> str | None:
        try:
            return self._reader.next_message()
        except DecodeError as exc:
            if self._last_sent_na:
                # A lazy dialer sends application data right after its
                # proposal; after our "na" that data reads as garbage.
                raise self._fail(
                    "negotiation failed: after our 'na' the peer sent bytes that are not "
                    f"a multistream message ({exc})"
                ) from exc
            raise

    def _fail(self, reason: str) -> ProtocolNegotiationError:
        return ProtocolNegotiationError(reason, proposed=self.proposed)

    def _handle(self, message: str) -> bytes:
        if not self._saw_header:
            if message != HEADER:
                raise self._fail(
                    f"peer opened with {message[:80]!r} instead of the multistream header "
                    f"{HEADER!r}; it does not speak multistream-select 1.0"
                )
            self._saw_header = True
            return encode_message(HEADER)
        if self._messages >= self._max_proposals:
            raise self._fail(
                f"peer sent more than {self._max_proposals} proposals without agreeing; "
                "closing the stream"
            )
        self._messages += 1
        if message == LS:
            self._last_sent_na = False
            return encode_ls_response(self._list_protocols())
        if message in (HEADER, NA):
            raise self._fail(f"peer sent {message!r} where a proposal was expected")
        self._proposed.append(message)
        if message.startswith("/") and self._supported(message):
            self.selected = message
            self.leftover = self._reader.take_remaining()
            logger.debug("multistream: accepted %s", message)
            return encode_message(message)
        logger.debug("multistream: refused %r", message[:80])
        self._last_sent_na = True
        return encode_message(NA)
