"""The experiment API: shared params, metrics per run, notes and presence in one room.

An experiment is a room (:mod:`.service`) whose document follows
:data:`~.rules.DEFAULT_RULES`::

    params   Map   name -> value                    only the room owner writes it
    metrics  Map   "<peer id>/<run>" -> Array       each author appends rows to its own runs
    notes    Text                                   any member edits it

plus each peer's presence (display name, run, what it is running).

* :class:`AsyncExperiment` lives on the node's event loop: open it with
  ``await experiment_async(node, "sweep")`` inside ``async with Node(...)``.
  Its methods are plain calls made on the loop's thread (a document edit
  never waits); only ``open``, ``wait_acknowledged`` and ``close`` are awaited.
* :class:`Experiment` is its blocking facade for a notebook (or any other
  thread): every call hops to the thread that runs the node (the notebook
  :class:`~lattica_nb.notebook.runtime.Runtime`) and returns plain copies.
  ``lattica_nb.experiment("sweep")`` opens one on the kernel's default node
  (:mod:`lattica_nb.notebook.session`).

Values are stored with :func:`~.values.encode_value`, so they read back as
written (an int stays an int; NaN, ±inf and numpy scalars work); an int
beyond ±(2**53-1) raises :class:`~lattica_nb.errors.ValueRangeError` and a
type a document cannot hold :class:`~lattica_nb.errors.UnsupportedValue`,
before anything is written. A write the room's rules forbid (params by a
non-owner) raises :class:`~lattica_nb.errors.PermissionDenied` before
anything is written: every other peer would refuse it, so it must not
change the local document either.

Every write is one Yjs transaction (one signed update). Change callbacks
(:meth:`AsyncExperiment.on_change`) get an :class:`ExperimentChanged`: which
entry changed ("params", "metrics", "notes", or another peer's "presence"),
whose updates changed it, and whether they were this peer's own. They run on
the node's loop, after the change, and must not block.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import importlib
import logging
import operator
import platform
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    NamedTuple,
    Protocol,
    SupportsIndex,
    TypeAlias,
    TypeVar,
)

import anyio
from pycrdt import Array, Map, Text

from ..errors import (
    DecodeError,
    LocalProtocolError,
    PermissionDenied,
    TimeoutError,
    UnsupportedValue,
)
from ..identity import PeerId
from .driver import RoomDriver
from .events import (
    AwarenessChanged,
    DocumentChanged,
    OwnAcknowledged,
    PeerSynced,
    RoomEvent,
    UpdateRefused,
)
from .room import RoomStatus
from .rules import WriteRule, author_key
from .values import Value, decode_value, encode_key, encode_value

if TYPE_CHECKING:
    from _typeshed import SupportsKeysAndGetItem

    from ..node import Node

__all__ = [
    "COLUMNS",
    "AsyncExperiment",
    "ChangeKind",
    "Experiment",
    "ExperimentChanged",
    "Params",
    "Participant",
    "Runner",
    "experiment_async",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

ChangeKind: TypeAlias = Literal["params", "metrics", "notes", "presence"]
COLUMNS = ("run", "peer", "step")
"""The first columns of :attr:`AsyncExperiment.runs`; metric names may not take them."""

_ORIGIN = "lattica_nb.sync.experiment"
"""Origin of the transactions this module makes (how a change is known to be our own)."""
_SYNC_WAIT_S = 5.0
"""How long opening a freshly joined room waits for a peer to send what it has."""
_FACADE_TIMEOUT_S = 30.0
_MAX_NAME_CHARS = 1000
"""Longest run name, display name or status (presence stays far below its size limit)."""


@dataclass(frozen=True, slots=True)
class ExperimentChanged:
    """``kind`` changed through updates by ``authors`` (peer ids); ``local``: our own."""

    kind: ChangeKind
    authors: frozenset[str]
    local: bool


class Participant(NamedTuple):
    """One peer in :meth:`AsyncExperiment.who`."""

    peer: str
    """Its peer id."""
    name: str
    """Its display name (its short peer id if it has sent none)."""
    running: str | None
    """What it says it is running (``set_status``), or None."""
    you: bool
    """True for this peer."""


ChangeCallback: TypeAlias = Callable[[ExperimentChanged], None]

_HANDLES: weakref.WeakKeyDictionary[RoomDriver, int] = weakref.WeakKeyDictionary()
"""How many open experiments use each room (the last one to close leaves the room)."""


class AsyncExperiment:
    """An experiment on the node's event loop; see the module docs.

    Open it with :meth:`open` (or :func:`experiment_async`). Every method
    must be called on the loop's thread (LocalProtocolError otherwise).
    """

    def __init__(
        self,
        driver: RoomDriver,
        *,
        close_room: Callable[[RoomDriver], Awaitable[None]],
        run: str | None = None,
        display_name: str | None = None,
    ) -> None:
        """Wrap an open experiment room (``close_room`` leaves it: ``node.sync.close``)."""
        self._driver = driver
        self._room = driver.room
        self._doc = driver.doc
        self._close_room = close_room
        self._thread = threading.get_ident()
        self._closed = False
        me = self._room.peer_id
        self.name = driver.name
        self.peer = str(me)
        self.run = _checked_name(run if run is not None else f"run-{me.short()}", "run name")
        self.display_name = _checked_name(
            display_name if display_name is not None else _default_display_name(me), "name")
        self._running: str | None = None
        self._callbacks: list[ChangeCallback] = []
        self._local: deque[ChangeKind] = deque()
        self._remote: dict[ChangeKind, None] = {}
        self._synced = anyio.Event()
        self._acknowledged = anyio.Event()
        self._params = self._doc.get("params", type=Map)
        self._metrics = self._doc.get("metrics", type=Map)
        self._notes = self._doc.get("notes", type=Text)
        entries: tuple[tuple[Map[Any] | Text, ChangeKind], ...] = (
            (self._params, "params"), (self._metrics, "metrics"), (self._notes, "notes"))
        self._subscriptions = [
            (root, root.observe_deep(functools.partial(self._on_entry, kind)))
            for root, kind in entries
        ]
        self._unobserve = driver.observe(self._on_room_event)
        self._publish_presence()
        _HANDLES[driver] = _HANDLES.get(driver, 0) + 1

    @classmethod
    async def open(
        cls,
        node: Node,
        name: str,
        *,
        create: bool | None = None,
        owner: PeerId | str | None = None,
        run: str | None = None,
        display_name: str | None = None,
        join_timeout_s: float | None = None,
    ) -> AsyncExperiment:
        """Open experiment ``name`` on ``node`` (restore it, join it, or create and own it).

        ``create``/``owner``/``join_timeout_s`` are those of ``node.sync.open``.
        ``run`` names this peer's run (default ``run-<short peer id>``);
        ``display_name`` is shown to the others (default ``user@host``). A
        room just joined waits (up to 5 s) for the peer to send what it has.
        """
        for value, what in ((run, "run name"), (display_name, "name")):
            if value is not None:
                _checked_name(value, what)
        sync = node.sync
        driver = await sync.open(name, create=create, owner=owner, join_timeout_s=join_timeout_s)
        try:
            experiment = cls(driver, close_room=sync.close, run=run, display_name=display_name)
        except BaseException:
            if driver not in _HANDLES:
                await sync.close(driver)
            raise
        status = driver.status()
        if status.peers and status.envelopes == 0 and not driver.room.is_owner:
            with anyio.move_on_after(_SYNC_WAIT_S):
                await experiment._synced.wait()
        return experiment

    # -- identity and state -----------------------------------------------------------------

    @property
    def owner(self) -> str:
        """The peer id of the room's owner (who may set params)."""
        descriptor = self._room.descriptor
        return str(descriptor.owner) if descriptor is not None else ""

    @property
    def is_owner(self) -> bool:
        return self._room.is_owner

    @property
    def status(self) -> RoomStatus:
        """The room's status: peers, envelopes, ``unacknowledged`` own updates, ..."""
        self._check()
        return self._driver.status()

    @property
    def closed(self) -> bool:
        return self._closed or self._driver.stopped.is_set()

    # -- params -------------------------------------------------------------------------------

    @property
    def params(self) -> Params:
        """The shared params, a mutable mapping (only the owner writes)."""
        return Params(self, _direct)

    def _param(self, key: str) -> Value:
        self._check()
        if key not in self._params:
            raise KeyError(key)
        return decode_value(self._params[key])

    def _param_keys(self) -> list[str]:
        self._check()
        return list(self._params.keys())

    def _param_items(self) -> dict[str, Value]:
        self._check()
        return {key: decode_value(value) for key, value in self._params.items()}

    def _set_params(self, values: Mapping[str, object]) -> None:
        self._check()
        self._require_owner("set params")
        encoded = {encode_key(key): encode_value(value) for key, value in values.items()}
        if encoded:
            with self._doc.transaction(origin=_ORIGIN):
                for key, value in encoded.items():
                    self._params[key] = value

    def _delete_param(self, key: str) -> None:
        self._check()
        self._require_owner("delete params")
        if key not in self._params:
            raise KeyError(key)
        with self._doc.transaction(origin=_ORIGIN):
            del self._params[key]

    def _require_owner(self, action: str) -> None:
        if not self._room.is_owner:
            raise PermissionDenied(
                f"only the owner of experiment {self.name!r} ({self.owner}) may {action}; this "
                f"peer is {self.peer}. Ask the owner to change them, or log the value as a "
                "metric of your run",
                entry="params", rule=WriteRule.OWNER.value,
            )

    # -- metrics ------------------------------------------------------------------------------

    def log(self, step: SupportsIndex | None = None, **metrics: object) -> None:
        """Append the row ``{"step": step, **metrics}`` to this peer's run (one update).

        ``step`` defaults to the run's last step + 1 (0 for its first row).
        Rows are never changed once written.
        """
        self._check()
        reserved = sorted(set(metrics) & set(COLUMNS))
        if reserved:
            raise LocalProtocolError(
                f"metric name(s) {', '.join(reserved)} are columns of exp.runs; rename them"
            )
        key = author_key(self._room.peer_id, self.run)
        rows = self._metrics.get(key)
        if rows is not None and not isinstance(rows, Array):
            raise DecodeError(f"metrics[{key!r}] holds a {type(rows).__name__}, not rows")
        row = encode_value({"step": _next_step(rows) if step is None else _step(step),
                            **metrics})
        with self._doc.transaction(origin=_ORIGIN):
            if rows is None:
                self._metrics[key] = Array([row])
            else:
                rows.append(row)

    def rows(self) -> list[dict[str, Value]]:
        """Every run's rows (runs by name, then peer; rows in the order logged).

        Each row is ``{"run", "peer", "step", <metrics by name>...}``.
        """
        self._check()
        out: list[dict[str, Value]] = []
        for key in sorted(self._metrics.keys(), key=lambda key: (key.partition("/")[2], key)):
            peer, _, run = key.partition("/")
            stored_rows = self._metrics[key]
            if not isinstance(stored_rows, Array):
                continue
            for stored in stored_rows.to_py() or ():
                try:
                    row = decode_value(stored)
                except DecodeError as exc:
                    logger.debug("experiment %s: skipped a row of %s: %s", self.name, key, exc)
                    continue
                if isinstance(row, dict):
                    metrics = {name: row[name] for name in sorted(row) if name not in COLUMNS}
                    out.append({"run": run, "peer": peer, "step": row.get("step"), **metrics})
        return out

    @property
    def runs(self) -> Any:
        """:meth:`rows` as a ``pandas.DataFrame`` when pandas is importable, else the list."""
        return _table(self.rows())

    # -- notes --------------------------------------------------------------------------------

    @property
    def notes(self) -> str:
        """The shared notes; assigning replaces them."""
        return self._read_notes()

    @notes.setter
    def notes(self, text: str) -> None:
        self._set_notes(text)

    def _read_notes(self) -> str:
        self._check()
        return str(self._notes)

    def _set_notes(self, text: str) -> None:
        self._check()
        _checked_text(text)
        with self._doc.transaction(origin=_ORIGIN):
            length = len(self._notes)  # pycrdt counts UTF-8 bytes: remove and insert whole
            if length:
                del self._notes[0:length]
            if text:
                self._notes.insert(0, text)

    def append_note(self, text: str) -> None:
        """Append ``text`` as a line (a newline is added if it lacks one) to the notes."""
        self._check()
        _checked_text(text)
        line = text if text.endswith("\n") else text + "\n"
        with self._doc.transaction(origin=_ORIGIN):
            self._notes.insert(len(self._notes), line)

    # -- presence -----------------------------------------------------------------------------

    def who(self) -> list[Participant]:
        """The peers in the room now (this one first), with their names and status."""
        self._check()
        me = self._room.peer_id
        presence = self._room.presence()
        out = []
        for peer in {me, *presence, *self._driver.status().peers}:
            seen = presence.get(peer)
            state = seen.state if seen is not None else None
            name = _state_text(state, "name") or peer.short()
            out.append(Participant(str(peer), name, _state_text(state, "running"), peer == me))
        out.sort(key=lambda p: (not p.you, p.name, p.peer))
        return out

    def set_status(self, running: str | None = None) -> None:
        """Tell the others what this peer is running (None: nothing)."""
        self._check()
        if running is not None:
            _checked_text(running, max_chars=_MAX_NAME_CHARS)
        self._running = running
        self._publish_presence()

    def _publish_presence(self) -> None:
        self._room.set_presence({"name": self.display_name, "run": self.run,
                                 "running": self._running})

    # -- changes ------------------------------------------------------------------------------

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(ExperimentChanged)`` on the loop after each change; returns an
        unsubscribe function."""
        self._check()
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def _on_entry(self, kind: ChangeKind, events: list[Any]) -> None:
        """A deep observer of one entry: runs when a transaction changes it."""
        origin = events[0].transaction.origin if events else None
        if origin == _ORIGIN:
            self._local.append(kind)
        else:
            self._remote[kind] = None

    def _on_room_event(self, event: RoomEvent) -> None:
        if isinstance(event, DocumentChanged):
            # A local DocumentChanged is one transaction (ours, in order); a remote one
            # covers every update applied since the previous remote one.
            if event.local and self._local:
                kinds: list[ChangeKind] = [self._local.popleft()]
            else:
                kinds, self._remote = list(self._remote), {}
            authors = frozenset(str(author) for author in event.authors)
            for kind in kinds:
                self._emit(ExperimentChanged(kind, authors, event.local))
        elif isinstance(event, UpdateRefused):
            if event.author == self._room.peer_id and event.rule == "local" and self._local:
                self._local.popleft()  # our edit could not be sent: no DocumentChanged for it
        elif isinstance(event, AwarenessChanged):
            self._emit(ExperimentChanged("presence", frozenset({str(event.peer)}), False))
        elif isinstance(event, PeerSynced):
            self._synced.set()
        elif isinstance(event, OwnAcknowledged):
            self._acknowledged.set()

    def _emit(self, change: ExperimentChanged) -> None:
        for callback in list(self._callbacks):
            try:
                callback(change)
            except Exception:  # one callback's bug must not stop the others or the room
                logger.exception("experiment %s: change callback %r failed", self.name, callback)

    # -- lifecycle ----------------------------------------------------------------------------

    async def wait_acknowledged(self, timeout_s: float = 10.0) -> None:
        """Wait until some peer has acknowledged every update this peer made.

        TimeoutError if that takes longer than ``timeout_s`` (no peer reachable?).
        """
        self._check()
        with anyio.move_on_after(timeout_s):
            while self._room.unacknowledged:
                await self._acknowledged.wait()
                self._acknowledged = anyio.Event()
        left = self._room.unacknowledged
        if left:
            raise TimeoutError(
                f"{left} update(s) of this peer to experiment {self.name!r} were not "
                f"acknowledged by any peer within {timeout_s:g} s; check exp.who() for peers"
            )

    async def close(self) -> None:
        """Stop observing; the last open experiment of the room leaves it."""
        if self._closed:
            return
        self._check_thread()
        self._closed = True
        self._unobserve()
        for root, subscription in self._subscriptions:
            root.unobserve(subscription)
        self._callbacks.clear()
        driver = self._driver
        left = _HANDLES.get(driver, 1) - 1
        if left > 0:
            _HANDLES[driver] = left
            return
        _HANDLES.pop(driver, None)
        if not driver.stopped.is_set():
            await self._close_room(driver)

    async def __aenter__(self) -> AsyncExperiment:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("owner" if self.is_owner else "member")
        return f"<AsyncExperiment {self.name!r} run={self.run!r} {state}>"

    def _check(self) -> None:
        if self.closed:
            raise LocalProtocolError(f"experiment {self.name!r} is closed; open it again")
        self._check_thread()

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread:
            raise LocalProtocolError(
                f"AsyncExperiment {self.name!r} is used from another thread than its node's "
                "event loop; from other threads use Experiment (lattica_nb.experiment)"
            )


async def experiment_async(
    node: Node,
    name: str,
    *,
    create: bool | None = None,
    owner: PeerId | str | None = None,
    run: str | None = None,
    display_name: str | None = None,
    join_timeout_s: float | None = None,
) -> AsyncExperiment:
    """Open experiment ``name`` on ``node``, on its loop: see :meth:`AsyncExperiment.open`."""
    return await AsyncExperiment.open(node, name, create=create, owner=owner, run=run,
                                      display_name=display_name, join_timeout_s=join_timeout_s)


class Params(MutableMapping[str, Value]):
    """An experiment's params as a mutable mapping; every read decodes a fresh copy.

    Writes raise PermissionDenied unless this peer owns the room. ``update``
    writes all its values in one update (or none, if one cannot be stored).
    """

    def __init__(self, experiment: AsyncExperiment, call: _Call) -> None:
        self._experiment = experiment
        self._call = call

    def __getitem__(self, key: str) -> Value:
        return self._call(self._experiment._param, key)

    def __setitem__(self, key: str, value: object) -> None:
        self._call(self._experiment._set_params, {key: value})

    def __delitem__(self, key: str) -> None:
        self._call(self._experiment._delete_param, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._call(self._experiment._param_keys))

    def __len__(self) -> int:
        return len(self._call(self._experiment._param_keys))

    def update(self, other: SupportsKeysAndGetItem[str, object] | Iterable[tuple[str, object]]
               = (), /, **values: object) -> None:
        merged: dict[str, object] = dict(other)
        merged.update(values)
        self._call(self._experiment._set_params, merged)

    def to_dict(self) -> dict[str, Value]:
        """A copy of every param (one read)."""
        return self._call(self._experiment._param_items)

    def __repr__(self) -> str:
        return f"Params({self.to_dict()!r})"


class _Call(Protocol):
    def __call__(self, fn: Callable[..., T], /, *args: object) -> T: ...


def _direct(fn: Callable[..., T], /, *args: object) -> T:
    return fn(*args)


class Runner(Protocol):
    """Runs coroutines on the node's loop from other threads (the notebook ``Runtime``)."""

    @property
    def in_runtime_thread(self) -> bool: ...

    def call(self, fn: Callable[..., Awaitable[T]], *args: object,
             timeout_s: float | None = ...) -> T: ...


class Experiment:
    """The blocking facade of an :class:`AsyncExperiment`, for a notebook or any thread.

    Each call runs on the node's loop through ``runner`` (the notebook
    runtime) and waits up to ``timeout_s``; reads return plain copies. Change
    callbacks run on the runner's thread, so they must not block; calls made
    there (inside a callback) run directly.
    """

    def __init__(self, runner: Runner, experiment: AsyncExperiment, *,
                 timeout_s: float = _FACADE_TIMEOUT_S) -> None:
        self._runner = runner
        self._experiment = experiment
        self._timeout_s = timeout_s
        self.name = experiment.name
        self.peer = experiment.peer
        self.run = experiment.run
        self.display_name = experiment.display_name

    @classmethod
    def open(
        cls,
        runner: Runner,
        node: Node,
        name: str,
        *,
        create: bool | None = None,
        owner: PeerId | str | None = None,
        run: str | None = None,
        display_name: str | None = None,
        join_timeout_s: float | None = None,
        timeout_s: float = _FACADE_TIMEOUT_S,
    ) -> Experiment:
        """Open experiment ``name`` on ``node`` (hosted by ``runner``); see
        :meth:`AsyncExperiment.open`."""
        opener = functools.partial(AsyncExperiment.open, node, name, create=create, owner=owner,
                                   run=run, display_name=display_name,
                                   join_timeout_s=join_timeout_s)
        join_s = node.config.sync.join_timeout_s if join_timeout_s is None else join_timeout_s
        experiment = runner.call(opener, timeout_s=join_s + _SYNC_WAIT_S + timeout_s)
        return cls(runner, experiment, timeout_s=timeout_s)

    @property
    def async_experiment(self) -> AsyncExperiment:
        """The experiment this facade drives (use it on the node's loop)."""
        return self._experiment

    def _call(self, fn: Callable[..., T], /, *args: object) -> T:
        if self._runner.in_runtime_thread:
            return fn(*args)
        return self._runner.call(_on_loop(fn), *args, timeout_s=self._timeout_s)

    @property
    def owner(self) -> str:
        return self._experiment.owner

    @property
    def is_owner(self) -> bool:
        return self._experiment.is_owner

    @property
    def status(self) -> RoomStatus:
        return self._call(self._experiment._driver.status)

    @property
    def closed(self) -> bool:
        return self._experiment.closed

    @property
    def params(self) -> Params:
        return Params(self._experiment, self._call)

    def log(self, step: SupportsIndex | None = None, **metrics: object) -> None:
        self._call(functools.partial(self._experiment.log, step, **metrics))

    def rows(self) -> list[dict[str, Value]]:
        return self._call(self._experiment.rows)

    @property
    def runs(self) -> Any:
        return _table(self.rows())

    @property
    def notes(self) -> str:
        return self._call(self._experiment._read_notes)

    @notes.setter
    def notes(self, text: str) -> None:
        self._call(self._experiment._set_notes, text)

    def append_note(self, text: str) -> None:
        self._call(self._experiment.append_note, text)

    def who(self) -> list[Participant]:
        return self._call(self._experiment.who)

    def set_status(self, running: str | None = None) -> None:
        self._call(self._experiment.set_status, running)

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Like :meth:`AsyncExperiment.on_change`; ``callback`` runs on the runner's thread."""
        unsubscribe = self._call(self._experiment.on_change, callback)
        return functools.partial(self._call, unsubscribe)

    def wait_acknowledged(self, timeout_s: float = 10.0) -> None:
        self._runner.call(self._experiment.wait_acknowledged, timeout_s,
                          timeout_s=timeout_s + self._timeout_s)

    def close(self) -> None:
        if self._experiment.closed:
            return
        self._runner.call(self._experiment.close, timeout_s=self._timeout_s)

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Experiment {self.name!r} run={self.run!r} peer={self.peer[-6:]}>"


def _table(rows: list[dict[str, Value]]) -> Any:
    """``rows`` as a ``pandas.DataFrame`` (columns run, peer, step, metrics by name) when
    pandas is importable, else ``rows`` itself."""
    try:
        pandas = importlib.import_module("pandas")
    except ImportError:
        return rows
    names = sorted({name for row in rows for name in row} - set(COLUMNS))
    return pandas.DataFrame(rows, columns=[*COLUMNS, *names])


# -- helpers -----------------------------------------------------------------------------------


def _on_loop(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """``fn`` as a coroutine function (for ``Runner.call``), named like it in errors."""

    async def run(*args: object) -> T:
        return fn(*args)

    inner = fn.func if isinstance(fn, functools.partial) else fn
    run.__qualname__ = getattr(inner, "__qualname__", run.__qualname__)
    return run


def _step(step: SupportsIndex) -> int:
    if isinstance(step, bool):
        raise UnsupportedValue(f"step must be an int, not a bool ({step!r})")
    try:
        return operator.index(step)
    except TypeError:
        raise UnsupportedValue(
            f"step must be an int, not {type(step).__name__} ({step!r:.40})"
        ) from None


def _next_step(rows: Array[Any] | None) -> int:
    if rows is None or len(rows) == 0:
        return 0
    try:
        last = decode_value(rows[len(rows) - 1])
    except DecodeError:
        return len(rows)
    step = last.get("step") if isinstance(last, dict) else None
    return step + 1 if isinstance(step, int) and not isinstance(step, bool) else len(rows)


def _checked_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UnsupportedValue(f"a {what} must be a non-empty str, not {name!r:.40}")
    return _checked_text(name, max_chars=_MAX_NAME_CHARS)


def _checked_text(text: object, *, max_chars: int | None = None) -> str:
    if not isinstance(text, str):
        raise UnsupportedValue(f"text must be a str, not {type(text).__name__} ({text!r:.40})")
    if max_chars is not None and len(text) > max_chars:
        raise UnsupportedValue(f"{text[:40]!r}... is longer than {max_chars} characters")
    encode_value(text)  # refuses lone surrogates
    return text


def _state_text(state: Mapping[str, Any] | None, key: str) -> str | None:
    value = state.get(key) if state is not None else None
    return value if isinstance(value, str) and value else None


def _default_display_name(peer: PeerId) -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return peer.short()
    host = platform.node()
    return f"{user}@{host}" if host else user
