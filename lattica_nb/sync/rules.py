"""What each author may change in a room's document, and how an update is judged (sans-IO).

Every top-level entry of a room's document has a :class:`WriteRule`
(:data:`DEFAULT_RULES` for an experiment room):

* ``params`` — OWNER: only the room owner changes it.
* ``metrics`` — APPEND_PER_AUTHOR: a map from keys an author owns
  (:func:`author_key`: its base58 peer id, or ``"<peer id>/<name>"``) to an
  Array of rows. An author may create its own arrays and append plain values
  (not shared types) at their end; nobody deletes, reorders or changes a row,
  replaces an array, or touches another author's arrays.
* ``notes`` — MEMBERS: any member changes anything.
* any other top-level entry: nobody writes it.

How an update is judged
-----------------------

pycrdt cannot say what an update changes, and a Yjs document cannot undo
one, so the :class:`Inspector` keeps a *scratch* copy of the room's document
and applies the update there first, watching it with pycrdt's deep observers:
each judged entry's events (map keys added/updated/deleted, array deltas,
nested paths) are checked against its rule, and a new top-level entry without
a rule is refused. The scratch copy follows the room's document incrementally
(``doc.get_update(scratch_state)``, then state vectors and delete sets are
compared) and is rebuilt from a full update only after an update was refused
or when it no longer matches. Measured on a document with 10,000 metric rows
(350 KB; 2-core VM; ``pytest tests/unit/test_sync_membership.py -k cost -s``):
copying the document for every check costs ~4.4 ms and diffing its entries
before/after ~85 ms; the incremental scratch copy judges an append in
~0.06 ms. The first check after a refusal rebuilds the copy (~5-7 ms), so a
member sending refused updates costs that much each; the copy also doubles
the memory a room's document takes.

Before that, :mod:`.updates` reads the update's outline. An update that builds
on changes the document lacks would wait inside Yjs ("pending") and take
effect later, credited to whichever update completes it, so a member could
slip a write into ``params`` behind the owner's next change. Such an update
raises :class:`~lattica_nb.errors.MissingDependencies`: hold it and check it
again after applying others. Apply to the room's document only updates that
passed the check (and the local peer's own writes).
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from pycrdt import Array, Doc, Map

from ..errors import DecodeError, MissingDependencies, PermissionDenied
from ..identity import PeerId
from .updates import read_delete_set, read_state_vector, read_update

__all__ = ["DEFAULT_RULES", "Inspector", "WriteRule", "author_key"]


class WriteRule(enum.Enum):
    """Who may change a top-level entry of a room's document."""

    OWNER = "owner-only"
    APPEND_PER_AUTHOR = "append-only per author"
    MEMBERS = "members"


DEFAULT_RULES: Mapping[str, WriteRule] = MappingProxyType(
    {
        "params": WriteRule.OWNER,
        "metrics": WriteRule.APPEND_PER_AUTHOR,
        "notes": WriteRule.MEMBERS,
    }
)
"""The experiment room's entries."""


def author_key(author: PeerId, name: str = "") -> str:
    """A key ``author`` may create in an APPEND_PER_AUTHOR entry.

    ``str(author)`` (base58, never contains ``/``), or ``"<author>/<name>"``
    for one of several arrays of the same author (one per run, or per kernel
    when one identity runs in two kernels, so they never race for one key).
    """
    return f"{author}/{name}" if name else str(author)


def _owns(own: str, key: str) -> bool:
    return key == own or key.startswith(own + "/")


_Denial = tuple[str, str, str]
"""(entry, rule, what the update does)."""
_APPEND = WriteRule.APPEND_PER_AUTHOR.value
_NO_RULE = "no rule"


class Inspector:
    """Judges updates by trying them on a scratch copy of a room's document.

    ``owner`` is the room owner (for OWNER entries); membership is the
    caller's business (:class:`~lattica_nb.sync.membership.RoomPolicy`).
    """

    __slots__ = ("_author", "_denials", "_owner", "_rules", "_scratch", "_source", "_watched")

    def __init__(self, owner: PeerId, rules: Mapping[str, WriteRule]) -> None:
        self._owner = owner
        self._rules = rules
        self._scratch: Doc[Any] | None = None
        self._source: weakref.ref[Doc[Any]] | None = None
        self._watched: dict[str, Map[Any]] = {}  # pycrdt drops a subscription with its root object
        self._author: PeerId | None = None  # set while an update is being tried
        self._denials: list[_Denial] = []

    def check(self, author: PeerId, update: bytes, doc: Doc[Any]) -> None:
        """Return if ``author``'s ``update`` keeps the rules on ``doc`` (left unchanged).

        PermissionDenied names the entry and rule broken; DecodeError if the
        update is not Yjs v1; MissingDependencies if it builds on changes
        ``doc`` lacks.
        """
        outline = read_update(update)
        scratch = self._follow(doc)
        missing = outline.unmet(read_state_vector(scratch.get_state()))
        if missing is not None:
            raise MissingDependencies(
                f"update from {author} builds on change {missing[1]} of Yjs client "
                f"{missing[0]}, which this room has not applied yet"
            )
        entries_before = set(scratch.keys())
        self._author, self._denials = author, []
        try:
            scratch.apply_update(update)
        except ValueError as exc:
            self._scratch = None
            raise DecodeError(f"update from {author} is not a valid Yjs update: {exc}") from None
        finally:
            self._author = None
        for entry in sorted(set(scratch.keys()) - entries_before - self._rules.keys()):
            self._denials.append((entry, _NO_RULE, f"it creates {entry!r}, which no one writes"))
        if self._denials:
            self._scratch = None  # the scratch copy now holds a refused update
            entry, rule, what = self._denials[0]
            raise PermissionDenied(f"update from {author} refused: {what}", entry=entry, rule=rule)
        if not outline.reached_by(read_state_vector(scratch.get_state())):
            self._scratch = None
            raise MissingDependencies(f"update from {author} did not take effect completely")

    def _follow(self, doc: Doc[Any]) -> Doc[Any]:
        """The scratch copy, brought up to ``doc``'s state."""
        scratch = self._scratch
        if scratch is not None and self._source is not None and self._source() is doc:
            scratch.apply_update(doc.get_update(scratch.get_state()))
            if _same_state(scratch, doc):
                self._watch(scratch)
                return scratch
        scratch = Doc()
        scratch.apply_update(doc.get_update())
        self._scratch, self._source, self._watched = scratch, weakref.ref(doc), {}
        self._watch(scratch)
        return scratch

    def _watch(self, scratch: Doc[Any]) -> None:
        """Observe every entry whose changes are judged (all but MEMBERS entries)."""
        names = {n for n, r in self._rules.items() if r is not WriteRule.MEMBERS}
        names |= set(scratch.keys()) - self._rules.keys()
        for name in names - self._watched.keys():
            root = scratch.get(name, type=Map)  # a root of any type reports its events this way
            root.observe_deep(self._observer(name))
            self._watched[name] = root

    def _observer(self, entry: str) -> Callable[[list[Any]], None]:
        def on_events(events: list[Any]) -> None:
            if self._author is not None:  # not while following the room's document
                self._judge(entry, self._author, events)

        return on_events

    def _judge(self, entry: str, author: PeerId, events: list[Any]) -> None:
        rule = self._rules.get(entry)
        try:
            if rule is None:
                self._denials.append((entry, _NO_RULE, f"it writes {entry!r}, which no one writes"))
            elif rule is WriteRule.OWNER and author != self._owner:
                what = f"it changes {entry!r}, which only the room owner {self._owner} writes"
                self._denials.append((entry, rule.value, what))
            elif rule is WriteRule.APPEND_PER_AUTHOR:
                own = author_key(author)
                for event in events:
                    wrong = _append_violation(entry, own, event)
                    if wrong is not None:
                        self._denials.append((entry, _APPEND, wrong))
        except Exception as exc:  # never let an update through uninspected
            what = f"it could not be inspected ({exc!r})"
            self._denials.append((entry, rule.value if rule else _NO_RULE, what))


def _append_violation(entry: str, own: str, event: Any) -> str | None:
    """What an event in an APPEND_PER_AUTHOR entry does wrong, or None."""
    path = list(event.path)
    if len(path) > 1:
        return f"it changes a row of {entry}[{path[0]!r}]; rows never change once written"
    if len(path) == 1:
        return _rows_violation(entry, own, str(path[0]), event)
    if not event.keys:
        return f"it changes {entry!r} in a way that is not per-author arrays"
    for key, change in event.keys.items():
        action = change["action"]
        if not _owns(own, key):
            return f"it {action}s {entry}[{key!r}], another author's rows"
        if action != "add":
            return f"it {action}s its own {entry}[{key!r}], which may only grow"
        rows = change.get("newValue")
        if not isinstance(rows, Array):
            return f"it stores a {type(rows).__name__} as {entry}[{key!r}], not an Array of rows"
        if not all(_plain(row) for row in rows):
            return f"it adds a row to {entry}[{key!r}] that is not a plain value"
    return None


def _rows_violation(entry: str, own: str, key: str, event: Any) -> str | None:
    """What a change to the rows array ``entry[key]`` does wrong, or None."""
    if not _owns(own, key):
        return f"it changes {entry}[{key!r}], another author's rows"
    retained = inserted = 0
    for op in event.delta:
        if "delete" in op:
            return f"it deletes rows of {entry}[{key!r}]; rows are never removed"
        if "retain" in op:
            if inserted:
                break  # something after the inserted rows: they were not appended
            retained += op["retain"]
        if "insert" in op:
            if not all(_plain(row) for row in op["insert"]):
                return f"it adds a row to {entry}[{key!r}] that is not a plain value"
            inserted += len(op["insert"])
    if not inserted or retained + inserted != len(event.target):
        return f"it inserts rows into {entry}[{key!r}] before existing ones; rows only append"
    return None


def _plain(row: object) -> bool:
    """A row is a plain (JSON-like) value, never a shared type that could change later."""
    return row is None or isinstance(row, bool | int | float | str | list | dict | bytes)


def _same_state(a: Doc[Any], b: Doc[Any]) -> bool:
    """True if ``a`` and ``b`` hold the same changes (state vectors and delete sets).

    yrs writes equal states as equal bytes (checked with docs built in different
    orders), so bytes are compared first and parsed only when they differ.
    """
    state_a, state_b = a.get_state(), b.get_state()
    if state_a != state_b and read_state_vector(state_a) != read_state_vector(state_b):
        return False
    deleted_a, deleted_b = a.get_update(state_a), b.get_update(state_b)
    return deleted_a == deleted_b or read_delete_set(deleted_a) == read_delete_set(deleted_b)
