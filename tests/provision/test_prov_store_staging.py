"""The git audit stages only what a change wrote (no work-tree scan per commit): the
commits it builds must be exactly what a full ``git add -A`` would have committed, one
commit per change, with the work tree clean afterwards; changes it was not told about
(hand edits, deleted host directories, an operator's ``git add``) still reach the audit
through the retry scan."""

from __future__ import annotations

import shutil
from pathlib import Path

import pygit2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pxestack.provision.model import Host, HostState
from pxestack.provision.store import FileHostStore, atomic_write


def _host(serial: str) -> Host:
    return Host(serial=serial, machine_id="ab" * 16, hostname="abababababababab")


def _to(state: HostState):
    return lambda host: (host.evolve(state=state), f"to {state.value}", ())


def _repo(root: Path) -> pygit2.Repository:
    return pygit2.Repository(str(root))


def _clean(repo: pygit2.Repository) -> bool:
    return all(flags == pygit2.enums.FileStatus.CURRENT for flags in repo.status().values())


def _full_scan_tree(root: Path) -> pygit2.Oid:
    """The tree ``git add -A`` of the work tree would commit (the index is not written)."""
    scratch_index = _repo(root).index
    scratch_index.read(force=True)
    scratch_index.add_all()
    return scratch_index.write_tree()


def _first_lines(repo: pygit2.Repository) -> list[str]:
    walker = repo.walk(repo.head.target, pygit2.enums.SortMode.TOPOLOGICAL)
    return [c.message.splitlines()[0] for c in walker][::-1]


_OPS = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from(list(HostState))), min_size=1, max_size=15
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_OPS)
def test_every_change_is_one_commit_of_exactly_the_work_tree(tmp_path_factory, ops):
    root = tmp_path_factory.mktemp("c")
    store = FileHostStore(root)
    expected = ["initial commit"]
    for number, state in ops:
        serial = f"sn-{number}"
        _, created = store.enrol(serial, lambda _e, s=serial: _host(s), ["host created"])
        if created:
            expected.append(f"{serial}: host created")
        before = store.read(serial)
        assert before is not None
        store.update(serial, _to(state))
        if before.host.state != state:
            expected.append(f"{serial}: to {state.value}")
        repo = _repo(root)
        head_tree = repo.head.peel(pygit2.Commit).tree_id
        assert head_tree == _full_scan_tree(root)
        assert _clean(repo), repo.status()
    assert _first_lines(_repo(root)) == expected
    assert store.health()["ok"] is True


def test_cluster_files_are_staged_by_name(tmp_path):
    store = FileHostStore(tmp_path / "c")
    store.write_cluster_file("mayu-config.yaml", b"a: 1\n", "updated mayu config")
    repo = _repo(tmp_path / "c")
    head = repo.head.peel(pygit2.Commit)
    assert head.message.startswith("updated mayu config")
    assert head.tree["mayu-config.yaml"].data == b"a: 1\n"
    assert _clean(repo)


def test_changes_nobody_announced_are_committed_by_the_retry_scan(tmp_path):
    """A host directory deleted by hand and a hand-made conf.json are not staged by any
    write; the periodic retry (the service's tick) finds and commits them."""
    root = tmp_path / "c"
    store = FileHostStore(root)
    for serial in ("sn-a", "sn-b"):
        store.enrol(serial, lambda _e, s=serial: _host(s), ["host created"])
    shutil.rmtree(root / "sn-a")
    (root / "sn-c").mkdir()
    atomic_write(root / "sn-c" / "conf.json", (root / "sn-b" / "conf.json").read_bytes())
    assert store.retry_audit() is True
    repo = _repo(root)
    tree = repo.head.peel(pygit2.Commit).tree
    assert "sn-a" not in tree and "sn-c/conf.json" in tree
    assert repo.head.peel(pygit2.Commit).message.startswith("pxestack: recorded changes")
    assert _clean(repo)


def test_a_staged_write_after_an_operators_git_add_keeps_the_operators_change_staged(tmp_path):
    """Targeted staging commits only the host's file; another file the operator staged by
    hand stays staged (not lost, not committed under the host's message) until the next
    retry scan commits it."""
    root = tmp_path / "c"
    store = FileHostStore(root)
    (root / "NOTES").write_text("rack 4\n")
    operator = _repo(root)
    operator.index.read(force=True)
    operator.index.add("NOTES")
    operator.index.write()
    store.enrol("sn-a", lambda _e: _host("sn-a"), ["host created"])
    repo = _repo(root)
    head = repo.head.peel(pygit2.Commit)
    assert head.message.startswith("sn-a: host created")
    assert "NOTES" not in head.tree
    assert repo.status()["NOTES"] & pygit2.enums.FileStatus.INDEX_NEW
    assert store.retry_audit() is True
    assert "NOTES" in _repo(root).head.peel(pygit2.Commit).tree


def test_a_deleted_path_is_removed_and_its_empty_directory_dropped(tmp_path):
    """GitAudit.commit with the path of a file that no longer exists records the deletion;
    the host directory, now empty, leaves the tree (git has no empty directories)."""
    root = tmp_path / "c"
    store = FileHostStore(root)
    store.enrol("sn-a", lambda _e: _host("sn-a"), ["host created"])
    store.enrol("sn-b", lambda _e: _host("sn-b"), ["host created"])
    audit = store.audit
    assert audit is not None
    shutil.rmtree(root / "sn-a")
    assert audit.commit("sn-a: host removed", ["sn-a/conf.json"]) is True
    repo = _repo(root)
    head = repo.head.peel(pygit2.Commit)
    assert head.message == "sn-a: host removed"
    assert "sn-a" not in head.tree and "sn-b/conf.json" in head.tree
    assert head.tree_id == _full_scan_tree(root)
    assert _clean(repo)
