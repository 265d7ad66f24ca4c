"""The OS image cache: kernels, initrds and install images per OS and version, with checksums.

Layout (compatible with mayu's images cache, so the ``/images/`` endpoint and
mayu's fetch scripts keep working)::

    <dir>/<version>/flatcar_production_pxe.vmlinuz          Flatcar and CoreOS Container
    <dir>/<version>/flatcar_production_pxe_image.cpio.gz    Linux: mayu's layout, served by
    <dir>/<version>/flatcar_production_image.bin.bz2        GET /images/<serial>/<file>
    <dir>/<os>/<version>/vmlinuz, initrd.img, rootfs.img    every other OS (fcos, ...)

Beside every image ``<name>.sha256`` holds its checksum in ``sha256sum`` format
(``<hex>  <name>``), so ``cd <dir>/<version> && sha256sum -c *.sha256`` verifies a cache by
hand.  Images are written atomically (temporary file, fsync, rename, fsync of the directory):
a reader (the HTTP server) sees the old file or the complete new one, never a partial
download, and a crash leaves at most a ``.<name>.*.part`` file that the next write removes.

A directory directly under ``<dir>`` that holds files is a mayu version directory; one that
holds only directories is an OS directory.  Nothing here does network I/O (``pxestack
images fetch`` downloads, then hands the bytes to :meth:`ImageStore.write_stream`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pxestack._fs import AtomicFile, atomic_write, fsync_dir

#: OSes whose images use mayu's layout and file names (``<dir>/<version>/<name>``).
MAYU_LAYOUT_OSES = ("flatcar", "coreos")

#: File name of each role per OS.  Flatcar's and CoreOS's are the names their release
#: servers publish and mayu's ``/images/`` endpoint looks for; other OSes get short names.
ROLE_FILES: dict[str, dict[str, str]] = {
    "flatcar": {
        "kernel": "flatcar_production_pxe.vmlinuz",
        "initrd": "flatcar_production_pxe_image.cpio.gz",
        "install-image": "flatcar_production_image.bin.bz2",
    },
    "coreos": {
        "kernel": "coreos_production_pxe.vmlinuz",
        "initrd": "coreos_production_pxe_image.cpio.gz",
        "install-image": "coreos_production_image.bin.bz2",
    },
}
#: Role file names for every other OS (Fedora CoreOS's live PXE needs all three of the
#: first: kernel, initramfs and ``coreos.live.rootfs_url``).
GENERIC_ROLE_FILES = {
    "kernel": "vmlinuz",
    "initrd": "initrd.img",
    "rootfs": "rootfs.img",
    "install-image": "install.img",
}
ROLES = ("kernel", "initrd", "rootfs", "install-image")

CHECKSUM_SUFFIX = ".sha256"
_PART_PREFIX = "."
_PART_SUFFIX = ".part"

#: OS names: a letter first, so an OS directory can never look like a version.
_OS_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
#: Versions and file names: one safe path component (no ``/``, no leading dot, no ``..``).
_COMPONENT = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,199}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

_CHUNK = 1 << 20


class ImageError(Exception):
    """An image operation failed; the message says what and where."""


class ImageNotFound(ImageError):  # noqa: N818 - reads as the condition it reports
    """No image matches what was asked for."""


class ChecksumMismatch(ImageError):  # noqa: N818
    """The bytes do not have the expected SHA-256; nothing was written."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(f"{name}: SHA-256 is {actual}, expected {expected}")
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True, slots=True)
class ImageEntry:
    """One image file in the cache."""

    os: str
    version: str
    role: str
    name: str
    path: Path
    size: int
    #: The recorded checksum (from ``<name>.sha256``), or ``None`` when there is none.
    sha256: str | None

    def to_json(self) -> dict[str, object]:
        """The entry for ``--output json|yaml``."""
        return {"os": self.os, "version": self.version, "role": self.role, "name": self.name,
                "path": str(self.path), "size": self.size, "sha256": self.sha256}


def check_os_name(name: str) -> str:
    """*name* lower-cased, if it can name an OS directory; :class:`ImageError` otherwise."""
    lowered = name.lower()
    if not _OS_NAME.fullmatch(lowered):
        raise ImageError(f"OS name {name!r} must be a letter then letters, digits, - or _")
    return lowered


def check_component(what: str, text: str) -> str:
    """*text* if it is one safe path component (a version or a file name)."""
    if not _COMPONENT.fullmatch(text) or ".." in text or text.endswith(CHECKSUM_SUFFIX):
        raise ImageError(f"{what} {text!r} is not a usable file name")
    return text


def normalize_sha256(text: str) -> str:
    """A SHA-256 given on the command line or in a file, as 64 lower-case hex digits."""
    value = text.strip().lower().removeprefix("sha256:")
    if not _SHA256.fullmatch(value):
        raise ImageError(f"{text!r} is not a SHA-256 (64 hex digits)")
    return value


def parse_checksum_file(text: str, name: str | None = None) -> str:
    """The SHA-256 for *name* in a ``sha256sum``-style or BSD-style checksum file.

    Accepts ``<hex>  <name>``, ``<hex> *<name>`` (binary mode), ``SHA256 (<name>) = <hex>``
    and a bare ``<hex>``.  With several entries, *name* selects one (compared by base name);
    a file with exactly one entry needs no name.
    """
    entries: list[tuple[str, str | None]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        bsd = re.fullmatch(r"SHA256 \((.+)\) = ([0-9a-fA-F]{64})", line)
        if bsd:
            entries.append((bsd.group(2).lower(), bsd.group(1)))
            continue
        parts = line.split(None, 1)
        if not _SHA256.fullmatch(parts[0].lower()):
            continue
        entry_name = parts[1].lstrip("*").strip() if len(parts) > 1 else None
        entries.append((parts[0].lower(), entry_name))
    if not entries:
        raise ImageError("the checksum file holds no SHA-256")
    if name is not None:
        wanted = os.path.basename(name)
        matches = [h for h, n in entries if n is not None and os.path.basename(n) == wanted]
        if matches:
            return matches[0]
    if len(entries) == 1:
        return entries[0][0]
    raise ImageError(f"the checksum file has {len(entries)} entries and none for {name!r}")


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_chunks(handle: BinaryIO) -> Iterator[bytes]:
    return iter(lambda: handle.read(_CHUNK), b"")


class ImageStore:
    """The image cache under *root* (see the module documentation for the layout)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- names -----------------------------------------------------------------------------

    def directory(self, os_name: str, version: str) -> Path:
        """Where *os_name*'s *version* lives (mayu's layout for Flatcar and CoreOS)."""
        os_name = check_os_name(os_name)
        version = check_component("version", version)
        if os_name in MAYU_LAYOUT_OSES:
            return self.root / version
        return self.root / os_name / version

    @staticmethod
    def file_name(os_name: str, role: str) -> str:
        """The file name of *role* for *os_name* (:data:`ROLE_FILES`)."""
        if role not in ROLES:
            raise ImageError(f"role {role!r} is not one of {', '.join(ROLES)}")
        names = ROLE_FILES.get(check_os_name(os_name), GENERIC_ROLE_FILES)
        if role not in names:
            raise ImageError(f"{os_name} has no {role} image")
        return names[role]

    # -- writing ---------------------------------------------------------------------------

    def write_stream(
        self,
        os_name: str,
        version: str,
        name: str,
        chunks: Iterable[bytes],
        *,
        expected_sha256: str | None = None,
        replace: bool = False,
    ) -> ImageEntry:
        """Store *chunks* as image *name*, atomically, with its ``.sha256`` beside it.

        With *expected_sha256* the bytes are verified before the file appears; on a
        mismatch nothing is left behind (:class:`ChecksumMismatch`).  An existing image
        with the same checksum is kept (idempotent); with a different one it is replaced
        only when *replace* is true.
        """
        name = check_component("file name", name)
        expected = normalize_sha256(expected_sha256) if expected_sha256 else None
        directory = self.directory(os_name, version)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / name
        self._remove_stale_parts(directory, name)
        part = directory / f"{_PART_PREFIX}{name}.{os.getpid()}{_PART_SUFFIX}"
        digest = hashlib.sha256()
        # Leaving the block without commit() (a mismatch, an existing image) removes the part.
        with AtomicFile(target, 0o644, temporary=part) as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            actual = digest.hexdigest()
            if expected is not None and actual != expected:
                raise ChecksumMismatch(name, expected, actual)
            if target.exists():
                recorded = self.recorded_sha256(target)
                current = recorded or sha256_of(target)
                if current == actual:
                    out.discard()
                    if recorded is None:
                        self._write_checksum(target, actual)
                    return self.entry(os_name, version, name)
                if not replace:
                    raise ImageError(
                        f"{target} exists with SHA-256 {current}; use --force to replace it")
            out.commit()
        self._write_checksum(target, actual)
        return self.entry(os_name, version, name)

    def add_file(self, os_name: str, version: str, name: str, source: Path, *,
                 expected_sha256: str | None = None, replace: bool = False) -> ImageEntry:
        """Copy the local file *source* in as image *name* (see :meth:`write_stream`)."""
        try:
            with source.open("rb") as handle:
                return self.write_stream(os_name, version, name, _file_chunks(handle),
                                         expected_sha256=expected_sha256, replace=replace)
        except OSError as exc:
            raise ImageError(f"{source}: {exc.strerror or exc}") from None

    @staticmethod
    def _write_checksum(target: Path, sha256: str) -> None:
        atomic_write(target.with_name(target.name + CHECKSUM_SUFFIX),
                     f"{sha256}  {target.name}\n".encode())

    @staticmethod
    def _remove_stale_parts(directory: Path, name: str) -> None:
        """Remove partial downloads of *name* left by a crashed writer."""
        for stale in directory.glob(f"{_PART_PREFIX}{name}.*{_PART_SUFFIX}"):
            with contextlib.suppress(OSError):
                stale.unlink()

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def recorded_sha256(path: Path) -> str | None:
        """The checksum in ``<path>.sha256``, or ``None`` when missing or unreadable."""
        try:
            text = path.with_name(path.name + CHECKSUM_SUFFIX).read_text(encoding="utf-8")
            return parse_checksum_file(text, path.name)
        except (OSError, UnicodeDecodeError, ImageError):
            return None

    def entry(self, os_name: str, version: str, name: str) -> ImageEntry:
        """The :class:`ImageEntry` of one stored image."""
        path = self.directory(os_name, version) / name
        try:
            size = path.stat().st_size
        except OSError:
            raise ImageNotFound(f"no image {path}") from None
        return ImageEntry(os=_os_of(os_name, name), version=version,
                          role=_role_of(os_name, name), name=name, path=path, size=size,
                          sha256=self.recorded_sha256(path))

    def entries(self) -> list[ImageEntry]:
        """Every image in the cache, sorted by OS, version and name."""
        found: list[ImageEntry] = []
        if not self.root.is_dir():
            return found
        for top in sorted(self.root.iterdir()):
            if top.name.startswith(".") or not top.is_dir():
                continue
            files = [p for p in top.iterdir() if p.is_file()]
            if files:  # mayu's <dir>/<version>/ directory
                found.extend(self._scan_version(None, top))
                continue
            if not _OS_NAME.fullmatch(top.name):
                continue
            for version_dir in sorted(top.iterdir()):
                if version_dir.is_dir() and not version_dir.name.startswith("."):
                    found.extend(self._scan_version(top.name, version_dir))
        found.sort(key=lambda e: (e.os, e.version, e.name))
        return found

    def _scan_version(self, os_name: str | None, directory: Path) -> Iterator[ImageEntry]:
        for path in sorted(directory.iterdir()):
            name = path.name
            if name.startswith(".") or name.endswith(CHECKSUM_SUFFIX) or not path.is_file():
                continue
            owner = os_name or _os_of(None, name)
            yield ImageEntry(os=owner, version=directory.name, role=_role_of(owner, name),
                             name=name, path=path, size=path.stat().st_size,
                             sha256=self.recorded_sha256(path))

    def select(self, os_name: str | None = None, version: str | None = None,
               role: str | None = None) -> list[ImageEntry]:
        """The entries matching every given filter."""
        wanted_os = check_os_name(os_name) if os_name else None
        return [e for e in self.entries()
                if (wanted_os is None or e.os == wanted_os)
                and (version is None or e.version == version)
                and (role is None or e.role == role)]

    @staticmethod
    def verify(entry: ImageEntry) -> str:
        """``ok``, ``mismatch`` or ``no-checksum`` after re-hashing the file."""
        if entry.sha256 is None:
            return "no-checksum"
        return "ok" if sha256_of(entry.path) == entry.sha256 else "mismatch"

    # -- removing --------------------------------------------------------------------------

    def remove(self, os_name: str, version: str, role: str | None = None,
               name: str | None = None) -> list[ImageEntry]:
        """Delete the matching images and their checksums; empty directories go too.

        Raises :class:`ImageNotFound` when nothing matches.
        """
        os_name = check_os_name(os_name)
        matching = [e for e in self.select(os_name, version, role)
                    if name is None or e.name == name]
        if not matching:
            raise ImageNotFound(f"no {role or 'image'} of {os_name} {version} in {self.root}")
        for entry in matching:
            entry.path.unlink()
            with contextlib.suppress(FileNotFoundError):
                entry.path.with_name(entry.name + CHECKSUM_SUFFIX).unlink()
        directory = self.directory(os_name, version)
        fsync_dir(directory)
        for candidate in (directory, directory.parent):
            if candidate != self.root and candidate.is_dir() and not any(candidate.iterdir()):
                candidate.rmdir()
        return matching


def _os_of(os_name: str | None, name: str) -> str:
    """The OS of a file in a mayu version directory, from its name."""
    if os_name is not None and os_name not in MAYU_LAYOUT_OSES:
        return os_name
    for candidate in MAYU_LAYOUT_OSES:
        if name.startswith(candidate):
            return candidate
    return os_name or "-"


def _role_of(os_name: str, name: str) -> str:
    """The role whose file name is *name*, or ``file`` for anything else."""
    names = ROLE_FILES.get(os_name, GENERIC_ROLE_FILES)
    for role, file_name in names.items():
        if file_name == name:
            return role
    return "file"


__all__ = [
    "GENERIC_ROLE_FILES",
    "MAYU_LAYOUT_OSES",
    "ROLES",
    "ROLE_FILES",
    "ChecksumMismatch",
    "ImageEntry",
    "ImageError",
    "ImageNotFound",
    "ImageStore",
    "check_component",
    "check_os_name",
    "normalize_sha256",
    "parse_checksum_file",
    "sha256_of",
]
