"""``pxestack images fetch flatcar|fcos|debian``: vendor layouts, verification, resume,
signals.

Every download comes from :mod:`vendor_mirror` on 127.0.0.1; signatures are made with a
GPG key generated for the test run.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require
from vendor_mirror import (
    DEBIAN_FILES,
    FCOS_FILES,
    FCOS_VERSION,
    FLATCAR_FILES,
    FLATCAR_VERSION,
    Mirror,
    Signer,
    sha,
)

from pxestack.cli import main
from pxestack.cli.images import ReleaseProgress
from pxestack.provision.imagefetch import FetchStatus
from pxestack.provision.images import ImageStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY", "PXESTACK_IMAGES_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    require(shutil.which("gpg") is not None and shutil.which("gpgv") is not None,
            "needs gpg and gpgv (Debian packages gpg, gpgv)")
    made = Signer.make(tmp_path_factory.mktemp("signer"))
    yield made
    made.close()


@pytest.fixture
def mirror():
    served = Mirror()
    server, thread = served.serve()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def images(cache: Path, *argv: str) -> int:
    return main(["images", "--dir", str(cache), *argv])


def visible(cache: Path) -> list[str]:
    """Everything in the cache a flow or a listing can see (hidden staging excluded)."""
    if not cache.exists():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if not any(part.startswith(".") for part in p.relative_to(cache).parts))


# -- Flatcar -------------------------------------------------------------------------------


def test_flatcar_current_is_resolved_signed_and_stored_in_mayus_layout(
        tmp_path, mirror, signer, capsys):
    mirror.add_flatcar(signer)
    cache = tmp_path / "images"
    assert images(cache, "fetch", "flatcar", "--channel", "stable", "--base-url",
                  mirror.base, "--keyring", str(signer.keyring)) == 0, capsys.readouterr().err
    for name, data in FLATCAR_FILES.items():
        stored = cache / FLATCAR_VERSION / name
        assert stored.read_bytes() == data
        assert ImageStore.recorded_sha256(stored) == sha(data)
    captured = capsys.readouterr()
    assert "verified" in captured.err and "total" in captured.err
    assert "flatcar_production_image.bin.bz2" in captured.out
    assert not (cache / ".staging" / "flatcar").exists()
    # Complete already: a second run downloads nothing.
    mirror.requests.clear()
    assert images(cache, "fetch", "flatcar", "--base-url", mirror.base, "--keyring",
                  str(signer.keyring), "--quiet") == 0
    assert [r for r in mirror.requests if not r[1].endswith("version.txt")] == []


def test_flatcar_explicit_version_and_pxe_only(tmp_path, mirror, signer):
    mirror.add_flatcar(signer, channel="beta", version="4100.0.0")
    cache = tmp_path / "images"
    assert images(cache, "fetch", "flatcar", "--channel", "beta", "--version", "4100.0.0",
                  "--pxe-only", "--base-url", mirror.base, "--keyring", str(signer.keyring),
                  "--quiet") == 0
    assert sorted(p.name for p in (cache / "4100.0.0").iterdir()) == [
        "flatcar_production_pxe.vmlinuz", "flatcar_production_pxe.vmlinuz.sha256",
        "flatcar_production_pxe_image.cpio.gz", "flatcar_production_pxe_image.cpio.gz.sha256"]
    assert not any(path.endswith("version.txt") for _m, path, _r in mirror.requests)


def test_flatcar_bad_signature_publishes_nothing(tmp_path, mirror, signer, capsys):
    board = mirror.add_flatcar(signer)
    mirror.files[f"{board}/flatcar_production_pxe_image.cpio.gz.sig"] = signer.sign(b"other")
    cache = tmp_path / "images"
    assert images(cache, "fetch", "flatcar", "--version", FLATCAR_VERSION, "--base-url",
                  mirror.base, "--keyring", str(signer.keyring), "--quiet") == 1
    err = capsys.readouterr().err
    assert "flatcar_production_pxe_image.cpio.gz: signature check failed" in err
    assert "Traceback" not in err
    assert visible(cache) == []


def test_flatcar_needs_a_keyring_and_names_the_options(tmp_path, mirror, signer, capsys):
    mirror.add_flatcar(signer)
    cache = tmp_path / "images"
    assert images(cache, "fetch", "flatcar", "--base-url", mirror.base) == 2
    assert "--keyring" in capsys.readouterr().err
    assert images(cache, "fetch", "flatcar", "--channel", "nightly", "--keyring",
                  str(signer.keyring)) == 2
    assert "--channel 'nightly'" in capsys.readouterr().err
    assert images(cache, "fetch", "flatcar", "--stream", "stable") == 2
    assert "--stream is not used with flatcar" in capsys.readouterr().err
    assert images(cache, "fetch", "debian") == 2
    assert "--release" in capsys.readouterr().err
    assert images(cache, "fetch", "windows") == 2
    assert mirror.requests == []


# -- Fedora CoreOS -------------------------------------------------------------------------


def test_fcos_stream_metadata_sha256(tmp_path, mirror, capsys):
    mirror.add_fcos()
    cache = tmp_path / "images"
    assert images(cache, "fetch", "fcos", "--stream", "stable", "--base-url", mirror.base,
                  "--quiet") == 0, capsys.readouterr().err
    directory = cache / "fcos" / FCOS_VERSION
    assert (directory / "vmlinuz").read_bytes() == FCOS_FILES["kernel"]
    assert (directory / "initrd.img").read_bytes() == FCOS_FILES["initramfs"]
    assert (directory / "rootfs.img").read_bytes() == FCOS_FILES["rootfs"]
    assert ImageStore.recorded_sha256(directory / "rootfs.img") == sha(FCOS_FILES["rootfs"])


def test_fcos_takes_the_metal_pxe_artifacts_of_the_architecture(tmp_path, mirror):
    """The metadata lists every architecture, platform and format: only
    ``architectures.x86_64.artifacts.metal.formats.pxe`` is downloaded."""
    mirror.add_fcos()
    assert images(tmp_path / "images", "fetch", "fcos", "--base-url", mirror.base,
                  "--quiet") == 0
    gets = sorted(p for m, p, _r in mirror.requests if m == "GET")
    assert gets == sorted([
        "/streams/stable.json",
        f"/prod/streams/stable/builds/{FCOS_VERSION}/x86_64/"
        f"fedora-coreos-{FCOS_VERSION}-live-kernel-x86_64",
        f"/prod/streams/stable/builds/{FCOS_VERSION}/x86_64/"
        f"fedora-coreos-{FCOS_VERSION}-live-initramfs.x86_64.img",
        f"/prod/streams/stable/builds/{FCOS_VERSION}/x86_64/"
        f"fedora-coreos-{FCOS_VERSION}-live-rootfs.x86_64.img"])


def test_fcos_corrupted_file_is_refused_and_nothing_published(tmp_path, mirror, capsys):
    mirror.add_fcos()
    path = next(p for p in mirror.files if p.endswith("live-rootfs.x86_64.img"))
    mirror.files[path] = b"corrupted" + mirror.files[path][9:]
    cache = tmp_path / "images"
    assert images(cache, "fetch", "fcos", "--base-url", mirror.base, "--quiet") == 1
    err = capsys.readouterr().err
    assert "rootfs.img: SHA-256 is" in err and "Traceback" not in err
    assert visible(cache) == []
    # Fixed upstream: the next run reuses the two verified files and fetches the third.
    mirror.add_fcos()
    mirror.requests.clear()
    assert images(cache, "fetch", "fcos", "--base-url", mirror.base, "--quiet") == 0
    gets = [p for m, p, _r in mirror.requests if m == "GET"]
    assert [p for p in gets if "kernel" in p or "initramfs" in p] == []
    assert (cache / "fcos" / FCOS_VERSION / "rootfs.img").read_bytes() == FCOS_FILES["rootfs"]


def test_fcos_version_other_than_the_streams_is_a_usage_error(tmp_path, mirror, capsys):
    mirror.add_fcos()
    assert images(tmp_path / "images", "fetch", "fcos", "--version", "39.1", "--base-url",
                  mirror.base) == 2
    assert "--version 39.1" in capsys.readouterr().err


# -- Debian --------------------------------------------------------------------------------


def test_debian_sha256sums_without_a_keyring(tmp_path, mirror, capsys, monkeypatch):
    monkeypatch.setattr("pxestack.provision.imagefetch.DEFAULT_DEBIAN_KEYRING",
                        tmp_path / "absent.gpg")
    mirror.add_debian()
    cache = tmp_path / "images"
    assert images(cache, "fetch", "debian", "--release", "bookworm", "--base-url",
                  mirror.base, "--quiet") == 0, capsys.readouterr().err
    for name, data in DEBIAN_FILES.items():
        assert (cache / "debian" / "bookworm" / name).read_bytes() == data
    assert not any(path.endswith("Release") for _m, path, _r in mirror.requests)


def test_debian_signed_release_chain(tmp_path, mirror, signer, capsys):
    images_dir = mirror.add_debian(signer=signer)
    cache = tmp_path / "images"
    assert images(cache, "fetch", "debian", "--release", "bookworm", "--base-url",
                  mirror.base, "--keyring", str(signer.keyring)) == 0, capsys.readouterr().err
    assert "Release signature verified with" in capsys.readouterr().err
    # SHA256SUMS changed behind the Release file's back: refused.
    shutil.rmtree(cache)
    mirror.files[f"{images_dir}/SHA256SUMS"] += b"\n"
    assert images(cache, "fetch", "debian", "--release", "bookworm", "--base-url",
                  mirror.base, "--keyring", str(signer.keyring), "--quiet") == 1
    assert "does not match the SHA256 in" in capsys.readouterr().err
    assert visible(cache) == []


def test_debian_inrelease_first_then_release_gpg(tmp_path, mirror, signer, capsys):
    images_dir = mirror.add_debian(signer=signer)
    cache = tmp_path / "images"
    args = ("fetch", "debian", "--release", "bookworm", "--base-url", mirror.base,
            "--keyring", str(signer.keyring))
    assert images(cache, *args) == 0, capsys.readouterr().err
    assert "/dists/bookworm/InRelease signature verified with" in capsys.readouterr().err
    fetched = {p for m, p, _r in mirror.requests if m == "GET"}
    assert "/dists/bookworm/InRelease" in fetched
    assert not {"/dists/bookworm/Release", "/dists/bookworm/Release.gpg"} & fetched
    # A mirror without InRelease (404): Release and its detached Release.gpg.
    shutil.rmtree(cache)
    del mirror.files["/dists/bookworm/InRelease"]
    assert images(cache, *args) == 0, capsys.readouterr().err
    assert "/dists/bookworm/Release signature verified with" in capsys.readouterr().err
    assert (cache / "debian" / "bookworm" / "linux").read_bytes() == DEBIAN_FILES["linux"]
    assert images_dir.endswith("/images")


def test_debian_inrelease_is_read_only_where_signed(tmp_path, mirror, signer, capsys):
    """A line added after the signature of InRelease is not part of the signed text: a
    SHA256SUMS changed to match it is refused."""
    images_dir = mirror.add_debian(signer=signer)
    sums_path = f"{images_dir}/SHA256SUMS"
    forged = mirror.files[sums_path].replace(
        sha(DEBIAN_FILES["initrd.gz"]).encode(), sha(b"evil initrd").encode())
    mirror.files[sums_path] = forged
    mirror.files["/dists/bookworm/InRelease"] += (
        f"SHA256:\n {sha(forged)} {len(forged)} main/installer-amd64/current/images/"
        "SHA256SUMS\n").encode()
    cache = tmp_path / "images"
    assert images(cache, "fetch", "debian", "--release", "bookworm", "--base-url",
                  mirror.base, "--keyring", str(signer.keyring), "--quiet") == 1
    assert "SHA256SUMS does not match the SHA256 in" in capsys.readouterr().err
    assert visible(cache) == []


def test_debian_release_signed_by_another_key_is_refused(tmp_path, mirror, signer, capsys):
    other = Signer.make(tmp_path / "other", "someone else")
    try:
        mirror.add_debian(signer=other)
    finally:
        other.close()
    cache = tmp_path / "images"
    assert images(cache, "fetch", "debian", "--release", "bookworm", "--base-url",
                  mirror.base, "--keyring", str(signer.keyring), "--quiet") == 1
    err = capsys.readouterr().err
    assert "/dists/bookworm/InRelease: signature check failed" in err
    assert "Traceback" not in err
    assert visible(cache) == []


def test_debian_corrupted_initrd(tmp_path, mirror, capsys, monkeypatch):
    monkeypatch.setattr("pxestack.provision.imagefetch.DEFAULT_DEBIAN_KEYRING",
                        tmp_path / "absent.gpg")
    images_dir = mirror.add_debian()
    mirror.files[f"{images_dir}/netboot/debian-installer/amd64/initrd.gz"] = b"bad"
    cache = tmp_path / "images"
    assert images(cache, "fetch", "debian", "--release", "bookworm", "--base-url",
                  mirror.base, "--quiet") == 1
    assert "initrd.gz: SHA-256 is" in capsys.readouterr().err
    assert visible(cache) == []


# -- resume --------------------------------------------------------------------------------


def _rootfs_path(mirror: Mirror) -> str:
    return next(p for p in mirror.files if p.endswith("live-rootfs.x86_64.img"))


@pytest.mark.parametrize("range_support", [True, False])
def test_dropped_connection_is_resumed_with_range(tmp_path, mirror, capsys, range_support):
    mirror.add_fcos()
    mirror.range_support = range_support
    path = _rootfs_path(mirror)
    mirror.drop_after[path] = 5000
    cache = tmp_path / "images"
    assert images(cache, "fetch", "fcos", "--base-url", mirror.base, "--quiet") == 1
    err = capsys.readouterr().err
    assert "connection dropped" in err and "resume" in err
    assert visible(cache) == []
    part = cache / ".staging" / "fcos" / FCOS_VERSION / "rootfs.img.part"
    assert part.stat().st_size == 5000
    mirror.requests.clear()
    assert images(cache, "fetch", "fcos", "--base-url", mirror.base, "--quiet") == 0
    ranges = [r for m, p, r in mirror.requests if m == "GET" and p == path]
    assert ranges == ["bytes=5000-"]  # asked to resume; without Range support: 200, restart
    assert (cache / "fcos" / FCOS_VERSION / "rootfs.img").read_bytes() == FCOS_FILES["rootfs"]
    assert not (cache / ".staging" / "fcos").exists()


def test_resumed_bytes_of_another_upload_are_fetched_again(tmp_path, mirror):
    mirror.add_fcos()
    part = tmp_path / "images" / ".staging" / "fcos" / FCOS_VERSION / "rootfs.img.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from an older file")
    assert images(tmp_path / "images", "fetch", "fcos", "--base-url", mirror.base,
                  "--quiet") == 0
    stored = tmp_path / "images" / "fcos" / FCOS_VERSION / "rootfs.img"
    assert stored.read_bytes() == FCOS_FILES["rootfs"]


# -- progress ------------------------------------------------------------------------------


def test_progress_line_has_bytes_speed_and_eta():
    status = FetchStatus("fcos", "40", phase="downloading", file="rootfs.img", file_index=2,
                         file_count=3, file_done=1 << 20, file_size=4 << 20,
                         total_done=3 << 20, total_size=10 << 20, started=0.0,
                         file_started=0.0)
    line = ReleaseProgress.line(status, now=1.0)
    assert line == ("[2/3] rootfs.img 1.0 MiB/4.0 MiB 1.0 MiB/s ETA 0:03 | total "
                    "3.0 MiB/10.0 MiB 3.0 MiB/s ETA 0:02")
    # The API's form has the same figures, per file and in total.
    status.started = status.file_started = time.monotonic() - 1.0
    shown = status.to_json()
    assert (shown["file_done"], shown["file_size"], shown["total_done"], shown["total_size"]) \
        == (1 << 20, 4 << 20, 3 << 20, 10 << 20)
    assert 0.5 * (1 << 20) < shown["file_speed"] <= 1 << 20
    assert 1.5 < shown["file_eta"] <= 6 and 1.0 < shown["eta"] <= 4.7


def test_plain_progress_lines_in_logs():
    out = io.StringIO()
    progress = ReleaseProgress(out)
    status = FetchStatus("fcos", "40", file="vmlinuz", file_index=1, file_count=1,
                         file_size=100, total_size=100)
    progress("file", status)
    for _ in range(10):
        status.file_done += 10
        status.total_done += 10
        progress("progress", status)
    progress("file-done", status)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/1] vmlinuz: downloading"
    assert len(lines) == 5 and lines[-1].endswith("verified")
    assert "\r" not in out.getvalue()


# -- signals -------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "status", "word"), [
    (signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signals_end_cleanly_and_the_next_run_resumes(tmp_path, mirror, signum, status,
                                                      word):
    mirror.add_fcos()
    mirror.delay = 0.05  # ~20 KiB/s: the rootfs takes about a second
    cache = tmp_path / "images"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(name, None)
    argv = [sys.executable, "-m", "pxestack", "images", "--dir", str(cache), "fetch", "fcos",
            "--base-url", mirror.base, "--quiet"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        staging = cache / ".staging" / "fcos" / FCOS_VERSION
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            parts = list(staging.glob("*.part")) if staging.exists() else []
            if any(p.stat().st_size > 2048 for p in parts):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the download never started")
        process.send_signal(signum)
        _out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == status, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [f"pxestack images: {word}; run the same fetch again "
                                        "to resume"]
    assert visible(cache) == []
    mirror.delay = 0.0
    mirror.requests.clear()
    assert images(cache, "fetch", "fcos", "--base-url", mirror.base, "--quiet") == 0
    assert any(r and r != "bytes=0-" for m, _p, r in mirror.requests if m == "GET")
    assert (cache / "fcos" / FCOS_VERSION / "initrd.img").read_bytes() == FCOS_FILES[
        "initramfs"]


def test_a_complete_part_answered_416_is_verified_not_refetched(tmp_path, mirror,
                                                                monkeypatch):
    mirror.add_fcos()
    # Without sizes from HEAD the fetch asks for the rest of a complete part: 416.
    monkeypatch.setattr("pxestack.provision.imagefetch.remote_size", lambda url, timeout: None)
    staging = tmp_path / "images" / ".staging" / "fcos" / FCOS_VERSION
    staging.mkdir(parents=True)
    (staging / "rootfs.img.part").write_bytes(FCOS_FILES["rootfs"])
    assert images(tmp_path / "images", "fetch", "fcos", "--base-url", mirror.base,
                  "--quiet") == 0
    path = _rootfs_path(mirror)
    assert [r for m, p, r in mirror.requests if m == "GET" and p == path] == [
        f"bytes={len(FCOS_FILES['rootfs'])}-"]
    stored = tmp_path / "images" / "fcos" / FCOS_VERSION / "rootfs.img"
    assert stored.read_bytes() == FCOS_FILES["rootfs"]
