"""Run pxestack's router-advertisement responder alone on one interface (harness helper).

Used beside the dnsmasq reference to measure what the RA alone changes::

    ra_runner.py br0 [--multicast]

Logs to stdout; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from pxestack.ra import RouterAdvertisementService


def main() -> None:
    """Parse arguments, start the service and run the reactor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("interface")
    parser.add_argument("--multicast", action="store_true", help="answer to ff02::1")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    ra = RouterAdvertisementService([args.interface], unicast=not args.multicast,
                                    reactor=reactor)
    ra.startService()
    reactor.addSystemEventTrigger("before", "shutdown", ra.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
