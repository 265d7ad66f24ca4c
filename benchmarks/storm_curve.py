"""The boot-storm curve: goodput and time to the last installed machine against arrival rate.

    .venv/bin/python -m benchmarks.storm_curve [--sizes 1000,3000,10000]
        [--rates 25,50,100,200,400] [--tftp-workers 1,2] [--no-git] [--no-admission]
        [--results docs/benchmarks/bootstorm_curve.json]
        [--plot docs/benchmarks/bootstorm_curve.png] [--plot-only]

Runs one :mod:`benchmarks.bootstorm` storm per (storm size, arrival rate, ``tftp.workers``)
against a fresh server, every check of the storm applied, and appends each point to the
results file as soon as it is measured (a sweep cut short keeps what it measured; a point
already in the file is not measured again unless ``--again``).  ``--plot-only`` draws the
plot from the file.  Goodput is machines installed per second from the first arrival to
the last ``set_installed``; the server's peak memory (VmHWM) is kept with each point.

On a shared machine the figures move with everyone else's load: each point records the
load average before and after it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.bootstorm import describe, run_once
from benchmarks.common import PLOTS_DIR, log

DEFAULT_RESULTS = PLOTS_DIR / "bootstorm_curve.json"
DEFAULT_PLOT = PLOTS_DIR / "bootstorm_curve.png"


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def point_key(point: dict[str, Any]) -> tuple[int, float, int, bool, bool]:
    """What identifies a point of the sweep."""
    return (int(point["machines"]), float(point["arrival_rate"]),
            int(point.get("tftp_workers") or 0), bool(point["git"]),
            bool(point.get("admission", True)))


def load_points(path: Path) -> list[dict[str, Any]]:
    """The points measured so far (none when the file does not exist)."""
    if not path.exists():
        return []
    points: list[dict[str, Any]] = json.loads(path.read_text())
    return points


def save_point(path: Path, point: dict[str, Any]) -> None:
    """Add *point* to the file, replacing an earlier measurement of the same key."""
    points = [p for p in load_points(path) if point_key(p) != point_key(point)]
    points.append(point)
    points.sort(key=point_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(points, indent=1) + "\n")


def summary(point: dict[str, Any]) -> dict[str, Any]:
    """The fields of one storm the curve keeps (the per-phase detail too, not the log)."""
    keep = ("machines", "arrival_rate", "git", "tftp_workers", "admission", "installed",
            "goodput_per_s", "time_to_provision_all_s", "peak_rss_mib", "boot_restarts",
            "held_back", "admission_knobs",
            "load_average", "checks_passed", "problems", "per_machine_total_s", "phases_s",
            "tftp_refusals", "client_cpu_s")
    return {key: point.get(key) for key in keep}


def plot(points: list[dict[str, Any]], output: Path) -> Path | None:
    """Two panels: goodput and time to the last installed machine, against arrival rate;
    one line per (storm size, ``tftp.workers``, admission).  None when there is nothing."""
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[int, int, bool, bool], list[dict[str, Any]]] = {}
    for point in points:
        key = (int(point["machines"]), int(point.get("tftp_workers") or 0),
               bool(point["git"]), bool(point.get("admission", True)))
        series.setdefault(key, []).append(point)
    figure, (goodput_axis, time_axis) = plt.subplots(1, 2, figsize=(12, 4.8))
    for (machines, workers, git, admission), items in sorted(series.items()):
        items.sort(key=lambda p: p["arrival_rate"])
        rates = [p["arrival_rate"] for p in items]
        label = (f"{machines} machines, tftp.workers {workers or 'default'}"
                 f"{'' if git else ', git off'}{'' if admission else ', admission off'}")
        style = "-" if workers != 1 else "--"
        goodput_axis.plot(rates, [p["goodput_per_s"] for p in items], style, marker="o",
                          label=label)
        for p in items:
            if not p["checks_passed"]:
                goodput_axis.plot([p["arrival_rate"]], [p["goodput_per_s"]], "kx",
                                  markersize=10)
        time_axis.plot(rates, [p["time_to_provision_all_s"] or float("nan") for p in items],
                       style, marker="o", label=label)
    goodput_axis.set(xlabel="arrival rate (machines/s)",
                     ylabel="machines installed per second",
                     title="goodput (x: a check failed)")
    time_axis.set(xlabel="arrival rate (machines/s)", ylabel="seconds",
                  title="first arrival to last machine installed")
    all_rates = sorted({float(p["arrival_rate"]) for p in points})
    for axis in (goodput_axis, time_axis):
        axis.set_xscale("log", base=2)
        axis.set_xticks(all_rates, [f"{rate:g}" for rate in all_rates])
        axis.minorticks_off()
        axis.grid(True, alpha=0.3)
    goodput_axis.set_ylim(bottom=0)
    time_axis.set_yscale("log")
    goodput_axis.legend(fontsize=7)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def table(points: list[dict[str, Any]]) -> str:
    """The points as the Markdown table of docs/benchmarks.md."""
    lines = [
        "| machines | arrival /s | tftp.workers | admission | installed | goodput /s "
        "| first arrival to last installed, s | held back | failed boots (phase: count) "
        "| peak RSS, MiB | load avg before / after | checks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(points, key=point_key):
        load = p.get("load_average") or [0.0] * 6
        restarts = ", ".join(f"{k}: {v}" for k, v in (p.get("boot_restarts") or {}).items())
        wall = p.get("time_to_provision_all_s")
        lines.append(
            f"| {p['machines']} | {p['arrival_rate']:g} | {p.get('tftp_workers') or 'default'} "
            f"| {'on' if p.get('admission', True) else 'off'} | {p.get('installed')} "
            f"| {p.get('goodput_per_s', 0.0):.1f} | {wall:.1f} | {p.get('held_back', '-')} "
            f"| {restarts or 'none'} | {p.get('peak_rss_mib', 0.0):.0f} "
            f"| {load[0]:.1f} / {load[3]:.1f} | {'pass' if p.get('checks_passed') else 'FAIL'} |"
            if wall is not None else
            f"| {p['machines']} | {p['arrival_rate']:g} | {p.get('tftp_workers') or 'default'} "
            f"| - | {p.get('installed')} | - | - | - | {restarts or 'none'} | - | - | FAIL |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the sweep (or only plot it); exit status 1 when any storm failed a check."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.storm_curve",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,3000,10000")
    parser.add_argument("--rates", default="25,50,100,200,400")
    parser.add_argument("--tftp-workers", default="1,2",
                        help="tftp.workers values; 1 serves TFTP in the main process")
    parser.add_argument("--no-git", action="store_true")
    parser.add_argument("--no-admission", action="store_true")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--table", action="store_true",
                        help="print the points as a Markdown table (with --plot-only)")
    parser.add_argument("--again", action="store_true", help="measure points already in the file")
    args = parser.parse_args(argv)
    failures = 0
    if not args.plot_only:
        done = {point_key(p) for p in load_points(args.results)}
        for machines in _ints(args.sizes):
            for rate in _ints(args.rates):
                for workers in _ints(args.tftp_workers):
                    key = (machines, float(rate), workers, not args.no_git,
                           not args.no_admission)
                    if key in done and not args.again:
                        continue
                    log(f"storm curve: {machines} machines at {rate}/s, tftp.workers {workers}")
                    try:
                        run = run_once(machines, float(rate), git=not args.no_git,
                                       tftp_workers=workers, admission=not args.no_admission)
                    except Exception as exc:  # one broken storm must not end the sweep
                        log(f"  storm failed: {exc}")
                        failures += 1
                        continue
                    log(describe(run))
                    failures += not run["checks_passed"]
                    save_point(args.results, summary(run))
    if args.table:
        print(table(load_points(args.results)))
    drawn = plot(load_points(args.results), args.plot)
    if drawn is not None:
        log(f"plot: {drawn}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
