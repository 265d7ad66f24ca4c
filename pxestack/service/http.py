"""The HTTP service: the asset site plus higher layers' resources, on one TCP port.

:func:`build_http_services` turns the ``http:`` section into one :class:`HttpService`.
The port is bound in ``privilegedStartService`` (as ``twisted.application.internet``'s
servers do), so ``twistd`` can open port 80 before it drops root.
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from pxestack.config import Config
from pxestack.config.http import HttpConfig
from pxestack.errors import ApiMisuse
from pxestack.http.site import AssetSite, SiteLimits, build_site
from pxestack.http.stats import AssetStats
from pxestack.service.limits import DESCRIPTOR_RESERVE, raise_open_file_limit

log = Logger()

#: ``listen(2)`` backlog: a rack powering on opens hundreds of connections at once.
LISTEN_BACKLOG = 511


#: Descriptors each open connection may hold while it sends a file: the socket and the file.
DESCRIPTORS_PER_CONNECTION = 2
def ensure_descriptor_budget(max_connections: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` so *max_connections* transfers fit; returns the limit.

    A boot storm with the default ``max_connections`` (1024, each holding a socket and a
    file) would pass the usual soft limit of 1024, and the kernel would then refuse
    ``accept`` and ``open`` with EMFILE (:func:`~pxestack.service.limits.raise_open_file_limit`).
    If even the hard limit is too low, a warning names the problem and the service runs
    with what it has.
    """
    needed = max_connections * DESCRIPTORS_PER_CONNECTION + DESCRIPTOR_RESERVE
    soft = raise_open_file_limit(needed)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warn(
            "open-file limit {limit} is below the {needed} that http.max_connections "
            "{connections} needs; expect refused connections under load",
            limit=soft, needed=needed, connections=max_connections,
        )
    return soft


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class HttpService(service.Service):
    """Listen on one TCP address with an :class:`~pxestack.http.site.AssetSite`.

    :ivar site: the site (its ``stats`` hold the asset and connection counters).
    :ivar port: the listening port once started (``port.getHost().port`` is the real port
        number when 0 was configured), else None.
    """

    def __init__(
        self,
        site: AssetSite,
        listen: tuple[str, int],
        *,
        backlog: int = LISTEN_BACKLOG,
        reactor: Any = None,
    ) -> None:
        self.site = site
        self.listen = listen
        self.backlog = backlog
        self._reactor = reactor
        self.port: IListeningPort | None = None
        self.setName("http")

    @property
    def reactor(self) -> Any:
        """The reactor this service listens with."""
        return self._reactor if self._reactor is not None else _default_reactor()

    @property
    def stats(self) -> AssetStats:
        """The site's counters (for the metrics layer)."""
        return self.site.stats

    def privilegedStartService(self) -> None:
        """Bind the port (possibly privileged) before twistd drops root.

        Also raises the open-file limit while still privileged (see
        :func:`ensure_descriptor_budget`).
        """
        limits = self.site.limits
        ensure_descriptor_budget(limits.max_connections + limits.reserved_connections)
        host, port = self.listen
        self.port = self.reactor.listenTCP(
            port, self.site, backlog=self.backlog, interface=host
        )
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        """Bind now if ``privilegedStartService`` was not called (library use)."""
        if self.port is None:
            self.privilegedStartService()
        service.Service.startService(self)
        # Announce the port once the reactor runs: only then are connections accepted (and
        # SIGTERM handled), so scripts that wait for this line can rely on it.
        self.reactor.callWhenRunning(self._announce)

    def _announce(self) -> None:
        """Log the real listening address (the port number may have been 0)."""
        if self.port is None:
            return
        address = self.port.getHost()
        log.info(
            "http listening on http://{host}:{port}/",
            host=getattr(address, "host", self.listen[0]),
            port=getattr(address, "port", self.listen[1]),
        )

    def stopService(self) -> Any:
        """Stop accepting connections; returns the Deferred of ``stopListening``."""
        service.Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def limits_from(config: HttpConfig) -> SiteLimits:
    """The site limits an ``http:`` section asks for."""
    return SiteLimits(
        max_connections=config.max_connections,
        max_connections_per_client=config.max_connections_per_client,
        idle_timeout=config.idle_timeout,
        stall_timeout=config.stall_timeout,
        max_header_bytes=config.max_header_bytes,
        header_timeout=config.header_timeout,
        pending_head_share=config.pending_head_share,
        reserved_connections=config.reserved_connections,
    )


def build_http_services(
    config: Config, ext: Any, *, reactor: Any = None
) -> list[service.IService]:
    """The services for the ``http:`` section: one listening site.

    *ext* is a :class:`pxestack.service.Extensions`; its ``http_children`` (boot scripts,
    the admin API, /metrics) are mounted beside the assets and win over asset files of the
    same first path segment.
    """
    http_config = config.http
    if http_config is None:
        raise ApiMisuse("build_http_services called without an http: section")
    root = http_config.assets_root
    if root is not None and not root.is_dir():
        log.warn("http.assets_root {root} is not a directory: every asset will be 404",
                 root=str(root))
    site = build_site(
        http_config.assets_root,
        children=dict(getattr(ext, "http_children", None) or {}),
        limits=limits_from(http_config),
        cache_max_age=http_config.cache_max_age,
        use_sendfile=http_config.sendfile,
        reactor=reactor,
    )
    metrics = getattr(ext, "metrics", None)
    if metrics is not None:
        metrics.attach_site(site)
    return [HttpService(site, http_config.listen, reactor=reactor)]


__all__ = [
    "LISTEN_BACKLOG",
    "HttpService",
    "build_http_services",
    "ensure_descriptor_budget",
    "limits_from",
]
