"""``run_as``: ``pxestack serve`` binds as root, then serves (and commits to git) as a user."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from tests.conftest import require

PXESTACK = [sys.executable, "-m", "pxestack"]


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ids_of(pid: int) -> tuple[list[int], list[int]]:
    """The (real, effective, saved, fs) uids and gids of *pid*."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    return ([int(v) for v in fields["Uid"].split()], [int(v) for v in fields["Gid"].split()])


@pytest.fixture
def base() -> Iterator[Path]:
    # Under /tmp itself: the unprivileged user must be able to reach the state directory.
    path = Path(tempfile.mkdtemp(prefix="pxestack-run-as-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_serve_binds_as_root_then_serves_and_commits_as_run_as(base: Path) -> None:
    require(os.geteuid() == 0, "needs root to switch users")
    user = pwd.getpwnam("nobody")
    group = "nogroup" if "nogroup" in {g.gr_name for g in grp.getgrall()} else "nobody"
    gid = grp.getgrnam(group).gr_gid
    state = base / "state"
    state.mkdir(mode=0o750)
    os.chown(state, user.pw_uid, gid)
    token = base / "metrics.token"  # root's, 0600: read before the switch
    token.write_text("m" * 40 + "\n")
    token.chmod(0o600)
    http_port = free_port(socket.SOCK_STREAM)
    dhcp_port = 67 if port_free(67) else free_port(socket.SOCK_DGRAM)
    config = base / "pxestack.yaml"
    config.write_text(
        "state_dir: state\n"
        "log_level: debug\n"
        f"run_as: {{user: nobody, group: {group}}}\n"
        "dhcp:\n"
        f"  listen: 127.0.0.1:{dhcp_port}\n"
        "  proxy_port: 0\n"
        "  server_address: 127.0.0.1\n"
        "  pools: [{subnet: 127.0.0.0/8, start: 127.0.10.10, end: 127.0.10.20}]\n"
        f"http: {{listen: '127.0.0.1:{http_port}', metrics_token_file: metrics.token}}\n"
        # The enrolment below comes from loopback, not from an address DHCP leased.
        "provision: {enrolment: open}\n"
    )
    proc = subprocess.Popen(
        [*PXESTACK, "serve", "--config", str(config)], cwd=base,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HOME": "/root"},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "pxestack running" in line:
                break
        assert any("pxestack running" in line for line in seen), "".join(seen)
        uids, gids = ids_of(proc.pid)
        assert uids == [user.pw_uid] * 4
        assert gids == [gid] * 4
        url = f"http://127.0.0.1:{http_port}"
        boot = urllib.request.urlopen(f"{url}/ipxebootscript?serial=SN-RUNAS&uuid=&mac=", timeout=5)
        assert boot.status == 200
        # Enrolment writes the host record and commits it, as the unprivileged user.
        script = urllib.request.urlopen(f"{url}/first-stage-script/SN-RUNAS", timeout=5)
        assert script.status == 200
        health = urllib.request.urlopen(f"{url}/admin/health", timeout=5).read().decode()
        assert '"git_ok": true' in health and '"ok": true' in health
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, "".join(seen) + err
    cluster = state / "cluster"
    # The repository belongs to nobody now; reading it as root needs libgit2's owner check off.
    pygit2.option(pygit2.enums.Option.SET_OWNER_VALIDATION, 0)
    repo = pygit2.Repository(str(cluster))
    messages = [c.message for c in repo.walk(repo.head.target)]
    assert any("sn-runas" in m.lower() for m in messages), messages
    owners = {p.stat().st_uid for p in cluster.rglob("*")} | {cluster.stat().st_uid}
    assert owners == {user.pw_uid}
    assert "switched to user nobody" in "".join(seen)


def test_the_cluster_repository_ignores_the_global_git_config(tmp_path: Path) -> None:
    """After ``twistd --uid`` HOME still names root's home; libgit2 must not need it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user\n  broken =\n")  # unreadable to libgit2
    program = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pxestack.provision.store import FileHostStore\n"
        "store = FileHostStore(Path(sys.argv[1]), git=True, git_name='n', git_email='n@x')\n"
        "store.write_cluster_file('x.txt', b'x', 'a change')\n"
        "print(store.health())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path / "cluster")],
        capture_output=True, text=True, timeout=30, env={**os.environ, "HOME": str(home)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "'git_ok': True" in result.stdout
