"""build_site: URL layout, mounted children, the connection gate and the channel limits."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_total_cap(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(max_connections=3))
    channels = [connect(site, f"198.18.0.{i}")[0] for i in range(3)]
    refused, _transport = connect(site, "198.18.1.1")
    assert isinstance(refused, RefusingProtocol)
    assert site.stats.connections.refused_total == 1
    assert site.stats.connections.open == 3
    for channel in channels:
        channel.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
    assert site.stats.connections.open == 0
    assert isinstance(connect(site, "198.18.1.1")[0], GatedChannel)


def test_refusal_answers_after_a_timeout_without_a_request(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(max_connections=1))
    connect(site)
    _refused, transport = connect(site)
    assert transport.value() == b""  # waits for the request head first
    site.reactor.advance(REFUSAL_READ_TIMEOUT)
    assert transport.value().startswith(b"HTTP/1.1 503")


def test_refusals_are_capped_too(root: Path) -> None:
    site = make_site(root, limits=SiteLimits(max_connections=1))
    connect(site)
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
