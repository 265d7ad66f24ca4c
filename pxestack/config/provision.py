"""The ``provision:`` section of the configuration (mayu's concepts).

The keys follow mayu's ``config.yaml`` (see ``docs/provisioning.md`` for the full mapping and
:mod:`pxestack.provision.mayu_import` for reading an existing mayu file):

* ``default_os_version`` is mayu's ``default_coreos_version`` / ``default_flatcar_version``;
* ``network`` holds ``ip_range`` (the static pool ``InternalAddr`` comes from; unlike mayu,
  its end is enforced), the networkd values the templates need, and is handed to the
  templates as ``network``;
* ``profiles`` are mayu's profiles (name, quantity, tags, ...) plus pxestack's per-profile
  OS flow: ``os`` (``flatcar``, the default; ``fcos`` for Fedora CoreOS; ``generic`` for any
  kernel + initrd) and ``install``: ``disk`` (mayu era B, install to disk, the default) or
  ``pxe`` (mayu era C, PXE-boot into RAM on every boot), with the OS's own settings under
  ``flatcar:`` or ``generic:`` (see :mod:`pxestack.provision.flows`);
* ``templates_env`` is free-form data for the templates, as in mayu.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pxestack.config._reader import Section
from pxestack.config.checks import check_token
from pxestack.http.ipxe import is_safe_word

#: The two boot flows a profile can use: mayu era B (install to disk) or era C (RAM boot).
INSTALL_FLOWS = ("disk", "pxe")
#: The operating systems a profile can boot (``docs/provisioning.md``, "OS flows").
OS_CHOICES = ("flatcar", "fcos", "generic")
#: The final configuration of a ``flatcar``/``disk`` profile: an Ignition config, or mayu's
#: older cloud-config (first-stage and last-stage cloud-config, run by coreos-cloudinit).
CONFIG_FORMATS = ("ignition", "cloud-config")
#: Where ``flatcar-install`` gets the disk image: pxestack's image cache (checked against
#: its recorded SHA-256, then ``flatcar-install -f``) or a Flatcar release server / mirror
#: (``flatcar-install -C CHANNEL -V VERSION [-b BASEURL]``, verified by its GPG signature).
FLATCAR_IMAGE_SOURCES = ("cache", "release")
#: ``{name}`` placeholders a generic profile's ``cmdline`` may use.
GENERIC_PLACEHOLDERS = ("base_url", "images_url", "script_url", "serial")
_DISK_PATH = re.compile(r"/dev/[A-Za-z0-9._/:-]+")
_CHANNEL = re.compile(r"[a-z][a-z0-9-]{0,31}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,199}")
_OS_DIR = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
#: What DHCP/iPXE does with an installed or running machine (mayu issue #14).
INSTALLED_BOOT_CHOICES = ("ignore", "local-boot")
#: mayu's git identity (docs of mayu's git audit: ``git config user.name``/``user.email``).
MAYU_GIT_NAME = "mayu commiter"
MAYU_GIT_EMAIL = "support+noise@giantswarm.io"


def freeze(value: object) -> Any:
    """A read-only deep copy of YAML data (mappings become ``MappingProxyType``)."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: object) -> Any:
    """The plain ``dict``/``list`` form of :func:`freeze`'s output (for templates and YAML)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class IPRange:
    """An inclusive range of IPv4 addresses (mayu's ``ip_range: {start, end}``)."""

    start: IPv4Address
    end: IPv4Address

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPv4Address) and self.start <= address <= self.end

    @property
    def size(self) -> int:
        """How many addresses the range holds."""
        return int(self.end) - int(self.start) + 1


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """mayu's ``network`` section as far as provisioning uses it."""

    ip_range: IPRange | None = None
    subnet_size: int = 24
    subnet_gateway: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    ntp: tuple[str, ...] = ()
    network_model: str = "singlenic"
    interface_match: str = "en*"
    vlan_id: int | None = None
    bond_mode: str = "lacp"


@dataclass(frozen=True, slots=True)
class FlatcarSettings:
    """How a Flatcar profile installs to disk (``profiles[].flatcar``)."""

    #: ``cache`` (pxestack's image cache) or ``release`` (a Flatcar release server).
    image_source: str = "cache"
    #: ``flatcar-install -C``: the release channel (``release`` only).
    channel: str = "stable"
    #: ``flatcar-install -b``: a mirror URL instead of the channel's release server.
    base_url: str | None = None


@dataclass(frozen=True, slots=True)
class GenericSettings:
    """A generic Linux boot (``profiles[].generic``): kernel, initrds, command line, script."""

    #: An ``http(s)://`` URL, or a file name in ``<images_dir>/<image_os>/<version>/``.
    kernel: str
    initrd: tuple[str, ...] = ()
    #: Kernel arguments; may contain the placeholders of :data:`GENERIC_PLACEHOLDERS`.
    cmdline: tuple[str, ...] = ()
    #: A ``.sh.j2`` (shell) or ``.yaml.j2`` (e.g. cloud-config) template served to this
    #: host at ``/script/<serial>`` (optional).
    script: str | None = None
    #: The OS directory in the image cache (``<images_dir>/<image_os>/<version>/``).
    image_os: str = "generic"


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """One profile: the first ``quantity`` machines that come up get it (mayu §2)."""

    name: str
    quantity: int = 0
    tags: tuple[str, ...] = ()
    disable_engine: bool = False
    os_version: str = ""
    etcd_cluster_token: str = ""
    #: ``disk`` (install to disk, mayu era B) or ``pxe`` (PXE boot into RAM every boot, era C).
    install: str = "disk"
    #: Extra kernel arguments for this profile's machines.
    kernel_args: tuple[str, ...] = ()
    #: Merged over ``templates_env`` for this profile's machines (host overrides win).
    templates_env: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: ``flatcar`` (the default), ``fcos`` (Fedora CoreOS) or ``generic``.
    os: str = "flatcar"
    #: The disk the installer writes (``""``: ``templates_env.install_disk``, else /dev/sda).
    install_disk: str = ""
    flatcar: FlatcarSettings = FlatcarSettings()
    #: Set exactly when ``os`` is ``generic``.
    generic: GenericSettings | None = None
    #: ``ignition`` (the default) or ``cloud-config`` (mayu's cloud-config era; only with
    #: ``os: flatcar`` and ``install: disk``).
    config_format: str = "ignition"
    #: The loader this profile's machines boot (``ipxe``, ``grub``: Secure Boot through
    #: shim and GRUB, ``pxelinux``); ``None``: ``dhcp.boot.loader`` of their architecture.
    loader: str | None = None


@dataclass(frozen=True, slots=True)
class NamedToken:
    """One entry of ``provision.api.tokens``: an admin bearer token with a name for the audit."""

    #: Who uses the token; the author of the audit commits made with it.
    name: str
    #: The file holding the token (at least 32 characters, mode 600).
    token_file: Path


#: Names of admin tokens: a word that is safe in a log line and in a git author.
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Authentication and limits of the admin API and machine callbacks."""

    #: Bearer token for ``/admin``; may stay empty only while HTTP listens on loopback.
    token: str = ""
    token_file: Path | None = None
    #: Create ``token_file`` with a random token (mode 0600) at the first start when it does
    #: not exist yet; the token is printed once, at that start.
    generate_token: bool = False
    #: mayu compatibility: accept set_installed / boot_complete without a per-host token.
    accept_unauthenticated_callbacks: bool = False
    max_body_bytes: int = 1 << 20
    max_json_depth: int = 32
    #: More admin tokens, each with its own name (the single ``token`` is named ``admin``).
    tokens: tuple[NamedToken, ...] = ()
    #: Source networks whose admin requests need no token (mayu's trust by placement).
    trusted_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    #: CA certificates that client certificates on the TLS listener are verified against.
    client_ca_file: Path | None = None


#: Where host records live: the git-audited cluster directory, or a PostgreSQL database
#: several servers share (``docs/scale-out.md``).
STORE_KINDS = ("git", "postgresql")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``provision.store``: the host-record backend."""

    #: ``git`` (the cluster directory, the default) or ``postgresql``.
    kind: str = "git"
    #: ``postgresql``: a libpq connection string or ``postgresql://`` URL.
    dsn: str | None = None
    #: ``postgresql``: the most connections this server opens.
    pool: int = 4
    #: ``postgresql``: seconds to wait for a connection before the database counts as down.
    connect_timeout: float = 5.0


def check_dsn(section: Section, dsn: str) -> None:
    """Report a DSN libpq cannot parse, or a missing psycopg, at the ``dsn`` key."""
    try:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        section.problem("dsn", "kind: postgresql needs psycopg: install pxestack with the "
                        "postgresql extra (pip install 'pxestack[postgresql]')")
        return
    try:
        conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        # The message of libpq names the part it could not parse, never the password.
        section.problem("dsn", f"is not a libpq connection string or URL: {exc}")


def _read_store(section: Section) -> StoreConfig:
    kind = section.str("kind", "git", choices=STORE_KINDS)
    dsn = section.str("dsn", None)
    pool = section.int("pool", 4, minimum=1, maximum=100)
    timeout = section.float("connect_timeout", 5.0, minimum=0.5)
    if kind == "postgresql" and not dsn:
        section.problem("dsn", "is required with kind: postgresql (e.g. "
                        "'host=/run/postgresql dbname=pxestack user=pxestack')")
    elif kind == "git":
        for key in ("dsn", "pool", "connect_timeout"):
            if section.has(key):
                section.problem(key, "is only used with kind: postgresql")
    if kind == "postgresql" and dsn:
        check_dsn(section, dsn)
    section.finish()
    return StoreConfig(kind=kind, dsn=dsn, pool=pool, connect_timeout=timeout)


@dataclass(frozen=True, slots=True)
class ProvisionConfig:
    """Settings of the provisioning layer."""

    enabled: bool = True
    cluster_dir: Path = Path("pxestack-state/cluster")
    git: bool = True
    git_name: str = MAYU_GIT_NAME
    git_email: str = MAYU_GIT_EMAIL
    #: Seconds between retries of a git commit that failed (mayu issue #53).
    git_retry_interval: float = 30.0
    default_os_version: str = "current"
    #: ``<images_dir>/<version>/flatcar_production_pxe.vmlinuz`` etc. (mayu §5.3).
    images_dir: Path | None = None
    #: Base URL machines use; defaults to ``http.public_url``.
    public_url: str | None = None
    network: NetworkConfig = NetworkConfig()
    profiles: tuple[ProfileConfig, ...] = ()
    templates_env: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: Directory whose files replace the shipped templates of the same name.
    templates_dir: Path | None = None
    #: Every file here is loaded into the template environment (mayu's snippets).
    snippets_dir: Path | None = None
    installed_boot: str = "local-boot"
    #: Extra kernel arguments for every machine (mayu era C's console/autologin flags).
    kernel_args: tuple[str, ...] = ()
    api: ApiConfig = ApiConfig()
    #: Who may enrol a new serial: ``dhcp-seen``, ``approve`` or ``open`` (see
    #: :data:`ENROLMENT_CHOICES`); the reader resolves the default from the ``dhcp:`` section.
    enrolment: str = "approve"
    #: ``dhcp-seen``: how long (seconds) after a DHCP lease, offer or PXE answer the
    #: address may enrol a new serial.
    enrolment_window: float = 1800.0
    #: First contacts (unknown serials) allowed per minute from one source address; 0 = no limit.
    first_contact_rate: float = 10.0
    #: ``approve``: the largest number of hosts waiting for approval.
    max_pending: int = 100
    #: Where host records live (``provision.store``); the cluster directory by default.
    store: StoreConfig = StoreConfig()

    def profile(self, name: str) -> ProfileConfig | None:
        """The profile called *name*, or ``None`` (e.g. the implicit ``default``)."""
        for profile in self.profiles:
            if profile.name == name:
                return profile
        return None


def _read_network(section: Section) -> NetworkConfig:
    ip_range: IPRange | None = None
    if section.has("ip_range"):
        rng = section.mapping("ip_range")
        start = rng.ipv4("start")
        end = rng.ipv4("end")
        rng.finish()
        if start is not None and end is not None:
            if end < start:
                section.problem("ip_range.end", f"{end} is below ip_range.start {start}")
            else:
                ip_range = IPRange(start, end)
    vlan = section.int("vlan_id", None, minimum=1, maximum=4094)
    network = NetworkConfig(
        ip_range=ip_range,
        subnet_size=section.int("subnet_size", 24, minimum=0, maximum=32),
        subnet_gateway=section.ipv4("subnet_gateway", None),
        dns=section.ipv4_list("dns"),
        ntp=section.str_list("ntp"),
        network_model=section.str("network_model", "singlenic", choices=("singlenic", "bond")),
        interface_match=section.str("interface_match", "en*"),
        vlan_id=vlan,
        bond_mode=section.str("bond_mode", "lacp"),
    )
    section.finish()
    return network


def _read_env(section: Section, key: str) -> Mapping[str, Any]:
    value = section.raw(key, None)
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        section.problem(key, "expected a mapping with string keys")
        return MappingProxyType({})
    frozen: Mapping[str, Any] = freeze(value)
    return frozen


def _read_flatcar(section: Section) -> FlatcarSettings:
    source = section.str("image_source", "cache", choices=FLATCAR_IMAGE_SOURCES)
    channel = section.str("channel", "stable")
    if channel is not None and not _CHANNEL.fullmatch(channel):
        section.problem("channel", f"{channel!r} is not a Flatcar channel name such as stable")
    base_url = section.str("base_url", None)
    if base_url is not None:
        if not base_url.startswith(("http://", "https://")) or not is_safe_word(base_url):
            section.problem("base_url", f"{base_url!r} is not an http:// or https:// URL")
        elif source != "release":
            section.problem("base_url", "is only used with image_source: release")
    if section.has("channel") and source != "release":
        section.problem("channel", "is only used with image_source: release")
    settings = FlatcarSettings(
        image_source=source or "cache",
        channel=channel or "stable",
        base_url=base_url.rstrip("/") if base_url else None,
    )
    section.finish()
    return settings


def _image_reference(section: Section, key: str, value: str) -> None:
    """A kernel/initrd is an http(s) URL (safe as one iPXE word) or a cache file name."""
    if value.startswith(("http://", "https://")):
        if not is_safe_word(value):
            section.problem(key, f"{value!r} is not usable in an iPXE script")
    elif not _FILE_NAME.fullmatch(value):
        section.problem(key, f"{value!r} is neither an http(s):// URL nor a plain file name")


def _read_generic(section: Section) -> GenericSettings:
    kernel = section.str("kernel")
    if kernel is not None:
        _image_reference(section, "kernel", kernel)
    initrd = section.str_list("initrd")
    for index, item in enumerate(initrd):
        _image_reference(section, f"initrd[{index}]", item)
    cmdline = section.str_list("cmdline")
    for index, arg in enumerate(cmdline):
        unknown = [n for n in _PLACEHOLDER.findall(arg) if n not in GENERIC_PLACEHOLDERS]
        literal = _PLACEHOLDER.sub("x", arg)
        if unknown:
            section.problem(
                f"cmdline[{index}]",
                f"unknown placeholder {{{unknown[0]}}} (known: "
                + ", ".join(f"{{{n}}}" for n in GENERIC_PLACEHOLDERS)
                + ")",
            )
        elif not literal or not is_safe_word(literal):
            section.problem(
                f"cmdline[{index}]",
                f"{arg!r} is not one kernel argument (no spaces, quotes, $ or #)",
            )
    script = section.str("script", None)
    if script is not None and (
        not _TEMPLATE_NAME.fullmatch(script)
        or ".." in script
        or not script.endswith((".sh.j2", ".yaml.j2"))
    ):
        section.problem(
            "script", f"{script!r} is not a template name ending in .sh.j2 or .yaml.j2"
        )
    image_os = section.str("image_os", "generic")
    if image_os is not None and not _OS_DIR.fullmatch(image_os):
        section.problem("image_os", f"{image_os!r} is not an OS directory name such as debian")
    settings = GenericSettings(
        kernel=kernel or "",
        initrd=initrd,
        cmdline=cmdline,
        script=script,
        image_os=image_os or "generic",
    )
    section.finish()
    return settings


#: A profile's ``loader`` (``config.dhcp.LOADERS``; which architecture each runs on is the
#: boot decision's business).
PROFILE_LOADERS = ("ipxe", "grub", "pxelinux")


def _read_profile(section: Section) -> ProfileConfig:
    name = section.str("name")
    if name is not None and (not name or "/" in name or name.strip() != name):
        section.problem("name", f"{name!r} is not a usable profile name")
    tags = section.str_list("tags")
    for index, tag in enumerate(tags):
        if "=" not in tag:
            section.problem(f"tags[{index}]", f"{tag!r} is not of the form key=value")
    os_name = section.str("os", "flatcar", choices=OS_CHOICES) or "flatcar"
    os_version = section.str("os_version", "")
    if os_name != "flatcar" and not os_version:
        # default_os_version names a Flatcar release; another OS needs its own version
        # to find its files in the image cache.
        section.problem("os_version", f"is required for os: {os_name}")
    install_disk = section.str("install_disk", "")
    if install_disk and not _DISK_PATH.fullmatch(install_disk):
        section.problem("install_disk", f"{install_disk!r} is not a /dev/... path")
    flatcar = FlatcarSettings()
    if section.has("flatcar"):
        flatcar = _read_flatcar(section.mapping("flatcar"))
        if os_name != "flatcar":
            section.problem("flatcar", f"is only used with os: flatcar (not {os_name})")
    generic = None
    if section.has("generic"):
        generic = _read_generic(section.mapping("generic"))
        if os_name != "generic":
            section.problem("generic", f"is only used with os: generic (not {os_name})")
    elif os_name == "generic":
        section.problem("generic", "is required for os: generic (at least generic.kernel)")
    install = section.str("install", "disk", choices=INSTALL_FLOWS) or "disk"
    config_format = section.str("config_format", "ignition", choices=CONFIG_FORMATS) or "ignition"
    if config_format == "cloud-config" and (os_name, install) != ("flatcar", "disk"):
        section.problem(
            "config_format",
            f"cloud-config needs os: flatcar and install: disk (not {os_name}/{install})",
        )
    profile = ProfileConfig(
        name=name or "",
        quantity=section.int("quantity", 0, minimum=0),
        tags=tags,
        disable_engine=section.bool("disable_engine", False),
        os_version=os_version or "",
        etcd_cluster_token=section.str("etcd_cluster_token", ""),
        install=install,
        kernel_args=section.str_list("kernel_args"),
        templates_env=_read_env(section, "templates_env"),
        os=os_name,
        install_disk=install_disk or "",
        flatcar=flatcar,
        generic=generic if os_name == "generic" else None,
        config_format=config_format,
        loader=section.str("loader", None, choices=PROFILE_LOADERS),
    )
    section.finish()
    return profile


def _read_api(section: Section) -> ApiConfig:
    token = section.str("token", "")
    check_token(section, "token", token)
    token_file = section.path("token_file", None)
    if token and token_file is not None:
        section.problem("token_file", "give either token or token_file, not both")
    generate = section.bool("generate_token", False)
    if generate and token_file is None:
        section.problem("generate_token", "needs token_file: the file the token is kept in")
    tokens: list[NamedToken] = []
    for entry in section.sections("tokens"):
        name = entry.str("name")
        entry_file = entry.path("token_file")
        entry.finish()
        if name is None or entry_file is None:
            continue
        if not TOKEN_NAME.fullmatch(name):
            entry.problem("name", f"{name!r} is not a name of letters, digits, '.', '_', '-' "
                          "(at most 64 characters)")
        elif name in [t.name for t in tokens] or (name == "admin" and (token or token_file)):
            entry.problem("name", f"the token name {name!r} is used twice (the single "
                          "provision.api.token is named 'admin')")
        else:
            tokens.append(NamedToken(name=name, token_file=entry_file))
    networks: list[IPv4Network | IPv6Network] = []
    for index, text in enumerate(section.str_list("trusted_networks")):
        try:
            networks.append(ip_network(text.strip()))
        except ValueError:
            section.problem(f"trusted_networks[{index}]",
                            f"{text!r} is not a network in CIDR form with its host bits zero "
                            "(for example 10.0.0.0/24 or 127.0.0.1/32)")
    api = ApiConfig(
        tokens=tuple(tokens),
        trusted_networks=tuple(networks),
        client_ca_file=section.path("client_ca_file", None),
        token=token,
        token_file=token_file,
        generate_token=bool(generate),
        accept_unauthenticated_callbacks=section.bool("accept_unauthenticated_callbacks", False),
        max_body_bytes=section.int("max_body_bytes", 1 << 20, minimum=1024, maximum=64 << 20),
        max_json_depth=section.int("max_json_depth", 32, minimum=2, maximum=512),
    )
    section.finish()
    return api


#: ``provision.enrolment`` values.
ENROLMENT_CHOICES = ("dhcp-seen", "approve", "open")


def _read_enrolment(section: Section, own_dhcp: bool) -> str:
    """``enrolment``: ``dhcp-seen`` by default with pxestack's own DHCP, else ``approve``."""
    mode: str = section.str(
        "enrolment", "dhcp-seen" if own_dhcp else "approve", choices=ENROLMENT_CHOICES
    )
    if mode == "dhcp-seen" and not own_dhcp:
        section.problem(
            "enrolment",
            "dhcp-seen needs pxestack's own DHCP (a dhcp: section, server or proxy); "
            "use approve or open",
        )
    return mode


def read_provision(
    section: Section, state_dir: Path, *, own_dhcp: bool = False
) -> ProvisionConfig:
    """Validate the ``provision:`` mapping; paths default to places under *state_dir*.

    *own_dhcp* says whether pxestack runs its own DHCP (it picks the ``enrolment`` default).
    """
    public_url = section.str("public_url", None)
    if public_url is not None and not public_url.startswith(("http://", "https://")):
        section.problem("public_url", f"{public_url!r} is not an http:// or https:// URL")
    version = section.str("default_os_version", "current")
    if not version or "/" in version or version.startswith("."):
        section.problem("default_os_version", f"{version!r} is not a usable version name")
    profiles = tuple(_read_profile(p) for p in section.sections("profiles"))
    seen: set[str] = set()
    for index, profile in enumerate(profiles):
        if profile.name in seen:
            section.problem(f"profiles[{index}].name", f"duplicate profile {profile.name!r}")
        seen.add(profile.name)
    config = ProvisionConfig(
        enabled=section.bool("enabled", True),
        cluster_dir=section.path("cluster_dir", str(state_dir / "cluster")),
        git=section.bool("git", True),
        git_name=section.str("git_name", MAYU_GIT_NAME),
        git_email=section.str("git_email", MAYU_GIT_EMAIL),
        git_retry_interval=section.float("git_retry_interval", 30.0, minimum=0.1),
        default_os_version=version,
        images_dir=section.path("images_dir", None),
        public_url=public_url.rstrip("/") if public_url else None,
        network=_read_network(section.mapping("network")),
        profiles=profiles,
        templates_env=_read_env(section, "templates_env"),
        templates_dir=section.path("templates_dir", None),
        snippets_dir=section.path("snippets_dir", None),
        installed_boot=section.str("installed_boot", "local-boot", choices=INSTALLED_BOOT_CHOICES),
        kernel_args=section.str_list("kernel_args"),
        api=_read_api(section.mapping("api")),
        enrolment=_read_enrolment(section, own_dhcp),
        enrolment_window=section.float("enrolment_window", 1800.0, minimum=1.0),
        first_contact_rate=section.float("first_contact_rate", 10.0, minimum=0.0),
        max_pending=section.int("max_pending", 100, minimum=1, maximum=100_000),
        store=_read_store(section.mapping("store")),
    )
    section.finish()
    return config


__all__ = [
    "ENROLMENT_CHOICES",
    "FLATCAR_IMAGE_SOURCES",
    "GENERIC_PLACEHOLDERS",
    "INSTALLED_BOOT_CHOICES",
    "INSTALL_FLOWS",
    "OS_CHOICES",
    "STORE_KINDS",
    "ApiConfig",
    "FlatcarSettings",
    "GenericSettings",
    "IPRange",
    "NetworkConfig",
    "ProfileConfig",
    "ProvisionConfig",
    "StoreConfig",
    "freeze",
    "read_provision",
    "thaw",
]
