"""mayu config migration, provisioning_extensions wiring, and /admin/mayu_config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from provision_helpers import ADMIN_TOKEN, Client

from pxestack.config import load_config
from pxestack.dhcp.policy import BootPolicy
from pxestack.errors import ConfigError
from pxestack.provision.mayu_import import mayu_to_provision, migrate_main
from pxestack.provision.service import ProvisioningService, provisioning_extensions
from pxestack.service import Extensions

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_mayu_config_converts_and_loads(tmp_path):
    data = yaml.safe_load((EXAMPLES / "mayu-config.yaml").read_text())
    mapping, notes = mayu_to_provision(data)
    assert any("bootstrap_range" in n for n in notes)
    config = load_config({"provision": {"cluster_dir": str(tmp_path), **mapping}}).provision
    assert [p.name for p in config.profiles] == ["core", "worker"]
    assert config.default_os_version == "3975.2.0"
    assert str(config.network.ip_range.end) == "198.18.0.90"
    assert all(p.install == "disk" for p in config.profiles)


def test_era_c_config_makes_pxe_profiles():
    mapping, _ = mayu_to_provision(
        {
            "default_flatcar_version": "3975.2.0",
            "network": {
                "primary_nic": {
                    "ip_range": {"start": "198.18.0.10", "end": "198.18.0.20"},
                    "network_model": {"type": "singlenic"},
                }
            },
            "profiles": [{"name": "core", "quantity": 3}],
        }
    )
    assert mapping["profiles"][0]["install"] == "pxe"
    assert mapping["network"]["ip_range"]["start"] == "198.18.0.10"


def test_unmappable_keys_are_errors_with_mayu_paths():
    with pytest.raises(ConfigError) as caught:
        mayu_to_provision(
            {
                "network": {
                    "network_model": "bridge",
                    "ip_range": {"start": "x", "end": "1.2.3.4"},
                },
                "profiles": [{"name": "a", "colour": "red"}],
                "surprise": 1,
            }
        )
    paths = {p.path for p in caught.value.problems}
    assert paths == {
        "default_coreos_version",
        "network.network_model",
        "network.ip_range.start",
        "profiles[0].colour",
        "surprise",
    }


def test_migrate_cli_hook(tmp_path, capsys):
    assert migrate_main([str(EXAMPLES / "mayu-config.yaml")]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["provision"]["profiles"][0]["name"] == "core"
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: {network_model: bridge}\n")
    assert migrate_main([str(bad)]) == 1


def _config(tmp_path, listen="127.0.0.1:18080", **provision):
    return load_config(
        {
            "state_dir": str(tmp_path / "state"),
            "http": {"listen": listen, "public_url": "http://198.18.0.1:18080"},
            "provision": {"profiles": [{"name": "core", "quantity": 1}], **provision},
        }
    )


def test_extensions_plug_into_the_service_layer(tmp_path):
    ext = provisioning_extensions(_config(tmp_path))
    assert isinstance(ext, Extensions)
    assert isinstance(ext.boot_policy, BootPolicy)
    assert ext.tftp_source is None
    assert {b"ipxebootscript", b"first-stage-script", b"images", b"admin"} <= set(ext.http_children)
    assert isinstance(ext.services[0], ProvisioningService)


def test_admin_token_required_off_loopback(tmp_path):
    with pytest.raises(ConfigError) as caught:
        provisioning_extensions(_config(tmp_path, listen="0.0.0.0:18080"))
    assert caught.value.problems[0].path == "provision.api.token"
    provisioning_extensions(_config(tmp_path, listen="0.0.0.0:18080", api={"token": ADMIN_TOKEN}))


def test_mayu_config_get_and_put_persist(tmp_path):
    from twisted.web.resource import Resource

    ext = provisioning_extensions(_config(tmp_path, api={"token": ADMIN_TOKEN}))
    root = Resource()
    for name, child in ext.http_children.items():
        root.putChild(name, child)
    # The production runner uses a thread pool; swap in the synchronous one for the stub.
    from pxestack.provision.api import synchronous_runner

    ext.http_children[b"admin"].api.run = synchronous_runner
    client = Client(root)
    current = client.request("GET", "/admin/mayu_config", token=ADMIN_TOKEN)
    assert current.code == 200
    assert yaml.safe_load(current.body)["profiles"] == [{"name": "core", "quantity": 1}]
    new = yaml.safe_load(current.body)
    new["profiles"] = [{"name": "big", "quantity": 50}]
    put = client.request("PUT", "/admin/mayu_config", yaml.safe_dump(new), token=ADMIN_TOKEN)
    assert put.code == 202
    again = yaml.safe_load(client.request("GET", "/admin/mayu_config", token=ADMIN_TOKEN).body)
    assert again["profiles"] == [{"name": "big", "quantity": 50}]
    bad = client.request(
        "PUT", "/admin/mayu_config", "network: {network_model: bridge}", token=ADMIN_TOKEN
    )
    assert bad.code == 400
    # Kept across a restart.
    ext2 = provisioning_extensions(_config(tmp_path, api={"token": ADMIN_TOKEN}))
    assert ext2.boot_policy.provisioner.config.profiles[0].name == "big"


def test_a_torn_saved_mayu_config_makes_the_store_read_only_instead_of_failing(tmp_path):
    config = _config(tmp_path)
    assert config.provision is not None
    provisioning_extensions(config)
    saved = config.provision.cluster_dir / "mayu-config.yaml"
    saved.write_text("profiles:\n  - name: core\n    quantity: [")
    ext = provisioning_extensions(config)
    service = ext.services[0]
    assert isinstance(service, ProvisioningService)
    health = service.store.health()
    assert health["ok"] is False and health["read_only"] is True
    assert "mayu-config.yaml" in health["damaged"]
    assert saved.read_text() == "profiles:\n  - name: core\n    quantity: ["


def test_the_whole_mayu_config_converts_and_loads(tmp_path):
    from pxestack.provision.mayu_import import mayu_to_config

    data = yaml.safe_load((EXAMPLES / "mayu-config.yaml").read_text())
    document, notes = mayu_to_config(data, tftp_root=str(tmp_path / "tftproot"),
                                     images_dir=str(tmp_path / "images"))
    assert document["dhcp"] == {
        "interfaces": ["eth1"], "server_address": "198.18.0.1",
        "pools": [{"subnet": "198.18.0.0/24", "start": "198.18.0.100", "end": "198.18.0.150",
                   "router": "198.18.0.1", "dns": ["198.18.0.1"]}]}
    assert document["tftp"] == {"root": str(tmp_path / "tftproot")}
    assert document["http"]["public_url"] == "http://198.18.0.1:8080"
    assert any(n.startswith("network.bootstrap_range -> dhcp.pools[0]") for n in notes)
    assert not any("not converted" in n for n in notes)
    document["provision"]["cluster_dir"] = str(tmp_path / "cluster")
    config = load_config(document, base_dir=tmp_path)
    assert config.dhcp is not None and config.dhcp.interfaces == ("eth1",)
    assert str(config.dhcp.pools[0].subnet) == "198.18.0.0/24"
    assert config.tftp is not None and config.tftp.root == tmp_path / "tftproot"
    assert config.provision is not None and config.provision.images_dir == tmp_path / "images"


def test_era_c_pxe_interface_and_pxe_off():
    from pxestack.provision.mayu_import import mayu_to_config

    era_c = {
        "default_flatcar_version": "3975.2.0",
        "network": {
            "bind_addr": "10.0.0.1",
            "pxe": {"enabled": True, "pxe_interface": {
                "interface_name": "pxe0", "ip_range": {"start": "10.0.0.100", "end": "10.0.0.200"},
                "subnet_size": "24", "subnet_gateway": "10.0.0.254"}},
            "primary_nic": {"ip_range": {"start": "10.1.0.10", "end": "10.1.0.20"},
                            "subnet_size": "24"},
        },
        "profiles": [{"name": "core", "quantity": 3}],
    }
    document, _ = mayu_to_config(era_c)
    assert document["dhcp"]["interfaces"] == ["pxe0"]
    assert document["dhcp"]["pools"] == [{"subnet": "10.0.0.0/24", "start": "10.0.0.100",
                                          "end": "10.0.0.200", "router": "10.0.0.254"}]
    off, notes = mayu_to_config({"default_coreos_version": "1", "network": {"pxe": False}})
    assert off["dhcp"] == {"enabled": False} and off["tftp"] == {"enabled": False}
    assert any("pxe: false" in n for n in notes)


def test_a_pool_without_a_subnet_size_names_the_key():
    from pxestack.provision.mayu_import import mayu_to_config

    with pytest.raises(ConfigError) as caught:
        mayu_to_config({"default_coreos_version": "1", "network": {
            "bootstrap_range": {"start": "10.0.0.100", "end": "10.0.0.200"}}})
    assert "network.subnet_size" in str(caught.value)
