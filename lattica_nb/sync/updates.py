"""The outline of a Yjs update: which changes it carries and which it builds on.

pycrdt applies updates but does not show what is inside one. An update that
builds on changes the document has not seen is not rejected by Yjs: its
missing parts wait inside the document ("pending") and take effect later, when
some other update supplies what they need, so their effect would be credited
to that other update's author. :func:`read_update` reads enough of an update
(format v1, as ``Doc.get_update`` and y-protocols produce) to tell whether it
can take effect completely now: :meth:`UpdateOutline.unmet`.

Format v1 (lib0 encoding; yjs ``src/utils/encoding.js``, yrs ``update.rs``)::

    update     := uvar(#clients) { uvar(#structs) uvar(client) uvar(clock) struct* }  delete_set
    struct     := info:u8 ...  (info & 31: 0 GC, 10 Skip, 1..9 an item's content kind)
    item       := [origin id if info&128] [right origin id if info&64]
                  [if neither: uvar(1) root-name | uvar(0) parent id; key if info&32] content
    delete_set := uvar(#clients) { uvar(client) uvar(#ranges) { uvar(clock) uvar(len) }* }

Reading is bounded by the input (every count is consumed byte by byte) and
raises :class:`~lattica_nb.errors.DecodeError` on anything malformed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import DecodeError
from ..wire.varint import decode_uvarint

__all__ = ["UpdateOutline", "read_delete_set", "read_state_vector", "read_update"]

MAX_ANY_DEPTH = 128
"""Deepest nesting of an item's JSON-like content that is read."""

_GC, _SKIP = 0, 10
_DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC = range(1, 10)
_HAS_ORIGIN, _HAS_RIGHT_ORIGIN, _HAS_PARENT_SUB = 0x80, 0x40, 0x20
_XML_ELEMENT = 3
_PLAIN_TYPE_REFS = frozenset({0, 1, 2, 4, 6})  # array, map, text, xml fragment, xml text
_FIXED_ANY_BYTES = {127: 0, 126: 0, 124: 4, 123: 8, 122: 8, 121: 0, 120: 0}

Segments = tuple[tuple[int, int], ...]
"""Clock ranges ``(start, end)``, ascending and disjoint."""


@dataclass(frozen=True, slots=True)
class UpdateOutline:
    """What one update carries and what it needs.

    ``structs``: per client id, the clock ranges of the changes it carries
    (Skip gaps excluded). ``references``: per client id, one past the highest
    clock an item refers to (its left/right neighbour or parent when inserted).
    ``deletions``: per client id, the clock ranges it deletes.
    """

    structs: Mapping[int, Segments]
    references: Mapping[int, int]
    deletions: Mapping[int, Segments]

    def unmet(self, state: Mapping[int, int]) -> tuple[int, int] | None:
        """The first change ``(client, clock)`` this update needs that neither
        ``state`` (a document's state vector) nor the update itself holds; None
        if it can take effect completely on a document with that state."""
        available = dict(state)
        for client, segments in self.structs.items():
            reach = available.get(client, 0)
            for start, end in segments:
                if start > reach:
                    return client, reach
                reach = max(reach, end)
            available[client] = reach
        for client, needed in self.references.items():
            if needed > available.get(client, 0):
                return client, available.get(client, 0)
        for client, ranges in self.deletions.items():
            if ranges[-1][1] > available.get(client, 0):
                return client, available.get(client, 0)
        return None

    def reached_by(self, state: Mapping[int, int]) -> bool:
        """True if a document with ``state`` holds every change this update carries."""
        return all(state.get(c, 0) >= segs[-1][1] for c, segs in self.structs.items())


def read_update(update: bytes) -> UpdateOutline:
    """Read the outline of a v1 update; DecodeError if it is not one."""
    reader = _Reader(update)
    structs: dict[int, list[tuple[int, int]]] = {}
    references: dict[int, int] = {}
    for _ in range(reader.uvar()):
        count = reader.uvar()
        client = reader.uvar()
        clock = reader.uvar()
        for _ in range(count):
            length, is_skip = reader.struct(references)
            if length and not is_skip:
                structs.setdefault(client, []).append((clock, clock + length))
            clock += length
    deletions = reader.delete_set()
    reader.finish()
    return UpdateOutline({c: _merged(r) for c, r in structs.items()}, references, deletions)


def read_state_vector(data: bytes) -> dict[int, int]:
    """A state vector (``Doc.get_state()``) as ``{client id: clock}``."""
    reader = _Reader(data)
    state: dict[int, int] = {}
    for _ in range(reader.uvar()):
        client = reader.uvar()
        state[client] = reader.uvar()
    reader.finish()
    return state


def read_delete_set(update: bytes) -> dict[int, Segments]:
    """The delete set of an update, merged per client: all that a document has
    deleted when ``update`` is ``doc.get_update(doc.get_state())``."""
    return dict(read_update(update).deletions)


def _merged(ranges: list[tuple[int, int]]) -> Segments:
    """``ranges`` sorted, with overlapping and touching ranges joined."""
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(bytes(data))
        self._pos = 0

    def uvar(self) -> int:
        value, self._pos = decode_uvarint(self._data, self._pos)
        return value

    def skip(self, count: int) -> None:
        if count > len(self._data) - self._pos:
            raise DecodeError("Yjs update is truncated")
        self._pos += count

    def byte(self) -> int:
        if self._pos >= len(self._data):
            raise DecodeError("Yjs update is truncated")
        self._pos += 1
        return self._data[self._pos - 1]

    def string(self) -> str:
        length = self.uvar()
        start = self._pos
        self.skip(length)
        try:
            return str(self._data[start : self._pos], "utf-8")
        except UnicodeDecodeError:
            raise DecodeError("Yjs update holds a string that is not UTF-8") from None

    def skip_string(self) -> None:
        self.skip(self.uvar())

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise DecodeError(f"{len(self._data) - self._pos} bytes follow the Yjs update")

    def struct(self, references: dict[int, int]) -> tuple[int, bool]:
        """Read one struct; return its clock length and whether it is a Skip."""
        info = self.byte()
        kind = info & 31
        if kind == _GC:
            return self.uvar(), False
        if kind == _SKIP:
            return self.uvar(), True
        if info & _HAS_ORIGIN:
            self._reference(references)
        if info & _HAS_RIGHT_ORIGIN:
            self._reference(references)
        if not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN):
            if self.uvar() == 1:
                self.skip_string()  # parent is a root type, by name
            else:
                self._reference(references)  # parent is a nested type, by id
            if info & _HAS_PARENT_SUB:
                self.skip_string()
        return self._content(kind), False

    def _reference(self, references: dict[int, int]) -> None:
        client = self.uvar()
        clock = self.uvar()
        if clock + 1 > references.get(client, 0):
            references[client] = clock + 1

    def _content(self, kind: int) -> int:
        if kind in (_DELETED, _ANY, _JSON):
            count = self.uvar()
            if kind == _ANY:
                for _ in range(count):
                    self._any(0)
            elif kind == _JSON:
                for _ in range(count):
                    self.skip_string()
            return count
        if kind == _STRING:
            return len(self.string().encode("utf-16-le")) // 2  # clocks count UTF-16 units
        if kind in (_BINARY, _EMBED):
            self.skip_string()
        elif kind == _FORMAT:
            self.skip_string()
            self.skip_string()
        elif kind == _TYPE:
            type_ref = self.uvar()
            if type_ref == _XML_ELEMENT:
                self.skip_string()
            elif type_ref not in _PLAIN_TYPE_REFS:
                raise DecodeError(f"Yjs update holds a shared type of unknown kind {type_ref}")
        elif kind == _DOC:
            self.skip_string()
            self._any(0)
        else:
            raise DecodeError(f"Yjs update holds a struct of unknown kind {kind}")
        return 1

    def _any(self, depth: int) -> None:
        if depth > MAX_ANY_DEPTH:
            raise DecodeError(f"Yjs update holds a value nested deeper than {MAX_ANY_DEPTH}")
        tag = self.byte()
        if tag in _FIXED_ANY_BYTES:
            self.skip(_FIXED_ANY_BYTES[tag])
        elif tag == 125:  # signed varint
            for _ in range(10):
                if not self.byte() & 0x80:
                    break
            else:
                raise DecodeError("Yjs update holds an overlong integer")
        elif tag in (119, 116):  # string, buffer
            self.skip_string()
        elif tag == 118:  # object
            for _ in range(self.uvar()):
                self.skip_string()
                self._any(depth + 1)
        elif tag == 117:  # array
            for _ in range(self.uvar()):
                self._any(depth + 1)
        else:
            raise DecodeError(f"Yjs update holds a value with unknown tag {tag}")

    def delete_set(self) -> dict[int, Segments]:
        deletions: dict[int, list[tuple[int, int]]] = {}
        for _ in range(self.uvar()):
            client = self.uvar()
            ranges = deletions.setdefault(client, [])
            for _ in range(self.uvar()):
                clock = self.uvar()
                length = self.uvar()
                if length:
                    ranges.append((clock, clock + length))
        return {c: _merged(r) for c, r in deletions.items() if r}
