"""Three pxestack servers on one PostgreSQL: a boot storm with a server ``kill -9``ed, and
one with PostgreSQL restarted, in the middle.

Each server is a real ``pxestack serve`` process (DHCP, HTTP and provisioning, loopback
only) with ``provision.store: {kind: postgresql}`` and ``dhcp.lease_store: postgresql``;
they share one cluster directory for the git export.  Every machine first gets its address
through a DHCP relay (two racks, two relays, ``giaddr`` set) that forwards to all three
servers, so all three answer and share one pool through the lease table; then it walks the
HTTP part of the boot.  The machines, relays and servers are those of ``tests/pgcluster.py``.

Checked after each storm: every machine provisioned (record ``installed``), the profile
quantities exact, no internal address given twice, no DHCP address acknowledged to two
machines (the ACKs the machines kept, and the lease table: one live binding per machine,
the address its ACK named), and the git export complete and in order (every audit entry's
``Audit-Id`` once, strictly increasing, none missing; a commit holds one entry or several).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import psycopg
import pygit2
import pytest
from conftest import require
from pgcluster import Server, plan, storm
from pglab import SKIP_REASON, pg_binaries, running_lab

from pxestack.provision.pgexport import audit_ids as exported_entries

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

#: Machines per storm (``PXESTACK_PG_STORM`` overrides, e.g. for a quick local run).
MACHINES = int(os.environ.get("PXESTACK_PG_STORM", "1000"))


@pytest.fixture
def lab():
    # Skipped locally without Debian's postgresql package; a failure in CI (strict mode).
    require(pg_binaries() is not None, SKIP_REASON)
    with running_lab() as server:
        yield server


@pytest.fixture
def cluster(lab, tmp_path):
    # The DHCP relays bind port 67 on their loopback addresses.
    require(os.geteuid() == 0, "the DHCP relays of the storm bind port 67: needs root")
    dsn = lab.create_database("storm")
    shared = tmp_path / "cluster"
    servers = [Server(tmp_path, f"pxe{n}", MACHINES, shared, dsn,
                      dhcp_address=f"127.0.0.{21 + n}") for n in range(3)]
    try:
        for server in servers:
            server.wait_ready()
        yield dsn, shared, servers
    finally:
        for server in servers:
            server.stop()


def _check(dsn: str, shared: Path, live) -> None:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT serial, record FROM hosts").fetchall()
        audit_ids = [r[0] for r in conn.execute("SELECT id FROM audit ORDER BY id")]
        claims = conn.execute("SELECT count(*) FROM address_claims").fetchone()[0]
    assert len(rows) == MACHINES
    assert {r[1]["State"] for r in rows} == {"installed"}
    assert Counter(r[1]["Profile"] for r in rows) == plan(MACHINES)
    addresses = [r[1]["InternalAddr"] for r in rows]
    assert len(set(addresses)) == MACHINES and claims == MACHINES
    # The git export catches up (the servers export every two seconds) and is in order.
    deadline = time.monotonic() + 300
    while True:
        exported = _exported_ids(shared)
        if exported and exported[-1] == audit_ids[-1]:
            break
        assert time.monotonic() < deadline, (
            f"git export behind: {exported[-1:]} of {audit_ids[-1]}; "
            + " | ".join(s.log.read_text()[-600:] for s in live))
        time.sleep(0.5)
    assert exported == audit_ids


def _check_leases(dsn: str, acks: dict) -> None:
    """One ACKed address per machine, none twice, and the table agrees."""
    assert len(acks) == MACHINES
    addresses = [address for address, _ in acks.values()]
    assert len(set(addresses)) == MACHINES, "an address was acknowledged to two machines"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT host(address), client FROM dhcp_leases WHERE state = 'bound'"
        ).fetchall()
    table = {bytes(client): address for address, client in rows}
    assert len(rows) == len(table) == MACHINES  # one binding per machine
    for mac, (address, _) in acks.items():
        assert table[b"M" + bytes.fromhex(mac.replace(":", ""))] == address, mac
    # The servers shared the pool: more than one of them granted leases.
    by_server = Counter(server for _, server in acks.values())
    print("ACKs by server:", dict(by_server))
    assert len(by_server) >= 2


def _exported_ids(shared: Path) -> list[int]:
    if not (shared / ".git").exists():
        return []
    repo = pygit2.Repository(str(shared))
    if repo.head_is_unborn:
        return []
    walker = repo.walk(repo.head.target,
                       pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE)
    # A commit holds one entry, or several waiting ones (one block each, in order).
    return [entry for commit in walker for entry in exported_entries(commit.message)]


def test_storm_with_a_server_killed(cluster):
    dsn, shared, servers = cluster
    acks: dict = {}
    done, elapsed = storm(servers, MACHINES, during=servers[0].kill,
                          trigger_at=MACHINES // 3, acks=acks)
    assert len(done) == MACHINES
    assert servers[0].process.returncode == -signal.SIGKILL
    _check(dsn, shared, servers[1:])
    _check_leases(dsn, acks)
    print(f"\n{MACHINES} machines on three servers, one killed: {elapsed:.1f} s")


def test_storm_with_postgresql_restarted(lab, cluster):
    dsn, shared, servers = cluster

    def restart():
        lab.stop()
        time.sleep(2.0)  # the servers notice and refuse changes meanwhile
        lab.start()

    acks: dict = {}
    done, elapsed = storm(servers, MACHINES, during=restart, trigger_at=MACHINES // 3,
                          acks=acks)
    assert len(done) == MACHINES
    assert all(s.process.poll() is None for s in servers)
    _check(dsn, shared, servers)
    _check_leases(dsn, acks)
    print(f"\n{MACHINES} machines on three servers, PostgreSQL restarted: {elapsed:.1f} s")
