"""Configuration of a node: one frozen dataclass, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .dht.config import DhtConfig
from .errors import ConfigError, MultiaddrError
from .identity import PrivateKey
from .multiaddr import Multiaddr
from .sync.config import SyncConfig
from .transport.quic.session import QuicSettings
from .transport.tcp import TcpSettings

DEFAULT_PROTOCOL_VERSION = "/lattica-nb/1.0.0"
"""Identify protocol version. Lattica peers drop a peer whose version differs
from theirs (``/lattica/1.0.0`` by default); set this to theirs to join them."""

AGENT_VERSION = f"lattica-nb/{__version__}"

SUPPORTED_LISTEN_TRANSPORTS = ("quic-v1", "tcp")
DEFAULT_LISTEN = ("/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0")
"""QUIC (connectivity, hole punching later) and TCP (bulk), both on loopback."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a :class:`~lattica_nb.node.Node` needs; every field has a sane default.

    ``identity``: the node's key. ``None`` loads (or creates, mode 0600) the
    key at ``key_path`` (default: the XDG config dir); ``ephemeral=True``
    uses a fresh key that is never written (tests, demos).
    """

    listen: tuple[str, ...] = DEFAULT_LISTEN
    bootstrap: tuple[str, ...] = ()
    identity: PrivateKey | None = None
    key_path: Path | None = None
    ephemeral: bool = False
    protocol_version: str = DEFAULT_PROTOCOL_VERSION
    agent_version: str = AGENT_VERSION
    max_connections: int = 256
    max_connections_per_peer: int = 4
    idle_timeout_s: float = 120.0
    dial_timeout_s: float = 10.0
    negotiation_timeout_s: float = 10.0
    identify_timeout_s: float = 5.0
    quic: QuicSettings = field(default_factory=QuicSettings)
    tcp: TcpSettings = field(default_factory=TcpSettings)
    dht: DhtConfig = field(default_factory=DhtConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)

    def __post_init__(self) -> None:
        if isinstance(self.listen, str) or isinstance(self.bootstrap, str):
            raise ConfigError("listen and bootstrap are tuples of multiaddr strings, not a string")
        for text in self.listen:
            addr = _parse(text, "listen")
            if addr.transport() not in SUPPORTED_LISTEN_TRANSPORTS:
                raise ConfigError(
                    f"listen address {text!r}: only {', '.join(SUPPORTED_LISTEN_TRANSPORTS)} "
                    "listeners exist, e.g. /ip4/127.0.0.1/udp/0/quic-v1 or /ip4/127.0.0.1/tcp/0"
                )
        for text in self.bootstrap:
            if _parse(text, "bootstrap").peer_id is None:
                raise ConfigError(
                    f"bootstrap address {text!r} needs a /p2p/<peer id> part so the peer "
                    "can be authenticated"
                )
        if self.identity is not None and self.ephemeral:
            raise ConfigError("pass either identity or ephemeral=True, not both")
        for name in ("max_connections", "max_connections_per_peer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in ("dial_timeout_s", "negotiation_timeout_s", "identify_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.idle_timeout_s < 0:
            raise ConfigError("idle_timeout_s must be >= 0 (0 keeps idle connections open)")
        if not self.protocol_version or not self.agent_version:
            raise ConfigError("protocol_version and agent_version must be non-empty")

    @property
    def listen_addrs(self) -> tuple[Multiaddr, ...]:
        return tuple(Multiaddr(text) for text in self.listen)

    @property
    def bootstrap_addrs(self) -> tuple[Multiaddr, ...]:
        return tuple(Multiaddr(text) for text in self.bootstrap)


def _parse(text: str, what: str) -> Multiaddr:
    try:
        return Multiaddr(text)
    except MultiaddrError as exc:
        raise ConfigError(f"{what} address: {exc}") from exc
