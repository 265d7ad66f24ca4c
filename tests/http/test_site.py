"""build_site: URL layout, mounted children, the connection gate and the channel limits."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from pxestack.errors import ApiMisuse
from pxestack.http.site import (
    REFUSAL_READ_TIMEOUT,
    AssetSite,
    GatedChannel,
    RefusingProtocol,
    SiteLimits,
    build_site,
)


class Fixed(Resource):
    """A leaf that answers with a fixed body (stands in for a provisioning resource)."""

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: object) -> bytes:
        return self.body


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "ipxe.efi").write_bytes(b"EFI")
    (tmp_path / "admin").write_bytes(b"a file shadowed by a child")
    return tmp_path


def connect(site: AssetSite, host: str = "127.0.0.1") -> tuple[object, StringTransport]:
    address = IPv4Address("TCP", host, 50000)
    protocol = site.buildProtocol(address)
    assert protocol is not None
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def get(site: AssetSite, path: str) -> tuple[int, bytes]:
    protocol, transport = connect(site)
    protocol.dataReceived(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    site.reactor.advance(0)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def make_site(root: Path | None, **kwargs: object) -> AssetSite:
    return build_site(root, reactor=Clock(), **kwargs)  # type: ignore[arg-type]


def test_url_layout(root: Path) -> None:
    site = make_site(root, children={b"admin": Fixed(b"api"), b"boot.ipxe": Fixed(b"#!ipxe\n")})
    assert get(site, "/assets/ipxe.efi") == (200, b"EFI")
    assert get(site, "/ipxe.efi") == (200, b"EFI")
    assert get(site, "/boot.ipxe") == (200, b"#!ipxe\n")
    assert get(site, "/admin") == (200, b"api")  # a child wins over a file
    assert get(site, "/assets/admin") == (200, b"a file shadowed by a child")
    assert get(site, "/healthz") == (200, b"ok\n")
    assert get(site, "/")[0] == 404


def test_empty_segments_before_the_first_are_merged(root: Path) -> None:
    # shim over UEFI HTTP Boot asks for "//grubx64.efi" (its directory's URL + "/name").
    site = make_site(root, children={b"": Fixed(b"dashboard"), b"boot.ipxe": Fixed(b"s")})
    assert get(site, "//ipxe.efi") == (200, b"EFI")
    assert get(site, "///assets/ipxe.efi") == (200, b"EFI")
    assert get(site, "//boot.ipxe") == (200, b"s")
    assert get(site, "/") == (200, b"dashboard")
    assert get(site, "//") == (200, b"dashboard")
    assert get(site, "//nothing")[0] == 404


def test_without_bare_paths_only_assets_prefix_serves_files(root: Path) -> None:
    site = make_site(root, bare_assets=False)
    assert get(site, "/ipxe.efi")[0] == 404
    assert get(site, "/assets/ipxe.efi") == (200, b"EFI")


def test_site_without_assets(root: Path) -> None:
    site = make_site(None, children={b"metrics": Fixed(b"m")})
    assert get(site, "/assets/ipxe.efi")[0] == 404
    assert get(site, "/ipxe.efi")[0] == 404
    assert get(site, "/metrics") == (200, b"m")


def test_healthz_json_reports_counters(root: Path) -> None:
    site = make_site(root)
    get(site, "/ipxe.efi")
    status, body = get(site, "/healthz?format=json")
    document = json.loads(body)
    assert status == 200 and document["status"] == "ok"
    assert document["totals"]["completed"] == 1
    assert document["connections"]["accepted"] == 2


@pytest.mark.parametrize("name", ["admin", b"a/b"])
def test_child_names_must_be_one_bytes_segment(root: Path, name: object) -> None:
    with pytest.raises(ApiMisuse):
        make_site(root, children={name: Fixed(b"x")})  # type: ignore[dict-item]


def test_per_client_cap_answers_503_and_releases_on_close(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(max_connections_per_client=2))
    first, _ = connect(site, "198.18.0.10")
    connect(site, "198.18.0.10")
    refused, transport = connect(site, "198.18.0.10")
    assert isinstance(refused, RefusingProtocol)
    refused.dataReceived(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 2" in transport.value()
    assert transport.disconnecting
    refused.connectionLost(Failure(ConnectionDone()))
    # another client is not affected by this one's cap
    assert isinstance(connect(site, "198.18.0.11")[0], GatedChannel)
    assert site.stats.connections.refused_per_client == 1
    first.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
    assert site.connections_from("198.18.0.10") == 1
    assert isinstance(connect(site, "198.18.0.10")[0], GatedChannel)


def served(site: AssetSite, host: str) -> tuple[object, StringTransport]:
    """A connection that sent one whole request and was answered (kept alive, no head)."""
    protocol, transport = connect(site, host)
    protocol.dataReceived(b"GET /ipxe.efi HTTP/1.1\r\nHost: t\r\n\r\n")  # type: ignore[attr-defined]
    site.reactor.advance(0)
    assert transport.value().startswith(b"HTTP/1.1 200")
    return protocol, transport


def test_total_cap(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(max_connections=3, reserved_connections=0))
    channels = [served(site, f"198.18.0.{i}")[0] for i in range(3)]
    refused, _transport = connect(site, "198.18.1.1")
    assert isinstance(refused, RefusingProtocol)
    assert site.stats.connections.refused_total == 1
    assert site.stats.connections.open == 3
    for channel in channels:
        channel.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
    assert site.stats.connections.open == 0
    assert isinstance(connect(site, "198.18.1.1")[0], GatedChannel)


def test_refusal_answers_after_a_timeout_without_a_request(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(max_connections=1, reserved_connections=0))
    served(site, "127.0.0.1")
    _refused, transport = connect(site)
    assert transport.value() == b""  # waits for the request head first
    site.reactor.advance(REFUSAL_READ_TIMEOUT)
    assert transport.value().startswith(b"HTTP/1.1 503")


def test_refusals_are_capped_too(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(max_connections=1, reserved_connections=0))
    served(site, "127.0.0.1")
    connect(site)  # refused with a 503: one refusal slot in use
    assert site.buildProtocol(IPv4Address("TCP", "198.18.0.1", 1)) is None


def test_oversized_request_head_is_rejected(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(max_header_bytes=1024))
    protocol, transport = connect(site)
    protocol.dataReceived(b"GET /ipxe.efi HTTP/1.1\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400")
    assert transport.disconnecting


def test_idle_connection_times_out(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(idle_timeout=7.0))
    _protocol, transport = connect(site)
    site.reactor.advance(6.9)
    assert not transport.disconnecting
    site.reactor.advance(0.2)
    assert transport.disconnecting


def test_half_sent_request_head_times_out(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(idle_timeout=7.0))
    protocol, transport = connect(site)
    protocol.dataReceived(b"GET /ipxe.efi HTTP/1.1\r\n")  # slowloris: never finishes
    site.reactor.advance(7.1)
    assert transport.disconnecting


# -- bodies: refused on the head, capped while they stream, kept in memory --------------------


class Sink(Resource):
    """A leaf that takes POST bodies up to *limit* bytes and records what it got."""

    isLeaf = True

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.bodies: list[bytes] = []
        self.content_types: list[type] = []

    def request_body_limit(self, method: bytes) -> int:
        return self.limit if method == b"POST" else 0

    def render_POST(self, request: Any) -> bytes:
        self.content_types.append(type(request.content))
        self.bodies.append(request.content.read())
        return b"stored\n"


class HalfCloseTransport(StringTransport):
    """A StringTransport that can close its write side, like a TCP connection."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True
        self._writeDisconnected = True

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True


def connect_half_close(site: AssetSite, host: str = "127.0.0.1") -> tuple[Any, HalfCloseTransport]:
    address = IPv4Address("TCP", host, 50001)
    protocol = site.buildProtocol(address)
    assert protocol is not None
    transport = HalfCloseTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def test_declared_body_over_the_limit_is_refused_before_a_byte_is_read(root: Path) -> None:
    sink = Sink(limit=1000)
    site = make_site(root, children={b"upload": sink})
    protocol, transport = connect_half_close(site)
    protocol.dataReceived(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 300000000\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in transport.value()
    assert transport.write_closed and not transport.aborted
    protocol.dataReceived(b"x" * 65536)  # what the client still sends is dropped unread
    assert protocol.requests[-1].content is None or protocol.requests[-1].content.tell() == 0
    site.reactor.advance(REFUSAL_READ_TIMEOUT)
    assert transport.aborted
    assert sink.bodies == []
    assert site.stats.connections.bodies_refused == 1


def test_a_refused_body_never_gets_100_continue(root: Path) -> None:
    site = make_site(root, children={b"upload": Sink(limit=10)})
    protocol, transport = connect(site)
    protocol.dataReceived(  # type: ignore[attr-defined]
        b"POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in transport.value()


@pytest.mark.parametrize("path", ["/healthz", "/ipxe.efi", "/upload"])
def test_a_method_without_a_body_reads_no_body(root: Path, path: str) -> None:
    """POST to /healthz (405) or an asset, or a GET with a body: 413 before reading."""
    sink = Sink(limit=1000)
    site = make_site(root, children={b"upload": sink})
    method = b"GET" if path == "/upload" else b"POST"
    protocol, transport = connect(site)
    protocol.dataReceived(  # type: ignore[attr-defined]
        method + b" " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert transport.disconnecting


def test_chunked_body_is_cut_off_once_it_passes_the_limit(root: Path) -> None:
    sink = Sink(limit=100)
    site = make_site(root, children={b"upload": sink})
    protocol, transport = connect_half_close(site)
    protocol.dataReceived(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    protocol.dataReceived(b"3c\r\n" + b"a" * 60 + b"\r\n")
    assert transport.value() == b""
    protocol.dataReceived(b"3c\r\n" + b"b" * 60 + b"\r\n0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert sink.bodies == []
    assert protocol.requests[-1].content.getvalue() == b"a" * 60


def test_chunked_body_within_the_limit_is_served(root: Path) -> None:
    sink = Sink(limit=100)
    site = make_site(root, children={b"upload": sink})
    protocol, transport = connect(site)
    protocol.dataReceived(  # type: ignore[attr-defined]
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert sink.bodies == [b"hello"]


def test_bodies_are_kept_in_memory_not_in_a_temporary_file(root: Path) -> None:
    # twisted.web itself spools a body of 100000 bytes or more to a temporary file
    sink = Sink(limit=1 << 20)
    site = make_site(root, children={b"upload": sink})
    body = b"z" * 300000
    protocol, transport = connect(site)
    protocol.dataReceived(  # type: ignore[attr-defined]
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert sink.bodies == [body]
    assert sink.content_types == [BytesIO]


# -- heads: a deadline for the whole head, a share for finished heads, 400 when too large -----


def test_a_trickled_head_gets_408_at_the_head_deadline(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(idle_timeout=60.0, header_timeout=10.0))
    protocol, transport = connect_half_close(site)
    for piece in (b"GET /ipxe", b".efi HTTP/1.1\r\n", b"Host: t\r\n"):
        protocol.dataReceived(piece)  # a byte now and then resets only the idle timer
        site.reactor.advance(3.0)
    assert transport.value() == b""
    site.reactor.advance(1.1)
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    assert transport.write_closed
    assert site.stats.connections.head_timeouts == 1
    site.reactor.advance(REFUSAL_READ_TIMEOUT)
    assert transport.aborted


def test_the_head_deadline_starts_again_with_the_next_request(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(idle_timeout=60.0, header_timeout=10.0))
    protocol, transport = served(site, "127.0.0.1")
    site.reactor.advance(30.0)  # idle between requests: only idle_timeout applies
    assert not transport.disconnecting
    assert site.pending_heads() == 0
    transport.clear()
    protocol.dataReceived(b"GET /ipxe.efi HT")  # type: ignore[attr-defined]
    assert site.pending_heads() == 1
    site.reactor.advance(10.1)
    assert transport.value().startswith(b"HTTP/1.1 408 ")


def test_a_flood_of_half_sent_heads_does_not_lock_out_a_new_client(root: Path) -> None:
    """1024 half-sent heads from 64 addresses: a new client still gets its file at once."""
    site = make_site(root, limits=SiteLimits(max_connections=1024))
    flood = []
    for n in range(1024):
        protocol, transport = connect(site, f"198.18.{n % 64}.1")
        assert isinstance(protocol, GatedChannel)
        protocol.dataReceived(b"GET /ipxe.efi HTTP/1.1\r\nX-Slow: ")
        flood.append(transport)
    assert site.pending_heads() <= 512
    assert site.stats.connections.evicted >= 512
    assert site.stats.connections.open <= 1024
    code, body = get(site, "/ipxe.efi")
    assert (code, body) == (200, b"EFI")
    evicted = [t for t in flood if t.disconnecting]
    assert evicted and all(t.value().startswith(b"HTTP/1.1 503") for t in evicted)


def test_connections_past_their_head_are_never_evicted(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(max_connections=8, pending_head_share=0.5))
    finished = [served(site, f"198.18.0.{n}")[1] for n in range(4)]
    for n in range(40):
        protocol, _transport = connect(site, f"198.18.1.{n}")
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")  # type: ignore[attr-defined]
    assert not any(t.disconnecting for t in finished)
    assert site.pending_heads() == 4
    assert site.stats.connections.open == 8


def test_reserved_slots_take_operator_paths_only(root: Path) -> None:
    limits = SiteLimits(max_connections=2, reserved_connections=1)
    site = make_site(root, limits=limits, children={b"admin": Fixed(b"admin ok")})
    served(site, "198.18.0.1")
    served(site, "198.18.0.2")  # every ordinary slot is busy, none sending a head
    operator, transport = connect(site, "198.18.0.3")
    assert isinstance(operator, GatedChannel) and operator.reserve_only
    operator.dataReceived(b"GET /admin HTTP/1.1\r\nHost: t\r\n\r\n")
    site.reactor.advance(0)
    assert transport.value().startswith(b"HTTP/1.1 200") and b"admin ok" in transport.value()
    assert isinstance(connect(site, "198.18.0.4")[0], RefusingProtocol)  # reserve used up
    transport.clear()
    operator.dataReceived(b"GET /ipxe.efi HTTP/1.1\r\nHost: t\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 503")


@pytest.mark.parametrize("limit", [1024, 16384, 65536])
def test_one_long_request_line_gets_400_not_a_silent_close(root: Path, limit: int) -> None:
    site = make_site(root, limits=SiteLimits(max_header_bytes=limit))
    protocol, transport = connect(site)
    protocol.dataReceived(b"GET /" + b"a" * (limit + 10))  # type: ignore[attr-defined]
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    assert transport.disconnecting


def test_a_head_under_the_limit_with_long_lines_is_served(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(max_header_bytes=65536))
    protocol, transport = connect(site)
    protocol.dataReceived(  # type: ignore[attr-defined]
        b"GET /ipxe.efi HTTP/1.1\r\nHost: t\r\nX-Long: " + b"a" * 30000 + b"\r\n\r\n"
    )
    site.reactor.advance(0)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
