"""The append-only file that keeps one room's envelopes on local disk.

Every kernel keeps one :class:`RoomFile` per room, so that a restarted kernel
gets its state back and syncs only what it lacks. The room layer appends each
envelope it accepts, notes how far peers have acknowledged our own envelopes,
and now and then rewrites the file (:meth:`RoomFile.compact`) to drop
duplicates and fold the document into one Yjs snapshot.

File format
-----------

::

    file     = magic (8 bytes: 89 59 4c 4f 47 0d 0a 1a, "\\x89YLOG\\r\\n\\x1a")
               version (u8, 1)
               HEADER record, [SNAPSHOT record], { ENVELOPE | ACKED | COMPACTED record }
    record   = type (u8) | uvarint(len(body)) | body | crc32(type | uvarint | body) (u32, LE)

    HEADER    1  the room layer's opaque bytes (its signed room descriptor), ≤ 64 KiB
    ENVELOPE  2  one envelope's canonical encoding (Envelope.encode), ≤ max_envelope_bytes
    ACKED     3  uvarint(seq): peers have acknowledged our own envelopes up to seq
    SNAPSHOT  4  uvarint(n) | n × (uvarint(len(peer id)) | peer id | uvarint(seq)) | update:
                 a Yjs full-state update covering that vector (n ≤ 4096, update ≤ 256 MiB)
    COMPACTED 5  empty; ends what :meth:`RoomFile.compact` wrote (records after it count
                 towards :attr:`RoomFile.appended_since_compaction`)

crc32 is zlib's. Varints are the minimal LEB128 of :mod:`lattica_nb.wire.varint`.
``acked`` is the largest ACKED value. Envelopes equal to an earlier one (same
author, seq and signed content) are dropped on reading. Two *different*
envelopes with one author and seq are both returned, in file order: only we
write the file, so that is a bug, and the room layer's log reports it.

Reading is bounded at every step and checks the framing, not signatures: the
room layer restores the envelopes with ``EnvelopeLog.restore(..., verify=False)``
because only this kernel wrote the file (mode 0600, in a 0700 directory).

Crashes. :meth:`RoomFile.create` and :meth:`RoomFile.compact` write ``<path>.tmp``,
fsync it and move it into place, so the file is always whole up to its last
record. A crash while appending leaves a *torn tail*: a last record that runs
past the end of the file or fails its checksum, or a tail of zero bytes (a
filesystem that grew the file before its data landed). :meth:`RoomFile.open`
cuts a torn tail off and reports its size; a damaged record followed by
anything else is corruption in the middle and raises
:class:`~lattica_nb.errors.StorageError`: data is never dropped silently.
A leftover ``<path>.tmp`` is removed on open.

On POSIX the open file holds an exclusive ``flock``: a second kernel opening
the same room file fails at once instead of interleaving its writes.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import sys
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from ..errors import DecodeError, LatticaError, LocalProtocolError, StorageError
from ..identity import PeerId
from ..wire.varint import MAX_VARINT_BYTES, decode_uvarint, encode_uvarint
from .envelope import DEFAULT_MAX_ENVELOPE_BYTES, MAX_SEQ, ROOM_ID_BYTES, Envelope

if sys.platform != "win32":
    import fcntl

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_HEADER_BYTES",
    "MAX_SNAPSHOT_BYTES",
    "MAX_VECTOR_ENTRIES",
    "LoadedRoom",
    "RoomFile",
    "RoomStore",
]

logger = logging.getLogger(__name__)

MAGIC = b"\x89YLOG\r\n\x1a"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024
"""Largest Yjs snapshot update a SNAPSHOT record may hold."""
MAX_VECTOR_ENTRIES = 4096
"""Most authors a snapshot's vector may name."""
FILE_SUFFIX = ".ylog"

_HEADER, _ENVELOPE, _ACKED, _SNAPSHOT, _COMPACTED = 1, 2, 3, 4, 5
_PREAMBLE = MAGIC + bytes([FORMAT_VERSION])
_MAX_PEER_ID_BYTES = 255
_MAX_SNAPSHOT_RECORD = MAX_SNAPSHOT_BYTES + (MAX_VECTOR_ENTRIES + 1) * (
    2 * MAX_VARINT_BYTES + _MAX_PEER_ID_BYTES
)
_CHUNK_BYTES = 1024 * 1024
_O_BINARY = getattr(os, "O_BINARY", 0)


@dataclass(frozen=True, slots=True)
class LoadedRoom:
    """What :meth:`RoomFile.open` read back."""

    header: bytes
    envelopes: tuple[Envelope, ...]
    """In file order; an envelope equal to an earlier one is left out."""
    snapshot: bytes | None
    """A Yjs full-state update covering :attr:`snapshot_vector`, or None."""
    snapshot_vector: dict[PeerId, int]
    acked: int
    truncated_bytes: int
    """Bytes of a torn tail (a crash mid-append) cut off the end of the file."""


class RoomFile:
    """One room's append-only file: a header, then records. Build with :meth:`create` or
    :meth:`open`; close it (or use it as a context manager)."""

    __slots__ = (
        "_acked",
        "_appended",
        "_fd",
        "_fsync",
        "_header",
        "_max_envelope",
        "_path",
        "_size",
    )

    def __init__(
        self,
        path: Path,
        fd: int,
        header: bytes,
        size: int,
        *,
        acked: int,
        appended: int,
        max_envelope_bytes: int,
        fsync: bool,
    ) -> None:
        """Private: use :meth:`create` or :meth:`open`."""
        self._path, self._fd, self._header, self._size = path, fd, header, size
        self._acked, self._appended = acked, appended
        self._max_envelope, self._fsync = max_envelope_bytes, fsync

    @classmethod
    def create(
        cls,
        path: Path,
        header: bytes,
        *,
        max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
        fsync: bool = True,
    ) -> RoomFile:
        """A new file holding only ``header``; StorageError if ``path`` exists."""
        path = Path(path)
        _check_limit(max_envelope_bytes)
        data = _PREAMBLE + _record(_HEADER, _checked_header(header))
        if os.path.lexists(path):
            raise StorageError(f"room file {path} already exists; open it instead")
        tmp = _tmp_path(path)
        fd = _write_new(tmp, [data], fsync)
        try:
            with _os_errors(path, "create"):
                try:
                    os.link(tmp, path)  # unlike a rename, never replaces a file
                except FileExistsError:
                    raise StorageError(f"room file {path} already exists; open it") from None
                except OSError:  # a filesystem without hard links
                    if os.path.lexists(path):
                        raise
                    os.replace(tmp, path)
                tmp.unlink(missing_ok=True)
                if fsync:
                    _sync_directory(path.parent)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return cls(
            path,
            fd,
            bytes(header),
            len(data),
            acked=0,
            appended=0,
            max_envelope_bytes=max_envelope_bytes,
            fsync=fsync,
        )

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
        fsync: bool = True,
    ) -> tuple[RoomFile, LoadedRoom]:
        """Open an existing file, cutting off a torn tail; StorageError if it is damaged."""
        path = Path(path)
        _check_limit(max_envelope_bytes)
        with _os_errors(path, "open"):
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise StorageError(f"room file {path} is not a regular file")
            fd = os.open(path, os.O_RDWR | os.O_APPEND | _O_BINARY)
        try:
            with _os_errors(path, "open"):
                _lock(fd, path)
                if sys.platform != "win32" and not os.path.samestat(os.fstat(fd), os.stat(path)):
                    raise StorageError(f"room file {path} is in use by another process")
                _tmp_path(path).unlink(missing_ok=True)  # a crashed compaction's leftover
                loader = _Loader(path, fd, max_envelope_bytes)
                loaded = loader.load()
                if loaded.truncated_bytes:
                    logger.warning(
                        "cut a torn tail of %d bytes (a crash while writing) off room file %s",
                        loaded.truncated_bytes,
                        path,
                    )
                    os.ftruncate(fd, loader.end)
                    if fsync:
                        os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        room = cls(
            path,
            fd,
            loaded.header,
            loader.end,
            acked=loaded.acked,
            appended=loader.appended,
            max_envelope_bytes=max_envelope_bytes,
            fsync=fsync,
        )
        return room, loaded

    @property
    def path(self) -> Path:
        return self._path

    @property
    def header(self) -> bytes:
        return self._header

    @property
    def acked(self) -> int:
        """The largest seq peers have acknowledged of our own envelopes (0 if none)."""
        return self._acked

    @property
    def size_bytes(self) -> int:
        return self._size

    @property
    def appended_since_compaction(self) -> int:
        """ENVELOPE and ACKED records written since the file was created or last compacted
        (counted across restarts): what a :meth:`compact` would fold away or into a snapshot."""
        return self._appended

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def append(self, envelopes: Sequence[Envelope]) -> None:
        """Write ``envelopes`` in one write (and one fsync)."""
        records = [self._envelope_record(envelope) for envelope in envelopes]
        if records:
            self._write(b"".join(records))
            self._appended += len(records)

    def append_acked(self, seq: int) -> None:
        """Note that peers acknowledged our own envelopes up to ``seq``; a lower one is ignored."""
        _check_seq(seq, "acked seq")
        if seq > self._acked:
            self._write(_record(_ACKED, encode_uvarint(seq)))
            self._acked = seq
            self._appended += 1

    def compact(
        self,
        header: bytes,
        envelopes: Iterable[Envelope],
        *,
        snapshot: bytes | None,
        snapshot_vector: Mapping[PeerId, int],
        acked: int,
    ) -> None:
        """Replace the file's content, atomically, with exactly what is given.

        Duplicate envelopes are written once. On any error the old file stays
        as it was (and in use) unless the message says otherwise.
        """
        self._require_open()
        header = _checked_header(header)
        _check_seq(acked, "acked seq")
        first = [_PREAMBLE + _record(_HEADER, header)]
        if snapshot is not None:
            first.append(_record(_SNAPSHOT, _snapshot_body(snapshot, snapshot_vector)))
        elif snapshot_vector:
            raise LocalProtocolError("a snapshot vector was given without a snapshot")
        tail = (_record(_ACKED, encode_uvarint(acked)) if acked else b"") + _record(_COMPACTED, b"")
        tmp = _tmp_path(self._path)
        fd = _write_new(tmp, _chunks(first, self._unique_records(envelopes), tail), self._fsync)
        try:
            with _os_errors(self._path, "compact"):
                size = os.fstat(fd).st_size
                os.replace(tmp, self._path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        old, self._fd, self._size = self._fd, fd, size
        self._header, self._acked, self._appended = header, acked, 0
        os.close(old)
        if self._fsync:
            try:
                _sync_directory(self._path.parent)
            except OSError as exc:
                raise StorageError(
                    f"room file {self._path} was compacted and is in use, but its directory could "
                    f"not be synced ({exc.strerror or exc}): a power cut may bring the old one back"
                ) from exc

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> RoomFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._size} bytes"
        return f"RoomFile({str(self._path)!r}, {state})"

    # -- internals -----------------------------------------------------------------------------

    def _envelope_record(self, envelope: Envelope) -> bytes:
        if envelope.size > self._max_envelope:
            raise LocalProtocolError(
                f"envelope {envelope.seq} of {envelope.author} is {envelope.size} bytes, over the "
                f"room file's limit of {self._max_envelope}"
            )
        return _record(_ENVELOPE, envelope.encode())

    def _unique_records(self, envelopes: Iterable[Envelope]) -> Iterator[bytes]:
        seen: dict[tuple[PeerId, int], Envelope] = {}
        for envelope in envelopes:
            kept = seen.setdefault((envelope.author, envelope.seq), envelope)
            if kept is envelope or not kept.same_content(envelope):
                yield self._envelope_record(envelope)

    def _require_open(self) -> int:
        if self._fd < 0:
            raise StorageError(f"room file {self._path} is closed; open it again")
        return self._fd

    def _write(self, data: bytes) -> None:
        fd = self._require_open()
        try:
            _write_all(fd, data)
            if self._fsync:
                _sync_data(fd)
        except OSError as exc:
            try:  # leave no partial record for good ones to follow
                os.ftruncate(fd, self._size)
            except OSError:
                self.close()
                raise StorageError(
                    f"could not write room file {self._path} ({exc.strerror or exc}) nor undo "
                    "the partial write; it is closed, open it again"
                ) from exc
            raise StorageError(
                f"could not write room file {self._path}: {exc.strerror or exc}"
            ) from exc
        self._size += len(data)


class RoomStore:
    """A directory of room files, one per room id: ``<directory>/<room id hex>.ylog``."""

    __slots__ = ("_directory",)

    def __init__(self, directory: Path) -> None:
        self._directory = Path(directory)
        with _os_errors(self._directory, "create the directory of"):
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def directory(self) -> Path:
        return self._directory

    def path_for(self, room: bytes) -> Path:
        if len(room) != ROOM_ID_BYTES:
            raise LocalProtocolError(f"room id is {len(room)} bytes, not {ROOM_ID_BYTES}")
        return self._directory / f"{bytes(room).hex()}{FILE_SUFFIX}"

    def exists(self, room: bytes) -> bool:
        return os.path.lexists(self.path_for(room))

    def remove(self, room: bytes) -> None:
        """Delete the room's file (and a leftover temporary file); no error if there is none."""
        path = self.path_for(room)
        with _os_errors(path, "remove"):
            path.unlink(missing_ok=True)
            _tmp_path(path).unlink(missing_ok=True)


class _Loader:
    """Reads a room file record by record, from a buffered reader over its descriptor."""

    def __init__(self, path: Path, fd: int, max_envelope_bytes: int) -> None:
        self.path, self.fd, self.size = path, fd, os.fstat(fd).st_size
        self.limits = {
            _HEADER: MAX_HEADER_BYTES,
            _ENVELOPE: max_envelope_bytes,
            _ACKED: MAX_VARINT_BYTES,
            _SNAPSHOT: _MAX_SNAPSHOT_RECORD,
            _COMPACTED: 0,
        }
        self.end = 0
        self.appended = 0

    def load(self) -> LoadedRoom:
        os.lseek(self.fd, 0, os.SEEK_SET)
        with io.BufferedReader(io.FileIO(self.fd, "r", closefd=False), _CHUNK_BYTES) as reader:
            return self._load(reader)

    def _load(self, reader: BinaryIO) -> LoadedRoom:
        preamble = reader.read(len(_PREAMBLE))
        if preamble[: len(MAGIC)] != MAGIC:
            raise self._corrupt(0, "it does not start with the room file magic (not a room file)")
        if len(preamble) < len(_PREAMBLE) or preamble[-1] != FORMAT_VERSION:
            version = preamble[-1] if len(preamble) == len(_PREAMBLE) else "missing"
            raise self._corrupt(len(MAGIC), f"format version {version}, expected {FORMAT_VERSION}")
        header: bytes | None = None
        snapshot: tuple[dict[PeerId, int], bytes] | None = None
        envelopes: list[Envelope] = []
        seen: dict[tuple[PeerId, int], Envelope] = {}
        acked, pos, index = 0, len(_PREAMBLE), 0
        while pos < self.size:
            frame = self._frame(reader, pos)
            if isinstance(frame, str):
                break
            kind, body, end = frame
            try:
                if (kind == _HEADER) != (index == 0):
                    raise DecodeError("the header record must come first, and only once")
                if kind == _HEADER:
                    header = body
                elif kind == _SNAPSHOT:
                    if index != 1:
                        raise DecodeError("a snapshot record must directly follow the header")
                    snapshot = _decode_snapshot(body)
                elif kind == _ENVELOPE:
                    envelope = Envelope.decode(body, max_bytes=self.limits[_ENVELOPE])
                    kept = seen.setdefault((envelope.author, envelope.seq), envelope)
                    if kept is envelope or not kept.same_content(envelope):
                        envelopes.append(envelope)
                    self.appended += 1
                elif kind == _ACKED:
                    acked = max(acked, _decode_acked(body))
                    self.appended += 1
                else:
                    self.appended = 0  # _COMPACTED
            except LatticaError as exc:
                raise self._corrupt(pos, str(exc)) from None
            pos, index = end, index + 1
        if header is None:
            raise self._corrupt(len(_PREAMBLE), "the header record is missing or damaged")
        self.end = pos
        vector, update = snapshot if snapshot is not None else ({}, None)
        return LoadedRoom(header, tuple(envelopes), update, vector, acked, self.size - pos)

    def _frame(self, reader: BinaryIO, pos: int) -> tuple[int, bytes, int] | str:
        """The record at ``pos``; a torn tail gives a reason, corruption raises."""
        prefix = reader.read(1)
        if not prefix:
            return self._damaged(reader, pos, self.size, "the file shrank while being read")
        limit = self.limits.get(prefix[0], -1)
        if limit < 0:
            return self._damaged(reader, pos, pos, f"unknown record type {prefix[0]}")
        while prefix[-1] & 0x80 or len(prefix) == 1:
            if len(prefix) > MAX_VARINT_BYTES:
                return self._damaged(reader, pos, pos, "its length varint is too long")
            more = reader.read(1)
            if not more:
                return self._damaged(reader, pos, self.size, "it is cut off in its length")
            prefix += more
        try:
            length = decode_uvarint(prefix, 1)[0]
        except DecodeError as exc:
            return self._damaged(reader, pos, pos, f"its length is malformed ({exc})")
        if length > limit:
            return self._damaged(reader, pos, pos, f"its length {length} is over the limit {limit}")
        end = pos + len(prefix) + length + 4
        if end > self.size:
            return self._damaged(reader, pos, self.size, f"its {length} bytes run past the end")
        body, crc = reader.read(length), reader.read(4)
        if len(crc) < 4:
            return self._damaged(reader, pos, self.size, "the file shrank while being read")
        if zlib.crc32(body, zlib.crc32(prefix)) != int.from_bytes(crc, "little"):
            return self._damaged(reader, pos, end, "its checksum does not match")
        return prefix[0], body, end

    def _damaged(self, reader: BinaryIO, pos: int, rest: int, reason: str) -> str:
        """``reason`` if the record at ``pos`` is a torn tail (only zero bytes follow ``rest``)."""
        reader.seek(rest)
        while chunk := reader.read(_CHUNK_BYTES):
            if chunk.count(0) != len(chunk):
                raise self._corrupt(pos, f"{reason}, and more data follows it")
        return reason

    def _corrupt(self, offset: int, reason: str) -> StorageError:
        return StorageError(
            f"room file {self.path} is damaged at byte offset {offset}: {reason}. Nothing was "
            "changed; move the file away to start the room afresh (its peers sync it back)"
        )


def _record(kind: int, body: bytes) -> bytes:
    prefix = bytes([kind]) + encode_uvarint(len(body))
    return prefix + body + zlib.crc32(body, zlib.crc32(prefix)).to_bytes(4, "little")


def _chunks(first: list[bytes], records: Iterable[bytes], last: bytes) -> Iterator[bytes]:
    """``first``, ``records`` and ``last`` joined into writes of about a megabyte."""
    buffer = bytearray(b"".join(first))
    for record in records:
        buffer += record
        if len(buffer) >= _CHUNK_BYTES:
            yield bytes(buffer)
            buffer.clear()
    yield bytes(buffer + last)


def _snapshot_body(update: bytes, vector: Mapping[PeerId, int]) -> bytes:
    if len(update) > MAX_SNAPSHOT_BYTES:
        raise LocalProtocolError(
            f"a snapshot of {len(update)} bytes is over the limit of {MAX_SNAPSHOT_BYTES}"
        )
    if len(vector) > MAX_VECTOR_ENTRIES:
        raise LocalProtocolError(
            f"a snapshot vector of {len(vector)} authors is over the limit of {MAX_VECTOR_ENTRIES}"
        )
    parts = [encode_uvarint(len(vector))]
    for peer in sorted(vector):
        _check_seq(vector[peer], "snapshot vector seq")
        raw = peer.to_bytes()
        parts += [encode_uvarint(len(raw)), raw, encode_uvarint(vector[peer])]
    return b"".join([*parts, update])


def _decode_snapshot(body: bytes) -> tuple[dict[PeerId, int], bytes]:
    count, pos = decode_uvarint(body)
    if count > MAX_VECTOR_ENTRIES:
        raise DecodeError(f"snapshot vector of {count} authors is over {MAX_VECTOR_ENTRIES}")
    vector: dict[PeerId, int] = {}
    for _ in range(count):
        length, pos = decode_uvarint(body, pos)
        if length > _MAX_PEER_ID_BYTES or pos + length > len(body):
            raise DecodeError("snapshot vector peer id is too long or cut off")
        peer = PeerId(body[pos : pos + length])
        seq, pos = decode_uvarint(body, pos + length)
        if peer in vector:
            raise DecodeError(f"snapshot vector names {peer} twice")
        vector[peer] = seq
    update = body[pos:]
    if len(update) > MAX_SNAPSHOT_BYTES:
        raise DecodeError(f"snapshot of {len(update)} bytes is over {MAX_SNAPSHOT_BYTES}")
    return vector, update


def _decode_acked(body: bytes) -> int:
    seq, end = decode_uvarint(body)
    if end != len(body):
        raise DecodeError("acked record has bytes after its seq")
    return seq


def _checked_header(header: bytes) -> bytes:
    if len(header) > MAX_HEADER_BYTES:
        raise LocalProtocolError(
            f"a room file header of {len(header)} bytes is over the limit of {MAX_HEADER_BYTES}"
        )
    return bytes(header)


def _check_seq(seq: int, what: str) -> None:
    if not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise LocalProtocolError(f"{what} {seq!r} is outside 0..2**63-1")


def _check_limit(max_envelope_bytes: int) -> None:
    if not isinstance(max_envelope_bytes, int) or max_envelope_bytes < 1:
        raise LocalProtocolError(f"max_envelope_bytes must be positive, got {max_envelope_bytes!r}")


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


@contextmanager
def _os_errors(path: Path, action: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as exc:
        raise StorageError(f"could not {action} room file {path}: it does not exist") from exc
    except OSError as exc:
        raise StorageError(f"could not {action} room file {path}: {exc.strerror or exc}") from exc


def _lock(fd: int, path: Path) -> None:
    if sys.platform != "win32":
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(
                f"room file {path} is in use by another process (another kernel in this room "
                "with the same data directory?)"
            ) from None


def _write_new(tmp: Path, chunks: Iterable[bytes], fsync: bool) -> int:
    """Write ``chunks`` to ``tmp`` (mode 0600, locked, truncated first); its open descriptor."""
    with _os_errors(tmp, "write"):
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_APPEND | _O_BINARY, 0o600)
    owned = False
    try:
        with _os_errors(tmp, "write"):
            _lock(fd, tmp)  # else another process is writing it: leave it alone
            owned = True
            os.ftruncate(fd, 0)
            if sys.platform != "win32":
                os.fchmod(fd, 0o600)
            for chunk in chunks:
                _write_all(fd, chunk)
            if fsync:
                os.fsync(fd)
    except BaseException:
        os.close(fd)
        if owned:
            tmp.unlink(missing_ok=True)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_data(fd: int) -> None:
    if sys.platform == "linux":
        os.fdatasync(fd)  # the size is flushed too: it is needed to read the data back
    else:
        os.fsync(fd)


def _sync_directory(directory: Path) -> None:
    if sys.platform != "win32":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
