"""A miniature of Flatcar's, Fedora CoreOS's and Debian's published layouts, served from
127.0.0.1 by a threaded ``http.server`` (Range support switchable, faults on demand).

Nothing leaves the machine: the files are a few KiB made here, the signatures are made with
a throwaway GPG key generated in a temporary ``GNUPGHOME``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

FLATCAR_VERSION = "4081.2.0"
FCOS_VERSION = "40.20240728.3.0"
FLATCAR_FILES = {
    "flatcar_production_pxe.vmlinuz": b"\x7fFLATCAR-KERNEL" + bytes(range(256)) * 40,
    "flatcar_production_pxe_image.cpio.gz": b"\x1f\x8bflatcar-initrd" * 700,
    "flatcar_production_image.bin.bz2": b"BZh9flatcar-disk" * 900,
}
FCOS_FILES = {
    "kernel": b"\x7fFCOS-KERNEL" * 500,
    "initramfs": b"fcos-initramfs" * 800,
    "rootfs": b"fcos-rootfs-squashfs" * 1000,
}
DEBIAN_FILES = {"linux": b"\x7fDEBIAN-LINUX" * 600, "initrd.gz": b"\x1f\x8bd-i initrd" * 900}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gpg(home: Path, *argv: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", "--quiet",
                           "--pinentry-mode", "loopback", "--passphrase", "", *argv],
                          input=data, capture_output=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


@dataclass
class Signer:
    """A throwaway signing key; :attr:`keyring` is its public key, exported."""

    home: Path
    keyring: Path

    @classmethod
    def make(cls, directory: Path, name: str = "pxestack test") -> Signer:
        home = directory / "gnupg"
        home.mkdir(mode=0o700, parents=True)
        gpg(home, "--quick-gen-key", f"{name} <test@example.invalid>", "ed25519", "sign",
            "never")
        keyring = directory / "signing-key.gpg"
        keyring.write_bytes(gpg(home, "--export"))
        return cls(home, keyring)

    def sign(self, data: bytes) -> bytes:
        return gpg(self.home, "--detach-sign", "--output", "-", data=data)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"],
                       capture_output=True, check=False, timeout=30)


@dataclass
class Mirror:
    """The files (URL path -> bytes) and the server's behaviour."""

    files: dict[str, bytes] = field(default_factory=dict)
    range_support: bool = True
    #: URL paths whose first answer stops after this many bytes (then the connection drops).
    drop_after: dict[str, int] = field(default_factory=dict)
    #: Seconds to sleep per 1 KiB sent (a slow server for the signal tests).
    delay: float = 0.0
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    base: str = ""

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, body_wanted: bool) -> None:
                path = self.path.split("?")[0]
                range_header = self.headers.get("Range")
                mirror.requests.append((self.command, path, range_header))
                data = mirror.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                if match and mirror.range_support and int(match.group(1)) >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if match and mirror.range_support and int(match.group(1)) < len(data):
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if not body_wanted:
                    return
                body = data[start:]
                cut = mirror.drop_after.pop(path, None) if self.command == "GET" else None
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if mirror.delay:
                    for offset in range(0, len(body), 1024):
                        self.wfile.write(body[offset:offset + 1024])
                        self.wfile.flush()
                        time.sleep(mirror.delay)
                else:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

        return Handler

    def serve(self) -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.base = f"http://127.0.0.1:{server.server_address[1]}"
        return server, thread

    # -- vendor layouts --------------------------------------------------------------------

    def add_flatcar(self, signer: Signer, channel: str = "stable",
                    version: str = FLATCAR_VERSION) -> str:
        """Flatcar's release directory and version file; returns the version directory."""
        board = f"/{channel}.release.flatcar-linux.net/amd64-usr"
        for directory in (version, "current"):
            for name, data in FLATCAR_FILES.items():
                self.files[f"{board}/{directory}/{name}"] = data
                self.files[f"{board}/{directory}/{name}.sig"] = signer.sign(data)
            self.files[f"{board}/{directory}/version.txt"] = (
                f"FLATCAR_BUILD=4081\nFLATCAR_VERSION={version}\n"
                f"FLATCAR_VERSION_ID={version}\n").encode()
        return f"{board}/{version}"

    def add_fcos(self, stream: str = "stable", version: str = FCOS_VERSION) -> None:
        """The stream metadata JSON (the vendor's schema) and the PXE artifacts."""
        prefix = f"/prod/streams/{stream}/builds/{version}/x86_64"
        names = {"kernel": f"fedora-coreos-{version}-live-kernel-x86_64",
                 "initramfs": f"fedora-coreos-{version}-live-initramfs.x86_64.img",
                 "rootfs": f"fedora-coreos-{version}-live-rootfs.x86_64.img"}
        pxe = {}
        for artifact, data in FCOS_FILES.items():
            path = f"{prefix}/{names[artifact]}"
            self.files[path] = data
            pxe[artifact] = {"location": f"{self.base}{path}",
                             "signature": f"{self.base}{path}.sig", "sha256": sha(data)}
        meta = {"stream": stream, "metadata": {"last-modified": "2024-08-12T19:02:43Z"},
                "architectures": {"x86_64": {"artifacts": {"metal": {
                    "release": version, "formats": {"pxe": pxe}}}}}}
        self.files[f"/streams/{stream}.json"] = json.dumps(meta).encode()

    def add_debian(self, release: str = "bookworm", signer: Signer | None = None) -> str:
        """The netboot tree, SHA256SUMS and (with *signer*) a signed Release; the images
        directory."""
        images = f"/dists/{release}/main/installer-amd64/current/images"
        lines = []
        for name, data in DEBIAN_FILES.items():
            self.files[f"{images}/netboot/debian-installer/amd64/{name}"] = data
            lines.append(f"{sha(data)}  ./netboot/debian-installer/amd64/{name}")
        lines.append(f"{sha(b'x')}  ./netboot/netboot.tar.gz")
        sums = ("\n".join(lines) + "\n").encode()
        self.files[f"{images}/SHA256SUMS"] = sums
        if signer is not None:
            release_text = (f"Origin: Debian\nSuite: stable\nCodename: {release}\nSHA256:\n"
                            f" {sha(b'y')}  1234 main/binary-amd64/Packages\n"
                            f" {sha(sums)} {len(sums):>6} main/installer-amd64/current/"
                            "images/SHA256SUMS\n").encode()
            self.files[f"/dists/{release}/Release"] = release_text
            self.files[f"/dists/{release}/Release.gpg"] = signer.sign(release_text)
        return images
