"""UEFI HTTP Boot on real firmware: OVMF's HTTP boot client gets its URL from pxestack.

The machine is ``uefi-http`` (OVMF, no iPXE in the NIC).  Debian's OVMF would try PXE over
IPv4, then IPv6, then HTTP Boot over IPv4 on the NIC; the machine's firmware configuration
switches both PXE clients off (tests/system/qemu/vm.py), so HTTP Boot is its first and only
network boot, against a stock ``pxestack serve``: its ``HTTPClient`` DHCP request gets
option 60 ``HTTPClient`` and the URL ``<http.public_url>/ipxe.efi`` (nothing preset in the
firmware), iPXE then runs the usual script.  No TFTP request at all.

Timeline: power-on -> ``http_boot`` -> ``script`` -> ``init`` -> ``callback``, beside the
dnsmasq reference on the same path: dnsmasq can answer the HTTP Boot client
(``dhcp-vendorclass`` tags it, ``dhcp-option-force`` sends option 60 ``HTTPClient`` and
``dhcp-boot`` takes the URL as the boot file name).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require, require_root_and_tools
from qemu.artifacts import Artifacts, cache_dir, ensure_artifacts
from qemu.netns import Segment
from qemu.scenario import boot_machines, reference_boot, save_results
from qemu.servers import PxestackServer
from qemu.vm import OVMF_CODE, OVMF_VARS, Machine

pytestmark = pytest.mark.qemu

TOOLS = ("qemu-system-x86_64", "dnsmasq", "ip", "ss", "curl", "git", "apt-get", "dpkg-deb")
BOOT_TIMEOUT = 180.0
RESULTS = cache_dir() / "results.jsonl"


@pytest.fixture(scope="module")
def artifacts() -> Artifacts:
    """The Debian kernel and first-stage initramfs (built once, cached)."""
    require_root_and_tools(*TOOLS)
    for path in (OVMF_CODE, OVMF_VARS, Path("/usr/lib/ipxe/ipxe.efi")):
        require(path.exists(), f"needs {path} (ovmf, ipxe packages)")
    return ensure_artifacts()


def test_uefi_http_boot_gets_its_url_from_pxestack(artifacts: Artifacts, tmp_path: Path
                                                   ) -> None:
    machine = Machine.numbered(1)
    segment = Segment.create(taps=1)
    try:
        server = PxestackServer(segment, tmp_path, artifacts)
        server.start()
        try:
            [result] = boot_machines(segment, [(machine, "uefi-http")], tmp_path, server.name,
                                     BOOT_TIMEOUT)
            save_results(RESULTS, [result], scenario="uefi-http-boot")
            print("\n" + result.summary())
            assert result.ok, result.summary()
            assert result.milestones["http_boot"] is not None, result.summary()
            [host] = server.hosts()
            assert host["State"] == "installed"
        finally:
            server.stop()
    finally:
        segment.close()
    console = Path(result.console_log).read_text(errors="replace")
    assert "URI: http://198.18.0.1:8080/ipxe.efi" in console
    log = (tmp_path / "pxestack.log").read_text(errors="replace")
    assert "GET /ipxe.efi 200" in log
    assert "RRQ" not in log  # HTTP only: no TFTP request at all


def test_dnsmasq_reference_boots_the_same_http_boot_path(artifacts: Artifacts,
                                                        tmp_path: Path) -> None:
    result = reference_boot(artifacts, tmp_path, "uefi-http", "ipxe", BOOT_TIMEOUT)
    save_results(RESULTS, [result], scenario="uefi-http-boot")
    print("\n" + result.summary())
    assert result.ok, result.summary()
    assert result.milestones["http_boot"] is not None, result.summary()
    console = Path(result.console_log).read_text(errors="replace")
    assert "URI: http://198.18.0.1:8080/ipxe.efi" in console
