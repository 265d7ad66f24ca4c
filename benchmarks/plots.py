"""PNG plots of a results file (matplotlib, Agg backend) into docs/benchmarks/.

One figure per area with a panel per case: a bar per server at the median, min-max error
bars, the median written above each bar, in the case's own unit.  The DHCP rate search also
gets a goodput-versus-target plot from every recorded step.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import PXESTACK

#: Stable colours: pxestack stands out, peers in muted tones.
COLOURS = {
    PXESTACK: "#d62728",
    "kea": "#1f77b4",
    "dnsmasq": "#2ca02c",
    "tftpd-hpa": "#9467bd",
    "atftpd": "#8c564b",
    "nginx": "#17becf",
    "static.File": "#bcbd22",
}

#: The cases worth a plot (helper series such as NAK counts are left out).
PLOTTED = {
    "dhcp": ("dora_sustained", "do_sustained", "dora_unthrottled_goodput",
             "do_unthrottled_goodput"),
    "tftp": ("lockstep_1468", "window8_1468", "concurrent32", "lossy_1pct"),
    "http": ("assets_1_clients", "assets_16_clients"),
}  # fmt: skip


def _label(value: float) -> str:
    """A bar label without exponent notation: whole numbers from 100 up, else 3 digits."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _case_panels(data: dict[str, Any], area: str, output: Path) -> Path | None:
    """One panel per case of *area*: a bar per server at the median, min-max error bars.

    Each panel has its own axis in the case's unit (times and rates do not share a scale);
    the title says whether higher or lower is better.  Returns the PNG path, or None when
    nothing of *area* was measured.
    """
    cases = [
        c
        for c in PLOTTED.get(area, ())
        if any(r["case"] == c and r["area"] == area and r["values"] for r in data["cases"])
    ]
    if not cases:
        return None
    plt = _pyplot()
    columns = min(len(cases), 2)
    rows = (len(cases) + columns - 1) // columns
    figure, grid = plt.subplots(
        rows, columns, figsize=(5.2 * columns, 3.4 * rows), dpi=110, squeeze=False
    )
    for index, case in enumerate(cases):
        axes = grid[index // columns][index % columns]
        records = [
            r for r in data["cases"] if (r["area"], r["case"]) == (area, case) and r["values"]
        ]
        names = [r["server"] for r in records]
        medians = [statistics.median(r["values"]) for r in records]
        lows = [m - min(r["values"]) for m, r in zip(medians, records, strict=True)]
        highs = [max(r["values"]) - m for m, r in zip(medians, records, strict=True)]
        bars = axes.bar(
            names, medians, yerr=[lows, highs], capsize=4,
            color=[COLOURS.get(name, "#7f7f7f") for name in names],
        )  # fmt: skip
        for bar, median in zip(bars, medians, strict=True):
            axes.annotate(
                _label(median), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                textcoords="offset points",
            )  # fmt: skip
        better = "higher" if records[0]["higher_is_better"] else "lower"
        axes.set_title(f"{case} ({better} is better)", fontsize=10)
        axes.set_ylabel(records[0]["unit"])
        axes.tick_params(axis="x", labelsize=8)
    for index in range(len(cases), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    figure.suptitle(f"{area.upper()}: median of the repetitions, bars show min-max", fontsize=11)
    figure.tight_layout()
    path = output / f"{area}.png"
    figure.savefig(path)
    plt.close(figure)
    return path


def _dhcp_steps(data: dict[str, Any], output: Path) -> Path | None:
    """Goodput against target rate for every DORA step of every repetition."""
    records = [
        r for r in data["cases"]
        if r["area"] == "dhcp" and r["case"] in ("dora_sustained", "do_sustained") and r["runs"]
    ]  # fmt: skip
    if not records:
        return None
    plt = _pyplot()
    from matplotlib import ticker

    figure, all_axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110, sharey=False)
    for axes, case in zip(all_axes, ("dora_sustained", "do_sustained"), strict=True):
        for record in records:
            if record["case"] != case:
                continue
            targets, goodputs = [], []
            for run in record["runs"]:
                for step in run.get("steps", []):
                    targets.append(step["target_rate"])
                    goodputs.append(step["goodput"])
            axes.scatter(
                targets, goodputs, s=14, label=record["server"],
                color=COLOURS.get(record["server"], "#7f7f7f"),
            )  # fmt: skip
        axes.set_xscale("log")
        axes.set_yscale("log")
        limits = axes.get_xlim()
        axes.plot(
            limits, limits, color="black", linewidth=0.6, linestyle=":", label="goodput = target"
        )
        for axis in (axes.xaxis, axes.yaxis):
            axis.set_major_formatter(ticker.ScalarFormatter())
            axis.set_minor_formatter(ticker.NullFormatter())
        axes.set_xlabel("target rate (/s)")
        axes.set_ylabel("goodput (/s)")
        axes.set_title("DORA" if case == "dora_sustained" else "DISCOVER→OFFER")
        axes.legend(fontsize=8)
    figure.tight_layout()
    path = output / "dhcp_steps.png"
    figure.savefig(path)
    plt.close(figure)
    return path


def render(results_file: Path, output: Path) -> list[Path]:
    """Render every plot for *results_file* into *output*; returns the written files."""
    data = json.loads(results_file.read_text())
    output.mkdir(parents=True, exist_ok=True)
    written = [
        path
        for path in (
            _case_panels(data, "dhcp", output),
            _dhcp_steps(data, output),
            _case_panels(data, "tftp", output),
            _case_panels(data, "http", output),
        )
        if path is not None
    ]
    return written
