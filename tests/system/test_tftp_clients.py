"""Real TFTP clients against ``pxestack tftp`` across a veth pair.

One server namespace runs ``pxestack tftp``; the client namespace runs tftp-hpa's ``tftp``,
``atftp`` (also with RFC 7440 windowsize 8) and ``curl tftp://`` with blksize 512, 1468,
8192 and 65464.  Every download's sha256 is compared with the served file.  A 33 MiB file
at blksize 512 crosses block 65535 (rollover to 0), and transfers under 1 %
and 10 % random loss in both directions (nftables ``numgen random`` drop; this kernel has no
netem) must still deliver the right bytes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require_root_and_tools

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

pytestmark = pytest.mark.netns

MIB = 1 << 20
FILES = {
    "tiny.txt": 100,
    "odd.bin": 100 * 1024 + 7,
    # An exact multiple of 512 and of 1468: the transfer ends with an empty DATA.
    "exact.bin": 512 * 1468 * 2,
    "mid.bin": 1 * MIB,
    "big.bin": 8 * MIB + 3,
    # 65536 blocks of 512 octets are 32 MiB: this one rolls the block number over to 0.
    "rollover.bin": 33 * MIB,
    "sub/dir/deep.cfg": 1000,
}


@dataclass
class Served:
    """The running lab: namespaces, the served root and each file's sha256."""

    lab: object
    root: Path
    out: Path
    sums: dict[str, str]

    @property
    def ip(self) -> str:
        return self.lab.server.ip  # type: ignore[attr-defined, no-any-return]

    def client(self, argv: list[str], *, timeout: float = 90,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lab.client.run(argv, timeout=timeout, check=check)  # type: ignore[attr-defined, no-any-return]

    def check(self, name: str, path: Path) -> None:
        assert path.exists(), f"{path} was not written"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == self.sums[name], f"{name}: checksum mismatch"
        path.unlink()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_root_and_tools("ip", "nft", "ss", "tftp", "atftp", "curl")
    from netlab import pxestack_argv, two_hosts

    base = tmp_path_factory.mktemp("tftp-clients")
    root = base / "root"
    out = base / "out"
    out.mkdir()
    sums = {}
    for name, size in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size)
        path.write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    (base / "secret").write_bytes(b"SECRET")
    (root / "escape").symlink_to(base / "secret")
    with two_hosts("tftp") as lab:
        assert lab.server.ip is not None
        server = lab.server.popen(
            pxestack_argv("tftp", "--root", str(root), "--listen", f"{lab.server.ip}:69",
                          "--max-blksize", "65464", "--log-level", "warn"),
            stdout=subprocess.DEVNULL,
        )
        lab.server.wait_udp_port(69, timeout=20, process=server)
        yield Served(lab, root, out, sums)
        assert server.poll() is None, "the server died during the tests"


def test_tftp_hpa_client(served: Served) -> None:
    """tftp-hpa sends no options: plain RFC 1350 lock-step at 512."""
    for name in ("tiny.txt", "odd.bin", "exact.bin"):
        target = served.out / name.replace("/", "_")
        served.client(["tftp", "-m", "binary", served.ip, "-c", "get", name, str(target)])
        served.check(name, target)


def test_tftp_hpa_backslash_path(served: Served) -> None:
    """PXE-style backslash paths map onto directories."""
    target = served.out / "deep.cfg"
    served.client(["tftp", "-m", "binary", served.ip, "-c", "get", "sub\\dir\\deep.cfg",
                   str(target)])
    served.check("sub/dir/deep.cfg", target)


@pytest.mark.parametrize("options", [["blksize 1468"], ["blksize 1468", "windowsize 8"],
                                     ["blksize 8192", "windowsize 8", "tsize 0"]])
def test_atftp_client(served: Served, options: list[str]) -> None:
    target = served.out / "atftp.bin"
    argv = ["atftp", "--get", "-r", "big.bin", "-l", str(target)]
    for option in options:
        argv += ["--option", option]
    served.client([*argv, served.ip])
    served.check("big.bin", target)


@pytest.mark.parametrize("blksize", [512, 1468, 8192, 65464])
def test_curl_client(served: Served, blksize: int) -> None:
    name = "odd.bin" if blksize == 512 else "big.bin"
    target = served.out / f"curl{blksize}.bin"
    served.client(["curl", "-sS", "--fail", "--tftp-blksize", str(blksize), "-o", str(target),
                   f"tftp://{served.ip}/{name}"])
    served.check(name, target)


def test_rollover_past_block_65535(served: Served) -> None:
    """33 MiB at 512-octet blocks wraps the block number to 0."""
    target = served.out / "rollover.bin"
    served.client(["tftp", "-m", "binary", served.ip, "-c", "get", "rollover.bin",
                   str(target)], timeout=180)
    served.check("rollover.bin", target)


@pytest.mark.parametrize(
    ("requested", "curl_exit"),
    [
        ("missing.bin", 68),  # CURLE_TFTP_NOTFOUND <- ERROR 1
        ("escape", 69),  # CURLE_TFTP_PERM <- ERROR 2: symlink leaving the root
        ("sub", 69),  # a directory
    ],
)
def test_refusals_reach_the_client(served: Served, requested: str, curl_exit: int) -> None:
    result = served.client(["curl", "-sS", "-o", "/dev/null",
                            f"tftp://{served.ip}/{requested}"], check=False, timeout=30)
    assert result.returncode == curl_exit, result.stderr


@pytest.mark.parametrize(("percent", "name", "options"), [
    (1.0, "mid.bin", ["blksize 1468"]),
    (10.0, "odd.bin", ["blksize 1468"]),
    (10.0, "odd.bin", ["blksize 1468", "windowsize 4"]),
])
def test_transfer_under_random_loss(served: Served, percent: float, name: str,
                                    options: list[str]) -> None:
    """Loss both ways; the download completes with the right bytes."""
    lab = served.lab
    target = served.out / "lossy.bin"
    argv = ["atftp", "--tftp-timeout", "1", "--get", "-r", name, "-l", str(target)]
    for option in options:
        argv += ["--option", option]
    lab.set_loss(percent)  # type: ignore[attr-defined]
    dropped = 0
    try:
        # The loss rule sees a GSO window (windowsize > 1) as one packet on the veth, so a
        # 100 KiB transfer is only some forty draws: about 2 % of runs lose nothing at 10 %.
        # Transfer again until the counter shows a loss, so the run really tested recovery.
        for _transfer in range(5):
            for _attempt in range(3):
                # At 10 % the RRQ or the client's last ACK may be lost too often for atftp's
                # own few retries; a new attempt is what a booting client does as well.
                result = served.client([*argv, served.ip], timeout=90, check=False)
                if result.returncode == 0:
                    break
            assert result.returncode == 0, result.stderr
            served.check(name, target)
            dropped = lab.dropped_packets()  # type: ignore[attr-defined]
            if dropped > 0:
                break
    finally:
        lab.set_loss(0.0)  # type: ignore[attr-defined]
    assert dropped > 0, "the loss rule dropped nothing in five transfers"
