"""The host record, its state and machine identity, in mayu's on-disk format.

A :class:`Host` is one ``<cluster-dir>/<serial>/conf.json``.  Field names on disk are mayu's
(Go style, capitalised) so that existing cluster directories, scripts that
read them and ``mayuctl`` keep working.  Keys pxestack does not know are kept verbatim in
:attr:`Host.extra` and written back, so a newer or older writer's fields survive.

Parsing is strict where mayu was strict (the state string) and where a wrong value would be
dangerous later (addresses, MACs); a record that fails is reported with the field name.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from ipaddress import IPv4Address
from types import MappingProxyType
from typing import Any

#: Go's zero ``time.Time`` as mayu writes it for a host that never booted.
GO_ZERO_TIME = "0001-01-01T00:00:00Z"


class HostState(enum.Enum):
    """A host's lifecycle state; the values are mayu's JSON strings."""

    UNKNOWN = "unknown"
    CONFIGURED = "configured"
    INSTALLING = "installing"
    INSTALLED = "installed"
    RUNNING = "running"
    #: Enrolment policy ``approve``: seen once, waiting for an operator; holds no address
    #: and no profile slot (pxestack's addition; mayu had no such state).
    PENDING = "pending"

    @classmethod
    def parse(cls, text: object) -> HostState:
        """Strictly parse a state string: anything but the state names is an error.

        mayu's ``HostState`` unmarshaller refuses unknown strings instead of defaulting;
        a typo in a hand-edited conf.json must not silently mean "unknown".
        """
        if not isinstance(text, str):
            raise InvalidHostRecord("State", f"{text!r} is not a string")
        try:
            return cls(text)
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise InvalidHostRecord("State", f"{text!r} is not one of {names}") from None


class InvalidHostRecord(ValueError):  # noqa: N818 - mayu-era name, reads well at raise sites
    """A conf.json (or an API body) holds a value pxestack cannot accept."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field_name = field_name
        super().__init__(f"{field_name}: {message}")


_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def normalize_mac(value: object) -> str:
    """A MAC address in lower-case colon form; accepts ``-`` and ``.``-free variants."""
    if not isinstance(value, str):
        raise InvalidHostRecord("MacAddresses", f"{value!r} is not a MAC address")
    text = value.strip().lower().replace("-", ":")
    if re.fullmatch(r"[0-9a-f]{12}", text):
        text = ":".join(text[i : i + 2] for i in range(0, 12, 2))
    if not _MAC.fullmatch(text):
        raise InvalidHostRecord("MacAddresses", f"{value!r} is not a MAC address")
    return text


# -- identity ------------------------------------------------------------------------------

_SERIAL_CHARS = re.compile(r"[a-z0-9][a-z0-9._:+-]{0,127}")
#: Serials that firmware reports when the vendor never set one, so they are not unique
#: (mayu refused the same list).  Compared after lower-casing and trimming.
KNOWN_BAD_SERIALS = frozenset(
    {
        "",
        "0",
        "0123456789",  # QEMU/KVM's default SMBIOS serial
        "123456789",
        "1234567890",
        "none",
        "n/a",
        "na",
        "null",
        "not specified",
        "not-specified",
        "default string",  # AMI BIOS placeholder
        "default-string",
        "to be filled by o.e.m.",  # AMI BIOS placeholder
        "to-be-filled-by-o.e.m.",
        "system serial number",
        "system-serial-number",
        "chassis serial number",
        "chassis-serial-number",
        "serial",
        "00000000",
        "xxxxxxxxxx",
    }
)


class BadIdentity(ValueError):  # noqa: N818
    """Neither the serial nor the UUID a machine sent can name a host directory."""


def sanitize_serial(raw: object) -> str:
    """The directory name for a serial: lower-cased, spaces as ``-`` (as mayu's collector).

    The result is used as a path component, a git path and in scripts, so it must match
    ``[a-z0-9][a-z0-9._:+-]*`` and be at most 128 characters (no NUL, ``/``,
    ``..``, non-ASCII, leading dot).  Anything else raises :class:`BadIdentity`.
    """
    if not isinstance(raw, str):
        raise BadIdentity(f"serial {raw!r} is not a string")
    text = "-".join(raw.strip().lower().split())
    if ".." in text or not _SERIAL_CHARS.fullmatch(text):
        raise BadIdentity(f"serial {raw!r} is not usable as a host name")
    return text


def is_known_bad_serial(raw: str) -> bool:
    """Whether *raw* is a placeholder serial shared by many machines (mayu PR #122).

    VMware serials (``VMware-56 4d ...``) are also refused: iPXE truncates them, so the
    serial seen at iPXE time differs from the one Linux reads.
    """
    text = raw.strip().lower()
    return text in KNOWN_BAD_SERIALS or "vmware" in text or len(set(text) - {"-", " "}) <= 1


def machine_identity(serial: object, uuid: object = None) -> str:
    """The host key for a machine: its serial, or its SMBIOS UUID for known-bad serials.

    Raises :class:`BadIdentity` when neither is usable.
    """
    if isinstance(serial, str) and not is_known_bad_serial(serial):
        return sanitize_serial(serial)
    if isinstance(uuid, str) and uuid.strip():
        text = uuid.strip().lower()
        well_formed = re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text
        )
        # All-zero and all-F UUIDs are placeholders of broken SMBIOS tables, not identities.
        if well_formed and text.replace("-", "").strip("0f"):
            return text
        raise BadIdentity(f"uuid {uuid!r} is not a usable SMBIOS UUID")
    raise BadIdentity(f"serial {serial!r} is a placeholder and no UUID was given")


#: The one empty read-only mapping every record without overrides, versions or unmodelled
#: keys shares (most records have none: a mapping each cost about 300 bytes per host).
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen(values: dict[str, Any]) -> Mapping[str, Any]:
    """*values* read-only; the shared :data:`_EMPTY` when there are none."""
    return MappingProxyType(values) if values else _EMPTY


# -- the record ----------------------------------------------------------------------------

#: Version fields boot_complete copies from its payload (mayu §5.2).
VERSION_FIELDS = (
    "CoreOSVersion",
    "FlatcarVersion",
    "MayuVersion",
    "DockerVersion",
    "EtcdVersion",
    "FleetVersion",
    "RktVersion",
    "K8sVersion",
    "YochuVersion",
)


@dataclass(frozen=True, slots=True)
class Host:
    """One machine's record (reference/mayu-api.md; JSON names in the comments)."""

    serial: str  # Serial (lower-cased; also the directory name)
    machine_id: str = ""  # MachineID: 32 lower-case hex digits
    hostname: str = ""  # Hostname
    enabled: bool = True  # Enabled (always true; never read by mayu)
    cabinet: int = 0  # Cabinet
    machine_on_cabinet: int = 0  # MachineOnCabinet
    internal_addr: IPv4Address | None = None  # InternalAddr
    profile: str = ""  # Profile
    fleet_metadata: tuple[str, ...] = ()  # FleetMetadata ("k=v" tags)
    fleet_disable_engine: bool = False  # FleetDisableEngine
    etcd_cluster_token: str = ""  # EtcdClusterToken
    mac_addresses: tuple[str, ...] = ()  # MacAddresses (lower-case colon form)
    connected_nic: str = ""  # ConnectedNIC
    ipmi_addr: IPv4Address | None = None  # IPMIAddr
    state: HostState = HostState.UNKNOWN  # State
    keep_disk_data: bool = False  # KeepDiskData
    last_boot: datetime | None = None  # LastBoot (None = never: Go's zero time)
    provider_id: str = ""  # ProviderId
    overrides: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    versions: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    #: Keys of conf.json that pxestack does not model; written back unchanged.
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def evolve(self, **changes: Any) -> Host:
        """A copy with *changes* applied (the record is immutable)."""
        return replace(self, **changes)

    @property
    def os_version(self) -> str:
        """The OS version override > recorded version (``CoreOSVersion``/``FlatcarVersion``)."""
        override = self.overrides.get("CoreOSVersion") or self.overrides.get("FlatcarVersion")
        if isinstance(override, str) and override:
            return override
        return self.versions.get("FlatcarVersion") or self.versions.get("CoreOSVersion") or ""

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The mayu-shaped JSON object: omit-if-empty except ``State`` and ``LastBoot``."""
        out: dict[str, Any] = dict(self.extra)
        pairs: list[tuple[str, Any]] = [
            ("Serial", self.serial),
            ("Enabled", self.enabled),
            ("MachineID", self.machine_id),
            ("Hostname", self.hostname),
            ("Cabinet", self.cabinet),
            ("MachineOnCabinet", self.machine_on_cabinet),
            ("InternalAddr", str(self.internal_addr) if self.internal_addr else ""),
            ("Profile", self.profile),
            ("FleetMetadata", list(self.fleet_metadata)),
            ("FleetDisableEngine", self.fleet_disable_engine),
            ("EtcdClusterToken", self.etcd_cluster_token),
            ("MacAddresses", list(self.mac_addresses)),
            ("ConnectedNIC", self.connected_nic),
            ("IPMIAddr", str(self.ipmi_addr) if self.ipmi_addr else ""),
            ("KeepDiskData", self.keep_disk_data),
            ("ProviderId", self.provider_id),
            ("Overrides", dict(self.overrides)),
        ]
        pairs.extend((name, self.versions.get(name, "")) for name in VERSION_FIELDS)
        for key, value in pairs:
            if value:
                out[key] = value
            else:
                out.pop(key, None)
        out["State"] = self.state.value
        out["LastBoot"] = format_time(self.last_boot)
        return out

    def to_bytes(self) -> bytes:
        """conf.json's bytes: 2-space indented, no trailing newline (as mayu writes it)."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True, ensure_ascii=True).encode()

    @classmethod
    def from_json(cls, data: object, *, directory: str | None = None) -> Host:
        """Parse a conf.json object; :class:`InvalidHostRecord` names the bad field.

        *directory* (the record's directory name) wins over a missing or differently cased
        ``Serial``: the directory is the key, as in mayu.
        """
        if not isinstance(data, Mapping):
            raise InvalidHostRecord("(record)", "is not a JSON object")
        known = {
            "Serial",
            "Enabled",
            "MachineID",
            "Hostname",
            "Cabinet",
            "MachineOnCabinet",
            "InternalAddr",
            "Profile",
            "FleetMetadata",
            "FleetDisableEngine",
            "EtcdClusterToken",
            "MacAddresses",
            "ConnectedNIC",
            "IPMIAddr",
            "State",
            "KeepDiskData",
            "LastBoot",
            "ProviderId",
            "Overrides",
            *VERSION_FIELDS,
        }
        serial = directory if directory is not None else _str(data, "Serial").lower()
        if not serial:
            raise InvalidHostRecord("Serial", "is empty")
        versions = {name: _str(data, name) for name in VERSION_FIELDS if data.get(name)}
        overrides = data.get("Overrides") or {}
        if not isinstance(overrides, Mapping):
            raise InvalidHostRecord("Overrides", "is not an object")
        return cls(
            serial=serial,
            machine_id=_str(data, "MachineID"),
            hostname=_str(data, "Hostname"),
            enabled=_bool(data, "Enabled", True),
            cabinet=_uint(data, "Cabinet"),
            machine_on_cabinet=_uint(data, "MachineOnCabinet"),
            internal_addr=_ip(data, "InternalAddr"),
            profile=_str(data, "Profile"),
            fleet_metadata=_str_list(data, "FleetMetadata"),
            fleet_disable_engine=_bool(data, "FleetDisableEngine", False),
            etcd_cluster_token=_str(data, "EtcdClusterToken"),
            mac_addresses=tuple(normalize_mac(m) for m in _str_list(data, "MacAddresses")),
            connected_nic=_str(data, "ConnectedNIC"),
            ipmi_addr=_ip(data, "IPMIAddr"),
            state=HostState.parse(data.get("State", "unknown")),
            keep_disk_data=_bool(data, "KeepDiskData", False),
            last_boot=parse_time(data.get("LastBoot")),
            provider_id=_str(data, "ProviderId"),
            overrides=_frozen(dict(overrides)),
            versions=_frozen(versions),
            extra=_frozen({k: v for k, v in data.items() if k not in known}),
        )


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidHostRecord(key, f"{value!r} is not a string")
    return value


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise InvalidHostRecord(key, f"{value!r} is not true or false")
    return value


def _uint(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise InvalidHostRecord(key, f"{value!r} is not an integer from 0 to 255")
    return value


def _ip(data: Mapping[str, Any], key: str) -> IPv4Address | None:
    value = data.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InvalidHostRecord(key, f"{value!r} is not an IPv4 address")
    try:
        return IPv4Address(value)
    except ValueError:
        raise InvalidHostRecord(key, f"{value!r} is not an IPv4 address") from None


def _str_list(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidHostRecord(key, f"{value!r} is not a list of strings")
    return tuple(value)


def format_time(moment: datetime | None) -> str:
    """RFC 3339 in UTC, or Go's zero time for ``None`` (what mayuctl expects)."""
    if moment is None:
        return GO_ZERO_TIME
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: object) -> datetime | None:
    """Parse an RFC 3339 time as Go writes it (up to nanoseconds); zero time → ``None``."""
    if value in (None, "", GO_ZERO_TIME):
        return None
    if not isinstance(value, str):
        raise InvalidHostRecord("LastBoot", f"{value!r} is not an RFC 3339 time")
    text = value.strip()
    # Go writes up to nine fractional digits; Python's parser takes at most six.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidHostRecord("LastBoot", f"{value!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise InvalidHostRecord("LastBoot", f"{value!r} has no time zone")
    if moment.year <= 1:
        return None
    return moment


__all__ = [
    "GO_ZERO_TIME",
    "KNOWN_BAD_SERIALS",
    "VERSION_FIELDS",
    "BadIdentity",
    "Host",
    "HostState",
    "InvalidHostRecord",
    "format_time",
    "is_known_bad_serial",
    "machine_identity",
    "normalize_mac",
    "parse_time",
    "sanitize_serial",
]
