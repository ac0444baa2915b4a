"""The driver edge of RPC: whole frames over one negotiated stream, and the host seam.

:class:`FramedStream` is the only place where RPC code touches a stream. It
sends ready-made frames (one ``send`` per frame) and reads frame bodies
through a :class:`~.codec.FrameDecoder`, so a read cancelled by a timeout
loses nothing. It translates anyio's stream exceptions into ours:
ConnectionClosedError or StreamResetError (both TransportError) when the
stream breaks, DecodeError when it ends inside a frame, MessageTooLarge for
an oversized frame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import anyio

from ...errors import ConnectionClosedError, DecodeError, LatticaError
from ...identity import PeerId
from ..router import Handler, Stream
from .codec import FrameDecoder

__all__ = ["FramedStream", "RpcHost"]

logger = logging.getLogger(__name__)

READ_BYTES = 65536
CLOSE_GRACE_S = 1.0


class RpcHost(Protocol):
    """What RPC needs from a node: serve a protocol id, open a stream. ``Node`` is one."""

    def set_handler(self, protocol: str, handler: Handler) -> None: ...

    def remove_handler(self, protocol: str) -> None: ...

    async def open_stream(self, peer: PeerId | str, protocols: str | Sequence[str]) -> Stream: ...


class FramedStream:
    """One RPC stream: frames out, frame bodies in."""

    __slots__ = ("_decoder", "_eof", "_reset", "corrupt", "idle_since", "stream")

    def __init__(self, stream: Stream, *, max_bytes: int) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_bytes=max_bytes)
        self._eof = False
        self._reset = False
        self.corrupt = False
        """A send failed or was cancelled part-way: no further frame may follow."""
        self.idle_since = 0.0

    @property
    def peer(self) -> PeerId:
        return self.stream.remote_peer

    @property
    def usable(self) -> bool:
        """Not known to be ended, broken or closed (reuse is still a guess)."""
        return not (self._eof or self.corrupt or self._reset or self.stream.connection.is_closed)

    async def send(self, frame: bytes) -> None:
        try:
            await self.stream.send(frame)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self.corrupt = True
            raise ConnectionClosedError("the RPC stream is closed") from exc
        except BaseException:
            self.corrupt = True
            raise

    async def read(self) -> bytes | None:
        """The next frame body; None if the stream ended cleanly between frames."""
        decoder = self._decoder
        while (body := decoder.next_frame()) is None:
            if self._eof:
                if decoder.buffered:
                    raise DecodeError(
                        f"the RPC stream ended inside a frame ({decoder.buffered} bytes of it)"
                    )
                return None
            try:
                chunk = await self.stream.receive(READ_BYTES)
            except anyio.EndOfStream:
                self._eof = True
                continue
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise ConnectionClosedError("the RPC stream is closed") from exc
            decoder.feed(chunk)
        return body

    async def reset(self) -> None:
        """Abort both directions, telling the peer (once); never raises."""
        self.corrupt = True
        if self._reset:
            return
        self._reset = True
        with anyio.CancelScope(shield=True):
            try:
                await self.stream.reset()
            except (LatticaError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                logger.debug("resetting an RPC stream: %s", exc)

    async def close(self) -> None:
        """Finish our side politely (FIN); a stream that does not close in time is reset."""
        with anyio.move_on_after(CLOSE_GRACE_S, shield=True) as scope:
            try:
                await self.stream.aclose()
            except (LatticaError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                logger.debug("closing an RPC stream: %s", exc)
        if scope.cancelled_caught:
            await self.reset()
