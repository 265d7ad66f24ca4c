"""Pure enrolment decisions: which profile, which address, which machine ID (mayu's rules).

Nothing here touches the disk or a lock; the store calls these functions while it holds the
enrolment lock, with the complete list of existing hosts, so the results are exact under
concurrency (no two machines take the last slot of a profile or the same address).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address
from types import MappingProxyType

from pxestack.config.provision import IPRange, ProfileConfig, ProvisionConfig
from pxestack.provision.hostindex import HostIndex
from pxestack.provision.model import Host, HostState

#: The profile a machine gets when every configured profile is full (reference/mayu-api.md).
DEFAULT_PROFILE = "default"


class AddressPoolExhausted(Exception):  # noqa: N818
    """Every address of ``network.ip_range`` is taken (mayu never enforced the end: bug)."""


def profile_counts(hosts: Iterable[Host]) -> Counter[str]:
    """How many hosts hold each profile; hosts in any state count, empty profiles do not.

    A :class:`~pxestack.provision.hostindex.HostIndex` answers from its counts, without a
    pass over the hosts.
    """
    if isinstance(hosts, HostIndex):
        return hosts.profile_counts()
    return Counter(host.profile for host in hosts if host.profile)


def choose_profile(profiles: Sequence[ProfileConfig], counts: Counter[str]) -> str:
    """The first profile in config order whose count is below its quantity, else ``default``.

    A quantity of 0 never matches (mayu: "0/absent = never auto-assigned").
    """
    for profile in profiles:
        if counts[profile.name] < profile.quantity:
            return profile.name
    return DEFAULT_PROFILE


def allocate_address(
    ip_range: IPRange | None, used: Iterable[IPv4Address] | HostIndex
) -> IPv4Address | None:
    """The lowest free address of *ip_range* (multicast skipped), or ``None`` without a range.

    Unlike mayu, the end of the range is enforced: a full range raises
    :class:`AddressPoolExhausted` rather than handing out addresses beyond it.
    *used* may be a :class:`~pxestack.provision.hostindex.HostIndex`, whose kept count of
    taken addresses answers without a pass over the hosts.
    """
    if ip_range is None:
        return None
    if isinstance(used, HostIndex):
        free = used.lowest_free_address(int(ip_range.start), int(ip_range.end))
        if free is None:
            raise AddressPoolExhausted(f"no free address left in {ip_range.start}-{ip_range.end}")
        return IPv4Address(free)
    taken = {int(a) for a in used}
    for number in range(int(ip_range.start), int(ip_range.end) + 1):
        if number in taken:
            continue
        address = IPv4Address(number)
        if address.is_multicast:
            continue
        return address
    raise AddressPoolExhausted(f"no free address left in {ip_range.start}-{ip_range.end}")


def new_machine_id(
    random_bytes: Callable[[int], bytes], cabinet: int = 0, position: int = 0
) -> str:
    """32 hex digits: 16 random bytes with byte 0 = cabinet, byte 1 = position (as mayu).

    The value becomes ``/etc/machine-id`` of the installed system.
    """
    raw = bytearray(random_bytes(16))
    raw[0] = cabinet & 0xFF
    raw[1] = position & 0xFF
    return raw.hex()


def hostname_for(machine_id: str) -> str:
    """mayu era B's hostname: the first 16 hex digits of the machine ID."""
    return machine_id[:16]


def new_host(
    serial: str,
    existing: Sequence[Host],
    config: ProvisionConfig,
    *,
    random_bytes: Callable[[int], bytes],
    default_token: str,
    profile_name: str | None = None,
    address: IPv4Address | None = None,
) -> Host:
    """The record for a machine seen for the first time (profile, address, ID, tags).

    *existing* must be every host on record (all states), read under the enrolment lock.
    *profile_name* and *address*, when given (an operator's pre-registration), are used
    instead of the automatic choice; the caller has checked them.
    """
    name = profile_name or choose_profile(config.profiles, profile_counts(existing))
    profile = config.profile(name)
    if address is None:
        address = allocate_address(
            config.network.ip_range,
            existing if isinstance(existing, HostIndex)
            else (h.internal_addr for h in existing if h.internal_addr is not None),
        )
    machine_id = new_machine_id(random_bytes)
    versions: dict[str, str] = {}
    if profile is not None and profile.os_version:
        versions["CoreOSVersion"] = profile.os_version
    return Host(
        serial=serial,
        machine_id=machine_id,
        hostname=hostname_for(machine_id),
        internal_addr=address,
        profile=name,
        fleet_metadata=profile.tags if profile else (),
        fleet_disable_engine=profile.disable_engine if profile else False,
        etcd_cluster_token=(profile.etcd_cluster_token if profile else "") or default_token,
        state=HostState.UNKNOWN,
        versions=MappingProxyType(versions),
    )


__all__ = [
    "DEFAULT_PROFILE",
    "AddressPoolExhausted",
    "allocate_address",
    "choose_profile",
    "hostname_for",
    "new_host",
    "new_machine_id",
    "profile_counts",
]
