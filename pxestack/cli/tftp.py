"""``pxestack tftp``: serve a directory over TFTP, nothing else.

Quick mode, like ``dhcp`` and ``http``: no configuration file, no provisioning.  The command
line becomes the same :class:`~pxestack.config.Config` a file would give (``load_config``),
so validation and defaults are those of ``pxestack serve``::

    pxestack tftp --root /srv/tftp --listen 0.0.0.0:69 --max-blksize 1468
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pxestack.cli import EXIT_USAGE, print_problems
from pxestack.config import Config, ConfigError, load_config

DEFAULT_LISTEN = "0.0.0.0:69"
#: Seconds the parent waits for its workers to bind before it binds itself.
WORKER_READY_TIMEOUT = 30.0


def register(subparsers: Any) -> None:
    """Add the ``tftp`` subcommand."""
    parser = subparsers.add_parser(
        "tftp",
        help="serve a directory over TFTP (quick mode)",
        description="Serve the files under --root over TFTP (RFC 1350) with blksize, tsize, "
        "timeout and windowsize options (RFC 2347-2349, 7440).  Uploads are refused.",
    )
    parser.add_argument("--root", required=True, metavar="DIR", help="directory to serve")
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="ADDR:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN})",
    )
    parser.add_argument("--max-blksize", type=int, metavar="N",
                        help="largest block size granted, 8..65464 (default 1468)")
    parser.add_argument("--max-windowsize", type=int, metavar="N",
                        help="largest RFC 7440 window granted (default 16)")
    parser.add_argument("--per-client-limit", type=int, metavar="N",
                        help="concurrent transfers per client IP (default 64)")
    parser.add_argument("--single-port", action="store_true",
                        help="serve every transfer from the listening port (firewalls, NAT)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="worker processes sharing the port with SO_REUSEPORT; the kernel "
                        "spreads clients over them (default 1)")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    # A worker writes one octet to this descriptor once its reactor runs (bound port).
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", choices=("debug", "info", "warn", "error"),
                        default="info")
    parser.set_defaults(func=tftp_command)


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration the command line describes; raises :class:`ConfigError`."""
    tftp: dict[str, object] = {
        "listen": args.listen,
        "root": args.root,
        "single_port": bool(args.single_port),
    }
    if args.max_blksize is not None:
        tftp["max_blksize"] = args.max_blksize
    if args.per_client_limit is not None:
        tftp["per_client_limit"] = args.per_client_limit
    if args.max_windowsize is not None:
        tftp["max_windowsize"] = args.max_windowsize
    return load_config(
        {"log_format": args.log_format, "log_level": args.log_level, "tftp": tftp},
        base_dir=Path.cwd(),
        source="pxestack tftp",
    )


def tftp_command(args: argparse.Namespace) -> int:
    """Validate the arguments, then run the TFTP service until interrupted."""
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        return print_problems("the pxestack tftp arguments", exc.problems)
    assert config.tftp is not None
    if config.tftp.root.exists() and not config.tftp.root.is_dir():
        print(f"pxestack tftp: --root {config.tftp.root} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    if args.workers < 1:
        print("pxestack tftp: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    from pxestack.cli._run import run_service
    from pxestack.service import build_service
    from pxestack.service.tftp import TftpService

    root = build_service(config)
    tftp = root.getServiceNamed("tftp")
    assert isinstance(tftp, TftpService)
    workers: list[subprocess.Popen[bytes]] = []
    if args.workers > 1 or args.reuse_port:
        tftp.reuse_port = True
    if args.ready_fd is not None:
        _report_ready_when_running(args.ready_fd)
    if args.workers > 1:
        workers = _start_workers(config, args.workers - 1)
    try:
        return run_service(root, config)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def _report_ready_when_running(descriptor: int) -> None:
    """In a worker: tell the parent (one octet on *descriptor*) that the port is bound."""
    from twisted.internet import reactor

    def ready() -> None:
        with contextlib.suppress(OSError):
            os.write(descriptor, b"1")
            os.close(descriptor)

    reactor.callWhenRunning(ready)


def _start_workers(config: Config, count: int) -> list[subprocess.Popen[bytes]]:
    """Start *count* workers and wait (bounded) until each has bound the shared port.

    The parent binds its own listener only afterwards, so whoever waits for the port to
    answer (a benchmark, a service manager) finds every process ready and the kernel
    spreads the very first requests over all of them.  A worker that is not ready within
    :data:`WORKER_READY_TIMEOUT` seconds is waited for no longer; it joins when it can.
    """
    workers = []
    pending: list[int] = []
    for _ in range(count):
        read_end, write_end = os.pipe()
        try:
            workers.append(_spawn_worker(config, write_end))
        finally:
            os.close(write_end)
        pending.append(read_end)
    deadline = time.monotonic() + WORKER_READY_TIMEOUT
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"pxestack tftp: {len(pending)} worker(s) not ready after "
                      f"{WORKER_READY_TIMEOUT:.0f} s; starting anyway", file=sys.stderr)
                break
            ready, _, _ = select.select(pending, [], [], left)
            for descriptor in ready:
                os.read(descriptor, 1)  # b"1", or b"" when the worker died
                pending.remove(descriptor)
                os.close(descriptor)
    finally:
        for descriptor in pending:
            os.close(descriptor)
    return workers


def _spawn_worker(config: Config, ready_fd: int) -> subprocess.Popen[bytes]:
    """Start one more ``pxestack tftp`` on the same port (SO_REUSEPORT), dying with us."""
    tftp = config.tftp
    assert tftp is not None
    argv = [
        "tftp", "--root", str(tftp.root), "--listen", f"{tftp.listen[0]}:{tftp.listen[1]}",
        "--max-blksize", str(tftp.max_blksize), "--max-windowsize", str(tftp.max_windowsize),
        "--per-client-limit", str(tftp.per_client_limit), "--log-format", config.log_format,
        "--log-level", config.log_level, "--reuse-port", "--ready-fd", str(ready_fd),
    ]
    if tftp.single_port:
        argv.append("--single-port")
    return subprocess.Popen(  # noqa: S603 - our own interpreter and validated values
        [sys.executable, "-m", "pxestack", *argv], preexec_fn=_die_with_parent,
        pass_fds=(ready_fd,),
    )


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent exits (Linux PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


__all__ = ["config_from_args", "register", "tftp_command"]
