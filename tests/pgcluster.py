"""Several ``pxestack serve`` processes and a provisioning storm against them.

Shared by the three-server system test (``tests/system/test_pg_cluster.py``) and the
scale-out benchmark (``benchmarks/pgstorm.py``).  Each server is a real process serving HTTP
and provisioning on loopback, with the git-directory store or the PostgreSQL store.  The
machines walk the HTTP part of a network boot (the iPXE script, first-stage enrolment, the
host-data POST, set_installed) with :func:`pxestack.simulate.http_request`, spread over the
servers; a machine whose server does not answer, or answers 5xx, tries the next one after
a short pause, as a machine behind a relay with several helper addresses would.  Every
wait is bounded: attempts per request, machines in flight, the whole storm.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pxestack.simulate import StormError, http_request

ADMIN_TOKEN = "storm-admin-token-0123456789abcdefgh"
#: Attempts per request (over every server) before a machine gives up.
ATTEMPTS = 60
#: Seconds one storm may take at most.
STORM_DEADLINE = 900.0


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def plan(machines: int) -> dict[str, int]:
    """The profile quantities of a storm of *machines*: 3 ``core``, half ``worker``."""
    core, worker = 3, machines // 2
    return {"core": core, "worker": worker, "default": machines - core - worker}


class Server:
    """One ``pxestack serve`` process; *dsn* None: the git-directory store."""

    def __init__(self, workdir: Path, name: str, machines: int, cluster: Path,
                 dsn: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{name}.log"
        quantities = plan(machines)
        provision: dict[str, Any] = {
            "cluster_dir": str(cluster),
            "enrolment": "open",
            "first_contact_rate": 0,
            "api": {"token": ADMIN_TOKEN},
            "network": {"ip_range": {"start": "198.18.0.10", "end": "198.18.15.250"}},
            "profiles": [{"name": "core", "quantity": quantities["core"]},
                         {"name": "worker", "quantity": quantities["worker"]}],
        }
        if dsn is not None:
            provision["store"] = {"kind": "postgresql", "dsn": dsn, "pool": 4,
                                  "connect_timeout": 3}
        config = {
            "state_dir": str(workdir / name),
            "http": {"listen": f"127.0.0.1:{self.port}", "public_url": self.url},
            "provision": provision,
        }
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(json.dumps(config))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pxestack", "serve", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until the HTTP port accepts connections."""
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
        """``kill -9`` the server (by its PID)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM), or kill it after 30 s."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


async def _request(servers: Sequence[Server], first: int, method: str, path: str, *,
                   token: str | None = None, body: bytes = b"",
                   ok: tuple[int, ...] = (200,)) -> bytes:
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


async def _machine(index: int, servers: Sequence[Server], done: list[str]) -> None:
    serial = f"pg-{index:05d}"
    mac = f"52:54:01:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:{index & 255:02x}"
    first = index % len(servers)
    script = await _request(
        servers, first, "GET",
        f"/ipxebootscript?serial={serial}&uuid={index:032x}&mac={mac.replace(':', '-')}")
    if b"first-stage-script" not in script:
        raise AssertionError(f"{serial}: unexpected script {script[:200]!r}")
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


def storm(
    servers: Sequence[Server], machines: int, *, rate: float = 150.0, concurrency: int = 120,
    during: Callable[[], object] | None = None, trigger_at: int = 0,
    progress: Callable[[str], object] = print,
) -> tuple[list[str], float]:
    """Provision *machines* machines; call *during* (in a thread) once *trigger_at* are done.

    Returns the serials in the order they finished and the seconds from the first arrival
    to the last set_installed.  Raises AssertionError naming the failures.
    """

    async def main() -> tuple[list[str], float]:
        done: list[str] = []
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            async with gate:
                await _machine(index, servers, done)

        async def watch() -> None:
            if during is None:
                return
            while len(done) < trigger_at:
                await asyncio.sleep(0.05)
            progress(f"{len(done)} machines done: interrupting")
            await asyncio.to_thread(during)

        async def report() -> None:
            while len(done) < machines:
                await asyncio.sleep(10)
                progress(f"{len(done)} machines done")

        started = time.monotonic()
        watcher = asyncio.create_task(watch())
        reporter = asyncio.create_task(report())
        tasks = []
        for index in range(machines):
            tasks.append(asyncio.create_task(one(index)))
            await asyncio.sleep(1.0 / rate)
        results = await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), STORM_DEADLINE)
        elapsed = time.monotonic() - started
        reporter.cancel()
        await asyncio.wait_for(watcher, 120)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise AssertionError(f"{len(failures)} machines failed, first: {failures[0]!r}")
        return done, elapsed

    return asyncio.run(main())
