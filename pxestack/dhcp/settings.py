"""What the full DHCP server is configured with: interfaces, subnets, behaviour switches.

Plain frozen values the service layer maps from ``config.dhcp``; the server core
(:mod:`pxestack.dhcp.server`) and its fast path (:mod:`pxestack.dhcp.fastpath`) read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from pxestack.dhcp.leases import Subnet
from pxestack.wire import constants as c
from pxestack.wire.dhcp_options import encode_domain_search


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """The interface a message arrived on, as the adapter knows it.

    ``address`` is this server's address there: option 54 (server identifier) and the
    source of replies.  ``network`` selects the subnet for clients on the link.
    """

    name: str
    address: IPv4Address
    network: IPv4Network
    #: Interface MTU, caps reply sizes (None: only the client's option 57 counts).
    mtu: int | None = None
    #: ``address.packed``, option 54 of every reply (derived; computed once).
    packed_address: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "packed_address", self.address.packed)


@dataclass(frozen=True, slots=True)
class SubnetSettings:
    """One subnet: its address ranges (inside :attr:`subnet`) and the options handed out."""

    subnet: Subnet
    lease_time: int = 3600
    routers: tuple[IPv4Address, ...] = ()
    dns: tuple[IPv4Address, ...] = ()
    ntp: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    domain_search: tuple[str, ...] = ()
    #: Option 1 (subnet mask) as sent (derived from :attr:`subnet`).
    mask_option: bytes = field(init=False, repr=False, compare=False)
    #: The configuration options of this subnet as sent, in wire order, each sent only
    #: when the client's option 55 asks for it (derived; the same for every reply here).
    optional_options: tuple[tuple[int, bytes], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        network = self.subnet.network
        optional: list[tuple[int, bytes]] = []
        if self.routers:
            optional.append((c.OPT_ROUTER, b"".join(a.packed for a in self.routers)))
        if self.dns:
            optional.append((c.OPT_DNS_SERVER, b"".join(a.packed for a in self.dns)))
        if self.domain:
            optional.append((c.OPT_DOMAIN_NAME, self.domain.encode()))
        optional.append((c.OPT_BROADCAST_ADDRESS, network.broadcast_address.packed))
        if self.ntp:
            optional.append((c.OPT_NTP_SERVER, b"".join(a.packed for a in self.ntp)))
        if self.domain_search:
            optional.append((c.OPT_DOMAIN_SEARCH, encode_domain_search(self.domain_search)))
        object.__setattr__(self, "mask_option", network.netmask.packed)
        object.__setattr__(self, "optional_options", tuple(optional))


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Behaviour switches of the server core (the caller maps them from config)."""

    subnets: tuple[SubnetSettings, ...]
    #: giaddr values whose relayed messages are answered (no others: never a reflector).
    relays: frozenset[IPv4Address] = frozenset()
    #: Seconds an offered address is held for its client.
    offer_hold: float = 30.0
    #: Key leases on option 61 instead of chaddr (see :func:`~pxestack.dhcp.leases.client_key`).
    match_client_id: bool = False
    #: Answer clients we have no record of in INIT-REBOOT/RENEWING/REBINDING (see
    #: :mod:`pxestack.dhcp.server`).
    authoritative: bool = False
    #: Seconds a declined address stays unused (RFC 2131 §4.3.3).
    decline_quarantine: float = 600.0


__all__ = ["InterfaceInfo", "ServerSettings", "SubnetSettings"]
