"""Boot storm: N simulated machines provisioned at once by one real pxestack server.

    .venv/bin/python -m benchmarks.bootstorm [--machines 1000] [--rate 200] [--repeats 1]

A full pxestack (DHCP server, TFTP, HTTP, provisioning with the git audit on) runs in the
server namespace of a :func:`netlab.two_hosts` lab; :mod:`benchmarks.storm_client` runs in
the client namespace and walks every machine through DHCP (PXE ROM), TFTP of the iPXE
binary, DHCP again (iPXE), the boot scripts, first-stage enrolment, the host-data POST and
set_installed, starting machines at ``--rate`` per second.  The machines are those of
:mod:`pxestack.simulate`, the library behind ``pxestack simulate``.

The machines keep their firmware's timers and retry their boot order after a failure
(docs/reference/boot-timers.md), for up to ``MACHINE_DEADLINE`` seconds each; the server
runs with ``dhcp.admission`` on (``--no-admission`` turns it off, ``--admission KEY=VALUE``
sets its knobs).  The kernel's neighbour table (machine-wide) is raised for the lab's
thousands of addresses while the storm runs and put back afterwards.

Reported: the time from the first machine's arrival to the last machine's set_installed,
the goodput (machines installed per second over that time), the machines held back at
their first DHCP, failed boots by the phase they failed in, per-phase latency percentiles,
the server's peak memory (VmHWM), the git commits made, the load average around the storm.
Checked: every machine finished every phase; no boot failed after the machine's first
DHCP (a machine dropped in the middle); DHCP addresses and provisioned InternalAddr
are unique; every host record is ``installed``; the profile counts are exactly the
configured quantities (the first ``quantity`` machines get each profile, the rest get
``default``).  Target: 1000 machines in under 60 s on the 2-vCPU machine, git on.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Results, log, netlab, scratch_dir
from pxestack.simulate import PHASES, PXE_DISCOVER_TIMEOUTS, percentiles

IPXE_BINARY = Path("/usr/lib/ipxe/undionly.kpxe")
HTTP_PORT = 8080
#: Profiles of the storm: a small exact one first, then one that takes about half.
CORE_QUANTITY = 3
TARGET_SECONDS = 60.0
#: How long a machine keeps booting (again and again) before it counts as failed.
MACHINE_DEADLINE = 900.0
#: The tag in the lab's namespace names (``--lab-tag``): runs of several people on one
#: machine keep their namespaces apart by it.
LAB_TAG = "storm"
#: Addresses of the storm's ``provision.network.ip_range``: the most machines a storm has.
PROVISION_ADDRESSES = 16382
#: Neighbour entries the lab needs beyond one per machine.
NEIGHBOUR_HEADROOM = 1024


def profile_plan(machines: int) -> dict[str, int]:
    """The exact profile counts expected for *machines* enrolments in any order."""
    worker_quantity = max(machines // 2, 1)
    core = min(CORE_QUANTITY, machines)
    worker = min(worker_quantity, machines - core)
    return {"core": core, "worker": worker, "default": machines - core - worker}


def server_config(lab: Any, workdir: Path, machines: int, admin_token: str, git: bool,
                  tftp_workers: int | None = None, admission: bool = True,
                  admission_knobs: dict[str, float] | None = None) -> str:
    """The pxestack configuration of the storm (everything on, state on tmpfs);
    *tftp_workers* sets ``tftp.workers`` (``None``: its default, the usable CPUs),
    *admission* ``dhcp.admission.enabled``, *admission_knobs* its other keys (default:
    the configuration's defaults)."""
    if machines > PROVISION_ADDRESSES:
        raise ValueError(f"a storm has at most {PROVISION_ADDRESSES} machines "
                         f"(the addresses of its ip_range), not {machines}")
    base_url = f"http://{lab.server.ip}:{HTTP_PORT}"
    worker_quantity = max(machines // 2, 1)
    knobs = "".join(f"\n    {key}: {value}" for key, value in (admission_knobs or {}).items())
    return f"""\
state_dir: {workdir / "state"}
log_level: warn
dhcp:
  mode: server
  interfaces: [{lab.server.ifname}]
  server_address: {lab.server.ip}
  lease_time: 3600
  proxy_port: 0
  # The storm client relays for every machine from the client namespace's one address.
  relays: [{lab.client.ip}]
  pools:
    - subnet: 198.18.0.0/15
      start: 198.19.0.1
      end: 198.19.255.254
  boot:
    ipxe_script_url: {base_url}/ipxebootscript
  admission:
    enabled: {"true" if admission else "false"}{knobs}
tftp:
  listen: {lab.server.ip}:69
  root: {workdir / "tftproot"}{f"{chr(10)}  workers: {tftp_workers}" if tftp_workers else ""}
http:
  listen: {lab.server.ip}:{HTTP_PORT}
  public_url: {base_url}
provision:
  cluster_dir: {workdir / "cluster"}
  git: {"true" if git else "false"}
  default_os_version: "3975.2.0"
  network:
    # 16 382 addresses (PROVISION_ADDRESSES): a range smaller than the storm ends it at
    # "no free address left" for the machines past its size.
    ip_range: {{start: 198.18.64.1, end: 198.18.127.254}}
    subnet_size: 15
    subnet_gateway: {lab.server.ip}
    dns: [{lab.server.ip}]
  profiles:
    - {{name: core, quantity: {CORE_QUANTITY}, tags: [role=core]}}
    - {{name: worker, quantity: {worker_quantity}, tags: [role=worker]}}
  api:
    token: {admin_token}
  # The storm client relays for every machine from one address, which holds no lease of
  # its own: dhcp-seen would refuse it, and 1000 first contacts from one source exceed any
  # per-source rate.  A lab setting.
  enrolment: open
  first_contact_rate: 0
"""


class MemorySampler:
    """Samples a process's VmRSS every 0.2 s in a thread; keeps the peak and VmHWM."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _status(self) -> dict[str, int]:
        values = {}
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
        except (OSError, ValueError, IndexError):
            pass
        return values

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_rss_kib = max(self.peak_rss_kib, self._status().get("VmRSS", 0))

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def stop(self) -> int:
        """Stop and return the peak in KiB (the larger of sampled VmRSS and VmHWM)."""
        self._stop.set()
        self._thread.join(timeout=2)
        return max(self.peak_rss_kib, self._status().get("VmHWM", 0))


def _admin_hosts(lab: Any, token: str) -> list[dict[str, Any]]:
    url = f"http://{lab.server.ip}:{HTTP_PORT}/admin/hosts"
    result = lab.client.run(
        ["curl", "-sS", "--fail", "--max-time", "60", "-H", f"Authorization: Bearer {token}", url],
        timeout=90,
    )
    hosts: list[dict[str, Any]] = json.loads(result.stdout)
    return hosts


def dropped_in_the_middle(report: dict[str, Any]) -> Counter[str]:
    """Boots that failed after the machine's first DHCP, by the phase they failed in: a
    machine the server dropped in the middle (a boot that never got its first OFFER is a
    machine held back, which is what admission control is for)."""
    dropped: Counter[str] = Counter()
    for machine in report["machines"]:
        for phase, count in (machine.get("restarts") or {}).items():
            if phase != "dhcp_pxe":
                dropped[phase] += count
    return dropped


def verify(report: dict[str, Any], hosts: list[dict[str, Any]], machines: int) -> list[str]:
    """Every check of the storm; returns the failures (empty = all passed)."""
    problems = []
    failed = [m for m in report["machines"] if m["error"]]
    if failed:
        sample = "; ".join(f"{m['serial']}: {m['error']}" for m in failed[:5])
        problems.append(f"{len(failed)} of {machines} machines failed ({sample})")
    dropped = dropped_in_the_middle(report)
    if dropped:
        problems.append(f"{sum(dropped.values())} boots failed after their first DHCP and "
                        f"started over ({dict(dropped)})")
    addresses = [m["address"] for m in report["machines"] if m["address"]]
    duplicates = [a for a, n in Counter(addresses).items() if n > 1]
    if duplicates:
        problems.append(f"DHCP gave {len(duplicates)} addresses to several machines")
    if len(hosts) != machines:
        problems.append(f"{len(hosts)} host records for {machines} machines")
    not_installed = [h["Serial"] for h in hosts if h.get("State") != "installed"]
    if not_installed:
        problems.append(f"{len(not_installed)} hosts not installed (e.g. {not_installed[:3]})")
    internal = [h.get("InternalAddr") for h in hosts]
    if len(set(internal)) != len(internal):
        problems.append("duplicate InternalAddr among host records")
    counts = Counter(h.get("Profile") for h in hosts)
    expected = {k: v for k, v in profile_plan(machines).items() if v}
    if dict(counts) != expected:
        problems.append(f"profile counts {dict(counts)} != expected {expected}")
    return problems


def run_once(machines: int, rate: float, *, git: bool = True,
             tftp_workers: int | None = None, admission: bool = True,
             admission_knobs: dict[str, float] | None = None,
             machine_deadline: float = MACHINE_DEADLINE) -> dict[str, Any]:
    """One storm against a fresh server; returns the measurements and check results."""
    from benchmarks.tftp_bench import wait_tftp_ready

    lab_module = netlab()
    admin_token = secrets.token_hex(16)
    load_before = os.getloadavg()
    with lab_module.neighbour_table(machines + NEIGHBOUR_HEADROOM), \
            lab_module.two_hosts(LAB_TAG) as lab, scratch_dir("storm") as workdir:
        tftproot = workdir / "tftproot"
        tftproot.mkdir()
        if IPXE_BINARY.exists():
            shutil.copy(IPXE_BINARY, tftproot / "undionly.kpxe")
        else:
            (tftproot / "undionly.kpxe").write_bytes(secrets.token_bytes(74213))
        config = workdir / "pxestack.yaml"
        config.write_text(server_config(lab, workdir, machines, admin_token, git, tftp_workers,
                                        admission, admission_knobs))
        server = lab.server.popen(
            lab_module.pxestack_argv("serve", "--config", str(config)),
            stdout=(workdir / "server.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            for port in (67, 69):
                lab.server.wait_udp_port(port, timeout=30, process=server)
            lab.server.wait_tcp_port(HTTP_PORT, timeout=30, process=server)
            wait_tftp_ready(lab)  # every TFTP worker serves before the first arrival
            spec = {
                "machines": machines,
                "arrival_rate": rate,
                "server_ip": lab.server.ip,
                "relay_ip": lab.client.ip,
                "ifname": lab.client.ifname,
                "prefix": lab.client.prefix,
                "base_url": f"http://{lab.server.ip}:{HTTP_PORT}",
                "tftp_blksize": 1432,  # what iPXE asks (docs/reference/pxe-wire.md)
                "boot_file_size": (tftproot / "undionly.kpxe").stat().st_size,
                # Firmware that retries its boot order boots again after a failure, for
                # as long as the deadline allows: "failed" is a machine still not
                # installed then.
                "boot_attempts": 0,
                "machine_deadline": machine_deadline,
                "storm_deadline": machines / rate + machine_deadline,
            }
            spec_path = workdir / "spec.json"
            spec_path.write_text(json.dumps(spec))
            sampler = MemorySampler(server.pid)
            sampler.start()
            started = time.monotonic()
            result = lab.client.run(
                [sys.executable, str(ROOT / "benchmarks" / "storm_client.py"), str(spec_path)],
                timeout=spec["storm_deadline"] + 120,
                check=False,
                cwd=ROOT,
            )
            elapsed = time.monotonic() - started
            peak_kib = sampler.stop()
            if result.returncode != 0:
                raise RuntimeError(f"storm client failed: {result.stderr[-1500:]}")
            report = json.loads(result.stdout)
            hosts = _admin_hosts(lab, admin_token)
            problems = verify(report, hosts, machines)
            commits = None
            if git and (workdir / "cluster" / ".git").exists():
                counted = subprocess.run(
                    ["git", "-C", str(workdir / "cluster"), "rev-list", "--count", "HEAD"],
                    capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip
                commits = int(counted.stdout.strip()) if counted.returncode == 0 else None
            if server.poll() is not None:
                problems.append(f"server exited with {server.returncode}")
        finally:
            lab.server.stop(server, grace=10)
            log_tail = (workdir / "server.log").read_text(errors="replace")[-2000:]
    phases = {
        phase: percentiles([m["phases"][phase] for m in report["machines"] if phase in m["phases"]])
        for phase in PHASES
    }
    totals = [m["total_s"] for m in report["machines"] if m["total_s"] is not None]
    installed = sum(1 for m in report["machines"] if not m["error"])
    wall = report["wall_s"]
    restarts: Counter[str] = Counter()
    for machine in report["machines"]:
        restarts.update(machine.get("restarts") or {})
    # A machine whose first DISCOVER went unanswered waited at least the ROM's first
    # timer (or booted again): the server held it back.
    held_back = sum(
        1 for m in report["machines"]
        if (m.get("restarts") or {}).get("dhcp_pxe")
        or m["phases"].get("dhcp_pxe", 0.0) >= PXE_DISCOVER_TIMEOUTS[0]
    )
    return {
        "machines": machines,
        "arrival_rate": rate,
        "git": git,
        "tftp_workers": tftp_workers,
        "admission": admission,
        "admission_knobs": admission_knobs or {},
        "installed": installed,
        "held_back": held_back,
        "goodput_per_s": installed / wall if wall else 0.0,
        "boot_restarts": dict(restarts),
        "load_average": [round(x, 2) for x in (*load_before, *os.getloadavg())],
        "time_to_provision_all_s": report["wall_s"],
        "client_elapsed_s": elapsed,
        "per_machine_total_s": percentiles(totals),
        "phases_s": phases,
        "peak_rss_mib": peak_kib / 1024,
        "git_commits": commits,
        "stray_dhcp_replies": report["stray_dhcp_replies"],
        "client_cpu_s": report.get("client_cpu_s"),
        "tftp_refusals": sum(m.get("tftp_refusals", 0) for m in report["machines"]),
        "checks_passed": not problems,
        "problems": problems,
        "server_log_tail": log_tail if problems else "",
    }


def describe(run: dict[str, Any]) -> str:
    """A human summary of one storm."""
    wall = run["time_to_provision_all_s"]
    lines = [
        f"boot storm: {run['machines']} machines at {run['arrival_rate']}/s, "
        f"git audit {'on' if run['git'] else 'off'}, "
        f"tftp.workers {run.get('tftp_workers') or 'default'}, "
        f"admission {'on' if run.get('admission', True) else 'off'}",
        f"  time to provision all: {wall:.1f} s" if wall else "  time to provision all: -",
        f"  installed {run.get('installed')}, goodput {run.get('goodput_per_s', 0):.1f}/s, "
        f"held back at their first DHCP: {run.get('held_back')}; "
        f"boots started over, by the phase they failed in: {run.get('boot_restarts')}; "
        f"load average before/after: {run.get('load_average')}",
        f"  server peak memory: {run['peak_rss_mib']:.0f} MiB; git commits: {run['git_commits']}; "
        f"TFTP requests refused (then retried): {run['tftp_refusals']}; "
        f"load generator CPU: {run['client_cpu_s'] or 0:.1f} s",
        f"  checks: {'all passed' if run['checks_passed'] else 'FAILED'}",
    ]
    lines += [f"    - {problem}" for problem in run["problems"]]
    lines.append("  phase latency, s: p50 / p90 / p99 / max")
    for phase, stats in {"total": run["per_machine_total_s"], **run["phases_s"]}.items():
        if stats:
            lines.append(
                f"    {phase:<10} {stats['p50']:.3f} / {stats['p90']:.3f} / "
                f"{stats['p99']:.3f} / {stats['max']:.3f}"
            )
    return "\n".join(lines)


def run_bootstorm(
    results: Results, *, repeats: int, machines: int, rate: float, git: bool = True,
    tftp_workers: tuple[int | None, ...] = (None,), admission: bool = True,
    admission_knobs: dict[str, float] | None = None,
) -> None:
    """Run the storm *repeats* times and record it in *results* (area ``bootstorm``).

    With several *tftp_workers* values, each repetition runs one storm per value in turn
    (so a change in the machine's load spreads over all of them), recorded as separate
    cases suffixed ``_tftp_workers_N``, each with its TFTP phase p99 (``tftp_p99``).
    """
    cases = {}
    for workers in tftp_workers:
        suffix = f"_tftp_workers_{workers}" if workers else ""
        provision = results.case(
            "bootstorm", f"provision_{machines}{suffix}", "pxestack", "s",
            higher_is_better=False)
        provision.note = (
            f"{machines} machines arriving at {rate:g}/s, full flow, git audit "
            f"{'on' if git else 'off'}, tftp.workers {workers or 'default'}")
        memory = results.case("bootstorm", f"peak_rss{suffix}", "pxestack", "MiB",
                              higher_is_better=False)
        tftp_p99 = results.case("bootstorm", f"tftp_p99{suffix}", "pxestack", "s",
                                higher_is_better=False)
        cases[workers] = (provision, memory, tftp_p99)
    for repetition in range(repeats):
        for workers in tftp_workers:
            provision, memory, tftp_p99 = cases[workers]
            log(f"boot storm {repetition + 1}/{repeats}: {machines} machines at {rate}/s, "
                f"tftp.workers {workers or 'default'}")
            try:
                run = run_once(machines, rate, git=git, tftp_workers=workers,
                               admission=admission, admission_knobs=admission_knobs)
            except Exception as exc:  # one failed storm must not end the suite
                log(f"  boot storm failed: {exc}")
                provision.failures += 1
                provision.runs.append({"error": str(exc)})
                continue
            log(describe(run))
            provision.runs.append(run)
            if run["checks_passed"] and run["time_to_provision_all_s"] is not None:
                provision.values.append(run["time_to_provision_all_s"])
                memory.values.append(run["peak_rss_mib"])
                if run["phases_s"].get("tftp"):
                    tftp_p99.values.append(run["phases_s"]["tftp"]["p99"])
            else:
                provision.failures += 1


def parse_knobs(items: list[str]) -> dict[str, float]:
    """``KEY=VALUE`` pairs of ``dhcp.admission`` settings (numbers)."""
    knobs: dict[str, float] = {}
    for item in items:
        key, _, value = item.partition("=")
        number = float(value)
        knobs[key.strip()] = int(number) if number.is_integer() else number
    return knobs


def main(argv: list[str] | None = None) -> int:
    """Standalone command line; exit status 1 when a check failed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bootstorm", description=__doc__)
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="machine arrivals per second")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-git", action="store_true", help="turn the git audit off")
    parser.add_argument("--lab-tag", default="storm",
                        help="tag in the lab's network namespace names (default: storm)")
    parser.add_argument("--no-admission", action="store_true",
                        help="turn dhcp.admission off (every DISCOVER answered at once)")
    parser.add_argument("--admission", action="append", default=[], metavar="KEY=VALUE",
                        help="a dhcp.admission setting, e.g. max_starting=32 (repeatable)")
    parser.add_argument("--tftp-workers", default="",
                        help="comma-separated tftp.workers values to compare, e.g. 1,2 "
                        "(default: the configuration's default, the usable CPUs)")
    args = parser.parse_args(argv)
    workers = tuple(int(w) for w in args.tftp_workers.split(",") if w.strip()) or (None,)
    global LAB_TAG
    LAB_TAG = args.lab_tag
    results = Results(meta={})
    run_bootstorm(
        results, repeats=args.repeats, machines=args.machines, rate=args.rate,
        git=not args.no_git, tftp_workers=workers, admission=not args.no_admission,
        admission_knobs=parse_knobs(args.admission),
    )
    failures = 0
    for count in workers:
        suffix = f"_tftp_workers_{count}" if count else ""
        record = results.find("bootstorm", f"provision_{args.machines}{suffix}", "pxestack")
        p99 = results.find("bootstorm", f"tftp_p99{suffix}", "pxestack")
        assert record is not None and p99 is not None
        failures += record.failures
        if record.values:
            print(f"tftp.workers {count or 'default'}: median time to provision all: "
                  f"{statistics.median(record.values):.1f} s (target < {TARGET_SECONDS:.0f} s "
                  f"for 1000 machines); TFTP phase p99 median "
                  f"{statistics.median(p99.values):.3f} s")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
