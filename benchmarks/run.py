"""The benchmark suite's command line: ``.venv/bin/python -m benchmarks [--quick] [--only ...]``.

It finds (and, as root, installs) the peers, builds the server and client namespaces, runs
the DHCP and TFTP cases against pxestack and every peer in the same run, repeats each case
(3 times by default), prints medians with min-max and pxestack's ratio to each peer,
checks the issues' targets, writes JSON to ``benchmarks/results/`` and renders PNG plots into
``docs/benchmarks/``.  ``--only micro`` runs the pytest-benchmark micro-benchmarks and
``--only http`` the HTTP helper's ``benchmarks/http_assets.py``.  See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from benchmarks import plots, report
from benchmarks.common import PLOTS_DIR, RESULTS_DIR, ROOT, Results, log, machine_info
from benchmarks.peers import find_peers

AREAS = ("dhcp", "tftp", "bootstorm", "http", "micro")
#: Areas a plain run covers.  ``micro`` is cheap but noisy beside the load tests, ``http``
#: belongs to its own script; both are included unless --only narrows the run.
DEFAULT_AREAS = AREAS
MIN_REPEATS = 3
DOCS_FILE = ROOT / "docs" / "benchmarks.md"


def build_parser() -> argparse.ArgumentParser:
    """The suite's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark pxestack beside dnsmasq, Kea, tftpd-hpa and atftpd in one run.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="coarser DHCP rate search (2 s steps, no unthrottled run), smaller lossy-TFTP "
        "file and short micro-benchmarks: a few minutes instead of about half an hour",
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_AREAS),
        help=f"comma-separated areas to run, from {', '.join(AREAS)} (default: all)",
    )
    parser.add_argument(
        "--tftp-cases",
        default="",
        help="comma-separated TFTP case names to run (default: all)",
    )
    parser.add_argument(
        "--servers",
        default="",
        help="comma-separated servers to measure, e.g. pxestack,kea (default: all available)",
    )
    parser.add_argument(
        "--perfdhcp-threads",
        choices=("multi", "single"),
        default="multi",
        help="perfdhcp's -g thread mode (default multi, the reference method; single "
        "leaves a whole CPU to the server under test, see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--storm-machines",
        type=int,
        default=0,
        help="machines in the boot storm (default 1000; 200 with --quick)",
    )
    parser.add_argument(
        "--storm-rate", type=float, default=200.0, help="boot-storm arrivals per second"
    )
    parser.add_argument(
        "--storm-tftp-workers",
        default="",
        help="comma-separated tftp.workers values the boot storm compares, e.g. 1,2 "
        "(default: the configuration's default, one per usable CPU)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=MIN_REPEATS,
        help=f"repetitions of every case (default and minimum for published numbers: "
        f"{MIN_REPEATS})",
    )
    parser.add_argument(
        "--no-install", action="store_true", help="never call apt-get; skip missing peers"
    )
    parser.add_argument("--no-plots", action="store_true", help="do not render PNG plots")
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite the generated results block of docs/benchmarks.md with this run",
    )
    parser.add_argument(
        "--plots-dir", type=Path, default=PLOTS_DIR, help="where PNG plots go (docs/benchmarks)"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where JSON results go"
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="only re-render the report and plots of an existing results file",
    )
    return parser


def _terminate_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so every lab's ``finally`` cleanup runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _run_micro(results_dir: Path, stamp: str, quick: bool) -> dict[str, object]:
    """pytest-benchmark over benchmarks/micro; returns where the JSON went and the status."""
    output = results_dir / f"micro-{stamp}.json"
    argv = [
        sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / "micro"),
        "--benchmark-only", f"--benchmark-json={output}", "-q", "-p", "no:cacheprovider",
        "--rootdir", str(ROOT), "-o", "testpaths=benchmarks/micro",
    ]  # fmt: skip
    if quick:
        argv += ["--benchmark-max-time=0.1", "--benchmark-min-rounds=3"]
    log("micro-benchmarks: " + " ".join(argv[3:]))
    completed = subprocess.run(argv, cwd=ROOT, timeout=1800, check=False)
    return {"json": str(output), "exit_status": completed.returncode}


def _run_http(results: Results, results_dir: Path, stamp: str, quick: bool) -> dict[str, object]:
    """Run the HTTP helper's benchmarks/http_assets.py (if present) and import its numbers."""
    script = ROOT / "benchmarks" / "http_assets.py"
    if not script.exists():
        return {"skipped": "benchmarks/http_assets.py does not exist yet"}
    output = results_dir / f"http-{stamp}.json"
    argv = [
        sys.executable, "-m", "benchmarks.http_assets", f"--output={output}",
        *(["--quick"] if quick else []),
    ]  # fmt: skip
    log("http: " + " ".join(argv[1:]))
    completed = subprocess.run(argv, cwd=ROOT, timeout=3600, check=False)
    if output.exists():
        import json

        for entry in json.loads(output.read_text()).get("results", []):
            record = results.case(
                "http", f"assets_{entry['clients']}_clients", entry["server"], "MB/s"
            )
            record.note = "concurrent curl clients fetching one 32 MiB asset over loopback"
            record.values.extend(entry.get("runs_mb_s", []))
    return {"json": str(output), "exit_status": completed.returncode}


def _finish(results: Results, args: argparse.Namespace, path: Path) -> None:
    """Evaluate targets, write JSON, print the report, render plots."""
    results.targets = report.evaluate_targets(results)
    results.write(path)
    latest = path.parent / "latest.json"
    latest.write_text(path.read_text())
    (path.parent / "latest.md").write_text(report.render_markdown_tables(results))
    sys.stdout.write(report.render_text(results))
    print(f"\nresults: {path}")
    if args.update_docs:
        if report.update_docs(DOCS_FILE, results):
            print(f"updated: {DOCS_FILE}")
        else:
            print(f"not updated: {DOCS_FILE} lacks the {report.DOCS_START} markers")
    if not args.no_plots and results.cases:
        try:
            written = plots.render(path, args.plots_dir)
        except ImportError as exc:
            print(f"plots skipped: {exc} (pip install -e '.[bench]')")
        else:
            for plot in written:
                print(f"plot: {plot}")


def _render_only(args: argparse.Namespace) -> int:
    """``--render FILE``: the report and plots of an earlier run."""
    import json

    from benchmarks.common import CaseResult

    data = json.loads(args.render.read_text())
    results = Results(meta=data["meta"], skipped=data.get("skipped", []))
    for raw in data["cases"]:
        fields = {k: raw[k] for k in CaseResult.__dataclass_fields__ if k in raw}
        results.cases.append(CaseResult(**fields))
    results.targets = report.evaluate_targets(results)
    sys.stdout.write(report.render_text(results))
    if args.update_docs and report.update_docs(DOCS_FILE, results):
        print(f"updated: {DOCS_FILE}")
    if not args.no_plots:
        for plot in plots.render(args.render, args.plots_dir):
            print(f"plot: {plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; exit status 0 when it ran (targets are reported, not enforced)."""
    args = build_parser().parse_args(argv)
    if args.render:
        return _render_only(args)
    areas = [a.strip() for a in args.only.split(",") if a.strip()]
    unknown = sorted(set(areas) - set(AREAS))
    if unknown:
        print(f"unknown area(s): {', '.join(unknown)}; choose from {', '.join(AREAS)}")
        return 2
    if args.repeats < 1:
        print("--repeats must be at least 1")
        return 2
    if args.repeats < MIN_REPEATS:
        log(f"warning: {args.repeats} repetition(s); published numbers use >= {MIN_REPEATS}")
    _terminate_on_sigterm()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"bench-{stamp}.json"
    needs_lab = bool({"dhcp", "tftp", "bootstorm"} & set(areas))
    peers = find_peers(install=not args.no_install and needs_lab)
    import pxestack

    meta = machine_info()
    meta.update(
        quick=args.quick,
        repeats=args.repeats,
        areas=areas,
        pxestack_version=pxestack.__version__,
        peer_versions=peers.versions,
        command=" ".join([Path(sys.executable).name, "-m", "benchmarks", *(argv or sys.argv[1:])]),
    )
    results = Results(meta=meta)
    only_servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    try:
        if needs_lab and os.geteuid() != 0:
            for area in ("dhcp", "tftp", "bootstorm"):
                if area in areas:
                    results.skip(area, "all", "needs root for network namespaces")
        else:
            if "dhcp" in areas:
                from benchmarks.dhcp_bench import run_dhcp

                run_dhcp(results, peers, repeats=args.repeats, quick=args.quick, only=only_servers,
                         perfdhcp_threads=args.perfdhcp_threads)
                results.write(path)
            if "tftp" in areas:
                from benchmarks.tftp_bench import run_tftp

                cases = tuple(c for c in args.tftp_cases.split(",") if c)
                run_tftp(
                    results, peers, repeats=args.repeats, quick=args.quick, cases=cases,
                    only=only_servers,
                )  # fmt: skip
                results.write(path)
        if "bootstorm" in areas and os.geteuid() == 0:
            from benchmarks.bootstorm import run_bootstorm

            machines = args.storm_machines or (200 if args.quick else 1000)
            storm_workers = tuple(
                int(w) for w in args.storm_tftp_workers.split(",") if w.strip()) or (None,)
            run_bootstorm(results, repeats=args.repeats, machines=machines, rate=args.storm_rate,
                          tftp_workers=storm_workers)
            results.write(path)
        if "http" in areas:
            meta["http"] = _run_http(results, args.results_dir, stamp, args.quick)
        if "micro" in areas:
            meta["micro"] = _run_micro(args.results_dir, stamp, args.quick)
    finally:
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta["load_average_at_end"] = list(os.getloadavg())
        _finish(results, args, path)
    return 0
