"""DHCP cases: perfdhcp from the client namespace against pxestack, Kea and dnsmasq.

Method (docs/benchmarks.md, after docs/reference/benchmark-method.md):

* perfdhcp runs in the client namespace with 198.18.0.2/15 on ``pxc0``: it refuses to run
  without an address and always behaves like a relay agent (``giaddr=198.18.0.2``, from
  port 67).  10 000 simulated clients (``-R 10000``), option 60 ``PXEClient``.
* Every server hands out 198.19.0.1-198.19.255.254 (mask 255.254.0.0) from
  198.18.0.1/15, with a 7-day lease time, its lease database on tmpfs and per-packet
  logging off.  dnsmasq runs with ``--no-ping`` (its ICMP probe costs up to 3 s per client).
* A server that broadcasts its reply instead of unicasting to giaddr:67 would be missed by
  perfdhcp's unicast-bound socket, so an nftables DNAT rule in the client namespace maps
  ``255.255.255.255:68`` and ``198.19.255.255:68`` to ``198.18.0.2:67``.
* An nftables counter on the client's ingress counts the OFFERs, ACKs and NAKs the server
  sent (matching option 53 as the first option, where all three servers put it), because
  perfdhcp counts a NAK as a plain drop.
* Sustained rate: step the target rate up until a step fails, then bisect between the last
  passing and the first failing rate.  A step passes when at most 1 % of the exchanges stay
  incomplete and the goodput is at least 95 % of the target.  DORA mode completes full
  exchanges; DO mode (``-i``) stops at the OFFER, which is what a proxyDHCP answers.
* Each repetition starts a fresh server with an empty lease database.
* ``pxestack-pg`` and ``kea-pg``: pxestack with ``dhcp.lease_store: postgresql`` and Kea
  with its PostgreSQL lease backend (``lease-database: {type: postgresql}``, schema by
  ``kea-admin db-init pgsql``), against one PostgreSQL of Debian's packages started for the
  run (tests/pglab.py: a temporary directory, a unix socket, ``fsync`` and
  ``synchronous_commit`` off, the same for both), a fresh database per repetition.  DORA
  only: that is where a lease is written.
* ``python-floor`` (benchmarks/floor_dhcp.py) is a reference, not a peer: a measuring stick
  that does the least possible Python work per packet (blocking ``recvfrom``, a few slices
  into a prebuilt reply, one dict lookup, ``sendto``; no RFC 2131 rules, no lease database,
  single thread).  It runs after the real servers under the same method, and no target
  compares against it; its rate is the ceiling pure Python reaches on this machine, so a
  peer the floor cannot match is out of reach for pxestack too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.common import PXESTACK, Results, log, netlab, scratch_dir
from benchmarks.peers import Peers

POOL_START = "198.19.0.1"
POOL_END = "198.19.255.254"
POOL_MASK = "255.254.0.0"
SUBNET = "198.18.0.0/15"
LEASE_SECONDS = 7 * 24 * 3600
CLIENTS = 10_000
#: Option 60 "PXEClient" (hex), so servers that answer only PXE clients answer too.
VENDOR_CLASS_OPTION = "60,505845436c69656e74"
COUNTER_TABLE = "pxb_dhcp_count"
NAT_TABLE = "pxb_dhcp_nat"
#: perfdhcp waits this long (µs) after the period for late answers.
EXIT_WAIT_US = 300_000


#: perfdhcp ``-g`` modes.  In "multi" (perfdhcp's default with 2+ CPUs, the method of
#: docs/reference/benchmark-method.md) a separate receiver thread spins: measured at 117 % CPU on
#: this 2-vCPU VM, it leaves the server under test about 0.8 of a CPU, which caps the servers that
#: need more than that.  "single" keeps perfdhcp on one CPU (about 98 %) and leaves the other to the
#: server; it is offered as a cross-check of the server's own capacity.
PERFDHCP_THREAD_MODES = ("multi", "single")


@dataclass(frozen=True)
class SearchPlan:
    """How a sustained rate is searched: the steps, the period and the bisections."""

    dora_rates: tuple[int, ...]
    do_rates: tuple[int, ...]
    period: int
    bisections: int
    unthrottled: bool
    #: perfdhcp's ``-g`` thread mode: "multi" (its default on 2+ CPUs, the method of
    #: docs/reference/benchmark-method.md) or "single" (see :data:`PERFDHCP_THREAD_MODES`).
    perfdhcp_threads: str = "multi"

    @classmethod
    def full(cls) -> SearchPlan:
        """The reference method: 4 s steps, two bisections, an unthrottled run."""
        return cls(
            dora_rates=(250, 500, 1000, 2000, 4000, 8000, 16000),
            do_rates=(1000, 2000, 4000, 8000, 16000, 32000),
            period=4,
            bisections=2,
            unthrottled=True,
        )

    @classmethod
    def quick(cls) -> SearchPlan:
        """A coarser search for ``--quick``: 2 s steps, no unthrottled run."""
        return cls(
            dora_rates=(500, 1000, 2000, 4000, 8000),
            do_rates=(1000, 2000, 4000, 8000, 16000, 32000),
            period=2,
            bisections=2,
            unthrottled=False,
        )


@dataclass
class PerfdhcpRun:
    """One perfdhcp invocation and what it measured."""

    target_rate: int | None
    period: float
    discover_sent: int = 0
    offers_received: int = 0
    requests_sent: int = 0
    acks_received: int = 0
    do_avg_ms: float | None = None
    do_max_ms: float | None = None
    ra_avg_ms: float | None = None
    ra_max_ms: float | None = None
    #: Replies the server sent, counted by nftables on the client's ingress.
    server_offers: int = 0
    server_acks: int = 0
    server_naks: int = 0
    exit_status: int = 0
    full_exchange: bool = True

    @property
    def completed(self) -> int:
        """Exchanges that completed: ACKs in DORA mode, OFFERs in DO mode."""
        return self.acks_received if self.full_exchange else self.offers_received

    @property
    def incomplete_fraction(self) -> float:
        """Share of started exchanges that did not complete."""
        if self.discover_sent == 0:
            return 1.0
        return max(self.discover_sent - self.completed, 0) / self.discover_sent

    @property
    def goodput(self) -> float:
        """Completed exchanges per second of the test period."""
        return self.completed / self.period

    @property
    def avg_latency_ms(self) -> float | None:
        """Average latency of a whole exchange (DO plus RA in DORA mode)."""
        if self.do_avg_ms is None:
            return None
        if not self.full_exchange:
            return self.do_avg_ms
        return self.do_avg_ms + (self.ra_avg_ms or 0.0)

    @property
    def max_latency_ms(self) -> float | None:
        """The largest single-message latency perfdhcp saw."""
        found = [v for v in (self.do_max_ms, self.ra_max_ms) if v is not None]
        return max(found) if found else None

    def passes(self) -> bool:
        """≤ 1 % incomplete and goodput ≥ 95 % of the target (the reference method)."""
        if self.target_rate is None:
            return False
        return self.incomplete_fraction <= 0.01 and self.goodput >= 0.95 * self.target_rate

    def to_json(self) -> dict[str, Any]:
        """The raw counters plus the derived figures."""
        data = asdict(self)
        data.update(
            incomplete_fraction=self.incomplete_fraction,
            goodput=self.goodput,
            avg_latency_ms=self.avg_latency_ms,
            max_latency_ms=self.max_latency_ms,
            passed=self.passes(),
        )
        return data


_SECTION = re.compile(r"\*\*\*Statistics for: ([A-Z-]+)\*\*\*")


def _number(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else None


def parse_perfdhcp(output: str, run: PerfdhcpRun) -> None:
    """Fill *run* from perfdhcp's final report (the ``Statistics for`` sections)."""
    parts = _SECTION.split(output)
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    discover = sections.get("DISCOVER-OFFER", "")
    request = sections.get("REQUEST-ACK", "")
    run.discover_sent = int(_number(r"^sent packets: (\d+)", discover) or 0)
    run.offers_received = int(_number(r"^received packets: (\d+)", discover) or 0)
    run.requests_sent = int(_number(r"^sent packets: (\d+)", request) or 0)
    run.acks_received = int(_number(r"^received packets: (\d+)", request) or 0)
    run.do_avg_ms = _number(r"^avg delay: ([0-9.]+) ms", discover)
    run.do_max_ms = _number(r"^max delay: ([0-9.]+) ms", discover)
    run.ra_avg_ms = _number(r"^avg delay: ([0-9.]+) ms", request)
    run.ra_max_ms = _number(r"^max delay: ([0-9.]+) ms", request)


class DhcpServer:
    """A DHCP server under test: how to check for it and how to start it in the lab."""

    name = ""
    #: Whether the server keeps its leases in the run's PostgreSQL (:class:`PgLeases`).
    postgresql = False
    #: The modes measured: DORA (True) and DO (False).
    modes: tuple[bool, ...] = (True, False)
    #: The run's PostgreSQL, set by :func:`run_dhcp` for the servers that need it.
    database: PgLeases | None = None

    def unavailable(self, peers: Peers) -> str | None:
        """Why this server cannot run here, or None."""
        raise NotImplementedError

    def start(self, lab: Any, workdir: Path) -> subprocess.Popen[Any]:
        """Start the server in ``lab.server`` with its state in *workdir*."""
        raise NotImplementedError


class KeaServer(DhcpServer):
    """ISC Kea 2.x (``kea-dhcp4``), single-threaded default, memfile lease DB on tmpfs."""

    name = "kea"

    def __init__(self, peers: Peers) -> None:
        self.executable = peers.path("kea") or "kea-dhcp4"
        #: Kea's ``lease-database`` (None: memfile on tmpfs).
        self.lease_database: dict[str, Any] | None = None

    def unavailable(self, peers: Peers) -> str | None:
        """Kea needs kea-dhcp4."""
        return peers.require("kea")

    def start(self, lab: Any, workdir: Path) -> subprocess.Popen[Any]:
        """Write a kea-dhcp4 config and start it in the foreground."""
        config = {
            "Dhcp4": {
                # The default raw sockets receive the relayed broadcast perfdhcp sends.
                "interfaces-config": {"interfaces": [lab.server.ifname]},
                "lease-database": self.lease_database or {
                    "type": "memfile",
                    "persist": True,
                    "name": str(workdir / "kea-leases4.csv"),
                    "lfc-interval": 0,
                },
                "valid-lifetime": LEASE_SECONDS,
                "subnet4": [{"subnet": SUBNET, "pools": [{"pool": f"{POOL_START} - {POOL_END}"}]}],
                "loggers": [
                    {
                        "name": "kea-dhcp4",
                        "severity": "WARN",
                        "output_options": [{"output": str(workdir / "kea.log")}],
                    }
                ],
            }
        }
        path = workdir / "kea-dhcp4.json"
        path.write_text(json.dumps(config, indent=2))
        env = {
            "KEA_LOCKFILE_DIR": str(workdir),
            "KEA_PIDFILE_DIR": str(workdir),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        }
        process: subprocess.Popen[Any] = lab.server.popen(
            [self.executable, "-c", str(path)],
            env=env,
            stdout=(workdir / "stdout.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        return process


class PgLeases:
    """The run's PostgreSQL (tests/pglab.py) and a fresh database per repetition."""

    def __init__(self) -> None:
        tests_dir = str(Path(__file__).resolve().parent.parent / "tests")
        if tests_dir not in sys.path:
            sys.path.insert(0, tests_dir)
        import pglab

        binaries = pglab.pg_binaries()
        if binaries is None:
            raise RuntimeError(pglab.SKIP_REASON)
        self.lab = pglab.PostgresLab(binaries)
        self.lab.start()
        self.count = 0

    def fresh(self, prefix: str) -> str:
        """Create an empty database; its name."""
        self.count += 1
        name = f"{prefix}{self.count}"
        self.lab.create_database(name)
        return name

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.lab.close()


def _postgresql_missing() -> str | None:
    tests_dir = str(Path(__file__).resolve().parent.parent / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    try:
        import pglab
    except ImportError as exc:  # psycopg missing
        return f"psycopg is not installed ({exc})"
    return None if pglab.pg_binaries() is not None else pglab.SKIP_REASON


class KeaPgServer(KeaServer):
    """Kea 2.x with its PostgreSQL lease backend (the shared-lease-database model)."""

    name = "kea-pg"
    postgresql = True
    modes = (True,)

    def unavailable(self, peers: Peers) -> str | None:
        """Kea, kea-admin (with psql) and a PostgreSQL to run."""
        import shutil

        return (peers.require("kea") or _postgresql_missing()
                or (None if shutil.which("kea-admin") and shutil.which("psql")
                    else "missing kea-admin or psql"))

    def start(self, lab: Any, workdir: Path) -> subprocess.Popen[Any]:
        """A fresh database with Kea's schema (``kea-admin db-init pgsql``), then Kea."""
        assert self.database is not None
        name = self.database.fresh("kea")
        socket_dir = str(self.database.lab.dir)
        subprocess.run(["kea-admin", "db-init", "pgsql", "-u", self.database.lab.superuser,
                        "-n", name, "-h", socket_dir],
                       check=True, capture_output=True, timeout=120)
        self.lease_database = {"type": "postgresql", "name": name, "host": socket_dir,
                               "user": self.database.lab.superuser}
        return super().start(lab, workdir)


class PxestackPgServer(DhcpServer):
    """pxestack with ``dhcp.lease_store: postgresql`` (see :class:`PxestackDhcpServer`)."""

    name = f"{PXESTACK}-pg"
    postgresql = True
    modes = (True,)

    def unavailable(self, peers: Peers) -> str | None:
        """A PostgreSQL to run and psycopg."""
        return _postgresql_missing()

    def start(self, lab: Any, workdir: Path) -> subprocess.Popen[Any]:
        """pxestack's benchmark configuration, leases in a fresh database."""
        assert self.database is not None
        name = self.database.fresh("pxestack")
        dsn = self.database.lab.dsn(name)
        return PxestackDhcpServer().start(lab, workdir, lease_store=dsn)


class DnsmasqDhcpServer(DhcpServer):
    """dnsmasq as a DHCP server only (``--port=0``), ``--no-ping``, quiet, leases on tmpfs."""

    name = "dnsmasq"

    def __init__(self, peers: Peers) -> None:
        self.executable = peers.path("dnsmasq") or "dnsmasq"

    def unavailable(self, peers: Peers) -> str | None:
        """dnsmasq needs its binary."""
        return peers.require("dnsmasq")

    def start(self, lab: Any, workdir: Path) -> subprocess.Popen[Any]:
        """Start dnsmasq in the foreground with no configuration file."""
        argv = [
            self.executable,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            f"--interface={lab.server.ifname}",
            "--bind-interfaces",
            f"--dhcp-range={POOL_START},{POOL_END},{POOL_MASK},{LEASE_SECONDS}",
            f"--dhcp-leasefile={workdir / 'dnsmasq.leases'}",
            "--dhcp-lease-max=200000",
            "--dhcp-authoritative",
            "--no-ping",
            "--quiet-dhcp",
            "--pid-file",
            "--user=root",
            "--log-facility=-",
        ]
        process: subprocess.Popen[Any] = lab.server.popen(
            argv, stdout=(workdir / "stdout.log").open("wb"), stderr=subprocess.STDOUT
        )
        return process


class PxestackDhcpServer(DhcpServer):
    """pxestack's full DHCP server via ``pxestack serve --config`` (DHCP section only)."""

    name = PXESTACK

    def unavailable(self, peers: Peers) -> str | None:
        """pxestack needs its DHCP server module (under construction at times)."""
        import importlib.util

        if importlib.util.find_spec("pxestack.dhcp.protocol") is None:
            return "pxestack.dhcp.protocol does not exist yet"
        return None

    def start(self, lab: Any, workdir: Path, *,
              lease_store: str | None = None) -> subprocess.Popen[Any]:
        """Write a DHCP-only config (leases under *workdir* on tmpfs, or in the database
        *lease_store* names) and serve it."""
        config = (
            f"state_dir: {workdir / 'state'}\n"
            "log_level: warn\n"
            "dhcp:\n"
            "  mode: server\n"
            f"  interfaces: [{lab.server.ifname}]\n"
            f"  server_address: {lab.server.ip}\n"
            f"  lease_time: {LEASE_SECONDS}\n"
            "  proxy_port: 0\n"
            # perfdhcp always acts as a relay agent (giaddr = the client's address).
            f"  relays: [{lab.client.ip}]\n"
            # perfdhcp -i (DO mode) never REQUESTs, so every OFFER stays outstanding for
            # offer_hold seconds; the default cap of 4096 outstanding offers (the defence
            # against DISCOVER floods) would then limit DO mode to
            # 4096 per test period.  10 000 simulated clients hold at most 10 000 offers.
            f"  max_offers: {CLIENTS + 1024}\n"
            # perfdhcp's clients send PXEClient but never boot further than their DHCP, so
            # boot-storm admission (which bounds machines between their first OFFER and
            # their next boot stage) would hold all but max_starting of them: this
            # benchmark measures the DHCP server alone, as Kea and dnsmasq are measured.
            "  admission:\n"
            "    enabled: false\n"
            "  pools:\n"
            f"    - subnet: {SUBNET}\n"
            f"      start: {POOL_START}\n"
            f"      end: {POOL_END}\n"
        )
        if lease_store is not None:
            config += (
                "  lease_store:\n"
                "    kind: postgresql\n"
                f"    dsn: '{lease_store}'\n"
                "    pool: 2\n"
            )
        path = workdir / "pxestack.yaml"
        path.write_text(config)
        process: subprocess.Popen[Any] = lab.server.popen(
            netlab().pxestack_argv("serve", "--config", str(path)),
            stdout=(workdir / "stdout.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        return process


#: The measuring-stick server of :class:`FloorDhcpServer`.
FLOOR_SCRIPT = Path(__file__).resolve().with_name("floor_dhcp.py")


class FloorDhcpServer(DhcpServer):
    """``python-floor``: benchmarks/floor_dhcp.py, the least Python work per packet.

    A reference for what pure Python can reach here, not a DHCP server and not a target peer.
    """

    name = "python-floor"

    def unavailable(self, peers: Peers) -> str | None:
        """Needs only this interpreter and the script next to this module."""
        return None if FLOOR_SCRIPT.is_file() else f"{FLOOR_SCRIPT} is missing"

    def start(self, lab: Any, workdir: Path) -> subprocess.Popen[Any]:
        """Run the script with this interpreter; it answers perfdhcp's relay (the client)."""
        argv = [
            sys.executable, str(FLOOR_SCRIPT), lab.server.ip, POOL_START, POOL_END,
            lab.client.ip, "--netmask", POOL_MASK, "--lease-time", str(LEASE_SECONDS),
            "--interface", lab.server.ifname,
        ]  # fmt: skip
        process: subprocess.Popen[Any] = lab.server.popen(
            argv, stdout=(workdir / "stdout.log").open("wb"), stderr=subprocess.STDOUT
        )
        return process


def _install_client_rules(lab: Any) -> None:
    """DNAT for broadcast replies and reply counters, in the client namespace."""
    ifname = lab.client.ifname
    client_ip = lab.client.ip
    # Option 53 is the first option right after the magic cookie in every server measured:
    # transport header offset = 8 (UDP header) + 236 (fixed BOOTP fields) + 4 (cookie) bytes.
    option53_bits = (8 + 236 + 4) * 8
    lab.client.nft(
        f"table netdev {COUNTER_TABLE} {{\n"
        f"  chain ingress {{\n"
        f'    type filter hook ingress device "{ifname}" priority -450; policy accept;\n'
        f'    udp sport 67 @th,{option53_bits},24 0x350102 counter comment "offer"\n'
        f'    udp sport 67 @th,{option53_bits},24 0x350105 counter comment "ack"\n'
        f'    udp sport 67 @th,{option53_bits},24 0x350106 counter comment "nak"\n'
        f"  }}\n"
        f"}}\n"
        f"table ip {NAT_TABLE} {{\n"
        f"  chain prerouting {{\n"
        f"    type nat hook prerouting priority dstnat; policy accept;\n"
        f"    ip daddr {{ 255.255.255.255, 198.19.255.255 }} udp dport 68 "
        f"dnat to {client_ip}:67\n"
        f"  }}\n"
        f"}}\n"
    )


def _reply_counters(lab: Any) -> dict[str, int]:
    """Current values of the OFFER/ACK/NAK counters."""
    result = lab.client.run(
        ["nft", "-j", "list", "table", "netdev", COUNTER_TABLE], timeout=10, check=False
    )
    counts = {"offer": 0, "ack": 0, "nak": 0}
    if result.returncode != 0:
        return counts
    for item in json.loads(result.stdout).get("nftables", []):
        rule = item.get("rule")
        if not rule or rule.get("comment") not in counts:
            continue
        for expression in rule.get("expr", []):
            if "counter" in expression:
                counts[rule["comment"]] = int(expression["counter"]["packets"])
    return counts


def run_perfdhcp(lab: Any, rate: int | None, period: int, *, full_exchange: bool,
                 threads: str = "multi") -> PerfdhcpRun:
    """One perfdhcp run at *rate* (None = unthrottled) for *period* seconds, in the ``-g``
    thread mode *threads* (:data:`PERFDHCP_THREAD_MODES`)."""
    if threads not in PERFDHCP_THREAD_MODES:
        raise ValueError(f"perfdhcp thread mode {threads!r} is not one of {PERFDHCP_THREAD_MODES}")
    argv = [
        "perfdhcp", "-4", "-l", lab.client.ifname, "-B", "-o", VENDOR_CLASS_OPTION,
        "-R", str(CLIENTS), "-p", str(period), "-W", str(EXIT_WAIT_US), "-g", threads,
    ]  # fmt: skip
    if rate is not None:
        argv += ["-r", str(rate)]
    if not full_exchange:
        argv.append("-i")
    before = _reply_counters(lab)
    result = lab.client.run(argv, timeout=period + 60, check=False)
    after = _reply_counters(lab)
    run = PerfdhcpRun(target_rate=rate, period=period, full_exchange=full_exchange)
    run.exit_status = result.returncode
    parse_perfdhcp(result.stdout, run)
    run.server_offers = after["offer"] - before["offer"]
    run.server_acks = after["ack"] - before["ack"]
    run.server_naks = after["nak"] - before["nak"]
    if run.discover_sent == 0:
        raise RuntimeError(
            f"perfdhcp reported nothing (exit {result.returncode}): {result.stderr[-500:]}"
        )
    return run


@dataclass
class SearchOutcome:
    """The result of one rate search: the best passing step and every step tried."""

    best: PerfdhcpRun | None
    steps: list[PerfdhcpRun] = field(default_factory=list)
    unthrottled: PerfdhcpRun | None = None

    @property
    def capped(self) -> bool:
        """True when every step passed: the sustained rate is only a lower bound."""
        return bool(self.steps) and all(step.passes() for step in self.steps)

    @property
    def sustained_rate(self) -> float:
        """The highest passing target rate (0 when none passed)."""
        return float(self.best.target_rate or 0) if self.best else 0.0


def search_sustained(
    step: Callable[[int], PerfdhcpRun], rates: tuple[int, ...], bisections: int
) -> SearchOutcome:
    """Step through *rates* until one fails, then bisect *bisections* times below it."""
    outcome = SearchOutcome(best=None)
    low, high = 0, 0
    for rate in rates:
        run = step(rate)
        outcome.steps.append(run)
        if not run.passes():
            high = rate
            break
        outcome.best, low = run, rate
    # high == 0: every step passed, the result is capped by the step list (no bisection).
    for _ in range(bisections if high else 0):
        middle = (low + high) // 2
        if middle <= low:
            break
        run = step(middle)
        outcome.steps.append(run)
        if run.passes():
            outcome.best, low = run, middle
        else:
            high = middle
    return outcome


def _describe(run: PerfdhcpRun) -> str:
    return (
        f"rate {run.target_rate or 'max'}: goodput {run.goodput:.0f}/s, "
        f"incomplete {run.incomplete_fraction * 100:.2f} %, NAKs {run.server_naks}, "
        f"{'pass' if run.passes() else 'fail'}"
    )


def _one_repetition(
    server: DhcpServer, lab: Any, plan: SearchPlan, *, full_exchange: bool
) -> SearchOutcome:
    """Fresh server, empty lease DB; search the sustained rate, then the unthrottled run."""
    mode = "dora" if full_exchange else "do"
    with scratch_dir(f"dhcp-{server.name}-{mode}") as workdir:
        process = server.start(lab, workdir)
        try:
            lab.server.wait_udp_port(67, timeout=30, process=process)
            time.sleep(0.5)

            def step(rate: int) -> PerfdhcpRun:
                run = run_perfdhcp(lab, rate, plan.period, full_exchange=full_exchange,
                                   threads=plan.perfdhcp_threads)
                log(f"  {server.name} {mode} {_describe(run)}")
                if process.poll() is not None:
                    raise RuntimeError(f"{server.name} exited with {process.returncode}")
                time.sleep(0.3)
                return run

            rates = plan.dora_rates if full_exchange else plan.do_rates
            outcome = search_sustained(step, rates, plan.bisections)
            if plan.unthrottled:
                outcome.unthrottled = run_perfdhcp(
                    lab, None, plan.period, full_exchange=full_exchange,
                    threads=plan.perfdhcp_threads,
                )
                log(f"  {server.name} {mode} {_describe(outcome.unthrottled)}")
            return outcome
        except Exception:
            log_tail = (workdir / "stdout.log").read_text(errors="replace")[-1500:]
            log(f"  {server.name} output:\n{log_tail}")
            raise
        finally:
            lab.server.stop(process)


def servers(peers: Peers) -> list[DhcpServer]:
    """pxestack first, then the peers, then the python-floor reference."""
    return [PxestackDhcpServer(), KeaServer(peers), PxestackPgServer(), KeaPgServer(peers),
            DnsmasqDhcpServer(peers), FloorDhcpServer()]


def run_dhcp(
    results: Results, peers: Peers, *, repeats: int, quick: bool, only: tuple[str, ...] = (),
    perfdhcp_threads: str = "multi",
) -> None:
    """Run the DORA and DO searches for every available server (or those named in *only*),
    *repeats* times each, with perfdhcp in the ``-g`` mode *perfdhcp_threads*."""
    reason = peers.require("perfdhcp", "nft", "ip")
    if reason:
        results.skip("dhcp", "all", reason)
        return
    plan = replace(SearchPlan.quick() if quick else SearchPlan.full(),
                   perfdhcp_threads=perfdhcp_threads)
    results.meta["perfdhcp_threads"] = perfdhcp_threads
    lab_module = netlab()
    candidates = []
    for server in servers(peers):
        if only and server.name not in only:
            continue
        why = server.unavailable(peers)
        if why:
            results.skip("dhcp", server.name, why)
        else:
            candidates.append(server)
    database = PgLeases() if any(server.postgresql for server in candidates) else None
    for server in candidates:
        if server.postgresql:
            server.database = database
    try:
        with lab_module.two_hosts("bench") as lab:
            _interleave(results, lab, candidates, plan, repeats)
    finally:
        if database is not None:
            database.close()


def _interleave(results: Results, lab: Any, candidates: list[DhcpServer], plan: SearchPlan,
                repeats: int) -> None:
    _install_client_rules(lab)
    # Interleave servers within each repetition so that slow drifts in machine load
    # (other work on this shared VM) spread over all servers rather than one.
    for repetition in range(repeats):
        for server in candidates:
            for full_exchange in server.modes:
                mode = "dora" if full_exchange else "do"
                log(f"dhcp {server.name} {mode} repetition {repetition + 1}/{repeats}")
                _record(results, server.name, lab, server, plan, full_exchange)


def _record(
    results: Results, name: str, lab: Any, server: DhcpServer, plan: SearchPlan,
    full_exchange: bool,
) -> None:  # fmt: skip
    mode = "dora" if full_exchange else "do"
    unit = "DORA/s" if full_exchange else "offers/s"
    sustained = results.case("dhcp", f"{mode}_sustained", name, unit)
    latency = results.case("dhcp", f"{mode}_latency_ms", name, "ms", higher_is_better=False)
    naks = results.case("dhcp", f"{mode}_naks", name, "NAKs", higher_is_better=False)
    try:
        outcome = _one_repetition(server, lab, plan, full_exchange=full_exchange)
    except Exception as exc:  # one failed repetition must not end the suite
        log(f"  {name} {mode} repetition failed: {exc}")
        sustained.failures += 1
        sustained.runs.append({"error": str(exc)})
        return
    sustained.values.append(outcome.sustained_rate)
    sustained.runs.append(
        {
            "capped": outcome.capped,
            "steps": [s.to_json() for s in outcome.steps],
            "unthrottled": outcome.unthrottled.to_json() if outcome.unthrottled else None,
        }
    )
    if outcome.best is not None and outcome.best.avg_latency_ms is not None:
        latency.values.append(outcome.best.avg_latency_ms)
        latency.runs.append({"max_latency_ms": outcome.best.max_latency_ms})
    naks.values.append(float(sum(s.server_naks for s in outcome.steps)))
    if outcome.unthrottled is not None:
        flood = results.case("dhcp", f"{mode}_unthrottled_goodput", name, unit)
        flood.values.append(outcome.unthrottled.goodput)
        flood.runs.append({"incomplete_fraction": outcome.unthrottled.incomplete_fraction})
