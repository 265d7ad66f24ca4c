"""Where TFTP content comes from: the :class:`FileSource` seam and its implementations.

The seam has fbtftp's shape (its ``get_response_data``) and tx-tftp's ``IBackend``: the
server asks a source to *open* a path for a client and gets a :class:`Reader` back.  Sources
raise :class:`~pxestack.paths.PathNotFound` (sent as TFTP ERROR 1) or
:class:`~pxestack.paths.PathRefused` (ERROR 2); anything else they raise is logged and sent as
ERROR 0, so one broken source never takes the server down.

Implementations:

* :class:`FilesystemSource` - a directory, looked up with :func:`pxestack.paths.open_under_root`
  (``..``, NUL, drive letters and symlinks leaving the root refused; PXE backslashes mapped).
* :class:`CallableSource` - per-client dynamic content: a callable given the client and the
  normalized path returns bytes, text, a :class:`Reader`, or ``None`` for "not found".
* :class:`TemplateSource` - Jinja2 templates (``StrictUndefined``) rendered per client.
* :class:`ChainSource` - tries sources in order; "not found" falls through, a refusal does not.

Readers are sequential: the read session asks for each block once, in order, and keeps the
blocks it may have to send again itself.  That lets a reader stream generated content.

Uploads (WRQ) are refused unless an :class:`UploadDirectory` is configured; it writes each
upload to a temporary file and renames it into place only once the transfer completed.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import jinja2

from pxestack._fs import replace_at, write_all
from pxestack._types import Address
from pxestack.errors import PxeStackError
from pxestack.paths import (
    PathNotFound,
    PathRefused,
    normalize_request_path,
    open_parent_under_root,
    open_under_root,
)


@dataclass(frozen=True, slots=True)
class TftpClient:
    """Who is asking: the client's address (its TID) and the server address it reached."""

    address: Address
    server: Address | None = None

    @property
    def host(self) -> str:
        """The client's IP address as text."""
        return self.address[0]


@runtime_checkable
class Reader(Protocol):
    """Sequential access to one file's content."""

    def size(self) -> int | None:
        """The total size in octets, or ``None`` when unknown (then no tsize is offered)."""

    def readinto(self, buffer: memoryview) -> int:
        """Fill *buffer* from the current position; fewer octets only at the end (0 = EOF)."""

    def close(self) -> None:
        """Release the underlying resources; called exactly once."""


class FileSource(Protocol):
    """Opens content for a TFTP read request (the server's one content seam)."""

    def open(self, path: str, client: TftpClient) -> Reader:
        """Open *path* (the client's raw request) for *client*.

        Raises :class:`~pxestack.paths.PathNotFound` or :class:`~pxestack.paths.PathRefused`.
        """


class SourceFailed(PxeStackError):  # noqa: N818 - reads as the event it reports
    """A source could not produce content for a reason that is the operator's, not the
    client's (a template error, a failing callable); the client gets ERROR 0."""


class FileReader(io.FileIO):
    """A :class:`Reader` over an open file descriptor (owned: closed by :meth:`close`).

    An unbuffered ``FileIO``: its ``readinto`` is one ``read(2)`` straight into the
    session's buffer, called without any Python frame in between (the per-block path).
    On a regular file a read is short only at end of file.
    """

    def __init__(self, fd: int, size: int | None = None) -> None:
        super().__init__(fd, "rb", closefd=True)
        self._size = size if size is not None else os.fstat(fd).st_size

    def size(self) -> int | None:
        """The file's size when it was opened (``FileIO.size`` does not exist; no clash)."""
        return self._size

    def readv(self, buffers: list[memoryview]) -> int:
        """Fill several buffers in order with one ``readv(2)``; the read-ahead fast path."""
        return os.readv(self.fileno(), buffers)


class BytesReader:
    """A :class:`Reader` over bytes in memory (generated content)."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._offset = 0

    def size(self) -> int | None:
        """The length of the content."""
        return len(self._data)

    def readinto(self, buffer: memoryview) -> int:
        """Copy the next chunk into *buffer*."""
        chunk = self._data[self._offset : self._offset + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._offset += len(chunk)
        return len(chunk)

    def close(self) -> None:
        """Nothing to release."""


class NetasciiReader:
    """Converts another reader's bytes to netascii on the fly (RFC 1350 §1, RFC 764).

    Each LF becomes CR LF and each bare CR becomes CR NUL.  The converted size is unknown
    in advance, so no tsize is offered.  tftp-hpa's ``tftp`` uses netascii unless told
    ``-m binary``; boot firmware always asks for octet.
    """

    __slots__ = ("_inner", "_pending", "_scratch")

    def __init__(self, inner: Reader) -> None:
        self._inner = inner
        self._pending = bytearray()
        self._scratch = bytearray(8192)

    def size(self) -> int | None:
        """Unknown: conversion changes the length."""
        return None

    def readinto(self, buffer: memoryview) -> int:
        """Fill *buffer* with converted octets."""
        wanted = len(buffer)
        while len(self._pending) < wanted:
            got = self._inner.readinto(memoryview(self._scratch))
            if got == 0:
                break
            chunk = bytes(self._scratch[:got])
            self._pending += chunk.replace(b"\r", b"\r\x00").replace(b"\n", b"\r\n")
        count = min(wanted, len(self._pending))
        buffer[:count] = self._pending[:count]
        del self._pending[:count]
        return count

    def close(self) -> None:
        """Close the wrapped reader."""
        self._inner.close()


class FilesystemSource:
    """Serves regular files beneath *root*, refusing traversal and symlink escapes.

    Lookups go through :func:`pxestack.paths.open_under_root`, so the rules are the ones
    the HTTP asset server uses.  *lowercase* folds requests to lower case first, for
    Windows-built clients that request ``PXELINUX.0`` from a case-sensitive server.
    """

    def __init__(self, root: Path | str, *, lowercase: bool = False) -> None:
        self.root = Path(root)
        self.lowercase = lowercase

    def open(self, path: str, client: TftpClient) -> Reader:
        """Open *path* beneath the root."""
        fd, info = open_under_root(self.root, path.lower() if self.lowercase else path)
        return FileReader(fd, info.st_size)


#: What a :class:`CallableSource` callable may return.
Content = bytes | str | Reader | None


class CallableSource:
    """Per-client dynamic content from a callable ``(client, path) -> content``.

    The callable gets the normalized path (components joined with ``/``, no leading slash,
    backslashes mapped: ``pxelinux.cfg/01-52-54-00-12-34-56``), so it never sees ``..``.
    It returns bytes, text (encoded as UTF-8), a :class:`Reader`, or ``None`` for "not
    found".  It may raise :class:`~pxestack.paths.PathRefused` to deny a client.
    """

    def __init__(self, produce: Callable[[TftpClient, str], Content]) -> None:
        self.produce = produce

    def open(self, path: str, client: TftpClient) -> Reader:
        """Call the callable and wrap its answer."""
        normalized = "/".join(normalize_request_path(path))
        try:
            content = self.produce(client, normalized)
        except PathRefused:
            raise
        except Exception as exc:
            raise SourceFailed(f"content callable failed for {normalized!r}: {exc!r}") from exc
        if content is None:
            raise PathNotFound(f"{normalized!r} has no generated content")
        if isinstance(content, str):
            return BytesReader(content.encode("utf-8"))
        if isinstance(content, bytes | bytearray | memoryview):
            return BytesReader(bytes(content))
        return content


@dataclass(slots=True)
class _CachedTemplate:
    key: tuple[int, int, int]
    template: jinja2.Template


class TemplateSource:
    """Jinja2 templates beneath *root*, rendered per client.

    A request for ``pxelinux.cfg/default`` is served from ``pxelinux.cfg/default.j2``
    (*suffix*) found with the same safe lookup as :class:`FilesystemSource`.  Templates see
    ``client_ip``, ``client_port``, ``path`` and whatever *context* returns for the client.
    Undefined variables are errors (``StrictUndefined``), reported to the operator's log and
    answered with ERROR 0, never rendered as empty strings.  Compiled templates are cached
    and recompiled when the file changes.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        context: Callable[[TftpClient, str], Mapping[str, object]] | None = None,
        suffix: str = ".j2",
    ) -> None:
        self.root = Path(root)
        self.context = context
        self.suffix = suffix
        # Boot configs (PXELINUX, GRUB, iPXE) are plain text, not HTML: escaping would
        # corrupt them.  Values come from the operator's context, not from the client.
        self._environment = jinja2.Environment(
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # noqa: S701
            keep_trailing_newline=True,
        )
        self._cache: dict[str, _CachedTemplate] = {}

    def open(self, path: str, client: TftpClient) -> Reader:
        """Render the template for *path* with *client*'s variables."""
        normalized = "/".join(normalize_request_path(path))
        template = self._template(normalized)
        variables: dict[str, object] = {
            "client_ip": client.host,
            "client_port": client.address[1],
            "path": normalized,
        }
        try:
            if self.context is not None:
                variables.update(self.context(client, normalized))
            text = template.render(variables)
        except PathRefused:
            raise
        except Exception as exc:
            raise SourceFailed(f"template {normalized + self.suffix!r} failed: {exc}") from exc
        return BytesReader(text.encode("utf-8"))

    def _template(self, normalized: str) -> jinja2.Template:
        fd, info = open_under_root(self.root, normalized + self.suffix)
        try:
            key = (info.st_ino, info.st_mtime_ns, info.st_size)
            cached = self._cache.get(normalized)
            if cached is not None and cached.key == key:
                return cached.template
            with os.fdopen(os.dup(fd), "rb") as handle:
                raw = handle.read()
        finally:
            os.close(fd)
        try:
            template = self._environment.from_string(raw.decode("utf-8"))
        except (UnicodeDecodeError, jinja2.TemplateError) as exc:
            raise SourceFailed(f"template {normalized + self.suffix!r}: {exc}") from exc
        self._cache[normalized] = _CachedTemplate(key, template)
        return template


class ChainSource:
    """Tries each source in order; :class:`~pxestack.paths.PathNotFound` falls through.

    A :class:`~pxestack.paths.PathRefused` (bad grammar, symlink escape) stops the chain:
    a later source must not serve what an earlier one refused for security reasons.
    """

    def __init__(self, *sources: FileSource) -> None:
        self.sources = sources

    def open(self, path: str, client: TftpClient) -> Reader:
        """The first source's content that exists."""
        last: PathNotFound | None = None
        for source in self.sources:
            try:
                return source.open(path, client)
            except PathNotFound as exc:
                last = exc
        raise last or PathNotFound("no source configured")


class UploadExists(PathRefused):
    """The upload target exists and overwriting is off (TFTP ERROR 6)."""


class Upload(Protocol):
    """One file being received through a WRQ."""

    def write(self, data: bytes) -> None:
        """Append *data*."""

    def commit(self) -> None:
        """The transfer completed: make the file visible under its name."""

    def abort(self) -> None:
        """The transfer failed: discard what was written."""


class UploadTarget(Protocol):
    """Accepts WRQ uploads.  Without one, the server refuses every WRQ (ERROR 2)."""

    def create(self, path: str, client: TftpClient) -> Upload:
        """Start receiving *path* from *client*; raises PathRefused/UploadExists."""


@dataclass(slots=True)
class _DirectoryUpload:
    directory_fd: int
    name: str
    temporary: str
    fd: int
    max_bytes: int
    written: int = 0
    finished: bool = field(default=False)

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.written > self.max_bytes:
            raise OSError(errno.EFBIG, "upload larger than the configured limit")
        write_all(self.fd, data)

    def commit(self) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            replace_at(self.fd, self.directory_fd, self.temporary, self.name)
        finally:
            os.close(self.directory_fd)

    def abort(self) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            os.close(self.fd)
            os.unlink(self.temporary, dir_fd=self.directory_fd)
        finally:
            os.close(self.directory_fd)


class UploadDirectory:
    """Writes WRQ uploads beneath *root*, atomically (temp file + fsync + rename + fsync dir).

    Directories are not created and no symlink is followed on the way.  An existing file is
    kept (ERROR 6, "File already exists") unless *overwrite* is set.  *max_bytes* bounds
    one upload.
    """

    def __init__(self, root: Path | str, *, overwrite: bool = False,
                 max_bytes: int = 1 << 30) -> None:
        self.root = Path(root)
        self.overwrite = overwrite
        self.max_bytes = max_bytes

    def create(self, path: str, client: TftpClient) -> Upload:
        """Open a temporary file next to the target."""
        directory_fd, name = open_parent_under_root(self.root, path)
        try:
            try:
                existing = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if not self.overwrite:
                    raise UploadExists(f"{name!r} exists")
                if not stat.S_ISREG(existing.st_mode):
                    raise PathRefused(f"{name!r} is not a regular file")
            temporary = f".{name[:200]}.{secrets.token_hex(6)}.part"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=directory_fd)
        except OSError as exc:
            os.close(directory_fd)
            raise PathRefused(f"cannot create {name!r}: {exc.strerror}") from None
        except BaseException:
            os.close(directory_fd)
            raise
        return _DirectoryUpload(directory_fd, name, temporary, fd, self.max_bytes)


__all__ = [
    "BytesReader",
    "CallableSource",
    "ChainSource",
    "Content",
    "FileReader",
    "FileSource",
    "FilesystemSource",
    "NetasciiReader",
    "Reader",
    "SourceFailed",
    "TemplateSource",
    "TftpClient",
    "Upload",
    "UploadDirectory",
    "UploadExists",
    "UploadTarget",
]
