"""How Python values are stored in a shared (Yjs) document, and read back exactly.

:func:`encode_value` turns a value into what goes into a pycrdt ``Map`` or
``Array``; :func:`decode_value` turns what pycrdt (or y-py) returns back into
the value that was written. ``decode_value(encode_value(v)) == v`` with the
same types, after any number of trips through update bytes, pycrdt, y-py or
Node ``yjs``.

Why there is an encoding at all
-------------------------------

A Yjs document holds JSON-like values, and its numbers are JavaScript
numbers: pycrdt returns every stored int as a float (``3`` -> ``3.0``), JSON
has no NaN or infinities, and a Python int is only exact up to 2**53 - 1.

Stored forms (what a Node ``yjs`` client sees with ``toJSON()``)
----------------------------------------------------------------

==========================  ====================================================
Python value                stored as
==========================  ====================================================
``None``, ``bool``, ``str`` themselves
``int`` |x| <= 2**53 - 1    a plain number (``3``); larger ints are refused
                            (:class:`~lattica_nb.errors.ValueRangeError`)
``float``, not integral     a plain number (``0.25``)
``float``, integral or      ``{"$f": "<text>"}``: ``"3.0"``, ``"-0.0"``,
NaN/±inf                    ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
``list``, ``tuple``         a JSON array (a tuple reads back as a list)
``dict`` with ``str`` keys  a JSON object; one whose only key starts with ``$``
                            is wrapped as ``{"$d": {...}}``
numpy scalars               as the Python value: ``np.float32/64`` -> float,
                            ``np.int*``/``np.uint*`` -> int, ``np.bool_`` -> bool
==========================  ====================================================

So ints, the common case (steps, epochs, sizes), stay plain numbers, and a
plain number reads back as an int exactly when it is integral and within
±(2**53 - 1). Only floats that would read back as ints (and the values JSON
cannot hold) carry the ``$f`` tag. Its text is what both Python's ``float()``
and JavaScript's ``Number()`` parse to the same number, so a JavaScript
reader decodes a stored value with::

    const read = (v) =>
      Array.isArray(v) ? v.map(read)
      : v === null || typeof v !== "object" ? v
      : Object.keys(v).length === 1 && "$f" in v ? Number(v.$f)
      : Object.keys(v).length === 1 && "$d" in v ? mapValues(v.$d, read)
      : mapValues(v, read);

A number written by such a client reads back in Python as an int when it is
integral, else as a float (as ``json.loads`` would). Bytes written by a
non-Python client (a ``Uint8Array``) read back as ``bytes``; this module
never writes bytes (store them as a blob and put its content id here).
Anything else (sets, bytes, objects, complex numbers, numpy arrays) is
refused with :class:`~lattica_nb.errors.UnsupportedValue` naming what to
use instead.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import TypeAlias

from pycrdt import Array, Map, Text

from ..errors import DecodeError, UnsupportedValue, ValueRangeError

__all__ = [
    "DICT_TAG",
    "FLOAT_TAG",
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "Stored",
    "Value",
    "decode_value",
    "encode_key",
    "encode_value",
]

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest int a Yjs document stores exactly (JavaScript's Number.MAX_SAFE_INTEGER)."""
MAX_DEPTH = 64
"""Deepest nesting of lists and dicts written or read."""
FLOAT_TAG = "$f"
"""``{"$f": text}``: a float the plain form cannot carry (integral, NaN, ±inf)."""
DICT_TAG = "$d"
"""``{"$d": {...}}``: a dict whose single key starts with ``$``, kept apart from the tags."""

_MAX_FLOAT_TEXT = 40
_FLOAT_TEXT = re.compile(r"-?(?:NaN|Infinity|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)")

Value: TypeAlias = "bool | int | float | str | bytes | list[Value] | dict[str, Value] | None"
"""A value as the caller writes and reads it."""
Stored: TypeAlias = "bool | float | str | list[Stored] | dict[str, Stored] | None"
"""A value as it is stored in a document (JSON-like; no ints, NaN or infinities)."""


def encode_value(value: object) -> Stored:
    """The stored form of ``value``.

    Raises UnsupportedValue for a type a document cannot hold and
    ValueRangeError for an int beyond ±(2**53 - 1).
    """
    return _encode(value, 0)


def decode_value(stored: object) -> Value:
    """The value whose stored form is ``stored`` (as pycrdt or y-py returns it).

    Accepts plain values and pycrdt ``Map``/``Array``/``Text`` (read as dict,
    list, str). Raises DecodeError for a malformed tag or nesting deeper than
    MAX_DEPTH: documents are written by remote peers too.
    """
    return _decode(stored, 0)


def encode_key(key: object) -> str:
    """``key`` if it can be a key of a document map (a str that is valid UTF-8)."""
    if not isinstance(key, str):
        raise UnsupportedValue(
            f"document keys must be str, not {type(key).__name__} ({key!r:.40}); "
            "convert the key with str()"
        )
    return _checked_str(key, "key")


def _encode(value: object, depth: int) -> Stored:
    # Subclasses are stored as their base type (an IntEnum as its int, np.float64 as float).
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _checked_str(str.__str__(value), "string")
    if isinstance(value, float):
        return _encode_float(float.__float__(value))
    if isinstance(value, int):
        return _encode_int(int.__int__(value))
    if isinstance(value, list | tuple):
        deeper = _deeper(depth)
        return [_encode(item, deeper) for item in value]
    if isinstance(value, Mapping):
        return _encode_dict(value, depth)
    numpy = _numpy_of(value)
    if numpy is not None:
        return _encode(_from_numpy(numpy, value), depth)
    raise UnsupportedValue(_unsupported(value))


def _encode_int(value: int) -> float:
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise ValueRangeError(
            f"int {value} is outside ±(2**53-1) = ±{MAX_SAFE_INTEGER}, the ints a shared "
            "document stores exactly; store it as a str (or a float if rounding is fine)"
        )
    return float(value)  # a JavaScript number, not a BigInt; exact in this range


def _encode_float(value: float) -> Stored:
    if math.isnan(value):
        return {FLOAT_TAG: "NaN"}
    if math.isinf(value):
        return {FLOAT_TAG: "Infinity" if value > 0 else "-Infinity"}
    if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
        return {FLOAT_TAG: repr(value)}  # would read back as an int; -0.0 keeps its sign
    return value


def _encode_dict(value: Mapping[object, object], depth: int) -> Stored:
    deeper = _deeper(depth)
    out: dict[str, Stored] = {encode_key(k): _encode(v, deeper) for k, v in value.items()}
    if len(out) == 1 and next(iter(out)).startswith("$"):
        return {DICT_TAG: out}
    return out


def _checked_str(value: str, what: str) -> str:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UnsupportedValue(
                f"{what} {value!r:.60} contains a lone surrogate, which a document cannot "
                "store; clean it with text.encode('utf-8', 'replace').decode()"
            ) from None
    return value


def _deeper(depth: int) -> int:
    if depth >= MAX_DEPTH:
        raise UnsupportedValue(
            f"value is nested deeper than {MAX_DEPTH} lists/dicts (a cycle?); flatten it"
        )
    return depth + 1


def _numpy_of(value: object) -> ModuleType | None:
    """The numpy module if ``value`` is a numpy object (this module never imports numpy)."""
    if not type(value).__module__.startswith("numpy"):
        return None
    return sys.modules.get("numpy")


def _from_numpy(np: ModuleType, value: object) -> object:
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        as_float = float(value)
        if as_float == value or math.isnan(as_float):
            return as_float
        raise ValueRangeError(
            f"{type(value).__name__} value {value!r} has no exact float64 form; "
            "convert it with float() if rounding is fine"
        )
    if isinstance(value, np.ndarray):
        raise UnsupportedValue(
            f"a numpy array (shape {value.shape}) is not a document value; "
            "use .tolist() for a small one, or share it as a blob"
        )
    raise UnsupportedValue(_unsupported(value))


def _unsupported(value: object) -> str:
    kind = type(value)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    hint = "use None, bool, int, float, str, list or dict"
    if isinstance(value, bytes | bytearray | memoryview):
        hint = "share bytes as a blob and store its content id, or base64-encode them"
    elif isinstance(value, set | frozenset):
        hint = "store a sorted list"
    elif isinstance(value, complex):
        hint = "store [real, imag]"
    elif hasattr(value, "isoformat"):
        hint = "store value.isoformat()"
    return f"a shared document cannot store a {name}; {hint}"


def _decode(stored: object, depth: int) -> Value:
    if stored is None or isinstance(stored, bool | str):
        return stored
    if isinstance(stored, float):
        return _decode_number(stored)
    if isinstance(stored, int):
        return stored  # a BigInt another client wrote
    if isinstance(stored, list):
        deeper = _deeper_read(depth)
        return [_decode(item, deeper) for item in stored]
    if isinstance(stored, dict):
        return _decode_dict(stored, depth)
    if isinstance(stored, bytes | bytearray):
        return bytes(stored)
    if isinstance(stored, Map):
        return _decode_dict(dict(stored.items()), depth)
    if isinstance(stored, Array):
        deeper = _deeper_read(depth)
        return [_decode(item, deeper) for item in stored]
    if isinstance(stored, Text):
        return str(stored)
    raise DecodeError(f"a document holds a {type(stored).__name__}, which is not a value")


def _decode_number(number: float) -> int | float:
    if number.is_integer() and abs(number) <= MAX_SAFE_INTEGER:
        return int(number)
    return number


def _decode_dict(stored: dict[object, object], depth: int) -> Value:
    deeper = _deeper_read(depth)
    if len(stored) == 1:
        key, inner = next(iter(stored.items()))
        if key == FLOAT_TAG:
            return _decode_float_text(inner)
        if key == DICT_TAG:
            if not isinstance(inner, dict):
                raise DecodeError(f"{DICT_TAG!r} tag holds a {type(inner).__name__}, not a dict")
            return _decode_dict_items(inner, _deeper_read(deeper))
    return _decode_dict_items(stored, deeper)


def _decode_dict_items(stored: dict[object, object], depth: int) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for key, item in stored.items():
        if not isinstance(key, str):
            raise DecodeError(f"a stored dict has a {type(key).__name__} key")
        out[key] = _decode(item, depth)
    return out


def _decode_float_text(text: object) -> float:
    if not isinstance(text, str) or len(text) > _MAX_FLOAT_TEXT or not _FLOAT_TEXT.fullmatch(text):
        raise DecodeError(f"{FLOAT_TAG!r} tag holds {text!r:.60}, not a number's text")
    return float(text)


def _deeper_read(depth: int) -> int:
    if depth >= MAX_DEPTH:
        raise DecodeError(f"stored value is nested deeper than {MAX_DEPTH} lists/dicts")
    return depth + 1
