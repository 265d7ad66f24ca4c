"""Run one fuzzing harness under atheris (libFuzzer).

    python -m fuzz.run TARGET [--seeds DIR] [libFuzzer flags and corpus directories]

``python3 dev.py fuzz`` starts this once per target, with ``tests`` on ``PYTHONPATH`` and the
libFuzzer flags (``-max_total_time``, ``-rss_limit_mb``, ``-timeout``, ``-artifact_prefix``,
corpus directories).  ``--seeds DIR`` first writes the target's seeds (:mod:`fuzz.seeds`)
into *DIR* and hands it to libFuzzer as one more corpus directory.  The harness module, and
through it pxestack, is imported inside :func:`atheris.instrument_imports`, so the code under
test is coverage-instrumented; nothing of pxestack may be imported before that.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from fuzz.seeds import write_seeds

TARGETS = ("dhcp", "tftp", "icmpv6")


def main(argv: list[str]) -> None:
    """Instrument and fuzz ``fuzz.<argv[1]>_target``; libFuzzer takes the other arguments."""
    import atheris  # only here: the rest of the suite does not need it installed

    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz.run {{{'|'.join(TARGETS)}}} [libFuzzer flags]")
    target, rest = argv[1], argv[2:]
    if rest[:1] == ["--seeds"] and len(rest) >= 2:
        write_seeds(target, Path(rest[1]))
        rest = [*rest[2:], rest[1]]
    with atheris.instrument_imports(include=["pxestack", "fuzz"]):
        module = importlib.import_module(f"fuzz.{target}_target")
    atheris.Setup([argv[0], *rest], module.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
