"""The ``pxestack`` command line: version, help everywhere, config errors, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pxestack import __version__
from pxestack.cli import build_parser, main, subcommand_names

PXESTACK = [sys.executable, "-m", "pxestack"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pxestack {__version__}"


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "serve" in capsys.readouterr().out


@pytest.mark.parametrize("command", subcommand_names())
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    assert f"usage: pxestack {command}" in capsys.readouterr().out


def test_config_with_three_mistakes_names_all_three_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "dhcp:\n"
        "  pools:\n"
        "    - {subnet: 10.0.0.0/24, start: 10.0.0.300, end: 10.0.0.20}\n"
        "tftp:\n"
        "  max_blksize: 70000\n"
        "htp:\n"
        "  listen: 0.0.0.0:80\n"
    )
    result = subprocess.run(
        [*PXESTACK, "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"pxestack: 3 problem(s) in {path}:"
    assert lines[1:] == [
        "  dhcp.pools[0].start: '10.0.0.300' is not an IPv4 address",
        "  tftp.max_blksize: 70000 is above the maximum 65464",
        "  htp: unknown key",
    ]


def test_check_accepts_the_quickstart(tmp_path: Path) -> None:
    result = subprocess.run(
        [*PXESTACK, "serve", "--check"], cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout


def free_config(tmp_path: Path) -> Path:
    """A config like the quickstart but on ephemeral ports, so tests never collide."""
    path = tmp_path / "pxestack.yaml"
    path.write_text(
        "state_dir: state\n"
        "dhcp:\n"
        "  listen: 127.0.0.1:0\n"
        "  proxy_port: 0\n"
        "  server_address: 127.0.0.1\n"
        "  pools: [{subnet: 127.0.0.0/8, start: 127.0.10.10, end: 127.0.10.20}]\n"
        "tftp: {listen: '127.0.0.1:0', root: tftproot}\n"
        "http: {listen: '127.0.0.1:0', public_url: 'http://127.0.0.1:8080'}\n"
    )
    return path


def wait_for_line(
    proc: subprocess.Popen[str], needle: str, count: int, timeout: float
) -> list[str]:
    """Read stderr lines until *needle* was seen *count* times."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    hits = 0
    while hits < count and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        hits += needle in line
    assert hits >= count, "".join(seen)
    return seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_shuts_down_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    config = free_config(tmp_path)
    proc = subprocess.Popen(
        [*PXESTACK, "serve", "--config", str(config)], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Logged after the reactor installed its signal handlers and every port is open.
        wait_for_line(proc, "pxestack running", 1, timeout=60)
        started = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "pxestack stopped" in err
    assert elapsed < 2.0, f"shutdown took {elapsed:.2f}s"


def test_json_log_format(tmp_path: Path) -> None:
    """One JSON object per line: the rendered message, the level's name and flat fields;
    a warning raised while the services are built is among them; Twisted's "Starting
    protocol <... at 0x...>" lines are not (shown at debug only)."""
    config = free_config(tmp_path)
    config.write_text(config.read_text().replace(
        "http: {listen: '127.0.0.1:0',", "http: {listen: '127.0.0.1:0', assets_root: no-such-dir,"))
    proc = subprocess.Popen(
        [*PXESTACK, "serve", "--config", str(config), "--log-format", "json"], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = wait_for_line(proc, "pxestack running", 1, timeout=60)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [json.loads(line) for line in lines if line.strip()]
    assert all({"time", "level", "namespace", "message"} <= set(e) for e in events)
    listening = [e for e in events if e["message"].startswith("listening on udp 127.0.0.1:")]
    assert listening and isinstance(listening[0]["port"], int)
    assert [e["level"] for e in events if "is not a directory" in e["message"]] == ["warn"]
    assert not [e for e in events if "Starting protocol" in e["message"]
                or "starting on" in e["message"] or "{" in e["message"]]


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run([*PXESTACK, "--version"], capture_output=True, text=True,
                            timeout=60, check=False, env={**os.environ})
    assert result.stdout.strip() == f"pxestack {__version__}"


def test_migrate_mayu_prints_a_provision_section(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [*PXESTACK, "migrate-mayu", str(root / "examples" / "mayu-config.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    import yaml

    from pxestack.config import load_config

    data = yaml.safe_load(result.stdout)
    config = load_config(data, base_dir=tmp_path)
    assert config.provision is not None
    assert [p.name for p in config.provision.profiles][:1] == ["core"]
    # The whole mayu config, its DHCP, TFTP and HTTP parts included, not only provision:.
    assert config.dhcp is not None and config.tftp is not None and config.http is not None
    assert list(config.dhcp.interfaces) == ["eth1"]
    assert str(config.dhcp.server_address) == "198.18.0.1"
    [pool] = config.dhcp.pools
    assert (str(pool.start), str(pool.end)) == ("198.18.0.100", "198.18.0.150")
    assert config.http.public_url.startswith("http://198.18.0.1:")
    assert "network.bootstrap_range -> dhcp.pools[0]" in result.stderr
    assert "network.pxe -> tftp" in result.stderr


def test_migrate_mayu_reports_what_does_not_map(tmp_path: Path) -> None:
    mayu = tmp_path / "config.yaml"
    mayu.write_text("default_coreos_version: 1.0\nnetwork:\n  network_model: bridge\n")
    result = subprocess.run(
        [*PXESTACK, "migrate-mayu", str(mayu)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "network.network_model" in result.stderr


def test_tftp_refuses_a_missing_root_unless_create(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "no" / "tftproot"
    assert main(["tftp", "--root", str(missing), "--listen", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert f"--root {missing} does not exist" in err and "--create" in err
    assert not missing.exists()
    started = []
    monkeypatch.setattr("pxestack.cli._run.run_service",
                        lambda root, config: started.append(config.tftp.root) or 0)
    assert main(["tftp", "--root", str(missing), "--listen", "127.0.0.1:0", "--create"]) == 0
    assert missing.is_dir() and started == [missing]
    assert "created --root" in capsys.readouterr().err


@pytest.mark.parametrize("error", ["config", "locked"])
def test_a_failed_build_still_writes_its_warnings_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    error: str,
) -> None:
    """Warnings logged while the services are built wait in twisted.logger's start-up
    buffer until the log format is known; when building fails, serve starts logging (which
    writes them) before it reports the failure, as a successful start would."""
    import pxestack.app
    import pxestack.cli._run
    from pxestack.config import ConfigError, ConfigProblem
    from pxestack.provision.statelock import StateLocked

    order: list[str] = []

    def failing_build(config: object) -> object:
        order.append("built with a warning")
        if error == "config":
            raise ConfigError([ConfigProblem("http.tls.cert_file", "unreadable")])
        raise StateLocked(tmp_path, None)

    def start_logging(log_format: str, level: str, stream: object = None) -> None:
        order.append(f"logging started ({log_format}, {level})")

    monkeypatch.setattr(pxestack.app, "build_root_service", failing_build)
    monkeypatch.setattr(pxestack.cli._run, "start_logging", start_logging)
    code = main(["serve", "--config", str(free_config(tmp_path)), "--log-format", "json"])
    assert code == (2 if error == "config" else 1)
    assert order == ["built with a warning", "logging started (json, info)"]
    err = capsys.readouterr().err
    assert ("http.tls.cert_file: unreadable" if error == "config" else "cannot start") in err
