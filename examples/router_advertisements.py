"""Answer IPv6 router solicitations so iPXE stops waiting ~13 s for IPv6 (run as root).

    sudo .venv/bin/python examples/router_advertisements.py br0 [--multicast] [--mac MAC ...]

Runs only :class:`pxestack.ra.RouterAdvertisementService` on the given interfaces: every
router solicitation gets an advertisement with M=0, O=0, router lifetime 0 and no prefix,
which ends the IPv6 configuration wait of iPXE 1.0.0+git-20190125 (Debian 12's ipxe-qemu
and ipxe) right after its DHCPv4 ACK.  Use it only on a dedicated provisioning segment
(see docs/firmware-testing.md).  ``--mac`` limits the answers to those machines, the way an
embedder would answer only the MACs it is provisioning.
"""

from __future__ import annotations

import argparse
import sys
from ipaddress import IPv6Address

from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from pxestack.ra import RouterAdvertisementService


def main() -> None:
    """Parse the arguments and run the responder until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("interfaces", nargs="+")
    parser.add_argument("--multicast", action="store_true",
                        help="answer to ff02::1 instead of the soliciting address")
    parser.add_argument("--mac", action="append", default=[],
                        help="answer only solicitations from this MAC (repeatable)")
    args = parser.parse_args()
    known = {bytes.fromhex(mac.replace(":", "").replace("-", "")) for mac in args.mac}

    def only_known_machines(source: IPv6Address, link_layer: bytes | None) -> bool:
        return not known or link_layer in known

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    responder = RouterAdvertisementService(
        args.interfaces, unicast=not args.multicast, answer=only_known_machines, reactor=reactor
    )
    responder.startService()
    reactor.addSystemEventTrigger("before", "shutdown", responder.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
