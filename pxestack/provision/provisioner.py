"""The provisioning actions (mayu's handlers without the HTTP): enrol, record, transition, render.

:class:`Provisioner` is what the HTTP resources in :mod:`pxestack.provision.api` call.  Each
method validates its input, applies one change through the
:class:`~pxestack.provision.hoststore.HostStore` (so it is one atomic write and one audit
commit), and returns plain values.  Nothing here
knows about requests or status codes; errors are typed:

* :class:`BadRequest` (the caller's input is wrong -> 400),
* :class:`~pxestack.provision.hoststore.HostNotFound` (-> 400 "host doesn't exist", as mayu),
* :class:`~pxestack.provision.machine.IllegalTransition` (-> 409),
* :class:`~pxestack.provision.hoststore.PreconditionFailed` (-> 412),
* :class:`~pxestack.provision.templates.TemplateRenderError` and
  :class:`~pxestack.provision.hoststore.StoreError` (-> 500/503).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlsplit

from pxestack import __version__
from pxestack._fs import atomic_write
from pxestack.config.provision import ProfileConfig, ProvisionConfig, thaw
from pxestack.provision import assign
from pxestack.provision.flows import Flow, flow_for
from pxestack.provision.hostindex import HostIndex
from pxestack.provision.hoststore import HostStore, Versioned
from pxestack.provision.machine import MESSAGES, Event, apply, next_state
from pxestack.provision.model import (
    VERSION_FIELDS,
    BadIdentity,
    Host,
    HostState,
    InvalidHostRecord,
    machine_identity,
    normalize_mac,
    sanitize_serial,
)
from pxestack.provision.overrides import InvalidOverride, validate_overrides
from pxestack.provision.store import PRIVATE_DIR
from pxestack.provision.templates import Templates

#: mayu's commit messages for an enrolment (reference/mayu-api.md), recorded as one commit.
ENROL_MESSAGES = (
    "host created",
    "updated host InternalAddr",
    "updated host profile and metadata",
    "set default etcd discovery token",
)


#: The disk the installers write when neither the host, the profile nor templates_env say.
DEFAULT_INSTALL_DISK = "/dev/sda"
#: Human-readable OS names for the templates (``OSName``).
OS_NAMES = {
    "flatcar": "Flatcar Container Linux",
    "fcos": "Fedora CoreOS",
    "generic": "Linux",
}


class BadRequest(ValueError):  # noqa: N818 - the HTTP status it maps to
    """The request's content is not acceptable (HTTP 400)."""


class Conflict(Exception):  # noqa: N818 - the HTTP status it maps to
    """The request clashes with another record: a serial, MAC or address taken (HTTP 409)."""


class PendingLimitReached(Exception):  # noqa: N818 - the HTTP status it maps to
    """``provision.max_pending`` hosts already wait for approval (HTTP 503)."""


#: The commit of a first contact under ``provision.enrolment: approve``.
PENDING_MESSAGES = ("host created", "waiting for approval (no address, no profile)")
#: The commit of ``approve``: what an enrolment assigns (mayu's texts).
APPROVE_DETAILS = ENROL_MESSAGES[1:]
#: The commit of ``add`` (an operator's pre-registration), then what it assigned.
ADD_MESSAGE = "host added by an operator"
ADD_DETAILS = ENROL_MESSAGES[1:]
#: The commit of ``remove`` (mayu's wording: ``<serial>: host removed``).
REMOVE_MESSAGE = "host removed"


def callback_key(
    cluster_dir: Path, random_bytes: Callable[[int], bytes] = secrets.token_bytes
) -> bytes:
    """The secret that per-host callback tokens derive from (created 0600 on first use).

    It lives in ``<cluster-dir>/.pxestack/callback.key``, which the cluster's .gitignore
    excludes, so pushing the audit repository does not publish it.
    """
    path = cluster_dir / PRIVATE_DIR / "callback.key"
    if path.exists():
        key = path.read_bytes()
        if len(key) >= 16:
            return key
    path.parent.mkdir(mode=0o700, exist_ok=True)
    key = random_bytes(32)
    atomic_write(path, key, mode=0o600)
    os.chmod(path, 0o600)
    return key


class Provisioner:
    """mayu's behaviour over a :class:`HostStore` (see the module documentation)."""

    def __init__(
        self,
        config: ProvisionConfig,
        store: HostStore,
        *,
        base_url: str,
        templates: Templates | None = None,
        key: bytes,
        clock: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.config = config
        self.store = store
        self.base_url = base_url.rstrip("/")
        self.templates = templates or Templates(config.templates_dir, config.snippets_dir)
        self._key = key
        self.clock = clock
        self.random_bytes = random_bytes

    # -- identity and tokens ---------------------------------------------------------------

    @staticmethod
    def identity(serial: object, uuid: object = None) -> str:
        """The host key for *serial* (UUID fallback for placeholder serials; mayu PR #122)."""
        try:
            return machine_identity(serial, uuid)
        except BadIdentity as exc:
            raise BadRequest(str(exc)) from None

    def callback_token(self, host: Host) -> str:
        """The per-host secret the machine presents on callbacks (HMAC of serial + machine ID)."""
        message = f"pxestack-callback:{host.serial}:{host.machine_id}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:40]

    def token_matches(self, host: Host, presented: str | None) -> bool:
        """Constant-time check of a presented callback token."""
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.callback_token(host).encode()
        )

    def profile_of(self, host: Host) -> ProfileConfig | None:
        """The configured profile of *host* (``None`` for ``default`` when not configured)."""
        return self.config.profile(host.profile)

    def install_flow(self, host: Host) -> str:
        """``disk`` (mayu era B) or ``pxe`` (era C) for *host*'s profile."""
        profile = self.profile_of(host)
        return profile.install if profile is not None else "disk"

    def flow_of(self, host: Host | None) -> Flow:
        """The OS flow of *host*'s profile (Flatcar/disk for ``default`` or no host)."""
        return flow_for(self.profile_of(host) if host is not None else None)

    def now(self) -> datetime:
        """The current time as an aware datetime (from the injected clock)."""
        return datetime.fromtimestamp(self.clock(), UTC)

    # -- reading ---------------------------------------------------------------------------

    def get(self, serial: str) -> Versioned | None:
        """The record of *serial* (lower-cased as mayu does), or ``None``."""
        return self.store.read(serial.lower())

    def hosts(self) -> list[Host]:
        """Every host, ordered by serial (mayu returned them unordered)."""
        return sorted(self.store.hosts(), key=lambda h: h.serial)

    # -- enrolment -------------------------------------------------------------------------

    def first_contact(self, serial: str, *, pending: bool = False) -> tuple[Versioned, bool]:
        """The record of *serial*, enrolling the machine when it is new.

        With *pending* a new machine is recorded as ``pending`` instead: no address, no
        profile, no machine ID, until :meth:`approve`; at most ``max_pending`` such records
        exist (:class:`PendingLimitReached`).
        """

        def make_pending(existing: Sequence[Host]) -> Host:
            waiting = (
                existing.count_state(HostState.PENDING) if isinstance(existing, HostIndex)
                else sum(1 for host in existing if host.state is HostState.PENDING)
            )
            if waiting >= self.config.max_pending:
                raise PendingLimitReached(
                    f"{waiting} hosts already wait for approval (provision.max_pending)"
                )
            return Host(serial=serial, state=HostState.PENDING)

        if pending:
            return self.store.enrol(serial, make_pending, PENDING_MESSAGES)

        def make(existing: Sequence[Host]) -> Host:
            try:
                return assign.new_host(
                    serial,
                    existing,
                    self.config,
                    random_bytes=self.random_bytes,
                    default_token=self.store.default_etcd_token,
                )
            except assign.AddressPoolExhausted as exc:
                raise BadRequest(str(exc)) from None

        return self.store.enrol(serial, make, ENROL_MESSAGES)

    def approve(self, serial: str, if_match: str | None = None) -> Host:
        """Enrol a ``pending`` host: profile, address and machine ID, one commit (409 else)."""

        def change(host: Host) -> tuple[Host, str, Sequence[str]]:
            next_state(host.state, Event.APPROVE)
            # update() holds the store lock, so the claim sees every other host exactly.
            others = [h for h in self.store.hosts() if h.serial != serial]
            try:
                made = assign.new_host(
                    serial,
                    others,
                    self.config,
                    random_bytes=self.random_bytes,
                    default_token=self.store.default_etcd_token,
                )
            except assign.AddressPoolExhausted as exc:
                raise BadRequest(str(exc)) from None
            approved = made.evolve(extra=host.extra, mac_addresses=host.mac_addresses)
            return approved, MESSAGES[Event.APPROVE], APPROVE_DETAILS

        return self.store.update(serial, change, if_match=if_match).host

    def add(self, payload: Mapping[str, Any]) -> Host:
        """Pre-register a machine (MAAS's "add machine"): one record, one commit.

        *payload*: ``Serial`` (required), ``MacAddresses``, ``Profile``, ``InternalAddr``
        and ``Force``.  A profile chosen here is pinned (``ProfilePinned``): it respects
        the profile's quantity unless ``Force``, and the host keeps it whatever the
        quantities become.  Without ``Profile`` and ``InternalAddr`` the machine gets what
        its first contact would have given it.  The machine is enrolled (not ``pending``):
        an operator registered it.
        """
        try:
            serial = sanitize_serial(payload.get("Serial"))
        except BadIdentity as exc:
            raise BadRequest(f"Serial: {exc}") from None
        raw_macs = payload.get("MacAddresses") or []
        if not isinstance(raw_macs, list) or len(raw_macs) > 64:
            raise BadRequest("MacAddresses must be a list of at most 64 MAC addresses")
        macs: list[str] = []
        for index, raw in enumerate(raw_macs):
            try:
                mac = normalize_mac(raw)
            except InvalidHostRecord:
                raise BadRequest(f"MacAddresses[{index}]: {raw!r} is not a MAC address") from None
            if mac not in macs:
                macs.append(mac)
        profile = payload.get("Profile") or None
        if profile is not None:
            self._check_profile_name(profile)
        address = _optional_ip(payload.get("InternalAddr"), "InternalAddr")
        ip_range = self.config.network.ip_range
        if address is not None and ip_range is not None and address not in ip_range:
            raise BadRequest(
                f"InternalAddr {address} is outside network.ip_range "
                f"{ip_range.start}-{ip_range.end}"
            )
        force = _flag(payload.get("Force", False), "Force")

        def make(existing: Sequence[Host]) -> Host:
            for host in existing:
                taken = set(macs) & set(host.mac_addresses)
                if taken:
                    raise Conflict(
                        f"MacAddresses: {', '.join(sorted(taken))} belong to host {host.serial}"
                    )
                if address is not None and host.internal_addr == address:
                    raise Conflict(f"InternalAddr {address} is used by host {host.serial}")
            if profile is not None and not force:
                self._check_quantity(profile, existing)
            try:
                made = assign.new_host(
                    serial,
                    existing,
                    self.config,
                    random_bytes=self.random_bytes,
                    default_token=self.store.default_etcd_token,
                    profile_name=profile,
                    address=address,
                )
            except assign.AddressPoolExhausted as exc:
                raise Conflict(str(exc)) from None
            extra = {"ProfilePinned": True} if profile is not None else {}
            return made.evolve(mac_addresses=tuple(macs), extra=MappingProxyType(extra))

        details = [*ADD_DETAILS]
        if profile is not None:
            forced = " (quantity overridden)" if force else ""
            details.append(f"profile {profile} pinned{forced}")
        versioned, created = self.store.enrol(serial, make, (ADD_MESSAGE, *details))
        if not created:
            raise Conflict(f"Serial: host {serial} exists already")
        return versioned.host

    def move(
        self, serial: str, profile: object, force: object = False, if_match: str | None = None
    ) -> Host:
        """Give *serial* another profile (its tags follow), pinned; quantities unless *force*.

        One commit, mayu's "updated host profile and metadata".  The new profile's flow and
        templates apply from the host's next boot; a host installed to disk keeps running
        what it has until it is reinstalled (``reinstall``).
        """
        if not isinstance(profile, str) or not profile:
            raise BadRequest("Profile must be a profile name")
        self._check_profile_name(profile)
        forced = _flag(force, "Force")

        def change(host: Host) -> tuple[Host, str, Sequence[str]]:
            if host.state is HostState.PENDING:
                raise Conflict(f"host {host.serial} is pending: approve it first")
            if not forced and profile != host.profile:
                others = [h for h in self.store.hosts() if h.serial != host.serial]
                self._check_quantity(profile, others)
            config = self.config.profile(profile)
            moved = host.evolve(
                profile=profile,
                fleet_metadata=config.tags if config is not None else (),
                fleet_disable_engine=config.disable_engine if config is not None else False,
                extra=MappingProxyType({**host.extra, "ProfilePinned": True}),
            )
            detail = f"profile {host.profile or '(none)'} -> {profile}, pinned"
            if forced:
                detail += " (quantity overridden)"
            return moved, "updated host profile and metadata", (detail,)

        return self.store.update(serial.lower(), change, if_match=if_match).host

    def _check_profile_name(self, profile: object) -> None:
        """400 unless *profile* is a configured profile or the implicit ``default``."""
        if not isinstance(profile, str):
            raise BadRequest("Profile must be a string")
        if profile != assign.DEFAULT_PROFILE and self.config.profile(profile) is None:
            names = ", ".join(p.name for p in self.config.profiles) or "(none configured)"
            raise BadRequest(f"Profile {profile!r} is not configured (profiles: {names})")

    def _check_quantity(self, profile: str, others: Sequence[Host]) -> None:
        """409 when *profile* already holds its ``quantity`` of the hosts *others*."""
        if profile == assign.DEFAULT_PROFILE:
            return
        config = self.config.profile(profile)
        quantity = config.quantity if config is not None else 0
        holding = assign.profile_counts(others)[profile]
        if holding >= quantity:
            raise Conflict(
                f"Profile {profile} is full ({holding} of quantity {quantity}); "
                "Force overrides the quantity"
            )

    def remove(self, serial: str, if_match: str | None = None) -> Host:
        """Delete *serial*'s record: its address and profile slot are free again; one commit."""
        return self.store.remove(serial.lower(), REMOVE_MESSAGE, if_match=if_match).host

    # -- machine callbacks -----------------------------------------------------------------

    def host_data(
        self, payload: Mapping[str, Any], serial_hint: str | None = None
    ) -> tuple[Host, str]:
        """The installer's host-data POST: record NICs, go ``installing``, return the config.

        *payload* is mayu's ``{"Serial", "NetDevs": [{"Name", "MacAddress"}], "IPMIAddress",
        "ConnectedNIC"}``.  The final config is rendered before anything is stored; if it
        cannot be rendered nothing changes (mayu changed the state and then answered 500).
        """
        raw_serial = payload.get("Serial")
        if not isinstance(raw_serial, str) or not raw_serial.strip():
            raise BadRequest("no serial ? :/")
        serial = serial_hint or self.identity(raw_serial, payload.get("UUID"))
        macs = _netdev_macs(payload.get("NetDevs"))
        connected = payload.get("ConnectedNIC") or ""
        if not isinstance(connected, str) or len(connected) > 64 or not _is_ifname(connected):
            raise BadRequest(f"ConnectedNIC {connected!r} is not an interface name")
        ipmi = _optional_ip(payload.get("IPMIAddress"), "IPMIAddress")
        self.first_contact(serial)
        rendered: list[str] = []

        def change(host: Host) -> tuple[Host, str, Sequence[str]]:
            outcome = apply(host, Event.HOST_DATA, now=self.now())
            details = []
            updates: dict[str, Any] = {}
            if macs and macs != host.mac_addresses:
                updates["mac_addresses"] = macs
                details.append("collected host mac addresses")
            if connected and connected != host.connected_nic:
                updates["connected_nic"] = connected
                details.append("updated host connected nic")
            if ipmi is not None and ipmi != host.ipmi_addr:
                updates["ipmi_addr"] = ipmi
                details.append("updated host ipmi address")
            new = outcome.host.evolve(**updates)
            rendered.append(self.render_final(new))
            return new, outcome.message, details

        versioned = self.store.update(serial, change)
        return versioned.host, rendered[-1]

    def pxe_config(self, serial: str) -> tuple[Host, str]:
        """Era C's ``GET /ignition``: enrol if new, go ``installing``, return the config."""
        self.first_contact(serial)
        rendered: list[str] = []

        def change(host: Host) -> tuple[Host, str, Sequence[str]]:
            outcome = apply(host, Event.PXE_CONFIG, now=self.now())
            rendered.append(self.render_final(outcome.host))
            return outcome.host, outcome.message, outcome.details

        versioned = self.store.update(serial, change)
        return versioned.host, rendered[-1]

    def set_installed(self, serial: str, if_match: str | None = None) -> Host:
        """The installer wrote the disk: ``installed`` (DHCP stops PXE-booting it)."""
        return self._event(serial, Event.SET_INSTALLED, if_match=if_match)

    def boot_complete(
        self, serial: str, payload: Mapping[str, Any], if_match: str | None = None
    ) -> Host:
        """The installed OS booted: ``running``, ``LastBoot`` = now, versions copied."""
        versions = {}
        for name in VERSION_FIELDS:
            value = payload.get(name)
            if value is not None and not isinstance(value, str):
                raise BadRequest(f"{name} must be a string")
            if value:
                versions[name] = value
        return self._event(serial, Event.BOOT_COMPLETE, if_match=if_match, versions=versions)

    # -- admin -----------------------------------------------------------------------------

    def set_state(self, serial: str, state: object, if_match: str | None = None) -> Host:
        """``set_state``: any state, strictly parsed; ``configured`` keeps disk data."""
        try:
            target = HostState.parse(state)
        except InvalidHostRecord as exc:
            raise BadRequest(str(exc)) from None
        return self._event(serial, Event.SET_STATE, if_match=if_match, target=target)

    def mark_fresh(self, serial: str, if_match: str | None = None) -> Host:
        """``mark_fresh``: reinstall from scratch on the next boot."""
        return self._event(serial, Event.MARK_FRESH, if_match=if_match)

    def set_field(
        self, serial: str, field: str, value: object, if_match: str | None = None
    ) -> Host:
        """One of mayu's single-field setters (metadata, provider id, IPMI, cabinet, token)."""
        parsed: Any
        if field == "FleetMetadata":
            parsed, attr, message = normalize_tags(value), "fleet_metadata", "updated host metadata"
        elif field == "ProviderId":
            parsed, attr, message = (
                _short_str(value, field),
                "provider_id",
                "updated host provider id",
            )
        elif field == "IPMIAddr":
            parsed, attr, message = (
                _optional_ip(value, field),
                "ipmi_addr",
                "updated host ipmi address",
            )
        elif field == "Cabinet":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
                raise BadRequest("Cabinet must be an integer from 0 to 255")
            parsed, attr, message = value, "cabinet", "updated host cabinet"
        elif field == "EtcdClusterToken":
            parsed, attr, message = (
                _short_str(value, field),
                "etcd_cluster_token",
                "updated host etcd cluster token",
            )
        else:
            raise BadRequest(f"{field} cannot be set")

        def change(host: Host) -> tuple[Host, str, Sequence[str]]:
            return host.evolve(**{attr: parsed}), message, ()

        return self.store.update(serial.lower(), change, if_match=if_match).host

    def override(self, serial: str, overrides: object, if_match: str | None = None) -> Host:
        """Merge *overrides* into the host's ``Overrides`` (keys are never deleted, as mayu)."""
        try:
            checked = validate_overrides(overrides)
        except InvalidOverride as exc:
            raise BadRequest(str(exc)) from None

        def change(host: Host) -> tuple[Host, str, Sequence[str]]:
            merged = dict(host.overrides)
            merged.update(checked)
            keys = ", ".join(sorted(checked))
            return (
                host.evolve(overrides=MappingProxyType(merged)),
                f"updated host overrides: {keys}",
                (),
            )

        return self.store.update(serial.lower(), change, if_match=if_match).host

    def _event(
        self, serial: str, event: Event, *, if_match: str | None = None, **kwargs: Any
    ) -> Host:
        def change(host: Host) -> tuple[Host, str, Sequence[str]]:
            outcome = apply(host, event, now=self.now(), **kwargs)
            return outcome.host, outcome.message, outcome.details

        return self.store.update(serial.lower(), change, if_match=if_match).host

    # -- rendering -------------------------------------------------------------------------

    def images_url(self, host: Host | None) -> str:
        """Where this host's kernel and initrd are (``/images/<serial>`` selects its version)."""
        if host is None:
            return f"{self.base_url}/images"
        return f"{self.base_url}/images/{quote(host.serial, safe='')}"

    def context(self, host: Host | None) -> dict[str, Any]:
        """The template context (mayu's names), built fresh per render.

        ``TemplatesEnv`` = ``templates_env`` < profile ``templates_env`` < host ``Overrides``
        merged into a new dict every time (mayu merged into the global map, so one host's
        overrides leaked into other hosts' configs: bug).
        """
        env = thaw(self.config.templates_env)
        profile = self.profile_of(host) if host is not None else None
        if profile is not None:
            env.update(thaw(profile.templates_env))
        if host is not None:
            env.update(thaw(host.overrides))
        network = self.config.network
        host_json = host.to_json() if host is not None else {}
        if host is not None:
            host_json.setdefault("Hostname", host.hostname)
            host_json.setdefault("InternalAddr", "")
            host_json.setdefault("ConnectedNIC", "")
            host_json.setdefault("MachineID", host.machine_id)
            host_json.setdefault("Profile", host.profile)
            host_json["FleetMetadata"] = list(host.fleet_metadata)
        kernel_args = list(self.config.kernel_args) + (list(profile.kernel_args) if profile else [])
        serial = host.serial if host is not None else "__SERIAL__"
        quoted = quote(serial, safe="")
        flow = self.flow_of(host)
        images_url = self.images_url(host)
        script_url = f"{self.base_url}/script/{quoted}"
        flatcar = profile.flatcar if profile is not None else None
        parsed_base = urlsplit(self.base_url)
        return {
            # mayu's names for the last-stage config (cloud-config era)
            "MayuHost": parsed_base.hostname or "",
            "MayuPort": parsed_base.port or (443 if parsed_base.scheme == "https" else 80),
            "NoTLS": parsed_base.scheme != "https",
            "EtcdDiscoveryUrl": self.etcd_discovery_url(host, env),
            "ConfigFormat": flow.config_format,
            "FinalConfigURL": f"{self.base_url}/{flow.host_data_path}",
            "Host": host_json,
            "Profile": host.profile if host is not None else "",
            "InstallFlow": self.install_flow(host) if host is not None else "disk",
            "ClusterNetwork": {
                "IPRange": {
                    "Start": str(network.ip_range.start) if network.ip_range else "",
                    "End": str(network.ip_range.end) if network.ip_range else "",
                },
                "SubnetSize": network.subnet_size,
                "SubnetGateway": str(network.subnet_gateway or ""),
                "DNS": [str(d) for d in network.dns],
                "NTP": list(network.ntp),
                "NetworkModel": network.network_model,
                "InterfaceMatch": network.interface_match,
                "VlanId": network.vlan_id or "",
                "BondMode": network.bond_mode,
            },
            "TemplatesEnv": env,
            "BaseURL": self.base_url,
            "MayuURL": self.base_url,
            "ImagesURL": images_url,
            "PostBootURL": f"{self.base_url}/admin/host/{quote(serial, safe='')}/boot_complete",
            "SetInstalledURL": f"{self.base_url}/admin/host/{quote(serial, safe='')}/set_installed",
            "CallbackToken": self.callback_token(host) if host is not None else "",
            "KernelArgs": kernel_args,
            "OSName": OS_NAMES[flow.os],
            "OS": flow.os,
            "Flow": flow.name,
            "OSVersion": self.os_version(host),
            "PxeStackVersion": __version__,
            "InstallDisk": self.install_disk(host, env),
            "ConfigURL": f"{self.base_url}/ignition?serial={quoted}",
            "InstallerConfigURL": f"{self.base_url}/installer-ignition?serial={quoted}",
            "ScriptURL": script_url,
            "Flatcar": {
                "ImageSource": flatcar.image_source if flatcar else "cache",
                "Channel": flatcar.channel if flatcar else "stable",
                "BaseURL": (flatcar.base_url or "") if flatcar else "",
            },
            "Generic": self._generic_context(profile, serial, images_url, script_url),
        }

    def etcd_discovery_url(self, host: Host | None, env: Mapping[str, Any]) -> str:
        """mayu's ``EtcdDiscoveryUrl``: ``templates_env.etcd_discovery_base_url`` + ``/`` +
        the host's etcd token (or the cluster's default); ``""`` without that base URL
        (pxestack runs no etcd discovery service of its own)."""
        base = env.get("etcd_discovery_base_url")
        if not isinstance(base, str) or not base:
            return ""
        token = (host.etcd_cluster_token if host is not None else "") or (
            self.store.default_etcd_token
        )
        return f"{base.rstrip('/')}/{token}"

    def install_disk(self, host: Host | None, env: Mapping[str, Any]) -> str:
        """The disk to install to: host override > profile ``install_disk`` > templates_env."""
        override = host.overrides.get("install_disk") if host is not None else None
        if isinstance(override, str) and override:
            return override
        profile = self.profile_of(host) if host is not None else None
        if profile is not None and profile.install_disk:
            return profile.install_disk
        value = env.get("install_disk")
        return value if isinstance(value, str) and value else DEFAULT_INSTALL_DISK

    def _generic_context(
        self, profile: ProfileConfig | None, serial: str, images_url: str, script_url: str
    ) -> dict[str, Any]:
        """Kernel and initrd URLs and the command line of a generic profile."""
        generic = profile.generic if profile is not None else None
        if generic is None:
            return {"Kernel": "", "Initrds": [], "Cmdline": [], "Script": ""}

        def url(name: str) -> str:
            if name.startswith(("http://", "https://")):
                return name
            return f"{images_url}/{quote(name, safe='')}"

        values = {
            "base_url": self.base_url,
            "images_url": images_url,
            "script_url": script_url,
            "serial": quote(serial, safe=""),
        }

        def expand(arg: str) -> str:
            # Plain replacement, not str.format: the config may only name these four.
            for name, value in values.items():
                arg = arg.replace("{" + name + "}", value)
            return arg

        return {
            "Kernel": url(generic.kernel),
            "Initrds": [url(name) for name in generic.initrd],
            "Cmdline": [expand(arg) for arg in generic.cmdline],
            "Script": generic.script or "",
        }

    def os_version(self, host: Host | None) -> str:
        """Override > host > profile > ``default_os_version``, as in mayu."""
        if host is not None and host.os_version:
            return host.os_version
        return self.config.default_os_version

    def render_final(self, host: Host) -> str:
        """The final config of *host* (the template of its OS flow: Ignition, or the
        last-stage cloud-config)."""
        flow = self.flow_of(host)
        if flow.config_template is None:
            raise BadRequest(f"profile {host.profile!r} (flow {flow.name}) has no Ignition config")
        return self.templates.render(flow.config_template, self.context(host))

    def render_installer_config(self, host: Host) -> str:
        """The live installer system's Ignition config (flow ``fcos-disk``)."""
        flow = self.flow_of(host)
        if flow.installer_template is None:
            raise BadRequest(f"profile {host.profile!r} (flow {flow.name}) has no installer")
        return self.templates.render(flow.installer_template, self.context(host))

    def script(self, serial: str) -> tuple[Host, str, str]:
        """A generic profile's script for *serial*: goes ``installing``; (host, text, kind).

        Like era C's ``GET /ignition``: rendered before anything is stored, so a template
        error changes nothing.
        """
        rendered: list[tuple[str, str]] = []

        def change(host: Host) -> tuple[Host, str, Sequence[str]]:
            flow = self.flow_of(host)
            if flow.script_template is None:
                raise BadRequest(f"profile {host.profile!r} (flow {flow.name}) has no script")
            outcome = apply(host, Event.PXE_CONFIG, now=self.now())
            text = self.templates.render(flow.script_template, self.context(outcome.host))
            rendered.append((text, self.templates.kind_of(flow.script_template)))
            return outcome.host, outcome.message, outcome.details

        versioned = self.store.update(serial, change)
        text, kind = rendered[-1]
        return versioned.host, text, kind

    def render_first_stage_script(self, host: Host) -> str:
        """The installer script of *host* (mayu's first_stage_script)."""
        return self.templates.render("first_stage_script.sh.j2", self.context(host))

    def render_first_stage_cloudconfig(self) -> str:
        """The (host-independent) cloud-config of the live installer system (cloud-config
        profiles: mayu's first_stage_cloudconfig.yaml)."""
        return self.templates.render("first_stage_cloudconfig.yaml.j2", self.context(None))

    def render_first_stage_ignition(self) -> str:
        """The (host-independent) Ignition config of the live installer system."""
        return self.templates.render("first-stage-ignition.json.j2", self.context(None))

    def boot_script(self, host: Host | None, identified: bool) -> str:
        """The iPXE script for a machine (``/ipxebootscript``).

        * Not identified yet: a script that chains back here with ``${serial}``, ``${uuid}``
          and ``${mac}`` filled in by iPXE.
        * Installed or running on a ``disk`` profile: boot the local disk now (mayu #14).
        * A ``pxe`` profile: boot into RAM with this host's config (era C).
        * Otherwise (unknown, configured, installing, or not enrolled): the installer.
        """
        context = self.context(host)
        if not identified:
            return self.templates.render("ipxe/chain.ipxe.j2", context)
        if host is not None and host.state is HostState.PENDING:
            # Waiting for an operator: sleep, then ask again (the machine keeps retrying).
            return self.templates.render("ipxe/pending.ipxe.j2", self.context(None))
        flow = self.flow_of(host)
        if (
            host is not None
            and flow.install == "disk"
            and host.state in (HostState.INSTALLED, HostState.RUNNING)
        ):
            return self.templates.render("ipxe/localboot.ipxe.j2", context)
        return self.templates.render(flow.boot_template, context)

    def boot_host(
        self, serial: str | None, uuid: str | None, mac: str | None, *, pending: bool = False
    ) -> Host | None:
        """The host behind an iPXE request, enrolling it when its serial/UUID is new.

        The profile, and with it the OS flow, is chosen at enrolment, so a machine that
        names itself is enrolled here, at its first identified request: its very first
        script is already the one of its flow (a ``pxe`` or ``fcos`` machine must never be
        sent to the Flatcar disk installer).  A request that names only a MAC (or only a
        placeholder serial without UUID) cannot be enrolled and gets the default flow.
        """
        host = self.host_for_boot(serial, uuid, mac)
        if host is not None or (not serial and not uuid):
            return host
        try:
            identity = machine_identity(serial or "", uuid)
        except BadIdentity:
            return None
        versioned, _created = self.first_contact(identity, pending=pending)
        return versioned.host

    def host_for_boot(self, serial: str | None, uuid: str | None, mac: str | None) -> Host | None:
        """The known host behind an iPXE request (by serial/UUID, else by MAC); never enrols."""
        if serial is not None or uuid is not None:
            try:
                found = self.store.read(machine_identity(serial or "", uuid))
            except BadIdentity:
                found = None
            if found is not None:
                return found.host
        if mac:
            try:
                return self.store.host_for_mac(normalize_mac(mac))
            except InvalidHostRecord:
                return None
        return None


def _netdev_macs(netdevs: object) -> tuple[str, ...]:
    if netdevs is None:
        return ()
    if not isinstance(netdevs, list) or len(netdevs) > 64:
        raise BadRequest("NetDevs must be a list of at most 64 interfaces")
    macs: list[str] = []
    for index, dev in enumerate(netdevs):
        if not isinstance(dev, Mapping):
            raise BadRequest(f"NetDevs[{index}] is not an object")
        try:
            mac = normalize_mac(dev.get("MacAddress"))
        except InvalidHostRecord:
            raise BadRequest(f"NetDevs[{index}].MacAddress is not a MAC address") from None
        if mac not in macs:
            macs.append(mac)
    return tuple(macs)


def _is_ifname(name: str) -> bool:
    return all(ch.isalnum() or ch in "._-@:" for ch in name)


def _optional_ip(value: object, name: str) -> IPv4Address | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} is not an IPv4 address")
    try:
        return IPv4Address(value.strip())
    except ValueError:
        raise BadRequest(f"{name} {value!r} is not an IPv4 address") from None


def normalize_tags(value: object) -> tuple[str, ...]:
    """``FleetMetadata`` as stored: strings, blanks trimmed, empty tags dropped, order kept.

    mayuctl sends ``[""]`` for ``set S metadata ""`` and an empty element for ``a=b,,c=d``.
    """
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest("FleetMetadata must be a list of strings")
    if len(value) > 256:
        raise BadRequest("FleetMetadata: at most 256 tags")
    tags = tuple(tag.strip() for tag in value if tag.strip())
    for tag in tags:
        if len(tag) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in tag):
            raise BadRequest(f"FleetMetadata: {tag[:40]!r} is not a printable tag")
    return tags


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false")
    return value


def _short_str(value: object, name: str) -> str:
    if not isinstance(value, str) or len(value) > 256 or any(ord(c) < 32 for c in value):
        raise BadRequest(f"{name} must be a string of at most 256 printable characters")
    return value


__all__ = [
    "ADD_DETAILS",
    "ADD_MESSAGE",
    "APPROVE_DETAILS",
    "DEFAULT_INSTALL_DISK",
    "ENROL_MESSAGES",
    "OS_NAMES",
    "PENDING_MESSAGES",
    "REMOVE_MESSAGE",
    "BadRequest",
    "Conflict",
    "PendingLimitReached",
    "Provisioner",
    "callback_key",
    "normalize_tags",
]
