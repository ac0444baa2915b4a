"""Run commands inside a fresh network namespace that has nothing but loopback.

Foreign peers that talk to the outside world on their own (the Lattica SDK sends
STUN requests to public servers whenever a node is built) run only in such a
namespace: there is no route out, so every packet stays on 127.0.0.0/8.

    reason = loopback_namespace_available()
    if reason is not None:
        pytest.skip(reason)
    subprocess.run(netns_command([sys.executable, "driver.py"]), timeout=60)

``netns_command`` wraps argv as ``unshare --net -- sh -c '<ip> link set lo up
&& exec "$@"' sh argv...``: argv reaches ``exec`` as positional parameters, so
no element of it is ever parsed by the shell. ``unshare`` without ``--fork``
execs in place, so the pid ``subprocess.Popen`` reports is the pid of the
wrapped program, inside the namespace; ``netns_join_command(pid, argv)`` runs
another program in that same namespace.

Needs root (or CAP_SYS_ADMIN), util-linux ``unshare`` and iproute2 ``ip``.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys

__all__ = [
    "loopback_namespace_available",
    "netns_command",
    "netns_join_command",
    "run_in_loopback_namespace",
]

PROBE_TIMEOUT_S = 10.0
"""How long the one-off probe of ``loopback_namespace_available`` may take."""

_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def _find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in _SBIN_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _require_tool(name: str) -> str:
    path = _find_tool(name)
    if path is None:
        raise FileNotFoundError(
            f"{name!r} not found; install {'util-linux' if name != 'ip' else 'iproute2'}"
        )
    return path


def netns_command(argv: list[str]) -> list[str]:
    """Return a command line that runs ``argv`` in a new loopback-only namespace.

    The namespace has one interface, ``lo``, brought up before ``argv`` starts;
    it disappears when the last process in it exits.
    """
    if not argv:
        raise ValueError("netns_command needs a program to run (argv is empty)")
    unshare = _require_tool("unshare")
    ip = _require_tool("ip")
    script = f'{shlex.quote(ip)} link set lo up && exec "$@"'
    return [unshare, "--net", "--", "sh", "-c", script, "sh", *argv]


def netns_join_command(pid: int, argv: list[str]) -> list[str]:
    """Return a command line that runs ``argv`` in the network namespace of ``pid``.

    Use it to start a second process next to one started with
    :func:`netns_command` (its ``Popen.pid`` is inside the namespace).
    """
    if not argv:
        raise ValueError("netns_join_command needs a program to run (argv is empty)")
    nsenter = _require_tool("nsenter")
    return [nsenter, f"--net=/proc/{pid}/ns/net", "--", *argv]


def run_in_loopback_namespace(
    argv: list[str], *, timeout_s: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a fresh loopback-only namespace and collect its output.

    The program gets its own process group; if it has not finished after
    ``timeout_s`` (or the caller is interrupted) the whole group — the program
    and every peer it started — is killed while the program's pid still names
    it, and :class:`subprocess.TimeoutExpired` is raised. A program that
    finishes stops its own peers (peer scripts exit when their stdin closes).
    """
    proc = subprocess.Popen(
        netns_command(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        raise
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _kill_group(pgid: int) -> None:
    # Called only while the group leader is alive or unreaped, so the id is ours.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@functools.cache
def loopback_namespace_available() -> str | None:
    """Return ``None`` if loopback-only namespaces work here, else why not.

    The answer is probed once per process: a namespace is made and the probe
    checks that ``lo`` is the only interface in it and carries a datagram.
    """
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "making a network namespace needs root (run the tests as root)"
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2")):
        if _find_tool(tool) is None:
            return f"{tool!r} not found; install {package}"
    probe = [sys.executable, "-c", _PROBE]
    try:
        done = subprocess.run(
            netns_command(probe),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not make a network namespace: {exc}"
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip())[-300:]
        return f"could not make a loopback-only network namespace: {detail}"
    if done.stdout.strip() != "lo up":
        return f"the new network namespace is not loopback-only: {done.stdout.strip()!r}"
    return None


# Runs inside the probe namespace: lists the interfaces of this namespace
# (/proc/net/dev follows the caller's namespace; /sys/class/net would not) and
# sends one UDP datagram to itself over 127.0.0.1 to show lo is up.
_PROBE = """
import socket
names = [line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(2.0)
sock.bind(("127.0.0.1", 0))
sock.sendto(b"probe", sock.getsockname())
state = "up" if sock.recv(16) == b"probe" else "down"
print(" ".join(names), state)
"""
