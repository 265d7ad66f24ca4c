"""The identity-keyed memos and the lease store's shared bookkeeping (docs/dhcp.md §11)
give the answers of the straightforward code.

* ``_relay_destination`` and the adapter's ``_text_address`` key their memos by ``id()`` of
  the address object and check that the entry holds that very object, so equal but
  distinct objects, and objects whose ``id`` is reused after the first one died, still get
  the right answer.
* ``DhcpServerCore._defaults_for`` keeps its last answer by identity.
* ``InMemoryLeaseStore.bind`` shares ``may_bind``'s reservation lookup and integer address,
  and ``_put`` takes the integer address from its caller: a random sequence of operations
  must keep ``may_bind`` predicting ``bind`` and the store's indexes consistent.
"""

from __future__ import annotations

import gc
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st
from test_server import IFACE, NET, RELAY, REMOTE, make_core, message

from pxestack.dhcp.decide import Destination, DestinationKind, _relay_destination
from pxestack.dhcp.leases import (
    AddressRange,
    InMemoryLeaseStore,
    LeaseState,
    Reservation,
    Subnet,
)
from pxestack.dhcp.protocol import DhcpServerProtocol
from pxestack.dhcp.server import InterfaceInfo
from pxestack.wire import constants as c


def _fresh(text: str) -> IPv4Address:
    """A new IPv4Address object (never one of the decoder's shared ones)."""
    return IPv4Address(text)


def test_relay_destination_matches_a_fresh_destination_for_every_object() -> None:
    for round_ in range(3):
        for text in ("198.18.0.2", "198.18.0.3", "10.0.0.1"):
            giaddr = _fresh(text)
            destination = _relay_destination(giaddr)
            assert destination == Destination(DestinationKind.RELAY, giaddr, c.DHCP_SERVER_PORT)
            assert destination.address == IPv4Address(text)
            del giaddr, destination
            if round_:
                gc.collect()  # let ids be reused by the next object


def test_relay_memo_answers_for_every_giaddr_object() -> None:
    """The core finds a relay's subnet by ``id`` of the giaddr object; equal but
    distinct objects, objects whose id is reused, unknown relays and an unset giaddr built
    as a new object get the answers of the straightforward lookup."""
    core, _, _ = make_core()
    cases = [(RELAY, "offer"), (IPv4Address("198.19.7.9"), "ignored_relay"),
             (IPv4Address(0), "offer")]
    for round_ in range(3):
        for n, (address, expected) in enumerate(cases * 2):
            giaddr = _fresh(str(address))
            before = dict(core.counters)
            replies = core.handle(message(c.DHCPDISCOVER, 100 + n, giaddr=giaddr), IFACE,
                                  1000.0 + round_)
            if expected == "offer":
                assert len(replies) == 1
                subnet = REMOTE if giaddr == RELAY else NET
                assert replies[0].message.yiaddr in subnet
            else:
                assert replies == []
                assert core.counters["ignored_relay"] == before["ignored_relay"] + 1
            del giaddr, replies
            if round_:
                gc.collect()  # let ids be reused by the next object


def test_text_address_is_str_for_equal_distinct_and_reused_objects() -> None:
    core, _, _ = make_core()
    protocol = DhcpServerProtocol(core, IFACE)
    for value in list(range(0x0A000001, 0x0A000001 + 300)) * 2:
        address = IPv4Address(value)
        assert protocol._text_address(address) == str(address)
        del address  # the next object may get the same id; the memo must not answer for it


def test_defaults_follow_the_server_address_across_interfaces() -> None:
    core, _, _ = make_core()
    other = InterfaceInfo("eth9", IPv4Address("10.9.9.1"), IPv4Network("10.9.9.0/24"))
    for server in (IFACE.address, other.address, _fresh(str(IFACE.address)), other.address,
                   IFACE.address):
        defaults = core._defaults_for(server)
        assert defaults.server_address == server
        assert defaults == core._defaults_for(_fresh(str(server)))


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
