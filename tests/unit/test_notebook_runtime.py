"""The notebook runtime thread: calls in from other threads, timeouts, entered objects, nodes.

Real threads and a real event loop. Readiness is waited for on events and futures with
deadlines, never by sleeping; the one ``time.sleep`` below is the behaviour under test (the
runtime's loop keeps going while the calling thread blocks, as a Jupyter cell does).
"""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from collections.abc import Iterator
from types import TracebackType

import anyio
import pytest

from lattica_nb import Node, NodeConfig
from lattica_nb.errors import LatticaError, LocalProtocolError, TimeoutError
from lattica_nb.notebook.runtime import Runtime, get_runtime

pytestmark = pytest.mark.timeout(30)

WAIT_S = 10.0


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(name="test-runtime")
    rt.start()
    yield rt
    rt.stop()


class Resource:
    """An async context manager that records its enter and exit."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def __aenter__(self) -> Resource:
        await anyio.lowlevel.checkpoint()
        self.log.append(f"enter {self.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.lowlevel.checkpoint()
        self.log.append(f"exit {self.name}")


async def add(a: int, b: int) -> int:
    await anyio.lowlevel.checkpoint()
    return a + b


async def fail() -> None:
    await anyio.lowlevel.checkpoint()
    raise KeyError("missing")


def test_call_returns_the_result(runtime: Runtime) -> None:
    assert runtime.is_running
    assert runtime.call(add, 2, 3) == 5


def test_call_raises_the_coroutine_error_and_the_loop_survives(runtime: Runtime) -> None:
    other = runtime.submit(anyio.sleep_forever)
    with pytest.raises(KeyError, match="missing"):
        runtime.call(fail)
    assert runtime.call(add, 1, 1) == 2
    assert not other.done()  # a failing task leaves the other tasks running
    other.cancel()


def test_a_crashing_entered_object_leaves_the_runtime_running(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    exited = threading.Event()

    class Crashes:
        async def __aenter__(self) -> Crashes:
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
            self._tg.start_soon(fail)
            return self

        async def __aexit__(self, *exc_info: object) -> bool | None:
            try:
                return await self._tg.__aexit__(None, None, None)
            finally:
                exited.set()

    crashes = runtime.call(runtime.enter, Crashes())
    assert exited.wait(WAIT_S)
    assert runtime.call(add, 2, 2) == 4
    assert runtime.is_running
    with pytest.raises(LocalProtocolError, match="not entered"):
        runtime.call(runtime.exit, crashes)  # it has already exited
    assert any("stopped with an error" in r.getMessage() for r in caplog.records)


def test_keyboard_interrupt_cancels_the_work(runtime: Runtime) -> None:
    """A user pressing stop in Jupyter: SIGINT reaches the main thread waiting in call()."""
    cancelled = threading.Event()

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    async def hang() -> None:
        try:
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            runtime.call(hang, timeout_s=WAIT_S)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert cancelled.is_set()  # call() waited for the cancelled work to clean up
    assert runtime.call(add, 1, 2) == 3


def test_loop_runs_while_the_calling_thread_blocks(runtime: Runtime) -> None:
    ticks = 0

    async def count() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    future = runtime.submit(count)
    before = ticks
    time.sleep(0.3)  # a cell blocking the kernel: the runtime's loop must not stop
    assert ticks - before >= 5
    future.cancel()


def test_timeout_cancels_the_work(runtime: Runtime) -> None:
    started = threading.Event()
    cancelled = threading.Event()

    async def hang() -> None:
        try:
            started.set()
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    with pytest.raises(TimeoutError, match=r"hang did not finish within 0\.2 s"):
        runtime.call(hang, timeout_s=0.2)
    assert started.is_set()
    assert cancelled.is_set()  # call() waited for the cancelled work to clean up
    assert runtime.call(add, 1, 2) == 3


def test_call_from_the_runtime_thread_is_refused(runtime: Runtime) -> None:
    async def nested() -> int:
        assert runtime.in_runtime_thread
        return runtime.call(add, 1, 2)

    assert not runtime.in_runtime_thread
    with pytest.raises(LocalProtocolError, match="async form"):
        runtime.call(nested)


def test_submit_cancel_cancels_the_task(runtime: Runtime) -> None:
    started = threading.Event()
    cancelled = threading.Event()

    async def hang() -> None:
        try:
            started.set()
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    future = runtime.submit(hang)
    assert started.wait(WAIT_S)
    assert future.cancel()
    assert cancelled.wait(WAIT_S)


def test_call_soon_runs_on_the_runtime_thread(runtime: Runtime) -> None:
    ran_in: list[bool] = []
    done = threading.Event()

    def record() -> None:
        ran_in.append(runtime.in_runtime_thread)
        done.set()

    runtime.call_soon(record)
    assert done.wait(WAIT_S)
    assert ran_in == [True]


def test_enter_keeps_objects_open_until_stop() -> None:
    log: list[str] = []
    runtime = Runtime(name="test-enter")
    runtime.start()
    try:
        first = runtime.call(runtime.enter, Resource("a", log))
        second = runtime.call(runtime.enter, Resource("b", log))
        third = runtime.call(runtime.enter, Resource("c", log))
        assert runtime.call(add, 1, 1) == 2  # still open across other calls
        assert log == ["enter a", "enter b", "enter c"]
        runtime.call(runtime.exit, second)
        assert log[-1] == "exit b"
        with pytest.raises(LocalProtocolError, match="not entered"):
            runtime.call(runtime.exit, second)
        assert (first.name, third.name) == ("a", "c")
    finally:
        runtime.stop()
    assert log[-2:] == ["exit c", "exit a"]  # newest first


def test_enter_outside_the_runtime_is_refused(runtime: Runtime) -> None:
    async def enter_here() -> None:
        await runtime.enter(Resource("x", []))

    with pytest.raises(LocalProtocolError, match=r"runtime\.call\(runtime\.enter"):
        anyio.run(enter_here)


def test_stop_makes_pending_calls_raise_and_is_idempotent() -> None:
    runtime = Runtime(name="test-stop")
    runtime.start()
    started = threading.Event()

    async def hang() -> None:
        started.set()
        await anyio.sleep_forever()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(runtime.call, hang, timeout_s=None)
        assert started.wait(WAIT_S)
        runtime.stop()
        with pytest.raises(LatticaError, match="stopped while"):
            pending.result(WAIT_S)
    assert not runtime.is_running
    runtime.stop()
    with pytest.raises(LocalProtocolError, match="not running"):
        runtime.call(add, 1, 1)


def test_restart_after_stop() -> None:
    runtime = Runtime(name="test-restart")
    runtime.start()
    runtime.start()  # idempotent
    threads: list[str] = []

    async def thread_name() -> str:
        return threading.current_thread().name

    threads.append(runtime.call(thread_name))
    runtime.stop()
    runtime.start()
    try:
        assert runtime.call(add, 2, 2) == 4
        threads.append(runtime.call(thread_name))
    finally:
        runtime.stop()
    assert threads == ["test-restart", "test-restart"]
    assert not any(t.name == "test-restart" for t in threading.enumerate())


def test_get_runtime_is_one_running_runtime() -> None:
    runtime = get_runtime()
    assert runtime is get_runtime()
    assert runtime.is_running
    assert runtime.call(add, 3, 4) == 7


def test_nodes_in_the_runtime_ping_from_the_main_thread(runtime: Runtime) -> None:
    node_a = runtime.call(runtime.enter, Node(NodeConfig(ephemeral=True)))
    node_b = runtime.call(runtime.enter, Node(NodeConfig(ephemeral=True)))
    addr = str(node_b.listen_addrs[0].with_peer_id(node_b.peer_id))
    info = runtime.call(node_a.connect, addr)
    assert info.peer_id == node_b.peer_id
    rtts = runtime.call(node_a.ping, node_b.peer_id)
    assert len(rtts) == 1 and rtts[0] >= 0
