"""One server per git-directory state: an exclusive lock on the cluster directory.

Two pxestack processes pointed at the same cluster directory would each keep their own
cache, MAC index and pending git commits, hand the same profile slot or address to two
machines, and interleave commits in one repository.  The first one to start takes an
exclusive ``flock`` on ``<cluster-dir>/.pxestack/server.lock`` and writes its identity
(host name, PID, start time) into the file; a second one finds the lock taken and refuses
to start with that identity in the error, instead of corrupting the state.

The kernel drops the lock when the holder exits, however it exits (``kill -9`` included),
so a stale file never blocks a restart: only a *running* holder does.  The lock is an open
file description (``flock``, not ``fcntl``'s per-process record locks), so closing an
unrelated descriptor of the same file does not release it.  Several servers sharing one
state is the PostgreSQL store's job (``docs/scale-out.md``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pxestack.errors import PxeStackError

#: The lock file, inside the cluster directory's private (never committed) folder.
LOCK_NAME = "server.lock"
PRIVATE_DIR = ".pxestack"


class StateLocked(PxeStackError):  # noqa: N818 - reads as the state it reports
    """Another running pxestack holds the cluster directory; the message names it."""

    def __init__(self, path: Path, holder: dict[str, Any] | None) -> None:
        self.path = path
        self.holder = holder
        super().__init__(_refusal(path, holder))


def _refusal(path: Path, holder: dict[str, Any] | None) -> str:
    if holder:
        who = (
            f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')}"
        )
    else:
        who = "a process that has not written its identity yet"
    return (
        f"the cluster directory {path.parent.parent} is in use by another pxestack server "
        f"({who}; lock {path}); two servers on one git-directory state would corrupt it. "
        "Stop the other server, or give this one its own provision.cluster_dir, or share "
        "the state through provision.store kind postgresql"
    )


@dataclass(slots=True)
class _Held:
    """The lock file this process holds for one directory, and how many users it has."""

    fd: int
    identity: dict[str, Any]
    users: int = 0


#: Locks this process holds, by resolved lock path.
_HELD: dict[str, _Held] = {}
_HELD_LOCK = threading.Lock()


class StateLock:
    """An exclusive lock on a cluster directory, held until :meth:`release`.

    The lock is per process: a service tree rebuilt in the same process (a reload, or a
    test that restarts a server in place) shares the one lock; it is dropped when the last
    user releases it.
    """

    def __init__(self, path: Path, held: _Held) -> None:
        self.path = path
        self.identity = held.identity
        self._held: _Held | None = held

    @classmethod
    def acquire(
        cls, cluster_dir: Path, *, clock: Callable[[], float] = time.time
    ) -> StateLock:
        """Take the lock of *cluster_dir* or raise :class:`StateLocked` naming its holder."""
        private = Path(cluster_dir) / PRIVATE_DIR
        private.mkdir(parents=True, exist_ok=True)
        path = private / LOCK_NAME
        key = str(path.resolve())
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is None:
                held = _take(path, clock)
                _HELD[key] = held
            held.users += 1
        return cls(path, held)

    def release(self) -> None:
        """Drop this use of the lock; the last one unlocks (the file stays)."""
        with _HELD_LOCK:
            held, self._held = self._held, None
            if held is None:
                return
            held.users -= 1
            if held.users > 0:
                return
            _HELD.pop(str(self.path.resolve()), None)
        with contextlib.suppress(OSError):
            fcntl.flock(held.fd, fcntl.LOCK_UN)
        os.close(held.fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


def _take(path: Path, clock: Callable[[], float]) -> _Held:
    """Open and ``flock`` *path*, then write this process's identity into it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_identity(fd)
        os.close(fd)
        raise StateLocked(path, holder) from None
    except BaseException:
        os.close(fd)
        raise
    identity = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.fromtimestamp(clock(), UTC).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(identity).encode() + b"\n", 0)
    os.fsync(fd)
    return _Held(fd, identity)


def _read_identity(fd: int) -> dict[str, Any] | None:
    """The identity the holder wrote, or None when it is missing or unreadable."""
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


__all__ = ["LOCK_NAME", "StateLock", "StateLocked"]
