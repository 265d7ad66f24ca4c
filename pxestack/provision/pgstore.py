"""Host storage on PostgreSQL: several pxestack servers, one state.

:class:`PostgresHostStore` implements the host-store interface of
:mod:`pxestack.provision.store` (``read``, ``hosts``, ``host_for_mac``, ``enrol``,
``update``, ``remove``, ``history``, ``health``, ``default_etcd_token``, ``refresh``,
``retry_audit``) over the schema of ``pxestack/provision/migrations/*.sql``.

* **One change, one transaction**: the record, its claims (profile slot, internal address)
  and its audit row are written together or not at all (first contacts that wait together
  share one transaction, each with its own record, claims and audit row: :meth:`enrol`).
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout
from twisted.logger import Logger
from twisted.python.threadable import isInIOThread

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
#: Seconds between comparisons of every host's ETag with a server's copy (in between, only
#: the hosts the audit names as changed are read).
FULL_SYNC = 30.0
#: The hosts named by the audit entries after a given one, with their current rows (NULL:
#: removed), oldest entry first.
_DELTA = (
    "SELECT a.id, a.serial, h.record, h.etag FROM audit a "
    "LEFT JOIN hosts h ON h.serial = a.serial WHERE a.id > %s ORDER BY a.id"
)
#: Claim the lowest free slot of a profile for a serial (parameters: serial, profile;
#: nothing for a profile that is not configured): the ``profile_slots`` trigger refuses a
#: slot at or beyond the profile's quantity, the primary key a slot taken meanwhile.
_CLAIM_SLOT = (
    "INSERT INTO profile_slots (profile, slot, serial) "
    "SELECT p.name, (SELECT min(n) FROM generate_series(0, (SELECT count(*) "
    "FROM profile_slots t WHERE t.profile = p.name)::integer) AS n WHERE NOT EXISTS "
    "(SELECT 1 FROM profile_slots u WHERE u.profile = p.name AND u.slot = n)), %s "
    "FROM profiles p WHERE p.name = %s"
)


#: Enrolments of one server written in one transaction at most (see :meth:`enrol`).
ENROL_BATCH = 16


@dataclass(slots=True)
class _Enrolment:
    """One first contact waiting for its server's next enrolment transaction."""

    serial: str
    make: Callable[[Sequence[Host]], Host]
    message: Sequence[str]
    author: str
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[Versioned, bool] | None = None
    error: BaseException | None = None


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


def _claim_refused(exc: psycopg.Error, host: Host | None) -> ClaimConflict | None:
    """The :class:`ClaimConflict` a refused claim of *host* is (None: another error)."""
    if host is None:
        return None
    if isinstance(exc, pg_errors.CheckViolation):
        reason = exc.diag.message_primary or ""
        if reason.startswith("profile "):
            return ClaimConflict(f"{reason}; {host.serial} cannot join it")
    elif exc.diag.constraint_name == "address_claims_pkey":
        return ClaimConflict(
            f"address {host.internal_addr} already belongs to another machine; "
            f"{host.serial} cannot have it"
        )
    return None


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
        #: The same records with their profile, address and MAC counts (what an enrolment
        #: decides on), kept with :attr:`_cache` under :attr:`_lock`.
        self._index = HostIndex()
        #: The audit entry up to which :attr:`_cache` holds every change (None: unknown:
        #: the next synchronisation compares every host's ETag).
        self._synced_to: int | None = None
        #: When the last comparison of every host's ETag ran (by *clock*).
        self._full_sync_at: float | None = None
        #: MAC -> serial, read without the lock by DHCP on the reactor thread.
        self._mac_index: dict[str, str] = {}
        #: Serial -> the audit entry of the newest row of it taken from a synchronisation.
        self._versions: dict[str, int] = {}
        #: First contacts waiting for an enrolment transaction, and the lock held by the
        #: thread that runs one (see :meth:`enrol`).
        self._enrolments: list[_Enrolment] = []
        self._enrolments_lock = threading.Lock()
        self._enrolling = threading.Lock()
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

    def _transaction(
        self, work: Callable[[psycopg.Connection[Any]], Any], *, pipeline: bool = False
    ) -> Any:
        """Run *work* in one transaction, again when it lost a race with another server.

        While *work* runs, this thread's reads (a change that looks at every host, such as
        moving a host to another profile) use the transaction's connection: a second one
        from the pool could wait for ever when every connection is such a change.

        With *pipeline* the transaction runs in libpq's pipeline mode: statements are sent
        without waiting for each other's results until *work* reads one, and the writes
        that end *work* travel with the ``COMMIT``, so the row locks they take (the audit
        order above all, which every change takes) are held for the database's own time,
        not for round trips to a busy server.  A claim refused there is reported as
        :class:`ClaimConflict` all the same.
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self._connection() as conn, contextlib.ExitStack() as stack:
                    if pipeline:
                        stack.enter_context(conn.pipeline())
                    stack.enter_context(conn.transaction())
                    self._local.conn = conn
                    self._local.writing = None
                    try:
                        return work(conn)
                    finally:
                        self._local.conn = None
            except (pg_errors.CheckViolation, pg_errors.UniqueViolation) as exc:
                refused = _claim_refused(exc, getattr(self._local, "writing", None))
                if refused is not None:
                    raise refused from exc
                if isinstance(exc, pg_errors.CheckViolation):
                    raise
                if attempt == MAX_ATTEMPTS:
                    raise ClaimConflict(f"the change kept conflicting with others: {exc}") from exc
                time.sleep(0.005 * attempt)
            except _RETRYABLE as exc:
                if attempt == MAX_ATTEMPTS:
                    raise ClaimConflict(f"the change kept conflicting with others: {exc}") from exc
                time.sleep(0.005 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- reading --------------------------------------------------------------------------

    def _remember(self, versioned: Versioned) -> None:
        host = versioned.host
        with self._lock:
            self._drop_macs(host.serial)
            self._cache[host.serial] = versioned
            self._index.put(host)
            for mac in host.mac_addresses:
                self._mac_index[mac] = host.serial

    def _forget(self, serial: str) -> None:
        with self._lock:
            self._drop_macs(serial)
            self._cache.pop(serial, None)
            self._index.discard(serial)

    def _drop_macs(self, serial: str) -> None:
        old = self._cache.get(serial)
        if old is not None:
            for mac in old.host.mac_addresses:
                if self._mac_index.get(mac) == serial:
                    del self._mac_index[mac]

    @staticmethod
    def _versioned(serial: str, record: Any, etag: str) -> Versioned:
        return Versioned(Host.from_json(record, directory=serial), etag)

    def _use(self, rows: Sequence[tuple[int, str, Any, Any]]) -> None:
        """Take hosts' rows (version, serial, record, ETag) as read from the database into
        the copy; a record None: the host is gone.

        The version is the audit entry of the row's latest change (or a number no lower):
        a row older than one already taken is skipped, so synchronisations that overlap
        never put an older record over a newer one.
        """
        parsed: list[tuple[int, str, Versioned | None]] = []
        for version, serial, record, etag in rows:
            if record is None:
                parsed.append((version, serial, None))
                continue
            cached = self._cache.get(serial)
            if cached is not None and cached.etag == etag:
                continue
            try:
                parsed.append((version, serial, self._versioned(serial, record, etag)))
            except InvalidHostRecord as exc:
                self.log.error("cannot use host record {serial} from the database: {error}",
                               serial=serial, error=str(exc))
        with self._lock:
            for version, serial, versioned in parsed:
                if version <= self._versions.get(serial, -1):
                    continue
                self._versions[serial] = version
                if versioned is None:
                    self._forget(serial)
                else:
                    self._remember(versioned)

    def _sync(self, conn: psycopg.Connection[Any], *, full: bool = False) -> None:
        """Bring this server's copy up to date with every committed change.

        Audit entries are numbered in commit order and every change writes one in its own
        transaction, so once the copy is known to hold every change up to entry N, the
        hosts named by the entries above N are all that can differ: one query
        (:data:`_DELTA`) returns them with their current rows.  Otherwise (the first time,
        after a lost database, or with *full*) the serial and ETag of every host are
        compared with the copy and only the records that differ are read.
        """
        synced = None if full else self._synced_to
        if synced is not None:
            self._apply_delta(conn.execute(_DELTA, (synced,)).fetchall())
            return
        started = self.clock()
        top = conn.execute("SELECT last_id FROM audit_order WHERE id = 1").fetchone()
        reached = int(top[0]) if top is not None else 0
        etags = dict(conn.execute("SELECT serial, etag FROM hosts").fetchall())
        differ = [serial for serial, etag in etags.items()
                  if serial not in self._cache or self._cache[serial].etag != etag]
        fetched = conn.execute(
            "SELECT serial, record, etag FROM hosts WHERE serial = ANY(%s)", (differ,)
        ).fetchall() if differ else []
        # Every row read is at least as new as the entry read first.
        self._use([(reached, serial, record, etag) for serial, record, etag in fetched])
        with self._lock:
            for gone in [serial for serial in self._cache if serial not in etags]:
                if self._versions.get(gone, -1) <= reached:
                    self._forget(gone)
            self._synced_to = max(reached, self._synced_to or 0)
            self._full_sync_at = started

    def _apply_delta(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Apply the rows of :data:`_DELTA` (entry, serial, record, ETag), oldest first."""
        latest = {serial: (int(entry), serial, record, etag)
                  for entry, serial, record, etag in rows if serial is not None}
        self._use(list(latest.values()))
        if rows:
            with self._lock:
                self._synced_to = max(int(rows[-1][0]), self._synced_to or 0)

    def refresh(self) -> None:
        """Take other servers' changes into this server's copy, and recover a lost
        database.

        Only the hosts changed since the last synchronisation are read; every
        :data:`FULL_SYNC` seconds (and after the database was lost) the ETags of all hosts
        are compared as well, so a copy that went wrong is put right.
        """
        current: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        due = self._full_sync_at is None or self.clock() - self._full_sync_at >= FULL_SYNC
        full = due or self.unreachable is not None
        try:
            if current is not None:
                self._sync(current, full=full)
            else:
                with self.pool.connection(timeout=self.connect_timeout) as conn:
                    self._sync(conn, full=full)
        except _UNREACHABLE as exc:
            self._lost(exc)
            return
        with self._lock:
            recovered = self.unreachable is not None
            self.unreachable = None
        if recovered:
            self.log.info("the PostgreSQL database at {where} is reachable again; "
                          "changes are accepted", where=self.where)

    def read(self, serial: str) -> Versioned | None:
        """The record of *serial*; this server's copy while the database is unreachable.

        Off the reactor thread it is always the committed record: one primary-key lookup
        that sends the record only when its ETag differs from this server's copy.

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
        cached = self._cache.get(serial)
        try:
            with self._connection() as conn:
                # The ETag validates this server's copy: the record itself is sent (and
                # parsed) only when it changed.
                row = conn.execute(
                    "SELECT etag, CASE WHEN etag = %s THEN NULL ELSE record END "
                    "FROM hosts WHERE serial = %s",
                    (cached.etag if cached is not None else "", serial),
                ).fetchone()
        except StoreReadOnly:
            cached = self._cache.get(serial)
            if cached is None and on_reactor:
                raise
            return cached
        if row is None:
            with self._lock:
                if self._cache.get(serial) is cached:
                    self._forget(serial)
            return None
        if row[1] is None and cached is not None:
            return cached
        versioned = self._versioned(serial, row[1], row[0])
        with self._lock:
            # Unless another thread took a (possibly newer) record meanwhile.
            if self._cache.get(serial) is cached:
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

    def _write(
        self, conn: psycopg.Connection[Any], host: Host, old: Host | None, text: str,
        *, author: str,
    ) -> Versioned:
        """Write *host* (replacing *old*), make its profile slot and address claims match
        it, and append its audit entry (last: it takes the audit order's row lock).

        A claim another machine holds is refused by the database (the profile's slot
        trigger, the address's primary key) and reported as :class:`ClaimConflict`: at
        once, or in a pipelined transaction when it commits.
        """
        data = host.to_bytes()
        etag = etag_of(data)
        record = json.loads(data)
        self._local.writing = host
        try:
            if old is None:
                conn.execute(
                    "INSERT INTO hosts (serial, record, etag) VALUES (%s, %s, %s)",
                    (host.serial, Jsonb(record), etag),
                )
            else:
                conn.execute(
                    "UPDATE hosts SET record = %s, etag = %s, changed_at = now() "
                    "WHERE serial = %s",
                    (Jsonb(record), etag, host.serial),
                )
            if old is None or old.profile != host.profile:
                if old is not None:
                    conn.execute("DELETE FROM profile_slots WHERE serial = %s", (host.serial,))
                if host.profile:
                    conn.execute(_CLAIM_SLOT, (host.serial, host.profile))
            if old is None or old.internal_addr != host.internal_addr:
                if old is not None:
                    conn.execute("DELETE FROM address_claims WHERE serial = %s",
                                 (host.serial,))
                if host.internal_addr is not None:
                    conn.execute(
                        "INSERT INTO address_claims (address, serial) VALUES (%s, %s)",
                        (str(host.internal_addr), host.serial),
                    )
            self._audit(conn, host.serial, text, record, author)
        except (pg_errors.CheckViolation, pg_errors.UniqueViolation) as exc:
            refused = _claim_refused(exc, host)
            if refused is not None:
                raise refused from exc
            raise
        return Versioned(host, etag)

    def _synchronise(self, *, full: bool = False) -> None:
        """:meth:`_sync` on a connection of its own (or of this thread's transaction)."""
        with self._connection() as conn:
            self._sync(conn, full=full)

    def enrol(
        self, serial: str, make: Callable[[Sequence[Host]], Host], message: Sequence[str]
    ) -> tuple[Versioned, bool]:
        """Return *serial*'s record, creating it with ``make(all_hosts)`` if absent.

        ``make`` runs while the enrolment's transaction holds the ``cluster`` row lock, with
        every host of every server, so its profile and address choice is exact.  Every
        enrolment in the cluster waits for that lock, so what it is held for is kept short:
        one round trip reads the hosts changed since this server's copy was last up to
        date, ``make`` decides on the copy's counts, and one pipeline writes the record, its
        claims and its audit entry and commits.

        **Group enrolment.**  The first contacts that arrive on this server while one of
        its threads waits for or holds the lock are written by that thread's next
        transaction together (at most :data:`ENROL_BATCH`): one lock, one delta, each
        ``make`` in turn seeing the hosts decided before it, each record with its own
        claims and audit entry, one commit.  A ``make`` that refuses (a full address range)
        refuses only its own machine.  When the database refuses the transaction (a claim
        taken after all: the copy was wrong), each enrolment is run again on its own after
        the copy was compared with every host's ETag.
        """
        if serial in self._cache:
            # Known here: the validated read answers without the lock (a machine that
            # boots again).  A serial the copy does not hold is looked for by the
            # enrolment itself, which reads every host changed since the copy's entry.
            existing = self.read(serial)
            if existing is not None:
                return existing, False
        if self._synced_to is None:
            self._synchronise(full=True)
        request = _Enrolment(serial, make, message, _actor(serial))
        with self._enrolments_lock:
            self._enrolments.append(request)
        while not request.done.is_set():
            with self._enrolling:
                if request.done.is_set():
                    break
                with self._enrolments_lock:
                    batch = self._enrolments[:ENROL_BATCH]
                    del self._enrolments[: len(batch)]
                if batch:
                    try:
                        self._enrol_batch(batch)
                    finally:
                        for other in batch:
                            if not other.done.is_set():
                                self._finish(other, error=StoreError(
                                    f"the enrolment of {other.serial} did not complete"))
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _enrol_batch(self, batch: list[_Enrolment], *, alone: bool = False) -> None:
        """Run the enrolments of *batch* in one transaction and hand each its outcome."""
        try:
            try:
                outcomes = self._transaction(
                    lambda conn: self._enrol_work(conn, batch), pipeline=True)
            finally:
                with self._lock:
                    # Records decided for a transaction that did not commit are dropped.
                    for request in batch:
                        if request.serial not in self._cache:
                            self._index.discard(request.serial)
        except ClaimConflict as exc:
            if alone:
                self._finish(batch[0], error=exc)
                return
            try:
                self._synchronise(full=True)
            except StoreError as lost:
                for request in batch:
                    self._finish(request, error=lost)
                return
            for request in batch:
                self._enrol_batch([request], alone=True)
            return
        except Exception as exc:
            for request in batch:
                self._finish(request, error=exc)
            return
        for request, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._finish(request, error=outcome)
            else:
                if outcome[1]:
                    self._remember(outcome[0])
                self._finish(request, result=outcome)

    @staticmethod
    def _finish(request: _Enrolment, *, result: tuple[Versioned, bool] | None = None,
                error: BaseException | None = None) -> None:
        request.result, request.error = result, error
        request.done.set()

    def _enrol_work(
        self, conn: psycopg.Connection[Any], batch: Sequence[_Enrolment]
    ) -> list[tuple[Versioned, bool] | BaseException]:
        with self._lock:
            synced = self._synced_to or 0
        # One round trip (pipeline mode): the lock, then, with every change committed
        # before it was granted visible, the hosts changed since the copy's entry.
        conn.execute("SELECT 1 FROM cluster WHERE id = 1 FOR UPDATE")
        changed = conn.execute(_DELTA, (synced,)).fetchall()
        decided: list[Host | Versioned | str | BaseException] = []
        with self._lock:
            self._apply_delta(changed)
            for request in batch:
                if request.serial not in self._cache:
                    self._index.discard(request.serial)  # decided by an attempt that failed
            made: set[str] = set()
            for request in batch:
                found = self._cache.get(request.serial)
                if found is not None:
                    decided.append(found)
                    continue
                if request.serial in made:
                    decided.append(request.serial)  # the same machine twice: one record
                    continue
                try:
                    host = request.make(self._index)
                    if host.serial != request.serial:
                        raise ValueError("make() returned a record for another serial")
                except Exception as exc:  # a refusal of this machine only, raised to its caller
                    decided.append(exc)
                    continue
                # The next decision of this batch sees this host.
                self._index.put(host)
                made.add(request.serial)
                decided.append(host)
        outcomes: list[tuple[Versioned, bool] | BaseException] = []
        written: dict[str, Versioned] = {}
        for request, decision in zip(batch, decided, strict=True):
            if isinstance(decision, Host):
                first, *details = request.message
                text = f"{request.serial}: {first}" + (
                    "\n\n" + "\n".join(details) if details else "")
                versioned = self._write(conn, decision, None, text, author=request.author)
                written[request.serial] = versioned
                outcomes.append((versioned, True))
            elif isinstance(decision, Versioned):
                outcomes.append((decision, False))
            elif isinstance(decision, str):
                outcomes.append((written[decision], False))
            else:
                outcomes.append(decision)
        return outcomes

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

        versioned: Versioned = self._transaction(work, pipeline=True)
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

        removed: Versioned = self._transaction(work, pipeline=True)
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
