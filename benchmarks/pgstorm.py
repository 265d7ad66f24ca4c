"""Scale-out: provisioning N machines on one server with the git store, and on three servers
sharing PostgreSQL.

    .venv/bin/python -m benchmarks.pgstorm [--machines 1000] [--repeats 1] [--rate 150]

Both runs use the servers and machines of ``tests/pgcluster.py``: real ``pxestack serve``
processes on loopback (HTTP and provisioning, git audit on, state on tmpfs) and machines
that walk the HTTP part of a network boot (iPXE script, first-stage enrolment, host data,
set_installed), spread over the servers.  Reported: the seconds from the first machine's
arrival to the last set_installed, per run and the median, and the ratio one / three.
Checked: every machine finished.  DHCP is not part of this storm (DHCP leases stay per
server); ``benchmarks/bootstorm.py`` measures one server's whole boot including DHCP and
TFTP.

Three servers can only beat one when there are cores for them: on the 2-vCPU test machine
the four processes (three servers and PostgreSQL) share two cores, and the figure says
whether spreading the work costs more than it gains.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

from benchmarks.common import ROOT, log, scratch_dir


def _tests_helpers() -> tuple[Any, Any]:
    tests_dir = str(ROOT / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    import pgcluster
    import pglab

    return pgcluster, pglab


def one_git_server(machines: int, rate: float) -> float:
    """Seconds to provision *machines* on one server with the git-directory store."""
    pgcluster, _ = _tests_helpers()
    with scratch_dir("pgstorm-git") as work:
        server = pgcluster.Server(work, "git", machines, work / "cluster")
        try:
            server.wait_ready()
            done, elapsed = pgcluster.storm([server], machines, rate=rate, progress=log)
        finally:
            server.stop()
    assert len(done) == machines
    return float(elapsed)


def three_pg_servers(machines: int, rate: float) -> float:
    """Seconds to provision *machines* on three servers sharing one PostgreSQL."""
    pgcluster, pglab = _tests_helpers()
    binaries = pglab.pg_binaries()
    if binaries is None:
        raise SystemExit(pglab.SKIP_REASON)
    lab = pglab.PostgresLab(binaries)
    try:
        lab.start()
        dsn = lab.create_database("pgstorm")
        with scratch_dir("pgstorm-pg") as work:
            servers = [pgcluster.Server(work, f"pg{n}", machines, work / "cluster", dsn)
                       for n in range(3)]
            try:
                for server in servers:
                    server.wait_ready()
                done, elapsed = pgcluster.storm(servers, machines, rate=rate, progress=log)
            finally:
                for server in servers:
                    server.stop()
    finally:
        lab.close()
    assert len(done) == machines
    return float(elapsed)


def main(argv: list[str] | None = None) -> int:
    """Run both set-ups *repeats* times; print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="benchmarks.pgstorm", description=__doc__)
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rate", type=float, default=150.0,
                        help="machines arriving per second (default 150)")
    args = parser.parse_args(argv)
    one: list[float] = []
    three: list[float] = []
    for repeat in range(args.repeats):
        log(f"run {repeat + 1}/{args.repeats}: one server, git store")
        one.append(one_git_server(args.machines, args.rate))
        log(f"run {repeat + 1}/{args.repeats}: three servers, PostgreSQL")
        three.append(three_pg_servers(args.machines, args.rate))
    report = {
        "machines": args.machines,
        "rate": args.rate,
        "cpus": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "one_git_server_s": one,
        "three_pg_servers_s": three,
        "speedup_median": statistics.median(one) / statistics.median(three),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
