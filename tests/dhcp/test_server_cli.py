"""``pxestack dhcp`` quick mode: flags become the same configuration a YAML file gives."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from pxestack.cli import build_parser, main
from pxestack.cli.dhcp import config_from_args, mapping_from_args


def parse(*argv: str) -> object:
    return build_parser().parse_args(["dhcp", *argv])


def test_server_flags_become_a_pool_with_options(tmp_path: Path) -> None:
    args = parse(
        "--interface", "pxt-none0", "--range", "198.18.0.100,198.18.0.200,255.254.0.0",
        "--router", "198.18.0.1", "--dns", "198.18.0.1", "--dns", "198.18.0.2",
        "--lease-time", "600", "--boot-url", "http://198.18.0.1:8080/boot.ipxe",
        "--tftp-server", "198.18.0.1", "--state-dir", str(tmp_path),
    )
    config = config_from_args(args)  # type: ignore[arg-type]
    assert config is not None and config.dhcp is not None
    dhcp = config.dhcp
    assert dhcp.mode == "server" and dhcp.interfaces == ("pxt-none0",)
    [pool] = dhcp.pools
    assert pool.subnet == IPv4Network("198.18.0.0/15")
    assert (pool.start, pool.end) == (IPv4Address("198.18.0.100"), IPv4Address("198.18.0.200"))
    assert pool.router == IPv4Address("198.18.0.1") and len(pool.dns) == 2
    assert dhcp.lease_time == 600 and dhcp.proxy_port == 0
    assert dhcp.boot.ipxe_script_url == "http://198.18.0.1:8080/boot.ipxe"
    assert dhcp.boot.tftp_server == IPv4Address("198.18.0.1")
    assert config.state_dir == tmp_path


def test_proxy_flags() -> None:
    mapping = mapping_from_args(parse("--interface", "eth1", "--proxy",  # type: ignore[arg-type]
                                      "--boot-url", "http://x/boot.ipxe"))
    dhcp = mapping["dhcp"]
    assert isinstance(dhcp, dict)
    assert dhcp["mode"] == "proxy" and dhcp["proxy_port"] == 4011 and "pools" not in dhcp
    assert "server_address" not in dhcp


def test_server_address_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """Beside a site server on the same interface the proxy must name its own address."""
    mapping = mapping_from_args(parse("--interface", "eth1", "--proxy",  # type: ignore[arg-type]
                                      "--server-address", "198.18.0.2"))
    assert mapping["dhcp"]["server_address"] == "198.18.0.2"  # type: ignore[index]
    assert main(["dhcp", "--proxy", "--server-address", "198.18.0.300", "--check"]) == 2
    assert "dhcp.server_address: '198.18.0.300' is not an IPv4 address" in capsys.readouterr().err


def test_range_without_netmask_and_unknown_interface_defaults_to_a_slash_24() -> None:
    mapping = mapping_from_args(parse("--interface", "pxt-none0",  # type: ignore[arg-type]
                                      "--range", "10.1.2.10,10.1.2.20"))
    [pool] = mapping["dhcp"]["pools"]  # type: ignore[index]
    assert pool["subnet"] == "10.1.2.0/24"


def test_bad_flags_are_reported_with_key_paths(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["dhcp", "--range", "10.0.0.300,10.0.0.5", "--router", "nope", "--check"])
    assert status == 2
    err = capsys.readouterr().err
    assert "dhcp.pools[0].start: '10.0.0.300' is not an IPv4 address" in err
    assert "dhcp.pools[0].router: 'nope' is not an IPv4 address" in err


def test_server_mode_needs_a_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dhcp", "--interface", "lo", "--check"]) == 2
    assert "--range" in capsys.readouterr().err


def test_check_accepts_a_valid_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dhcp", "--listen", "127.0.0.1:6767", "--range",
                 "127.0.20.10,127.0.20.20,255.0.0.0", "--check"]) == 0
    assert "valid" in capsys.readouterr().out
