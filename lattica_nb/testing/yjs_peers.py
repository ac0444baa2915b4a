"""Independently written Yjs peers for interop tests: Node ``yjs`` + ``y-protocols``, and y-py.

:class:`YjsNodePeer` drives ``tests/interop/yjs_node/yjs_peer.mjs``, a Node client built on
``yjs`` 13.6.33, ``y-protocols`` 1.0.7 and ``lib0`` 0.2.120 (exact versions in that directory's
``package-lock.json``; ``npm ci`` there installs them). It speaks y-protocols over JSON lines on
stdio, never a socket. Each input gets one reply; the y-protocols messages the client sends in
response come first, one line each, and are returned with the reply::

    with YjsNodePeer(client_id=7) as node:
        node.start(timeout_s=30)
        step1 = node.step1()                              # the client's SyncStep1
        reply = node.send_sync(step1_from_elsewhere)      # .messages holds its SyncStep2
        update = node.set("params", "lr", 0.1).sync_messages()[0]
        view = node.dump().doc                            # {"params": {"lr": 0.1}}

Waiting uses ``selectors`` on the child's stdout (as :class:`~lattica_nb.testing.foreign_peers.
PeerProcess` does), so a hung client costs its deadline, never a sleep.

y-py (0.6.2, the older yrs binding) has no sync module; :class:`YpyPeer` wraps one ``YDoc``
with the y-protocols sync steps and returns the update every local edit made.

Message framing. A y-protocols *sync message* is ``varuint(type) || varuint(len) || payload``
with type 0 = SyncStep1 (payload: a state vector), 1 = SyncStep2 and 2 = Update (payload: a
Yjs update). y-websocket puts one more byte in front (0 = sync, 1 = awareness). pycrdt 0.14 is
lopsided here: ``create_sync_message`` / ``create_update_message`` / the reply of
``handle_sync_message`` all carry that outer byte, but ``handle_sync_message`` wants the message
*without* it. The Node client and :class:`YpyPeer` use bare sync messages;
:func:`strip_sync_prefix` turns pycrdt's output into one.
"""

from __future__ import annotations

import base64
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from lattica_nb.errors import DecodeError
from lattica_nb.testing.lines import STOP_GRACE_S, ForeignPeerError, LineProcess

__all__ = [
    "NODE_ENV",
    "YJS_NODE_DIR",
    "YJS_NODE_VERSIONS",
    "YPY_VERSION",
    "NodeReady",
    "SyncType",
    "YjsDump",
    "YjsMessage",
    "YjsNodePeer",
    "YjsReply",
    "YpyPeer",
    "find_node",
    "random_client_id",
    "read_sync_message",
    "strip_sync_prefix",
    "sync_message",
    "yjs_node_unavailable",
    "ypy_unavailable",
]

NODE_ENV = "LATTICA_NB_NODE"
"""Environment variable naming the ``node`` executable (default: ``node`` on ``$PATH``)."""

YJS_NODE_DIR = Path(__file__).resolve().parents[2] / "tests" / "interop" / "yjs_node"
YJS_PEER_SCRIPT = YJS_NODE_DIR / "yjs_peer.mjs"
YJS_NODE_VERSIONS = {"yjs": "13.6.33", "y-protocols": "1.0.7", "lib0": "0.2.120"}
"""The npm packages of the Node client, pinned exactly in its package.json and lockfile."""

YPY_VERSION = "0.6.2"
MIN_NODE_MAJOR = 18
CLIENT_ID_LIMIT = 2**32
"""Yjs client ids are 32-bit; pycrdt's default 53-bit ids make y-py resolve conflicts apart."""

MESSAGE_Y_SYNC = 0
"""y-websocket's outer message type of a sync message (pycrdt's ``YMessageType.SYNC``)."""

PROBE_TIMEOUT_S = 30.0
MAX_VARUINT_BYTES = 5


class SyncType(IntEnum):
    """The first varuint of a y-protocols sync message."""

    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


# -- y-protocols sync messages ------------------------------------------------------------
def _varuint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"varuint cannot hold {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varuint(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    for index in range(MAX_VARUINT_BYTES):
        if offset + index >= len(data):
            raise DecodeError(f"y-protocols message truncated in a varuint at byte {offset}")
        byte = data[offset + index]
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            return value, offset + index + 1
    raise DecodeError(f"varuint at byte {offset} is longer than {MAX_VARUINT_BYTES} bytes")


def sync_message(sync_type: SyncType, payload: bytes) -> bytes:
    """A bare y-protocols sync message: ``varuint(type) || varuint(len) || payload``."""
    return _varuint(int(sync_type)) + _varuint(len(payload)) + payload


def read_sync_message(message: bytes) -> tuple[SyncType, bytes]:
    """Split a bare y-protocols sync message into its type and payload (DecodeError if bad)."""
    raw_type, offset = _read_varuint(message, 0)
    try:
        sync_type = SyncType(raw_type)
    except ValueError as exc:
        raise DecodeError(f"unknown y-protocols sync message type {raw_type}") from exc
    length, offset = _read_varuint(message, offset)
    if len(message) - offset != length:
        raise DecodeError(
            f"y-protocols sync message announces {length} payload bytes "
            f"but carries {len(message) - offset}"
        )
    return sync_type, message[offset:]


def strip_sync_prefix(message: bytes) -> bytes:
    """pycrdt's y-websocket-framed sync message (outer byte 0) as a bare sync message."""
    if not message or message[0] != MESSAGE_Y_SYNC:
        raise DecodeError("not a y-websocket sync message (first byte is not 0)")
    return message[1:]


def random_client_id() -> int:
    """A random 32-bit Yjs client id (what Yjs itself picks)."""
    return secrets.randbits(32)


def _check_client_id(client_id: int) -> int:
    if not 0 <= client_id < CLIENT_ID_LIMIT:
        raise ValueError(f"a Yjs client id is 32-bit: 0 <= id < 2**32, got {client_id}")
    return client_id


# -- the Node client ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class YjsMessage:
    """One message the Node client sent: ``kind`` is ``"sync"`` or ``"awareness"``."""

    kind: str
    data: bytes

    @property
    def sync_type(self) -> SyncType | None:
        """The sync message's type, or ``None`` for an awareness message."""
        if self.kind != "sync":
            return None
        return read_sync_message(self.data)[0]


@dataclass(frozen=True, slots=True)
class YjsReply:
    """The client's reply to one input and the messages it sent while handling it."""

    reply: dict[str, Any]
    messages: tuple[YjsMessage, ...]

    def sync_messages(self) -> list[bytes]:
        return [message.data for message in self.messages if message.kind == "sync"]

    def awareness_messages(self) -> list[bytes]:
        return [message.data for message in self.messages if message.kind == "awareness"]


@dataclass(frozen=True, slots=True)
class NodeReady:
    """What the Node client announced when it started."""

    client_id: int
    versions: dict[str, str]


@dataclass(frozen=True, slots=True)
class YjsDump:
    """The Node client's view: root types as JSON, their kinds, awareness states by client."""

    doc: dict[str, Any]
    types: dict[str, str]
    awareness: dict[int, Any]


class YjsNodePeer:
    """The Node ``yjs`` + ``y-protocols`` client of ``yjs_peer.mjs`` as a child process."""

    def __init__(
        self,
        *,
        client_id: int | None = None,
        node: str | Path | None = None,
        script: Path = YJS_PEER_SCRIPT,
        name: str = "yjs-node",
    ) -> None:
        self.name = name
        argv = [str(node) if node is not None else _node_or_default(), str(script)]
        if client_id is not None:
            argv += ["--client-id", str(_check_client_id(client_id))]
        self._lines = LineProcess(argv, name=name, cwd=YJS_NODE_DIR)
        self._ready: NodeReady | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> NodeReady:
        """Start the client and wait for its ready line."""
        self._lines.start()
        line = self._lines.read_object(time.monotonic() + timeout_s, "its ready line")
        try:
            if line.get("ready") is not True:
                raise ValueError("no ready flag")
            self._ready = NodeReady(
                client_id=int(line["client_id"]),
                versions={str(k): str(v) for k, v in dict(line["versions"]).items()},
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ForeignPeerError(
                f"{self.name} announced {line!r}, not a ready line{self._lines.stderr_note()}"
            ) from exc
        return self._ready

    @property
    def ready(self) -> NodeReady:
        if self._ready is None:
            raise ForeignPeerError(f"{self.name} has not started; call start() first")
        return self._ready

    @property
    def client_id(self) -> int:
        return self.ready.client_id

    def close(self, timeout_s: float = STOP_GRACE_S) -> int | None:
        """Ask the client to quit (closing its stdin); kill it if it outlives ``timeout_s``."""
        return self._lines.close(timeout_s)

    def stderr_tail(self) -> str:
        """The last lines the client wrote to stderr (for diagnostics)."""
        return self._lines.stderr_tail()

    def __enter__(self) -> YjsNodePeer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- inputs -------------------------------------------------------------------------
    def request(self, command: Mapping[str, Any], timeout_s: float = 30.0) -> YjsReply:
        """Send one input line; return the reply and the messages sent before it."""
        if not self._lines.started:
            raise ForeignPeerError(f"{self.name} has not started; call start() first")
        try:
            line = json.dumps(dict(command), allow_nan=False)
        except ValueError as exc:
            raise ValueError(
                f"{command.get('cmd', command.get('type'))!r} carries a value JSON cannot hold "
                f"(NaN or infinity): {exc}"
            ) from exc
        self._lines.write_line(line)
        what = command.get("cmd", command.get("type"))
        deadline = time.monotonic() + timeout_s
        messages: list[YjsMessage] = []
        while True:
            received = self._lines.read_object(deadline, f"a reply to {what!r}")
            if "ok" in received:
                break
            try:
                messages.append(
                    YjsMessage(kind=str(received["type"]), data=_b64decode(received["data_b64"]))
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ForeignPeerError(f"{self.name} sent {received!r}, not a message") from exc
        if received["ok"] is not True:
            raise ForeignPeerError(f"{self.name} could not do {what!r}: {received.get('error')}")
        return YjsReply(reply=received, messages=tuple(messages))

    def send_sync(self, message: bytes, timeout_s: float = 30.0) -> YjsReply:
        """Deliver one bare y-protocols sync message (a SyncStep1 gets a SyncStep2 back)."""
        return self.request({"type": "sync", "data_b64": _b64encode(message)}, timeout_s)

    def send_awareness(self, update: bytes, timeout_s: float = 30.0) -> YjsReply:
        """Deliver one encoded awareness update."""
        return self.request({"type": "awareness", "data_b64": _b64encode(update)}, timeout_s)

    def step1(self, timeout_s: float = 30.0) -> bytes:
        """The client's SyncStep1 (its state vector), as a provider sends on connect."""
        (message,) = self.request({"cmd": "step1"}, timeout_s).sync_messages()
        return message

    def set(self, map_name: str, key: str, value: Any) -> YjsReply:
        return self.request({"cmd": "set", "map": map_name, "key": key, "value": value})

    def delete(self, map_name: str, key: str) -> YjsReply:
        return self.request({"cmd": "delete", "map": map_name, "key": key})

    def push(self, array_name: str, *values: Any) -> YjsReply:
        return self.request({"cmd": "push", "array": array_name, "values": list(values)})

    def text_insert(self, text_name: str, index: int, value: str) -> YjsReply:
        return self.request(
            {"cmd": "text_insert", "text": text_name, "index": index, "value": value}
        )

    def copy(self, from_map: str, from_key: str, to_map: str, to_key: str) -> YjsReply:
        """Read a map value into JavaScript and write it back elsewhere (a JS round trip)."""
        return self.request(
            {
                "cmd": "copy",
                "from_map": from_map,
                "from_key": from_key,
                "to_map": to_map,
                "to_key": to_key,
            }
        )

    def transact(self, ops: Iterable[Mapping[str, Any]]) -> YjsReply:
        """Several edits (``set``/``delete``/``push``/... commands) in one transaction."""
        return self.request({"cmd": "transact", "ops": [dict(op) for op in ops]})

    def set_awareness(self, state: Mapping[str, Any] | None) -> bytes:
        """Set the local awareness state; return the awareness update the client sent."""
        reply = self.request(
            {"cmd": "awareness_set", "state": None if state is None else dict(state)}
        )
        (update,) = reply.awareness_messages()
        return update

    def dump(self, types: Mapping[str, str] | None = None, timeout_s: float = 30.0) -> YjsDump:
        """The client's document as JSON (see ``yjs_peer.mjs`` for the tags it uses)."""
        command: dict[str, Any] = {"cmd": "dump"}
        if types is not None:
            command["types"] = dict(types)
        reply = self.request(command, timeout_s).reply
        return YjsDump(
            doc=dict(reply["doc"]),
            types={str(k): str(v) for k, v in reply["types"].items()},
            awareness={int(k): v for k, v in reply["awareness"].items()},
        )


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"expected base64 text, got {type(text).__name__}")
    return base64.b64decode(text, validate=True)


# -- y-py ---------------------------------------------------------------------------------
def _import_ypy() -> ModuleType:
    reason = ypy_unavailable()
    if reason is not None:
        raise ForeignPeerError(reason)
    return importlib.import_module("y_py")


class YpyPeer:
    """One y-py ``YDoc`` (32-bit client id) with the y-protocols sync steps on top.

    Every edit runs in its own transaction and returns the update it made (the
    difference from the state vector before it), ready for ``apply_update`` elsewhere
    or :func:`sync_message` ``(SyncType.UPDATE, ...)``.
    """

    def __init__(self, client_id: int | None = None) -> None:
        self._y = _import_ypy()
        self.client_id = _check_client_id(random_client_id() if client_id is None else client_id)
        self._doc: Any = self._y.YDoc(client_id=self.client_id)

    # -- edits --------------------------------------------------------------------------
    def set(self, map_name: str, key: str, value: Any) -> bytes:
        ymap = self._doc.get_map(map_name)
        return self._edit(lambda txn: ymap.set(txn, key, value))

    def delete(self, map_name: str, key: str) -> bytes:
        ymap = self._doc.get_map(map_name)
        return self._edit(lambda txn: ymap.pop(txn, key))

    def push(self, array_name: str, *values: Any) -> bytes:
        yarray = self._doc.get_array(array_name)
        return self._edit(lambda txn: yarray.extend(txn, list(values)))

    def text_insert(self, text_name: str, index: int, value: str) -> bytes:
        ytext = self._doc.get_text(text_name)
        return self._edit(lambda txn: ytext.insert(txn, index, value))

    def _edit(self, change: Callable[[Any], object]) -> bytes:
        before = self._y.encode_state_vector(self._doc)
        with self._doc.begin_transaction() as txn:
            change(txn)
        return bytes(self._y.encode_state_as_update(self._doc, before))

    # -- updates and sync ---------------------------------------------------------------
    def state_vector(self) -> bytes:
        return bytes(self._y.encode_state_vector(self._doc))

    def update(self, state_vector: bytes | None = None) -> bytes:
        """Everything this doc has that ``state_vector`` lacks (all of it when ``None``)."""
        if state_vector is None:
            return bytes(self._y.encode_state_as_update(self._doc))
        return bytes(self._y.encode_state_as_update(self._doc, state_vector))

    def apply_update(self, update: bytes) -> None:
        self._y.apply_update(self._doc, update)

    def sync_step1(self) -> bytes:
        """A bare y-protocols SyncStep1 carrying this doc's state vector."""
        return sync_message(SyncType.STEP1, self.state_vector())

    def handle_sync(self, message: bytes) -> bytes | None:
        """Handle a bare sync message; a SyncStep1 returns the SyncStep2 reply."""
        sync_type, payload = read_sync_message(message)
        if sync_type is SyncType.STEP1:
            return sync_message(SyncType.STEP2, self.update(payload))
        self.apply_update(payload)
        return None

    # -- reading ------------------------------------------------------------------------
    def map(self, name: str) -> dict[str, Any]:
        return {str(key): self._plain(value) for key, value in self._doc.get_map(name).items()}

    def array(self, name: str) -> list[Any]:
        return [self._plain(value) for value in self._doc.get_array(name)]

    def text(self, name: str) -> str:
        return str(self._doc.get_text(name))

    def _plain(self, value: Any) -> Any:
        if isinstance(value, self._y.YMap):
            return {str(key): self._plain(item) for key, item in value.items()}
        if isinstance(value, self._y.YArray):
            return [self._plain(item) for item in value]
        if isinstance(value, self._y.YText):
            return str(value)
        return value


# -- availability -------------------------------------------------------------------------
def _node_or_default() -> str:
    return find_node() or "node"


def find_node() -> str | None:
    """The ``node`` executable: ``$LATTICA_NB_NODE`` when set, else ``node`` on ``$PATH``."""
    configured = os.environ.get(NODE_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("node")


@functools.cache
def _probe_node(node: str) -> str | None:
    try:
        done = subprocess.run(
            [node, "--version"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{node} could not run: {exc}"
    match = re.fullmatch(r"v(\d+)\.\d+\.\d+\S*", done.stdout.strip())
    if done.returncode != 0 or match is None:
        return f"{node} --version said {done.stdout.strip()!r} {done.stderr.strip()[-200:]!r}"
    if int(match.group(1)) < MIN_NODE_MAJOR:
        return f"{node} is {done.stdout.strip()}; the Yjs peer needs Node >= {MIN_NODE_MAJOR}"
    return None


def yjs_node_unavailable() -> str | None:
    """``None`` if the Node Yjs client can run here, else why not."""
    node = find_node()
    if node is None:
        configured = os.environ.get(NODE_ENV)
        if configured:
            return f"${NODE_ENV}={configured} is not an executable file"
        return "node is not installed (apt-get install nodejs npm, or run .ci/run)"
    reason = _probe_node(node)
    if reason is not None:
        return reason
    for package, wanted in YJS_NODE_VERSIONS.items():
        manifest = YJS_NODE_DIR / "node_modules" / package / "package.json"
        try:
            found = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError):
            return (
                f"npm package {package} is not installed in {YJS_NODE_DIR}; "
                f"run `npm ci` there (or .ci/run)"
            )
        if found != wanted:
            return (
                f"{YJS_NODE_DIR} has {package} {found}, the tests pin {wanted}; "
                f"run `npm ci` there (or .ci/run)"
            )
    return None


def ypy_unavailable() -> str | None:
    """``None`` if y-py can be imported here, else why not."""
    try:
        version = importlib.metadata.version("y-py")
    except importlib.metadata.PackageNotFoundError:
        return f"y-py is not installed; pip install -e '.[interop]' (y-py=={YPY_VERSION})"
    if version != YPY_VERSION:
        return f"y-py {version} is installed; the tests target y-py=={YPY_VERSION}"
    if importlib.util.find_spec("y_py") is None:
        return "y-py's metadata is installed but its module y_py cannot be found"
    return None
