"""Shared plumbing for the subcommands that run servers: logging set-up and the reactor loop."""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, globalLogBeginner

from pxestack.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, print_problems
from pxestack.config import Config, RunAs
from pxestack.config.checks import user_groups
from pxestack.errors import ConfigError
from pxestack.service.logs import make_observer

log = Logger()

def start_logging(log_format: str, level: str, stream: TextIO | None = None) -> None:
    """Send twisted.logger events to *stream* (default stderr) as text or JSON lines
    (:func:`pxestack.service.logs.make_observer`).

    Events logged before this call (the warnings of building the services, which happens
    before the log format is known) are buffered by twisted.logger and written now, so no
    start-up warning is lost.
    """
    globalLogBeginner.beginLoggingTo(
        [make_observer(log_format, level, stream or sys.stderr)],
        redirectStandardIO=False,
        discardBuffer=False,
    )


#: Codecs the templates and protocol code use lazily (jinja2 decodes string literals with
#: unicode-escape, URLs may need idna).
_LAZY_CODECS = ("unicode_escape", "raw_unicode_escape", "idna", "ascii", "latin-1", "utf-8")


def _handed_over(config: Config) -> Iterator[Path]:
    """What pxestack may have created as root before the switch: the state directory and
    its files, the DHCP lease journal, and the whole cluster directory."""
    yield config.state_dir
    if config.state_dir.is_dir():
        for child in config.state_dir.iterdir():
            if child.is_file() and not child.is_symlink():
                yield child
    if config.dhcp is not None and config.dhcp.lease_file is not None:
        yield config.dhcp.lease_file
    if config.provision is not None:
        cluster = config.provision.cluster_dir
        yield cluster
        for top, dirs, files in os.walk(cluster):
            for name in (*dirs, *files):
                yield Path(top, name)


def drop_privileges(config: Config, run_as: RunAs) -> None:
    """Give root-made state to *run_as*, then switch groups, gid and uid for good.

    Files that starting as root created (the git objects of a new cluster repository, the
    lease journal) are handed over, so the server can still write them and a later start
    as either identity finds them usable.  ``HOME`` follows the user.
    """
    for path in _handed_over(config):
        try:
            if path.lstat().st_uid == 0:
                os.chown(path, run_as.uid, run_as.gid, follow_symlinks=False)
        except FileNotFoundError:
            continue
    # Codecs are imported on first use; after the switch the interpreter's own library may
    # be unreadable (a Python installed under root's home), so load them while we can.
    for codec in _LAZY_CODECS:
        codecs.lookup(codec)
    os.setgroups(sorted(user_groups(run_as)))
    os.setgid(run_as.gid)
    os.setuid(run_as.uid)
    os.environ["HOME"] = run_as.home
    os.environ["USER"] = os.environ["LOGNAME"] = run_as.user
    log.info("switched to user {user} (uid {uid}) and group {group} (gid {gid})",
             user=run_as.user, uid=run_as.uid, group=run_as.group, gid=run_as.gid)


def _stop_quietly(root: service.IService) -> None:
    """Stop what did start (ports opened before the failure), ignoring further errors."""
    try:
        stopped = root.stopService()
    except Exception:
        log.failure("stopping after a failed start")
        return
    if stopped is not None and hasattr(stopped, "addErrback"):
        stopped.addErrback(lambda failure: log.failure("stopping after a failed start",
                                                       failure))


def run_service(
    root: service.IService,
    config: Config,
    reactor: Any = None,
    *,
    on_running: Callable[[], None] | None = None,
) -> int:
    """Start *root*, run the reactor until SIGINT/SIGTERM, then stop every service.

    The reactor's own signal handlers turn SIGINT and SIGTERM into ``reactor.stop()``; the
    "before shutdown" trigger waits for ``stopService`` so that ports close and state is
    flushed before the process exits.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    start_logging(config.log_format, config.log_level)
    log.info("pxestack starting from {source}", source=config.source)
    try:
        # Every privileged port (and DHCP's raw sockets) is opened here, as root.
        root.privilegedStartService()
        if config.run_as is not None and os.geteuid() == 0 and config.run_as.uid != 0:
            drop_privileges(config, config.run_as)
        root.startService()
    except (CannotListenError, OSError) as exc:
        log.critical("cannot start: {error}", error=str(exc))
        print(f"pxestack: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ConfigError as exc:
        # An extension that cannot start (pxestack.extensions) is an operator's problem.
        for problem in exc.problems:
            log.critical("cannot start: {problem}", problem=str(problem))
        print_problems(config.source, exc.problems)
        _stop_quietly(root)
        return EXIT_USAGE
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    # Logged once the reactor runs, i.e. after it installed its SIGINT/SIGTERM handlers:
    # from this line on a signal means a clean shutdown.
    reactor.callWhenRunning(log.info, "pxestack running")
    if on_running is not None:
        reactor.callWhenRunning(on_running)
    reactor.run()
    log.info("pxestack stopped")
    return EXIT_OK


__all__ = ["drop_privileges", "make_observer", "run_service", "start_logging"]
