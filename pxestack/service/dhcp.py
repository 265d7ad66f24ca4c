"""The DHCP service: the ``dhcp:`` section turned into listening sockets and a lease database.

:func:`build_dhcp_services` returns one :class:`DhcpService` (a ``MultiService``).  Work
that needs privileges or touches the system happens in ``privilegedStartService``, before
twistd drops root, exactly like the port services:

* each named interface is looked up (:mod:`pxestack.netif`) and gets its own socket on port
  67, bound with ``SO_BINDTODEVICE`` so that the interface of every packet is known (the
  cores take it as an argument) and several interfaces are served at once;
* with no interfaces named, one socket on ``listen`` (the quickstart uses 127.0.0.1:6767);
* full server: the lease journal is recovered (a torn tail is skipped) and the lease store
  restored; an ``AF_PACKET`` socket per interface sends unicast replies to clients that have
  no address yet (falls back to broadcast without CAP_NET_RAW);
* proxy mode: port 67 (shared with a site DHCP server on the same host through
  ``SO_REUSEADDR``) and the PXE port 4011 (``proxy_port``; 0 disables it).

Stopping closes the sockets, cancels the expiry timer, compacts and closes the journal.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer
from twisted.logger import Logger

from pxestack.config import Config
from pxestack.config.checks import provision_base_url
from pxestack.config.dhcp import BootConfig, DhcpConfig, client_id_bytes, mac_bytes
from pxestack.dhcp.decide import BootDefaults
from pxestack.dhcp.journal import LeaseJournal
from pxestack.dhcp.leases import AddressRange, InMemoryLeaseStore, Reservation, Subnet
from pxestack.dhcp.policy import BootPolicy, Loader, StaticBootPolicy
from pxestack.dhcp.protocol import (
    DeadlineTimer,
    DhcpDatagramProtocol,
    DhcpServerProtocol,
    DhcpSockets,
    KernelSockets,
    ProxyDhcpProtocol,
)
from pxestack.dhcp.proxy import ProxyDhcpCore
from pxestack.dhcp.seen import DhcpSightings, LeaseSightings, NeighbourLookup, ProxySightings
from pxestack.dhcp.server import (
    EVENT_KINDS,
    DhcpServerCore,
    InterfaceInfo,
    LeaseEvent,
    ServerSettings,
    SubnetSettings,
)
from pxestack.errors import ApiMisuse
from pxestack.netif import (
    InterfaceError,
    interface_for_address,
    lookup_interface,
    neighbour_mac,
)
from pxestack.service.admission import AdmissionWiring
from pxestack.service.neighbours import warn_neighbour_limits
from pxestack.service.ports import UdpPortService
from pxestack.wire import constants as c

log = Logger()

#: Journal file name under ``state_dir`` when ``dhcp.lease_file`` is not set.
DEFAULT_LEASE_FILE = "dhcp-leases.journal"
#: Seconds between journal compaction checks.
MAINTENANCE_INTERVAL = 60.0
#: Compact when this many records were appended since the last compaction (and the journal
#: holds at least twice as many records as live leases).
COMPACT_AFTER = 10_000


#: The iPXE script served by the provisioning layer, under its base URL.
PROVISION_SCRIPT_PATH = "/ipxebootscript"
#: The iPXE script handed out without provisioning: a file in ``http.assets_root``.
ASSET_SCRIPT_PATH = "/boot.ipxe"


def default_script_url(config: Config) -> str | None:
    """The iPXE script URL when ``dhcp.boot.ipxe_script_url`` is not set.

    With provisioning on: ``<provision base URL>/ipxebootscript`` (the URL its boot policy
    hands out, so every answer names a URL that exists).  Without: ``<http.public_url>
    /boot.ipxe``, a script the operator puts in the asset root.
    """
    public_url = config.http.public_url if config.http is not None else None
    if config.provision is not None:
        base = provision_base_url(config, [])
        if base:
            return base.rstrip("/") + PROVISION_SCRIPT_PATH
    return f"{public_url.rstrip('/')}{ASSET_SCRIPT_PATH}" if public_url else None


def boot_defaults(config: Config, server_address: IPv4Address) -> BootDefaults:
    """The boot decision's defaults from ``dhcp.boot`` and ``http.public_url``."""
    dhcp = config.dhcp
    boot = dhcp.boot if dhcp is not None else BootConfig()
    public_url = config.http.public_url if config.http is not None else None
    script = boot.ipxe_script_url or default_script_url(config)
    return BootDefaults(
        server_address=server_address,
        ipxe_script_url=script,
        http_boot_base_url=public_url,
        tftp_server=boot.tftp_server,
        bios_file=boot.bios_file,
        efi_x64_file=boot.efi_x64_file,
        efi_ia32_file=boot.efi_ia32_file,
        efi_arm64_file=boot.efi_arm64_file,
        ipxe_user_class=boot.ipxe_user_class,
        bios_loader=Loader(boot.loader["bios"]),
        efi_x64_loader=Loader(boot.loader["efi_x64"]),
        efi_ia32_loader=Loader(boot.loader["efi_ia32"]),
        efi_arm64_loader=Loader(boot.loader["efi_arm64"]),
        shim_file=boot.shim_file,
        shim_arm64_file=boot.shim_arm64_file,
        grub_file=boot.grub_file,
        pxelinux_file=boot.pxelinux_file,
        pxelinux_prefix=boot.pxelinux_prefix,
    )


def server_settings(dhcp: DhcpConfig) -> ServerSettings:
    """Subnets (pools grouped by subnet; the first pool's options win) and switches."""
    grouped: dict[IPv4Network, list[Any]] = {}
    for pool in dhcp.pools:
        grouped.setdefault(pool.subnet, []).append(pool)
    subnets = []
    for network, pools in grouped.items():
        first = pools[0]
        subnets.append(
            SubnetSettings(
                subnet=Subnet(network, tuple(AddressRange(p.start, p.end) for p in pools)),
                lease_time=first.lease_time or dhcp.lease_time,
                routers=(first.router,) if first.router is not None else (),
                dns=first.dns,
                ntp=first.ntp,
                domain=first.domain,
            )
        )
    return ServerSettings(
        subnets=tuple(subnets),
        relays=frozenset(dhcp.relays),
        offer_hold=float(dhcp.offer_hold),
        match_client_id=dhcp.match_client_id,
        authoritative=dhcp.authoritative,
        decline_quarantine=float(dhcp.decline_quarantine),
    )


def reservations(dhcp: DhcpConfig) -> list[Reservation]:
    """``dhcp.reservations`` as lease-store values."""
    return [
        Reservation(
            address=r.address,
            mac=mac_bytes(r.mac) if r.mac is not None else None,
            client_id=client_id_bytes(r.client_id) if r.client_id is not None else None,
            hostname=r.hostname,
        )
        for r in dhcp.reservations
    ]


#: Lease events worth logging at each log level (offers and expiry only at debug).
EVENTS_BY_LEVEL = {
    "debug": EVENT_KINDS,
    "info": frozenset({"bound", "released", "declined", "nak", "pool-exhausted"}),
    "warn": frozenset({"nak", "pool-exhausted"}),
    "error": frozenset(),
}


def _log_event(event: LeaseEvent) -> None:
    """Structured log line per lease change (offers and expiry at debug level)."""
    address = str(event.lease.address) if event.lease is not None else event.detail
    fields = {
        "event": event.kind,
        "address": address,
        "mac": event.mac.hex(":"),
        "xid": f"{event.xid:08x}",
        "iface": event.interface,
        "detail": event.detail,
    }
    if event.kind in ("offered", "expired"):
        log.debug("dhcp {event} {address} for {mac} on {iface}", **fields)
    elif event.kind in ("nak", "pool-exhausted"):
        log.warn("dhcp {event} for {mac} on {iface}: {detail}", **fields)
    else:
        log.info("dhcp {event} {address} for {mac} on {iface}", **fields)


class DhcpPortService(UdpPortService):
    """One DHCP listening port, opened through the service's :class:`DhcpSockets` factory
    (a batching port: one journal commit per batch of datagrams)."""

    def __init__(self, sockets: DhcpSockets, port: int, protocol: DhcpDatagramProtocol,
                 host: str, *, device: str | None, reuse_address: bool) -> None:
        super().__init__(port, protocol, host, device=device, broadcast=True,
                         reuse_address=reuse_address)
        self.sockets = sockets
        self.dhcp_protocol = protocol

    def privilegedStartService(self) -> None:
        """Bind the port before twistd drops root (67 and 4011 are privileged)."""
        port = self.sockets.listen(self.port_number, self.dhcp_protocol, self.interface,
                                   device=self.device, reuse_address=self.reuse_address)
        port.setBroadcastAllowed(True)
        self.port = port  # type: ignore[assignment]
        service.Service.privilegedStartService(self)


class DhcpService(service.MultiService):
    """The DHCP server or proxy for one configuration.  Its port children are created when
    it starts (interfaces are looked up then), so a missing interface fails the start with
    a message naming it, not the construction."""

    def __init__(
        self,
        config: Config,
        policy: BootPolicy,
        *,
        reactor: Any = None,
        sockets: DhcpSockets | None = None,
        lookup: Any = None,
        metrics: Any = None,
        sightings: DhcpSightings | None = None,
        neighbour: NeighbourLookup | None = None,
        events: Any = None,
        backlog: Any = None,
        health: list[Any] | None = None,
    ) -> None:
        super().__init__()
        if config.dhcp is None:
            raise ApiMisuse("DhcpService needs a dhcp: section")
        self.setName("dhcp")
        self.config = config
        self.dhcp: DhcpConfig = config.dhcp
        self.policy = policy
        self._reactor = reactor
        #: Opens the ports and raw senders: the kernel's unless a caller injects another
        #: factory (tests run the same batching code on in-memory sockets).
        self.sockets: DhcpSockets = sockets if sockets is not None else KernelSockets(reactor)
        self._lookup = lookup or lookup_interface
        self.core: DhcpServerCore | None = None
        self.store: InMemoryLeaseStore | None = None
        self.journal: LeaseJournal | None = None
        self.timer: DeadlineTimer | None = None
        self.proxy_cores: list[ProxyDhcpCore] = []
        self.protocols: list[DhcpServerProtocol | ProxyDhcpProtocol] = []
        #: A :class:`pxestack.metrics.Metrics` to report packets and leases to, or None.
        self.metrics = metrics
        #: Where the lease store (server) or the clients answered (proxy) are published
        #: for the layers above, or None.
        self.sightings = sightings
        self._neighbour = neighbour or neighbour_mac
        #: A :class:`pxestack.bootevents.BootEventRecorder` for the machines' DHCP steps.
        self.events = events
        self._senders: list[Any] = []
        self._prepared = False
        #: Boot-storm admission of new PXE clients (server mode, when enabled).
        self.admission: AdmissionWiring | None = None
        #: The higher layers' backlog (``Extensions.backlog``), one of admission's signals.
        self._backlog = backlog
        #: ``dhcp.lease_store: postgresql``: the shared table and its group commit.
        self.lease_table: Any = None
        self.claims: Any = None
        #: Where the lease table's health is reported (``Extensions.health``), or None.
        self._health = health

    @property
    def reactor(self) -> Any:
        """The reactor the ports and timers use."""
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    @property
    def lease_file(self) -> Path:
        """Where the lease journal lives."""
        return self.dhcp.lease_file or self.config.state_dir / DEFAULT_LEASE_FILE

    # -- interfaces --------------------------------------------------------------------

    def _interfaces(self) -> list[tuple[InterfaceInfo, str | None]]:
        """(interface, device to bind) for every socket to open."""
        if self.dhcp.interfaces:
            found: list[tuple[InterfaceInfo, str | None]] = []
            wanted = self.dhcp.server_address
            for name in self.dhcp.interfaces:
                nic = self._lookup(name)
                address, network = nic.choose(wanted)
                if wanted is not None and not nic.carries(wanted):
                    log.warn(
                        "dhcp.server_address {address} is not an address of interface "
                        "{iface}: replies there still name it as server identifier and "
                        "next-server", address=str(wanted), iface=name,
                    )
                log.info("dhcp on {iface}: server identifier {address}", iface=name,
                         address=str(address))
                found.append((InterfaceInfo(nic.name, address, network), name))
            return found
        host, _ = self.dhcp.listen
        address = self.dhcp.server_address or IPv4Address(host)
        if address == IPv4Address(0):
            raise InterfaceError(
                "dhcp.listen is 0.0.0.0 and no dhcp.interfaces are named: set "
                "dhcp.interfaces or dhcp.server_address so replies can name this server"
            )
        nic = interface_for_address(address)
        if nic is not None:
            network = nic.network
            name = nic.name
        else:
            pool = next((p for p in self.dhcp.pools if address in p.subnet), None)
            network = pool.subnet if pool is not None else IPv4Network(f"{address}/32")
            name = "listen"
        return [(InterfaceInfo(name, address, network), None)]

    def _reply_targets(self, info: InterfaceInfo) -> dict[str, Any]:
        """Broadcast address and client port for replies on this socket.

        On port 67 replies go to 255.255.255.255:68.  On a test port (the quickstart's 6767)
        clients listen on port + 1, and a loopback socket broadcasts to its own network.
        """
        port = self.dhcp.listen[1]
        client_port = c.DHCP_CLIENT_PORT if port == c.DHCP_SERVER_PORT else port + 1
        broadcast = (
            str(info.network.broadcast_address) if info.address.is_loopback
            else "255.255.255.255"
        )
        return {"client_port": client_port, "broadcast_address": broadcast}

    # -- start / stop ------------------------------------------------------------------

    def _prepare(self) -> None:
        if self._prepared:
            return
        self._prepared = True
        interfaces = self._interfaces()
        host, port = self.dhcp.listen
        if self.dhcp.mode == "server":
            self._prepare_server(interfaces, host, port)
        else:
            self._prepare_proxy(interfaces, host, port)
        if self.metrics is not None:
            if self.core is not None and self.store is not None:
                self.metrics.attach_dhcp_server(self.core, self.store, self.reactor.seconds)
            for protocol in self.protocols:
                self.metrics.attach_dhcp_protocol(protocol)
        if self.events is not None and self.core is not None:
            record_dhcp_steps(self.core, self.events)

    def mac_of(self, address: str) -> bytes | None:
        """The MAC address holding the lease of *address* now (None when none does)."""
        store = self.store
        if store is None:
            return None
        try:
            lease = store.lease_at(IPv4Address(address), self.reactor.seconds())
        except ValueError:
            return None
        return None if lease is None else lease.mac

    def _prepare_server(
        self, interfaces: list[tuple[InterfaceInfo, str | None]], host: str, port: int
    ) -> None:
        settings = server_settings(self.dhcp)
        journal: LeaseJournal | None = None
        if self.dhcp.lease_store.kind == "postgresql":
            store: InMemoryLeaseStore = self._open_shared_store(settings)
        else:
            journal, contents = LeaseJournal.open(self.lease_file, sync=self.dhcp.fsync)
            store = InMemoryLeaseStore(
                [s.subnet for s in settings.subnets],
                reservations(self.dhcp),
                max_offers=self.dhcp.max_offers,
                listener=journal,
            )
            now = self.reactor.seconds()
            kept = store.restore(contents.leases.values(), contents.declines.values(), now)
            log.info(
                "dhcp lease journal {path}: {kept} leases restored, {skipped} damaged bytes "
                "skipped", path=str(self.lease_file), kept=kept, skipped=contents.skipped_bytes,
            )
        core = DhcpServerCore(
            settings, store, self.policy, boot_defaults(self.config, IPv4Address(0)),
            on_event=_log_event,
            event_kinds=EVENTS_BY_LEVEL.get(self.config.log_level, EVENT_KINDS),
        )
        timer = DeadlineTimer(core, self.reactor)
        self.core, self.store, self.journal, self.timer = core, store, journal, timer
        if self.dhcp.admission.enabled:
            self.admission = AdmissionWiring(self.dhcp.admission, self.reactor,
                                             backlog=self._backlog)
            self.admission.attach(core, self.metrics)
        warn_neighbour_limits(self.dhcp.pools, [info for info, _ in interfaces])
        if self.sightings is not None:
            self.sightings.attach(LeaseSightings(store))
        for info, device in interfaces:
            frames = None
            if device is not None and self.dhcp.raw_replies:
                frames = self.sockets.frame_sender(device)
                if frames is not None:
                    self._senders.append(frames)
            protocol = DhcpServerProtocol(
                core, info, timer=timer, journal=journal, claims=self.claims,
                reactor=self.reactor, frames=frames, **self._reply_targets(info),
            )
            self.protocols.append(protocol)
            self._add_port(port, protocol, "" if device else host, device, reuse=False)
        if self.admission is not None:
            self.admission.replay_through(
                {p.interface.name: p for p in self.protocols if isinstance(p, DhcpServerProtocol)})
        maintenance = internet.TimerService(MAINTENANCE_INTERVAL, self.maintain)
        maintenance.clock = self.reactor
        maintenance.setServiceParent(self)
        timer.rearm()

    def _open_shared_store(self, settings: ServerSettings) -> InMemoryLeaseStore:
        """The lease store of ``dhcp.lease_store: postgresql``: memory in front of the
        shared table, its live leases loaded now (a failure names the setting)."""
        from pxestack.dhcp.sharedleases import SharedLeaseStore
        from pxestack.service.pgleases import LeaseGroupCommit, PostgresLeaseTable

        config = self.dhcp.lease_store
        assert config.dsn is not None  # the configuration reader fills it in
        table = PostgresLeaseTable(config.dsn, pool_size=config.pool,
                                   connect_timeout=config.connect_timeout,
                                   server=config.server_name)
        now = self.reactor.seconds()
        leases, declines = table.open(now)
        store = SharedLeaseStore([s.subnet for s in settings.subnets], reservations(self.dhcp),
                                 max_offers=self.dhcp.max_offers)
        kept = store.restore(leases, declines, now)
        store.begin_batch()  # restoring claims nothing: the table already holds these
        log.info("dhcp leases on PostgreSQL {where} (server {server}): {kept} live leases "
                 "loaded", where=table.where, server=table.server, kept=kept)
        self.lease_table = table
        self.claims = LeaseGroupCommit(store, table, self.reactor, max_inflight=config.pool)
        if self._health is not None:
            self._health.append(self.lease_health)
        return store

    def _prepare_proxy(
        self, interfaces: list[tuple[InterfaceInfo, str | None]], host: str, port: int
    ) -> None:
        # A proxy hands out no address: it notes the MACs it answered, and the layers above
        # map a request's source address to a MAC through the kernel's neighbour table.
        seen = ProxySightings(self._neighbour) if self.sightings is not None else None
        if seen is not None and self.sightings is not None:
            self.sightings.attach(seen)
        for info, device in interfaces:
            core = ProxyDhcpCore(
                boot_defaults(self.config, info.address),
                self.policy,
                relays=self.dhcp.relays,
                proxy_port=self.dhcp.proxy_port or c.PXE_PROXY_PORT,
                sightings=seen,
            )
            self.proxy_cores.append(core)
            ports = [port]
            if self.dhcp.proxy_port:
                ports.append(self.dhcp.proxy_port)
            for number in ports:
                protocol = ProxyDhcpProtocol(
                    core, info, port=number, reactor=self.reactor, **self._reply_targets(info)
                )
                self.protocols.append(protocol)
                # Port 67 is shared with a site DHCP server on the same host (SO_REUSEADDR).
                self._add_port(number, protocol, "" if device else host, device, reuse=True)

    def _add_port(
        self, port: int, protocol: Any, host: str, device: str | None, *, reuse: bool
    ) -> None:
        DhcpPortService(
            self.sockets, port, protocol, host, device=device, reuse_address=reuse,
        ).setServiceParent(self)

    def privilegedStartService(self) -> None:
        """Look up interfaces, recover leases, open raw sockets and bind every port."""
        self._prepare()
        super().privilegedStartService()

    def startService(self) -> None:
        """Start (binding now if twistd did not call ``privilegedStartService``)."""
        self._prepare()
        super().startService()
        if self.admission is not None:
            self.admission.start()
        if self.claims is not None:
            self.claims.start()

    def lease_health(self) -> dict[str, Any]:
        """The shared lease table's state for ``/admin/health`` (``ok`` false while it
        cannot be reached); empty with the journal."""
        if self.claims is None:
            return {}
        health: dict[str, Any] = self.claims.health()
        if not health["lease_db_ok"]:
            health["ok"] = False
        return health

    def maintain(self) -> None:
        """Periodic: compact the journal once it is mostly stale records."""
        if self.journal is None or self.store is None:
            return
        if self.journal.appended >= COMPACT_AFTER and self.journal.appended >= 2 * len(self.store):
            written = self.journal.compact(self.store.leases(), self.store.declines())
            log.info("dhcp lease journal compacted to {records} records", records=written)

    def stopService(self) -> defer.Deferred[None]:
        """Close the ports, stop the timer, compact and close the journal."""
        stopped: defer.Deferred[None] = defer.maybeDeferred(super().stopService)

        def finish(result: object) -> object:
            if self.timer is not None:
                self.timer.stop()
            if self.admission is not None:
                self.admission.stop()
            for sender in self._senders:
                close = getattr(sender, "close", None)
                if close is not None:
                    close()
            self._senders.clear()
            if self.journal is not None and self.store is not None:
                self.journal.compact(self.store.leases(), self.store.declines())
                self.journal.close()
                self.journal = None
            if self.claims is not None:
                self.claims.stop()
            if self.lease_table is not None:
                self.lease_table.close()
                self.lease_table = None
            return result

        stopped.addBoth(finish)
        return stopped


def record_dhcp_steps(core: DhcpServerCore, events: Any) -> None:
    """Report every OFFER and lease-granting ACK of *core* to *events* (a
    :class:`~pxestack.bootevents.BootEventRecorder`), composed with any ``on_progress``."""
    previous = core.on_progress

    def on_progress(bound: bool, mac: bytes, now: float) -> None:
        if previous is not None:
            previous(bound, mac, now)
        try:
            events.dhcp(mac, bound, now)
        except Exception:
            log.failure("recording a DHCP boot step failed")

    core.on_progress = on_progress


def build_dhcp_services(
    config: Config, ext: Any, *, reactor: Any = None, sockets: DhcpSockets | None = None,
) -> list[service.IService]:
    """The services for the ``dhcp:`` section (one :class:`DhcpService`).

    *ext* is a :class:`pxestack.service.Extensions`; its ``boot_policy`` replaces the
    default :class:`~pxestack.dhcp.policy.StaticBootPolicy`.  *sockets* opens the ports and
    raw senders (None: :class:`~pxestack.dhcp.protocol.KernelSockets` on *reactor*).
    """
    if config.dhcp is None:
        raise ApiMisuse("build_dhcp_services called without a dhcp: section")
    policy = getattr(ext, "boot_policy", None) or StaticBootPolicy()
    services: list[service.IService] = [
        DhcpService(
            config, policy, reactor=reactor, sockets=sockets,
            metrics=getattr(ext, "metrics", None),
            sightings=getattr(ext, "dhcp_sightings", None), events=getattr(ext, "events", None),
            backlog=getattr(ext, "backlog", None), health=getattr(ext, "health", None),
        )
    ]
    advertisements = config.dhcp.router_advertisements
    if advertisements.enabled:
        from pxestack.ra import RouterAdvertisementService

        services.append(
            RouterAdvertisementService(
                config.dhcp.interfaces, unicast=advertisements.unicast, reactor=reactor
            )
        )
    return services


__all__ = [
    "DEFAULT_LEASE_FILE",
    "DhcpPortService",
    "DhcpService",
    "boot_defaults",
    "build_dhcp_services",
    "default_script_url",
    "record_dhcp_steps",
    "reservations",
    "server_settings",
]
