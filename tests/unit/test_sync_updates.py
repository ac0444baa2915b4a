"""The outline of Yjs updates: carried ranges, references, deletions, unmet dependencies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, merge_updates

from lattica_nb.errors import DecodeError
from lattica_nb.sync.updates import read_delete_set, read_state_vector, read_update

# Written by Node yjs 13.6 (client 4242): a map of every JSON-like kind (varint ints, a float32,
# a BigInt, a Uint8Array, nested objects), a nested Y.Map, a subdocument, formatted text with an
# embed and a deletion, an XML element with text and an attribute, an array with a deletion.
YJS_FIXTURE = bytes.fromhex(
    "011c9221002801016d03696e74017d072801016d036e6567017de0cf242801016d0166017c3f000000280101"
    "6d03626967017a10000000000000002801016d017301770ac3bc6ec3af20f09f98802101016d017401280101"
    "6d016e017e2301016d0362696e030102032801016d036f626a017602016175027d0176010162770163016476"
    "002701016d066e65737465640128009221090178017d012901016d03737562056368696c6476000401017401"
    "688192210c028492210e026c6f849221100b20f09f988020776f726c644692210c04626f6c640474727565c6"
    "92211092211104626f6c64046e756c6cc692210e92210f04626f6c64046e756c6cc592211c92210f0b7b2269"
    "6d67223a2278227dc692211d92210f04626f6c64047472756507010178030170070092211f06040092212002"
    "6869280092211f016b0177017608010161017d01819221240188922125027d037704666f7572019221030501"
    "0d022501"
)


def test_yjs_fixture_outline_matches_what_pycrdt_integrates() -> None:
    outline = read_update(YJS_FIXTURE)
    assert outline.structs == {4242: ((0, 40),)}
    assert outline.deletions == {4242: ((5, 6), (13, 15), (37, 38))}  # m["t"], 2 chars, a[1]
    doc = Doc()
    doc.apply_update(YJS_FIXTURE)
    assert read_state_vector(doc.get_state()) == {4242: 40}
    assert outline.unmet({}) is None
    assert outline.reached_by({4242: 40})
    assert not outline.reached_by({4242: 39})


def test_pycrdt_content_kinds() -> None:
    doc = Doc(client_id=7)
    doc.get("m", type=Map)["x"] = {"a": [1.0, None, True, "s", b"\x00"]}
    text = doc.get("t", type=Text)
    text.insert(0, "ab😀cd", {"bold": True})
    text.insert_embed(1, {"image": "x"})
    text.format(0, 2, {"italic": True})
    doc.get("a", type=Array).append(Array([Map({"k": Text("v")})]))
    del text[0:1]
    outline = read_update(doc.get_update())
    state = read_state_vector(doc.get_state())
    assert {c: segments[-1][1] for c, segments in outline.structs.items()} == state
    assert outline.deletions and outline.unmet({}) is None


def test_an_update_on_unseen_changes_is_unmet_until_they_arrive() -> None:
    a = Doc(client_id=1)
    a.get("t", type=Text).insert(0, "hello")
    first = a.get_update()
    b = Doc(client_id=2)
    b.apply_update(first)
    before = b.get_state()
    b.get("t", type=Text).insert(5, "!")  # its origin is a's last character
    reply = read_update(b.get_update(before))
    assert reply.structs == {2: ((0, 1),)}
    assert reply.references == {1: 5}
    assert reply.unmet({}) == (1, 0)
    assert reply.unmet({1: 5}) is None


def test_deleting_unseen_changes_is_unmet() -> None:
    a = Doc(client_id=1)
    a.get("t", type=Text).insert(0, "abc")
    before = a.get_state()
    del a.get("t", type=Text)[1:2]
    deletion = read_update(a.get_update(before))
    assert deletion.structs == {}
    assert deletion.deletions == {1: ((1, 2),)}
    assert deletion.unmet({1: 1}) == (1, 1)
    assert deletion.unmet({1: 3}) is None


def test_a_gap_inside_a_merged_update_is_unmet() -> None:
    doc = Doc(client_id=3)
    array = doc.get("a", type=Array)
    updates = []
    for value in range(3):
        before = doc.get_state()
        array.append(float(value))
        updates.append(doc.get_update(before))
    merged = read_update(merge_updates(updates[0], updates[2]))  # the middle one is missing
    assert merged.structs == {3: ((0, 1), (2, 3))}
    assert merged.unmet({}) == (3, 1)
    assert merged.unmet({3: 2}) is None
    assert not merged.reached_by({3: 2})


def test_state_vector_and_delete_set() -> None:
    doc = Doc(client_id=9)
    doc.get("t", type=Text).insert(0, "abcdef")
    del doc.get("t", type=Text)[1:3]
    del doc.get("t", type=Text)[2:3]
    assert read_state_vector(doc.get_state()) == {9: 6}
    assert read_delete_set(doc.get_update(doc.get_state())) == {9: ((1, 3), (4, 5))}
    assert read_state_vector(b"\x00") == {}


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01", b"\x00", b"\x00\x00\x00", b"\x01\x01\x01\x00\x1f", b"\x01\x01\x01\x00\x0b"],
    ids=repr,
)
def test_malformed_updates_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        read_update(data)


def test_every_truncation_raises_decode_error() -> None:
    for end in range(len(YJS_FIXTURE)):
        with pytest.raises(DecodeError):
            read_update(YJS_FIXTURE[:end])


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_property_random_bytes_read_or_raise_decode_error(data: bytes) -> None:
    try:
        read_update(data)
    except DecodeError:
        pass


@given(st.binary(min_size=1, max_size=8), st.integers(0, len(YJS_FIXTURE) - 1))
@settings(max_examples=300, deadline=None)
def test_property_corrupted_fixture_reads_or_raises_decode_error(patch: bytes, at: int) -> None:
    try:
        read_update(YJS_FIXTURE[:at] + patch + YJS_FIXTURE[at + len(patch) :])
    except DecodeError:
        pass


# ASCII only: pycrdt's Text indexes by UTF-8 bytes and panics deleting inside a character.
ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=4)
edits = st.lists(
    st.tuples(st.integers(1, 3), st.sampled_from(["text", "del", "map", "array"]), ascii_text),
    max_size=25,
)


@given(edits)
@settings(max_examples=60, deadline=None)
def test_property_outline_matches_integration(steps: list[tuple[int, str, str]]) -> None:
    """Outlines of real incremental updates agree with what a document integrates."""
    docs = {c: Doc(client_id=c) for c in (1, 2, 3)}
    room = Doc(client_id=99)
    for client, kind, text in steps:
        doc = docs[client]
        doc.apply_update(room.get_update(doc.get_state()))
        before = doc.get_state()
        body = doc.get("t", type=Text)
        if kind == "text":
            body.insert(len(body), text)
        elif kind == "del" and len(body):
            del body[0:1]
        elif kind == "map":
            doc.get("m", type=Map)[text] = text
        else:
            doc.get("a", type=Array).append(text)
        update = doc.get_update(before)
        outline = read_update(update)
        room_state = read_state_vector(room.get_state())
        assert outline.unmet(room_state) is None
        room.apply_update(update)
        assert outline.reached_by(read_state_vector(room.get_state()))
