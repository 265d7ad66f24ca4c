"""Real DHCP clients against pxestack in network namespaces.

A server namespace and a client namespace joined by a veth pair (tests/netlab.py,
198.18.0.0/15).  pxestack runs from its command line (``pxestack dhcp`` quick mode):

* dhclient, udhcpc and dhcpcd each get a lease, renew it (a 12 s lease: T1 is 6 s, and the
  clients are also told to renew at once) and release it; the test checks the address the
  client configured and the server's lease state (its journal);
* dnsmasq is the site DHCP server while pxestack runs as proxyDHCP: a PXE-style client gets
  its address from dnsmasq and its boot file from pxestack (also on port 4011);
* a short perfdhcp run (bounded: 200 exchanges at 50/s) completes with no drops.

Every process is started through the lab and killed by PID when it ends; the namespaces are
deleted in ``finally`` blocks (netlab's context manager).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from conftest import require_root_and_tools

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
SERVER_IP = "198.18.0.1"
RANGE = "198.18.0.100,198.18.0.150,255.254.0.0"
LEASE_SECONDS = 12


def lease_state(journal: Path) -> dict[str, Any]:
    """The server's view: address -> lease, read from its journal (the durable state)."""
    from pxestack.dhcp.journal import load_journal

    return {str(a): lease for a, lease in load_journal(journal).leases.items()}


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def client_address(lab: Any) -> str | None:
    out = lab.client.run(["ip", "-4", "-j", "addr", "show", "dev", "pxc0"], timeout=10).stdout
    for item in json.loads(out or "[]"):
        for info in item.get("addr_info", []):
            if info.get("family") == "inet":
                return str(info["local"])
    return None


@pytest.fixture
def dhcp_lab(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A lab with pxestack's full server on pxs0; the client end has no address."""
    require_root_and_tools("ip", "ss")
    from netlab import pxestack_argv, two_hosts

    state = tmp_path / "state"
    with two_hosts("dhcp", client_ip=None) as lab:
        log = open(tmp_path / "pxestack.log", "w")  # noqa: SIM115 - closed below
        try:
            server = lab.server.popen(
                pxestack_argv(
                    "dhcp", "--interface", "pxs0", "--range", RANGE, "--router", SERVER_IP,
                    "--lease-time", str(LEASE_SECONDS), "--state-dir", str(state),
                    "--log-level", "debug",
                ),
                stdout=log, stderr=subprocess.STDOUT,
            )
            lab.server.wait_udp_port(67, timeout=20, process=server)
            yield lab, state / "dhcp-leases.journal"
        finally:
            log.close()


def check_bound(lab: Any, journal: Path) -> str:
    address = wait_for(lambda: client_address(lab), 15, "the client to configure an address")
    assert IPv4Address("198.18.0.100") <= IPv4Address(address) <= IPv4Address("198.18.0.150")
    leases = wait_for(lambda: lease_state(journal).get(address), 5, "the server's binding")
    assert leases.state.value == "bound"
    assert leases.mac.hex(":") == lab.client.mac
    return str(address)


def check_renewed(journal: Path, address: str, before: float) -> None:
    wait_for(lambda: lease_state(journal)[address].expires > before, 15, "a renewal")


def check_released(lab: Any, journal: Path, address: str) -> None:
    wait_for(lambda: lease_state(journal)[address].state.value == "free", 10, "the release")


def test_dhclient_lease_renew_release(dhcp_lab: tuple[Any, Path], tmp_path: Path) -> None:
    require_root_and_tools("dhclient")
    lab, journal = dhcp_lab
    script = tmp_path / "dhclient-script"
    # Configure the address ourselves: the stock dhclient-script would rewrite the host's
    # /etc/resolv.conf, which the namespaces share.
    script.write_text(
        "#!/bin/sh\n"
        "case $reason in\n"
        "  BOUND|RENEW|REBIND|REBOOT) ip addr replace $new_ip_address/$new_subnet_mask"
        " dev $interface;;\n"
        "  EXPIRE|RELEASE|STOP) ip addr flush dev $interface;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    files = ["-sf", str(script), "-lf", str(tmp_path / "leases"), "-pf", str(tmp_path / "pid")]
    client = lab.client.popen(["dhclient", "-d", "-1", *files, "pxc0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = check_bound(lab, journal)
    first = lease_state(journal)[address].expires
    # dhclient renews on its own at T1 = 6 s (RENEWING: unicast, ciaddr set).
    check_renewed(journal, address, first)
    assert client_address(lab) == address
    # dhclient -r sends DHCPRELEASE and stops the running client.
    lab.client.run(["dhclient", "-r", *files, "pxc0"], timeout=20)
    check_released(lab, journal, address)
    assert client_address(lab) is None
    lab.client.stop(client)


def test_udhcpc_lease_renew_release(dhcp_lab: tuple[Any, Path], tmp_path: Path) -> None:
    require_root_and_tools("udhcpc")
    lab, journal = dhcp_lab
    script = tmp_path / "udhcpc-script"
    script.write_text(
        "#!/bin/sh\n"
        "case $1 in\n"
        "  bound|renew) ip addr replace $ip/$mask dev $interface;;\n"
        "  deconfig) ip addr flush dev $interface;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    client = lab.client.popen(
        ["udhcpc", "-f", "-i", "pxc0", "-s", str(script), "-t", "5", "-T", "1", "-A", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    address = check_bound(lab, journal)
    first = lease_state(journal)[address].expires
    time.sleep(1.1)  # so the renewed expiry is visibly later
    client.send_signal(signal.SIGUSR1)  # busybox: renew now
    check_renewed(journal, address, first)
    client.send_signal(signal.SIGUSR2)  # busybox: release
    check_released(lab, journal, address)
    wait_for(lambda: client_address(lab) is None, 5, "udhcpc to deconfigure")
    lab.client.stop(client)


def test_dhcpcd_lease_renew_release(dhcp_lab: tuple[Any, Path], tmp_path: Path) -> None:
    require_root_and_tools("dhcpcd")
    lab, journal = dhcp_lab
    config = tmp_path / "dhcpcd.conf"
    config.write_text("")  # no system hooks (they would touch the host's resolv.conf)
    client = lab.client.popen(
        ["dhcpcd", "-B", "-4", "-A", "-L", "-f", str(config), "-c", "/bin/true", "pxc0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        address = check_bound(lab, journal)
        first = lease_state(journal)[address].expires
        # dhcpcd raises short leases to 20 s and renews at its own T1 (6 s from the 12 s
        # lease's option 58), so the renewal comes on its own.
        check_renewed(journal, address, first)
        client.send_signal(signal.SIGALRM)  # dhcpcd 9: release the lease and exit
        check_released(lab, journal, address)
        wait_for(lambda: client_address(lab) is None, 5, "dhcpcd to deconfigure")
    finally:
        lab.client.stop(client)
        # dhcpcd keeps its lease under /var/lib/dhcpcd (shared with the host): tidy up.
        Path("/var/lib/dhcpcd/pxc0.lease").unlink(missing_ok=True)


def test_proxy_beside_dnsmasq_gives_the_boot_file(tmp_path: Path) -> None:
    """dnsmasq hands out the address, pxestack (proxy mode) the boot file, also on 4011."""
    require_root_and_tools("ip", "ss", "dnsmasq")
    from netlab import pxestack_argv, two_hosts

    boot_url = "http://198.18.0.1:8080/boot.ipxe"
    with two_hosts("dhcpp", client_ip=None) as lab:
        site = lab.server.popen(
            ["dnsmasq", "--keep-in-foreground", "--port=0", "--no-ping", "--no-resolv",
             "--interface=pxs0", "--bind-interfaces", "--log-dhcp",
             "--dhcp-range=198.18.0.100,198.18.0.150,255.254.0.0,120",
             f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}",
             f"--pid-file={tmp_path / 'dnsmasq.pid'}", "--conf-file=/dev/null"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        lab.server.wait_udp_port(67, timeout=10, process=site)
        log = tmp_path / "pxestack.log"
        with open(log, "w") as out:
            proxy = lab.server.popen(
                pxestack_argv("dhcp", "--interface", "pxs0", "--proxy", "--boot-url", boot_url,
                              "--state-dir", str(tmp_path / "state")),
                stdout=out, stderr=subprocess.STDOUT,
            )
            lab.server.wait_udp_port(4011, timeout=20, process=proxy)
            probe = lab.client.run(
                [sys.executable, str(HERE / "dhcp_pxe_probe.py"), "pxc0"], timeout=30,
                check=False, env={**os.environ, "PYTHONPATH": str(HERE.parents[1])},
            )
        assert probe.returncode == 0, probe.stdout + probe.stderr + log.read_text()
        seen = json.loads(probe.stdout)
        site_offer = next(o for o in seen["offers"] if o["yiaddr"] != "0.0.0.0")
        proxy_offer = next(o for o in seen["offers"] if o["yiaddr"] == "0.0.0.0")
        assert IPv4Address("198.18.0.100") <= IPv4Address(site_offer["yiaddr"])
        # The PXE ROM is not iPXE: it is sent our iPXE binary by TFTP.
        assert proxy_offer["vendor"] == "PXEClient"
        assert proxy_offer["file"] == "undionly.kpxe" and proxy_offer["siaddr"] == SERVER_IP
        # Only the site server ACKs the REQUEST on port 67: it selected the site's offer, and
        # a second ACK with yiaddr 0.0.0.0 makes EDK2's PXE client decline and give up.
        assert [a["yiaddr"] for a in seen["acks"]] == [site_offer["yiaddr"]]
        assert seen["acks"][0]["server_id"] == site_offer["server_id"]
        [boot_ack] = seen["boot_acks"]
        assert boot_ack["type"] == 5 and boot_ack["file"] == "undionly.kpxe"


def test_perfdhcp_short_run_has_no_drops(tmp_path: Path) -> None:
    """perfdhcp acts as a relay (giaddr 198.18.0.2); 200 DORA exchanges at 50/s, none lost."""
    require_root_and_tools("ip", "ss", "perfdhcp")
    from netlab import pxestack_argv, two_hosts

    with two_hosts("dhcpf") as lab:
        with open(tmp_path / "pxestack.log", "w") as out:
            server = lab.server.popen(
                pxestack_argv("dhcp", "--interface", "pxs0", "--range",
                              "198.19.0.1,198.19.255.254,255.254.0.0", "--relay", "198.18.0.2",
                              "--state-dir", str(tmp_path / "state"),
                              # perfdhcp's clients send PXEClient but never boot further, so
                              # boot-storm admission would hold all but max_starting of them.
                              "--no-admission"),
                stdout=out, stderr=subprocess.STDOUT,
            )
            lab.server.wait_udp_port(67, timeout=20, process=server)
            run = lab.client.run(
                # -d 5: an answer counts as dropped after 5 s, not perfdhcp's default 1 s.
                # 50/s is far below what the server sustains, so a lost exchange here is a
                # bug, while a reply later than 1 s is the host starving both processes
                # (the likely cause of 2 failures in 23 runs on a loaded 2-vCPU machine;
                # never reproduced on a quiet one).  -W: as long for the answers in flight.
                ["perfdhcp", "-4", "-l", "pxc0", "-r", "50", "-n", "200", "-R", "200",
                 "-o", "60,505845436c69656e74", "-d", "5", "-W", "5000000", "198.18.0.1"],
                timeout=45, check=False,
            )
        report = run.stdout + run.stderr
        assert run.returncode == 0, report
        assert _no_drops(report), report


def _no_drops(report: str) -> bool:
    """perfdhcp prints a block per exchange type (DISCOVER-OFFER, REQUEST-ACK): every
    ``drops``, ``rejected leases`` and ``non unique addresses`` count must be 0, and 200
    packets must have been received in each."""
    counts: dict[str, list[str]] = {}
    for line in report.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            counts.setdefault(key, []).append(value.strip())
    blocks = counts.get("received packets", [])
    return (
        len(blocks) == 2
        and all(value == "200" for value in blocks)
        and all(value == "0" for value in counts.get("drops", ["missing"]))
        and all(value == "0" for value in counts.get("rejected leases", ["missing"]))
        and all(value == "0" for value in counts.get("non unique addresses", ["missing"]))
    )
