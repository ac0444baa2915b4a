"""libp2p identify (libp2p/specs identify/README.md).

On ``/ipfs/id/1.0.0`` the peer being identified writes one ``Identify``
protobuf (uvarint length-prefixed) and closes the stream; on
``/ipfs/id/push/1.0.0`` the pushing peer does the same, and missing fields
mean "unchanged".

Size limits, per implementation:

* rust-libp2p reads and writes one message of at most 4096 bytes.
* go-libp2p keeps its own message under 4096 bytes, but when a signed peer
  record makes it bigger than 2 KiB it sends the record as a second message;
  it reads up to 10 messages of at most 8 KiB each and merges them.

So we read up to ``MAX_MESSAGES`` frames of at most ``MAX_MESSAGE_BYTES``
(8 KiB, go's read limit) until the peer closes, at most
``MAX_TOTAL_BYTES`` (64 KiB) in all, and merge them with protobuf's rules:
the concatenation of encoded messages decodes as their merge (last value wins
for single fields, repeated fields append). We refuse to send a message above
``MAX_SEND_BYTES`` (4096) so that rust-libp2p peers can read it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
from anyio.abc import ByteReceiveStream, ByteStream

from ..errors import (
    ConnectionClosedError,
    DecodeError,
    LatticaError,
    LocalProtocolError,
    RemoteProtocolError,
    TimeoutError,
)
from ..identity import PublicKey
from ..multiaddr import Multiaddr
from ..wire.framing import FrameReader, write_frame
from ..wire.protobuf import ProtoWriter, parse_fields

__all__ = [
    "MAX_MESSAGES",
    "MAX_MESSAGE_BYTES",
    "MAX_SEND_BYTES",
    "MAX_TOTAL_BYTES",
    "PROTOCOL_ID",
    "PUSH_PROTOCOL_ID",
    "IdentifyInfo",
    "receive_identify",
    "send_identify",
]

logger = logging.getLogger(__name__)

PROTOCOL_ID = "/ipfs/id/1.0.0"
PUSH_PROTOCOL_ID = "/ipfs/id/push/1.0.0"

MAX_MESSAGE_BYTES = 8 * 1024
"""Largest single identify frame we read (go-libp2p's read limit)."""
MAX_MESSAGES = 10
"""Most frames one identify stream may carry (go-libp2p's limit)."""
MAX_TOTAL_BYTES = 64 * 1024
"""Largest merged identify message we accept."""
MAX_SEND_BYTES = 4096
"""Largest message we send: rust-libp2p refuses anything bigger."""

_PUBLIC_KEY = 1
_LISTEN_ADDRS = 2
_PROTOCOLS = 3
_OBSERVED_ADDR = 4
_PROTOCOL_VERSION = 5
_AGENT_VERSION = 6
_SIGNED_PEER_RECORD = 8


def _parse_addr(data: bytes, what: str) -> Multiaddr | None:
    if not data:
        return None  # rust-libp2p sends an empty observed address when it has none
    try:
        return Multiaddr.from_bytes(data)
    except (LatticaError, ValueError) as exc:
        logger.debug("identify: skipping unparsable %s %s: %s", what, data.hex()[:64], exc)
        return None


@dataclass(frozen=True, slots=True)
class IdentifyInfo:
    """The content of one (possibly merged) identify message."""

    protocol_version: str
    agent_version: str
    public_key: PublicKey | None
    listen_addrs: tuple[Multiaddr, ...]
    observed_addr: Multiaddr | None
    protocols: tuple[str, ...]
    signed_peer_record: bytes | None

    def encode(self) -> bytes:
        """The protobuf, fields in field-number order (as prost writes them)."""
        writer = ProtoWriter()
        if self.public_key is not None:
            writer.bytes(_PUBLIC_KEY, self.public_key.to_protobuf())
        writer.repeated_bytes(_LISTEN_ADDRS, (addr.to_bytes() for addr in self.listen_addrs))
        writer.repeated_string(_PROTOCOLS, self.protocols)
        if self.observed_addr is not None:
            writer.bytes(_OBSERVED_ADDR, self.observed_addr.to_bytes())
        writer.string(_PROTOCOL_VERSION, self.protocol_version)
        writer.string(_AGENT_VERSION, self.agent_version)
        if self.signed_peer_record is not None:
            writer.bytes(_SIGNED_PEER_RECORD, self.signed_peer_record)
        return writer.finish()

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> IdentifyInfo:
        """Parse an identify protobuf of at most MAX_TOTAL_BYTES.

        Malformed protobuf or an undecodable public key raise DecodeError;
        addresses that do not parse are skipped (logged at DEBUG), as
        rust-libp2p does.
        """
        fields = parse_fields(data, max_bytes=MAX_TOTAL_BYTES)
        key_bytes = fields.bytes_or_none(_PUBLIC_KEY)
        public_key = None if key_bytes is None else PublicKey.from_protobuf(key_bytes)
        listen_addrs = tuple(
            addr
            for raw in fields.all_bytes(_LISTEN_ADDRS)
            if (addr := _parse_addr(raw, "listen address")) is not None
        )
        observed_bytes = fields.bytes_or_none(_OBSERVED_ADDR)
        observed_addr = (
            None if observed_bytes is None else _parse_addr(observed_bytes, "observed address")
        )
        return cls(
            protocol_version=fields.string_or_none(_PROTOCOL_VERSION) or "",
            agent_version=fields.string_or_none(_AGENT_VERSION) or "",
            public_key=public_key,
            listen_addrs=listen_addrs,
            observed_addr=observed_addr,
            protocols=tuple(fields.all_strings(_PROTOCOLS)),
            signed_peer_record=fields.bytes_or_none(_SIGNED_PEER_RECORD),
        )


async def send_identify(stream: ByteStream, info: IdentifyInfo) -> None:
    """Write ``info`` as one frame and close our sending side.

    The caller still owns the stream and closes it. Raises LocalProtocolError
    if the message exceeds MAX_SEND_BYTES (announce fewer addresses or
    protocols).
    """
    message = info.encode()
    if len(message) > MAX_SEND_BYTES:
        raise LocalProtocolError(
            f"identify message of {len(message)} bytes exceeds {MAX_SEND_BYTES}, the most "
            "rust-libp2p reads; announce fewer listen addresses or protocols"
        )
    await write_frame(stream, message)
    try:
        await stream.send_eof()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise ConnectionClosedError("identify stream closed before we finished") from exc


async def _read_merged(stream: ByteReceiveStream) -> bytes:
    reader = FrameReader(stream, max_bytes=MAX_MESSAGE_BYTES)
    merged = bytearray()
    frames = 0
    while True:
        data = await reader.read_or_none()
        if data is None:
            break
        frames += 1
        if frames > MAX_MESSAGES:
            raise RemoteProtocolError(
                f"peer sent more than {MAX_MESSAGES} identify messages on one stream"
            )
        if len(merged) + len(data) > MAX_TOTAL_BYTES:
            raise DecodeError(f"identify messages exceed {MAX_TOTAL_BYTES} bytes in total")
        parse_fields(data, max_bytes=MAX_MESSAGE_BYTES)  # each part must be well formed
        merged += data
    if frames == 0:
        raise RemoteProtocolError("peer closed the identify stream without sending a message")
    return bytes(merged)


async def receive_identify(stream: ByteStream, *, timeout_s: float) -> IdentifyInfo:
    """Read identify frames until the peer closes, merge and decode them.

    Raises TimeoutError if the peer has not finished within ``timeout_s``,
    DecodeError for malformed or oversize messages, RemoteProtocolError for
    an empty stream or too many parts.
    """
    with anyio.move_on_after(timeout_s) as scope:
        data = await _read_merged(stream)
    if scope.cancelled_caught:
        raise TimeoutError(f"peer did not finish its identify message within {timeout_s:g} s")
    info = IdentifyInfo.decode(data)
    logger.debug(
        "identify: %s, %d addresses, %d protocols",
        info.agent_version,
        len(info.listen_addrs),
        len(info.protocols),
    )
    return info
