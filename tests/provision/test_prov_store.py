"""The file store: atomic writes, hand edits, the git audit (mayu #53), stale locks, claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pygit2
import pytest
from provision_helpers import provision_config

from pxestack.provision import assign
from pxestack.provision.hoststore import (
    HostNotFound,
    PreconditionFailed,
    StoreError,
    StoreReadOnly,
)
from pxestack.provision.model import Host, HostState
from pxestack.provision.store import FileHostStore, atomic_write


def _make(serial):
    return lambda existing: Host(serial=serial, machine_id="ab" * 16, hostname="abababababababab")


def _set_state(state):
    return lambda host: (host.evolve(state=state), "updated host state", ())


def _messages(root: Path) -> list[str]:
    repo = pygit2.Repository(str(root))
    return [
        c.message.splitlines()[0]
        for c in repo.walk(repo.head.target, pygit2.enums.SortMode.TOPOLOGICAL)
    ]


def test_new_cluster_is_a_repo_with_mayus_identity_and_first_commit(tmp_path):
    store = FileHostStore(tmp_path / "c")
    repo = pygit2.Repository(str(tmp_path / "c"))
    assert repo.config["user.name"] == "mayu commiter"
    assert repo.config["user.email"] == "support+noise@giantswarm.io"
    assert _messages(tmp_path / "c") == ["initial commit"]
    cluster = json.loads((tmp_path / "c" / "cluster.json").read_text())
    assert cluster["GitStore"] is True
    assert len(cluster["Config"]["DefaultEtcdClusterToken"]) == 32
    assert store.default_etcd_token == cluster["Config"]["DefaultEtcdClusterToken"]


def test_conf_json_has_mayus_shape(tmp_path):
    store = FileHostStore(tmp_path / "c")
    store.enrol("sn", _make("sn"), ["host created"])
    raw = (tmp_path / "c" / "sn" / "conf.json").read_text()
    assert not raw.endswith("\n")  # as mayu writes it
    data = json.loads(raw)
    assert data["State"] == "unknown"
    assert data["LastBoot"] == "0001-01-01T00:00:00Z"
    assert "InternalAddr" not in data  # omit-if-empty


def test_hand_edit_is_picked_up_and_a_broken_one_keeps_the_last_good_copy(tmp_path):
    store = FileHostStore(tmp_path / "c")
    store.enrol("sn", _make("sn"), ["host created"])
    path = tmp_path / "c" / "sn" / "conf.json"
    data = json.loads(path.read_text())
    data["ProviderId"] = "edited-by-hand"
    path.write_text(json.dumps(data))
    assert store.read("sn").host.provider_id == "edited-by-hand"
    data["State"] = "Running"  # wrong case: strict parsing refuses it
    path.write_text(json.dumps(data))
    assert store.read("sn").host.provider_id == "edited-by-hand"
    assert "State" in store.health()["unreadable_records"]["sn"]
    assert store.health()["ok"] is False
    # A first contact for it gets the last good copy; the broken file is left for the operator.
    versioned, created = store.enrol("sn", _make("sn"), ["host created"])
    assert (created, versioned.host.provider_id) == (False, "edited-by-hand")
    assert json.loads(path.read_text())["State"] == "Running"


def test_unreadable_record_of_an_unknown_host_blocks_enrolment(tmp_path):
    store = FileHostStore(tmp_path / "c")
    (tmp_path / "c" / "new").mkdir()
    (tmp_path / "c" / "new" / "conf.json").write_text("{torn")
    with pytest.raises(StoreError):
        store.enrol("new", _make("new"), ["host created"])
    assert (tmp_path / "c" / "new" / "conf.json").read_text() == "{torn"


def test_update_with_stale_etag_fails_and_unknown_host_raises(tmp_path):
    store = FileHostStore(tmp_path / "c")
    first, _ = store.enrol("sn", _make("sn"), ["host created"])
    store.update("sn", _set_state(HostState.INSTALLING), if_match=first.etag)
    with pytest.raises(PreconditionFailed):
        store.update("sn", _set_state(HostState.INSTALLED), if_match=first.etag)
    with pytest.raises(HostNotFound):
        store.update("other", _set_state(HostState.INSTALLED))


def test_failed_commit_is_loud_reported_and_retried(tmp_path):
    """mayu #53: the audit must never stop silently."""
    store = FileHostStore(tmp_path / "c")
    store.enrol("sn", _make("sn"), ["host created"])
    lock = tmp_path / "c" / ".git" / "index.lock"
    holder = open(lock, "w")  # noqa: SIM115 - a live holder: the lock is not stale, so committing fails
    try:
        store.update("sn", _set_state(HostState.INSTALLING))
        health = store.health()
        assert health["ok"] is False and health["git_pending"] == 1
        assert "locked" in health["git_error"]
        # The change itself is durable even though its commit is pending.
        assert json.loads((tmp_path / "c" / "sn" / "conf.json").read_text())["State"] == (
            "installing"
        )
        assert store.retry_audit() is False
    finally:
        holder.close()
        lock.unlink()
    assert store.retry_audit() is True
    assert store.health()["ok"] is True
    assert _messages(tmp_path / "c")[0] == "sn: updated host state"


def test_stale_index_lock_of_a_dead_process_is_removed_at_start(tmp_path):
    FileHostStore(tmp_path / "c").enrol("sn", _make("sn"), ["host created"])
    lock = tmp_path / "c" / ".git" / "index.lock"
    # A process that created the lock and died (kill -9 of a writer).
    subprocess.run([sys.executable, "-c", f"open({str(lock)!r}, 'w')"], check=True)
    store = FileHostStore(tmp_path / "c")
    assert not lock.exists()
    store.update("sn", _set_state(HostState.INSTALLING))
    assert store.health()["git_ok"] is True


def test_uncommitted_changes_from_a_crash_are_committed_at_start(tmp_path):
    store = FileHostStore(tmp_path / "c")
    store.enrol("sn", _make("sn"), ["host created"])
    # Simulate a crash between the atomic write and the commit.
    host = store.read("sn").host.evolve(state=HostState.INSTALLING)
    atomic_write(tmp_path / "c" / "sn" / "conf.json", host.to_bytes())
    FileHostStore(tmp_path / "c")
    assert _messages(tmp_path / "c")[0].startswith("pxestack: recorded changes")
    repo = pygit2.Repository(str(tmp_path / "c"))
    assert all(f == pygit2.enums.FileStatus.CURRENT for f in repo.status().values())


def test_damaged_repository_makes_the_store_read_only(tmp_path):
    store = FileHostStore(tmp_path / "c")
    store.enrol("sn", _make("sn"), ["host created"])
    repo = pygit2.Repository(str(tmp_path / "c"))
    tree_id = str(repo.head.peel(pygit2.Commit).tree_id)
    obj = tmp_path / "c" / ".git" / "objects" / tree_id[:2] / tree_id[2:]
    os.chmod(obj, 0o644)
    obj.write_bytes(b"garbage")
    store = FileHostStore(tmp_path / "c")
    assert store.health()["ok"] is False
    assert store.read("sn") is not None  # reads still work
    with pytest.raises(StoreReadOnly):
        store.update("sn", _set_state(HostState.INSTALLING))


def test_hidden_and_foreign_directories_are_ignored(tmp_path):
    store = FileHostStore(tmp_path / "c")
    (tmp_path / "c" / "images").mkdir()
    (tmp_path / "c" / ".secret").mkdir()
    (tmp_path / "c" / ".secret" / "conf.json").write_text("{}")
    store.enrol("sn", _make("sn"), ["host created"])
    assert [h.serial for h in store.hosts()] == ["sn"]


def test_mac_index_follows_every_write(tmp_path):
    store = FileHostStore(tmp_path / "c")
    store.enrol("sn", _make("sn"), ["host created"])
    store.update("sn", lambda h: (h.evolve(mac_addresses=("52:54:00:00:00:01",)), "m", ()))
    assert store.host_for_mac("52:54:00:00:00:01").serial == "sn"
    store.update("sn", lambda h: (h.evolve(mac_addresses=("52:54:00:00:00:02",)), "m", ()))
    assert store.host_for_mac("52:54:00:00:00:01") is None
    assert store.host_for_mac("52:54:00:00:00:02").serial == "sn"


def test_hundred_concurrent_first_contacts_never_overfill(tmp_path):
    """Quota exact under concurrency (threads against the real git store)."""
    config = provision_config(
        tmp_path / "c",
        profiles=[{"name": "core", "quantity": 3}, {"name": "worker", "quantity": 7}],
    )
    store = FileHostStore(tmp_path / "c")
    barrier = threading.Barrier(100)
    errors: list[BaseException] = []

    def contact(index: int) -> None:
        serial = f"sn-{index:03d}"
        try:
            barrier.wait()
            store.enrol(
                serial,
                lambda existing: assign.new_host(
                    serial, existing, config, random_bytes=os.urandom, default_token="t"
                ),
                ["host created"],
            )
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=contact, args=(i,)) for i in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    hosts = FileHostStore(tmp_path / "c").hosts()
    counts = assign.profile_counts(hosts)
    assert (counts["core"], counts["worker"], counts["default"]) == (3, 7, 90)
    addresses = [h.internal_addr for h in hosts]
    assert len(set(addresses)) == 100
    # Enrolments that arrive while a commit is written share the next commit (group
    # commit): every enrolment is recorded once, in a commit that names it, and each
    # host's history shows its own entry.
    recorded = []
    repo = pygit2.Repository(str(tmp_path / "c"))
    for commit in repo.walk(repo.head.target, pygit2.enums.SortMode.TOPOLOGICAL):
        blocks = commit.message.rstrip("\n").split("\n\n")
        if len(blocks) > 1 and blocks[0].split()[1:2] == ["changes:"]:
            assert int(blocks[0].split()[0]) == len(blocks) - 1
            recorded += [block.splitlines()[0] for block in blocks[1:]]
        else:
            recorded.append(blocks[0])
    assert sorted(recorded) == sorted(
        ["initial commit"] + [f"sn-{i:03d}: host created" for i in range(100)]
    )
    for index in (0, 57, 99):
        (entry,) = store.history(f"sn-{index:03d}")
        assert entry.message.startswith(f"sn-{index:03d}: host created")
        assert entry.author == f"machine:sn-{index:03d}"


def test_torn_cluster_json_makes_the_store_read_only_without_raising(tmp_path):
    store = FileHostStore(tmp_path / "c")
    store.enrol("sn", _make("sn"), ["host created"])
    path = tmp_path / "c" / "cluster.json"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    store = FileHostStore(tmp_path / "c")
    health = store.health()
    assert health["ok"] is False and health["read_only"] is True
    assert "cluster.json" in health["damaged"] and "git -C" in health["damaged"]
    assert store.read("sn") is not None
    with pytest.raises(StoreReadOnly, match=r"cluster\.json"):
        store.enrol("other", _make("other"), ["host created"])
    assert path.read_bytes() == data[: len(data) // 2]


def test_a_repository_check_that_does_not_finish_marks_the_store_damaged(tmp_path):
    FileHostStore(tmp_path / "c").enrol("sn", _make("sn"), ["host created"])
    store = FileHostStore(tmp_path / "c", check_timeout=0.001)
    assert "took longer than" in store.health()["damaged"]
    assert store.retry_audit() is True  # nothing retried, nothing written
    with pytest.raises(StoreReadOnly):
        store.history("sn")  # the damaged repository is never opened in this process


def test_repository_check_names_the_damaged_object_and_never_writes(tmp_path):
    from pxestack.provision.repocheck import check_repository

    store = FileHostStore(tmp_path / "c")
    store.enrol("sn", _make("sn"), ["host created"])
    assert check_repository(tmp_path / "c") is None
    repo = pygit2.Repository(str(tmp_path / "c"))
    blob = str(repo.head.peel(pygit2.Commit).tree["sn"]["conf.json"].id)
    obj = tmp_path / "c" / ".git" / "objects" / blob[:2] / blob[2:]
    os.chmod(obj, 0o644)
    obj.write_bytes(obj.read_bytes()[:-4])
    reason = check_repository(tmp_path / "c")
    assert reason is not None and blob in reason and "git fsck" in reason
