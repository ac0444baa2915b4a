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
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from lattica_nb.testing.lines import STOP_GRACE_S, ForeignPeerError, LineProcess

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
PROBE_TIMEOUT_S = 30.0


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
        self._lines = LineProcess(argv, name=name, env=env)
        self.argv = self._lines.argv
        self.name = name
        self._ready: PeerReady | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> PeerReady:
        """Start the process and wait for its ready line."""
        self._lines.start()
        line = self._lines.read_line(time.monotonic() + timeout_s, "its ready line")
        try:
            announced = json.loads(line)
            self._ready = PeerReady(
                peer_id=str(announced["peer_id"]),
                listen_addrs=tuple(str(addr) for addr in announced["listen_addrs"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ForeignPeerError(
                f"{self.name} announced {line!r}, not a ready line{self._lines.stderr_note()}"
            ) from exc
        return self._ready

    @property
    def ready(self) -> PeerReady:
        if self._ready is None:
            raise ForeignPeerError(f"{self.name} has not started; call start() first")
        return self._ready

    @property
    def pid(self) -> int:
        return self._lines.pid

    def request(self, command: Mapping[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        """Send one command and return its reply; raise if the peer reports an error."""
        self._lines.write_line(json.dumps(dict(command)))
        what = f"a reply to {command.get('cmd')!r}"
        reply = self._lines.read_object(time.monotonic() + timeout_s, what)
        if not reply.get("ok", False):
            raise ForeignPeerError(
                f"{self.name} could not do {command.get('cmd')!r}: {reply.get('error')}"
            )
        return reply

    def close(self, timeout_s: float = STOP_GRACE_S) -> int | None:
        """Ask the peer to quit; kill it if it has not exited in ``timeout_s``."""
        return self._lines.close(timeout_s)

    def stderr_tail(self) -> str:
        """The last lines the peer wrote to stderr (for diagnostics)."""
        return self._lines.stderr_tail()

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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
