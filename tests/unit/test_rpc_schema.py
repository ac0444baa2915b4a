"""Typed RPC payloads (sans-IO): compile, encode, decode, refuse."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Optional

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattica_nb.errors import DecodeError, SchemaError
from lattica_nb.protocols.rpc.codec import pack, unpack
from lattica_nb.protocols.rpc.schema import schema_for


@dataclass(frozen=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True)
class Everything:
    i: int
    f: float
    s: str
    b: bytes
    flag: bool
    nothing: None
    ints: list[int]
    pair: tuple[str, int]
    many: tuple[Point, ...]
    table: dict[str, list[bytes]]
    maybe: Optional[Point]  # noqa: UP045 - the typing spelling must work too
    other: str | None
    anything: Any
    tags: list[str] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class Tree:
    label: str
    children: tuple[Tree, ...] = ()


@dataclass(frozen=True)
class Positive:
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError("n must be positive")


@dataclass
class Computed:
    a: int
    b: int = field(init=False, default=0)


@dataclass
class WithInitVar:
    a: int
    scale: dataclasses.InitVar[int]


class Color(enum.IntEnum):
    RED = 1


def wire(schema_type: Any, value: object) -> object:
    """Encode, pack, unpack: what the peer's decoder sees."""
    return unpack(pack(schema_for(schema_type).encode(value)), max_bytes=1 << 20)


def sample() -> Everything:
    return Everything(
        i=-(2**63), f=1.5, s="ünï", b=b"\x00\xff", flag=True, nothing=None, ints=[1, 2**64 - 1],
        pair=("a", 1), many=(Point(0, 1), Point(2.5, -3)), table={"k": [b"v", b""]},
        maybe=Point(1, 1), other=None, anything={"free": [1, "form", b"x", None]},
        tags=["t"], note="n",
    )


def test_dataclass_roundtrips_as_a_map_by_field_name() -> None:
    schema = schema_for(Everything)
    value = sample()
    encoded = schema.encode(value)
    assert isinstance(encoded, dict) and encoded["s"] == "ünï" and encoded["maybe"] == {
        "x": 1.0, "y": 1.0
    }
    assert schema.decode(wire(Everything, value)) == value


def test_builtin_types_roundtrip() -> None:
    for tp, value in [
        (int, 7), (float, 2.0), (str, "s"), (bytes, b"b"), (bool, False), (None, None),
        (list[int], [1, 2]), (dict[str, int], {"a": 1}), (tuple[int, ...], (1, 2)),
        (list, [1, "x"]), (dict, {"a": [1]}), (Any, {"x": b"y"}), (object, 3),
        (int | None, None), (list[Tree], [Tree("a")]),
    ]:
        assert schema_for(tp).decode(wire(tp, value)) == value, tp


def test_fields_with_defaults_may_be_omitted() -> None:
    full = schema_for(Everything).encode(sample())
    assert isinstance(full, dict)
    del full["tags"], full["note"]
    decoded = schema_for(Everything).decode(full)
    assert decoded.tags == [] and decoded.note == ""


def test_recursive_dataclasses() -> None:
    tree = Tree("root", (Tree("a"), Tree("b", (Tree("c"),))))
    assert schema_for(Tree).decode(wire(Tree, tree)) == tree


def test_lenient_where_python_is_float_and_str_subclasses_are_sent_as_plain_values() -> None:
    assert schema_for(Point).encode(Point(1, 2)) == {"x": 1.0, "y": 2.0}
    assert schema_for(float).decode(3) == 3.0
    assert type(schema_for(int).encode(Color.RED)) is int
    assert schema_for(bytes).encode(bytearray(b"ab")) == bytearray(b"ab")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "tp, wire_value, message",
    [
        (int, True, "expected int, got bool"),
        (int, 1.0, "expected int"),
        (float, "1", "expected float"),
        (str, b"x", "expected str"),
        (bytes, "x", "expected bytes"),
        (bool, 1, "expected bool"),
        (None, 0, "expected None"),
        (list[int], [1, "2"], r"\[1\]: expected int"),
        (tuple[str, int], ["a"], "expected tuple"),
        (dict[str, int], {b"k": 1}, "str keys"),
        (dict[str, int], {"k": "v"}, r"\['k'\]: expected int"),
        (Point, {"x": 1.0}, "missing field"),
        (Point, {"x": 1.0, "y": 2.0, "z": 3.0}, "unknown field 'z'"),
        (Point, {"x": 1.0, "y": "2"}, "at y: expected float"),
        (Point, [1.0, 2.0], "a map"),
        (Tree, {"label": "r", "children": [{"label": 5}]}, r"children\[0\]\.label"),
        (Positive, {"n": -1}, "n must be positive"),
        (Point | None, "p", "a map"),
    ],
)
def test_mismatches_raise_decode_error_naming_the_path(
    tp: Any, wire_value: object, message: str
) -> None:
    with pytest.raises(DecodeError, match=message):
        schema_for(tp).decode(wire_value)


def test_encoding_a_wrong_value_raises_schema_error_with_the_path() -> None:
    with pytest.raises(SchemaError, match=r"many\[1\]: expected Point"):
        schema_for(Everything).encode(dataclasses.replace(sample(), many=(Point(0, 0), "p")))  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="64-bit"):
        schema_for(int).encode(2**64)
    with pytest.raises(SchemaError, match="expected Point"):
        schema_for(Point).encode(Tree("x"))  # type: ignore[arg-type]


def test_init_false_fields_are_not_sent() -> None:
    assert schema_for(Computed).encode(Computed(1)) == {"a": 1}
    with pytest.raises(DecodeError, match="unknown field 'b'"):
        schema_for(Computed).decode({"a": 1, "b": 2})


@pytest.mark.parametrize(
    "tp",
    [set[int], int | str, dict[int, str], WithInitVar, Color, complex, list[set[int]], [int]],
)
def test_unsupported_types_are_refused_at_compile_time(tp: Any) -> None:
    with pytest.raises(SchemaError):
        schema_for(tp)


def test_deep_nesting_is_a_decode_error_not_a_crash() -> None:
    deep: dict[str, object] = {"label": "leaf"}
    for _ in range(5000):
        deep = {"label": "n", "children": [deep]}
    with pytest.raises(DecodeError, match="nested too deeply"):
        schema_for(Tree).decode(deep)


# -- properties ---------------------------------------------------------------------------------
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["label", "children", "x", "y", "i", "s"]) | st.text(),
                      inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(msgpack_values)
def test_any_decoded_value_either_fits_or_raises_decode_error(value: object) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    for tp in (Tree, Point, Everything, list[int], dict[str, float], int | None):
        schema = schema_for(tp)
        try:
            decoded = schema.decode(unpack(data, max_bytes=1 << 20))
        except DecodeError:
            continue
        # whatever was accepted encodes back to the same wire value
        assert unpack(pack(schema.encode(decoded)), max_bytes=1 << 20) == unpack(
            pack(schema.encode(schema.decode(value))), max_bytes=1 << 20
        )


@settings(max_examples=200, deadline=None)
@given(st.builds(
    Point,
    x=st.floats(allow_nan=False),
    y=st.integers(-(2**63), 2**63).map(float),
))
def test_points_roundtrip(point: Point) -> None:
    assert schema_for(Point).decode(wire(Point, point)) == point
