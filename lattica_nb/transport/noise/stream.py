"""anyio driver for libp2p Noise: run the handshake, then encrypt a byte stream.

:func:`noise_handshake` moves the bytes of a :class:`~.handshake.NoiseHandshake`
over an ``anyio.abc.ByteStream``; the caller applies the timeout (wrap the
call in ``anyio.fail_after``). It returns a :class:`NoiseStream`, itself a
ByteStream:

* ``send`` accepts any size. The plaintext is cut into frames of at most
  65519 bytes, encrypted straight into one buffer per ~1 MiB batch, and each
  batch goes to the underlying stream in one ``send``.
* ``receive`` reads up to ``READ_BYTES`` from the underlying stream, decrypts
  every complete frame in it and hands the plaintext out, one frame per call
  (small frames joined up to ``max_bytes``, large ones split to it). It reads
  again only when all of it was delivered, so at most one read's worth of
  plaintext waits here.
* A frame that fails to decrypt raises RemoteProtocolError, and so does every
  later ``receive`` and ``send``: the caller should close the stream.
* ``send_eof`` half-closes the underlying stream (Noise has no close message);
  EOF from the peer raises ``anyio.EndOfStream`` once all data was delivered,
  or DecodeError if it cut a frame short.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import ByteStream

from ...errors import ConnectionClosedError, DecodeError, RemoteProtocolError
from ...identity import PeerId, PrivateKey, PublicKey
from .cipher import NoiseTransport, byte_view
from .handshake import HandshakeResult, NoiseHandshake

__all__ = ["READ_BYTES", "SEND_BATCH_BYTES", "NoiseStream", "noise_handshake"]

logger = logging.getLogger(__name__)

READ_BYTES = 512 * 1024
"""Most bytes one read from the underlying stream asks for."""

SEND_BATCH_BYTES = 1 << 20
"""Plaintext encrypted per underlying ``send``: 1 MiB is 16 full frames and one small."""

HANDSHAKE_READ_BYTES = 65536 + 2

JOIN_BELOW_BYTES = 16 * 1024
"""Decrypted frames smaller than this are joined into one ``receive`` result."""


async def noise_handshake(
    stream: ByteStream,
    identity: PrivateKey,
    *,
    is_initiator: bool,
    expected_peer: PeerId | None = None,
) -> NoiseStream:
    """Authenticate the peer on ``stream`` with Noise XX; return the encrypted stream.

    Raises HandshakeError when the peer's messages or identity do not check
    out (or it closes the stream mid-handshake), PeerIdMismatch when it is
    not ``expected_peer``, DecodeError when the stream ends inside a frame,
    and ConnectionClosedError when the stream breaks. On failure ``stream``
    is left open: the caller closes it.
    """
    handshake = NoiseHandshake(identity, is_initiator=is_initiator, expected_peer=expected_peer)
    await _send_handshake(stream, handshake.start())
    while not handshake.complete:
        try:
            data = await stream.receive(HANDSHAKE_READ_BYTES)
        except anyio.EndOfStream:
            handshake.receive_eof()  # raises DecodeError or HandshakeError
            raise  # pragma: no cover - receive_eof always raises
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise ConnectionClosedError(
                f"the connection broke during the Noise handshake: {exc!r}"
            ) from exc
        await _send_handshake(stream, handshake.receive(data))
    result = handshake.result()
    logger.debug("noise: authenticated %s", result.remote_peer.short())
    return NoiseStream(stream, result)


async def _send_handshake(stream: ByteStream, data: bytes) -> None:
    if not data:
        return
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise ConnectionClosedError(
            f"the connection broke during the Noise handshake: {exc!r}"
        ) from exc


class NoiseStream(ByteStream):
    """An authenticated, encrypted byte stream over another byte stream."""

    def __init__(self, inner: ByteStream, result: HandshakeResult) -> None:
        self._inner = inner
        self._transport: NoiseTransport = result.transport
        self._remote_peer = result.remote_peer
        self._remote_public_key = result.remote_public_key
        self._handshake_hash = result.handshake_hash
        self._pending: deque[bytes] = deque()
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._receive_lock = anyio.Lock(fast_acquire=True)
        self._failure: RemoteProtocolError | None = None
        if result.leftover:
            try:
                self._feed(result.leftover)
            except RemoteProtocolError:
                pass  # recorded in self._failure; the first receive raises it

    @property
    def remote_peer(self) -> PeerId:
        return self._remote_peer

    @property
    def remote_public_key(self) -> PublicKey:
        return self._remote_public_key

    @property
    def handshake_hash(self) -> bytes:
        """Noise's handshake hash: identifies this session to both sides."""
        return self._handshake_hash

    @property
    def inner(self) -> ByteStream:
        return self._inner

    def _feed(self, data: bytes) -> None:
        try:
            self._pending.extend(self._transport.feed(data))
        except RemoteProtocolError as exc:
            self._failure = exc
            logger.warning("noise: %s sent a bad frame: %s", self._remote_peer.short(), exc)
            raise

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise RemoteProtocolError(
                f"this Noise stream failed earlier and cannot be used: {self._failure}"
            )

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        pending = self._pending
        if not pending:
            async with self._receive_lock:
                while not pending:
                    self._check_usable()
                    try:
                        data = await self._inner.receive(READ_BYTES)
                    except anyio.EndOfStream:
                        if self._transport.buffered_bytes:
                            error = DecodeError(
                                "the peer's stream ended inside a Noise frame "
                                f"({self._transport.buffered_bytes} bytes of it arrived)"
                            )
                            self._failure = error
                            raise error from None
                        raise
                    self._feed(data)
        else:
            await anyio.lowlevel.checkpoint_if_cancelled()
        return self._take(max_bytes)

    def _take(self, max_bytes: int) -> bytes:
        """The next plaintext, at most ``max_bytes``; small chunks are joined, large ones not.

        A decrypted frame is handed out as it is (no copy): joining big frames
        to fill a large ``max_bytes`` would cost a copy to save a call.
        """
        pending = self._pending
        head = pending.popleft()
        if len(head) > max_bytes:
            pending.appendleft(head[max_bytes:])
            return head[:max_bytes]
        if len(head) >= JOIN_BELOW_BYTES or not pending:
            return head
        parts = [head]
        size = len(head)
        while (
            pending and len(pending[0]) < JOIN_BELOW_BYTES and size + len(pending[0]) <= max_bytes
        ):
            chunk = pending.popleft()
            parts.append(chunk)
            size += len(chunk)
        return head if len(parts) == 1 else b"".join(parts)

    async def send(self, item: bytes) -> None:
        view = byte_view(item)
        transport = self._transport
        async with self._send_lock:
            self._check_usable()
            if not view:
                await anyio.lowlevel.checkpoint()
                return
            for start in range(0, len(view), SEND_BATCH_BYTES):
                batch = transport.encrypt(view[start : start + SEND_BATCH_BYTES])
                # A fresh bytearray that nothing touches again: handing it over
                # saves copying up to 1 MiB into bytes (streams accept any buffer).
                await self._inner.send(batch)  # type: ignore[arg-type]

    async def send_eof(self) -> None:
        async with self._send_lock:
            await self._inner.send_eof()

    async def aclose(self) -> None:
        self._pending.clear()
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._inner.extra_attributes
