"""Content sources: filesystem, per-client callables, Jinja2 templates, chains, uploads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pxestack.paths import PathNotFound, PathRefused
from pxestack.tftp.source import (
    BytesReader,
    CallableSource,
    ChainSource,
    FileReader,
    FilesystemSource,
    NetasciiReader,
    Reader,
    SourceFailed,
    TemplateSource,
    TftpClient,
    UploadDirectory,
    UploadExists,
)

CLIENT = TftpClient(("198.18.0.2", 2000), ("198.18.0.1", 69))


def read_all(reader: Reader, chunk: int = 7) -> bytes:
    out = bytearray()
    buffer = bytearray(chunk)
    while True:
        count = reader.readinto(memoryview(buffer))
        out += buffer[:count]
        if count < chunk:
            break
    reader.close()
    return bytes(out)


def test_filesystem_source(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "pxelinux.0").write_bytes(b"loader")
    source = FilesystemSource(tmp_path)
    reader = source.open("\\boot\\pxelinux.0", CLIENT)
    assert reader.size() == 6
    assert read_all(reader) == b"loader"
    with pytest.raises(PathNotFound):
        source.open("boot/missing", CLIENT)
    with pytest.raises(PathRefused):
        source.open("../x", CLIENT)


def test_filesystem_source_lowercase(tmp_path: Path) -> None:
    """Windows-built clients may ask PXELINUX.0 from a case-sensitive root."""
    (tmp_path / "pxelinux.0").write_bytes(b"x")
    assert read_all(FilesystemSource(tmp_path, lowercase=True).open("PXELINUX.0", CLIENT))
    with pytest.raises(PathNotFound):
        FilesystemSource(tmp_path).open("PXELINUX.0", CLIENT)


def test_file_reader_readv(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(bytes(range(10)))
    reader = FileReader(os.open(tmp_path / "f", os.O_RDONLY))
    first, second = bytearray(4), bytearray(8)
    assert reader.readv([memoryview(first), memoryview(second)]) == 10
    assert bytes(first) == bytes(range(4)) and bytes(second[:6]) == bytes(range(4, 10))
    reader.close()


def test_callable_source_gets_normalized_path_and_client() -> None:
    seen: list[tuple[TftpClient, str]] = []

    def produce(client: TftpClient, path: str) -> str | None:
        seen.append((client, path))
        return f"hello {client.host}" if path == "pxelinux.cfg/default" else None

    source = CallableSource(produce)
    assert read_all(source.open("/pxelinux.cfg\\default", CLIENT)) == b"hello 198.18.0.2"
    assert seen == [(CLIENT, "pxelinux.cfg/default")]
    with pytest.raises(PathNotFound):
        source.open("other", CLIENT)
    with pytest.raises(PathRefused):
        source.open("../../etc/passwd", CLIENT)
    assert len(seen) == 2  # the refused request never reached the callable


def test_callable_source_returns_bytes_or_reader_and_wraps_failures() -> None:
    assert read_all(CallableSource(lambda c, p: b"raw").open("x", CLIENT)) == b"raw"
    reader = BytesReader(b"stream")
    assert CallableSource(lambda c, p: reader).open("x", CLIENT) is reader

    def deny(client: TftpClient, path: str) -> bytes:
        raise PathRefused("not for you")

    with pytest.raises(PathRefused):
        CallableSource(deny).open("x", CLIENT)

    def broken(client: TftpClient, path: str) -> bytes:
        raise KeyError("backend")

    with pytest.raises(SourceFailed):
        CallableSource(broken).open("x", CLIENT)


def test_template_source(tmp_path: Path) -> None:
    (tmp_path / "pxelinux.cfg").mkdir()
    template = tmp_path / "pxelinux.cfg" / "default.j2"
    template.write_text("host={{ client_ip }} role={{ role }} path={{ path }}\n")
    source = TemplateSource(tmp_path, context=lambda client, path: {"role": "web"})
    text = read_all(source.open("pxelinux.cfg/default", CLIENT))
    assert text == b"host=198.18.0.2 role=web path=pxelinux.cfg/default\n"
    # Edited templates are recompiled.
    template.write_text("v2 {{ client_port }}")
    os.utime(template, ns=(1, 1))
    assert read_all(source.open("pxelinux.cfg/default", CLIENT)) == b"v2 2000"
    with pytest.raises(PathNotFound):
        source.open("missing", CLIENT)


def test_template_undefined_variable_is_an_error(tmp_path: Path) -> None:
    """StrictUndefined: a missing variable never renders as an empty string."""
    (tmp_path / "t.j2").write_text("{{ nope }}")
    with pytest.raises(SourceFailed):
        TemplateSource(tmp_path).open("t", CLIENT)
    (tmp_path / "bad.j2").write_text("{% if %}")
    with pytest.raises(SourceFailed):
        TemplateSource(tmp_path).open("bad", CLIENT)


def test_chain_source(tmp_path: Path) -> None:
    (tmp_path / "static.bin").write_bytes(b"static")
    chain = ChainSource(
        CallableSource(lambda c, p: b"dynamic" if p == "dyn" else None),
        FilesystemSource(tmp_path),
    )
    assert read_all(chain.open("dyn", CLIENT)) == b"dynamic"
    assert read_all(chain.open("static.bin", CLIENT)) == b"static"
    with pytest.raises(PathNotFound):
        chain.open("neither", CLIENT)

    def refuse(client: TftpClient, path: str) -> bytes:
        raise PathRefused("blocked")

    with pytest.raises(PathRefused):  # a refusal stops the chain
        ChainSource(CallableSource(refuse), FilesystemSource(tmp_path)).open("static.bin",
                                                                            CLIENT)


def test_netascii_reader() -> None:
    reader = NetasciiReader(BytesReader(b"line1\nline2\r\n" * 50))
    assert reader.size() is None
    assert read_all(reader, chunk=5) == b"line1\r\nline2\r\x00\r\n" * 50


def test_upload_directory_rules(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    uploads = tmp_path / "up"
    (uploads / "sub").mkdir(parents=True)
    (uploads / "link").symlink_to(outside)
    target = UploadDirectory(uploads, max_bytes=10)
    upload = target.create("sub/a.txt", CLIENT)
    upload.write(b"12345")
    upload.commit()
    assert (uploads / "sub" / "a.txt").read_bytes() == b"12345"
    with pytest.raises(UploadExists):
        target.create("sub/a.txt", CLIENT)
    with pytest.raises(PathRefused):
        target.create("link/evil", CLIENT)  # no symlink is followed for uploads
    with pytest.raises(PathNotFound):
        target.create("nodir/x", CLIENT)
    big = target.create("big", CLIENT)
    with pytest.raises(OSError):
        big.write(b"x" * 11)
    big.abort()
    assert sorted(p.name for p in uploads.iterdir()) == ["link", "sub"]
    assert list(outside.iterdir()) == []
