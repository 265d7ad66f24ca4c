"""Release-aware image fetches: resolve a vendor release, download, verify, publish.

Three vendor layouts are understood:

* **Flatcar** (``flatcar``): ``<base>/<channel>.release.flatcar-linux.net/amd64-usr/<version>/``
  (``<version>`` ``current`` is resolved through its ``version.txt``, ``FLATCAR_VERSION=``);
  the PXE kernel, the PXE initrd and the install image, each checked against its detached
  OpenPGP signature (``<file>.sig``) with ``gpgv`` and the keyring the operator names;
* **Fedora CoreOS** (``fcos``): the stream metadata ``<base>/streams/<stream>.json``; the
  ``metal`` PXE kernel, initramfs and rootfs of the architecture, each checked against the
  ``sha256`` of the metadata;
* **Debian** (``debian``): the netboot installer's ``linux`` and ``initrd.gz`` under
  ``<mirror>/dists/<release>/main/installer-amd64/current/images/``, checked against that
  directory's ``SHA256SUMS``; with a keyring (and ``gpgv``), the release file must be signed
  by it and list the SHA-256 of that ``SHA256SUMS``: ``dists/<release>/InRelease`` (the
  release file with an inline signature, what apt reads first), else ``Release`` with its
  detached ``Release.gpg``.

Files are downloaded into ``<cache>/.staging/<os>/<version>/`` (a hidden directory no flow
and no listing looks at) as ``<name>.part``; an interrupted download is resumed with an HTTP
``Range`` request on the next run (a server that answers ``200`` instead of ``206`` sends
the whole file again).  Only when every file is complete and verified does the staging
directory become the version directory (one ``rename``), so a failed or interrupted fetch
never leaves a half-made version visible to the flows.

This module does network I/O with :mod:`urllib` in the calling thread; the CLI calls it
directly, the admin API in a worker thread (with a ``cancel`` event).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pxestack import __version__
from pxestack._fs import atomic_write, fsync_dir, replace_durably
from pxestack.provision.images import (
    CHECKSUM_SUFFIX,
    ImageError,
    ImageStore,
    check_component,
    check_os_name,
    parse_checksum_file,
    sha256_of,
)

#: The OSes ``fetch`` knows releases of, with the option naming their release line.
RELEASE_OSES: dict[str, str] = {"flatcar": "channel", "fcos": "stream", "debian": "release"}
FLATCAR_CHANNELS = ("stable", "beta", "alpha", "lts")
FCOS_STREAMS = ("stable", "testing", "next")
FLATCAR_FILES = (
    "flatcar_production_pxe.vmlinuz",
    "flatcar_production_pxe_image.cpio.gz",
    "flatcar_production_image.bin.bz2",
)
#: FCOS artifact -> the name the fcos flows ask for (``flows.FCOS_IMAGE_FILES``).
FCOS_FILES = {"kernel": "vmlinuz", "initramfs": "initrd.img", "rootfs": "rootfs.img"}
DEBIAN_FILES = ("linux", "initrd.gz")
DEFAULT_DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
STAGING_DIR = ".staging"
PART_SUFFIX = ".part"
MAX_SIDE_FILE_BYTES = 4 << 20
DEFAULT_MAX_BYTES = 8 << 30
_CHUNK = 256 << 10
_VERSION_TXT = re.compile(r"^FLATCAR_VERSION=(\S+)\s*$", re.MULTILINE)


class FetchError(ImageError):
    """A release fetch failed; the message says what and where."""


class FetchUsageError(FetchError):
    """The request itself is wrong (an option, a missing keyring): exit 2 / HTTP 400."""


class FetchHttpError(FetchError):
    """The server answered with an HTTP error status (:attr:`code`)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class FetchCancelled(FetchError):  # noqa: N818 - reads as the condition it reports
    """The fetch was cancelled; the partial files stay in the staging directory."""


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file of a release: where it comes from and how it is checked."""

    name: str
    url: str
    sha256: str | None = None
    signature_url: str | None = None


@dataclass(slots=True)
class Release:
    """A resolved release: the cache's OS name and version, and its files."""

    os: str
    version: str
    files: list[RemoteFile]
    #: How the files are checked, for the report (signatures already checked say so).
    checks: list[str] = field(default_factory=list)


@dataclass(slots=True)
class FetchStatus:
    """Progress of one fetch, passed to the progress callback (from the fetching thread)."""

    os: str
    version: str
    #: ``resolving``, ``downloading``, ``verifying``, ``done``, ``failed`` or ``cancelled``.
    phase: str = "resolving"
    file: str = ""
    file_index: int = 0
    file_count: int = 0
    file_done: int = 0
    file_size: int | None = None
    total_done: int = 0
    total_size: int | None = None
    started: float = field(default_factory=time.monotonic)
    file_started: float = field(default_factory=time.monotonic)
    #: Bytes already on disk when the file's download started (resumed, not counted in speed).
    file_resumed: int = 0
    total_resumed: int = 0
    message: str = ""

    def speed(self, now: float | None = None) -> float:
        """Bytes per second over the whole fetch (resumed bytes excluded)."""
        elapsed = max((now or time.monotonic()) - self.started, 1e-6)
        return max(self.total_done - self.total_resumed, 0) / elapsed

    def file_speed(self, now: float | None = None) -> float:
        """Bytes per second of the current file."""
        elapsed = max((now or time.monotonic()) - self.file_started, 1e-6)
        return max(self.file_done - self.file_resumed, 0) / elapsed

    def eta(self, now: float | None = None) -> float | None:
        """Seconds until the whole fetch is done, when sizes are known."""
        rate = self.speed(now)
        if self.total_size is None or rate <= 0:
            return None
        return max(self.total_size - self.total_done, 0) / rate

    def file_eta(self, now: float | None = None) -> float | None:
        """Seconds until the current file is done, when its size is known."""
        rate = self.file_speed(now)
        if self.file_size is None or rate <= 0:
            return None
        return max(self.file_size - self.file_done, 0) / rate

    def to_json(self) -> dict[str, Any]:
        """The status as the admin API and the event feed show it: bytes, speed and ETA of
        the current file (``file_*``) and of the whole release."""
        now = time.monotonic()
        eta, file_eta = self.eta(now), self.file_eta(now)
        return {"os": self.os, "version": self.version, "phase": self.phase,
                "file": self.file, "file_index": self.file_index,
                "file_count": self.file_count, "file_done": self.file_done,
                "file_size": self.file_size, "file_speed": round(self.file_speed(now), 1),
                "file_eta": None if file_eta is None else round(file_eta, 1),
                "total_done": self.total_done, "total_size": self.total_size,
                "speed": round(self.speed(now), 1),
                "eta": None if eta is None else round(eta, 1), "message": self.message}


ProgressCallback = Callable[[str, FetchStatus], None]


@dataclass(slots=True)
class FetchOptions:
    """Everything a release fetch needs besides the cache."""

    os: str
    #: The channel (Flatcar), stream (FCOS) or release (Debian).
    line: str
    version: str = "current"
    base_url: str | None = None
    keyring: Path | None = None
    arch: str = "x86_64"
    no_verify: bool = False
    force: bool = False
    timeout: float = 60.0
    max_bytes: int = DEFAULT_MAX_BYTES
    #: Flatcar only: skip the install image (enough for ``install: pxe`` profiles).
    pxe_only: bool = False


# -- HTTP ----------------------------------------------------------------------------------


def _request(url: str, headers: dict[str, str] | None = None,
             method: str = "GET") -> urllib.request.Request:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise FetchUsageError(f"{url!r} is not an http:// or https:// URL")
    return urllib.request.Request(url, method=method, headers={  # noqa: S310 - scheme checked
        "User-Agent": f"pxestack-images/{__version__}", **(headers or {})})


def open_url(url: str, timeout: float, headers: dict[str, str] | None = None,
             method: str = "GET") -> Any:
    """Open *url*; :class:`FetchError` naming the URL on any error."""
    try:
        return urllib.request.build_opener().open(_request(url, headers, method),
                                                  timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        raise FetchHttpError(f"{method} {url}: HTTP {error.code} {error.reason}",
                             error.code) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise FetchError(f"{method} {url}: {reason}") from None


def fetch_small(url: str, timeout: float) -> bytes:
    """A version, metadata, checksum or signature file (at most 4 MiB)."""
    with open_url(url, timeout) as answer:
        try:
            data: bytes = answer.read(MAX_SIDE_FILE_BYTES + 1)
        except (OSError, ValueError) as error:
            raise FetchError(f"GET {url}: {error}") from None
    if len(data) > MAX_SIDE_FILE_BYTES:
        raise FetchError(f"{url} is larger than {MAX_SIDE_FILE_BYTES} bytes")
    return data


def remote_size(url: str, timeout: float) -> int | None:
    """The ``Content-Length`` a ``HEAD`` reports, or ``None``."""
    try:
        with open_url(url, timeout, method="HEAD") as answer:
            length = answer.headers.get("Content-Length")
    except FetchError:
        return None
    return int(length) if length and length.isdigit() else None


# -- signatures ----------------------------------------------------------------------------


def gpgv_verify(data_path: Path, signature: Path | None, keyring: Path, label: str = "",
                *, output: Path | None = None) -> None:
    """Check an OpenPGP signature with ``gpgv`` against *keyring* only: a detached
    *signature* of *data_path*, or (*signature* None) *data_path* signed inline, whose
    signed text is then written to *output*."""
    gpgv = shutil.which("gpgv")
    if gpgv is None:
        raise FetchUsageError("--keyring needs gpgv (Debian package gpgv)")
    argv = [gpgv, "--keyring", str(keyring.resolve())]
    if output is not None:
        argv += ["--output", str(output)]
    argv += [str(signature), str(data_path)] if signature is not None else [str(data_path)]
    with tempfile.TemporaryDirectory(prefix="pxestack-gpgv-") as scratch:
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            argv, capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "GNUPGHOME": scratch},
        )
    if result.returncode != 0:
        detail = " ".join(result.stderr.split())[-300:]
        raise FetchError(f"{label or data_path.name}: signature check failed: "
                         f"{detail or f'gpgv exit {result.returncode}'}")


# -- resolving releases --------------------------------------------------------------------


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def resolve_flatcar(opts: FetchOptions) -> Release:
    """The Flatcar release of ``--channel`` (``--version current`` read from ``version.txt``)."""
    if opts.line not in FLATCAR_CHANNELS:
        raise FetchUsageError(f"--channel {opts.line!r} is not one of "
                              f"{', '.join(FLATCAR_CHANNELS)}")
    host = f"{opts.line}.release.flatcar-linux.net"
    root = _join(opts.base_url, host) if opts.base_url else f"https://{host}"
    board = _join(root, "amd64-usr")
    version = opts.version
    if version == "current":
        text = fetch_small(_join(board, "current", "version.txt"), opts.timeout)
        found = _VERSION_TXT.search(text.decode("utf-8", "replace"))
        if not found:
            raise FetchError(f"{_join(board, 'current', 'version.txt')} names no "
                             "FLATCAR_VERSION")
        version = found.group(1)
    try:
        check_component("version", version)
    except ImageError as exc:
        raise FetchUsageError(f"--version: {exc}") from None
    names = FLATCAR_FILES[:2] if opts.pxe_only else FLATCAR_FILES
    files = [RemoteFile(name, _join(board, version, name),
                        signature_url=_join(board, version, name + ".sig")) for name in names]
    return Release("flatcar", version, files)


def resolve_fcos(opts: FetchOptions) -> Release:
    """The current release of an FCOS stream, from the stream metadata JSON."""
    if opts.line not in FCOS_STREAMS:
        raise FetchUsageError(f"--stream {opts.line!r} is not one of {', '.join(FCOS_STREAMS)}")
    base = opts.base_url or "https://builds.coreos.fedoraproject.org"
    meta_url = _join(base, "streams", f"{opts.line}.json")
    try:
        meta = json.loads(fetch_small(meta_url, opts.timeout))
        metal = meta["architectures"][opts.arch]["artifacts"]["metal"]
        version = str(metal["release"])
        pxe = metal["formats"]["pxe"]
        files = []
        for artifact, name in FCOS_FILES.items():
            entry = pxe[artifact]
            files.append(RemoteFile(name, urllib.parse.urljoin(meta_url, str(entry["location"])),
                                    sha256=str(entry["sha256"]).lower()))
    except (ValueError, KeyError, TypeError) as exc:
        raise FetchError(f"{meta_url}: not FCOS stream metadata with a metal PXE "
                         f"{opts.arch} release ({type(exc).__name__}: {exc})") from None
    if opts.version not in ("current", version):
        raise FetchUsageError(f"--version {opts.version}: stream {opts.line} offers only "
                              f"{version} (the metadata names the current release only)")
    try:
        check_component("version", version)
    except ImageError as exc:
        raise FetchError(f"{meta_url}: {exc}") from None
    return Release("fcos", version, files, [f"SHA-256 of each file from {meta_url}"])


def _release_sha256(release_text: str, path: str) -> str | None:
    """The SHA-256 a Debian ``Release`` file lists for *path*, or ``None``."""
    in_sha256 = False
    for line in release_text.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.strip() == "SHA256:"
            continue
        parts = line.split()
        if in_sha256 and len(parts) == 3 and parts[2] == path:
            return parts[0].lower()
    return None


def _signed_release(dists: str, keyring: Path, timeout: float) -> tuple[str, str]:
    """The URL and the signed text of the release's ``InRelease`` (inline signature), or,
    when the mirror has none (404), of ``Release`` checked against ``Release.gpg``.  Only
    the text the signature covers is returned: what an ``InRelease`` holds around its
    signed part is never read."""
    with tempfile.TemporaryDirectory(prefix="pxestack-release-") as scratch:
        inline_url = _join(dists, "InRelease")
        try:
            inline = fetch_small(inline_url, timeout)
        except FetchHttpError as exc:
            if exc.code != 404:
                raise
        else:
            inline_path, signed = Path(scratch) / "InRelease", Path(scratch) / "signed"
            inline_path.write_bytes(inline)
            gpgv_verify(inline_path, None, keyring, inline_url, output=signed)
            return inline_url, signed.read_text("utf-8", "replace")
        release_url = _join(dists, "Release")
        release_path = Path(scratch) / "Release"
        signature = Path(scratch) / "Release.gpg"
        release_path.write_bytes(fetch_small(release_url, timeout))
        signature.write_bytes(fetch_small(_join(dists, "Release.gpg"), timeout))
        gpgv_verify(release_path, signature, keyring, release_url)
        return release_url, release_path.read_text("utf-8", "replace")


def resolve_debian(opts: FetchOptions) -> Release:
    """Debian's netboot kernel and initrd of ``--release``, checked against ``SHA256SUMS``."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,39}", opts.line):
        raise FetchUsageError(f"--release {opts.line!r} is not a Debian release name "
                              "such as bookworm")
    if opts.version not in ("current", opts.line):
        raise FetchUsageError("--version is not used with debian (the release names it)")
    mirror = opts.base_url or "https://deb.debian.org/debian"
    dists = _join(mirror, "dists", opts.line)
    images_rel = "main/installer-amd64/current/images"
    images = _join(dists, images_rel)
    sums_bytes = fetch_small(_join(images, "SHA256SUMS"), opts.timeout)
    checks = [f"SHA-256 of each file from {images}/SHA256SUMS"]
    keyring = opts.keyring
    if keyring is None and DEFAULT_DEBIAN_KEYRING.is_file() and shutil.which("gpgv"):
        keyring = DEFAULT_DEBIAN_KEYRING
    if keyring is not None and not opts.no_verify:
        release_url, release_text = _signed_release(dists, keyring, opts.timeout)
        listed = _release_sha256(release_text, f"{images_rel}/SHA256SUMS")
        if listed is None:
            raise FetchError(f"{release_url} lists no SHA256 of {images_rel}/SHA256SUMS")
        if listed != hashlib.sha256(sums_bytes).hexdigest():
            raise FetchError(f"{images}/SHA256SUMS does not match the SHA256 in "
                             f"{release_url}")
        checks.append(f"{release_url} signature verified with {keyring}; it lists that "
                      "SHA256SUMS")
    sums = sums_bytes.decode("utf-8", "replace")
    files = []
    for name in DEBIAN_FILES:
        path = f"./netboot/debian-installer/amd64/{name}"
        wanted = [line for line in sums.splitlines()
                  if line.split()[1:2] in ([path], [path[2:]])]
        if not wanted:
            raise FetchError(f"{images}/SHA256SUMS lists no {path}")
        files.append(RemoteFile(name, _join(images, path[2:]),
                                sha256=parse_checksum_file(wanted[0])))
    return Release("debian", opts.line, files, checks)


RESOLVERS: dict[str, Callable[[FetchOptions], Release]] = {
    "flatcar": resolve_flatcar, "fcos": resolve_fcos, "debian": resolve_debian}


def resolve(opts: FetchOptions) -> Release:
    """The release *opts* names; :class:`FetchUsageError` for an unknown OS or option."""
    resolver = RESOLVERS.get(opts.os)
    if resolver is None:
        raise FetchUsageError(f"OS {opts.os!r}: fetch knows {', '.join(RELEASE_OSES)} "
                              "(or give a URL)")
    if opts.os == "flatcar" and opts.keyring is None and not opts.no_verify:
        raise FetchUsageError("flatcar: --keyring FILE (Flatcar's image signing key) is "
                              "needed to verify the signatures (or --no-verify)")
    if opts.keyring is not None and not opts.keyring.is_file():
        raise FetchUsageError(f"--keyring {opts.keyring}: no such file")
    return resolver(opts)


# -- downloading ---------------------------------------------------------------------------


def staging_directory(store: ImageStore, os_name: str, version: str) -> Path:
    """Where *os_name* *version* is assembled before it is published."""
    return store.root / STAGING_DIR / check_os_name(os_name) / check_component("version",
                                                                               version)


class _Fetcher:
    def __init__(self, store: ImageStore, opts: FetchOptions, release: Release,
                 progress: ProgressCallback | None, cancel: threading.Event | None) -> None:
        self.store = store
        self.opts = opts
        self.release = release
        self.progress = progress
        self.cancel = cancel
        self.status = FetchStatus(release.os, release.version, file_count=len(release.files))
        self._last_report = 0.0
        self.sizes: dict[str, int] = {}

    def report(self, event: str, *, force: bool = True) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_report < 0.1:
            return
        self._last_report = now
        self.progress(event, self.status)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise FetchCancelled("cancelled; the partial download is kept and resumed "
                                 "by the next fetch")

    def download(self, remote: RemoteFile, part: Path, size: int | None) -> None:
        """Download *remote* to *part*, resuming what is there (HTTP Range)."""
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have == size:
            self.status.file_done = self.status.file_resumed = have
            self.status.total_done += have
            self.status.total_resumed += have
            return
        if size is not None and have > size:
            part.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            answer = open_url(remote.url, self.opts.timeout, headers)
        except FetchHttpError as exc:
            if exc.code != 416 or not have:
                raise
            # Nothing after the bytes we have: the part is complete (verification decides).
            self.status.file_done = self.status.file_resumed = have
            self.status.total_done += have
            self.status.total_resumed += have
            return
        with answer:
            status = getattr(answer, "status", 200)
            mode = "ab"
            if have and status != 206:
                have, mode = 0, "wb"  # no Range support: the whole file again
            elif have and not str(answer.headers.get("Content-Range", "")).startswith(
                    f"bytes {have}-"):
                have, mode = 0, "wb"
            elif not have:
                mode = "wb"
            length = answer.headers.get("Content-Length")
            expected = have + int(length) if length and length.isdigit() else None
            if expected is not None and expected > self.opts.max_bytes:
                raise FetchError(f"{remote.url} is {expected} bytes, more than --max-bytes "
                                 f"{self.opts.max_bytes}")
            if self.status.file_size is None and expected is not None:
                self.status.file_size = expected
                if self.status.total_size is not None:
                    self.status.total_size += expected
            self.status.file_done = self.status.file_resumed = have
            self.status.total_done += have
            self.status.total_resumed += have
            received = have
            read = getattr(answer, "read1", answer.read)  # what has arrived, not 256 KiB
            with part.open(mode, buffering=0) as handle:
                while True:
                    self.check_cancel()
                    try:
                        chunk = read(_CHUNK)
                    except (OSError, ValueError) as error:
                        raise FetchError(f"GET {remote.url}: download interrupted after "
                                         f"{received} bytes ({error}); run the fetch again "
                                         "to resume") from None
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:  # an unbuffered write may be short
                        view = view[handle.write(view) or 0:]
                    received += len(chunk)
                    if received > self.opts.max_bytes:
                        raise FetchError(f"{remote.url} is larger than --max-bytes "
                                         f"{self.opts.max_bytes}")
                    self.status.file_done += len(chunk)
                    self.status.total_done += len(chunk)
                    self.report("progress", force=False)
                os.fsync(handle.fileno())
        if expected is not None and received != expected:
            raise FetchError(f"GET {remote.url}: got {received} of {expected} bytes "
                             "(connection dropped); run the fetch again to resume")

    def verify(self, remote: RemoteFile, path: Path, staging: Path) -> str:
        """Check *path*; its SHA-256 (recorded beside it) when it passes."""
        actual = sha256_of(path)
        if remote.sha256 is not None and actual != remote.sha256:
            raise FetchError(f"{remote.name}: SHA-256 is {actual}, expected {remote.sha256} "
                             f"({remote.url}); the file was removed")
        if remote.signature_url is not None and not self.opts.no_verify:
            assert self.opts.keyring is not None
            sig = staging / f"{remote.name}.sig"
            sig.write_bytes(fetch_small(remote.signature_url, self.opts.timeout))
            gpgv_verify(path, sig, self.opts.keyring, remote.name)
        return actual

    def fetch_one(self, remote: RemoteFile, staging: Path) -> None:
        final = staging / remote.name
        if final.exists() and final.with_name(final.name + CHECKSUM_SUFFIX).exists():
            size = final.stat().st_size  # verified by an earlier run that did not finish
            self.status.total_done += size
            self.status.total_resumed += size
            return
        part = staging / (remote.name + PART_SUFFIX)
        self.status.phase = "downloading"
        self.status.file = remote.name
        self.status.file_size = self.sizes.get(remote.name)
        self.status.file_done = 0
        self.status.file_started = time.monotonic()
        self.report("file")
        resumed = part.exists() and part.stat().st_size > 0
        self.download(remote, part, self.status.file_size)
        self.status.phase = "verifying"
        self.report("verify")
        try:
            digest = self.verify(remote, part, staging)
        except FetchError:
            part.unlink(missing_ok=True)
            if not resumed:
                raise
            # A resumed file may hold bytes of an older upload: fetch it once from scratch.
            self.status.total_done -= self.status.file_done
            self.status.total_resumed = min(self.status.total_resumed, self.status.total_done)
            self.status.phase = "downloading"
            self.status.file_size = self.sizes.get(remote.name)
            self.download(remote, part, self.status.file_size)
            digest = self.verify(remote, part, staging)
        replace_durably(part, final)
        atomic_write(final.with_name(final.name + CHECKSUM_SUFFIX),
                     f"{digest}  {remote.name}\n".encode())
        self.report("file-done")

    def run(self) -> Path:
        target = self.store.directory(self.release.os, self.release.version)
        if not self.opts.force and self.complete(target):
            self.status.phase = "done"
            self.status.message = f"{target} is complete already"
            self.report("done")
            return target
        staging = staging_directory(self.store, self.release.os, self.release.version)
        staging.mkdir(parents=True, exist_ok=True)
        lock_path = staging.parent / f".{staging.name}.lock"
        with lock_path.open("a") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise FetchError(f"another fetch of {self.release.os} "
                                 f"{self.release.version} is running") from None
            self.sizes = {f.name: s for f in self.release.files
                          if (s := remote_size(f.url, self.opts.timeout)) is not None}
            if len(self.sizes) == len(self.release.files):
                self.status.total_size = sum(self.sizes.values())
            for index, remote in enumerate(self.release.files, 1):
                self.check_cancel()
                self.status.file_index = index
                self.fetch_one(remote, staging)
            for leftover in staging.glob("*.sig"):
                leftover.unlink()
            self.publish(staging, target)
        lock_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()
            staging.parent.parent.rmdir()
        self.status.phase = "done"
        self.status.message = f"stored in {target}"
        self.report("done")
        return target

    def complete(self, target: Path) -> bool:
        """Whether *target* already holds every file (with the expected SHA-256, if known)."""
        for remote in self.release.files:
            path = target / remote.name
            recorded = ImageStore.recorded_sha256(path)
            if not path.is_file() or recorded is None:
                return False
            if remote.sha256 is not None and recorded != remote.sha256:
                return False
        return True

    def publish(self, staging: Path, target: Path) -> None:
        """Make the verified files visible: one rename, or file by file into an existing
        version directory (each file appears whole)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            replace_durably(staging, target)
        else:
            for remote in self.release.files:
                for name in (remote.name, remote.name + CHECKSUM_SUFFIX):
                    os.replace(staging / name, target / name)
            # One directory sync makes all the renames above durable.
            fsync_dir(target)
            shutil.rmtree(staging, ignore_errors=True)


def fetch_release(store: ImageStore, opts: FetchOptions, *,
                  progress: ProgressCallback | None = None,
                  cancel: threading.Event | None = None,
                  release: Release | None = None) -> tuple[Release, Path]:
    """Resolve (unless *release* is given), download, verify and publish; the version
    directory.  Raises :class:`FetchError` (partial files stay staged for a resume)."""
    if release is None:
        release = resolve(opts)
    fetcher = _Fetcher(store, opts, release, progress, cancel)
    try:
        return release, fetcher.run()
    except FetchCancelled as exc:
        fetcher.status.phase = "cancelled"
        fetcher.status.message = str(exc)
        fetcher.report("cancelled")
        raise
    except ImageError as exc:
        fetcher.status.phase = "failed"
        fetcher.status.message = str(exc)
        fetcher.report("failed")
        raise


# -- fetches started by the admin API ------------------------------------------------------


class FetchConflict(FetchError):  # noqa: N818 - reads as the condition it reports
    """A fetch of the same OS and version is running already (HTTP 409)."""


class FetchBusy(FetchError):  # noqa: N818
    """As many fetches as allowed are running (HTTP 503): each holds a worker thread."""


#: Fields of ``POST /admin/images/fetch``.
_BODY_FIELDS = frozenset({"os", "channel", "stream", "release", "version", "base_url",
                          "pxe_only", "arch"})
#: Keyrings the server uses, by OS: ``<images_dir>/.keyrings/<os>.gpg``.
KEYRING_DIR = ".keyrings"


def options_from_body(body: Any, keyring_dir: Path) -> FetchOptions:
    """The :class:`FetchOptions` of an API request body; :class:`FetchUsageError` naming the
    field that is wrong."""
    if not isinstance(body, dict):
        raise FetchUsageError("the body must be a JSON object")
    unknown = sorted(set(body) - _BODY_FIELDS)
    if unknown:
        raise FetchUsageError(f"unknown field {unknown[0]!r} (known: "
                              f"{', '.join(sorted(_BODY_FIELDS))})")
    os_name = body.get("os")
    if os_name not in RELEASE_OSES:
        raise FetchUsageError(f"os must be one of {', '.join(RELEASE_OSES)}")
    wanted = RELEASE_OSES[os_name]
    for name in ("channel", "stream", "release"):
        if name != wanted and name in body:
            raise FetchUsageError(f"{name} is not used with os {os_name} (use {wanted})")
    strings = {}
    for name in (wanted, "version", "base_url", "arch"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise FetchUsageError(f"{name} must be a string")
        strings[name] = value
    line = strings[wanted] or ("" if os_name == "debian" else "stable")
    if not line:
        raise FetchUsageError("release is required for os debian (e.g. bookworm)")
    pxe_only = body.get("pxe_only", False)
    if not isinstance(pxe_only, bool):
        raise FetchUsageError("pxe_only must be true or false")
    keyring = keyring_dir / f"{os_name}.gpg"
    return FetchOptions(os=os_name, line=line, version=strings["version"] or "current",
                        base_url=strings["base_url"],
                        keyring=keyring if keyring.is_file() else None,
                        arch=strings["arch"] or "x86_64", pxe_only=pxe_only)


class ImageFetches:
    """Release fetches started by the admin API, run by *run* (the API's runner: a thread
    pool) one at a time per OS, release line and version; progress goes to *report*
    (``report(detail, status_json)``, at most once a second per fetch besides the start,
    each file and the end)."""

    def __init__(self, store: ImageStore, run: Callable[[Callable[[], Any]], Any], *,
                 report: Callable[[str, dict[str, Any]], None] | None = None,
                 history: int = 20, interval: float = 1.0, max_running: int = 2) -> None:
        self.store = store
        #: At most this many at once: each holds one of the API's worker threads.
        self.max_running = max_running
        self.run = run
        self.report = report
        self.history = history
        self.interval = interval
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str, str], FetchStatus] = {}
        self._cancel: dict[tuple[str, str, str], threading.Event] = {}
        self._finished: list[FetchStatus] = []

    @property
    def keyring_dir(self) -> Path:
        """Where the server's keyrings are: ``<images_dir>/.keyrings/<os>.gpg``."""
        return self.store.root / KEYRING_DIR

    def start(self, body: Any) -> dict[str, Any]:
        """Validate *body* and start the fetch; its first status.  :class:`FetchUsageError`
        (400) or :class:`FetchConflict` (409)."""
        opts = options_from_body(body, self.keyring_dir)
        if opts.os == "flatcar" and opts.keyring is None:
            raise FetchUsageError(f"os flatcar: no keyring: put Flatcar's image signing key "
                                  f"at {self.keyring_dir / 'flatcar.gpg'}")
        key = (opts.os, opts.line, opts.version)
        status = FetchStatus(opts.os, opts.version, message=f"{opts.line}")
        cancel = threading.Event()
        with self._lock:
            if key in self._running:
                raise FetchConflict(f"a fetch of {opts.os} {opts.line} {opts.version} is "
                                    "running already")
            if len(self._running) >= self.max_running:
                raise FetchBusy(f"{len(self._running)} image fetches are running; start "
                                "this one when one has finished")
            self._running[key] = status
            self._cancel[key] = cancel
        self._emit("started", status)
        self.run(lambda: self._work(key, opts, cancel))
        return status.to_json()

    def _emit(self, detail: str, status: FetchStatus) -> None:
        if self.report is None:
            return
        with contextlib.suppress(Exception):  # progress must never break a fetch
            self.report(detail, status.to_json())

    def _work(self, key: tuple[str, str, str], opts: FetchOptions,
              cancel: threading.Event) -> None:
        last = [0.0]

        def progress(event: str, status: FetchStatus) -> None:
            with self._lock:
                self._running[key] = status
            now = time.monotonic()
            if event == "progress" and now - last[0] < self.interval:
                return
            last[0] = now
            self._emit(event, status)

        final = self._running[key]
        try:
            fetch_release(self.store, opts, progress=progress, cancel=cancel)
        except ImageError as exc:
            with self._lock:
                final = self._running[key]
            if final.phase not in ("failed", "cancelled"):
                final.phase = "failed"
                final.message = str(exc)
                self._emit("failed", final)
        except Exception as exc:  # a bug must end the fetch, not hide it as running
            final.phase = "failed"
            final.message = f"internal error: {type(exc).__name__}"
            self._emit("failed", final)
        finally:
            with self._lock:
                final = self._running.pop(key, final)
                self._cancel.pop(key, None)
                self._finished = [*self._finished, final][-self.history:]

    def cancel_all(self) -> None:
        """Ask every running fetch to stop (server shutdown); the partial files stay staged."""
        with self._lock:
            events = list(self._cancel.values())
        for event in events:
            event.set()

    def snapshot(self) -> dict[str, Any]:
        """``GET /admin/images``: the cached versions and the running and recent fetches."""
        versions: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for entry in self.store.entries():
            versions.setdefault((entry.os, entry.version), []).append(
                {"name": entry.name, "role": entry.role, "size": entry.size,
                 "sha256": entry.sha256})
        with self._lock:
            running = [s.to_json() for s in self._running.values()]
            finished = [s.to_json() for s in self._finished]
        return {
            "versions": [{"os": o, "version": v, "files": files}
                         for (o, v), files in sorted(versions.items())],
            "fetches": running,
            "recent": finished[::-1],
        }


__all__ = [
    "DEBIAN_FILES",
    "FCOS_FILES",
    "FLATCAR_FILES",
    "KEYRING_DIR",
    "RELEASE_OSES",
    "FetchBusy",
    "FetchCancelled",
    "FetchConflict",
    "FetchError",
    "FetchOptions",
    "FetchStatus",
    "FetchUsageError",
    "ImageFetches",
    "Release",
    "RemoteFile",
    "fetch_release",
    "options_from_body",
    "resolve",
    "staging_directory",
]
