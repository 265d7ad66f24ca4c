"""Three pxestack servers on one PostgreSQL: a provisioning storm with a server ``kill -9``ed,
and one with PostgreSQL restarted, in the middle.

Each server is a real ``pxestack serve`` process (HTTP and provisioning, loopback only) with
``provision.store: {kind: postgresql}``; they share one cluster directory for the git
export.  The machines walk the HTTP part of a network boot (the iPXE script, first-stage
enrolment, the host-data POST, set_installed) with :func:`pxestack.simulate.http_request`,
spread over the three servers; a machine whose server does not answer, or answers 5xx,
tries the next one after a short pause, as a machine behind a relay with several helper
addresses (or a moved virtual address) would.  DHCP is not part of this storm: DHCP
leases are per server (docs/scale-out.md).

Checked after each storm: every machine provisioned (record ``installed``), the profile
quantities exact, no address given twice, and the git export complete and in order (one
commit per audit entry, ``Audit-Id`` strictly increasing, none missing).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
import pygit2
import pytest
from conftest import require
from pglab import SKIP_REASON, PostgresLab, pg_binaries

from pxestack.simulate import StormError, http_request

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1200),
]

#: Machines per storm (``PXESTACK_PG_STORM`` overrides, e.g. for a quick local run).
MACHINES = int(os.environ.get("PXESTACK_PG_STORM", "1000"))
CORE, WORKER = 3, MACHINES // 2
#: Machines started per second, and the most in flight at once.
RATE, CONCURRENCY = 150.0, 120
#: Bounds of one machine: attempts per request and the whole storm.
ATTEMPTS, STORM_DEADLINE = 60, 600.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """One ``pxestack serve`` process on the shared database."""

    def __init__(self, workdir: Path, name: str, dsn: str, cluster: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{name}.log"
        config = {
            "state_dir": str(workdir / name),
            "http": {"listen": f"127.0.0.1:{self.port}", "public_url": self.url},
            "provision": {
                "cluster_dir": str(cluster),
                "enrolment": "open",
                "first_contact_rate": 0,
                "api": {"token": "storm-admin-token-0123456789abcdefgh"},
                "network": {"ip_range": {"start": "198.18.0.10", "end": "198.18.7.250"}},
                "profiles": [{"name": "core", "quantity": CORE},
                             {"name": "worker", "quantity": WORKER}],
                "store": {"kind": "postgresql", "dsn": dsn, "pool": 4, "connect_timeout": 3},
            },
        }
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(json.dumps(config))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pxestack", "serve", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise AssertionError(f"server did not listen: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def lab():
    # Skipped locally without Debian's postgresql package; a failure in CI (strict mode).
    require(pg_binaries() is not None, SKIP_REASON)
    binaries = pg_binaries()
    assert binaries is not None
    server = PostgresLab(binaries)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def cluster(lab, tmp_path):
    dsn = lab.create_database("storm")
    shared = tmp_path / "cluster"
    servers = [Server(tmp_path, f"pxe{n}", dsn, shared) for n in range(3)]
    try:
        for server in servers:
            server.wait_ready()
        yield dsn, shared, servers
    finally:
        for server in servers:
            server.stop()


async def _request(servers, first, method, path, *, token=None, body=b"", ok=(200,)):
    """*method* *path* on server *first*, moving on to the next one on failure."""
    last = ""
    for attempt in range(ATTEMPTS):
        server = servers[(first + attempt) % len(servers)]
        try:
            status, payload = await http_request(
                method, server.url + path, source=None, token=token, body=body, timeout=20.0)
        except (OSError, TimeoutError, StormError) as exc:  # refused, cut, or silent
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status in ok:
                return payload
            last = f"{status} {payload[:160]!r}"
            if status < 500:
                raise AssertionError(f"{method} {path}: {last}")
        await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
    raise AssertionError(f"{method} {path}: no server answered ({last})")


async def _machine(index, servers, done):
    serial = f"pg-{index:05d}"
    mac = f"52:54:01:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:{index & 255:02x}"
    first = index % len(servers)
    script = await _request(
        servers, first, "GET",
        f"/ipxebootscript?serial={serial}&uuid={index:032x}&mac={mac.replace(':', '-')}")
    assert b"first-stage-script" in script, script[:200]
    installer = await _request(servers, first + 1, "GET", f"/first-stage-script/{serial}")
    token = next(line.split("=", 1)[1].strip("'\"")
                 for line in installer.decode().splitlines() if line.startswith("TOKEN="))
    host_data = {"Serial": serial, "NetDevs": [{"Name": "eno1", "MacAddress": mac}],
                 "ConnectedNIC": "eno1", "IPMIAddress": ""}
    await _request(servers, first + 2, "POST", "/final-ignition-config.json", token=token,
                   body=json.dumps(host_data).encode())
    await _request(servers, first, "PUT", f"/admin/host/{serial}/set_installed",
                   token=token, ok=(202,))
    done.append(serial)


def _storm(servers, during, trigger_at):
    """Run every machine; call *during* once *trigger_at* machines are done."""

    async def main():
        done: list[str] = []
        gate = asyncio.Semaphore(CONCURRENCY)
        triggered = False

        async def one(index):
            async with gate:
                await _machine(index, servers, done)

        async def watch():
            nonlocal triggered
            while len(done) < trigger_at:
                await asyncio.sleep(0.05)
            triggered = True
            print(f"\n{len(done)} machines done: interrupting", flush=True)
            await asyncio.to_thread(during)

        async def progress():
            while len(done) < MACHINES:
                await asyncio.sleep(10)
                print(f"{len(done)} machines done", flush=True)

        tasks = []
        watcher = asyncio.create_task(watch())
        reporter = asyncio.create_task(progress())
        for index in range(MACHINES):
            tasks.append(asyncio.create_task(one(index)))
            await asyncio.sleep(1.0 / RATE)
        results = await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), STORM_DEADLINE)
        await asyncio.wait_for(watcher, 120)
        reporter.cancel()
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, f"{len(failures)} machines failed, first: {failures[0]!r}"
        assert triggered
        return done

    return asyncio.run(main())


def _check(dsn: str, shared: Path, live) -> None:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT serial, record FROM hosts").fetchall()
        audit_ids = [r[0] for r in conn.execute("SELECT id FROM audit ORDER BY id")]
        claims = conn.execute("SELECT count(*) FROM address_claims").fetchone()[0]
    assert len(rows) == MACHINES
    assert {r[1]["State"] for r in rows} == {"installed"}
    profiles = Counter(r[1]["Profile"] for r in rows)
    assert profiles == {"core": CORE, "worker": WORKER, "default": MACHINES - CORE - WORKER}
    addresses = [r[1]["InternalAddr"] for r in rows]
    assert len(set(addresses)) == MACHINES and claims == MACHINES
    # The git export catches up (the servers export every two seconds) and is in order.
    deadline = time.monotonic() + 180
    while True:
        exported = _exported_ids(shared)
        if exported and exported[-1] == audit_ids[-1]:
            break
        assert time.monotonic() < deadline, (
            f"git export behind: {exported[-1:]} of {audit_ids[-1]}; "
            + " | ".join(s.log.read_text()[-600:] for s in live))
        time.sleep(0.5)
    assert exported == audit_ids


def _exported_ids(shared: Path) -> list[int]:
    if not (shared / ".git").exists():
        return []
    repo = pygit2.Repository(str(shared))
    if repo.head_is_unborn:
        return []
    walker = repo.walk(repo.head.target,
                       pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE)
    ids = []
    for commit in walker:
        found = re.search(r"^Audit-Id: ([0-9]+)$", commit.message, re.MULTILINE)
        if found:
            ids.append(int(found.group(1)))
    return ids


def test_storm_with_a_server_killed(cluster):
    dsn, shared, servers = cluster
    started = time.monotonic()
    done = _storm(servers, servers[0].kill, trigger_at=MACHINES // 3)
    elapsed = time.monotonic() - started
    assert len(done) == MACHINES
    assert servers[0].process.returncode == -signal.SIGKILL
    _check(dsn, shared, servers[1:])
    print(f"\n{MACHINES} machines on three servers, one killed: {elapsed:.1f} s")


def test_storm_with_postgresql_restarted(lab, cluster):
    dsn, shared, servers = cluster

    def restart():
        lab.stop()
        time.sleep(2.0)  # the servers notice and refuse changes meanwhile
        lab.start()

    started = time.monotonic()
    done = _storm(servers, restart, trigger_at=MACHINES // 3)
    elapsed = time.monotonic() - started
    assert len(done) == MACHINES
    assert all(s.process.poll() is None for s in servers)
    _check(dsn, shared, servers)
    print(f"\n{MACHINES} machines on three servers, PostgreSQL restarted: {elapsed:.1f} s")
