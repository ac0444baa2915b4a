"""Room membership (owner-signed member lists) and per-entry write rules (sans-IO)."""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from lattica_nb.errors import (
    DecodeError,
    LocalProtocolError,
    MissingDependencies,
    PermissionDenied,
    VerificationError,
)
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.sync.membership import (
    MAX_MEMBER_LIST_BYTES,
    MAX_MEMBERS,
    SIGNATURE_DOMAIN,
    MemberList,
    RoomPolicy,
    WriteRule,
    author_key,
)
from lattica_nb.sync.values import decode_value, encode_value
from lattica_nb.wire.protobuf import ProtoWriter

OWNER_KEY, ALICE_KEY, BOB_KEY, MALLORY_KEY = (PrivateKey.generate() for _ in range(4))
OWNER, ALICE, BOB, MALLORY = (
    PeerId.from_public_key(k.public_key) for k in (OWNER_KEY, ALICE_KEY, BOB_KEY, MALLORY_KEY)
)
OUTSIDER = PeerId.from_public_key(PrivateKey.generate().public_key)
ROOM = bytes(range(32))
OTHER_ROOM = bytes(32)
HASHED_PEER = PeerId(bytes([0x12, 32]) + bytes(32))  # a sha2-256 peer id: no inline key

Edit = Callable[[Doc[Any]], None]


def members(*peers: PeerId, version: int = 1) -> MemberList:
    return MemberList.create(OWNER_KEY, ROOM, peers, version=version)


def closed_policy(*peers: PeerId) -> RoomPolicy:
    return RoomPolicy.closed(ROOM, OWNER, members(*peers))


class Room:
    """A room's document, one client document per author, and the policy between them."""

    _client_ids = itertools.count(1)

    def __init__(self, policy: RoomPolicy) -> None:
        self.policy = policy
        self.doc: Doc[Any] = Doc(client_id=1_000_000)
        self._clients: dict[PeerId, Doc[Any]] = {}

    def update(self, author: PeerId, edit: Edit) -> bytes:
        """The update ``author`` makes with ``edit`` on top of the room's current state."""
        client = self._clients.setdefault(author, Doc(client_id=next(self._client_ids)))
        client.apply_update(self.doc.get_update(client.get_state()))
        before = client.get_state()
        edit(client)
        return client.get_update(before)

    def offer(self, author: PeerId, update: bytes) -> None:
        """Check ``update`` and apply it if allowed (the room driver's job)."""
        try:
            self.policy.check(author, update, self.doc)
        except PermissionDenied:
            self._clients.pop(author, None)  # the author's copy holds the refused change
            raise
        self.doc.apply_update(update)

    def write(self, author: PeerId, edit: Edit) -> None:
        self.offer(author, self.update(author, edit))

    def refused(self, author: PeerId, edit: Edit) -> PermissionDenied:
        before = self.doc.get_update()
        with pytest.raises(PermissionDenied) as caught:
            self.write(author, edit)
        assert self.doc.get_update() == before  # nothing was applied
        return caught.value

    def rows(self, key: str) -> list[object]:
        rows = self.doc.get("metrics", type=Map)[key]
        return [decode_value(row) for row in rows]


def set_param(key: str, value: object) -> Edit:
    return lambda doc: doc.get("params", type=Map).__setitem__(key, encode_value(value))


def append_rows(key: str, *rows: object) -> Edit:
    def edit(doc: Doc[Any]) -> None:
        metrics = doc.get("metrics", type=Map)
        if key not in metrics:
            metrics[key] = Array()
        metrics[key].extend([encode_value(row) for row in rows])

    return edit


def type_note(text: str) -> Edit:
    return lambda doc: doc.get("notes", type=Text).insert(0, text)


# -- member lists ---------------------------------------------------------------------------


def test_member_list_round_trips_and_verifies() -> None:
    listed = MemberList.create(OWNER_KEY, ROOM, [ALICE, BOB, OWNER, ALICE], version=3)
    assert listed.members == {ALICE, BOB}  # the owner is implied, duplicates dropped
    assert OWNER in listed and ALICE in listed and MALLORY not in listed
    decoded = MemberList.decode(listed.encode(), max_bytes=MAX_MEMBER_LIST_BYTES)
    assert decoded == listed
    decoded.verify()
    empty = MemberList.create(OWNER_KEY, ROOM, [], version=0)
    assert MemberList.decode(empty.encode(), max_bytes=MAX_MEMBER_LIST_BYTES) == empty


@pytest.mark.parametrize(
    "change",
    [
        {"members": frozenset({ALICE, MALLORY})},
        {"members": frozenset()},
        {"version": 4},
        {"room": OTHER_ROOM},
        {"owner": MALLORY},
    ],
    ids=["member added", "members cleared", "version", "room", "owner"],
)
def test_tampering_breaks_the_signature(change: dict[str, object]) -> None:
    listed = MemberList.create(OWNER_KEY, ROOM, [ALICE], version=3)
    tampered = dataclasses.replace(listed, **change)  # type: ignore[arg-type]
    decoded = MemberList.decode(tampered.encode(), max_bytes=MAX_MEMBER_LIST_BYTES)
    with pytest.raises(VerificationError, match="does not verify"):
        decoded.verify()


def test_signature_is_domain_separated() -> None:
    listed = MemberList.create(OWNER_KEY, ROOM, [ALICE], version=1)
    unsigned = dataclasses.replace(listed, signature=b"").encode()[:-2]  # fields 1..4
    assert OWNER_KEY.public_key.verify(listed.signature, SIGNATURE_DOMAIN + unsigned)
    bare = dataclasses.replace(listed, signature=OWNER_KEY.sign(unsigned))
    with pytest.raises(VerificationError):
        bare.verify()


def _raw(
    owner: bytes = OWNER.to_bytes(),
    room: bytes = ROOM,
    listed: list[bytes] | None = None,
    version: int = 1,
    signature: bytes = bytes(64),
    extra: bytes = b"",
) -> bytes:
    listed = sorted([ALICE.to_bytes(), BOB.to_bytes()]) if listed is None else listed
    writer = ProtoWriter().bytes(1, owner).bytes(2, room).repeated_bytes(3, listed)
    return writer.uint(4, version).bytes(5, signature).finish() + extra


@pytest.mark.parametrize(
    "data",
    [
        _raw(listed=sorted([ALICE.to_bytes(), BOB.to_bytes()], reverse=True)),
        _raw(listed=[ALICE.to_bytes(), ALICE.to_bytes()]),
        _raw(listed=[OWNER.to_bytes()]),
        _raw(listed=[b"\x00\x01"]),
        _raw(owner=HASHED_PEER.to_bytes()),
        _raw(room=bytes(31)),
        _raw(signature=bytes(63)),
        _raw(extra=ProtoWriter().uint(9, 1).finish()),
        _raw(extra=ProtoWriter().uint(4, 2).finish()),
        _raw()[:-1],
        ProtoWriter()
        .bytes(2, ROOM)
        .bytes(1, OWNER.to_bytes())
        .uint(4, 1)
        .bytes(5, bytes(64))
        .finish(),
        ProtoWriter().bytes(1, OWNER.to_bytes()).bytes(2, ROOM).bytes(5, bytes(64)).finish(),
        ProtoWriter().bytes(1, OWNER.to_bytes()).uint(4, 1).bytes(5, bytes(64)).finish(),
        b"",
    ],
    ids=[
        "unsorted",
        "duplicate",
        "owner listed",
        "bad peer id",
        "hashed owner",
        "short room",
        "short signature",
        "unknown field",
        "repeated version",
        "truncated",
        "field order",
        "no version",
        "no room",
        "empty",
    ],
)
def test_non_canonical_member_lists_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        MemberList.decode(data, max_bytes=MAX_MEMBER_LIST_BYTES)


def test_member_list_size_is_bounded() -> None:
    listed = MemberList.create(OWNER_KEY, ROOM, [ALICE], version=1).encode()
    with pytest.raises(DecodeError):
        MemberList.decode(listed, max_bytes=len(listed) - 1)
    crowd = sorted(
        PeerId.from_public_key(PrivateKey.generate().public_key).to_bytes()
        for _ in range(MAX_MEMBERS + 1)
    )
    with pytest.raises(DecodeError, match="exceeds"):
        MemberList.decode(_raw(listed=crowd), max_bytes=1 << 20)
    with pytest.raises(LocalProtocolError):
        MemberList.create(OWNER_KEY, ROOM, map(PeerId, crowd), version=1)


def test_owner_must_be_an_inline_ed25519_peer_id() -> None:
    with pytest.raises(LocalProtocolError, match="Ed25519"):
        MemberList(HASHED_PEER, ROOM, frozenset(), 1, bytes(64))
    with pytest.raises(LocalProtocolError):
        MemberList.create(OWNER_KEY, bytes(31), [], version=1)
    with pytest.raises(LocalProtocolError):
        MemberList.create(OWNER_KEY, ROOM, [], version=-1)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_property_decoder_raises_only_decode_error(data: bytes) -> None:
    try:
        MemberList.decode(data, max_bytes=MAX_MEMBER_LIST_BYTES)
    except DecodeError:
        pass


PEERS = [PeerId.from_public_key(PrivateKey.generate().public_key) for _ in range(8)]


@given(st.frozensets(st.sampled_from(PEERS)), st.integers(0, 2**63 - 1))
@settings(max_examples=50, deadline=None)
def test_property_member_lists_round_trip(listed: frozenset[PeerId], version: int) -> None:
    member_list = MemberList.create(OWNER_KEY, ROOM, listed, version=version)
    decoded = MemberList.decode(member_list.encode(), max_bytes=MAX_MEMBER_LIST_BYTES)
    assert decoded == member_list
    decoded.verify()


# -- membership -----------------------------------------------------------------------------


def test_closed_room_refuses_non_members() -> None:
    room = Room(closed_policy(ALICE))
    room.write(OWNER, type_note("owner "))
    room.write(ALICE, type_note("alice "))
    denied = room.refused(OUTSIDER, type_note("outsider "))
    assert denied.entry is None and denied.rule == "members only"
    assert str(OUTSIDER) in str(denied)
    assert isinstance(denied, VerificationError)


def test_closed_room_needs_the_owners_list_for_this_room() -> None:
    with pytest.raises(VerificationError, match="room"):
        RoomPolicy.closed(OTHER_ROOM, OWNER, members(ALICE))
    with pytest.raises(VerificationError, match="not the room owner"):
        RoomPolicy.closed(ROOM, MALLORY, members(ALICE))
    mallory_list = MemberList.create(MALLORY_KEY, ROOM, [MALLORY], version=9)
    with pytest.raises(VerificationError, match="not the room owner"):
        RoomPolicy.closed(ROOM, OWNER, mallory_list)
    forged = dataclasses.replace(mallory_list, owner=OWNER)  # claims the owner, signed by Mallory
    with pytest.raises(VerificationError, match="does not verify"):
        RoomPolicy.closed(ROOM, OWNER, forged)


def test_owner_changes_the_member_list_with_newer_versions() -> None:
    policy = closed_policy(ALICE, BOB)
    room = Room(policy)
    room.write(BOB, type_note("bob "))
    assert policy.update_members(members(ALICE, MALLORY, version=2)) is True
    room.refused(BOB, type_note("bob again "))
    room.write(MALLORY, type_note("mallory "))
    assert policy.update_members(members(ALICE, MALLORY, version=2)) is False  # a repeat
    with pytest.raises(VerificationError, match="older"):
        policy.update_members(members(ALICE, BOB, version=1))
    with pytest.raises(VerificationError, match="two different"):
        policy.update_members(members(BOB, version=2))
    forged = dataclasses.replace(members(BOB, version=3), members=frozenset({OUTSIDER}))
    with pytest.raises(VerificationError, match="does not verify"):
        policy.update_members(forged)
    assert policy.member_list == members(ALICE, MALLORY, version=2)
    with pytest.raises(LocalProtocolError):
        RoomPolicy.open(ROOM, OWNER).update_members(members(ALICE, version=5))


def test_open_room_lets_anyone_write_but_keeps_the_entry_rules() -> None:
    room = Room(RoomPolicy.open(ROOM, OWNER))
    assert room.policy.is_open and room.policy.is_member(OUTSIDER)
    room.write(OUTSIDER, type_note("hello "))
    room.write(OUTSIDER, append_rows(author_key(OUTSIDER), {"step": 1}))
    assert room.refused(OUTSIDER, set_param("lr", 0.1)).entry == "params"


# -- write rules --------------------------------------------------------------------------


def test_only_the_owner_writes_params() -> None:
    room = Room(closed_policy(ALICE))
    room.write(OWNER, set_param("lr", 0.1))
    denied = room.refused(ALICE, set_param("lr", 0.2))
    assert (denied.entry, denied.rule) == ("params", WriteRule.OWNER.value)
    assert "only the room owner" in str(denied)
    room.refused(ALICE, lambda doc: doc.get("params", type=Map).pop("lr"))
    room.write(OWNER, set_param("lr", 0.3))
    assert decode_value(room.doc.get("params", type=Map)["lr"]) == 0.3


def test_authors_append_to_their_own_metrics() -> None:
    room = Room(closed_policy(ALICE, BOB))
    room.write(ALICE, append_rows(author_key(ALICE), {"step": 0, "loss": 1.0}))
    room.write(ALICE, append_rows(author_key(ALICE), {"step": 1, "loss": 0.5}, {"step": 2}))
    room.write(BOB, append_rows(author_key(BOB), {"step": 0, "loss": float("nan")}))
    room.write(ALICE, append_rows(author_key(ALICE, "run-2"), {"step": 0}))
    room.write(ALICE, append_rows(author_key(ALICE), 3.5))
    assert room.rows(author_key(ALICE)) == [
        {"step": 0, "loss": 1.0},
        {"step": 1, "loss": 0.5},
        {"step": 2},
        3.5,
    ]
    assert room.rows(author_key(ALICE, "run-2")) == [{"step": 0}]


def _metrics(doc: Doc[Any]) -> Map[Any]:
    return doc.get("metrics", type=Map)


ALICE_ROWS = author_key(ALICE)

REFUSED_METRIC_EDITS: dict[str, tuple[PeerId, Edit]] = {
    "delete own row": (ALICE, lambda d: _metrics(d)[ALICE_ROWS].__delitem__(0)),
    "insert own row first": (ALICE, lambda d: _metrics(d)[ALICE_ROWS].insert(0, 9.0)),
    "replace own array": (ALICE, lambda d: _metrics(d).__setitem__(ALICE_ROWS, Array([1.0]))),
    "delete own array": (ALICE, lambda d: _metrics(d).pop(ALICE_ROWS)),
    "append to another's": (BOB, lambda d: _metrics(d)[ALICE_ROWS].append(1.0)),
    "delete another's row": (BOB, lambda d: _metrics(d)[ALICE_ROWS].__delitem__(1)),
    "delete another's array": (BOB, lambda d: _metrics(d).pop(ALICE_ROWS)),
    "create another's array": (BOB, append_rows(author_key(MALLORY), 1.0)),
    "claim another's sub-key": (BOB, append_rows(author_key(ALICE, "x"), 1.0)),
    "owner deletes a row": (OWNER, lambda d: _metrics(d)[ALICE_ROWS].__delitem__(0)),
    "plain list, not Array": (BOB, lambda d: _metrics(d).__setitem__(author_key(BOB), [1.0])),
    "shared-type row": (ALICE, lambda d: _metrics(d)[ALICE_ROWS].append(Map({"x": 1.0}))),
    "new array, shared row": (
        BOB,
        lambda d: _metrics(d).__setitem__(author_key(BOB), Array([Text("x")])),
    ),
    "sequence items in map": (BOB, lambda d: d.get("metrics", type=Array).append(1.0)),
}


@pytest.mark.parametrize("name", REFUSED_METRIC_EDITS)
def test_metrics_are_append_only_per_author(name: str) -> None:
    room = Room(closed_policy(ALICE, BOB))
    room.write(ALICE, append_rows(ALICE_ROWS, {"step": 0}, {"step": 1}))
    author, edit = REFUSED_METRIC_EDITS[name]
    denied = room.refused(author, edit)
    assert (denied.entry, denied.rule) == ("metrics", WriteRule.APPEND_PER_AUTHOR.value)
    assert room.rows(ALICE_ROWS) == [{"step": 0}, {"step": 1}]
    room.write(ALICE, append_rows(ALICE_ROWS, {"step": 2}))  # the room goes on afterwards
    assert room.rows(ALICE_ROWS)[-1] == {"step": 2}


def test_members_edit_notes_freely() -> None:
    room = Room(closed_policy(ALICE, BOB))
    room.write(ALICE, type_note("alice wrote this"))
    room.write(BOB, lambda doc: doc.get("notes", type=Text).__delitem__(slice(0, 6)))
    assert str(room.doc.get("notes", type=Text)) == "wrote this"


def test_entries_without_a_rule_are_refused() -> None:
    room = Room(closed_policy(ALICE))
    denied = room.refused(OWNER, lambda doc: doc.get("extra", type=Map).__setitem__("x", 1.0))
    assert (denied.entry, denied.rule) == ("extra", "no rule")
    room.doc.get("local", type=Map)["x"] = 1.0  # written locally, outside the policy
    denied = room.refused(ALICE, lambda doc: doc.get("local", type=Map).__setitem__("x", 2.0))
    assert denied.entry == "local"
    custom = Room(RoomPolicy.open(ROOM, OWNER, rules={"board": WriteRule.MEMBERS}))
    custom.write(ALICE, lambda doc: doc.get("board", type=Text).insert(0, "hi"))
    assert custom.refused(ALICE, type_note("x")).entry == "notes"


def test_updates_on_unseen_changes_wait_for_them() -> None:
    room = Room(closed_policy(ALICE, BOB))
    bob = Doc(client_id=501)
    bob.get("notes", type=Text).insert(0, "bob ")
    bob_update = bob.get_update()
    alice = Doc(client_id=502)
    alice.apply_update(bob_update)
    before = alice.get_state()
    alice.get("notes", type=Text).insert(4, "alice")
    alice_update = alice.get_update(before)
    with pytest.raises(MissingDependencies, match="not applied yet"):
        room.offer(ALICE, alice_update)
    assert room.doc.get_update() == Doc().get_update()  # nothing applied
    room.offer(BOB, bob_update)
    room.offer(ALICE, alice_update)
    assert str(room.doc.get("notes", type=Text)) == "bob alice"


def test_a_write_hidden_behind_the_owners_next_change_is_refused() -> None:
    """Mallory's update builds on the owner's unseen change so that, once Yjs holds it
    pending, it would take effect with the owner's update and be credited to the owner."""
    room = Room(closed_policy(MALLORY))
    room.write(OWNER, set_param("lr", 0.1))
    owner_update = room.update(OWNER, set_param("lr", 0.2))
    mallory = Doc(client_id=666)
    mallory.apply_update(room.doc.get_update())
    mallory.apply_update(owner_update)
    before = mallory.get_state()
    mallory.get("params", type=Map)["lr"] = encode_value(666.0)
    hidden = mallory.get_update(before)
    with pytest.raises(MissingDependencies):
        room.offer(MALLORY, hidden)
    room.offer(OWNER, owner_update)
    with pytest.raises(PermissionDenied, match="only the room owner"):
        room.offer(MALLORY, hidden)  # checked again once what it needs has arrived
    assert decode_value(room.doc.get("params", type=Map)["lr"]) == 0.2


def test_check_leaves_the_doc_alone_and_follows_it() -> None:
    room = Room(closed_policy(ALICE))
    update = room.update(ALICE, append_rows(ALICE_ROWS, 1.0))
    before = room.doc.get_update()
    room.policy.check(ALICE, update, room.doc)
    room.policy.check(ALICE, update, room.doc)  # checking twice is harmless
    assert room.doc.get_update() == before
    room.offer(ALICE, update)
    room.offer(ALICE, update)  # a duplicate changes nothing and is allowed
    room.doc.get("params", type=Map)["lr"] = encode_value(0.1)  # the owner's own local write
    room.write(ALICE, append_rows(ALICE_ROWS, 2.0))
    room.refused(ALICE, set_param("lr", 0.5))
    other = Doc()
    other.apply_update(room.doc.get_update())
    room.policy.check(ALICE, room.update(ALICE, append_rows(ALICE_ROWS, 3.0)), other)


def test_malformed_updates_raise_decode_error() -> None:
    room = Room(closed_policy(ALICE))
    for junk in (b"", b"\x01\x02", b"\xff" * 10):
        with pytest.raises(DecodeError):
            room.offer(ALICE, junk)
    room.write(ALICE, append_rows(ALICE_ROWS, 1.0))


# -- properties ---------------------------------------------------------------------------

AUTHORS = [OWNER, ALICE, BOB, OUTSIDER]
actions = st.lists(
    st.tuples(
        st.sampled_from(AUTHORS),
        st.sampled_from(["param", "append", "delete_row", "note"]),
        st.sampled_from(AUTHORS[:3]),
        st.integers(0, 3),
    ),
    max_size=20,
)


@given(actions)
@settings(max_examples=40, deadline=None)
def test_property_only_allowed_changes_reach_the_room(
    steps: list[tuple[PeerId, str, PeerId, int]],
) -> None:
    room = Room(closed_policy(ALICE, BOB))
    params: dict[str, object] = {}
    rows: dict[str, list[object]] = {}
    for author, action, target, number in steps:
        key = author_key(target)
        edit: Edit
        if action == "param":
            edit, allowed = set_param(f"p{number}", number), author == OWNER
        elif action == "append":
            edit, allowed = append_rows(key, number), author == target
        elif action == "delete_row" and rows.get(key):
            edit, allowed = (lambda d, k=key: _metrics(d)[k].__delitem__(0)), False
        else:
            edit, allowed = type_note(str(number)), True
        allowed = allowed and author != OUTSIDER
        if allowed:
            room.write(author, edit)
            if action == "param":
                params[f"p{number}"] = number
            elif action == "append":
                rows.setdefault(key, []).append(number)
        else:
            room.refused(author, edit)
        stored = {k: decode_value(v) for k, v in room.doc.get("params", type=Map).items()}
        assert stored == params
        assert {k: room.rows(k) for k in room.doc.get("metrics", type=Map)} == rows


# -- cost -----------------------------------------------------------------------------------


def test_cost_of_judging_an_append_on_10000_rows() -> None:
    """Prints the figures quoted in lattica_nb/sync/rules.py (run with -s)."""
    room = Room(closed_policy(ALICE))
    rows = [{"step": i, "loss": 1 / (i + 1), "acc": 0.5} for i in range(10_000)]
    room.write(ALICE, append_rows(ALICE_ROWS, *rows))

    def copy_doc() -> Doc[Any]:
        copy: Doc[Any] = Doc()
        copy.apply_update(room.doc.get_update())
        return copy

    def copy_and_diff(update: bytes) -> bool:
        copy = copy_doc()
        before = {name: copy.get(name, type=Map).to_py() for name in ("params", "metrics")}
        copy.apply_update(update)
        return before != {name: copy.get(name, type=Map).to_py() for name in ("params", "metrics")}

    def timed(fn: Callable[[], object], times: int) -> float:
        samples = []
        for _ in range(times):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1000

    update = room.update(ALICE, append_rows(ALICE_ROWS, {"step": 10_000}))
    copy_ms = timed(copy_doc, 10)
    diff_ms = timed(lambda: copy_and_diff(update), 5)
    room.offer(ALICE, update)
    check_samples = []
    for step in range(30):
        update = room.update(ALICE, append_rows(ALICE_ROWS, {"step": 10_001 + step}))
        start = time.perf_counter()
        room.policy.check(ALICE, update, room.doc)
        check_samples.append(time.perf_counter() - start)
        room.doc.apply_update(update)
    check_ms = statistics.median(check_samples) * 1000
    refused = room.update(BOB, append_rows(ALICE_ROWS, 1.0))
    with pytest.raises(PermissionDenied):
        room.policy.check(
            ALICE, room.update(ALICE, lambda d: _metrics(d)[ALICE_ROWS].pop(0)), room.doc
        )
    rebuild_ms = timed(lambda: room.policy.check(ALICE, update, room.doc), 1)
    print(
        f"\n10,000 metric rows ({len(room.doc.get_update()):,} bytes): copy {copy_ms:.2f} ms, "
        f"copy+diff {diff_ms:.1f} ms, incremental check of an append {check_ms:.3f} ms, "
        f"first check after a refusal (rebuild) {rebuild_ms:.2f} ms"
    )
    assert refused and check_ms < copy_ms
