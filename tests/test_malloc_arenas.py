"""The server limits glibc's malloc arenas before its threads start, unless the operator
set MALLOC_ARENA_MAX."""

from __future__ import annotations

import subprocess
import sys

from pxestack import _malloc

_PROBE = "from pxestack._malloc import limit_arenas; print(limit_arenas())"


def test_the_limit_is_set_through_mallopt_on_glibc():
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                            check=True, env={"PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "True"


def test_the_operators_malloc_arena_max_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert _malloc.limit_arenas() is False


def test_without_mallopt_nothing_is_set(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)

    class NoMallopt:
        def __init__(self, _name: object) -> None:
            pass

    monkeypatch.setattr(_malloc.ctypes, "CDLL", NoMallopt)
    assert _malloc.limit_arenas() is False
