"""The runnable DHCP examples in examples/ really run (docs are part of done)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_dhcp_server_example_answers_its_own_discover() -> None:
    run = subprocess.run([sys.executable, str(EXAMPLES / "dhcp_server.py"), "--demo"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    # The demo client's MAC has a reservation in the example.
    assert "OFFER 127.0.10.5 from 127.0.0.1 lease 3600 s" in run.stdout


def test_embed_proxydhcp_example_prints_the_decisions() -> None:
    run = subprocess.run([sys.executable, str(EXAMPLES / "embed_proxydhcp.py")],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "tftp" in lines[0] and "undionly.kpxe" in lines[0]
    assert "ipxe-script" in lines[2] and "boot.ipxe" in lines[2]
