"""pxestack._fs: the atomic-write helper every durable file goes through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pxestack._fs import (
    AtomicFile,
    atomic_write,
    replace_at,
    replace_durably,
    temporary_name,
    write_all,
)


def short_writes(limit: int) -> object:
    real = os.write

    def write(fd: int, data: bytes) -> int:
        return real(fd, bytes(memoryview(data)[:limit]))

    return write


def test_atomic_write_replaces_the_file_whole_despite_short_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "conf.json"
    target.write_bytes(b"old")
    data = bytes(range(256)) * 40
    monkeypatch.setattr(os, "write", short_writes(7))
    stat = atomic_write(target, data, mode=0o600)
    monkeypatch.undo()
    assert target.read_bytes() == data
    assert stat.st_size == len(data) and stat.st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf.json"]  # no temporary left


def test_write_all_raises_when_the_kernel_makes_no_progress(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        monkeypatch.setattr(os, "write", lambda fd, data: 0)
        with pytest.raises(OSError, match="no progress"):
            write_all(fd, b"abc")
    finally:
        monkeypatch.undo()
        os.close(fd)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "image.bin"
    target.write_bytes(b"old image")
    with pytest.raises(RuntimeError), AtomicFile(target) as out:
        out.write(b"half of the new")
        raise RuntimeError("download failed")
    assert target.read_bytes() == b"old image"
    assert [p.name for p in tmp_path.iterdir()] == ["image.bin"]


def test_discard_after_flush_and_an_explicit_temporary(tmp_path: Path) -> None:
    target = tmp_path / "image.bin"
    part = tmp_path / ".part-image.bin"
    with AtomicFile(target, temporary=part) as out:
        out.write(b"new")
        out.flush()
        assert part.read_bytes() == b"new"
        out.discard()
    assert not part.exists() and not target.exists()


def test_the_temporary_file_must_be_beside_the_target(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="beside"):
        AtomicFile(tmp_path / "f", temporary=tmp_path / "other" / "f.tmp")
    assert temporary_name(tmp_path / "f").parent == tmp_path
    assert temporary_name(tmp_path / "f").name.startswith(".f.")


def test_replace_durably_moves_files_and_directories(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "a").write_bytes(b"a")
    replace_durably(staging / "a", staging / "b")
    replace_durably(staging, tmp_path / "published")
    assert (tmp_path / "published" / "b").read_bytes() == b"a"
    assert not staging.exists()


def test_replace_at_commits_inside_a_directory_descriptor(tmp_path: Path) -> None:
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = os.open(".upload.tmp", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=directory)
        write_all(fd, b"uploaded")
        replace_at(fd, directory, ".upload.tmp", "upload.bin")
    finally:
        os.close(directory)
    assert [p.name for p in tmp_path.iterdir()] == ["upload.bin"]
    assert (tmp_path / "upload.bin").read_bytes() == b"uploaded"
