"""examples/http_assets.py runs, serves, and reports what it should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "http_assets.py"


def test_example_runs_end_to_end() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "GET /boot.ipxe -> 200: b'#!ipxe" in out
    assert "4194304 bytes, intact: True" in out
    assert "-> 206 [b'bytes 4194288-4194303/4194304'], 16 bytes" in out
    assert "GET /../etc/passwd -> 404" in out
    assert "by sendfile" in out
    assert result.stderr == ""
