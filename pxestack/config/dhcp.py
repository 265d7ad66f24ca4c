"""The ``dhcp:`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from pxestack.config._reader import Section

DHCP_MODES = ("server", "proxy")


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


@dataclass(frozen=True, slots=True)
class ReservationConfig:
    """A fixed address for one client, matched by MAC or by client identifier."""

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
    bios_file: str = "undionly.kpxe"
    efi_x64_file: str = "ipxe.efi"
    efi_ia32_file: str = "ipxe.efi"
    efi_arm64_file: str = "ipxe-arm64.efi"
    #: User class our own iPXE script sets; a client sending it is never chainloaded again.
    ipxe_user_class: str = "pxestack"


@dataclass(frozen=True, slots=True)
class DhcpConfig:
    """Settings of the DHCP service (full server or proxyDHCP)."""

    enabled: bool = True
    mode: str = "server"
    interfaces: tuple[str, ...] = ()
    listen: tuple[str, int] = ("0.0.0.0", 67)
    proxy_port: int = 4011
    server_address: IPv4Address | None = None
    lease_time: int = 3600
    offer_hold: int = 30
    pools: tuple[PoolConfig, ...] = ()
    reservations: tuple[ReservationConfig, ...] = ()
    relays: tuple[IPv4Address, ...] = ()
    boot: BootConfig = field(default_factory=BootConfig)


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
        lease_time=section.int("lease_time", None, minimum=60),
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
    reservation = ReservationConfig(
        address=section.ipv4("address"),
        mac=section.str("mac", None),
        client_id=section.str("client_id", None),
        hostname=section.str("hostname", None),
    )
    if reservation.mac is None and reservation.client_id is None:
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
    )
    section.finish()
    return boot


def read_dhcp(section: Section) -> DhcpConfig:
    """Validate the ``dhcp:`` mapping."""
    lease_time = section.int("lease_time", 3600, minimum=60)
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
    )
    if config.mode == "server" and config.enabled and not section.has("pools"):
        section.problem("pools", "server mode needs at least one pool (or use mode: proxy)")
    section.finish()
    return config
