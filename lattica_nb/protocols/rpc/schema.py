"""Typed RPC payloads, sans-IO: check Python values against a declared type.

:func:`schema_for` compiles a type once into a :class:`Schema` whose
``encode`` turns a value into plain msgpack-able builtins (checking it on the
way) and whose ``decode`` turns what msgpack decoded back into the declared
type, refusing anything else. Supported types:

* ``int`` (64-bit: -2**63 .. 2**64-1), ``float`` (an int is accepted and
  converted), ``str``, ``bytes`` (``bytearray``/``memoryview`` accepted when
  sending), ``bool``, ``None``;
* ``list[T]``, ``tuple[T, ...]``, ``tuple[A, B, …]``, ``dict[str, T]``;
* ``T | None`` (``Optional[T]``); no other unions;
* dataclasses (frozen ones recommended), nested and recursive. A dataclass is
  a msgpack **map from field name to value**: self-describing and
  independent of field order. Decoding refuses unknown fields and missing
  fields without a default; a field with a default may be left out. Fields
  with ``init=False`` are not sent.
* ``typing.Any`` / ``object`` (and bare ``list``, ``tuple``, ``dict``): any
  value msgpack carries, unchecked beyond msgpack's own limits.

``decode`` raises :class:`~lattica_nb.errors.DecodeError` (the peer sent
something that does not fit), ``encode`` raises
:class:`~lattica_nb.errors.SchemaError` (we were about to), and
:func:`schema_for` raises SchemaError for a type it cannot carry. Messages
name the path of the offending value, e.g. ``items[3].name``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from threading import Lock
from typing import Any, Generic, TypeVar

from ...errors import DecodeError, SchemaError

__all__ = ["Schema", "schema_for"]

T = TypeVar("T")

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1


class _Mismatch(Exception):
    """A value does not fit; ``path`` is filled in as the error unwinds."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []


def _where(path: list[str]) -> str:
    text = "".join(reversed(path))
    return text[1:] if text.startswith(".") else text


def _type_name(value: object) -> str:
    return type(value).__name__


class _Codec:
    """One compiled type: ``enc`` to wire builtins, ``dec`` from them."""

    __slots__ = ("dec", "enc", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.enc: Callable[[Any], object] = _unset
        self.dec: Callable[[object], Any] = _unset


def _unset(value: object) -> object:  # pragma: no cover - replaced before use
    raise _Mismatch("schema is still being compiled")


class Schema(Generic[T]):
    """A compiled type. Obtain one with :func:`schema_for`."""

    __slots__ = ("_codec", "type")

    def __init__(self, tp: Any, codec: _Codec) -> None:
        self.type = tp
        self._codec = codec

    @property
    def name(self) -> str:
        return self._codec.name

    def encode(self, value: T) -> object:
        """``value`` as plain builtins for msgpack; SchemaError if it does not fit."""
        try:
            return self._codec.enc(value)
        except _Mismatch as exc:
            where = _where(exc.path)
            at = f" at {where}" if where else ""
            raise SchemaError(f"value does not match {self.name}{at}: {exc.message}") from None
        except RecursionError:
            raise SchemaError(f"value for {self.name} is nested too deeply") from None

    def decode(self, wire: object) -> T:
        """The declared type from decoded msgpack; DecodeError if it does not fit."""
        try:
            value: T = self._codec.dec(wire)
        except _Mismatch as exc:
            where = _where(exc.path)
            at = f" at {where}" if where else ""
            raise DecodeError(f"does not match {self.name}{at}: {exc.message}") from None
        except RecursionError:
            raise DecodeError(f"value for {self.name} is nested too deeply") from None
        return value

    def __repr__(self) -> str:
        return f"Schema({self.name})"


_cache: dict[Any, _Codec] = {}
_schemas: dict[Any, Schema[Any]] = {}
_cache_lock = Lock()


@typing.overload
def schema_for(tp: type[T]) -> Schema[T]: ...


@typing.overload
def schema_for(tp: Any) -> Schema[Any]: ...


def schema_for(tp: Any) -> Schema[Any]:
    """The schema of ``tp`` (compiled once per type)."""
    try:
        known = _schemas.get(tp)
    except TypeError:  # unhashable, so not a type
        raise SchemaError(f"{tp!r} is not a type") from None
    if known is not None:
        return known
    with _cache_lock:
        codec = _cache.get(tp)
        if codec is None:
            pending: dict[Any, _Codec] = {}
            codec = _compile(tp, pending)
            _cache.update(pending)
            _cache[tp] = codec
        schema: Schema[Any] = Schema(tp, codec)
        _schemas[tp] = schema
    return schema


# -- compiling ---------------------------------------------------------------------------
def _compile(tp: Any, pending: dict[Any, _Codec]) -> _Codec:
    known = _cache.get(tp) or pending.get(tp)
    if known is not None:
        return known
    if tp is Any or tp is object:
        return _any("Any")
    if tp is None or tp is types.NoneType:
        return _none()
    if tp is bool:
        return _bool()
    if tp is int:
        return _int()
    if tp is float:
        return _float()
    if tp is str:
        return _str()
    if tp is bytes:
        return _bytes()
    if tp is list:
        return _list(_any("Any"), "list")
    if tp is tuple:
        return _tuple_var(_any("Any"), "tuple")
    if tp is dict:
        return _dict(_any("Any"), "dict")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp, pending)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is list and len(args) == 1:
        inner = _compile(args[0], pending)
        return _list(inner, f"list[{inner.name}]")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        inner = _compile(args[0], pending)
        return _tuple_var(inner, f"tuple[{inner.name}, ...]")
    if origin is tuple and args and Ellipsis not in args:
        items = [_compile(a, pending) for a in args]
        return _tuple_fixed(items)
    if origin is dict and len(args) == 2:
        if args[0] is not str:
            raise SchemaError(f"{tp!r}: dict keys must be str")
        inner = _compile(args[1], pending)
        return _dict(inner, f"dict[str, {inner.name}]")
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not types.NoneType]
        if len(rest) == 1 and len(args) == 2:
            inner = _compile(rest[0], pending)
            return _optional(inner)
        raise SchemaError(f"{tp!r}: only 'T | None' unions are supported")
    raise SchemaError(
        f"{tp!r} cannot be an RPC type; use int, float, str, bytes, bool, None, list[T], "
        "tuple[T, ...], dict[str, T], T | None or a dataclass of those"
    )


def _any(name: str) -> _Codec:
    codec = _Codec(name)
    codec.enc = _identity
    codec.dec = _identity
    return codec


def _identity(value: object) -> object:
    return value


def _none() -> _Codec:
    codec = _Codec("None")

    def check(value: object) -> None:
        if value is not None:
            raise _Mismatch(f"expected None, got {_type_name(value)}")

    codec.enc = check
    codec.dec = check
    return codec


def _bool() -> _Codec:
    codec = _Codec("bool")

    def check(value: object) -> bool:
        if type(value) is not bool:
            raise _Mismatch(f"expected bool, got {_type_name(value)}")
        return value

    codec.enc = check
    codec.dec = check
    return codec


def _int() -> _Codec:
    codec = _Codec("int")

    def enc(value: object) -> int:
        if type(value) is not int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise _Mismatch(f"expected int, got {_type_name(value)}")
            value = int(value)
        if not _INT_MIN <= value <= _INT_MAX:
            raise _Mismatch("integer outside the 64-bit range")
        return value

    def dec(value: object) -> int:
        if type(value) is not int:
            raise _Mismatch(f"expected int, got {_type_name(value)}")
        return value

    codec.enc = enc
    codec.dec = dec
    return codec


def _float() -> _Codec:
    codec = _Codec("float")

    def conv(value: object) -> float:
        if type(value) is float:
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and not _INT_MIN <= value <= _INT_MAX:
                raise _Mismatch("integer outside the 64-bit range")
            return float(value)
        raise _Mismatch(f"expected float, got {_type_name(value)}")

    codec.enc = conv
    codec.dec = conv
    return codec


def _str() -> _Codec:
    codec = _Codec("str")

    def enc(value: object) -> str:
        if type(value) is str:
            return value
        if isinstance(value, str):
            return str.__str__(value)
        raise _Mismatch(f"expected str, got {_type_name(value)}")

    def dec(value: object) -> str:
        if type(value) is not str:
            raise _Mismatch(f"expected str, got {_type_name(value)}")
        return value

    codec.enc = enc
    codec.dec = dec
    return codec


def _bytes() -> _Codec:
    codec = _Codec("bytes")

    def enc(value: object) -> object:
        if type(value) is bytes or isinstance(value, (bytes, bytearray, memoryview)):
            return value
        raise _Mismatch(f"expected bytes, got {_type_name(value)}")

    def dec(value: object) -> bytes:
        if type(value) is not bytes:
            raise _Mismatch(f"expected bytes, got {_type_name(value)}")
        return value

    codec.enc = enc
    codec.dec = dec
    return codec


def _at(exc: _Mismatch, part: str) -> _Mismatch:
    exc.path.append(part)
    return exc


def _list(inner: _Codec, name: str) -> _Codec:
    codec = _Codec(name)

    def enc(value: object) -> list[object]:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(f"expected {codec.name}, got {_type_name(value)}")
        if inner.enc is _identity:
            return list(value)
        out = []
        for i, item in enumerate(value):
            try:
                out.append(inner.enc(item))
            except _Mismatch as exc:
                raise _at(exc, f"[{i}]") from None
        return out

    def dec(value: object) -> list[Any]:
        if type(value) is not list:
            raise _Mismatch(f"expected {codec.name}, got {_type_name(value)}")
        if inner.dec is _identity:
            return value
        out = []
        for i, item in enumerate(value):
            try:
                out.append(inner.dec(item))
            except _Mismatch as exc:
                raise _at(exc, f"[{i}]") from None
        return out

    codec.enc = enc
    codec.dec = dec
    return codec


def _tuple_var(inner: _Codec, name: str) -> _Codec:
    as_list = _list(inner, name)
    codec = _Codec(name)
    codec.enc = as_list.enc

    def dec(value: object) -> tuple[Any, ...]:
        return tuple(as_list.dec(value))

    codec.dec = dec
    return codec


def _tuple_fixed(items: list[_Codec]) -> _Codec:
    codec = _Codec(f"tuple[{', '.join(i.name for i in items)}]")
    count = len(items)

    def enc(value: object) -> list[object]:
        if not isinstance(value, (list, tuple)) or len(value) != count:
            raise _Mismatch(f"expected {codec.name}, got {_describe(value)}")
        out = []
        for i, (item, sub) in enumerate(zip(value, items, strict=True)):
            try:
                out.append(sub.enc(item))
            except _Mismatch as exc:
                raise _at(exc, f"[{i}]") from None
        return out

    def dec(value: object) -> tuple[Any, ...]:
        if type(value) is not list or len(value) != count:
            raise _Mismatch(f"expected {codec.name}, got {_describe(value)}")
        out = []
        for i, (item, sub) in enumerate(zip(value, items, strict=True)):
            try:
                out.append(sub.dec(item))
            except _Mismatch as exc:
                raise _at(exc, f"[{i}]") from None
        return tuple(out)

    codec.enc = enc
    codec.dec = dec
    return codec


def _describe(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return f"{_type_name(value)} of {len(value)}"
    return _type_name(value)


def _dict(inner: _Codec, name: str) -> _Codec:
    codec = _Codec(name)
    check_values = inner.enc is not _identity

    def enc(value: object) -> dict[str, object]:
        if not isinstance(value, dict):
            raise _Mismatch(f"expected {codec.name}, got {_type_name(value)}")
        out: dict[str, object] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Mismatch(f"expected str keys, got {_type_name(key)}")
            try:
                out[key] = inner.enc(item) if check_values else item
            except _Mismatch as exc:
                raise _at(exc, f"[{key!r}]") from None
        return out

    def dec(value: object) -> dict[str, Any]:
        if type(value) is not dict:
            raise _Mismatch(f"expected {codec.name}, got {_type_name(value)}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Mismatch(f"expected str keys, got {_type_name(key)}")
            try:
                out[key] = inner.dec(item) if check_values else item
            except _Mismatch as exc:
                raise _at(exc, f"[{key!r}]") from None
        return out

    codec.enc = enc
    codec.dec = dec
    return codec


def _optional(inner: _Codec) -> _Codec:
    codec = _Codec(f"{inner.name} | None")

    def enc(value: object) -> object:
        return None if value is None else inner.enc(value)

    def dec(value: object) -> object:
        return None if value is None else inner.dec(value)

    codec.enc = enc
    codec.dec = dec
    return codec


def _dataclass(cls: type[Any], pending: dict[Any, _Codec]) -> _Codec:
    codec = _Codec(cls.__qualname__)
    pending[cls] = codec  # before the fields: a field may refer back to cls
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:
        raise SchemaError(f"cannot resolve the field types of {cls.__qualname__}: {exc}") from exc
    for name, hint in hints.items():
        if isinstance(hint, dataclasses.InitVar) or hint is dataclasses.InitVar:
            raise SchemaError(f"{cls.__qualname__}.{name}: InitVar fields cannot be sent")
    fields: list[tuple[str, _Codec]] = []
    required: set[str] = set()
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        try:
            field_codec = _compile(hints[f.name], pending)
        except SchemaError as exc:
            raise SchemaError(f"{cls.__qualname__}.{f.name}: {exc}") from None
        fields.append((f.name, field_codec))
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.add(f.name)
    by_name = dict(fields)
    n_required = len(required)

    def enc(value: object) -> dict[str, object]:
        if type(value) is not cls and not isinstance(value, cls):
            raise _Mismatch(f"expected {codec.name}, got {_type_name(value)}")
        out: dict[str, object] = {}
        for name, sub in fields:
            try:
                out[name] = sub.enc(getattr(value, name))
            except _Mismatch as exc:
                raise _at(exc, f".{name}") from None
        return out

    def dec(value: object) -> Any:
        if type(value) is not dict:
            raise _Mismatch(f"expected {codec.name} (a map), got {_type_name(value)}")
        kwargs: dict[str, Any] = {}
        seen_required = 0
        for key, item in value.items():
            sub = by_name.get(key) if type(key) is str else None
            if sub is None:
                raise _Mismatch(f"unknown field {key!r} for {codec.name}")
            try:
                kwargs[key] = sub.dec(item)
            except _Mismatch as exc:
                raise _at(exc, f".{key}") from None
            if key in required:
                seen_required += 1
        if seen_required != n_required:
            missing = sorted(required.difference(kwargs))
            raise _Mismatch(f"missing field(s) {', '.join(missing)} of {codec.name}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise _Mismatch(f"{codec.name} refused the value: {exc}") from None

    codec.enc = enc
    codec.dec = dec
    return codec
