"""The seed's cluster from a fresh machine: 4 QEMU machines network-boot from pxestack.

Run as root from the repository (``make demo`` runs exactly this)::

    .venv/bin/python tests/system/qemu/demo.py [--firmware bios|uefi|uefi-pxe|mixed]
                                              [--server pxestack|dnsmasq] [--keep DIR]

It builds the Debian kernel and busybox first stage (cached in ``.cache/qemu``), creates a
network namespace with a bridge and four taps, starts ``pxestack serve`` with profile
``core`` (quantity 3), boots the four machines at once under TCG and prints the resulting
hosts (``GET /admin/hosts``) and each machine's boot timeline.  ``--server dnsmasq`` boots
the same machines against the dnsmasq reference instead (no profiles there).
Everything it started is stopped and the namespace deleted on exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qemu.artifacts import ensure_artifacts
from qemu.netns import Segment
from qemu.scenario import BootResult, boot_machines
from qemu.servers import PxestackServer, ReferenceServer
from qemu.vm import EFI_VIRTIO_ROM, OVMF_CODE, OVMF_VARS, Machine

MIXED = ("bios", "uefi", "uefi-pxe", "bios")
TOOLS = ("qemu-system-x86_64", "ip", "ss", "curl", "git", "apt-get", "dpkg-deb")
#: Debian packages that provide what the demo needs (as .ci/run installs them).
PACKAGES = "qemu-system-x86 ipxe-qemu ipxe ovmf dnsmasq curl git iproute2"


def missing_prerequisites(server: str) -> list[str]:
    """Executables and firmware files the demo needs but cannot find."""
    tools = [*TOOLS, "dnsmasq"] if server == "dnsmasq" else list(TOOLS)
    missing = [tool for tool in tools if shutil.which(tool) is None]
    files = (OVMF_CODE, OVMF_VARS, EFI_VIRTIO_ROM, Path("/usr/lib/ipxe/ipxe.efi"))
    missing += [str(path) for path in files if not path.exists()]
    return missing


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns with a header rule."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def timeline_table(results: list[BootResult]) -> str:
    """One row per machine: firmware and the seconds at which each milestone was seen."""
    names = list(results[0].milestones)
    rows = [["serial", "firmware", "ok", *names, "exit"]]
    for result in results:
        rows.append([
            result.serial, result.firmware, "yes" if result.ok else f"NO: {result.failure}",
            *(f"{result.milestones[n]:.1f}" if result.milestones[n] is not None else "-"
              for n in names),
            f"{result.exit:.1f}" if result.exit is not None else "-",
        ])
    return table(rows)


def hosts_table(hosts: list[dict[str, object]]) -> str:
    """mayuctl-list-like rows of the host records."""
    fields = ["Serial", "Profile", "Hostname", "MachineID", "InternalAddr", "State"]
    rows = [[f.lower() for f in fields]]
    for host in sorted(hosts, key=lambda h: str(h.get("Serial"))):
        rows.append([str(host.get(f, "-") or "-") for f in fields])
    return table(rows)


def main() -> int:
    """Run the demo; returns the exit status (0 when every machine was installed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--firmware", default="bios",
                        choices=["bios", "uefi", "uefi-pxe", "mixed"])
    parser.add_argument("--server", default="pxestack", choices=["pxestack", "dnsmasq"])
    parser.add_argument("--keep", type=Path, help="keep logs and state in this directory")
    parser.add_argument("--timeout", type=float, default=420.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("demo.py needs root (network namespaces, tap devices)", file=sys.stderr)
        return 2
    missing = missing_prerequisites(args.server)
    if missing:
        print(f"missing: {', '.join(missing)}; apt-get install {PACKAGES}", file=sys.stderr)
        return 2
    firmwares = MIXED if args.firmware == "mixed" else (args.firmware,) * 4
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="pxestack-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print("building guest kernel and first stage (cached) ... ", end="", flush=True)
    artifacts = ensure_artifacts()
    print(f"{artifacts.kernel_version}")
    segment = Segment.create(taps=4, prefix="pxt-demo")
    server: PxestackServer | ReferenceServer
    if args.server == "pxestack":
        server = PxestackServer(segment, workdir, artifacts,
                                profiles=[{"name": "core", "quantity": 3}])
    else:
        server = ReferenceServer(segment, workdir, artifacts)
    results: list[BootResult] = []
    try:
        server.start()
        print(f"{server.name} is serving in namespace {segment.name}; booting 4 machines "
              f"({', '.join(firmwares)}) under TCG ...", flush=True)
        machines = [(Machine.numbered(i + 1), fw) for i, fw in enumerate(firmwares)]
        results = boot_machines(segment, machines, workdir, server.name, args.timeout)
        print("\nboot timelines (seconds since power-on):")
        print(timeline_table(results))
        if isinstance(server, PxestackServer):
            print("\nhosts (GET /admin/hosts):")
            print(hosts_table(server.hosts()))
            print("\ngit history of the cluster directory:")
            print("\n".join(f"  {line}" for line in server.git_log()))
    finally:
        server.stop()
        segment.close()
    print(f"\nlogs: {workdir}")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
