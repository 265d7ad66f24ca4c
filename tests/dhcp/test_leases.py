"""InMemoryLeaseStore: allocation order, offer hold, reservations, quarantine, expiry."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pxestack.dhcp.leases import (
    AddressRange,
    InMemoryLeaseStore,
    LeaseState,
    Reservation,
    Subnet,
    client_key,
)
from pxestack.errors import ApiMisuse

NET = IPv4Network("198.18.0.0/24")
RANGE = AddressRange(IPv4Address("198.18.0.10"), IPv4Address("198.18.0.19"))
SUBNET = Subnet(NET, (RANGE,))
HOLD = 30.0
LEASE = 600.0


def mac(n: int) -> bytes:
    return bytes([0x52, 0x54, 0, 0, n >> 8, n & 0xFF])


def key(n: int) -> bytes:
    return client_key(mac(n), None, match_client_id=False)


def store(**kw: object) -> InMemoryLeaseStore:
    return InMemoryLeaseStore([SUBNET], **kw)  # type: ignore[arg-type]


def test_client_key_prefers_chaddr_unless_told_otherwise() -> None:
    assert client_key(b"\x01" * 6, b"\x01abc", match_client_id=False) == b"M" + b"\x01" * 6
    assert client_key(b"\x01" * 6, b"\x01abc", match_client_id=True) == b"C\x01abc"
    # An empty client identifier (D6) falls back to chaddr.
    assert client_key(b"\x01" * 6, b"", match_client_id=True) == b"M" + b"\x01" * 6


def test_burst_of_discovers_gets_distinct_addresses() -> None:
    """dnsmasq's NAKs (docs/reference/benchmark-method.md): neighbouring MACs in one burst."""
    s = store()
    offered = [s.offer(key(n), mac(n), None, SUBNET, None, 0.0, HOLD) for n in range(len(RANGE))]
    addresses = [lease.address for lease in offered if lease is not None]
    assert len(addresses) == len(RANGE) == len(set(addresses))
    assert all(a in RANGE for a in addresses)
    # The pool is now exhausted while the offers are held.
    assert s.offer(key(99), mac(99), None, SUBNET, None, 1.0, HOLD) is None
    # After the hold lapses, the addresses come back.
    again = s.offer(key(99), mac(99), None, SUBNET, None, HOLD + 1, HOLD)
    assert again is not None and again.address in RANGE


def test_retransmitted_discover_gets_the_same_offer_and_refreshes_the_hold() -> None:
    s = store()
    first = s.offer(key(1), mac(1), None, SUBNET, None, 0.0, HOLD)
    second = s.offer(key(1), mac(1), None, SUBNET, None, 1.0, HOLD)
    assert first is not None and second is not None
    assert first.address == second.address
    assert second.expires == 1.0 + HOLD
    assert s.outstanding_offers == 1


def test_requested_address_is_honoured_when_free() -> None:
    s = store()
    wanted = IPv4Address("198.18.0.17")
    lease = s.offer(key(1), mac(1), None, SUBNET, wanted, 0.0, HOLD)
    assert lease is not None and lease.address == wanted
    # Taken: another client asking for it gets something else.
    other = s.offer(key(2), mac(2), None, SUBNET, wanted, 0.0, HOLD)
    assert other is not None and other.address != wanted
    # Outside the range: ignored.
    third = s.offer(key(3), mac(3), None, SUBNET, IPv4Address("198.18.0.200"), 0.0, HOLD)
    assert third is not None and third.address in RANGE


def test_bind_release_and_the_client_gets_its_old_address_back() -> None:
    s = store()
    offer = s.offer(key(1), mac(1), None, SUBNET, None, 0.0, HOLD)
    assert offer is not None
    bound = s.bind(key(1), mac(1), None, offer.address, 1.0, LEASE)
    assert bound is not None and bound.state is LeaseState.BOUND and bound.expires == 1.0 + LEASE
    assert s.outstanding_offers == 0
    freed = s.release(key(1), offer.address, 2.0)
    assert freed is not None and freed.state is LeaseState.FREE
    # RFC 2131 §4.3.1: the previous address is preferred.
    again = s.offer(key(1), mac(1), None, SUBNET, None, 3.0, HOLD)
    assert again is not None and again.address == offer.address


def test_release_by_another_client_is_ignored() -> None:
    s = store()
    offer = s.offer(key(1), mac(1), None, SUBNET, None, 0.0, HOLD)
    assert offer is not None
    s.bind(key(1), mac(1), None, offer.address, 0.0, LEASE)
    assert s.release(key(2), offer.address, 1.0) is None
    lease = s.lease_at(offer.address, 1.0)
    assert lease is not None and lease.state is LeaseState.BOUND


def test_bind_refuses_an_address_held_by_someone_else() -> None:
    s = store()
    offer = s.offer(key(1), mac(1), None, SUBNET, None, 0.0, HOLD)
    assert offer is not None
    assert s.bind(key(2), mac(2), None, offer.address, 0.0, LEASE) is None
    assert s.bind(key(2), mac(2), None, IPv4Address("198.18.0.200"), 0.0, LEASE) is None
    assert s.bind(key(2), mac(2), None, IPv4Address("10.0.0.1"), 0.0, LEASE) is None


def test_binding_expires_and_the_address_is_reusable() -> None:
    s = InMemoryLeaseStore([Subnet(NET, (AddressRange(RANGE.start, RANGE.start),))])
    subnet = s.subnets[0]
    offer = s.offer(key(1), mac(1), None, subnet, None, 0.0, HOLD)
    assert offer is not None
    s.bind(key(1), mac(1), None, offer.address, 0.0, LEASE)
    assert s.offer(key(2), mac(2), None, subnet, None, LEASE - 1, HOLD) is None
    assert s.next_deadline() == LEASE
    ended = s.expire(LEASE)
    assert [lease.address for lease in ended] == [offer.address]
    taken = s.offer(key(2), mac(2), None, subnet, None, LEASE + 1, HOLD)
    assert taken is not None and taken.address == offer.address
    # The first client's remembered record was taken over.
    assert s.lookup(key(1), LEASE + 1) is None


def test_reservation_by_mac_and_by_client_id() -> None:
    by_mac = Reservation(IPv4Address("198.18.0.12"), mac=mac(7), hostname="node7")
    by_id = Reservation(IPv4Address("198.18.0.50"), client_id=b"\x00ident")
    s = store(reservations=[by_mac, by_id])
    # Nobody else is ever offered a reserved address, even inside the range.
    offered = {
        lease.address
        for n in range(20)
        if (lease := s.offer(key(n + 100), mac(n + 100), None, SUBNET, by_mac.address, 0, HOLD))
    }
    assert by_mac.address not in offered
    owner = s.offer(key(7), mac(7), None, SUBNET, None, 0.0, HOLD)
    assert owner is not None and owner.address == by_mac.address and owner.hostname == "node7"
    cid_key = client_key(mac(8), b"\x00ident", match_client_id=True)
    other = s.offer(cid_key, mac(8), b"\x00ident", SUBNET, None, 0.0, HOLD)
    assert other is not None and other.address == by_id.address  # outside the range: fine
    assert s.bind(cid_key, mac(8), b"\x00ident", by_id.address, 0.0, LEASE) is not None
    # A reserved client may not bind some other address of its subnet.
    assert not s.may_bind(key(7), mac(7), None, IPv4Address("198.18.0.15"), 0.0)


def test_reservation_needs_a_key() -> None:
    with pytest.raises(ApiMisuse):
        Reservation(IPv4Address("198.18.0.1"))


def test_decline_quarantines_the_address() -> None:
    s = InMemoryLeaseStore([Subnet(NET, (AddressRange(RANGE.start, RANGE.start),))])
    subnet = s.subnets[0]
    offer = s.offer(key(1), mac(1), None, subnet, None, 0.0, HOLD)
    assert offer is not None
    s.bind(key(1), mac(1), None, offer.address, 0.0, LEASE)
    # Someone else cannot decline it away.
    assert s.decline(key(2), offer.address, 1.0, 100.0) is None
    decline = s.decline(key(1), offer.address, 1.0, 100.0)
    assert decline is not None and decline.until == 101.0
    assert s.quarantined(offer.address, 50.0)
    assert s.offer(key(1), mac(1), None, subnet, None, 50.0, HOLD) is None
    assert s.offer(key(3), mac(3), None, subnet, None, 102.0, HOLD) is not None


def test_a_quarantine_survives_compaction_of_the_deadlines() -> None:
    """The one-address pool comes back after its quarantine even when the deadline heap was
    rebuilt in between (the rebuild used to keep lease deadlines only)."""
    s = InMemoryLeaseStore([Subnet(NET, (AddressRange(RANGE.start, RANGE.start),))])
    subnet = s.subnets[0]
    offer = s.offer(key(1), mac(1), None, subnet, None, 0.0, HOLD)
    assert offer is not None
    s.bind(key(1), mac(1), None, offer.address, 0.0, LEASE)
    assert s.decline(key(1), offer.address, 1.0, 100.0) is not None
    s._deadlines.extend((0.5, 0) for _ in range(2000))  # stale entries force a rebuild
    s._compact_deadlines()
    assert len(s._deadlines) < 10
    s.expire(102.0)
    assert not s.quarantined(offer.address, 102.0)
    again = s.offer(key(3), mac(3), None, subnet, None, 102.0, HOLD)
    assert again is not None and again.address == offer.address


def test_outstanding_offers_are_capped() -> None:
    """Pool starvation: a DISCOVER flood cannot hold the whole pool."""
    s = store(max_offers=3)
    got = [s.offer(key(n), mac(n), None, SUBNET, None, 0.0, HOLD) for n in range(5)]
    assert sum(lease is not None for lease in got) == 3
    # A client whose offer is held still gets its answer repeated.
    assert s.offer(key(0), mac(0), None, SUBNET, None, 1.0, HOLD) is not None
    first = got[0]
    assert first is not None
    s.bind(key(0), mac(0), None, first.address, 1.0, LEASE)
    assert s.offer(key(4), mac(4), None, SUBNET, None, 1.0, HOLD) is not None


def test_restore_drops_leases_that_no_longer_fit_the_configuration() -> None:
    first = store()
    offer = first.offer(key(1), mac(1), None, SUBNET, None, 0.0, HOLD)
    assert offer is not None
    bound = first.bind(key(1), mac(1), None, offer.address, 0.0, LEASE)
    assert bound is not None
    # Now the address is reserved for someone else: the old lease is dropped.
    second = store(reservations=[Reservation(offer.address, mac=mac(2))])
    assert second.restore([bound], [], 1.0) == 0
    third = store()
    assert third.restore([bound], [], 1.0) == 1
    restored = third.lookup(key(1), 1.0)
    assert restored is not None and restored.state is LeaseState.BOUND
    assert third.offer(key(2), mac(2), None, SUBNET, offer.address, 1.0, HOLD) != offer.address


def test_heap_stays_bounded_under_many_renewals() -> None:
    """Every table is bounded: renewing one lease a million times must not grow memory."""
    s = store()
    offer = s.offer(key(1), mac(1), None, SUBNET, None, 0.0, HOLD)
    assert offer is not None
    for n in range(5000):
        s.bind(key(1), mac(1), None, offer.address, float(n), LEASE)
    assert len(s._deadlines) <= 2 * len(s) + 1025
    # The renewed binding still ends on time: its first deadline reschedules the last one.
    assert s.expire(4999.0 + LEASE - 1) == []
    ended = s.expire(4999.0 + LEASE)
    assert [lease.address for lease in ended] == [offer.address]
    found = s.lookup(key(1), 4999.0 + LEASE)
    assert found is not None and found.state is LeaseState.FREE


class LeaseStoreMachine(RuleBasedStateMachine):
    """Random interleavings of every operation keep the store's invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.reserved = Reservation(IPv4Address("198.18.0.14"), mac=mac(3))
        self.store = InMemoryLeaseStore([SUBNET], [self.reserved], max_offers=6)
        self.now = 0.0

    clients = st.integers(min_value=0, max_value=14)
    addresses = st.integers(min_value=5, max_value=22).map(lambda n: IPv4Address(f"198.18.0.{n}"))

    @rule(n=clients, requested=st.none() | addresses)
    def discover(self, n: int, requested: IPv4Address | None) -> None:
        self.store.offer(key(n), mac(n), None, SUBNET, requested, self.now, HOLD)

    @rule(n=clients, address=addresses)
    def request(self, n: int, address: IPv4Address) -> None:
        lease = self.store.bind(key(n), mac(n), None, address, self.now, LEASE)
        if lease is not None:
            assert lease.address == address

    @rule(n=clients)
    def request_offered(self, n: int) -> None:
        current = self.store.lookup(key(n), self.now)
        if current is not None and current.state is LeaseState.OFFERED:
            assert self.store.bind(key(n), mac(n), None, current.address, self.now, LEASE)

    @rule(n=clients, address=addresses)
    def release(self, n: int, address: IPv4Address) -> None:
        self.store.release(key(n), address, self.now)

    @rule(n=clients, address=addresses)
    def decline(self, n: int, address: IPv4Address) -> None:
        self.store.decline(key(n), address, self.now, 50.0)

    @rule(seconds=st.sampled_from([1.0, 10.0, HOLD, 100.0, LEASE]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.store.expire(self.now)
        overdue = [lease for lease in self.store.leases()
                   if lease.state is not LeaseState.FREE and lease.expires <= self.now]
        assert overdue == []  # every hold and binding that is due has ended

    @invariant()
    def no_address_is_shared(self) -> None:
        active = [lease for lease in self.store.leases() if lease.active(self.now)]
        assert len({lease.address for lease in active}) == len(active)
        assert len({lease.client for lease in active}) == len(active)

    @invariant()
    def reserved_address_only_to_its_owner(self) -> None:
        lease = self.store.lease_at(self.reserved.address, self.now)
        if lease is not None and lease.active(self.now):
            assert lease.mac == self.reserved.mac

    @invariant()
    def pool_bounds_and_quarantine_respected(self) -> None:
        for lease in self.store.leases():
            if lease.active(self.now):
                assert lease.address in RANGE or lease.address == self.reserved.address
                assert not self.store.quarantined(lease.address, self.now)

    @invariant()
    def offer_count_is_exact_and_capped(self) -> None:
        offered = sum(1 for lease in self.store.leases() if lease.state is LeaseState.OFFERED)
        assert offered == self.store.outstanding_offers <= self.store.max_offers


    @invariant()
    def every_record_has_a_deadline_no_later_than_its_expiry(self) -> None:
        """A refreshed hold or renewal keeps its earlier heap entry (docs/dhcp.md §11):
        that entry must exist, so no expiry is missed."""
        pending = set(self.store._deadlines)
        for lease in self.store.leases():
            if lease.state is LeaseState.FREE:
                continue
            address = int(lease.address)
            scheduled = self.store._scheduled[address]
            assert scheduled <= lease.expires
            assert (scheduled, address) in pending


TestLeaseStoreMachine = LeaseStoreMachine.TestCase
TestLeaseStoreMachine.settings = settings(max_examples=60, stateful_step_count=40)
