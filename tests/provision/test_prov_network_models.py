"""The network models in the rendered Ignition: singlenic, and bond (with and without a
VLAN) as systemd-networkd units for Flatcar and NetworkManager keyfiles for Fedora CoreOS.

Every config is checked with the Ignition validator, then the units are parsed and checked
as a whole: every bond/VLAN a unit refers to is defined, members join the bond, exactly one
unit carries the static address, and that unit sits on the link the model says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from flow_helpers import flow_provisioner, ignition_files, loads, sample_host
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from provision_helpers import BASE_URL

from pxestack.config import load_config
from pxestack.errors import ConfigError
from pxestack.provision.ignition import validate
from pxestack.provision.memstore import InMemoryHostStore
from pxestack.provision.provisioner import Provisioner
from pxestack.provision.templates import UnsafeTemplateValue

NETWORKD_DIR = "/etc/systemd/network/"
NM_DIR = "/etc/NetworkManager/system-connections/"

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """An INI-style unit or keyfile as ``section -> [(key, value), ...]`` (keys may repeat)."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            assert line[1:-1] not in sections, f"section {line} twice in\n{text}"
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        current.append((key, value))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every value of *key* in *section* (empty when absent)."""
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    """The single value of *key* in *section*."""
    found = values(unit, section, key)
    assert len(found) == 1, (section, key, unit)
    return found[0]


def network_config(**network: Any) -> dict[str, Any]:
    """The test ``network:`` section with *network* keys added."""
    return {
        "ip_range": {"start": "198.18.10.10", "end": "198.18.10.200"},
        "subnet_size": 24,
        "subnet_gateway": "198.18.10.1",
        "dns": ["198.18.10.1", "198.18.10.2"],
        **network,
    }


def render(tmp_path, profile: str, **network: Any) -> dict[str, Any]:
    """The validated final Ignition config of a *profile* host under *network*."""
    prov = flow_provisioner(tmp_path, network=network_config(**network))
    document = loads(prov.render_final(sample_host(profile)))
    validate(document)
    return document


def networkd_units(document: dict[str, Any]) -> dict[str, Unit]:
    """``file name -> parsed unit`` of the networkd files in an Ignition config."""
    return {
        path.removeprefix(NETWORKD_DIR): parse_unit(text)
        for path, text in ignition_files(document).items()
        if path.startswith(NETWORKD_DIR)
    }


def nm_connections(document: dict[str, Any]) -> dict[str, Unit]:
    """``file name -> parsed keyfile`` of the NetworkManager files in an Ignition config."""
    files = document["storage"]["files"]
    for entry in files:
        if entry["path"].startswith(NM_DIR):
            assert entry["mode"] == 0o600  # NetworkManager ignores group/world-readable keyfiles
    return {
        path.removeprefix(NM_DIR): parse_unit(text)
        for path, text in ignition_files(document).items()
        if path.startswith(NM_DIR)
    }


def check_networkd(units: dict[str, Unit]) -> dict[str, Any]:
    """Whole-configuration invariants of networkd units; returns what the tests compare.

    * every ``Bond=`` / ``VLAN=`` names a netdev that a ``.netdev`` file defines, with the
      right Kind;
    * exactly one ``.network`` has addresses, and it has DHCP off, the gateway and the DNS.
    """
    netdevs = {one(u, "NetDev", "Name"): u for name, u in units.items() if name.endswith(".netdev")}
    networks = {name: u for name, u in units.items() if name.endswith(".network")}
    assert len(netdevs) + len(networks) == len(units), units
    for unit in networks.values():
        for bond in values(unit, "Network", "Bond"):
            assert one(netdevs[bond], "NetDev", "Kind") == "bond"
        for vlan in values(unit, "Network", "VLAN"):
            assert one(netdevs[vlan], "NetDev", "Kind") == "vlan"
    carriers = [u for u in networks.values() if values(u, "Network", "Address")]
    assert len(carriers) == 1, units
    carrier = carriers[0]
    assert one(carrier, "Network", "DHCP") == "no"
    return {
        "address_on": one(carrier, "Match", "Name"),
        "address": one(carrier, "Network", "Address"),
        "gateway": values(carrier, "Network", "Gateway"),
        "dns": values(carrier, "Network", "DNS"),
        "netdevs": netdevs,
        "networks": networks,
    }


def test_singlenic_is_one_unit_on_the_booted_nic(tmp_path):
    units = networkd_units(render(tmp_path, "flatcar-disk"))
    assert list(units) == ["10-pxestack-static.network"]
    seen = check_networkd(units)
    assert seen["address_on"] == sample_host("flatcar-disk").connected_nic
    assert seen["address"] == "198.18.10.10/24"
    assert seen["gateway"] == ["198.18.10.1"]
    assert seen["dns"] == ["198.18.10.1", "198.18.10.2"]
    assert seen["netdevs"] == {}


@pytest.mark.parametrize(
    ("bond_mode", "kernel_mode"),
    [("lacp", "802.3ad"), ("balance-rr", "balance-rr"), ("active-backup", "balance-rr")],
)
def test_bond_without_vlan_puts_the_address_on_bond0(tmp_path, bond_mode, kernel_mode):
    """mayu: lacp -> 802.3ad, any other bond_mode -> balance-rr."""
    document = render(
        tmp_path,
        "flatcar-disk",
        network_model="bond",
        bond_mode=bond_mode,
        interface_match="enp*s0f*",
    )
    seen = check_networkd(networkd_units(document))
    assert set(seen["netdevs"]) == {"bond0"}
    bond = seen["netdevs"]["bond0"]
    assert one(bond, "Bond", "Mode") == kernel_mode
    assert values(bond, "Bond", "LACPTransmitRate") == (["fast"] if bond_mode == "lacp" else [])
    members = [u for u in seen["networks"].values() if values(u, "Network", "Bond")]
    assert len(members) == 1
    assert one(members[0], "Match", "Name") == "enp*s0f*"
    assert not values(members[0], "Network", "Address")
    assert seen["address_on"] == "bond0"
    assert (seen["address"], seen["gateway"]) == ("198.18.10.10/24", ["198.18.10.1"])


def test_bond_with_vlan_puts_the_address_on_the_vlan(tmp_path):
    document = render(tmp_path, "flatcar-pxe", network_model="bond", vlan_id=42)
    seen = check_networkd(networkd_units(document))
    assert set(seen["netdevs"]) == {"bond0", "bond0.42"}
    assert one(seen["netdevs"]["bond0.42"], "VLAN", "Id") == "42"
    bond_network = [u for u in seen["networks"].values() if values(u, "Match", "Name") == ["bond0"]]
    assert len(bond_network) == 1
    assert values(bond_network[0], "Network", "VLAN") == ["bond0.42"]
    assert seen["address_on"] == "bond0.42"
    assert seen["dns"] == ["198.18.10.1", "198.18.10.2"]


def test_netdevs_sort_before_the_networks_that_use_them(tmp_path):
    """networkd reads the directory in lexical order; keep definitions first for readers."""
    names = list(networkd_units(render(tmp_path, "flatcar-disk", network_model="bond", vlan_id=7)))
    assert names == sorted(names)
    assert names[-1].endswith("-static.network")


def check_nm(connections: dict[str, Unit]) -> dict[str, Any]:
    """Whole-configuration invariants of NetworkManager keyfiles.

    Every ``master=`` / VLAN ``parent=`` names a connection's interface of the right type,
    ids are unique, exactly one connection has a manual IPv4 address.
    """
    by_interface = {
        one(c, "connection", "interface-name"): c
        for c in connections.values()
        if values(c, "connection", "interface-name")
    }
    ids = [one(c, "connection", "id") for c in connections.values()]
    assert len(ids) == len(set(ids)), ids
    for c in connections.values():
        for master in values(c, "connection", "master"):
            assert one(by_interface[master], "connection", "type") == "bond"
            assert one(c, "connection", "slave-type") == "bond"
        for parent in values(c, "vlan", "parent"):
            assert one(by_interface[parent], "connection", "type") == "bond"
    carriers = [c for c in connections.values() if values(c, "ipv4", "address1")]
    assert len(carriers) == 1, connections
    assert one(carriers[0], "ipv4", "method") == "manual"
    return {"carrier": carriers[0], "by_interface": by_interface}


def test_fcos_singlenic_is_one_keyfile(tmp_path):
    connections = nm_connections(render(tmp_path, "fcos-disk"))
    assert list(connections) == ["pxestack-static.nmconnection"]
    carrier = check_nm(connections)["carrier"]
    assert one(carrier, "match", "interface-name") == sample_host("fcos-disk").connected_nic
    assert one(carrier, "ipv4", "address1") == "198.18.10.10/24,198.18.10.1"


@pytest.mark.parametrize("vlan_id", [None, 300])
def test_fcos_bond_keyfiles(tmp_path, vlan_id):
    connections = nm_connections(
        render(tmp_path, "fcos-pxe", network_model="bond", vlan_id=vlan_id, bond_mode="lacp")
    )
    seen = check_nm(connections)
    bond = seen["by_interface"]["bond0"]
    assert one(bond, "bond", "mode") == "802.3ad"
    members = [c for c in connections.values() if values(c, "connection", "master")]
    assert len(members) == 1
    assert one(members[0], "match", "interface-name") == "en*"
    carrier = seen["carrier"]
    if vlan_id is None:
        assert carrier is bond
    else:
        assert one(carrier, "connection", "interface-name") == f"bond0.{vlan_id}"
        assert one(carrier, "vlan", "id") == str(vlan_id)
        assert one(bond, "ipv4", "method") == "disabled"


_NAME = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    model=st.sampled_from(["singlenic", "bond"]),
    match=_NAME,
    nic=st.just("") | _NAME,
    mode=st.sampled_from(["lacp", "balance-rr", "x"]),
    vlan=st.none() | st.integers(1, 4094),
)
def test_hostile_names_render_consistent_units_or_are_refused(
    tmp_path, model, match, nic, mode, vlan
):
    """A configured interface_match or a machine-reported ConnectedNIC with line breaks or
    other junk either renders a valid, consistent config or is refused (by the config
    loader or the template's ``ifname`` check); it never adds keys or sections to a unit."""
    try:
        prov = flow_provisioner(
            tmp_path,
            network=network_config(
                network_model=model, interface_match=match, bond_mode=mode, vlan_id=vlan
            ),
        )
    except ConfigError:
        return
    for profile in ("flatcar-disk", "fcos-disk"):
        try:
            document = loads(prov.render_final(sample_host(profile, connected_nic=nic)))
        except UnsafeTemplateValue:
            continue
        validate(document)
        if profile.startswith("flatcar"):
            check_networkd(networkd_units(document))
        else:
            check_nm(nm_connections(document))


def test_the_bond_example_renders_lacp_on_vlan_120(tmp_path):
    """examples/provision-bond.yaml, as an operator would run it (cluster dir redirected)."""
    example = Path(__file__).resolve().parents[2] / "examples" / "provision-bond.yaml"
    data = yaml.safe_load(example.read_text())
    data["provision"]["cluster_dir"] = str(tmp_path / "cluster")
    data["provision"]["images_dir"] = str(tmp_path / "images")
    prov_config = load_config(data, base_dir=example.parent, source=str(example)).provision
    assert prov_config is not None
    prov = Provisioner(prov_config, InMemoryHostStore(), base_url=BASE_URL, key=b"k" * 32)
    host = sample_host("worker", connected_nic="enp1s0f0")
    document = loads(prov.render_final(host))
    validate(document)
    seen = check_networkd(networkd_units(document))
    assert one(seen["netdevs"]["bond0"], "Bond", "Mode") == "802.3ad"
    assert seen["address_on"] == "bond0.120"
