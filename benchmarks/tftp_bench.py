"""TFTP cases: pxestack beside tftpd-hpa, dnsmasq and atftpd, real clients in the client namespace.

Method (docs/benchmarks.md, after docs/reference/benchmark-method.md):

* Files of random bytes on tmpfs; every transfer's sha256 is checked, and a transfer with
  the wrong bytes counts as a failure, not as a time.
* Wall time includes the client process start-up.  MB/s = 10^6 bytes per second.
* ``lockstep_1468``: one 32 MiB transfer with ``atftp --option "blksize 1468"``, server and
  client pinned to the same CPU (``taskset -c 0``).  Across vCPUs a lock-step round trip on
  this VM costs 150-700 µs (idle-vCPU wake-up), which hides every difference between
  servers; on one vCPU it measures the combined per-block CPU cost.
* ``window8_1468``: the same plus ``--option "windowsize 8"`` (RFC 7440; a server that
  leaves it out of its OACK falls back to lock-step).
* ``concurrent32``: 32 curl clients fetch 4 MiB each at blksize 1468, started together,
  unpinned (both vCPUs); aggregate MB/s = 32 x 4 MiB / wall time of the slowest.
* ``lossy_1pct``: 1 MiB with 1 % random drop on each end's ingress (nftables; this kernel
  has no netem), ``atftp --tftp-timeout 1``; the time to finish (lower is better).
* ``python-floor`` (``benchmarks/floor_tftp.py``) is a reference, not a TFTP server: the
  least work a Python process can do per block (connected sockets, a blocking loop for a
  lone transfer, no retransmission or checks).  It shows in the same run what any
  pure-Python server can reach here; it sits out the lossy case, which it cannot finish.
* Each (repetition, case) starts every server fresh, servers in turn, so machine-load drift
  spreads over all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import PXESTACK, PYTHON_FLOOR, Results, log, netlab, scratch_dir
from benchmarks.peers import Peers

MIB = 1024 * 1024
#: The CPU both ends are pinned to in the pinned cases.
PIN_CPU = 0
TRANSFER_TIMEOUT = 120.0
LOSSY_TIMEOUT = 60.0
CONCURRENT_CLIENTS = 32


@dataclass(frozen=True)
class TftpCase:
    """One TFTP case: which file, which client options, pinning, loss, and the headline unit."""

    name: str
    file: str
    pinned: bool
    unit: str
    higher_is_better: bool
    description: str
    loss_percent: float = 0.0


CASES = (
    TftpCase(
        "lockstep_1468", "big.bin", True, "MB/s", True,
        "32 MiB, atftp blksize 1468, server and client pinned to one CPU",
    ),
    TftpCase(
        "window8_1468", "big.bin", True, "MB/s", True,
        "32 MiB, atftp blksize 1468 windowsize 8, pinned to one CPU",
    ),
    TftpCase(
        "concurrent32", "small.bin", False, "MB/s", True,
        "32 concurrent curl clients x 4 MiB, blksize 1468, unpinned (aggregate)",
    ),
    TftpCase(
        "lossy_1pct", "mid.bin", False, "s", False,
        "1 MiB (256 KiB with --quick), 1 % loss each way, atftp --tftp-timeout 1, time to finish",
        loss_percent=1.0,
    ),
)  # fmt: skip


def file_sizes(quick: bool) -> dict[str, int]:
    """Sizes of the generated files (docs/reference/benchmark-method.md).

    ``--quick`` shrinks only the lossy-case file to 256 KiB: its time is dominated by 1 s
    retransmit timeouts (about 10 s per MiB), the other cases take well under a second.
    """
    return {"big.bin": 32 * MIB, "small.bin": 4 * MIB, "mid.bin": (MIB // 4) if quick else MIB}


class TftpServer:
    """A TFTP server under test."""

    name = ""

    def unavailable(self, peers: Peers) -> str | None:
        """Why this server cannot run here, or None."""
        raise NotImplementedError

    def argv(self, lab: Any, root: Path, workdir: Path) -> list[str]:
        """The command line that serves *root* on ``lab.server.ip:69``."""
        raise NotImplementedError

    #: Probe with requests for a missing name until every process answers (pxestack's
    #: workers start after the port is bound; the floor never answers a missing name).
    ready_probe = False

    def serves(self, case: TftpCase) -> bool:
        """Whether this server takes part in *case* (every server does, but the floor)."""
        return True

    def start(self, lab: Any, root: Path, workdir: Path, cpu: int | None) -> subprocess.Popen[Any]:
        """Start the server in ``lab.server`` (pinned to *cpu* if given)."""
        return lab.server.popen(
            self.argv(lab, root, workdir),
            cpu=cpu,
            stdout=(workdir / f"{self.name}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )


class TftpdHpa(TftpServer):
    """tftpd-hpa in the foreground (``-L``); it forks one child per transfer."""

    name = "tftpd-hpa"

    def __init__(self, peers: Peers) -> None:
        self.executable = peers.path("tftpd-hpa") or "in.tftpd"

    def unavailable(self, peers: Peers) -> str | None:
        """Needs in.tftpd."""
        return peers.require("tftpd-hpa")

    def argv(self, lab: Any, root: Path, workdir: Path) -> list[str]:
        """``in.tftpd -L -a IP:69 -u root -s ROOT``."""
        return [self.executable, "-L", "-a", f"{lab.server.ip}:69", "-u", "root", "-s", str(root)]


class DnsmasqTftp(TftpServer):
    """dnsmasq as a TFTP server only (DNS off with ``--port=0``)."""

    name = "dnsmasq"

    def __init__(self, peers: Peers) -> None:
        self.executable = peers.path("dnsmasq") or "dnsmasq"

    def unavailable(self, peers: Peers) -> str | None:
        """Needs dnsmasq."""
        return peers.require("dnsmasq")

    def argv(self, lab: Any, root: Path, workdir: Path) -> list[str]:
        """dnsmasq with ``--enable-tftp`` on the server interface."""
        return [
            self.executable, "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
            f"--interface={lab.server.ifname}", "--bind-interfaces",
            f"--enable-tftp={lab.server.ifname}", f"--tftp-root={root}", "--tftp-max=200",
            "--user=root", "--pid-file", "--log-facility=-",
        ]  # fmt: skip


class Atftpd(TftpServer):
    """atftpd 0.8 standalone, unpacked from its .deb (it conflicts with tftpd-hpa)."""

    name = "atftpd"

    def __init__(self, peers: Peers) -> None:
        self.executable = peers.path("atftpd") or "atftpd"

    def unavailable(self, peers: Peers) -> str | None:
        """Needs the unpacked atftpd."""
        return peers.require("atftpd")

    def argv(self, lab: Any, root: Path, workdir: Path) -> list[str]:
        """``atftpd --daemon --no-fork`` bound to the server address."""
        return [
            self.executable, "--daemon", "--no-fork", "--bind-address", lab.server.ip,
            "--port", "69", "--maxthread", "200", "--user", "root", "--group", "root",
            "--logfile", str(workdir / "atftpd-internal.log"), str(root),
        ]  # fmt: skip


class PxestackTftp(TftpServer):
    """pxestack's TFTP server via ``pxestack tftp`` quick mode, one worker per CPU.

    ``--workers`` processes (``tftp.workers``) share port 69 with SO_REUSEPORT, so the
    unpinned concurrent case uses both vCPUs as tftpd-hpa's forked children do; the
    pinned cases run one process.  The
    per-client transfer cap is raised, because all 32 concurrent clients come from the one
    client address.
    """

    name = PXESTACK
    ready_probe = True

    def unavailable(self, peers: Peers) -> str | None:
        """Needs pxestack.tftp.protocol (under construction at times)."""
        if importlib.util.find_spec("pxestack.tftp.protocol") is None:
            return "pxestack.tftp.protocol does not exist yet"
        return None

    #: Worker processes for the next start: one per CPU, or one when pinned (see start).
    workers = os.cpu_count() or 1

    def start(self, lab: Any, root: Path, workdir: Path, cpu: int | None) -> subprocess.Popen[Any]:
        """Start with one worker per CPU, or a single process when pinned to one CPU.

        Pinned, more processes cannot add CPU time, and the port answers as soon as the
        first process binds: the rest would still be starting up on the pinned CPU while
        the measured transfer runs.
        """
        self.workers = 1 if cpu is not None else (os.cpu_count() or 1)
        return super().start(lab, root, workdir, cpu)

    def argv(self, lab: Any, root: Path, workdir: Path) -> list[str]:
        """``pxestack tftp --root ROOT --listen IP:69 --workers N ...``."""
        return netlab().pxestack_argv(
            "tftp", "--root", str(root), "--listen", f"{lab.server.ip}:69",
            "--max-blksize", "65464", "--max-windowsize", "16",
            "--per-client-limit", str(CONCURRENT_CLIENTS * 2), "--log-level", "warn",
            "--workers", str(self.workers),
        )  # fmt: skip


class PythonFloorTftp(TftpServer):
    """The python-floor reference (``benchmarks/floor_tftp.py``), one process per CPU
    unpinned, one when pinned, like :class:`PxestackTftp`."""

    name = PYTHON_FLOOR

    def unavailable(self, peers: Peers) -> str | None:
        """Needs only this interpreter."""
        return None

    def serves(self, case: TftpCase) -> bool:
        """Not the lossy case: the floor never retransmits."""
        return not case.loss_percent

    #: Worker processes for the next start (see :meth:`PxestackTftp.start`).
    workers = os.cpu_count() or 1

    def start(self, lab: Any, root: Path, workdir: Path, cpu: int | None) -> subprocess.Popen[Any]:
        """Start with one process per CPU, or one when pinned."""
        self.workers = 1 if cpu is not None else (os.cpu_count() or 1)
        return super().start(lab, root, workdir, cpu)

    def argv(self, lab: Any, root: Path, workdir: Path) -> list[str]:
        """``python floor_tftp.py --listen IP --root ROOT --workers N``."""
        return [
            sys.executable, str(Path(__file__).with_name("floor_tftp.py")),
            "--listen", lab.server.ip, "--root", str(root), "--workers", str(self.workers),
        ]  # fmt: skip


def servers(peers: Peers) -> list[TftpServer]:
    """pxestack first, then the peers, then the python-floor reference."""
    return [PxestackTftp(), TftpdHpa(peers), DnsmasqTftp(peers), Atftpd(peers), PythonFloorTftp()]


#: Runs inside the client namespace: starts N curl clients together, waits for all, prints
#: JSON with the wall time and each exit status.  Bounded by a per-client timeout.
CONCURRENT_DRIVER = textwrap.dedent(
    """
    import json, subprocess, sys, time
    url, out_dir, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    start = time.monotonic()
    procs = [
        subprocess.Popen(["curl", "-sS", "--fail", "--max-time", str(timeout),
                          "--tftp-blksize", "1468", "-o", f"{out_dir}/c{i}.bin", url])
        for i in range(count)
    ]
    statuses = [p.wait() for p in procs]
    print(json.dumps({"wall": time.monotonic() - start, "statuses": statuses}))
    """
)


#: Runs inside the client namespace: sends an RRQ for a missing name from PROBES source
#: ports until each got an answer (any answer), so every process of a server that shares
#: port 69 (pxestack's workers, which start after the port is bound) serves before the
#: clock starts.  The kernel spreads the ports over the processes; 16 ports leave one of
#: two processes unprobed with probability 2**-15.
READY_PROBE = textwrap.dedent(
    """
    import socket, sys, time
    ip, probes, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    request = b"\\x00\\x01pxestack-bench-ready-probe\\x00octet\\x00"
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(probes)]
    waiting = set(range(probes))
    deadline = time.monotonic() + limit
    while waiting and time.monotonic() < deadline:
        for index in waiting:
            sockets[index].sendto(request, (ip, 69))
        time.sleep(0.2)
        for index in list(waiting):
            sockets[index].setblocking(False)
            try:
                sockets[index].recvfrom(2048)
                waiting.discard(index)
            except BlockingIOError:
                pass
    sys.exit(1 if waiting else 0)
    """
)


def wait_tftp_ready(lab: Any, *, probes: int = 16, timeout: float = 30.0) -> None:
    """Wait until every process behind ``lab.server.ip:69`` answers (see READY_PROBE)."""
    result = lab.client.run(
        [sys.executable, "-c", READY_PROBE, lab.server.ip, str(probes), str(timeout)],
        timeout=timeout + 10, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the TFTP server did not answer within {timeout:g} s")


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def tftp_root(quick: bool) -> Iterator[tuple[Path, dict[str, str], dict[str, int]]]:
    """A tmpfs directory with the random test files; yields (root, sha256s, sizes)."""
    with scratch_dir("tftproot") as root:
        sizes = file_sizes(quick)
        digests = {}
        for name, size in sizes.items():
            data = os.urandom(size)
            (root / name).write_bytes(data)
            digests[name] = hashlib.sha256(data).hexdigest()
        root.chmod(0o755)
        yield root, digests, sizes


def _run_atftp(
    lab: Any, case: TftpCase, out: Path, *, cpu: int | None
) -> tuple[float, subprocess.CompletedProcess[Any] | None]:
    """One atftp download; returns (wall seconds, result or None on timeout)."""
    argv = ["atftp", "--get", "-r", case.file, "-l", str(out), "--option", "blksize 1468"]
    if case.name.startswith("window8"):
        argv += ["--option", "windowsize 8"]
    if case.loss_percent:
        argv += ["--tftp-timeout", "1"]
    argv.append(lab.server.ip)
    timeout = LOSSY_TIMEOUT if case.loss_percent else TRANSFER_TIMEOUT
    start = time.monotonic()
    try:
        result = lab.client.run(argv, timeout=timeout, check=False, cpu=cpu)
    except subprocess.TimeoutExpired:
        return time.monotonic() - start, None
    return time.monotonic() - start, result


def _one_transfer_case(
    lab: Any, case: TftpCase, digests: dict[str, str], sizes: dict[str, int], workdir: Path
) -> dict[str, Any]:
    """Run one single-client case; returns a run record with ``value`` or ``error``."""
    out = workdir / "out.bin"
    cpu = PIN_CPU if case.pinned else None
    wall, result = _run_atftp(lab, case, out, cpu=cpu)
    record: dict[str, Any] = {"wall_s": wall}
    if result is None:
        record["error"] = f"timed out after {wall:.1f} s"
    elif result.returncode != 0:
        record["error"] = f"atftp exit {result.returncode}: {result.stderr.strip()[-300:]}"
    elif not out.exists() or sha256(out) != digests[case.file]:
        record["error"] = "sha256 mismatch"
    else:
        size = sizes[case.file]
        record["value"] = wall if case.unit == "s" else size / wall / 1e6
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    return record


def _concurrent_case(
    lab: Any, case: TftpCase, digests: dict[str, str], sizes: dict[str, int], workdir: Path
) -> dict[str, Any]:
    """32 curl clients at once; the aggregate MB/s over the slowest client's wall time."""
    out_dir = workdir / "conc"
    out_dir.mkdir(exist_ok=True)
    url = f"tftp://{lab.server.ip}/{case.file}"
    result = lab.client.run(
        [sys.executable, "-c", CONCURRENT_DRIVER, url, str(out_dir), str(CONCURRENT_CLIENTS),
         str(TRANSFER_TIMEOUT)],
        timeout=TRANSFER_TIMEOUT + 30, check=False,
    )  # fmt: skip
    record: dict[str, Any] = {}
    try:
        report = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        record["error"] = f"driver failed: {result.stderr.strip()[-300:]}"
        return record
    record["wall_s"] = report["wall"]
    bad = [i for i, status in enumerate(report["statuses"]) if status != 0]
    wrong = [
        i
        for i in range(CONCURRENT_CLIENTS)
        if i not in bad
        and (
            not (out_dir / f"c{i}.bin").exists()
            or sha256(out_dir / f"c{i}.bin") != digests[case.file]
        )
    ]
    for path in out_dir.glob("c*.bin"):
        path.unlink()
    if bad or wrong:
        record["error"] = f"{len(bad)} clients failed, {len(wrong)} sha256 mismatches"
    else:
        record["value"] = CONCURRENT_CLIENTS * sizes[case.file] / report["wall"] / 1e6
    return record


def _run_case(
    lab: Any,
    server: TftpServer,
    case: TftpCase,
    root: Path,
    digests: dict[str, str],
    sizes: dict[str, int],
) -> dict[str, Any]:
    """Start *server* fresh, run *case* once, stop the server."""
    with scratch_dir(f"tftp-{server.name}") as workdir:
        process = server.start(lab, root, workdir, PIN_CPU if case.pinned else None)
        try:
            lab.server.wait_udp_port(69, timeout=30, process=process)
            if server.ready_probe:
                wait_tftp_ready(lab)
            if case.loss_percent:
                lab.set_loss(case.loss_percent)
            if case.name == "concurrent32":
                record = _concurrent_case(lab, case, digests, sizes, workdir)
            else:
                record = _one_transfer_case(lab, case, digests, sizes, workdir)
            if process.poll() is not None:
                record.setdefault("error", f"server exited with {process.returncode}")
        except Exception as exc:  # report it and go on with the next case
            record = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            lab.set_loss(0)
            lab.server.stop(process)
        if "error" in record:
            log_path = workdir / f"{server.name}.log"
            if log_path.exists():
                record["server_log_tail"] = log_path.read_text(errors="replace")[-800:]
        return record


def run_tftp(
    results: Results,
    peers: Peers,
    *,
    repeats: int,
    quick: bool,
    cases: tuple[str, ...] = (),
    only: tuple[str, ...] = (),
) -> None:
    """Run every TFTP case (or those in *cases*) against every available server (or those
    named in *only*), *repeats* times."""
    reason = peers.require("atftp", "curl", "nft", "ip", "taskset")
    if reason:
        results.skip("tftp", "all", reason)
        return
    candidates = []
    for server in servers(peers):
        if only and server.name not in only:
            continue
        why = server.unavailable(peers)
        if why:
            results.skip("tftp", server.name, why)
        else:
            candidates.append(server)
    selected = [case for case in CASES if not cases or case.name in cases]
    with netlab().two_hosts("bench") as lab, tftp_root(quick) as (root, digests, sizes):
        for repetition in range(repeats):
            for case in selected:
                for server in candidates:
                    if not server.serves(case):
                        continue
                    record = _run_case(lab, server, case, root, digests, sizes)
                    entry = results.case(
                        "tftp", case.name, server.name, case.unit,
                        higher_is_better=case.higher_is_better,
                    )  # fmt: skip
                    entry.note = case.description
                    entry.runs.append(record)
                    if "value" in record:
                        entry.values.append(record["value"])
                        shown = f"{record['value']:.2f} {case.unit}"
                    else:
                        entry.failures += 1
                        shown = f"FAILED: {record['error']}"
                    log(f"tftp {case.name} {server.name} rep {repetition + 1}/{repeats}: {shown}")
