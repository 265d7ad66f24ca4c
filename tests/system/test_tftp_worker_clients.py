"""Real TFTP clients against ``pxestack tftp --workers 2`` across a veth pair.

Two worker processes share port 69.  tftp-hpa's ``tftp`` and ``atftp`` fetch files
concurrently (every download's sha256 checked); a worker is killed with SIGKILL, by its
PID, in the middle of a transfer: the client's next attempt succeeds and the worker is
started again; stopping the server leaves no worker process.  Worker log lines reach the
main process's log, which is how the test learns which worker runs what.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import require_root_and_tools

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

pytestmark = pytest.mark.netns

MIB = 1 << 20
FILES = {"small.bin": 256 * 1024 + 3, "mid.bin": MIB, "big.bin": 24 * MIB}
SERVING = re.compile(r"tftp worker (\d+) serving \(pid (\d+)\)")


@dataclass
class Served:
    lab: object
    server: subprocess.Popen[bytes]
    log: Path
    out: Path
    sums: dict[str, str]
    seen_pids: set[int] = field(default_factory=set)

    @property
    def ip(self) -> str:
        return self.lab.server.ip  # type: ignore[attr-defined, no-any-return]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> dict[int, int]:
        """Worker index -> PID, from the latest "serving" line of each."""
        found = {int(index): int(pid) for index, pid in SERVING.findall(self.text())}
        self.seen_pids.update(found.values())
        return found

    def wait_for(self, predicate: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; log tail:\n{self.text()[-3000:]}")

    def check(self, name: str, path: Path) -> None:
        assert path.exists(), f"{path} was not written"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == self.sums[name], name
        path.unlink()


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_root_and_tools("ip", "nft", "ss", "tftp", "atftp")
    from netlab import pxestack_argv, two_hosts

    base = tmp_path_factory.mktemp("tftp-workers")
    root = base / "root"
    root.mkdir()
    out = base / "out"
    out.mkdir()
    sums = {}
    for name, size in FILES.items():
        data = os.urandom(size)
        (root / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    log = base / "server.log"
    with two_hosts("tftpw") as lab, log.open("wb") as log_file:
        server = lab.server.popen(
            pxestack_argv("tftp", "--root", str(root), "--listen", f"{lab.server.ip}:69",
                          "--max-blksize", "65464", "--workers", "2"),
            stdout=subprocess.DEVNULL, stderr=log_file)
        served = Served(lab, server, log, out, sums)
        lab.server.wait_udp_port(69, timeout=20, process=server)
        served.wait_for(lambda: len(served.workers()) == 2, 20, "two workers")
        yield served
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=20)


def test_concurrent_tftp_hpa_and_atftp(served: Served) -> None:
    """16 clients at once, both kinds, spread by the kernel over both workers."""
    client = served.lab.client  # type: ignore[attr-defined]
    started = served.text().count("RRQ '")
    processes = []
    for index in range(8):
        name = "mid.bin" if index % 2 else "small.bin"
        target = served.out / f"hpa-{index}.bin"
        processes.append((name, target, client.popen(
            ["tftp", "-m", "binary", served.ip, "-c", "get", name, str(target)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        target = served.out / f"atftp-{index}.bin"
        options = ["--option", "blksize 1468"] + (["--option", "windowsize 8"]
                                                  if index % 2 else [])
        processes.append((name, target, client.popen(
            ["atftp", "--get", "-r", name, "-l", str(target), *options, served.ip],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    for name, target, process in processes:
        _, error = process.communicate(timeout=25)
        assert process.returncode == 0, error
        served.check(name, target)
    served.wait_for(lambda: served.text().count("RRQ '") >= started + 16, 5, "16 RRQ lines")
    requests = re.findall(r"\[tftp worker (\d+)\] RRQ", served.text())
    assert set(requests) == {"0", "1"}, "both workers serve (16 source ports, 2 workers)"


def test_worker_killed_mid_transfer(served: Served) -> None:
    """SIGKILL the worker serving a transfer: the client's retry succeeds, the worker
    is back with a new PID."""
    client = served.lab.client  # type: ignore[attr-defined]
    before = served.workers()
    mark = len(served.text())
    target = served.out / "killed.bin"
    argv = ["atftp", "--tftp-timeout", "1", "--get", "-r", "big.bin", "-l", str(target),
            served.ip]
    first = client.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pattern = re.compile(r"\[tftp worker (\d+)\] RRQ 'big.bin'")
    served.wait_for(lambda: pattern.search(served.text()[mark:]), 10, "the RRQ")
    match = pattern.search(served.text()[mark:])
    assert match is not None
    index = int(match.group(1))
    victim = before[index]
    time.sleep(0.2)
    assert first.poll() is None, "the transfer ended before the worker could be killed"
    os.kill(victim, signal.SIGKILL)
    first.communicate(timeout=25)  # fails (or, rarely, had just finished)
    served.wait_for(lambda: served.workers().get(index, victim) != victim, 15,
                    f"worker {index} restarted")
    assert f"tftp worker {index} (pid {victim}) exited" in served.text()
    if target.exists():
        target.unlink()
    client.run(argv, timeout=25)  # the retry
    served.check("big.bin", target)
    assert served.workers()[index] in children(served.server.pid)
    assert served.server.poll() is None


def test_shutdown_leaves_no_worker(served: Served) -> None:
    workers = served.workers()
    assert len(workers) == 2 and set(workers.values()) <= children(served.server.pid)
    served.server.send_signal(signal.SIGTERM)
    assert served.server.wait(timeout=20) == 0
    for pid in served.seen_pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the server"
