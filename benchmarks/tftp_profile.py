"""TFTP throughput of pxestack against tftpd-hpa (and atftpd when unpacked), same run.

The TFTP author's own measuring script (the full comparative suite lives elsewhere in
``benchmarks/``).  It builds the two-namespace veth lab of ``tests/netlab.py`` and runs the
TFTP cases of docs/reference/benchmark-method.md against each server in turn, checking
every file's sha256:

==========  ====================================================================  ========
case        client (in the client namespace)                                        pinned
==========  ====================================================================  ========
curl_1468   ``curl --tftp-blksize 1468`` 32 MiB                                    CPU 0
atftp_1468  ``atftp --option "blksize 1468"`` 32 MiB                               CPU 0
atftp_w8    the same with ``--option "windowsize 8"``                              CPU 0
conc32      32 x ``curl --tftp-blksize 1468`` 4 MiB started together (aggregate)   no
lossy       1 MiB, 1 % random drop each way, ``atftp --tftp-timeout 1``            no
==========  ====================================================================  ========

Run as root::

    .venv/bin/python benchmarks/tftp_profile.py --reps 3
    .venv/bin/python benchmarks/tftp_profile.py --cases atftp_1468 --profile /tmp/tftp.prof

``--profile`` runs the pxestack server under cProfile and writes the stats file there.
``--atftpd DIR`` adds atftpd from a ``dpkt -x`` unpacked tree (it conflicts with
tftpd-hpa as a Debian package: ``apt-get download atftpd && dpkg -x atftpd_*.deb DIR``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netlab import Lab, two_hosts

MIB = 1 << 20
FILES = {"big.bin": 32 * MIB, "small.bin": 4 * MIB, "mid.bin": 1 * MIB}
CASES = ("curl_1468", "atftp_1468", "atftp_w8", "conc32", "lossy")
PINNED = ("curl_1468", "atftp_1468", "atftp_w8")


def make_files(root: Path) -> dict[str, str]:
    """Random files under *root*; returns their sha256 by name."""
    sums = {}
    for name, size in FILES.items():
        data = os.urandom(size)
        (root / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    return sums


def sha256(path: Path) -> str:
    """The hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def server_argv(
    kind: str, root: Path, ip: str, profile: str | None, atftpd: Path | None, workers: int = 1
) -> list[str]:
    """The command line of server *kind* listening on ip:69."""
    if kind == "pxestack":
        base = [sys.executable]
        if profile:
            base += ["-m", "cProfile", "-o", profile]
        return [
            *base,
            "-m",
            "pxestack",
            "tftp",
            "--root",
            str(root),
            "--listen",
            f"{ip}:69",
            "--log-level",
            "warn",
            "--workers",
            str(workers),
        ]
    if kind == "tftpd-hpa":
        return ["in.tftpd", "-L", "-a", f"{ip}:69", "-u", "root", "-s", str(root)]
    if kind == "atftpd" and atftpd is not None:
        return [
            str(atftpd / "usr/sbin/atftpd"),
            "--daemon",
            "--no-fork",
            "--bind-address",
            ip,
            "--port",
            "69",
            "--maxthread",
            "200",
            "--logfile",
            "/dev/null",
            str(root),
        ]
    raise ValueError(kind)


def timed(run: Callable[[], None]) -> float:
    """Wall seconds of *run*."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def run_case(lab: Lab, case: str, out: Path, sums: dict[str, str]) -> float:
    """Run one case once; returns MB/s (or seconds for ``lossy``)."""
    ip = lab.server.ip
    assert ip is not None
    client = lab.client
    target = out / "out.bin"
    target.unlink(missing_ok=True)
    if case == "curl_1468":
        seconds = timed(
            lambda: client.run(
                [
                    "curl",
                    "-sS",
                    "--fail",
                    "--tftp-blksize",
                    "1468",
                    "-o",
                    str(target),
                    f"tftp://{ip}/big.bin",
                ],
                timeout=120,
                cpu=0,
            )
        )
        assert sha256(target) == sums["big.bin"]
        return FILES["big.bin"] / seconds / 1e6
    if case in ("atftp_1468", "atftp_w8"):
        argv = ["atftp", "--get", "-r", "big.bin", "-l", str(target), "--option", "blksize 1468"]
        if case == "atftp_w8":
            argv += ["--option", "windowsize 8"]
        seconds = timed(lambda: client.run([*argv, ip], timeout=120, cpu=0))
        assert sha256(target) == sums["big.bin"]
        return FILES["big.bin"] / seconds / 1e6
    if case == "conc32":
        paths = [out / f"c{i}.bin" for i in range(32)]

        def many() -> None:
            procs = [
                client.popen(
                    [
                        "curl",
                        "-sS",
                        "--fail",
                        "--tftp-blksize",
                        "1468",
                        "-o",
                        str(p),
                        f"tftp://{ip}/small.bin",
                    ]
                )
                for p in paths
            ]
            for proc in procs:
                assert proc.wait(timeout=120) == 0
                client.stop(proc)

        seconds = timed(many)
        for path in paths:
            assert sha256(path) == sums["small.bin"]
            path.unlink()
        return 32 * FILES["small.bin"] / seconds / 1e6
    if case == "lossy":
        lab.set_loss(1.0)
        try:
            seconds = timed(
                lambda: client.run(
                    [
                        "atftp",
                        "--tftp-timeout",
                        "1",
                        "--get",
                        "-r",
                        "mid.bin",
                        "-l",
                        str(target),
                        "--option",
                        "blksize 1468",
                        ip,
                    ],
                    timeout=120,
                )
            )
        finally:
            lab.set_loss(0.0)
        assert sha256(target) == sums["mid.bin"]
        return seconds
    raise ValueError(case)


def main() -> None:
    """Parse arguments, run every server through every case, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--servers", nargs="+", default=["pxestack", "tftpd-hpa"])
    parser.add_argument("--profile", help="cProfile output file for the pxestack server")
    parser.add_argument("--atftpd", type=Path, help="unpacked atftpd package tree")
    parser.add_argument("--workers", type=int, default=1,
                        help="pxestack tftp --workers (processes sharing port 69)")
    args = parser.parse_args()
    servers = list(args.servers)
    if args.atftpd and "atftpd" not in servers:
        servers.append("atftpd")
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="pxt-tftp-bench-") as tmp:
        root = Path(tmp) / "root"
        out = Path(tmp) / "out"
        root.mkdir()
        out.mkdir()
        sums = make_files(root)
        with two_hosts("tftpbench") as lab:
            assert lab.server.ip is not None
            # Servers take turns within each repetition, so background load on this
            # shared machine hits them alike.
            for _ in range(args.reps):
                for kind in servers:
                    for case in args.cases:
                        # The reference method: single transfers with server and client on CPU 0;
                        # the concurrent and lossy cases unpinned (both CPUs).
                        cpu = 0 if case in PINNED else None
                        argv = server_argv(kind, root, lab.server.ip, args.profile,
                                           args.atftpd, args.workers)
                        server = lab.server.popen(argv, cpu=cpu, stdout=subprocess.DEVNULL)
                        lab.server.wait_udp_port(69, timeout=15, process=server)
                        try:
                            value = run_case(lab, case, out, sums)
                        finally:
                            lab.server.stop(server, grace=10)
                        results.setdefault((kind, case), []).append(value)
                        print(f"{kind:10} {case:11} {value:8.2f}", flush=True)
    print()
    print(f"{'case':12}" + "".join(f"{kind:>14}" for kind in servers) + "   ratio")
    for case in args.cases:
        medians = [statistics.median(results.get((kind, case), [0.0])) for kind in servers]
        unit = "s" if case == "lossy" else "MB/s"
        line = f"{case:12}" + "".join(f"{m:>10.2f} {unit:>3}" for m in medians)
        if len(medians) > 1 and medians[1]:
            others = medians[1:]
            if case == "lossy":
                line += f"   {medians[0] / min(others):.2f}x time"
            else:
                line += f"   {medians[0] / max(others):.2f}x"
        print(line)


if __name__ == "__main__":
    main()
