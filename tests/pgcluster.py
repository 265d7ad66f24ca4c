"""Several ``pxestack serve`` processes and a boot storm against them.

Shared by the three-server system test (``tests/system/test_pg_cluster.py``) and the
scale-out benchmark (``benchmarks/pgstorm.py``).  Each server is a real process serving HTTP
and provisioning on loopback, with the git-directory store or the PostgreSQL store.  The
machines walk the HTTP part of a network boot (the iPXE script, first-stage enrolment, the
host-data POST, set_installed) with :func:`pxestack.simulate.http_request`, spread over the
servers; a machine whose server does not answer, or answers 5xx, tries the next one after
a short pause, as a machine behind a relay with several helper addresses would.  Every
wait is bounded: attempts per request, machines in flight, the whole storm.

With ``dhcp=True`` the servers also run pxestack's DHCP server with their leases on the
same PostgreSQL (``dhcp.lease_store: postgresql``), each on its own loopback address, and
every machine first gets its address through a DHCP relay agent (:class:`Relay`, one per
rack, on its own loopback address and port 67, ``giaddr`` set) that forwards each
DISCOVER and REQUEST to every server, as a relay with one helper address per server does:
all servers answer, the first OFFER wins, and the servers share one pool through the table.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from pxestack.simulate import DhcpSocket, Machine, StormError, http_request
from pxestack.simulate import _request_options as request_options
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

ADMIN_TOKEN = "storm-admin-token-0123456789abcdefgh"
#: Attempts per request (over every server) before a machine gives up: about two minutes
#: of retries, as a machine's firmware or installer keeps retrying.  While PostgreSQL
#: restarts, a busy server's connection gate can refuse new requests ("server busy") for
#: more than a minute on a loaded 2-vCPU machine.
ATTEMPTS = 120
#: Seconds one storm may take at most.
STORM_DEADLINE = 900.0


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


#: The racks of the DHCP storm: each relay's address (giaddr) and its pool.
RACKS = (("127.1.0.1", "127.1.0.0/16", "127.1.1.0", "127.1.8.255"),
         ("127.2.0.1", "127.2.0.0/16", "127.2.1.0", "127.2.8.255"))
#: DORA attempts per machine before it gives up, and the waits of one attempt's sends.
DORA_ATTEMPTS = 12
DHCP_TIMEOUTS = (0.5, 1.0, 2.0)


def plan(machines: int) -> dict[str, int]:
    """The profile quantities of a storm of *machines*: 3 ``core``, half ``worker``."""
    core, worker = 3, machines // 2
    return {"core": core, "worker": worker, "default": machines - core - worker}


class Server:
    """One ``pxestack serve`` process; *dsn* None: the git-directory store."""

    def __init__(self, workdir: Path, name: str, machines: int, cluster: Path,
                 dsn: str | None = None, *, dhcp_address: str | None = None) -> None:
        self.port = free_port()
        self.dhcp_address = dhcp_address
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
        config: dict[str, Any] = {
            "state_dir": str(workdir / name),
            "http": {"listen": f"127.0.0.1:{self.port}", "public_url": self.url},
            "provision": provision,
        }
        if dhcp_address is not None:
            assert dsn is not None, "shared leases need the database"
            config["dhcp"] = {
                "listen": f"{dhcp_address}:67",
                "server_address": dhcp_address,
                "relays": [rack[0] for rack in RACKS],
                "pools": [{"subnet": subnet, "start": start, "end": end}
                          for _, subnet, start, end in RACKS],
                "lease_store": {"kind": "postgresql", "pool": 2, "connect_timeout": 3,
                                "server_name": name},
                "admission": {"enabled": False},
                "raw_replies": False,
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


class Relay(DhcpSocket):
    """A DHCP relay agent on ``giaddr``:67 forwarding to every server (one helper address
    per server); replies come back to it and are routed to the waiting machine by xid."""

    def __init__(self, giaddr: str, servers: Sequence[tuple[str, int]]) -> None:
        super().__init__(servers[0], also=servers[1:])
        self.giaddr = giaddr


async def _dora(relay: Relay, index: int, mac: bytes) -> DhcpMessage:
    """DISCOVER, first OFFER, REQUEST to its server, ACK; again after a NAK or silence."""
    machine = Machine(index, mac, index.to_bytes(16, "big"), f"pg-{index:05d}")
    giaddr = IPv4Address(relay.giaddr)
    last = ""
    for attempt in range(DORA_ATTEMPTS):
        xid = random.getrandbits(32)
        try:
            discover = DhcpMessage(
                op=c.BOOTREQUEST, xid=xid, chaddr=mac, hops=1, giaddr=giaddr,
                options=DhcpOptions(request_options(machine, True, c.DHCPDISCOVER)))
            offer = await relay.exchange(encode_dhcp(discover), xid, (c.DHCPOFFER,),
                                         DHCP_TIMEOUTS)
            server_id = offer.options.raw(c.OPT_SERVER_ID)
            assert server_id is not None
            request = DhcpMessage(
                op=c.BOOTREQUEST, xid=xid, chaddr=mac, hops=1, giaddr=giaddr,
                options=DhcpOptions([*request_options(machine, True, c.DHCPREQUEST),
                                     (c.OPT_REQUESTED_IP, offer.yiaddr.packed),
                                     (c.OPT_SERVER_ID, server_id)]))
            reply = await relay.exchange(encode_dhcp(request), xid, (c.DHCPACK, c.DHCPNAK),
                                         DHCP_TIMEOUTS)
        except StormError as exc:
            last = str(exc)
        else:
            if reply.message_type == c.DHCPACK:
                return reply
            last = "NAK"
        await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))
    raise AssertionError(f"machine {index}: no lease after {DORA_ATTEMPTS} attempts ({last})")


async def _machine(index: int, servers: Sequence[Server], done: list[str],
                   relays: Sequence[Relay] = (), acks: dict[str, Any] | None = None) -> None:
    serial = f"pg-{index:05d}"
    mac = f"52:54:01:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:{index & 255:02x}"
    first = index % len(servers)
    if relays:
        ack = await _dora(relays[index % len(relays)], index, bytes.fromhex(mac.replace(":", "")))
        assert acks is not None
        acks[mac] = (str(ack.yiaddr), str(IPv4Address(ack.options.raw(c.OPT_SERVER_ID) or
                                                         bytes(4))))
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
    progress: Callable[[str], object] = print, acks: dict[str, Any] | None = None,
) -> tuple[list[str], float]:
    """Provision *machines* machines; call *during* (in a thread) once *trigger_at* are done.

    With *acks* (a dict) every machine first gets its address from the servers' DHCP
    through the relays of :data:`RACKS`; *acks* maps each machine's MAC to the address
    and server identifier of the ACK it kept.  Returns the serials in the order they
    finished and the seconds from the first arrival to the last set_installed.  Raises
    AssertionError naming the failures.
    """

    async def main() -> tuple[list[str], float]:
        done: list[str] = []
        gate = asyncio.Semaphore(concurrency)
        relays: list[Relay] = []
        if acks is not None:
            targets = [(s.dhcp_address, 67) for s in servers if s.dhcp_address is not None]
            loop = asyncio.get_running_loop()
            for giaddr, *_ in RACKS:
                _, relay = await loop.create_datagram_endpoint(
                    lambda giaddr=giaddr: Relay(giaddr, targets),
                    local_addr=(giaddr, 67))
                relays.append(relay)

        async def one(index: int) -> None:
            async with gate:
                await _machine(index, servers, done, relays, acks)

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
        for relay in relays:
            if relay.transport is not None:
                relay.transport.close()
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise AssertionError(f"{len(failures)} machines failed, first: {failures[0]!r}")
        return done, elapsed

    return asyncio.run(main())
