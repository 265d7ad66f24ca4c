"""A miniature of Flatcar's, Fedora CoreOS's and Debian's published layouts, served from
127.0.0.1 by a threaded ``http.server`` (Range support switchable, faults on demand).

Nothing leaves the machine: the files are a few KiB made here, the signatures are made with
a throwaway GPG key generated in a temporary ``GNUPGHOME``.

The layouts follow what the vendors publish (docs/reference/image-sources.md):

* Flatcar: ``<channel>.release.flatcar-linux.net/amd64-usr/<version>/`` and ``current/``,
  each file with a binary detached ``<file>.sig``, and ``version.txt`` (shell assignments,
  ``FLATCAR_VERSION=``).  Flatcar signs with a signing subkey of its image-signing key, so
  the test key is a certification-only primary key with a signing subkey as well;
* Fedora CoreOS: ``streams/<stream>.json`` with every architecture and artifact the real
  metadata has beside the one a PXE fetch needs (other metal formats, other platforms,
  ``images``), so that picking ``architectures.x86_64.artifacts.metal.formats.pxe`` is tested;
* Debian: ``dists/<release>/{InRelease,Release,Release.gpg}`` (a Release with its ``MD5Sum``
  and ``SHA256`` sections) and the installer's ``images/SHA256SUMS`` with the paths the real
  one lists (``./netboot/gtk/...`` beside ``./netboot/...``).
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
        """A certification-only primary key and a signing subkey (as the vendors' keys)."""
        home = directory / "gnupg"
        home.mkdir(mode=0o700, parents=True)
        gpg(home, "--quick-gen-key", f"{name} <test@example.invalid>", "ed25519", "cert",
            "never")
        listing = gpg(home, "--list-keys", "--with-colons").decode()
        fingerprint = next(line.split(":")[9] for line in listing.splitlines()
                           if line.startswith("fpr:"))
        gpg(home, "--quick-add-key", fingerprint, "ed25519", "sign", "never")
        keyring = directory / "signing-key.gpg"
        keyring.write_bytes(gpg(home, "--export"))
        return cls(home, keyring)

    def sign(self, data: bytes) -> bytes:
        """A binary detached signature (Flatcar's ``.sig``, Debian's ``Release.gpg``)."""
        return gpg(self.home, "--detach-sign", "--output", "-", data=data)

    def clearsign(self, data: bytes) -> bytes:
        """*data* with an inline signature (Debian's ``InRelease``)."""
        return gpg(self.home, "--clearsign", "--output", "-", data=data)

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
            build, branch, patch = [*version.split("."), "0", "0"][:3]
            self.files[f"{board}/{directory}/version.txt"] = (
                f"FLATCAR_BUILD={build}\nFLATCAR_BRANCH={branch}\nFLATCAR_PATCH={patch}\n"
                f"FLATCAR_VERSION={version}\nFLATCAR_VERSION_ID={version}\n"
                f'FLATCAR_BUILD_ID=""\nFLATCAR_SDK_VERSION={build}.0.0\n').encode()
        return f"{board}/{version}"

    def add_fcos(self, stream: str = "stable", version: str = FCOS_VERSION) -> None:
        """The stream metadata JSON (the vendor's schema, with the architectures, platforms
        and formats a PXE fetch must pass over) and the PXE artifacts."""
        def build(arch: str) -> str:
            return f"{self.base}/prod/streams/{stream}/builds/{version}/{arch}"

        def entry(location: str, data: bytes | None = None, **more: str) -> dict[str, str]:
            digest = sha(data if data is not None else location.encode())
            return {"location": location, "signature": f"{location}.sig", "sha256": digest,
                    **more}

        def pxe_names(arch: str) -> dict[str, str]:
            return {"kernel": f"fedora-coreos-{version}-live-kernel-{arch}",
                    "initramfs": f"fedora-coreos-{version}-live-initramfs.{arch}.img",
                    "rootfs": f"fedora-coreos-{version}-live-rootfs.{arch}.img"}

        architectures: dict[str, object] = {}
        for arch in ("aarch64", "x86_64"):
            pxe = {}
            for artifact, name in pxe_names(arch).items():
                location = f"{build(arch)}/{name}"
                data = FCOS_FILES[artifact] if arch == "x86_64" else None
                if data is not None:
                    self.files[location.removeprefix(self.base)] = data
                pxe[artifact] = entry(location, data)
            disk = f"{build(arch)}/fedora-coreos-{version}-metal.{arch}.raw.xz"
            architectures[arch] = {
                "artifacts": {
                    "metal": {"release": version, "formats": {
                        "4k.raw.xz": {"disk": entry(disk.replace("metal.", "metal4k."),
                                                    **{"uncompressed-sha256": sha(b"4k")})},
                        "iso": {"disk": entry(
                            f"{build(arch)}/fedora-coreos-{version}-live.{arch}.iso")},
                        "pxe": pxe,
                        "raw.xz": {"disk": entry(disk, **{"uncompressed-sha256": sha(b"u")})},
                    }},
                    "qemu": {"release": version, "formats": {"qcow2.xz": {"disk": entry(
                        f"{build(arch)}/fedora-coreos-{version}-qemu.{arch}.qcow2.xz")}}},
                },
                "images": {"aws": {"regions": {"eu-west-1": {
                    "release": version, "image": "ami-0123456789abcdef0"}}}},
            }
        meta = {"stream": stream, "metadata": {"last-modified": "2024-08-12T19:02:43Z"},
                "architectures": architectures}
        self.files[f"/streams/{stream}.json"] = json.dumps(meta, indent=2).encode()

    def add_debian(self, release: str = "bookworm", signer: Signer | None = None, *,
                   inrelease: bool = True) -> str:
        """The netboot tree, SHA256SUMS and (with *signer*) the signed release files:
        ``Release`` with ``Release.gpg`` and (with *inrelease*) ``InRelease``; the images
        directory."""
        images = f"/dists/{release}/main/installer-amd64/current/images"
        lines = [f"{sha(b'cd')}  ./cdrom/debian-cd_info.tar.gz"]
        for name, data in DEBIAN_FILES.items():
            self.files[f"{images}/netboot/debian-installer/amd64/{name}"] = data
            lines.append(f"{sha(data)}  ./netboot/debian-installer/amd64/{name}")
            # The graphical installer's netboot files have the same names one level down.
            lines.append(f"{sha(b'gtk' + data)}  ./netboot/gtk/debian-installer/amd64/{name}")
        lines += [f"{sha(b'x')}  ./netboot/netboot.tar.gz", f"{sha(b'm')}  ./netboot/mini.iso"]
        sums = ("\n".join(sorted(lines, key=lambda line: line.split()[1])) + "\n").encode()
        self.files[f"{images}/SHA256SUMS"] = sums
        if signer is not None:
            sums_path = "main/installer-amd64/current/images/SHA256SUMS"
            packages = "main/binary-amd64/Packages"
            release_text = (
                "Origin: Debian\nLabel: Debian\nSuite: stable\nVersion: 12.8\n"
                f"Codename: {release}\nDate: Sat, 09 Nov 2024 10:09:34 UTC\n"
                "Acquire-By-Hash: yes\nArchitectures: all amd64 arm64\n"
                "Components: main contrib non-free-firmware non-free\n"
                "Description: Debian 12.8 Released 09 November 2024\n"
                # MD5Sum comes first and lists the same paths: only SHA256 may be read.
                f"MD5Sum:\n {hashlib.md5(packages.encode()).hexdigest()}  1234 {packages}\n"
                f" {hashlib.md5(sums).hexdigest()} {len(sums):>8} {sums_path}\n"
                f"SHA256:\n {sha(b'y')}     1234 {packages}\n"
                f" {sha(sums)} {len(sums):>8} {sums_path}\n").encode()
            self.files[f"/dists/{release}/Release"] = release_text
            self.files[f"/dists/{release}/Release.gpg"] = signer.sign(release_text)
            if inrelease:
                self.files[f"/dists/{release}/InRelease"] = signer.clearsign(release_text)
        return images
