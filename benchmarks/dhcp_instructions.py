"""Machine instructions per DORA of the DHCP server, counted by valgrind's callgrind.

CPU time per packet moves by 10-40 % on a shared machine; an instruction count does not.
This runs ``benchmarks/dhcp_profile.py micro --reps 1`` (relayed perfdhcp-shaped clients
through the adapter, the core and a lease journal, no sockets) under
``valgrind --tool=callgrind`` twice, with a small and a large number of clients, and
prints the difference of the two totals divided by the difference in clients: the
instructions one more DISCOVER->OFFER plus REQUEST->ACK costs, with interpreter start-up,
imports and configuration cancelled out.  Two runs of the same code agree to about 0.02 %.

``--tree DIR`` measures the ``pxestack`` package found in DIR (it goes first on
``PYTHONPATH``; the driver script is always this tree's), so the code before a change can
be counted beside the code after it with one virtualenv::

    git worktree add --detach /tmp/before <commit>
    .venv/bin/python benchmarks/dhcp_instructions.py --tree /tmp/before
    .venv/bin/python benchmarks/dhcp_instructions.py

``--keep DIR`` keeps the callgrind output files for ``callgrind_annotate``.  Each run takes
about half a minute to a minute; the count needs Debian's ``valgrind`` package.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROFILE = HERE / "dhcp_profile.py"

_TOTAL = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def callgrind_total(path: Path) -> int:
    """The total instruction count (event ``Ir``) recorded in a callgrind output file."""
    match = _TOTAL.search(path.read_text(errors="replace"))
    if match is None:
        raise ValueError(f"{path}: no summary line")
    return int(match.group(1))


def count(clients: int, out: Path, *, tree: Path | None, extra: list[str]) -> int:
    """Instructions of one ``micro --reps 1`` run with *clients* clients."""
    env = dict(os.environ)
    # Hash randomisation changes dictionary layouts, and with them the count.
    env["PYTHONHASHSEED"] = "0"
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(tree), *filter(None, [env.get("PYTHONPATH")])])
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, str(PROFILE), "micro", "--reps", "1", "--clients", str(clients),
        *extra,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return callgrind_total(out)


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path,
                        help="source tree whose pxestack package is measured (default: "
                             "the one this virtualenv imports)")
    parser.add_argument("--small", type=int, default=500, help="clients of the small run")
    parser.add_argument("--large", type=int, default=2500, help="clients of the large run")
    parser.add_argument("--arch", type=int, default=None,
                        help="option 93 of the clients (PXE ROMs; every reply has a boot file)")
    parser.add_argument("--metrics", action="store_true",
                        help="wire the Prometheus metrics as pxestack serve does")
    parser.add_argument("--keep", type=Path, help="keep the callgrind output files here")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found (Debian package valgrind)")
    if args.large <= args.small:
        raise SystemExit("--large must be greater than --small")
    extra = [*(["--arch", str(args.arch)] if args.arch is not None else []),
             *(["--metrics"] if args.metrics else [])]
    tree = args.tree.resolve() if args.tree else None
    with tempfile.TemporaryDirectory(prefix="dhcp-instructions-") as scratch:
        where = args.keep or Path(scratch)
        where.mkdir(parents=True, exist_ok=True)
        small = count(args.small, where / f"callgrind.{args.small}", tree=tree, extra=extra)
        large = count(args.large, where / f"callgrind.{args.large}", tree=tree, extra=extra)
    per_dora = (large - small) / (args.large - args.small)
    label = str(tree) if tree else "this virtualenv's pxestack"
    print(f"tree {label}")
    print(f"instructions: {args.small} clients {small:,}, {args.large} clients {large:,}")
    print(f"instructions per DORA: {per_dora:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
