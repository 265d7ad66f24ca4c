"""The reference HTTP side that runs beside dnsmasq: boot script, kernel, initrd, callbacks.

Standard library only, run as a script inside the test namespace::

    refserver.py --port 8080 --root DIR --events FILE --base-url http://198.18.0.1:8080

It speaks the subset of mayu's PXE/API endpoints the first stage uses and appends one JSON
line per request to ``--events`` (``{"t": unix time, "method", "path", ...}``), which is how
the harness times "GET boot.ipxe" and the first-stage callbacks against the reference.
Serials are lower-cased as mayu does.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BOOT_SCRIPT = """#!ipxe
echo serial=${{serial}} platform=${{platform}} buildarch=${{buildarch}} product=${{product}}
kernel {base}/vmlinuz initrd=initrd.img console=ttyS0 quiet panic=5 pxestack.url={base}
initrd --name initrd.img {base}/initrd.img
boot
"""


class Recorder:
    """Appends request events to a JSON-lines file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()

    def record(self, **event: object) -> None:
        """Write one event with the current time."""
        line = json.dumps({"t": time.time(), **event})
        with self.lock, self.path.open("a") as out:
            out.write(line + "\n")


def make_handler(root: Path, base_url: str, recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to *root*, *base_url* and *recorder*."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Requests are recorded as events instead of logged to stderr."""

        def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            """Boot script, assets, and the first-stage script (enrolment)."""
            recorder.record(method="GET", path=self.path)
            if self.path == "/boot.ipxe":
                self._send(200, BOOT_SCRIPT.format(base=base_url).encode())
            elif self.path.startswith("/first-stage-script/"):
                serial = self.path.rsplit("/", 1)[1].lower()
                recorder.record(event="enrolled", serial=serial)
                self._send(200, f"#!/bin/sh\n# first stage for {serial}\n".encode())
            elif self.path in ("/vmlinuz", "/initrd.img", "/ipxe.efi", "/ldlinux.c32",
                               "/pxelinux.cfg/default"):
                self._send(200, (root / self.path[1:]).read_bytes(), "application/octet-stream")
            else:
                self._send(404, b"not found\n")

        do_HEAD = do_GET

        def do_POST(self) -> None:
            """The installer's host data; answers with a tiny final config."""
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            recorder.record(method="POST", path=self.path)
            if self.path != "/final-cloud-config.yaml":
                self._send(404, b"not found\n")
                return
            try:
                data = json.loads(body)
                serial = str(data["Serial"]).lower()
            except (ValueError, KeyError, TypeError):
                self._send(400, b"no serial ? :/\n")
                return
            recorder.record(event="host-data", serial=serial, data=data)
            self._send(200, f"#cloud-config\nhostname: {serial}\n".encode())

        def do_PUT(self) -> None:
            """``/admin/host/<serial>/set_installed``."""
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            recorder.record(method="PUT", path=self.path)
            parts = self.path.strip("/").split("/")
            if len(parts) == 4 and parts[:2] == ["admin", "host"] and parts[3] == "set_installed":
                recorder.record(event="installed", serial=parts[2].lower())
                self._send(202, b"")
            else:
                self._send(404, b"not found\n")

    return Handler


def main() -> None:
    """Parse arguments and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--base-url", required=True)
    args = parser.parse_args()
    recorder = Recorder(args.events)
    server = ThreadingHTTPServer(
        (args.bind, args.port), make_handler(args.root, args.base_url, recorder)
    )
    recorder.record(event="listening")
    server.serve_forever()


if __name__ == "__main__":
    main()
