"""The asset resource over an in-memory transport: HTTP semantics, paths, the copy path,
and the slow-client watchdog (driven by ``task.Clock``, no sleeps)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pxestack.http.assets import COPY_BUDGET, socket_sink_for
from pxestack.http.headers import UNSATISFIABLE, ByteRange, http_date, parse_range
from pxestack.http.site import AssetSite, SiteLimits, build_site
from pxestack.http.stats import TransferRecord


@dataclass
class Response:
    """A parsed HTTP/1.1 response."""

    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(status, headers, body)


class Harness:
    """A site driven by a Clock, and a way to send it one request on a fake connection."""

    def __init__(self, root: Path, **site_kwargs: object) -> None:
        self.clock = Clock()
        self.site: AssetSite = build_site(root, reactor=self.clock, **site_kwargs)  # type: ignore[arg-type]
        self.records: list[TransferRecord] = []
        self.site.stats.observers.append(self.records.append)

    def connect(self, host: str = "127.0.0.1") -> tuple[object, StringTransport]:
        address = IPv4Address("TCP", host, 40000)
        channel = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address,
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        channel.makeConnection(transport)
        return channel, transport

    def run_until_idle(self) -> None:
        """Let self-scheduled copy turns (callLater(0)) run, boundedly."""
        for _ in range(10_000):
            if not any(call.getTime() <= self.clock.seconds()
                       for call in self.clock.getDelayedCalls()):
                return
            self.clock.advance(0)
        raise AssertionError("transfer did not settle")

    def request(self, method: str, path: str, **headers: str) -> Response:
        channel, transport = self.connect()
        lines = [f"{method} {path} HTTP/1.1", "Host: test"]
        lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.run_until_idle()
        return parse_response(transport.value())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "kernel").write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    (assets / "empty").write_bytes(b"")
    (assets / "sub").mkdir()
    (assets / "sub" / "initrd.gz").write_bytes(b"gz" * 10)
    (assets / "big").write_bytes(os.urandom(3 * COPY_BUDGET + 12345))
    (tmp_path / "secret").write_bytes(b"outside the root")
    return assets


@pytest.fixture
def harness(root: Path) -> Harness:
    return Harness(root)


def test_get_whole_file_through_the_copy_path(harness: Harness, root: Path) -> None:
    response = harness.request("GET", "/assets/kernel")
    assert response.status == 200
    assert response.body == (root / "kernel").read_bytes()
    assert response.headers["content-length"] == "10240"
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["etag"].startswith('"')
    info = (root / "kernel").stat()
    assert response.headers["last-modified"] == http_date(int(info.st_mtime)).decode()
    totals = harness.site.stats.totals
    assert (totals.requests, totals.completed, totals.copied_bytes) == (1, 1, 10240)
    assert totals.sendfile_bytes == 0  # a StringTransport has no socket: no fast path
    assert harness.records[-1].method == "copy" and harness.records[-1].outcome == "completed"


def test_large_file_is_sent_in_bounded_turns(harness: Harness, root: Path) -> None:
    response = harness.request("GET", "/big")
    expected = (root / "big").read_bytes()
    assert hashlib.sha256(response.body).digest() == hashlib.sha256(expected).digest()
    assert harness.site.stats.per_asset["big"].bytes_sent == len(expected)


def test_bare_path_and_nested_path(harness: Harness, root: Path) -> None:
    assert harness.request("GET", "/kernel").body == (root / "kernel").read_bytes()
    nested = harness.request("GET", "/assets/sub/initrd.gz")
    assert nested.body == b"gz" * 10
    assert nested.headers["content-type"] == "application/gzip"
    assert "content-encoding" not in nested.headers


def test_head_sends_headers_only(harness: Harness) -> None:
    response = harness.request("HEAD", "/assets/kernel")
    assert response.status == 200
    assert response.headers["content-length"] == "10240"
    assert response.body == b""
    assert harness.site.stats.totals.bytes_sent == 0


def test_head_ignores_range(harness: Harness) -> None:
    response = harness.request("HEAD", "/kernel", Range="bytes=0-0")
    assert response.status == 200 and response.headers["content-length"] == "10240"


def test_empty_file(harness: Harness) -> None:
    response = harness.request("GET", "/empty")
    assert (response.status, response.body, response.headers["content-length"]) == (200, b"", "0")
    assert harness.request("GET", "/empty", Range="bytes=0-").status == 416


@pytest.mark.parametrize(
    ("range_field", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=10239-10239", 10239, 10239),
        ("bytes=10239-", 10239, 10239),
        ("bytes=-1", 10239, 10239),
        ("bytes=-300", 9940, 10239),
        ("bytes=100-199", 100, 199),
        ("bytes=10000-99999", 10000, 10239),
        ("bytes=-99999", 0, 10239),
    ],
)
def test_single_ranges(
    harness: Harness, root: Path, range_field: str, first: int, last: int
) -> None:
    response = harness.request("GET", "/kernel", Range=range_field)
    assert response.status == 206
    assert response.headers["content-range"] == f"bytes {first}-{last}/10240"
    assert response.headers["content-length"] == str(last - first + 1)
    assert response.body == (root / "kernel").read_bytes()[first:last + 1]
    assert harness.site.stats.per_asset["kernel"].partial == 1


@pytest.mark.parametrize("range_field", ["bytes=10240-", "bytes=20000-30000", "bytes=-0"])
def test_unsatisfiable_ranges_get_416(harness: Harness, range_field: str) -> None:
    response = harness.request("GET", "/kernel", Range=range_field)
    assert response.status == 416
    assert response.headers["content-range"] == "bytes */10240"


def test_multiple_ranges_get_the_whole_file(harness: Harness) -> None:
    response = harness.request("GET", "/kernel", Range="bytes=0-1,5-6")
    assert response.status == 200 and len(response.body) == 10240


def test_if_range_mismatch_sends_everything(harness: Harness) -> None:
    response = harness.request("GET", "/kernel", Range="bytes=0-0", If_Range='"old"')
    assert response.status == 200 and len(response.body) == 10240
    etag = harness.request("HEAD", "/kernel").headers["etag"]
    assert harness.request("GET", "/kernel", Range="bytes=0-0", If_Range=etag).status == 206


def test_etag_revalidation_gives_304(harness: Harness) -> None:
    etag = harness.request("HEAD", "/kernel").headers["etag"]
    response = harness.request("GET", "/kernel", If_None_Match=etag)
    assert response.status == 304
    assert response.body == b""
    assert response.headers["etag"] == etag
    assert "content-length" not in response.headers
    assert harness.request("GET", "/kernel", If_None_Match='"nope"').status == 200
    assert harness.site.stats.totals.not_modified == 1


def test_if_modified_since_gives_304(harness: Harness, root: Path) -> None:
    mtime = int((root / "kernel").stat().st_mtime)
    assert harness.request("GET", "/kernel",
                           If_Modified_Since=http_date(mtime).decode()).status == 304
    assert harness.request("HEAD", "/kernel",
                           If_Modified_Since=http_date(mtime - 10).decode()).status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/assets/../secret",
        "/assets/%2e%2e/secret",
        "/assets/sub/..%2f..%2fsecret",
        "/..%2fsecret",
        "/assets/%00kernel",
        "/assets/sub",  # a directory: no listing
        "/assets/",
        "/",
        "/assets/nope",
        "/assets/%ff%fe",  # not UTF-8
    ],
)
def test_refused_and_missing_paths_are_404(harness: Harness, path: str) -> None:
    response = harness.request("GET", path)
    assert response.status == 404
    assert b"outside" not in response.body
    assert harness.site.stats.per_asset == {}


def test_symlink_escape_is_refused(harness: Harness, root: Path) -> None:
    (root / "escape").symlink_to(root.parent / "secret")
    (root / "escape-dir").symlink_to(root.parent)
    (root / "inside").symlink_to("kernel")
    assert harness.request("GET", "/escape").status == 404
    assert harness.request("GET", "/escape-dir/secret").status == 404
    assert harness.request("GET", "/inside").status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_are_405(harness: Harness, method: str) -> None:
    response = harness.request(method, "/kernel")
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_cache_max_age(root: Path) -> None:
    response = Harness(root, cache_max_age=600).request("HEAD", "/kernel")
    assert response.headers["cache-control"] == "public, max-age=600"


def test_fake_transport_has_no_socket_sink(harness: Harness) -> None:
    channel, _transport = harness.connect()
    request = harness.site.requestFactory(channel)
    assert socket_sink_for(request) is None


def test_stalled_client_is_dropped_and_the_file_closed(root: Path) -> None:
    harness = Harness(root, limits=SiteLimits(stall_timeout=5.0))
    channel, transport = harness.connect()
    fds_before = len(os.listdir("/proc/self/fd"))
    channel.dataReceived(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
    # The client stops reading: the transport pushes back after the first turn's bytes.
    channel.pauseProducing()
    assert len(os.listdir("/proc/self/fd")) == fds_before + 1  # the asset is open
    harness.clock.advance(4.9)
    assert not transport.disconnecting
    harness.clock.advance(0.2)
    assert transport.disconnecting  # aborted (StringTransport records it here)
    assert len(os.listdir("/proc/self/fd")) == fds_before
    stats = harness.site.stats
    assert stats.connections.stalled == 1
    assert stats.per_asset["big"].aborted == 1 and stats.per_asset["big"].completed == 0
    assert harness.records[-1].outcome == "stalled"


def test_progress_keeps_the_watchdog_away(root: Path) -> None:
    harness = Harness(root, limits=SiteLimits(stall_timeout=5.0))
    channel, transport = harness.connect()
    channel.dataReceived(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
    channel.pauseProducing()
    for _ in range(4):  # the client drains a little every 3 s: never 5 s without progress
        harness.clock.advance(3.0)
        channel.resumeProducing()
        channel.pauseProducing()
    assert not transport.disconnecting
    assert harness.site.stats.connections.stalled == 0


def test_connection_loss_mid_transfer_closes_the_file(root: Path) -> None:
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    harness = Harness(root)
    channel, _transport = harness.connect()
    fds_before = len(os.listdir("/proc/self/fd"))
    channel.dataReceived(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
    channel.pauseProducing()
    assert len(os.listdir("/proc/self/fd")) == fds_before + 1
    channel.stopProducing()
    channel.connectionLost(Failure(ConnectionLost()))
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert harness.site.stats.per_asset["big"].aborted == 1
    assert harness.records[-1].outcome == "client-gone"
    assert harness.clock.getDelayedCalls() == []  # watchdog and copy turns cancelled
    assert harness.site.stats.connections.open == 0


def test_a_failing_observer_is_removed_not_raised(harness: Harness) -> None:
    def broken(record: TransferRecord) -> None:
        raise RuntimeError("observer bug")

    harness.site.stats.observers.insert(0, broken)
    assert harness.request("GET", "/kernel").status == 200
    assert broken not in harness.site.stats.observers
    assert harness.records[-1].outcome == "completed"


def test_keep_alive_serves_a_second_request(harness: Harness, root: Path) -> None:
    channel, transport = harness.connect()
    channel.dataReceived(b"GET /kernel HTTP/1.1\r\nHost: t\r\n\r\n"
                         b"GET /kernel HTTP/1.1\r\nHost: t\r\n\r\n")
    harness.run_until_idle()
    raw = transport.value()
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert harness.site.stats.per_asset["kernel"].completed == 2


class _Channel:
    """Just enough of an HTTPChannel for socket_sink_for: a transport that it produces for."""

    def __init__(self, transport: object) -> None:
        self.transport = transport


class _Request:
    def __init__(self, channel: object) -> None:
        self.channel = channel


@pytest.fixture
def tcp_transport() -> object:
    import socket

    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol

    ours, theirs = socket.socketpair()
    transport = tcp.Connection(ours, Protocol(), reactor=Clock())  # type: ignore[arg-type]
    yield transport
    ours.close()
    theirs.close()


def test_socket_sink_needs_a_plain_tcp_connection_producing_for_the_channel(
    tcp_transport: object,
) -> None:
    from twisted.internet.interfaces import ISSLTransport
    from zope.interface import directlyProvides

    from pxestack.http import assets

    channel = _Channel(tcp_transport)
    request = _Request(channel)
    assert socket_sink_for(request) is None  # the channel is not the transport's producer
    tcp_transport.registerProducer(channel, True)  # type: ignore[attr-defined]
    sink = socket_sink_for(request)
    assert sink is not None and assets.SENDFILE_SUPPORTED
    assert sink.fd == tcp_transport.socket.fileno()  # type: ignore[attr-defined]
    tcp_transport.TLS = True  # type: ignore[attr-defined]  # startTLS() sets this
    assert socket_sink_for(request) is None
    tcp_transport.TLS = False  # type: ignore[attr-defined]
    directlyProvides(tcp_transport, ISSLTransport)
    assert socket_sink_for(request) is None


def test_socket_sink_is_refused_when_sendfile_is_unsupported(
    tcp_transport: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pxestack.http import assets

    channel = _Channel(tcp_transport)
    tcp_transport.registerProducer(channel, True)  # type: ignore[attr-defined]
    monkeypatch.setattr(assets, "SENDFILE_SUPPORTED", False)
    assert socket_sink_for(_Request(channel)) is None


# -- properties ---------------------------------------------------------------------------

KERNEL = bytes(range(256)) * 40


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.integers(0, 11000), last=st.one_of(st.none(), st.integers(0, 11000)),
       suffix=st.booleans())
def test_any_range_returns_exactly_the_slice_the_rfc_model_selects(
    root: Path, first: int, last: int | None, suffix: bool
) -> None:
    harness = Harness(root)
    field = f"bytes=-{first}" if suffix else f"bytes={first}-{'' if last is None else last}"
    response = harness.request("GET", "/kernel", Range=field)
    expected = parse_range(field.encode(), len(KERNEL))
    if expected is UNSATISFIABLE:
        assert response.status == 416
    elif isinstance(expected, ByteRange):
        assert response.status == 206
        assert response.body == KERNEL[expected.first:expected.last + 1]
    else:
        assert (response.status, response.body) == (200, KERNEL)


SEGMENTS = ["..", ".", "", "sub", "kernel", "initrd.gz", "escape", "%2e%2e", "%2e", "%2F",
            "..%2f", "%5c..", "%00", "assets", "secret", "~", "%252e%252e"]


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=6))
def test_no_request_path_reaches_outside_the_root(root: Path, segments: list[str]) -> None:
    if not (root / "escape").is_symlink():
        (root / "escape").symlink_to(root.parent)
    harness = Harness(root)
    response = harness.request("GET", "/" + "/".join(segments))
    assert response.body != b"outside the root"
    if response.status == 200:
        inside = {p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
        assert response.body in inside
    else:
        assert response.status == 404


def test_if_none_match_split_over_several_field_lines(harness: Harness) -> None:
    etag = harness.request("HEAD", "/kernel").headers["etag"]
    channel, transport = harness.connect()
    channel.dataReceived(b"GET /kernel HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"a\"\r\n"
                         b"If-None-Match: " + etag.encode() + b"\r\n\r\n")
    assert parse_response(transport.value()).status == 304
