"""What the file host store keeps in memory per host: RSS and tracemalloc growth.

    .venv/bin/python -m benchmarks.store_memory --sizes 1000,5000 [--no-git] [--trace]

Enrols machines one after the other into a fresh :class:`FileHostStore` on tmpfs and moves
each to ``installing`` and ``installed`` (the three changes, and with git the three audit
commits, a boot storm makes per machine).  At each size it prints the process's RSS and,
with ``--trace``, the allocation sites that grew most between the first and the last size
(tracemalloc: Python objects only; libgit2's own memory shows in the RSS alone).  A per-host
figure that does not shrink with the size is memory kept per host.  ``--libgit2-cache``
turns libgit2's object cache back on (the audit turns it off) to see what it costs.

Runs in the foreground, bounded by the sizes (at most 20 000 hosts); a shared machine makes
the times noisy, not the memory figures.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from pathlib import Path

from benchmarks.common import scratch_dir
from pxestack.provision.model import Host, HostState
from pxestack.provision.store import FileHostStore

#: The most hosts one run enrols.
MAX_HOSTS = 20_000


def rss_kib() -> int:
    """This process's resident memory (``VmRSS``), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run(sizes: list[int], *, git: bool, trace: bool, libgit2_cache: bool) -> None:
    """Enrol up to ``max(sizes)`` hosts, reporting at each size (see the module doc)."""
    snapshots: dict[int, tracemalloc.Snapshot] = {}
    with scratch_dir("store-memory") as workdir:
        store = FileHostStore(workdir / "cluster", git=git)
        if libgit2_cache:
            import pygit2

            pygit2.settings.enable_caching(True)
        if trace:
            tracemalloc.start(4)
        started = time.monotonic()
        previous: tuple[int, int] | None = None
        for index in range(max(sizes)):
            serial = f"sn-{index:05d}"
            store.enrol(serial, lambda _e, s=serial: Host(serial=s, machine_id="cd" * 16),
                        ["host created"])
            for state in (HostState.INSTALLING, HostState.INSTALLED):
                store.update(serial, lambda h, st=state: (h.evolve(state=st),
                                                          f"to {st.value}", ()))
            hosts = index + 1
            if hosts not in sizes:
                continue
            gc.collect()
            rss = rss_kib()
            per_host = ""
            if previous is not None:
                per_host = (f", {(rss - previous[1]) * 1024 / (hosts - previous[0]):.0f} bytes "
                            f"per host since {previous[0]}")
            print(f"{hosts} hosts: RSS {rss / 1024:.1f} MiB{per_host} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
            previous = (hosts, rss)
            if trace:
                snapshots[hosts] = tracemalloc.take_snapshot()
    if trace and len(snapshots) >= 2:
        first, last = min(snapshots), max(snapshots)
        print(f"allocation sites that grew most from {first} to {last} hosts:")
        for stat in snapshots[last].compare_to(snapshots[first], "lineno")[:15]:
            print(f"  {stat.size_diff / (last - first):8.0f} bytes per host  {stat.traceback}")


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module doc."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store_memory",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000", help="comma-separated host counts")
    parser.add_argument("--no-git", action="store_true", help="no git audit")
    parser.add_argument("--trace", action="store_true", help="tracemalloc growth by site")
    parser.add_argument("--libgit2-cache", action="store_true",
                        help="turn libgit2's object cache on again")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_HOSTS:
        parser.error(f"sizes must be between 1 and {MAX_HOSTS}")
    run(sizes, git=not args.no_git, trace=args.trace, libgit2_cache=args.libgit2_cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
