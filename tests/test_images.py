"""``pxestack images`` and the image cache: layout, checksums, atomic writes, fetch.

Downloads come from an HTTP server this test starts on 127.0.0.1; nothing leaves the
machine.  The last test serves an added image through the provisioning API's ``/images/``
endpoint to prove the layout is the one it (and mayu) reads.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import pytest_twisted
import treq
from conftest import require
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.web.server import Site

from pxestack.cli import main
from pxestack.cli.images import ProgressBar, human_bytes
from pxestack.provision.images import (
    ImageError,
    ImageStore,
    parse_checksum_file,
)

KERNEL = b"\x7fKERNEL" + bytes(range(256)) * 300
INITRD = b"070701" + b"initrd-bytes" * 5000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """The local test server must be reached directly, whatever the environment says."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY", "PXESTACK_IMAGES_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sources(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "vmlinuz").write_bytes(KERNEL)
    (src / "initrd").write_bytes(INITRD)
    return src


def images(cache: Path, *argv: str) -> int:
    return main(["images", "--dir", str(cache), *argv])


# -- add / list / remove -------------------------------------------------------------------


def test_add_uses_mayus_layout_with_sha256sum_files(tmp_path, sources, capsys):
    cache = tmp_path / "images"
    assert images(cache, "add", "flatcar", "3975.2.0", "--kernel", str(sources / "vmlinuz"),
                  "--initrd", str(sources / "initrd")) == 0
    version_dir = cache / "3975.2.0"
    assert (version_dir / "flatcar_production_pxe.vmlinuz").read_bytes() == KERNEL
    assert (version_dir / "flatcar_production_pxe_image.cpio.gz").read_bytes() == INITRD
    assert (version_dir / "flatcar_production_pxe.vmlinuz.sha256").read_text() == (
        f"{sha(KERNEL)}  flatcar_production_pxe.vmlinuz\n")
    # The sidecars are what sha256sum -c expects.
    if shutil.which("sha256sum"):
        checked = subprocess.run(["sha256sum", "-c", "flatcar_production_pxe.vmlinuz.sha256",
                                  "flatcar_production_pxe_image.cpio.gz.sha256"],
                                 cwd=version_dir, capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not [p for p in version_dir.iterdir() if p.name.startswith(".")]
    out = capsys.readouterr().out
    assert "flatcar_production_pxe.vmlinuz" in out and sha(KERNEL)[:16] in out


def test_other_oses_get_their_own_directory(tmp_path, sources):
    cache = tmp_path / "images"
    assert images(cache, "add", "fcos", "41.20241109.3.0", "--kernel",
                  str(sources / "vmlinuz"), "--rootfs", str(sources / "initrd")) == 0
    assert (cache / "fcos" / "41.20241109.3.0" / "vmlinuz").read_bytes() == KERNEL
    assert (cache / "fcos" / "41.20241109.3.0" / "rootfs.img").read_bytes() == INITRD
    entries = ImageStore(cache).entries()
    assert [(e.os, e.version, e.role) for e in entries] == [
        ("fcos", "41.20241109.3.0", "rootfs"), ("fcos", "41.20241109.3.0", "kernel")]


def test_list_filters_json_and_verify(tmp_path, sources, capsys):
    cache = tmp_path / "images"
    assert images(cache, "add", "flatcar", "1.0.0", "--kernel", str(sources / "vmlinuz")) == 0
    assert images(cache, "add", "flatcar", "2.0.0", "--kernel", str(sources / "vmlinuz"),
                  "--initrd", str(sources / "initrd")) == 0
    assert images(cache, "add", "generic", "12", "--file", f"memtest={sources / 'initrd'}") == 0
    capsys.readouterr()
    assert images(cache, "-o", "json", "list", "--version", "2.0.0") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["role"], e["size"], e["sha256"]) for e in listed] == [
        ("kernel", len(KERNEL), sha(KERNEL)), ("initrd", len(INITRD), sha(INITRD))]
    assert images(cache, "list", "--os", "generic", "-o", "json") == 0
    assert [(e["name"], e["role"]) for e in json.loads(capsys.readouterr().out)] == [
        ("memtest", "file")]
    assert images(cache, "list", "--verify") == 0
    assert capsys.readouterr().out.count(" ok\n") == 4
    # Corrupt one file behind the cache's back: --verify finds it and exits 1.
    (cache / "2.0.0" / "flatcar_production_pxe.vmlinuz").write_bytes(b"tampered")
    assert images(cache, "list", "--verify", "-o", "json") == 1
    statuses = {(e["version"], e["role"]): e["status"]
                for e in json.loads(capsys.readouterr().out)}
    assert statuses[("2.0.0", "kernel")] == "mismatch"
    assert statuses[("1.0.0", "kernel")] == "ok"


def test_mayu_cache_without_checksums_is_listed(tmp_path):
    """An existing mayu images directory (no .sha256 files, a coreos-version file)."""
    version_dir = tmp_path / "images" / "1298.5.0"
    version_dir.mkdir(parents=True)
    (version_dir / "coreos_production_pxe.vmlinuz").write_bytes(b"k")
    (version_dir / "coreos-version").write_text("COREOS_VERSION=1298.5.0\n")
    (tmp_path / "images" / "qemu" / "1298.5.0").mkdir(parents=True)
    (tmp_path / "images" / "qemu" / "1298.5.0" / "coreos_production_qemu.vmlinuz").write_bytes(
        b"q")
    entries = ImageStore(tmp_path / "images").entries()
    assert {(e.os, e.version, e.role, e.sha256) for e in entries} == {
        ("coreos", "1298.5.0", "kernel", None), ("coreos", "1298.5.0", "file", None),
        ("qemu", "1298.5.0", "file", None)}
    assert ImageStore.verify(entries[0]) == "no-checksum"


def test_add_is_idempotent_and_refuses_silent_replacement(tmp_path, sources, capsys):
    cache = tmp_path / "images"
    kernel = str(sources / "vmlinuz")
    assert images(cache, "add", "flatcar", "1.0.0", "--kernel", kernel) == 0
    assert images(cache, "add", "flatcar", "1.0.0", "--kernel", kernel) == 0
    other = sources / "other"
    other.write_bytes(b"a different kernel")
    assert images(cache, "add", "flatcar", "1.0.0", "--kernel", str(other)) == 1
    assert "--force" in capsys.readouterr().err
    target = cache / "1.0.0" / "flatcar_production_pxe.vmlinuz"
    assert target.read_bytes() == KERNEL
    assert images(cache, "add", "flatcar", "1.0.0", "--kernel", str(other), "--force") == 0
    assert target.read_bytes() == b"a different kernel"
    assert ImageStore.recorded_sha256(target) == sha(b"a different kernel")


def test_add_checks_an_expected_checksum(tmp_path, sources, capsys):
    cache = tmp_path / "images"
    kernel = str(sources / "vmlinuz")
    assert images(cache, "add", "flatcar", "1.0.0", "--kernel", kernel,
                  "--sha256", "0" * 64) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert not (cache / "1.0.0" / "flatcar_production_pxe.vmlinuz").exists()
    assert not [p for p in (cache / "1.0.0").iterdir()]  # no partial file left
    assert images(cache, "add", "flatcar", "1.0.0", "--kernel", kernel,
                  "--sha256", sha(KERNEL).upper()) == 0


@pytest.mark.parametrize("argv", [
    ["add", "flatcar", "1.0.0"],  # nothing to add
    ["add", "flatcar", "../etc", "--kernel", "/dev/null"],  # traversal in the version
    ["add", "Flat car", "1", "--kernel", "/dev/null"],  # bad OS name
    ["add", "flatcar", "1", "--file", "noequals"],
    ["add", "flatcar", "1", "--file", "a=/dev/null", "--file", "b=/dev/null",
     "--sha256", "0" * 64],
    ["fetch", "ftp://127.0.0.1/x", "flatcar", "1", "--no-verify"],
])
def test_usage_errors_exit_2_or_1_without_writing(tmp_path, argv, capsys):
    cache = tmp_path / "images"
    status = images(cache, *argv)
    assert status in (1, 2)
    assert capsys.readouterr().err.startswith("pxestack images: ")
    assert not cache.exists() or not any(cache.rglob("*"))


def test_no_directory_is_a_usage_error(capsys):
    assert main(["images", "list"]) == 2
    assert "--dir" in capsys.readouterr().err


def test_directory_from_the_configuration_file(tmp_path, sources, capsys):
    cache = tmp_path / "from-config"
    config = tmp_path / "pxestack.yaml"
    config.write_text(
        "provision:\n"
        f"  cluster_dir: {tmp_path / 'cluster'}\n"
        f"  images_dir: {cache}\n"
        "  default_os_version: 1.0.0\n"
        "  network:\n"
        "    ip_range: {start: 198.18.10.10, end: 198.18.10.20}\n"
        "    subnet_size: 24\n"
        "    subnet_gateway: 198.18.10.1\n"
    )
    assert main(["images", "--config", str(config), "add", "flatcar", "1.0.0",
                 "--kernel", str(sources / "vmlinuz")]) == 0, capsys.readouterr().err
    assert (cache / "1.0.0" / "flatcar_production_pxe.vmlinuz").exists()


def test_remove_deletes_images_checksums_and_empty_directories(tmp_path, sources, capsys):
    cache = tmp_path / "images"
    assert images(cache, "add", "flatcar", "1.0.0", "--kernel", str(sources / "vmlinuz"),
                  "--initrd", str(sources / "initrd")) == 0
    assert images(cache, "add", "fcos", "41", "--kernel", str(sources / "vmlinuz")) == 0
    assert images(cache, "remove", "flatcar", "1.0.0", "--role", "initrd") == 0
    assert sorted(p.name for p in (cache / "1.0.0").iterdir()) == [
        "flatcar_production_pxe.vmlinuz", "flatcar_production_pxe.vmlinuz.sha256"]
    assert images(cache, "remove", "flatcar", "1.0.0") == 0
    assert images(cache, "remove", "fcos", "41") == 0
    assert sorted(p.name for p in cache.iterdir()) == []
    assert images(cache, "remove", "fcos", "41") == 3
    assert "no image" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "name", "expected"), [
    (f"{'a' * 64}  flatcar_production_pxe.vmlinuz\n", None, "a" * 64),
    (f"{'a' * 64}  x\n{'b' * 64} *dir/vmlinuz\n", "vmlinuz", "b" * 64),  # binary-mode marker
    (f"SHA256 (vmlinuz) = {'C' * 64}\n", "vmlinuz", "c" * 64),  # BSD / openssl format
    (f"# comment\n{'d' * 64}\n", "anything", "d" * 64),  # bare hash
])
def test_checksum_file_formats(text, name, expected):
    assert parse_checksum_file(text, name) == expected


@pytest.mark.parametrize("text", ["", "not a checksum\n",
                                  f"{'a' * 64}  one\n{'b' * 64}  two\n"])
def test_checksum_file_without_an_answer(text):
    with pytest.raises(ImageError):
        parse_checksum_file(text, "three")


def test_progress_bar_redraws_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    now = [0.0]
    stream = Tty()
    bar = ProgressBar("vmlinuz", 4 << 20, stream, clock=lambda: now[0])
    for _ in range(4):
        now[0] += 1.0
        bar.update(1 << 20)
    bar.finish()
    text = stream.getvalue()
    assert text.count("\r") == 5 and text.endswith("\n")
    assert "[" + "#" * 30 + "] 100.0% 4.0 MiB/4.0 MiB 1.0 MiB/s" in text
    assert " 25.0% " in text


def test_progress_bar_in_logs_prints_quarters():
    stream = io.StringIO()
    bar = ProgressBar("initrd", 100, stream, clock=lambda: 1.0)
    for _ in range(100):
        bar.update(1)
    bar.finish()
    lines = stream.getvalue().splitlines()
    assert [line.split("] ")[1].split("%")[0].strip() for line in lines] == [
        "25.0", "50.0", "75.0", "100.0"]
    assert human_bytes(512) == "512 B" and human_bytes(3 << 30) == "3.0 GiB"


# -- fetch from a local HTTP server --------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the test's directory; ``/short/...`` lies about Content-Length."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/short/"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(KERNEL)))
            self.end_headers()
            self.wfile.write(KERNEL[:1000])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def web(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "flatcar_production_pxe.vmlinuz").write_bytes(KERNEL)
    (root / "flatcar_production_pxe_image.cpio.gz").write_bytes(INITRD)
    (root / "SHA256SUMS").write_text(
        f"{sha(INITRD)}  flatcar_production_pxe_image.cpio.gz\n"
        f"{sha(KERNEL)}  flatcar_production_pxe.vmlinuz\n")

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_fetch_verifies_and_stores_with_progress(tmp_path, web, capsys):
    _root, base = web
    cache = tmp_path / "images"
    assert images(cache, "fetch", f"{base}/flatcar_production_pxe.vmlinuz", "flatcar",
                  "3975.2.0", "--role", "kernel", "--sha256", sha(KERNEL)) == 0
    captured = capsys.readouterr()
    assert "100.0%" in captured.err  # the progress bar went to stderr
    assert "flatcar_production_pxe.vmlinuz" in captured.out
    stored = cache / "3975.2.0" / "flatcar_production_pxe.vmlinuz"
    assert stored.read_bytes() == KERNEL
    assert ImageStore.recorded_sha256(stored) == sha(KERNEL)


def test_fetch_reads_the_checksum_from_a_checksum_file(tmp_path, web, capsys):
    _root, base = web
    cache = tmp_path / "images"
    assert images(cache, "fetch", f"{base}/flatcar_production_pxe_image.cpio.gz", "flatcar",
                  "3975.2.0", "--sha256-url", f"{base}/SHA256SUMS", "--quiet") == 0
    assert capsys.readouterr().err == ""
    assert (cache / "3975.2.0" / "flatcar_production_pxe_image.cpio.gz").read_bytes() == INITRD


@pytest.mark.parametrize(("path", "extra", "message"), [
    ("/flatcar_production_pxe.vmlinuz", ["--sha256", "0" * 64], "checksum mismatch"),
    ("/short/flatcar_production_pxe.vmlinuz", ["--sha256", sha(KERNEL)], "truncated"),
    ("/missing", ["--sha256", sha(KERNEL)], "HTTP 404"),
    ("/flatcar_production_pxe.vmlinuz", ["--sha256-url", "/missing"], "HTTP 404"),
    ("/flatcar_production_pxe.vmlinuz", ["--sha256", sha(KERNEL), "--max-bytes", "1000"],
     "--max-bytes"),
])
def test_fetch_failures_store_nothing(tmp_path, web, capsys, path, extra, message):
    _root, base = web
    cache = tmp_path / "images"
    extra = [base + e if e.startswith("/") else e for e in extra]
    status = images(cache, "fetch", base + path, "flatcar", "1.0.0", "--role", "kernel",
                    "--quiet", *extra)
    assert status == 1
    assert message in capsys.readouterr().err
    leftovers = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert leftovers == []


def test_fetch_refuses_to_skip_verification_silently(tmp_path, web, capsys):
    _root, base = web
    cache = tmp_path / "images"
    url = f"{base}/flatcar_production_pxe.vmlinuz"
    assert images(cache, "fetch", url, "flatcar", "1.0.0", "--quiet") == 2
    assert "unverified" in capsys.readouterr().err
    assert images(cache, "fetch", url, "flatcar", "1.0.0", "--quiet", "--no-verify") == 0
    assert (cache / "1.0.0" / "flatcar_production_pxe.vmlinuz").read_bytes() == KERNEL


def _gpg(home: Path, *argv: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", "--quiet",
                           "--pinentry-mode", "loopback", "--passphrase", "", *argv],
                          input=data, capture_output=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def test_fetch_checks_a_detached_signature_with_gpgv(tmp_path, web, capsys):
    require(shutil.which("gpg") is not None and shutil.which("gpgv") is not None,
            "needs gpg and gpgv (Debian packages gpg, gpgv)")
    root, base = web
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    try:
        _gpg(home, "--quick-gen-key", "pxestack test <test@example.invalid>", "ed25519",
             "sign", "never")
        keyring = tmp_path / "signing-key.gpg"
        keyring.write_bytes(_gpg(home, "--export"))
        (root / "flatcar_production_pxe.vmlinuz.sig").write_bytes(
            _gpg(home, "--detach-sign", "--output", "-",
                 str(root / "flatcar_production_pxe.vmlinuz")))
        (root / "forged.sig").write_bytes(_gpg(home, "--detach-sign", "--output", "-",
                                               str(root / "SHA256SUMS")))
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                       capture_output=True, check=False, timeout=30)
    cache = tmp_path / "images"
    url = f"{base}/flatcar_production_pxe.vmlinuz"
    assert images(cache, "fetch", url, "flatcar", "1.0.0", "--role", "kernel", "--quiet",
                  "--keyring", str(keyring), "--signature-url", f"{base}/forged.sig") == 1
    assert "signature check failed" in capsys.readouterr().err
    assert not (cache / "1.0.0" / "flatcar_production_pxe.vmlinuz").exists()
    assert images(cache, "fetch", url, "flatcar", "1.0.0", "--role", "kernel", "--quiet",
                  "--keyring", str(keyring)) == 0, capsys.readouterr().err
    assert (cache / "1.0.0" / "flatcar_production_pxe.vmlinuz").read_bytes() == KERNEL


# -- the provisioning API serves what was added --------------------------------------------


@pytest_twisted.inlineCallbacks
def test_added_images_are_served_by_the_images_endpoint(tmp_path, sources):
    from pxestack.config import load_config
    from pxestack.http.assets import AssetResource
    from pxestack.provision.api import ProvisioningApi
    from pxestack.provision.provisioner import Provisioner, callback_key
    from pxestack.provision.store import FileHostStore

    cache = tmp_path / "images"
    assert images(cache, "add", "flatcar", "3975.2.0", "--kernel", str(sources / "vmlinuz"),
                  "--initrd", str(sources / "initrd")) == 0
    cluster = tmp_path / "cluster"
    config = load_config({"provision": {
        "cluster_dir": str(cluster), "default_os_version": "3975.2.0",
        "images_dir": str(cache),
        "network": {"ip_range": {"start": "198.18.10.10", "end": "198.18.10.20"},
                    "subnet_size": 24, "subnet_gateway": "198.18.10.1"},
    }}).provision
    provisioner = Provisioner(config, FileHostStore(cluster), base_url="http://198.18.0.1",
                              key=callback_key(cluster))
    api = ProvisioningApi(provisioner, admin_token=None,
                          images=AssetResource(cache, reactor=reactor))
    port = reactor.listenTCP(0, Site(api.root()), interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    try:
        kernel = yield treq.get(base + "/images/vmlinuz", persistent=False)
        kernel_body = yield treq.content(kernel)
        initrd = yield treq.get(base + "/images/some-serial/initrd.cpio.gz", persistent=False)
        initrd_body = yield treq.content(initrd)
    finally:
        yield port.stopListening()
    assert (kernel.code, kernel_body) == (200, KERNEL)
    assert (initrd.code, initrd_body) == (200, INITRD)


@settings(max_examples=100)
@given(st.text(max_size=400), st.one_of(st.none(), st.text(max_size=20)))
def test_checksum_parser_returns_a_sha256_or_refuses(text, name):
    try:
        found = parse_checksum_file(text, name)
    except ImageError:
        return
    assert len(found) == 64 and set(found) <= set("0123456789abcdef")


# -- profiles of --config ------------------------------------------------------------------


def _config_with_profiles(tmp_path: Path, cache: Path) -> Path:
    config = tmp_path / "pxestack.yaml"
    config.write_text(
        "provision:\n"
        f"  cluster_dir: {tmp_path / 'cluster'}\n"
        f"  images_dir: {cache}\n"
        "  default_os_version: 1.0.0\n"
        "  network:\n"
        "    ip_range: {start: 198.18.10.10, end: 198.18.10.20}\n"
        "    subnet_size: 24\n"
        "    subnet_gateway: 198.18.10.1\n"
        "  profiles:\n"
        "    - {name: core, quantity: 3}\n"
        "    - {name: workers, quantity: 3, os: fcos, os_version: '40.1'}\n"
        "    - name: rescue\n"
        "      quantity: 1\n"
        "      os: generic\n"
        "      os_version: bookworm\n"
        "      generic: {image_os: debian, kernel: linux, initrd: [initrd.gz]}\n"
    )
    return config


def test_list_shows_profiles_and_missing_versions(tmp_path, sources, capsys):
    cache = tmp_path / "images"
    config = _config_with_profiles(tmp_path, cache)
    assert images(cache, "add", "flatcar", "1.0.0", "--kernel", str(sources / "vmlinuz")) == 0
    assert images(cache, "add", "flatcar", "0.9.0", "--kernel", str(sources / "vmlinuz")) == 0
    capsys.readouterr()
    assert main(["images", "--config", str(config), "list"]) == 0
    out = capsys.readouterr().out
    assert "PROFILES" in out
    row = next(line for line in out.splitlines() if "1.0.0" in line)
    assert row.rstrip().endswith("core")
    assert next(line for line in out.splitlines() if "0.9.0" in line).rstrip().endswith("-")
    assert "MISSING: debian bookworm, used by profile rescue" in out
    assert "MISSING: fcos 40.1, used by profile workers" in out
    assert main(["images", "--config", str(config), "-o", "json", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"os": "fcos", "version": "40.1", "missing": True,
            "profiles": ["workers"]} in listed


def test_remove_refuses_a_version_a_profile_uses(tmp_path, sources, capsys):
    cache = tmp_path / "images"
    config = _config_with_profiles(tmp_path, cache)
    assert images(cache, "add", "flatcar", "1.0.0", "--kernel", str(sources / "vmlinuz")) == 0
    capsys.readouterr()
    argv = ["images", "--config", str(config), "remove", "flatcar", "1.0.0"]
    assert main(argv) == 1
    assert "used by profile core; pass --force" in capsys.readouterr().err
    assert (cache / "1.0.0" / "flatcar_production_pxe.vmlinuz").exists()
    assert main([*argv, "--force"]) == 0
    assert not (cache / "1.0.0").exists()
