"""A child process spoken to in JSON lines on stdin/stdout (tests and benchmarks).

:class:`LineProcess` is the plumbing the foreign-peer drivers share
(:mod:`.foreign_peers`, :mod:`.yjs_peers`): start the program with piped
stdin/stdout and stderr kept in a temporary file, write one line, read one
line or one JSON object before a deadline (never a sleep), and stop it by
sending ``{"cmd": "quit"}`` and closing its stdin, killing it if it outlives
the grace period. Errors name the process and end with the tail of its stderr.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from lattica_nb.errors import LatticaError, TimeoutError

__all__ = ["STDERR_TAIL_BYTES", "STOP_GRACE_S", "ForeignPeerError", "LineProcess"]

STDERR_TAIL_BYTES = 2000
STOP_GRACE_S = 10.0
_QUIT_LINE = b'{"cmd": "quit"}\n'


class ForeignPeerError(LatticaError):
    """A foreign peer process failed, refused a command or broke the line protocol."""


class LineProcess:
    """One child process and its line pipes; see the module docs."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        if not argv:
            raise ValueError(f"{name} needs a command line (argv is empty)")
        self.argv = list(argv)
        self.name = name
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._selector: selectors.DefaultSelector | None = None
        self._buffer = b""

    @property
    def started(self) -> bool:
        return self._proc is not None

    @property
    def pid(self) -> int:
        return self._require().pid

    def start(self) -> None:
        if self._proc is not None:
            raise ForeignPeerError(f"{self.name} was already started")
        self._stderr = tempfile.TemporaryFile(prefix=f"{self.name}-stderr-")
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=self._env,
                cwd=self._cwd,
                bufsize=0,
            )
        except OSError as exc:
            self._stderr.close()
            raise ForeignPeerError(f"could not start {self.name} ({self.argv}): {exc}") from exc
        if self._proc.stdout is None:  # pragma: no cover - Popen with PIPE always has it
            raise ForeignPeerError(f"{self.name}: no stdout pipe")
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._proc.stdout, selectors.EVENT_READ)

    def write_line(self, line: str) -> None:
        proc = self._require()
        if proc.stdin is None:  # pragma: no cover - Popen with PIPE always has it
            raise ForeignPeerError(f"{self.name}: no stdin pipe")
        try:
            proc.stdin.write(line.encode("utf-8") + b"\n")
            proc.stdin.flush()
        except OSError as exc:
            raise ForeignPeerError(
                f"{self.name} stopped reading input ({exc}){self.stderr_note()}"
            ) from exc

    def read_line(self, deadline: float, waiting_for: str) -> str:
        """The next line, before ``deadline`` (``time.monotonic()``)."""
        proc, selector = self._require(), self._selector
        if proc.stdout is None or selector is None:  # pragma: no cover - set by start()
            raise ForeignPeerError(f"{self.name} has not started; call start() first")
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.name} did not send {waiting_for} in time{self.stderr_note()}"
                )
            if not selector.select(remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                code = proc.wait(timeout=STOP_GRACE_S)
                raise ForeignPeerError(
                    f"{self.name} exited (code {code}) before sending {waiting_for}"
                    f"{self.stderr_note()}"
                )
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def read_object(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        """The next line as a JSON object (ForeignPeerError for anything else)."""
        line = self.read_line(deadline, waiting_for)
        try:
            parsed = json.loads(line)
        except ValueError as exc:
            raise ForeignPeerError(f"{self.name} wrote {line!r}, not JSON") from exc
        if not isinstance(parsed, dict):
            raise ForeignPeerError(f"{self.name} wrote {line!r}, not a JSON object")
        return parsed

    def close(self, timeout_s: float = STOP_GRACE_S) -> int | None:
        """Send quit and close stdin; kill the process if it outlives ``timeout_s``."""
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.stdin is not None:
                try:
                    if proc.poll() is None:
                        proc.stdin.write(_QUIT_LINE)
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
            if self._stderr is not None:
                self._stderr.close()
            self._proc = None

    def stderr_tail(self) -> str:
        """The last lines the process wrote to stderr (for diagnostics)."""
        if self._stderr is None or self._stderr.closed:
            return ""
        self._stderr.flush()
        size = self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, size - STDERR_TAIL_BYTES))
        return self._stderr.read().decode("utf-8", "replace")

    def stderr_note(self) -> str:
        tail = self.stderr_tail().strip()
        return f"; its stderr ends with:\n{tail}" if tail else ""

    def _require(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise ForeignPeerError(f"{self.name} has not started; call start() first")
        return self._proc
