"""A bridge between a room and one plain y-protocols client (Node ``yjs``, y-py, a browser).

A foreign Yjs client knows nothing of envelopes, signatures or rules; it speaks the
y-protocols sync steps. :class:`YjsBridge` (sans-IO, like the :class:`~.room.Room` it serves)
connects one such client to a room's document:

* it sends its own SyncStep1 on :meth:`YjsBridge.start` and answers the client's SyncStep1
  with a SyncStep2 from the room's document;
* the client's SyncStep2 and Update messages are applied to the room's document as *local*
  edits, so the room signs them with its own identity and replicates them;
* every other change of the room's document (a remote envelope, a kernel's edit, another
  bridge) goes to the client as one Update message. The client's own changes never come back.

Messages are y-websocket's: ``varuint(0) || sync message``, where a sync message is
``varuint(step) || varuint(len) || payload`` (step 0 = SyncStep1 carrying a state vector,
1 = SyncStep2 and 2 = Update carrying a Yjs v1 update). pycrdt's ``create_sync_message``
writes the same bytes. Awareness messages (types 1 and 3) are accepted and ignored. Every
incoming message is bounded (:attr:`BridgeConfig.max_message_bytes`) and checked before it
touches the document; a malformed one raises :class:`~lattica_nb.errors.DecodeError` and
leaves the room as it was.

Trust model. The client writes *as the bridge's peer*: its edits are signed by the room's
identity, so the client is exactly as trusted as the kernel that runs the bridge, and the
rules (:mod:`.rules`) judge its edits as that peer's. The bridge checks them first: an edit
the bridge's peer may not make (``params`` when it is not the owner, another author's
``metrics`` rows) is refused here (:class:`ClientUpdateRefused`) and never reaches the
room, which would otherwise keep it while every other peer refuses it. Such an edit stays in
the client's own document, and since Yjs integrates one client's changes in clock order,
none of that client's later edits can apply either (they are held, then refused):
:func:`serve_bridge` therefore disconnects a client on its first refused edit, and the client
must start again from a fresh document. Serve a bridge only to local clients you trust
(:func:`serve_bridge_tcp` listens on loopback only), and let a client sync through one
bridge only: content it got elsewhere would be re-signed as this peer's.

Running one, on the event loop that runs the room's node (all document access happens
there): ``await serve_bridge(driver, stream)`` for one connected byte stream (a socket,
``StapledByteStream(process.stdin, process.stdout)`` of a child process), or
``port = await tg.start(serve_bridge_tcp, driver)`` to accept clients on 127.0.0.1; from a
notebook, ``port = runtime.call(runtime.enter, listen_bridge(driver))``. On the
wire each message is a uvarint length-prefixed frame (:mod:`lattica_nb.wire.framing`);
``tests/interop/yjs_node/yjs_bridge_client.mjs`` is a Node client for it.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from pycrdt import Doc, TransactionEvent

from ..errors import (
    ConfigError,
    DecodeError,
    LatticaError,
    LocalProtocolError,
    MessageTooLarge,
    MissingDependencies,
    PermissionDenied,
    TransportError,
)
from ..wire.framing import FrameReader, frame
from ..wire.varint import decode_uvarint, encode_uvarint
from .driver import RoomDriver
from .room import Room
from .updates import read_state_vector, read_update

__all__ = [
    "SYNC_STEP1",
    "SYNC_STEP2",
    "SYNC_UPDATE",
    "BridgeConfig",
    "BridgeEnded",
    "BridgeEvent",
    "ClientSynced",
    "ClientUpdateHeld",
    "ClientUpdateRefused",
    "YjsBridge",
    "encode_sync_message",
    "listen_bridge",
    "serve_bridge",
    "serve_bridge_tcp",
]

logger = logging.getLogger(__name__)

MESSAGE_SYNC = 0
MESSAGE_AWARENESS = 1
MESSAGE_QUERY_AWARENESS = 3
SYNC_STEP1 = 0
SYNC_STEP2 = 1
SYNC_UPDATE = 2
_EMPTY_UPDATE = b"\x00\x00"
_CLOSE_GRACE_S = 2.0


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """Bounds of one bridged client."""

    max_message_bytes: int = 1 << 20
    """Largest message taken from the client (1 MiB); a larger one raises MessageTooLarge."""
    max_held_updates: int = 64
    """Client updates waiting for changes the room lacks; beyond it the oldest is refused."""
    send_queue_messages: int = 1024
    """Messages queued for the client by :func:`serve_bridge`; a client further behind is
    disconnected (it catches up exactly with the sync steps when it reconnects)."""

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_held_updates", "send_queue_messages"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"BridgeConfig.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, slots=True)
class ClientSynced:
    """The client answered our SyncStep1: everything it had is in the room now."""


@dataclass(frozen=True, slots=True)
class ClientUpdateHeld:
    """A client update builds on changes the room lacks; it is applied once they arrive."""

    reason: str


@dataclass(frozen=True, slots=True)
class ClientUpdateRefused:
    """A client update was not applied: it breaks ``rule`` on ``entry`` (None: not an entry)."""

    entry: str | None
    rule: str
    reason: str


BridgeEvent = ClientSynced | ClientUpdateHeld | ClientUpdateRefused


def encode_sync_message(step: int, payload: bytes) -> bytes:
    """A y-websocket sync message: ``varuint(0) || varuint(step) || varuint(len) || payload``."""
    return encode_uvarint(MESSAGE_SYNC) + encode_uvarint(step) + frame(payload)


class YjsBridge:
    """One plain y-protocols client on a room's document; see the module docs.

    It observes the document from construction until :meth:`close`. Drive it like
    the room: hand in the client's messages (:meth:`receive`), send what
    :meth:`messages_to_send` returns, read :meth:`next_event`, and call
    :meth:`retry_held` when woken (:meth:`set_wakeup`) after the document changed.
    """

    def __init__(self, room: Room, config: BridgeConfig | None = None) -> None:
        self._room = room
        self._doc: Doc[Any] = room.doc
        self._config = config or BridgeConfig()
        self._outbox: list[bytes] = []
        self._events: deque[BridgeEvent] = deque()
        self._held: deque[bytes] = deque()
        self._retry = False
        self._applying = False
        self._synced = False
        self._closed = False
        self._wakeup: Callable[[], None] | None = None
        self._subscription = self._doc.observe(self._on_transaction)

    @property
    def synced(self) -> bool:
        """True once the client answered our SyncStep1."""
        return self._synced

    @property
    def held(self) -> int:
        """Client updates waiting for changes the room lacks."""
        return len(self._held)

    def set_wakeup(self, wakeup: Callable[[], None] | None) -> None:
        """Called (on the room's thread) whenever output, events or held work appear."""
        self._wakeup = wakeup

    def start(self) -> None:
        """Send our SyncStep1 (the room's state vector), as a y-websocket server does."""
        self._send(encode_sync_message(SYNC_STEP1, self._doc.get_state()))

    def close(self) -> None:
        """Stop observing the room's document and drop what was not sent."""
        if not self._closed:
            self._closed = True
            self._doc.unobserve(self._subscription)
            self._outbox.clear()
            self._held.clear()

    # -- output -----------------------------------------------------------------------------

    def messages_to_send(self) -> list[bytes]:
        """y-websocket messages for the client, in order."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> BridgeEvent | None:
        return self._events.popleft() if self._events else None

    # -- input ------------------------------------------------------------------------------

    def receive(self, message: bytes) -> None:
        """Handle one y-websocket message from the client.

        DecodeError (MessageTooLarge when over the bound) if it is malformed; the
        room's document is then unchanged.
        """
        if self._closed:
            raise LocalProtocolError("this bridge is closed; start a new one for the client")
        limit = self._config.max_message_bytes
        if len(message) > limit:
            raise MessageTooLarge(len(message), limit)
        kind, offset = decode_uvarint(message)
        if kind in (MESSAGE_AWARENESS, MESSAGE_QUERY_AWARENESS):
            return  # presence of a bridged client is not carried into the room
        if kind != MESSAGE_SYNC:
            raise DecodeError(
                f"y-websocket message type {kind} is not sync (0) or awareness (1, 3)"
            )
        step, offset = decode_uvarint(message, offset)
        length, offset = decode_uvarint(message, offset)
        payload = bytes(message[offset:])
        if len(payload) != length:
            raise DecodeError(
                f"sync message announces {length} payload bytes but carries {len(payload)}"
            )
        if step == SYNC_STEP1:
            self._answer_step1(payload)
        elif step in (SYNC_STEP2, SYNC_UPDATE):
            self._take(payload, retrying=False)
            if step == SYNC_STEP2 and not self._synced:
                self._synced = True
                self._events.append(ClientSynced())
            self.retry_held()
        else:
            raise DecodeError(f"sync message step {step} is not 0, 1 or 2")
        self._wake()

    def retry_held(self) -> None:
        """Apply the held client updates that the room's document can take now."""
        if not self._retry:
            return
        self._retry = False
        progress = True
        while progress and self._held:
            progress = False
            for _ in range(len(self._held)):
                update = self._held.popleft()
                try:
                    progress |= self._take(update, retrying=True)
                except DecodeError as exc:
                    self._events.append(ClientUpdateRefused(None, "yjs", str(exc)))

    # -- internals --------------------------------------------------------------------------

    def _answer_step1(self, state: bytes) -> None:
        read_state_vector(state)  # DecodeError before pycrdt sees it
        try:
            update = self._doc.get_update(state)
        except ValueError as exc:
            raise DecodeError(f"the client's SyncStep1 has no valid state vector: {exc}") from exc
        self._send(encode_sync_message(SYNC_STEP2, update))

    def _take(self, update: bytes, *, retrying: bool) -> bool:
        """Apply a client update as a local edit if the rules allow; True if applied."""
        if update == _EMPTY_UPDATE:
            return False
        outline = read_update(update)
        policy = self._room.policy
        try:
            if policy is not None:
                policy.check(self._room.peer_id, update, self._doc)
            else:
                missing = outline.unmet(read_state_vector(self._doc.get_state()))
                if missing is not None:
                    raise MissingDependencies(
                        f"it builds on change {missing[1]} of Yjs client {missing[0]}"
                    )
        except MissingDependencies as exc:
            self._hold(update, str(exc), retrying=retrying)
            return False
        except PermissionDenied as exc:
            self._events.append(ClientUpdateRefused(exc.entry, exc.rule, str(exc)))
            return False
        self._applying = True
        try:
            with self._doc.transaction():
                self._doc.apply_update(update)
        except ValueError as exc:
            raise DecodeError(f"the client's update does not apply: {exc}") from exc
        finally:
            self._applying = False
        if self._held:
            self._retry = True  # a held update may build on this one
        return True

    def _hold(self, update: bytes, reason: str, *, retrying: bool) -> None:
        if len(self._held) >= self._config.max_held_updates:
            self._held.popleft()
            self._events.append(ClientUpdateRefused(
                None, "held", "a held client update waited too long for what it builds on"))
        self._held.append(update)
        if not retrying:
            self._events.append(ClientUpdateHeld(reason))

    def _on_transaction(self, event: TransactionEvent) -> None:
        if self._applying:
            return  # the client's own change: never echoed back
        update = bytes(event.update)
        if update == _EMPTY_UPDATE:
            return
        self._send(encode_sync_message(SYNC_UPDATE, update))
        if self._held:
            self._retry = True

    def _send(self, message: bytes) -> None:
        self._outbox.append(message)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup()


# -- the anyio driver --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BridgeEnded:
    """Why :func:`serve_bridge` returned; ``error`` is set when the client broke the protocol."""

    reason: str
    error: LatticaError | None = None


EventHandler = Callable[[BridgeEvent], None]


async def serve_bridge(
    driver: RoomDriver,
    stream: anyio.abc.ByteStream,
    *,
    config: BridgeConfig | None = None,
    on_event: EventHandler | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> BridgeEnded:
    """Bridge one client on ``stream`` into ``driver``'s room until either side ends.

    Runs on the room's event loop; closes ``stream`` on return. A client that sends
    a malformed message, makes an edit the rules refuse, or falls
    :attr:`BridgeConfig.send_queue_messages` behind is disconnected (the room goes
    on); the result says why. ``on_event`` sees every :data:`BridgeEvent`.
    """
    config = config or BridgeConfig()
    bridge = YjsBridge(driver.room, config)
    send, outgoing = anyio.create_memory_object_stream[bytes](config.send_queue_messages)
    kick = anyio.Event()
    ended: list[BridgeEnded] = []

    def finish(result: BridgeEnded, scope: anyio.CancelScope) -> None:
        if not ended:
            ended.append(result)
        scope.cancel()

    def wake() -> None:
        kick.set()

    def flush() -> BridgeEnded | None:
        """Move the bridge's output to the send queue and hand out its events."""
        bridge.retry_held()
        stop: BridgeEnded | None = None
        for message in bridge.messages_to_send():
            try:
                send.send_nowait(frame(message))
            except anyio.WouldBlock:
                stop = BridgeEnded(f"the client fell {config.send_queue_messages} messages "
                                   "behind; it catches up when it reconnects")
                break
        while (event := bridge.next_event()) is not None:
            if isinstance(event, ClientUpdateRefused):
                logger.warning("room %s: bridged client disconnected: %s", driver.name,
                               event.reason)
                error = PermissionDenied(event.reason, entry=event.entry, rule=event.rule)
                stop = stop or BridgeEnded(
                    f"a client edit was refused ({event.reason}); its later edits cannot "
                    "apply after it in Yjs order: restart the client from a fresh document",
                    error,
                )
            else:
                logger.debug("room %s: bridge: %s", driver.name, event)
            if on_event is not None:
                try:
                    on_event(event)
                except Exception:  # a handler's bug must not end the bridge
                    logger.exception("room %s: bridge event handler failed", driver.name)
        return stop

    async def pump(scope: anyio.CancelScope) -> None:
        nonlocal kick
        while True:
            await kick.wait()
            kick = anyio.Event()
            stop = flush()
            if stop is not None:
                finish(stop, scope)
                return

    async def send_loop(scope: anyio.CancelScope) -> None:
        try:
            async with outgoing:
                async for data in outgoing:
                    await stream.send(data)
        except (TransportError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            finish(BridgeEnded(f"sending to the client failed: {exc}"), scope)

    async def watch_room(scope: anyio.CancelScope) -> None:
        await driver.stopped.wait()
        finish(BridgeEnded("the room was closed"), scope)

    bridge.set_wakeup(wake)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump, tg.cancel_scope)
            tg.start_soon(send_loop, tg.cancel_scope)
            tg.start_soon(watch_room, tg.cancel_scope)
            bridge.start()
            task_status.started()
            reader = FrameReader(stream, max_bytes=config.max_message_bytes)
            try:
                while (data := await reader.read_or_none()) is not None:
                    bridge.receive(data)
                finish(BridgeEnded("the client closed the connection"), tg.cancel_scope)
            except DecodeError as exc:
                logger.warning("room %s: bridged client sent a malformed message: %s",
                               driver.name, exc)
                finish(BridgeEnded(f"the client sent a malformed message: {exc}", exc),
                       tg.cancel_scope)
            except (TransportError, anyio.BrokenResourceError,
                    anyio.ClosedResourceError) as exc:
                finish(BridgeEnded(f"the connection failed: {exc}"), tg.cancel_scope)
    finally:
        bridge.close()
        send.close()
        outgoing.close()
        with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
            await stream.aclose()
    return ended[0] if ended else BridgeEnded("the bridge was stopped")


async def serve_bridge_tcp(
    driver: RoomDriver,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config: BridgeConfig | None = None,
    on_event: EventHandler | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Accept bridged clients on ``host``:``port`` (loopback only) until the room closes.

    ``task_status.started`` gets the port listened on (``port=0`` picks a free one).
    Each connection gets its own :class:`YjsBridge`.
    """
    if host != "localhost" and not _is_loopback(host):
        raise ConfigError(
            f"a bridge listens on a loopback address only (a client writes as this peer); "
            f"got {host!r}: use 127.0.0.1 or ::1"
        )
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise TransportError(f"could not listen for bridged clients on {host}:{port}: {exc}"
                             ) from exc

    async def handle(stream: anyio.abc.SocketStream) -> None:
        result = await serve_bridge(driver, stream, config=config, on_event=on_event)
        logger.info("room %s: bridged client left: %s", driver.name, result.reason)

    async with listener, anyio.create_task_group() as tg:
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
        tg.start_soon(listener.serve, handle, tg)
        await driver.stopped.wait()
        tg.cancel_scope.cancel()


@asynccontextmanager
async def listen_bridge(
    driver: RoomDriver,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config: BridgeConfig | None = None,
    on_event: EventHandler | None = None,
) -> AsyncIterator[int]:
    """:func:`serve_bridge_tcp` as a context manager: yields the port, stops on exit.

    From a notebook cell: ``port = runtime.call(runtime.enter, listen_bridge(driver))``.
    """
    async with anyio.create_task_group() as tg:
        serve = functools.partial(serve_bridge_tcp, driver, host=host, port=port,
                                  config=config, on_event=on_event)
        yield await tg.start(serve)
        tg.cancel_scope.cancel()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

