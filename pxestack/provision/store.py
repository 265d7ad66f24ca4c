"""Host storage: one ``conf.json`` per machine, written atomically, audited in git.

:class:`HostStore` is the seam: the provisioning code sees only that interface.  Two
implementations:

* :class:`FileHostStore` keeps mayu's layout: ``<cluster-dir>/cluster.json``
  and ``<cluster-dir>/<serial>/conf.json``; with a :class:`GitAudit` the cluster directory is
  a git repository and every change is one commit named ``<serial>: <what changed>``.
* :class:`InMemoryHostStore` for tests and benchmarks.

Rules the file store keeps:

* **Atomic writes** (:func:`pxestack._fs.atomic_write`): temp file in the same directory,
  ``fsync``, ``os.replace``, ``fsync`` of the directory.  A reader never sees a torn
  conf.json, even after ``kill -9`` or power loss.  mayu truncated and rewrote in place.
* **Hand edits are picked up**: every lookup compares the file's (mtime, size, inode) with
  the cached copy and re-reads it when they differ (mayu re-scanned on every lookup too).
  An edit that does not parse is logged with the field at fault; the last good copy stays
  in use, and enrolment refuses to overwrite the broken file.
* **Exact claims**: :meth:`HostStore.enrol` runs the caller's decision (profile, address)
  under the store lock with every host on record, so concurrent first contacts can never
  over-fill a profile or share an address.
* **Optimistic concurrency**: every record has an ETag (a hash of its bytes); an update
  can require the ETag it read (``If-Match``) and fails with :class:`PreconditionFailed`.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pygit2
from twisted.logger import Logger

from pxestack._fs import atomic_write, fsync_dir
from pxestack.provision.model import Host, InvalidHostRecord, normalize_mac
from pxestack.provision.repocheck import CHECK_TIMEOUT, OPERATOR_HINT, check_repository

#: A change function: old record -> (new record, first message line, detail lines).
Change = Callable[[Host], tuple[Host, str, Sequence[str]]]

CLUSTER_FILE = "cluster.json"
HOST_FILE = "conf.json"
#: Private per-installation data (the callback key); never committed (see .gitignore).
PRIVATE_DIR = ".pxestack"
_GITIGNORE = "# written by pxestack\n*.tmp\n.pxestack/\n"


#: Who is making the changes of the current piece of store work: ``admin``, a named token,
#: ``cert:<subject>``, ``trusted:<address>``, ``machine:<serial>`` (None: not known).  The
#: API sets it around the work it runs (:func:`acting_as`); audit commits name it as author.
CURRENT_ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pxestack_actor", default=None)
#: Characters kept in an actor's git author name; others become ``_``.
_UNSAFE_AUTHOR = re.compile(r"[^A-Za-z0-9 .,:=@/_+-]")


@contextlib.contextmanager
def acting_as(actor: str | None) -> Iterator[None]:
    """Attribute the store changes made inside the block to *actor*."""
    reset = CURRENT_ACTOR.set(actor)
    try:
        yield
    finally:
        CURRENT_ACTOR.reset(reset)


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


class StoreError(Exception):
    """The store cannot carry out a request (the API answers 500 or 503)."""


class HostNotFound(StoreError):  # noqa: N818
    """No record for the serial (mayu answers 400 "host doesn't exist")."""


class PreconditionFailed(StoreError):  # noqa: N818
    """The record changed since the caller read it (``If-Match`` mismatch -> 412)."""

    def __init__(self, current_etag: str) -> None:
        self.current_etag = current_etag
        super().__init__("the host record changed since it was read")


class StoreReadOnly(StoreError):  # noqa: N818
    """The cluster directory is damaged; the store refuses writes until an operator acts.

    The message is the reason (what is damaged and what the operator should do).
    """


@dataclass(frozen=True, slots=True)
class Versioned:
    """A record together with its ETag (quoted, as it goes into the HTTP header)."""

    host: Host
    etag: str


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One audit entry of a host (one git commit that touched its conf.json)."""

    commit: str
    time: datetime
    author: str
    message: str

    def to_json(self) -> dict[str, str]:
        """The entry as the history endpoint returns it."""
        return {
            "Commit": self.commit,
            "Time": self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "Author": self.author,
            "Message": self.message,
        }


class HostStore(Protocol):
    """What the provisioning layer needs from a storage backend."""

    def read(self, serial: str) -> Versioned | None:
        """The current record of *serial* (re-read if it changed on disk)."""

    def hosts(self) -> list[Host]:
        """Every host on record."""

    def host_for_mac(self, mac: str) -> Host | None:
        """The host owning *mac*, from the in-memory index (cheap; called per DHCP packet)."""

    def enrol(
        self, serial: str, make: Callable[[Sequence[Host]], Host], message: Sequence[str]
    ) -> tuple[Versioned, bool]:
        """Return the record of *serial*, creating it with ``make(all_hosts)`` if absent.

        The second value is ``True`` when the record was created by this call.
        """

    def update(self, serial: str, change: Change, *, if_match: str | None = None) -> Versioned:
        """Apply *change* atomically; raise :class:`HostNotFound` / :class:`PreconditionFailed`."""

    def remove(
        self, serial: str, message: str, *, if_match: str | None = None
    ) -> Versioned:
        """Delete *serial*'s record (one commit, *message*); returns the record removed."""

    def history(self, serial: str, limit: int = 100) -> list[HistoryEntry]:
        """The audit entries of *serial*, newest first."""

    def health(self) -> dict[str, Any]:
        """Whether audit and storage work, and what is wrong if not."""

    @property
    def default_etcd_token(self) -> str:
        """The cluster's default etcd discovery token (cluster.json)."""


def etag_of(data: bytes) -> str:
    """The ETag of a record's bytes (RFC 9110 §8.8.3: an opaque quoted string)."""
    return '"' + hashlib.sha256(data).hexdigest()[:20] + '"'


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
    """The cluster directory as a git repository; one commit per change (reference/mayu.md).

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
        edits and changes written just before an unclean stop are committed too.
        A damaged repository is never written to: it stays as the operator will find it.
        """
        if self.broken is not None:
            return False
        if not self.pending:
            if not self._dirty():
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
        parents: list[Any] = []
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

    def health(self) -> dict[str, Any]:
        """Audit health for ``/admin/health`` and logs."""
        return {
            "git": True,
            "git_ok": self.broken is None and self.last_error is None and not self.pending,
            "git_pending": len(self.pending),
            "git_error": self.broken or self.last_error,
        }


def _entry_id(tree: pygit2.Tree, relpath: str) -> str | None:
    try:
        return str(tree[relpath].id)
    except KeyError:
        return None


@dataclass(slots=True)
class _Cached:
    key: tuple[int, int, int]
    versioned: Versioned


class FileHostStore:
    """mayu's cluster directory, optionally audited by :class:`GitAudit` (see module doc)."""

    log = Logger()

    def __init__(
        self,
        root: Path,
        *,
        git: bool = True,
        git_name: str = "mayu commiter",
        git_email: str = "support+noise@giantswarm.io",
        clock: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        check_timeout: float = CHECK_TIMEOUT,
    ) -> None:
        self.root = Path(root)
        # Plain strings for the per-lookup stat: pathlib costs more than the stat itself
        # when every enrolment checks every host (a boot storm of 1000 machines).
        self._root_str = os.fspath(self.root)
        self.clock = clock
        self.random_bytes = random_bytes
        self._lock = threading.RLock()
        self._cache: dict[str, _Cached] = {}
        self._mac_index: dict[str, str] = {}
        self.problems: dict[str, str] = {}
        #: Why the cluster directory cannot be trusted (the store is read-only), or None.
        self.damaged: str | None = None
        created = not (self.root / CLUSTER_FILE).exists()
        self.root.mkdir(parents=True, exist_ok=True)
        self.audit = (
            GitAudit(
                self.root, name=git_name, email=git_email, clock=clock,
                check_timeout=check_timeout,
            )
            if git
            else None
        )
        if self.audit is not None and self.audit.broken is not None:
            self.damaged = self.audit.broken
        self._cluster: dict[str, Any] = {}
        if not created:
            self._cluster = self._load_cluster()
        if self.damaged is None:
            # Only a sound directory is tidied; a damaged one stays as the operator finds it.
            self._remove_torn_temp_files()
            if not (self.root / ".gitignore").exists():
                atomic_write(self.root / ".gitignore", _GITIGNORE.encode())
            if created:
                self._cluster = self._create_cluster()
            if self.audit is not None:
                # Commit what an unclean stop left written but not yet committed.
                self.audit.retry()
        self._scan()

    # -- cluster.json ----------------------------------------------------------------------

    def _load_cluster(self) -> dict[str, Any]:
        """cluster.json; a torn or invalid file marks the store damaged (never raises)."""
        path = self.root / CLUSTER_FILE
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            problem = f"{path} cannot be read: {exc}"
        else:
            if isinstance(data, dict) and isinstance(data.get("Config", {}), dict):
                return data
            problem = f"{path} is not a JSON object with a Config object"
        reason = (
            f"{problem}; pxestack does not repair it: restore it from the audit "
            f"(`git -C {self.root} show HEAD:{CLUSTER_FILE}`) or from a backup"
        )
        self.mark_damaged(reason)
        return {}

    def _create_cluster(self) -> dict[str, Any]:
        path = self.root / CLUSTER_FILE
        data = {
            "GitStore": True,
            "Config": {"DefaultEtcdClusterToken": self.random_bytes(16).hex()},
        }
        atomic_write(path, json.dumps(data, indent=2).encode())
        if self.audit is not None and self.audit.broken is None:
            self.audit.commit("initial commit")
        return data

    @property
    def default_etcd_token(self) -> str:
        """``Config.DefaultEtcdClusterToken`` of cluster.json."""
        config = self._cluster.get("Config")
        token = config.get("DefaultEtcdClusterToken") if isinstance(config, dict) else None
        return token if isinstance(token, str) else ""

    # -- reading ---------------------------------------------------------------------------

    def _remove_torn_temp_files(self) -> None:
        for tmp in self.root.glob("*/.*.tmp"):
            self.log.warn("removing unfinished write {path}", path=str(tmp))
            tmp.unlink(missing_ok=True)
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def _host_dirs(self) -> Iterator[str]:
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                yield entry.name

    def _load(self, serial: str) -> Versioned | None:
        """The record of *serial*, re-read when its file changed; ``None`` if it has none."""
        try:
            st = os.stat(os.path.join(self._root_str, serial, HOST_FILE))
        except FileNotFoundError:
            self._cache.pop(serial, None)
            self.problems.pop(serial, None)
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._cache.get(serial)
        if cached is not None and cached.key == key:
            return cached.versioned
        path = self.root / serial / HOST_FILE
        try:
            raw = path.read_bytes()
            host = Host.from_json(json.loads(raw), directory=serial)
        except (OSError, ValueError, InvalidHostRecord) as exc:
            message = f"{path}: {exc}"
            if self.problems.get(serial) != message:
                self.log.error(
                    "cannot use host record {problem}; keeping the last good copy", problem=message
                )
            self.problems[serial] = message
            return cached.versioned if cached is not None else None
        self.problems.pop(serial, None)
        versioned = Versioned(host, etag_of(raw))
        self._cache[serial] = _Cached(key, versioned)
        return versioned

    def _scan(self) -> list[Host]:
        with self._lock:
            seen: list[Host] = []
            names = set()
            for name in self._host_dirs():
                if name != name.lower():
                    continue  # mayu lower-cases serials; an upper-case dir is not a host
                versioned = self._load(name)
                if versioned is not None:
                    seen.append(versioned.host)
                    names.add(name)
            for gone in set(self._cache) - names:
                del self._cache[gone]
            self._mac_index = {mac: host.serial for host in seen for mac in host.mac_addresses}
            return seen

    def refresh(self) -> None:
        """Re-scan the directory (hand edits, new or deleted hosts) and rebuild the MAC index."""
        self._scan()

    def read(self, serial: str) -> Versioned | None:
        """See :meth:`HostStore.read`."""
        with self._lock:
            return self._load(serial)

    def hosts(self) -> list[Host]:
        """See :meth:`HostStore.hosts` (a full re-scan, so hand edits show up)."""
        return self._scan()

    def host_for_mac(self, mac: str) -> Host | None:
        """See :meth:`HostStore.host_for_mac`."""
        serial = self._mac_index.get(mac)
        if serial is None:
            return None
        cached = self._cache.get(serial)
        return cached.versioned.host if cached is not None else None

    # -- writing ---------------------------------------------------------------------------

    def mark_damaged(self, reason: str) -> None:
        """Make the store read-only because of *reason* (logged at error level once)."""
        self.log.error("{problem}; host records are read-only", problem=reason)
        if self.damaged is None:
            self.damaged = reason

    def _writable(self) -> None:
        if self.damaged is not None:
            raise StoreReadOnly(self.damaged)

    def _write(self, host: Host, message: str, details: Sequence[str]) -> Versioned:
        directory = self.root / host.serial
        directory.mkdir(exist_ok=True)
        data = host.to_bytes()
        st = atomic_write(directory / HOST_FILE, data)
        versioned = Versioned(host, etag_of(data))
        self._cache[host.serial] = _Cached((st.st_mtime_ns, st.st_size, st.st_ino), versioned)
        self.problems.pop(host.serial, None)
        for mac in [m for m, s in self._mac_index.items() if s == host.serial]:
            del self._mac_index[mac]
        for mac in host.mac_addresses:
            self._mac_index[mac] = host.serial
        if self.audit is not None:
            text = f"{host.serial}: {message}"
            if details:
                text += "\n\n" + "\n".join(details)
            # A change nobody authenticated for is the machine's own (first contact, boot).
            actor = CURRENT_ACTOR.get() or f"machine:{host.serial}"
            self.audit.commit(text, [f"{host.serial}/{HOST_FILE}"], actor=actor)
        return versioned

    def enrol(
        self, serial: str, make: Callable[[Sequence[Host]], Host], message: Sequence[str]
    ) -> tuple[Versioned, bool]:
        """See :meth:`HostStore.enrol`; *message* is the first line then detail lines."""
        with self._lock:
            existing = self._load(serial)
            if existing is not None:
                return existing, False
            if serial in self.problems or (self.root / serial / HOST_FILE).exists():
                raise StoreError(
                    f"host record of {serial} exists but cannot be read "
                    f"({self.problems.get(serial, 'unreadable')}); fix it by hand"
                )
            self._writable()
            host = make(self._scan())
            if host.serial != serial:
                raise ValueError("make() returned a record for another serial")
            first, *details = message
            return self._write(host, first, details), True

    def update(self, serial: str, change: Change, *, if_match: str | None = None) -> Versioned:
        """See :meth:`HostStore.update`."""
        with self._lock:
            current = self._load(serial)
            if current is None:
                raise HostNotFound(serial)
            if if_match is not None and if_match.strip() not in ("*", current.etag):
                raise PreconditionFailed(current.etag)
            self._writable()
            host, message, details = change(current.host)
            if host.serial != serial:
                raise ValueError("a change may not rename a host")
            if host == current.host and not details:
                return current
            return self._write(host, message, details)

    def remove(
        self, serial: str, message: str, *, if_match: str | None = None
    ) -> Versioned:
        """See :meth:`HostStore.remove`: the record file goes, then its empty directory."""
        with self._lock:
            current = self._load(serial)
            if current is None:
                raise HostNotFound(serial)
            if if_match is not None and if_match.strip() not in ("*", current.etag):
                raise PreconditionFailed(current.etag)
            self._writable()
            directory = self.root / serial
            (directory / HOST_FILE).unlink()
            with contextlib.suppress(OSError):
                directory.rmdir()  # files an operator put beside conf.json stay
            fsync_dir(self.root)
            self._cache.pop(serial, None)
            self.problems.pop(serial, None)
            for mac in [m for m, s in self._mac_index.items() if s == serial]:
                del self._mac_index[mac]
            if self.audit is not None:
                self.audit.commit(f"{serial}: {message}", [f"{serial}/{HOST_FILE}"])
            return current

    def write_cluster_file(self, name: str, data: bytes, message: str) -> None:
        """Write a cluster-level file (e.g. ``mayu-config.yaml``) atomically and commit it."""
        if "/" in name or name.startswith(".") or name == CLUSTER_FILE:
            raise ValueError(f"{name!r} is not a cluster-level file name")
        with self._lock:
            self._writable()
            atomic_write(self.root / name, data)
            if self.audit is not None:
                self.audit.commit(message, [name])

    def history(self, serial: str, limit: int = 100) -> list[HistoryEntry]:
        """See :meth:`HostStore.history` (empty without git)."""
        if self.audit is None:
            return []
        with self._lock:
            return self.audit.history(f"{serial}/{HOST_FILE}", limit)

    def retry_audit(self) -> bool:
        """Commit anything whose commit failed before; ``True`` when the audit is up to date.

        A damaged store has nothing to retry (its damage was logged at start and stays in
        :meth:`health`), so this is ``True`` there too and the timer does not repeat it.
        """
        if self.audit is None or self.damaged is not None:
            return True
        with self._lock:
            return self.audit.retry()

    def health(self) -> dict[str, Any]:
        """See :meth:`HostStore.health`."""
        out: dict[str, Any] = {"hosts": len(self._cache), "unreadable_records": dict(self.problems)}
        out.update(self.audit.health() if self.audit else {"git": False, "git_ok": True})
        out["read_only"] = self.damaged is not None
        out["damaged"] = self.damaged
        out["ok"] = bool(out["git_ok"]) and not self.problems and self.damaged is None
        return out


class InMemoryHostStore:
    """A :class:`HostStore` in memory (tests, benchmarks, embedders without a disk)."""

    def __init__(self, default_etcd_token: str = "0" * 32) -> None:
        self._lock = threading.RLock()
        self._hosts: dict[str, Versioned] = {}
        self._history: dict[str, list[HistoryEntry]] = {}
        self._token = default_etcd_token
        self.clock: Callable[[], float] = time.time

    @property
    def default_etcd_token(self) -> str:
        """The token given at construction."""
        return self._token

    def read(self, serial: str) -> Versioned | None:
        """See :meth:`HostStore.read`."""
        return self._hosts.get(serial)

    def hosts(self) -> list[Host]:
        """See :meth:`HostStore.hosts`."""
        return [v.host for v in list(self._hosts.values())]

    def host_for_mac(self, mac: str) -> Host | None:
        """See :meth:`HostStore.host_for_mac` (a linear search; fine for tests)."""
        mac = normalize_mac(mac)
        for versioned in list(self._hosts.values()):
            if mac in versioned.host.mac_addresses:
                return versioned.host
        return None

    def _put(self, host: Host, message: str) -> Versioned:
        versioned = Versioned(host, etag_of(host.to_bytes()))
        self._hosts[host.serial] = versioned
        self._history.setdefault(host.serial, []).insert(
            0,
            HistoryEntry(
                commit=f"{len(self._history.get(host.serial, [])):040x}",
                time=datetime.fromtimestamp(self.clock(), UTC),
                author=CURRENT_ACTOR.get() or "pxestack",
                message=f"{host.serial}: {message}",
            ),
        )
        return versioned

    def enrol(
        self, serial: str, make: Callable[[Sequence[Host]], Host], message: Sequence[str]
    ) -> tuple[Versioned, bool]:
        """See :meth:`HostStore.enrol`."""
        with self._lock:
            if serial in self._hosts:
                return self._hosts[serial], False
            return self._put(make(self.hosts()), "\n\n".join(message)), True

    def update(self, serial: str, change: Change, *, if_match: str | None = None) -> Versioned:
        """See :meth:`HostStore.update`."""
        with self._lock:
            current = self._hosts.get(serial)
            if current is None:
                raise HostNotFound(serial)
            if if_match is not None and if_match.strip() not in ("*", current.etag):
                raise PreconditionFailed(current.etag)
            host, message, details = change(current.host)
            return self._put(host, "\n\n".join([message, *details]))

    def remove(
        self, serial: str, message: str, *, if_match: str | None = None
    ) -> Versioned:
        """See :meth:`HostStore.remove`."""
        with self._lock:
            current = self._hosts.get(serial)
            if current is None:
                raise HostNotFound(serial)
            if if_match is not None and if_match.strip() not in ("*", current.etag):
                raise PreconditionFailed(current.etag)
            del self._hosts[serial]
            self._history.setdefault(serial, []).insert(
                0,
                HistoryEntry(
                    commit=f"{len(self._history.get(serial, [])):040x}",
                    time=datetime.fromtimestamp(self.clock(), UTC),
                    author="pxestack",
                    message=f"{serial}: {message}",
                ),
            )
            return current

    def history(self, serial: str, limit: int = 100) -> list[HistoryEntry]:
        """See :meth:`HostStore.history`."""
        return self._history.get(serial, [])[:limit]

    def refresh(self) -> None:
        """Nothing to re-read in memory."""

    def retry_audit(self) -> bool:
        """Nothing to retry in memory."""
        return True

    def health(self) -> dict[str, Any]:
        """Always healthy."""
        return {"ok": True, "git": False, "git_ok": True, "hosts": len(self._hosts)}


__all__ = [
    "CURRENT_ACTOR",
    "Change",
    "FileHostStore",
    "GitAudit",
    "HistoryEntry",
    "HostNotFound",
    "HostStore",
    "InMemoryHostStore",
    "PreconditionFailed",
    "StoreError",
    "StoreReadOnly",
    "Versioned",
    "acting_as",
    "atomic_write",
    "author_identity",
    "etag_of",
    "fsync_dir",
    "isolate_git_config",
]
