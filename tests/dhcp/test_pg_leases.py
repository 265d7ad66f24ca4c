"""DHCP leases on a real PostgreSQL (tests/pglab.py): the table's claims are atomic, two
servers never grant one address twice, a lease outlives the server that granted it, and a
lost database is noticed and found again.  The rules themselves, in memory, are in
tests/dhcp/test_shared_leases.py."""

from __future__ import annotations

import itertools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from typing import Any

import pytest
from conftest import require
from pglab import SKIP_REASON, pg_binaries, running_lab
from sharedlab import FIRST, LAST, SERVER_A, SERVER_B, START, Deferring, Server, kind_of, message
from twisted.internet.task import Clock

from pxestack.dhcp.leases import Lease, LeaseState
from pxestack.dhcp.sharedleases import Claim, ClaimKind
from pxestack.service.pgleases import LeaseStoreStartError, PostgresLeaseTable
from pxestack.service.pgschema import migrations
from pxestack.wire import constants as c

_names = itertools.count()


@pytest.fixture(scope="module")
def lab() -> Any:
    require(pg_binaries() is not None, SKIP_REASON)
    with running_lab() as server:
        yield server


@pytest.fixture
def dsn(lab: Any) -> str:
    return str(lab.create_database(f"leases{next(_names)}"))


def table(dsn: str, name: str, now: float = START) -> PostgresLeaseTable:
    opened = PostgresLeaseTable(dsn, pool_size=2, connect_timeout=2.0, server=name)
    opened.open(now)
    return opened


def bound_rows(dsn: str) -> list[tuple[str, bytes]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return [(str(a), bytes(k)) for a, k in conn.execute(
            "SELECT address, client FROM dhcp_leases WHERE state = 'bound'")]


def test_the_lease_table_is_a_versioned_migration(dsn: str) -> None:
    import psycopg

    opened = table(dsn, "a")
    opened.close()
    with psycopg.connect(dsn) as conn:
        versions = [row[0] for row in conn.execute(
            "SELECT version FROM pxestack_schema ORDER BY version")]
    assert versions == [version for version, _ in migrations()]
    assert "0003_dhcp_leases" in versions


def test_racing_claims_for_one_address_have_one_winner(dsn: str) -> None:
    tables = [table(dsn, f"server{n}") for n in range(3)]
    try:
        def claim(number: int) -> bool:
            client = b"M" + number.to_bytes(6, "big")
            answers = tables[number % 3].apply(
                [Claim(ClaimKind.BIND, client, FIRST, client[1:], None, None, START + 600)],
                START)
            return not answers

        with ThreadPoolExecutor(12) as pool:
            for round_number in range(5):
                base = round_number * 100
                won = list(pool.map(claim, range(base, base + 24)))
                assert won.count(True) == 1
                # The winner holds it; the next round's clients lose to it too.
                rows = bound_rows(dsn)
                assert len(rows) == 1 and rows[0][0] == str(FIRST)
                winner = rows[0][1]
                assert winner == b"M" + (base + won.index(True)).to_bytes(6, "big")
                # Free it for the next round (the winner releases).
                tables[0].apply([Claim(ClaimKind.FREE, winner, FIRST, expires=START)], START)
    finally:
        for opened in tables:
            opened.close()


def test_a_refused_claim_answers_the_holder(dsn: str) -> None:
    first = table(dsn, "a")
    second = table(dsn, "b")
    try:
        one, two = b"M" + bytes(5) + b"\x01", b"M" + bytes(5) + b"\x02"
        assert first.apply([Claim(ClaimKind.OFFER, one, FIRST, one[1:], None, None,
                                  START + 30)], START) == []
        answers = second.apply([Claim(ClaimKind.BIND, two, FIRST, two[1:], None, None,
                                      START + 600)], START)
        (index, holder), = answers
        assert index == 0 and isinstance(holder, Lease)
        assert holder.client == one and holder.state is LeaseState.OFFERED
        # When the hold has ended, the address is free to take.
        assert second.apply([Claim(ClaimKind.BIND, two, FIRST, two[1:], None, None,
                                   START + 600)], START + 31) == []
        # An offer to the owner never shortens its binding.
        assert second.apply([Claim(ClaimKind.OFFER, two, FIRST, two[1:], None, None,
                                   START + 61)], START + 31) == []
        found = first.lease_of(two)
        assert isinstance(found, Lease) and found.state is LeaseState.BOUND
        assert found.expires == START + 600
    finally:
        first.close()
        second.close()


def _dora(node: Server, run: Deferring, mac: int) -> IPv4Address | None:
    node.protocol.receive_batch([message(c.DHCPDISCOVER, mac)])
    run.finish()
    offers = node.transport.take()
    if not offers:
        return None
    node.protocol.receive_batch([message(c.DHCPREQUEST, mac, requested=offers[0].yiaddr,
                                         server=node.address)])
    run.finish()
    acks = [m for m in node.transport.take() if kind_of(m) == c.DHCPACK]
    return acks[0].yiaddr if acks else None


def test_two_cores_share_the_pool_without_duplicates(dsn: str) -> None:
    clock = Clock()
    clock.advance(START)
    run = Deferring()
    tables = [table(dsn, "a"), table(dsn, "b")]
    try:
        a = Server(SERVER_A, tables[0], clock, run)
        b = Server(SERVER_B, tables[1], clock, run)
        granted: dict[IPv4Address, int] = {}
        # Both servers hand out the range from its first address: every second claim races.
        for mac in range(1, 11):
            node = a if mac % 2 else b
            address = _dora(node, run, mac)
            assert address is not None, mac
            assert address not in granted
            granted[address] = mac
        assert len(granted) == int(LAST) - int(FIRST) + 1  # the whole range, once each
        assert a.commit.conflicts + b.commit.conflicts > 0
        # The pool is exhausted on both servers, whatever their memory says.
        assert _dora(a, run, 99) is None and _dora(b, run, 98) is None
        rows = bound_rows(dsn)
        assert len(rows) == 10 and len(Counter(k for _, k in rows)) == 10
    finally:
        for opened in tables:
            opened.close()


def test_a_lease_outlives_the_server_that_granted_it(dsn: str) -> None:
    clock = Clock()
    clock.advance(START)
    run = Deferring()
    first = table(dsn, "a")
    a = Server(SERVER_A, first, clock, run)
    address = _dora(a, run, 5)
    assert address == FIRST
    first.close()  # server a dies
    # Server b was running all along (it knows nothing of the client) ...
    second = table(dsn, "b")
    # ... and server c starts afterwards (it loads the live leases at start).
    third = PostgresLeaseTable(dsn, pool_size=1, connect_timeout=2.0, server="c")
    leases, declines = third.open(clock.seconds())
    try:
        assert [(lease.address, lease.state) for lease in leases] == [(FIRST,
                                                                        LeaseState.BOUND)]
        assert declines == []
        b = Server(SERVER_B, second, clock, run)
        clock.advance(1800)  # past T1; the client rebinds by broadcast
        b.protocol.receive_batch([message(c.DHCPREQUEST, 5, ciaddr=FIRST)])
        run.finish()
        reply, = b.transport.take()
        assert kind_of(reply) == c.DHCPACK and reply.yiaddr == FIRST
        found = second.lease_of(b"M" + (5).to_bytes(6, "big"))
        assert isinstance(found, Lease) and found.expires == clock.seconds() + 3600
        # Another client asking b for that address is refused.
        b.protocol.receive_batch([message(c.DHCPREQUEST, 6, requested=FIRST,
                                          server=SERVER_B)])
        run.finish()
        assert kind_of(b.transport.take()[0]) == c.DHCPNAK
    finally:
        second.close()
        third.close()


def test_an_unreachable_database_at_start_names_the_setting(tmp_path: Any) -> None:
    opened = PostgresLeaseTable(f"host={tmp_path} dbname=none user=none", pool_size=1,
                                connect_timeout=1.0)
    with pytest.raises(LeaseStoreStartError, match=r"dhcp\.lease_store\.dsn"):
        opened.open(START)


def test_a_restarted_database_degrades_and_recovers(lab: Any, dsn: str) -> None:
    clock = Clock()
    clock.advance(START)
    run = Deferring()
    first = table(dsn, "a")
    try:
        a = Server(SERVER_A, first, clock, run)
        a.commit.start()
        assert _dora(a, run, 1) == FIRST
        lab.stop()
        try:
            assert _dora(a, run, 2) is None
            assert a.commit.health()["lease_db_ok"] is False
            assert "lease_db_error" in a.commit.health()
        finally:
            lab.start()
        for _ in range(10):  # a probe may meet a connection the restart broke
            clock.advance(2.0)
            run.finish()
            if a.commit.ok:
                break
        assert a.commit.ok
        assert _dora(a, run, 2) is not None
        a.commit.stop()
    finally:
        first.close()


def test_import_leases_moves_a_journal_into_the_table(dsn: str, tmp_path: Any,
                                                      capsys: Any) -> None:
    import time

    from pxestack.cli import main
    from pxestack.dhcp.journal import LeaseJournal
    from pxestack.dhcp.leases import Decline

    now = time.time()
    path = tmp_path / "dhcp-leases.journal"
    journal, _ = LeaseJournal.open(path, sync=False)
    one, two = b"M" + bytes(5) + b"\x01", b"M" + bytes(5) + b"\x02"
    journal.bound(Lease(FIRST, one, one[1:], LeaseState.BOUND, now + 3600, None, "alpha"))
    journal.bound(Lease(IPv4Address(int(FIRST) + 1), two, two[1:], LeaseState.BOUND,
                        now - 10))  # ended: not imported
    journal.declined(Decline(LAST, now + 600))
    journal.close()
    assert main(["db", "import-leases", str(path), "--dsn", dsn]) == 0
    assert "imported 1 lease(s) and 1 quarantine(s)" in capsys.readouterr().out
    opened = table(dsn, "check", now)
    try:
        found = opened.lease_of(one)
        assert isinstance(found, Lease) and found.address == FIRST
        assert found.hostname == "alpha" and abs(found.expires - (now + 3600)) < 1e-6
        assert opened.lease_of(two) is None
        # Running it again changes nothing (the same client's claims succeed again).
        assert main(["db", "import-leases", str(path), "--dsn", dsn]) == 0
        assert bound_rows(dsn) == [(str(FIRST), one)]
    finally:
        opened.close()


def test_a_machine_moved_to_another_subnet_gets_an_address_there(dsn: str) -> None:
    opened = table(dsn, "a")
    try:
        client = b"M" + bytes(5) + b"\x07"
        claim = Claim(ClaimKind.BIND, client, FIRST, client[1:], None, None, START + 600)
        assert opened.apply([claim], START) == []
        # An offer in the same subnet is redirected to the client's binding ...
        same = Claim(ClaimKind.OFFER, client, IPv4Address(int(FIRST) + 1), client[1:],
                     None, None, START + 30, "198.18.0.0/24")
        (index, holder), = opened.apply([same], START)
        assert index == 0 and isinstance(holder, Lease) and holder.address == FIRST
        # ... one in the subnet of another rack is not, and binding there ends the old one.
        moved = IPv4Address("198.18.1.5")
        other = Claim(ClaimKind.OFFER, client, moved, client[1:], None, None, START + 30,
                      "198.18.1.0/24")
        assert opened.apply([other], START) == []
        assert opened.apply([Claim(ClaimKind.BIND, client, moved, client[1:], None, None,
                                   START + 600)], START + 1) == []
        assert bound_rows(dsn) == [(str(moved), client)]
    finally:
        opened.close()
