"""Group commit of the git audit: changes queued while a commit is written share the next
commit, which records exactly the bytes each change wrote, names every change, and lets
each host's history show its own entry with its own author; at most MAX_BATCH changes go
into one commit; the index file is brought up to date once nothing waits."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pygit2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pxestack.provision import audit as audit_module
from pxestack.provision.audit import MAX_BATCH, GitAudit, change_message
from pxestack.provision.model import Host, HostState
from pxestack.provision.store import FileHostStore, atomic_write


def _host(serial: str) -> Host:
    return Host(serial=serial, machine_id="ab" * 16, hostname="abababababababab")


def _head(root: Path) -> pygit2.Commit:
    repo = pygit2.Repository(str(root))
    return repo.head.peel(pygit2.Commit)


def _clean(root: Path) -> bool:
    repo = pygit2.Repository(str(root))
    return all(flags == pygit2.enums.FileStatus.CURRENT for flags in repo.status().values())


def _write(root: Path, path: str, data: bytes) -> None:
    (root / path).parent.mkdir(exist_ok=True)
    atomic_write(root / path, data)


def test_changes_queued_together_are_one_commit_of_exactly_their_bytes(tmp_path):
    root = tmp_path / "c"
    store = FileHostStore(root)
    audit = store.audit
    assert audit is not None
    before = audit.commits
    _write(root, "sn-a/conf.json", b'{"a": 1}\n')
    first = audit.enqueue("sn-a: host created\n\nprofile worker", {"sn-a/conf.json": b'{"a": 1}\n'},
                          actor="machine:sn-a")
    _write(root, "sn-b/conf.json", b'{"b": 1}\n')
    second = audit.enqueue("sn-b: host created", {"sn-b/conf.json": b'{"b": 1}\n'},
                           actor="admin")
    # A later write to sn-a lands on disk before the commit: the commit still records the
    # bytes its change wrote, and the later change its own.
    _write(root, "sn-a/conf.json", b'{"a": 2}\n')
    third = audit.enqueue("sn-a: to installing", {"sn-a/conf.json": b'{"a": 2}\n'},
                          actor="machine:sn-a")
    assert audit.wait(second) is True
    assert audit.commits == before + 1
    head = _head(root)
    assert head.tree["sn-a/conf.json"].data == b'{"a": 2}\n'
    assert head.tree["sn-b/conf.json"].data == b'{"b": 1}\n'
    lines = head.message.splitlines()
    assert lines[0] == "3 changes: sn-a, sn-b"
    assert head.author.name == "mayu commiter"  # several actors: the committer's identity
    assert audit.wait(first) is True and audit.wait(third) is True
    assert audit.commits == before + 1  # already committed: nothing more to do
    assert _clean(root)
    history = store.history("sn-a")
    assert [entry.message for entry in history] == [
        "sn-a: host created\n\nprofile worker\n\nsn-a: to installing"
    ]
    assert history[0].author == "machine:sn-a"
    (entry,) = store.history("sn-b")
    assert (entry.message, entry.author) == ("sn-b: host created", "admin")


def test_a_lone_change_keeps_its_own_message_and_author(tmp_path):
    root = tmp_path / "c"
    store = FileHostStore(root)
    store.enrol("sn-a", lambda _e: _host("sn-a"), ["host created", "profile core"])
    head = _head(root)
    assert head.message == "sn-a: host created\n\nprofile core"
    assert head.author.name == "machine:sn-a"


def test_a_commit_records_at_most_max_batch_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_module, "MAX_BATCH", 4)
    root = tmp_path / "c"
    audit = GitAudit(root, name="n", email="e@x")
    tickets = []
    for index in range(10):
        path = f"sn-{index}/conf.json"
        _write(root, path, f"{index}\n".encode())
        tickets.append(audit.enqueue(f"sn-{index}: host created", {path: f"{index}\n".encode()}))
    assert audit.wait(tickets[-1]) is True
    assert audit.commits == 3  # 4 + 4 + 2
    repo = pygit2.Repository(str(root))
    subjects = [c.message.splitlines()[0] for c in repo.walk(repo.head.target)]
    assert subjects == ["2 changes: sn-8, sn-9", "4 changes: sn-4, sn-5, sn-6, sn-7",
                        "4 changes: sn-0, sn-1, sn-2, sn-3"]
    assert MAX_BATCH >= 64  # the shipped bound lets a storm's waiting writers share a commit


def test_concurrent_writers_share_commits_and_every_change_is_recorded(tmp_path):
    root = tmp_path / "c"
    store = FileHostStore(root)
    serials = [f"sn-{i:02d}" for i in range(24)]
    for serial in serials:
        store.enrol(serial, lambda _e, s=serial: _host(s), ["host created"])
    audit = store.audit
    assert audit is not None
    before = audit.commits
    barrier = threading.Barrier(len(serials))
    errors: list[BaseException] = []

    def move(serial: str) -> None:
        try:
            barrier.wait()
            for state in (HostState.INSTALLING, HostState.INSTALLED):
                store.update(serial, lambda h, st=state: (h.evolve(state=st), f"to {st.value}", ()))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(s,)) for s in serials]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert audit.commits <= before + 2 * len(serials)
    for serial in serials:
        messages = [entry.message for entry in store.history(serial)]
        assert "\n\n".join(messages[::-1]).split("\n\n") == [
            f"{serial}: host created", f"{serial}: to installing", f"{serial}: to installed"
        ]
    assert _clean(root)
    assert store.health()["ok"] is True


_LINE = st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=30)


@settings(max_examples=60, deadline=None)
@given(
    changes=st.lists(
        st.tuples(st.sampled_from(["sn-a", "sn-b", "sn-c"]), _LINE.filter(str.strip),
                  st.lists(_LINE, max_size=4), st.sampled_from(["admin", "machine:x", None])),
        min_size=2, max_size=6,
    )
)
def test_each_hosts_changes_read_back_from_a_group_message(changes):
    """change_message gives back each change message exactly as a lone commit has it."""
    batch = []
    for ticket, (serial, first, details, actor) in enumerate(changes, 1):
        text = f"{serial}: {first.strip()}"
        if details:
            text += "\n\n" + "\n".join(details)
        batch.append(audit_module._Change(ticket, text, actor, {}))
    message = audit_module._batch_message(batch)
    assert message.splitlines()[0].startswith(f"{len(batch)} changes: ")
    for serial in {c[0] for c in changes}:
        own = [c for c in batch if c.message.startswith(f"{serial}: ")]
        found = change_message(message, serial)
        assert found is not None
        assert found[0] == "\n\n".join(c.message for c in own)
        actors = {c.actor or "pxestack" for c in own}
        assert found[1] == (actors.pop() if len(actors) == 1 else None)
    assert change_message(message, "sn-z") is None
    assert change_message("sn-a: host created", "sn-a") is None


class _FakeTime:
    """time.monotonic, time.thread_time and time.sleep of the audit module: sleeping
    advances the clock and is recorded (a commit itself takes no time)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def time(self) -> float:
        return self.now

    def thread_time(self) -> float:
        return self.now


def _enqueue(audit: GitAudit, root: Path, serial: str, data: bytes) -> int:
    path = f"{serial}/conf.json"
    _write(root, path, data)
    return audit.enqueue(f"{serial}: host created", {path: data})


def test_a_slow_commit_under_load_is_followed_by_a_pause_a_lone_writer_never_waits(
        tmp_path, monkeypatch):
    fake = _FakeTime()
    monkeypatch.setattr(audit_module, "time", fake)
    root = tmp_path / "c"
    audit = GitAudit(root, name="n", email="e@x", clock=lambda: 0.0)
    # A lone writer: each change is its own commit, started at once, however slow.
    audit._commit_cost = 0.1
    for index in range(3):
        assert audit.wait(_enqueue(audit, root, f"sn-{index}", b"1")) is True
        audit._commit_cost = 0.1  # as if each commit took 100 ms
    assert fake.sleeps == []
    # Under load: a commit that recorded several changes and took 10 ms is followed by a
    # pause of COMMIT_SPACING times 10 ms, and the changes queued meanwhile share a commit.
    _enqueue(audit, root, "sn-a", b"2")
    assert audit.wait(_enqueue(audit, root, "sn-b", b"2")) is True
    audit._commit_end, audit._commit_cost = fake.now, 0.01
    tickets = [_enqueue(audit, root, f"sn-{i}", b"3") for i in range(5)]
    before = audit.commits
    assert audit.wait(tickets[0]) is True
    assert fake.sleeps == [pytest.approx(audit_module.COMMIT_SPACING * 0.01)]
    assert audit.commits == before + 1 and audit.pending == []
    # A very slow commit pauses at most MAX_COMMIT_DELAY; a cheap one not at all.
    _enqueue(audit, root, "sn-c", b"4")
    audit._commit_end, audit._commit_cost = fake.now, 10.0
    audit.wait(_enqueue(audit, root, "sn-d", b"4"))
    assert fake.sleeps[-1] == pytest.approx(audit_module.MAX_COMMIT_DELAY)
    _enqueue(audit, root, "sn-e", b"5")
    audit._commit_end, audit._commit_cost = fake.now, audit_module.SLOW_COMMIT / 2
    audit.wait(_enqueue(audit, root, "sn-f", b"5"))
    assert len(fake.sleeps) == 2


def test_an_operators_own_commit_is_kept_under_the_next_audit_commit(tmp_path):
    root = tmp_path / "c"
    store = FileHostStore(root)
    store.enrol("sn-a", lambda _e: _host("sn-a"), ["host created"])
    # The operator commits a file of their own with git itself.
    (root / "NOTES").write_text("rack 4 is on the new switch\n")
    subprocess.run(["git", "-C", str(root), "add", "NOTES"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=op", "-c", "user.email=op@x",
                    "commit", "-q", "-m", "notes"], check=True)
    operators = _head(root).id
    store.enrol("sn-b", lambda _e: _host("sn-b"), ["host created"])
    head = _head(root)
    assert head.parents[0].id == operators
    assert {entry.name for entry in head.tree} >= {"NOTES", "sn-a", "sn-b", "cluster.json"}
    assert _clean(root)


def test_after_a_failed_commit_the_next_one_records_every_change_once(tmp_path, monkeypatch):
    root = tmp_path / "c"
    store = FileHostStore(root)
    audit = store.audit
    assert audit is not None
    store.enrol("sn-a", lambda _e: _host("sn-a"), ["host created"])
    real = audit._commit_tree
    calls = []

    def fail_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise pygit2.GitError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(audit, "_commit_tree", fail_once)
    store.enrol("sn-b", lambda _e: _host("sn-b"), ["host created"])
    assert audit.pending == ["sn-b: host created"]
    store.update("sn-a", lambda h: (h.evolve(state=HostState.INSTALLING), "to installing", ()))
    assert audit.pending == []
    head = _head(root)
    assert head.message.splitlines()[0] == "2 changes: sn-b, sn-a"
    assert head.parents[0].message == "sn-a: host created"
    assert _clean(root)


def test_a_slow_index_write_is_spaced_and_the_periodic_retry_catches_up(tmp_path):
    root = tmp_path / "c"
    store = FileHostStore(root)
    assert store.audit is not None
    # As if the index file had just been written and that took a second.
    store.audit._index_at, store.audit._index_cost = time.monotonic(), 1.0
    store.enrol("sn-a", lambda _e: _host("sn-a"), ["host created"])
    assert not _clean(root)  # committed; the index file is left for later
    assert store.retry_audit() is True
    assert _clean(root)
