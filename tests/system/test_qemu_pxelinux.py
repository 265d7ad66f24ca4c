"""PXELINUX on SeaBIOS: lpxelinux.0 with a per-host config fetched over HTTP.

The machine is ``bios`` (SeaBIOS, virtio-net with QEMU's default ROM, which is iPXE; the
boot decision hands a NIC's iPXE ROM the loader file like any PXE firmware, and iPXE runs
lpxelinux.0 through its PXE API).  pxestack runs with ``dhcp.boot.loader: {bios: pxelinux}``
and ``pxelinux_prefix: <public URL>/``: lpxelinux.0 comes by TFTP, then ``ldlinux.c32`` (the
asset root), ``pxelinux.cfg/01-<mac>`` (rendered by the provisioning layer) and the kernel
and initrd come over HTTP.

Timeline: power-on -> ``pxelinux`` (lpxelinux.0's banner) -> ``init`` -> ``callback``,
beside the dnsmasq reference on the same path (lpxelinux.0 by dnsmasq's TFTP, option 210
naming the reference HTTP server, one static ``pxelinux.cfg/default``).

Both boots allow one power cycle when lpxelinux.0 hangs silently after its banner
(``LPXELINUX_STALL``: a loader hang before any request, seen with either server); the power
cycle is printed with the result, and a second hang fails the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require, require_root_and_tools
from qemu.artifacts import Artifacts, cache_dir, ensure_artifacts
from qemu.netns import Segment
from qemu.scenario import LPXELINUX_STALL, boot_machines, reference_boot, save_results
from qemu.servers import HTTP_PORT, LOADER_FILES, PxestackServer
from qemu.vm import Machine

pytestmark = pytest.mark.qemu

TOOLS = ("qemu-system-x86_64", "dnsmasq", "ip", "ss", "curl", "git", "apt-get", "dpkg-deb")
BOOT_TIMEOUT = 180.0
RESULTS = cache_dir() / "results.jsonl"


@pytest.fixture(scope="module")
def artifacts() -> Artifacts:
    """The Debian kernel and first-stage initramfs (built once, cached)."""
    require_root_and_tools(*TOOLS)
    for name in ("lpxelinux.0", "ldlinux.c32"):
        require(LOADER_FILES[name].exists(),
                f"needs {LOADER_FILES[name]} (pxelinux, syslinux-common packages)")
    return ensure_artifacts()


def test_pxelinux_boots_with_a_per_host_config_over_http(
    artifacts: Artifacts, tmp_path: Path
) -> None:
    machine = Machine.numbered(1)
    segment = Segment.create(taps=1)
    try:
        server = PxestackServer(segment, tmp_path, artifacts, loader={"bios": "pxelinux"},
                                pxelinux_prefix=f"http://198.18.0.1:{HTTP_PORT}/")
        server.start()
        try:
            [result] = boot_machines(segment, [(machine, "bios")], tmp_path, server.name,
                                     BOOT_TIMEOUT, [LPXELINUX_STALL])
            save_results(RESULTS, [result], scenario="pxelinux-http")
            print("\n" + result.summary())
            assert result.ok, result.summary()
            assert result.milestones["pxelinux"] is not None, result.summary()
            [host] = server.hosts()
            assert host["State"] == "installed"
        finally:
            server.stop()
    finally:
        segment.close()
    log = (tmp_path / "pxestack.log").read_text(errors="replace")
    mac = machine.mac.replace(":", "-")
    assert "sent 'lpxelinux.0'" in log
    for request in ("GET /ldlinux.c32 200", f"GET /pxelinux.cfg/01-{mac} 200",
                    "GET /images/vmlinuz 200"):
        assert request in log, request
    assert "RRQ 'ldlinux.c32'" not in log  # over HTTP, not TFTP


def test_dnsmasq_reference_boots_the_same_pxelinux_path(artifacts: Artifacts,
                                                       tmp_path: Path) -> None:
    result = reference_boot(artifacts, tmp_path, "bios", "pxelinux", BOOT_TIMEOUT,
                            [LPXELINUX_STALL])
    save_results(RESULTS, [result], scenario="pxelinux-http")
    print("\n" + result.summary())
    assert result.ok, result.summary()
    assert result.milestones["pxelinux"] is not None, result.summary()
