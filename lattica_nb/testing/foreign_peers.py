"""Drive independently written libp2p peers (Lattica SDK, py-libp2p) as processes.

The peer programs live in ``tests/interop/peers/``. Each prints one JSON line
when it listens, ``{"peer_id": ..., "listen_addrs": [...]}``, then answers
JSON-line commands on stdin with one JSON reply line each (``{"ok": true, ...}``
or ``{"ok": false, "error": ...}``). :class:`PeerProcess` starts one, waits for
that line (never a sleep), sends commands with a deadline each, and stops it:

    with PeerProcess([python, "lattica_peer.py"]) as peer:
        ready = peer.start(timeout_s=30)
        reply = peer.request({"cmd": "peers"}, timeout_s=5)

Waiting uses ``selectors`` on the child's stdout pipe, so a peer that hangs
costs its deadline, not the test run. The child's stderr goes to a temporary
file whose tail is quoted in every error.

py-libp2p pins versions that clash with ours, so it lives in its own
virtualenv; :func:`find_pylibp2p_python` finds that interpreter.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import selectors
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from lattica_nb.errors import LatticaError, TimeoutError

__all__ = [
    "PYLIBP2P_PYTHON_ENV",
    "ForeignPeerError",
    "PeerProcess",
    "PeerReady",
    "find_pylibp2p_python",
    "lattica_sdk_unavailable",
    "pylibp2p_unavailable",
]

PYLIBP2P_PYTHON_ENV = "LATTICA_NB_PYLIBP2P_PYTHON"
"""Environment variable naming the python of a virtualenv with ``libp2p`` installed."""

PYLIBP2P_VERSION = "0.8.1"
STDERR_TAIL_BYTES = 2000
STOP_GRACE_S = 10.0
PROBE_TIMEOUT_S = 30.0


class ForeignPeerError(LatticaError):
    """A foreign peer process failed, exited, or answered a command with an error."""


@dataclass(frozen=True, slots=True)
class PeerReady:
    """What a peer process announced when it started listening."""

    peer_id: str
    listen_addrs: tuple[str, ...]

    def addr(self, transport: str) -> str:
        """The first listen address containing ``transport`` (``"quic-v1"``, ``"tcp"``)."""
        for addr in self.listen_addrs:
            if f"/{transport}/" in addr + "/":
                return addr
        raise ForeignPeerError(
            f"peer {self.peer_id} has no {transport} address: {self.listen_addrs}"
        )


class PeerProcess:
    """One foreign peer process speaking the JSON-line control protocol."""

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, name: str = "peer"
    ) -> None:
        if not argv:
            raise ValueError("PeerProcess needs a command line (argv is empty)")
        self.argv = list(argv)
        self.name = name
        self._env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._selector: selectors.DefaultSelector | None = None
        self._buffer = b""
        self._ready: PeerReady | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> PeerReady:
        """Start the process and wait for its ready line."""
        if self._proc is not None:
            raise ForeignPeerError(f"{self.name} was already started")
        self._stderr = tempfile.TemporaryFile(prefix=f"{self.name}-stderr-")
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=self._env,
            bufsize=0,
        )
        if self._proc.stdout is None:  # pragma: no cover - Popen with PIPE always has it
            raise ForeignPeerError(f"{self.name}: no stdout pipe")
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._proc.stdout, selectors.EVENT_READ)
        line = self._read_line(time.monotonic() + timeout_s, "its ready line")
        try:
            announced = json.loads(line)
            self._ready = PeerReady(
                peer_id=str(announced["peer_id"]),
                listen_addrs=tuple(str(addr) for addr in announced["listen_addrs"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ForeignPeerError(
                f"{self.name} announced {line!r}, not a ready line{self._stderr_note()}"
            ) from exc
        return self._ready

    @property
    def ready(self) -> PeerReady:
        if self._ready is None:
            raise ForeignPeerError(f"{self.name} has not started; call start() first")
        return self._ready

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ForeignPeerError(f"{self.name} has not started; call start() first")
        return self._proc.pid

    def request(self, command: Mapping[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        """Send one command and return its reply; raise if the peer reports an error."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise ForeignPeerError(f"{self.name} has not started; call start() first")
        try:
            proc.stdin.write(json.dumps(dict(command)).encode("utf-8") + b"\n")
            proc.stdin.flush()
        except OSError as exc:
            raise ForeignPeerError(
                f"{self.name} stopped reading commands ({exc}){self._stderr_note()}"
            ) from exc
        line = self._read_line(time.monotonic() + timeout_s, f"a reply to {command.get('cmd')!r}")
        try:
            reply = json.loads(line)
        except ValueError as exc:
            raise ForeignPeerError(f"{self.name} replied {line!r}, not JSON") from exc
        if not isinstance(reply, dict):
            raise ForeignPeerError(f"{self.name} replied {line!r}, not a JSON object")
        if not reply.get("ok", False):
            raise ForeignPeerError(
                f"{self.name} could not do {command.get('cmd')!r}: {reply.get('error')}"
            )
        return reply

    def close(self, timeout_s: float = STOP_GRACE_S) -> int | None:
        """Ask the peer to quit; kill it if it has not exited in ``timeout_s``."""
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.write(b'{"cmd": "quit"}\n')
                    proc.stdin.flush()
                    proc.stdin.close()
                except OSError:
                    pass
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout_s)
            return proc.returncode
        finally:
            if self._selector is not None:
                self._selector.close()
            if proc.stdout is not None:
                proc.stdout.close()
            if proc.stdin is not None and not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            if self._stderr is not None:
                self._stderr.close()
            self._proc = None

    def stderr_tail(self) -> str:
        """The last lines the peer wrote to stderr (for diagnostics)."""
        if self._stderr is None or self._stderr.closed:
            return ""
        self._stderr.flush()
        size = self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, size - STDERR_TAIL_BYTES))
        return self._stderr.read().decode("utf-8", "replace")

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------
    def _read_line(self, deadline: float, waiting_for: str) -> str:
        proc, selector = self._proc, self._selector
        if proc is None or proc.stdout is None or selector is None:
            raise ForeignPeerError(f"{self.name} has not started; call start() first")
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.name} did not send {waiting_for} in time{self._stderr_note()}"
                )
            if not selector.select(remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                code = proc.wait(timeout=STOP_GRACE_S)
                raise ForeignPeerError(
                    f"{self.name} exited (code {code}) before sending {waiting_for}"
                    f"{self._stderr_note()}"
                )
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def _stderr_note(self) -> str:
        tail = self.stderr_tail().strip()
        return f"; its stderr ends with:\n{tail}" if tail else ""


# -- availability of the foreign implementations -------------------------------------------
def _pylibp2p_candidates() -> list[Path]:
    repo_root = Path(__file__).resolve().parents[2]
    return [
        repo_root / ".venv-pylibp2p" / "bin" / "python",
        Path.cwd() / ".venv-pylibp2p" / "bin" / "python",
        Path("/tmp/p2pvenv/bin/python"),
    ]


def find_pylibp2p_python() -> Path | None:
    """The python of a virtualenv with py-libp2p, or ``None``.

    ``$LATTICA_NB_PYLIBP2P_PYTHON`` wins when set (and is then the only
    candidate); otherwise ``.venv-pylibp2p/bin/python`` in the repository (what
    ``.ci/run`` creates) or in the working directory, then ``/tmp/p2pvenv``.
    """
    configured = os.environ.get(PYLIBP2P_PYTHON_ENV)
    candidates = [Path(configured)] if configured else _pylibp2p_candidates()
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@functools.cache
def _probe_pylibp2p(python: Path) -> str | None:
    probe = "import importlib.metadata as m, libp2p, trio; print(m.version('libp2p'))"
    try:
        done = subprocess.run(
            [str(python), "-c", probe],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} could not run: {exc}"
    if done.returncode != 0:
        return f"{python} cannot import libp2p: {done.stderr.strip()[-300:]}"
    version = done.stdout.strip()
    if version != PYLIBP2P_VERSION:
        return f"{python} has libp2p {version}; the harness targets {PYLIBP2P_VERSION}"
    return None


def pylibp2p_unavailable() -> str | None:
    """``None`` if a py-libp2p virtualenv is usable here, else why not."""
    python = find_pylibp2p_python()
    if python is None:
        configured = os.environ.get(PYLIBP2P_PYTHON_ENV)
        if configured:
            return f"${PYLIBP2P_PYTHON_ENV}={configured} is not an executable file"
        tried = ", ".join(str(path) for path in _pylibp2p_candidates())
        return (
            f"no py-libp2p virtualenv (tried {tried}); run .ci/run or set "
            f"${PYLIBP2P_PYTHON_ENV} to a python with libp2p=={PYLIBP2P_VERSION}"
        )
    return _probe_pylibp2p(python)


def lattica_sdk_unavailable() -> str | None:
    """``None`` if the Lattica SDK can be imported here, else why not."""
    # find_spec, not import: the SDK's native module is large, and only the
    # peer scripts (inside a namespace) should load it.
    if importlib.util.find_spec("lattica") is None:
        return "the Lattica SDK is not installed; pip install -e '.[interop]'"
    return None
