"""Read an existing mayu ``config.yaml`` into pxestack's ``provision:`` section, and back.

The mapping (the full table is in ``docs/provisioning.md``, "Migrating from mayu"):

* ``default_coreos_version`` / ``default_flatcar_version`` -> ``default_os_version``;
* ``network.ip_range`` (era B) or ``network.primary_nic.ip_range`` (era C), ``subnet_size``,
  ``subnet_gateway``, ``dns``, ``ntp``, ``network_model``, ``bond_mode``, ``vlan_id``,
  ``bond_interface_match`` -> ``network.*``;
* ``profiles[i]`` -> ``profiles[i]`` (``coreos_version``/``flatcar_version`` ->
  ``os_version``; an era C file gives every profile ``install: pxe``);
* ``templates_env`` -> ``templates_env``;
* ``network.interface``, ``bind_addr``, ``bootstrap_range``, ``router``, ``pxe``, ``uefi``
  belong to the ``dhcp:``/``tftp:``/``http:`` sections and are reported as notes.

What cannot be represented is an error naming the mayu key path: ``network_model: bridge``,
``extra_nics``, routes, and unknown keys.

:func:`mayu_to_config` converts the whole file (what ``pxestack migrate-mayu`` prints): the
``provision:`` section above plus ``dhcp:``, ``tftp:`` and ``http:`` from the keys of
:data:`ELSEWHERE` (see :func:`mayu_to_config` for the mapping).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import yaml

from pxestack.config._reader import Section
from pxestack.config.provision import ProvisionConfig, read_provision, thaw
from pxestack.dhcp.decide import BOOT_FILE_DEFAULTS
from pxestack.errors import ConfigError, ConfigProblem

#: mayu keys that belong to pxestack's DHCP/TFTP/HTTP sections, with where they go.
ELSEWHERE = {
    "network.interface": "dhcp interface (dhcp.interfaces)",
    "network.bind_addr": "the server address (dhcp.server_address, http.public_url)",
    "network.bootstrap_range": "the DHCP pool (dhcp.pools[].start/end)",
    "network.router": "the DHCP pool's router (dhcp.pools[].router)",
    "network.pxe": "enabling TFTP (tftp:) and PXE answers (dhcp.boot)",
    "network.uefi": "nothing: pxestack picks the iPXE binary per client architecture",
}


#: mayu network keys that mayuctl still sends, accepted when empty, and why they must be.
IGNORED_LISTS = {
    "ignoredhosts": "pxestack decides which machines DHCP ignores from their host states "
    "(installed and running hosts), there is no list to keep",
    "statichosts": "static DHCP leases belong to the dhcp: section of pxestack's "
    "configuration file",
}
#: Top-level keys a mayu client sends whole: a PUT replaces them instead of merging.
REPLACED_KEYS = frozenset({"profiles", "templates_env"})


class _Converter:
    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []
        self.notes: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path, message))

    def mapping(self, value: object, path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(path, "expected a mapping")
            return {}
        return value

    def ip(self, value: object, path: str) -> str | None:
        if value in (None, ""):
            return None
        try:
            return str(IPv4Address(str(value)))
        except ValueError:
            self.problem(path, f"{value!r} is not an IPv4 address")
            return None

    def int_text(self, value: object, path: str) -> int | None:
        if value in (None, ""):
            return None
        try:
            return int(str(value))
        except ValueError:
            self.problem(path, f"{value!r} is not a number")
            return None

    def unknown(self, data: Mapping[str, Any], known: set[str], prefix: str) -> None:
        for key in data:
            if key not in known:
                path = f"{prefix}.{key}" if prefix else str(key)
                self.problem(path, "unknown mayu key (mayu ignored it; pxestack does not)")

    def network(self, net: Mapping[str, Any], era_c: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        nic: Mapping[str, Any] = net
        nic_path = "network"
        for key, where in ELSEWHERE.items():
            name = key.split(".", 1)[1]
            if name in net:
                self.notes.append(f"{key}: not converted; configure {where}")
        if era_c:
            nic = self.mapping(net.get("primary_nic"), "network.primary_nic")
            nic_path = "network.primary_nic"
            if net.get("extra_nics"):
                self.problem("network.extra_nics", "additional NICs are not supported yet")
            if "pxe" in net:
                self.notes.append("network.pxe.pxe_interface: configure the dhcp: section")
            self.unknown(
                net, {"bind_addr", "pxe", "primary_nic", "extra_nics", "uefi", "ntp"}, "network"
            )
            self.unknown(
                nic,
                {
                    "interface_name",
                    "ip_range",
                    "subnet_size",
                    "subnet_gateway",
                    "dns",
                    "routes",
                    "network_model",
                },
                nic_path,
            )
            if nic.get("interface_name"):
                out["interface_match"] = str(nic["interface_name"])
            if nic.get("routes"):
                self.problem(f"{nic_path}.routes", "static routes are not supported yet")
            model = self.mapping(nic.get("network_model"), f"{nic_path}.network_model")
            self.unknown(
                model,
                {"type", "vlan_id", "bond_mode", "bond_interface_match"},
                f"{nic_path}.network_model",
            )
            model_type, model_path = model.get("type"), f"{nic_path}.network_model.type"
            vlan, bond_mode = model.get("vlan_id"), model.get("bond_mode")
            if model.get("bond_interface_match"):
                out["interface_match"] = str(model["bond_interface_match"])
        else:
            self.unknown(
                net,
                {
                    "pxe",
                    "uefi",
                    "interface",
                    "bind_addr",
                    "bootstrap_range",
                    "ip_range",
                    "router",
                    "dns",
                    "ntp",
                    "subnet_size",
                    "subnet_gateway",
                    "vlan_id",
                    "network_model",
                    "bond_mode",
                    *IGNORED_LISTS,
                },
                "network",
            )
            # mayuctl's config struct (2017) always sends these two lists, which mayu once
            # had: pxestack derives what DHCP ignores from the host states and keeps static
            # leases in the dhcp: section, so only empty lists can be accepted.
            for name, where in IGNORED_LISTS.items():
                if net.get(name) not in (None, [], {}):
                    self.problem(
                        f"network.{name}",
                        f"must be empty: {where}; remove the entries and send the file again",
                    )
            model_type, model_path = net.get("network_model"), "network.network_model"
            vlan, bond_mode = net.get("vlan_id"), net.get("bond_mode")
        rng = self.mapping(nic.get("ip_range"), f"{nic_path}.ip_range")
        if rng:
            start = self.ip(rng.get("start"), f"{nic_path}.ip_range.start")
            end = self.ip(rng.get("end"), f"{nic_path}.ip_range.end")
            if start and end:
                out["ip_range"] = {"start": start, "end": end}
        size = self.int_text(nic.get("subnet_size"), f"{nic_path}.subnet_size")
        if size is not None:
            out["subnet_size"] = size
        gateway = self.ip(nic.get("subnet_gateway"), f"{nic_path}.subnet_gateway")
        if gateway:
            out["subnet_gateway"] = gateway
        dns = nic.get("dns") or []
        if dns:
            out["dns"] = [self.ip(d, f"{nic_path}.dns[{i}]") for i, d in enumerate(dns)]
        ntp = net.get("ntp") or []
        if ntp:
            out["ntp"] = [str(n) for n in ntp]
        if model_type:
            if model_type in ("singlenic", "bond"):
                out["network_model"] = model_type
            else:
                self.problem(model_path, f"{model_type!r} is not supported (singlenic, bond)")
        vlan_id = self.int_text(vlan, "network.vlan_id")
        if vlan_id is not None:
            out["vlan_id"] = vlan_id
        if bond_mode:
            out["bond_mode"] = str(bond_mode)
        return out

    def profiles(self, profiles: object, era_c: bool) -> list[dict[str, Any]]:
        if profiles is None:
            return []
        if not isinstance(profiles, list):
            self.problem("profiles", "expected a list")
            return []
        out = []
        for index, raw in enumerate(profiles):
            path = f"profiles[{index}]"
            prof = self.mapping(raw, path)
            self.unknown(
                prof,
                {
                    "name",
                    "quantity",
                    "tags",
                    "disable_engine",
                    "coreos_version",
                    "flatcar_version",
                    "etcd_cluster_token",
                },
                path,
            )
            item: dict[str, Any] = {"name": prof.get("name"), "quantity": prof.get("quantity", 0)}
            if prof.get("tags"):
                item["tags"] = list(prof["tags"])
            if prof.get("disable_engine"):
                item["disable_engine"] = bool(prof["disable_engine"])
            version = prof.get("flatcar_version") or prof.get("coreos_version")
            if version:
                item["os_version"] = str(version)
            if prof.get("etcd_cluster_token"):
                item["etcd_cluster_token"] = str(prof["etcd_cluster_token"])
            if era_c:
                item["install"] = "pxe"
            out.append(item)
        return out


def mayu_to_provision(data: object) -> tuple[dict[str, Any], list[str]]:
    """Convert a parsed mayu config into a ``provision:`` mapping plus migration notes.

    Raises :class:`ConfigError` listing every mayu key (by path) that cannot be converted.
    """
    conv = _Converter()
    root = conv.mapping(data, "")
    era_c = "default_flatcar_version" in root or "primary_nic" in conv.mapping(
        root.get("network"), "network"
    )
    conv.unknown(
        root,
        {
            "default_coreos_version",
            "default_flatcar_version",
            "network",
            "profiles",
            "templates_env",
        },
        "",
    )
    version = root.get("default_flatcar_version") or root.get("default_coreos_version")
    out: dict[str, Any] = {}
    if not version:
        conv.problem("default_coreos_version", "is required (mayu refused to start without it)")
    else:
        out["default_os_version"] = str(version)
    network = conv.network(conv.mapping(root.get("network"), "network"), era_c)
    if network:
        out["network"] = network
    profiles = conv.profiles(root.get("profiles"), era_c)
    if profiles:
        out["profiles"] = profiles
    env = root.get("templates_env")
    if env is not None:
        if isinstance(env, Mapping):
            out["templates_env"] = dict(env)
        else:
            conv.problem("templates_env", "expected a mapping")
    if conv.problems:
        raise ConfigError(conv.problems)
    return out, conv.notes


#: pxestack's default HTTP port, used for ``http.public_url`` when mayu's ``bind_addr`` is
#: converted (mayu's own port came from its command line, not from config.yaml).
DEFAULT_HTTP_PORT = 8080


def _is_ipv4(value: object) -> bool:
    try:
        IPv4Address(str(value))
    except ValueError:
        return False
    return True


def mayu_to_config(
    data: object,
    *,
    tftp_root: str | None = None,
    images_dir: str | None = None,
    http_port: int = DEFAULT_HTTP_PORT,
) -> tuple[dict[str, Any], list[str]]:
    """Convert a whole mayu config: ``provision:`` (:func:`mayu_to_provision`) plus the
    ``dhcp:``, ``tftp:`` and ``http:`` sections mayu configured in ``network``:

    * ``interface`` (era C: ``pxe.pxe_interface.interface_name``) -> ``dhcp.interfaces``;
    * ``bind_addr`` -> ``dhcp.server_address`` and ``http.public_url``
      (``http://<bind_addr>:<http_port>``), with ``http.listen`` on that port;
    * ``bootstrap_range`` (era C: ``pxe.pxe_interface.ip_range``) -> ``dhcp.pools[0]``
      ``start``/``end``, its ``subnet`` from ``subnet_size``; ``router`` -> its ``router``
      (else ``subnet_gateway``), ``dns`` -> ``dns``, the IPv4 ``ntp`` servers -> ``ntp``;
    * ``pxe`` (true or a mapping) -> a ``tftp:`` section (``root``: *tftp_root* or
      ``tftproot``); ``pxe: false`` -> ``tftp.enabled: false`` and ``dhcp.enabled: false``;
    * ``uefi`` -> nothing (pxestack picks the iPXE binary per client architecture).

    *images_dir* (mayu's images cache) becomes ``provision.images_dir``.  Raises
    :class:`ConfigError` naming the mayu key paths that cannot be converted.
    """
    provision, notes = mayu_to_provision(data)
    conv = _Converter()
    root = conv.mapping(data, "")
    net = conv.mapping(root.get("network"), "network")
    notes = [n for n in notes if not any(n.startswith(k + ":") for k in ELSEWHERE)
             and not n.startswith("network.pxe.pxe_interface")]
    dhcp: dict[str, Any] = {}
    tftp: dict[str, Any] = {}
    http: dict[str, Any] = {}
    pxe = net.get("pxe")
    pxe_nic: Mapping[str, Any] = {}
    pxe_path = "network"
    if isinstance(pxe, Mapping):
        pxe_nic = conv.mapping(pxe.get("pxe_interface"), "network.pxe.pxe_interface")
        pxe_path = "network.pxe.pxe_interface"
        conv.unknown(pxe, {"enabled", "pxe_interface"}, "network.pxe")
        conv.unknown(pxe_nic, {"interface_name", "ip_range", "subnet_size", "subnet_gateway",
                               "dns", "routes"}, pxe_path)
        enabled = bool(pxe.get("enabled", True))
    else:
        enabled = pxe is None or bool(pxe)
    interface = pxe_nic.get("interface_name") or net.get("interface")
    if interface:
        dhcp["interfaces"] = [str(interface)]
        source = ("network.pxe.pxe_interface.interface_name" if pxe_nic
                  else "network.interface")
        notes.append(f"{source} -> dhcp.interfaces")
    bind = conv.ip(net.get("bind_addr"), "network.bind_addr")
    if bind:
        dhcp["server_address"] = bind
        http["listen"] = f"0.0.0.0:{http_port}"
        http["public_url"] = f"http://{bind}:{http_port}"
        notes.append(f"network.bind_addr -> dhcp.server_address, http.public_url (port "
                     f"{http_port}: mayu's port was a command-line flag; check it)")
    rng_path = f"{pxe_path}.ip_range" if pxe_nic else "network.bootstrap_range"
    rng = conv.mapping(pxe_nic.get("ip_range") if pxe_nic else net.get("bootstrap_range"),
                       rng_path)
    if rng:
        start = conv.ip(rng.get("start"), f"{rng_path}.start")
        end = conv.ip(rng.get("end"), f"{rng_path}.end")
        size_path = f"{pxe_path}.subnet_size" if pxe_nic.get("subnet_size") else (
            "network.primary_nic.subnet_size" if "primary_nic" in net else "network.subnet_size")
        size_source = pxe_nic.get("subnet_size") or conv.mapping(
            net.get("primary_nic"), "network.primary_nic").get("subnet_size") or net.get(
            "subnet_size")
        size = conv.int_text(size_source, size_path)
        if start and end:
            if size is None:
                conv.problem(size_path, f"is needed to work out the subnet of {rng_path} "
                                        "(dhcp.pools[0].subnet)")
            else:
                pool: dict[str, Any] = {
                    "subnet": str(IPv4Network(f"{start}/{size}", strict=False)),
                    "start": start, "end": end}
                router = net.get("router") or pxe_nic.get("subnet_gateway")
                if router:
                    pool["router"] = conv.ip(router, "network.router")
                dns = pxe_nic.get("dns") or net.get("dns") or []
                if dns:
                    pool["dns"] = [conv.ip(d, f"network.dns[{i}]") for i, d in enumerate(dns)]
                ntp = net.get("ntp") or []
                ntp_ips = [str(n) for n in ntp if _is_ipv4(n)]
                if ntp_ips:
                    pool["ntp"] = ntp_ips
                if len(ntp_ips) != len(ntp):
                    notes.append("network.ntp: names (not addresses) cannot go into DHCP "
                                 "option 42; they stay in provision.network.ntp")
                dhcp["pools"] = [pool]
                notes.append(f"{rng_path} -> dhcp.pools[0] ({pool['subnet']})")
    if enabled:
        tftp["root"] = tftp_root or "tftproot"
        if pxe is not None:
            notes.append(f"network.pxe -> tftp (put {BOOT_FILE_DEFAULTS['bios_file']} and "
                         f"{BOOT_FILE_DEFAULTS['efi_x64_file']} into {tftp['root']})")
    else:
        tftp["enabled"] = False
        dhcp["enabled"] = False
        notes.append("network.pxe: false -> dhcp.enabled: false, tftp.enabled: false")
    if "uefi" in net:
        notes.append("network.uefi: not needed; pxestack picks the iPXE binary per client "
                     "architecture")
    if conv.problems:
        raise ConfigError(conv.problems)
    if images_dir:
        provision = {**provision, "images_dir": images_dir}
    out: dict[str, Any] = {}
    if dhcp:
        out["dhcp"] = dhcp
    if tftp:
        out["tftp"] = tftp
    if http:
        out["http"] = http
    out["provision"] = provision
    return out, notes


#: ``provision.profiles[]`` keys that a mayu config.yaml sets (everything else is pxestack's).
MAYU_PROFILE_KEYS = frozenset(
    {"name", "quantity", "tags", "disable_engine", "os_version", "etcd_cluster_token"}
)


def _is_era_c(document: Mapping[str, Any]) -> bool:
    network = document.get("network")
    return "default_flatcar_version" in document or (
        isinstance(network, Mapping) and "primary_nic" in network
    )


def _merge(stored: object, incoming: object, top: bool) -> object:
    if not isinstance(stored, Mapping) or not isinstance(incoming, Mapping):
        return incoming
    out = dict(stored)
    for key, value in incoming.items():
        out[key] = value if top and key in REPLACED_KEYS else _merge(stored.get(key), value, False)
    return out


def merge_mayu_document(incoming: object, base: ProvisionConfig) -> object:
    """*incoming* (a parsed mayu config) with the keys it lacks taken from *base*.

    A client such as mayuctl knows only the keys of its own mayu release: a get -> edit ->
    set round trip through it would otherwise drop every newer key (``subnet_gateway``,
    ``ntp``, ...).  Mappings merge key by key (the client's value wins); ``profiles`` and
    ``templates_env`` are sent whole and replace the stored ones.  An era C document (a
    different schema) is not merged.
    """
    if not isinstance(incoming, Mapping) or _is_era_c(incoming):
        return incoming
    stored = yaml.safe_load(export_mayu(base))
    return _merge(stored, incoming, True)


def merge_mayu_text(text: str, base: ProvisionConfig) -> str:
    """:func:`merge_mayu_document` of *text* as YAML (what ``PUT /admin/mayu_config`` saves)."""
    merged = merge_mayu_document(yaml.safe_load(text), base)
    return yaml.safe_dump(merged, sort_keys=False, default_flow_style=False)


def settings_differences(first: ProvisionConfig, second: ProvisionConfig) -> list[str]:
    """The mayu key paths whose values differ between two configurations (sorted)."""

    def flat(value: object, prefix: str) -> dict[str, object]:
        if isinstance(value, Mapping):
            out: dict[str, object] = {}
            for key, item in value.items():
                out.update(flat(item, f"{prefix}.{key}" if prefix else str(key)))
            return out
        return {prefix: value}

    a = flat(yaml.safe_load(export_mayu(first)), "")
    b = flat(yaml.safe_load(export_mayu(second)), "")
    return sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key))


def apply_mayu_text(text: str, base: ProvisionConfig) -> ProvisionConfig:
    """A new :class:`ProvisionConfig`: *base* with the mayu concepts of *text* replacing its own.

    Everything that is not a mayu concept (paths, git, API, public URL) is kept from *base*,
    and so are the mayu keys *text* does not have (:func:`merge_mayu_document`).
    Raises :class:`ConfigError` (mayu key paths) or ``yaml.YAMLError``.
    """
    mapping, _notes = mayu_to_provision(merge_mayu_document(yaml.safe_load(text), base))
    problems: list[ConfigProblem] = []
    section = Section(mapping, "provision", problems, base.cluster_dir)
    converted = read_provision(section, base.cluster_dir.parent)
    if problems:
        raise ConfigError(problems)
    from dataclasses import fields, replace

    # A mayu config knows only mayu's profile keys: keep pxestack's own per-profile
    # settings (os, install_disk, flows, kernel_args, ...) of profiles with the same name.
    previous = {profile.name: profile for profile in base.profiles}
    profiles = []
    for profile, raw in zip(converted.profiles, mapping.get("profiles", []), strict=True):
        old = previous.get(profile.name)
        if old is not None:
            kept = {
                f.name: getattr(old, f.name)
                for f in fields(profile)
                if f.name not in MAYU_PROFILE_KEYS and f.name not in raw
            }
            profile = replace(profile, **kept)
        profiles.append(profile)
    return replace(
        base,
        default_os_version=converted.default_os_version,
        network=converted.network,
        profiles=tuple(profiles),
        templates_env=converted.templates_env,
    )


def export_mayu(config: ProvisionConfig) -> str:
    """The mayu concepts of *config* as a mayu (era B) ``config.yaml`` text."""
    network: dict[str, Any] = {}
    net = config.network
    if net.ip_range is not None:
        network["ip_range"] = {"start": str(net.ip_range.start), "end": str(net.ip_range.end)}
    network["subnet_size"] = str(net.subnet_size)
    if net.subnet_gateway is not None:
        network["subnet_gateway"] = str(net.subnet_gateway)
    if net.dns:
        network["dns"] = [str(d) for d in net.dns]
    if net.ntp:
        network["ntp"] = list(net.ntp)
    network["network_model"] = net.network_model
    network["bond_mode"] = net.bond_mode
    if net.vlan_id is not None:
        network["vlan_id"] = str(net.vlan_id)
    profiles = []
    for profile in config.profiles:
        item: dict[str, Any] = {"name": profile.name, "quantity": profile.quantity}
        if profile.tags:
            item["tags"] = list(profile.tags)
        if profile.disable_engine:
            item["disable_engine"] = True
        if profile.os_version:
            item["coreos_version"] = profile.os_version
        if profile.etcd_cluster_token:
            item["etcd_cluster_token"] = profile.etcd_cluster_token
        profiles.append(item)
    document = {
        "default_coreos_version": config.default_os_version,
        "network": network,
        "profiles": profiles,
        "templates_env": thaw(config.templates_env),
    }
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def migrate_main(argv: list[str] | None = None) -> int:
    """``migrate-mayu MAYU_CONFIG``: print the ``provision:`` section for a mayu config.

    Notes about keys that belong to other sections go to stderr; conversion errors too
    (exit status 1).  The lead can expose this as ``pxestack migrate-mayu``.
    """
    parser = argparse.ArgumentParser(prog="pxestack migrate-mayu", description=migrate_main.__doc__)
    parser.add_argument("mayu_config", type=Path, help="mayu's config.yaml")
    parser.add_argument(
        "--cluster-dir",
        default=None,
        help="mayu's --cluster-directory, reused as provision.cluster_dir",
    )
    args = parser.parse_args(argv)
    try:
        data = yaml.safe_load(args.mayu_config.read_text(encoding="utf-8"))
        mapping, notes = mayu_to_provision(data)
    except (OSError, yaml.YAMLError) as exc:
        print(f"{args.mayu_config}: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{args.mayu_config}: {problem}", file=sys.stderr)
        return 1
    if args.cluster_dir:
        mapping = {"cluster_dir": args.cluster_dir, **mapping}
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    sys.stdout.write(yaml.safe_dump({"provision": mapping}, sort_keys=False))
    return 0


__all__ = [
    "ELSEWHERE",
    "IGNORED_LISTS",
    "apply_mayu_text",
    "export_mayu",
    "mayu_to_config",
    "mayu_to_provision",
    "merge_mayu_document",
    "merge_mayu_text",
    "migrate_main",
    "settings_differences",
]


if __name__ == "__main__":
    raise SystemExit(migrate_main())
