"""Shared pieces of the benchmark suite: paths, statistics, result records, scratch space.

Every case is measured several times; a :class:`Summary` keeps all values and reports the
median with the min-max range, which is what docs/benchmarks.md prints.  A :class:`Results`
collects one :class:`CaseResult` per (case, server) and is written as JSON.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
PLOTS_DIR = ROOT / "docs" / "benchmarks"
CACHE_DIR = ROOT / "benchmarks" / ".cache"
#: Scratch files (lease databases, TFTP roots, logs) live on tmpfs: a disk-backed lease file
#: made Kea and dnsmasq I/O-bound on this machine (docs/reference/benchmark-method.md).
TMPFS = Path("/dev/shm")

#: The name every pxestack row carries; ratios are always pxestack / peer.
PXESTACK = "pxestack"
#: The reference peer that shows the least work a pure-Python server can do per datagram
#: (``benchmarks/floor_*.py``): measured beside the others, never a target's peer.
PYTHON_FLOOR = "python-floor"


def netlab() -> ModuleType:
    """Import tests/netlab.py (the namespace lab shared with the system tests)."""
    tests_dir = str(ROOT / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    import netlab as module

    return module


def log(message: str) -> None:
    """Progress output on stderr with a wall-clock stamp (stdout carries the report)."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Summary:
    """Median and range of repeated measurements of one quantity."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        """The median of the values."""
        return float(statistics.median(self.values))

    @property
    def low(self) -> float:
        """The smallest value."""
        return min(self.values)

    @property
    def high(self) -> float:
        """The largest value."""
        return max(self.values)

    def format(self, digits: int = 3) -> str:
        """``median (min-max)`` with *digits* significant digits."""
        return f"{_sig(self.median, digits)} ({_sig(self.low, digits)}-{_sig(self.high, digits)})"


def _sig(value: float, digits: int) -> str:
    """*value* with about *digits* significant digits, without exponent notation."""
    if value == 0 or not (abs(value) < float("inf")):
        return f"{value:g}"
    magnitude = len(str(int(abs(value)))) if abs(value) >= 1 else 0
    decimals = max(digits - magnitude, 0)
    return f"{value:.{decimals}f}"


@dataclass
class CaseResult:
    """All repetitions of one case against one server.

    :ivar area: ``dhcp`` or ``tftp`` (or ``http``).
    :ivar case: the case name, e.g. ``dora_sustained`` or ``lockstep_1468``.
    :ivar server: ``pxestack`` or the peer's name.
    :ivar unit: unit of :attr:`values`.
    :ivar higher_is_better: False for times.
    :ivar values: one headline value per repetition (failed repetitions are left out and
        counted in :attr:`failures`).
    :ivar runs: per-repetition details (latencies, NAKs, rates tried, checksums...).
    """

    area: str
    case: str
    server: str
    unit: str
    higher_is_better: bool
    values: list[float] = field(default_factory=list)
    failures: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    @property
    def summary(self) -> Summary | None:
        """The :class:`Summary` of the values, or None when every repetition failed."""
        return Summary(tuple(self.values)) if self.values else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict including median/min/max."""
        data = asdict(self)
        summary = self.summary
        if summary is not None:
            data.update(median=summary.median, min=summary.low, max=summary.high)
        return data


@dataclass
class Target:
    """One of the issue's targets: pxestack's median against a peer's median."""

    name: str
    area: str
    case: str
    peer: str
    #: The required ratio pxestack/peer: at least this when *at_least*, else at most.
    ratio: float
    at_least: bool = True
    #: An extra condition checked on pxestack's runs (e.g. zero NAKs), described in words.
    extra: str = ""


@dataclass
class Results:
    """Everything one suite run measured, plus the machine it ran on."""

    meta: dict[str, Any]
    cases: list[CaseResult] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def case(
        self, area: str, case: str, server: str, unit: str, *, higher_is_better: bool = True
    ) -> CaseResult:
        """The record for (area, case, server), created on first use."""
        for existing in self.cases:
            if (existing.area, existing.case, existing.server) == (area, case, server):
                return existing
        record = CaseResult(area, case, server, unit, higher_is_better)
        self.cases.append(record)
        return record

    def find(self, area: str, case: str, server: str) -> CaseResult | None:
        """The record for (area, case, server) if it was measured."""
        for existing in self.cases:
            if (existing.area, existing.case, existing.server) == (area, case, server):
                return existing
        return None

    def skip(self, area: str, server: str, reason: str) -> None:
        """Note that *server* was not measured in *area*, and why."""
        self.skipped.append({"area": area, "server": server, "reason": reason})
        log(f"SKIP {area}/{server}: {reason}")

    def write(self, path: Path) -> None:
        """Write the results as JSON (creating the directory)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "meta": self.meta,
            "cases": [c.to_json() for c in self.cases],
            "skipped": self.skipped,
            "targets": self.targets,
        }
        path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, or None when either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


@contextlib.contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    """A fresh directory on tmpfs for one server run, removed afterwards."""
    base = TMPFS if TMPFS.is_dir() else Path("/tmp")
    path = base / f"pxb-{name}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _command_output(argv: Sequence[str]) -> str:
    """stdout of *argv*, or '' if it fails."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip()


def package_version(package: str) -> str | None:
    """The installed Debian package version (``dpkg-query``), or None."""
    output = _command_output(["dpkg-query", "-W", "-f=${Version}", package])
    return output or None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, memory, kernel, Python, load, git revision."""
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
        "git_revision": _command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(_command_output(["git", "-C", str(ROOT), "status", "--porcelain"])),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
