"""The namespace lab itself: addresses, reachability, loss rules and complete teardown."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import require_root_and_tools
from netlab import (
    CLIENT_IFNAME,
    SERVER_IFNAME,
    LabError,
    _existing_namespaces,
    _netns_pids,
    _pid_alive,
    pxestack_argv,
    two_hosts,
)

pytestmark = pytest.mark.netns

#: UDP echo server: answers every datagram with its payload until killed.
ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(sys.argv[2])))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
    """
)

#: Sends COUNT numbered datagrams (paced, so no socket buffer overflows), then collects echoes
#: until 1 s passes without one; prints how many distinct ones came back.  Bounded in time.
ECHO_CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    seen = set()
    def drain():
        while True:
            try:
                data, _ = s.recvfrom(2048)
            except BlockingIOError:
                return
            except OSError:
                continue  # an ICMP error queued on the socket: that datagram was lost
            seen.add(data)
    for seq in range(count):
        try:
            s.sendto(seq.to_bytes(4, "big"), (host, port))
        except OSError:
            pass  # e.g. EHOSTUNREACH after ARP requests were dropped: a lost datagram
        time.sleep(0.0005)
        drain()
    s.setblocking(True)
    s.settimeout(1.0)
    while len(seen) < count:
        try:
            seen.add(s.recvfrom(2048)[0])
        except TimeoutError:
            break
        except OSError:
            continue
    print(len(seen))
    """
)


def _echo_round_trips(lab, count: int) -> int:
    """Run the echo pair across the lab and return how many of *count* round trips succeeded."""
    server = lab.server.popen([sys.executable, "-c", ECHO_SERVER, lab.server.ip, "7007"])
    lab.server.wait_udp_port(7007, timeout=10, process=server)
    result = lab.client.run(
        [sys.executable, "-c", ECHO_CLIENT, lab.server.ip, "7007", str(count)],
        timeout=count * 0.01 + 30,
    )
    lab.server.stop(server)
    return int(result.stdout.strip())


def test_addresses_and_links_are_up() -> None:
    require_root_and_tools("ip", "nft", "ss", "taskset")
    with two_hosts("labt") as lab:
        for namespace, ifname in ((lab.server, SERVER_IFNAME), (lab.client, CLIENT_IFNAME)):
            assert namespace.ifname == ifname
            assert namespace.name in _existing_namespaces()
            shown = namespace.run(["ip", "-4", "-o", "addr", "show", "dev", ifname], timeout=5)
            assert f"{namespace.ip}/15" in shown.stdout
            link = namespace.run(["ip", "-o", "link", "show", "dev", ifname], timeout=5)
            assert namespace.mac in link.stdout.lower()
            assert ",UP" in link.stdout
        assert lab.server.mac != lab.client.mac


def test_udp_round_trips_cross_the_veth() -> None:
    require_root_and_tools("ip", "nft", "ss", "taskset")
    with two_hosts("labt") as lab:
        assert _echo_round_trips(lab, 50) == 50


def test_client_without_address() -> None:
    require_root_and_tools("ip", "ss")
    with two_hosts("labt", client_ip=None) as lab:
        shown = lab.client.run(["ip", "-4", "-o", "addr", "show", "dev", CLIENT_IFNAME], timeout=5)
        assert shown.stdout.strip() == ""


def test_cpu_pinning_applies_to_the_command() -> None:
    require_root_and_tools("ip", "ss", "taskset")
    with two_hosts("labt") as lab:
        result = lab.client.run(
            [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
            timeout=10,
            cpu=0,
        )
        assert result.stdout.strip() == "[0]"


def test_loss_rule_drops_about_the_requested_share() -> None:
    require_root_and_tools("ip", "nft", "ss", "taskset")
    with two_hosts("labt") as lab:
        lab.set_loss(20.0)
        count = 2000
        answered = _echo_round_trips(lab, count)
        # A round trip survives only if both directions do: 0.8 * 0.8 = 64 % expected.
        # Binomial sd at n=2000 is 1.1 %; the band below is more than 5 sd wide each way.
        assert 0.56 * count <= answered <= 0.72 * count
        assert lab.dropped_packets() > 0.10 * count
        lab.set_loss(0)
        assert lab.dropped_packets() == 0  # the tables are gone
        assert _echo_round_trips(lab, 50) == 50


def test_loss_percent_is_validated() -> None:
    require_root_and_tools("ip", "nft", "ss")
    with two_hosts("labt") as lab, pytest.raises(ValueError, match=r"0\.\.100"):
        lab.set_loss(101)


def test_teardown_kills_processes_and_deletes_namespaces_even_on_error() -> None:
    require_root_and_tools("ip", "ss")
    pids: list[int] = []
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), two_hosts("labt") as lab:
        names = [lab.server.name, lab.client.name]
        tracked = lab.server.popen(["sleep", "300"])
        # A grandchild the tracked process does not wait for: only the namespace sweep finds it.
        forked = lab.client.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], timeout=10)
        pids = [tracked.pid, int(forked.stdout.strip())]
        assert all(_pid_alive(pid) for pid in pids)
        raise RuntimeError("boom")
    existing = _existing_namespaces()
    assert not set(names) & existing
    for pid in pids:
        # The tracked child is reaped by Popen.wait; the orphan is reaped by init.
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            state = stat.rpartition(")")[2].split()[0]
        except OSError:
            continue
        assert state == "Z"


def test_same_tag_twice_in_one_process_is_refused() -> None:
    require_root_and_tools("ip", "ss")
    with two_hosts("labt"), pytest.raises(LabError, match="already open"), two_hosts("labt"):
        pass  # pragma: no cover - the inner lab must not open


def test_wait_port_fails_fast_when_the_server_dies() -> None:
    require_root_and_tools("ip", "ss")
    with two_hosts("labt") as lab:
        dead = lab.server.popen(["sh", "-c", "exit 3"])
        with pytest.raises(LabError, match="exited with 3"):
            lab.server.wait_udp_port(6999, timeout=10, process=dead)
        with pytest.raises(TimeoutError):
            lab.server.wait_tcp_port(6998, timeout=0.3)
        assert _netns_pids(lab.server.name) == []


def test_pxestack_argv_runs_this_installation() -> None:
    result = subprocess.run(
        pxestack_argv("--version"), capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.startswith("pxestack ")
