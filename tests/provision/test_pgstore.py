"""The PostgreSQL host store against a real PostgreSQL started by the test (tests/pglab.py).

Several stores on one database stand for several pxestack servers: each has its own
connection pool, cache and MAC index, exactly as separate processes would.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address

import psycopg
import pytest
from conftest import require
from pglab import SKIP_REASON, pg_binaries, running_lab
from provision_helpers import BASE_URL, provision_config

from pxestack.provision.hoststore import (
    HostNotFound,
    PreconditionFailed,
    StoreReadOnly,
    acting_as,
)
from pxestack.provision.model import HostState
from pxestack.provision.pgstore import ClaimConflict, PostgresHostStore, migrations
from pxestack.provision.provisioner import Provisioner

_names = itertools.count()


def off_reactor(test):
    """Run *test* in a worker thread, as the server runs store work (its thread pool): on
    the reactor thread the store answers reads from its copy, which may lag other servers."""
    import functools

    @functools.wraps(test)
    def run(*args, **kwargs):
        with ThreadPoolExecutor(1) as worker:
            return worker.submit(test, *args, **kwargs).result(timeout=240)

    return run


@pytest.fixture(scope="module")
def lab():
    # Skipped locally without Debian's postgresql package; a failure in CI (strict mode).
    require(pg_binaries() is not None, SKIP_REASON)
    with running_lab() as server:
        yield server


@pytest.fixture
def dsn(lab):
    return lab.create_database(f"hosts{next(_names)}")


def _store(dsn, config, **kwargs):
    store = PostgresHostStore(
        dsn, profiles=[(p.name, p.quantity) for p in config.profiles],
        connect_timeout=2.0, **kwargs,
    )
    store.open()
    return store


@pytest.fixture
def servers(dsn, tmp_path):
    """Three stores (three servers) on one database, and their provisioners."""
    config = provision_config(tmp_path / "unused")
    stores = [_store(dsn, config, server=f"boot{n}") for n in range(3)]
    provisioners = [
        Provisioner(config, store, base_url=BASE_URL, key=store.callback_key)
        for store in stores
    ]
    yield stores, provisioners
    for store in stores:
        store.close()


@off_reactor
def test_schema_is_applied_once_by_servers_starting_together(dsn, tmp_path):
    config = provision_config(tmp_path)
    stores = [
        PostgresHostStore(dsn, profiles=[("core", 3)], connect_timeout=5.0) for _ in range(4)
    ]
    with ThreadPoolExecutor(4) as pool:
        applied = list(pool.map(lambda s: s.open(), stores))
    try:
        assert sorted(itertools.chain.from_iterable(applied)) == [v for v, _ in migrations()]
        with psycopg.connect(dsn) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM pxestack_schema")]
        assert versions == [v for v, _ in migrations()]
        # Every server sees the same cluster secrets.
        assert len({s.callback_key for s in stores}) == 1
        assert len({s.default_etcd_token for s in stores}) == 1
        assert len(stores[0].callback_key) == 32
    finally:
        for store in stores:
            store.close()
    assert config.profiles  # the helper's profiles were synchronised by every store


@off_reactor
def test_changes_are_records_with_etags_and_audit_rows(servers):
    (one, two, _), (prov, _, _) = servers
    with acting_as("admin"):
        versioned, created = prov.first_contact("serial-a")
    assert created and versioned.host.profile == "core"
    assert versioned.host.internal_addr == IPv4Address("198.18.10.10")
    # Another server reads it, with the same ETag.
    seen = two.read("serial-a")
    assert seen is not None and seen.etag == versioned.etag and seen.host == versioned.host
    again, created = two.enrol("serial-a", lambda hosts: pytest.fail("must not run"), ["x"])
    assert not created and again.etag == versioned.etag

    def installed(host):
        return host.evolve(state=HostState.INSTALLED), "updated host state", ["installed"]

    with pytest.raises(PreconditionFailed):
        two.update("serial-a", installed, if_match='"stale"')
    changed = two.update("serial-a", installed, if_match=versioned.etag)
    assert changed.host.state is HostState.INSTALLED and changed.etag != versioned.etag
    assert one.read("serial-a").etag == changed.etag
    history = one.history("serial-a")
    assert [e.message.splitlines()[0] for e in history] == [
        "serial-a: updated host state", "serial-a: host created"]
    assert history[0].author == "machine:serial-a" and history[1].author == "admin"
    removed = one.remove("serial-a", "host removed")
    assert removed.etag == changed.etag
    assert two.read("serial-a") is None
    with pytest.raises(HostNotFound):
        two.remove("serial-a", "host removed")
    assert one.history("serial-a")[0].message == "serial-a: host removed"
    assert one.addresses() == {}


@off_reactor
def test_first_contact_on_three_servers_never_overfills_or_shares(servers):
    stores, provisioners = servers
    serials = [f"storm-{n:03d}" for n in range(90)]
    barrier = threading.Barrier(9)

    def enrol(index):
        prov = provisioners[index % 3]
        barrier.wait(timeout=30)
        out = []
        for serial in serials[index::9]:
            out.append(prov.first_contact(serial)[0].host)
        return out

    with ThreadPoolExecutor(9) as pool:
        hosts = list(itertools.chain.from_iterable(pool.map(enrol, range(9))))
    assert sorted(h.serial for h in hosts) == serials
    counts = Counter(h.profile for h in hosts)
    assert counts == {"core": 3, "worker": 2, "default": 85}
    addresses = [h.internal_addr for h in hosts]
    assert len(set(addresses)) == 90
    # What the database holds agrees: one claim per address, one slot per profile place.
    claims = stores[0].addresses()
    assert len(claims) == 90 and set(claims) == set(addresses)
    with psycopg.connect(stores[0].dsn) as conn:
        slots = conn.execute(
            "SELECT profile, count(*) FROM profile_slots GROUP BY profile ORDER BY profile"
        ).fetchall()
    assert slots == [("core", 3), ("worker", 2)]
    # Every server's copy catches up with the others' enrolments.
    for store in stores:
        store.refresh()
        assert len(store.hosts()) == 90


@off_reactor
def test_first_contacts_waiting_together_share_one_transaction(servers, monkeypatch):
    from pxestack.provision.model import Host

    (one, _, _), (prov, _, _) = servers
    batches = []
    real = one._enrol_batch

    def counted(batch, **kwargs):
        batches.append([request.serial for request in batch])
        real(batch, **kwargs)

    monkeypatch.setattr(one, "_enrol_batch", counted)
    # Hold the enrolment lock so that the first contacts below queue up behind it.
    one._enrolling.acquire()
    serials = [f"grp-{n:02d}" for n in range(6)]

    def refuse(hosts):
        raise ValueError("no place for this one")

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(prov.first_contact, serial) for serial in serials]
        twice = pool.submit(prov.first_contact, "grp-00")
        refused = pool.submit(one.enrol, "grp-refused", refuse, ["host created"])
        _wait_until(lambda: len(one._enrolments) == 8, timeout=30)
        one._enrolling.release()
        hosts = [future.result(timeout=60)[0].host for future in futures]
        again, created = twice.result(timeout=60)
        with pytest.raises(ValueError, match="no place for this one"):
            refused.result(timeout=60)
    # All eight waited for one transaction: one batch (plus none left over).
    assert [len(batch) for batch in batches] == [8]
    assert again.host == hosts[0] and not created
    # Each later decision saw the earlier ones (in the order they queued): the profiles
    # filled in order, addresses all different.
    order = list(dict.fromkeys(s for s in batches[0] if s != "grp-refused"))
    by_serial = {h.serial: h for h in hosts}
    assert [by_serial[s].profile for s in order] == ["core"] * 3 + ["worker"] * 2 + ["default"]
    assert len({h.internal_addr for h in hosts}) == 6
    assert one.read("grp-refused") is None
    assert isinstance(one.read("grp-05").host, Host)
    # Every enrolment has its own audit entry, in the order they were decided.
    with psycopg.connect(one.dsn) as conn:
        audited = [r[0] for r in conn.execute("SELECT serial FROM audit ORDER BY id")]
    assert audited == order and sorted(order) == serials


@off_reactor
def test_constraints_refuse_what_a_racing_update_would_break(servers):
    (one, two, _), (prov, _, _) = servers
    first = prov.first_contact("claim-a")[0].host
    second = prov.first_contact("claim-b")[0].host

    def take_address(host):
        return host.evolve(internal_addr=first.internal_addr), "updated host InternalAddr", []

    with pytest.raises(ClaimConflict, match="already belongs to another machine"):
        two.update("claim-b", take_address)
    assert one.read("claim-b").host.internal_addr == second.internal_addr
    for n in range(3):
        prov.first_contact(f"fill-{n}")  # core (3) is now full: claim-a + two more, ...

    def join_core(host):
        return host.evolve(profile="core"), "updated host Profile", []

    last = prov.first_contact("claim-c")[0].host
    assert last.profile == "default"
    with pytest.raises(ClaimConflict, match="profile core is full"):
        two.update("claim-c", join_core)
    assert one.read("claim-c").host.profile == "default"


@off_reactor
def test_a_lost_database_degrades_and_recovers(lab, servers):
    (one, two, _), (prov, _, _) = servers
    known = prov.first_contact("known-1")[0]
    two.refresh()
    lab.stop()
    try:
        # Reads come from the copy (boot scripts of known machines), writes are refused.
        assert two.read("known-1").host == known.host
        assert two.host_for_mac("52:54:00:00:00:01") is None
        with pytest.raises(StoreReadOnly, match="unreachable"):
            prov.first_contact("new-1")
        health = one.health()
        assert health["ok"] is False and health["read_only"] is True
        assert "unreachable" in health["database_error"]
        assert two.read("known-1") is not None
    finally:
        lab.start()

    def recovered():
        # What the provisioning service's periodic refresh does (every two seconds).
        one.refresh()
        two.refresh()
        return one.unreachable is None and two.unreachable is None

    _wait_until(recovered, timeout=60)
    assert one.health()["ok"] is True
    created = prov.first_contact("new-1")[0]
    assert created.host.internal_addr != known.host.internal_addr
    assert two.read("new-1").etag == created.etag


def _server(tmp_path, dsn, name):
    from provision_helpers import ADMIN_TOKEN, Client
    from twisted.web.resource import Resource

    from pxestack.config import load_config
    from pxestack.provision.api import synchronous_runner
    from pxestack.provision.service import provisioning_extensions

    config = load_config({
        "state_dir": str(tmp_path / name),
        "http": {"listen": "127.0.0.1:18080", "public_url": BASE_URL},
        "provision": {
            "enrolment": "open",
            "api": {"token": ADMIN_TOKEN},
            "network": {"ip_range": {"start": "198.18.20.10", "end": "198.18.20.20"}},
            "profiles": [{"name": "core", "quantity": 1}],
            "store": {"kind": "postgresql", "dsn": dsn, "pool": 2, "connect_timeout": 2},
        },
    })
    ext = provisioning_extensions(config)
    root = Resource()
    for child_name, child in ext.http_children.items():
        root.putChild(child_name, child)
    ext.http_children[b"admin"].api.run = synchronous_runner
    return ext, Client(root), ADMIN_TOKEN


def test_servers_share_hosts_settings_and_tokens_and_degrade_together(lab, dsn, tmp_path):
    # The API runs store work in a thread pool in production; here the whole scenario runs
    # in one thread off the reactor, with the API's synchronous runner.
    with ThreadPoolExecutor(1) as worker:
        worker.submit(_shared_servers_scenario, lab, dsn, tmp_path).result(timeout=240)


def _shared_servers_scenario(lab, dsn, tmp_path):
    import yaml

    a, client_a, token = _server(tmp_path, dsn, "a")
    b, client_b, _ = _server(tmp_path, dsn, "b")
    try:
        assert client_a.request("GET", "/ipxebootscript?serial=ser-1").code == 200
        host = client_b.request("GET", "/admin/host/ser-1", token=token)
        assert host.code == 200 and host.json()["Profile"] == "core"
        # The callback key is shared: a token made by one server is accepted by the other.
        prov_a = a.boot_policy.provisioner
        record = prov_a.get("ser-1").host
        callback = prov_a.callback_token(record)
        assert b.boot_policy.provisioner.token_matches(record, callback)
        # Settings set through one server are stored for all (and for restarts).
        settings = yaml.safe_load(client_a.request("GET", "/admin/mayu_config", token=token).body)
        settings["profiles"] = [{"name": "core", "quantity": 5}]
        put = client_a.request("PUT", "/admin/mayu_config", yaml.safe_dump(settings),
                               token=token)
        assert put.code == 202
        c, _, _ = _server(tmp_path, dsn, "c")
        try:
            assert c.boot_policy.provisioner.config.profiles[0].quantity == 5
        finally:
            for close in c.services[0].after_stop:
                close()
        b.hosts.refresh()
        lab.stop()
        try:
            health = client_b.request("GET", "/admin/health", token=token)
            assert health.code == 503 and health.json()["database_ok"] is False
            known = client_b.request("GET", "/ipxebootscript?serial=ser-1")
            assert known.code == 200 and b"#!ipxe" in known.body
            new = client_b.request("GET", "/ipxebootscript?serial=ser-2")
            assert new.code == 503
        finally:
            lab.start()
        b.services[0].tick()  # the periodic refresh finds the database back
        _wait_until(lambda: client_b.request("GET", "/admin/health", token=token).code == 200)
        assert client_b.request("GET", "/ipxebootscript?serial=ser-2").code == 200
    finally:
        for server in (a, b):
            for close in server.services[0].after_stop:
                close()


def _wait_until(check, timeout=20.0):
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


@off_reactor
def test_db_upgrade_import_and_export_round_trip(lab, dsn, tmp_path, capsys):
    from pxestack.cli import main
    from pxestack.provision.provisioner import callback_key
    from pxestack.provision.store import FileHostStore

    assert main(["db", "upgrade", "--dsn", dsn]) == 0
    assert "applied: 0001_hosts, 0002_audit_order" in capsys.readouterr().out
    assert main(["db", "upgrade", "--dsn", dsn]) == 0
    assert "up to date" in capsys.readouterr().out

    # A git-directory installation with history: three hosts, one changed twice.
    cluster = tmp_path / "cluster"
    config = provision_config(cluster)
    git_store = FileHostStore(cluster)
    key = callback_key(cluster)
    prov = Provisioner(config, git_store, base_url=BASE_URL, key=key)
    for serial in ("imp-1", "imp-2", "imp-3"):
        with acting_as("admin"):
            prov.first_contact(serial)
    prov.set_state("imp-2", "installed")
    prov.set_state("imp-2", "running")
    (cluster / "mayu-config.yaml").write_text("profiles: [{name: core, quantity: 3}]\n")
    token = git_store.default_etcd_token
    before = {h.serial: h for h in git_store.hosts()}
    git_history = git_store.history("imp-2")

    assert main(["db", "import-cluster", str(cluster), "--dsn", dsn]) == 0
    out = capsys.readouterr().out
    assert "imported 3 host(s) and 5 history entries" in out

    store = _store(dsn, config)
    try:
        assert {h.serial: h for h in store.hosts()} == before
        assert store.default_etcd_token == token and store.callback_key == key
        history = store.history("imp-2")
        assert history[0].message == "imp-2: imported from " + str(cluster)
        assert history[0].author == "pxestack import"
        assert [e.message for e in history[1:]] == [e.message for e in git_history]
        assert [e.author for e in history[1:]] == [e.author for e in git_history]
        assert store.read_cluster_file("mayu-config.yaml").startswith(b"profiles:")
        assert set(store.addresses().values()) == {"imp-1", "imp-2", "imp-3"}
        # A second import changes nothing and says so.
        assert main(["db", "import-cluster", str(cluster), "--dsn", dsn]) == 0
        captured = capsys.readouterr()
        assert "imported 0 host(s)" in captured.out
        assert "already in the database" in captured.err
    finally:
        store.close()

    exported = tmp_path / "exported"
    assert main(["db", "export-cluster", str(exported), "--dsn", dsn]) == 0
    assert "exported 3 host(s)" in capsys.readouterr().out
    again = FileHostStore(exported)
    assert {h.serial: h for h in again.hosts()} == before
    assert again.default_etcd_token == token
    assert callback_key(exported) == key
    assert (exported / "mayu-config.yaml").read_text().startswith("profiles:")
    assert again.health()["git_ok"] is True
    assert main(["db", "export-cluster", str(exported), "--dsn", dsn]) == 2
    assert "not empty" in capsys.readouterr().err


def test_import_is_refused_while_a_server_holds_the_directory(dsn, tmp_path, capsys):
    import subprocess
    import sys

    from pxestack.cli import main

    cluster = tmp_path / "cluster"
    cluster.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path;"
         "from pxestack.provision.statelock import StateLock;"
         "lock = StateLock.acquire(Path(sys.argv[1])); print('held', flush=True);"
         "time.sleep(120)", str(cluster)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["db", "import-cluster", str(cluster), "--dsn", dsn]) == 1
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_db_without_a_database_says_what_to_give(capsys):
    from pxestack.cli import main

    assert main(["db", "upgrade"]) == 2
    assert "--dsn" in capsys.readouterr().err


EXPORTER = """
import sys, time
from pathlib import Path
from pxestack.provision.pgexport import AuditExporter
exporter = AuditExporter(sys.argv[1], Path(sys.argv[2]), git_name="pxestack",
                         git_email="pxestack@pxestack.invalid")
while True:
    count = exporter.step()
    print(exporter.leading, count, flush=True)
    time.sleep(0.1)
"""


def _git_log(root):
    import pygit2

    repo = pygit2.Repository(str(root))
    if repo.head_is_unborn:
        return []
    walker = repo.walk(repo.head.target, pygit2.enums.SortMode.TOPOLOGICAL
                       | pygit2.enums.SortMode.REVERSE)
    return [(c.author.name, c.message) for c in walker]


def _exported(log):
    """(Audit-Id, first line, author) of every exported entry, oldest first: a commit of
    one entry is that entry; a commit of several holds one block per entry (its first
    line, then indented ``by <actor>``, its detail lines and its ``Audit-Id``)."""
    import re

    from pxestack.provision.pgexport import audit_ids

    entries = []
    for author, message in log:
        if re.match(r"^[0-9]+ changes: ", message):
            for block in message.split("\n\n")[1:]:
                lines = block.split("\n")
                (entry,) = audit_ids(block)
                entries.append((entry, lines[0], lines[1].strip().removeprefix("by ")))
        elif audit_ids(message):
            entries.append((audit_ids(message)[-1], message.splitlines()[0], author))
    return entries


@off_reactor
def test_one_server_exports_the_audit_to_git_and_another_takes_over(servers, tmp_path):
    import signal
    import subprocess
    import sys

    from pxestack.provision.pgexport import AuditExporter

    (one, two, _), (prov, _, _) = servers
    shared = tmp_path / "exported"
    leader = subprocess.Popen([sys.executable, "-c", EXPORTER, one.dsn, str(shared)],
                              stdout=subprocess.PIPE, text=True)
    follower = AuditExporter(one.dsn, shared, git_name="pxestack",
                             git_email="pxestack@pxestack.invalid")
    try:
        assert leader.stdout.readline().split()[0] == "True"
        assert follower.step() == 0 and not follower.leading
        with acting_as("admin"):
            for serial in ("exp-1", "exp-2", "exp-3"):
                prov.first_contact(serial)
        prov.set_state("exp-2", "installed")
        two.remove("exp-3", "host removed")
        two.write_cluster_file("mayu-config.yaml", b"profiles: []\n", "updated mayu config")
        _wait_until(lambda: len(_exported(_git_log(shared))) >= 6, timeout=60)
        # The exporting server dies; the other one takes over at its next attempt.
        leader.send_signal(signal.SIGKILL)
        leader.wait(timeout=30)
        prov.set_state("exp-1", "installed")
        _wait_until(lambda: follower.step() > 0 or follower.leading, timeout=30)
        follower.step()
        assert follower.leading
        one.exporter = follower
        health = one.health()
        assert health["git_exporter"] is True and health["git_ok"] is True
        assert health["git_exported_to"] == follower.last_id and health["ok"] is True
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait(timeout=30)
        follower.close()
    entries = _exported(_git_log(shared))
    ids = [entry for entry, _, _ in entries]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    with psycopg.connect(one.dsn) as conn:
        expected = [r[0] for r in conn.execute("SELECT id FROM audit ORDER BY id")]
    assert ids == expected
    subjects = [subject for _, subject, _ in entries]
    assert subjects == [
        "exp-1: host created", "exp-2: host created", "exp-3: host created",
        "exp-2: updated host state", "exp-3: host removed", "updated mayu config",
        "exp-1: updated host state",
    ]
    assert [author for _, _, author in entries][:3] == ["admin"] * 3
    assert not (shared / "exp-3").exists()
    assert (shared / "mayu-config.yaml").read_text() == "profiles: []\n"
    for serial in ("exp-1", "exp-2"):
        assert (shared / serial / "conf.json").read_bytes() == \
            one.read(serial).host.to_bytes()


@off_reactor
def test_the_exporter_groups_waiting_entries_into_commits_in_order(servers, tmp_path,
                                                                   monkeypatch):
    import pygit2

    from pxestack.provision import audit as git_audit
    from pxestack.provision.pgexport import AuditExporter

    (one, two, _), (prov, _, _) = servers
    monkeypatch.setattr(git_audit, "MAX_BATCH", 4)
    with acting_as("admin"):
        for n in range(5):
            prov.first_contact(f"grp-{n}")
    prov.set_state("grp-1", "installed")
    two.remove("grp-2", "host removed")
    with psycopg.connect(one.dsn) as conn:
        table = conn.execute("SELECT id, at FROM audit ORDER BY id").fetchall()
    exporter = AuditExporter(one.dsn, tmp_path / "export", git_name="pxestack",
                             git_email="pxestack@pxestack.invalid")
    try:
        assert exporter.step() == 7
        log = _git_log(tmp_path / "export")
        # Seven waiting entries, at most four per commit: two commits, every entry once,
        # in the table's order, each block with its own author.
        assert len(log) == 2
        entries = _exported(log)
        assert [e for e, _, _ in entries] == [entry for entry, _ in table]
        assert [s for _, s, _ in entries] == [
            *(f"grp-{n}: host created" for n in range(5)), "grp-1: updated host state",
            "grp-2: host removed"]
        assert [a for _, _, a in entries] == ["admin"] * 5 + ["machine:grp-1", "pxestack"]
        assert log[0][0] == "admin"  # one actor: the commit's author
        # A commit's time is its newest entry's.
        repo = pygit2.Repository(str(tmp_path / "export"))
        assert repo.head.peel(pygit2.Commit).commit_time == int(table[-1][1].timestamp())
        # The tree holds every change; the history of one host shows its own blocks.
        assert not (tmp_path / "export" / "grp-2").exists()
        assert (tmp_path / "export" / "grp-1" / "conf.json").read_bytes() == \
            one.read("grp-1").host.to_bytes()
        history = exporter._git().history("grp-1/conf.json")
        assert [h.message.splitlines()[0] for h in history] == [
            "grp-1: updated host state", "grp-1: host created"]
        # A further entry follows the repository's last Audit-Id.
        prov.set_state("grp-3", "installed")
        assert exporter.step() == 1 and exporter.step() == 0
        assert [e for e, _, _ in _exported(_git_log(tmp_path / "export"))][-1] == \
            table[-1][0] + 1
    finally:
        exporter.close()


@off_reactor
def test_on_the_reactor_thread_reads_come_from_the_copy(lab, servers, monkeypatch):
    from pxestack.provision import pgstore

    (_, two, _), (prov, _, _) = servers
    prov.first_contact("copy-1")
    two.refresh()
    lab.stop()
    try:
        monkeypatch.setattr(pgstore, "isInIOThread", lambda: True)
        # Answered from the copy without a round trip (the database is down: none possible).
        assert two.read("copy-1").host.serial == "copy-1"
        assert two.unreachable is None  # nothing was tried
        monkeypatch.setattr(pgstore, "isInIOThread", lambda: False)
        assert two.read("copy-1") is not None and two.unreachable is not None
        # Not in the copy while the database is down: "try again" (503), not "unknown" (401).
        monkeypatch.setattr(pgstore, "isInIOThread", lambda: True)
        with pytest.raises(StoreReadOnly):
            two.read("copy-2")
        assert [h.serial for h in two.hosts()] == ["copy-1"]
    finally:
        lab.start()


@off_reactor
def test_a_change_that_reads_every_host_needs_no_second_connection(dsn, tmp_path):
    from pxestack.provision.model import Host

    config = provision_config(tmp_path)
    store = _store(dsn, config, pool_size=1)
    try:
        store.enrol("one-conn-a", lambda hosts: Host(serial="one-conn-a"), ["host created"])
        store.enrol("one-conn-b", lambda hosts: Host(serial="one-conn-b"), ["host created"])
        seen = []

        def look_around(host):
            # What moving a host to another profile does: count every host (quantity check).
            seen.append(sorted(h.serial for h in store.hosts()))
            seen.append(store.read("one-conn-b").host.serial)
            return host.evolve(profile="worker"), "updated host Profile", []

        changed = store.update("one-conn-a", look_around)
        assert changed.host.profile == "worker"
        assert seen == [["one-conn-a", "one-conn-b"], "one-conn-b"]
        assert store.health()["ok"] is True
    finally:
        store.close()


@off_reactor
def test_an_enrolment_sees_every_servers_hosts_reading_only_what_changed(servers):
    from pxestack.provision.model import Host

    (one, two, _), (prov_one, _, _) = servers
    seen: list[set[str]] = []

    def make(serial):
        def build(hosts):
            seen.append({host.serial for host in hosts})
            return Host(serial=serial)
        return build

    with acting_as("admin"):
        for n in range(3):
            prov_one.first_contact(f"one-{n}")
        two.enrol("two-0", make("two-0"), ["host created"])   # first: every ETag compared
        prov_one.first_contact("one-3")
        one.remove("one-0", "removed")
        two.enrol("two-1", make("two-1"), ["host created"])   # then: the audit since
        two.refresh()                                          # a snapshot: compared again
        prov_one.first_contact("one-4")
        two.enrol("two-2", make("two-2"), ["host created"])
    assert seen[0] == {"one-0", "one-1", "one-2"}
    assert seen[1] == {"one-1", "one-2", "one-3", "two-0"}
    assert seen[2] == {"one-1", "one-2", "one-3", "one-4", "two-0", "two-1"}
