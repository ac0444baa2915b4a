"""The kernel's default node: one Node per process, hosted by the default runtime.

``lattica_nb.experiment("sweep")`` (and later the ``%lattica`` magics) use
the node :func:`default_node` starts on first use:

* it listens on 127.0.0.1 (QUIC and TCP, ``NodeConfig``'s default);
* it connects to the bootstrap peers passed in, else to those of
  ``$LATTICA_NB_BOOTSTRAP`` (comma-separated multiaddrs ending in ``/p2p/<peer id>``);
* it keeps rooms in ``$XDG_DATA_HOME/lattica-nb/rooms`` (default
  ``~/.local/share/lattica-nb/rooms``), so a restarted kernel finds them again;
* its identity is the key file of ``NodeConfig`` (created on first use),
  or a fresh key that is never written when ``LATTICA_NB_EPHEMERAL=1``.

:func:`shutdown` stops it (the runtime thread keeps running).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..config import NodeConfig
from ..errors import ConfigError, DialError, LatticaError, LocalProtocolError, MultiaddrError
from ..identity import PeerId
from ..multiaddr import Multiaddr
from ..node import Node
from ..sync.config import SyncConfig
from ..sync.experiment import Experiment
from .runtime import Runtime, get_runtime

__all__ = [
    "ENV_BOOTSTRAP",
    "ENV_EPHEMERAL",
    "default_data_dir",
    "default_node",
    "experiment",
    "shutdown",
]

ENV_BOOTSTRAP = "LATTICA_NB_BOOTSTRAP"
"""Comma-separated bootstrap multiaddrs used when none are passed."""
ENV_EPHEMERAL = "LATTICA_NB_EPHEMERAL"
"""``1`` (or ``true``/``yes``): the default node uses a fresh key that is never written."""
_CONNECT_MARGIN_S = 5.0


@dataclass(frozen=True, slots=True)
class _Session:
    runtime: Runtime
    node: Node
    data_dir: Path


_lock = threading.Lock()
_session: _Session | None = None


def default_data_dir() -> Path:
    """Where the default node keeps its rooms: ``$XDG_DATA_HOME/lattica-nb/rooms``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "lattica-nb" / "rooms"


def default_node(*, bootstrap: Iterable[str] = (), data_dir: Path | str | None = None) -> Node:
    """The process-wide default node, started on the default runtime on first use.

    Connects to ``bootstrap`` (multiaddr strings, else ``$LATTICA_NB_BOOTSTRAP``) every call;
    DialError if none of them answers. ``data_dir`` (rooms kept on disk)
    applies when the node starts; ConfigError if it differs later.
    """
    global _session
    given = (bootstrap,) if isinstance(bootstrap, str) else tuple(bootstrap)
    addrs = _bootstrap_addrs(given or _env_bootstrap())
    wanted = Path(data_dir) if data_dir is not None else None
    with _lock:
        session = _session
        if session is not None and not _alive(session):
            session = _session = None
        if session is None:
            runtime = get_runtime()
            store = wanted if wanted is not None else default_data_dir()
            config = NodeConfig(ephemeral=_env_flag(ENV_EPHEMERAL),
                                sync=SyncConfig(data_dir=store))
            node = runtime.call(runtime.enter, Node(config))
            session = _session = _Session(runtime, node, store)
        elif wanted is not None and wanted != session.data_dir:
            raise ConfigError(
                f"the default node already keeps its rooms in {session.data_dir}, not {wanted}; "
                "call lattica_nb.notebook.session.shutdown() first to start it anew"
            )
    _connect(session, addrs)
    return session.node


def experiment(
    name: str,
    *,
    bootstrap: Iterable[str] = (),
    create: bool | None = None,
    owner: PeerId | str | None = None,
    run: str | None = None,
    display_name: str | None = None,
    data_dir: Path | str | None = None,
) -> Experiment:
    """Open experiment ``name`` on the default node (``lattica_nb.experiment``).

    ``create=None`` restores the room from disk, else joins it through a
    connected peer, else creates it (this kernel owns it). A node with no
    peer at all creates it at once instead of waiting for members. See
    :class:`~lattica_nb.sync.experiment.Experiment` for what it offers.
    """
    node = default_node(bootstrap=bootstrap, data_dir=data_dir)
    session = _session
    if session is None or session.node is not node:
        raise LocalProtocolError("the default node was shut down while opening the experiment")
    alone = create is None and session.runtime.call(_peer_count, node) == 0
    return Experiment.open(session.runtime, node, name, create=create, owner=owner, run=run,
                           display_name=display_name, join_timeout_s=0.0 if alone else None)


def shutdown(timeout_s: float = 10.0) -> None:
    """Stop the default node (its rooms are left; files stay on disk). Does nothing if none."""
    global _session
    with _lock:
        session, _session = _session, None
    if session is None or not _alive(session):
        return
    runtime = session.runtime
    try:
        runtime.call(runtime.exit, session.node, timeout_s=timeout_s)
    except LocalProtocolError:  # exited meanwhile, or the runtime stopped
        return


# -- helpers -----------------------------------------------------------------------------------


async def _peer_count(node: Node) -> int:
    return len(node.peers())


def _alive(session: _Session) -> bool:
    if not session.runtime.is_running:
        return False
    try:
        session.node.sync  # noqa: B018 - raises once the node has stopped
    except LocalProtocolError:
        return False
    return True


def _connect(session: _Session, addrs: tuple[Multiaddr, ...]) -> None:
    if not addrs:
        return
    node, runtime = session.node, session.runtime
    wait_s = node.config.dial_timeout_s + node.config.identify_timeout_s + _CONNECT_MARGIN_S
    failures = []
    for addr in addrs:
        try:
            runtime.call(node.connect, addr, timeout_s=wait_s)
        except LatticaError as exc:
            failures.append(f"{addr}: {exc}")
    if len(failures) == len(addrs):
        raise DialError(
            f"could not reach any bootstrap peer ({len(addrs)} tried: {'; '.join(failures)}); "
            f"check the address (it ends in /p2p/<peer id>) or ${ENV_BOOTSTRAP}"
        )


def _bootstrap_addrs(texts: tuple[str, ...]) -> tuple[Multiaddr, ...]:
    if any(not isinstance(text, str) for text in texts):
        raise ConfigError("bootstrap is a list of multiaddr strings")
    out = []
    for text in texts:
        try:
            addr = Multiaddr(text)
        except MultiaddrError as exc:
            raise ConfigError(f"bootstrap address {text!r}: {exc}") from exc
        if addr.peer_id is None:
            raise ConfigError(
                f"bootstrap address {text!r} needs a /p2p/<peer id> part so the peer can be "
                "authenticated"
            )
        out.append(addr)
    return tuple(out)


def _env_bootstrap() -> tuple[str, ...]:
    raw = os.environ.get(ENV_BOOTSTRAP, "")
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
