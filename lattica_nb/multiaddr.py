"""Multiaddrs: self-describing network addresses (multiformats/multiaddr).

Only the protocols this mesh speaks are known: ip4, ip6, dns, dns4, dns6, tcp,
udp, quic-v1, p2p (alias ipfs) and p2p-circuit. Anything else is refused with
a :class:`~lattica_nb.errors.MultiaddrError` naming the unknown part. A
:class:`Multiaddr` is immutable, hashable and equal by its binary form; its
text form is canonical (``/ip6/::1``, ``/p2p/<base58btc>``). The empty
multiaddr exists (text ``""``) so that addresses can be built and taken apart;
it is falsy.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from .errors import DecodeError, MultiaddrError
from .identity import PeerId
from .wire.varint import decode_uvarint, encode_uvarint

__all__ = ["MAX_MULTIADDR_BYTES", "Multiaddr"]

MAX_MULTIADDR_BYTES = 1024
MAX_MULTIADDR_TEXT = 4096
MAX_DNS_NAME_BYTES = 255

# name -> (code, value kind); kinds: ip4, ip6, port, dns, p2p, none
_PROTOCOLS: dict[str, tuple[int, str]] = {
    "ip4": (0x04, "ip4"),
    "tcp": (0x06, "port"),
    "ip6": (0x29, "ip6"),
    "dns": (0x35, "dns"),
    "dns4": (0x36, "dns"),
    "dns6": (0x37, "dns"),
    "udp": (0x0111, "port"),
    "p2p-circuit": (0x0122, "none"),
    "p2p": (0x01A5, "p2p"),
    "quic-v1": (0x01CD, "none"),
}
_ALIASES = {"ipfs": "p2p"}
_BY_CODE = {code: (name, kind) for name, (code, kind) in _PROTOCOLS.items()}
_HOSTS = frozenset({"ip4", "ip6", "dns", "dns4", "dns6"})
_QUIC_HINT = " (draft QUIC is not spoken; use quic-v1)"
_PORT_RE = re.compile(r"[0-9]{1,5}")

Component = tuple[str, str | None]


def _quote(text: str) -> str:
    """Echo user input in an error message, cut to a readable length."""
    return repr(text if len(text) <= 200 else text[:200] + "…")


def _value_to_bytes(kind: str, value: str) -> bytes:
    """Binary form of one value (with its length prefix for variable sizes).

    Raises ValueError; the caller names the part. A DecodeError (a bad peer
    id) carries a reason worth passing on.
    """
    if kind == "ip4":
        return ipaddress.IPv4Address(value).packed
    if kind == "ip6":
        if "%" in value:  # zones are /ip6zone, which we do not speak
            raise ValueError
        return ipaddress.IPv6Address(value).packed
    if kind == "port":
        if not _PORT_RE.fullmatch(value) or int(value) > 0xFFFF:
            raise ValueError
        return int(value).to_bytes(2, "big")
    if kind == "dns":
        raw = value.encode("utf-8")
        if not raw or "/" in value or len(raw) > MAX_DNS_NAME_BYTES:
            raise ValueError
        return encode_uvarint(len(raw)) + raw
    # p2p
    raw = PeerId.from_string(value).to_bytes()
    return encode_uvarint(len(raw)) + raw


def _describe(kind: str, name: str) -> str:
    return {
        "ip4": "ip4 address",
        "ip6": "ip6 address",
        "port": f"{name} port",
        "dns": f"{name} name",
        "p2p": "p2p peer id",
    }[kind]


class Multiaddr:
    """An immutable multiaddr; equal and hashed by its binary form."""

    __slots__ = ("_bytes", "_components")

    _bytes: bytes
    _components: tuple[Component, ...]

    def __init__(self, text: str) -> None:
        if len(text) > MAX_MULTIADDR_TEXT:
            raise MultiaddrError(f"multiaddr text of {len(text)} characters is too long")
        if text and not text.startswith("/"):
            raise MultiaddrError(f"multiaddr {_quote(text)} must start with '/'")
        parts = text.split("/")[1:]
        if parts and parts[-1] == "":
            parts.pop()  # one trailing slash is tolerated, as go-multiaddr does
        out = bytearray()
        i = 0
        while i < len(parts):
            name = _ALIASES.get(parts[i], parts[i])
            if not name:
                raise MultiaddrError(f"empty component in multiaddr {_quote(text)}")
            if name not in _PROTOCOLS:
                raise MultiaddrError(
                    f"unknown multiaddr protocol {_quote(parts[i])} in {_quote(text)}"
                    + (_QUIC_HINT if name == "quic" else "")
                )
            code, kind = _PROTOCOLS[name]
            out += encode_uvarint(code)
            i += 1
            if kind == "none":
                continue
            if i >= len(parts):
                raise MultiaddrError(f"missing value for {name} in {_quote(text)}")
            value = parts[i]
            i += 1
            try:
                out += _value_to_bytes(kind, value)
            except ValueError as exc:
                reason = f" ({exc})" if isinstance(exc, DecodeError) else ""
                raise MultiaddrError(
                    f"bad {_describe(kind, name)} {_quote(value)} in {_quote(text)}{reason}"
                ) from None
        self._set(bytes(out))

    def _set(self, data: bytes) -> None:
        if len(data) > MAX_MULTIADDR_BYTES:
            raise MultiaddrError(f"multiaddr of {len(data)} bytes exceeds {MAX_MULTIADDR_BYTES}")
        object.__setattr__(self, "_components", _decode(data))
        object.__setattr__(self, "_bytes", data)

    @classmethod
    def from_bytes(cls, data: bytes) -> Multiaddr:
        addr = object.__new__(cls)
        addr._set(bytes(data))
        return addr

    @classmethod
    def from_components(cls, components: Iterable[tuple[str, str | None]]) -> Multiaddr:
        text = []
        for name, value in components:
            if not name or "/" in name:
                raise MultiaddrError(f"bad multiaddr protocol name {_quote(name)}")
            kind = _PROTOCOLS.get(_ALIASES.get(name, name), (0, "?"))[1]
            if value is None:
                if kind not in ("none", "?"):
                    raise MultiaddrError(f"missing value for {name}")
                text.append(f"/{name}")
            elif value and "/" not in value:
                text.append(f"/{name}/{value}")
            else:
                raise MultiaddrError(f"bad value {_quote(value)} for {name}")
        return cls("".join(text))

    def to_bytes(self) -> bytes:
        return self._bytes

    def __str__(self) -> str:
        return "".join(
            f"/{name}" if value is None else f"/{name}/{value}" for name, value in self._components
        )

    @property
    def components(self) -> tuple[Component, ...]:
        return self._components

    def value_for(self, protocol: str) -> str | None:
        """Value of the first ``protocol`` component (None if absent or valueless)."""
        protocol = _ALIASES.get(protocol, protocol)
        for name, value in self._components:
            if name == protocol:
                return value
        return None

    @property
    def peer_id(self) -> PeerId | None:
        """The peer id of a trailing ``/p2p/…`` component, else None."""
        if self._components and self._components[-1][0] == "p2p":
            return PeerId.from_string(self._components[-1][1] or "")
        return None

    def relay_peer_id(self) -> PeerId | None:
        """For a relayed address, the relay's peer id (the /p2p/ before /p2p-circuit)."""
        for index, (name, _) in enumerate(self._components):
            if name == "p2p-circuit":
                if index and self._components[index - 1][0] == "p2p":
                    return PeerId.from_string(self._components[index - 1][1] or "")
                return None
        return None

    def with_peer_id(self, peer: PeerId) -> Multiaddr:
        """This address ending in ``/p2p/<peer>`` (replacing a trailing one)."""
        return self.without_peer_id().encapsulate(Multiaddr(f"/p2p/{peer}"))

    def without_peer_id(self) -> Multiaddr:
        if self._components and self._components[-1][0] == "p2p":
            return Multiaddr.from_components(self._components[:-1])
        return self

    def encapsulate(self, other: Multiaddr) -> Multiaddr:
        return Multiaddr.from_bytes(self._bytes + other._bytes)

    def is_relayed(self) -> bool:
        return any(name == "p2p-circuit" for name, _ in self._components)

    def transport(self) -> str | None:
        """``"quic-v1"`` or ``"tcp"`` for a direct host/port address, else None.

        Only ``<host>/udp/N/quic-v1`` and ``<host>/tcp/N``, optionally followed
        by ``/p2p/<id>``, qualify; relayed and other stacks give None.
        """
        names = [name for name, _ in self._components]
        if names and names[-1] == "p2p":
            names.pop()
        if len(names) < 2 or names[0] not in _HOSTS:
            return None
        if names[1:] == ["udp", "quic-v1"]:
            return "quic-v1"
        if names[1:] == ["tcp"]:
            return "tcp"
        return None

    def host_port(self) -> tuple[str, int]:
        """``(host, port)`` of the first host component followed by tcp or udp."""
        for (name, host), (next_name, port) in zip(
            self._components, self._components[1:], strict=False
        ):
            if name in _HOSTS and next_name in ("tcp", "udp"):
                return host or "", int(port or 0)
        raise MultiaddrError(f"multiaddr {_quote(str(self))} has no host and tcp/udp port")

    @classmethod
    def from_host_port(cls, transport: str, host: str, port: int) -> Multiaddr:
        """Build ``/<ip4|ip6|dns>/<host>/udp/<port>/quic-v1`` or ``…/tcp/<port>``."""
        if transport not in ("quic-v1", "tcp"):
            raise MultiaddrError(f"unknown transport {_quote(transport)}; use 'quic-v1' or 'tcp'")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise MultiaddrError(f"bad port {port!r}; expected 0..65535")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            family = f"ip{ipaddress.ip_address(host).version}"
        except ValueError:
            family = "dns"
        tail = f"/udp/{port}/quic-v1" if transport == "quic-v1" else f"/tcp/{port}"
        return cls.from_components([(family, host)]).encapsulate(cls(tail))

    def __len__(self) -> int:
        return len(self._components)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Multiaddr):
            return NotImplemented
        return self._bytes == other._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Multiaddr is immutable")

    def __reduce__(self) -> tuple[object, tuple[bytes]]:
        return (Multiaddr.from_bytes, (self._bytes,))

    def __repr__(self) -> str:
        return f"Multiaddr({str(self)!r})"


def _decode(data: bytes) -> tuple[Component, ...]:
    """Components of a binary multiaddr; MultiaddrError on any malformation."""
    components: list[Component] = []
    pos = 0
    end = len(data)
    while pos < end:
        start = pos
        try:
            code, pos = decode_uvarint(data, pos)
        except DecodeError as exc:
            raise MultiaddrError(f"bad protocol code at byte {start}: {exc}") from None
        if code not in _BY_CODE:
            raise MultiaddrError(
                f"unknown multiaddr protocol code 0x{code:x} at byte {start}"
                + (_QUIC_HINT if code == 0x01CC else "")
            )
        name, kind = _BY_CODE[code]
        if kind == "none":
            components.append((name, None))
            continue
        size = {"ip4": 4, "ip6": 16, "port": 2}.get(kind)
        if size is None:
            try:
                size, pos = decode_uvarint(data, pos)
            except DecodeError as exc:
                raise MultiaddrError(f"bad {name} length at byte {pos}: {exc}") from None
        if size > end - pos:
            raise MultiaddrError(
                f"truncated {name} value at byte {pos}: needs {size} bytes, {end - pos} left"
            )
        raw = data[pos : pos + size]
        pos += size
        components.append((name, _value_to_text(name, kind, raw, start)))
    return tuple(components)


def _value_to_text(name: str, kind: str, raw: bytes, offset: int) -> str:
    if kind == "ip4":
        return str(ipaddress.IPv4Address(raw))
    if kind == "ip6":
        return str(ipaddress.IPv6Address(raw))
    if kind == "port":
        return str(int.from_bytes(raw, "big"))
    if kind == "dns":
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MultiaddrError(f"{name} name at byte {offset} is not UTF-8") from None
        if not text or "/" in text or len(raw) > MAX_DNS_NAME_BYTES:
            raise MultiaddrError(f"bad {name} name {_quote(text)} at byte {offset}")
        return text
    try:
        return str(PeerId.from_bytes(raw))
    except DecodeError as exc:
        raise MultiaddrError(f"bad p2p peer id at byte {offset}: {exc}") from None
