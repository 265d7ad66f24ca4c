"""Leases shared between servers through one lease table (Kea's shared lease database).

Several pxestack servers on one segment all answer, and one table (PostgreSQL, written by
:mod:`pxestack.service.pgleases`) decides who gets an address.  This module is the sans-IO
half: it never talks to a database and never reads a clock.

* :class:`SharedLeaseStore` is the :class:`~pxestack.dhcp.leases.InMemoryLeaseStore` every
  server already has, which also writes down, per datagram, each **claim** the table must
  confirm before a reply goes out: an offer (an address held for a client), a binding (an
  ACK), a release, a decline, and a **lookup that missed** (a REQUEST from a client this
  server has no record of: another server may have granted it the address).
* The claims of a batch of datagrams (:class:`ClaimBatch`) are sent to the table in one
  round trip.  The table applies each claim atomically (an upsert that only succeeds when
  the address is free, expired or already the client's own) and answers, for each claim it
  refused, the record that holds the address, and for each missed lookup, the client's
  record if it has one.
* :meth:`ClaimBatch.settle` puts those answers into this server's memory
  (:meth:`SharedLeaseStore.learn`) and says which datagrams must be handled again: the
  core, now knowing what the other server did, gives the answer RFC 2131 asks for (another
  offer, a NAK for an address someone else holds, an ACK of the client's own lease that
  another server granted), never an address twice.

What the database decides is final: memory only ever runs ahead of it by the claims of
the batches in flight, and a claim the table refuses is replaced by the table's record.
"""

from __future__ import annotations

import enum
import heapq
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from pxestack.dhcp.leases import (
    DEFAULT_MAX_OFFERS,
    Decline,
    InMemoryLeaseStore,
    Lease,
    LeaseState,
    Reservation,
    Subnet,
    _SubnetState,
)


class ClaimKind(enum.Enum):
    """What a claim asks of the lease table."""

    #: Hold the address for the client until ``expires`` (a DHCPOFFER).
    OFFER = "offer"
    #: Grant the address to the client until ``expires`` (a DHCPACK).
    BIND = "bind"
    #: The client released the address it was bound to.
    FREE = "free"
    #: The client chose another server: this server's offer ends, a binding stays (the
    #: other server may have offered and bound the same address to the same client).
    WITHDRAW = "withdraw"
    #: The client declined the address: quarantined until ``expires``.
    DECLINE = "decline"
    #: This server has no record of the client: the table's record of it, if any.
    FIND = "find"


@dataclass(frozen=True, slots=True)
class Claim:
    """One change or question for the lease table."""

    kind: ClaimKind
    client: bytes
    #: None only for :attr:`ClaimKind.FIND`.
    address: IPv4Address | None = None
    mac: bytes = b""
    client_id: bytes | None = None
    hostname: str | None = None
    #: End of the offer hold, the binding or the quarantine; the time of a release.
    expires: float = 0.0
    #: :attr:`ClaimKind.OFFER`: the subnet the offer is made in; the table answers the
    #: client's binding elsewhere only when it lies in this subnet (a machine moved to
    #: another rack gets an address of its new subnet).
    network: str | None = None


#: What the table answers about one claim: the index of the claim in the batch and the
#: record that holds the address (a refused claim) or the client's record (a FIND).
Answer = tuple[int, Lease | Decline]


class ClaimBatch:
    """The claims of one batch of datagrams, each tagged with the datagram it came from."""

    def __init__(self, store: SharedLeaseStore) -> None:
        self.store = store
        self.claims: list[Claim] = []
        #: For each claim, the index of its datagram in the batch (-1: outside a datagram).
        self.owners: list[int] = []
        self._datagram = -1
        self._with_claims: set[int] = set()

    def start_datagram(self, index: int) -> None:
        """Claims from now on belong to datagram *index*."""
        self._datagram = index

    def add(self, claim: Claim) -> None:
        """Record *claim* for the current datagram."""
        self.claims.append(claim)
        self.owners.append(self._datagram)
        self._with_claims.add(self._datagram)

    def recorded(self, index: int) -> bool:
        """Whether datagram *index* made a claim (its replies wait for the table)."""
        return index in self._with_claims

    def __len__(self) -> int:
        return len(self.claims)

    def settle(self, answers: Iterable[Answer], replied: set[int], now: float) -> set[int]:
        """Apply the table's *answers* to memory; the datagrams to handle again.

        A refused offer, binding or decline: the holder's record replaces this server's
        idea, and the datagram is handled again (the core then offers another address or
        NAKs).  A missed lookup the table could answer: the client's record is learned, and
        the datagram is handled again only if it got no reply (a renewal this server stayed
        silent on); a datagram that was answered anyway (its claim succeeded) keeps its
        answer and the older record is not learned, since it would undo that answer.
        """
        again: set[int] = set()
        for index, record in answers:
            if not 0 <= index < len(self.claims):
                continue  # never produced by the table; ignored rather than trusted
            owner = self.owners[index]
            if self.claims[index].kind is ClaimKind.FIND:
                if owner in replied:
                    continue
                self.store.learn(record, now)
            else:
                self.store.learn(record, now)
            if owner >= 0:
                again.add(owner)
        return again


#: Addresses a new client's search looks at from its own starting place before falling
#: back to the ranges' order.
SPREAD_PROBES = 64


def spread_start(client: bytes, size: int) -> int:
    """Where in a pool of *size* addresses the search for *client*'s new address starts:
    a hash of the client key (CRC-32, the same on every server and every run)."""
    return zlib.crc32(client) % size


def _nth_address(bounds: Sequence[tuple[int, int]], position: int) -> int:
    """The address at *position* of the ranges *bounds* taken one after another."""
    for first, last in bounds:
        if position <= last - first:
            return first + position
        position -= last - first + 1
    raise IndexError(position)


class SharedLeaseStore(InMemoryLeaseStore):
    """An :class:`~pxestack.dhcp.leases.InMemoryLeaseStore` whose every claim is recorded
    in the open :class:`ClaimBatch` for the lease table to confirm.

    Offers, bindings, releases and declines are decided in memory as on a single server,
    except where a new client's address is searched from (*spread*, see
    :meth:`_fresh_address`); the batch carries them to the table, and :meth:`learn` takes
    in what the table knows better.  Claims made while no batch is open (an administrative
    call) are kept and go with the next batch.
    """

    def __init__(
        self,
        subnets: Sequence[Subnet],
        reservations: Sequence[Reservation] = (),
        *,
        max_offers: int = DEFAULT_MAX_OFFERS,
        spread: bool = True,
    ) -> None:
        super().__init__(subnets, reservations, max_offers=max_offers, listener=None)
        #: Whether a new client's address is searched from its own place in the ranges
        #: (:meth:`_fresh_address`); without, in the ranges' order as on a single server.
        self.spread = spread
        self.batch = ClaimBatch(self)
        self._withdrawing = False
        self.listener = _BatchListener(self)

    def _fresh_address(self, state: _SubnetState, client: bytes, now: float) -> int | None:
        """An address no record holds, searched from a place in the ranges that depends
        only on the client (:func:`spread_start`), so that servers sharing a pool offer
        different new clients different addresses (and one client the same one) instead
        of all taking the lowest free address and having all but one offer refused.

        At most :data:`SPREAD_PROBES` addresses are looked at; after that (a nearly full
        pool) the single server's order is used: never-used addresses in order, then
        recycled ones.
        """
        size = sum(last - first + 1 for first, last in state.bounds) if self.spread else 0
        if size > 0:
            position = spread_start(client, size)
            for _ in range(min(SPREAD_PROBES, size)):
                address = _nth_address(state.bounds, position)
                if address not in self._by_address and self._usable_by(address, client, now):
                    return address
                position = (position + 1) % size
        return super()._fresh_address(state, client, now)

    def begin_batch(self) -> ClaimBatch:
        """Start a new batch; claims made outside any batch since the last one carry over."""
        carried = self.batch
        self.batch = ClaimBatch(self)
        for claim, owner in zip(carried.claims, carried.owners, strict=True):
            if owner == -1:
                self.batch.add(claim)
        return self.batch

    def end_batch(self) -> ClaimBatch:
        """Close the open batch and return it; later claims go to a fresh one."""
        batch = self.batch
        self.batch = ClaimBatch(self)
        return batch

    # -- recording -----------------------------------------------------------------------

    def lookup(self, client: bytes, now: float) -> Lease | None:
        """As in memory; a miss is recorded so that the table is asked about the client."""
        found = super().lookup(client, now)
        if found is None:
            self.batch.add(Claim(ClaimKind.FIND, client))
        return found

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
        """As in memory; a new or refreshed hold is recorded (a client's unexpired binding,
        offered again, is already the table's)."""
        lease = super().offer(client, mac, client_id, subnet, requested, now, hold)
        if lease is not None and lease.state is LeaseState.OFFERED:
            self.batch.add(Claim(ClaimKind.OFFER, client, lease.address, mac, client_id,
                                 lease.hostname, lease.expires, str(subnet.network)))
        return lease

    def release(self, client: bytes, address: IPv4Address, now: float) -> Lease | None:
        """As in memory; the end of an offer is recorded as a withdrawal (it never frees
        the binding the table may hold for the client, made by another server)."""
        held = self._by_address.get(int(address))
        self._withdrawing = (held is not None and held.client == client
                             and held.state is LeaseState.OFFERED)
        try:
            return super().release(client, address, now)
        finally:
            self._withdrawing = False

    def decline(
        self, client: bytes, address: IPv4Address, now: float, quarantine: float
    ) -> Decline | None:
        """As in memory; an accepted decline is recorded with the declining client (the
        table quarantines the address only if the client held it there too)."""
        decline = super().decline(client, address, now, quarantine)
        if decline is not None:
            self.batch.add(Claim(ClaimKind.DECLINE, client, decline.address,
                                 expires=decline.until))
        return decline

    # -- learning ------------------------------------------------------------------------

    def learn(self, record: Lease | Decline, now: float) -> None:
        """Take the table's *record* into memory, replacing whatever memory held there.

        A binding or an offer of another client makes the address unavailable here until
        it ends; a quarantine is applied as if the decline had arrived here; a record that
        has ended is remembered as free (so its client still gets the address back).
        """
        if isinstance(record, Decline):
            address = int(record.address)
            held = self._by_address.get(address)
            if held is not None:
                if held.state is LeaseState.OFFERED:
                    self._offers -= 1
                del self._by_address[address]
                if self._by_client.get(held.client) is held:
                    del self._by_client[held.client]
            self._quarantine[address] = record.until
            self._schedule_quarantine(address, record.until)
            return
        self._put(record, int(record.address))
        if record.state is not LeaseState.FREE and record.expires <= now:
            self._free(record, record.expires)

    def _schedule_quarantine(self, address: int, until: float) -> None:
        heapq.heappush(self._deadlines, (until, address))


class _BatchListener:
    """The :class:`~pxestack.dhcp.leases.LeaseListener` of a :class:`SharedLeaseStore`:
    bindings, releases and declines become claims of the open batch."""

    def __init__(self, store: SharedLeaseStore) -> None:
        self.store = store

    def bound(self, lease: Lease) -> None:
        self.store.batch.add(Claim(ClaimKind.BIND, lease.client, lease.address, lease.mac,
                                   lease.client_id, lease.hostname, lease.expires))

    def freed(self, lease: Lease) -> None:
        kind = ClaimKind.WITHDRAW if self.store._withdrawing else ClaimKind.FREE
        self.store.batch.add(Claim(kind, lease.client, lease.address, expires=lease.expires))

    def declined(self, decline: Decline) -> None:
        """Recorded by :meth:`SharedLeaseStore.decline`, which knows the client."""


__all__ = [
    "Answer",
    "Claim",
    "ClaimBatch",
    "ClaimKind",
    "SharedLeaseStore",
]
