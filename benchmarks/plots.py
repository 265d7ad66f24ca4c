"""PNG plots of a results file (matplotlib, Agg backend) into docs/benchmarks/.

One bar chart per area: for every case a group of bars, one per server, at the median with
min-max error bars.  Values are normalised to the best peer of each case so that cases with
different units share one axis; the absolute median is written above each bar.  The DHCP
rate search also gets a goodput-versus-target plot from the recorded steps.
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
}

#: The cases worth a plot (helper series such as NAK counts are left out).
PLOTTED = {
    "dhcp": ("dora_sustained", "do_sustained", "dora_unthrottled_goodput",
             "do_unthrottled_goodput"),
    "tftp": ("lockstep_1468", "window8_1468", "concurrent32", "lossy_1pct"),
    "http": (),
}  # fmt: skip


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _normalised_bars(data: dict[str, Any], area: str, output: Path) -> Path | None:
    """The per-area chart; returns its path, or None when there was nothing to draw."""
    cases = [
        c
        for c in PLOTTED.get(area, ())
        if any(r["case"] == c and r["area"] == area and r["values"] for r in data["cases"])
    ]
    if not cases:
        return None
    servers = list(
        dict.fromkeys(r["server"] for r in data["cases"] if r["area"] == area and r["values"])
    )
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(max(6.0, 2.2 * len(cases)), 4.2), dpi=110)
    width = 0.8 / max(len(servers), 1)
    for s_index, server in enumerate(servers):
        xs, heights, lows, highs, labels = [], [], [], [], []
        for c_index, case in enumerate(cases):
            record = next(
                (r for r in data["cases"]
                 if (r["area"], r["case"], r["server"]) == (area, case, server)),
                None,
            )  # fmt: skip
            if record is None or not record["values"]:
                continue
            peers = [
                statistics.median(r["values"])
                for r in data["cases"]
                if (r["area"], r["case"]) == (area, case) and r["server"] != PXESTACK
                and r["values"]
            ]  # fmt: skip
            higher = record["higher_is_better"]
            reference = (max(peers) if higher else min(peers)) if peers else record["median"]
            if not reference:
                continue
            # Times are inverted so that taller is better everywhere on the chart.
            scale = (lambda v, ref=reference: v / ref) if higher else (
                lambda v, ref=reference: ref / v if v else 0.0
            )  # fmt: skip
            median = scale(record["median"])
            values = [scale(v) for v in record["values"]]
            xs.append(c_index + (s_index - (len(servers) - 1) / 2) * width)
            heights.append(median)
            lows.append(median - min(values))
            highs.append(max(values) - median)
            labels.append(f"{record['median']:.3g}")
        bars = axes.bar(
            xs, heights, width, yerr=[lows, highs], capsize=3, label=server,
            color=COLOURS.get(server, "#7f7f7f"),
        )  # fmt: skip
        for bar, label in zip(bars, labels, strict=True):
            axes.annotate(
                label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                textcoords="offset points",
            )  # fmt: skip
    units = {r["case"]: r["unit"] for r in data["cases"] if r["area"] == area}
    axes.set_xticks(range(len(cases)))
    axes.set_xticklabels([f"{case}\n[{units[case]}]" for case in cases], fontsize=8)
    axes.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
    axes.set_ylabel("relative to the best peer (taller is better)")
    axes.set_title(f"{area.upper()}: median with min-max, labels are absolute medians")
    axes.legend(fontsize=8)
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
            _normalised_bars(data, "dhcp", output),
            _dhcp_steps(data, output),
            _normalised_bars(data, "tftp", output),
        )
        if path is not None
    ]
    return written
