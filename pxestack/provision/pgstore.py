"""Host storage on PostgreSQL: several pxestack servers, one state.

:class:`PostgresHostStore` implements the host-store interface of
:mod:`pxestack.provision.store` (``read``, ``hosts``, ``host_for_mac``, ``enrol``,
``update``, ``remove``, ``history``, ``health``, ``default_etcd_token``, ``refresh``,
``retry_audit``) over the schema of ``pxestack/provision/migrations/*.sql``.

* **One change, one transaction**: the record, its claims (profile slot, internal address)
  and its audit row are written together or not at all.
* **Exact claims across servers**: an enrolment locks the single ``cluster`` row (a row
  lock, held to the end of the transaction), so enrolments on every server see each other's
  hosts; on top of that, ``profile_slots`` (slot numbers unique per profile and, by a
  trigger, below its quantity) and ``address_claims`` (one machine per address) make an
  over-filled profile or a shared address impossible even for an update that races an
  enrolment: the losing transaction fails and is retried or refused.
* **Threads only**: every method blocks on the database and is meant for the provisioning
  thread pool (the API's ``run``); the connections come from psycopg's pool.
  :meth:`host_for_mac`, called by DHCP on the reactor, reads only the in-memory index.
* **Degrades, never stops**: a lost connection marks the database unreachable.  Writes
  are refused with :class:`~pxestack.provision.store.StoreReadOnly` (the API answers 503),
  ``health`` says why (503), and reads are served from the copy of every record the store
  keeps (so known machines still get their boot scripts).  :meth:`refresh`, run every few
  seconds by the provisioning service, probes the database and recovers by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout
from twisted.logger import Logger
from twisted.python.threadable import isInIOThread

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
from pxestack.provision.model import Host, InvalidHostRecord, normalize_mac
from pxestack.service.pgschema import (
    migrations,
    redact_dsn,
    upgrade_schema,
)

#: Transient conflicts between servers: the transaction is run again from the start.
_RETRYABLE = (
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.UniqueViolation,
)
#: Times a conflicting transaction is retried before the conflict is reported.
MAX_ATTEMPTS = 8
_UNREACHABLE = (psycopg.OperationalError, PoolTimeout)
#: The author of the audit entry an import adds to each host.
IMPORT_AUTHOR = "pxestack import"


class ClaimConflict(StoreError):  # noqa: N818 - the HTTP status it maps to
    """A change would over-fill a profile or give an address to two machines (409)."""

    conflict = True


def insert_audit(
    conn: psycopg.Connection[Any], serial: str | None, when: datetime, author: str,
    message: str, record: Any, server: str, *, kind: str = "change",
) -> None:
    """Append one audit entry, numbered in commit order (``audit_order``'s row lock is held
    from here to the commit; call it last in a transaction).

    *kind*: ``change`` (*record* is the record after it), ``remove``, ``history`` (copied
    from git by an import) or ``cluster`` (a cluster-level file changed).
    """
    conn.execute(
        "WITH next AS (UPDATE audit_order SET last_id = last_id + 1 WHERE id = 1 "
        "RETURNING last_id) "
        "INSERT INTO audit (id, serial, at, author, message, record, server, kind) "
        "SELECT last_id, %s, %s, %s, %s, %s, %s, %s FROM next",
        (serial, when, author, message, Jsonb(record) if record is not None else None,
         server, kind),
    )


def _on_reactor() -> bool:
    """Whether the caller is the reactor thread (which must never wait for the database)."""
    return bool(isInIOThread())  # type: ignore[no-untyped-call]


def _actor(serial: str) -> str:
    # A change nobody authenticated for is the machine's own (first contact, boot).
    return CURRENT_ACTOR.get() or f"machine:{serial}"


class PostgresHostStore:
    """The host store on PostgreSQL (see the module documentation)."""

    log = Logger()

    def __init__(
        self,
        dsn: str,
        *,
        profiles: Sequence[tuple[str, int]] = (),
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        server: str | None = None,
        clock: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.dsn = dsn
        self.where = redact_dsn(dsn)
        self.server = server or f"{socket.gethostname()}:{os.getpid()}"
        self.clock = clock
        self.random_bytes = random_bytes
        self.connect_timeout = connect_timeout
        self._lock = threading.RLock()
        #: The connection of the transaction this thread is in (see :meth:`_transaction`).
        self._local = threading.local()
        self._cache: dict[str, Versioned] = {}
        #: The audit entry up to which :attr:`_cache` holds every change (None: unknown),
        #: and the generation of the cache it was established for (:meth:`refresh`
        #: replaces the cache with a snapshot and starts a new generation).
        self._synced_to: int | None = None
        self._generation = 0
        self._mac_index: dict[str, str] = {}
        #: Why the database cannot be used right now (None: it can).
        self.unreachable: str | None = None
        #: Kept for the service's start-up report; the database store is never "damaged".
        self.damaged: str | None = None
        self._token = ""
        self._key = b""
        #: The git audit exporter of this server, reported by :meth:`health` (or None).
        self.exporter: Any = None
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max(1, pool_size),
            timeout=connect_timeout,
            open=False,
            check=ConnectionPool.check_connection,
            kwargs={"connect_timeout": max(1, int(connect_timeout))},
            name="pxestack-hosts",
        )
        self._profiles = list(profiles)

    # -- start and stop -------------------------------------------------------------------

    def open(self) -> list[str]:
        """Connect, apply missing migrations, synchronise the profiles, load every record.

        Raises :class:`StoreError` naming ``provision.store.dsn`` when the database cannot
        be reached: a server does not start on a state it cannot read.  Returns the
        migrations applied.
        """
        try:
            self.pool.open(wait=True, timeout=self.connect_timeout)
        except PoolTimeout as exc:
            self.pool.close()
            raise StoreError(
                f"provision.store.dsn: cannot connect to PostgreSQL at {self.where}: {exc}"
            ) from exc
        try:
            with self.pool.connection() as conn:
                applied = upgrade_schema(conn)
                with conn.transaction():
                    self._ensure_cluster(conn)
                    for name, quantity in self._profiles:
                        conn.execute(
                            "INSERT INTO profiles (name, quantity) VALUES (%s, %s) "
                            "ON CONFLICT (name) DO UPDATE SET quantity = EXCLUDED.quantity",
                            (name, quantity),
                        )
        except psycopg.Error as exc:
            self.pool.close()
            raise StoreError(
                f"provision.store.dsn: PostgreSQL at {self.where} refused the schema: {exc}"
            ) from exc
        for version in applied:
            self.log.info("applied schema migration {version} to {where}",
                          version=version, where=self.where)
        self.refresh()
        return applied

    def close(self) -> None:
        """Close every connection (the pool's threads stop)."""
        self.pool.close()

    def _ensure_cluster(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "INSERT INTO cluster (id, etcd_token, callback_key) VALUES (1, %s, %s) "
            "ON CONFLICT (id) DO NOTHING",
            (self.random_bytes(16).hex(), self.random_bytes(32)),
        )
        row = conn.execute("SELECT etcd_token, callback_key FROM cluster WHERE id = 1").fetchone()
        assert row is not None
        self._token, self._key = row[0], bytes(row[1])

    @property
    def default_etcd_token(self) -> str:
        """The cluster's default etcd discovery token (shared by every server)."""
        return self._token

    @property
    def callback_key(self) -> bytes:
        """The secret callback tokens derive from (shared, so every server accepts them)."""
        return self._key

    # -- connection handling --------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; an unreachable database becomes :class:`StoreReadOnly`.

        Inside a transaction of this thread it is that transaction's connection.
        """
        current: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        if self.unreachable is not None:
            raise StoreReadOnly(self.unreachable)
        try:
            with self.pool.connection() as conn:
                yield conn
        except _UNREACHABLE as exc:
            self._lost(exc)
            raise StoreReadOnly(self.unreachable or str(exc)) from exc

    def _lost(self, exc: BaseException) -> None:
        reason = (
            f"the PostgreSQL database at {self.where} is unreachable ({type(exc).__name__}: "
            f"{str(exc).strip()}); host records are served from this server's copy and "
            "changes are refused until it is back"
        )
        with self._lock:
            first = self.unreachable is None
            self.unreachable = reason
        if first:
            self.log.error("{reason}", reason=reason)

    def _transaction(self, work: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Run *work* in one transaction, again when it lost a race with another server.

        While *work* runs, this thread's reads (a change that looks at every host, such as
        moving a host to another profile) use the transaction's connection: a second one
        from the pool could wait for ever when every connection is such a change.
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self._connection() as conn, conn.transaction():
                    self._local.conn = conn
                    try:
                        return work(conn)
                    finally:
                        self._local.conn = None
            except _RETRYABLE as exc:
                if attempt == MAX_ATTEMPTS:
                    raise ClaimConflict(f"the change kept conflicting with others: {exc}") from exc
                time.sleep(0.005 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- reading --------------------------------------------------------------------------

    def _remember(self, versioned: Versioned) -> None:
        host = versioned.host
        with self._lock:
            self._cache[host.serial] = versioned
            for mac in [m for m, s in self._mac_index.items() if s == host.serial]:
                del self._mac_index[mac]
            for mac in host.mac_addresses:
                self._mac_index[mac] = host.serial

    def _forget(self, serial: str) -> None:
        with self._lock:
            self._cache.pop(serial, None)
            for mac in [m for m, s in self._mac_index.items() if s == serial]:
                del self._mac_index[mac]

    @staticmethod
    def _versioned(serial: str, record: Any, etag: str) -> Versioned:
        return Versioned(Host.from_json(record, directory=serial), etag)

    def refresh(self) -> None:
        """Reload every record (other servers' changes) and recover a lost database."""
        current: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        try:
            if current is not None:
                rows = current.execute("SELECT serial, record, etag FROM hosts").fetchall()
            else:
                with self.pool.connection(timeout=self.connect_timeout) as conn:
                    rows = conn.execute("SELECT serial, record, etag FROM hosts").fetchall()
        except _UNREACHABLE as exc:
            self._lost(exc)
            return
        fresh: dict[str, Versioned] = {}
        for serial, record, etag in rows:
            cached = self._cache.get(serial)
            if cached is not None and cached.etag == etag:
                fresh[serial] = cached
                continue
            try:
                fresh[serial] = self._versioned(serial, record, etag)
            except InvalidHostRecord as exc:
                self.log.error("cannot use host record {serial} from the database: {error}",
                               serial=serial, error=str(exc))
        with self._lock:
            self._cache = fresh
            self._generation += 1
            self._synced_to = None
            self._mac_index = {
                mac: v.host.serial for v in fresh.values() for mac in v.host.mac_addresses
            }
            recovered = self.unreachable is not None
            self.unreachable = None
        if recovered:
            self.log.info("the PostgreSQL database at {where} is reachable again; "
                          "changes are accepted", where=self.where)

    def read(self, serial: str) -> Versioned | None:
        """The record of *serial*; this server's copy while the database is unreachable.

        On the reactor thread (the API's authentication of a machine's callback) a record
        in this server's copy is answered from it, without a round trip; a record it does
        not hold yet (enrolled on another server within the refresh interval) is looked
        up, and while the database is unreachable that is :class:`StoreReadOnly` (503, the
        machine retries) rather than "unknown".
        """
        on_reactor = _on_reactor()
        if on_reactor:
            cached = self._cache.get(serial)
            if cached is not None:
                return cached
            if self.unreachable is not None:
                raise StoreReadOnly(self.unreachable)
        try:
            with self._connection() as conn:
                row = conn.execute(
                    "SELECT record, etag FROM hosts WHERE serial = %s", (serial,)
                ).fetchone()
        except StoreReadOnly:
            cached = self._cache.get(serial)
            if cached is None and on_reactor:
                raise
            return cached
        if row is None:
            self._forget(serial)
            return None
        versioned = self._versioned(serial, row[0], row[1])
        self._remember(versioned)
        return versioned

    def hosts(self) -> list[Host]:
        """Every host on record, fresh from the database.

        On the reactor thread (a metrics scrape) and while the database is unreachable it
        is this server's copy, at most one refresh interval old: the reactor never waits
        for the database.
        """
        if not _on_reactor() and self.unreachable is None:
            self.refresh()
        return [v.host for v in list(self._cache.values())]

    def host_for_mac(self, mac: str) -> Host | None:
        """The host owning *mac*, from the in-memory index (no database round trip)."""
        serial = self._mac_index.get(normalize_mac(mac))
        if serial is None:
            return None
        versioned = self._cache.get(serial)
        return versioned.host if versioned is not None else None

    def history(self, serial: str, limit: int = 100) -> list[HistoryEntry]:
        """The audit entries of *serial*, newest first."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id, at, author, message FROM audit WHERE serial = %s "
                "ORDER BY id DESC LIMIT %s",
                (serial, limit),
            ).fetchall()
        return [
            HistoryEntry(commit=f"{row[0]:040x}", time=row[1], author=row[2], message=row[3])
            for row in rows
        ]

    # -- writing --------------------------------------------------------------------------

    def _audit(
        self, conn: psycopg.Connection[Any], serial: str | None, text: str, record: Any,
        author: str, *, kind: str = "change",
    ) -> None:
        insert_audit(conn, serial, datetime.fromtimestamp(self.clock(), UTC), author, text,
                     record, self.server, kind=kind)

    def _claim(self, conn: psycopg.Connection[Any], host: Host, old: Host | None) -> None:
        """Make *host*'s profile slot and address claims match its record."""
        if old is None or old.profile != host.profile:
            conn.execute("DELETE FROM profile_slots WHERE serial = %s", (host.serial,))
            configured = conn.execute(
                "SELECT quantity FROM profiles WHERE name = %s", (host.profile,)
            ).fetchone()
            if host.profile and configured is not None:
                taken = {r[0] for r in conn.execute(
                    "SELECT slot FROM profile_slots WHERE profile = %s", (host.profile,))}
                slot = next(n for n in range(len(taken) + 1) if n not in taken)
                try:
                    with conn.transaction():
                        conn.execute(
                            "INSERT INTO profile_slots (profile, slot, serial) "
                            "VALUES (%s, %s, %s)",
                            (host.profile, slot, host.serial),
                        )
                except pg_errors.CheckViolation as exc:
                    raise ClaimConflict(
                        f"profile {host.profile} is full (quantity {configured[0]}); "
                        f"{host.serial} cannot join it"
                    ) from exc
        if old is None or old.internal_addr != host.internal_addr:
            conn.execute("DELETE FROM address_claims WHERE serial = %s", (host.serial,))
            if host.internal_addr is not None:
                owner = conn.execute(
                    "INSERT INTO address_claims (address, serial) VALUES (%s, %s) "
                    "ON CONFLICT (address) DO NOTHING RETURNING serial",
                    (str(host.internal_addr), host.serial),
                ).fetchone()
                if owner is None:
                    raise ClaimConflict(
                        f"address {host.internal_addr} already belongs to another machine; "
                        f"{host.serial} cannot have it"
                    )

    def _write(
        self, conn: psycopg.Connection[Any], host: Host, old: Host | None, text: str,
        *, author: str,
    ) -> Versioned:
        data = host.to_bytes()
        etag = etag_of(data)
        record = json.loads(data)
        if old is None:
            conn.execute(
                "INSERT INTO hosts (serial, record, etag) VALUES (%s, %s, %s)",
                (host.serial, Jsonb(record), etag),
            )
        else:
            conn.execute(
                "UPDATE hosts SET record = %s, etag = %s, changed_at = now() WHERE serial = %s",
                (Jsonb(record), etag, host.serial),
            )
        self._claim(conn, host, old)
        self._audit(conn, host.serial, text, record, author)
        return Versioned(host, etag)

    def enrol(
        self, serial: str, make: Callable[[Sequence[Host]], Host], message: Sequence[str]
    ) -> tuple[Versioned, bool]:
        """Return *serial*'s record, creating it with ``make(all_hosts)`` if absent.

        ``make`` runs while this transaction holds the ``cluster`` row lock, with every host
        of every server, so its profile and address choice is exact.
        """
        existing = self.read(serial)
        if existing is not None:
            return existing, False
        author = _actor(serial)

        def work(conn: psycopg.Connection[Any]) -> tuple[Versioned, bool]:
            conn.execute("SELECT 1 FROM cluster WHERE id = 1 FOR UPDATE")
            found = conn.execute(
                "SELECT record, etag FROM hosts WHERE serial = %s", (serial,)
            ).fetchone()
            if found is not None:
                return self._versioned(serial, found[0], found[1]), False
            host = make(self._all_hosts(conn))
            if host.serial != serial:
                raise ValueError("make() returned a record for another serial")
            first, *details = message
            text = f"{serial}: {first}" + ("\n\n" + "\n".join(details) if details else "")
            return self._write(conn, host, None, text, author=author), True

        versioned, created = self._transaction(work)
        self._remember(versioned)
        return versioned, created

    def _all_hosts(self, conn: psycopg.Connection[Any]) -> list[Host]:
        """Every host, read in *conn*'s transaction (an enrolment needs them all).

        Audit entries are numbered in commit order and every change writes one in its own
        transaction, so once this server's copy is known to hold every change up to entry
        N, the hosts named by the entries above N are all that can differ: only those are
        read.  Otherwise (the first enrolment, or after :meth:`refresh` replaced the copy
        with a snapshot) the serial and ETag of every host are compared with the copy and
        the records that differ are read.
        """
        with self._lock:
            synced, generation = self._synced_to, self._generation
            copy = dict(self._cache)
        if synced is None:
            top = conn.execute("SELECT coalesce(max(id), 0) FROM audit").fetchone()
            etags = conn.execute("SELECT serial, etag FROM hosts").fetchall()
            present = {serial for serial, _ in etags}
            missing = [serial for serial, etag in etags
                       if serial not in copy or copy[serial].etag != etag]
            for gone in [serial for serial in copy if serial not in present]:
                del copy[gone]
            reached = int(top[0]) if top is not None else 0
        else:
            changed = conn.execute(
                "SELECT id, serial FROM audit WHERE id > %s ORDER BY id", (synced,)
            ).fetchall()
            missing = sorted({serial for _, serial in changed if serial is not None})
            reached = int(changed[-1][0]) if changed else synced
        fetched: list[Versioned] = []
        if missing:
            for serial, record, etag in conn.execute(
                "SELECT serial, record, etag FROM hosts WHERE serial = ANY(%s)", (missing,)
            ):
                fetched.append(self._versioned(serial, record, etag))
        found = {versioned.host.serial for versioned in fetched}
        for serial in missing:
            if serial not in found:
                copy.pop(serial, None)  # removed since
        for versioned in fetched:
            copy[versioned.host.serial] = versioned
        for versioned in fetched:
            self._remember(versioned)
        for serial in missing:
            if serial not in found:
                self._forget(serial)
        with self._lock:
            if self._generation == generation:
                self._synced_to = reached
        return [versioned.host for versioned in copy.values()]

    def update(self, serial: str, change: Change, *, if_match: str | None = None) -> Versioned:
        """Apply *change* to the row-locked record in one transaction."""
        author = _actor(serial)

        def work(conn: psycopg.Connection[Any]) -> Versioned:
            row = conn.execute(
                "SELECT record, etag FROM hosts WHERE serial = %s FOR UPDATE", (serial,)
            ).fetchone()
            if row is None:
                raise HostNotFound(serial)
            current = self._versioned(serial, row[0], row[1])
            if if_match is not None and if_match.strip() not in ("*", current.etag):
                raise PreconditionFailed(current.etag)
            host, text, details = change(current.host)
            if host.serial != serial:
                raise ValueError("a change may not rename a host")
            if host == current.host and not details:
                return current
            full = f"{serial}: {text}" + ("\n\n" + "\n".join(details) if details else "")
            return self._write(conn, host, current.host, full, author=author)

        versioned: Versioned = self._transaction(work)
        self._remember(versioned)
        return versioned

    def remove(self, serial: str, message: str, *, if_match: str | None = None) -> Versioned:
        """Delete *serial*'s record and its claims; the audit keeps the removal."""
        author = CURRENT_ACTOR.get() or "pxestack"

        def work(conn: psycopg.Connection[Any]) -> Versioned:
            row = conn.execute(
                "SELECT record, etag FROM hosts WHERE serial = %s FOR UPDATE", (serial,)
            ).fetchone()
            if row is None:
                raise HostNotFound(serial)
            current = self._versioned(serial, row[0], row[1])
            if if_match is not None and if_match.strip() not in ("*", current.etag):
                raise PreconditionFailed(current.etag)
            conn.execute("DELETE FROM hosts WHERE serial = %s", (serial,))
            self._audit(conn, serial, f"{serial}: {message}", None, author, kind="remove")
            return current

        removed: Versioned = self._transaction(work)
        self._forget(serial)
        return removed

    def write_cluster_file(self, name: str, data: bytes, message: str) -> None:
        """Store a cluster-level file (e.g. ``mayu-config.yaml``) and audit the change."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"{name!r} is not a cluster-level file name")
        author = CURRENT_ACTOR.get() or "pxestack"

        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "INSERT INTO cluster_files (name, data) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data",
                (name, data),
            )
            self._audit(conn, None, message, None, author, kind="cluster")

        self._transaction(work)

    def read_cluster_file(self, name: str) -> bytes | None:
        """A cluster-level file stored with :meth:`write_cluster_file`, or None."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT data FROM cluster_files WHERE name = %s", (name,)
            ).fetchone()
        return bytes(row[0]) if row is not None else None

    def mark_damaged(self, reason: str) -> None:
        """Report a problem the service found in the stored settings (logged, in health)."""
        self.log.error("{problem}", problem=reason)
        if self.damaged is None:
            self.damaged = reason

    def retry_audit(self) -> bool:
        """Nothing is ever pending: the audit row is part of each change's transaction.

        (A lost database is logged once when it is found and once when it is back.)
        """
        return True

    def health(self) -> StoreHealth:
        """Whether the database answers; 503 from ``/admin/health`` while it does not.

        Off the reactor thread the database is asked (``SELECT 1``), so a monitor sees a
        lost database at once; on the reactor the last known state is reported.
        """
        if not _on_reactor():
            if self.unreachable is not None:
                self.refresh()
            else:
                with contextlib.suppress(StoreReadOnly), self._connection() as conn:
                    conn.execute("SELECT 1")
        down = self.unreachable
        out: StoreHealth = {
            "ok": False,
            "backend": "postgresql",
            "database": self.where,
            "database_ok": down is None,
            "database_error": down,
            "hosts": len(self._cache),
            "git": False,
            "git_ok": True,
            "read_only": down is not None,
            "damaged": self.damaged,
        }
        if self.exporter is not None:
            out.update(self.exporter.health())
        out["ok"] = down is None and self.damaged is None and bool(out["git_ok"])
        return out

    # -- moving a cluster directory in and out ----------------------------------------------

    def import_hosts(
        self,
        records: Sequence[tuple[Host, str]],
        *,
        token: str | None,
        key: bytes | None,
        history: Sequence[tuple[str, datetime, str, str]] = (),
        files: Sequence[tuple[str, bytes]] = (),
        source: str = "import",
    ) -> list[str]:
        """Insert *records* ((host, audit message) pairs) in one transaction.

        *history* ((serial, time, author, message), oldest first) becomes the hosts' audit
        entries before their import entry; *files* are cluster-level files.  The cluster's
        etcd token and callback key are taken over when given, so machines keep their
        tokens.  A host already in the database is left as it is.  Returns one problem line
        per host skipped or claim that could not be made (such a record is imported without
        the claim; its profile or address needs an operator's look).
        """
        problems: list[str] = []

        def work(conn: psycopg.Connection[Any]) -> None:
            problems.clear()
            conn.execute("SELECT 1 FROM cluster WHERE id = 1 FOR UPDATE")
            if token:
                conn.execute("UPDATE cluster SET etcd_token = %s WHERE id = 1", (token,))
            if key:
                conn.execute("UPDATE cluster SET callback_key = %s WHERE id = 1", (key,))
            present = {r[0] for r in conn.execute(
                "SELECT serial FROM hosts WHERE serial = ANY(%s)",
                ([h.serial for h, _ in records],))}
            for serial, when, author, message in history:
                if serial not in present:
                    insert_audit(conn, serial, when, author, message, None, source,
                                 kind="history")
            for host, text in records:
                if host.serial in present:
                    problems.append(f"{host.serial}: already in the database; kept as it is")
                    continue
                try:
                    with conn.transaction():
                        self._write(conn, host, None, text, author=IMPORT_AUTHOR)
                except ClaimConflict as exc:
                    problems.append(f"{host.serial}: {exc}")
                    record = json.loads(host.to_bytes())
                    conn.execute(
                        "INSERT INTO hosts (serial, record, etag) VALUES (%s, %s, %s)",
                        (host.serial, Jsonb(record), etag_of(host.to_bytes())),
                    )
                    self._audit(conn, host.serial, text, record, IMPORT_AUTHOR)
            for name, data in files:
                conn.execute(
                    "INSERT INTO cluster_files (name, data) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data",
                    (name, data),
                )
            self._ensure_cluster(conn)

        self._transaction(work)
        self.refresh()
        return problems

    def addresses(self) -> dict[IPv4Address, str]:
        """Every address claim: address -> serial (for checks and tests)."""
        with self._connection() as conn:
            rows = conn.execute("SELECT address, serial FROM address_claims").fetchall()
        return {IPv4Address(str(r[0])): r[1] for r in rows}


__all__ = [
    "ClaimConflict",
    "PostgresHostStore",
    "migrations",
    "redact_dsn",
    "upgrade_schema",
]
