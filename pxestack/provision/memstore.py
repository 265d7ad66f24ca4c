"""A :class:`~pxestack.provision.hoststore.HostStore` in memory.

For tests, benchmarks and embedders without a disk: no files, no audit repository; the
history is kept in memory with the same entries the git audit would record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from pxestack.provision.hoststore import (
    CURRENT_ACTOR,
    Change,
    HistoryEntry,
    HostNotFound,
    PreconditionFailed,
    StoreHealth,
    Versioned,
    etag_of,
)
from pxestack.provision.model import Host, normalize_mac


class InMemoryHostStore:
    """A :class:`HostStore` in memory (tests, benchmarks, embedders without a disk)."""

    def __init__(self, default_etcd_token: str = "0" * 32) -> None:
        self._lock = threading.RLock()
        self._hosts: dict[str, Versioned] = {}
        self._history: dict[str, list[HistoryEntry]] = {}
        self._token = default_etcd_token
        #: Cluster-level files (name -> bytes), e.g. the mayu settings saved through the API.
        self.cluster_files: dict[str, bytes] = {}
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

    def write_cluster_file(self, name: str, data: bytes, message: str) -> None:
        """See :meth:`HostStore.write_cluster_file` (kept until the process ends)."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"{name!r} is not a cluster-level file name")
        with self._lock:
            self.cluster_files[name] = data

    def health(self) -> StoreHealth:
        """Always healthy."""
        return {"ok": True, "git": False, "git_ok": True, "hosts": len(self._hosts)}


__all__ = ["InMemoryHostStore"]
