from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattica_nb.errors import MultiaddrError
from lattica_nb.identity import PeerId, PrivateKey
from lattica_nb.multiaddr import Multiaddr

ED_ID = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
QM_ID = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
QM_CID = "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe"
ED_BYTES = PeerId.from_string(ED_ID).to_bytes()
QM_BYTES = PeerId.from_string(QM_ID).to_bytes()

# (text, binary): one or more per protocol.
VECTORS = [
    # multiformats/multiaddr test/multiaddr.feature
    ("/ip4/192.0.2.42/tcp/443", "04c000022a0601bb"),
    # codes 0x0111 -> 91 02, 0x01cd -> cd 03 (quic-v1; cc 03 would be draft quic)
    ("/ip4/127.0.0.1/udp/1234/quic-v1", "047f000001910204d2cd03"),
    ("/ip4/127.0.0.1/udp/1234", "047f000001910204d2"),
    ("/ip6/::1/tcp/0", "29" + "00" * 15 + "01" + "060000"),
    ("/ip6/2001:db8::1/udp/65535/quic-v1", "2920010db8" + "00" * 11 + "01" + "9102ffff" + "cd03"),
    ("/dns/example.com/tcp/80", "350b" + b"example.com".hex() + "060050"),
    ("/dns4/a.b/udp/1", "3603" + b"a.b".hex() + "91020001"),
    ("/dns6/localhost/tcp/4001", "3709" + b"localhost".hex() + "060fa1"),
    ("/p2p/" + ED_ID, "a503" + f"{len(ED_BYTES):02x}" + ED_BYTES.hex()),
    ("/p2p/" + QM_ID, "a50322" + QM_BYTES.hex()),
    ("/p2p-circuit", "a202"),
    (
        f"/ip4/1.2.3.4/udp/4001/quic-v1/p2p/{QM_ID}/p2p-circuit/p2p/{ED_ID}",
        "0401020304" + "91020fa1cd03" + "a50322" + QM_BYTES.hex() + "a202"
        "a503" + f"{len(ED_BYTES):02x}" + ED_BYTES.hex(),
    ),
]


@pytest.mark.parametrize(("text", "hexed"), VECTORS)
def test_known_vectors(text: str, hexed: str) -> None:
    addr = Multiaddr(text)
    assert addr.to_bytes().hex() == hexed
    assert str(addr) == text
    back = Multiaddr.from_bytes(bytes.fromhex(hexed))
    assert back == addr and hash(back) == hash(addr) and str(back) == text
    assert Multiaddr.from_components(addr.components) == addr


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        (f"/ipfs/{QM_ID}", f"/p2p/{QM_ID}"),
        (f"/p2p/{QM_CID}", f"/p2p/{QM_ID}"),
        ("/ip6/2001:DB8:0:0:0:0:0:1/tcp/1", "/ip6/2001:db8::1/tcp/1"),
        ("/ip4/1.2.3.4/tcp/080", "/ip4/1.2.3.4/tcp/80"),
        ("/ip4/1.2.3.4/tcp/80/", "/ip4/1.2.3.4/tcp/80"),
        ("", ""),
        ("/", ""),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    assert str(Multiaddr(text)) == canonical
    assert Multiaddr(text) == Multiaddr(canonical)


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("/ip4/300.1.1.1/udp/1", "bad ip4 address '300.1.1.1' in '/ip4/300.1.1.1/udp/1'"),
        ("/ip4/1.2.3/udp/1", "bad ip4 address '1.2.3'"),
        ("/ip4/01.2.3.4/udp/1", "bad ip4 address '01.2.3.4'"),
        ("/ip4/::1", "bad ip4 address '::1'"),
        ("/ip6/1.2.3.4", "bad ip6 address '1.2.3.4'"),
        ("/ip6/fe80::1%eth0/udp/1", "bad ip6 address 'fe80::1%eth0'"),
        ("/ip4/1.2.3.4/tcp/70000", "bad tcp port '70000'"),
        ("/ip4/1.2.3.4/udp/-1", "bad udp port '-1'"),
        ("/ip4/1.2.3.4/udp/+1", "bad udp port '+1'"),
        ("/ip4/1.2.3.4/udp/0x10", "bad udp port '0x10'"),
        ("/ip4/1.2.3.4/udp/\u0661", "bad udp port"),  # a non-ASCII digit
        ("/ip4/1.2.3.4/udp/", "missing value for udp"),
        ("/ip4", "missing value for ip4 in '/ip4'"),
        ("/ip4/1.2.3.4/tcp", "missing value for tcp"),
        ("/p2p", "missing value for p2p"),
        ("/dns//tcp/1", "bad dns name ''"),
        ("/p2p/Qmnope", "bad p2p peer id 'Qmnope'"),
        ("/p2p/bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", "codec 0x70"),
        ("/ip4/1.2.3.4/tcp/80/junk", "unknown multiaddr protocol 'junk'"),
        ("/ip4/1.2.3.4/tcp/80/80", "unknown multiaddr protocol '80'"),
        ("/ip4/1.2.3.4/udp/1/quic", "use quic-v1"),
        ("/ip4/1.2.3.4/udp/1/quic-v1/junk", "unknown multiaddr protocol 'junk'"),
        ("/ip4/1.2.3.4//tcp/1", "empty component"),
        ("ip4/1.2.3.4", "must start with '/'"),
        ("/unix/tmp", "unknown multiaddr protocol 'unix'"),
        ("/dns/" + "a" * 256, "bad dns name"),
    ],
)
def test_bad_text_names_the_part(text: str, part: str) -> None:
    with pytest.raises(MultiaddrError) as info:
        Multiaddr(text)
    assert part in str(info.value)


@pytest.mark.parametrize(
    ("hexed", "part"),
    [
        ("047f00", "truncated ip4 value at byte 1"),
        ("047f0000010604", "truncated tcp value"),
        ("29" + "00" * 15, "truncated ip6 value"),
        ("9102", "truncated udp value"),
        ("350b6578", "truncated dns value"),
        ("35", "bad dns length"),
        ("3500", "bad dns name ''"),
        ("3501ff", "not UTF-8"),
        ("35012f", "bad dns name '/'"),
        ("a503", "bad p2p length"),
        ("a50302abcd", "bad p2p peer id"),
        ("ff", "bad protocol code at byte 0"),
        ("8000", "bad protocol code"),  # not minimally encoded
        ("99", "bad protocol code"),
        ("cc03", "unknown multiaddr protocol code 0x1cc at byte 0"),
        ("047f000001" + "7f", "unknown multiaddr protocol code 0x7f at byte 5"),
        ("00" * 1025, "exceeds 1024"),
    ],
)
def test_bad_binary_names_the_part(hexed: str, part: str) -> None:
    with pytest.raises(MultiaddrError) as info:
        Multiaddr.from_bytes(bytes.fromhex(hexed))
    assert part in str(info.value)


def test_too_long_text() -> None:
    with pytest.raises(MultiaddrError, match="too long"):
        Multiaddr("/p2p-circuit" * 400)
    with pytest.raises(MultiaddrError, match="exceeds 1024"):
        Multiaddr("/ip6/::" * 70)  # 490 characters, 1,190 bytes


def test_from_components_checks_values() -> None:
    good = Multiaddr.from_components([("ip4", "1.2.3.4"), ("udp", "1"), ("quic-v1", None)])
    assert str(good) == "/ip4/1.2.3.4/udp/1/quic-v1"
    assert Multiaddr.from_components([]) == Multiaddr("")
    for bad in (
        [("ip4", None), ("tcp", "1")],
        [("ip4", "1.2.3.4/tcp")],
        [("ip4", "")],
        [("ip4/tcp", "1")],
        [("", None)],
        [("nope", None)],
    ):
        with pytest.raises(MultiaddrError):
            Multiaddr.from_components(bad)


def test_accessors_on_relayed_address() -> None:
    relay, target = PeerId.from_string(QM_ID), PeerId.from_string(ED_ID)
    addr = Multiaddr(f"/ip4/1.2.3.4/udp/4001/quic-v1/p2p/{QM_ID}/p2p-circuit/p2p/{ED_ID}")
    assert addr.is_relayed()
    assert addr.peer_id == target
    assert addr.relay_peer_id() == relay
    assert addr.value_for("p2p") == QM_ID  # the first one
    assert addr.value_for("ipfs") == QM_ID
    assert addr.value_for("udp") == "4001"
    assert addr.value_for("quic-v1") is None
    assert addr.value_for("tcp") is None
    assert addr.transport() is None
    assert addr.host_port() == ("1.2.3.4", 4001)
    reservation = addr.without_peer_id()
    assert str(reservation).endswith("/p2p-circuit")
    assert reservation.peer_id is None and reservation.relay_peer_id() == relay
    assert reservation.with_peer_id(target) == addr
    assert len(addr) == 6 and not Multiaddr("")


def test_peer_id_helpers() -> None:
    peer = PeerId.from_public_key(PrivateKey.generate().public_key)
    base = Multiaddr("/ip4/10.0.0.1/tcp/4001")
    assert base.peer_id is None and base.without_peer_id() == base
    assert base.relay_peer_id() is None and not base.is_relayed()
    with_id = base.with_peer_id(peer)
    assert str(with_id) == f"/ip4/10.0.0.1/tcp/4001/p2p/{peer}"
    assert with_id.peer_id == peer
    other = PeerId.from_string(ED_ID)
    assert with_id.with_peer_id(other).peer_id == other  # replaced, not appended
    assert str(with_id.with_peer_id(other)).count("/p2p/") == 1
    assert with_id.without_peer_id() == base
    assert base.encapsulate(Multiaddr(f"/p2p/{peer}")) == with_id
    assert Multiaddr(f"/p2p/{peer}").without_peer_id() == Multiaddr("")


@pytest.mark.parametrize(
    ("text", "transport"),
    [
        ("/ip4/1.2.3.4/udp/1/quic-v1", "quic-v1"),
        (f"/ip6/::1/udp/1/quic-v1/p2p/{ED_ID}", "quic-v1"),
        ("/dns4/example.com/udp/1/quic-v1", "quic-v1"),
        ("/ip4/1.2.3.4/tcp/1", "tcp"),
        (f"/dns/example.com/tcp/1/p2p/{ED_ID}", "tcp"),
        ("/ip4/1.2.3.4/udp/1", None),
        ("/ip4/1.2.3.4/tcp/1/quic-v1", None),
        ("/ip4/1.2.3.4/tcp/1/p2p-circuit", None),
        (f"/ip4/1.2.3.4/tcp/1/p2p/{ED_ID}/p2p-circuit/p2p/{QM_ID}", None),
        ("/ip4/1.2.3.4", None),
        ("/tcp/1", None),
        (f"/p2p/{ED_ID}", None),
        ("", None),
    ],
)
def test_transport(text: str, transport: str | None) -> None:
    assert Multiaddr(text).transport() == transport


def test_host_port() -> None:
    assert Multiaddr("/ip6/::1/udp/9/quic-v1").host_port() == ("::1", 9)
    assert Multiaddr("/dns6/h.example/tcp/443").host_port() == ("h.example", 443)
    for text in ("/ip4/1.2.3.4", f"/p2p/{ED_ID}", "/tcp/1", "/ip4/1.2.3.4/p2p-circuit/tcp/1", ""):
        with pytest.raises(MultiaddrError, match="no host and tcp/udp port"):
            Multiaddr(text).host_port()


def test_from_host_port() -> None:
    assert str(Multiaddr.from_host_port("quic-v1", "127.0.0.1", 4001)) == (
        "/ip4/127.0.0.1/udp/4001/quic-v1"
    )
    assert str(Multiaddr.from_host_port("tcp", "::1", 0)) == "/ip6/::1/tcp/0"
    assert str(Multiaddr.from_host_port("tcp", "[::1]", 5)) == "/ip6/::1/tcp/5"
    assert str(Multiaddr.from_host_port("tcp", "boot.example", 443)) == "/dns/boot.example/tcp/443"
    for transport, host, port, part in [
        ("udp", "1.2.3.4", 1, "unknown transport 'udp'"),
        ("tcp", "1.2.3.4", 70000, "bad port 70000"),
        ("tcp", "1.2.3.4", -1, "bad port -1"),
        ("tcp", "a/b", 1, "bad value 'a/b'"),
        ("tcp", "", 1, "bad value ''"),
    ]:
        with pytest.raises(MultiaddrError) as info:
            Multiaddr.from_host_port(transport, host, port)
        assert part in str(info.value)
    for addr in (
        Multiaddr.from_host_port("quic-v1", "10.1.2.3", 7),
        Multiaddr.from_host_port("tcp", "fe80::1", 8),
    ):
        assert Multiaddr.from_host_port(addr.transport() or "", *addr.host_port()) == addr


def test_immutable_hashable_picklable() -> None:
    addr = Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{ED_ID}")
    assert {addr: 1}[Multiaddr(f"/ip4/1.2.3.4/tcp/1/ipfs/{ED_ID}")] == 1
    assert addr != Multiaddr("/ip4/1.2.3.4/tcp/1") and addr != str(addr)
    assert pickle.loads(pickle.dumps(addr)) == addr
    assert repr(addr) == f"Multiaddr('/ip4/1.2.3.4/tcp/1/p2p/{ED_ID}')"
    with pytest.raises(AttributeError):
        addr.host = "x"


# --- property tests --------------------------------------------------------

_PEERS = [PeerId.from_string(ED_ID), PeerId.from_string(QM_ID)] + [
    PeerId.from_public_key(PrivateKey.generate().public_key) for _ in range(3)
]
_dns_name = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=30)
_component = st.one_of(
    st.ip_addresses(v=4).map(lambda a: ("ip4", str(a))),
    st.ip_addresses(v=6).map(lambda a: ("ip6", str(a))),
    st.tuples(st.sampled_from(["tcp", "udp"]), st.integers(0, 65535).map(str)),
    st.tuples(st.sampled_from(["dns", "dns4", "dns6"]), _dns_name),
    st.sampled_from(_PEERS).map(lambda p: ("p2p", str(p))),
    st.sampled_from([("quic-v1", None), ("p2p-circuit", None)]),
)


@given(st.lists(_component, max_size=8))
def test_random_valid_multiaddrs_round_trip(components: list[tuple[str, str | None]]) -> None:
    addr = Multiaddr.from_components(components)
    assert addr.components == tuple(components)
    assert Multiaddr(str(addr)) == addr
    assert str(Multiaddr(str(addr))) == str(addr)
    assert Multiaddr.from_bytes(addr.to_bytes()) == addr
    assert str(Multiaddr.from_bytes(addr.to_bytes())) == str(addr)


@given(st.binary(max_size=64))
def test_random_bytes_raise_only_multiaddr_error(data: bytes) -> None:
    try:
        addr = Multiaddr.from_bytes(data)
    except MultiaddrError:
        return
    assert Multiaddr(str(addr)) == addr


@given(
    st.lists(
        st.sampled_from([b"\x04", b"\x06", b"\x29", b"\x35", b"\x91\x02", b"\xa5\x03", b"\xcd\x03"])
        | st.binary(max_size=6),
        max_size=8,
    )
)
def test_plausible_bytes_raise_only_multiaddr_error(chunks: list[bytes]) -> None:
    try:
        Multiaddr.from_bytes(b"".join(chunks))
    except MultiaddrError:
        pass


@given(
    st.lists(
        st.sampled_from(["ip4", "tcp", "udp", "p2p", "dns", "1.2.3.4", "80", ""])
        | st.text(max_size=8),
        max_size=6,
    )
)
def test_random_text_raises_only_multiaddr_error(parts: list[str]) -> None:
    try:
        Multiaddr("/" + "/".join(parts))
    except MultiaddrError:
        pass
