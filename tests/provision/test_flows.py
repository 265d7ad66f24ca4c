"""OS flows rendered for a sample host and validated: iPXE kernel lines, Ignition configs
(against their declared spec), the Flatcar installer script (executed against stub
commands), the generic script and cloud-config."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from flow_helpers import (
    FCOS_VERSION,
    FLATCAR_VERSION,
    FLOW_NAMES,
    assert_ipxe_words_safe,
    flow_provisioner,
    ignition_files,
    ignition_units,
    kernel_line,
    loads,
    sample_host,
)
from provision_helpers import BASE_URL

from pxestack.provision import ignition
from pxestack.provision.model import HostState
from pxestack.provision.templates import UnsafeTemplateValue


@pytest.fixture
def prov(tmp_path):
    return flow_provisioner(tmp_path)


@pytest.mark.parametrize("profile", FLOW_NAMES)
def test_every_flow_renders_a_safe_boot_script(prov, profile):
    script = prov.boot_script(sample_host(profile), identified=True)
    assert_ipxe_words_safe(script)
    kernel, _args = kernel_line(script)
    assert kernel.startswith(("http://", "https://"))
    assert script.rstrip().endswith("boot")


def test_flatcar_disk_boots_the_live_installer(prov):
    kernel, args = kernel_line(prov.boot_script(sample_host("flatcar-disk"), True))
    assert kernel == f"{BASE_URL}/images/sn-flatcar-disk/vmlinuz"
    assert "flatcar.first_boot=1" in args
    assert f"ignition.config.url={BASE_URL}/first-stage-ignition.json" in args
    assert f"next-script={BASE_URL}/first-stage-script/__SERIAL__" in args
    assert "initrd=initrd.cpio.gz" in args  # UEFI kernels need it (mayu PR #100)


def test_flatcar_pxe_boots_into_ram_with_its_own_ignition(prov):
    script = prov.boot_script(sample_host("flatcar-pxe"), True)
    _kernel, args = kernel_line(script)
    assert "flatcar.first_boot=1" in args
    url = f"{BASE_URL}/ignition?serial=sn-flatcar-pxe&uuid=${{uuid:uristring}}"
    assert f"ignition.config.url={url}" in args
    assert f"initrd {BASE_URL}/images/sn-flatcar-pxe/initrd.cpio.gz" in script
    # RAM boot every time: even a running host is not sent to its (absent) disk.
    running = sample_host("flatcar-pxe", state=HostState.RUNNING)
    assert "sanboot" not in prov.boot_script(running, True)


def test_fcos_disk_runs_coreos_installer_with_ignition(prov):
    script = prov.boot_script(sample_host("fcos-disk"), True)
    kernel, args = kernel_line(script)
    images = f"{BASE_URL}/images/sn-fcos-disk"
    assert kernel == f"{images}/vmlinuz"
    assert f"coreos.live.rootfs_url={images}/rootfs.img" in args
    assert "coreos.inst.install_dev=/dev/nvme0n1" in args  # the profile's install_disk
    assert f"coreos.inst.ignition_url={BASE_URL}/ignition?serial=sn-fcos-disk" in args
    assert {"ignition.firstboot", "ignition.platform.id=metal"} <= set(args)
    assert f"ignition.config.url={BASE_URL}/installer-ignition?serial=sn-fcos-disk" in args
    assert "initrd=initrd.img" in args
    assert f"initrd --name initrd.img {images}/initrd.img" in script


def test_fcos_pxe_is_a_live_boot_without_installer(prov):
    _kernel, args = kernel_line(prov.boot_script(sample_host("fcos-pxe"), True))
    assert not any(a.startswith("coreos.inst.") for a in args)
    assert f"ignition.config.url={BASE_URL}/ignition?serial=sn-fcos-pxe" in args
    assert {"ignition.firstboot", "ignition.platform.id=metal"} <= set(args)
    assert any(a.startswith("coreos.live.rootfs_url=") for a in args)


def test_installed_disk_flows_boot_the_local_disk(prov):
    for profile in ("flatcar-disk", "fcos-disk", "generic-disk"):
        host = sample_host(profile, state=HostState.INSTALLED)
        assert "sanboot --no-describe --drive 0x80" in prov.boot_script(host, True)


def test_generic_flow_kernel_initrds_and_placeholders(prov):
    script = prov.boot_script(sample_host("generic-disk"), True)
    kernel, args = kernel_line(script)
    assert kernel == f"{BASE_URL}/images/sn-generic-disk/vmlinuz"
    assert args[:3] == [
        "initrd=initrd.gz",
        "console=ttyS0",
        f"pxestack.script={BASE_URL}/script/sn-generic-disk",
    ]
    assert f"initrd {BASE_URL}/images/sn-generic-disk/initrd.gz" in script
    remote = prov.boot_script(sample_host("generic-pxe"), True)
    kernel, args = kernel_line(remote)
    assert kernel == "https://mirror.example/ubuntu/vmlinuz"
    assert f"cloud-config-url={BASE_URL}/script/sn-generic-pxe" in args
    assert "initrd https://mirror.example/ubuntu/initrd" in remote


@pytest.mark.parametrize(
    ("profile", "version"),
    [("flatcar-disk", "3.3.0"), ("flatcar-pxe", "3.3.0"), ("fcos-disk", "3.4.0"),
     ("fcos-pxe", "3.4.0")],
)
def test_final_ignition_is_valid_for_its_declared_spec(prov, profile, version):
    host = sample_host(profile)
    document = loads(prov.render_final(host))
    assert ignition.validate(document) == version
    files = ignition_files(document)
    assert files["/etc/hostname"] == host.hostname
    env = dict(line.split("=", 1) for line in files["/etc/mayu-env"].splitlines())
    assert env["SERIAL"] == host.serial
    assert env["PXESTACK_TOKEN"] == prov.callback_token(host)
    units = ignition_units(document)
    assert units["pxestack-boot-complete.service"]["enabled"] is True
    assert "/boot_complete" in units["pxestack-boot-complete.service"]["contents"]


def test_fcos_config_uses_networkmanager_for_the_static_address(prov):
    document = loads(prov.render_final(sample_host("fcos-disk")))
    files = ignition_files(document)
    keyfile = files["/etc/NetworkManager/system-connections/pxestack-static.nmconnection"]
    assert "interface-name=eno1" in keyfile
    assert "address1=198.18.10.10/24,198.18.10.1" in keyfile
    assert "dns=198.18.10.1;" in keyfile
    modes = {f["path"]: f["mode"] for f in document["storage"]["files"]}
    assert modes["/etc/NetworkManager/system-connections/pxestack-static.nmconnection"] == 0o600
    assert "/etc/systemd/network/10-pxestack-static.network" not in files  # that is Flatcar's


def test_fcos_installer_config_reports_set_installed_before_the_reboot(prov):
    host = sample_host("fcos-disk")
    document = loads(prov.render_installer_config(host))
    assert ignition.validate(document) == "3.4.0"
    unit = ignition_units(document)["pxestack-set-installed.service"]
    contents = unit["contents"]
    assert "After=network-online.target coreos-installer.service" in contents
    assert "Before=coreos-installer-reboot.service" in contents
    assert "WantedBy=coreos-installer.target" in contents
    assert f"Bearer {prov.callback_token(host)}" in contents
    assert f"{BASE_URL}/admin/host/sn-fcos-disk/set_installed" in contents


# -- the Flatcar installer script, executed against stub commands ----------------------------


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run_installer(tmp_path: Path, script: str, image: bytes, recorded_sha: str) -> tuple[int, str]:
    """Run the rendered installer with curl/flatcar-install/systemctl replaced by stubs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (tmp_path / "image").write_bytes(image)
    _stub(bin_dir, "curl", f"""
echo "curl $*" >> {log}
out=""; url=""
while [ $# -gt 0 ]; do
  case "$1" in -o) out="$2"; shift ;; -H|--data|-X|--retry) shift ;; -*) ;; *) url="$1" ;; esac
  shift
done
case "$url" in
  *.sha256) echo "{recorded_sha}  flatcar_production_image.bin.bz2" ;;
  *install_image.bin.bz2) cp {tmp_path / "image"} "$out" ;;
  *final-ignition-config.json) echo '{{"ignition":{{"version":"3.3.0"}}}}' > "$out" ;;
esac
""")
    _stub(bin_dir, "flatcar-install", f'echo "flatcar-install $*" >> {log}\n')
    _stub(bin_dir, "systemctl", f'echo "systemctl $*" >> {log}\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["/bin/bash", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    return done.returncode, log.read_text() if log.exists() else ""


def test_flatcar_installer_checks_the_cached_image_then_installs(prov, tmp_path):
    import hashlib

    host = sample_host("flatcar-disk")
    script = prov.render_first_stage_script(host)
    subprocess.run(["/bin/bash", "-n", "-c", script], check=True)
    image = b"BZh9 pretend image"
    code, calls = _run_installer(tmp_path, script, image, hashlib.sha256(image).hexdigest())
    assert code == 0, calls
    install = next(line for line in calls.splitlines() if line.startswith("flatcar-install"))
    words = install.split()
    assert words[words.index("-d") + 1] == "/dev/sda"
    assert words[words.index("-i") + 1].endswith("/ignition.json")
    assert words[words.index("-f") + 1].endswith("/flatcar_production_image.bin.bz2")
    order = [line.split()[0] + (" set_installed" if "set_installed" in line else "")
             for line in calls.splitlines()]
    assert order.index("flatcar-install") < order.index("curl set_installed")
    assert calls.splitlines()[-1] == "systemctl reboot"


def test_flatcar_installer_refuses_an_image_with_the_wrong_checksum(prov, tmp_path):
    script = prov.render_first_stage_script(sample_host("flatcar-disk"))
    code, calls = _run_installer(tmp_path, script, b"corrupted", "0" * 64)
    assert code != 0
    assert "flatcar-install" not in calls and "set_installed" not in calls


def test_flatcar_installer_from_a_release_server(tmp_path):
    profiles = [{"name": "rel", "quantity": 1,
                 "flatcar": {"image_source": "release", "channel": "beta",
                             "base_url": "https://mirror.example/flatcar/amd64-usr/"}}]
    prov = flow_provisioner(tmp_path, profiles=profiles)
    script = prov.render_first_stage_script(sample_host("rel"))
    code, calls = _run_installer(tmp_path, script, b"", "")
    assert code == 0, calls
    install = next(line for line in calls.splitlines() if line.startswith("flatcar-install"))
    assert f"-C beta -V {FLATCAR_VERSION} -b https://mirror.example/flatcar/amd64-usr" in install
    assert " -f " not in install
    assert "install_image" not in calls  # flatcar-install downloads and verifies it itself


def test_install_disk_precedence_and_escaping(prov):
    host = sample_host("flatcar-disk", overrides={"install_disk": "/dev/sdb; reboot"})
    script = prov.render_first_stage_script(host)
    assert "DISK='/dev/sdb; reboot'" in script  # quoted for the shell, never executed
    fcos = sample_host("fcos-disk", overrides={"install_disk": "/dev/sdb reboot"})
    with pytest.raises(UnsafeTemplateValue):
        prov.boot_script(fcos, True)  # a kernel argument cannot be quoted: refused
    assert "coreos.inst.install_dev=/dev/vdb" in prov.boot_script(
        sample_host("fcos-disk", overrides={"install_disk": "/dev/vdb"}), True
    )


# -- generic scripts ---------------------------------------------------------------------------


def test_generic_disk_script_is_valid_shell(prov):
    host = sample_host("generic-disk")
    _host, text, kind = _render_script(prov, host)
    assert kind == "sh"
    subprocess.run(["/bin/sh", "-n", "-c", text], check=True)
    assert "DISK=/dev/sda" in text
    assert f"IMAGES={BASE_URL}/images/sn-generic-disk" in text
    assert "set_installed" in text and "boot_complete" not in text


def test_generic_cloud_config_is_valid_yaml(prov):
    host = sample_host("generic-pxe")
    _host, text, kind = _render_script(prov, host)
    assert kind == "yaml"
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    assert document["hostname"] == host.hostname
    assert document["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3Nza test@example"]
    assert document["write_files"][0]["path"] == "/etc/mayu-env"
    assert f"PXESTACK_TOKEN={prov.callback_token(host)}" in document["write_files"][0]["content"]
    command = document["runcmd"][0]
    assert command[0] == "curl" and command[-1].endswith("/admin/host/sn-generic-pxe/boot_complete")


def test_hostile_template_values_are_escaped_in_every_context(prov):
    hostile = "x\"y'z\n$(id) `id` #c: {a} [b]"
    env = {"ssh_authorized_keys": [hostile]}
    for profile in ("flatcar-pxe", "fcos-pxe"):
        document = loads(prov.render_final(sample_host(profile, overrides=env)))
        ignition.validate(document)
        assert document["passwd"]["users"][0]["sshAuthorizedKeys"] == [hostile]
    _host, text, _kind = _render_script(prov, sample_host("generic-pxe", overrides=env))
    assert yaml.safe_load(text)["ssh_authorized_keys"] == [hostile]


def _render_script(prov, host):
    prov.store.enrol(host.serial, lambda existing: host, ["host created"])
    return prov.script(host.serial)


def test_fcos_version_selects_the_fcos_images(prov):
    flow = prov.flow_of(sample_host("fcos-disk"))
    assert flow.image_candidates(FCOS_VERSION, "rootfs.img") == (
        ("fcos", FCOS_VERSION, "rootfs.img"),
    )
    assert flow.image_candidates(FCOS_VERSION, "install_image.bin.bz2") == ()
    flatcar = prov.flow_of(sample_host("flatcar-disk"))
    assert flatcar.image_candidates("1.2.3", "install_image.bin.bz2.sha256")[0] == (
        "1.2.3",
        "flatcar_production_image.bin.bz2.sha256",
    )
