"""Leases shared through one table: the sans-IO store, the claim batches and the protocol's
held replies, with an in-memory table that follows the SQL function's rules.

Two servers (two cores, two protocols, one table) answer the same clients: an address is
never granted twice, a refused claim becomes another offer or a NAK, a server with no
record of a client learns the other server's lease from the table, and a table that cannot
be reached gets no reply out.  The same rules against a real PostgreSQL are in
tests/dhcp/test_pg_leases.py.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sharedlab import (
    FIRST,
    SERVER_A,
    SERVER_B,
    START,
    Deferring,
    MemoryLeaseTable,
    Server,
    kind_of,
    message,
)
from twisted.internet.task import Clock

from pxestack.dhcp.leases import Decline, Lease, LeaseState
from pxestack.dhcp.sharedleases import spread_start
from pxestack.wire import constants as c


@pytest.fixture
def lab() -> tuple[MemoryLeaseTable, Clock, Deferring]:
    clock = Clock()
    clock.advance(START)
    return MemoryLeaseTable(), clock, Deferring()


def test_replies_wait_for_the_commit_and_one_call_serves_a_batch(lab: Any) -> None:
    table, clock, run = lab
    a = Server(SERVER_A, table, clock, run)
    a.protocol.receive_batch([message(c.DHCPDISCOVER, n) for n in range(1, 6)])
    assert a.transport.written == []  # held until the table confirms the offers
    run.finish()
    offers = a.transport.take()
    assert [kind_of(m) for m in offers] == [c.DHCPOFFER] * 5
    assert len({m.yiaddr for m in offers}) == 5
    assert table.calls == 1
    assert a.commit.claims == 5


def test_batches_waiting_for_a_busy_connection_go_in_one_call(lab: Any) -> None:
    table, clock, run = lab
    a = Server(SERVER_A, table, clock, run)
    for n in range(1, 5):  # four read events while the first call is in flight
        a.protocol.receive_batch([message(c.DHCPDISCOVER, n)])
    assert len(run.queue) == 1
    run.finish()
    assert table.calls == 2  # the first batch, then the three that waited, together
    assert len(a.transport.take()) == 4


def test_two_servers_never_offer_or_grant_one_address_to_two_clients(lab: Any) -> None:
    table, clock, run = lab
    a = Server(SERVER_A, table, clock, run)
    b = Server(SERVER_B, table, clock, run)
    # Both servers start from the same first address for different clients.
    a.protocol.receive_batch([message(c.DHCPDISCOVER, 1)])
    b.protocol.receive_batch([message(c.DHCPDISCOVER, 2)])
    run.finish()
    offer_a, = a.transport.take()
    offer_b, = b.transport.take()
    assert offer_a.yiaddr == FIRST
    assert offer_b.yiaddr != FIRST  # refused, learned, offered again
    assert b.commit.conflicts == 1
    b.protocol.receive_batch([message(c.DHCPREQUEST, 2, requested=offer_b.yiaddr,
                                      server=SERVER_B)])
    a.protocol.receive_batch([message(c.DHCPREQUEST, 1, requested=FIRST, server=SERVER_A)])
    run.finish()
    assert [kind_of(m) for m in a.transport.take() + b.transport.take()] == [c.DHCPACK] * 2
    assert table.bound(clock.seconds()) == {FIRST: b"M" + (1).to_bytes(6, "big"),
                                            offer_b.yiaddr: b"M" + (2).to_bytes(6, "big")}


def _key(mac: int) -> bytes:
    return b"M" + mac.to_bytes(6, "big")


def test_servers_search_a_new_clients_address_from_its_own_place(lab: Any) -> None:
    table, clock, run = lab
    a = Server(SERVER_A, table, clock, run, spread=True)
    b = Server(SERVER_B, table, clock, run, spread=True)
    # Two clients whose own places in the ten-address pool differ.
    one, two = next((m, n) for m in range(1, 50) for n in range(m + 1, 50)
                    if spread_start(_key(m), 10) != spread_start(_key(n), 10))
    a.protocol.receive_batch([message(c.DHCPDISCOVER, one)])
    b.protocol.receive_batch([message(c.DHCPDISCOVER, two)])
    run.finish()
    offer_a, = a.transport.take()
    offer_b, = b.transport.take()
    # Both first offers stand: nothing was refused and handled again.
    assert offer_a.yiaddr == IPv4Address(int(FIRST) + spread_start(_key(one), 10))
    assert offer_b.yiaddr == IPv4Address(int(FIRST) + spread_start(_key(two), 10))
    assert table.calls == 2
    # One client asking both servers is offered the same address by each.
    a.protocol.receive_batch([message(c.DHCPDISCOVER, 60)])
    b.protocol.receive_batch([message(c.DHCPDISCOVER, 60)])
    run.finish()
    assert a.transport.take()[0].yiaddr == b.transport.take()[0].yiaddr
    # A place already held: the search goes on to the next address.
    taken = offer_a.yiaddr
    other = next(m for m in range(61, 200) if m not in (one, two)
                 and IPv4Address(int(FIRST) + spread_start(_key(m), 10)) == taken)
    a.protocol.receive_batch([message(c.DHCPDISCOVER, other)])
    run.finish()
    assert a.transport.take()[0].yiaddr not in (taken, offer_b.yiaddr)


def test_a_client_is_offered_its_previous_address_before_its_own_place(lab: Any) -> None:
    table, clock, run = lab
    a = Server(SERVER_A, table, clock, run, spread=True)
    place = IPv4Address(int(FIRST) + spread_start(_key(1), 10))
    asked = IPv4Address(int(FIRST) + (spread_start(_key(1), 10) + 3) % 10)
    # A client asking for an address (option 50, its previous one) that is free gets it.
    a.protocol.receive_batch([message(c.DHCPDISCOVER, 1, requested=asked)])
    run.finish()
    assert a.transport.take()[0].yiaddr == asked != place
    a.protocol.receive_batch([message(c.DHCPREQUEST, 1, requested=asked, server=SERVER_A)])
    run.finish()
    assert kind_of(a.transport.take()[0]) == c.DHCPACK
    # Bound: offered that address again, not its place in the pool.
    a.protocol.receive_batch([message(c.DHCPDISCOVER, 1)])
    run.finish()
    assert a.transport.take()[0].yiaddr == asked


def test_a_request_for_an_address_the_other_server_granted_is_naked(lab: Any) -> None:
    table, clock, run = lab
    a = Server(SERVER_A, table, clock, run)
    b = Server(SERVER_B, table, clock, run)
    a.protocol.receive_batch([message(c.DHCPDISCOVER, 1)])
    run.finish()
    a.protocol.receive_batch([message(c.DHCPREQUEST, 1, requested=FIRST, server=SERVER_A)])
    run.finish()
    assert kind_of(a.transport.take()[-1]) == c.DHCPACK
    # Client 2 asks B for FIRST in SELECTING state (a forged or stale choice): B's memory
    # thinks it free, the table refuses, and the request is handled again: a NAK.
    b.protocol.receive_batch([message(c.DHCPREQUEST, 2, requested=FIRST, server=SERVER_B)])
    run.finish()
    reply, = b.transport.take()
    assert kind_of(reply) == c.DHCPNAK
    assert table.bound(clock.seconds())[FIRST] == b"M" + (1).to_bytes(6, "big")


def test_the_other_server_renews_a_lease_it_never_granted(lab: Any) -> None:
    table, clock, run = lab
    a = Server(SERVER_A, table, clock, run)
    a.protocol.receive_batch([message(c.DHCPDISCOVER, 1)])
    run.finish()
    a.protocol.receive_batch([message(c.DHCPREQUEST, 1, requested=FIRST, server=SERVER_A)])
    run.finish()
    assert kind_of(a.transport.take()[-1]) == c.DHCPACK
    # A dies.  B started before the lease existed, so it has no record of the client.
    b = Server(SERVER_B, table, clock, run)
    clock.advance(2000)
    b.protocol.receive_batch([message(c.DHCPREQUEST, 1, ciaddr=FIRST)])  # REBINDING
    assert b.transport.written == []
    run.finish()
    reply, = b.transport.take()
    assert kind_of(reply) == c.DHCPACK and reply.yiaddr == FIRST
    row = table.rows[FIRST]
    assert isinstance(row, Lease) and row.expires == clock.seconds() + 3600
    # And a client that rebooted (INIT-REBOOT) gets its address from B too.
    b2 = Server(SERVER_B, table, clock, run)
    b2.protocol.receive_batch([message(c.DHCPREQUEST, 1, requested=FIRST)])
    run.finish()
    assert kind_of(b2.transport.take()[0]) == c.DHCPACK


def test_a_client_bound_by_the_other_server_is_offered_its_own_address(lab: Any) -> None:
    table, clock, run = lab
    a = Server(SERVER_A, table, clock, run)
    b = Server(SERVER_B, table, clock, run)
    for n in (7, 8):  # B's memory hands out FIRST first, to nobody it knows yet
        a.bind(n)
    b.protocol.receive_batch([message(c.DHCPDISCOVER, 8)])
    run.finish()
    offer, = b.transport.take()
    assert offer.yiaddr == IPv4Address(int(FIRST) + 1)


def test_a_lost_table_sends_no_reply_and_recovers_by_itself(lab: Any) -> None:
    table, clock, run = lab
    a = Server(SERVER_A, table, clock, run)
    a.commit.start()
    table.down = True
    a.protocol.receive_batch([message(c.DHCPDISCOVER, 1), message(c.DHCPINFORM, 2,
                                                                  ciaddr=FIRST)])
    run.finish()
    replies = a.transport.take()
    assert [kind_of(m) for m in replies] == [c.DHCPACK]  # the INFORM claims nothing
    assert a.commit.health()["lease_db_ok"] is False
    assert a.protocol.unconfirmed == 1
    # While down, a batch is refused at once (no call is made).
    a.protocol.receive_batch([message(c.DHCPDISCOVER, 1)])
    assert run.queue == []
    assert a.transport.take() == []
    table.down = False
    clock.advance(2.0)  # the probe
    run.finish()
    assert a.commit.health()["lease_db_ok"] is True
    a.protocol.receive_batch([message(c.DHCPDISCOVER, 1)])
    run.finish()
    assert [kind_of(m) for m in a.transport.take()] == [c.DHCPOFFER]
    a.commit.stop()


def test_release_and_decline_reach_the_table(lab: Any) -> None:
    table, clock, run = lab
    a = Server(SERVER_A, table, clock, run)
    b = Server(SERVER_B, table, clock, run)
    for n in (1, 2):
        a.bind(n)
    second = IPv4Address(int(FIRST) + 1)
    a.protocol.receive_batch([message(c.DHCPRELEASE, 1, ciaddr=FIRST, server=SERVER_A),
                              message(c.DHCPDECLINE, 2, requested=second, server=SERVER_A)])
    run.finish()
    row = table.rows[FIRST]
    assert isinstance(row, Lease) and row.state is LeaseState.FREE
    assert isinstance(table.rows[second], Decline)
    # B learns of the quarantine when it tries to offer that address.
    b.store.learn(table.rows[second], clock.seconds())
    assert b.store.quarantined(second, clock.seconds())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(1, 14), st.booleans()),
                max_size=40), st.booleans())
def test_any_interleaving_never_binds_an_address_twice(
    steps: list[tuple[str, int, bool]], spread: bool,
) -> None:
    clock = Clock()
    clock.advance(START)
    table, run = MemoryLeaseTable(), Deferring()
    servers = {"a": Server(SERVER_A, table, clock, run, spread=spread),
               "b": Server(SERVER_B, table, clock, run, spread=spread)}
    acked: dict[IPv4Address, set[int]] = {}
    offered: dict[tuple[str, int], IPv4Address] = {}
    for name, mac, flush in steps:
        node = servers[name]
        if (name, mac) in offered:
            node.protocol.receive_batch([message(c.DHCPREQUEST, mac,
                                                 requested=offered.pop((name, mac)),
                                                 server=node.address)])
        else:
            node.protocol.receive_batch([message(c.DHCPDISCOVER, mac)])
        if flush:
            run.finish()
        for who, other in servers.items():
            for reply in other.transport.take():
                client = int.from_bytes(reply.chaddr[:6], "big")
                if kind_of(reply) == c.DHCPOFFER:
                    offered[(who, client)] = reply.yiaddr
                elif kind_of(reply) == c.DHCPACK:
                    acked.setdefault(reply.yiaddr, set()).add(client)
        clock.advance(0.5)
    run.finish()
    for other in servers.values():
        for reply in other.transport.take():
            if kind_of(reply) == c.DHCPACK:
                client = int.from_bytes(reply.chaddr[:6], "big")
                acked.setdefault(reply.yiaddr, set()).add(client)
    assert all(len(clients) == 1 for clients in acked.values()), acked
    bound = table.bound(clock.seconds())
    assert len(set(bound.values())) == len(bound)


def test_a_withdrawn_offer_never_frees_the_other_servers_binding(lab: Any) -> None:
    table, clock, run = lab
    a = Server(SERVER_A, table, clock, run)
    b = Server(SERVER_B, table, clock, run)
    # One client, both servers answer (a relay forwarding to both): the same address.
    for node in (a, b):
        node.protocol.receive_batch([message(c.DHCPDISCOVER, 1)])
    run.finish()
    assert a.transport.take()[0].yiaddr == b.transport.take()[0].yiaddr == FIRST
    # The client chose a; the relay hands its REQUEST to both, a first.
    request = message(c.DHCPREQUEST, 1, requested=FIRST, server=SERVER_A)
    a.protocol.receive_batch([request])
    run.finish()
    b.protocol.receive_batch([request])
    run.finish()
    assert [kind_of(m) for m in a.transport.take()] == [c.DHCPACK]
    assert b.transport.take() == []
    assert table.bound(clock.seconds()) == {FIRST: b"M" + (1).to_bytes(6, "big")}


def test_a_batch_the_table_rejects_for_another_reason_is_logged(lab: Any) -> None:
    from twisted.logger import LogLevel, globalLogPublisher

    table, clock, run = lab
    a = Server(SERVER_A, table, clock, run)
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)

    def broken(claims: Any, now: float) -> Any:
        raise ValueError("invalid input syntax for type inet")

    table.apply = broken  # type: ignore[method-assign]
    try:
        a.protocol.receive_batch([message(c.DHCPDISCOVER, 1)])
        run.finish()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert a.transport.take() == []
    assert a.commit.ok  # not a lost database: nothing to probe
    errors = [e for e in seen if e.get("log_level") is LogLevel.critical]
    assert errors and "1 replies not sent" in errors[0]["log_format"].format(**errors[0])
