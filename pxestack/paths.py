"""Safe lookup of a client-requested file name beneath a served root directory.

One resolver for every protocol that serves files (the TFTP root and the HTTP asset
directory), so a path rule fixed once is fixed everywhere (traversal and symlink escapes; see
docs/reference/hostile-inputs.md).

Two steps:

:func:`normalize_request_path`
    Pure string grammar.  Maps PXE-style backslashes to ``/`` (Windows-built boot
    loaders such as WDS's ``boot\\x64\\wdsnbp.com`` and some PXELINUX configurations send
    them), strips leading slashes (``/pxelinux.0`` means "in the root", as tftp-hpa's
    ``-s`` mode treats it), and refuses ``..``, NUL, control characters, drive letters and
    overlong names.  Returns the path as a tuple of components.

:func:`open_under_root`
    Opens the file by walking the components one at a time with ``os.open(...,
    dir_fd=parent, O_NOFOLLOW)``, so no step can be redirected outside the root by a
    symlink, even one swapped in while the walk runs (a TOCTOU race).  Symlinks whose
    target stays inside the root are followed *by this module* (resolved lexically against
    the components walked so far, and re-walked from the root with ``O_NOFOLLOW``); any
    symlink that would leave the root, and any loop, is refused.  Only regular files are
    returned: directories, FIFOs, sockets and device nodes are refused without being opened
    (opening a FIFO would block, opening a tape device can rewind it).

This module is in layer 0 (standard library only) so that the wire, core and adapter layers
can all use it.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from pxestack.errors import PxeStackError

#: Longest request accepted, in characters.  RFC 1350 sets no limit; 1024 is far above any
#: real boot file name and keeps very long hostile requests cheap.
MAX_REQUEST_LENGTH = 1024

#: Longest single component, in characters (NAME_MAX on Linux file systems).
MAX_COMPONENT_LENGTH = 255

#: Most path components accepted in one request.
MAX_COMPONENTS = 64

#: Most symlinks followed while resolving one request (Linux's own limit is 40).
MAX_SYMLINKS = 40

# A leading DOS drive letter ("C:", "c:\\boot") means the client wants an absolute path.
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")

# C0 controls and DEL.  A file name has no business containing them, and they break logs.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: if a FIFO is swapped in between the lstat and the open, the open must not hang.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


class PathRefused(PxeStackError):  # noqa: N818 - reads as the event it reports
    """A requested path may not be served; :attr:`reason` says why (for logs, not clients).

    Protocol adapters map this to an "access violation" answer (TFTP ERROR 2, HTTP 403),
    except for the :class:`PathNotFound` subclass ("file not found", TFTP ERROR 1, HTTP 404).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PathNotFound(PathRefused):
    """The path is well-formed and stays inside the root, but no such file exists."""


def normalize_request_path(requested: str) -> tuple[str, ...]:
    """Turn a client's requested file name into a tuple of safe path components.

    Rules (hostile names are expected; see docs/reference/hostile-inputs.md):

    * backslashes become ``/``; PXE clients built for Windows servers send
      ``boot\\pxelinux.0``;
    * leading slashes are dropped, so an absolute request is taken relative to the root;
    * empty components and ``.`` are dropped (``a//./b`` is ``a/b``);
    * ``..`` anywhere is refused, not resolved: there is no legitimate use for it in a
      boot file name and resolving it invites ``....//`` style tricks;
    * NUL and other control characters, a leading drive letter (``C:``), more than
      :data:`MAX_REQUEST_LENGTH` characters, a component longer than
      :data:`MAX_COMPONENT_LENGTH` or more than :data:`MAX_COMPONENTS` components are
      refused;
    * a request that names nothing (``""``, ``"/"``, ``"."``) is refused.

    Raises :class:`PathRefused`.
    """
    if not isinstance(requested, str):
        raise PathRefused(f"path must be text, got {type(requested).__name__}")
    if len(requested) > MAX_REQUEST_LENGTH:
        raise PathRefused(f"path longer than {MAX_REQUEST_LENGTH} characters")
    if _CONTROL_CHARACTERS.search(requested):
        raise PathRefused("path contains NUL or a control character")
    components: list[str] = []
    for part in requested.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise PathRefused("path contains a '..' component")
        if len(part) > MAX_COMPONENT_LENGTH:
            raise PathRefused(f"path component longer than {MAX_COMPONENT_LENGTH} characters")
        components.append(part)
    if not components:
        raise PathRefused("path names no file")
    if _DRIVE_LETTER.match(components[0]):
        raise PathRefused("path starts with a drive letter")
    if len(components) > MAX_COMPONENTS:
        raise PathRefused(f"path has more than {MAX_COMPONENTS} components")
    return tuple(components)


def open_under_root(root: Path, requested: str) -> tuple[int, os.stat_result]:
    """Open the regular file *requested* names beneath *root* for reading.

    Returns ``(fd, stat)``; the caller owns the descriptor and must close it.  *root*
    itself may be a symlink (it is the operator's choice); nothing beneath it may lead
    outside it.  Raises :class:`PathNotFound` when the file does not exist and
    :class:`PathRefused` for every other reason (bad grammar, symlink escape, symlink loop,
    not a regular file, permission denied, I/O error).
    """
    components = list(normalize_request_path(requested))
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise PathRefused(f"root {str(root)!r} cannot be opened: {exc.strerror}") from None
    try:
        return _walk(root, root_fd, components)
    finally:
        os.close(root_fd)


def open_parent_under_root(root: Path, requested: str) -> tuple[int, str]:
    """Open the directory that would hold *requested* beneath *root*, for creating a file.

    Returns ``(directory_fd, name)``; the caller owns the descriptor.  Stricter than
    :func:`open_under_root`: no symlink at all is followed below the root (an upload must
    never land elsewhere), and missing directories are not created.  Raises
    :class:`PathRefused` (or :class:`PathNotFound` for a missing directory).
    """
    *parents, name = normalize_request_path(requested)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise PathRefused(f"root {str(root)!r} cannot be opened: {exc.strerror}") from None
    for part in parents:
        try:
            child = _open_at(fd, part, _DIRECTORY_FLAGS)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        fd = child
    return fd, name


def _walk(root: Path, root_fd: int, components: list[str]) -> tuple[int, os.stat_result]:
    """Resolve *components* from *root_fd*, following only symlinks that stay inside."""
    symlinks_followed = 0
    while True:
        fds: list[int] = []
        try:
            parent_fd = root_fd
            for index, name in enumerate(components):
                last = index == len(components) - 1
                info = _lstat_at(parent_fd, name)
                if stat.S_ISLNK(info.st_mode):
                    symlinks_followed += 1
                    if symlinks_followed > MAX_SYMLINKS:
                        raise PathRefused("too many symlinks (a loop?)")
                    target = _readlink_at(parent_fd, name)
                    components = _splice_symlink(root, components[:index], target,
                                                 components[index + 1:])
                    break  # re-walk from the root with the rewritten components
                if not last:
                    if not stat.S_ISDIR(info.st_mode):
                        raise PathNotFound(f"{name!r} is not a directory")
                    parent_fd = _open_at(parent_fd, name, _DIRECTORY_FLAGS)
                    fds.append(parent_fd)
                    continue
                if not stat.S_ISREG(info.st_mode):
                    raise PathRefused(f"{name!r} is not a regular file")
                fd = _open_at(parent_fd, name, _FILE_FLAGS)
                opened = os.fstat(fd)
                if (
                    not stat.S_ISREG(opened.st_mode)
                    or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino)
                ):
                    os.close(fd)
                    raise PathRefused(f"{name!r} changed while it was being opened")
                os.set_blocking(fd, True)
                return fd, opened
            else:  # pragma: no cover - the loop always returns or breaks
                raise AssertionError("unreachable")
        finally:
            for fd in fds:
                os.close(fd)


def _splice_symlink(
    root: Path, parents: Sequence[str], target: str, rest: Sequence[str]
) -> list[str]:
    """The component list after replacing one symlink by its *target*.

    A relative target is resolved lexically against *parents* (the directory holding the
    link); ``..`` that would climb above the root is refused.  An absolute target is
    accepted only when it names a place inside the root's real path.
    """
    if not target:
        raise PathRefused("empty symlink")
    if target.startswith("/"):
        real_root = os.path.realpath(root)
        if os.path.commonpath([real_root, target]) != real_root:
            raise PathRefused("symlink points outside the root")
        base: list[str] = []
        target = os.path.relpath(target, real_root)
    else:
        base = list(parents)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not base:
                raise PathRefused("symlink points outside the root")
            base.pop()
            continue
        base.append(part)
    combined = base + list(rest)
    if not combined:
        raise PathRefused("symlink resolves to the root directory")
    return combined


def _lstat_at(parent_fd: int, name: str) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError as exc:
        raise _refusal(exc, name) from None


def _readlink_at(parent_fd: int, name: str) -> str:
    try:
        return os.readlink(name, dir_fd=parent_fd)
    except OSError as exc:
        raise _refusal(exc, name) from None


def _open_at(parent_fd: int, name: str, flags: int) -> int:
    try:
        return os.open(name, flags, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            # O_NOFOLLOW met a symlink swapped in after the lstat: refuse, never follow.
            raise PathRefused(f"{name!r} is a symlink (or changed while being opened)") from None
        raise _refusal(exc, name) from None


def _refusal(exc: OSError, name: str) -> PathRefused:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return PathNotFound(f"{name!r} does not exist")
    if exc.errno == errno.ENAMETOOLONG:
        return PathRefused(f"{name!r} is too long")
    return PathRefused(f"{name!r}: {exc.strerror or exc}")


__all__ = [
    "MAX_COMPONENTS",
    "MAX_COMPONENT_LENGTH",
    "MAX_REQUEST_LENGTH",
    "PathNotFound",
    "PathRefused",
    "normalize_request_path",
    "open_parent_under_root",
    "open_under_root",
]
