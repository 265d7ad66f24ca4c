"""The adapter's address memo and the lease store's shared bookkeeping give the answers of
the straightforward code (the server core's memos: tests/dhcp/test_fast_path.py).

* The adapter's ``_text_address`` keys its memo by ``id()`` of the address object and
  checks that the entry holds that very object, so equal but distinct objects, and objects
  whose ``id`` is reused after the first one died, still get the right answer.
* ``InMemoryLeaseStore.bind`` shares ``may_bind``'s reservation lookup and integer address,
  and ``_put`` takes the integer address from its caller: a random sequence of operations
  must keep ``may_bind`` predicting ``bind`` and the store's indexes consistent.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st
from test_server import IFACE, make_core

from pxestack.dhcp.leases import (
    AddressRange,
    InMemoryLeaseStore,
    LeaseState,
    Reservation,
    Subnet,
)
from pxestack.dhcp.protocol import DhcpServerProtocol


def _fresh(text: str) -> IPv4Address:
    """A new IPv4Address object (never one of the decoder's shared ones)."""
    return IPv4Address(text)


def test_text_address_is_str_for_equal_distinct_and_reused_objects() -> None:
    core, _, _ = make_core()
    protocol = DhcpServerProtocol(core, IFACE)
    for value in list(range(0x0A000001, 0x0A000001 + 300)) * 2:
        address = IPv4Address(value)
        assert protocol._text_address(address) == str(address)
        del address  # the next object may get the same id; the memo must not answer for it


NETWORK = IPv4Network("10.20.0.0/28")
POOL = AddressRange(IPv4Address("10.20.0.2"), IPv4Address("10.20.0.7"))
RESERVED = IPv4Address("10.20.0.9")
MACS = [bytes((2, 0, 0, 0, 0, n)) for n in range(4)]

operations = st.lists(
    st.tuples(
        st.sampled_from(("offer", "bind", "release", "wait")),
        st.integers(0, len(MACS) - 1),
        st.integers(0, 15),  # the host part of an address (some outside the pool)
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_may_bind_predicts_bind_and_the_indexes_stay_consistent(
    steps: list[tuple[str, int, int]],
) -> None:
    store = InMemoryLeaseStore(
        [Subnet(NETWORK, (POOL,))],
        [Reservation(RESERVED, mac=MACS[3], hostname="fixed")],
        max_offers=3,
    )
    now = 1000.0
    for kind, who, host in steps:
        mac = MACS[who]
        client = b"M" + mac
        address = IPv4Address(int(NETWORK.network_address) + host)
        if kind == "offer":
            store.offer(client, mac, None, store.subnets[0], address, now, 30.0)
        elif kind == "bind":
            predicted = store.may_bind(client, mac, None, address, now)
            lease = store.bind(client, mac, None, address, now, 600.0)
            assert (lease is not None) == predicted
            if lease is not None:
                assert lease.address == address and lease.state is LeaseState.BOUND
                assert lease.hostname == ("fixed" if address == RESERVED else None)
        elif kind == "release":
            store.release(client, address, now)
        else:
            now += 20.0
        leases = list(store.leases())
        assert store.outstanding_offers == sum(
            1 for lease in leases if lease.state is LeaseState.OFFERED
        )
        for lease in leases:
            assert store.lease_at(lease.address, now - 1e9) is lease  # no expiry applied
        owners = [lease.client for lease in leases if lease.state is not LeaseState.FREE]
        assert len(owners) == len(set(owners)), "a client holds one address per store"
