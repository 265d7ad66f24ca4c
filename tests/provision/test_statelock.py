"""Two servers on one git-directory state: the second refuses to start and names the first."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import pytest_twisted

from pxestack.config import load_config
from pxestack.provision.service import provisioning_extensions
from pxestack.provision.statelock import LOCK_NAME, StateLock, StateLocked

#: A second process that takes the lock of argv[1], says so, and waits to be killed.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pxestack.provision.statelock import StateLock
    lock = StateLock.acquire(Path(sys.argv[1]))
    print("held", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def other_server(tmp_path):
    """Start a process holding the lock of ``tmp_path/state/cluster``; kill it at the end."""
    cluster = tmp_path / "state" / "cluster"
    cluster.mkdir(parents=True)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cluster)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        yield child, cluster
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)


def _config(tmp_path):
    return load_config(
        {
            "state_dir": str(tmp_path / "state"),
            "http": {"listen": "127.0.0.1:18080", "public_url": "http://198.18.0.1:18080"},
            "provision": {"profiles": [{"name": "core", "quantity": 1}]},
        }
    )


def test_second_server_refuses_with_the_holders_identity(tmp_path, other_server):
    child, cluster = other_server
    with pytest.raises(StateLocked) as caught:
        provisioning_extensions(_config(tmp_path))
    message = str(caught.value)
    assert f"pid {child.pid} on host {socket.gethostname()}" in message
    assert str(cluster) in message
    assert "started 20" in message
    assert caught.value.holder is not None and caught.value.holder["pid"] == child.pid
    # Refused before anything was written: no cluster.json, no git repository.
    assert not (cluster / "cluster.json").exists()
    assert not (cluster / ".git").exists()


def test_a_killed_holder_does_not_block_a_restart(tmp_path, other_server):
    child, cluster = other_server
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    lock = StateLock.acquire(cluster)
    try:
        written = json.loads((cluster / ".pxestack" / LOCK_NAME).read_text())
        assert written["pid"] == os.getpid()
        assert written["host"] == socket.gethostname()
    finally:
        lock.release()


def test_one_process_shares_its_lock_until_the_last_release(tmp_path):
    cluster = tmp_path / "cluster"
    first = StateLock.acquire(cluster)
    second = StateLock.acquire(cluster)
    first.release()
    first.release()  # a second release of one handle changes nothing
    probe = [sys.executable, "-c", textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from pxestack.provision.statelock import StateLock, StateLocked
        try:
            StateLock.acquire(Path(sys.argv[1])).release()
        except StateLocked as exc:
            print("refused:", exc)
        else:
            print("taken")
        """), str(cluster)]
    out = subprocess.run(probe, capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.startswith("refused:") and f"pid {os.getpid()}" in out
    second.release()
    out = subprocess.run(probe, capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == "taken"


@pytest_twisted.inlineCallbacks
def test_stopping_the_service_releases_the_lock(tmp_path):
    ext = provisioning_extensions(_config(tmp_path))
    cluster = tmp_path / "state" / "cluster"
    service = ext.services[0]
    service.startService()
    yield service.stopService()
    out = subprocess.run(
        [sys.executable, "-c", HOLDER.replace("time.sleep(120)", ""), str(cluster)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "held"


def test_serve_says_why_it_cannot_start(tmp_path, other_server, capsys, monkeypatch):
    import pxestack.cli._run
    from pxestack.cli import main

    # serve starts logging before it reports the refusal; in this process that would leave
    # an observer writing to capsys's stream after the test.
    monkeypatch.setattr(pxestack.cli._run, "start_logging", lambda *args, **kwargs: None)

    config = tmp_path / "pxestack.yaml"
    config.write_text(json.dumps({
        "state_dir": str(tmp_path / "state"),
        "http": {"listen": "127.0.0.1:0", "public_url": "http://198.18.0.1:18080"},
        "provision": {"profiles": [{"name": "core", "quantity": 1}]},
    }))
    code = main(["serve", "--config", str(config)])
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot start" in err and f"pid {other_server[0].pid}" in err
