"""``pxestack images``: manage the OS image cache (kernels, initrds, install images).

::

    pxestack images --dir /var/lib/pxestack/images list
    pxestack images add flatcar 3975.2.0 --kernel vmlinuz --initrd initrd.cpio.gz
    pxestack images fetch flatcar --channel stable --keyring flatcar-image-signing-key.gpg
    pxestack images fetch fcos --stream stable
    pxestack images fetch debian --release bookworm
    pxestack images fetch https://.../flatcar_production_pxe.vmlinuz flatcar 3975.2.0 \\
        --role kernel --sha256-url https://.../flatcar_production_pxe.vmlinuz.sha256
    pxestack images remove flatcar 3975.2.0

The layout is mayu's (``<dir>/<version>/...``, docs/reference/mayu-api.md) for Flatcar and
CoreOS and ``<dir>/<os>/<version>/...`` for other OSes; see :mod:`pxestack.provision.images`.  Every
image gets a ``.sha256`` file beside it.  ``fetch`` verifies a SHA-256 (given, or read from a
checksum file URL) and/or a detached OpenPGP signature (with ``gpgv``) before the file is
renamed into place, so the HTTP server never serves an unverified or partial image.
``fetch flatcar|fcos|debian`` resolves a vendor release (:mod:`pxestack.provision.imagefetch`).

Exit status: 0 ok, 1 failure (download, checksum or signature mismatch, I/O), 2 usage,
3 no such image, 130/143 a release fetch ended by Ctrl-C/SIGTERM (resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import yaml

from pxestack import __version__
from pxestack._fs import atomic_write
from pxestack.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from pxestack.dhcp.decide import BOOT_FILE_DEFAULTS
from pxestack.provision.imagefetch import (
    DEFAULT_DEBIAN_KEYRING,
    RELEASE_OSES,
    FetchError,
    FetchOptions,
    FetchStatus,
    FetchUsageError,
    fetch_release,
    resolve,
)
from pxestack.provision.images import (
    MAYU_LAYOUT_OSES,
    ROLES,
    ChecksumMismatch,
    ImageEntry,
    ImageError,
    ImageNotFound,
    ImageStore,
    normalize_sha256,
    parse_checksum_file,
)

#: No such image (the same code ``pxestack ctl`` uses for "host doesn't exist").
EXIT_NOT_FOUND = 3
#: Ended by Ctrl-C (128 + SIGINT) or SIGTERM (128 + SIGTERM), as a shell reports it.
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
IMAGES_DIR_ENV = "PXESTACK_IMAGES_DIR"
#: The largest download accepted unless ``--max-bytes`` says otherwise (Flatcar's install
#: image is about 500 MiB; FCOS's live rootfs about 800 MiB).
DEFAULT_MAX_BYTES = 8 << 30
#: Checksum and signature files are small; anything bigger is refused.
MAX_SIDE_FILE_BYTES = 1 << 20
_CHUNK = 256 << 10


class ImagesCommandError(Exception):
    """Report one line and exit with :attr:`exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- progress ------------------------------------------------------------------------------


def human_bytes(count: float) -> str:
    """``12.3 MiB`` style sizes (binary prefixes)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover - the loop always returns


class ProgressBar:
    """A one-line download progress bar on *stream* (stderr).

    On a terminal the line is redrawn in place at most every *interval* seconds; otherwise
    (logs, CI) a line is printed at every 25 % and at the end, so logs stay short.
    """

    def __init__(self, label: str, total: int | None, stream: TextIO, *,
                 width: int = 30, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.width = width
        self.interval = interval
        self.clock = clock
        self.done = 0
        self.started = clock()
        self._last_draw = -interval
        self._last_quarter = 0
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def line(self) -> str:
        """The progress line as it would be drawn now."""
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = f"{human_bytes(self.done / elapsed)}/s"
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = int(fraction * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            return (f"{self.label} [{bar}] {fraction * 100:5.1f}% "
                    f"{human_bytes(self.done)}/{human_bytes(self.total)} {rate}")
        return f"{self.label} {human_bytes(self.done)} {rate}"

    def update(self, count: int) -> None:
        """*count* more bytes arrived."""
        self.done += count
        now = self.clock()
        if self.tty:
            if now - self._last_draw >= self.interval:
                self._last_draw = now
                self.stream.write("\r" + self.line())
                self.stream.flush()
        elif self.total:
            quarter = min(self.done * 4 // self.total, 4)
            if quarter > self._last_quarter and quarter < 4:
                self._last_quarter = quarter
                self.stream.write(self.line() + "\n")

    def finish(self) -> None:
        """Draw the final state and end the line."""
        self.stream.write(("\r" if self.tty else "") + self.line() + "\n")
        self.stream.flush()


# -- downloading ---------------------------------------------------------------------------


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener()


def open_url(url: str, timeout: float) -> Any:
    """Open an ``http``/``https`` URL for reading; :class:`ImagesCommandError` on any error."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ImagesCommandError(f"{url!r} is not an http:// or https:// URL", EXIT_USAGE)
    request = urllib.request.Request(url, headers={  # noqa: S310 - scheme checked above
        "User-Agent": f"pxestack-images/{__version__}"})
    try:
        return _opener().open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        raise ImagesCommandError(f"GET {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ImagesCommandError(f"GET {url}: {reason}") from None


def fetch_small(url: str, timeout: float) -> bytes:
    """A checksum or signature file (at most :data:`MAX_SIDE_FILE_BYTES`)."""
    with open_url(url, timeout) as answer:
        data: bytes = answer.read(MAX_SIDE_FILE_BYTES + 1)
    if len(data) > MAX_SIDE_FILE_BYTES:
        raise ImagesCommandError(f"{url} is larger than {MAX_SIDE_FILE_BYTES} bytes")
    return data


def download_chunks(answer: Any, url: str, progress: ProgressBar | None,
                    max_bytes: int) -> Iterator[bytes]:
    """The body of *answer* in chunks, checked against Content-Length and *max_bytes*."""
    declared = answer.headers.get("Content-Length")
    expected = int(declared) if declared and declared.isdigit() else None
    if expected is not None and expected > max_bytes:
        raise ImagesCommandError(f"{url} is {expected} bytes, more than --max-bytes {max_bytes}")
    received = 0
    while True:
        try:
            chunk = answer.read(_CHUNK)
        except (OSError, ValueError) as error:
            raise ImagesCommandError(f"GET {url}: download interrupted: {error}") from None
        if not chunk:
            break
        received += len(chunk)
        if received > max_bytes:
            raise ImagesCommandError(f"{url} is larger than --max-bytes {max_bytes}")
        if progress is not None:
            progress.update(len(chunk))
        yield chunk
    if expected is not None and received != expected:
        raise ImagesCommandError(f"GET {url}: got {received} of {expected} bytes (truncated)")
    if progress is not None:
        progress.finish()


def verify_signature(data_path: Path, signature: bytes, keyring: Path) -> None:
    """Check a detached OpenPGP signature with ``gpgv`` against *keyring* only.

    ``gpgv`` (not ``gpg``) is used because it trusts exactly the keys in the keyring given
    and never touches the user's own keyring or trust database.
    """
    gpgv = shutil.which("gpgv")
    if gpgv is None:
        raise ImagesCommandError("--keyring needs gpgv (Debian package gpgv)", EXIT_USAGE)
    with tempfile.TemporaryDirectory(prefix="pxestack-gpgv-") as scratch:
        sig_path = Path(scratch) / "image.sig"
        sig_path.write_bytes(signature)
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [gpgv, "--keyring", str(keyring.resolve()), str(sig_path), str(data_path)],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "GNUPGHOME": scratch},
        )
    if result.returncode != 0:
        detail = " ".join(result.stderr.split())[-300:]
        reason = detail or f"gpgv exit {result.returncode}"
        raise ImagesCommandError(f"signature check failed: {reason}")


# -- commands ------------------------------------------------------------------------------


def store_of(args: argparse.Namespace) -> ImageStore:
    """The image cache: ``--dir`` > ``$PXESTACK_IMAGES_DIR`` > ``provision.images_dir``."""
    directory = args.dir or os.environ.get(IMAGES_DIR_ENV)
    if not directory and args.config:
        from pxestack.config import ConfigError, load_config_file

        try:
            config = load_config_file(args.config)
        except ConfigError as exc:
            raise ImagesCommandError(f"{args.config}: {exc}", EXIT_USAGE) from None
        if config.provision is not None and config.provision.images_dir is not None:
            directory = str(config.provision.images_dir)
    if not directory:
        raise ImagesCommandError(
            f"no image directory: pass --dir, set {IMAGES_DIR_ENV}, or --config with "
            "provision.images_dir", EXIT_USAGE)
    return ImageStore(directory)


def emit(args: argparse.Namespace, data: Any, table: Callable[[], str]) -> None:
    """JSON, YAML or the table, as ``--output`` asks."""
    if args.output == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        sys.stdout.write(table())


def entries_table(entries: list[ImageEntry], statuses: dict[Path, str] | None = None,
                  uses: dict[tuple[str, str], list[str]] | None = None) -> str:
    """OS, version, role, name, size, SHA-256 (shortened), after a verify the status, and
    with *uses* the profiles that boot the version."""
    headers = ["OS", "VERSION", "ROLE", "NAME", "SIZE", "SHA256"]
    if statuses is not None:
        headers.append("STATUS")
    if uses is not None:
        headers.append("PROFILES")
    rows = []
    for e in entries:
        row = [e.os, e.version, e.role, e.name, human_bytes(e.size),
               (e.sha256 or "-")[:16]]
        if statuses is not None:
            row.append(statuses[e.path])
        if uses is not None:
            row.append(",".join(uses.get(_use_key(e), [])) or "-")
        rows.append(row)
    from pxestack.cli.ctl import format_table

    return format_table(headers, rows)


def profile_uses(args: argparse.Namespace) -> dict[tuple[str, str], list[str]] | None:
    """(OS directory, version) -> the profiles of ``--config`` that boot it; None without
    ``--config`` (or without a ``provision`` section)."""
    if not args.config:
        return None
    from pxestack.config import ConfigError, load_config_file

    try:
        config = load_config_file(args.config)
    except ConfigError as exc:
        raise ImagesCommandError(f"{args.config}: {exc}", EXIT_USAGE) from None
    prov = config.provision
    if prov is None:
        return None
    uses: dict[tuple[str, str], list[str]] = {}
    # Without profiles every machine gets the implicit default profile (Flatcar).
    for profile in prov.profiles or (None,):
        name = profile.name if profile is not None else "default"
        os_name = profile.os if profile is not None else "flatcar"
        version = (profile.os_version if profile is not None and profile.os_version
                   else prov.default_os_version)
        if os_name == "generic" and profile is not None and profile.generic is not None:
            os_name = profile.generic.image_os
        uses.setdefault((os_name, version), []).append(name)
    return uses


def _use_key(entry: ImageEntry) -> tuple[str, str]:
    """The (OS directory, version) profiles name: CoreOS files live in Flatcar's layout."""
    return ("flatcar" if entry.os in MAYU_LAYOUT_OSES else entry.os, entry.version)


def cmd_list(args: argparse.Namespace) -> int:
    """``list [--os] [--version] [--role] [--verify]``; with ``--config`` also the profiles
    that use each version and the versions a profile needs that are missing."""
    store = store_of(args)
    entries = store.select(args.os, args.version, args.role)
    statuses = {e.path: store.verify(e) for e in entries} if args.verify else None
    uses = profile_uses(args)
    data: list[dict[str, Any]] = []
    for e in entries:
        item = dict(e.to_json(), **({"status": statuses[e.path]} if statuses else {}))
        if uses is not None:
            item["profiles"] = uses.get(_use_key(e), [])
        data.append(item)
    missing: list[tuple[str, str, list[str]]] = []
    if uses is not None:
        present = {_use_key(e) for e in store.entries()}
        missing = [(o, v, names) for (o, v), names in sorted(uses.items())
                   if (o, v) not in present
                   and (args.os is None or args.os == o)
                   and (args.version is None or args.version == v)]
        data.extend({"os": o, "version": v, "missing": True, "profiles": names}
                    for o, v, names in missing)

    def table() -> str:
        text = entries_table(entries, statuses, uses)
        for o, v, names in missing:
            text += (f"MISSING: {o} {v}, used by profile{'s' if len(names) > 1 else ''} "
                     f"{', '.join(names)}\n")
        return text

    emit(args, data, table)
    if statuses and "mismatch" in statuses.values():
        bad = [str(p) for p, s in statuses.items() if s == "mismatch"]
        print(f"pxestack images: checksum mismatch: {', '.join(bad)}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _targets(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(file name in the cache, local source) for ``add``'s role options and ``--file``."""
    targets = []
    for role in ROLES:
        source = getattr(args, role.replace("-", "_"))
        if source:
            targets.append((ImageStore.file_name(args.os_name, role), Path(source)))
    for spec in args.file or ():
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise ImagesCommandError(f"--file {spec!r} must be NAME=PATH", EXIT_USAGE)
        targets.append((name, Path(source)))
    if not targets:
        raise ImagesCommandError("nothing to add: give --kernel, --initrd, --rootfs, "
                            "--install-image or --file NAME=PATH", EXIT_USAGE)
    return targets


def cmd_add(args: argparse.Namespace) -> int:
    """``add OS VERSION --kernel F --initrd F ...``: copy local files into the cache."""
    store = store_of(args)
    targets = _targets(args)
    expected = normalize_sha256(args.sha256) if args.sha256 else None
    if expected is not None and len(targets) != 1:
        raise ImagesCommandError("--sha256 needs exactly one file to add", EXIT_USAGE)
    added = [store.add_file(args.os_name, args.version, name, source, expected_sha256=expected,
                            replace=args.force) for name, source in targets]
    emit(args, [e.to_json() for e in added], lambda: entries_table(added))
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    """``remove OS VERSION [--role R] [--name N] [--force]``: refuses a version a profile of
    ``--config`` uses unless ``--force``."""
    store = store_of(args)
    uses = profile_uses(args) or {}
    os_key = "flatcar" if args.os_name.lower() in MAYU_LAYOUT_OSES else args.os_name.lower()
    users = uses.get((os_key, args.version), [])
    if users and not args.force:
        raise ImagesCommandError(
            f"{args.os_name} {args.version} is used by profile{'s' if len(users) > 1 else ''} "
            f"{', '.join(users)}; pass --force to remove it anyway")
    removed = store.remove(args.os_name, args.version, args.role, args.name)
    emit(args, [e.to_json() for e in removed],
         lambda: "".join(f"removed {e.path}\n" for e in removed))
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    """``fetch OS --channel|--stream|--release ...`` or ``fetch URL OS VERSION``."""
    if "://" not in args.source:
        return cmd_fetch_release(args)
    if args.os_name is None or args.version is None:
        raise ImagesCommandError("fetch URL needs OS and VERSION after the URL", EXIT_USAGE)
    for option in ("channel", "stream", "release", "base_url"):
        if getattr(args, option):
            raise ImagesCommandError(f"--{option.replace('_', '-')} is for fetch flatcar|fcos"
                                     "|debian, not for a URL", EXIT_USAGE)
    args.url = args.source
    store = store_of(args)
    url_name = os.path.basename(urllib.parse.urlsplit(args.url).path)
    if args.role:
        name = ImageStore.file_name(args.os_name, args.role)
    elif args.name or url_name:
        name = args.name or url_name
    else:
        raise ImagesCommandError("the URL names no file: pass --role or --name", EXIT_USAGE)
    store.directory(args.os_name, args.version)  # validate names before downloading
    expected: str | None = None
    if args.sha256:
        expected = normalize_sha256(args.sha256)
    elif args.sha256_url:
        text = fetch_small(args.sha256_url, args.timeout).decode("utf-8", "replace")
        expected = parse_checksum_file(text, url_name or name)
    signature = None
    if args.keyring:
        signature = fetch_small(args.signature_url or args.url + ".sig", args.timeout)
    if expected is None and signature is None and not args.no_verify:
        raise ImagesCommandError("refusing an unverified download: give --sha256, --sha256-url or "
                            "--keyring (or --no-verify)", EXIT_USAGE)
    progress = None if args.quiet else ProgressBar(name, None, sys.stderr)
    with open_url(args.url, args.timeout) as answer:
        if progress is not None:
            length = answer.headers.get("Content-Length")
            progress.total = int(length) if length and length.isdigit() else None
        chunks = download_chunks(answer, args.url, progress, args.max_bytes)
        if signature is None:
            entry = store.write_stream(args.os_name, args.version, name, chunks,
                                       expected_sha256=expected, replace=args.force)
        else:
            entry = _fetch_signed(store, args, name, chunks, expected, signature)
    emit(args, entry.to_json(), lambda: entries_table([entry]))
    return EXIT_OK


def _fetch_signed(store: ImageStore, args: argparse.Namespace, name: str,
                  chunks: Iterator[bytes], expected: str | None, signature: bytes) -> ImageEntry:
    """Download to a scratch file, check the signature, then store it (still atomically)."""
    directory = Path(tempfile.mkdtemp(prefix="pxestack-fetch-"))
    try:
        scratch = directory / name
        with scratch.open("wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        verify_signature(scratch, signature, Path(args.keyring))
        return store.add_file(args.os_name, args.version, name, scratch,
                              expected_sha256=expected, replace=args.force)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- release fetches -----------------------------------------------------------------------


class _Terminated(BaseException):
    """SIGTERM arrived (raised from the signal handler in the main thread)."""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else \
        f"{rest // 60}:{rest % 60:02d}"


class ReleaseProgress:
    """Renders :class:`FetchStatus` reports: one redrawn line on a terminal (bytes, speed and
    ETA of the file and of the whole release), plain lines otherwise (start and end of each
    file, every quarter of a file whose size is known)."""

    def __init__(self, stream: TextIO, *, interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_draw = -interval
        self._quarter = 0
        self._drawn = False

    @staticmethod
    def line(status: FetchStatus, now: float | None = None) -> str:
        """``[i/n] name done/size speed ETA | total done/size speed ETA``."""
        size = f"/{human_bytes(status.file_size)}" if status.file_size is not None else ""
        total = (f"/{human_bytes(status.total_size)}" if status.total_size is not None
                 else "")
        return (f"[{status.file_index}/{status.file_count}] {status.file} "
                f"{human_bytes(status.file_done)}{size} "
                f"{human_bytes(status.file_speed(now))}/s ETA {_duration(status.file_eta(now))}"
                f" | total {human_bytes(status.total_done)}{total} "
                f"{human_bytes(status.speed(now))}/s ETA {_duration(status.eta(now))}")

    def _end_line(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self._drawn = False

    def __call__(self, event: str, status: FetchStatus) -> None:
        now = self.clock()
        if event == "progress":
            if self.tty:
                if now - self._last_draw >= self.interval:
                    self._last_draw = now
                    self.stream.write("\r\x1b[K" + self.line(status, now))
                    self._drawn = True
            elif status.file_size:
                quarter = min(status.file_done * 4 // status.file_size, 3)
                if quarter > self._quarter:
                    self._quarter = quarter
                    self.stream.write(self.line(status, now) + "\n")
        elif event == "file":
            self._end_line()
            self._quarter = 0
            resumed = " (resuming)" if status.file_resumed else ""
            self.stream.write(f"[{status.file_index}/{status.file_count}] {status.file}: "
                              f"downloading{resumed}\n")
        elif event == "file-done":
            if self.tty:
                self.stream.write("\r\x1b[K")
                self._drawn = False
            self.stream.write(self.line(status, now) + " verified\n")
        elif event in ("done", "failed", "cancelled"):
            self._end_line()
            if event == "done":
                self.stream.write(f"{status.os} {status.version}: {status.message}\n")
        self.stream.flush()


def _release_options(args: argparse.Namespace) -> FetchOptions:
    os_name = args.source.lower()
    if os_name not in RELEASE_OSES:
        raise ImagesCommandError(f"fetch: {args.source!r} is neither flatcar, fcos, debian "
                                 "nor a URL", EXIT_USAGE)
    if args.os_name is not None:
        raise ImagesCommandError(f"fetch {os_name}: unexpected argument {args.os_name!r} "
                                 f"(use --{RELEASE_OSES[os_name]} and --version)", EXIT_USAGE)
    wanted = RELEASE_OSES[os_name]
    for option in ("channel", "stream", "release"):
        if option != wanted and getattr(args, option):
            raise ImagesCommandError(f"--{option} is not used with {os_name} "
                                     f"(use --{wanted})", EXIT_USAGE)
    for option in ("role", "name", "sha256", "sha256_url", "signature_url"):
        if getattr(args, option):
            raise ImagesCommandError(f"--{option.replace('_', '-')} is only for fetch URL",
                                     EXIT_USAGE)
    line = getattr(args, wanted) or ("" if os_name == "debian" else "stable")
    if not line:
        raise ImagesCommandError("fetch debian needs --release (e.g. bookworm)", EXIT_USAGE)
    if args.pxe_only and os_name != "flatcar":
        raise ImagesCommandError("--pxe-only is only for flatcar", EXIT_USAGE)
    return FetchOptions(os=os_name, line=line, version=args.release_version,
                        base_url=args.base_url,
                        keyring=Path(args.keyring) if args.keyring else None, arch=args.arch,
                        no_verify=args.no_verify, force=args.force, timeout=args.timeout,
                        max_bytes=args.max_bytes, pxe_only=args.pxe_only)


def cmd_fetch_release(args: argparse.Namespace) -> int:
    """``fetch flatcar|fcos|debian``: resolve the release, download, verify, publish."""
    store = store_of(args)
    options = _release_options(args)

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    progress = None if args.quiet else ReleaseProgress(sys.stderr)
    try:
        try:
            release = resolve(options)
            if progress is not None:
                print(f"{release.os} {release.version}: {len(release.files)} files",
                      file=sys.stderr)
                for check in release.checks:
                    print(f"checks: {check}", file=sys.stderr)
            release, _target = fetch_release(store, options, progress=progress,
                                            release=release)
        except FetchUsageError as exc:
            raise ImagesCommandError(str(exc), EXIT_USAGE) from None
        except FetchError as exc:
            raise ImagesCommandError(str(exc)) from None
        except KeyboardInterrupt:
            if progress is not None:
                progress._end_line()
            print("pxestack images: interrupted; run the same fetch again to resume",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        except _Terminated:
            if progress is not None:
                progress._end_line()
            print("pxestack images: terminated; run the same fetch again to resume",
                  file=sys.stderr)
            return EXIT_TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)
    entries = store.select(release.os, release.version)
    emit(args, [e.to_json() for e in entries], lambda: entries_table(entries))
    return EXIT_OK


# -- argument parsing ----------------------------------------------------------------------


#: The loader files ``images loaders`` copies: (config key or None, default name, the file
#: in Debian's package, the package).
DEBIAN_LOADERS: tuple[tuple[str | None, str, str, str], ...] = (
    ("shim_file", BOOT_FILE_DEFAULTS["shim_file"], "usr/lib/shim/shimx64.efi.signed",
     "shim-signed"),
    ("grub_file", BOOT_FILE_DEFAULTS["grub_file"],
     "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed", "grub-efi-amd64-signed"),
    ("pxelinux_file", BOOT_FILE_DEFAULTS["pxelinux_file"], "usr/lib/PXELINUX/lpxelinux.0",
     "pxelinux"),
    (None, "ldlinux.c32", "usr/lib/syslinux/modules/bios/ldlinux.c32", "syslinux-common"),
)


def _tftp_root_and_names(args: argparse.Namespace) -> tuple[Path, dict[str, str]]:
    """The TFTP root (``--tftp-root`` > ``tftp.root`` of ``--config``) and the loader file
    names of ``dhcp.boot`` (defaults without ``--config``)."""
    names: dict[str, str] = {}
    root: str | None = args.tftp_root
    if args.config:
        from pxestack.config import ConfigError, load_config_file

        try:
            config = load_config_file(args.config)
        except ConfigError as exc:
            raise ImagesCommandError(f"{args.config}: {exc}", EXIT_USAGE) from None
        if config.dhcp is not None:
            boot = config.dhcp.boot
            names = {"shim_file": boot.shim_file, "grub_file": boot.grub_file,
                     "pxelinux_file": boot.pxelinux_file}
        if root is None and config.tftp is not None:
            root = str(config.tftp.root)
    if root is None:
        raise ImagesCommandError("no TFTP root: pass --tftp-root or --config with tftp.root",
                                 EXIT_USAGE)
    return Path(root), names


def cmd_loaders(args: argparse.Namespace) -> int:
    """Copy Debian's signed shim and GRUB and PXELINUX into the TFTP root."""
    root, names = _tftp_root_and_names(args)
    source_root = Path(args.source_root)
    missing = [
        f"/{path} (apt-get install {package})"
        for _key, _name, path, package in DEBIAN_LOADERS
        if not (source_root / path).is_file()
    ]
    if missing:
        raise ImagesCommandError("missing: " + ", ".join(missing), EXIT_NOT_FOUND)
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for key, default, path, package in DEBIAN_LOADERS:
        name = names.get(key, default) if key is not None else default
        target = root / name
        data = (source_root / path).read_bytes()
        status = "unchanged"
        if not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, data, mode=0o644)
            status = "copied"
        rows.append({"file": str(target), "from": "/" + path, "package": package,
                     "status": status})
    emit(args, rows, lambda: "".join(
        f"{row['status']:9} {row['file']}  <- {row['from']} ({row['package']})\n"
        for row in rows))
    return EXIT_OK


def _run(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Map errors to one ``pxestack images:`` line and the documented exit codes."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ImagesCommandError as exc:
            print(f"pxestack images: {exc}", file=sys.stderr)
            return exc.exit_code
        except ImageNotFound as exc:
            print(f"pxestack images: {exc}", file=sys.stderr)
            return EXIT_NOT_FOUND
        except ChecksumMismatch as exc:
            print(f"pxestack images: checksum mismatch, nothing stored: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except ImageError as exc:
            print(f"pxestack images: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except OSError as exc:
            print(f"pxestack images: {exc}", file=sys.stderr)
            return EXIT_FAILURE

    run.__doc__ = handler.__doc__
    return run


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", "-d", default=argparse.SUPPRESS, metavar="DIR",
                        help=f"image cache directory (default ${IMAGES_DIR_ENV}, or "
                        "provision.images_dir of --config)")
    parser.add_argument("--config", "-c", default=argparse.SUPPRESS, metavar="FILE",
                        help="read provision.images_dir from this configuration file")
    parser.add_argument("--output", "-o", choices=("table", "json", "yaml"),
                        default=argparse.SUPPRESS, help="output format (default table)")


def register(subparsers: Any) -> None:
    """Add the ``images`` subcommand."""
    parser = subparsers.add_parser(
        "images",
        help="manage the OS image cache (kernels, initrds, install images)",
        description="Manage kernels, initrds and install images per OS and version, each "
        "with a .sha256 file beside it.  Flatcar and CoreOS use mayu's layout "
        "(<dir>/<version>/); other OSes <dir>/<os>/<version>/.  Exit status: 0 ok, "
        "1 failure (download, checksum, signature), 2 usage, 3 no such image.",
    )
    _add_common(parser)
    parser.set_defaults(dir=None, config=None, output="table")
    commands = parser.add_subparsers(dest="images_command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int],
                help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=help_text,
                                                           description=help_text)
        _add_common(sub)
        sub.set_defaults(func=_run(handler))
        return sub

    listing = command("list", cmd_list, "list the cached images")
    listing.add_argument("--os", metavar="OS", help="only this OS")
    listing.add_argument("--version", metavar="VERSION", help="only this version")
    listing.add_argument("--role", choices=(*ROLES, "file"), help="only this role")
    listing.add_argument("--verify", action="store_true",
                         help="re-hash every file and compare with its .sha256 (exit 1 on a "
                         "mismatch)")

    add = command("add", cmd_add, "copy local files into the cache")
    add.add_argument("os_name", metavar="OS", help="flatcar, coreos, fcos, or any name")
    add.add_argument("version", metavar="VERSION")
    for role in ROLES:
        add.add_argument(f"--{role}", metavar="FILE", help=f"the {role} file")
    add.add_argument("--file", action="append", metavar="NAME=PATH",
                     help="any other file, stored as NAME (repeatable)")
    add.add_argument("--sha256", metavar="HEX", help="expected SHA-256 (one file only)")
    add.add_argument("--force", action="store_true", help="replace a different existing file")

    fetch = command("fetch", cmd_fetch,
                    "download a release (flatcar, fcos, debian) or one URL, verify it, "
                    "store it atomically")
    fetch.add_argument("source", metavar="OS|URL",
                       help="flatcar, fcos or debian (a vendor release), or the URL of one file")
    fetch.add_argument("os_name", metavar="OS", nargs="?", help="with a URL: the OS")
    fetch.add_argument("version", metavar="VERSION", nargs="?", help="with a URL: the version")
    release = fetch.add_argument_group("releases (fetch flatcar|fcos|debian)")
    release.add_argument("--channel", metavar="CHANNEL",
                         help="flatcar: stable, beta, alpha or lts (default stable)")
    release.add_argument("--stream", metavar="STREAM",
                         help="fcos: stable, testing or next (default stable)")
    release.add_argument("--release", metavar="NAME", help="debian: e.g. bookworm (required)")
    release.add_argument("--version", dest="release_version", default="current",
                         metavar="current|X.Y.Z",
                         help="flatcar: the release (default current, read from version.txt)")
    release.add_argument("--base-url", metavar="URL",
                         help="a mirror: flatcar <URL>/<channel>.release.flatcar-linux.net/..., "
                         "fcos <URL>/streams/<stream>.json, debian <URL>/dists/<release>/...")
    release.add_argument("--arch", default="x86_64", metavar="ARCH",
                         help="fcos: the architecture in the stream metadata (default x86_64)")
    release.add_argument("--pxe-only", action="store_true",
                         help="flatcar: skip the install image (install: pxe profiles only)")
    what = fetch.add_mutually_exclusive_group()
    what.add_argument("--role", choices=ROLES, help="URL: store under the role's file name")
    what.add_argument("--name", metavar="NAME", help="URL: store as NAME (default: the URL's)")
    check = fetch.add_mutually_exclusive_group()
    check.add_argument("--sha256", metavar="HEX", help="URL: expected SHA-256")
    check.add_argument("--sha256-url", metavar="URL",
                       help="URL: checksum file (sha256sum or BSD format) to read it from")
    fetch.add_argument("--keyring", metavar="FILE",
                       help="verify detached OpenPGP signatures with gpgv against this "
                       "keyring (flatcar: Flatcar's image signing key, required; debian: "
                       "the archive keyring, default " + str(DEFAULT_DEBIAN_KEYRING) + ")")
    fetch.add_argument("--signature-url", metavar="URL", help="URL: default URL + .sig")
    fetch.add_argument("--no-verify", action="store_true",
                       help="accept the download without any checksum or signature")
    fetch.add_argument("--force", action="store_true",
                       help="replace different existing files / fetch a complete version again")
    fetch.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                       help="network timeout per read (default 60)")
    fetch.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, metavar="N",
                       help="refuse larger downloads (default 8 GiB)")
    fetch.add_argument("--quiet", "-q", action="store_true", help="no progress")

    loaders = command("loaders", cmd_loaders,
                      "copy the boot loaders from installed Debian packages into the TFTP "
                      f"root: shim-signed's shim (as {BOOT_FILE_DEFAULTS['shim_file']}), "
                      "grub-efi-amd64-signed's grubnetx64.efi (as "
                      f"{BOOT_FILE_DEFAULTS['grub_file']}), pxelinux's "
                      f"{BOOT_FILE_DEFAULTS['pxelinux_file']} and syslinux-common's "
                      "ldlinux.c32")
    loaders.add_argument("--tftp-root", metavar="DIR",
                         help="the TFTP root (default: tftp.root of --config)")
    loaders.add_argument("--source-root", default="/", metavar="DIR",
                         help="where the packages are installed (default /)")

    remove = command("remove", cmd_remove, "delete images of one OS version")
    remove.add_argument("os_name", metavar="OS")
    remove.add_argument("version", metavar="VERSION")
    remove.add_argument("--role", choices=(*ROLES, "file"), help="only this role")
    remove.add_argument("--name", metavar="NAME", help="only this file")
    remove.add_argument("--force", action="store_true",
                        help="remove a version a profile of --config still uses")


__all__ = ["EXIT_NOT_FOUND", "ProgressBar", "human_bytes", "register"]
