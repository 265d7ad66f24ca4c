"""Shared pytest configuration.

System tests (real clients in network namespaces, QEMU) need root and Debian packages that
``.ci/run`` installs.  Locally a missing prerequisite skips such a test with the reason; in CI
(``CI`` set) or with ``PXESTACK_STRICT=1`` it fails, so a check can never be skipped silently
where it is meant to run.
"""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", deadline=None, max_examples=20000, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def strict() -> bool:
    """Whether missing system prerequisites must fail instead of skip."""
    return bool(os.environ.get("CI")) or os.environ.get("PXESTACK_STRICT") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (CI/strict) the current test unless *condition* holds."""
    if condition:
        return
    if strict():
        pytest.fail(f"prerequisite missing in strict mode: {reason}")
    pytest.skip(reason)


def require_root_and_tools(*tools: str) -> None:
    """Require root (for network namespaces) and every named executable on PATH."""
    require(os.geteuid() == 0, "needs root for network namespaces")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    require(not missing, f"needs {', '.join(missing)} (installed by .ci/run)")
