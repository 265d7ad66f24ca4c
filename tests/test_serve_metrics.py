"""``pxestack serve`` with every section: /metrics is served and moves as a machine boots.

Runs the real command in a subprocess on loopback (free ports), sends a DHCP DISCOVER as the
SeaBIOS iPXE ROM does, fetches a file over TFTP, walks a machine through first contact over
HTTP, and checks that the scrape shows each of those.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from dhcp_samples import seabios_ipxe_rom_discover
from prometheus_client.parser import text_string_to_metric_families

from pxestack.wire.dhcp import encode_dhcp


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        value for (sample, sample_labels), value in samples.items()
        if sample == name and all((k, v) in sample_labels for k, v in labels.items())
    )


def tftp_get(port: int, name: str) -> bytes:
    """A minimal RFC 1350 client (octet, 512-byte blocks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"\x00\x01" + name.encode() + b"\x00octet\x00", ("127.0.0.1", port))
        data = b""
        while True:
            packet, peer = sock.recvfrom(2048)
            opcode, block = struct.unpack("!HH", packet[:4])
            assert opcode == 3, packet
            data += packet[4:]
            sock.sendto(struct.pack("!HH", 4, block), peer)
            if len(packet) - 4 < 512:
                return data


def test_metrics_move_when_a_machine_boots(tmp_path: Path) -> None:
    http_port = free_port(socket.SOCK_STREAM)
    tftp_port = free_port(socket.SOCK_DGRAM)
    dhcp_port = free_port(socket.SOCK_DGRAM)
    (tmp_path / "tftproot").mkdir()
    (tmp_path / "tftproot" / "undionly.kpxe").write_bytes(b"x" * 3000)
    config = tmp_path / "pxestack.yaml"
    config.write_text(
        "state_dir: state\n"
        "dhcp:\n"
        f"  listen: 127.0.0.1:{dhcp_port}\n"
        "  proxy_port: 0\n"
        "  server_address: 127.0.0.1\n"
        "  fsync: false\n"
        "  raw_replies: false\n"
        "  pools: [{subnet: 127.0.0.0/8, start: 127.0.10.10, end: 127.0.10.20}]\n"
        f"tftp: {{listen: '127.0.0.1:{tftp_port}', root: tftproot}}\n"
        f"http: {{listen: '127.0.0.1:{http_port}', public_url: 'http://127.0.0.1:{http_port}'}}\n"
        "provision:\n"
        "  default_os_version: 3975.2.0\n"
        "  network: {ip_range: {start: 198.18.10.10, end: 198.18.10.50}, subnet_size: 24}\n"
        "  profiles: [{name: core, quantity: 1}]\n"
        # The machine's HTTP requests come from loopback, not from an address DHCP leased.
        "  enrolment: open\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pxestack", "serve", "--config", str(config)], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        assert proc.stderr is not None
        # "pxestack running" comes before the TFTP worker processes have bound their port
        # (on a loaded machine, seconds before): wait for each worker's "serving" line too.
        deadline = time.monotonic() + 60
        running, workers, serving = False, None, 0
        while time.monotonic() < deadline and not (running and serving == (workers or 0)):
            line = proc.stderr.readline()
            assert line, "pxestack serve exited early"
            running = running or "pxestack running" in line
            found = re.search(r"tftp: (\d+) worker processes", line)
            if found:
                workers = int(found.group(1))
            serving += bool(re.search(r"tftp worker \d+ serving", line))
        before = scrape(base)

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(encode_dhcp(seabios_ipxe_rom_discover()), ("127.0.0.1", dhcp_port))
        assert tftp_get(tftp_port, "undionly.kpxe") == b"x" * 3000
        with urllib.request.urlopen(base + "/first-stage-script/sn-1", timeout=10) as response:
            assert response.status == 200

        after = before
        for _ in range(50):  # the DHCP datagram and the TFTP stats land asynchronously
            after = scrape(base)
            if total(after, "pxestack_dhcp_packets_total") > total(
                before, "pxestack_dhcp_packets_total"
            ) and total(after, "pxestack_tftp_transfers_total") > 0:
                break
            time.sleep(0.1)
        hosts = json.load(urllib.request.urlopen(base + "/admin/hosts", timeout=10))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert [host["Serial"] for host in hosts] == ["sn-1"]
    assert total(after, "pxestack_dhcp_packets_total", type="discover", outcome="offer") == 1
    assert total(after, "pxestack_tftp_transfers_total") == 1
    assert total(after, "pxestack_tftp_acked_bytes_total") >= 3000
    assert total(after, "pxestack_hosts", state="installing") + total(
        after, "pxestack_hosts", state="unknown"
    ) == 1
    assert total(after, "pxestack_http_requests_total") > total(
        before, "pxestack_http_requests_total"
    )
    # The service wiring exports the build, the store's health and the profiles' capacity,
    # and no _created series.
    from pxestack import __version__

    assert total(after, "pxestack_build_info", version=__version__) == 1
    assert (total(after, "pxestack_store_healthy"), total(after, "pxestack_store_read_only")) \
        == (1, 0)
    assert total(after, "pxestack_profile_quantity", profile="core") == 1
    assert total(after, "pxestack_profile_hosts", profile="core") == 1
    assert not [name for name, _ in after if name.endswith("_created")]
