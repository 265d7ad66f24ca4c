"""OS flows driven over HTTP in process: enrolment at the first identified iPXE request,
the fcos-disk install (live config, coreos-installer's config, set_installed, local boot),
generic scripts, flow-specific images and the endpoints a flow must refuse."""

from __future__ import annotations

import hashlib

import pytest
from flow_helpers import FCOS_VERSION, FLOW_PROFILES, ignition_files, loads
from provision_helpers import ADMIN_TOKEN, make_rig

from pxestack.http.assets import AssetResource
from pxestack.provision import ignition


@pytest.fixture
def rig(tmp_path):
    images = tmp_path / "images"
    fcos = images / "fcos" / FCOS_VERSION
    fcos.mkdir(parents=True)
    for name in ("vmlinuz", "initrd.img", "rootfs.img"):
        (fcos / name).write_bytes(f"fcos {name}".encode())
    debian = images / "debian" / "12.8"
    debian.mkdir(parents=True)
    (debian / "install.img").write_bytes(b"raw disk image")
    digest = hashlib.sha256(b"raw disk image").hexdigest()
    (debian / "install.img.sha256").write_text(f"{digest}  install.img\n")
    return make_rig(
        tmp_path / "cluster",
        images=AssetResource(images),
        profiles=[p for p in FLOW_PROFILES if p["name"] in ("fcos-disk", "generic-disk")],
    )


def _state(rig, serial):
    return rig.provisioner.get(serial).host.state.value


def test_fcos_disk_install_end_to_end(rig):
    client = rig.client
    boot = client.request("GET", "/ipxebootscript?serial=SN-F1&uuid=&mac=52-54-00-00-00-01")
    assert boot.code == 200
    assert "coreos.inst.install_dev=/dev/nvme0n1" in boot.body.decode()
    assert rig.provisioner.get("sn-f1").host.profile == "fcos-disk"  # enrolled at first contact
    assert _state(rig, "sn-f1") == "unknown"

    # The live system's Ignition config: changes nothing, carries the set_installed unit.
    live = client.request("GET", "/installer-ignition?serial=sn-f1")
    assert live.code == 200
    assert ignition.validate(loads(live.body.decode())) == "3.4.0"
    assert _state(rig, "sn-f1") == "unknown"

    # coreos-installer fetches the machine's config: installing.
    final = client.request("GET", "/ignition?serial=sn-f1")
    assert final.code == 200
    document = loads(final.body.decode())
    ignition.validate(document)
    token = dict(
        line.split("=", 1) for line in ignition_files(document)["/etc/mayu-env"].splitlines()
    )["PXESTACK_TOKEN"]
    assert _state(rig, "sn-f1") == "installing"

    # The live system's unit reports set_installed with the token; the next boot is local.
    assert client.request("PUT", "/admin/host/sn-f1/set_installed", token=token).code == 202
    again = client.request("GET", "/ipxebootscript?serial=SN-F1&uuid=&mac=")
    assert "sanboot --no-describe --drive 0x80" in again.body.decode()
    # An installed host's config and installer are not handed out again (409 until reinstall).
    assert client.request("GET", "/ignition?serial=sn-f1").code == 409
    assert client.request("GET", "/installer-ignition?serial=sn-f1").code == 409
    history = client.request("GET", "/admin/host/sn-f1/history", token=ADMIN_TOKEN).json()
    assert any("installing" in str(entry) for entry in history)


def test_fcos_images_come_from_the_fcos_directory(rig):
    rig.client.request("GET", "/ipxebootscript?serial=sn-f2&uuid=")
    rootfs = rig.client.request("GET", "/images/sn-f2/rootfs.img")
    assert (rootfs.code, rootfs.body) == (200, b"fcos rootfs.img")
    # Flatcar's names mean nothing for an fcos host.
    assert rig.client.request("GET", "/images/sn-f2/install_image.bin.bz2").code == 404
    assert rig.client.request("GET", "/images/sn-f2/../../etc/passwd").code == 404


def test_fcos_host_is_refused_by_the_flatcar_installer_endpoints(rig):
    rig.client.request("GET", "/ipxebootscript?serial=sn-f3&uuid=")
    assert rig.client.request("GET", "/first-stage-script/sn-f3").code == 409


def test_generic_script_over_http(rig):
    client = rig.client
    client.request("GET", "/ipxebootscript?serial=sn-f4&uuid=")  # fcos-disk (first profile)
    boot = client.request("GET", "/ipxebootscript?serial=sn-g1&uuid=")
    assert "pxestack.script=http://198.18.0.1:8080/script/sn-g1" in boot.body.decode()
    script = client.request("GET", "/script/sn-g1")
    assert script.code == 200
    assert script.header("Content-Type").startswith("text/x-shellscript")
    assert _state(rig, "sn-g1") == "installing"
    image = client.request("GET", "/images/sn-g1/install.img")
    assert (image.code, image.body) == (200, b"raw disk image")
    assert client.request("GET", "/images/sn-g1/install.img.sha256").code == 200
    # The fcos host has no script; an unknown path segment count is 404.
    assert client.request("GET", "/script/sn-f4").code == 404
    assert client.request("GET", "/script/").code == 404


def test_a_mac_only_request_is_not_enrolled(rig):
    boot = rig.client.request("GET", "/ipxebootscript?serial=&uuid=&mac=52-54-00-00-00-09")
    assert boot.code == 200
    assert rig.client.request("GET", "/admin/hosts", token=ADMIN_TOKEN).json() == []
