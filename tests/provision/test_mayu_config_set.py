"""``mayuctl config --method set``: its 2017 config struct is accepted and merged, and a
later edit of the configuration file is reported at start-up, not silently ignored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from provision_helpers import ADMIN_TOKEN, Client
from twisted.logger import LogLevel, globalLogPublisher
from twisted.web.resource import Resource

from pxestack.config import load_config
from pxestack.provision.api import synchronous_runner
from pxestack.provision.service import provisioning_extensions

#: What ``mayuctl config --method set`` sends after a get -> edit (quantity 1 -> 2): its
#: struct has no ``subnet_gateway``, ``ntp`` or ``dns`` field, and always writes the two
#: host lists mayu once had.
MAYUCTL_SET = b"""default_coreos_version: 3975.2.0
network:
  ip_range:
    start: 198.18.10.10
    end: 198.18.10.200
  subnet_size: "24"
  network_model: singlenic
  bond_mode: 802.3ad
  ignoredhosts: []
  statichosts: []
profiles:
- name: core
  quantity: 2
templates_env: {}
"""


def config_file(tmp_path: Path, gateway: str = "198.18.10.1") -> Path:
    path = tmp_path / "pxestack.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "http": {"listen": "127.0.0.1:18080", "public_url": "http://198.18.0.1:18080"},
        "provision": {
            "api": {"token": ADMIN_TOKEN},
            "default_os_version": "3975.2.0",
            "network": {
                "ip_range": {"start": "198.18.10.10", "end": "198.18.10.200"},
                "subnet_size": 24, "subnet_gateway": gateway,
                "dns": ["198.18.10.1"], "ntp": ["pool.ntp.org"],
            },
            "profiles": [{"name": "core", "quantity": 1}],
        },
    }))
    return path


def start(path: Path) -> tuple[Any, Client]:
    from pxestack.config import load_config_file

    ext = provisioning_extensions(load_config_file(path))
    root = Resource()
    for name, child in ext.http_children.items():
        root.putChild(name, child)
    ext.http_children[b"admin"].api.run = synchronous_runner
    return ext, Client(root)


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_mayuctls_config_set_is_accepted_and_unknown_keys_survive(tmp_path):
    ext, client = start(config_file(tmp_path))
    answer = client.request("PUT", "/admin/mayu_config", MAYUCTL_SET,
                            headers={"Content-Type": "text/plain"}, token=ADMIN_TOKEN)
    assert answer.code == 202, answer.body
    config = ext.boot_policy.provisioner.config
    assert config.profiles[0].quantity == 2
    assert str(config.network.subnet_gateway) == "198.18.10.1"
    assert config.network.ntp == ("pool.ntp.org",)
    shown = yaml.safe_load(client.request("GET", "/admin/mayu_config", token=ADMIN_TOKEN).body)
    assert shown["network"]["subnet_gateway"] == "198.18.10.1"
    assert shown["network"]["dns"] == ["198.18.10.1"]
    saved = yaml.safe_load((config.cluster_dir / "mayu-config.yaml").read_text())
    assert saved["network"]["subnet_gateway"] == "198.18.10.1"  # a restart applies the same


@pytest.mark.parametrize("name", ["ignoredhosts", "statichosts"])
def test_non_empty_host_lists_are_refused_with_a_reason(tmp_path, name):
    ext, client = start(config_file(tmp_path))
    body = MAYUCTL_SET.replace(f"{name}: []".encode(), f"{name}: [52:54:00:00:00:01]".encode())
    answer = client.request("PUT", "/admin/mayu_config", body, token=ADMIN_TOKEN)
    assert answer.code == 400
    assert f"network.{name}".encode() in answer.body and b"must be empty" in answer.body
    assert ext.boot_policy.provisioner.config.profiles[0].quantity == 1
    assert not (ext.boot_policy.provisioner.config.cluster_dir / "mayu-config.yaml").exists()


def test_a_later_edit_of_the_file_is_reported_at_start_up(tmp_path, logged):
    path = config_file(tmp_path)
    _ext, client = start(path)
    assert client.request("PUT", "/admin/mayu_config", MAYUCTL_SET,
                          token=ADMIN_TOKEN).code == 202
    logged.clear()
    start(path)  # nothing edited: the saved settings equal file + API change
    warnings = [e for e in logged if e.get("log_level") is LogLevel.warn]
    assert warnings and "profiles" in warnings[0]["keys"]
    logged.clear()
    config_file(tmp_path, gateway="198.18.10.254")  # an operator edits the file later
    ext, _client = start(path)
    warnings = [e for e in logged if e.get("log_level") is LogLevel.warn]
    assert len(warnings) == 1
    event = warnings[0]
    assert "network.subnet_gateway" in event["keys"]
    assert "wins over" in event["log_format"]
    assert str(path) == event["source"]
    assert "modified after" in event["newer"] or event["newer"] == ""
    # the API's settings are the ones in force, as the warning says
    assert str(ext.boot_policy.provisioner.config.network.subnet_gateway) == "198.18.10.1"


def test_the_same_settings_are_logged_at_info(tmp_path, logged):
    config = load_config({
        "state_dir": str(tmp_path / "state"),
        "http": {"listen": "127.0.0.1:18080", "public_url": "http://198.18.0.1:18080"},
        "provision": {"profiles": [{"name": "core", "quantity": 1}]},
    })
    assert config.provision is not None
    provisioning_extensions(config)
    from pxestack.provision.mayu_import import export_mayu

    (config.provision.cluster_dir / "mayu-config.yaml").write_text(export_mayu(config.provision))
    logged.clear()
    provisioning_extensions(config)
    assert not [e for e in logged if e.get("log_level") is LogLevel.warn]
