"""Scale-out: provisioning N machines on one server with the git store, and on three servers
sharing PostgreSQL.

    .venv/bin/python -m benchmarks.pgstorm [--machines 1000] [--repeats 1] [--rate 150]
        [--py-spy DIR] [--only git|pg]

Both runs use the servers and machines of ``tests/pgcluster.py``: real ``pxestack serve``
processes on loopback (HTTP and provisioning, git audit on, state on tmpfs) and machines
that walk the HTTP part of a network boot (iPXE script, first-stage enrolment, host data,
set_installed), spread over the servers.  Reported: the seconds from the first machine's
arrival to the last set_installed, per run and the median, and the ratio one / three;
and where the CPU time went: the CPU seconds (user + system, from ``/proc``) each
``pxestack serve`` process and PostgreSQL (the postmaster and its backends) used from the
start of the storm to its end, per machine provisioned (the median over the runs, in
total and per process).  With ``--py-spy DIR`` every server is sampled with py-spy during
each storm (one collapsed-stack file per run and server in DIR) and the report lists each
file's busiest functions; ``--summarize FILE...`` prints them for files recorded before.
Checked: every machine finished.
DHCP is not part of this storm; ``tests/system/test_pg_cluster.py`` runs the same storm
with DHCP through relays, and ``benchmarks/bootstorm.py`` measures one server's whole boot
including DHCP and TFTP.

Three servers can only beat one when there are cores for them: on the 2-vCPU test machine
the four processes (three servers and PostgreSQL) share two cores, and the figure says
whether spreading the work costs more than it gains.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, log, scratch_dir

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (None when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process *pid* so far (0 when it is gone)."""
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of *pid* and of its live children (PostgreSQL's backends), plus what
    its children that ended had used (``cutime``/``cstime``)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    total = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / _TICKS
    for entry in os.listdir("/proc"):
        child = _stat(entry) if entry.isdigit() else None
        if child is not None and int(child[1]) == pid:
            total += (int(child[11]) + int(child[12])) / _TICKS
    return total


class CpuMeter:
    """CPU seconds each named process (tree) used between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int], trees: dict[str, int] | None = None) -> None:
        self.pids = pids
        self.trees = trees or {}
        self.used: dict[str, float] = {}
        self._start: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now.update({name: tree_cpu_seconds(pid) for name, pid in self.trees.items()})
        return now

    def start(self) -> None:
        """Note the CPU seconds so far."""
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        """The CPU seconds used since :meth:`start`, by name."""
        end = self._read()
        self.used = {name: round(end[name] - self._start.get(name, 0.0), 2) for name in end}
        return self.used


class Profiler:
    """py-spy recording each named process while a storm runs (``--py-spy DIR``).

    Only the thread holding the interpreter lock is sampled (``--gil``), 50 times a second,
    without stopping the process (``--nonblocking``), in py-spy's collapsed-stack format:
    one line per distinct stack, ``frame;frame;... count``.
    """

    def __init__(self, directory: str | None, label: str, pids: dict[str, int]) -> None:
        self.outputs: dict[str, Path] = {}
        self._spies: list[subprocess.Popen[bytes]] = []
        if directory is None:
            return
        spy = str(Path(sys.executable).with_name("py-spy"))
        Path(directory).mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            output = Path(directory) / f"{label}-{name}.txt"
            self.outputs[name] = output
            self._spies.append(subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--rate", "50", "--gil", "--nonblocking",
                 "--format", "raw", "--output", str(output)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        """End the recordings (py-spy writes its file on SIGINT)."""
        for spy in self._spies:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
        for spy in self._spies:
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


def profile_summary(path: Path, top: int = 25) -> dict[str, Any]:
    """Per function of a collapsed-stack file: the share of samples it was on the stack
    (inclusive) and at the top (self), the *top* of each."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    share = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "inclusive_percent": {f: share(n) for f, n in inclusive.most_common(top)},
        "self_percent": {f: share(n) for f, n in own.most_common(top)},
    }


def _tests_helpers() -> tuple[Any, Any]:
    tests_dir = str(ROOT / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    import pgcluster
    import pglab

    return pgcluster, pglab


def one_git_server(machines: int, rate: float, profile: str | None = None,
                   label: str = "git") -> tuple[float, dict[str, float]]:
    """Seconds to provision *machines* on one server with the git-directory store, and the
    CPU seconds it used meanwhile."""
    pgcluster, _ = _tests_helpers()
    with scratch_dir("pgstorm-git") as work:
        server = pgcluster.Server(work, "git", machines, work / "cluster")
        try:
            server.wait_ready()
            meter = CpuMeter({"git": server.process.pid})
            spies = Profiler(profile, label, {"git": server.process.pid})
            meter.start()
            try:
                done, elapsed = pgcluster.storm([server], machines, rate=rate, progress=log)
            finally:
                meter.stop()
                spies.stop()
        finally:
            server.stop()
    assert len(done) == machines
    return float(elapsed), meter.used


def three_pg_servers(machines: int, rate: float, profile: str | None = None,
                     label: str = "pg") -> tuple[float, dict[str, float]]:
    """Seconds to provision *machines* on three servers sharing one PostgreSQL, and the CPU
    seconds each server and PostgreSQL used meanwhile."""
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
                assert lab.process is not None
                pids = {f"pg{n}": s.process.pid for n, s in enumerate(servers)}
                meter = CpuMeter(pids, {"postgresql": lab.process.pid})
                spies = Profiler(profile, label, pids)
                meter.start()
                try:
                    done, elapsed = pgcluster.storm(servers, machines, rate=rate,
                                                    progress=log)
                finally:
                    meter.stop()
                    spies.stop()
            finally:
                for server in servers:
                    server.stop()
    finally:
        lab.close()
    assert len(done) == machines
    return float(elapsed), meter.used


def main(argv: list[str] | None = None) -> int:
    """Run both set-ups *repeats* times; print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="benchmarks.pgstorm", description=__doc__)
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rate", type=float, default=150.0,
                        help="machines arriving per second (default 150)")
    parser.add_argument("--py-spy", metavar="DIR", dest="py_spy",
                        help="record each server with py-spy into DIR (collapsed stacks, "
                             "one file per run and server) and report the top functions")
    parser.add_argument("--only", choices=("git", "pg"),
                        help="run only one set-up (for profiling; no ratio is reported)")
    parser.add_argument("--summarize", metavar="FILE", nargs="+",
                        help="print the top functions of py-spy files and exit")
    args = parser.parse_args(argv)
    if args.summarize:
        print(json.dumps({f: profile_summary(Path(f)) for f in args.summarize}, indent=2))
        return 0
    load_before = os.getloadavg()
    one: list[float] = []
    three: list[float] = []
    one_cpu: list[dict[str, float]] = []
    three_cpu: list[dict[str, float]] = []
    setups = (("git", "one server, git store", one_git_server, one, one_cpu),
              ("pg", "three servers, PostgreSQL", three_pg_servers, three, three_cpu))
    for repeat in range(args.repeats):
        for tag, name, run, times, cpus in setups:
            if args.only not in (None, tag):
                continue
            log(f"run {repeat + 1}/{args.repeats}: {name}")
            elapsed, used = run(args.machines, args.rate, args.py_spy, f"{tag}-{repeat + 1}")
            log(f"{name}: {elapsed:.1f} s, CPU {used}")
            times.append(elapsed)
            cpus.append(used)
    def per_machine(runs: list[dict[str, float]]) -> dict[str, float]:
        """Median CPU milliseconds per machine: in total and of each process."""
        if not runs:
            return {}
        names = ["total", *runs[0]]
        return {name: round(statistics.median(
            sum(run.values()) if name == "total" else run[name] for run in runs)
            * 1000 / args.machines, 1) for name in names}

    report: dict[str, Any] = {
        "machines": args.machines,
        "rate": args.rate,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "one_git_server_s": one,
        "three_pg_servers_s": three,
        "one_git_server_cpu_s": one_cpu,
        "three_pg_servers_cpu_s": three_cpu,
        "cpu_ms_per_machine_median": {"one_git_server": per_machine(one_cpu),
                                      "three_pg_servers": per_machine(three_cpu)},
    }
    if one and three:
        report["speedup_median"] = round(statistics.median(one) / statistics.median(three), 3)
    if args.py_spy:
        report["profiles"] = {
            str(path): profile_summary(path, top=12)
            for path in sorted(Path(args.py_spy).glob("*.txt"))}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
