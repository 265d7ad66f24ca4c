"""The pxestack ``twisted.web`` site: URL layout, connection gate and limits.

URL layout (see ``docs/http.md``)::

    /assets/<path>     a file under the asset root (canonical form)
    /<path>            the same file, when no mounted child claims the first segment
                       (so firmware can be given short URLs such as /ipxe.efi)
    /healthz           StatusResource: "ok" (or JSON counters with ?format=json)
    /<child>/...       resources mounted by higher layers through ``children``
                       (iPXE scripts, the admin API, /metrics); a child wins over a file
                       of the same name

The gate in :class:`AssetSite` refuses connections beyond ``max_connections`` in total or
``max_connections_per_client`` from one IP address with a short 503, before any HTTP parsing
or resource lookup happens.  ``twisted.web``'s own idle timeout (``HTTPChannel.timeOut``)
closes connections that send nothing; the asset producers' watchdog drops clients that stop
reading while a body is being sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from pxestack.errors import ApiMisuse
from pxestack.http.assets import AssetResource
from pxestack.http.resources import PlainNotFound, StatusResource
from pxestack.http.stats import AssetStats

log = Logger()

#: The first path segment under which the asset root is always reachable.
ASSETS_SEGMENT = b"assets"
#: The first path segment of the built-in status resource.
STATUS_SEGMENT = b"healthz"


@dataclass(frozen=True, slots=True)
class SiteLimits:
    """Resource limits of the HTTP service (``http:`` keys of the same names)."""

    #: Open connections in total; more are answered 503 and closed.
    max_connections: int = 1024
    #: Open connections from one client IP address; more are answered 503 and closed.
    max_connections_per_client: int = 16
    #: Seconds a connection may sit without sending a request byte (between requests, or
    #: in the middle of a request head) before it is closed.
    idle_timeout: float = 60.0
    #: Seconds a client may accept no body byte before the transfer is dropped.
    stall_timeout: float = 30.0
    #: Bytes of request line plus headers accepted (larger heads get 400 and a close).
    max_header_bytes: int = 16384
    #: Number of header fields accepted in one request.
    max_headers: int = 100


class GatedChannel(http.HTTPChannel):
    """An ``HTTPChannel`` that tells the gate when it closes, and has the site's header caps."""

    on_close: Callable[[], None] | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Release this connection's slot in the gate, then let twisted.web clean up."""
        release, self.on_close = self.on_close, None
        if release is not None:
            release()
        super().connectionLost(reason)


#: How long a refused client may take to send its request head before it gets the 503
#: anyway.  Reading the head first avoids a TCP reset that could eat the 503 (closing a
#: socket with unread data makes Linux send RST).
REFUSAL_READ_TIMEOUT = 2.0

_REFUSAL_BODY = b"server busy, retry later\n"
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Retry-After: 2\r\n"
    b"Cache-Control: no-store\r\n"
    b"Connection: close\r\n"
    b"\r\n" % len(_REFUSAL_BODY)
) + _REFUSAL_BODY


class RefusingProtocol(Protocol):
    """Answers one connection with 503 Service Unavailable and closes it.

    It waits (at most :data:`REFUSAL_READ_TIMEOUT`) for the end of the request head so the
    client is reading when the answer arrives, but never parses anything.
    """

    def __init__(self, reactor: Any, max_header_bytes: int,
                 on_close: Callable[[], None]) -> None:
        self.reactor = reactor
        self.max_header_bytes = max_header_bytes
        self.on_close: Callable[[], None] | None = on_close
        self._received = 0
        self._tail = b""
        self._timer: IDelayedCall | None = None
        self._answered = False

    def connectionMade(self) -> None:
        """Start the short read timer."""
        self._timer = self.reactor.callLater(REFUSAL_READ_TIMEOUT, self._answer)

    def dataReceived(self, data: bytes) -> None:
        """Answer once the blank line ending the head (or too much data) has arrived."""
        self._received += len(data)
        window = self._tail + data
        self._tail = window[-3:]
        if b"\r\n\r\n" in window or b"\n\n" in window or self._received > self.max_header_bytes:
            self._answer()

    def _answer(self) -> None:
        if self._answered:
            return
        self._answered = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.transport is not None:
            self.transport.write(_REFUSAL)
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Cancel the timer and release the refusal slot."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        release, self.on_close = self.on_close, None
        if release is not None:
            release()


class AssetSite(Site):
    """A ``Site`` with a connection gate, header caps and structured access logging.

    :ivar stats: the :class:`AssetStats` shared with the asset resource; its
        ``connections`` counters are kept here.
    """

    protocol = GatedChannel
    noisy = False  # no "Starting factory" line per listening port

    def __init__(
        self,
        resource: IResource,
        *,
        limits: SiteLimits,
        stats: AssetStats,
        reactor: Any = None,
    ) -> None:
        super().__init__(resource, timeout=limits.idle_timeout, reactor=reactor)
        self.limits = limits
        self.stats = stats
        self._per_client: dict[str, int] = {}
        self._refusals = 0

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        """Accept the connection as an HTTP channel, or answer 503 when a cap is reached."""
        host = str(getattr(addr, "host", addr))
        counters = self.stats.connections
        limits = self.limits
        over_total = counters.open >= limits.max_connections
        over_client = self._per_client.get(host, 0) >= limits.max_connections_per_client
        if over_total or over_client:
            if over_total:
                counters.refused_total += 1
            else:
                counters.refused_per_client += 1
            log.info("refusing connection from {client}: {cap} connection cap reached",
                     client=host, cap="total" if over_total else "per-client")
            if self._refusals >= limits.max_connections:
                return None  # a flood: close without even the 503
            self._refusals += 1
            return RefusingProtocol(self.reactor, limits.max_header_bytes, self._end_refusal)
        channel = super().buildProtocol(addr)
        if channel is None:  # pragma: no cover - Site always builds one
            return None
        channel.totalHeadersSize = limits.max_header_bytes
        channel.maxHeaders = limits.max_headers
        counters.accepted += 1
        counters.open += 1
        self._per_client[host] = self._per_client.get(host, 0) + 1
        channel.on_close = lambda: self._release(host)
        built: Protocol = channel
        return built

    def _release(self, host: str) -> None:
        """One accepted connection from *host* closed."""
        self.stats.connections.open -= 1
        left = self._per_client.get(host, 0) - 1
        if left > 0:
            self._per_client[host] = left
        else:
            self._per_client.pop(host, None)

    def _end_refusal(self) -> None:
        self._refusals -= 1

    def connections_from(self, host: str) -> int:
        """How many accepted connections *host* has open now."""
        return self._per_client.get(host, 0)

    def log(self, request: http.Request) -> None:
        """One structured debug event per request instead of a combined-log-format line."""
        log.debug(
            "{client} {method} {uri} {code} {length}",
            client=str(getattr(request.getClientAddress(), "host", "-")),
            method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1"),
            code=request.code,
            length=request.sentLength,
        )


class SiteRoot(Resource):
    """The root resource: mounted children first, then ``/assets/``, then bare asset paths."""

    def __init__(self, assets: AssetResource | None, *, bare_assets: bool = True) -> None:
        super().__init__()
        self.assets = assets
        self.bare_assets = bare_assets
        self._not_found = PlainNotFound()

    def getChild(self, path: bytes, request: http.Request) -> Resource:
        """Route a first path segment that no mounted child claimed."""
        if self.assets is None:
            return self._not_found
        if path == ASSETS_SEGMENT:
            return self.assets
        if self.bare_assets:
            # Give the segment back so that the asset resource sees the whole path:
            # "/ipxe.efi" is the asset "ipxe.efi", "/coreos/vmlinuz" is "coreos/vmlinuz".
            request.prepath.pop()
            request.postpath.insert(0, path)
            return self.assets
        return self._not_found

    def render(self, request: http.Request) -> bytes:
        """``/`` itself: nothing to list."""
        return self._not_found.render(request)


def build_site(
    assets_root: Path | str | None,
    *,
    children: Mapping[bytes, IResource] | None = None,
    limits: SiteLimits | None = None,
    stats: AssetStats | None = None,
    cache_max_age: int = 0,
    use_sendfile: bool = True,
    bare_assets: bool = True,
    reactor: Any = None,
) -> AssetSite:
    """Build the HTTP site: assets under *assets_root* plus the *children* higher layers mount.

    :param assets_root: directory of boot assets, or None for a site without assets.
    :param children: resources by first path segment, e.g. ``{b"boot.ipxe": script,
        b"admin": api, b"metrics": exporter}``.  They take precedence over asset files with
        the same first segment; ``b"assets"`` and ``b"healthz"`` may be overridden too.
    :param limits: connection caps and timeouts (defaults: :class:`SiteLimits`).
    :param stats: counters to update; read them later from ``site.stats``.
    :param cache_max_age: see :class:`~pxestack.http.assets.AssetResource`.
    :param use_sendfile: False forces the copy path.
    :param bare_assets: also serve ``/<path>`` from the asset root (not just ``/assets/``).
    :param reactor: for timeouts and the watchdog (tests pass a ``task.Clock``-driven one).
    """
    limits = limits or SiteLimits()
    stats = stats if stats is not None else AssetStats()
    assets = None
    if assets_root is not None:
        assets = AssetResource(
            assets_root,
            stats=stats,
            reactor=reactor,
            stall_timeout=limits.stall_timeout,
            cache_max_age=cache_max_age,
            use_sendfile=use_sendfile,
        )
    root = SiteRoot(assets, bare_assets=bare_assets)
    root.putChild(STATUS_SEGMENT, StatusResource(stats))
    for name, child in (children or {}).items():
        if not isinstance(name, bytes) or b"/" in name:
            raise ApiMisuse(f"child name {name!r} must be one path segment as bytes")
        root.putChild(name, child)
    return AssetSite(root, limits=limits, stats=stats, reactor=reactor)


__all__ = [
    "ASSETS_SEGMENT",
    "STATUS_SEGMENT",
    "AssetSite",
    "GatedChannel",
    "RefusingProtocol",
    "SiteLimits",
    "SiteRoot",
    "build_site",
]
