"""Document values: exact round trips through pycrdt, update bytes, y-py and Node yjs."""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import math
import os
import subprocess
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from lattica_nb.errors import DecodeError, LocalProtocolError, UnsupportedValue, ValueRangeError
from lattica_nb.sync.values import (
    DICT_TAG,
    FLOAT_TAG,
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    decode_value,
    encode_key,
    encode_value,
)
from lattica_nb.testing.yjs_peers import YJS_NODE_DIR, find_node, yjs_node_unavailable


def same(a: object, b: object) -> bool:
    """Equal with exact types, NaN equal to NaN, -0.0 different from 0.0."""
    if isinstance(a, tuple):
        a = list(a)
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        assert isinstance(b, float)
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def through_map(value: object) -> object:
    """Write into a Map of one doc, read from another doc fed the update bytes."""
    writer = Doc(client_id=1)
    writer.get("v", type=Map)["k"] = encode_value(value)
    reader = Doc(client_id=2)
    reader.apply_update(writer.get_update())
    return decode_value(reader.get("v", type=Map)["k"])


def through_array(value: object) -> object:
    writer = Doc(client_id=1)
    writer.get("v", type=Array).append(encode_value(value))
    reader = Doc(client_id=2)
    reader.apply_update(writer.get_update())
    return decode_value(reader.get("v", type=Array)[0])


EXAMPLES: list[object] = [
    None,
    True,
    False,
    0,
    1,
    -7,
    MAX_SAFE_INTEGER,
    -MAX_SAFE_INTEGER,
    0.0,
    -0.0,
    1.0,
    0.25,
    -3.5,
    1e300,
    2.0**53,
    5e-324,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "héllo 😀",
    "$f",
    [],
    [1, 2.0, "x", None],
    (1, 2),
    {},
    {"step": 10, "loss": 0.5, "acc": 1.0},
    {FLOAT_TAG: "NaN"},
    {DICT_TAG: {"a": 1}},
    {"$other": 1},
    {FLOAT_TAG: 1, "b": 2},
    {"nested": [[{"deep": [1.0, 2]}]]},
]


@pytest.mark.parametrize("value", EXAMPLES, ids=repr)
@pytest.mark.parametrize("trip", ["encode", "map", "array"])
def test_values_round_trip_exactly(value: object, trip: str) -> None:
    trips = {"encode": lambda v: decode_value(encode_value(v)), "map": through_map}
    assert same(value, trips.get(trip, through_array)(value))


def test_ints_stay_ints_though_pycrdt_returns_floats() -> None:
    writer = Doc(client_id=1)
    writer.get("v", type=Map)["step"] = encode_value(3)
    assert writer.get("v", type=Map)["step"] == 3.0  # what pycrdt hands back
    assert type(through_map(3)) is int
    assert type(through_map(3.0)) is float


def test_stored_forms_are_the_documented_json() -> None:
    doc = Doc(client_id=1)
    values = {"i": 3, "f": 0.25, "one": 1.0, "nan": float("nan"), "inf": float("inf")}
    values |= {"ninf": float("-inf"), "nz": -0.0, "d": {"$x": 1}, "t": (1, 2)}
    target = doc.get("v", type=Map)
    for key, value in values.items():
        target[key] = encode_value(value)
    strict = json.loads(str(target), parse_constant=lambda c: pytest.fail(f"JSON has {c}"))
    assert strict == {
        "i": 3,
        "f": 0.25,
        "one": {"$f": "1.0"},
        "nan": {"$f": "NaN"},
        "inf": {"$f": "Infinity"},
        "ninf": {"$f": "-Infinity"},
        "nz": {"$f": "-0.0"},
        "d": {"$d": {"$x": 1}},
        "t": [1, 2],
    }


def test_int_limit_is_refused_with_the_limit_named() -> None:
    for bad in (MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 2**63, [1, 2**64]):
        with pytest.raises(ValueRangeError, match=r"2\*\*53-1"):
            encode_value(bad)
    assert issubclass(ValueRangeError, ValueError)
    assert issubclass(ValueRangeError, LocalProtocolError)


class Color(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (b"abc", "blob"),
        (bytearray(b"x"), "blob"),
        ({1, 2}, "sorted list"),
        (frozenset(), "sorted list"),
        (1j, "real, imag"),
        (datetime.date(2024, 1, 1), "isoformat"),
        (decimal.Decimal("1.5"), "use None, bool"),
        (object(), "use None, bool"),
        ({1: "int key"}, "str"),
        ({"k": {b"bytes"}}, "sorted list"),
        ("lone \ud800 surrogate", "surrogate"),
        ({"key \udc00": 1}, "surrogate"),
    ],
    ids=repr,
)
def test_unsupported_values_are_refused_clearly(value: object, hint: str) -> None:
    with pytest.raises(UnsupportedValue, match=hint):
        encode_value(value)
    assert issubclass(UnsupportedValue, TypeError)


def test_subclasses_are_stored_as_their_base_type() -> None:
    assert same(through_map(Color.RED), 1)
    assert same(through_map(OrderedDict(a=1)), {"a": 1})


def test_nesting_is_bounded_and_cycles_are_refused() -> None:
    deep: object = 0
    for _ in range(MAX_DEPTH):
        deep = [deep]
    assert same(decode_value(encode_value(deep)), deep)
    with pytest.raises(UnsupportedValue, match="deeper"):
        encode_value([deep])
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(UnsupportedValue, match="deeper"):
        encode_value(cycle)


def test_numpy_scalars_become_python_values() -> None:
    np = pytest.importorskip("numpy")
    cases = [
        (np.float64(0.1), 0.1),
        (np.float32(0.1), float(np.float32(0.1))),
        (np.float16(3), 3.0),
        (np.float32("nan"), float("nan")),
        (np.int8(-5), -5),
        (np.uint64(MAX_SAFE_INTEGER), MAX_SAFE_INTEGER),
        (np.int64(7), 7),
        (np.bool_(True), True),
        (np.str_("s"), "s"),
        ([np.int32(1), {"x": np.float64(2.0)}], [1, {"x": 2.0}]),
    ]
    for value, expected in cases:
        assert same(through_map(value), expected), value
    with pytest.raises(ValueRangeError, match=r"2\*\*53-1"):
        encode_value(np.uint64(2**63))
    with pytest.raises(UnsupportedValue, match="tolist"):
        encode_value(np.zeros(3))
    with pytest.raises(UnsupportedValue):
        encode_value(np.complex64(1j))
    if np.finfo(np.longdouble).nmant > 52:  # a real extended type on this platform
        with pytest.raises(ValueRangeError, match="float64"):
            encode_value(np.longdouble(1) / 3)


def test_keys() -> None:
    assert encode_key("lr") == "lr"
    with pytest.raises(UnsupportedValue, match="str"):
        encode_key(3)


def test_values_other_clients_write_read_sensibly() -> None:
    assert same(decode_value(3.0), 3)  # a JS number that is integral
    assert same(decode_value(0.5), 0.5)
    assert same(decode_value(2.0**60), 2.0**60)  # integral but beyond exact ints
    assert same(decode_value(2**60), 2**60)  # a BigInt
    assert same(decode_value(bytearray(b"\x01")), b"\x01")  # a Uint8Array
    assert same(decode_value({FLOAT_TAG: "1.5e3"}), 1500.0)
    doc = Doc(client_id=1)
    root = doc.get("v", type=Map)
    root["map"] = Map({"a": 1.0, "t": Text("hi")})
    root["arr"] = Array([1.0, {FLOAT_TAG: "2.0"}])
    assert same(decode_value(root["map"]), {"a": 1, "t": "hi"})
    assert same(decode_value(root["arr"]), [1, 2.0])


@pytest.mark.parametrize(
    "stored",
    [
        {FLOAT_TAG: 1.5},
        {FLOAT_TAG: "abc"},
        {FLOAT_TAG: "inf"},
        {FLOAT_TAG: "1" * 60},
        {DICT_TAG: [1]},
        {DICT_TAG: {1: 2}},
        object(),
    ],
    ids=repr,
)
def test_malformed_stored_values_raise_decode_error(stored: object) -> None:
    with pytest.raises(DecodeError):
        decode_value(stored)


def test_decoding_is_bounded() -> None:
    deep: object = 1.0
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(DecodeError, match="deeper"):
        decode_value(deep)


# -- properties ---------------------------------------------------------------------------

texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(texts, inner, max_size=4)
    ),
    max_leaves=20,
)


@given(values)
@settings(max_examples=300, deadline=None)
def test_property_round_trip(value: object) -> None:
    stored = encode_value(value)
    json.dumps(stored, allow_nan=False)  # what a JSON reader sees is strict JSON
    assert same(value, decode_value(stored))


@given(st.lists(values, min_size=1, max_size=5))
@settings(max_examples=100, deadline=None)
def test_property_round_trip_across_docs(items: list[object]) -> None:
    writer = Doc(client_id=11)
    array = writer.get("rows", type=Array)
    for item in items:
        array.append(encode_value(item))
    reader = Doc(client_id=12)
    reader.apply_update(writer.get_update())
    assert same(items, [decode_value(x) for x in reader.get("rows", type=Array)])


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)


@given(junk)
@settings(max_examples=300, deadline=None)
def test_property_decoder_accepts_or_raises_decode_error(stored: object) -> None:
    try:
        decode_value(stored)
    except DecodeError:
        pass


# -- other Yjs implementations ---------------------------------------------------------------


def test_y_py_round_trip() -> None:
    y_py = pytest.importorskip("y_py")
    writer = Doc(client_id=1)
    for index, value in enumerate(EXAMPLES):
        writer.get("v", type=Map)[str(index)] = encode_value(value)
    ydoc = y_py.YDoc(client_id=5)
    y_py.apply_update(ydoc, writer.get_update())
    stored = dict(ydoc.get_map("v").items())
    copy = y_py.YDoc(client_id=6)
    with copy.begin_transaction() as txn:  # rewrite every value through y-py's Python values
        for key, value in stored.items():
            copy.get_map("v").set(txn, key, value)
    reader = Doc(client_id=2)
    reader.apply_update(y_py.encode_state_as_update(copy))
    for index, value in enumerate(EXAMPLES):
        assert same(value, decode_value(reader.get("v", type=Map)[str(index)])), value


NODE_ROUND_TRIP = """
const Y = require('yjs');
let input = '';
process.stdin.on('data', (c) => { input += c; });
process.stdin.on('end', () => {
  const doc = new Y.Doc();
  Y.applyUpdate(doc, Buffer.from(input.trim(), 'hex'));
  const json = doc.getMap('v').toJSON();
  const copy = new Y.Doc();
  for (const [k, v] of Object.entries(json)) copy.getMap('v').set(k, v);
  process.stdout.write(JSON.stringify(json) + '\\n');
  process.stdout.write(Buffer.from(Y.encodeStateAsUpdate(copy)).toString('hex') + '\\n');
});
"""


def _node_with_yjs() -> tuple[str, dict[str, str]]:
    """The ``node`` executable and an environment whose ``NODE_PATH`` finds the pinned yjs.

    Uses the Node client's own checks (``yjs_node_unavailable``): the packages live in
    ``tests/interop/yjs_node/node_modules``, installed there by ``npm ci`` (``.ci/run`` does it).
    """
    reason = yjs_node_unavailable()
    if reason is not None:
        pytest.skip(reason)
    node = find_node()
    if node is None:  # pragma: no cover - yjs_node_unavailable() already said why
        pytest.skip("node is not installed")
    env = dict(os.environ)
    env["NODE_PATH"] = os.pathsep.join(
        p for p in (str(YJS_NODE_DIR / "node_modules"), env.get("NODE_PATH")) if p
    )
    return node, env


@pytest.mark.interop
def test_node_yjs_round_trip() -> None:
    node, env = _node_with_yjs()
    writer = Doc(client_id=1)
    for index, value in enumerate(EXAMPLES):
        writer.get("v", type=Map)[str(index)] = encode_value(value)
    result = subprocess.run(
        [node, "-e", NODE_ROUND_TRIP],
        input=writer.get_update().hex(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    seen, update = result.stdout.splitlines()
    assert json.loads(seen)[str(EXAMPLES.index({"step": 10, "loss": 0.5, "acc": 1.0}))] == {
        "step": 10,
        "loss": 0.5,
        "acc": {"$f": "1.0"},
    }
    reader = Doc(client_id=2)
    reader.apply_update(bytes.fromhex(update))
    for index, value in enumerate(EXAMPLES):
        assert same(value, decode_value(reader.get("v", type=Map)[str(index)])), value
