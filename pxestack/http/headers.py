"""Pure HTTP header decisions for the asset server: ranges, validators, preconditions.

Nothing here touches Twisted, sockets or a clock; every function takes plain values (the raw
header bytes, the file's size and modification time) and returns a plain decision, so the
rules of RFC 9110 are tested as a table and with hypothesis instead of through a server.

* :func:`parse_range` implements RFC 9110 §14.1-14.2 (``Range: bytes=...``) for a *single*
  range; several ranges are answered with the whole representation (§14.2 lets a server
  ignore Range), which is what iPXE, curl and wget are happy with.
* :func:`entity_tag` and :func:`evaluate_preconditions` implement §8.8.3 (ETag), §13.1.2
  (If-None-Match), §13.1.3 (If-Modified-Since), §13.1.5 (If-Range) and the evaluation order
  of §13.2.2.
* :func:`http_date` / :func:`parse_http_date` are the IMF-fixdate of §5.6.7.
"""

from __future__ import annotations

import email.utils
import mimetypes
from dataclasses import dataclass
from enum import Enum

#: Boot files whose type the system ``mime.types`` does not know or gets wrong for our use.
#: Firmware does not care about Content-Type, but browsers and curl users do.
_BOOT_TYPES = {
    ".efi": "application/efi",
    ".ipxe": "text/plain; charset=utf-8",
    ".kpxe": "application/octet-stream",
    ".pxe": "application/octet-stream",
    ".lkrn": "application/octet-stream",
    ".img": "application/octet-stream",
    ".squashfs": "application/octet-stream",
    ".cfg": "text/plain; charset=utf-8",
    ".iso": "application/x-iso9660-image",
}

#: A compressed file is sent as the compressed bytes; announcing ``Content-Encoding`` would
#: make curl ``--compressed`` and browsers unpack a kernel or initrd on the fly.
_COMPRESSED_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
    "br": "application/octet-stream",
}

DEFAULT_CONTENT_TYPE = "application/octet-stream"

_MIME = mimetypes.MimeTypes()


def content_type_for(name: str) -> str:
    """The Content-Type for a file *name*, by extension; ``application/octet-stream`` if unknown.

    Uses Python's built-in table (not the host's ``/etc/mime.types``) so that the answer is
    the same on every machine.
    """
    dot = name.rfind(".")
    if dot != -1:
        known = _BOOT_TYPES.get(name[dot:].lower())
        if known is not None:
            return known
    guessed, encoding = _MIME.guess_type(name, strict=False)
    if encoding is not None:
        return _COMPRESSED_TYPES.get(encoding, DEFAULT_CONTENT_TYPE)
    return guessed or DEFAULT_CONTENT_TYPE


# -- dates (RFC 9110 §5.6.7) -------------------------------------------------------------


def http_date(seconds: float) -> bytes:
    """*seconds* since the epoch as an IMF-fixdate, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    return email.utils.formatdate(int(seconds), usegmt=True).encode("ascii")


def parse_http_date(value: bytes) -> int | None:
    """Parse an HTTP date (any of the three §5.6.7 forms) to epoch seconds; None if invalid.

    A recipient that cannot parse the date ignores the header (§13.1.3), so garbage is
    returned as ``None`` rather than raised.
    """
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    parsed = email.utils.parsedate_tz(text)
    if parsed is None:
        return None
    try:
        return int(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


# -- validators (RFC 9110 §8.8) ------------------------------------------------------------


def entity_tag(size: int, mtime_ns: int, inode: int) -> bytes:
    """A strong entity tag for a file version: changes when size, mtime or inode change.

    Replacing a file with ``mv`` (new inode) or rewriting it in place (new mtime) both give a
    new tag, so a client can never splice a Range of the new file onto the old one.
    """
    return b'"%x-%x-%x"' % (mtime_ns, size, inode)


def _tag_list(value: bytes) -> list[bytes]:
    """The entity tags of an If-None-Match / If-Match field value (§13.1.1 list syntax)."""
    tags = []
    for item in value.split(b","):
        tag = item.strip()
        if tag:
            tags.append(tag)
    return tags


def _opaque(tag: bytes) -> bytes:
    """The opaque part of a tag for weak comparison (§8.8.3.2): drop a ``W/`` prefix."""
    return tag[2:] if tag.startswith(b"W/") else tag


def weak_match(value: bytes, current: bytes) -> bool:
    """Whether an If-None-Match *value* matches *current* by weak comparison (§13.1.2)."""
    tags = _tag_list(value)
    if b"*" in tags:
        return True
    mine = _opaque(current)
    return any(_opaque(tag) == mine for tag in tags)


# -- preconditions (RFC 9110 §13.2.2) ------------------------------------------------------


class Precondition(Enum):
    """The outcome of evaluating the conditional headers of a GET or HEAD."""

    #: Send the representation (200, or 206 if a Range applies).
    PROCEED = "proceed"
    #: 304 Not Modified: the client's cached copy is current.
    NOT_MODIFIED = "not-modified"


def evaluate_preconditions(
    *,
    if_none_match: bytes | None,
    if_modified_since: bytes | None,
    etag: bytes,
    mtime: int,
) -> Precondition:
    """Decide between 200/206 and 304 for a GET or HEAD (RFC 9110 §13.2.2 steps 3-4).

    If-None-Match takes precedence: when it is present, If-Modified-Since is ignored
    (§13.1.3: "A recipient MUST ignore If-Modified-Since if the request contains an
    If-None-Match header field").  An unparsable date is ignored, and so is a date in the
    future relative to the file (it cannot be a validator the server handed out).
    """
    if if_none_match is not None:
        return Precondition.NOT_MODIFIED if weak_match(if_none_match, etag) else (
            Precondition.PROCEED
        )
    if if_modified_since is not None:
        since = parse_http_date(if_modified_since)
        if since is not None and mtime <= since:
            return Precondition.NOT_MODIFIED
    return Precondition.PROCEED


def if_range_allows(value: bytes | None, *, etag: bytes, mtime: int) -> bool:
    """Whether a Range may be honoured given an If-Range field (RFC 9110 §13.1.5).

    Without If-Range the Range applies.  An entity tag must match by *strong* comparison
    (a weak tag never matches); an HTTP date must equal the Last-Modified exactly.
    Otherwise the whole representation is sent with 200.
    """
    if value is None:
        return True
    stripped = value.strip()
    if stripped.startswith((b'"', b"W/")):
        return not stripped.startswith(b"W/") and stripped == etag
    date = parse_http_date(stripped)
    return date is not None and date == mtime


# -- Range (RFC 9110 §14) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A satisfiable byte range: ``first`` to ``last`` inclusive, as in Content-Range."""

    first: int
    last: int

    @property
    def length(self) -> int:
        """The number of bytes in the range."""
        return self.last - self.first + 1

    def content_range(self, size: int) -> bytes:
        """The Content-Range field value for a 206 (§14.4): ``bytes first-last/size``."""
        return b"bytes %d-%d/%d" % (self.first, self.last, size)


class Unsatisfiable(Enum):
    """The Range is valid but selects nothing: answer 416 with ``bytes */size`` (§15.5.17)."""

    UNSATISFIABLE = "unsatisfiable"


UNSATISFIABLE = Unsatisfiable.UNSATISFIABLE

#: Longest Range field we parse; longer ones are ignored (a client listing thousands of
#: ranges to make the server do work is a known abuse, CVE-2011-3192 "Apache Killer").
MAX_RANGE_FIELD = 1024


def _digits(text: bytes) -> int | None:
    """A non-negative decimal integer, or None (no signs, spaces or empty strings)."""
    if not text or not text.isdigit():
        return None
    return int(text)


def parse_range(value: bytes | None, size: int) -> ByteRange | Unsatisfiable | None:
    """Interpret a Range field for a representation of *size* bytes.

    Returns a :class:`ByteRange` to answer 206, :data:`UNSATISFIABLE` to answer 416, or
    ``None`` to ignore the field and send the whole file with 200, which RFC 9110 §14.2
    allows for anything we do not want to serve as a single part:

    * a syntactically invalid field, another range unit, or ``first > last``;
    * more than one range (we do not produce ``multipart/byteranges``).

    Per §14.1.2: ``first-`` runs to the end; ``first-last`` is clamped to the end; a suffix
    ``-n`` selects the last *n* bytes (the whole file if *n* >= size).  A range whose first
    byte is at or past the end, or a suffix of length 0, is unsatisfiable.
    """
    if value is None or len(value) > MAX_RANGE_FIELD:
        return None
    unit, sep, spec = value.partition(b"=")
    if not sep or unit.strip().lower() != b"bytes":
        return None
    parts = [part.strip() for part in spec.split(b",")]
    parts = [part for part in parts if part]  # §5.6.1: empty list elements are allowed
    if len(parts) != 1:
        return None
    first_text, dash, last_text = parts[0].partition(b"-")
    if not dash:
        return None
    if not first_text:
        suffix = _digits(last_text)
        if suffix is None:
            return None
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return ByteRange(max(0, size - suffix), size - 1)
    first = _digits(first_text)
    if first is None:
        return None
    if last_text:
        last = _digits(last_text)
        if last is None or last < first:
            return None
    else:
        last = size - 1
    if first >= size:
        return UNSATISFIABLE
    return ByteRange(first, min(last, size - 1))


__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "MAX_RANGE_FIELD",
    "UNSATISFIABLE",
    "ByteRange",
    "Precondition",
    "Unsatisfiable",
    "content_type_for",
    "entity_tag",
    "evaluate_preconditions",
    "http_date",
    "if_range_allows",
    "parse_http_date",
    "parse_range",
    "weak_match",
]
