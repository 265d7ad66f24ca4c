#!/usr/bin/env python3
"""pxestack's developer entry point; needs nothing but python3 on a fresh Debian machine.

    python3 dev.py serve        run pxestack on the embedded quickstart (loopback, no root)
    python3 dev.py test         the whole test suite (system and QEMU tests need root)
    python3 dev.py quick        the fast unit tests only, for iteration
    python3 dev.py lint         ruff and mypy --strict on the codec and sans-IO layers
    python3 dev.py bench [...]  the benchmark suite (root; see docs/benchmarks.md)
    python3 dev.py fuzz [--seconds N] [--target dhcp|tftp|icmpv6|all]
                                coverage-guided fuzzing of the codecs (docs/testing.md)
    python3 dev.py demo         boot four QEMU machines against pxestack (root)

Every command first makes ``.venv`` and installs the project into it (editable, with its
dev extras) when ``pyproject.toml`` changed since the last install.  ``test`` also installs
the Debian packages listed in ``.ci/debian-packages.txt`` with apt-get when it runs as root
and one of them is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
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


FUZZ_TARGETS = ("dhcp", "tftp", "icmpv6")
FUZZ_CACHE = ROOT / ".cache" / "fuzz"
#: Per-target input size limit: a DHCP datagram up to a jumbo-free MTU with room for RFC 3396
#: concatenation, a TFTP request (DATA payloads add nothing past the header), one RS/RA.
FUZZ_MAX_LEN = {"dhcp": 2048, "tftp": 1024, "icmpv6": 1500}


def ensure_atheris() -> None:
    """Install the ``fuzz`` extra (atheris) into .venv when it is missing."""
    if run([str(BIN / "python"), "-c", "import atheris"], stderr=subprocess.DEVNULL) == 0:
        return
    say("installing pxestack[dev,fuzz] (atheris) into .venv")
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    if run([*pip, "install", "-e", ".[dev,fuzz]"]) != 0:
        sys.exit("dev.py: installing atheris failed")


def fuzz_one(target: str, seconds: int) -> dict[str, str]:
    """Fuzz *target* for *seconds* in its own process; return the figures libFuzzer printed."""
    directory = FUZZ_CACHE / target
    corpus = directory / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    log = directory / "fuzz.log"
    argv = [
        str(BIN / "python"), "-m", "fuzz.run", target,
        "--seeds", str(directory / "seeds"),
        f"-max_total_time={seconds}",
        "-rss_limit_mb=2048",
        "-timeout=10",
        f"-max_len={FUZZ_MAX_LEN[target]}",
        f"-artifact_prefix={directory}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))
    say(f"fuzzing {target} for {seconds} s (log: {log.relative_to(ROOT)})")
    with log.open("w") as output:
        status = run(argv, env=env, stdout=output, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    figures = {"status": str(status), "artifacts": " ".join(
        re.findall(r"Test unit written to (\S+)", text))}
    for name, pattern in (
        ("executions", r"stat::number_of_executed_units:\s*(\d+)"),
        ("exec_per_sec", r"stat::average_exec_per_sec:\s*(\d+)"),
        ("new_units", r"stat::new_units_added:\s*(\d+)"),
        ("peak_rss_mb", r"stat::peak_rss_mb:\s*(\d+)"),
    ):
        match = re.search(pattern, text)
        figures[name] = match.group(1) if match else "?"
    progress = re.findall(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", text, re.M)
    if progress:
        last = progress[-1]
        if figures["executions"] == "?":
            figures["executions"] = last[0]
        figures.update(cov=last[1], ft=last[2], corpus=last[3])
    return figures


def fuzz(argv: list[str]) -> int:
    """``dev.py fuzz``: each target in turn; non-zero if any of them found a crash."""
    parser = argparse.ArgumentParser(prog="dev.py fuzz")
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--target", choices=[*FUZZ_TARGETS, "all"], default="all")
    options = parser.parse_args(argv)
    if options.seconds < 1:
        parser.error("--seconds must be at least 1")
    ensure_venv()
    ensure_atheris()
    targets = FUZZ_TARGETS if options.target == "all" else (options.target,)
    failed = False
    summaries = []
    for target in targets:
        figures = fuzz_one(target, options.seconds)
        crashes = len(figures["artifacts"].split())
        if figures["status"] != "0" and crashes == 0:
            crashes = 1  # libFuzzer stopped on a finding without writing an artifact
        failed = failed or crashes > 0
        summaries.append(
            f"fuzz {target}: {options.seconds} s, {figures['executions']} executions, "
            f"{figures['exec_per_sec']} exec/s, cov {figures.get('cov', '?')}, "
            f"features {figures.get('ft', '?')}, corpus {figures.get('corpus', '?')}, "
            f"crashes {crashes}" + (f" ({figures['artifacts']})" if figures["artifacts"] else "")
        )
        print(summaries[-1], flush=True)
    if failed:
        say(f"crash inputs and logs are in {FUZZ_CACHE.relative_to(ROOT)}/<target>/")
    return 1 if failed else 0


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
        status = run([str(BIN / "ruff"), "check", "pxestack", "pxestack_syslog",
                      "pxestack_webhooks", "tests", "benchmarks", "examples", "dev.py"])
        strict_targets = [
            "pxestack/wire", "pxestack/dhcp", "pxestack/tftp", "pxestack/http/ipxe.py",
            "pxestack/paths.py", "pxestack/errors.py", "pxestack/_types.py", "pxestack/_records.py",
            "pxestack/_memo.py", "pxestack/simulate.py",
            "pxestack/explain.py", "pxestack/bootevents.py", "pxestack/metrics",
            "pxestack/service/logs.py", "pxestack/provision",
        ]
        return status or run([str(BIN / "mypy"), *strict_targets, *rest])
    if command == "bench":
        ensure_debian_packages()
        ensure_venv("dev,bench")
        return run([str(BIN / "python"), "-m", "benchmarks", *rest])
    if command == "fuzz":
        return fuzz(rest)
    if command == "demo":
        ensure_debian_packages()
        ensure_venv()
        return run([str(BIN / "python"), "tests/system/qemu/demo.py", *rest])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
