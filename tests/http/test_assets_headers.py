"""The pure header rules of the asset server (pxestack.http.headers), RFC 9110 by the table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pxestack.http.headers import (
    UNSATISFIABLE,
    ByteRange,
    Precondition,
    content_type_for,
    entity_tag,
    evaluate_preconditions,
    http_date,
    if_range_allows,
    parse_http_date,
    parse_range,
    weak_match,
)

SIZE = 1000


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (b"bytes=0-0", ByteRange(0, 0)),  # first byte
        (b"bytes=999-999", ByteRange(999, 999)),  # last byte
        (b"bytes=999-", ByteRange(999, 999)),
        (b"bytes=0-", ByteRange(0, 999)),
        (b"bytes=500-2000", ByteRange(500, 999)),  # last clamped to the end (§14.1.2)
        (b"bytes=-1", ByteRange(999, 999)),  # suffix: the last byte
        (b"bytes=-100", ByteRange(900, 999)),
        (b"bytes=-5000", ByteRange(0, 999)),  # suffix longer than the file: all of it
        (b"Bytes = 10-19", ByteRange(10, 19)),  # unit is case-insensitive
        (b"bytes=10-19,", ByteRange(10, 19)),  # empty list elements are allowed (§5.6.1)
        (b"bytes=1000-", UNSATISFIABLE),  # first byte past the end
        (b"bytes=1000-1000", UNSATISFIABLE),
        (b"bytes=5000-6000", UNSATISFIABLE),
        (b"bytes=-0", UNSATISFIABLE),  # empty suffix
        (None, None),
        (b"bytes=5-4", None),  # first > last: invalid, so ignored
        (b"bytes=0-1,5-6", None),  # several ranges: answered with the whole file
        (b"items=0-1", None),  # another unit
        (b"bytes=abc", None),
        (b"bytes=-", None),
        (b"bytes=+1-2", None),
        (b"bytes= 1 - 2", None),
        (b"bytes=0-1" + b",0-1" * 2000, None),  # overlong: ignored outright
        (b"bytes=0-99999999999999999999999", ByteRange(0, 999)),
    ],
)
def test_parse_range_table(field: bytes | None, expected: object) -> None:
    assert parse_range(field, SIZE) == expected


def test_every_range_of_an_empty_file_is_unsatisfiable() -> None:
    assert parse_range(b"bytes=0-", 0) is UNSATISFIABLE
    assert parse_range(b"bytes=-10", 0) is UNSATISFIABLE


def test_content_range_form() -> None:
    assert ByteRange(0, 9).content_range(10) == b"bytes 0-9/10"
    assert ByteRange(5, 5).length == 1


@given(
    size=st.integers(min_value=0, max_value=10**12),
    first=st.integers(min_value=0, max_value=10**12 + 10),
    last=st.one_of(st.none(), st.integers(min_value=0, max_value=10**12 + 10)),
)
def test_first_last_ranges_match_the_rfc_model(size: int, first: int, last: int | None) -> None:
    field = b"bytes=%d-%s" % (first, b"" if last is None else b"%d" % last)
    got = parse_range(field, size)
    if last is not None and last < first:
        assert got is None
    elif first >= size:
        assert got is UNSATISFIABLE
    else:
        end = size - 1 if last is None else min(last, size - 1)
        assert got == ByteRange(first, end)
        assert 1 <= got.length <= size


@given(size=st.integers(min_value=0, max_value=10**9), suffix=st.integers(0, 2 * 10**9))
def test_suffix_ranges_match_the_rfc_model(size: int, suffix: int) -> None:
    got = parse_range(b"bytes=-%d" % suffix, size)
    if suffix == 0 or size == 0:
        assert got is UNSATISFIABLE
    else:
        assert got == ByteRange(max(0, size - suffix), size - 1)


@given(st.binary(max_size=64))
def test_parse_range_never_raises(field: bytes) -> None:
    got = parse_range(field, SIZE)
    assert got is None or got is UNSATISFIABLE or (
        isinstance(got, ByteRange) and 0 <= got.first <= got.last < SIZE
    )


ETAG = entity_tag(10, 1_700_000_000_000_000_000, 42)
MTIME = 1_700_000_000


def test_entity_tag_changes_with_each_input() -> None:
    tags = {
        ETAG,
        entity_tag(11, 1_700_000_000_000_000_000, 42),
        entity_tag(10, 1_700_000_000_000_000_001, 42),
        entity_tag(10, 1_700_000_000_000_000_000, 43),
    }
    assert len(tags) == 4
    assert ETAG.startswith(b'"') and ETAG.endswith(b'"')


@pytest.mark.parametrize(
    ("if_none_match", "if_modified_since", "expected"),
    [
        (None, None, Precondition.PROCEED),
        (ETAG, None, Precondition.NOT_MODIFIED),
        (b"W/" + ETAG, None, Precondition.NOT_MODIFIED),  # weak comparison (§13.1.2)
        (b'"other", ' + ETAG, None, Precondition.NOT_MODIFIED),
        (b"*", None, Precondition.NOT_MODIFIED),
        (b'"other"', None, Precondition.PROCEED),
        (None, http_date(MTIME), Precondition.NOT_MODIFIED),
        (None, http_date(MTIME + 60), Precondition.NOT_MODIFIED),
        (None, http_date(MTIME - 1), Precondition.PROCEED),
        (None, b"not a date", Precondition.PROCEED),  # ignored (§13.1.3)
        (None, b"\xff\xfe", Precondition.PROCEED),
        # If-None-Match wins over If-Modified-Since (§13.1.3)
        (b'"other"', http_date(MTIME + 60), Precondition.PROCEED),
    ],
)
def test_preconditions(
    if_none_match: bytes | None, if_modified_since: bytes | None, expected: Precondition
) -> None:
    got = evaluate_preconditions(
        if_none_match=if_none_match, if_modified_since=if_modified_since,
        etag=ETAG, mtime=MTIME,
    )
    assert got is expected


def test_weak_match_ignores_blank_elements() -> None:
    assert weak_match(b" , " + ETAG + b" ,", ETAG)
    assert not weak_match(b"", ETAG)


@pytest.mark.parametrize(
    ("if_range", "allowed"),
    [
        (None, True),
        (ETAG, True),
        (b'"stale"', False),
        (b"W/" + ETAG, False),  # strong comparison only (§13.1.5)
        (http_date(MTIME), True),
        (http_date(MTIME - 1), False),
        (b"garbage", False),
    ],
)
def test_if_range(if_range: bytes | None, allowed: bool) -> None:
    assert if_range_allows(if_range, etag=ETAG, mtime=MTIME) is allowed


@given(st.integers(min_value=0, max_value=2**33))
def test_http_date_round_trips(seconds: int) -> None:
    text = http_date(seconds)
    assert text.endswith(b" GMT")
    assert parse_http_date(text) == seconds


def test_obsolete_date_forms_are_understood() -> None:
    # RFC 9110 §5.6.7: recipients accept RFC 850 and asctime forms too.
    assert parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT") == 784111777
    assert parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT") == 784111777


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ipxe.efi", "application/efi"),
        ("boot.ipxe", "text/plain; charset=utf-8"),
        ("undionly.kpxe", "application/octet-stream"),
        ("vmlinuz", "application/octet-stream"),
        ("initrd.img", "application/octet-stream"),
        ("initrd.gz", "application/gzip"),  # never Content-Encoding: gzip
        ("rootfs.tar.xz", "application/x-xz"),
        ("config.json", "application/json"),
        ("index.html", "text/html"),
        ("README", "application/octet-stream"),
        ("SHA256SUMS.TXT", "text/plain"),
    ],
)
def test_content_type_by_extension(name: str, expected: str) -> None:
    assert content_type_for(name) == expected
