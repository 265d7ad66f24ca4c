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
from .vm import ConsoleWatch, Machine, VirtualMachine

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


@dataclass(frozen=True)
class Stall:
    """A known hang of a boot loader, after which the harness power-cycles the machine once.

    The machine printed the *after* milestone and then nothing for *quiet* seconds.  A real
    operator power-cycles such a machine; the harness does it at most *retries* times and
    reports every power cycle in the result, so a hang that repeats still fails the test.
    """

    after: str
    quiet: float
    why: str
    retries: int = 1

    def __post_init__(self) -> None:
        if self.after not in MILESTONES:
            raise ValueError(f"unknown milestone {self.after!r}")

    def matches(self, console: ConsoleWatch, now: float) -> bool:
        """Whether *console* (read until *now*, seconds since power-on) shows this hang."""
        if console.first(MILESTONES[self.after]) is None:
            return False
        last = console.last_line_at()
        return last is not None and now - last >= self.quiet


#: lpxelinux.0 (lwIP) run through the PXE API of QEMU's iPXE ROM occasionally prints its
#: banner and then nothing more until the harness's timeout (seen once in many CI runs, with
#: the dnsmasq reference, under load; TCG emulation).  iPXE chainloading lpxelinux.0 is
#: known to hang the same way on some real hardware.  Normally the next line follows the
#: banner within a few seconds (the kernel download prints nothing), so 60 quiet seconds is a
#: hang, and one power cycle still leaves the second boot most of the timeout.
LPXELINUX_STALL = Stall(
    after="pxelinux", quiet=60.0,
    why="lpxelinux.0 printed its banner and then nothing for 60 s (the loader hung)",
)


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
    #: Why the harness power-cycled the machine (one entry per cycle, see :class:`Stall`).
    power_cycles: list[str] = field(default_factory=list)
    #: The console's last lines, kept for the failure message.
    console_tail: list[str] = field(default_factory=list)

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
        line = f"{self.server:10} {self.firmware:8} {self.serial}: {status}; {points}"
        if self.power_cycles:
            line += "; power-cycled: " + "; ".join(self.power_cycles)
        if not self.ok and self.console_tail:
            line += "; console ended with: " + " | ".join(self.console_tail)
        return line


def boot_machines(
    segment: Segment,
    machines: Sequence[tuple[Machine, str]],
    workdir: Path,
    server_name: str,
    timeout: float,
    stalls: Sequence[Stall] = (),
) -> list[BootResult]:
    """Boot every ``(machine, firmware)`` at once (tap *i* for the *i*-th) and wait.

    A machine succeeds when its first stage reports ``installed`` and QEMU exits.  Machines
    still running after *timeout* seconds are killed and reported as timed out.  A machine
    showing one of *stalls* is power-cycled (within the same *timeout*).
    """
    if len(machines) > len(segment.taps):
        raise ValueError(f"{len(machines)} machines but only {len(segment.taps)} taps")
    vms: list[VirtualMachine] = []
    cycled: dict[int, list[str]] = {}
    try:
        for (machine, firmware), tap in zip(machines, segment.taps, strict=False):
            vms.append(VirtualMachine(segment, machine, firmware, tap, workdir))
        deadline = time.time() + timeout
        while time.time() < deadline and not all([vm.poll() for vm in vms]):
            for vm in vms:
                if vm.exited_after is None:
                    _power_cycle_if_stalled(vm, stalls, cycled.setdefault(id(vm), []))
            time.sleep(0.1)
        timed_out = {id(vm) for vm in vms if not vm.poll()}
    finally:
        for vm in vms:
            vm.stop()
    return [result_of(vm, server_name, timed_out=id(vm) in timed_out,
                      power_cycles=cycled.get(id(vm), [])) for vm in vms]


def _power_cycle_if_stalled(vm: VirtualMachine, stalls: Sequence[Stall],
                            done: list[str]) -> None:
    now = time.time() - vm.started
    for stall in stalls:
        if len(done) < stall.retries and stall.matches(vm.console, now):
            kept = vm.power_cycle()
            done.append(f"{stall.why} at {now:.1f} s (console kept in {kept.name})")
            return


def result_of(vm: VirtualMachine, server_name: str, *, timed_out: bool = False,
              power_cycles: Sequence[str] = ()) -> BootResult:
    """The :class:`BootResult` of a finished (or killed) machine."""
    console = vm.console
    milestones = {name: console.first(pattern) for name, pattern in MILESTONES.items()}
    failed_at = console.first(FAILURE)
    failure = None
    if failed_at is not None:
        failure = next(line for _, line in console.lines if FAILURE.split()[-1] in line
                       and MARK in line)
    elif timed_out or vm.exited_after is None:
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
        power_cycles=list(power_cycles),
        console_tail=console.tail() if failure is not None else [],
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
                   timeout: float, stalls: Sequence[Stall] = ()) -> BootResult:
    """Boot machine 1 with *firmware* against the dnsmasq reference serving *loader*."""
    segment = Segment.create(taps=1)
    try:
        server = ReferenceServer(segment, workdir, artifacts, loader=loader)
        server.start()
        try:
            [result] = boot_machines(segment, [(Machine.numbered(1), firmware)], workdir,
                                     server.name, timeout, stalls)
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


__all__ = ["LPXELINUX_STALL", "MILESTONES", "BootResult", "Stall", "boot_machines",
           "reference_boot", "result_of", "save_results", "watch_for_no_boot"]
