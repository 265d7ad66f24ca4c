"""A throw-away PostgreSQL server for tests, from Debian's ``postgresql`` package.

:class:`PostgresLab` runs ``initdb`` into a temporary directory and ``postgres`` listening
only on a unix socket in that directory (no TCP port, so concurrent test runs never
collide).  As root the server runs as ``nobody`` (PostgreSQL refuses to run as root);
``postgres`` is started directly (``Popen(user=...)``), so the PID the lab holds is the
server's own and :meth:`stop` ends exactly that process.  :func:`pg_binaries` is None when
the package is not installed, and the tests using the lab skip with that reason.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

#: Where Debian installs the server binaries (newest version first).
_DEBIAN_BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
SKIP_REASON = (
    "PostgreSQL server binaries (initdb, postgres) are not installed; "
    "install Debian's postgresql package (the CI does)"
)


def pg_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, or None."""
    for directory in _DEBIAN_BINARIES:
        if (directory / "initdb").exists() and (directory / "postgres").exists():
            return directory
    return None


class PostgresLab:
    """One PostgreSQL server in a temporary directory (see the module documentation)."""

    def __init__(self, binaries: Path, *, user: str = "pxestack") -> None:
        self.binaries = binaries
        self.superuser = user
        self.dir = Path(tempfile.mkdtemp(prefix="pxpg-"))
        self.data = self.dir / "data"
        self.process: subprocess.Popen[bytes] | None = None
        self.run_as: str | None = "nobody" if os.geteuid() == 0 else None
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.dir, 0o700)
        self.log = self.dir / "postgres.log"
        subprocess.run(
            [str(binaries / "initdb"), "-D", str(self.data), "-U", user, "--auth=trust",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, user=self.run_as, cwd=self.dir, timeout=120,
        )

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for *dbname* over the unix socket."""
        return f"host={self.dir} port=5432 user={self.superuser} dbname={dbname}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it accepts connections."""
        assert self.process is None
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.log, entry.pw_uid, entry.pw_gid)
        self.process = subprocess.Popen(
            [str(self.binaries / "postgres"), "-D", str(self.data), "-k", str(self.dir),
             "-c", "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=200",
             "-c", "full_page_writes=off", "-c", "synchronous_commit=off"],
            stdout=log, stderr=log, user=self.run_as, cwd=self.dir,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL did not start: {self.log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def stop(self, *, immediate: bool = False) -> None:
        """Stop the server by its PID (fast shutdown; *immediate*: like a crash)."""
        if self.process is None:
            return
        process, self.process = self.process, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGQUIT if immediate else signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def create_database(self, name: str) -> str:
        """Create database *name*; return its DSN."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.dsn(name)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_lab() -> Iterator[PostgresLab]:
    """A started :class:`PostgresLab`, stopped on exit (the caller has checked
    :func:`pg_binaries`)."""
    binaries = pg_binaries()
    assert binaries is not None
    server = PostgresLab(binaries)
    try:
        server.start()
        yield server
    finally:
        server.close()
