"""A room's append-only file (sync/storage.py): round trips, torn tails, corruption, compaction."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lattica_nb.errors import LocalProtocolError, StorageError
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.sync.envelope import Envelope, room_id
from lattica_nb.sync.log import EnvelopeLog
from lattica_nb.sync.storage import MAGIC, MAX_HEADER_BYTES, LoadedRoom, RoomFile, RoomStore
from lattica_nb.wire.varint import encode_uvarint

ROOM = room_id("lab", "sweep")
GUID = b"G" * 16
HEADER = b"signed room descriptor"
KEYS = [PrivateKey.generate() for _ in range(2)]
IDS = [PeerId.from_public_key(key.public_key) for key in KEYS]
POOL = [
    [
        Envelope.create(key, ROOM, seq, bytes([a, seq]) * seq, guid=GUID, epoch=0)
        for seq in (1, 2, 3)
    ]
    for a, key in enumerate(KEYS)
]
A1, A2, A3 = POOL[0]
B1 = POOL[1][0]
HEADER_, ENVELOPE, ACKED, SNAPSHOT, COMPACTED = 1, 2, 3, 4, 5


def record(kind: int, body: bytes) -> bytes:
    """A record as the module docs specify it (written independently of the module)."""
    prefix = bytes([kind]) + encode_uvarint(len(body))
    return prefix + body + zlib.crc32(prefix + body).to_bytes(4, "little")


VALID = MAGIC + b"\x01" + record(HEADER_, HEADER)
"""A file holding only the header."""


def new_file(path: Path, header: bytes = HEADER) -> RoomFile:
    return RoomFile.create(path, header, fsync=False)


def reopen(path: Path, **kwargs: int) -> LoadedRoom:
    room, loaded = RoomFile.open(path, fsync=False, **kwargs)
    room.close()
    return loaded


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    with new_file(path) as room:
        assert room.header == HEADER and room.path == path
        room.append([A1, A2])
        room.append([B1])
        room.append_acked(2)
        room.append_acked(1)  # lower: ignored
        room.append([])
        assert room.acked == 2 and room.appended_since_compaction == 4
        assert room.size_bytes == path.stat().st_size
    loaded = reopen(path)
    assert loaded == LoadedRoom(HEADER, (A1, A2, B1), None, {}, 2, 0)
    assert [e.encode() for e in loaded.envelopes] == [A1.encode(), A2.encode(), B1.encode()]
    log = EnvelopeLog(ROOM, guid=GUID)
    log.restore(loaded.envelopes, verify=False)
    assert log.vector() == {IDS[0]: 2, IDS[1]: 1}


def test_reopened_file_keeps_appending(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    new_file(path).close()
    room, loaded = RoomFile.open(path, fsync=True)
    assert loaded.envelopes == () and loaded.acked == 0
    with room:
        room.append([A1])
        room.append_acked(1)
        assert room.acked == 1 and room.appended_since_compaction == 2
    room, loaded = RoomFile.open(path, fsync=False)
    with room:
        assert loaded.envelopes == (A1,) and loaded.acked == 1
        assert room.acked == 1 and room.appended_since_compaction == 2
        room.append([A2])
    assert reopen(path).envelopes == (A1, A2)


def test_file_and_directory_modes(tmp_path: Path) -> None:
    if sys.platform == "win32":
        pytest.skip("POSIX modes")
    store = RoomStore(tmp_path / "rooms" / "sub")
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    RoomFile.create(store.path_for(ROOM), HEADER).close()
    assert stat.S_IMODE(store.path_for(ROOM).stat().st_mode) == 0o600
    assert sorted(p.name for p in store.directory.iterdir()) == [f"{ROOM.hex()}.ylog"]


def test_duplicates_are_dropped_and_equivocations_kept(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    other = Envelope.create(KEYS[0], ROOM, 2, b"something else", guid=GUID, epoch=0)
    with new_file(path) as room:
        room.append([A1, A2, A1])
        room.append([A2, B1, other])
    assert reopen(path).envelopes == (A1, A2, B1, other)


def test_torn_tail_at_every_offset_is_cut_and_appending_continues(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    with new_file(path) as room:
        room.append([A1, B1])
        good = room.size_bytes
        room.append([A2])
    whole = path.read_bytes()
    assert len(whole) - good == len(record(ENVELOPE, A2.encode()))
    for cut in range(good + 1, len(whole)):
        path.write_bytes(whole[:cut])
        room, loaded = RoomFile.open(path, fsync=False)
        with room:
            assert loaded.envelopes == (A1, B1)
            assert loaded.truncated_bytes == cut - good
            assert path.stat().st_size == good == room.size_bytes
            room.append([A2])
        assert reopen(path) == LoadedRoom(HEADER, (A1, B1, A2), None, {}, 0, 0)
        assert path.read_bytes() == whole


def test_torn_acked_and_checksum_failure_at_the_end_are_cut(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    with new_file(path) as room:
        room.append([A1])
        good = room.size_bytes
        room.append_acked(1)
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])
    assert reopen(path).truncated_bytes == len(whole) - 1 - good
    path.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))  # last record whole, CRC wrong
    loaded = reopen(path)
    assert (loaded.envelopes, loaded.acked, loaded.truncated_bytes) == ((A1,), 0, len(whole) - good)


def test_zero_filled_tail_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    with new_file(path) as room:
        room.append([A1])
        good = room.size_bytes
    with path.open("ab") as f:
        f.write(bytes(5000))
    loaded = reopen(path)
    assert loaded.envelopes == (A1,) and loaded.truncated_bytes == 5000
    assert path.stat().st_size == good


@pytest.mark.parametrize("where", ["crc", "type", "length"])
def test_damage_in_the_middle_raises(tmp_path: Path, where: str) -> None:
    path = tmp_path / "room.ylog"
    with new_file(path) as room:
        room.append([A1])
        offset = room.size_bytes
        room.append([A2, A3])
    data = bytearray(path.read_bytes())
    if where == "crc":
        data[offset + len(record(ENVELOPE, A2.encode())) - 1] ^= 0x01
    elif where == "type":
        data[offset] ^= 0x40
    else:
        data[offset + 1] ^= 0x02
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError) as info:
        RoomFile.open(path, fsync=False)
    assert str(path) in str(info.value) and f"offset {offset}" in str(info.value)
    assert path.read_bytes() == data  # nothing was cut


def test_zero_bytes_followed_by_data_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    with new_file(path) as room:
        room.append([A1])
    with path.open("ab") as f:
        f.write(bytes(100) + record(ENVELOPE, A2.encode()))
    with pytest.raises(StorageError, match="damaged at byte offset"):
        RoomFile.open(path, fsync=False)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a room file at all",
        MAGIC,
        MAGIC + b"\x02" + record(HEADER_, HEADER),  # a future version
        b"\x00" + VALID[1:],
        MAGIC + b"\x01",  # no header record
        VALID[:-1],  # torn header: nothing to recover
        MAGIC + b"\x01" + record(ENVELOPE, A1.encode()),  # no header first
        VALID + record(HEADER_, HEADER),  # two headers
        VALID + record(ENVELOPE, b"not an envelope"),
        VALID + record(ACKED, b"\x01\x02"),
        VALID + record(COMPACTED, b"x"),
        VALID + record(ENVELOPE, A1.encode()) + record(SNAPSHOT, b"\x00"),  # snapshot not 2nd
        VALID + record(SNAPSHOT, encode_uvarint(4097)),  # vector too long
        VALID + record(SNAPSHOT, b"\x01\x03abc\x01"),  # not a peer id
        VALID
        + record(
            SNAPSHOT,
            b"\x02" + (encode_uvarint(len(IDS[0].to_bytes())) + IDS[0].to_bytes() + b"\x01") * 2,
        ),
    ],
)
def test_malformed_files_raise(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "room.ylog"
    path.write_bytes(data)
    with pytest.raises(StorageError, match=str(path)):
        RoomFile.open(path, fsync=False)


def test_oversize_length_is_never_allocated(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    new_file(path).close()
    good = path.stat().st_size
    with path.open("ab") as f:
        f.write(bytes([ENVELOPE]) + encode_uvarint(2**62) + b"x" * 100)
    tracemalloc.start()
    try:
        with pytest.raises(StorageError, match="over the limit"):
            RoomFile.open(path, fsync=False)
        assert tracemalloc.get_traced_memory()[1] < 8 * 1024 * 1024  # read buffers, not 2**62
    finally:
        tracemalloc.stop()
    # Within the limit but running past the end: a torn tail, cut off.
    data = path.read_bytes()[:good] + bytes([ENVELOPE]) + encode_uvarint(4096) + b"x" * 100
    path.write_bytes(data)
    assert reopen(path, max_envelope_bytes=4096).truncated_bytes == len(data) - good
    # Over a lowered limit, with the data present: corruption, naming the limit.
    with new_file(tmp_path / "big.ylog") as room:
        room.append([A3])
    with pytest.raises(StorageError, match="over the limit 20"):
        RoomFile.open(tmp_path / "big.ylog", max_envelope_bytes=20)


def test_oversize_inputs_are_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    with pytest.raises(LocalProtocolError):
        RoomFile.create(path, b"x" * (MAX_HEADER_BYTES + 1))
    assert not path.exists()
    with RoomFile.create(path, HEADER, max_envelope_bytes=A2.size, fsync=False) as room:
        size = room.size_bytes
        with pytest.raises(LocalProtocolError):
            room.append([A1, A3])  # A3 is over the limit: nothing of the batch is written
        with pytest.raises(LocalProtocolError):
            room.append_acked(-1)
        with pytest.raises(LocalProtocolError):
            room.compact(HEADER, [], snapshot=None, snapshot_vector={IDS[0]: 1}, acked=0)
        assert room.size_bytes == path.stat().st_size == size


def test_failed_write_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "room.ylog"
    real_write = os.write

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    with new_file(path) as room:
        room.append([A1])
        with monkeypatch.context() as patch:
            patch.setattr(os, "write", half_then_full)
            with pytest.raises(StorageError, match="No space left"):
                room.append([A2, A3])
        room.append([B1])
    loaded = reopen(path)
    assert loaded.envelopes == (A1, B1) and loaded.truncated_bytes == 0


def test_compaction(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    with new_file(path) as room:
        room.append([A1, A2, B1, A1])
        room.append_acked(2)
        room.compact(
            b"new header",
            [A1, A2, A2, B1],
            snapshot=b"yjs state",
            snapshot_vector={IDS[1]: 1, IDS[0]: 2},
            acked=2,
        )
        assert room.header == b"new header" and room.appended_since_compaction == 0
        assert room.size_bytes == path.stat().st_size
        room.append([A3])
        assert room.appended_since_compaction == 1
    assert not (tmp_path / "room.ylog.tmp").exists()
    room, loaded = RoomFile.open(path, fsync=False)
    with room:
        assert loaded == LoadedRoom(
            b"new header", (A1, A2, B1, A3), b"yjs state", {IDS[0]: 2, IDS[1]: 1}, 2, 0
        )
        assert room.appended_since_compaction == 1
        room.compact(HEADER, [], snapshot=None, snapshot_vector={}, acked=0)
    assert reopen(path) == LoadedRoom(HEADER, (), None, {}, 0, 0)


def test_compaction_is_durable_with_fsync(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    with RoomFile.create(path, HEADER) as room:
        room.append([A1])
        room.compact(HEADER, [A1], snapshot=b"", snapshot_vector={}, acked=1)
        room.append([A2])
    assert reopen(path) == LoadedRoom(HEADER, (A1, A2), b"", {}, 1, 0)


def test_failed_compaction_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    with RoomFile.create(path, HEADER, max_envelope_bytes=A2.size, fsync=False) as room:
        room.append([A1])
        with pytest.raises(LocalProtocolError):  # A3 is over the file's envelope limit
            room.compact(HEADER, [A1, A2, A3], snapshot=None, snapshot_vector={}, acked=0)
        tmp = tmp_path / "room.ylog.tmp"
        assert not tmp.exists()
        tmp.mkdir()  # the temporary file cannot be written
        with pytest.raises(StorageError, match=r"room\.ylog\.tmp"):
            room.compact(HEADER, [], snapshot=None, snapshot_vector={}, acked=0)
        tmp.rmdir()
        room.append([A2])
    assert reopen(path).envelopes == (A1, A2)


def test_leftover_tmp_of_a_crashed_compaction_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    with new_file(path) as room:
        room.append([A1])
    tmp = tmp_path / "room.ylog.tmp"
    tmp.write_bytes(path.read_bytes()[:30])
    assert reopen(path).envelopes == (A1,)
    assert not tmp.exists()
    # A stale tmp does not block creating a file either.
    other = tmp_path / "other.ylog"
    other.with_name("other.ylog.tmp").write_bytes(b"junk")
    RoomFile.create(other, HEADER, fsync=False).close()
    assert reopen(other).header == HEADER
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.ylog", "room.ylog"]


def test_create_refuses_an_existing_path(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    new_file(path).close()
    before = path.read_bytes()
    with pytest.raises(StorageError, match="already exists"):
        RoomFile.create(path, b"other", fsync=False)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["room.ylog"]


def test_missing_file_and_directory_raise(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        RoomFile.open(tmp_path / "nothing.ylog")
    with pytest.raises(StorageError, match="not a regular file"):
        RoomFile.open(tmp_path)
    with pytest.raises(StorageError):
        RoomFile.create(tmp_path / "no" / "such" / "dir.ylog", HEADER)


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_second_open_fails_while_in_use(tmp_path: Path) -> None:
    path = tmp_path / "room.ylog"
    with new_file(path):
        with pytest.raises(StorageError, match="in use by another process"):
            RoomFile.open(path, fsync=False)
    assert reopen(path).header == HEADER


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    room = new_file(tmp_path / "room.ylog")
    room.close()
    room.close()
    assert room.closed and "closed" in repr(room)
    for call in (
        lambda: room.append([A1]),
        lambda: room.append_acked(1),
        lambda: room.compact(HEADER, [], snapshot=None, snapshot_vector={}, acked=0),
    ):
        with pytest.raises(StorageError, match="closed"):
            call()


def test_room_store(tmp_path: Path) -> None:
    store = RoomStore(tmp_path / "rooms")
    path = store.path_for(ROOM)
    assert path == tmp_path / "rooms" / f"{ROOM.hex()}.ylog"
    assert not store.exists(ROOM)
    RoomFile.create(path, HEADER, fsync=False).close()
    assert store.exists(ROOM)
    store.remove(ROOM)
    store.remove(ROOM)
    assert not store.exists(ROOM)
    with pytest.raises(LocalProtocolError):
        store.path_for(b"short")
    RoomStore(tmp_path / "rooms")  # an existing directory is fine


_records = st.lists(
    st.tuples(st.integers(0, 7), st.binary(max_size=64)).map(lambda kb: record(*kb)),
    max_size=6,
).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda tail: VALID + tail),
        _records.map(lambda tail: VALID + tail),
        st.tuples(_records, st.integers(0, 400), st.integers(0, 255)).map(
            lambda t: _flip(VALID + record(ENVELOPE, A1.encode()) + t[0], t[1], t[2])
        ),
    )
)
def test_garbage_only_raises_storage_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "room.ylog"
        path.write_bytes(data)
        try:
            room, loaded = RoomFile.open(path, fsync=False, max_envelope_bytes=4096)
        except StorageError:
            return
        with room:
            assert path.stat().st_size == len(data) - loaded.truncated_bytes == room.size_bytes
            room.append([A1])
        again = reopen(path)
        assert again.truncated_bytes == 0 and A1 in again.envelopes


def _flip(data: bytes, index: int, mask: int) -> bytes:
    out = bytearray(data)
    out[index % len(out)] ^= mask
    return bytes(out)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    appends=st.lists(st.sampled_from([*POOL[0], *POOL[1]]), min_size=1, max_size=8),
    cut=st.integers(0, 10_000),
)
def test_any_cut_of_a_written_file_opens_to_a_prefix(appends: list[Envelope], cut: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "room.ylog"
        ends: list[int] = []
        with new_file(path) as room:
            for envelope in appends:
                room.append([envelope])
                ends.append(room.size_bytes)
        whole = path.read_bytes()
        cut = len(VALID) + cut % (len(whole) - len(VALID) + 1)
        path.write_bytes(whole[:cut])
        loaded = reopen(path)
        kept = [envelope for envelope, end in zip(appends, ends, strict=True) if end <= cut]
        assert loaded.envelopes == tuple(dict.fromkeys(kept))
        assert loaded.truncated_bytes == cut - max([len(VALID), *(e for e in ends if e <= cut)])
