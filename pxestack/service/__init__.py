"""Service composition: turn a :class:`~pxestack.config.Config` into one ``IService`` tree.

:func:`build_service` is the single place where the protocol servers are put together, so
``pxestack serve``, ``twistd pxestack`` and ``.tac`` files all run the same tree.  The
provisioning layer sits above this one: it passes its :class:`BootPolicy`, TFTP file source
and HTTP resources in through :class:`Extensions` instead of being imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application import service
from twisted.web.resource import IResource

from pxestack.bootevents import BootEventRecorder
from pxestack.config import Config
from pxestack.config.checks import metrics_token as read_metrics_token
from pxestack.dhcp.policy import BootPolicy
from pxestack.dhcp.seen import DhcpSightings
from pxestack.errors import ConfigError, ConfigProblem
from pxestack.metrics import Metrics, MetricsResource
from pxestack.tftp.source import FileSource


class HostRecords(Protocol):
    """The provisioning layer's host store as this layer hands it on (to extensions).

    The full interface is ``pxestack.provision.hoststore.HostStore``, a layer above this
    one; these are the reads every store has, with their results left opaque here.
    """

    def hosts(self) -> Sequence[object]:
        """Every host record."""

    def read(self, serial: str) -> object | None:
        """The record of *serial* with its ETag, or None."""

    def host_for_mac(self, mac: str) -> object | None:
        """The record with *mac* among its MAC addresses, or None."""


@dataclass
class Extensions:
    """What a higher layer (provisioning, an embedder) plugs into the protocol servers.

    Every field is optional; ``None`` means "use the built-in default".
    """

    #: A :class:`pxestack.dhcp.policy.BootPolicy`.
    boot_policy: BootPolicy | None = None
    #: A :class:`pxestack.tftp.source.FileSource` for the TFTP server.  With
    #: ``tftp.workers > 1`` it keeps running in this process; the workers ask it over
    #: their channel (``docs/tftp.md``, "Worker processes").
    tftp_source: FileSource | None = None
    #: Serve TFTP in this process's reactor whatever ``tftp.workers`` says (an embedder
    #: that wants no child processes).
    tftp_in_reactor: bool = False
    #: Extra twisted.web resources, by first path segment (e.g. ``{b"admin": resource}``).
    http_children: dict[bytes, IResource] = field(default_factory=dict)
    #: Services to run beside the protocol servers (for example a store flusher).
    services: list[service.IService] = field(default_factory=list)
    #: The :class:`pxestack.metrics.Metrics` every server reports to (made when None);
    #: served at ``/metrics`` by the HTTP service.
    metrics: Metrics | None = None
    #: A :class:`pxestack.dhcp.seen.DhcpSightings` the DHCP service attaches its lease
    #: store (server) or the clients it answered (proxy) to, so that a higher layer can
    #: ask what pxestack's DHCP saw recently (``provision.enrolment: dhcp-seen``).
    dhcp_sightings: DhcpSightings | None = None
    #: The :class:`pxestack.bootevents.BootEventRecorder` the DHCP and TFTP servers report
    #: each machine's boot steps to (made when None); the provisioning layer reports the
    #: later steps to the same one, the dashboard and ``/admin/events`` read it.
    events: BootEventRecorder | None = None
    #: The host store of the provisioning layer (``pxestack.provision``), when there is
    #: one: extensions read host records through it (:mod:`pxestack.extensions`).
    hosts: HostRecords | None = None
    #: Returns the work the layers above have accepted and not finished (the provisioning
    #: layer: its jobs running or queued for a thread); boot-storm admission holds new
    #: machines while it is at ``dhcp.admission.max_backlog`` (docs/dhcp.md).
    backlog: Callable[[], int] | None = None
    #: Health reports the protocol servers add for ``/admin/health`` (the DHCP lease table
    #: of ``dhcp.lease_store: postgresql``): each returns a mapping merged into the answer,
    #: and a report with ``ok`` false makes the answer 503.
    health: list[Callable[[], dict[str, Any]]] = field(default_factory=list)


class PxeStackService(service.MultiService):
    """The root of pxestack's service tree; stopping it closes every port and flushes state."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.metrics: Any = None
        self.events: Any = None
        self.setName("pxestack")


def metrics_token(config: Config) -> str | None:
    """The bearer token ``/metrics`` requires (``http.metrics_token[_file]``), or None."""
    problems: list[ConfigProblem] = []
    token = read_metrics_token(config, problems)
    if problems:
        raise ConfigError(problems)
    return token


def build_service(
    config: Config,
    extensions: Extensions | None = None,
    *,
    reactor: Any = None,
    dhcp_sockets: Any = None,
) -> PxeStackService:
    """Build the service tree for every section *config* enables.

    *dhcp_sockets* opens the DHCP ports and raw senders (a
    :class:`~pxestack.dhcp.protocol.DhcpSockets`); None: the kernel's, on *reactor*.
    """
    ext = extensions or Extensions()
    if ext.metrics is None:
        ext.metrics = Metrics()
    ext.http_children.setdefault(
        b"metrics", MetricsResource(ext.metrics, token=metrics_token(config))
    )
    if ext.events is None:
        ext.events = BootEventRecorder()
    root = PxeStackService(config)
    root.metrics = ext.metrics
    root.events = ext.events
    for extra in ext.services:
        extra.setServiceParent(root)
    lease_lookups: list[Any] = []
    if config.dhcp is not None:
        from pxestack.service.dhcp import build_dhcp_services

        for child in build_dhcp_services(config, ext, reactor=reactor, sockets=dhcp_sockets):
            child.setServiceParent(root)
            if hasattr(child, "mac_of"):
                lease_lookups.append(child.mac_of)
    if config.tftp is not None:
        from pxestack.service.tftp import build_tftp_services

        def mac_of(address: str) -> bytes | None:
            for lookup in lease_lookups:
                mac: bytes | None = lookup(address)
                if mac is not None:
                    return mac
            return None

        for child in build_tftp_services(config, ext, reactor=reactor,
                                         mac_of=mac_of if lease_lookups else None):
            child.setServiceParent(root)
    if config.http is not None:
        from pxestack.service.http import build_http_services

        for child in build_http_services(config, ext, reactor=reactor):
            child.setServiceParent(root)
    return root


__all__ = ["Extensions", "HostRecords", "PxeStackService", "build_service"]
