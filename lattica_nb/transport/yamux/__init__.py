"""Yamux (``/yamux/1.0.0``): stream multiplexing over TCP + Noise and relayed connections.

:mod:`.frames` is the header codec, :mod:`.session` the sans-IO core,
:mod:`.connection` the anyio driver whose :class:`YamuxConnection` is a
libp2p :class:`~lattica_nb.transport.base.Connection`.
"""

from __future__ import annotations

from .connection import YamuxConnection
from .settings import YamuxSettings
from .stream import YamuxStream

__all__ = ["PROTOCOL_ID", "YamuxConnection", "YamuxSettings", "YamuxStream"]

PROTOCOL_ID = "/yamux/1.0.0"
