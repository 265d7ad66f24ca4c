"""Micro-benchmark configuration: these files are never part of the normal test run.

The project's ``testpaths`` is ``["tests"]``, so ``pytest`` alone never collects them; run
``pytest benchmarks/micro --benchmark-only`` (or ``python -m benchmarks --only micro``).
Each benchmark also asserts what it computed, so a broken core fails instead of timing
garbage.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pytest_benchmark")
