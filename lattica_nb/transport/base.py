"""The seams between transports and the node.

A transport produces :class:`Connection` objects: authenticated, multiplexed
links to one peer. A connection opens and accepts :class:`RawStream` objects,
which are ``anyio.abc.ByteStream`` s. QUIC streams implement these today;
Yamux streams over TCP + Noise (and relayed connections) implement the same
protocols, so nothing above this module knows which transport carried a
stream.
"""

from __future__ import annotations

from typing import Protocol

import anyio.abc

from ..errors import LatticaError
from ..identity import PeerId
from ..multiaddr import Multiaddr


class RawStream(anyio.abc.ByteStream):
    """A bidirectional byte stream of one connection (before protocol selection).

    ``reset()`` aborts both directions at once, telling the peer; ``aclose()``
    finishes our side cleanly (FIN) and stops reading.
    """

    @property
    def stream_id(self) -> int:
        raise NotImplementedError

    async def reset(self) -> None:
        raise NotImplementedError


class Connection(Protocol):
    """An authenticated, multiplexed connection to one peer."""

    close_error: LatticaError | None
    """Why the connection closed; None while open or after a clean close."""

    @property
    def remote_peer(self) -> PeerId: ...

    @property
    def remote_addr(self) -> Multiaddr: ...

    @property
    def local_addr(self) -> Multiaddr: ...

    @property
    def is_initiator(self) -> bool: ...

    @property
    def is_closed(self) -> bool: ...

    @property
    def open_stream_count(self) -> int: ...

    async def open_stream(self) -> RawStream: ...

    async def accept_stream(self) -> RawStream: ...

    async def wait_closed(self) -> None: ...

    async def aclose(self, reason: str = "") -> None: ...
