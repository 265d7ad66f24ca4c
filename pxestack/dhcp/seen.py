"""What pxestack's own DHCP saw recently: a read-only question for the layers above.

The provisioning layer enrols a new machine only when its HTTP request comes from an
address that this DHCP service leased or offered a short while ago (``provision.enrolment:
dhcp-seen``).  It must not import the DHCP code, so the question is declared here, below
it, as :class:`RecentlySeen`; the service composition hands a :class:`DhcpSightings` to
both sides (:class:`pxestack.service.Extensions` ``dhcp_sightings``): the DHCP service
attaches its sources when it starts, the provisioning layer only asks.

Sources:

* :class:`LeaseSightings` (full server): the lease store's record of the address, read
  without changing it: an offer or lease that is still held, or that ended at most
  *window* seconds ago.
* :class:`ProxySightings` (proxyDHCP): the proxy never hands out an address, so it notes
  the MAC of every PXE client it answered (and the source address of port-4011 requests).
  An HTTP request carries only its source address; the address is mapped to a MAC through
  an injected neighbour lookup (the kernel's ARP table in production, see
  :func:`pxestack.netif.neighbour_mac`): the machine's TCP connection made the kernel resolve
  its address a moment ago, and the machine and the proxy share the segment (a proxy
  answers broadcasts, so they must).

Every table is bounded (oldest entries go first) and every answer takes ``now`` from the
caller, in the clock domain of the DHCP service's reactor.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any, Protocol

#: How many MACs and addresses a :class:`ProxySightings` remembers (oldest dropped first).
DEFAULT_CAPACITY = 8192

#: ``neighbour(address) -> MAC`` (6 octets) or ``None``: the link-layer address behind an IP.
NeighbourLookup = Callable[[IPv4Address], bytes | None]


class RecentlySeen(Protocol):
    """Did pxestack's DHCP lease, offer or answer *address* within *window* seconds?"""

    def seen(self, address: IPv4Address, now: float, window: float) -> bool:
        """``True`` when *address* was leased, offered or answered since ``now - window``."""


class _LeaseRecords(Protocol):
    """The part of :class:`pxestack.dhcp.leases.InMemoryLeaseStore` a sighting reads."""

    def held_since(self, address: IPv4Address, since: float) -> bool:
        """Whether *address* is held, or was held until at least *since* (read-only)."""


class LeaseSightings:
    """The full server's lease store as a :class:`RecentlySeen` source."""

    def __init__(self, store: _LeaseRecords) -> None:
        self.store = store

    def seen(self, address: IPv4Address, now: float, window: float) -> bool:
        """See :meth:`RecentlySeen.seen`."""
        return self.store.held_since(address, now - window)


class ProxySightings:
    """MACs (and port-4011 addresses) the proxy answered, mapped through *neighbour*."""

    def __init__(
        self, neighbour: NeighbourLookup | None = None, capacity: int = DEFAULT_CAPACITY
    ) -> None:
        self.neighbour = neighbour
        self.capacity = capacity
        self._macs: OrderedDict[bytes, float] = OrderedDict()
        self._addresses: OrderedDict[IPv4Address, float] = OrderedDict()

    def _note(self, table: OrderedDict[Any, float], key: Any, now: float) -> None:
        table[key] = now
        table.move_to_end(key)
        while len(table) > self.capacity:
            table.popitem(last=False)

    def note_mac(self, mac: bytes, now: float) -> None:
        """A PXE client with hardware address *mac* was answered at *now*."""
        self._note(self._macs, bytes(mac[:6]), now)

    def note_address(self, address: IPv4Address, now: float) -> None:
        """A PXE client already holding *address* (a port-4011 request) was answered."""
        if address != IPv4Address(0):
            self._note(self._addresses, address, now)

    def seen(self, address: IPv4Address, now: float, window: float) -> bool:
        """See :meth:`RecentlySeen.seen`."""
        since = now - window
        when = self._addresses.get(address)
        if when is not None and when >= since:
            return True
        if self.neighbour is None:
            return False
        mac = self.neighbour(address)
        if mac is None:
            return False
        when = self._macs.get(bytes(mac[:6]))
        return when is not None and when >= since


class DhcpSightings:
    """The meeting point: the DHCP service attaches sources, the layers above ask.

    With no source attached (the DHCP service has not started, or there is none) nothing
    has been seen.
    """

    def __init__(self) -> None:
        self._sources: list[RecentlySeen] = []

    def attach(self, source: RecentlySeen) -> None:
        """Add a source (called by the DHCP service as it starts)."""
        self._sources.append(source)

    @property
    def attached(self) -> bool:
        """Whether any source is attached."""
        return bool(self._sources)

    def seen(self, address: IPv4Address, now: float, window: float) -> bool:
        """See :meth:`RecentlySeen.seen`: any attached source saw *address*."""
        return any(source.seen(address, now, window) for source in self._sources)


__all__ = [
    "DEFAULT_CAPACITY",
    "DhcpSightings",
    "LeaseSightings",
    "NeighbourLookup",
    "ProxySightings",
    "RecentlySeen",
]
