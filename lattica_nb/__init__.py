"""lattica_nb: a Jupyter-native peer-to-peer mesh (libp2p wire protocols).

Public API::

    from lattica_nb import Node, NodeConfig

    async with Node(NodeConfig(ephemeral=True)) as node:
        info = await node.connect("/ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooW...")
        rtts = await node.ping(info.peer_id)

    exp = lattica_nb.experiment("sweep")            # a notebook: the kernel's default node
    exp.log(step=1, loss=0.25)
    exp = await lattica_nb.experiment_async(node, "sweep")   # on a node's own loop

Names are imported on first use, so ``import lattica_nb`` stays cheap and a
submodule can be used without loading the whole stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AsyncExperiment": ".sync.experiment",
    "Experiment": ".sync.experiment",
    "experiment": ".notebook.session",
    "experiment_async": ".sync.experiment",
    "LatticaError": ".errors",
    "Multiaddr": ".multiaddr",
    "Node": ".node",
    "NodeConfig": ".config",
    "NodeEvent": ".events",
    "PeerConnected": ".events",
    "PeerDisconnected": ".events",
    "PeerId": ".identity",
    "PeerIdentified": ".events",
    "PeerInfo": ".node",
    "PrivateKey": ".identity",
    "PublicKey": ".identity",
    "Stream": ".protocols.router",
    "CallContext": ".protocols.rpc",
    "RpcClient": ".protocols.rpc",
    "RpcConfig": ".protocols.rpc",
    "RpcError": ".errors",
    "RpcService": ".protocols.rpc",
    "StatusCode": ".errors",
}

__all__ = [
    "AsyncExperiment",
    "CallContext",
    "Experiment",
    "LatticaError",
    "Multiaddr",
    "Node",
    "NodeConfig",
    "NodeEvent",
    "PeerConnected",
    "PeerDisconnected",
    "PeerId",
    "PeerIdentified",
    "PeerInfo",
    "PrivateKey",
    "PublicKey",
    "RpcClient",
    "RpcConfig",
    "RpcError",
    "RpcService",
    "StatusCode",
    "Stream",
    "__version__",
    "experiment",
    "experiment_async",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lattica_nb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .config import NodeConfig
    from .errors import LatticaError, RpcError, StatusCode
    from .events import NodeEvent, PeerConnected, PeerDisconnected, PeerIdentified
    from .identity import PeerId, PrivateKey, PublicKey
    from .multiaddr import Multiaddr
    from .node import Node, PeerInfo
    from .notebook.session import experiment
    from .protocols.router import Stream
    from .protocols.rpc import CallContext, RpcClient, RpcConfig, RpcService
    from .sync.experiment import AsyncExperiment, Experiment, experiment_async
