"""The deployment pieces under ``deploy/``: the systemd unit (``systemd-analyze verify``), the
Prometheus alert rules and the Grafana dashboard (``promtool check rules``), and every metric
name they use exists (docs/metrics.md and the pxestack.metrics package)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import require

from pxestack.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "pxestack.service"
ALERTS = DEPLOY / "prometheus-alerts.yml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
INSTALLED_BINARY = "/opt/pxestack/bin/pxestack"
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_runs_serve_with_capabilities_sandbox_and_run_as() -> None:
    unit = unit_settings()
    assert unit["ExecStart"] == [f"{INSTALLED_BINARY} serve --config /etc/pxestack/pxestack.yaml"]
    capabilities = set(unit["CapabilityBoundingSet"][0].split())
    assert {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID"} <= capabilities
    assert "CAP_NET_ADMIN" not in capabilities and "CAP_SYS_ADMIN" not in capabilities
    # root + run_as: the switch happens in pxestack, so nothing ambient and no User=.
    assert unit["AmbientCapabilities"] == [""] and "User" not in unit
    for key, value in [("ProtectSystem", "strict"), ("ReadWritePaths", "/var/lib/pxestack"),
                       ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes"), ("RestrictSUIDSGID", "yes")]:
        assert unit[key] == [value], key
    assert "AF_PACKET" in unit["RestrictAddressFamilies"][0]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    require(shutil.which("systemd-analyze") is not None,
            "needs systemd-analyze (Debian package systemd, installed by .ci/run)")
    # verify checks that ExecStart's binary exists: point it at this checkout's pxestack.
    binary = Path(sys.executable).parent / "pxestack"
    assert binary.exists()
    copy = tmp_path / "pxestack.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(binary)))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, timeout=120, check=False)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    # Unknown keys and bad values are only warnings, with status 0: none may appear.
    assert "pxestack.service" not in output, output


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in data["panels"]:
        exprs.extend(target["expr"] for target in panel.get("targets", ()))
    return exprs


def alert_exprs() -> list[str]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in data["groups"] for rule in group["rules"]]


def test_dashboard_is_well_formed() -> None:
    data = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
    names = [v["name"] for v in data["templating"]["list"]]
    assert names == ["datasource", "job", "instance"]


def metric_names(exprs: list[str]) -> set[str]:
    names = set()
    for expr in exprs:
        for name in re.findall(r"\b((?:pxestack|process)_[a-z0-9_]+)\b", expr):
            for suffix in SUFFIXES:
                if name.endswith(suffix) and not name.startswith("process_"):
                    name = name[: -len(suffix)]
                    break
            names.add(name)
    return names


@pytest.mark.parametrize("what", ["dashboard", "alerts"])
def test_every_metric_used_exists(what: str) -> None:
    exprs = dashboard_exprs() if what == "dashboard" else alert_exprs()
    names = metric_names(exprs)
    assert any(n.startswith("pxestack_") for n in names)
    documented = set(re.findall(r"`(pxestack_[a-z0-9_]+)`", (ROOT / "docs" / "metrics.md")
                                .read_text()))
    documented = {n[: -len("_total")] if n.endswith("_total") else n for n in documented}
    source = "".join(path.read_text() for path in (ROOT / "pxestack" / "metrics").glob("*.py"))
    exposition = Metrics().render()[0].decode()
    for name in sorted(names):
        if name.startswith("process_"):
            assert re.search(rf"^{name} ", exposition, re.MULTILINE), name
        else:
            assert name in documented, f"{name} is not in docs/metrics.md"
            assert f'"{name}"' in source, f"{name} is not registered in pxestack.metrics"


@pytest.mark.parametrize("what", ["dashboard", "alerts"])
def test_label_values_are_spelt_as_the_metrics_spell_them(what: str) -> None:
    """Event and outcome label values are words joined by ``_``: a query for
    ``pool-exhausted`` or ``timed-out`` would silently match nothing."""
    exprs = dashboard_exprs() if what == "dashboard" else alert_exprs()
    for expr in exprs:
        for label, text in re.findall(r'\b(event|outcome|state|phase)=~?"([^"]*)"', expr):
            assert "-" not in text, (label, text, expr)


def test_alert_rules_pass_promtool() -> None:
    require(shutil.which("promtool") is not None,
            "needs promtool (Debian package prometheus, installed by .ci/run)")
    result = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in result.stdout


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, checked by promtool as a
    recording rule (promtool parses the PromQL)."""
    require(shutil.which("promtool") is not None,
            "needs promtool (Debian package prometheus, installed by .ci/run)")
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        concrete = (expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
                    .replace("$instance", ".*").replace("$job", "pxestack"))
        assert "$" not in concrete, expr
        rules.append({"record": f"pxestack:dashboard_query_{i}", "expr": concrete})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
