"""The twistd dropin ships in the wheel and works from a fresh virtual environment.

Other Twisted projects (daphne #506, #557) lost their dropin from released wheels; this test
builds the wheel, checks its contents and installs it into a new venv.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
    )
    (built,) = out.glob("pxestack-*.whl")
    return built


@pytest.mark.slow
def test_wheel_contains_the_dropin_and_no_twisted_init(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/pxestack_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(name.endswith("dropin.cache") for name in names)
    assert "pxestack/config/quickstart.yaml" in names
    assert "pxestack/py.typed" in names
    # The extensions shipped with pxestack, and their entry points.
    assert {"pxestack_syslog/__init__.py", "pxestack_webhooks/__init__.py"} <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[pxestack.extensions]" in text
    assert "syslog = pxestack_syslog:SyslogExtension" in text
    assert "webhooks = pxestack_webhooks:WebhooksExtension" in text
    for data in ("templates/base.html.j2", "templates/machine_live.html.j2",
                 "static/dashboard.css", "static/dashboard.js"):
        assert f"pxestack/dashboard/{data}" in names


@pytest.mark.slow
def test_fresh_venv_lists_pxestack_in_twistd(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, timeout=600,
    )
    help_text = subprocess.run(
        [str(env_dir / "bin" / "twistd"), "--help"],
        check=True, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    ).stdout
    assert "pxestack" in help_text
    plugin_help = subprocess.run(
        [str(env_dir / "bin" / "twistd"), "pxestack", "--help"],
        check=True, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    ).stdout
    assert "--config" in plugin_help
    cli_help = subprocess.run(
        [str(env_dir / "bin" / "pxestack"), "--help"],
        check=True, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    ).stdout
    assert "serve" in cli_help
    # Discovery through the plugin API, as twistd does it.
    found = subprocess.run(
        [str(python), "-c",
         "from twisted.plugin import getPlugins; from twisted.application.service import "
         "IServiceMaker; print([p.tapname for p in getPlugins(IServiceMaker)])"],
        check=True, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    ).stdout
    assert "'pxestack'" in found


def test_dropin_is_found_in_the_development_tree(tmp_path: Path) -> None:
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert "pxestack" in makers
    options = makers["pxestack"].options()
    # A copy: building the services makes the state (token, cluster) beside the file.
    config = tmp_path / "quickstart.yaml"
    shutil.copy(ROOT / "examples" / "quickstart.yaml", config)
    options.parseOptions(["--config", str(config)])
    assert options.config_value is not None
    assert options.config_value.tftp is not None


def test_twistd_plugin_reports_config_problems(tmp_path: Path) -> None:
    from twisted.python import usage

    from pxestack.tap import Options

    bad = tmp_path / "bad.yaml"
    bad.write_text("tftp: {max_blksize: 1}\nnope: 1\n")
    with pytest.raises(usage.UsageError) as info:
        Options().parseOptions(["--config", str(bad)])
    assert "tftp.max_blksize: 1 is below the minimum 8" in str(info.value)
    assert "nope: unknown key" in str(info.value)
