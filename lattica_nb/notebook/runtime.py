"""The runtime thread: one daemon thread running one event loop that hosts the Node.

A Jupyter kernel's own asyncio loop stops while a cell blocks (``time.sleep``, a training
loop), so the mesh cannot live there. :class:`Runtime` runs ``anyio.run`` (asyncio backend)
on its own thread and hands work in through a :class:`~anyio.from_thread.BlockingPortal`::

    runtime = get_runtime()
    node = runtime.call(runtime.enter, Node(NodeConfig(ephemeral=True)))
    runtime.call(node.ping, peer, timeout_s=10)

``enter`` keeps an async context manager open in a task of the runtime's own task group until
``await runtime.exit(obj)`` or :meth:`Runtime.stop`. This is the only module that owns a thread.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

import anyio
import anyio.abc
from anyio.from_thread import BlockingPortal

from lattica_nb.errors import LatticaError, LocalProtocolError, TimeoutError

__all__ = ["CANCEL_GRACE_S", "Runtime", "get_runtime"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

CANCEL_GRACE_S = 5.0
"""How long ``call`` waits for cancelled work to finish its cleanup before it raises."""


@dataclass(eq=False)
class _Entered:
    """One context manager held open by :meth:`Runtime.enter`."""

    value: object
    close: anyio.Event = field(default_factory=anyio.Event)
    closed: anyio.Event = field(default_factory=anyio.Event)
    error: Exception | None = None


class _Work(Generic[T]):
    """One ``Runtime.call`` in flight; ``cancel`` (on the loop) works even before it starts."""

    def __init__(self, fn: Callable[..., Awaitable[T]], args: tuple[object, ...]) -> None:
        self.fn, self.args = fn, args
        self.finished = threading.Event()
        self._scope: anyio.CancelScope | None = None
        self._cancelled = False

    async def run(self) -> T:
        if self._cancelled:  # cancelled before it started: never call fn
            raise anyio.get_cancelled_exc_class()()
        try:
            with anyio.CancelScope() as self._scope:
                return await self.fn(*self.args)
            raise anyio.get_cancelled_exc_class()()  # reached only when cancel() ran
        finally:
            self.finished.set()

    def cancel(self) -> None:
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()
        else:
            self.finished.set()


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


class Runtime:
    """A daemon thread running one asyncio event loop (via anyio.run) that hosts long-lived
    async objects."""

    def __init__(self, *, name: str = "lattica-nb") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._portal: BlockingPortal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._stop_requested: anyio.Event | None = None
        self._exit_grace_s = 10.0
        self._entered: list[_Entered] = []

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._portal is not None

    @property
    def in_runtime_thread(self) -> bool:
        """True when called from the runtime's own thread."""
        thread = self._thread
        return thread is not None and thread.ident == threading.get_ident()

    def start(self) -> None:
        """Start the thread and return once its loop runs; does nothing if already running."""
        with self._lock:
            if self._portal is not None:
                return
            ready = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(ready,), name=self.name,
                                            daemon=True)
            self._thread.start()
            ready.wait()
            if self._portal is None:
                self._thread.join()
                raise LatticaError(f"the {self.name} runtime thread failed to start; see the log")
            _RUNNING.add(self)
        logger.info("runtime %s started", self.name)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel pending work (its callers raise), exit what was entered (newest first, within
        ``timeout_s``), join the thread. Does nothing if the runtime is not running."""
        if self.in_runtime_thread:
            raise LocalProtocolError(
                "Runtime.stop() was called from the runtime's own thread and would wait for "
                "itself; call it from another thread"
            )
        with self._lock:
            thread, loop, stop_requested = self._thread, self._loop, self._stop_requested
            if thread is None:
                return
            self._exit_grace_s = timeout_s
            with contextlib.suppress(RuntimeError):  # RuntimeError: the loop already ended
                if loop is not None and stop_requested is not None:
                    loop.call_soon_threadsafe(stop_requested.set)
            thread.join(timeout_s + CANCEL_GRACE_S)
            if thread.is_alive():
                logger.warning("runtime %s did not stop within %.1f s", self.name, timeout_s)
            self._thread = None
            self._portal = self._loop = self._tg = self._stop_requested = None
            _RUNNING.discard(self)
        logger.info("runtime %s stopped", self.name)

    def _run(self, ready: threading.Event) -> None:
        try:
            anyio.run(self._main, ready, backend="asyncio")
        except BaseException:
            logger.exception("runtime %s: its event loop crashed", self.name)
        finally:
            if self._thread is threading.current_thread():  # not a thread stop() gave up on
                self._portal = self._loop = self._tg = self._stop_requested = None
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = anyio.Event()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            async with BlockingPortal() as portal:
                self._portal = portal
                ready.set()
                await self._stop_requested.wait()
                self._portal = None  # new calls now fail fast
                await portal.stop(cancel_remaining=True)
            with anyio.move_on_after(self._exit_grace_s):
                for entry in reversed(list(self._entered)):
                    await self._close(entry)
            tg.cancel_scope.cancel()

    # -- handing work in ------------------------------------------------------------------
    def call(self, fn: Callable[..., Awaitable[T]], *args: object,
             timeout_s: float | None = 30.0) -> T:
        """Run ``await fn(*args)`` on the runtime's loop from another thread; return its result.

        Exceptions propagate with their type. On timeout or KeyboardInterrupt the work is
        cancelled on the loop (and given ``CANCEL_GRACE_S`` to clean up) before this raises.
        """
        if self.in_runtime_thread:
            raise LocalProtocolError(
                f"Runtime.call({_name(fn)}) was called from the runtime's own thread, where "
                "waiting would deadlock; use the async form: await the coroutine directly"
            )
        work = _Work(fn, args)
        try:
            future = self.submit(work.run)
            if not concurrent.futures.wait([future], timeout=timeout_s).done:
                raise TimeoutError(
                    f"{_name(fn)} did not finish within {timeout_s} s on the {self.name} "
                    "runtime and was cancelled; pass a larger timeout_s if it needs longer"
                )
        except BaseException:  # the timeout, or KeyboardInterrupt: the user stopped the cell
            self._cancel(work)
            raise
        if future.cancelled():
            raise LatticaError(f"the {self.name} runtime stopped while {_name(fn)} was running")
        return future.result()

    def _cancel(self, work: _Work[T]) -> None:
        try:
            self.call_soon(work.cancel)
        except LocalProtocolError:  # not running: nothing to cancel
            return
        if not work.finished.wait(CANCEL_GRACE_S):
            logger.warning("cancelled %s did not finish within %.1f s", _name(work.fn),
                           CANCEL_GRACE_S)

    def submit(self, fn: Callable[..., Awaitable[T]], *args: object
               ) -> concurrent.futures.Future[T]:
        """Start ``fn(*args)`` on the loop; cancelling the returned future cancels the task."""
        if self.in_runtime_thread:
            raise LocalProtocolError(
                f"Runtime.submit({_name(fn)}) was called from the runtime's own thread; "
                "use the async form there (a task group or await)"
            )
        portal = self._portal
        with contextlib.suppress(RuntimeError):  # RuntimeError: the portal stopped meanwhile
            if portal is not None:
                return portal.start_task_soon(fn, *args, name=_name(fn))
        raise self._not_running()

    def call_soon(self, fn: Callable[..., object], *args: object) -> None:
        """Run the plain callable ``fn(*args)`` on the loop thread soon; does not wait."""
        loop = self._loop
        with contextlib.suppress(RuntimeError):  # RuntimeError: the loop ended
            if loop is not None:
                loop.call_soon_threadsafe(fn, *args)
                return
        raise self._not_running()

    def _not_running(self) -> LocalProtocolError:
        return LocalProtocolError(
            f"the {self.name} runtime is not running; call start() (or use get_runtime())"
        )

    # -- long-lived objects ---------------------------------------------------------------
    async def enter(self, cm: AbstractAsyncContextManager[T]) -> T:
        """Enter ``cm`` in a task of the runtime's task group and keep it open.

        Use as ``runtime.call(runtime.enter, cm)``; it stays open until ``await
        runtime.exit(obj)`` or :meth:`stop`.
        """
        tg = self._tg
        if tg is None or not self.in_runtime_thread:
            raise LocalProtocolError(
                "Runtime.enter() runs on the runtime's loop: use runtime.call(runtime.enter, cm)"
            )
        entry = cast(_Entered, await tg.start(self._host, cm, name=f"enter {_name(type(cm))}"))
        return cast(T, entry.value)

    async def exit(self, obj: object) -> None:
        """Exit the context manager whose entered value is ``obj``; its errors are raised."""
        for entry in self._entered:
            if entry.value is obj:
                await self._close(entry)
                if entry.error is not None:
                    raise entry.error
                return
        raise LocalProtocolError(f"{obj!r} was not entered with Runtime.enter (or has exited)")

    async def _close(self, entry: _Entered) -> None:
        entry.close.set()
        await entry.closed.wait()

    async def _host(self, cm: AbstractAsyncContextManager[object], *,
                    task_status: anyio.abc.TaskStatus[_Entered]) -> None:
        entry: _Entered | None = None
        try:
            async with cm as value:
                entry = _Entered(value)
                self._entered.append(entry)
                task_status.started(entry)
                await entry.close.wait()
        except Exception as exc:
            if entry is None:  # failed to enter: the caller of enter() gets the error
                raise
            entry.error = exc
            if not entry.close.is_set():  # nobody is waiting in exit() to raise it
                logger.error("%r stopped with an error", entry.value, exc_info=exc)
        finally:
            if entry is not None:
                self._entered.remove(entry)
                entry.closed.set()


_RUNNING: weakref.WeakSet[Runtime] = weakref.WeakSet()
_default: Runtime | None = None
_default_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    for runtime in list(_RUNNING):
        runtime.stop()


def get_runtime() -> Runtime:
    """The process-wide default runtime, created and started on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Runtime()
        _default.start()
        return _default
