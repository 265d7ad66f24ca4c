"""Small shared type aliases used across layers."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import TypeAlias

#: A (host, port) pair as Twisted and the socket module use it.
Address: TypeAlias = tuple[str, int]

#: Seconds as a float, on whatever clock the caller uses (``reactor.seconds()`` in adapters).
Now: TypeAlias = float

#: An IPv4 address value.
IPv4: TypeAlias = IPv4Address

__all__ = ["Address", "IPv4", "Now"]
