"""``dhcp.router_advertisements`` adds the RA responder beside the DHCP service."""

from __future__ import annotations

from pathlib import Path

import pytest

from pxestack.config import ConfigError, load_config
from pxestack.ra import RouterAdvertisementService
from pxestack.service import Extensions
from pxestack.service.dhcp import build_dhcp_services

BASE = {
    "interfaces": ["pxs0"],
    "server_address": "198.18.0.1",
    "pools": [{"subnet": "198.18.0.0/15", "start": "198.19.0.10", "end": "198.19.0.200"}],
}


def test_enabled_adds_the_responder_on_the_dhcp_interfaces(tmp_path: Path) -> None:
    config = load_config(
        {"dhcp": {**BASE, "router_advertisements": {"enabled": True, "unicast": False}}},
        base_dir=tmp_path,
    )
    services = build_dhcp_services(config, Extensions())
    (responder,) = [s for s in services if isinstance(s, RouterAdvertisementService)]
    assert responder.interfaces == ("pxs0",)


def test_off_by_default(tmp_path: Path) -> None:
    config = load_config({"dhcp": BASE}, base_dir=tmp_path)
    assert config.dhcp is not None and not config.dhcp.router_advertisements.enabled
    services = build_dhcp_services(config, Extensions())
    assert not any(isinstance(s, RouterAdvertisementService) for s in services)


def test_enabled_without_interfaces_is_a_config_error(tmp_path: Path) -> None:
    data = {**BASE, "interfaces": [], "router_advertisements": {"enabled": True, "bogus": 1}}
    with pytest.raises(ConfigError) as info:
        load_config({"dhcp": data}, base_dir=tmp_path)
    assert [str(p) for p in info.value.problems] == [
        "dhcp.router_advertisements.bogus: unknown key",
        "dhcp.router_advertisements.enabled: router advertisements need dhcp.interfaces "
        "(the segments to answer on)",
    ]
