"""The git audit of a PostgreSQL host store: one server at a time exports it, in order.

With the database store the audit log is the ``audit`` table.  So that ``git log`` of a
cluster directory stays the audit operators and mayu-era tools read, every server runs an
:class:`AuditExporter` (when ``provision.git`` is on), and the one that holds a PostgreSQL
advisory lock, the **exporter**, commits the audit entries to ``provision.cluster_dir``
through the git audit's group commit (:class:`~pxestack.provision.audit.GitAudit`): an
entry exported alone is one commit (the record written to ``<serial>/conf.json`` or
removed, the entry's message, author and time, and a last line ``Audit-Id: N``); entries
waiting together share commits, one block per entry in order, each ending with its own
``Audit-Id: N`` line (:func:`audit_ids` reads them back).

* **One at a time**: the lock is a session lock on a connection the exporter keeps open.
  When the exporting server dies (``kill -9`` included) or loses the database, PostgreSQL
  ends its session and drops the lock; another server's next attempt (every two seconds)
  takes it over.
* **In order, nothing skipped or doubled**: audit entries are numbered in commit order (see
  ``migrations/0002_audit_order.sql``).  Before every batch the exporter takes a file lock
  on the repository (``<cluster_dir>/.pxestack/export.lock``) and reads the ``Audit-Id`` of
  its newest commit again, then exports only the entries after it: a server that lost the
  database may still be writing the batch it read when another one takes over, and the two
  take turns instead of interleaving.  So an exporter, on a shared cluster directory or on
  its own copy, continues exactly where that repository stopped.  An entry whose change is
  already in the tree (a history entry copied from git by ``pxestack db import-cluster``)
  makes no commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pygit2
from twisted.logger import Logger

from pxestack._fs import atomic_write, fsync_dir
from pxestack.provision.audit import GitAudit
from pxestack.provision.model import Host
from pxestack.provision.store import HOST_FILE, PRIVATE_DIR

#: The advisory-lock key the exporting server holds (any fixed number shared by all servers).
EXPORT_LOCK = 0x70786567_69746578
#: The trailer naming an audit entry a commit exports: the message's last line, or the
#: last line of each change's (indented) block in a commit of several entries.
_TRAILER = re.compile(r"^(?:    )?Audit-Id: ([0-9]+)$", re.MULTILINE)
#: Entries exported per attempt (the rest follow at the next one).
BATCH = 500
#: Commits searched back from HEAD for the last ``Audit-Id``.
SCAN_LIMIT = 100_000


def audit_ids(message: str) -> list[int]:
    """The audit entries a commit *message* exports, in order (empty: none)."""
    return [int(found) for found in _TRAILER.findall(message)]


class AuditExporter:
    """Exports the audit table to a git repository while holding the export lock."""

    log = Logger()

    def __init__(
        self,
        dsn: str,
        root: Path,
        *,
        git_name: str,
        git_email: str,
        connect_timeout: float = 5.0,
        batch: int = BATCH,
    ) -> None:
        self.dsn = dsn
        self.root = Path(root)
        self.git_name = git_name
        self.git_email = git_email
        self.connect_timeout = connect_timeout
        self.batch = batch
        self._conn: psycopg.Connection[Any] | None = None
        self._audit: GitAudit | None = None
        #: Whether this server is the exporter (holds the lock).
        self.leading = False
        #: The newest audit entry in the repository (None: not read yet).
        self.last_id: int | None = None
        self.exported = 0

    # -- the lock -------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout))
            )
        return self._conn

    def _drop(self, reason: str) -> None:
        if self.leading:
            self.log.warn("this server stopped exporting the audit to git: {reason}",
                          reason=reason)
        self.leading = False
        self.last_id = None
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        """Give the lock up (another server takes over at its next attempt)."""
        self._drop("stopping")

    # -- exporting ------------------------------------------------------------------------

    def step(self, max_batches: int = 20) -> int:
        """Take the lock if free, then export what is new (at most *max_batches* batches);
        returns the number of entries exported.

        Blocking (database and git): run it in the provisioning thread pool.
        """
        total = 0
        for _ in range(max_batches):
            count = self._step()
            total += count
            if count < self.batch:
                break
        return total

    def _step(self) -> int:
        try:
            conn = self._connection()
            if not self.leading:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (EXPORT_LOCK,)).fetchone()
                if not row or not row[0]:
                    return 0
                self.leading = True
                self.log.info("this server exports the audit log to git in {root}",
                              root=str(self.root))
            rows = conn.execute(
                "SELECT id, kind, serial, at, author, message, record FROM audit "
                "WHERE id > %s ORDER BY id LIMIT %s",
                (self._last(), self.batch),
            ).fetchall()
            files = conn.execute("SELECT name, data FROM cluster_files").fetchall() if any(
                r[1] == "cluster" for r in rows) else []
        except psycopg.Error as exc:
            self._drop(f"{type(exc).__name__}: {str(exc).strip()}")
            return 0
        if not rows:
            return 0
        # A server that lost the database (and with it the lock) may still be exporting the
        # batch it read when another takes over: writers of one repository take turns on a
        # file lock, and each skips what the repository already holds.
        with self._repository_lock():
            self.last_id = None
            done = self._last()
            fresh = [row for row in rows if row[0] > done]
            if fresh:
                self._export(fresh, files)
        if fresh:
            self.log.info("exported {count} audit entries to git (up to {last})",
                          count=len(fresh), last=self.last_id)
        return len(rows)

    @contextlib.contextmanager
    def _repository_lock(self) -> Iterator[None]:
        """Hold ``<root>/.pxestack/export.lock`` (``flock``) while writing the repository."""
        private = self.root / PRIVATE_DIR
        private.mkdir(parents=True, exist_ok=True)
        fd = os.open(private / "export.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _git(self) -> GitAudit:
        if self._audit is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._audit = GitAudit(self.root, name=self.git_name, email=self.git_email)
        return self._audit

    def _last(self) -> int:
        """The ``Audit-Id`` of the newest exported commit (0: none yet)."""
        if self.last_id is None:
            self.last_id = 0
            repo = self._git().repo
            if not repo.head_is_unborn:
                walker = repo.walk(repo.head.target, pygit2.enums.SortMode.TOPOLOGICAL)
                for scanned, commit in enumerate(walker):
                    found = audit_ids(commit.message)
                    if found or scanned >= SCAN_LIMIT:
                        self.last_id = found[-1] if found else 0
                        break
        return self.last_id

    def _export(self, rows: list[Any], files: list[tuple[str, bytes]]) -> None:
        """Commit the audit entries *rows* (oldest first) through the git audit's group
        commit: the entries queued together share commits (at most the audit's
        ``MAX_BATCH`` per commit), each with its own block, author and ``Audit-Id``.

        Each entry is staged with the record it wrote, so the commits hold every entry's
        change in order; the work tree gets each path's final content once.
        """
        audit = self._git()
        final: dict[str, bytes | None] = {}
        ticket = 0
        for entry_id, kind, serial, at, author, message, record in rows:
            data: dict[str, bytes | None] = {}
            if kind == "change" and serial is not None and record is not None:
                data[f"{serial}/{HOST_FILE}"] = Host.from_json(record, directory=serial).to_bytes()
            elif kind == "remove" and serial is not None:
                data[f"{serial}/{HOST_FILE}"] = None
            elif kind == "cluster":
                # The entry does not hold the file; the current content is as new or newer.
                data.update((name, bytes(content)) for name, content in files)
            if not data:
                # A history entry copied from git by an import: its change is already in
                # the tree, so it makes no commit.
                continue
            final.update(data)
            ticket = audit.enqueue(f"{message}\n\nAudit-Id: {entry_id}", data,
                                   actor=author, when=at.timestamp())
        self._write_work_tree(final)
        if ticket and not audit.wait(ticket):
            # Logged by the audit and reported by health(); the entries are read again
            # from the table at the next attempt, after the repository's newest Audit-Id.
            audit.discard_pending()
            self.last_id = None
            return
        self.last_id = rows[-1][0]
        self.exported += len(rows)

    def _write_work_tree(self, final: dict[str, bytes | None]) -> None:
        """Give each path of the work tree its final content (None: removed)."""
        removed = False
        for relpath, content in final.items():
            path = self.root / relpath
            if content is None:
                if path.exists():
                    path.unlink()
                    removed = True
                    with contextlib.suppress(OSError):
                        path.parent.rmdir()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, content)
        if removed:
            fsync_dir(self.root)

    def health(self) -> dict[str, Any]:
        """Whether this server exports the audit to git, how far, and whether its commits
        work (``git_ok``; another server's export is not this one's to report)."""
        out: dict[str, Any] = {"git": True, "git_exporter": self.leading,
                               "git_exported_to": self.last_id, "git_ok": True}
        if self.leading and self._audit is not None:
            out.update(self._audit.health())
        return out


__all__ = ["EXPORT_LOCK", "AuditExporter", "audit_ids"]
