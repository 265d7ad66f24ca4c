"""Expose pxestack's Prometheus metrics next to the boot assets, and feed them.

Run it as is: it serves a throw-away directory and ``/metrics`` on 127.0.0.1, records a few
events the way the DHCP, TFTP and provisioning adapters do, downloads a file, scrapes
``/metrics`` with Twisted's HTTP client, prints the pxestack lines, and exits::

    python examples/metrics_endpoint.py

Or keep serving until Ctrl-C (point Prometheus at it with examples/prometheus.yml)::

    python examples/metrics_endpoint.py --listen 127.0.0.1:8080 --serve
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.web.client import Agent, readBody

from pxestack.dhcp.server import LeaseEvent
from pxestack.http.site import build_site
from pxestack.metrics import Metrics, MetricsResource, instrument_site
from pxestack.tftp.stats import Outcome, SessionStats

MAC = b"\x52\x54\x00\x12\x34\x56"


def record_sample_events(metrics: Metrics, now: float) -> None:
    """What the adapters report during one machine's boot (see docs/metrics.md)."""
    # DhcpDatagramProtocol: one call per datagram, with the reply types it sent.
    metrics.dhcp_replies(1, [2])  # DISCOVER -> OFFER
    metrics.dhcp_replies(3, [5])  # REQUEST -> ACK
    # DhcpServerCore(on_event=...): lease changes; offered -> bound times the DHCP phase.
    metrics.dhcp_lease_event(LeaseEvent("offered", None, 1, MAC, "eth0"), now)
    metrics.dhcp_lease_event(LeaseEvent("bound", None, 1, MAC, "eth0"), now + 0.4)
    # TftpServer(on_stats=...): one SessionStats per finished transfer.
    metrics.tftp_transfer(SessionStats(
        client=("198.18.0.50", 2070), path="ipxe.efi", outcome=Outcome.COMPLETE,
        bytes_acked=1_048_576, datagrams_sent=716, retransmits=2, blksize=1468,
        windowsize=4, tsize=1_048_576, started=now + 0.5, finished=now + 1.3))
    # Provisioning: lifecycle events by serial.
    for offset, event in ((2, "enrolled"), (40, "installing"), (300, "installed"),
                          (360, "running")):
        metrics.boot_event("sn-0001", event, now + offset)
    metrics.watch_hosts(lambda: [("running", "worker"), ("installing", "worker"),
                                 ("unknown", "core")])


@defer.inlineCallbacks
def demo(reactor: Any, listen: str, serve: bool) -> Any:
    """Serve, record, download, scrape, print."""
    root = Path(tempfile.mkdtemp(prefix="pxestack-metrics-"))
    (root / "ipxe.efi").write_bytes(b"\0" * 65536)
    metrics = Metrics()
    site = build_site(root, children={b"metrics": MetricsResource(metrics)}, reactor=reactor)
    instrument_site(site, metrics)  # HTTP requests by endpoint/status, asset transfers
    host, _, port = listen.rpartition(":")
    listening = reactor.listenTCP(int(port), site, interface=host)
    base = f"http://{host}:{listening.getHost().port}"
    record_sample_events(metrics, reactor.seconds())
    print(f"serving {root} and {base}/metrics")
    if serve:
        yield defer.Deferred()  # until Ctrl-C
    agent = Agent(reactor)
    response = yield agent.request(b"GET", f"{base}/ipxe.efi".encode())
    yield readBody(response)
    response = yield agent.request(b"GET", f"{base}/metrics".encode())
    body = yield readBody(response)
    for line in body.decode().splitlines():
        if line.startswith("pxestack_") and not line.startswith("pxestack_boot_phase_duration_"
                                                                 "seconds_bucket"):
            print(line)
    yield listening.stopListening()
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Parse the options and run the demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="ADDR:PORT")
    parser.add_argument("--serve", action="store_true", help="keep serving until Ctrl-C")
    args = parser.parse_args()
    # Twisted's own client warns about its HTTP/1.1 transport wrapper; not our concern here.
    warnings.filterwarnings("ignore", "Using readBody with a transport", DeprecationWarning)
    task.react(demo, (args.listen, args.serve))


if __name__ == "__main__":
    main()
