"""kill -9 during writes, then restart: no torn conf.json, the repository consistent, and
nothing that was acknowledged lost: torn record files, a damaged git repository and a death
between writing and answering are all survived."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pygit2

from pxestack.provision.store import FileHostStore

WRITER = Path(__file__).with_name("prov_crash_writer.py")
ORDER = ["unknown", "installing", "installed"]


def _run_and_kill(cluster: Path, start: int, acks_before_kill: int) -> dict[str, str]:
    """Run the writer, SIGKILL it after *acks_before_kill* acknowledgements; return them."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(cluster), str(start)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    acked: dict[str, str] = {}
    deadline = time.monotonic() + 60
    try:
        assert proc.stdout is not None
        while len(acked) < acks_before_kill and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            _, serial, state = line.split()
            acked[serial] = state
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return acked


def test_kill_minus_nine_loses_nothing_acknowledged(tmp_path):
    cluster = tmp_path / "cluster"
    rng = random.Random(5)
    acknowledged: dict[str, str] = {}
    for round_number in range(4):
        acked = _run_and_kill(cluster, round_number * 10000, rng.randint(3, 40))
        assert acked, "the writer acknowledged nothing"
        acknowledged.update(acked)

        store = FileHostStore(cluster)  # restart: recovery runs here
        for conf in cluster.glob("*/conf.json"):
            json.loads(conf.read_text())  # never torn
        assert not list(cluster.glob("*/.*.tmp"))
        for serial, state in acknowledged.items():
            found = store.read(serial)
            assert found is not None, f"acknowledged host {serial} lost"
            # The change acknowledged, or a later one that landed before the kill.
            assert ORDER.index(found.host.state.value) >= ORDER.index(state)
        repo = pygit2.Repository(str(cluster))
        head = repo.head.peel(pygit2.Commit)
        list(head.tree)
        assert all(flags == pygit2.enums.FileStatus.CURRENT for flags in repo.status().values()), (
            repo.status()
        )
        assert not (cluster / ".git" / "index.lock").exists()
        assert store.health()["ok"] is True
