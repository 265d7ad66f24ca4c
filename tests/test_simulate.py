"""``pxestack simulate`` and the quickstart it runs against: the whole boot on loopback, as a
newcomer does it (``serve``, then ``simulate``, then ``ctl list``), without root."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml

from pxestack.cli import build_parser
from pxestack.cli.ctl import DEFAULT_TOKEN_FILE, read_token
from pxestack.cli.serve import print_banner
from pxestack.cli.simulate import UsageError, build_spec, count_line
from pxestack.config import load_config, load_quickstart, quickstart_text
from pxestack.config.checks import create_token_file, serving_problems
from pxestack.errors import ConfigError
from pxestack.service.dhcp import boot_defaults
from pxestack.simulate import DONE, FAILED, Machine, StormSpec

PXESTACK = [sys.executable, "-m", "pxestack"]
#: The whole test run (server start, five machines, ctl) stays well inside this.
BUDGET = 30.0


# -- the quickstart ------------------------------------------------------------------------


def test_every_script_url_the_quickstart_hands_out_is_served(tmp_path: Path) -> None:
    from pxestack.provision.service import provisioning_extensions

    config = load_quickstart(base_dir=tmp_path)
    assert config.provision is not None and config.provision.api.token_file is not None
    create_token_file(config.provision.api.token_file)
    defaults = boot_defaults(config, IPv4Address("127.0.0.1"))
    assert defaults.ipxe_script_url == "http://127.0.0.1:8080/ipxebootscript"
    ext = provisioning_extensions(config)
    # The policy's answer and the default (for what the policy leaves open) are one URL,
    # and the HTTP service mounts its first segment.
    assert ext.boot_policy.script_url == defaults.ipxe_script_url
    assert b"ipxebootscript" in ext.http_children


def test_without_provisioning_the_script_is_an_asset(tmp_path: Path) -> None:
    config = load_config({"dhcp": {"pools": []}, "http": {"public_url": "http://h:8080"}},
                         base_dir=tmp_path)
    assert boot_defaults(config, IPv4Address(0)).ipxe_script_url == "http://h:8080/boot.ipxe"


def test_quickstart_token_is_generated_once_private_and_long(tmp_path: Path) -> None:
    config = load_quickstart(base_dir=tmp_path)
    assert config.provision is not None and config.provision.api.token_file is not None
    path = config.provision.api.token_file
    # Before the first start the missing file is no problem (it will be made).
    assert serving_problems(config) == []
    token = create_token_file(path)
    assert token is not None and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token
    assert create_token_file(path) is None  # never replaced
    assert path.read_text().strip() == token
    assert serving_problems(config) == []


def test_generate_token_needs_a_token_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"provision": {"api": {"generate_token": True}}}, base_dir=tmp_path)
    assert "provision.api.generate_token" in str(info.value)


def test_banner_prints_a_new_token_and_then_only_its_file(tmp_path: Path) -> None:
    import io

    config = load_quickstart(base_dir=tmp_path)
    first, later = io.StringIO(), io.StringIO()
    print_banner(config, "t" * 43, first)
    print_banner(config, None, later)
    assert "http://127.0.0.1:8080/" in first.getvalue()
    assert "t" * 43 in first.getvalue()
    assert "t" * 43 not in later.getvalue()
    assert "admin-token" in later.getvalue()


def _ctl_args(token_file: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(token_file=token_file)


def test_ctl_reads_the_quickstart_token_for_a_loopback_server_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PXESTACK_TOKEN", raising=False)
    assert read_token(_ctl_args(), "http://127.0.0.1:8080") is None
    DEFAULT_TOKEN_FILE.parent.mkdir()
    create_token_file(DEFAULT_TOKEN_FILE)
    token = DEFAULT_TOKEN_FILE.read_text().strip()
    assert read_token(_ctl_args(), "http://127.0.0.1:8080") == token
    assert read_token(_ctl_args(), "http://localhost:8080") == token
    assert read_token(_ctl_args(), "http://192.0.2.1:8080") is None
    monkeypatch.setenv("PXESTACK_TOKEN", "from-the-environment")
    assert read_token(_ctl_args(), "http://127.0.0.1:8080") == "from-the-environment"


# -- the command line ----------------------------------------------------------------------


def _simulate_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["simulate", *argv])


def test_defaults_fit_the_quickstart() -> None:
    spec = build_spec(_simulate_args())
    quickstart = yaml.safe_load(quickstart_text())
    assert spec.dhcp_server == ("127.0.0.1", 6767)
    assert f"{spec.dhcp_server[0]}:{spec.dhcp_server[1]}" == quickstart["dhcp"]["listen"]
    assert spec.client_port == 6768
    assert f"127.0.0.1:{spec.tftp_port}" == quickstart["tftp"]["listen"]
    assert spec.base_url == quickstart["http"]["public_url"]
    assert spec.bind_leased


def test_runs_get_distinct_serials_and_macs() -> None:
    first, second = build_spec(_simulate_args()), build_spec(_simulate_args())
    assert (first.serial_prefix, first.mac_prefix) != (second.serial_prefix, second.mac_prefix)
    assert first.mac_prefix[0] & 0x02  # locally administered


@pytest.mark.parametrize(("argv", "named"), [
    (["--machines", "0"], "--machines"),
    (["--rate", "0"], "--rate"),
    (["--timeout", "-1"], "--timeout"),
    (["--url", "ftp://x"], "--url"),
    (["--dhcp-server", "127.0.0.1"], "--dhcp-server"),
    (["--dhcp-server", "192.0.2.1:67"], "--dhcp-server"),
    (["--url", "http://192.0.2.1:8080"], "--url"),
])  # fmt: skip
def test_bad_options_are_named(argv: list[str], named: str) -> None:
    with pytest.raises(UsageError) as info:
        build_spec(_simulate_args(*argv))
    assert named in str(info.value)


def test_remote_servers_need_allow_remote() -> None:
    spec = build_spec(_simulate_args("--dhcp-server", "192.0.2.1:67", "--url",
                                     "http://192.0.2.1:8080", "--allow-remote"))
    assert spec.client_port == 68 and spec.tftp_port == 69 and not spec.bind_leased


def test_count_line() -> None:
    machines = [Machine(i, b"\x02" * 6, b"\x00" * 16, f"S{i}") for i in range(4)]
    machines[0].phase, machines[1].phase, machines[2].phase = "tftp", DONE, FAILED
    assert count_line(machines) == "waiting 1 · tftp 1 · installed 1 · failed 1"


def test_spec_from_the_benchmarks_json() -> None:
    spec = StormSpec.from_mapping({
        "machines": 3, "arrival_rate": 1.0, "server_ip": "198.18.0.1", "relay_ip": "198.18.0.2",
        "ifname": "veth0", "prefix": 15, "base_url": "http://198.18.0.1:8080",
    })  # fmt: skip
    assert spec.dhcp_server == ("198.18.0.1", 67)
    assert (spec.tftp_server, spec.tftp_port) == ("198.18.0.1", 69)


# -- serve, simulate, ctl list -------------------------------------------------------------


def _free_udp_pair() -> int:
    """A port P such that P and P + 1 are both free for UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind(("", port + 1))
                except OSError:
                    continue
                return int(port)
    raise AssertionError("no free pair of UDP ports")


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: The working directory, the ports (dhcp, tftp, http) and the ``pxestack serve`` process.
Server = tuple[Path, dict[str, int], subprocess.Popen[str]]


@pytest.fixture
def quickstart_server(tmp_path: Path) -> Iterator[Server]:
    """``pxestack serve`` on a copy of the quickstart whose ports are free ones."""
    ports = {"dhcp": _free_udp_pair(), "tftp": _free_port(socket.SOCK_DGRAM),
             "http": _free_port(socket.SOCK_STREAM)}
    data = yaml.safe_load(quickstart_text())
    data["dhcp"]["listen"] = f"127.0.0.1:{ports['dhcp']}"
    data["tftp"]["listen"] = f"127.0.0.1:{ports['tftp']}"
    data["http"]["listen"] = f"127.0.0.1:{ports['http']}"
    data["http"]["public_url"] = f"http://127.0.0.1:{ports['http']}"
    config = tmp_path / "pxestack.yaml"
    config.write_text(yaml.safe_dump(data))
    tftproot = tmp_path / "pxestack-state" / "tftproot"
    tftproot.mkdir(parents=True, mode=0o755)
    (tftproot / "undionly.kpxe").write_bytes(secrets.token_bytes(70_000))
    os.chmod(tmp_path / "pxestack-state", 0o700)
    server = subprocess.Popen(
        [*PXESTACK, "serve", "--config", str(config)], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield tmp_path, ports, server
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _read_until(server: subprocess.Popen[str], needle: str, deadline: float) -> list[str]:
    assert server.stderr is not None
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = server.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError("server never logged " + repr(needle) + ":\n" + "".join(lines))


def test_serve_then_simulate_five_then_ctl_list(
    quickstart_server: Server,
) -> None:
    workdir, ports, server = quickstart_server
    started = time.monotonic()
    log = _read_until(server, "pxestack running", started + 20)
    # A warning raised while the services were built is in the log, not lost.
    assert any("assets_root" in line and "not a directory" in line for line in log), log
    token_file = workdir / DEFAULT_TOKEN_FILE
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    base = f"http://127.0.0.1:{ports['http']}"
    env = {k: v for k, v in os.environ.items() if k not in ("PXESTACK_TOKEN", "PXESTACK_SERVER")}
    result = subprocess.run(
        [*PXESTACK, "simulate", "--machines", "5", "--rate", "20", "--url", base,
         "--dhcp-server", f"127.0.0.1:{ports['dhcp']}", "--tftp-port", str(ports["tftp"]),
         "--require-boot-file", "--timeout", "20"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=BUDGET, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 of 5 machines installed" in result.stdout
    assert "installed 5" in result.stdout  # the last live count line
    listing = subprocess.run(
        [*PXESTACK, "ctl", "--server", base, "list", "-o", "json"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=BUDGET, check=False,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    hosts = json.loads(listing.stdout)
    assert len(hosts) == 5
    assert {h["State"] for h in hosts} == {"installed"}
    assert len({h["Serial"] for h in hosts}) == 5
    assert time.monotonic() - started < BUDGET
    # The token was printed once, with the dashboard's URL.
    server.terminate()
    out, _ = server.communicate(timeout=10)
    assert token in out and f"{base}/" in out
