"""Who may enrol a new serial: the enrolment policy and the first-contact rate limit (sans-IO).

A first contact (a request naming a serial that has no record) creates a record, takes an
address of ``network.ip_range`` and a profile slot, and makes a git commit.  Anyone on the
provisioning segment can send one, so :class:`EnrolmentGate` decides before anything is
created (``provision.enrolment``):

* ``dhcp-seen``: only a source address that pxestack's own DHCP leased, offered or (proxy)
  answered within ``enrolment_window`` seconds enrols; anything else is refused (403).
* ``approve``: the machine is recorded as ``pending`` (no address, no profile) and waits
  for an operator (``PUT /admin/host/<serial>/approve``).
* ``open``: every first contact enrols (labs; mayu's behaviour).

In every mode :class:`FirstContactLimiter` caps first contacts per source address (429).
Nothing here does I/O; ``now`` comes from the caller (the reactor's clock).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from twisted.logger import Logger

from pxestack.dhcp.seen import RecentlySeen

log = Logger()

#: How many source addresses the limiter remembers (the least recently used go first).
LIMITER_CAPACITY = 4096


class EnrolmentMode(enum.Enum):
    """``provision.enrolment``."""

    DHCP_SEEN = "dhcp-seen"
    APPROVE = "approve"
    OPEN = "open"


class Admission(enum.Enum):
    """What a first contact that is let through becomes."""

    #: Enrol now: profile, address and machine ID (today's first contact).
    ENROL = "enrol"
    #: Record as ``pending``; an operator approves it later.
    PENDING = "pending"


class EnrolmentRefused(Exception):  # noqa: N818 - the answer it maps to
    """A first contact is refused: *code* is the HTTP status (403 or 429)."""

    def __init__(self, code: int, message: str, retry_after: int | None = None) -> None:
        self.code = code
        self.message = message
        self.retry_after = retry_after
        super().__init__(message)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class FirstContactLimiter:
    """A token bucket per source address: *rate* first contacts per minute, burst *rate*.

    A rate of 0 disables the limit.  At most *capacity* sources are remembered; the least
    recently used one is forgotten first (it starts again with a full bucket).
    """

    def __init__(self, rate_per_minute: float, capacity: int = LIMITER_CAPACITY) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = max(1.0, rate_per_minute)
        self.capacity = capacity
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether a limit applies."""
        return self.rate > 0

    def allow(self, source: str, now: float) -> bool:
        """Take one token of *source*'s bucket at *now*; ``False`` when it is empty."""
        if not self.enabled:
            return True
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[source] = bucket
            while len(self._buckets) > self.capacity:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def retry_after(self, source: str) -> int:
        """Whole seconds until *source* has a token again (at least 1)."""
        bucket = self._buckets.get(source)
        if bucket is None or not self.enabled:
            return 1
        return max(1, int((1.0 - bucket.tokens) / self.rate + 0.999))


def _ipv4(source: str) -> IPv4Address | None:
    """*source* as an IPv4 address (IPv4-mapped IPv6 included), or ``None``."""
    try:
        address = ip_address(source)
    except ValueError:
        return None
    if isinstance(address, IPv6Address):
        return address.ipv4_mapped
    return address


class EnrolmentGate:
    """Admits or refuses first contacts (see the module documentation)."""

    def __init__(
        self,
        mode: EnrolmentMode | str,
        *,
        sightings: RecentlySeen | None = None,
        window: float = 1800.0,
        limiter: FirstContactLimiter | None = None,
    ) -> None:
        self.mode = EnrolmentMode(mode)
        self.sightings = sightings
        self.window = window
        self.limiter = limiter or FirstContactLimiter(0)

    def admit(self, source: str, serial: str, now: float) -> Admission:
        """Decide on the first contact of *serial* from *source* at *now*.

        Raises :class:`EnrolmentRefused` (403: not seen by pxestack's DHCP; 429: over the
        per-source rate).  Each refusal is logged at info level with source and serial.
        """
        if self.mode is EnrolmentMode.DHCP_SEEN:
            address = _ipv4(source)
            seen = (
                address is not None
                and self.sightings is not None
                and self.sightings.seen(address, now, self.window)
            )
            if not seen:
                log.info(
                    "enrolment refused: {source} asked to enrol {serial} but pxestack's DHCP "
                    "has not seen that address (provision.enrolment: dhcp-seen)",
                    source=source, serial=serial,
                )
                raise EnrolmentRefused(
                    403, "enrolment refused: this address was not seen by pxestack's DHCP"
                )
        if not self.limiter.allow(source, now):
            log.info(
                "enrolment refused: {source} is over provision.first_contact_rate "
                "(first contact of {serial})", source=source, serial=serial,
            )
            raise EnrolmentRefused(
                429, "too many first contacts from this address",
                retry_after=self.limiter.retry_after(source),
            )
        return Admission.PENDING if self.mode is EnrolmentMode.APPROVE else Admission.ENROL


__all__ = [
    "LIMITER_CAPACITY",
    "Admission",
    "EnrolmentGate",
    "EnrolmentMode",
    "EnrolmentRefused",
    "FirstContactLimiter",
]
