"""mayu's cloud-config era: ``config_format: cloud-config`` profiles install Flatcar with a
first-stage and a last-stage cloud-config, rendered as validated YAML at mayu's paths."""

from __future__ import annotations

import pytest
import yaml
from provision_helpers import ADMIN_TOKEN, host_data, make_rig, token_from_script

from pxestack.config import load_config
from pxestack.errors import ConfigError

PROFILES = [
    {"name": "core", "quantity": 2, "tags": ["role=core"], "config_format": "cloud-config"},
    {"name": "worker", "quantity": 5},
]


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path / "cluster", profiles=PROFILES)


def test_the_cloud_config_flow_end_to_end(rig):
    client = rig.client
    boot = client.request("GET", "/ipxebootscript?serial=SN-C1&uuid=&mac=52-54-00-00-00-01")
    assert boot.code == 200
    script = boot.body.decode()
    assert "cloud-config-url=http://198.18.0.1:8080/first-stage-cloudconfig.yaml" in script
    assert "next-script=http://198.18.0.1:8080/first-stage-script/__SERIAL__" in script
    assert "ignition.config.url" not in script
    assert rig.provisioner.get("sn-c1").host.profile == "core"

    first = client.request("GET", "/first-stage-cloudconfig.yaml")
    assert first.code == 200 and first.header("Content-Type").startswith("text/yaml")
    text = first.body.decode()
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    assert document["coreos"]["units"][0]["name"] == "pxestack-installer.service"
    assert "next-script" in document["write_files"][0]["content"]

    installer = client.request("GET", "/first-stage-script/sn-c1")
    assert installer.code == 200
    shell = installer.body.decode()
    assert "-o \"$CONFIG\" http://198.18.0.1:8080/final-cloud-config.yaml" in shell
    assert "CONFIG_FLAG=-c" in shell and "final-ignition-config.json" not in shell
    token = token_from_script(shell)

    # the host data POSTed where mayu's installer posted it (cloud-config era)
    wrong = client.request("POST", "/final-ignition-config.json",
                           host_data("sn-c1", ["52:54:00:00:00:01"]), token=token)
    assert wrong.code == 409 and b"final-cloud-config.yaml" in wrong.body
    final = client.request("POST", "/final-cloud-config.yaml",
                           host_data("sn-c1", ["52:54:00:00:00:01"]), token=token)
    assert final.code == 200, final.body
    assert final.header("Content-Type").startswith("text/yaml")
    text = final.body.decode()
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    host = rig.provisioner.get("sn-c1").host
    assert host.state.value == "installing"
    assert config["hostname"] == host.hostname
    assert config["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3Nza test@example"]
    env = dict(line.split("=", 1) for line in config["write_files"][0]["content"].splitlines())
    assert env["SERIAL"] == "sn-c1" and env["PXESTACK_TOKEN"] == token
    units = {unit["name"]: unit for unit in config["coreos"]["units"]}
    network = units["00-pxestack.network"]["content"]
    assert "Name=eno1\n" in network
    assert f"Address={host.internal_addr}/24\n" in network
    assert "Gateway=198.18.10.1\n" in network and "DNS=198.18.10.1\n" in network
    assert "/admin/host/${SERIAL}/boot_complete" in units["pxestack-boot-complete.service"][
        "content"]


def test_an_ignition_profile_refuses_the_cloud_config_path(rig):
    for serial in ("sn-1", "sn-2"):
        rig.provisioner.first_contact(serial)  # core x2
    worker = rig.client.request("GET", "/first-stage-script/sn-w")
    assert worker.code == 200 and b"final-ignition-config.json" in worker.body
    token = token_from_script(worker.body.decode())
    refused = rig.client.request("POST", "/final-cloud-config.yaml",
                                 host_data("sn-w", ["52:54:00:00:00:09"]), token=token)
    assert refused.code == 409 and b"final-ignition-config.json" in refused.body
    assert rig.provisioner.get("sn-w").host.state.value == "unknown"


def test_hostile_host_data_never_reaches_the_yaml(rig):
    rig.provisioner.first_contact("sn-c1")
    token = rig.provisioner.callback_token(rig.provisioner.get("sn-c1").host)
    body = host_data("sn-c1", ["52:54:00:00:00:01"], nic="eno1\n[Network]\nDNS=6.6.6.6")
    answer = rig.client.request("POST", "/final-cloud-config.yaml", body, token=token)
    assert answer.code == 400 and b"ConnectedNIC" in answer.body
    assert rig.provisioner.get("sn-c1").host.state.value == "unknown"


def test_a_bond_network_needs_a_template_of_ones_own(tmp_path):
    rig = make_rig(tmp_path / "cluster", profiles=PROFILES,
                   network={"ip_range": {"start": "198.18.10.10", "end": "198.18.10.20"},
                            "subnet_size": 24, "network_model": "bond"})
    rig.provisioner.first_contact("sn-c1")
    token = rig.provisioner.callback_token(rig.provisioner.get("sn-c1").host)
    answer = rig.client.request("POST", "/final-cloud-config.yaml",
                                host_data("sn-c1", ["52:54:00:00:00:01"]), token=token)
    assert answer.code == 500
    assert b"bond_network_needs_a_last_stage_cloudconfig_template" in answer.body
    assert rig.provisioner.get("sn-c1").host.state.value == "unknown"  # nothing stored


@pytest.mark.parametrize("profile", [
    {"name": "a", "config_format": "cloud-config", "install": "pxe"},
    {"name": "a", "config_format": "cloud-config", "os": "fcos", "os_version": "40"},
    {"name": "a", "config_format": "yaml"},
])
def test_cloud_config_needs_flatcar_on_disk(tmp_path, profile):
    with pytest.raises(ConfigError) as caught:
        load_config({"provision": {"cluster_dir": str(tmp_path), "profiles": [profile]}})
    assert any(p.path.endswith("config_format") for p in caught.value.problems)


def test_admin_token_still_guards_the_admin_api(rig):
    # The new machine-facing paths are outside /admin; the admin API is unchanged.
    assert rig.client.request("GET", "/admin/hosts").code == 401
    assert rig.client.request("GET", "/admin/hosts", token=ADMIN_TOKEN).code == 200
