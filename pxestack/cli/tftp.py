"""``pxestack tftp``: serve a directory over TFTP, nothing else.

Quick mode, like ``dhcp`` and ``http``: no configuration file, no provisioning.  The command
line becomes the same :class:`~pxestack.config.Config` a file would give (``load_config``),
so validation and defaults are those of ``pxestack serve``::

    pxestack tftp --root /srv/tftp --listen 0.0.0.0:69 --max-blksize 1468
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from pxestack.cli import EXIT_FAILURE, EXIT_USAGE, add_logging_arguments, print_problems
from pxestack.config import Config, ConfigError, load_config

DEFAULT_LISTEN = "0.0.0.0:69"


def register(subparsers: Any) -> None:
    """Add the ``tftp`` subcommand."""
    parser = subparsers.add_parser(
        "tftp",
        help="serve a directory over TFTP (quick mode)",
        description="Serve the files under --root over TFTP (RFC 1350) with blksize, tsize, "
        "timeout and windowsize options (RFC 2347-2349, 7440).  Uploads are refused.",
    )
    parser.add_argument("--root", required=True, metavar="DIR", help="directory to serve")
    parser.add_argument("--create", action="store_true",
                        help="create --root (and its parents) when it does not exist")
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
    # A worker serves the bound socket its parent passes down (see _bind_shared_sockets).
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    add_logging_arguments(parser)
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
    if not config.tftp.root.exists():
        if not args.create:
            print(f"pxestack tftp: --root {config.tftp.root} does not exist (create it, or "
                  "pass --create)", file=sys.stderr)
            return EXIT_USAGE
        try:
            config.tftp.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"pxestack tftp: --create: cannot create {config.tftp.root}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"pxestack tftp: created --root {config.tftp.root} (empty)", file=sys.stderr)
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
    if args.listen_fd is not None:
        tftp.adopt_fd = args.listen_fd
    if args.workers > 1:
        host, port = config.tftp.listen
        try:
            shared = _bind_shared_sockets(host, port, args.workers)
        except OSError as exc:
            print(f"pxestack tftp: cannot bind {host}:{port}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        tftp.adopt_fd = shared[0].fileno()
        try:
            workers = [_spawn_worker(config, sock.fileno()) for sock in shared[1:]]
        finally:
            for sock in shared[1:]:
                sock.close()  # the workers hold their own copies
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


def _bind_shared_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """*count* UDP sockets bound to (*host*, *port*) with SO_REUSEPORT, all at once.

    The parent binds every process's socket before any process serves, then hands each
    worker its own.  Whoever waits for the port to answer (a service manager, a
    benchmark) therefore finds all of them bound, and the kernel spreads the very first
    requests over every process.  If each process bound its own socket while starting,
    the first to bind would receive every request sent before the others were up.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _spawn_worker(config: Config, listen_fd: int) -> subprocess.Popen[bytes]:
    """Start one more ``pxestack tftp`` serving *listen_fd* (a bound SO_REUSEPORT socket
    on the same port), dying with us."""
    tftp = config.tftp
    assert tftp is not None
    argv = [
        "tftp", "--root", str(tftp.root), "--listen", f"{tftp.listen[0]}:{tftp.listen[1]}",
        "--max-blksize", str(tftp.max_blksize), "--max-windowsize", str(tftp.max_windowsize),
        "--per-client-limit", str(tftp.per_client_limit), "--log-format", config.log_format,
        "--log-level", config.log_level, "--reuse-port", "--listen-fd", str(listen_fd),
    ]
    if tftp.single_port:
        argv.append("--single-port")
    return subprocess.Popen(  # noqa: S603 - our own interpreter and validated values
        [sys.executable, "-m", "pxestack", *argv], preexec_fn=_die_with_parent,
        pass_fds=(listen_fd,),
    )


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent exits (Linux PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


__all__ = ["config_from_args", "register", "tftp_command"]
