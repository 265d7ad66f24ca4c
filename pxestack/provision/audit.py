"""The git audit of the cluster directory: one commit per change, named after what changed.

:class:`GitAudit` makes the cluster directory a git repository (mayu's ``GitStore``) and
records every change a host store makes as one commit ``<serial>: <what changed>`` whose
author is the actor who made it (:func:`author_identity`).  It knows nothing of host
records: :class:`pxestack.provision.store.FileHostStore` writes the files and tells it which
paths changed.

A failed commit never stops the audit silently: it is logged at error level, reported by
:meth:`GitAudit.health`, and retried with every queued message.  A damaged repository is
never opened in this process (it is checked in a child process first) and never written to.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pygit2
from twisted.logger import Logger

from pxestack.provision.hoststore import CURRENT_ACTOR, HistoryEntry, StoreHealth, StoreReadOnly
from pxestack.provision.repocheck import CHECK_TIMEOUT, OPERATOR_HINT, check_repository

#: A work-tree check (a full ``git status``) that took at least this long (seconds) is not
#: repeated by :meth:`GitAudit.retry` until :data:`CHECK_SPACING` times its duration has
#: passed: with 10 000 hosts a check costs a few hundred milliseconds under the store lock,
#: and the provisioning service's timer asks every two seconds.
SLOW_CHECK = 0.05
#: How many times its own duration a slow work-tree check waits before the next one.
CHECK_SPACING = 10

#: Characters kept in an actor's git author name; others become ``_``.
_UNSAFE_AUTHOR = re.compile(r"[^A-Za-z0-9 .,:=@/_+-]")


def author_identity(actor: str) -> tuple[str, str]:
    """The git author (name, e-mail) of *actor*: the name stripped of characters git or a
    log reader could trip on, the e-mail a safe word at ``pxestack.invalid``."""
    name = _UNSAFE_AUTHOR.sub("_", actor)[:200].strip() or "unknown"
    local = re.sub(r"[^a-z0-9.-]+", "-", actor.lower()).strip("-.")[:64] or "unknown"
    return name, f"{local}@pxestack.invalid"


def isolate_git_config() -> None:
    """Make libgit2 read no global, XDG or system git configuration.

    The audit repository must behave the same whoever runs pxestack: after a switch from
    root to an unprivileged user ``$HOME`` may still name root's home, and libgit2 then
    fails every operation on the unreadable ``~/.gitconfig``.  The committer identity is
    passed explicitly (``provision.git_name``/``git_email``), so nothing is lost.  The
    setting is process-wide; calling it again is harmless.
    """
    levels = (
        pygit2.enums.ConfigLevel.GLOBAL,
        pygit2.enums.ConfigLevel.XDG,
        pygit2.enums.ConfigLevel.SYSTEM,
    )
    for level in levels:
        with contextlib.suppress(AttributeError, ValueError, pygit2.GitError):
            pygit2.settings.search_path[level] = ""
    # Started as root with run_as, the repository belongs to the unprivileged user; libgit2's
    # owner check (git's safe.directory) would refuse it.  The cluster directory is the one
    # the configuration names, and a world-writable one is refused at start.
    with contextlib.suppress(AttributeError, ValueError, pygit2.GitError):
        pygit2.option(pygit2.enums.Option.SET_OWNER_VALIDATION, 0)


def _lock_holders(path: Path) -> list[int]:
    """PIDs of processes that have *path* open (Linux ``/proc``); empty when none or unknown."""
    holders: list[int] = []
    target = str(path.resolve())
    proc = Path("/proc")
    if not proc.is_dir():
        return holders
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        holders.append(int(entry.name))
                        break
    return holders


class GitAudit:
    """The cluster directory as a git repository; one commit per change (see the module doc).

    Failures never stop auditing silently (mayu issue #53, "cluster git repo silently stopped
    being updated"): a failed commit is logged at error level with the reason, :meth:`health`
    reports it, the message is queued, and the next commit or :meth:`retry` (run periodically
    by the service) commits every pending change with all queued messages.
    """

    log = Logger()

    def __init__(
        self,
        root: Path,
        *,
        name: str,
        email: str,
        clock: Callable[[], float] = time.time,
        check_timeout: float = CHECK_TIMEOUT,
    ) -> None:
        self.root = root
        self.name = name
        self.email = email
        self.clock = clock
        self.pending: list[str] = []
        #: The actor of each pending message (None: the committer itself).
        self._pending_actors: list[str | None] = []
        self.last_error: str | None = None
        self.broken: str | None = None
        self.commits = 0
        #: Files written by queued changes (relative paths), staged by the next commit.
        self._pending_paths: set[str] = set()
        #: A queued change did not say what it touched: the next commit scans the work tree.
        self._scan_needed = False
        #: When the last work-tree check started and how long it took (by *clock*).
        self._checked_at: float | None = None
        self._check_cost = 0.0
        isolate_git_config()
        with contextlib.suppress(AttributeError, ValueError):
            # Loose objects and refs are fsynced, so a commit survives power loss.
            pygit2.option(pygit2.enums.Option.ENABLE_FSYNC_GITDIR, True)
        self._repo = self._open_or_init(check_timeout)

    @property
    def repo(self) -> pygit2.Repository:
        """The repository; :class:`StoreReadOnly` when it is damaged and was never opened.

        A damaged repository is not opened in this process at all: libgit2 can loop for
        ever on a damaged object, and a hung thread would hold the store lock.
        """
        if self._repo is None:
            raise StoreReadOnly(self.broken or f"cluster repository {self.root} is not open")
        return self._repo

    # -- start-up --------------------------------------------------------------------------

    def _open_or_init(self, check_timeout: float) -> pygit2.Repository | None:
        git_dir = self.root / ".git"
        if not git_dir.exists():
            repo = pygit2.init_repository(str(self.root), bare=False)
            repo.config["user.name"] = self.name
            repo.config["user.email"] = self.email
            repo.config["push.default"] = "matching"
            return repo
        # Checked in a child process with a time limit before anything here touches it.
        self.broken = check_repository(self.root, check_timeout)
        if self.broken is not None:
            # Start read-only with a clear error instead of hanging or a crash loop; the
            # repository is left exactly as found (not even stale locks are removed).
            self.log.error("{problem}; host records are read-only", problem=self.broken)
            return None
        self._remove_stale_locks(git_dir)
        try:
            repo = pygit2.Repository(str(self.root))
            if not repo.head_is_unborn:
                commit = repo.head.peel(pygit2.Commit)
                list(commit.tree)
        except (pygit2.GitError, KeyError, ValueError) as exc:
            self.broken = f"cluster repository {self.root} is damaged: {exc}; {OPERATOR_HINT}"
            self.log.error("{problem}; host records are read-only", problem=self.broken)
            return None
        return repo

    def _remove_stale_locks(self, git_dir: Path) -> None:
        """Remove ``*.lock`` files left by a killed writer (nobody has them open any more)."""
        candidates = [git_dir / "index.lock", git_dir / "HEAD.lock"]
        refs = git_dir / "refs" / "heads"
        if refs.is_dir():
            candidates.extend(refs.glob("*.lock"))
        for lock in candidates:
            if not lock.exists():
                continue
            holders = _lock_holders(lock)
            if holders:
                self.log.warn(
                    "{lock} is held by pid {pids}; leaving it", lock=str(lock), pids=holders
                )
                continue
            self.log.warn("removing stale git lock {lock} (its owner is gone)", lock=str(lock))
            lock.unlink(missing_ok=True)

    # -- committing ------------------------------------------------------------------------

    def commit(self, message: str, paths: Sequence[str] | None = None,
               *, actor: str | None = None) -> bool:
        """Record one change as one commit with *message* (plus any queued ones).

        *paths* (relative to the cluster directory) are the files the change wrote or
        deleted; only they are staged and only the trees on their paths are rebuilt, so a
        commit does not scan the work tree (with ``add_all`` and ``status`` per commit, a
        boot storm of 1000 machines spent most of its time re-scanning the cluster).
        ``None`` stages the whole work tree (a scan; for callers that cannot say what they
        touched).

        The commit's author is *actor* (default: :data:`CURRENT_ACTOR`); its committer is
        the configured identity.  Queued changes of different actors are committed together
        with the configured identity as author.
        """
        self.pending.append(message)
        self._pending_actors.append(actor if actor is not None else CURRENT_ACTOR.get())
        if paths is None:
            self._scan_needed = True
        else:
            self._pending_paths.update(paths)
        return self.retry()

    def retry(self) -> bool:
        """Commit pending changes; ``True`` when nothing is left pending.

        With nothing queued it checks the work tree (a full ``git status``) so that hand
        edits and changes written just before an unclean stop are committed too.  The first
        check always runs (start-up); a check that took :data:`SLOW_CHECK` or longer is
        repeated only after :data:`CHECK_SPACING` times its duration, so in a large cluster
        a hand edit is committed a few seconds later instead of the check taking a large
        share of the store's time.  Commits of pxestack's own changes never check the work
        tree: they stage the paths they were told.
        A damaged repository is never written to: it stays as the operator will find it.
        """
        if self.broken is not None:
            return False
        if not self.pending:
            if not self._check_due() or not self._checked_dirty():
                return True
            self.pending.append("pxestack: recorded changes found uncommitted in the work tree")
            self._pending_actors.append(None)
            self._scan_needed = True
        try:
            self._remove_stale_locks(self.root / ".git")
            message = "\n\n".join(self.pending)
            if self._scan_needed:
                self._stage_work_tree()
                self._commit_tree(message, self.repo.index.write_tree())
            else:
                staged = self._stage_paths(sorted(self._pending_paths))
                self._commit_tree(message, self._tree_with(self._head_tree(), staged))
        except (pygit2.GitError, OSError, KeyError, ValueError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.log.error(
                "git commit in {root} failed ({count} change(s) pending, will retry): {error}",
                root=str(self.root),
                count=len(self.pending),
                error=self.last_error,
            )
            return False
        self.pending.clear()
        self._pending_actors.clear()
        self._pending_paths.clear()
        self._scan_needed = False
        self.last_error = None
        return True

    def _check_due(self) -> bool:
        if self._checked_at is None or self._check_cost < SLOW_CHECK:
            return True
        return self.clock() - self._checked_at >= CHECK_SPACING * self._check_cost

    def _checked_dirty(self) -> bool:
        """:meth:`_dirty`, remembering when it ran and how long it took."""
        started = self.clock()
        try:
            return self._dirty()
        finally:
            self._checked_at = started
            self._check_cost = max(0.0, self.clock() - started)

    def _dirty(self) -> bool:
        return any(
            flags != pygit2.enums.FileStatus.CURRENT and not flags & pygit2.enums.FileStatus.IGNORED
            for flags in self.repo.status().values()
        )

    def _fresh_index(self) -> pygit2.Index:
        index: pygit2.Index = self.repo.index
        # Re-read only when the file changed on disk (an operator's ``git add``); otherwise
        # libgit2 keeps the in-memory index with its cached subtree ids.
        index.read(force=False)
        return index

    def _stage_paths(self, paths: Sequence[str]) -> dict[str, tuple[pygit2.Oid, int] | None]:
        """Stage exactly *paths*: written files are added, vanished ones removed.

        Returns each path's new blob id and file mode, ``None`` for a removed path.
        """
        index = self._fresh_index()
        staged: dict[str, tuple[pygit2.Oid, int] | None] = {}
        for path in paths:
            if (self.root / path).is_file():
                index.add(path)  # hashes the file and records its stat data
                entry = index[path]
                staged[path] = (entry.id, entry.mode)
            else:
                with contextlib.suppress(OSError, KeyError):
                    index.remove(path)
                staged[path] = None
        index.write()
        return staged

    def _stage_work_tree(self) -> None:
        """Stage every change in the work tree (a full scan; recovery and hand edits)."""
        index = self._fresh_index()
        index.add_all()
        # Deleted host directories are recorded too.
        for path, flags in self.repo.status().items():
            if flags & pygit2.enums.FileStatus.WT_DELETED:
                with contextlib.suppress(OSError, KeyError):
                    index.remove(path)
        index.write()

    def _commit_tree(self, message: str, tree: pygit2.Oid) -> None:
        """Commit *tree* with *message* unless it equals HEAD's tree."""
        parents: list[pygit2.Oid] = []
        if not self.repo.head_is_unborn:
            head = self.repo.head.peel(pygit2.Commit)
            if head.tree_id == tree:
                return  # nothing actually changed (e.g. a retried identical write)
            parents = [head.id]
        when = int(self.clock())
        signature = pygit2.Signature(self.name, self.email, when, 0)
        author = signature
        actors = set(self._pending_actors)
        if len(actors) == 1 and None not in actors:
            name, email = author_identity(str(actors.pop()))
            author = pygit2.Signature(name, email, when, 0)
        self.repo.create_commit("HEAD", author, signature, message, tree, parents)
        self.commits += 1

    def _head_tree(self) -> pygit2.Tree | None:
        if self.repo.head_is_unborn:
            return None
        return self.repo.head.peel(pygit2.Commit).tree

    def _tree_with(
        self, base: pygit2.Tree | None, changes: dict[str, tuple[pygit2.Oid, int] | None]
    ) -> pygit2.Oid:
        """*base* with *changes* applied, rebuilding only the trees on the changed paths.

        libgit2's ``write_tree`` from the index re-reads every subtree to refresh its tree
        cache, so a commit would cost one object read per host; building from HEAD's tree
        touches one host directory and the root.
        """
        builder = self.repo.TreeBuilder(base) if base is not None else self.repo.TreeBuilder()
        nested: dict[str, dict[str, tuple[pygit2.Oid, int] | None]] = {}
        for path, blob in changes.items():
            head, sep, rest = path.partition("/")
            if sep:
                nested.setdefault(head, {})[rest] = blob
            elif blob is None:
                if builder.get(head) is not None:
                    builder.remove(head)
            else:
                builder.insert(head, blob[0], blob[1])
        for name, sub in nested.items():
            existing = builder.get(name)
            subtree = self.repo.get(existing.id) if existing is not None else None
            sub_id = self._tree_with(subtree if isinstance(subtree, pygit2.Tree) else None, sub)
            written = self.repo.get(sub_id)
            if isinstance(written, pygit2.Tree) and len(written) == 0:
                if existing is not None:
                    builder.remove(name)  # git has no empty directories
            else:
                builder.insert(name, sub_id, pygit2.enums.FileMode.TREE)
        return builder.write()

    # -- reading ---------------------------------------------------------------------------

    def history(
        self, relpath: str, limit: int = 100, scan_limit: int = 20000
    ) -> list[HistoryEntry]:
        """Commits that changed *relpath*, newest first (at most *limit*)."""
        if self.repo.head_is_unborn:
            return []
        out: list[HistoryEntry] = []
        walker = self.repo.walk(self.repo.head.target, pygit2.enums.SortMode.TOPOLOGICAL)
        for scanned, commit in enumerate(walker):
            if scanned >= scan_limit or len(out) >= limit:
                break
            mine = _entry_id(commit.tree, relpath)
            parent = _entry_id(commit.parents[0].tree, relpath) if commit.parents else None
            if mine != parent:
                out.append(
                    HistoryEntry(
                        commit=str(commit.id),
                        time=datetime.fromtimestamp(commit.commit_time, UTC),
                        author=commit.author.name,
                        message=commit.message.rstrip("\n"),
                    )
                )
        return out

    def health(self) -> StoreHealth:
        """Audit health for ``/admin/health`` and logs (``ok``: the audit is up to date)."""
        up_to_date = self.broken is None and self.last_error is None and not self.pending
        return {
            "ok": up_to_date,
            "git": True,
            "git_ok": up_to_date,
            "git_pending": len(self.pending),
            "git_error": self.broken or self.last_error,
        }


def _entry_id(tree: pygit2.Tree, relpath: str) -> str | None:
    try:
        return str(tree[relpath].id)
    except KeyError:
        return None


__all__ = ["GitAudit", "author_identity", "isolate_git_config"]
