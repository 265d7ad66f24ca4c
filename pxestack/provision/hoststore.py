"""The host-store interface: what the provisioning layer, its API, the dashboard and the
metrics need from wherever host records are kept.

:class:`HostStore` is a :class:`typing.Protocol`; the rest of the code depends on it and on
the values and errors defined here, never on one backend.  The backends:

* :class:`pxestack.provision.store.FileHostStore`: mayu's cluster directory, one
  ``conf.json`` per machine, audited in git by :class:`pxestack.provision.audit.GitAudit`;
* :class:`pxestack.provision.memstore.InMemoryHostStore`: in memory (tests, benchmarks,
  embedders without a disk).

What every backend promises:

* **Exact claims**: :meth:`HostStore.enrol` runs the caller's decision (profile, address)
  while no other change can happen, with every host on record, so concurrent first contacts
  can never over-fill a profile or share an address; :meth:`HostStore.update` runs its
  change the same way.
* **Optimistic concurrency**: every record has an ETag (:func:`etag_of` of its bytes); an
  update or removal can require the ETag it read (``If-Match``) and then fails with
  :class:`PreconditionFailed`.
* **Attribution**: a change is made on behalf of :data:`CURRENT_ACTOR` (set with
  :func:`acting_as`), which the audit names as its author.
* The calls block (files, a database): the API and the dashboard run them in the
  provisioning thread pool, never in the reactor thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, Required, TypedDict

from pxestack.provision.model import Host

#: A change function: old record -> (new record, first message line, detail lines).
Change = Callable[[Host], tuple[Host, str, Sequence[str]]]


#: Who is making the changes of the current piece of store work: ``admin``, a named token,
#: ``cert:<subject>``, ``trusted:<address>``, ``machine:<serial>`` (None: not known).  The
#: API sets it around the work it runs (:func:`acting_as`); audit commits name it as author.
CURRENT_ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pxestack_actor", default=None)


@contextlib.contextmanager
def acting_as(actor: str | None) -> Iterator[None]:
    """Attribute the store changes made inside the block to *actor*."""
    reset = CURRENT_ACTOR.set(actor)
    try:
        yield
    finally:
        CURRENT_ACTOR.reset(reset)


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


class StoreHealth(TypedDict, total=False):
    """What :meth:`HostStore.health` reports (``GET /admin/health`` answers it as JSON).

    ``ok`` is the verdict (the API answers 503 when it is false); the other keys say what is
    wrong.  A backend reports the keys that apply to it; one with more to say adds its keys
    here, so that the API, the dashboard and the metrics know every key there is.
    """

    #: Storage and audit both work and every record can be read.
    ok: Required[bool]
    #: Host records in the store.
    hosts: int
    #: Serial -> why its record cannot be used (the last good copy stays in use).
    unreadable_records: dict[str, str]
    #: Changes are audited in git.
    git: bool
    #: Every change is committed (nothing pending, no error).
    git_ok: bool
    #: Changes whose commit failed and waits for a retry.
    git_pending: int
    #: Why the audit is not up to date, or None.
    git_error: str | None
    #: The store refuses writes until an operator acts (see ``damaged``).
    read_only: bool
    #: What is damaged and what the operator should do, or None.
    damaged: str | None
    #: Which backend keeps the records (``postgresql``; absent for the git directory).
    backend: str
    #: Where the shared database is (its DSN without a password).
    database: str
    #: The shared database answers.
    database_ok: bool
    #: Why the shared database does not answer, or None.
    database_error: str | None
    #: This server is the one exporting the shared audit into git.
    git_exporter: bool
    #: The last audit entry exported into git, or None.
    git_exported_to: int | None


class HostStore(Protocol):
    """What the provisioning layer needs from a storage backend."""

    def read(self, serial: str) -> Versioned | None:
        """The current record of *serial* with its ETag, or None (re-read if it changed)."""

    def hosts(self) -> list[Host]:
        """Every host on record."""

    def host_for_mac(self, mac: str) -> Host | None:
        """The host owning *mac* (a normalised MAC), from memory: called per DHCP packet."""

    def enrol(
        self, serial: str, make: Callable[[Sequence[Host]], Host], message: Sequence[str]
    ) -> tuple[Versioned, bool]:
        """Return the record of *serial*, creating it with ``make(all_hosts)`` if absent.

        *message* is the audit entry: its first line, then detail lines.  The second value
        is ``True`` when the record was created by this call.  :class:`StoreReadOnly` when
        the store refuses writes.
        """

    def update(self, serial: str, change: Change, *, if_match: str | None = None) -> Versioned:
        """Apply *change* atomically; raise :class:`HostNotFound` / :class:`PreconditionFailed`."""

    def remove(
        self, serial: str, message: str, *, if_match: str | None = None
    ) -> Versioned:
        """Delete *serial*'s record (one audit entry, *message*); returns the record removed."""

    def history(self, serial: str, limit: int = 100) -> list[HistoryEntry]:
        """The audit entries of *serial*, newest first (empty when nothing is audited)."""

    def health(self) -> StoreHealth:
        """Whether audit and storage work, and what is wrong if not."""

    def refresh(self) -> None:
        """Pick up changes made outside pxestack (hand edits) for :meth:`host_for_mac`.

        The provisioning service calls it every few seconds from its thread pool.
        """

    def retry_audit(self) -> bool:
        """Record audit entries that failed before; ``True`` when the audit is up to date.

        Called with :meth:`refresh`; ``False`` makes the service log the store's health.
        """

    def write_cluster_file(self, name: str, data: bytes, message: str) -> None:
        """Store a cluster-level file (the mayu settings saved through ``PUT
        /admin/mayu_config``) with an audit entry saying *message*; ``ValueError`` for a
        name that is not a plain file name."""

    @property
    def default_etcd_token(self) -> str:
        """The cluster's default etcd discovery token."""


def etag_of(data: bytes) -> str:
    """The ETag of a record's bytes (RFC 9110 §8.8.3: an opaque quoted string)."""
    return '"' + hashlib.sha256(data).hexdigest()[:20] + '"'


__all__ = [
    "CURRENT_ACTOR",
    "Change",
    "HistoryEntry",
    "HostNotFound",
    "HostStore",
    "PreconditionFailed",
    "StoreError",
    "StoreHealth",
    "StoreReadOnly",
    "Versioned",
    "acting_as",
    "etag_of",
]
