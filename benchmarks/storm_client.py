"""The boot-storm load generator: N simulated machines, run inside the client namespace.

Started by :mod:`benchmarks.bootstorm` as ``python benchmarks/storm_client.py SPEC.json``;
prints one JSON report on stdout.  The machines are :mod:`pxestack.simulate`'s (the
library behind ``pxestack simulate``), in its relay shape: the client namespace has one
address, so every machine's DHCP goes through one socket on the relay address, port 67
(giaddr), and each leased address is added to the client interface once leased, so that
TFTP and HTTP come from the machine's own address and per-client limits in the server
apply per machine.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from typing import Any

from pxestack.simulate import PHASES, StormError, StormSpec, storm

__all__ = ["PHASES", "AddressAdder", "main"]


class AddressAdder:
    """Adds each leased address to the client interface through one ``ip -batch -``."""

    def __init__(self, ifname: str, prefix: int) -> None:
        self.ifname, self.prefix = ifname, prefix
        self.process = subprocess.Popen(
            ["ip", "-force", "-batch", "-"], stdin=subprocess.PIPE, text=True
        )

    async def add(self, address: str) -> None:
        """Add *address* and wait (bounded) until a socket can bind to it."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"addr add {address}/{self.prefix} dev {self.ifname}\n")
        self.process.stdin.flush()
        for _ in range(200):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.bind((address, 0))
                return
            except OSError:
                await asyncio.sleep(0.01)
            finally:
                probe.close()
        raise StormError(f"address {address} never became usable")

    def close(self) -> None:
        """End the ``ip`` process."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


async def run(values: dict[str, Any]) -> dict[str, Any]:
    """The storm of the spec *values* (the JSON :mod:`benchmarks.bootstorm` writes)."""
    spec = StormSpec.from_mapping(values)
    adder = AddressAdder(values["ifname"], values["prefix"])
    try:
        return await storm(spec, add_address=adder.add)
    finally:
        adder.close()


def main() -> None:
    """Read the spec file named on the command line, run the storm, print the JSON report."""
    with open(sys.argv[1]) as handle:
        values = json.load(handle)
    print(json.dumps(asyncio.run(run(values))))


if __name__ == "__main__":
    main()
