"""DHCP leases on PostgreSQL (``dhcp.lease_store: postgresql``): the I/O half.

:class:`PostgresLeaseTable` talks to the table ``dhcp_leases`` (migration
``0003_dhcp_leases.sql``) from threads: it loads the live leases at start, and applies a
batch of claims (:class:`~pxestack.dhcp.sharedleases.Claim`) with one call of the SQL
function ``pxestack_dhcp_claims``, one round trip and one commit per batch.

:class:`LeaseGroupCommit` is what the DHCP protocol commits each batch of datagrams
through (:class:`~pxestack.dhcp.protocol.ClaimCommit`): the claims of a batch go to a
thread of its own pool, never the reactor thread; while as many batches as the pool has
connections are in flight, later batches wait and are merged into one call (group commit:
under load one round trip serves many batches).  The Deferred of a batch fires, on the
reactor thread, with the function that applies the table's answers
(:meth:`~pxestack.dhcp.sharedleases.ClaimBatch.settle`); the protocol then sends the
batch's replies, handles the refused ones again, or drops them all when the commit failed.

When the database is lost (a connection error, or no connection within
``connect_timeout``) the lease store is **down**: logged once at error level, shown by
:meth:`LeaseGroupCommit.health`, every batch that claims anything is refused at once
(so no offer and no ACK goes out that the table has not confirmed, renewals included),
and a probe every :data:`PROBE_INTERVAL` seconds finds the database again and logs it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from pxestack.dhcp.leases import Decline, Lease, LeaseState
from pxestack.dhcp.sharedleases import Answer, Claim, ClaimBatch, ClaimKind, SharedLeaseStore
from pxestack.service.pgschema import redact_dsn, upgrade_schema

log = Logger()

#: Seconds between two probes of a database that was lost.
PROBE_INTERVAL = 2.0
#: A batch that deadlocked with another server's is run again, this many times at most.
MAX_ATTEMPTS = 4
#: Claims waiting for a connection at most; a batch beyond that is refused (overload).
MAX_WAITING_CLAIMS = 16384
_RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
_STATES = {"offered": LeaseState.OFFERED, "bound": LeaseState.BOUND, "free": LeaseState.FREE}


class LeaseDatabaseDown(Exception):  # noqa: N818 - a state, not a bug
    """The lease table cannot be reached; the batch's replies are not sent."""

    #: Read by the protocol: the loss is logged once by the lease store, not per batch.
    database_down = True


#: Errors that mean the database cannot be reached (the store is down until a probe works).
_UNREACHABLE = (psycopg.OperationalError, PoolTimeout, LeaseDatabaseDown)


class LeaseStoreStartError(OSError):
    """The lease table could not be opened at start (the message names the setting).

    An ``OSError``, as a port that cannot be bound: ``pxestack serve`` prints it and exits
    with status 1."""


def _claim_json(claim: Claim) -> dict[str, Any]:
    return {
        "t": claim.kind.value,
        "a": None if claim.address is None else str(claim.address),
        "k": claim.client.hex(),
        "m": claim.mac.hex(),
        "i": None if claim.client_id is None else claim.client_id.hex(),
        "h": claim.hostname,
        "e": claim.expires,
        "n": claim.network,
    }


def _record(row: Sequence[Any]) -> Lease | Decline:
    """A row of ``dhcp_leases`` (address, client, mac, client_id, hostname, state,
    expires) as the record memory holds."""
    address, client, mac, client_id, hostname, state, expires = row
    address = IPv4Address(str(address))
    if state == "declined" or client is None:
        return Decline(address, float(expires))
    return Lease(address, bytes(client), bytes(mac or b""), _STATES[state], float(expires),
                 None if client_id is None else bytes(client_id), hostname)


class PostgresLeaseTable:
    """The table ``dhcp_leases``; every method blocks and is meant for a thread.

    :param dsn: libpq connection string (never logged with its password).
    :param pool_size: connections opened at most.
    :param connect_timeout: seconds to wait for a connection before the database counts as
        lost.
    :param server: this server's name in the ``server`` column (default: the host name).
    """

    def __init__(self, dsn: str, *, pool_size: int = 2, connect_timeout: float = 5.0,
                 server: str | None = None) -> None:
        self.dsn = dsn
        self.where = redact_dsn(dsn)
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.server = server or socket.gethostname()
        self._pool: ConnectionPool[Any] | None = None

    def open(self, now: float) -> tuple[list[Lease], list[Decline]]:
        """Connect, apply missing migrations, and return the live leases and quarantines.

        Raises :class:`LeaseStoreStartError` naming ``dhcp.lease_store.dsn`` and the
        (password-free) address when the database cannot be used."""
        pool: ConnectionPool[Any] = ConnectionPool(
            self.dsn, min_size=1, max_size=self.pool_size, open=False,
            timeout=self.connect_timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(self.connect_timeout))},
            name="pxestack-dhcp-leases",
        )
        try:
            pool.open(wait=True, timeout=self.connect_timeout)
            with pool.connection() as conn:
                applied = upgrade_schema(conn)
                rows = conn.execute(
                    "SELECT address, client, mac, client_id, hostname, state, expires "
                    "FROM dhcp_leases WHERE state IN ('bound', 'declined') AND expires > %s",
                    (now,),
                ).fetchall()
        except (psycopg.Error, PoolTimeout) as exc:
            pool.close()
            raise LeaseStoreStartError(
                f"dhcp.lease_store.dsn: cannot use the lease database at {self.where}: {exc}"
            ) from exc
        if applied:
            log.info("dhcp lease database {where}: schema migrations {applied} applied",
                     where=self.where, applied=", ".join(applied))
        self._pool = pool
        leases: list[Lease] = []
        declines: list[Decline] = []
        for row in rows:
            record = _record(row)
            if isinstance(record, Decline):
                declines.append(record)
            else:
                leases.append(record)
        return leases, declines

    def apply(self, claims: Sequence[Claim], now: float) -> list[Answer]:
        """Apply *claims* in order in one statement (one round trip, one commit); the
        answers for the refused claims and the FIND lookups.  A deadlock with another
        server's batch runs the statement again (the claims are idempotent)."""
        pool = self._pool
        if pool is None:
            raise LeaseDatabaseDown("the lease database is not open")
        payload = Jsonb([_claim_json(claim) for claim in claims])
        for attempt in range(MAX_ATTEMPTS):
            try:
                with pool.connection() as conn:
                    rows = conn.execute(
                        "SELECT * FROM pxestack_dhcp_claims(%s, %s, %s)",
                        (payload, now, self.server), prepare=True,
                    ).fetchall()
                return [(int(row[0]), _record(row[1:])) for row in rows]
            except _RETRYABLE:
                if attempt == MAX_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def probe(self) -> None:
        """One trivial query; raises when the database cannot be reached."""
        pool = self._pool
        if pool is None:
            raise LeaseDatabaseDown("the lease database is not open")
        with pool.connection() as conn:
            conn.execute("SELECT 1")

    def lease_of(self, client: bytes) -> Lease | Decline | None:
        """The table's live binding of *client* (tests and tools)."""
        answers = self.apply([Claim(ClaimKind.FIND, client)], 0.0)
        return answers[0][1] if answers else None

    def close(self) -> None:
        """Close every connection."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None


Settle = Callable[[set[int], float], set[int]]


class LeaseGroupCommit:
    """Group commit of claims to a :class:`PostgresLeaseTable`, off the reactor thread.

    :param store: the shared lease store whose batches are committed.
    :param table: the table (anything with ``apply(claims, now)`` and ``probe()``; tests
        give an in-memory one).
    :param reactor: the reactor whose ``seconds()`` is ``now`` and that runs the callbacks.
    :param max_inflight: calls running at once (the pool's connections).
    :param run: runs a blocking function off the reactor thread and returns a Deferred
        (default: a thread pool of *max_inflight* threads, started by :meth:`start`).
    """

    def __init__(self, store: SharedLeaseStore, table: Any, reactor: Any, *,
                 max_inflight: int = 2,
                 run: Callable[..., defer.Deferred[Any]] | None = None) -> None:
        self.store = store
        self.table = table
        self.reactor = reactor
        self.max_inflight = max(1, max_inflight)
        self._threads: ThreadPool | None = None
        self._run = run
        self._inflight = 0
        self._waiting: list[tuple[ClaimBatch, defer.Deferred[Settle]]] = []
        self._waiting_claims = 0
        self._probe: task.LoopingCall | None = None
        self._probing = False
        #: Whether the table can be reached (False from the first failure until a probe
        #: succeeds).
        self.ok = True
        #: Why it cannot (the driver's message), or None.
        self.error: str | None = None
        #: Batches committed, claims applied, refused claims, batches refused.
        self.commits = 0
        self.claims = 0
        self.conflicts = 0
        self.failures = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread pool (unless *run* was given) and the probe timer."""
        if self._run is None and self._threads is None:
            self._threads = ThreadPool(minthreads=1, maxthreads=self.max_inflight,
                                       name="pxestack-dhcp-leases")
            self._threads.start()
        self._probe = task.LoopingCall(self._check)
        self._probe.clock = self.reactor
        self._probe.start(PROBE_INTERVAL, now=False)

    def stop(self) -> None:
        """Stop the probe and the thread pool (waiting for calls in flight)."""
        if self._probe is not None and self._probe.running:
            self._probe.stop()
        if self._threads is not None:
            self._threads.stop()
            self._threads = None

    def _in_thread(self, function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        if self._run is not None:
            return self._run(function, *args)
        assert self._threads is not None, "LeaseGroupCommit.start() was not called"
        return threads.deferToThreadPool(self.reactor, self._threads, function, *args)

    # -- the protocol's side ---------------------------------------------------------------

    def begin_batch(self) -> None:
        """Claims from now on belong to a new batch."""
        self.store.begin_batch()

    def start_datagram(self, index: int) -> None:
        """Claims from now on come from datagram *index* of the batch."""
        self.store.batch.start_datagram(index)

    def recorded(self, index: int) -> bool:
        """Whether datagram *index* claimed something (its replies wait for the commit)."""
        return self.store.batch.recorded(index)

    def commit(self) -> defer.Deferred[Settle] | None:
        """Send the batch's claims; None when it made none.

        The Deferred fires with the batch's settle function once the table has applied
        them, or fails with :class:`LeaseDatabaseDown` (the database is lost, or too many
        claims wait) or the driver's error."""
        batch = self.store.end_batch()
        if not len(batch):
            return None
        if not self.ok:
            self.failures += 1
            return defer.fail(LeaseDatabaseDown(self.error or "the lease database is down"))
        if self._waiting_claims + len(batch) > MAX_WAITING_CLAIMS:
            self.failures += 1
            return defer.fail(LeaseDatabaseDown("too many claims wait for the database"))
        done: defer.Deferred[Settle] = defer.Deferred()
        self._waiting.append((batch, done))
        self._waiting_claims += len(batch)
        self._pump()
        return done

    def _pump(self) -> None:
        while self._waiting and self._inflight < self.max_inflight:
            group = self._waiting
            self._waiting = []
            self._waiting_claims = 0
            claims: list[Claim] = []
            for batch, _ in group:
                claims.extend(batch.claims)
            self._inflight += 1
            now = self.reactor.seconds()
            call = self._in_thread(self.table.apply, claims, now)
            call.addCallbacks(self._applied, self._failed, callbackArgs=(group,),
                              errbackArgs=(group,))

    def _applied(self, answers: list[Answer],
                 group: list[tuple[ClaimBatch, defer.Deferred[Settle]]]) -> None:
        self._inflight -= 1
        self.commits += 1
        by_batch: list[list[Answer]] = [[] for _ in group]
        offsets: list[int] = []
        total = 0
        for batch, _ in group:
            offsets.append(total)
            total += len(batch)
        self.claims += total
        self.conflicts += sum(
            1 for index, _ in answers
            if 0 <= index < total and _kind_at(group, offsets, index) is not ClaimKind.FIND
        )
        for index, record in answers:
            position = _batch_at(offsets, index)
            if position is None or index >= total:
                continue
            by_batch[position].append((index - offsets[position], record))
        for (batch, done), mine in zip(group, by_batch, strict=True):
            done.callback(_settler(batch, mine))
        self._pump()

    def _failed(self, failure: Any,
                group: list[tuple[ClaimBatch, defer.Deferred[Settle]]]) -> None:
        self._inflight -= 1
        self.failures += len(group)
        error = failure.value
        if isinstance(error, _UNREACHABLE):
            self._lost(str(error).strip() or type(error).__name__)
            error = LeaseDatabaseDown(self.error or "the lease database is down")
        for _, done in group:
            done.errback(error)
        # Batches queued behind a lost database fail too (the probe brings it back).
        if not self.ok:
            waiting, self._waiting = self._waiting, []
            self._waiting_claims = 0
            for _, done in waiting:
                self.failures += 1
                done.errback(LeaseDatabaseDown(self.error or "the lease database is down"))
        self._pump()

    # -- health ------------------------------------------------------------------------------

    def _lost(self, reason: str) -> None:
        if self.ok:
            log.error("dhcp lease database {where} unreachable: {error}; no address is "
                      "offered or granted until it answers again",
                      where=getattr(self.table, "where", "?"), error=reason)
        self.ok = False
        self.error = reason

    def _check(self) -> None:
        if self.ok or self._probing:
            return
        self._probing = True

        def back(_: object) -> None:
            self._probing = False
            self.ok = True
            self.error = None
            log.info("dhcp lease database {where} reachable again",
                     where=getattr(self.table, "where", "?"))

        def still_down(failure: Any) -> None:
            self._probing = False
            self.error = str(failure.value).strip() or type(failure.value).__name__

        self._in_thread(self.table.probe).addCallbacks(back, still_down)

    def health(self) -> dict[str, Any]:
        """``lease_db_ok``, ``lease_db_error`` and the counters, for ``/admin/health``."""
        return {
            "lease_db_ok": self.ok,
            "lease_db_error": self.error,
            "lease_db_commits": self.commits,
            "lease_db_claims": self.claims,
            "lease_db_conflicts": self.conflicts,
            "lease_db_failed_batches": self.failures,
        }


def _batch_at(offsets: list[int], index: int) -> int | None:
    position = None
    for number, offset in enumerate(offsets):
        if index >= offset:
            position = number
        else:
            break
    return position


def _kind_at(group: list[tuple[ClaimBatch, Any]], offsets: list[int],
             index: int) -> ClaimKind | None:
    position = _batch_at(offsets, index)
    if position is None:
        return None
    claims = group[position][0].claims
    local = index - offsets[position]
    return claims[local].kind if local < len(claims) else None


def _settler(batch: ClaimBatch, answers: list[Answer]) -> Settle:
    def settle(replied: set[int], now: float) -> set[int]:
        return batch.settle(answers, replied, now)

    return settle


__all__ = [
    "MAX_ATTEMPTS",
    "PROBE_INTERVAL",
    "LeaseDatabaseDown",
    "LeaseGroupCommit",
    "LeaseStoreStartError",
    "PostgresLeaseTable",
]
