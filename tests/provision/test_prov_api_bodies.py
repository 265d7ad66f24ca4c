"""Request bodies of the provisioning API on pxestack's site: refused on the head, in memory."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from provision_helpers import ADMIN_TOKEN, make_rig, token_from_script
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pxestack.http.site import AssetSite, build_site


@pytest.fixture
def site(tmp_path: Path) -> AssetSite:
    rig = make_rig(tmp_path / "cluster")
    return build_site(None, children=rig.api.children(), reactor=Clock())


def send(site: AssetSite, data: bytes) -> tuple[Any, StringTransport]:
    address = IPv4Address("TCP", "198.18.5.5", 40000)
    channel = site.buildProtocol(address)
    assert channel is not None
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    channel.dataReceived(data)
    site.reactor.advance(0)
    return channel, transport


@pytest.mark.parametrize("path", [b"/final-ignition-config.json", b"/healthz"])
def test_a_huge_declared_body_is_refused_on_the_head(site: AssetSite, path: bytes) -> None:
    channel, transport = send(
        site,
        b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 300000000\r\n"
        b"Content-Type: application/json\r\n\r\n",
    )
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert transport.disconnecting
    channel.dataReceived(b"{" * 100000)  # the body that follows is never stored
    content = channel.requests[-1].content
    assert content is None or content.tell() == 0


def test_a_get_with_a_body_is_refused(site: AssetSite) -> None:
    _channel, transport = send(
        site, b"GET /admin/hosts HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789"
    )
    assert transport.value().startswith(b"HTTP/1.1 413 ")


def test_bodies_within_the_limit_are_served_from_memory(site: AssetSite) -> None:
    _channel, script = send(site, b"GET /first-stage-script/sn-1 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert script.value().startswith(b"HTTP/1.1 200 ")
    body = json.dumps({"ProviderId": "p-1"}).encode()
    channel, transport = send(
        site,
        b"PUT /admin/host/sn-1/set_provider_id HTTP/1.1\r\nHost: t\r\n"
        b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body,
    )
    assert transport.value().startswith(b"HTTP/1.1 202 "), transport.value()
    assert isinstance(channel.requests[-1].content if channel.requests else BytesIO(), BytesIO)
    assert token_from_script(script.value().partition(b"\r\n\r\n")[2].decode())


def test_the_site_and_the_resource_use_the_same_limit(tmp_path: Path) -> None:
    rig = make_rig(tmp_path / "cluster")
    children = rig.api.children()
    assert children[b"admin"].request_body_limit(b"PUT") == 4096  # type: ignore[attr-defined]
    assert children[b"final-ignition-config.json"].request_body_limit(  # type: ignore[attr-defined]
        b"POST") == 4096
    # POST /admin/hosts (add) and POST /admin/images/fetch take a JSON body; DELETE takes none.
    assert children[b"admin"].request_body_limit(b"POST") == 4096  # type: ignore[attr-defined]
    assert children[b"admin"].request_body_limit(b"DELETE") == 0  # type: ignore[attr-defined]
    assert children[b"ipxebootscript"].request_body_limit(b"POST") == 0  # type: ignore[attr-defined]
    site = build_site(None, children=children, reactor=Clock())
    over = b"x" * 4097
    _channel, transport = send(
        site,
        b"PUT /admin/host/sn-1/set_provider_id HTTP/1.1\r\nHost: t\r\n"
        b"Content-Length: %d\r\n\r\n" % len(over),
    )
    assert transport.value().startswith(b"HTTP/1.1 413 ")
