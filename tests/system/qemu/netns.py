"""A network namespace with one bridge (the provisioning segment) and a tap per VM.

Layout inside namespace ``pxt-qemu-<pid>-<n>`` (prefix: ``PXESTACK_NETNS_PREFIX``)::

    br0  198.18.0.1/15, fe80::/64 link-local (DAD off so it is usable at once)
     |-- tap0 .. tapN-1   (QEMU opens them with -netdev tap,ifname=...)

Servers and QEMU both run inside the namespace (``ip netns exec``), so nothing touches the
host's network.  :meth:`Segment.close` deletes the namespace, which removes every device.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

SERVER_ADDRESS = "198.18.0.1"
PREFIX_LENGTH = 15
BRIDGE = "br0"

_counter = itertools.count()


def run(*argv: str) -> None:
    """Run a command, raising with its stderr on failure."""
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


@dataclass
class Segment:
    """One namespace with a bridge and *taps* tap devices."""

    name: str
    taps: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, taps: int, prefix: str | None = None) -> Segment:
        """Create the namespace, the bridge and the taps (all up).

        The name starts with *prefix*, else ``PXESTACK_NETNS_PREFIX``, else ``pxt-qemu``, so
        that runs sharing a machine can tell their namespaces apart."""
        prefix = prefix or os.environ.get("PXESTACK_NETNS_PREFIX") or "pxt-qemu"
        segment = cls(f"{prefix}-{os.getpid()}-{next(_counter)}")
        run("ip", "netns", "add", segment.name)
        try:
            ns = ("ip", "-n", segment.name)
            run(*ns, "link", "set", "lo", "up")
            segment.sysctl("net.ipv6.conf.default.accept_dad", "0")
            segment.sysctl("net.ipv6.conf.all.accept_dad", "0")
            run(*ns, "link", "add", BRIDGE, "type", "bridge",
                "forward_delay", "0", "stp_state", "0")
            segment.sysctl(f"net.ipv6.conf.{BRIDGE}.accept_dad", "0")
            run(*ns, "addr", "add", f"{SERVER_ADDRESS}/{PREFIX_LENGTH}", "dev", BRIDGE)
            run(*ns, "link", "set", BRIDGE, "up")
            for index in range(taps):
                tap = f"tap{index}"
                run(*ns, "tuntap", "add", "dev", tap, "mode", "tap")
                run(*ns, "link", "set", tap, "master", BRIDGE)
                run(*ns, "link", "set", tap, "up")
                segment.taps.append(tap)
        except BaseException:
            segment.close()
            raise
        return segment

    def add_address(self, address: str) -> None:
        """Give the bridge a further address (listed after :data:`SERVER_ADDRESS`)."""
        run("ip", "-n", self.name, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", BRIDGE)

    def sysctl(self, key: str, value: str) -> None:
        """Set a sysctl inside the namespace."""
        run("ip", "netns", "exec", self.name, "sysctl", "-q", "-w", f"{key}={value}")

    def command(self, argv: Sequence[str]) -> list[str]:
        """*argv* wrapped to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def close(self) -> None:
        """Delete the namespace (and with it the bridge and taps)."""
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


__all__ = ["BRIDGE", "PREFIX_LENGTH", "SERVER_ADDRESS", "Segment"]
