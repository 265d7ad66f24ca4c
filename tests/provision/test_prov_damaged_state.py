"""Damaged state: ``pxestack serve`` comes up read-only and says why, never hangs or crashes.

Each case builds a cluster directory with three hosts through the normal API, damages it
the way a full disk, a power cut or a careless hand does, and starts the real command in
a subprocess on loopback.  libgit2 loops for ever on a loose object cut short, so the start
is bounded: the port must open within 20 s, ``/admin/health`` must answer 503 with the
reason, a write must be refused with 503 and a JSON reason, a read must still be served
where the records are readable, and not one file of the cluster directory may change.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pygit2
import pytest
from provision_helpers import make_rig

START_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: The running server's lock (its identity, in the git-ignored private folder): written by
#: every start, damaged or not, so that a second server is refused; it is not state.
SERVER_LOCK = ".pxestack/server.lock"


def _snapshot(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every file and directory under *root* with its bytes and mode (but the server lock)."""
    out: dict[str, tuple[bytes | None, int]] = {}
    for path in sorted(root.rglob("*")):
        if path.relative_to(root).as_posix() == SERVER_LOCK:
            continue
        st = path.lstat()
        data = path.read_bytes() if path.is_file() else None
        out[str(path.relative_to(root))] = (data, st.st_mode)
    return out


def _cluster_with_hosts(cluster: Path) -> None:
    rig = make_rig(cluster)
    for serial in ("sn-0", "sn-1", "sn-2"):
        assert rig.client.request("GET", f"/first-stage-script/{serial}").code == 200


def _truncate_head_commit(cluster: Path) -> None:
    repo = pygit2.Repository(str(cluster))
    oid = str(repo.head.target)
    path = cluster / ".git" / "objects" / oid[:2] / oid[2:]
    os.chmod(path, 0o644)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _needed_by_head(cluster: Path) -> set[str]:
    """Ids of the objects start-up reads: HEAD's commit, its trees and their blobs (older
    commits are history, with authors of every length, and are not read at start-up)."""
    repo = pygit2.Repository(str(cluster))
    head = repo.head.peel(pygit2.Commit)
    needed = {str(head.id)}
    trees = [head.tree]
    while trees:
        tree = trees.pop()
        needed.add(str(tree.id))
        for entry in tree:
            needed.add(str(entry.id))
            if entry.type_str == "tree":
                trees.append(repo[entry.id])
    return needed


def _truncate_largest_loose_object(cluster: Path) -> None:
    needed = _needed_by_head(cluster)
    objects = [p for p in (cluster / ".git" / "objects").glob("??/*")
               if p.is_file() and p.parent.name + p.name in needed]
    path = max(objects, key=lambda p: p.stat().st_size)
    os.chmod(path, 0o644)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _tear_cluster_json(cluster: Path) -> None:
    path = cluster / "cluster.json"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage_head(cluster: Path) -> None:
    (cluster / ".git" / "HEAD").write_bytes(b"\x00\xffnot a ref at all\n")


def _missing_branch_ref(cluster: Path) -> None:
    repo = pygit2.Repository(str(cluster))
    branch = repo.head.name
    del repo
    (cluster / ".git" / branch).unlink()


def _serve(tmp_path: Path, cluster: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = _free_port()
    config = tmp_path / "pxestack.yaml"
    config.write_text(
        "state_dir: state\n"
        f"http: {{listen: '127.0.0.1:{port}', public_url: 'http://127.0.0.1:{port}'}}\n"
        "provision:\n"
        f"  cluster_dir: {cluster}\n"
        "  default_os_version: 3975.2.0\n"
        "  network: {ip_range: {start: 198.18.10.10, end: 198.18.10.50}, subnet_size: 24}\n"
        "  profiles: [{name: core, quantity: 5}]\n"
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pxestack", "serve", "--config", str(config)],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}", log


def _wait_for_port(proc: subprocess.Popen[bytes], base: str) -> float:
    """Seconds until the HTTP port answers; fails when the process exits or hangs."""
    started = time.monotonic()
    port = int(base.rsplit(":", 1)[1])
    while time.monotonic() - started < START_TIMEOUT:
        assert proc.poll() is None, f"pxestack serve exited with {proc.returncode}"
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"pxestack serve did not open its port within {START_TIMEOUT:g} s")


def _call(base: str, method: str, path: str, body: bytes | None = None) -> tuple[int, Any, str]:
    request = urllib.request.Request(base + path, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


DAMAGES: list[tuple[str, Callable[[Path], None], str, bool]] = [
    # (case, damage, a word the reason must contain, the git repository is damaged)
    ("truncated HEAD commit", _truncate_head_commit, "cut short", True),
    ("truncated largest loose object", _truncate_largest_loose_object, "cut short", True),
    ("torn cluster.json", _tear_cluster_json, "cluster.json", False),
    ("garbage in HEAD", _garbage_head, "HEAD", True),
    ("missing branch ref", _missing_branch_ref, "does not exist", True),
]


@pytest.mark.parametrize(
    ("damage", "expected", "git_damaged"),
    [pytest.param(d, e, r, id=name) for name, d, e, r in DAMAGES],
)
def test_damaged_cluster_starts_read_only_and_says_why(
    tmp_path: Path, damage: Callable[[Path], None], expected: str, git_damaged: bool
) -> None:
    cluster = tmp_path / "cluster"
    _cluster_with_hosts(cluster)
    damage(cluster)
    before = _snapshot(cluster)

    proc, base, log = _serve(tmp_path, cluster)
    try:
        took = _wait_for_port(proc, base)
        assert took < START_TIMEOUT

        code, body, content_type = _call(base, "GET", "/admin/health")
        assert code == 503, body
        health = json.loads(body)
        assert health["ok"] is False
        assert health["read_only"] is True
        assert expected in health["damaged"]

        # A write: enrolling a new machine, and an admin change of a known one.
        for method, path in (
            ("GET", "/first-stage-script/sn-new"),
            ("PUT", "/admin/host/sn-0/set_installed"),
        ):
            code, body, content_type = _call(base, method, path, b"" if method == "PUT" else None)
            assert code == 503, (path, body)
            assert content_type.startswith("application/json"), content_type
            refusal = json.loads(body)
            assert refusal["read_only"] is True
            assert expected in refusal["reason"]

        # A boot path answers (a script, or 503 when the boot needs a write), never 500.
        code, body, _ = _call(base, "GET", "/ipxebootscript?serial=sn-1")
        assert code in (200, 503), body

        # The records are files beside the repository: still served.
        code, body, _ = _call(base, "GET", "/admin/host/sn-1")
        assert code == 200, body
        assert json.loads(body)["Serial"] == "sn-1"
        # The history comes from git: refused when git is damaged, never a hang.
        code, body, _ = _call(base, "GET", "/admin/host/sn-1/history")
        assert code == (503 if git_damaged else 200), body
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert "damaged and host records are read-only" in text, text
    assert "Traceback" not in text, text
    assert _snapshot(cluster) == before
