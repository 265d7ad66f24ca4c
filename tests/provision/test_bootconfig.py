"""Per-host GRUB and PXELINUX configs from the provisioning flows (TFTP and HTTP)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from provision_helpers import ADMIN_TOKEN, host_data, make_rig, token_from_script
from twisted.logger import LogLevel, capturedLogs, formatEvent

from pxestack.paths import PathNotFound, PathRefused
from pxestack.provision.bootconfig import (
    MAX_CONFIG_PATH,
    ConfigRequest,
    LoaderConfigSource,
    config_request,
    grub_location,
    loader_config,
    parse_ipxe_boot,
)
from pxestack.provision.templates import TemplateRenderError
from pxestack.tftp.source import TftpClient

MAC = "52:54:00:aa:00:01"
CLIENT = TftpClient(("198.18.0.50", 2000))


def read(source: LoaderConfigSource, path: str) -> str:
    reader = source.open(path, CLIENT)
    size = reader.size()
    assert size is not None
    buffer = bytearray(size)
    reader.readinto(memoryview(buffer))
    reader.close()
    return buffer.decode()


def test_parse_ipxe_boot_reads_kernel_initrds_and_drops_ipxe_syntax() -> None:
    boot = parse_ipxe_boot(
        "#!ipxe\nkernel http://h/vmlinuz initrd=initrd.img a=${uuid:uristring}&b=1\n"
        "initrd --name initrd.img http://h/initrd.img\ninitrd http://h/extra.img\nboot\n")
    assert boot is not None
    assert boot.kernel == "http://h/vmlinuz"
    assert boot.args == ("initrd=initrd.img", "a=&b=1")
    assert boot.initrds == ("http://h/initrd.img", "http://h/extra.img")
    assert parse_ipxe_boot("#!ipxe\nsanboot --drive 0x80\n") is None


def test_grub_location() -> None:
    base = "http://198.18.0.1:8080"
    # Debian's signed GRUB has no HTTP: our own images go over TFTP, whatever the port.
    assert grub_location(f"{base}/images/x/vmlinuz", base) == "(tftp)/images/x/vmlinuz"
    assert grub_location("http://h/images/v", "http://h") == "(tftp)/images/v"
    assert grub_location("http://h/v", base) == "(http,h)/v"
    assert grub_location("http://h:81/v", base) == "(http,h:81)/v"
    assert grub_location("vmlinuz") == "vmlinuz"


def test_config_paths() -> None:
    assert config_request("grub/grub.cfg") == ConfigRequest("grub", None)
    assert config_request("grub/grub.cfg-01-52-54-00-AA-00-01") == ConfigRequest("grub", MAC)
    assert config_request("grub/grub.cfg-01-52:54:00:aa:00:01") == ConfigRequest("grub", MAC)
    assert config_request("pxelinux.cfg/01-52-54-00-aa-00-01") == ConfigRequest("pxelinux", MAC)
    assert config_request("pxelinux.cfg/default") is None
    assert config_request("grub/grub.cfg-C612") is None


def test_grub_paths_with_the_smbios_serial_and_uuid() -> None:
    uuid = "00000000-0000-4000-8000-e2e000000001"
    assert config_request(f"grub/grub.cfg-01-{MAC}-serial-E2E-SN-0001-uuid-{uuid}") == (
        ConfigRequest("grub", MAC, "E2E-SN-0001", uuid))
    # A serial with spaces, or with "-uuid-" in it: the last "-uuid-" ends the serial.
    assert config_request(f"grub/grub.cfg-01-{MAC}-serial-To Be Filled-uuid-") == (
        ConfigRequest("grub", MAC, "To Be Filled", None))
    assert config_request(f"grub/grub.cfg-01-{MAC}-serial-a-uuid-b-uuid-{uuid}") == (
        ConfigRequest("grub", MAC, "a-uuid-b", uuid))
    # A GRUB without smbios leaves both empty: the MAC alone names the machine.
    assert config_request(f"grub/grub.cfg-01-{MAC}-serial--uuid-") == ConfigRequest("grub", MAC)
    assert config_request(f"grub/grub.cfg-01-{MAC}-serial-x-uuid-not-hex") is None


@given(st.text(max_size=60), st.text(alphabet="0123456789abcdef-", max_size=36))
def test_any_serial_gets_back_out_of_the_path(serial: str, uuid: str) -> None:
    found = config_request(f"grub/grub.cfg-01-{MAC}-serial-{serial}-uuid-{uuid}")
    assert found is not None
    assert found.mac == MAC
    assert found.serial == (serial.strip() or None)
    assert found.uuid == (uuid or None)


@given(st.text(max_size=200))
def test_any_path_is_a_config_or_none(path: str) -> None:
    found = config_request(path)
    assert found is None or found[0] in ("grub", "pxelinux")


def test_unknown_machine_gets_the_default_installer_flow(tmp_path) -> None:
    rig = make_rig(tmp_path / "cluster")
    source = LoaderConfigSource(rig.provisioner)
    grub = read(source, "grub/grub.cfg-01-52-54-00-aa-00-01")
    assert "linux '(tftp)/images/vmlinuz'" in grub
    assert "'flatcar.first_boot=1'" in grub
    assert "initrd '(tftp)/images/initrd.cpio.gz'" in grub
    pxelinux = read(source, "pxelinux.cfg/01-52-54-00-aa-00-01")
    assert "KERNEL http://198.18.0.1:8080/images/" in pxelinux
    assert "INITRD http://198.18.0.1:8080/images/" in pxelinux
    assert "APPEND flatcar.first_boot=1" in pxelinux
    assert "initrd=" not in pxelinux and "initrd=" not in grub
    generic = read(source, "grub/grub.cfg")
    assert "smbios --type 1 --get-string 7 --set pxestack_serial" in generic
    assert "smbios --type 1 --get-uuid 8 --set pxestack_uuid" in generic
    assert ('configfile "${prefix}/grub.cfg-01-${net_default_mac}-serial-${pxestack_serial}'
            '-uuid-${pxestack_uuid}"') in generic
    assert 'configfile "${prefix}/grub.cfg-01-${net_default_mac}"' in generic
    # An unknown serial is not enrolled either.
    grub = read(source, f"grub/grub.cfg-01-{MAC}-serial-SN-NEW-uuid-")
    assert "linux '(tftp)/images/vmlinuz'" in grub
    # Never enrols from a MAC alone (the rules of /ipxebootscript).
    assert rig.client.request("GET", "/admin/hosts", token=ADMIN_TOKEN).json() == []


def test_installed_host_boots_its_local_disk_on_every_loader(tmp_path) -> None:
    rig = make_rig(tmp_path / "cluster")
    script = rig.client.request("GET", "/first-stage-script/SN-0001")
    token = token_from_script(script.body.decode())
    assert rig.client.request("POST", "/final-ignition-config.json",
                              host_data("SN-0001", [MAC]), token=token).code == 200
    assert rig.client.request("PUT", "/admin/host/sn-0001/set_installed",
                              token=token).code == 202
    source = LoaderConfigSource(rig.provisioner)
    assert "\nexit\n" in read(source, "grub/grub.cfg-01-52:54:00:aa:00:01")
    assert "LOCALBOOT -1" in read(source, "pxelinux.cfg/01-52-54-00-aa-00-01")
    # The same configs over HTTP.
    answer = rig.client.request("GET", "/grub/grub.cfg-01-52:54:00:aa:00:01")
    assert answer.code == 200 and b"\nexit\n" in answer.body
    answer = rig.client.request("GET", "/pxelinux/pxelinux.cfg/01-52-54-00-aa-00-01")
    assert answer.code == 200 and b"LOCALBOOT -1" in answer.body
    answer = rig.client.request("GET", "/pxelinux.cfg/01-52-54-00-aa-00-01")
    assert answer.code == 200 and b"LOCALBOOT -1" in answer.body


def test_grub_finds_the_host_by_its_smbios_serial_before_its_mac(tmp_path) -> None:
    rig = make_rig(tmp_path / "cluster")
    script = rig.client.request("GET", "/first-stage-script/SN-0001")
    token = token_from_script(script.body.decode())
    # The installed host's record has no MAC at all: only the serial can find it.
    assert rig.client.request("POST", "/final-ignition-config.json",
                              host_data("SN-0001", []), token=token).code == 200
    assert rig.client.request("PUT", "/admin/host/sn-0001/set_installed",
                              token=token).code == 202
    source = LoaderConfigSource(rig.provisioner)
    with capturedLogs() as events:
        by_serial = read(source, f"grub/grub.cfg-01-{MAC}-serial-SN-0001-uuid-")
        read(source, f"grub/grub.cfg-01-{MAC}-serial-SN-0002-uuid-")
    assert "\nexit\n" in by_serial and "local disk" in by_serial
    # What happened to each machine, at info level.
    lines = [formatEvent(e) for e in events if e["log_level"] == LogLevel.info]
    assert (f"grub config for host sn-0001 ({MAC}, 198.18.0.50, state installed; SMBIOS "
            "serial read by the loader: 'SN-0001')") in lines
    assert (f"grub config for a machine not known yet ({MAC}, 198.18.0.50; SMBIOS serial "
            "read by the loader: 'SN-0002'): the default flow") in lines
    # The MAC alone does not name it: the default installer flow.
    assert "linux '(tftp)/images/vmlinuz'" in read(source, f"grub/grub.cfg-01-{MAC}")
    # Over HTTP too.
    answer = rig.client.request("GET", f"/grub/grub.cfg-01-{MAC}-serial-SN-0001-uuid-")
    assert answer.code == 200 and b"\nexit\n" in answer.body


def test_grub_finds_a_placeholder_serial_host_by_its_uuid(tmp_path) -> None:
    uuid = "4c4c4544-0042-3510-8052-b2c04f333231"
    rig = make_rig(tmp_path / "cluster")
    # /ipxebootscript enrols a machine named by its UUID when its serial is a placeholder.
    answer = rig.client.request(
        "GET", f"/ipxebootscript?serial=To%20Be%20Filled%20By%20O.E.M.&uuid={uuid}")
    assert answer.code == 200
    [host] = rig.client.request("GET", "/admin/hosts", token=ADMIN_TOKEN).json()
    assert host["Serial"] == uuid
    source = LoaderConfigSource(rig.provisioner)
    request = config_request(
        f"grub/grub.cfg-01-{MAC}-serial-To Be Filled By O.E.M.-uuid-{uuid.upper()}")
    assert request is not None
    text, found = loader_config(rig.provisioner, request)
    assert found is not None and found.serial == uuid
    assert "pxestack: loading the kernel" in text
    # Read through the TFTP source as well: the same machine.
    assert read(source, f"grub/grub.cfg-01-{MAC}-serial-To Be Filled By O.E.M.-uuid-{uuid}")


@pytest.mark.parametrize("path", [
    "grub/grub.cfg-01-zz-zz-zz-zz-zz-zz", "pxelinux.cfg/default", "grub/" + "a" * 500,
    f"grub/grub.cfg-01-{MAC}-serial-{'x' * MAX_CONFIG_PATH}-uuid-",
    "../grub/grub.cfg-01-52-54-00-aa-00-01", "ipxe.efi",
])
def test_other_and_hostile_paths_are_not_found(tmp_path, path: str) -> None:
    rig = make_rig(tmp_path / "cluster")
    with pytest.raises((PathNotFound, PathRefused)):
        LoaderConfigSource(rig.provisioner).open(path, CLIENT)


def test_http_unknown_config_is_404(tmp_path) -> None:
    rig = make_rig(tmp_path / "cluster")
    assert rig.client.request("GET", "/pxelinux.cfg/default").code == 404
    assert rig.client.request("GET", "/grub/x%ff").code == 404


def test_operator_templates_override_and_values_cannot_break_lines(tmp_path) -> None:
    templates = tmp_path / "templates"
    (templates / "pxelinux").mkdir(parents=True)
    (templates / "pxelinux" / "boot.cfg.pxelinux.j2").write_text(
        "DEFAULT site\nLABEL site\n  KERNEL {{ Kernel }}\n  APPEND {{ Mac }} {{ Evil }}\n")
    rig = make_rig(tmp_path / "cluster", templates_dir=str(templates),
                   templates_env={"x": 1})
    source = LoaderConfigSource(rig.provisioner)
    with pytest.raises(TemplateRenderError):  # Evil is undefined: StrictUndefined
        read(source, "pxelinux.cfg/01-52-54-00-aa-00-01")
    (templates / "pxelinux" / "boot.cfg.pxelinux.j2").write_text(
        "DEFAULT site\nLABEL site\n  KERNEL {{ Kernel }}\n  APPEND {{ Mac }}\n")
    text = read(source, "pxelinux.cfg/01-52-54-00-aa-00-01")
    assert text.startswith("DEFAULT site\n") and "APPEND 52:54:00:aa:00:01" in text


def test_images_over_tftp_are_the_files_get_images_serves(tmp_path) -> None:
    images = tmp_path / "images"
    (images / "3975.2.0").mkdir(parents=True)
    (images / "3975.2.0" / "flatcar_production_pxe.vmlinuz").write_bytes(b"KERNEL")
    rig = make_rig(tmp_path / "cluster", images_dir=str(images))
    source = LoaderConfigSource(rig.provisioner)
    assert read(source, "images/vmlinuz") == "KERNEL"
    assert read(source, "/images/sn-unknown/vmlinuz") == "KERNEL"  # the default version
    for path in ("images/initrd.cpio.gz", "images/passwd", "images/a/b/c", "images/../etc"):
        with pytest.raises((PathNotFound, PathRefused)):
            source.open(path, CLIENT)
