"""Network interface facts: the one module that calls ``netifaces``.

The DHCP service opens one socket per configured interface and hands the core the
interface's name, IPv4 address and network with every packet (pixiecore's ``dhcp4.Conn``
does the same with IP_PKTINFO; Twisted's ``listenUDP`` exposes no IP_PKTINFO, hence one
socket per interface).  Everything here is looked up once, at start-up; keeping every
``netifaces`` call in this module keeps the dependency replaceable.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import netifaces


class InterfaceError(OSError):
    """The named interface does not exist or has no IPv4 address.

    An ``OSError``, so a service failing to start because of it is reported like a port
    that cannot be bound (``pxestack.cli._run.run_service``).
    """


@dataclass(frozen=True, slots=True)
class NetInterface:
    """What the DHCP server needs to know about one interface."""

    name: str
    address: IPv4Address
    network: IPv4Network
    broadcast: IPv4Address
    #: The hardware address (empty for interfaces without one, such as ``lo``).
    mac: bytes
    #: The kernel's interface index (for ``AF_PACKET`` sockets).
    index: int
    #: Every IPv4 address of the interface with its prefix, in the kernel's order (the
    #: first is ``address``); empty when unknown.
    addresses: tuple[IPv4Interface, ...] = ()

    def choose(self, preferred: IPv4Address | None) -> tuple[IPv4Address, IPv4Network]:
        """The address this server names itself by on this interface, and its network.

        *preferred* (``dhcp.server_address``) wins when the interface carries it; otherwise
        the interface's first IPv4 address, which the kernel lists first (the primary
        address, ``ip -4 addr show`` order).  Returns *preferred* with the first address's
        network when the interface does not carry it: the operator named an address on
        purpose (a service address routed to this host); the caller warns.
        """
        if preferred is None or preferred == self.address:
            return self.address, self.network
        for entry in self.addresses:
            if entry.ip == preferred:
                return preferred, entry.network
        return preferred, self.network

    def carries(self, address: IPv4Address) -> bool:
        """Whether *address* is one of this interface's IPv4 addresses."""
        return address == self.address or any(e.ip == address for e in self.addresses)


def interface_names() -> list[str]:
    """Every interface the kernel reports."""
    return list(netifaces.interfaces())


def lookup_interface(name: str) -> NetInterface:
    """The first IPv4 address of interface *name*, its network, broadcast, MAC and index.

    Raises :class:`InterfaceError` naming the problem (no such interface, no IPv4 address).
    """
    if name not in netifaces.interfaces():
        raise InterfaceError(f"no network interface named {name!r}")
    addresses = netifaces.ifaddresses(name)
    ipv4 = addresses.get(netifaces.AF_INET) or []
    if not ipv4:
        raise InterfaceError(f"interface {name!r} has no IPv4 address")
    return _describe(name, ipv4[0], addresses)


def _ipv4_interface(entry: dict[str, str]) -> IPv4Interface:
    """One ``netifaces`` AF_INET entry as an address with its prefix."""
    netmask = entry.get("netmask") or "255.255.255.255"
    return IPv4Interface(f"{entry['addr']}/{netmask}")


def _describe(
    name: str, entry: dict[str, str], addresses: dict[int, list[dict[str, str]]]
) -> NetInterface:
    """A :class:`NetInterface` for one AF_INET *entry* of interface *name*."""
    iface = _ipv4_interface(entry)
    broadcast_text = entry.get("broadcast")
    broadcast = (
        IPv4Address(broadcast_text) if broadcast_text else iface.network.broadcast_address
    )
    link = addresses.get(netifaces.AF_LINK) or []
    mac_text = link[0].get("addr", "") if link else ""
    try:
        mac = bytes.fromhex(mac_text.replace(":", "")) if mac_text else b""
    except ValueError:
        mac = b""
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        index = 0
    return NetInterface(
        name=name,
        address=iface.ip,
        network=iface.network,
        broadcast=broadcast,
        mac=mac,
        index=index,
        addresses=tuple(_ipv4_interface(e) for e in addresses.get(netifaces.AF_INET) or []),
    )


def interface_for_address(address: IPv4Address) -> NetInterface | None:
    """The interface that has *address* configured, if any (for ``listen:`` without names)."""
    for name in netifaces.interfaces():
        addresses = netifaces.ifaddresses(name)
        for entry in addresses.get(netifaces.AF_INET) or []:
            if entry.get("addr") == str(address):
                return _describe(name, entry, addresses)
    return None


#: The kernel's IPv4 neighbour (ARP) table.
ARP_TABLE = Path("/proc/net/arp")
#: ``/proc/net/arp`` flag of a complete entry (ATF_COM).
_ATF_COM = 0x2


def neighbour_mac(address: IPv4Address, table: Path = ARP_TABLE) -> bytes | None:
    """The hardware address the kernel resolved for *address*, or ``None``.

    Reads the ARP table (``/proc/net/arp``); incomplete entries, malformed lines and a
    missing or unreadable table give ``None``.  Used by proxyDHCP's ``dhcp-seen``
    enrolment (:class:`pxestack.dhcp.seen.ProxySightings`): a machine's HTTP connection
    makes the kernel resolve its address, so the entry is fresh when the request arrives.
    """
    wanted = str(address)
    try:
        with table.open(encoding="ascii", errors="replace") as lines:
            next(lines, None)  # the header
            for line in lines:
                fields = line.split()
                if len(fields) < 4 or fields[0] != wanted:
                    continue
                try:
                    flags = int(fields[2], 16)
                    mac = bytes.fromhex(fields[3].replace(":", ""))
                except ValueError:
                    continue
                if flags & _ATF_COM and len(mac) == 6 and any(mac):
                    return mac
    except OSError:
        return None
    return None


__all__ = [
    "ARP_TABLE",
    "InterfaceError",
    "NetInterface",
    "interface_for_address",
    "interface_names",
    "lookup_interface",
    "neighbour_mac",
]
