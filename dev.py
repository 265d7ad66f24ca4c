#!/usr/bin/env python3
"""pxestack's developer entry point; needs nothing but python3 on a fresh Debian machine.

    python3 dev.py serve        run pxestack on the embedded quickstart (loopback, no root)
    python3 dev.py test         the whole test suite (system and QEMU tests need root)
    python3 dev.py quick        the fast unit tests only, for iteration
    python3 dev.py lint         ruff and mypy --strict on the codec and sans-IO layers
    python3 dev.py bench [...]  the benchmark suite (root; see docs/benchmarks.md)
    python3 dev.py demo         boot four QEMU machines against pxestack (root; issue 7)

Every command first makes ``.venv`` and installs the project into it (editable, with its
dev extras) when ``pyproject.toml`` changed since the last install.  ``test`` also installs
the Debian packages listed in ``.ci/debian-packages.txt`` with apt-get when it runs as root
and one of them is missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".pxestack-installed"
DEBIAN_PACKAGES = ROOT / ".ci" / "debian-packages.txt"


def say(message: str) -> None:
    """Print a progress line to stderr."""
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


def run(argv: list[str], **kwargs: object) -> int:
    """Run *argv* from the project root; return its exit status."""
    return subprocess.call(argv, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def ensure_venv(extras: str = "dev") -> None:
    """Create .venv and (re)install the project when pyproject.toml changed."""
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + extras.encode()
    ).hexdigest()
    if not (BIN / "python").exists():
        ensure_ensurepip()
        say("creating .venv")
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    say(f"installing pxestack[{extras}] into .venv")
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    if run([*pip, "install", "--upgrade", "pip"]) != 0:
        sys.exit("dev.py: upgrading pip failed")
    if run([*pip, "install", "-e", f".[{extras}]"]) != 0:
        sys.exit("dev.py: installing the project failed")
    STAMP.write_text(wanted + "\n")


def ensure_ensurepip() -> None:
    """Debian splits ``ensurepip`` into python3-venv; install it as root when it is missing."""
    try:
        import ensurepip  # noqa: F401
    except ImportError:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            sys.exit("dev.py: python3 cannot create virtual environments; "
                     "install python3-venv (apt-get install python3-venv)")
        say("installing python3-venv")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-qq"], env=env)
        if run(["apt-get", "install", "-y", "-qq", "python3-venv"], env=env) != 0:
            sys.exit("dev.py: apt-get install python3-venv failed")


def debian_packages() -> list[str]:
    """The Debian packages the system tests need."""
    lines = DEBIAN_PACKAGES.read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def ensure_debian_packages() -> None:
    """As root, apt-get install whichever of the system-test packages is missing."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        return
    missing = []
    for package in debian_packages():
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Status}", package],
            capture_output=True, text=True, check=False,
        )
        if status.stdout.strip() != "installed":
            missing.append(package)
    if not missing:
        return
    say("installing Debian packages: " + " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if run(["apt-get", "update", "-qq"], env=env) != 0:
        sys.exit("dev.py: apt-get update failed")
    if run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env):
        sys.exit("dev.py: apt-get install failed")


def pytest(args: list[str]) -> int:
    """Run pytest from the venv; exit status 5 (no tests collected) counts as failure."""
    status = run([str(BIN / "python"), "-m", "pytest", *args])
    if status == 5:
        say("pytest collected no tests: failing")
        return 1
    return status


def main(argv: list[str]) -> int:
    """Dispatch one command."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "serve":
        ensure_venv()
        # exec, so that Ctrl-C and SIGTERM reach pxestack itself (clean shutdown)
        os.chdir(ROOT)
        os.execv(str(BIN / "pxestack"), [str(BIN / "pxestack"), "serve", *rest])
    if command == "test":
        ensure_debian_packages()
        ensure_venv()
        return pytest(["-p", "no:cacheprovider", *rest])
    if command == "quick":
        ensure_venv()
        return pytest(["-m", "not slow and not netns and not qemu", "-q", *rest])
    if command == "lint":
        ensure_venv()
        status = run([str(BIN / "ruff"), "check", "pxestack", "tests", "benchmarks", "dev.py"])
        strict_targets = [
            "pxestack/wire", "pxestack/dhcp", "pxestack/tftp", "pxestack/http/ipxe.py",
            "pxestack/paths.py", "pxestack/errors.py", "pxestack/_types.py", "pxestack/simulate.py",
            "pxestack/bootevents.py",
        ]
        return status or run([str(BIN / "mypy"), *strict_targets, *rest])
    if command == "bench":
        ensure_debian_packages()
        ensure_venv("dev,bench")
        return run([str(BIN / "python"), "-m", "benchmarks", *rest])
    if command == "demo":
        ensure_debian_packages()
        ensure_venv()
        return run([str(BIN / "python"), "tests/system/qemu/demo.py", *rest])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
