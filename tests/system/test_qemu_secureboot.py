"""Secure Boot on real firmware: OVMF with Microsoft's keys boots shim, GRUB and the kernel.

The machine is ``uefi-sb`` (tests/system/qemu/vm.py): q35 with SMM, Debian's
``OVMF_CODE_4M.secboot.fd`` and a copy of ``OVMF_VARS_4M.ms.fd``, OVMF's own PXE client.
pxestack runs with ``dhcp.boot.loader: {efi_x64: grub}`` and serves Debian's signed shim
(signed by Microsoft's UEFI CA), Debian's signed ``grubnetx64.efi`` as ``grubx64.efi``, the
per-host ``grub.cfg`` and the harness's kernel, which comes from Debian's signed linux-image
package; shim does not check initrds.  The same firmware refuses the unsigned ``ipxe.efi``:
that is what shows Secure Boot is on.

GRUB names the machine by the serial QEMU puts in SMBIOS (``-smbios type=1,serial=...``):
its generic ``grub.cfg`` reads it with GRUB's ``smbios`` command and asks for the config
of that serial.  After the install the same serial boots again with another MAC address:
only the serial can find the installed host, and GRUB gets its local-boot config.

Secure Boot over UEFI HTTP Boot (``uefi-sb-http``) gets as far as GRUB and no further:
OVMF downloads shim from the URL in pxestack's DHCP answer, shim downloads the signed GRUB
from the same directory (as ``//grubx64.efi``), both verified; GRUB then sets its prefix to
``(http,198.18.0.1:8080)/grub`` from that DHCP answer, but Debian's signed GRUB has no
``http`` module and loads none under Secure Boot (lockdown), so it reads no config at all
and stops at its command line.  The second test shows exactly that (docs/firmware-testing.md
has what GRUB showed at its prompt).

Timeline: power-on -> ``grub_config`` (GRUB runs pxestack's per-host config) -> ``init``
-> ``callback``; appended to ``.cache/qemu/results.jsonl`` like the other QEMU tests, beside
the dnsmasq reference on the same path (dnsmasq's TFTP serves shim, GRUB, a static
``grub.cfg`` with the same kernel line, the kernel and the initrd).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import require, require_root_and_tools
from qemu.artifacts import Artifacts, cache_dir, ensure_artifacts
from qemu.netns import Segment
from qemu.scenario import boot_machines, reference_boot, save_results
from qemu.servers import LOADER_FILES, PxestackServer
from qemu.vm import OVMF_CODE_SECBOOT, OVMF_VARS_MS, ConsoleWatch, Machine, VirtualMachine

pytestmark = pytest.mark.qemu

TOOLS = ("qemu-system-x86_64", "dnsmasq", "ip", "ss", "curl", "git", "apt-get", "dpkg-deb")
BOOT_TIMEOUT = 180.0
#: How long the refused ipxe.efi boot is watched at most (the refusal comes after ~10 s).
REFUSAL_TIMEOUT = 90.0
#: How long the installed machine's second boot is watched at most (GRUB's local-boot
#: config comes after ~20 s).
LOCAL_BOOT_TIMEOUT = 120.0
RESULTS = cache_dir() / "results.jsonl"


@pytest.fixture(scope="module")
def artifacts() -> Artifacts:
    """The Debian kernel and first-stage initramfs (built once, cached)."""
    require_root_and_tools(*TOOLS)
    for path in (OVMF_CODE_SECBOOT, OVMF_VARS_MS, LOADER_FILES["shimx64.efi"],
                 LOADER_FILES["grubx64.efi"], Path("/usr/lib/ipxe/ipxe.efi")):
        require(path.exists(), f"needs {path} (ovmf, shim-signed, grub-efi-amd64-signed, "
                "ipxe packages)")
    return ensure_artifacts()


def kernel_signers(kernel: Path) -> str:
    """``sbverify --list`` of *kernel*; without sbsigntool, whether the PE file has a
    certificate table (data directory 4, non-empty)."""
    if shutil.which("sbverify"):
        return subprocess.run(["sbverify", "--list", str(kernel)], capture_output=True,
                              text=True, timeout=30, check=True).stdout
    data = kernel.read_bytes()
    pe = int.from_bytes(data[0x3C:0x40], "little")
    assert data[pe:pe + 4] == b"PE\0\0", "the kernel is not a PE image"
    optional = pe + 24
    directories = optional + (112 if data[optional:optional + 2] == b"\x0b\x02" else 96)
    size = int.from_bytes(data[directories + 4 * 8 + 4:directories + 4 * 8 + 8], "little")
    return "signature (certificate table present)" if size else ""


def test_secure_boot_boots_shim_grub_and_the_signed_kernel_and_refuses_ipxe(
    artifacts: Artifacts, tmp_path: Path
) -> None:
    signers = kernel_signers(artifacts.kernel)
    assert "signature" in signers, f"the harness kernel is not signed: {signers!r}"

    machine = Machine.numbered(1)
    segment = Segment.create(taps=1)
    try:
        # 1. shim -> signed GRUB -> per-host grub.cfg -> signed kernel -> first stage.
        server = PxestackServer(segment, tmp_path / "grub", artifacts,
                                loader={"efi_x64": "grub"})
        server.start()
        try:
            [result] = boot_machines(segment, [(machine, "uefi-sb")], tmp_path / "grub",
                                     server.name, BOOT_TIMEOUT)
            save_results(RESULTS, [result], scenario="secure-boot-grub")
            print("\n" + result.summary())
            assert result.ok, result.summary()
            assert result.milestones["grub_config"] is not None, result.summary()
            assert result.milestones["ipxe_banner"] is None  # no iPXE anywhere on this path
            [host] = server.hosts()
            # Keyed by the SMBIOS serial (mayu's lower case).
            assert host["Serial"] == machine.serial.lower()
            assert host["State"] == "installed"

            # The same serial with another NIC: GRUB's SMBIOS serial alone finds the host.
            renamed = replace(machine, mac="52:54:00:e2:e1:01")
            console = watch_until(segment, renamed, tmp_path / "grub",
                                  r"pxestack: booting from local disk", LOCAL_BOOT_TIMEOUT)
            assert console.first(r"pxestack: booting from local disk") is not None, (
                console.text()[-3000:])
            assert console.first(r"pxestack: loading the kernel") is None
        finally:
            server.stop()
        log = (tmp_path / "grub" / "pxestack.log").read_text(errors="replace")
        identified = (f"/grub/grub.cfg-01-{machine.mac}-serial-{machine.serial}"
                      f"-uuid-{machine.uuid}")
        for sent in ("sent 'shimx64.efi'", "sent 'grubx64.efi'", "sent '/grub/grub.cfg'",
                     f"sent '{identified}'", "sent '/images/vmlinuz'",
                     f"grub config for a machine not known yet ({machine.mac}",
                     f"grub config for host {machine.serial.lower()} ({renamed.mac}",
                     f"SMBIOS serial read by the loader: '{machine.serial}'"):
            assert sent in log, sent
        # Never the MAC-only fallback: GRUB read the serial.
        assert f"sent '/grub/grub.cfg-01-{machine.mac}'" not in log

        # 2. The same firmware refuses the unsigned ipxe.efi.
        server = PxestackServer(segment, tmp_path / "ipxe", artifacts)
        server.start()
        try:
            watch = watch_until(segment, machine, tmp_path / "ipxe",
                                r"failed to load Boot.*Access Denied", REFUSAL_TIMEOUT)
        finally:
            server.stop()
        console = watch.text()
        assert "NBP filename is ipxe.efi" in console, console[-3000:]
        assert watch.first(r"BdsDxe: failed to load Boot.*Access Denied") is not None, (
            console[-3000:])
        assert "iPXE" not in console
    finally:
        segment.close()


def watch_until(segment: Segment, machine: Machine, workdir: Path, pattern: str,
                timeout: float, firmware: str = "uefi-sb") -> ConsoleWatch:
    """Run *machine* until its console shows *pattern*, it exits or *timeout* passes; the
    machine is stopped and its console returned."""
    vm = VirtualMachine(segment, machine, firmware, segment.taps[0], workdir)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and not vm.poll():
            if vm.console.first(pattern) is not None:
                break
            time.sleep(0.1)
    finally:
        vm.stop()
    return vm.console


def test_dnsmasq_reference_boots_the_same_secure_boot_path(artifacts: Artifacts,
                                                          tmp_path: Path) -> None:
    result = reference_boot(artifacts, tmp_path, "uefi-sb", "grub", BOOT_TIMEOUT)
    save_results(RESULTS, [result], scenario="secure-boot-grub")
    print("\n" + result.summary())
    assert result.ok, result.summary()
    assert result.milestones["grub_config"] is not None, result.summary()


def test_secure_boot_over_http_boot_runs_shim_and_grub_which_cannot_read_its_config(
    artifacts: Artifacts, tmp_path: Path
) -> None:
    machine = Machine.numbered(2)
    segment = Segment.create(taps=1)
    try:
        server = PxestackServer(segment, tmp_path, artifacts, loader={"efi_x64": "grub"})
        server.start()
        try:
            console = watch_until(segment, machine, tmp_path, GRUB_PROMPT, BOOT_TIMEOUT,
                                  firmware="uefi-sb-http")
            # Anything GRUB asks for after its prompt would be in the log by now.
            time.sleep(2)
        finally:
            server.stop()
    finally:
        segment.close()
    text = console.text()
    assert "URI: http://198.18.0.1:8080/shimx64.efi" in text, text[-3000:]
    assert console.first(GRUB_PROMPT) is not None, text[-3000:]
    assert "GNU GRUB" in text and "pxestack: loading the kernel" not in text
    log = (tmp_path / "pxestack.log").read_text(errors="replace")
    # Both signed loaders over HTTP (shim asks for "//grubx64.efi": its directory's URL
    # followed by "/grubx64.efi"); no TFTP at all, and GRUB asks for no config.
    assert "GET /shimx64.efi 200" in log and "GET //grubx64.efi 200" in log
    assert "RRQ" not in log
    assert "grub.cfg" not in log


#: GRUB's normal-mode command line, shown when it found no config to run.
GRUB_PROMPT = r"Minimal BASH-like line editing is supported"
