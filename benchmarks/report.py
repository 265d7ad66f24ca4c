"""Turning :class:`~benchmarks.common.Results` into text: per-case tables, ratios, targets."""

from __future__ import annotations

from typing import Any

from benchmarks.common import PXESTACK, PYTHON_FLOOR, CaseResult, Results, Target, ratio

#: The DHCP and TFTP performance targets (docs/benchmarks.md, "Targets").  ``peer="fastest"`` means
#: the best peer median of that case (the python-floor reference is never a target's peer).
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
        if (record.area, record.case) != (target.area, target.case) or record.server in (
            PXESTACK, PYTHON_FLOOR
        ):
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


#: The absolute boot-storm target: this many machines provisioned within this many s.
STORM_TARGET = (1000, 60.0)


def _storm_target(results: Results) -> dict[str, Any] | None:
    """The boot-storm target record, when a 1000-machine storm was run."""
    machines, seconds = STORM_TARGET
    record = results.find("bootstorm", f"provision_{machines}", PXESTACK)
    if record is None:
        return None
    value = _median(record)
    return {
        "name": f"Boot storm: {machines} machines provisioned in < {seconds:.0f} s, checks pass",
        "case": record.case,
        "peer": None,
        "pxestack_median": value,
        "peer_median": None,
        "ratio": None,
        "required": f"< {seconds:.0f} s",
        "met": None
        if value is None and not record.failures
        else (value is not None and value < seconds and record.failures == 0),
    }


def evaluate_targets(results: Results) -> list[dict[str, Any]]:
    """Check every target that both sides were measured for; returns JSON-ready records."""
    evaluated = []
    storm = _storm_target(results)
    if storm is not None:
        evaluated.append(storm)
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
        lines.append(f"  {'server':<12} {'median (min-max)':<32} {'runs':>8}  pxestack/server")
        for record in records:
            summary = record.summary
            shown = summary.format() if summary else "-"
            runs = f"{len(record.values)}/{len(record.values) + record.failures}"
            rel = ratio(own, summary.median if summary else None)
            rel_text = "" if record.server == PXESTACK or rel is None else f"{rel:.2f}x"
            lines.append(f"  {record.server:<12} {shown:<32} {runs:>8}  {rel_text}")
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
            if target["peer"] is None:
                own = target["pxestack_median"]
                shown = "-" if own is None else f"{own:.1f}"
                lines.append(
                    f"  {verdict:<12} {target['name']}: {shown} (required {target['required']})"
                )
                continue
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


def render_docs_block(results: Results) -> str:
    """The generated part of docs/benchmarks.md: run facts, per-area tables, targets."""
    meta = results.meta
    load_start = ", ".join(f"{v:.2f}" for v in meta.get("load_average_at_start", []))
    load_end = ", ".join(f"{v:.2f}" for v in meta.get("load_average_at_end", []))
    versions = ", ".join(
        f"{name} {version}" for name, version in sorted(meta.get("peer_versions", {}).items())
        if version and name in ("kea", "dnsmasq", "perfdhcp", "tftpd-hpa", "atftpd", "atftp",
                                "curl")
    )  # fmt: skip
    lines = [
        f"Measured {meta.get('started', '?')} with `{meta.get('command', '?')}` "
        f"({meta.get('repeats', '?')} repetitions{', quick mode' if meta.get('quick') else ''}), "
        f"pxestack {meta.get('pxestack_version', '?')} at git {meta.get('git_revision', '?')}"
        f"{' with local changes' if meta.get('git_dirty') else ''}.",
        "",
        f"Machine: {meta.get('cpu_model', '?')}, {meta.get('cpus', '?')} vCPUs, "
        f"{meta.get('memory_gib', '?')} GiB, kernel {meta.get('kernel', '?')}, "
        f"Python {meta.get('python', '?')}. Load average (1, 5, 15 min) at the start: "
        f"{load_start}; at the end: {load_end}.",
        "",
        f"Peers: {versions}.",
    ]
    for area in dict.fromkeys(r.area for r in results.cases):
        servers = list(dict.fromkeys(r.server for r in results.cases if r.area == area))
        lines += ["", f"#### {area.upper()}", ""]
        lines.append("| case | unit | " + " | ".join(servers) + " |")
        lines.append("|---|---|" + "---|" * len(servers))
        for case_area, case in _cases_in_order(results):
            if case_area != area:
                continue
            records = [r for r in results.cases if (r.area, r.case) == (area, case)]
            cells = []
            for server in servers:
                record = results.find(area, case, server)
                summary = record.summary if record else None
                text = summary.format() if summary else "-"
                if record is not None and record.failures:
                    text += f" ({record.failures} failed)"
                if record is not None and any(run.get("capped") for run in record.runs):
                    text += " (top step passed)"
                cells.append(text)
            arrow = "higher is better" if records[0].higher_is_better else "lower is better"
            lines.append(f"| {case} | {records[0].unit}, {arrow} | " + " | ".join(cells) + " |")
    lines += _storm_phase_table(results)
    if results.targets:
        lines += ["", "#### Targets", ""]
        lines.append("| target | pxestack | peer | ratio | verdict |")
        lines.append("|---|---|---|---|---|")
        for target in results.targets:
            own = target["pxestack_median"]
            reference = target["peer_median"]
            verdict = (
                "not measured" if target["met"] is None else "met" if target["met"] else "NOT met"
            )
            measured = target["ratio"]
            lines.append(
                f"| {target['name']} | {'-' if own is None else f'{own:.4g}'} | "
                f"{_peer_cell(target['peer'], reference)} | "
                f"{'-' if measured is None else f'{measured:.2f}x'} | {verdict} |"
            )
    if results.skipped:
        lines += ["", "Not measured: " + "; ".join(
            f"{s['area']}/{s['server']} ({s['reason']})" for s in results.skipped
        ) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


DOCS_START = "<!-- bench:results:start -->"
DOCS_END = "<!-- bench:results:end -->"


def update_docs(path: Any, results: Results) -> bool:
    """Replace the generated block of *path* (between the markers); False if they are missing."""
    text = path.read_text()
    start, end = text.find(DOCS_START), text.find(DOCS_END)
    if start < 0 or end < start:
        return False
    block = f"{DOCS_START}\n{render_docs_block(results)}{DOCS_END}"
    path.write_text(text[:start] + block + text[end + len(DOCS_END) :])
    return True


def _storm_phase_table(results: Results) -> list[str]:
    """Per-phase latency percentiles of the median boot storm, as Markdown lines."""
    record = next(
        (r for r in results.cases if r.area == "bootstorm" and r.case.startswith("provision_")),
        None,
    )
    runs = [run for run in (record.runs if record else []) if "phases_s" in run]
    if not runs:
        return []
    runs.sort(key=lambda run: run.get("time_to_provision_all_s") or float("inf"))
    run = runs[len(runs) // 2]
    lines = [
        "",
        f"Boot storm (median run): {run['machines']} machines arriving at "
        f"{run['arrival_rate']:g}/s, git audit {'on' if run['git'] else 'off'}; all provisioned "
        f"after {run['time_to_provision_all_s']:.1f} s; server peak memory "
        f"{run['peak_rss_mib']:.0f} MiB; {run['git_commits']} git commits; checks "
        f"{'passed' if run['checks_passed'] else 'FAILED: ' + '; '.join(run['problems'])}.",
        "",
        "| phase | p50 s | p90 s | p99 s | max s |",
        "|---|---|---|---|---|",
    ]
    for phase, stats in {"whole flow": run["per_machine_total_s"], **run["phases_s"]}.items():
        if stats:
            lines.append(
                f"| {phase} | {stats['p50']:.3f} | {stats['p90']:.3f} | {stats['p99']:.3f} | "
                f"{stats['max']:.3f} |"
            )
    return lines


def _peer_cell(peer: str | None, reference: float | None) -> str:
    """``peer: median`` for the docs' targets table (``-`` for absolute targets)."""
    if peer is None:
        return "-"
    return f"{peer}: {'-' if reference is None else f'{reference:.4g}'}"
