"""Peer ids and the identity key file (libp2p/specs peer-ids/peer-ids.md).

A :class:`PeerId` is the multihash of a public key's protobuf: inline
(identity multihash) up to 42 bytes, sha2-256 above. Its text is base58btc
(``12D3KooW…``, ``Qm…``); CIDv1 text (``bafz…``) is read and written too.
:func:`load_or_create_identity` keeps our Ed25519 key on disk as a libp2p
``PrivateKey`` protobuf, mode 0600. The key types live in :mod:`.keys` and are
re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import pathlib
import secrets
import stat

import base58

from .errors import ConfigError, DecodeError
from .keys import MAX_PRIVATE_KEY_BYTES, MAX_PUBLIC_KEY_BYTES, KeyType, PrivateKey, PublicKey
from .wire.varint import decode_uvarint

__all__ = [
    "KeyType",
    "PeerId",
    "PrivateKey",
    "PublicKey",
    "default_key_path",
    "load_or_create_identity",
]

MAX_INLINE_KEY_BYTES = 42
"""Key protobufs up to this size are inlined in the peer id (identity multihash)."""
MAX_PEER_ID_TEXT = 128

_IDENTITY = 0x00
_SHA2_256 = 0x12
_CID_V1 = 0x01
_LIBP2P_KEY = 0x72


class PeerId:
    """A peer id: a validated multihash. Immutable, hashable, ordered by bytes."""

    __slots__ = ("_bytes",)

    _bytes: bytes

    def __init__(self, multihash: bytes) -> None:
        multihash = bytes(multihash)
        _check_multihash(multihash)
        object.__setattr__(self, "_bytes", multihash)

    @classmethod
    def from_public_key(cls, key: PublicKey) -> PeerId:
        encoded = key.to_protobuf()
        if len(encoded) <= MAX_INLINE_KEY_BYTES:
            multihash = bytes([_IDENTITY, len(encoded)]) + encoded
        else:
            multihash = bytes([_SHA2_256, 32]) + hashlib.sha256(encoded).digest()
        peer = object.__new__(cls)
        object.__setattr__(peer, "_bytes", multihash)
        return peer

    @classmethod
    def from_bytes(cls, data: bytes) -> PeerId:
        return cls(data)

    @classmethod
    def from_string(cls, text: str) -> PeerId:
        """Parse base58btc (``12D3KooW…``, ``Qm…``) or CIDv1 text (``bafz…``)."""
        if not text:
            raise DecodeError("empty peer id")
        if len(text) > MAX_PEER_ID_TEXT:
            raise DecodeError(f"peer id text of {len(text)} characters is too long")
        if text[0] == "1" or text.startswith("Qm"):
            return cls(_b58decode(text, "peer id"))
        if text[0] in "bB":
            return cls(_cid_multihash(_b32decode(text[1:]), text))
        if text[0] == "z":
            return cls(_cid_multihash(_b58decode(text[1:], "CID"), text))
        raise DecodeError(f"peer id {text!r} is neither base58btc (1…, Qm…) nor a base32 CID (b…)")

    def to_bytes(self) -> bytes:
        return self._bytes

    def __str__(self) -> str:
        return base58.b58encode(self._bytes).decode("ascii")

    def to_cid_string(self) -> str:
        cid = bytes([_CID_V1, _LIBP2P_KEY]) + self._bytes
        return "b" + base64.b32encode(cid).decode("ascii").lower().rstrip("=")

    def public_key(self) -> PublicKey | None:
        """The key inlined in an identity multihash; None for a hashed id."""
        if self._bytes[0] != _IDENTITY:
            return None
        return _inline_key(self._bytes[2:])

    def short(self) -> str:
        return str(self)[-6:]

    def matches(self, key: PublicKey) -> bool:
        return PeerId.from_public_key(key) == self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PeerId):
            return NotImplemented
        return self._bytes == other._bytes

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, PeerId):
            return NotImplemented
        return self._bytes < other._bytes

    def __le__(self, other: object) -> bool:
        if not isinstance(other, PeerId):
            return NotImplemented
        return self._bytes <= other._bytes

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, PeerId):
            return NotImplemented
        return self._bytes > other._bytes

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, PeerId):
            return NotImplemented
        return self._bytes >= other._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PeerId is immutable")

    def __reduce__(self) -> tuple[type[PeerId], tuple[bytes]]:
        return (PeerId, (self._bytes,))

    def __repr__(self) -> str:
        return f"PeerId({self})"


@functools.lru_cache(maxsize=4096)
def _inline_key(data: bytes) -> PublicKey:
    """The key inside an identity peer id, parsed once per key (keys are immutable).

    Peer ids are parsed on every envelope, record and identify message; a room
    with a handful of authors would otherwise parse the same keys again and again.
    Invalid keys raise and are not cached.
    """
    return PublicKey.from_protobuf(data)


def _check_multihash(data: bytes) -> None:
    if len(data) < 2:
        raise DecodeError(f"peer id of {len(data)} bytes is too short to be a multihash")
    if len(data) > 2 + MAX_PUBLIC_KEY_BYTES:
        raise DecodeError(f"peer id of {len(data)} bytes is too long")
    code, pos = decode_uvarint(data)
    length, pos = decode_uvarint(data, pos)
    if length != len(data) - pos:
        raise DecodeError(f"peer id multihash says {length} digest bytes but has {len(data) - pos}")
    if code == _SHA2_256:
        if length != 32:
            raise DecodeError(f"sha2-256 peer id digest must be 32 bytes, got {length}")
    elif code == _IDENTITY:
        if length > MAX_INLINE_KEY_BYTES:
            raise DecodeError(f"inline peer id key of {length} bytes exceeds 42")
        try:
            _inline_key(data[pos:])
        except DecodeError as exc:
            raise DecodeError(f"identity peer id does not hold a public key: {exc}") from None
    else:
        raise DecodeError(f"peer id multihash code 0x{code:x} is neither identity nor sha2-256")


def _cid_multihash(cid: bytes, text: str) -> bytes:
    version, pos = decode_uvarint(cid)
    if version != _CID_V1:
        raise DecodeError(f"peer id CID {text!r} has version {version}, expected 1")
    codec, pos = decode_uvarint(cid, pos)
    if codec != _LIBP2P_KEY:
        raise DecodeError(f"peer id CID {text!r} has codec 0x{codec:x}, expected libp2p-key (0x72)")
    return cid[pos:]


def _b58decode(text: str, what: str) -> bytes:
    try:
        return base58.b58decode(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise DecodeError(f"{what} {text!r} is not valid base58btc") from None


def _b32decode(text: str) -> bytes:
    body = text.rstrip("=")
    try:
        return base64.b32decode(body + "=" * (-len(body) % 8), casefold=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"peer id CID text 'b{text}' is not valid base32") from None


def default_key_path() -> pathlib.Path:
    """``$XDG_CONFIG_HOME/lattica_nb/identity.key``, else under ``~/.config``."""
    config = os.environ.get("XDG_CONFIG_HOME", "")
    base = pathlib.Path(config) if os.path.isabs(config) else pathlib.Path.home() / ".config"
    return base / "lattica_nb" / "identity.key"


def load_or_create_identity(path: pathlib.Path | None = None) -> PrivateKey:
    """Load the identity key at ``path``, creating it (mode 0600) on first use."""
    path = default_key_path() if path is None else pathlib.Path(path)
    existing = _read_key_file(path)
    if existing is not None:
        return existing
    _make_private_dirs(path.parent)
    key = PrivateKey.generate()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
        try:
            view = memoryview(key.to_protobuf())
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # unlike rename, never replaces a key another process wrote
        except FileExistsError:
            pass
        except OSError:
            os.replace(tmp, path)  # filesystems without hard links
    except OSError as exc:
        raise ConfigError(f"could not write identity key file {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    written = _read_key_file(path)
    if written is None:
        raise ConfigError(f"identity key file {path} vanished while it was being created")
    return written


def _make_private_dirs(directory: pathlib.Path) -> None:
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for each in reversed(missing):
        try:
            os.mkdir(each, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError(f"could not create directory {each}: {exc.strerror}") from None


def _read_key_file(path: pathlib.Path) -> PrivateKey | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"could not read identity key file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"identity key file {path} is not a regular file")
    if os.name == "posix" and info.st_mode & 0o077:
        raise ConfigError(
            f"identity key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o}); run `chmod 600 {path}`"
        )
    if info.st_size > MAX_PRIVATE_KEY_BYTES:
        raise ConfigError(f"identity key file {path} is corrupt (too large); move it away")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"could not read identity key file {path}: {exc.strerror}") from None
    try:
        return PrivateKey.from_protobuf(data)
    except (DecodeError, ValueError):
        raise ConfigError(
            f"identity key file {path} is corrupt or not an Ed25519 libp2p key; "
            "move it away to create a new identity"
        ) from None
