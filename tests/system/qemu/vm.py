"""One QEMU virtual machine that network-boots with one of three firmware paths.

* ``bios``: SeaBIOS with QEMU's iPXE NIC option ROM (virtio-net-pci's default romfile).
* ``uefi``: OVMF with the same NIC's iPXE EFI ROM (``efi-virtio.rom``).
* ``uefi-pxe``: OVMF's own UEFI PXE client (``romfile=""``), which TFTPs ``ipxe.efi``.
* ``uefi-sb``: OVMF's Secure Boot build with Microsoft's keys enrolled (q35 with SMM, the
  flash locked to SMM), its own PXE client: it runs only signed loaders (shim, then GRUB).
* ``uefi-http`` and ``uefi-sb-http``: ``uefi-pxe`` and ``uefi-sb`` with OVMF's PXE over IPv4
  and IPv6 switched off through QEMU's firmware configuration
  (``opt/org.tianocore/IPv4PXESupport`` and ``IPv6PXESupport`` = ``no``, read by OVMF since
  2020), so the NIC's first boot option is UEFI HTTP Boot over IPv4: the machine boots over
  HTTP without first waiting for two PXE attempts to time out.

Always TCG: ``/dev/kvm`` on these machines may be PVM (``kvm_pvm``), where SeaBIOS runs but
Linux hangs.  The firmware console reaches the serial log only with ``-nographic`` (SeaBIOS
sercon), so QEMU runs with ``-nographic -serial file:... -monitor none``.  The guest's
``poweroff -f`` ends the QEMU process; ``-no-reboot`` turns a reboot into an exit as well.

:class:`ConsoleWatch` timestamps every console line when it first appears, which gives the
boot timeline without instrumenting the server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .netns import Segment

FIRMWARES = ("bios", "uefi", "uefi-pxe", "uefi-sb", "uefi-http", "uefi-sb-http")
#: The Secure Boot machines (q35 with SMM, Microsoft's keys).
SECURE_BOOT = ("uefi-sb", "uefi-sb-http")
#: OVMF's firmware-configuration switches that leave UEFI HTTP Boot as the only network boot.
NO_PXE = ("-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
          "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
#: Debian's ovmf: the Secure Boot build (SMM) and variables with Microsoft's keys enrolled.
OVMF_CODE_SECBOOT = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS_MS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
EFI_VIRTIO_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")


@dataclass(frozen=True)
class Machine:
    """The identity of one virtual machine (what SMBIOS and the NIC report)."""

    index: int
    serial: str
    mac: str
    uuid: str

    @classmethod
    def numbered(cls, index: int) -> Machine:
        """Machine number *index* (1-based) with a predictable serial, MAC and UUID."""
        return cls(
            index=index,
            serial=f"E2E-SN-{index:04d}",
            mac=f"52:54:00:e2:e0:{index:02x}",
            uuid=f"00000000-0000-4000-8000-e2e0000000{index:02x}",
        )


def qemu_command(machine: Machine, firmware: str, tap: str, serial_log: Path,
                 vars_file: Path | None) -> list[str]:
    """The ``qemu-system-x86_64`` command line for *machine* booting *firmware* from *tap*."""
    if firmware not in FIRMWARES:
        raise ValueError(f"unknown firmware {firmware!r}; expected one of {FIRMWARES}")
    nic = f"virtio-net-pci,netdev=n0,mac={machine.mac},bootindex=1"
    if firmware == "uefi":
        nic += f",romfile={EFI_VIRTIO_ROM}"
    elif firmware != "bios":
        nic += ",romfile="  # no iPXE ROM: OVMF's own PXE (or HTTP Boot) client
    command = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-smp", "1",
        *(["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"]
          if firmware in SECURE_BOOT else []),
        *(NO_PXE if firmware.endswith("-http") else ()),
        "-nographic", "-serial", f"file:{serial_log}", "-monitor", "none",
        "-no-reboot", "-nodefaults",
        "-smbios", f"type=1,serial={machine.serial},product=e2e-vm,uuid={machine.uuid}",
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        "-device", nic,
    ]
    if firmware == "bios":
        command += ["-boot", "n"]
    else:
        assert vars_file is not None
        code = OVMF_CODE_SECBOOT if firmware in SECURE_BOOT else OVMF_CODE
        command += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_file}",
        ]
    return command


@dataclass
class ConsoleWatch:
    """Timestamps of serial-console lines, in seconds since the machine was started."""

    path: Path
    started: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    _consumed: int = 0
    _partial: str = ""

    def poll(self) -> None:
        """Read what the console wrote since the last poll."""
        try:
            with self.path.open("rb") as log:
                log.seek(self._consumed)
                chunk = log.read()
        except FileNotFoundError:
            return
        if not chunk:
            return
        self._consumed += len(chunk)
        now = time.time() - self.started
        text = self._partial + chunk.decode("utf-8", "replace").replace("\r", "\n")
        *complete, self._partial = text.split("\n")
        self.lines.extend((now, line) for line in complete if line.strip())

    def first(self, pattern: str) -> float | None:
        """When a line matching *pattern* (a regex) first appeared, or ``None``."""
        regex = re.compile(pattern)
        return next((when for when, line in self.lines if regex.search(line)), None)

    def text(self) -> str:
        """The whole console as read so far."""
        return "\n".join(line for _, line in self.lines)

    def last_line_at(self) -> float | None:
        """When the latest complete line appeared (seconds since start), or ``None``."""
        return self.lines[-1][0] if self.lines else None

    def tail(self, count: int = 3) -> list[str]:
        """The last *count* complete lines."""
        return [line.strip() for _, line in self.lines[-count:]]


class VirtualMachine:
    """A running QEMU process inside *segment*, attached to *tap*."""

    def __init__(self, segment: Segment, machine: Machine, firmware: str, tap: str,
                 workdir: Path) -> None:
        self.machine = machine
        self.firmware = firmware
        workdir.mkdir(parents=True, exist_ok=True)
        self.serial_log = workdir / f"vm{machine.index}-{firmware}-serial.log"
        self.serial_log.unlink(missing_ok=True)
        vars_file = None
        if firmware != "bios":
            vars_file = workdir / f"vm{machine.index}-OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS_MS if firmware in SECURE_BOOT else OVMF_VARS, vars_file)
        self.command = segment.command(
            qemu_command(machine, firmware, tap, self.serial_log, vars_file)
        )
        self.stderr_log = workdir / f"vm{machine.index}-{firmware}-qemu.log"
        self.power_cycles = 0
        self._power_on()

    def _power_on(self) -> None:
        self.started = time.time()
        with self.stderr_log.open("ab") as stderr:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )
        self.console = ConsoleWatch(self.serial_log, self.started)
        self.exited_after: float | None = None

    def power_cycle(self) -> Path:
        """Kill QEMU and boot the same machine again; returns where the old console went.

        The new boot's timeline starts at zero again; the old console is kept beside the new
        one as ``...-serial.<n>.log`` for the failure report.
        """
        self.stop()
        self.power_cycles += 1
        kept = self.serial_log.with_suffix(f".{self.power_cycles}.log")
        if self.serial_log.exists():
            self.serial_log.rename(kept)
        self._power_on()
        return kept

    def poll(self) -> bool:
        """Read the console; return True once QEMU has exited."""
        self.console.poll()
        if self.exited_after is None and self.process.poll() is not None:
            self.exited_after = time.time() - self.started
            self.console.poll()
        return self.exited_after is not None

    def stop(self) -> None:
        """Kill QEMU (by its own PID) if it still runs, and reap it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.poll()


__all__ = ["FIRMWARES", "NO_PXE", "OVMF_CODE_SECBOOT", "OVMF_VARS_MS", "SECURE_BOOT",
           "ConsoleWatch", "Machine", "VirtualMachine", "qemu_command"]
