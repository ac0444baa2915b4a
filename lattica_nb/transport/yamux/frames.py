"""Yamux framing: the 12-byte header and an incremental, bounded frame reader.

Header (big endian): version u8 (0), type u8, flags u16, stream id u32,
length u32. For data frames the length counts the payload that follows; for
window updates it is a credit delta, for pings an opaque value, for GoAway
an error code (hashicorp/yamux spec.md, libp2p/specs yamux/README.md).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from ...errors import DecodeError, LocalProtocolError

__all__ = [
    "FLAG_ACK",
    "FLAG_FIN",
    "FLAG_RST",
    "FLAG_SYN",
    "GO_AWAY_INTERNAL_ERROR",
    "GO_AWAY_NORMAL",
    "GO_AWAY_PROTOCOL_ERROR",
    "HEADER_BYTES",
    "TYPE_DATA",
    "TYPE_GO_AWAY",
    "TYPE_PING",
    "TYPE_WINDOW_UPDATE",
    "FrameReader",
    "Header",
    "decode_header",
    "encode_header",
]

VERSION = 0
HEADER_BYTES = 12

TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3
_TYPE_NAMES = ("data", "window update", "ping", "go away")

FLAG_SYN = 0x1
FLAG_ACK = 0x2
FLAG_FIN = 0x4
FLAG_RST = 0x8

GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1
GO_AWAY_INTERNAL_ERROR = 2

U32_MAX = 0xFFFF_FFFF

HEADER = struct.Struct(">BBHII")
"""The packer; ``HEADER.pack(0, type, flags, stream_id, length)`` in hot paths."""


class Header(NamedTuple):
    type: int
    flags: int
    stream_id: int
    length: int

    def describe(self) -> str:
        names = [
            n for bit, n in ((1, "SYN"), (2, "ACK"), (4, "FIN"), (8, "RST")) if self.flags & bit
        ]
        return (
            f"{_TYPE_NAMES[self.type]} stream={self.stream_id} "
            f"flags={'|'.join(names) or '0'} length={self.length}"
        )


def encode_header(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    """Encode one header; raise LocalProtocolError for values that do not fit."""
    if not 0 <= frame_type <= TYPE_GO_AWAY:
        raise LocalProtocolError(f"unknown yamux frame type {frame_type}")
    if not 0 <= flags <= 0xF:
        raise LocalProtocolError(f"unknown yamux flags 0x{flags:x}")
    if not 0 <= stream_id <= U32_MAX or not 0 <= length <= U32_MAX:
        raise LocalProtocolError("yamux stream id and length must fit in 32 bits")
    return HEADER.pack(VERSION, frame_type, flags, stream_id, length)


def decode_header(data: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    """Decode the header at ``offset``; raise DecodeError for a version or type we do not know.

    Unknown flag bits are ignored (as rust-yamux and go-yamux do).
    """
    if len(data) - offset < HEADER_BYTES:
        raise DecodeError(f"yamux header needs {HEADER_BYTES} bytes, got {len(data) - offset}")
    version, frame_type, flags, stream_id, length = HEADER.unpack_from(data, offset)
    if version != VERSION:
        raise DecodeError(f"unsupported yamux version {version} (only 0 exists)")
    if frame_type > TYPE_GO_AWAY:
        raise DecodeError(f"unknown yamux frame type {frame_type}")
    return Header(frame_type, flags & 0xF, stream_id, length)


class FrameReader:
    """Split a byte stream into headers and data payload pieces, without reassembly.

    :meth:`feed` yields each :class:`Header` as soon as its 12 bytes are in,
    then, for a data frame, the payload in one or more pieces as the bytes
    arrive (a frame may span many reads; the consumer counts ``length``).
    A data frame longer than ``max_data_bytes`` is refused at its header, so
    nothing is ever buffered for it: the reader holds at most 11 bytes.

    Pieces avoid copies: a piece that is a whole read comes back as that
    ``bytes`` object, a large part of a read as a ``memoryview`` of it. A
    piece smaller than half its read is copied, so that a buffered piece
    never pins more than twice its size in memory.
    """

    __slots__ = ("_max_data_bytes", "_partial", "_remaining")

    def __init__(self, max_data_bytes: int) -> None:
        self._max_data_bytes = max_data_bytes
        self._partial = bytearray()
        self._remaining = 0

    @property
    def in_frame(self) -> bool:
        """True while bytes of a frame (header or payload) are still expected."""
        return bool(self._partial) or self._remaining > 0

    def feed(self, data: bytes) -> Iterator[Header | bytes | memoryview]:
        size = len(data)
        view = memoryview(data)
        pos = 0
        if self._partial:
            need = HEADER_BYTES - len(self._partial)
            self._partial += view[:need]
            pos = min(need, size)
            if len(self._partial) < HEADER_BYTES:
                return
            header = self._header(self._partial, 0)
            self._partial.clear()
            yield header
        while pos < size:
            remaining = self._remaining
            if remaining:
                take = size - pos if remaining > size - pos else remaining
                self._remaining = remaining - take
                if take == size:
                    yield data
                elif take * 2 < size:
                    yield bytes(view[pos : pos + take])
                else:
                    yield view[pos : pos + take]
                pos += take
                continue
            if size - pos < HEADER_BYTES:
                self._partial += view[pos:]
                return
            header = self._header(data, pos)
            pos += HEADER_BYTES
            yield header

    def _header(self, data: bytes | bytearray, offset: int) -> Header:
        header = decode_header(data, offset)
        if header.type == TYPE_DATA:
            if header.length > self._max_data_bytes:
                raise DecodeError(
                    f"yamux data frame of {header.length} bytes on stream {header.stream_id} "
                    f"exceeds the largest window we grant ({self._max_data_bytes} bytes)"
                )
            self._remaining = header.length
        return header
