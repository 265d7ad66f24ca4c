"""Timed boots: start machines against a running server and read their timelines.

A boot's timeline comes from the serial console (every line timestamped when it first
appears, polled every 0.1 s), so it is measured the same way whichever server answers:

* ``ipxe_banner``: iPXE's ``Features:`` line, printed as it starts;
* ``ipxe_configured``: iPXE's ``Configuring (net0 ...)... ok`` line, i.e. ``ifconf`` done
  (DHCPv4 *and* IPv6 router discovery; see docs/firmware-testing.md);
* ``grub_config``: GRUB runs pxestack's per-host ``grub.cfg`` (its first ``echo``);
* ``pxelinux``: lpxelinux.0's banner (it then reads ``pxelinux.cfg/01-<mac>``);
* ``http_boot``: OVMF starts its UEFI HTTP Boot client;
* ``script``: the boot script was fetched (``boot.ipxe ... ok`` or the chained script);
* ``init``: the initramfs ``/init`` started;
* ``callback``: the first stage posted its host data (power-on -> first-stage callback,
  the figure the <= 0.5x target is about);
* ``installed``: ``set_installed`` was acknowledged; ``exit``: QEMU ended (``poweroff -f``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .artifacts import MARK, Artifacts
from .netns import Segment
from .servers import ReferenceServer
from .vm import Machine, VirtualMachine, wait_all

#: Console patterns of the timeline points, in boot order.
MILESTONES = {
    "ipxe_banner": r"Features: ",
    "ipxe_configured": r"Configuring \(net0 .*ok",
    "grub_config": r"pxestack: loading the kernel",
    "pxelinux": r"PXELINUX \d",
    "http_boot": r"Start HTTP Boot over IPv4",
    "script": r"(boot\.ipxe|ipxebootscript).*(ok|\[script\])",
    "init": rf"{MARK} init started",
    "callback": rf"{MARK} host data posted",
    "installed": rf"{MARK} installed",
}
FAILURE = rf"{MARK} FAIL"


@dataclass
class BootResult:
    """What one machine did in one boot."""

    server: str
    firmware: str
    serial: str
    mac: str
    ok: bool
    exit: float | None
    milestones: dict[str, float | None] = field(default_factory=dict)
    failure: str | None = None
    console_log: str = ""

    @property
    def callback(self) -> float | None:
        """Seconds from QEMU start to the first-stage host-data callback."""
        return self.milestones.get("callback")

    def summary(self) -> str:
        """One line for logs and assertion messages."""
        points = " ".join(
            f"{name}={value:.2f}" if value is not None else f"{name}=-"
            for name, value in self.milestones.items()
        )
        status = "ok" if self.ok else f"FAILED ({self.failure})"
        return f"{self.server:10} {self.firmware:8} {self.serial}: {status}; {points}"


def boot_machines(
    segment: Segment,
    machines: Sequence[tuple[Machine, str]],
    workdir: Path,
    server_name: str,
    timeout: float,
) -> list[BootResult]:
    """Boot every ``(machine, firmware)`` at once (tap *i* for the *i*-th) and wait.

    A machine succeeds when its first stage reports ``installed`` and QEMU exits.  Machines
    still running after *timeout* seconds are killed and reported as failed.
    """
    if len(machines) > len(segment.taps):
        raise ValueError(f"{len(machines)} machines but only {len(segment.taps)} taps")
    vms: list[VirtualMachine] = []
    try:
        for (machine, firmware), tap in zip(machines, segment.taps, strict=False):
            vms.append(VirtualMachine(segment, machine, firmware, tap, workdir))
        wait_all(vms, timeout)
    finally:
        for vm in vms:
            vm.stop()
    return [result_of(vm, server_name) for vm in vms]


def result_of(vm: VirtualMachine, server_name: str) -> BootResult:
    """The :class:`BootResult` of a finished (or killed) machine."""
    console = vm.console
    milestones = {name: console.first(pattern) for name, pattern in MILESTONES.items()}
    failed_at = console.first(FAILURE)
    failure = None
    if failed_at is not None:
        failure = next(line for _, line in console.lines if FAILURE.split()[-1] in line
                       and MARK in line)
    elif vm.exited_after is None:
        failure = "timed out"
    elif milestones["installed"] is None:
        failure = "QEMU exited before the first stage finished"
    return BootResult(
        server=server_name,
        firmware=vm.firmware,
        serial=vm.machine.serial,
        mac=vm.machine.mac,
        ok=failure is None,
        exit=vm.exited_after,
        milestones=milestones,
        failure=failure,
        console_log=str(vm.serial_log),
    )


def watch_for_no_boot(
    segment: Segment, machine: Machine, firmware: str, workdir: Path, seconds: float
) -> VirtualMachine:
    """Run *machine* for *seconds* and return it (stopped), for "must not boot" checks."""
    vm = VirtualMachine(segment, machine, firmware, segment.taps[0], workdir)
    try:
        deadline = time.time() + seconds
        while time.time() < deadline and not vm.poll():
            time.sleep(0.1)
    finally:
        vm.stop()
    return vm


def reference_boot(artifacts: Artifacts, workdir: Path, firmware: str, loader: str,
                   timeout: float) -> BootResult:
    """Boot machine 1 with *firmware* against the dnsmasq reference serving *loader*."""
    segment = Segment.create(taps=1)
    try:
        server = ReferenceServer(segment, workdir, artifacts, loader=loader)
        server.start()
        try:
            [result] = boot_machines(segment, [(Machine.numbered(1), firmware)], workdir,
                                     server.name, timeout)
        finally:
            server.stop()
    finally:
        segment.close()
    return result


def save_results(path: Path, results: Sequence[BootResult], **extra: object) -> None:
    """Append one JSON record of *results* (and *extra*) to *path*."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"t": time.time(), "results": [asdict(r) for r in results], **extra}
    with path.open("a") as out:
        out.write(json.dumps(record) + "\n")


__all__ = ["MILESTONES", "BootResult", "boot_machines", "reference_boot", "result_of",
           "save_results",
           "watch_for_no_boot"]
