"""The whole mayu flow over HTTP, in process: first contact -> installing -> installed ->
running -> configured, driven only through the machine endpoints and the admin API, with
every step checked in the host's git history."""

from __future__ import annotations

import json

import pygit2
from provision_helpers import ADMIN_TOKEN, host_data, make_rig, token_from_script

from pxestack.dhcp.client import Arch, Firmware
from pxestack.dhcp.policy import Machine
from pxestack.provision.policy import ProvisioningPolicy

MACS = ["52:54:00:aa:00:01", "52:54:00:aa:00:02"]


def _machine(mac: str) -> Machine:
    return Machine(mac=mac, arch=Arch.X86_BIOS, firmware=Firmware.PXE)


def test_first_contact_to_running_and_back_to_configured(tmp_path):
    rig = make_rig(tmp_path / "cluster")
    client = rig.client
    policy = ProvisioningPolicy(rig.provisioner, installed_boot="local-boot")

    # iPXE asks for its script: first a chain script that names the machine.
    chain = client.request("GET", "/ipxebootscript")
    assert chain.code == 200
    assert "chain --autofree http://198.18.0.1:8080/ipxebootscript?serial=${serial:uristring}" in (
        chain.body.decode()
    )
    install = client.request("GET", "/ipxebootscript?serial=SN-0001&uuid=&mac=52-54-00-aa-00-01")
    assert install.code == 200
    assert (
        "next-script=http://198.18.0.1:8080/first-stage-script/__SERIAL__" in install.body.decode()
    )

    # First contact: the installer script (enrols the host, assigns profile and address).
    script = client.request("GET", "/first-stage-script/SN-0001")
    assert script.code == 200, script.body
    token = token_from_script(script.body.decode())
    hosts = client.request("GET", "/admin/hosts", token=ADMIN_TOKEN).json()
    assert [h["Serial"] for h in hosts] == ["sn-0001"]
    assert hosts[0]["State"] == "unknown"
    assert hosts[0]["Profile"] == "core"
    assert hosts[0]["InternalAddr"] == "198.18.10.10"
    assert hosts[0]["FleetMetadata"] == ["role=core"]
    assert hosts[0]["LastBoot"] == "0001-01-01T00:00:00Z"
    assert len(hosts[0]["MachineID"]) == 32
    assert hosts[0]["Hostname"] == hosts[0]["MachineID"][:16]

    # The installer posts its host data with its token and gets the final Ignition config.
    final = client.request(
        "POST", "/final-ignition-config.json", host_data("SN-0001", MACS), token=token
    )
    assert final.code == 200, final.body
    ignition = json.loads(final.body)
    assert ignition["ignition"]["version"].startswith("3.")
    host = client.request("GET", "/admin/host/sn-0001", token=ADMIN_TOKEN).json()
    assert host["State"] == "installing"
    assert host["MacAddresses"] == MACS
    assert host["ConnectedNIC"] == "eno1"
    assert host["IPMIAddr"] == "198.18.20.5"
    assert policy.boot_spec(_machine(MACS[1])).local_boot is False

    # set_installed from the installer: DHCP now hands out the local-boot script on ALL MACs.
    done = client.request("PUT", "/admin/host/sn-0001/set_installed", token=token)
    assert (done.code, done.body) == (202, b"")
    for mac in MACS:
        spec = policy.boot_spec(_machine(mac))
        assert spec is not None and spec.local_boot
    local = client.request("GET", f"/ipxebootscript?serial=&uuid=&mac={MACS[1].replace(':', '-')}")
    assert "sanboot --no-describe --drive 0x80 || exit" in local.body.decode()

    # boot_complete from the installed OS (the unit in the final config sends the versions).
    booted = client.request(
        "PUT",
        "/admin/host/sn-0001/boot_complete",
        {"CoreOSVersion": "3975.2.0", "FlatcarVersion": "3975.2.0"},
        token=token,
    )
    assert booted.code == 202
    host = client.request("GET", "/admin/host/sn-0001", token=ADMIN_TOKEN).json()
    assert host["State"] == "running"
    assert host["LastBoot"] != "0001-01-01T00:00:00Z"
    assert host["CoreOSVersion"] == "3975.2.0"

    # The admin asks for a reinstall that keeps disk data: DHCP serves the installer again.
    again = client.request(
        "PUT", "/admin/host/sn-0001/set_state", {"State": "configured"}, token=ADMIN_TOKEN
    )
    assert again.code == 202
    host = client.request("GET", "/admin/host/sn-0001", token=ADMIN_TOKEN).json()
    assert (host["State"], host["KeepDiskData"]) == ("configured", True)
    spec = policy.boot_spec(_machine(MACS[0]))
    assert spec is not None and not spec.local_boot

    # Every step is one commit in the host's history, newest first, named by serial.
    history = client.request("GET", "/admin/host/sn-0001/history", token=ADMIN_TOKEN).json()
    firsts = [entry["Message"].splitlines()[0] for entry in history]
    assert firsts == [
        "sn-0001: updated host state",
        "sn-0001: updated state to running",
        "sn-0001: updated state to installed",
        "sn-0001: updated host state to installing",
        "sn-0001: host created",
    ]
    repo = pygit2.Repository(str(tmp_path / "cluster"))
    assert not [p for p, f in repo.status().items() if f != pygit2.enums.FileStatus.CURRENT]


def test_mark_fresh_then_reinstall_acts_on_the_next_packet(tmp_path):
    rig = make_rig(tmp_path / "cluster")
    policy = ProvisioningPolicy(rig.provisioner, installed_boot="ignore")
    token = token_from_script(rig.client.request("GET", "/first-stage-script/sn-2").body.decode())
    rig.client.request("POST", "/final-ignition-config.json", host_data("sn-2", MACS), token=token)
    rig.client.request("PUT", "/admin/host/sn-2/set_installed", token=token)
    assert policy.boot_spec(_machine(MACS[0])) is None  # ignored, as mayu's dnsmasq did
    assert policy.boot_spec(_machine(MACS[1])) is None
    fresh = rig.client.request("PUT", "/admin/host/sn-2/mark_fresh", token=ADMIN_TOKEN)
    assert fresh.code == 202
    # mayu bug: mark_fresh did not refresh dnsmasq.  Here the very next packet is answered.
    assert policy.boot_spec(_machine(MACS[0])) is not None
    host = rig.provisioner.get("sn-2").host
    assert (host.state.value, host.keep_disk_data) == ("configured", False)
