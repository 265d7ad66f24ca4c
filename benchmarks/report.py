"""Turning :class:`~benchmarks.common.Results` into text: per-case tables, ratios, targets."""

from __future__ import annotations

from typing import Any

from benchmarks.common import PXESTACK, CaseResult, Results, Target, ratio

#: The issues' targets (issue 3 point 10, issue 4 point 7).  ``peer="fastest"`` means the
#: best peer median of that case.
TARGETS = (
    Target("DHCP sustained DORA/s >= 1.5x Kea, zero NAKs", "dhcp", "dora_sustained", "kea", 1.5,
           extra="zero NAKs"),
    Target("DHCP DISCOVER->OFFER/s >= 1.0x dnsmasq", "dhcp", "do_sustained", "dnsmasq", 1.0),
    Target("TFTP lock-step 1468 >= 1.0x fastest peer", "tftp", "lockstep_1468", "fastest", 1.0),
    Target("TFTP windowsize 8 >= 1.2x atftpd", "tftp", "window8_1468", "atftpd", 1.2),
    Target("TFTP 32 concurrent >= 1.0x tftpd-hpa", "tftp", "concurrent32", "tftpd-hpa", 1.0),
    Target("TFTP 1 % loss time <= 0.3x tftpd-hpa", "tftp", "lossy_1pct", "tftpd-hpa", 0.3,
           at_least=False),
)  # fmt: skip


def _median(record: CaseResult | None) -> float | None:
    summary = record.summary if record else None
    return summary.median if summary else None


def _peer_reference(results: Results, target: Target) -> tuple[str | None, float | None]:
    """The peer name and median a target compares against."""
    if target.peer != "fastest":
        return target.peer, _median(results.find(target.area, target.case, target.peer))
    best: tuple[str | None, float | None] = (None, None)
    for record in results.cases:
        if (record.area, record.case) != (target.area, target.case) or record.server == PXESTACK:
            continue
        value = _median(record)
        if value is None:
            continue
        improves = best[1] is None or (
            value > best[1] if record.higher_is_better else value < best[1]
        )
        if improves:
            best = (record.server, value)
    return best


def evaluate_targets(results: Results) -> list[dict[str, Any]]:
    """Check every target that both sides were measured for; returns JSON-ready records."""
    evaluated = []
    for target in TARGETS:
        own = results.find(target.area, target.case, PXESTACK)
        peer, reference = _peer_reference(results, target)
        value = _median(own)
        measured = ratio(value, reference)
        record: dict[str, Any] = {
            "name": target.name,
            "case": target.case,
            "peer": peer,
            "pxestack_median": value,
            "peer_median": reference,
            "ratio": measured,
            "required": f"{'>=' if target.at_least else '<='} {target.ratio}",
        }
        if measured is None:
            record["met"] = None
        else:
            met = measured >= target.ratio if target.at_least else measured <= target.ratio
            if target.extra == "zero NAKs":
                naks = results.find(target.area, "dora_naks", PXESTACK)
                nak_total = sum(naks.values) if naks else None
                record["pxestack_naks"] = nak_total
                met = met and nak_total == 0
            record["met"] = met
        evaluated.append(record)
    return evaluated


def _cases_in_order(results: Results) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for record in results.cases:
        key = (record.area, record.case)
        if key not in seen:
            seen.append(key)
    return seen


def render_text(results: Results) -> str:
    """The report printed at the end of a run: one table per case, then the targets."""
    lines: list[str] = []
    for area, case in _cases_in_order(results):
        records = [r for r in results.cases if (r.area, r.case) == (area, case)]
        unit = records[0].unit
        direction = "higher is better" if records[0].higher_is_better else "lower is better"
        lines.append(f"\n{area}/{case} [{unit}, {direction}]")
        if records[0].note:
            lines.append(f"  {records[0].note}")
        own = _median(results.find(area, case, PXESTACK))
        lines.append(f"  {'server':<10} {'median (min-max)':<32} {'runs':>8}  pxestack/server")
        for record in records:
            summary = record.summary
            shown = summary.format() if summary else "-"
            runs = f"{len(record.values)}/{len(record.values) + record.failures}"
            rel = ratio(own, summary.median if summary else None)
            rel_text = "" if record.server == PXESTACK or rel is None else f"{rel:.2f}x"
            lines.append(f"  {record.server:<10} {shown:<32} {runs:>8}  {rel_text}")
    if results.skipped:
        lines.append("\nnot measured:")
        lines.extend(f"  {s['area']}/{s['server']}: {s['reason']}" for s in results.skipped)
    if results.targets:
        lines.append("\ntargets (pxestack median / peer median):")
        for target in results.targets:
            if target["met"] is None:
                verdict = "not measured"
            else:
                verdict = "MET" if target["met"] else "NOT MET"
            shown = f"{target['ratio']:.2f}x" if target["ratio"] is not None else "-"
            lines.append(
                f"  {verdict:<12} {target['name']}: {shown} vs {target['peer']} "
                f"(required {target['required']})"
            )
    return "\n".join(lines) + "\n"


def render_markdown_tables(results: Results) -> str:
    """Markdown tables (one per area) of the medians, for pasting into docs/benchmarks.md."""
    out: list[str] = []
    for area in dict.fromkeys(r.area for r in results.cases):
        servers = list(dict.fromkeys(r.server for r in results.cases if r.area == area))
        out.append(f"\n| {area} case | " + " | ".join(servers) + " |")
        out.append("|---|" + "---|" * len(servers))
        for case_area, case in _cases_in_order(results):
            if case_area != area:
                continue
            unit = results.find(area, case, servers[0]) or next(
                r for r in results.cases if (r.area, r.case) == (area, case)
            )
            cells = []
            for server in servers:
                record = results.find(area, case, server)
                summary = record.summary if record else None
                cells.append(summary.format() if summary else "-")
            out.append(f"| {case} ({unit.unit}) | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
