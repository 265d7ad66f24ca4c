"""ruff is clean on the whole tree; mypy --strict is clean on the codecs and sans-IO cores.

pyproject.toml sets ``strict = true`` for ``pxestack.wire``, ``pxestack.dhcp``,
``pxestack.tftp``, ``pxestack.http.ipxe``, ``pxestack.paths``, ``pxestack.errors`` and
``pxestack._types`` (with the mypy-zope plugin for Twisted's interfaces).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STRICT_TARGETS = [
    "pxestack/wire", "pxestack/dhcp", "pxestack/tftp", "pxestack/http/ipxe.py",
    "pxestack/paths.py", "pxestack/errors.py", "pxestack/_types.py",
]


@pytest.mark.slow
def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "pxestack", "tests", "benchmarks", "examples",
         "dev.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean_on_codecs_and_cores() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", *STRICT_TARGETS],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
