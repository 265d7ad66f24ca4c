"""pxestack.paths: request-path grammar and symlink-safe opening (no escape from the root)."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pxestack.errors import PxeStackError
from pxestack.paths import (
    MAX_COMPONENT_LENGTH,
    MAX_REQUEST_LENGTH,
    PathNotFound,
    PathRefused,
    normalize_request_path,
    open_under_root,
)


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("pxelinux.0", ("pxelinux.0",)),
        # tftp-hpa -s semantics: an absolute request is relative to the root.
        ("/pxelinux.0", ("pxelinux.0",)),
        ("//boot//x64/", ("boot", "x64")),
        # WDS / Windows-built PXE loaders send backslash paths.
        ("boot\\x64\\wdsnbp.com", ("boot", "x64", "wdsnbp.com")),
        ("\\boot\\bcd", ("boot", "bcd")),
        ("./a/./b", ("a", "b")),
        # "...." is an ordinary (odd) file name, not a parent reference.
        ("....//x", ("....", "x")),
        ("pxelinux.cfg/01-52-54-00-12-34-56", ("pxelinux.cfg", "01-52-54-00-12-34-56")),
    ],
)
def test_normalize_accepts(requested: str, expected: tuple[str, ...]) -> None:
    assert normalize_request_path(requested) == expected


@pytest.mark.parametrize(
    "requested",
    [
        "",
        "/",
        ".",
        "..",
        "../etc/passwd",
        "a/../../etc/passwd",
        "a\\..\\..\\etc",
        "..\\windows",
        "a/b/..",
        "file\x00.txt",
        "a\nb",
        "tab\there",
        "del\x7f",
        "C:\\boot\\bcd",
        "c:/x",
        "x" * (MAX_REQUEST_LENGTH + 1),
        "a/" + "y" * (MAX_COMPONENT_LENGTH + 1),
        "/".join(["d"] * 65),
    ],
)
def test_normalize_refuses(requested: str) -> None:
    with pytest.raises(PathRefused) as info:
        normalize_request_path(requested)
    assert info.value.reason


_component_chars = st.sampled_from(list(string.ascii_letters + string.digits + "._-+~:"))
_separator = st.sampled_from(["/", "\\", "//", "/./", "\\\\"])
_component = st.one_of(
    st.text(_component_chars, min_size=1, max_size=12),
    st.sampled_from([".", "..", "...", "....", "C:", "\x00", "\n"]),
)


@given(st.lists(st.tuples(_separator, _component), max_size=8), st.booleans())
def test_normalize_grammar(parts: list[tuple[str, str]], leading: bool) -> None:
    """Whatever is requested, the result has only safe components or the request is refused."""
    text = "".join(sep + comp for sep, comp in parts)
    if not leading:
        text = text.lstrip("/\\")
    try:
        result = normalize_request_path(text)
    except PathRefused:
        return
    assert result
    for component in result:
        assert component not in ("", ".", "..")
        assert "/" not in component and "\\" not in component
        assert "\x00" not in component
    # Normalizing the normal form is the identity.
    assert normalize_request_path("/".join(result)) == result


@given(st.text(max_size=300))
def test_normalize_never_raises_anything_else(text: str) -> None:
    try:
        result = normalize_request_path(text)
    except PathRefused:
        return
    assert all(c not in ("..", ".", "") for c in result)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A root with files, a subdirectory, and a secret next to (outside) the root."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "file.txt").write_bytes(b"inside")
    (root / "sub" / "deep.bin").write_bytes(b"deep")
    (tmp_path / "secret").write_bytes(b"SECRET")
    return root


def _read(root: Path, requested: str) -> bytes:
    fd, info = open_under_root(root, requested)
    try:
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    assert info.st_size == len(data)
    return data


def test_open_plain_and_nested(tree: Path) -> None:
    assert _read(tree, "file.txt") == b"inside"
    assert _read(tree, "/sub/deep.bin") == b"deep"
    assert _read(tree, "sub\\deep.bin") == b"deep"


def test_missing_file_is_not_found(tree: Path) -> None:
    with pytest.raises(PathNotFound):
        open_under_root(tree, "nope")
    with pytest.raises(PathNotFound):
        open_under_root(tree, "file.txt/below")


def test_directory_is_refused(tree: Path) -> None:
    with pytest.raises(PathRefused) as info:
        open_under_root(tree, "sub")
    assert not isinstance(info.value, PathNotFound)


def test_fifo_is_refused_without_blocking(tree: Path) -> None:
    os.mkfifo(tree / "pipe")
    with pytest.raises(PathRefused):
        open_under_root(tree, "pipe")


def test_symlink_escape_file_is_refused(tree: Path) -> None:
    (tree / "escape").symlink_to(tree.parent / "secret")
    with pytest.raises(PathRefused):
        open_under_root(tree, "escape")


def test_relative_symlink_escape_is_refused(tree: Path) -> None:
    (tree / "sub" / "up").symlink_to("../../secret")
    with pytest.raises(PathRefused):
        open_under_root(tree, "sub/up")


def test_symlinked_directory_escape_is_refused(tree: Path) -> None:
    (tree / "etc").symlink_to(tree.parent)
    with pytest.raises(PathRefused):
        open_under_root(tree, "etc/secret")


def test_symlink_inside_root_is_followed(tree: Path) -> None:
    (tree / "sub" / "alias").symlink_to("../file.txt")
    (tree / "absolute").symlink_to(tree / "sub" / "deep.bin")
    (tree / "dirlink").symlink_to("sub")
    assert _read(tree, "sub/alias") == b"inside"
    assert _read(tree, "absolute") == b"deep"
    assert _read(tree, "dirlink/deep.bin") == b"deep"


def test_root_itself_may_be_a_symlink(tree: Path) -> None:
    link = tree.parent / "rootlink"
    link.symlink_to(tree)
    (tree / "abs").symlink_to(link / "file.txt")
    assert _read(link, "file.txt") == b"inside"


def test_symlink_loop_is_refused(tree: Path) -> None:
    (tree / "a").symlink_to("b")
    (tree / "b").symlink_to("a")
    with pytest.raises(PathRefused):
        open_under_root(tree, "a")


def test_dangling_symlink_is_not_found(tree: Path) -> None:
    (tree / "dangling").symlink_to("missing")
    with pytest.raises(PathNotFound):
        open_under_root(tree, "dangling")


def test_symlink_to_root_is_refused(tree: Path) -> None:
    (tree / "self").symlink_to(".")
    with pytest.raises(PathRefused):
        open_under_root(tree, "self")


def test_missing_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PathRefused):
        open_under_root(tmp_path / "absent", "x")


def test_path_refused_is_a_pxestack_error() -> None:
    assert issubclass(PathRefused, PxeStackError)
    assert issubclass(PathNotFound, PathRefused)


@given(
    st.lists(
        st.sampled_from(["..", ".", "sub", "file.txt", "escape", "etc", "secret", "\\", "//"]),
        min_size=1,
        max_size=6,
    )
)
def test_no_request_reaches_the_secret(tmp_path_factory: pytest.TempPathFactory,
                                       parts: list[str]) -> None:
    """Any path grammar over a tree with escaping symlinks never yields the outside file."""
    base = tmp_path_factory.mktemp("grammar")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "file.txt").write_bytes(b"inside")
    (base / "secret").write_bytes(b"SECRET")
    (root / "escape").symlink_to(base / "secret")
    (root / "etc").symlink_to(base)
    (root / "sub" / "back").symlink_to("..")
    try:
        data = _read(root, "/".join(parts))
    except PathRefused:
        return
    assert data == b"inside"
