"""Address leases: pools per subnet, static reservations, offers held briefly, quarantine.

This module is sans-IO: every call that depends on time takes ``now`` (seconds, on the
caller's clock) and nothing here reads a clock.  When leases are journaled to disk
(:mod:`pxestack.dhcp.journal`), ``now`` must be wall-clock epoch seconds so that expiry
times stay meaningful across restarts; the Twisted adapters pass ``reactor.seconds()``,
which is exactly that.

Vocabulary, after RFC 2131:

* a **client key** identifies a client.  RFC 2131 §4.2 says the client identifier
  (option 61) if present, else ``chaddr``.  pxestack keys on ``chaddr`` by default, because
  the client identifier changes across PXE boot stages (PXE ROM, iPXE, the installed OS;
  see docs/reference/pxe-wire.md) and a machine would otherwise get a second address per stage.
  :func:`client_key` builds the key either way.
* an **offer** holds an address for ``offer_hold`` seconds, so two clients that DISCOVER in
  the same burst are never offered the same address (dnsmasq does not reserve on OFFER and
  NAKs the second REQUEST above ~190 new clients/s; docs/reference/benchmark-method.md).
* a **binding** (state ``BOUND``) is what a DHCPACK grants.  When it expires or is released
  the record is *remembered* (state ``FREE``) so that the same client gets the same address
  again (RFC 2131 §4.3.1 prefers the client's previous address); the address is free for
  any other client meanwhile.
* a **declined** address (DHCPDECLINE, RFC 2131 §4.3.3) is quarantined and offered to nobody
  until the quarantine ends.

Memory is bounded, so neither a DISCOVER flood nor a long uptime can grow it: at most one
record per address in the configured ranges and reservations, at most ``max_offers``
unanswered offers at once, and the deadline heap is compacted when stale entries pile up.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Final, Protocol

from pxestack._records import positional_constructor
from pxestack.errors import ApiMisuse
from pxestack.wire.dhcp_options import ipv4_address

#: Default cap on outstanding (unanswered) offers, so a DISCOVER flood from random MACs
#: cannot starve the pool or grow memory.
DEFAULT_MAX_OFFERS = 4096


def client_key(mac: bytes, client_id: bytes | None, *, match_client_id: bool) -> bytes:
    """The key a lease is stored under.

    RFC 2131 §4.2: a client is identified by its client identifier (option 61) when it sends
    one, else by ``chaddr``.  With ``match_client_id=False`` (pxestack's default, like Kea's
    ``match-client-id: false``) ``chaddr`` is always used: PXE ROMs, iPXE and the installed
    OS send different client identifiers from the same NIC.
    A one-byte prefix keeps the two kinds of key from ever colliding.
    """
    if match_client_id and client_id:
        return b"C" + client_id
    return b"M" + mac


class LeaseState(enum.Enum):
    """Where a lease record stands."""

    #: Offered in a DHCPOFFER and held for the client until the hold ends.
    OFFERED = "offered"
    #: Granted by a DHCPACK until :attr:`Lease.expires`.
    BOUND = "bound"
    #: Expired or released: the address is free, the record only remembers the last owner.
    FREE = "free"


@dataclass(frozen=True, slots=True)
class Lease:
    """One address and the client it is offered or bound to (an immutable snapshot)."""

    address: IPv4Address
    #: The key from :func:`client_key`.
    client: bytes
    #: The client's hardware address (``chaddr`` truncated to ``hlen``).
    mac: bytes
    state: LeaseState
    #: When the offer hold or the binding ends (``now`` domain); for FREE, when it ended.
    expires: float
    client_id: bytes | None = None
    hostname: str | None = None

    def active(self, now: float) -> bool:
        """Whether the address is taken at *now* (an unexpired offer or binding)."""
        return self.state is not LeaseState.FREE and self.expires > now


#: ``Lease(...)`` with every field given positionally: two leases are built per DORA.
_new_lease: Final = positional_constructor(Lease)


@dataclass(frozen=True, slots=True)
class AddressRange:
    """An inclusive range of dynamically assigned addresses."""

    start: IPv4Address
    end: IPv4Address

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPv4Address) and self.start <= address <= self.end

    def __len__(self) -> int:
        return int(self.end) - int(self.start) + 1


@dataclass(frozen=True, slots=True)
class Subnet:
    """A subnet the server hands addresses out in, with its dynamic ranges."""

    network: IPv4Network
    ranges: tuple[AddressRange, ...] = ()


@dataclass(frozen=True, slots=True)
class Reservation:
    """A fixed address for one client, matched by hardware address or client identifier."""

    address: IPv4Address
    mac: bytes | None = None
    client_id: bytes | None = None
    hostname: str | None = None

    def __post_init__(self) -> None:
        if self.mac is None and self.client_id is None:
            raise ApiMisuse("a Reservation needs a mac or a client_id")


@dataclass(frozen=True, slots=True)
class Decline:
    """A quarantined address (DHCPDECLINE, RFC 2131 §4.3.3) and when it may be used again."""

    address: IPv4Address
    until: float


class LeaseListener(Protocol):
    """Told about every change that must survive a restart (a journal implements this).

    The binding must be durable before the server sends the DHCPACK (leases survive
    ``kill -9``): either :meth:`bound` makes it durable before returning, or
    the listener batches records (group commit, :class:`~pxestack.dhcp.journal.LeaseJournal`)
    and the adapter holds the ACKs until the batch is committed.
    """

    def bound(self, lease: Lease) -> None:
        """*lease* was granted or renewed."""

    def freed(self, lease: Lease) -> None:
        """*lease* was released by its client (expiry is computed, not recorded)."""

    def declined(self, decline: Decline) -> None:
        """An address was quarantined."""


class LeaseStore(Protocol):
    """What :class:`~pxestack.dhcp.server.DhcpServerCore` needs from a lease database.

    An implementation backed by a shared database can replace :class:`InMemoryLeaseStore`;
    every method takes ``now`` so the store never reads a clock.
    """

    def subnet_for(self, address: IPv4Address) -> Subnet | None:
        """The configured subnet containing *address*, if any."""

    def lookup(self, client: bytes, now: float) -> Lease | None:
        """The client's current record (any state), if the store still remembers it."""

    def lease_at(self, address: IPv4Address, now: float) -> Lease | None:
        """The record holding *address*, if any."""

    def reservation_for(self, mac: bytes, client_id: bytes | None) -> Reservation | None:
        """The static reservation matching this client, if any."""

    def offer(
        self,
        client: bytes,
        mac: bytes,
        client_id: bytes | None,
        subnet: Subnet,
        requested: IPv4Address | None,
        now: float,
        hold: float,
    ) -> Lease | None:
        """Choose an address for a DHCPDISCOVER and hold it; ``None`` when none is free."""

    def bind(
        self,
        client: bytes,
        mac: bytes,
        client_id: bytes | None,
        address: IPv4Address,
        now: float,
        lease_time: float,
        hostname: str | None = None,
    ) -> Lease | None:
        """Grant *address* to the client (DHCPACK); ``None`` if it may not have it."""

    def release(self, client: bytes, address: IPv4Address, now: float) -> Lease | None:
        """DHCPRELEASE: free the client's binding of *address*; the freed record or None."""

    def decline(
        self, client: bytes, address: IPv4Address, now: float, quarantine: float
    ) -> Decline | None:
        """DHCPDECLINE: quarantine *address* if the client held it; the decline or None."""

    def expire(self, now: float) -> list[Lease]:
        """End every offer and binding whose time is up; returns the ended records."""

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`expire` has something to do, or ``None``."""


@dataclass(slots=True)
class _RangeCursor:
    """Hands out never-used addresses of one range in order, then nothing."""

    next: int
    last: int


@dataclass(slots=True)
class _SubnetState:
    subnet: Subnet
    cursors: list[_RangeCursor]
    #: The dynamic ranges as inclusive integer bounds (checked on every request).
    bounds: tuple[tuple[int, int], ...]
    #: Addresses that were used and became free again (expired, released, offer lapsed).
    recycled: deque[int] = field(default_factory=deque)
    recycled_set: set[int] = field(default_factory=set)
    #: The network as integers, for containment tests without ``ipaddress`` objects.
    network_int: int = 0
    netmask: int = 0

    def __post_init__(self) -> None:
        self.network_int = int(self.subnet.network.network_address)
        self.netmask = int(self.subnet.network.netmask)


class InMemoryLeaseStore:
    """The default :class:`LeaseStore`: dictionaries and a deadline heap, O(1) per request.

    Allocation order for a new client (RFC 2131 §4.3.1): its reservation; else the address it
    already holds or last held in this subnet; else the address it asks for (option 50) when
    that one is free; else a never-used address from the ranges in order; else a recycled one
    (freed longest ago first).  A remembered FREE record of another client is taken over only
    when nothing else is left.

    :param subnets: the subnets and their dynamic ranges.
    :param reservations: static assignments; a reserved address is never given to anyone else,
        even when it lies inside a dynamic range.
    :param max_offers: cap on unanswered offers at once (bounds a DISCOVER flood).
    :param listener: told about bindings, releases and declines (the lease journal).
    """

    def __init__(
        self,
        subnets: Sequence[Subnet],
        reservations: Sequence[Reservation] = (),
        *,
        max_offers: int = DEFAULT_MAX_OFFERS,
        listener: LeaseListener | None = None,
    ) -> None:
        self._subnets: list[_SubnetState] = []
        for subnet in subnets:
            for address_range in subnet.ranges:
                if address_range.start not in subnet.network or (
                    address_range.end not in subnet.network
                ):
                    raise ApiMisuse(f"range {address_range} is outside {subnet.network}")
            self._subnets.append(
                _SubnetState(
                    subnet,
                    [_RangeCursor(int(r.start), int(r.end)) for r in subnet.ranges],
                    tuple((int(r.start), int(r.end)) for r in subnet.ranges),
                )
            )
        self._reserved: dict[int, Reservation] = {}
        self._reserved_by_mac: dict[bytes, Reservation] = {}
        self._reserved_by_client_id: dict[bytes, Reservation] = {}
        for reservation in reservations:
            if int(reservation.address) in self._reserved:
                raise ApiMisuse(f"address {reservation.address} is reserved twice")
            self._reserved[int(reservation.address)] = reservation
            if reservation.mac is not None:
                self._reserved_by_mac[reservation.mac] = reservation
            if reservation.client_id is not None:
                self._reserved_by_client_id[reservation.client_id] = reservation
        self._by_client: dict[bytes, Lease] = {}
        self._by_address: dict[int, Lease] = {}
        self._quarantine: dict[int, float] = {}
        #: (deadline, address) pairs; stale pairs are skipped when popped.
        self._deadlines: list[tuple[float, int]] = []
        #: The earliest lease deadline pending in the heap, by address.  A record whose
        #: expiry moves later (every retransmitted DISCOVER refreshes its offer hold, every
        #: renewal its binding) keeps that entry instead of pushing another: when the entry
        #: comes due, :meth:`expire` schedules the record's new expiry.
        self._scheduled: dict[int, float] = {}
        self._offers = 0
        self.max_offers = max_offers
        self.listener = listener

    # -- queries -----------------------------------------------------------------------

    def subnet_for(self, address: IPv4Address) -> Subnet | None:
        """The configured subnet containing *address* (the first one, if they overlap)."""
        for state in self._subnets:
            if address in state.subnet.network:
                return state.subnet
        return None

    @property
    def subnets(self) -> tuple[Subnet, ...]:
        """Every configured subnet."""
        return tuple(state.subnet for state in self._subnets)

    def lookup(self, client: bytes, now: float) -> Lease | None:
        """The client's record (any state); expiry up to *now* is applied first."""
        self.expire(now)
        return self._by_client.get(client)

    def lease_at(self, address: IPv4Address, now: float) -> Lease | None:
        """The record holding *address*; expiry up to *now* is applied first."""
        self.expire(now)
        return self._by_address.get(int(address))

    def held_since(self, address: IPv4Address, since: float) -> bool:
        """Whether *address* is offered or bound, or was until at least *since*.

        Read-only (no expiry is applied, nothing is journalled), so layers above may ask
        from outside a packet batch (:class:`pxestack.dhcp.seen.LeaseSightings`).
        """
        lease = self._by_address.get(int(address))
        return lease is not None and lease.expires >= since

    def reservation_for(self, mac: bytes, client_id: bytes | None) -> Reservation | None:
        """The reservation matching the client identifier, else the hardware address."""
        if client_id:
            found = self._reserved_by_client_id.get(client_id)
            if found is not None:
                return found
        return self._reserved_by_mac.get(mac)

    def quarantined(self, address: IPv4Address, now: float) -> bool:
        """Whether *address* was declined and its quarantine has not ended."""
        until = self._quarantine.get(int(address))
        return until is not None and until > now

    def leases(self) -> Iterator[Lease]:
        """Every record the store holds (offers, bindings and remembered free ones)."""
        return iter(list(self._by_address.values()))

    def declines(self) -> Iterator[Decline]:
        """Every quarantine still recorded."""
        return iter([Decline(IPv4Address(a), until) for a, until in self._quarantine.items()])

    @property
    def outstanding_offers(self) -> int:
        """How many offers are held and not yet answered, released or lapsed."""
        return self._offers

    def __len__(self) -> int:
        return len(self._by_address)

    # -- allocation --------------------------------------------------------------------

    def _state_of(self, subnet: Subnet) -> _SubnetState:
        for state in self._subnets:
            if state.subnet is subnet or state.subnet == subnet:
                return state
        raise ApiMisuse(f"subnet {subnet.network} is not configured in this store")

    def _in_ranges(self, state: _SubnetState, address: int) -> bool:
        # A plain loop: any() over a generator costs more, and this runs for every ACK.
        for first, last in state.bounds:  # noqa: SIM110
            if first <= address <= last:
                return True
        return False

    def _state_containing(self, address: int) -> _SubnetState | None:
        """The first subnet whose network contains *address* (integer form, no objects)."""
        for state in self._subnets:
            if address & state.netmask == state.network_int:
                return state
        return None

    def _usable_by(self, address: int, client: bytes, now: float) -> bool:
        """Whether *client* may take *address* now (ignoring reservations of its own)."""
        if address in self._reserved:
            return False
        until = self._quarantine.get(address)
        if until is not None and until > now:
            return False
        holder = self._by_address.get(address)
        return holder is None or holder.client == client or not holder.active(now)

    def _fresh_address(self, state: _SubnetState, client: bytes, now: float) -> int | None:
        """A never-used address if one is left, else the longest-free recycled one."""
        for cursor in state.cursors:
            while cursor.next <= cursor.last:
                address = cursor.next
                cursor.next += 1
                if self._usable_by(address, client, now) and address not in self._by_address:
                    return address
        # Recycled addresses; skip entries that were taken again since they were freed.
        recycled = state.recycled
        while recycled:
            address = recycled.popleft()
            state.recycled_set.discard(address)
            if self._usable_by(address, client, now):
                return address
        return None

    def _recycle(self, address: int) -> None:
        for state in self._subnets:
            if self._in_ranges(state, address):
                if address not in state.recycled_set:
                    state.recycled.append(address)
                    state.recycled_set.add(address)
                return

    def _put(self, lease: Lease, address: int) -> None:
        """Store *lease* (whose address is *address*, ``int(lease.address)``: the callers
        have it already), evicting whatever that address or that client held before."""
        old_at_address = self._by_address.get(address)
        if old_at_address is not None:
            if old_at_address.state is LeaseState.OFFERED:
                self._offers -= 1
            previous_owner = old_at_address.client
            # Another client's remembered record at this address is taken over.
            if previous_owner != lease.client and (
                self._by_client.get(previous_owner) is old_at_address
            ):
                del self._by_client[previous_owner]
        old_of_client = self._by_client.get(lease.client)
        # ``is not`` first: the same address object means the same address, no int() needed.
        if old_of_client is not None and old_of_client.address is not lease.address:
            old_address = int(old_of_client.address)
            if old_address != address and self._by_address.get(old_address) is old_of_client:
                if old_of_client.state is LeaseState.OFFERED:
                    self._offers -= 1
                # A client holds one address per store: its old one becomes free.
                del self._by_address[old_address]
                self._recycle(old_address)
        self._by_address[address] = lease
        self._by_client[lease.client] = lease
        if lease.state is LeaseState.OFFERED:
            self._offers += 1
        if lease.state is not LeaseState.FREE:
            expires = lease.expires
            scheduled = self._scheduled.get(address)
            if scheduled is None or expires < scheduled:
                heapq.heappush(self._deadlines, (expires, address))
                self._scheduled[address] = expires
                if len(self._deadlines) > 2 * len(self._by_address) + 1024:
                    self._compact_deadlines()

    def _compact_deadlines(self) -> None:
        """Drop stale heap entries when they outnumber live ones (bounded memory)."""
        if len(self._deadlines) > 2 * len(self._by_address) + 1024:
            scheduled = {
                int(lease.address): lease.expires
                for lease in self._by_address.values()
                if lease.state is not LeaseState.FREE
            }
            live = [(expires, address) for address, expires in scheduled.items()]
            live += [(until, address) for address, until in self._quarantine.items()]
            heapq.heapify(live)
            self._deadlines = live
            self._scheduled = scheduled

    def offer(
        self,
        client: bytes,
        mac: bytes,
        client_id: bytes | None,
        subnet: Subnet,
        requested: IPv4Address | None,
        now: float,
        hold: float,
    ) -> Lease | None:
        """Choose and hold an address for a DHCPDISCOVER (RFC 2131 §4.3.1).

        A client that already holds an unexpired binding is offered that address and its
        binding is left as it is.  Returns ``None`` when the pool is exhausted, the client's
        reserved address is quarantined, or ``max_offers`` offers are outstanding.
        """
        self.expire(now)
        state = self._state_of(subnet)
        reservation = self.reservation_for(mac, client_id)
        chosen: int | None = None
        if reservation is not None and reservation.address in subnet.network:
            chosen = int(reservation.address)
            until = self._quarantine.get(chosen)
            if until is not None and until > now:
                return None
            holder = self._by_address.get(chosen)
            if holder is not None and holder.client != client and holder.active(now):
                return None  # only possible with leases restored from before the reservation
        else:
            current = self._by_client.get(client)
            # Containment by integer mask: ``address in IPv4Network`` runs Python code.
            address = 0 if current is None else int(current.address)
            if current is not None and address & state.netmask == state.network_int:
                if current.state is LeaseState.BOUND and current.active(now):
                    return current
                if self._usable_by(address, client, now) and self._in_ranges(state, address):
                    chosen = address
            if chosen is None and requested is not None and (
                int(requested) & state.netmask == state.network_int
            ):
                address = int(requested)
                if self._in_ranges(state, address) and self._usable_by(address, client, now):
                    chosen = address
            if chosen is None:
                chosen = self._fresh_address(state, client, now)
            if chosen is None:
                return None
        existing = self._by_address.get(chosen)
        if existing is not None and existing.client == client:
            if existing.state is LeaseState.BOUND and existing.active(now):
                return existing
            already_offered = existing.state is LeaseState.OFFERED
            address_value = existing.address
        else:
            already_offered = False
            address_value = ipv4_address(chosen)
        if not already_offered and self._offers >= self.max_offers:
            return None
        lease = _new_lease(
            address_value,
            client,
            mac,
            LeaseState.OFFERED,
            now + hold,
            client_id,
            reservation.hostname if reservation is not None else None,
        )
        self._put(lease, chosen)
        return lease

    def may_bind(
        self,
        client: bytes,
        mac: bytes,
        client_id: bytes | None,
        address: IPv4Address,
        now: float,
    ) -> bool:
        """Whether :meth:`bind` would grant *address* to this client now."""
        self.expire(now)
        return self._may_bind(client, self.reservation_for(mac, client_id), address,
                              int(address), now)

    def _may_bind(self, client: bytes, reservation: Reservation | None,
                  address: IPv4Address, address_int: int, now: float) -> bool:
        """:meth:`may_bind` once expiry is applied and the reservation looked up."""
        if reservation is not None and reservation.address == address:
            until = self._quarantine.get(address_int)
            if until is not None and until > now:
                return False
            holder = self._by_address.get(address_int)
            return holder is None or holder.client == client or not holder.active(now)
        state = self._state_containing(address_int)
        if state is None or not self._in_ranges(state, address_int):
            return False
        if reservation is not None and reservation.address in state.subnet.network:
            # A client with a reservation in this subnet gets that address and no other.
            return False
        return self._usable_by(address_int, client, now)

    def bind(
        self,
        client: bytes,
        mac: bytes,
        client_id: bytes | None,
        address: IPv4Address,
        now: float,
        lease_time: float,
        hostname: str | None = None,
    ) -> Lease | None:
        """Grant *address* for *lease_time* seconds (a DHCPACK); ``None`` if not allowed.

        The listener (the journal) is told before this returns, so the binding is durable
        (or, with group commit, held for the batch's commit) before the server sends its
        DHCPACK.
        """
        # may_bind(), with the reservation and the integer address computed once.
        self.expire(now)
        reservation = self.reservation_for(mac, client_id)
        address_int = int(address)
        if not self._may_bind(client, reservation, address, address_int, now):
            return None
        if hostname is None and reservation is not None and reservation.address == address:
            hostname = reservation.hostname
        lease = _new_lease(
            address, client, mac, LeaseState.BOUND, now + lease_time, client_id, hostname
        )
        self._put(lease, address_int)
        if self.listener is not None:
            self.listener.bound(lease)
        return lease

    def release(self, client: bytes, address: IPv4Address, now: float) -> Lease | None:
        """DHCPRELEASE (RFC 2131 §4.3.4): free the binding if this client holds it."""
        self.expire(now)
        lease = self._by_address.get(int(address))
        if lease is None or lease.client != client or lease.state is LeaseState.FREE:
            return None
        freed = self._free(lease, now)
        if self.listener is not None:
            self.listener.freed(freed)
        return freed

    def _free(self, lease: Lease, when: float) -> Lease:
        if lease.state is LeaseState.OFFERED:
            self._offers -= 1
        freed = Lease(
            address=lease.address,
            client=lease.client,
            mac=lease.mac,
            state=LeaseState.FREE,
            expires=when,
            client_id=lease.client_id,
            hostname=lease.hostname,
        )
        self._by_address[int(lease.address)] = freed
        self._by_client[lease.client] = freed
        self._recycle(int(lease.address))
        return freed

    def decline(
        self, client: bytes, address: IPv4Address, now: float, quarantine: float
    ) -> Decline | None:
        """DHCPDECLINE (RFC 2131 §4.3.3): the client found *address* in use on the wire.

        The address is quarantined for *quarantine* seconds, only if this client held it (a
        DECLINE naming someone else's address is ignored, so no client can take addresses
        away from others).
        """
        self.expire(now)
        address_int = int(address)
        lease = self._by_address.get(address_int)
        if lease is None or lease.client != client or lease.state is LeaseState.FREE:
            return None
        if lease.state is LeaseState.OFFERED:
            self._offers -= 1
        del self._by_address[address_int]
        if self._by_client.get(client) is lease:
            del self._by_client[client]
        until = now + quarantine
        self._quarantine[address_int] = until
        heapq.heappush(self._deadlines, (until, address_int))
        decline = Decline(address, until)
        if self.listener is not None:
            self.listener.declined(decline)
        return decline

    # -- time --------------------------------------------------------------------------

    def expire(self, now: float) -> list[Lease]:
        """End every offer hold, binding and quarantine due at or before *now*."""
        deadlines = self._deadlines
        ended: list[Lease] = []
        scheduled = self._scheduled
        while deadlines and deadlines[0][0] <= now:
            when, address = heapq.heappop(deadlines)
            if scheduled.get(address) == when:
                del scheduled[address]  # the address's earliest pending entry is this one
            until = self._quarantine.get(address)
            if until is not None and until <= now:
                del self._quarantine[address]
                if address not in self._by_address:
                    self._recycle(address)  # the quarantine is over: usable again
            lease = self._by_address.get(address)
            if lease is None or lease.state is LeaseState.FREE:
                continue
            if lease.expires <= now:
                ended.append(self._free(lease, lease.expires))
            elif address not in scheduled:
                # The record's expiry moved later since this entry was pushed (_put keeps
                # the earlier entry): schedule the new one.
                heapq.heappush(deadlines, (lease.expires, address))
                scheduled[address] = lease.expires
        return ended

    def next_deadline(self) -> float | None:
        """The earliest pending deadline (possibly a stale one; :meth:`expire` skips it)."""
        return self._deadlines[0][0] if self._deadlines else None

    # -- restore -----------------------------------------------------------------------

    def restore(self, leases: Iterable[Lease], declines: Iterable[Decline], now: float) -> int:
        """Load bindings and quarantines from a journal; returns how many bindings were kept.

        Records for addresses outside every subnet, or conflicting with a reservation, are
        dropped (the configuration changed since they were written).  Expired bindings are
        kept as remembered FREE records so clients get their old address back.
        """
        kept = 0
        for decline in declines:
            if decline.until > now and self.subnet_for(decline.address) is not None:
                self._quarantine[int(decline.address)] = decline.until
                heapq.heappush(self._deadlines, (decline.until, int(decline.address)))
        for lease in leases:
            if lease.state is not LeaseState.BOUND:
                continue
            state = next((s for s in self._subnets if lease.address in s.subnet.network), None)
            if state is None:
                continue
            address = int(lease.address)
            reservation = self._reserved.get(address)
            if reservation is not None:
                if self.reservation_for(lease.mac, lease.client_id) is not reservation:
                    continue
            elif not self._in_ranges(state, address):
                continue
            self._put(lease, address)
            if lease.expires <= now:
                self._free(lease, lease.expires)
            kept += 1
        return kept


__all__ = [
    "DEFAULT_MAX_OFFERS",
    "AddressRange",
    "Decline",
    "InMemoryLeaseStore",
    "Lease",
    "LeaseListener",
    "LeaseState",
    "LeaseStore",
    "Reservation",
    "Subnet",
    "client_key",
]
