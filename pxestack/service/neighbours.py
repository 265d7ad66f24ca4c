"""The kernel's neighbour (ARP) table against the pools served: a start-up warning.

Linux keeps at most ``gc_thresh3`` IPv4 neighbour entries (1024 by default) for the whole
machine; once the table is full, a packet to a host with no entry is dropped and the
kernel logs ``neighbour: arp_cache: neighbor table overflow!``.  Every machine booting on
a directly attached segment needs an entry while the server talks to it (TFTP, HTTP), so a
boot storm of more machines than that limit loses the replies to the newest ones: their
firmware sees silence and gives up, with no error anywhere in pxestack.

At start-up :func:`warn_neighbour_limits` adds up the addresses of the pools on the
served interfaces' own networks (pools behind a relay need no entry here: the relay is
the neighbour), reads the limits (``net.ipv4.neigh.<interface>.gc_thresh3`` where the
kernel has a per-interface value, else ``net.ipv4.neigh.default.gc_thresh3``) and warns
with the exact ``sysctl`` command when the table is too small.  docs/operations.md says
why and what to persist.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from twisted.logger import Logger

log = Logger()

#: Where the kernel exposes the neighbour-table settings.
NEIGH_ROOT = Path("/proc/sys/net/ipv4/neigh")
#: Entries kept free beyond the pools: routers, other servers, the operator's own hosts.
HEADROOM = 256
#: The three garbage-collection thresholds, lowest first.
THRESHOLDS = ("gc_thresh1", "gc_thresh2", "gc_thresh3")


@dataclass(frozen=True, slots=True)
class NeighbourAdvice:
    """The table is too small: what it holds, what it needs, and the command to fix it."""

    needed: int
    limit: int
    source: str
    command: str

    def message(self) -> str:
        """The warning, in one line."""
        return (
            f"the kernel neighbour table holds at most {self.limit} entries ({self.source}), "
            f"but the pools on the served interfaces hold {self.needed} addresses: in a boot "
            f"storm the replies to machines past that limit are dropped (kernel log: "
            f"'neighbor table overflow').  Raise it with: {self.command}"
        )


def attached_addresses(pools: Iterable[Any], networks: Iterable[IPv4Network]) -> int:
    """How many pool addresses lie on the interfaces' own *networks* (each pool once).

    *pools* are ``dhcp.pools`` entries (``subnet``, ``start``, ``end``).
    """
    nets = list(networks)
    total = 0
    for pool in pools:
        if any(pool.subnet.overlaps(net) for net in nets):
            total += max(0, int(pool.end) - int(pool.start) + 1)
    return total


def read_limits(ifname: str | None, root: Path = NEIGH_ROOT) -> tuple[dict[str, int], str]:
    """The thresholds that apply to *ifname* and where they were read (``""``: unreadable).

    Per-interface values win where the kernel has them; this kernel family keeps them in
    ``default`` only.  Inside a network namespace other than the first the files are
    absent (the table is the machine's), and nothing is returned.
    """
    for scope in ([ifname] if ifname else []) + ["default"]:
        values: dict[str, int] = {}
        for name in THRESHOLDS:
            try:
                values[name] = int((root / scope / name).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                break
        if len(values) == len(THRESHOLDS):
            return values, f"net.ipv4.neigh.{scope}"
    return {}, ""


def advice(needed: int, limits: Mapping[str, int], source: str) -> NeighbourAdvice | None:
    """The advice when ``gc_thresh3`` is below *needed* plus :data:`HEADROOM`, else None.

    The command keeps the kernel's proportions (thresholds 1:2:4 of the hard limit,
    rounded up to a multiple of 1024) and never lowers a threshold already higher.
    """
    if not limits or needed <= 0:
        return None
    want = needed + HEADROOM
    limit = limits["gc_thresh3"]
    if limit >= want:
        return None
    hard = -(-want // 1024) * 1024
    wanted = {"gc_thresh1": hard // 4, "gc_thresh2": hard // 2, "gc_thresh3": hard}
    settings = " ".join(
        f"{source}.{name}={max(wanted[name], limits.get(name, 0))}" for name in THRESHOLDS
    )
    return NeighbourAdvice(needed, limit, f"{source}.gc_thresh3", f"sysctl -w {settings}")


def warn_neighbour_limits(pools: Iterable[Any], interfaces: Iterable[Any],
                          root: Path = NEIGH_ROOT) -> NeighbourAdvice | None:
    """Warn when the neighbour table cannot hold the served pools; returns the advice.

    *interfaces* are the DHCP server's ``InterfaceInfo`` (``name``, ``network``).  The
    table is shared by all interfaces, so the pools of all of them are added up.
    """
    interfaces = list(interfaces)
    needed = attached_addresses(pools, [info.network for info in interfaces])
    first = interfaces[0].name if interfaces else None
    limits, source = read_limits(first, root)
    if not source:
        log.debug("neighbour table limits unreadable under {root}: not checked", root=str(root))
        return None
    found = advice(needed, limits, source)
    if found is not None:
        log.warn("{message}", message=found.message(), needed=found.needed, limit=found.limit,
                 command=found.command)
    return found


__all__ = [
    "HEADROOM",
    "NeighbourAdvice",
    "advice",
    "attached_addresses",
    "read_limits",
    "warn_neighbour_limits",
]
