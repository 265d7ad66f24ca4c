"""Does an enrolment cost more when more hosts are on record?  Time per enrolment and per
update of the file host store at several cluster sizes.

For each size N a cluster directory is filled with N host records (written directly, then
committed in one audit commit when git is on), a :class:`FileHostStore` is opened on it,
and ``--samples`` new machines are enrolled the way a first contact enrols them (profile by
quantity, lowest free address), each followed by one update of its record (the state change
a boot reports).  The median and the 90th percentile of each are printed per size; an
enrolment cost that does not depend on N shows as flat medians.

    .venv/bin/python -m benchmarks.store_scaling --sizes 100,1000,3000 --samples 100

Figures from a shared machine are noisy (fsync and CPU contention): compare sizes within
one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from pxestack._fs import atomic_write
from pxestack.config import load_config
from pxestack.config.provision import ProvisionConfig
from pxestack.provision import assign
from pxestack.provision.model import Host, HostState
from pxestack.provision.store import CLUSTER_FILE, HOST_FILE, FileHostStore


def bench_config(cluster_dir: Path, hosts: int) -> ProvisionConfig:
    """Two profiles that fill up within the run and an address range with room for all."""
    config = load_config({"provision": {
        "cluster_dir": str(cluster_dir),
        "network": {
            "ip_range": {"start": "198.18.0.10", "end": "198.19.255.200"},
            "subnet_size": 15,
            "subnet_gateway": "198.18.0.1",
        },
        "profiles": [
            {"name": "core", "quantity": 3, "tags": ["role=core"]},
            {"name": "worker", "quantity": hosts // 2, "tags": ["role=worker"]},
        ],
    }})
    assert config.provision is not None
    return config.provision


def _counter_bytes() -> Any:
    state = {"n": 0}

    def random_bytes(n: int) -> bytes:
        state["n"] += 1
        return state["n"].to_bytes(n, "big")

    return random_bytes


def fill(root: Path, config: ProvisionConfig, count: int) -> None:
    """*count* host records written straight to disk (no store, no commits)."""
    root.mkdir(parents=True)
    atomic_write(root / CLUSTER_FILE, json.dumps(
        {"GitStore": True, "Config": {"DefaultEtcdClusterToken": "0" * 32}}).encode())
    random_bytes = _counter_bytes()
    assert config.network.ip_range is not None
    first = int(config.network.ip_range.start)
    for number in range(count):
        serial = f"fill-{number:06d}"
        # What enrolment in order would give, without asking the code under test.
        profile = "core" if number < 3 else "worker" if number < 3 + count // 2 else "default"
        host = assign.new_host(
            serial, [], config, random_bytes=random_bytes, default_token="0" * 32,
            profile_name=profile, address=IPv4Address(first + number))
        (root / serial).mkdir()
        (root / serial / HOST_FILE).write_bytes(host.to_bytes())


def measure(base: Path, size: int, samples: int, git: bool) -> dict[str, Any]:
    root = base / f"cluster-{size}"
    config = bench_config(root, size)
    fill(root, config, size)
    started = time.perf_counter()
    store = FileHostStore(root, git=git)  # with git: one start-up commit of the filled tree
    opened = time.perf_counter() - started
    random_bytes = _counter_bytes()
    enrol_times: list[float] = []
    update_times: list[float] = []
    for number in range(samples):
        serial = f"new-{number:06d}"

        def make(existing: Sequence[Host], serial: str = serial) -> Host:
            return assign.new_host(serial, existing, config, random_bytes=random_bytes,
                                   default_token=store.default_etcd_token)

        t0 = time.perf_counter()
        store.enrol(serial, make, ["host created", "first contact"])
        t1 = time.perf_counter()
        store.update(serial, lambda h: (h.evolve(state=HostState.RUNNING), "state: running", ()))
        t2 = time.perf_counter()
        enrol_times.append(t1 - t0)
        update_times.append(t2 - t1)
    store.refresh()
    refreshed = time.perf_counter()
    store.refresh()
    rescan = time.perf_counter() - refreshed
    shutil.rmtree(root)
    return {
        "hosts": size,
        "open_s": round(opened, 3),
        "enrol_ms_median": round(statistics.median(enrol_times) * 1000, 2),
        "enrol_ms_p90": round(statistics.quantiles(enrol_times, n=10)[-1] * 1000, 2),
        "update_ms_median": round(statistics.median(update_times) * 1000, 2),
        "rescan_ms": round(rescan * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,3000",
                        help="comma-separated host counts (default: 100,1000,3000)")
    parser.add_argument("--samples", type=int, default=100,
                        help="enrolments timed per size (default: 100, at most 2000)")
    parser.add_argument("--no-git", action="store_true", help="turn the git audit off")
    parser.add_argument("--tmp", default=None, help="scratch directory (default: system tmp)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if any(not 0 <= s <= 20000 for s in sizes):
        parser.error("--sizes: each size must be between 0 and 20000")
    samples = min(max(args.samples, 10), 2000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="store-scaling-", dir=args.tmp) as tmp:
        for size in sizes:
            row = measure(Path(tmp), size, samples, git=not args.no_git)
            rows.append(row)
            if not args.json:
                print(
                    f"{row['hosts']:>6} hosts: enrol {row['enrol_ms_median']:7.2f} ms median "
                    f"({row['enrol_ms_p90']:.2f} p90), update {row['update_ms_median']:6.2f} ms, "
                    f"periodic re-scan {row['rescan_ms']:.1f} ms, open {row['open_s']:.2f} s",
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
