"""Shared plumbing for the subcommands that run servers: logging set-up and the reactor loop."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)

from pxestack.cli import EXIT_FAILURE, EXIT_OK
from pxestack.config import Config

log = Logger()

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


def make_observer(log_format: str, level: str, stream: TextIO) -> ILogObserver:
    """A text or JSON log observer on *stream* that drops events below *level*."""
    observer: ILogObserver = (
        jsonFileLogObserver(stream, recordSeparator="")
        if log_format == "json"
        else textFileLogObserver(stream)
    )
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
    return FilteringLogObserver(observer, [predicate])


def start_logging(log_format: str, level: str, stream: TextIO | None = None) -> None:
    """Send twisted.logger events to *stream* (default stderr) as text or JSON lines."""
    globalLogBeginner.beginLoggingTo(
        [make_observer(log_format, level, stream or sys.stderr)],
        redirectStandardIO=False,
        discardBuffer=True,
    )


def run_service(root: service.IService, config: Config, reactor: Any = None) -> int:
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
        root.privilegedStartService()
        root.startService()
    except (CannotListenError, OSError) as exc:
        log.critical("cannot start: {error}", error=str(exc))
        print(f"pxestack: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    # Logged once the reactor runs, i.e. after it installed its SIGINT/SIGTERM handlers:
    # from this line on a signal means a clean shutdown.
    reactor.callWhenRunning(log.info, "pxestack running")
    reactor.run()
    log.info("pxestack stopped")
    return EXIT_OK


__all__ = ["make_observer", "run_service", "start_logging"]
