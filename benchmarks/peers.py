"""Finding (and when root, installing) the peer servers and the load generators.

The peers come from Debian packages.  ``atftpd`` conflicts with ``tftpd-hpa`` as a package,
so it is never installed: its .deb is fetched with ``apt-get download`` and unpacked with
``dpkg -x`` into ``benchmarks/.cache/atftpd``, and run from there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import CACHE_DIR, log, package_version


@dataclass(frozen=True)
class Tool:
    """An executable the suite needs and the Debian package that provides it."""

    name: str
    executable: str
    package: str


#: Everything the suite can use.  ``atftpd`` is handled separately (see module docstring).
TOOLS = (
    Tool("ip", "ip", "iproute2"),
    Tool("nft", "nft", "nftables"),
    Tool("ss", "ss", "iproute2"),
    Tool("taskset", "taskset", "util-linux"),
    Tool("perfdhcp", "perfdhcp", "kea-admin"),
    Tool("kea", "kea-dhcp4", "kea-dhcp4-server"),
    Tool("dnsmasq", "dnsmasq", "dnsmasq-base"),
    Tool("tftpd-hpa", "in.tftpd", "tftpd-hpa"),
    Tool("tftp-hpa", "tftp", "tftp-hpa"),
    Tool("atftp", "atftp", "atftp"),
    Tool("curl", "curl", "curl"),
)

ATFTPD_PACKAGE = "atftpd"
ATFTPD_DIR = CACHE_DIR / "atftpd"


@dataclass
class Peers:
    """Resolved paths of the tools (None when missing) and their package versions."""

    paths: dict[str, str | None]
    versions: dict[str, str | None]

    def path(self, name: str) -> str | None:
        """The executable for tool *name*, or None if it is not available."""
        return self.paths.get(name)

    def require(self, *names: str) -> str | None:
        """None if every tool in *names* is available, else a reason naming the missing ones."""
        missing = [name for name in names if not self.paths.get(name)]
        return f"missing {', '.join(missing)}" if missing else None


def _apt_install(packages: list[str]) -> None:
    """``apt-get install`` the packages (non-interactive, no recommends)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing Debian packages: {' '.join(packages)}")
    result = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        update = subprocess.run(
            ["apt-get", "update"], env=env, capture_output=True, timeout=600, check=False
        )
        if update.returncode == 0:
            result = subprocess.run(
                ["apt-get", "install", "-y", "--no-install-recommends", *packages],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
    if result.returncode != 0:
        log(f"apt-get install failed: {result.stderr.strip()[-400:]}")


def _unpacked_atftpd() -> Path | None:
    """The atftpd binary unpacked in the cache, if present."""
    candidate = ATFTPD_DIR / "root" / "usr" / "sbin" / "atftpd"
    return candidate if candidate.is_file() else None


def _unpack_atftpd() -> Path | None:
    """Download the atftpd .deb into the cache and unpack it with ``dpkg -x``."""
    ATFTPD_DIR.mkdir(parents=True, exist_ok=True)
    log("fetching atftpd with apt-get download (it conflicts with tftpd-hpa as a package)")
    download = subprocess.run(
        ["apt-get", "download", ATFTPD_PACKAGE],
        cwd=ATFTPD_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    debs = sorted(ATFTPD_DIR.glob("atftpd_*.deb"))
    if download.returncode != 0 or not debs:
        log(f"apt-get download atftpd failed: {download.stderr.strip()[-300:]}")
        return None
    subprocess.run(
        ["dpkg", "-x", str(debs[-1]), str(ATFTPD_DIR / "root")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return _unpacked_atftpd()


def _atftpd_version() -> str | None:
    """The version of the unpacked atftpd .deb (from its file name)."""
    debs = sorted(ATFTPD_DIR.glob("atftpd_*.deb"))
    return debs[-1].name.split("_")[1] if debs else None


def find_peers(*, install: bool) -> Peers:
    """Locate every tool; with *install* (and root), install what is missing first."""
    missing = [tool for tool in TOOLS if shutil.which(tool.executable) is None]
    if missing and install and os.geteuid() == 0:
        _apt_install(sorted({tool.package for tool in missing}))
    paths: dict[str, str | None] = {tool.name: shutil.which(tool.executable) for tool in TOOLS}
    versions: dict[str, str | None] = {
        tool.name: package_version(tool.package) for tool in TOOLS if paths[tool.name]
    }
    atftpd = shutil.which("atftpd")
    if atftpd is not None:
        versions["atftpd"] = package_version(ATFTPD_PACKAGE)
    else:
        unpacked = _unpacked_atftpd()
        if unpacked is None and install:
            unpacked = _unpack_atftpd()
        atftpd = str(unpacked) if unpacked else None
        versions["atftpd"] = _atftpd_version() if unpacked else None
    paths["atftpd"] = atftpd
    return Peers(paths, versions)
