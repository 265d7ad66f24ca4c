"""mayu's cluster directory as a host store: one ``conf.json`` per machine, written
atomically, audited in git.

:class:`FileHostStore` implements :class:`~pxestack.provision.hoststore.HostStore` with
mayu's layout: ``<cluster-dir>/cluster.json`` and ``<cluster-dir>/<serial>/conf.json``.
With git enabled the cluster directory is a repository and every change is recorded in a commit
named ``<serial>: <what changed>`` (:class:`~pxestack.provision.audit.GitAudit`).

Rules the file store keeps:

* **Atomic writes** (:func:`pxestack._fs.atomic_write`): temp file in the same directory,
  ``fsync``, ``os.replace``, ``fsync`` of the directory.  A reader never sees a torn
  conf.json, even after ``kill -9`` or power loss.  mayu truncated and rewrote in place.
* **Hand edits are picked up**: every lookup of a serial compares its file's (mtime, size,
  inode) with the cached copy and re-reads it when they differ, and :meth:`refresh` (the
  provisioning service's timer) re-scans the whole directory for new, deleted and edited
  records (mayu re-scanned on every lookup).
  An edit that does not parse is logged with the field at fault; the last good copy stays
  in use, and enrolment refuses to overwrite the broken file.
* **Exact claims**: :meth:`FileHostStore.enrol` and :meth:`FileHostStore.update` run the
  caller's decision under the store lock with every host on record.
* **Enrolment does not walk the hosts**: the records live in a
  :class:`~pxestack.provision.hostindex.HostIndex` (profile, state, address and MAC counts)
  kept current by the store's own writes, by each lookup that finds a changed file and by
  the periodic re-scan; :meth:`FileHostStore.enrol` hands the index to the decision, so an
  enrolment costs the same with 100 hosts as with 10 000 (it used to stat every record).
* **Optimistic concurrency**: ETags are a hash of the record's bytes
  (:func:`~pxestack.provision.hoststore.etag_of`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from pxestack._fs import atomic_write, fsync_dir
from pxestack.provision.audit import GitAudit
from pxestack.provision.hostindex import HostIndex
from pxestack.provision.hoststore import (
    CURRENT_ACTOR,
    Change,
    HistoryEntry,
    HostNotFound,
    PreconditionFailed,
    StoreError,
    StoreHealth,
    StoreReadOnly,
    Versioned,
    etag_of,
)
from pxestack.provision.model import Host, InvalidHostRecord
from pxestack.provision.repocheck import CHECK_TIMEOUT

#: A periodic re-scan (:meth:`FileHostStore.refresh`) that took at least this long
#: (seconds) is not repeated until :data:`SCAN_SPACING` times its duration has passed: at
#: 10 000 hosts a re-scan (one ``stat`` per record) costs 50-150 ms under the store lock,
#: and the provisioning service asks every two seconds.
SLOW_SCAN = 0.05
#: How many times its own duration a slow re-scan waits before the next one.
SCAN_SPACING = 20

CLUSTER_FILE = "cluster.json"
HOST_FILE = "conf.json"
#: Private per-installation data (the callback key); never committed (see .gitignore).
PRIVATE_DIR = ".pxestack"
_GITIGNORE = "# written by pxestack\n*.tmp\n.pxestack/\n"


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
        #: The records of _cache with their counts (what enrolment decisions ask).
        self._index = HostIndex()
        #: When the last periodic re-scan started and how long it took (by *clock*).
        self._scanned_at: float | None = None
        self._scan_cost = 0.0
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
        self._cluster: dict[str, object] = {}
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

    def _load_cluster(self) -> dict[str, object]:
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

    def _create_cluster(self) -> dict[str, object]:
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

    def _remember(self, serial: str, cached: _Cached) -> None:
        self._cache[serial] = cached
        self._index.put(cached.versioned.host)

    def _forget(self, serial: str) -> None:
        self._cache.pop(serial, None)
        self._index.discard(serial)

    def _load(self, serial: str) -> Versioned | None:
        """The record of *serial*, re-read when its file changed; ``None`` if it has none."""
        try:
            st = os.stat(os.path.join(self._root_str, serial, HOST_FILE))
        except FileNotFoundError:
            self._forget(serial)
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
        self._remember(serial, _Cached(key, versioned))
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
                self._forget(gone)
            return seen

    def refresh(self) -> None:
        """Re-scan the directory (hand edits, new or deleted hosts) and update the index.

        A re-scan that took :data:`SLOW_SCAN` or longer is repeated only after
        :data:`SCAN_SPACING` times its duration, so in a large cluster a hand edit reaches
        DHCP a little later instead of the scan taking a large share of the store's time
        (a lookup of one serial always checks that serial's file).
        """
        if (
            self._scanned_at is not None
            and self._scan_cost >= SLOW_SCAN
            and self.clock() - self._scanned_at < SCAN_SPACING * self._scan_cost
        ):
            return
        started = self.clock()
        try:
            self._scan()
        finally:
            self._scanned_at = started
            self._scan_cost = max(0.0, self.clock() - started)

    def read(self, serial: str) -> Versioned | None:
        """See :meth:`HostStore.read`."""
        with self._lock:
            return self._load(serial)

    def hosts(self) -> list[Host]:
        """See :meth:`HostStore.hosts` (a full re-scan, so hand edits show up)."""
        return self._scan()

    def host_for_mac(self, mac: str) -> Host | None:
        """See :meth:`HostStore.host_for_mac`."""
        serial = self._index.mac_owner(mac)
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

    def _write(
        self, host: Host, message: str, details: Sequence[str]
    ) -> tuple[Versioned, int | None]:
        """Write *host*'s record and queue its audit entry (with the store lock held);
        returns the record and the audit ticket to wait for once the lock is released."""
        directory = self.root / host.serial
        directory.mkdir(exist_ok=True)
        data = host.to_bytes()
        st = atomic_write(directory / HOST_FILE, data)
        versioned = Versioned(host, etag_of(data))
        self._remember(host.serial, _Cached((st.st_mtime_ns, st.st_size, st.st_ino), versioned))
        self.problems.pop(host.serial, None)
        if self.audit is None:
            return versioned, None
        text = f"{host.serial}: {message}"
        if details:
            text += "\n\n" + "\n".join(details)
        # A change nobody authenticated for is the machine's own (first contact, boot).
        actor = CURRENT_ACTOR.get() or f"machine:{host.serial}"
        return versioned, self.audit.enqueue(text, {f"{host.serial}/{HOST_FILE}": data},
                                             actor=actor)

    def _audited(self, ticket: int | None) -> None:
        """Wait (without the store lock) until the change of *ticket* is committed.

        Writers that wait at the same time share one commit (the audit's group commit);
        a failed commit is logged by the audit and retried by :meth:`retry_audit`.
        """
        if ticket is not None and self.audit is not None:
            self.audit.wait(ticket)

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
            # The index, not a re-scan: its records are those of the last lookup of each
            # serial, the store's own writes and the periodic re-scan (see the module doc).
            host = make(self._index)
            if host.serial != serial:
                raise ValueError("make() returned a record for another serial")
            first, *details = message
            versioned, ticket = self._write(host, first, details)
        self._audited(ticket)
        return versioned, True

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
            versioned, ticket = self._write(host, message, details)
        self._audited(ticket)
        return versioned

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
            self._forget(serial)
            self.problems.pop(serial, None)
            ticket = None
            if self.audit is not None:
                ticket = self.audit.enqueue(f"{serial}: {message}", {f"{serial}/{HOST_FILE}": None})
        self._audited(ticket)
        return current

    def write_cluster_file(self, name: str, data: bytes, message: str) -> None:
        """Write a cluster-level file (e.g. ``mayu-config.yaml``) atomically and commit it."""
        if "/" in name or name.startswith(".") or name == CLUSTER_FILE:
            raise ValueError(f"{name!r} is not a cluster-level file name")
        with self._lock:
            self._writable()
            atomic_write(self.root / name, data)
            ticket = None
            if self.audit is not None:
                ticket = self.audit.enqueue(message, {name: data})
        self._audited(ticket)

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

    def health(self) -> StoreHealth:
        """See :meth:`HostStore.health`."""
        out: StoreHealth = {
            "ok": True, "hosts": len(self._cache), "unreadable_records": dict(self.problems)
        }
        if self.audit is not None:
            out.update(self.audit.health())
        else:
            out.update({"git": False, "git_ok": True})
        out["read_only"] = self.damaged is not None
        out["damaged"] = self.damaged
        out["ok"] = out["ok"] and not self.problems and self.damaged is None
        return out


__all__ = [
    "CLUSTER_FILE",
    "HOST_FILE",
    "PRIVATE_DIR",
    "SCAN_SPACING",
    "SLOW_SCAN",
    "FileHostStore",
    "atomic_write",
    "fsync_dir",
]
