"""libp2p Noise (``/noise``): XX handshake over 25519, ChaChaPoly and SHA256.

The sans-IO core is in :mod:`.handshake` (Noise's handshake state and libp2p's
signed payload), :mod:`.cipher` (cipher states and 2-byte framing) and
:mod:`.payload` (the payload protobuf). :mod:`.stream` is the anyio driver:
:func:`noise_handshake` runs the handshake over any byte stream and returns a
:class:`NoiseStream` that encrypts everything sent and decrypts everything
received. Specs: libp2p/specs noise/README.md and the Noise Protocol
Framework, revision 34.
"""

from __future__ import annotations

from .stream import NoiseStream, noise_handshake

__all__ = ["PROTOCOL_ID", "NoiseStream", "noise_handshake"]

PROTOCOL_ID = "/noise"
"""The multistream-select protocol id of libp2p Noise."""
