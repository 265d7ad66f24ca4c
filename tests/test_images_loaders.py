"""``pxestack images loaders``: Debian's signed shim and GRUB and PXELINUX into the TFTP root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pxestack.cli import main
from pxestack.cli.images import DEBIAN_LOADERS


def fake_packages(root: Path) -> None:
    for _key, _name, path, _package in DEBIAN_LOADERS:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(path.encode())


def test_copies_the_package_files_under_their_served_names(tmp_path, capsys) -> None:
    source = tmp_path / "sys"
    fake_packages(source)
    tftp = tmp_path / "tftp"
    argv = ["images", "-o", "json", "loaders", "--tftp-root", str(tftp),
            "--source-root", str(source)]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["copied"] * 4
    assert (tftp / "grubx64.efi").read_bytes() == (
        b"usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed")
    assert (tftp / "shimx64.efi").read_bytes() == b"usr/lib/shim/shimx64.efi.signed"
    assert {p.name for p in tftp.iterdir()} == {
        "shimx64.efi", "grubx64.efi", "lpxelinux.0", "ldlinux.c32"}
    assert main(argv) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)] == ["unchanged"] * 4


def test_file_names_and_root_come_from_the_config(tmp_path) -> None:
    source = tmp_path / "sys"
    fake_packages(source)
    config = tmp_path / "pxestack.yaml"
    config.write_text(
        f"tftp: {{root: {tmp_path / 'root'}}}\n"
        "dhcp: {mode: proxy, boot: {shim_file: efi/shim.efi, grub_file: efi/grubx64.efi}}\n"
    )
    assert main(["images", "--config", str(config), "loaders",
                 "--source-root", str(source)]) == 0
    assert (tmp_path / "root" / "efi" / "shim.efi").is_file()
    assert (tmp_path / "root" / "efi" / "grubx64.efi").is_file()


def test_a_missing_package_is_named(tmp_path, capsys) -> None:
    assert main(["images", "loaders", "--tftp-root", str(tmp_path / "t"),
                 "--source-root", str(tmp_path)]) == 3
    assert "apt-get install shim-signed" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/usr/lib/shim/shimx64.efi.signed").is_file(),
                    reason="shim-signed is not installed")
def test_the_real_packages(tmp_path) -> None:
    assert main(["images", "loaders", "--tftp-root", str(tmp_path)]) == 0
    assert (tmp_path / "shimx64.efi").read_bytes()[:2] == b"MZ"
