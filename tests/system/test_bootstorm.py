"""A bounded boot storm with admission control active, on a two-namespace lab.

1200 simulated machines (``pxestack/simulate.py``, with the firmware's own DHCP and TFTP
timers and a retried boot order) arrive at 400 per second at one pxestack server with
everything on but the git audit.  ``dhcp.admission.max_starting`` is set low enough (4)
that the server must hold machines back at their first DHCP: a new machine arrives every
2.5 ms, while the step between its first OFFER and its iPXE DHCP (a TFTP download) takes
longer than 10 ms even on a quiet machine, where the server alone would keep up with the
arrivals without holding anyone back; the test checks that it did, and
that every check of the storm benchmark holds: every machine installed, none dropped
after its first DHCP (no boot failed past the first OFFER), no address given twice, the
profile quantities exact.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import require_root_and_tools

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytestmark = [pytest.mark.netns, pytest.mark.slow]

MACHINES = 1200
RATE = 400.0


@pytest.mark.timeout(400)
def test_bounded_storm_with_admission_control() -> None:
    require_root_and_tools("ip", "ss", "curl")
    from benchmarks.bootstorm import describe, run_once

    run = run_once(MACHINES, RATE, git=False, admission=True,
                   admission_knobs={"max_starting": 4}, machine_deadline=240.0)
    print(describe(run))
    assert run["checks_passed"], run["problems"]
    assert run["installed"] == MACHINES
    assert run["held_back"] > 0, "admission control never held a machine back"
    assert set(run["boot_restarts"]) <= {"dhcp_pxe"}
