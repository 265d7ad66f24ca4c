"""A profile's ``loader`` reaches the boot decision through the provisioning policy."""

from __future__ import annotations

from provision_helpers import host_data, make_rig, token_from_script

from pxestack.dhcp.client import Arch, Firmware
from pxestack.dhcp.policy import Loader, Machine
from pxestack.provision.policy import ProvisioningPolicy


def test_a_profile_loader_is_in_the_boot_spec_of_its_hosts(tmp_path):
    rig = make_rig(
        tmp_path / "cluster",
        profiles=[{"name": "core", "quantity": 3, "tags": ["role=core"], "loader": "grub"}],
    )
    policy = ProvisioningPolicy(rig.provisioner)
    machine = Machine(mac="52:54:00:aa:00:01", arch=Arch.EFI_X64, firmware=Firmware.PXE)
    unknown = policy.boot_spec(machine)
    assert unknown is not None and unknown.loader is None  # dhcp.boot.loader decides
    script = rig.client.request("GET", "/first-stage-script/SN-0001")
    token = token_from_script(script.body.decode())
    final = rig.client.request("POST", "/final-ignition-config.json",
                               host_data("SN-0001", [machine.mac]), token=token)
    assert final.code == 200, final.body
    spec = policy.boot_spec(machine)
    assert spec is not None and spec.loader is Loader.GRUB
    assert rig.client.request("PUT", "/admin/host/sn-0001/set_installed",
                              token=token).code == 202
    installed = policy.boot_spec(machine)
    assert installed is not None and installed.local_boot and installed.loader is Loader.GRUB
