"""Moving a cluster directory into PostgreSQL and back out.

:func:`import_cluster` reads a mayu or pxestack cluster directory (``cluster.json``,
``<serial>/conf.json``, ``mayu-config.yaml``, pxestack's callback key) and its git history,
and writes them into a :class:`~pxestack.provision.pgstore.PostgresHostStore`: every host
keeps its record, its profile and address claims, and its audit trail (each old commit that
touched its ``conf.json`` becomes an audit entry with the commit's time, author and message,
so ``pxestack ctl history`` goes on where git left off).  Machines keep their callback
tokens and the cluster its etcd token.  The directory is only read; the caller holds its
lock (:class:`~pxestack.provision.statelock.StateLock`) so no server writes it meanwhile.

:func:`export_cluster` writes the database's hosts as a new cluster directory with one git
commit: a way back to the embedded store, and a readable snapshot.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2

from pxestack._fs import atomic_write
from pxestack.provision.audit import (
    GitAudit,
    author_identity,
    change_message,
    isolate_git_config,
)
from pxestack.provision.model import Host, InvalidHostRecord
from pxestack.provision.pgstore import PostgresHostStore
from pxestack.provision.store import CLUSTER_FILE, HOST_FILE, PRIVATE_DIR

#: Cluster-level files carried over besides the host records.
CLUSTER_FILES = ("mayu-config.yaml",)


@dataclass
class ImportReport:
    """What :func:`import_cluster` did, for the operator."""

    hosts: int = 0
    history_entries: int = 0
    problems: list[str] = field(default_factory=list)


def _read_hosts(root: Path, report: ImportReport) -> list[Host]:
    hosts: list[Host] = []
    for entry in sorted(root.iterdir()):
        record = entry / HOST_FILE
        if entry.name.startswith(".") or not record.is_file():
            continue
        if entry.name != entry.name.lower():
            report.problems.append(f"{entry.name}: not a serial (mayu lower-cases them); skipped")
            continue
        try:
            hosts.append(Host.from_json(json.loads(record.read_bytes()), directory=entry.name))
        except (OSError, ValueError, InvalidHostRecord) as exc:
            report.problems.append(f"{record}: {exc}; skipped")
    return hosts


def _git_history(root: Path, serials: set[str]) -> list[tuple[str, datetime, str, str]]:
    """(serial, time, author, message) of every commit that changed a host's record,
    oldest first (one walk over the history, comparing each commit's host directories)."""
    if not (root / ".git").exists():
        return []
    isolate_git_config()
    repo = pygit2.Repository(str(root))
    if repo.head_is_unborn:
        return []
    out: list[tuple[str, datetime, str, str]] = []
    walker = repo.walk(
        repo.head.target, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE
    )
    for commit in walker:
        mine = {e.name: e.id for e in commit.tree if e.name in serials}
        before: dict[str, Any] = {}
        if commit.parents:
            before = {e.name: e.id for e in commit.parents[0].tree if e.name in serials}
        when = datetime.fromtimestamp(commit.commit_time, UTC)
        for serial in sorted(set(mine) | set(before)):
            if mine.get(serial) != before.get(serial):
                message, author = commit.message.rstrip("\n"), commit.author.name
                own = change_message(message, serial)  # a commit of several changes
                if own is not None:
                    message = own[0]
                    author = author_identity(own[1])[0] if own[1] is not None else author
                out.append((serial, when, author, message))
    return out


def import_cluster(store: PostgresHostStore, root: Path) -> ImportReport:
    """Copy the cluster directory *root* into *store* (see the module documentation).

    Hosts already in the database are left as they are (and reported).
    """
    report = ImportReport()
    cluster: dict[str, Any] = {}
    cluster_path = root / CLUSTER_FILE
    if cluster_path.exists():
        data = json.loads(cluster_path.read_bytes())
        cluster = data if isinstance(data, dict) else {}
    config = cluster.get("Config")
    token = config.get("DefaultEtcdClusterToken") if isinstance(config, dict) else None
    key_path = root / PRIVATE_DIR / "callback.key"
    key = key_path.read_bytes() if key_path.exists() else None
    hosts = _read_hosts(root, report)
    history = _git_history(root, {h.serial for h in hosts})
    where = f"imported from {root}"
    files = [(name, (root / name).read_bytes()) for name in CLUSTER_FILES
             if (root / name).is_file()]
    problems = store.import_hosts(
        [(host, f"{host.serial}: {where}") for host in hosts],
        token=token if isinstance(token, str) and token else None,
        key=key if key is not None and len(key) >= 16 else None,
        history=history,
        files=files,
        source=where,
    )
    report.problems.extend(problems)
    skipped = {p.split(":", 1)[0] for p in problems if "already in the database" in p}
    report.hosts = len(hosts) - len(skipped)
    report.history_entries = sum(1 for entry in history if entry[0] not in skipped)
    return report


def export_cluster(
    store: PostgresHostStore, root: Path, *, git_name: str, git_email: str
) -> int:
    """Write every host of *store* into the new cluster directory *root*, one git commit.

    *root* must not exist or be empty.  Returns the number of hosts written.
    """
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; export into a new directory")
    root.mkdir(parents=True, exist_ok=True)
    with store.pool.connection() as conn:
        rows = conn.execute("SELECT serial, record FROM hosts ORDER BY serial").fetchall()
        files = conn.execute("SELECT name, data FROM cluster_files").fetchall()
    cluster = {"GitStore": True, "Config": {"DefaultEtcdClusterToken": store.default_etcd_token}}
    atomic_write(root / CLUSTER_FILE, json.dumps(cluster, indent=2).encode())
    atomic_write(root / ".gitignore", b"# written by pxestack\n*.tmp\n.pxestack/\n")
    private = root / PRIVATE_DIR
    private.mkdir(mode=0o700)
    atomic_write(private / "callback.key", store.callback_key, mode=0o600)
    os.chmod(private / "callback.key", 0o600)
    for serial, record in rows:
        host = Host.from_json(record, directory=serial)
        (root / serial).mkdir()
        atomic_write(root / serial / HOST_FILE, host.to_bytes())
    for name, data in files:
        atomic_write(root / name, bytes(data))
    audit = GitAudit(root, name=git_name, email=git_email)
    audit.commit(f"exported {len(rows)} host(s) from PostgreSQL ({store.where})")
    return len(rows)


__all__ = ["ImportReport", "export_cluster", "import_cluster"]
