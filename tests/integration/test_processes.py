"""Three `lattica-nb node` processes and a `lattica-nb ping` process on 127.0.0.1."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WAIT_S = 20.0


class NodeProcess:
    """A `lattica-nb node` child whose stdout lines are read by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lattica_nb.cli", "node", "--ephemeral", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.peer_id = self.expect("peer id: ").split(": ", 1)[1]
        self.addr = self.expect("listening: ").split(": ", 1)[1]

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str, *, containing: str = "") -> str:
        """The next stdout line starting with ``prefix`` (and containing ``containing``)."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT_S)
            except queue.Empty:
                raise AssertionError(
                    f"no line {prefix!r}…{containing!r} within {WAIT_S}s; saw {self.seen}"
                ) from None
            self.seen.append(line)
            if line.startswith(prefix) and containing in line:
                return line

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for node in reversed(started):
        node.stop()


def test_three_processes_meet_identify_and_part(nodes):
    a = NodeProcess()
    nodes.append(a)
    b = NodeProcess("--bootstrap", a.addr)
    nodes.append(b)
    c = NodeProcess("--bootstrap", a.addr)
    nodes.append(c)
    for joiner in (b, c):
        line = joiner.expect("identified: ", containing=a.peer_id)
        assert "agent=lattica-nb/" in line and "/ipfs/ping/1.0.0" in line
        a.expect("identified: ", containing=joiner.peer_id)

    ping = subprocess.run(
        [sys.executable, "-m", "lattica_nb.cli", "ping", a.addr, "--count", "3"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout.count("rtt: ") == 3
    assert f"connected to {a.peer_id}" in ping.stdout

    assert b.stop() == 130 or b.proc.returncode in (0, 130, -signal.SIGINT)
    line = a.expect("disconnected: ", containing=b.peer_id)
    assert b.peer_id in line


def test_unreachable_bootstrap_is_reported_and_node_stays_up(nodes):
    from lattica_nb.identity import PeerId, PrivateKey

    nobody = PeerId.from_public_key(PrivateKey.generate().public_key)
    a = NodeProcess("--bootstrap", f"/ip4/127.0.0.1/udp/9/quic-v1/p2p/{nobody}")
    nodes.append(a)
    b = NodeProcess("--bootstrap", a.addr)
    nodes.append(b)
    a.expect("identified: ", containing=b.peer_id)
    assert a.proc.poll() is None


def test_bad_arguments_exit_with_a_clear_message():
    run = subprocess.run(
        [sys.executable, "-m", "lattica_nb.cli", "node", "--ephemeral",
         "--bootstrap", "/ip4/127.0.0.1/udp/1/quic-v1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 1
    assert "/p2p/" in run.stderr and "Traceback" not in run.stderr


def test_the_readme_demo_runs_a_dht_mesh_and_stops_cleanly():
    run = subprocess.run([sys.executable, "-m", "lattica_nb.cli", "demo"], capture_output=True,
                         text=True, timeout=90, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert "peer 2 got it back: b'hello from peer 1'" in out
    provider_line = next(line for line in out.splitlines() if "provides 'demo/model'" in line)
    provider = provider_line.split(": ", 1)[1].split(" ")[0]
    assert provider_line.endswith(f"(peer 1 is {provider})")
    assert "peer 2 sees params {'lr': 0.001} and 3 runs, every row signed by its author" in out
    assert out.rstrip().endswith("all peers stopped cleanly")


def test_a_cli_node_is_a_dht_bootstrap_for_cli_dht_operations(nodes):
    boot = NodeProcess()
    nodes.append(boot)
    boot.expect("dht: server mode")
    args = [sys.executable, "-m", "lattica_nb.cli", "dht"]
    put = subprocess.run([*args, "put", "sweep/lr", "0.01", "--bootstrap", boot.addr],
                         capture_output=True, text=True, timeout=60, check=False)
    assert put.returncode == 0 and "stored 'sweep/lr' on 1 peers" in put.stdout, put.stderr
    get = subprocess.run([*args, "get", "sweep/lr", "--bootstrap", boot.addr],
                         capture_output=True, text=True, timeout=60, check=False)
    assert get.returncode == 0 and get.stdout.strip().endswith("0.01"), get.stderr
