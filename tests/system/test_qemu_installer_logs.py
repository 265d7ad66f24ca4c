"""An installer's logs reach its machine's timeline: a QEMU machine boots from pxestack with
the syslog extension enabled and sends its steps over the network while it installs.

The machine's profile adds two kernel arguments (``provision.profiles[i].kernel_args``), which
the first stage of :mod:`qemu.artifacts` acts on:

* ``pxestack.syslog=198.18.0.1:514``: busybox ``syslogd -R`` forwards what ``logger -t
  installer`` writes, as BSD syslog over UDP;
* ``netconsole=@/eth0,514@198.18.0.1/``: the kernel's netconsole sends console output (its
  own ``netconsole: network logging started`` and the steps written to ``/dev/kmsg``) as
  plain text without a syslog header.

Both arrive from the address pxestack leased to the machine, and the receiver gives them to
that machine: the test reads them back with ``pxestack ctl logs SERIAL``, from
``GET /admin/host/<serial>/logs`` and on the dashboard's machine page.  The same boot runs
under ``pxestack serve`` and under ``twistd pxestack`` (the extension found through its entry
point either way).  Run alone with ``pytest -m qemu``; one machine per runner.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root_and_tools
from qemu.artifacts import Artifacts, ensure_artifacts
from qemu.netns import SERVER_ADDRESS, Segment
from qemu.scenario import boot_machines
from qemu.servers import PxestackServer
from qemu.vm import Machine

pytestmark = pytest.mark.qemu

TOOLS = ("qemu-system-x86_64", "ip", "ss", "curl", "git", "apt-get", "dpkg-deb")
BOOT_TIMEOUT = 180.0
SYSLOG_PORT = 514
PROFILE = {
    "name": "logged",
    "quantity": 4,
    "kernel_args": [f"pxestack.syslog={SERVER_ADDRESS}:{SYSLOG_PORT}",
                    f"netconsole=@/eth0,{SYSLOG_PORT}@{SERVER_ADDRESS}/"],
}
#: netconsole sends the kernel's whole log buffer when it registers (a few hundred lines
#: here, thousands on a large server), and this first stage sends its steps within a second
#: of that: the source's burst must hold the replay, or the steps after it are rate-limited.
BURST = 2000
EXTENSIONS = [{"use": "syslog",
               "config": {"listen": f"0.0.0.0:{SYSLOG_PORT}", "burst": BURST}}]


@pytest.fixture(scope="module")
def artifacts() -> Artifacts:
    """The Debian kernel and first-stage initramfs (built once, cached)."""
    require_root_and_tools(*TOOLS)
    return ensure_artifacts()


@pytest.fixture
def segment() -> Iterator[Segment]:
    """A fresh namespace with a bridge and one tap; always deleted."""
    created = Segment.create(taps=1)
    try:
        yield created
    finally:
        created.close()


def wait_for_lines(server: PxestackServer, serial: str, wanted: list[str],
                   timeout: float = 20.0) -> list[dict[str, object]]:
    """The machine's log lines once every *wanted* text is among them (or at *timeout*)."""
    end = time.monotonic() + timeout
    while True:
        lines = server.host_logs(serial)
        details = [str(line["detail"]) for line in lines]
        if all(any(w in d for d in details) for w in wanted) or time.monotonic() > end:
            return lines
        time.sleep(0.5)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("runner", ["serve", "twistd"])
def test_installer_syslog_and_netconsole_reach_the_machines_timeline(
    artifacts: Artifacts, segment: Segment, tmp_path: Path, runner: str
) -> None:
    machine = Machine.numbered(5)
    serial = machine.serial.lower()
    server = PxestackServer(segment, tmp_path, artifacts, profiles=[PROFILE],
                            extensions=EXTENSIONS, runner=runner)
    server.start()
    try:
        [result] = boot_machines(segment, [(machine, "bios")], tmp_path, server.name,
                                 BOOT_TIMEOUT)
        assert result.ok, result.summary()
        # busybox logger's default priority is user.notice.
        syslog_steps = [f"notice installer: {step} serial={serial.upper()}"
                        for step in ("enrolled", "installed")]
        wanted = [*syslog_steps, "installer: dhcp ok nic=eth0",
                  "info kernel: netconsole: network logging started",
                  f"kernel: installer: installed serial={serial.upper()}"]
        lines = wait_for_lines(server, serial, wanted)
        ctl_text = server.ctl("logs", serial)
        ctl_json = server.ctl("-o", "json", "logs", serial)
        page = server.dashboard_page(f"/dashboard/machine/{serial}")
        [host] = server.hosts()
    finally:
        server.stop()
        log = (tmp_path / "pxestack.log").read_text(errors="replace")

    details = [str(line["detail"]) for line in lines]
    # busybox syslogd: BSD format, tag "installer", from the leased address.
    for text in syslog_steps:
        assert text in details, details
    # The step before enrolment came from an address pxestack had only leased: the MAC
    # links it to the serial afterwards.
    assert any(d.startswith("notice installer: dhcp ok nic=eth0") for d in details), details
    # netconsole: plain kernel console text, the kernel's own line and a /dev/kmsg write.
    assert "info kernel: netconsole: network logging started" in details, details
    assert f"info kernel: installer: installed serial={serial.upper()}" in details, details
    # ... and the kernel's log buffer, replayed when netconsole registered.
    assert any(d.startswith("info kernel: Linux version ") for d in details), details[:5]
    leased = {str(line["ip"]) for line in lines}
    assert len(leased) == 1 and leased.pop().startswith("198.18.0."), lines
    assert {str(line["mac"]) for line in lines} == {machine.mac}, lines
    assert "syslog receiver on 0.0.0.0:514 (udp/tcp)" in log, log[-3000:]

    assert host["Profile"] == "logged" and host["State"] == "installed"
    assert ctl_text.returncode == 0, ctl_text.stderr
    for text in (*syslog_steps, "kernel: netconsole: network logging started"):
        assert text in ctl_text.stdout, ctl_text.stdout
    assert ctl_json.returncode == 0, ctl_json.stderr
    assert "netconsole: network logging started" in ctl_json.stdout
    # The dashboard's machine page lists the same lines.
    assert f"installer: installed serial={serial.upper()}" in page
    assert "netconsole: network logging started" in page
