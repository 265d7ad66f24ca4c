"""The dashboard's pictures as plain numbers: a machine's boot timeline, the boot storm.

The templates draw inline SVG from what these functions return (rectangles in pixels and
their labels), so the pictures are rendered on the server, need no script, and every text
in them goes through the template's autoescaping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pxestack.bootevents import PHASE_LABELS, PHASES, BootEvent

#: Phases that are a moment (a state reached), drawn as a mark rather than a bar.
MOMENTS = frozenset({"installed", "running", "configured"})
#: Width of the drawing area of the timeline and the storm chart, in pixels.
WIDTH = 760
#: Left margin for the phase names.
LABEL_WIDTH = 130
#: Right margin, so that the last bar's label and the last tick fit.
RIGHT_MARGIN = 70
ROW_HEIGHT = 26
#: Bottom-up order of the storm chart's stacks: finished machines at the bottom, so the
#: bands sink as a storm proceeds; a reinstall request starts over, at the top.
STACK_ORDER = ("running", "installed", "installing", "enrolled", "kernel", "script",
               "dhcp_ipxe", "tftp", "dhcp_pxe", "configured")


def human_duration(seconds: float) -> str:
    """``850 ms``, ``4.2 s``, ``3 min 5 s``, ``2 h 4 min``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(int(seconds), 60)
        return f"{minutes} min {rest} s"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60} min"


@dataclass(frozen=True, slots=True)
class Bar:
    """One stretch of one phase on the timeline."""

    phase: str
    label: str
    row: int
    x: float
    width: float
    start: float
    end: float
    duration: str
    moment: bool
    #: Where the duration (or name, for a moment) is written, and its text-anchor.
    label_x: float = 0.0
    anchor: str = "start"


def latest_boot(steps: Sequence[BootEvent]) -> list[BootEvent]:
    """The steps of the newest boot: from the last start of a PXE DHCP exchange on."""
    start = 0
    for index, step in enumerate(steps):
        previous = steps[index - 1].phase if index else None
        if step.phase == "dhcp_pxe" and previous != "dhcp_pxe":
            start = index
    return list(steps[start:])


def timeline(steps: Sequence[BootEvent]) -> dict[str, Any]:
    """Bars for the newest boot in *steps* (oldest first): one row per phase seen, in boot
    order; a run of steps of one phase is one bar, from its first step's start to the start
    of the next phase (the last run ends at its last step)."""
    boot = latest_boot(steps)
    if not boot:
        return {"bars": [], "rows": [], "height": 0, "width": WIDTH, "total": "",
                "label_width": LABEL_WIDTH, "ticks": []}
    runs: list[list[BootEvent]] = []
    for step in boot:
        if runs and runs[-1][-1].phase == step.phase:
            runs[-1].append(step)
        else:
            runs.append([step])
    spans: list[tuple[str, float, float]] = []
    for index, run in enumerate(runs):
        start = min(s.started for s in run)
        if index + 1 < len(runs):
            end = max(min(s.started for s in runs[index + 1]), start)
        else:
            end = max(s.time for s in run)
        spans.append((run[0].phase, start, end))
    t0 = min(s[1] for s in spans)
    t1 = max(max(s[2] for s in spans), t0 + 1e-3)
    seen = [p for p in PHASES if any(s[0] == p for s in spans)]
    rows = {phase: i for i, phase in enumerate(seen)}
    span = WIDTH - LABEL_WIDTH - RIGHT_MARGIN
    scale = span / (t1 - t0)
    bars = []
    for phase, start, end in spans:
        x = LABEL_WIDTH + (start - t0) * scale
        width = max(2.0, (end - start) * scale)
        moment = phase in MOMENTS
        right = x + (10 if moment else width + 4)
        text = PHASE_LABELS[phase] if moment else human_duration(end - start)
        fits = right + 7 * len(text) <= WIDTH
        bars.append(Bar(
            phase=phase, label=PHASE_LABELS[phase], row=rows[phase],
            x=round(x, 1), width=round(width, 1),
            start=start - t0, end=end - t0, duration=human_duration(end - start),
            moment=moment, label_x=round(right if fits else x - (10 if moment else 4), 1),
            anchor="start" if fits else "end",
        ))
    ticks = [
        {"x": round(LABEL_WIDTH + i * span / 4, 1), "label": human_duration((t1 - t0) * i / 4)}
        for i in range(5)
    ]
    return {
        "bars": bars,
        "rows": [{"phase": p, "label": PHASE_LABELS[p], "y": i * ROW_HEIGHT}
                 for i, p in enumerate(seen)],
        "height": len(seen) * ROW_HEIGHT + 24,
        "width": WIDTH,
        "label_width": LABEL_WIDTH,
        "total": human_duration(t1 - t0),
        "ticks": ticks,
        "row_height": ROW_HEIGHT,
    }


def storm_chart(storm: Mapping[str, Any], *, height: int = 240) -> dict[str, Any]:
    """Stacked bars (machines per phase per time slice) from
    :meth:`~pxestack.bootevents.BootEventRecorder.storm`."""
    times: list[float] = list(storm.get("times", []))
    counts: Mapping[str, list[int]] = storm.get("counts", {})
    phases = [p for p in PHASES if any(counts.get(p, []))]
    if not times:
        return {"columns": [], "phases": [], "width": WIDTH, "height": height, "peak": 0,
                "span": "", "latest": {}}
    totals = [sum(counts[p][i] for p in phases) for i in range(len(times))]
    peak = max(max(totals), 1)
    slot = (WIDTH - 50) / len(times)
    columns = []
    for i in range(len(times)):
        y = float(height)
        parts = []
        for phase in sorted(phases, key=STACK_ORDER.index):
            n = counts[phase][i]
            if not n:
                continue
            h = n / peak * (height - 10)
            y -= h
            parts.append({"phase": phase, "label": PHASE_LABELS[phase], "count": n,
                          "y": round(y, 1), "height": round(h, 1)})
        columns.append({"x": round(45 + i * slot, 1), "width": round(max(1.0, slot - 1), 1),
                        "parts": parts})
    span = times[-1] - (times[0] - (times[1] - times[0] if len(times) > 1 else 0))
    return {
        "columns": columns,
        "phases": [{"phase": p, "label": PHASE_LABELS[p]} for p in phases],
        "width": WIDTH,
        "height": height,
        "peak": peak,
        "span": human_duration(max(span, 0.0)),
        "latest": {p: counts[p][-1] for p in phases},
    }


__all__ = ["Bar", "human_duration", "latest_boot", "storm_chart", "timeline"]
