"""Embed pxestack's asset server in your own Twisted program.

Run it as is and it serves a throw-away directory on 127.0.0.1, mounts one extra resource
beside the assets (an iPXE script, as the provisioning layer would), downloads a file and a
range of it with Twisted's own HTTP client, prints what the counters saw, and exits::

    python examples/http_assets.py

Or serve a real directory until Ctrl-C::

    python examples/http_assets.py --root /srv/boot --listen 127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from pxestack.http.site import SiteLimits, build_site
from pxestack.http.stats import TransferRecord


class BootScript(Resource):
    """A fixed iPXE script; pxestack's provisioning layer mounts a rendered one here."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        """Answer with the script."""
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"#!ipxe\nkernel /assets/vmlinuz\nboot\n"


def print_record(record: TransferRecord) -> None:
    """An observer: one line per finished or aborted body transfer."""
    print(f"  transfer: {record.asset} to {record.client}: {record.outcome}, "
          f"{record.sent}/{record.length} bytes by {record.method}")


async def demo(reactor: Any, root: Path) -> None:
    """Serve *root* on a free loopback port, fetch from it, print the counters."""
    site = build_site(
        root,
        children={b"boot.ipxe": BootScript()},
        limits=SiteLimits(max_connections_per_client=4, stall_timeout=10.0),
    )
    site.stats.observers.append(print_record)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    print(f"serving {root} on {base}/")
    agent = Agent(reactor)
    try:
        response = await agent.request(b"GET", f"{base}/boot.ipxe".encode())
        print(f"GET /boot.ipxe -> {response.code}: {(await readBody(response))!r}")

        response = await agent.request(b"GET", f"{base}/assets/vmlinuz".encode())
        body = await readBody(response)
        same = hashlib.sha256(body).digest() == hashlib.sha256(
            (root / "vmlinuz").read_bytes()).digest()
        print(f"GET /assets/vmlinuz -> {response.code}, {len(body)} bytes, intact: {same}")

        response = await agent.request(
            b"GET", f"{base}/vmlinuz".encode(), Headers({b"Range": [b"bytes=-16"]})
        )
        tail = await readBody(response)
        print(f"GET /vmlinuz Range: bytes=-16 -> {response.code} "
              f"{response.headers.getRawHeaders(b'content-range')}, {len(tail)} bytes")

        response = await agent.request(b"GET", f"{base}/../etc/passwd".encode())
        await readBody(response)
        print(f"GET /../etc/passwd -> {response.code}")
    finally:
        await port.stopListening()
    totals = site.stats.totals
    print(f"totals: {totals.requests} requests, {totals.completed} completed, "
          f"{totals.bytes_sent} bytes ({totals.sendfile_bytes} by sendfile)")


def serve_forever(root: Path, listen: str) -> None:
    """Serve *root* until interrupted."""
    from twisted.internet import reactor

    host, _, port = listen.rpartition(":")
    site = build_site(root, children={b"boot.ipxe": BootScript()})
    site.stats.observers.append(print_record)
    reactor.listenTCP(int(port), site, interface=host)  # type: ignore[attr-defined]
    print(f"serving {root} on http://{listen}/ (Ctrl-C stops)")
    reactor.run()  # type: ignore[attr-defined]


def main() -> None:
    """Parse the command line and run the demo or the server."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="serve this directory until Ctrl-C")
    parser.add_argument("--listen", default="127.0.0.1:8080")
    args = parser.parse_args()
    if args.root is not None:
        serve_forever(args.root, args.listen)
        return
    # Twisted's own client warns about its own transport proxy in readBody; not our concern.
    warnings.filterwarnings("ignore", "Using readBody with a transport", DeprecationWarning)
    with tempfile.TemporaryDirectory(prefix="pxestack-assets-") as scratch:
        root = Path(scratch)
        (root / "vmlinuz").write_bytes(os.urandom(4 * 1024 * 1024))
        task.react(lambda reactor: defer.ensureDeferred(demo(reactor, root)))


if __name__ == "__main__":
    main()
