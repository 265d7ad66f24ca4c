"""The HTTP service: the asset site plus higher layers' resources, on one or two TCP ports.

:func:`build_http_services` turns the ``http:`` section into one :class:`HttpService`.
The ports are bound in ``privilegedStartService`` (as ``twisted.application.internet``'s
servers do), so ``twistd`` can open port 80 before it drops root.

With ``http.tls`` the service speaks HTTPS: on ``http.admin_listen`` when that is set (the
machines keep plain HTTP on ``http.listen``), else on ``http.listen``.  SIGHUP reloads the
certificate (:meth:`HttpService.reload_tls`).
"""

from __future__ import annotations

import resource
import signal
import threading
from types import FrameType
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from pxestack.config import Config
from pxestack.config.http import HttpConfig
from pxestack.errors import ApiMisuse, ConfigError, ConfigProblem
from pxestack.http.site import (
    ADMIN_LISTENER,
    MAIN_LISTENER,
    AssetSite,
    ListenerFactory,
    SiteLimits,
    build_site,
)
from pxestack.http.stats import AssetStats
from pxestack.http.tls import ServerTls, TlsLoadError
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
    """Listen on one TCP address (two with *admin_listen*) with an
    :class:`~pxestack.http.site.AssetSite`.

    :ivar site: the site (its ``stats`` hold the asset and connection counters).
    :ivar port: the listening port once started (``port.getHost().port`` is the real port
        number when 0 was configured), else None.
    :ivar admin_port: the port of *admin_listen* once started, else None.
    :ivar tls: the server certificate, when the service speaks TLS: on *admin_listen* when
        it is given, else on *listen*.
    """

    def __init__(
        self,
        site: AssetSite,
        listen: tuple[str, int],
        *,
        backlog: int = LISTEN_BACKLOG,
        reactor: Any = None,
        admin_listen: tuple[str, int] | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.site = site
        self.listen = listen
        self.admin_listen = admin_listen
        self.tls = tls
        self.backlog = backlog
        self._reactor = reactor
        self.port: IListeningPort | None = None
        self.admin_port: IListeningPort | None = None
        self._previous_sighup: Any = None
        self._sighup_installed = False
        self.setName("http")

    @property
    def reactor(self) -> Any:
        """The reactor this service listens with."""
        return self._reactor if self._reactor is not None else _default_reactor()

    @property
    def stats(self) -> AssetStats:
        """The site's counters (for the metrics layer)."""
        return self.site.stats

    def _listen(self, address: tuple[str, int], role: str, secure: bool) -> IListeningPort:
        tls = self.tls if secure else None
        # A plain main port takes the site itself (its channels are "main" by default).
        factory: Any = ListenerFactory(self.site, role) \
            if tls is not None or role != MAIN_LISTENER else self.site
        if tls is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            factory = TLSMemoryBIOFactory(tls, False, factory)
            factory.noisy = False
        host, port = address
        listening: IListeningPort = self.reactor.listenTCP(
            port, factory, backlog=self.backlog, interface=host)
        return listening

    def privilegedStartService(self) -> None:
        """Bind the port(s) (possibly privileged) before twistd drops root.

        Also raises the open-file limit while still privileged (see
        :func:`ensure_descriptor_budget`).
        """
        limits = self.site.limits
        ensure_descriptor_budget(limits.max_connections + limits.reserved_connections)
        self.port = self._listen(self.listen, MAIN_LISTENER, secure=self.admin_listen is None)
        if self.admin_listen is not None:
            try:
                self.admin_port = self._listen(self.admin_listen, ADMIN_LISTENER, secure=True)
            except Exception:
                port, self.port = self.port, None
                port.stopListening()
                raise
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        """Bind now if ``privilegedStartService`` was not called (library use)."""
        if self.port is None:
            self.privilegedStartService()
        service.Service.startService(self)
        self._install_sighup()
        # Announce the port once the reactor runs: only then are connections accepted (and
        # SIGTERM handled), so scripts that wait for this line can rely on it.
        self.reactor.callWhenRunning(self._announce)

    def _install_sighup(self) -> None:
        """SIGHUP reloads the certificate (only the main thread may set signal handlers)."""
        if self.tls is None or threading.current_thread() is not threading.main_thread():
            return
        self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        self._sighup_installed = True

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.reload_tls)

    def reload_tls(self) -> bool:
        """Read the certificate and key again; new connections use them (see
        :meth:`pxestack.http.tls.ServerTls.reload`).  False when there is no TLS or the
        new files are unusable (the old certificate stays)."""
        if self.tls is None:
            return False
        log.info("SIGHUP: reloading the TLS certificate")
        return self.tls.reload()

    def _announce(self) -> None:
        """Log the real listening address (the port number may have been 0)."""
        for port, role, configured in ((self.port, MAIN_LISTENER, self.listen),
                                       (self.admin_port, ADMIN_LISTENER, self.admin_listen)):
            if port is None or configured is None:
                continue
            secure = self.tls is not None and (role == ADMIN_LISTENER or self.admin_listen is None)
            address = port.getHost()
            log.info(
                "http listening on {scheme}://{host}:{port}/{what}",
                scheme="https" if secure else "http",
                host=getattr(address, "host", configured[0]),
                port=getattr(address, "port", configured[1]),
                what=" (admin API)" if role == ADMIN_LISTENER else "",
            )

    def stopService(self) -> Any:
        """Stop accepting connections; returns the Deferred of ``stopListening``."""
        service.Service.stopService(self)
        if self._sighup_installed:
            self._sighup_installed = False
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGHUP, self._previous_sighup or signal.SIG_DFL)
        ports = [port for port in (self.admin_port, self.port) if port is not None]
        self.admin_port = self.port = None
        if not ports:
            return None
        if len(ports) == 1:
            return ports[0].stopListening()
        from twisted.internet import defer

        return defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in ports])


def server_tls(config: Config) -> ServerTls | None:
    """The server certificate of ``http.tls`` (with ``provision.api.client_ca_file``), or
    None; files that cannot be used are a :class:`ConfigError` naming the key."""
    http_config = config.http
    if http_config is None or http_config.tls is None:
        return None
    prov = config.provision
    client_ca = prov.api.client_ca_file if prov is not None else None
    tls = http_config.tls
    try:
        return ServerTls(tls.cert_file, tls.key_file, client_ca)
    except TlsLoadError as exc:
        key = ("provision.api.client_ca_file" if exc.key == "client_ca_file"
               else f"http.tls.{exc.key}")
        raise ConfigError([ConfigProblem(key, exc.message)]) from None


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
    return [HttpService(site, http_config.listen, reactor=reactor,
                        admin_listen=http_config.admin_listen, tls=server_tls(config))]


__all__ = [
    "LISTEN_BACKLOG",
    "HttpService",
    "build_http_services",
    "ensure_descriptor_budget",
    "limits_from",
    "server_tls",
]
