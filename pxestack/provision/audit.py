"""The git audit of the cluster directory: every change recorded in a commit named after
what changed.

:class:`GitAudit` makes the cluster directory a git repository (mayu's ``GitStore``) and
records every change a host store makes.  A change alone is one commit ``<serial>: <what
changed>`` whose author is the actor who made it (:func:`author_identity`).  It knows
nothing of host records: :class:`pxestack.provision.store.FileHostStore` writes the files
and hands over the bytes it wrote (:meth:`GitAudit.enqueue`).

**Group commit.**  A commit rewrites the root tree, one entry per host (mayu's layout: one
directory per host at the root), so its cost grows with the cluster (about 10 ms at
10 000 hosts on a small machine).  Changes that arrive while a commit is being written, or
during the pause after a slow one (:data:`COMMIT_SPACING` times its duration, at most
:data:`MAX_COMMIT_DELAY`), are therefore folded into the next commit, at most
:data:`MAX_BATCH` of them: one commit whose first line counts the changes and names the
serials, then one block per change (its own first line, then, indented, ``by <actor>`` and
its detail lines; :func:`change_message` reads a host's block back, which is what the
history of a host shows).  Each change is staged with the exact bytes its writer wrote, so
a commit holds what its changes wrote and never a later write.  The writer waits until its
change is committed (an acknowledged change has its audit entry), so with nothing else in
flight every change is still its own commit, started at once.  The root tree is kept in
memory between commits (a tree builder holding HEAD's root entries), so a commit reads
nothing back from the repository; an operator's own commit is noticed (HEAD moved) and
the builder is read again from it.  The work-tree index (``.git/index``, which only
``git status`` reads) is written when no further change waits, not with every commit, and
spaced out like the commits once it is slow; after an unclean stop the start-up check
finds it stale and rewrites it.

A failed commit never stops the audit silently: it is logged at error level, reported by
:meth:`GitAudit.health`, and retried with every queued message.  A damaged repository is
never opened in this process (it is checked in a child process first) and never written to.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
#: How many times its own duration a slow work-tree check waits before the next one: the
#: check then takes at most 1/50 of the store's time (at 10 000 hosts during a boot storm,
#: with a tenth, the checks were an eighth of the server's samples).
CHECK_SPACING = 50

#: The most changes one commit records (the rest wait for the next commit).
MAX_BATCH = 256
#: A commit under load (it recorded several changes, or others were queued when it ended)
#: that took at least this much CPU time (seconds) is followed by a pause: the next commit
#: starts :data:`COMMIT_SPACING` times its CPU time after it ended, so the changes of that pause
#: share one commit and commits take at most a fifth of the time.  A lone writer (nothing
#: else in flight) never pauses.
SLOW_COMMIT = 0.002
#: How many times its own CPU time a slow commit waits before the next one.
COMMIT_SPACING = 4
#: The longest pause before a commit (seconds), whatever the last one cost.
MAX_COMMIT_DELAY = 0.25
#: Writing the index file is spaced out the same way once it takes this long (seconds):
#: at 10 000 hosts the file holds 10 000 entries and takes about 8 ms.
SLOW_INDEX = 0.002
#: How many times its own duration a slow index write waits before the next one (the
#: periodic :meth:`GitAudit.retry` writes it whenever nothing waits).
INDEX_SPACING = 20
#: Serials named on the first line of a commit that records several changes.
SUBJECT_SERIALS = 8
#: The indentation of a change's own lines inside a commit of several changes.
_BLOCK_INDENT = "    "

#: Characters kept in an actor's git author name; others become ``_``.
_UNSAFE_AUTHOR = re.compile(r"[^A-Za-z0-9 .,:=@/_+-]")


#: The actor of a change pxestack's committer makes itself (work-tree recovery).
_COMMITTER = "\x00committer"
#: The first line of a commit that records several changes.
_GROUP_SUBJECT = re.compile(r"^(\d+) changes: ")


@dataclass(slots=True)
class _Change:
    """One change waiting for its commit."""

    ticket: int
    message: str
    #: Who made it (None: not known; :data:`_COMMITTER`: the committer itself).
    actor: str | None
    #: Path -> the bytes written (None: deleted); None: stage the whole work tree.
    data: dict[str, bytes | None] | None
    #: When it was made (epoch seconds; None: when its commit is written).
    when: float | None = None


def _serial_of(message: str) -> str | None:
    """The serial a change message is about (``<serial>: ...``), or None."""
    head, sep, _ = message.partition(": ")
    return head if sep and head and " " not in head and "\n" not in head else None


def _batch_message(batch: Sequence[_Change]) -> str:
    """The commit message of *batch*: a lone change's own message, else a first line
    counting the changes and naming their serials, then one block per change (its first
    line, then ``by <actor>`` and its other lines, indented)."""
    if len(batch) == 1:
        return batch[0].message
    serials = list(dict.fromkeys(s for c in batch if (s := _serial_of(c.message)) is not None))
    named = ", ".join(serials[:SUBJECT_SERIALS])
    if len(serials) > SUBJECT_SERIALS:
        named += f" and {len(serials) - SUBJECT_SERIALS} more"
    blocks = [f"{len(batch)} changes: {named or 'cluster files'}"]
    for change in batch:
        first, *rest = change.message.split("\n")
        actor = "pxestack" if change.actor in (None, _COMMITTER) else change.actor
        own = [f"by {actor}", *rest]
        blocks.append("\n".join([first.strip() or "(no message)",
                                 *(_BLOCK_INDENT + line for line in own)]))
    return "\n\n".join(blocks)


def change_message(message: str, serial: str) -> tuple[str, str | None] | None:
    """The part of a commit *message* about *serial* and who made it.

    For a commit that records several changes (see the module doc): the blocks of
    *serial*'s changes as each would have been its own commit message, and their actor
    (None when they differ or none is named); None for any other commit (its whole
    message is the change's).
    """
    if _GROUP_SUBJECT.match(message) is None:
        return None
    own: list[str] = []
    actors: set[str] = set()
    for block in message.split("\n\n")[1:]:
        first, *rest = block.split("\n")
        if _serial_of(first) != serial:
            continue
        lines = [line[len(_BLOCK_INDENT):] for line in rest]
        if lines and lines[0].startswith("by "):
            actors.add(lines.pop(0)[3:])
        own.append("\n".join([first, *lines]))
    if not own:
        return None
    return "\n\n".join(own), actors.pop() if len(actors) == 1 else None


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
    """The cluster directory as a git repository; every change in a commit (see the module doc).

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
        #: Changes waiting for their commit, oldest first (see the module doc).
        self._queue: list[_Change] = []
        self._queue_lock = threading.Lock()
        #: Held while a commit is written: one at a time; a writer that finds one in
        #: flight waits for it and then commits everything queued meanwhile.
        self._commit_lock = threading.Lock()
        self._tickets = 0
        #: Every change whose ticket is at most this one is committed.
        self._committed = 0
        #: The in-memory index has entries that .git/index does not have yet.
        self._index_stale = False
        self.last_error: str | None = None
        self.broken: str | None = None
        self.commits = 0
        #: The root tree of the commit ``_root_head`` as a builder (see the module doc).
        self._root_builder: pygit2.TreeBuilder | None = None
        self._root_head: pygit2.Oid | None = None
        #: When (time.monotonic) the last commit ended and how long it took.
        self._commit_end = 0.0
        self._commit_cost = 0.0
        #: The last commit recorded several changes or left others queued.
        self._loaded = False
        #: When (time.monotonic) the index file was last written and how long it took.
        self._index_at = 0.0
        self._index_cost = 0.0
        #: When the last work-tree check started and how long it took (by *clock*).
        self._checked_at: float | None = None
        self._check_cost = 0.0
        isolate_git_config()
        with contextlib.suppress(AttributeError, ValueError):
            # Loose objects and refs are fsynced, so a commit survives power loss.
            pygit2.option(pygit2.enums.Option.ENABLE_FSYNC_GITDIR, True)
        with contextlib.suppress(AttributeError, ValueError, pygit2.GitError):
            # libgit2's object cache (process-wide, up to 256 MiB by default) keeps every
            # commit and host tree the audit reads, about 5 KiB more per host enrolled.
            # The audit reads back only HEAD and the few trees a commit changes, each
            # once, so it has nothing to gain from the cache.
            pygit2.settings.enable_caching(False)
        with contextlib.suppress(AttributeError, ValueError, pygit2.GitError):
            # libgit2 reads back the tree and parents a new commit names to check that they
            # exist: a root tree of one entry per host, inflated again for every commit.
            # The audit names only objects it has just written or read from HEAD.
            pygit2.option(pygit2.enums.Option.ENABLE_STRICT_OBJECT_CREATION, False)
            # pygit2 looks the new root tree up again to commit it, and libgit2 would hash
            # the whole object once more to verify it: the object was hashed when written.
            pygit2.option(pygit2.enums.Option.ENABLE_STRICT_HASH_VERIFICATION, False)
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

    def _remove_stale_locks(self, git_dir: Path) -> list[Path]:
        """Remove ``*.lock`` files left by a killed writer (nobody has them open any more);
        returns the locks a live process holds."""
        held: list[Path] = []
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
                held.append(lock)
                continue
            self.log.warn("removing stale git lock {lock} (its owner is gone)", lock=str(lock))
            lock.unlink(missing_ok=True)
        return held

    # -- committing ------------------------------------------------------------------------

    @property
    def pending(self) -> list[str]:
        """The messages of the changes not committed yet, oldest first."""
        with self._queue_lock:
            return [change.message for change in self._queue]

    def enqueue(self, message: str, data: Mapping[str, bytes | None] | None = None,
                *, actor: str | None = None, when: float | None = None) -> int:
        """Queue one change for the next commit and return its ticket for :meth:`wait`.

        *data* maps each path the change wrote (relative to the cluster directory) to the
        bytes it wrote, ``None`` for a path it deleted; the commit records exactly these
        bytes, whatever the files hold by then.  ``None`` instead of a mapping stages the
        whole work tree (a scan; for callers that cannot say what they touched).  Call it
        in the order the changes were made (the host store does, under its lock).

        The change's author is *actor* (default: :data:`CURRENT_ACTOR`).  *when* (epoch
        seconds) is the time the change was made, for a change recorded later than it was
        made (an export of another store's log); the commit takes the time of its newest
        change, or the clock's when a change has none.
        """
        who = actor if actor is not None else CURRENT_ACTOR.get()
        with self._queue_lock:
            self._tickets += 1
            self._queue.append(_Change(self._tickets, message, who,
                                       None if data is None else dict(data), when))
            return self._tickets

    def wait(self, ticket: int) -> bool:
        """Return once the change of *ticket* is committed: ``True``; ``False`` when its
        commit failed (it stays queued, is logged, and :meth:`retry` commits it later).

        The caller that finds no commit in flight writes one with every change queued
        so far (at most :data:`MAX_BATCH`); one that finds a commit in flight waits for it
        and, if its change was not in it, writes the next.
        """
        if self.broken is not None:
            return False
        with self._commit_lock:
            while self._committed < ticket:
                self._pause_after_slow_commit()
                if not self._commit_batch():
                    return False
            self._write_index_when_idle()
            return True

    def _pause_after_slow_commit(self) -> None:
        """Wait (with the commit lock) until :data:`COMMIT_SPACING` times the last commit's
        duration has passed since it ended, when it took :data:`SLOW_COMMIT` or longer:
        the changes queued meanwhile share the next commit."""
        if not self._loaded or self._commit_cost < SLOW_COMMIT:
            return
        due = self._commit_end + min(COMMIT_SPACING * self._commit_cost, MAX_COMMIT_DELAY)
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def commit(self, message: str, paths: Sequence[str] | None = None,
               *, actor: str | None = None) -> bool:
        """Record one change with *message* and wait for its commit (:meth:`enqueue` and
        :meth:`wait` in one, reading the bytes of *paths* from the cluster directory)."""
        data: dict[str, bytes | None] | None = None
        if paths is not None:
            data = {}
            for path in paths:
                try:
                    data[path] = (self.root / path).read_bytes()
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    data[path] = None
        return self.wait(self.enqueue(message, data, actor=actor))

    def discard_pending(self) -> None:
        """Forget the changes waiting for their commit (a caller that records them again
        later, such as an exporter that re-reads its source after a failed commit)."""
        with self._commit_lock, self._queue_lock:
            self._queue.clear()
            self._committed = self._tickets

    def retry(self) -> bool:
        """Commit pending changes; ``True`` when nothing is left pending.

        With nothing queued it checks the work tree (a full ``git status``) so that hand
        edits and changes written just before an unclean stop are committed too.  The first
        check always runs (start-up); a check that took :data:`SLOW_CHECK` or longer is
        repeated only after :data:`CHECK_SPACING` times its duration, so in a large cluster
        a hand edit is committed a few seconds later instead of the check taking a large
        share of the store's time.  Commits of pxestack's own changes never check the work
        tree: they stage the bytes they were given.
        A damaged repository is never written to: it stays as the operator will find it.
        """
        if self.broken is not None:
            return False
        with self._commit_lock:
            if not self._queue:
                self._write_index_when_idle(spaced=False)
                if not self._check_due() or not self._checked_dirty():
                    return True
                self.enqueue("pxestack: recorded changes found uncommitted in the work tree",
                             None, actor=_COMMITTER)
            while self._queue:
                if not self._commit_batch():
                    return False
            self._write_index_when_idle(spaced=False)
            return True

    def _commit_batch(self) -> bool:
        """Commit the oldest queued changes (at most :data:`MAX_BATCH`) as one commit.

        Called with the commit lock held.  On failure the changes stay queued.
        """
        with self._queue_lock:
            batch = self._queue[:MAX_BATCH]
        if not batch:
            return True
        started = time.thread_time()
        try:
            held = self._remove_stale_locks(self.root / ".git")
            if held:
                # Another git process is working in the repository (an operator's commit):
                # a commit now could race it, so this one waits for the next retry.
                raise OSError(f"{held[0]} is locked by another git process")
            if any(change.data is None for change in batch):
                self._root_builder = None
                self._stage_work_tree()
                self._index_stale = False
                tree = self.repo.index.write_tree()
            else:
                merged: dict[str, bytes | None] = {}
                for change in batch:
                    assert change.data is not None
                    merged.update(change.data)
                staged = self._stage_bytes(merged)
                tree = self._apply(self._builder_of_head(), staged)
            self._commit_tree(_batch_message(batch), tree, batch)
        except (pygit2.GitError, OSError, KeyError, ValueError) as exc:
            # The builder may hold entries of the failed commit: read HEAD's tree again.
            self._root_builder = None
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.log.error(
                "git commit in {root} failed ({count} change(s) pending, will retry): {error}",
                root=str(self.root),
                count=len(self._queue),
                error=self.last_error,
            )
            return False
        with self._queue_lock:
            del self._queue[: len(batch)]
            self._loaded = len(batch) > 1 or bool(self._queue)
        self._committed = batch[-1].ticket
        self.last_error = None
        # The cost is this thread's CPU time: under load the wall time of a commit also
        # counts the other threads that ran meanwhile, and a pause scaled by it would
        # leave the waiting writers idle.
        self._commit_cost = time.thread_time() - started
        self._commit_end = time.monotonic()
        return True

    def _write_index_when_idle(self, *, spaced: bool = True) -> None:
        """Write the index file when no change waits for a commit (with the commit lock).

        Only ``git status`` and the work-tree check read it; writing it once per burst of
        changes instead of with every commit saves a file of one entry per host per commit.
        With *spaced*, a write that took :data:`SLOW_INDEX` or longer is repeated only
        :data:`INDEX_SPACING` times its duration later (the periodic :meth:`retry` writes
        it regardless).  A failure is logged and left for the next call (the commits are
        not affected).
        """
        if not self._index_stale or self._queue:
            return
        if (spaced and self._index_cost >= SLOW_INDEX
                and time.monotonic() - self._index_at < INDEX_SPACING * self._index_cost):
            return
        started = time.monotonic()
        try:
            self.repo.index.write()
        except (pygit2.GitError, OSError) as exc:
            self.log.warn("writing the git index of {root} failed (will retry): {error}",
                          root=str(self.root), error=f"{type(exc).__name__}: {exc}")
            return
        self._index_at = time.monotonic()
        self._index_cost = self._index_at - started
        self._index_stale = False

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
        if not self._index_stale:
            # Re-read only when the file changed on disk (an operator's ``git add``);
            # otherwise libgit2 keeps the in-memory index with its cached subtree ids.
            # Entries not written yet are kept (a re-read would drop them).
            index.read(force=False)
        return index

    def _stage_bytes(
        self, data: Mapping[str, bytes | None]
    ) -> dict[str, tuple[pygit2.Oid, int] | None]:
        """Blobs of exactly *data*; each path's index entry follows the file on disk.

        Returns each path's blob id and file mode, ``None`` for a removed path.  The index
        (what ``git status`` compares with) is updated in memory from the files, which
        may already hold a later change queued for the next commit.
        """
        index = self._fresh_index()
        staged: dict[str, tuple[pygit2.Oid, int] | None] = {}
        for path, content in data.items():
            if content is None:
                staged[path] = None
            else:
                staged[path] = (self.repo.create_blob(content), pygit2.enums.FileMode.BLOB)
            if (self.root / path).is_file():
                index.add(path)  # hashes the file and records its stat data
            else:
                with contextlib.suppress(OSError, KeyError):
                    index.remove(path)
        self._index_stale = True
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

    def _commit_tree(self, message: str, tree: pygit2.Oid, batch: Sequence[_Change]) -> None:
        """Commit *tree* with *message* unless it equals HEAD's tree."""
        parents: list[pygit2.Oid] = []
        if not self.repo.head_is_unborn:
            head = self.repo.head.peel(pygit2.Commit)
            if head.tree_id == tree:
                self._root_head = head.id if self._root_builder is not None else None
                return  # nothing actually changed (e.g. a retried identical write)
            parents = [head.id]
        times = [change.when for change in batch if change.when is not None]
        when = int(max(times)) if len(times) == len(batch) else int(self.clock())
        signature = pygit2.Signature(self.name, self.email, when, 0)
        author = signature
        actors = {change.actor for change in batch}
        if len(actors) == 1 and None not in actors and _COMMITTER not in actors:
            name, email = author_identity(str(actors.pop()))
            author = pygit2.Signature(name, email, when, 0)
        commit = self.repo.create_commit("HEAD", author, signature, message, tree, parents)
        self.commits += 1
        # The builder holds the root tree just committed (None after a work-tree commit).
        self._root_head = commit if self._root_builder is not None else None

    def _head_tree(self) -> pygit2.Tree | None:
        if self.repo.head_is_unborn:
            return None
        return self.repo.head.peel(pygit2.Commit).tree

    def _builder_of_head(self) -> pygit2.TreeBuilder:
        """A tree builder holding HEAD's root tree: the one kept from the last commit when
        HEAD is still that commit, else read from HEAD (start, an operator's commit, a
        failed commit)."""
        head = None if self.repo.head_is_unborn else self.repo.head.peel(pygit2.Commit).id
        if self._root_builder is None or self._root_head != head:
            base = self._head_tree()
            self._root_builder = (self.repo.TreeBuilder(base) if base is not None
                                  else self.repo.TreeBuilder())
            self._root_head = head
        return self._root_builder

    def _apply(
        self, builder: pygit2.TreeBuilder, changes: dict[str, tuple[pygit2.Oid, int] | None]
    ) -> pygit2.Oid:
        """*changes* applied to *builder*, which is written; only the trees on the changed
        paths are rebuilt.

        libgit2's ``write_tree`` from the index re-reads every subtree to refresh its tree
        cache, so a commit would cost one object read per host; building from HEAD's tree
        touches one host directory and the root.
        """
        self._change_entries(builder, changes)
        return builder.write()

    def _change_entries(
        self, builder: pygit2.TreeBuilder, changes: dict[str, tuple[pygit2.Oid, int] | None]
    ) -> None:
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
            inner = (self.repo.TreeBuilder(subtree) if isinstance(subtree, pygit2.Tree)
                     else self.repo.TreeBuilder())
            self._change_entries(inner, sub)
            if len(inner) == 0:
                if existing is not None:
                    builder.remove(name)  # git has no empty directories
            else:
                builder.insert(name, inner.write(), pygit2.enums.FileMode.TREE)

    # -- reading ---------------------------------------------------------------------------

    def history(
        self, relpath: str, limit: int = 100, scan_limit: int = 20000
    ) -> list[HistoryEntry]:
        """Commits that changed *relpath*, newest first (at most *limit*); of a commit
        that records several changes, the entry shows the changes of *relpath*'s host.

        Read with the commit lock held: commits are written outside the host store's lock,
        and libgit2 does not promise that one repository is safe to read while another
        thread writes to it."""
        with self._commit_lock:
            return self._history(relpath, limit, scan_limit)

    def _history(self, relpath: str, limit: int, scan_limit: int) -> list[HistoryEntry]:
        serial = relpath.partition("/")[0]
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
                message = commit.message.rstrip("\n")
                author = commit.author.name
                own = change_message(message, serial)
                if own is not None:
                    message = own[0]
                    author = author_identity(own[1])[0] if own[1] is not None else author
                out.append(
                    HistoryEntry(
                        commit=str(commit.id),
                        time=datetime.fromtimestamp(commit.commit_time, UTC),
                        author=author,
                        message=message,
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


__all__ = ["MAX_BATCH", "GitAudit", "author_identity", "change_message", "isolate_git_config"]
