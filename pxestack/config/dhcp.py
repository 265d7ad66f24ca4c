"""The ``dhcp:`` section of the configuration."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import MappingProxyType

from pxestack.config._reader import Section
from pxestack.config.admission import AdmissionConfig, read_admission
from pxestack.dhcp.decide import BOOT_FILE_DEFAULTS

DHCP_MODES = ("server", "proxy")
#: Where the full server keeps its leases: a journal file of its own, or a PostgreSQL table
#: every server of the segment shares (docs/scale-out.md).
LEASE_STORE_KINDS = ("journal", "postgresql")

#: ``dhcp.boot.loader``'s architectures and the loaders each may choose.
LOADER_CHOICES: dict[str, tuple[str, ...]] = {
    "bios": ("ipxe", "pxelinux"),
    "efi_x64": ("ipxe", "grub"),
    "efi_ia32": ("ipxe",),
    "efi_arm64": ("ipxe", "grub"),
}
#: Every loader name (a profile's ``loader``).
LOADERS = ("ipxe", "grub", "pxelinux")

#: Shortest configurable lease (seconds).  Leases this short are for labs and tests, where a
#: client must reach RENEWING (T1 = half the lease) within seconds.
MIN_LEASE_TIME = 10

_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
_HEX_OCTETS = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2})*$")


def mac_bytes(text: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` (validated by the config reader) as six octets."""
    return bytes.fromhex(text.replace(":", "").replace("-", ""))


def client_id_bytes(text: str) -> bytes:
    """A reservation's ``client_id``: colon-separated hex octets, else the text's UTF-8 bytes.

    ``01:52:54:00:12:34:56`` is what dhclient and iPXE send (type 1 + MAC); a plain string
    matches clients configured with a textual identifier.
    """
    lowered = text.lower()
    if _HEX_OCTETS.match(lowered):
        return bytes.fromhex(lowered.replace(":", ""))
    return text.encode()


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """One subnet with its dynamic range and the options handed out with it."""

    subnet: IPv4Network
    start: IPv4Address
    end: IPv4Address
    router: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    lease_time: int | None = None
    ntp: tuple[IPv4Address, ...] = ()


@dataclass(frozen=True, slots=True)
class ReservationConfig:
    """A fixed address for one client, matched by MAC or by client identifier.

    ``mac`` is normalised to lower-case ``aa:bb:cc:dd:ee:ff``; see :func:`client_id_bytes`
    for ``client_id``.
    """

    address: IPv4Address
    mac: str | None = None
    client_id: str | None = None
    hostname: str | None = None


@dataclass(frozen=True, slots=True)
class BootConfig:
    """What the boot decision hands to each kind of client."""

    #: iPXE clients get this script URL (default: ``<http.public_url>/boot.ipxe``).
    ipxe_script_url: str | None = None
    #: Next-server for TFTP clients (default: the server's own address).
    tftp_server: IPv4Address | None = None
    # Boot-file defaults come from the boot decision's own defaults (one source).
    bios_file: str = BOOT_FILE_DEFAULTS["bios_file"]
    efi_x64_file: str = BOOT_FILE_DEFAULTS["efi_x64_file"]
    efi_ia32_file: str = BOOT_FILE_DEFAULTS["efi_ia32_file"]
    efi_arm64_file: str = BOOT_FILE_DEFAULTS["efi_arm64_file"]
    #: User class our own iPXE script sets; a client sending it is never chainloaded again.
    ipxe_user_class: str = "pxestack"
    #: The loader of each architecture (``bios``, ``efi_x64``, ``efi_ia32``, ``efi_arm64``):
    #: ``ipxe``, ``grub`` (UEFI: signed shim, then signed GRUB) or ``pxelinux`` (BIOS).
    loader: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({arch: "ipxe" for arch in LOADER_CHOICES})
    )
    #: The signed shim UEFI x64 machines with the ``grub`` loader get by TFTP.
    shim_file: str = BOOT_FILE_DEFAULTS["shim_file"]
    #: The same for UEFI arm64.
    shim_arm64_file: str = BOOT_FILE_DEFAULTS["shim_arm64_file"]
    #: The GRUB image shim loads (shim asks for ``grubx64.efi`` beside itself).
    grub_file: str = BOOT_FILE_DEFAULTS["grub_file"]
    #: What BIOS machines with the ``pxelinux`` loader get by TFTP.
    pxelinux_file: str = BOOT_FILE_DEFAULTS["pxelinux_file"]
    #: PXELINUX's path prefix (DHCP option 210), e.g. an HTTP URL ending in ``/``: lpxelinux.0
    #: then fetches ``ldlinux.c32`` and ``pxelinux.cfg/...`` from there.
    pxelinux_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class RouterAdvertisementConfig:
    """The IPv6 router-advertisement responder that ends iPXE's ~13 s router-discovery wait."""

    enabled: bool = False
    #: Answer each solicitation by unicast to its sender (else to ff02::1).
    unicast: bool = True


def _read_router_advertisements(section: Section) -> RouterAdvertisementConfig:
    config = RouterAdvertisementConfig(
        enabled=section.bool("enabled", False),
        unicast=section.bool("unicast", True),
    )
    section.finish()
    return config


@dataclass(frozen=True, slots=True)
class LeaseStoreConfig:
    """``dhcp.lease_store``: ``journal`` (the default) or ``postgresql``, as a word or as a
    mapping with ``kind`` and the database settings."""

    kind: str = "journal"
    #: ``postgresql``: a libpq connection string; None takes ``provision.store.dsn``.
    dsn: str | None = None
    #: ``postgresql``: connections opened at most (also the batches in flight at once).
    pool: int = 2
    #: ``postgresql``: seconds to wait for a connection before the database counts as lost.
    connect_timeout: float = 5.0
    #: ``postgresql``: this server's name in the lease table (default: the host name).
    server_name: str | None = None


def _read_lease_store(section: Section) -> LeaseStoreConfig:
    value = section.raw("lease_store")
    if value is None:
        return LeaseStoreConfig()
    if isinstance(value, str):
        if value not in LEASE_STORE_KINDS:
            section.problem("lease_store", f"{value!r} is not one of "
                            f"{', '.join(LEASE_STORE_KINDS)}")
            return LeaseStoreConfig()
        return LeaseStoreConfig(kind=value)
    store = section.mapping("lease_store")
    kind = store.str("kind", "journal", choices=LEASE_STORE_KINDS)
    config = LeaseStoreConfig(
        kind=kind,
        dsn=store.str("dsn", None),
        pool=store.int("pool", 2, minimum=1, maximum=64),
        connect_timeout=store.float("connect_timeout", 5.0, minimum=0.5),
        server_name=store.str("server_name", None),
    )
    if kind == "journal":
        for key in ("dsn", "pool", "connect_timeout", "server_name"):
            if store.has(key):
                store.problem(key, "is only used with kind: postgresql")
    elif config.dsn:
        from pxestack.config.provision import check_dsn

        check_dsn(store, config.dsn)
    store.finish()
    return config


@dataclass(frozen=True, slots=True)
class DhcpConfig:
    """Settings of the DHCP service (full server or proxyDHCP)."""

    enabled: bool = True
    mode: str = "server"
    #: Interfaces to serve, one socket each (SO_BINDTODEVICE); empty = just ``listen``.
    interfaces: tuple[str, ...] = ()
    listen: tuple[str, int] = ("0.0.0.0", 67)
    proxy_port: int = 4011
    server_address: IPv4Address | None = None
    lease_time: int = 3600
    offer_hold: int = 30
    pools: tuple[PoolConfig, ...] = ()
    reservations: tuple[ReservationConfig, ...] = ()
    #: Relay agents (giaddr) whose requests are answered; others are dropped, so a forged
    #: giaddr cannot make pxestack send replies to an address of the sender's choosing.
    relays: tuple[IPv4Address, ...] = ()
    boot: BootConfig = field(default_factory=BootConfig)
    #: Key leases on the client identifier (RFC 2131 §4.2) instead of chaddr.
    match_client_id: bool = False
    #: NAK requests for addresses this server does not know in its own subnets.
    authoritative: bool = False
    #: Cap on offers held at once, so a DISCOVER flood from made-up MACs cannot hold the
    #: whole pool or grow memory without bound.
    max_offers: int = 4096
    #: How long a DECLINEd address is quarantined, in seconds (RFC 2131 §4.3.3).
    decline_quarantine: int = 600
    #: The lease journal (default: ``<state_dir>/dhcp-leases.journal``).
    lease_file: Path | None = None
    #: fdatasync the journal before every DHCPACK (turn off only on tmpfs or for tests).
    fsync: bool = True
    #: Unicast replies to address-less clients as raw frames (AF_PACKET, needs root).
    raw_replies: bool = True
    #: Answer IPv6 router solicitations on ``interfaces`` with an RA (M=0, O=0, lifetime 0)
    #: so that iPXE stops waiting for IPv6 autoconfiguration (docs/reference/pxe-wire.md).
    #: Only for a dedicated provisioning segment.
    router_advertisements: RouterAdvertisementConfig = field(
        default_factory=lambda: RouterAdvertisementConfig()
    )
    #: Admission control of new PXE clients during a boot storm.
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    #: Where leases are kept: the journal, or a PostgreSQL table shared by several servers.
    lease_store: LeaseStoreConfig = field(default_factory=LeaseStoreConfig)


def _read_pool(section: Section, default_lease: int) -> PoolConfig | None:
    subnet = section.ipv4_network("subnet")
    start = section.ipv4("start")
    end = section.ipv4("end")
    pool = PoolConfig(
        subnet=subnet,
        start=start,
        end=end,
        router=section.ipv4("router", None),
        dns=section.ipv4_list("dns"),
        domain=section.str("domain", None),
        lease_time=section.int("lease_time", None, minimum=MIN_LEASE_TIME),
        ntp=section.ipv4_list("ntp"),
    )
    section.finish()
    if subnet is None or start is None or end is None:
        return None
    for key, address in (("start", start), ("end", end)):
        if address not in subnet:
            section.problem(key, f"'{address}' is not inside subnet {subnet}")
    if int(start) > int(end):
        section.problem("end", f"'{end}' comes before start '{start}'")
    return pool


def _read_reservation(section: Section) -> ReservationConfig | None:
    mac = section.str("mac", None)
    if mac is not None:
        if _MAC.match(mac.lower()):
            mac = mac.lower().replace("-", ":")
        else:
            section.problem("mac", f"{mac!r} is not a MAC address such as 52:54:00:12:34:56")
            mac = None
    client_id = section.str("client_id", None)
    if client_id is not None and not client_id:
        section.problem("client_id", "is empty")
        client_id = None
    reservation = ReservationConfig(
        address=section.ipv4("address"),
        mac=mac,
        client_id=client_id,
        hostname=section.str("hostname", None),
    )
    if not section.has("mac") and not section.has("client_id"):
        section.problem("mac", "a reservation needs mac or client_id")
    section.finish()
    return reservation if reservation.address is not None else None


def _read_boot(section: Section) -> BootConfig:
    defaults = BootConfig()
    boot = BootConfig(
        ipxe_script_url=section.str("ipxe_script_url", None),
        tftp_server=section.ipv4("tftp_server", None),
        bios_file=section.str("bios_file", defaults.bios_file),
        efi_x64_file=section.str("efi_x64_file", defaults.efi_x64_file),
        efi_ia32_file=section.str("efi_ia32_file", defaults.efi_ia32_file),
        efi_arm64_file=section.str("efi_arm64_file", defaults.efi_arm64_file),
        ipxe_user_class=section.str("ipxe_user_class", defaults.ipxe_user_class),
        loader=_read_loaders(section.mapping("loader")),
        shim_file=_file_name(section, "shim_file", defaults.shim_file),
        shim_arm64_file=_file_name(section, "shim_arm64_file", defaults.shim_arm64_file),
        grub_file=_file_name(section, "grub_file", defaults.grub_file),
        pxelinux_file=_file_name(section, "pxelinux_file", defaults.pxelinux_file),
        pxelinux_prefix=section.str("pxelinux_prefix", None),
    )
    section.finish()
    return boot


def _file_name(section: Section, key: str, default: str) -> str:
    """A loader file name: relative to the TFTP root, no ``..`` part."""
    name: str = section.str(key, default) or default
    if not name or name.startswith("/") or ".." in name.split("/"):
        section.problem(key, f"{name!r} is not a file name inside the TFTP root")
        return default
    return name


def _read_loaders(section: Section) -> Mapping[str, str]:
    loaders = {
        arch: section.str(arch, "ipxe", choices=choices) or "ipxe"
        for arch, choices in LOADER_CHOICES.items()
    }
    section.finish()
    return MappingProxyType(loaders)


def read_dhcp(section: Section) -> DhcpConfig:
    """Validate the ``dhcp:`` mapping."""
    lease_time = section.int("lease_time", 3600, minimum=MIN_LEASE_TIME)
    pools = tuple(
        pool
        for pool in (_read_pool(s, lease_time) for s in section.sections("pools"))
        if pool is not None
    )
    reservations = tuple(
        r for r in (_read_reservation(s) for s in section.sections("reservations")) if r
    )
    config = DhcpConfig(
        enabled=section.bool("enabled", True),
        mode=section.str("mode", "server", choices=DHCP_MODES),
        interfaces=section.str_list("interfaces"),
        listen=section.listen("listen", ("0.0.0.0", 67)),
        proxy_port=section.int("proxy_port", 4011, minimum=0, maximum=65535),
        server_address=section.ipv4("server_address", None),
        lease_time=lease_time,
        offer_hold=section.int("offer_hold", 30, minimum=1, maximum=3600),
        pools=pools,
        reservations=reservations,
        relays=section.ipv4_list("relays"),
        boot=_read_boot(section.mapping("boot")),
        match_client_id=section.bool("match_client_id", False),
        authoritative=section.bool("authoritative", False),
        max_offers=section.int("max_offers", 4096, minimum=1, maximum=1_000_000),
        decline_quarantine=section.int("decline_quarantine", 600, minimum=0),
        lease_file=section.path("lease_file", None),
        fsync=section.bool("fsync", True),
        raw_replies=section.bool("raw_replies", True),
        router_advertisements=_read_router_advertisements(
            section.mapping("router_advertisements")
        ),
        admission=read_admission(section.mapping("admission")),
        lease_store=_read_lease_store(section),
    )
    if config.lease_store.kind == "postgresql":
        if config.mode != "server":
            section.problem("lease_store", "postgresql keeps the leases of mode: server; "
                            "a proxy hands out no address")
        if config.lease_file is not None:
            section.problem("lease_file", "is not used with lease_store: postgresql "
                            "(the leases live in the database)")
    if config.router_advertisements.enabled and not config.interfaces:
        section.problem(
            "router_advertisements.enabled",
            "router advertisements need dhcp.interfaces (the segments to answer on)",
        )
    if config.mode == "server" and config.enabled and not section.has("pools"):
        section.problem("pools", "server mode needs at least one pool (or use mode: proxy)")
    _check_reservations(section, config)
    section.finish()
    return config


def _check_reservations(section: Section, config: DhcpConfig) -> None:
    """Reservations must be unique and lie inside a configured subnet."""
    seen_addresses: set[IPv4Address] = set()
    seen_keys: set[tuple[str, str]] = set()
    for index, reservation in enumerate(config.reservations):
        where = f"reservations[{index}]"
        if reservation.address in seen_addresses:
            section.problem(f"{where}.address", f"'{reservation.address}' is reserved twice")
        seen_addresses.add(reservation.address)
        for kind, value in (("mac", reservation.mac), ("client_id", reservation.client_id)):
            if value is not None:
                if (kind, value) in seen_keys:
                    section.problem(f"{where}.{kind}", f"{value!r} has two reservations")
                seen_keys.add((kind, value))
        if config.mode == "server" and config.pools and not any(
            reservation.address in pool.subnet for pool in config.pools
        ):
            section.problem(
                f"{where}.address", f"'{reservation.address}' is not inside any pool's subnet"
            )
