"""Durable file writes: the one place pxestack replaces a file atomically.

Every file a reader must see whole (the DHCP lease journal's snapshot, the provisioning
store's records and keys, images and their checksums, TFTP uploads) is written the same
way: to a temporary file in the target's own directory (so the rename never crosses a
file system), ``fsync``-ed, renamed over the target, then the directory is ``fsync``-ed so
the rename itself survives a power loss.  A crash at any point leaves either the old file
or the new one, never a mix.

``os.write`` may write fewer bytes than asked (a signal, a full disk, a pipe or a large
buffer), so every write here goes through :func:`write_all`, which loops until all bytes
are written and raises when the kernel makes no progress.

Layer 0: it imports nothing from pxestack, so every layer (the DHCP core's journal
included) may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path
from types import TracebackType

#: Suffix of every temporary file (the provisioning store's ``.gitignore`` and start-up
#: clean-up match it).
TEMP_SUFFIX = ".tmp"


def write_all(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Write all of *data* to *fd*, however many ``os.write`` calls it takes.

    Returns the number of bytes written (``len(data)``).  Raises ``OSError`` (``EIO``) if
    a write makes no progress, rather than looping for ever.
    """
    total = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
    # One write takes everything almost always (a journal record, a TFTP block): only a
    # short write pays for the view the rest is written through.
    written = os.write(fd, data)
    if written == total:
        return total
    if written <= 0 and total:
        raise OSError(errno.EIO, f"write made no progress with {total} bytes left")
    view = memoryview(data).cast("B")[written:]
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, f"write made no progress with {len(view)} bytes left")
        view = view[written:]
    return total


def fsync_dir(directory: Path | str) -> None:
    """``fsync`` a directory so a rename or a new entry in it survives power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A temporary file beside *path*, unique per process and thread, hidden (``.``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{TEMP_SUFFIX}")


def replace_durably(source: Path | str, target: Path | str) -> None:
    """Rename *source* over *target* (a file or a directory) and ``fsync`` the directory
    that gained the entry (both, if the rename moved it between directories)."""
    os.replace(source, target)
    target_dir = Path(target).resolve().parent
    fsync_dir(target_dir)
    source_dir = Path(source).resolve().parent
    if source_dir != target_dir:
        fsync_dir(source_dir)


class AtomicFile:
    """A file written in pieces that appears under *path* whole, or not at all.

    Use it as a context manager: :meth:`write` the bytes, then :meth:`commit`; leaving the
    block without committing (an exception, or :meth:`discard`) removes the temporary file.

    :param path: the file to create or replace.
    :param mode: permission bits of the new file.
    :param temporary: the temporary file's path (in *path*'s directory); default
        :func:`temporary_name`.  A file left there by a crashed writer is truncated: the
        name is unique to a process and thread, so no live writer holds it.
    """

    def __init__(self, path: Path | str, mode: int = 0o644, *,
                 temporary: Path | None = None) -> None:
        self.path = Path(path)
        self.temporary = temporary if temporary is not None else temporary_name(self.path)
        if self.temporary.parent.resolve() != self.path.parent.resolve():
            raise ValueError(f"temporary file {self.temporary} is not beside {self.path}")
        self._fd: int | None = os.open(
            self.temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append *data* (all of it: see :func:`write_all`)."""
        if self._fd is None:
            raise ValueError(f"{self.temporary} is already closed")
        return write_all(self._fd, data)

    def flush(self) -> None:
        """``fsync`` and close the temporary file (before checking it, say); idempotent."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self) -> os.stat_result:
        """Make the bytes durable and visible under :attr:`path`; returns its stat."""
        try:
            self.flush()
            os.replace(self.temporary, self.path)
        except BaseException:
            self.discard()
            raise
        self._done = True
        fsync_dir(self.path.parent)
        return os.stat(self.path)

    def discard(self) -> None:
        """Drop what was written; :attr:`path` is left as it was."""
        if self._done:
            return
        self._done = True
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            os.unlink(self.temporary)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.discard()


def atomic_write(path: Path | str, data: bytes | bytearray | memoryview,
                 mode: int = 0o644) -> os.stat_result:
    """Write *data* to *path* so that readers see the old or the new bytes, never a mix.

    Temporary file beside *path*, ``fsync``, ``os.replace``, ``fsync`` of the directory.
    Returns the new file's stat.
    """
    with AtomicFile(path, mode) as out:
        out.write(data)
        return out.commit()


def replace_at(fd: int, directory_fd: int, temporary: str, name: str) -> None:
    """Commit a file written through *fd* as *temporary* inside the directory open as
    *directory_fd*: ``fsync`` and close *fd*, rename it to *name*, ``fsync`` the directory.

    The directory-descriptor form of :meth:`AtomicFile.commit`, for callers that opened
    the directory themselves so that no symbolic link is followed on the way (TFTP
    uploads).  *fd* is closed either way; *directory_fd* is left open.
    """
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, name, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
    os.fsync(directory_fd)


__all__ = [
    "TEMP_SUFFIX",
    "AtomicFile",
    "atomic_write",
    "fsync_dir",
    "replace_at",
    "replace_durably",
    "temporary_name",
    "write_all",
]
