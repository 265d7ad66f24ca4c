"""Per-host GRUB and PXELINUX configs: the provisioning flows for the other loaders.

The boot decision hands a machine shim and GRUB (``grub``) or lpxelinux.0 (``pxelinux``)
instead of iPXE; those loaders then ask for a config file by TFTP (or HTTP):

* GRUB (Debian's signed ``grubnetx64.efi``, prefix ``grub``): ``grub/grub.cfg`` first.
  That generic config reads the machine's SMBIOS serial and UUID with GRUB's ``smbios``
  command (the signed image has the module built in) and asks for
  ``grub/grub.cfg-01-<mac>-serial-<serial>-uuid-<uuid>``; where that fails (a GRUB without
  ``smbios``, a serial no path can carry) it asks for ``grub/grub.cfg-01-<mac>``, the name
  GRUB's own search also tries.  ``$net_default_mac`` has colons, GRUB's search dashes:
  both spellings are served.
* PXELINUX: ``pxelinux.cfg/01-<mac>`` (dashes); PXELINUX has no SMBIOS reader.

The config carries the host's flow: the kernel, initrds and command line of the flow's
iPXE script (rendered and read back by :func:`parse_ipxe_boot`, so each flow is written
once, and an operator's override of an iPXE template applies to every loader), local boot
for installed hosts, the pending wait.  The machine is identified like a request to
``/ipxebootscript``: by its serial (or its UUID when the serial is a placeholder), else by
its MAC.  A config request never enrols: an unknown machine gets the default flow and is
enrolled by that flow's installer, which posts the serial Linux reads from SMBIOS.

:class:`LoaderConfigSource` is the TFTP :class:`~pxestack.tftp.source.FileSource`; the HTTP
API serves the same paths.  Hostile paths (not a MAC, too long) are logged and answered
"not found".
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from urllib.parse import urlsplit

from twisted.logger import Logger

from pxestack.paths import PathNotFound, normalize_request_path
from pxestack.provision.model import Host, HostState, InvalidHostRecord, normalize_mac
from pxestack.provision.provisioner import Provisioner
from pxestack.tftp.source import BytesReader, FilesystemSource, Reader, TftpClient

#: The loaders with configs here, and the template directory of each.
LOADER_KINDS = ("grub", "pxelinux")

_MAC_TEXT = r"[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}"
#: ``grub/grub.cfg-01-<mac>`` (dashes from GRUB's own search, colons from our generic
#: grub.cfg) and ``pxelinux.cfg/01-<mac>``; group 1 is the MAC.
_GRUB_HOST = re.compile(rf"grub/grub\.cfg-01-({_MAC_TEXT})")
#: ``grub/grub.cfg-01-<mac>-serial-<serial>-uuid-<uuid>`` as the generic grub.cfg asks for
#: it (either may be empty); the UUID has no ``-uuid-`` in it, so the last one ends the serial.
_GRUB_IDENTIFIED = re.compile(
    rf"grub/grub\.cfg-01-({_MAC_TEXT})-serial-(.*)-uuid-([0-9A-Fa-f-]{{0,36}})", re.DOTALL)
_PXELINUX_HOST = re.compile(rf"pxelinux\.cfg/01-({_MAC_TEXT})")
_GRUB_GENERIC = "grub/grub.cfg"
#: Longest path looked at (a config name with a 64-character serial is shorter).
MAX_CONFIG_PATH = 192
#: iPXE settings such as ``${uuid:uristring}`` that GRUB and PXELINUX cannot fill in.
_IPXE_SETTING = re.compile(r"\$\{[^}]*\}")


@dataclass(frozen=True, slots=True)
class KernelBoot:
    """What an iPXE flow script boots: kernel URL, its arguments and the initrd URLs."""

    kernel: str
    args: tuple[str, ...]
    initrds: tuple[str, ...]


def parse_ipxe_boot(script: str) -> KernelBoot | None:
    """The ``kernel``/``initrd`` lines of an iPXE script (None when it has no kernel).

    iPXE options of those commands (``--name x``) are dropped and iPXE settings
    (``${...}``) left empty, as GRUB and PXELINUX have neither.
    """
    kernel: list[str] | None = None
    initrds: list[str] = []
    for line in script.splitlines():
        words = line.split()
        if not words or words[0] not in ("kernel", "initrd"):
            continue
        arguments = [_IPXE_SETTING.sub("", w) for w in _without_options(words[1:])]
        if not arguments:
            continue
        if words[0] == "initrd":
            initrds.append(arguments[0])
        else:
            kernel = arguments
    if kernel is None:
        return None
    return KernelBoot(kernel[0], tuple(kernel[1:]), tuple(initrds))


#: iPXE image-command options that take a value (``--name initrd.img``).
_VALUED_OPTIONS = ("--name", "--timeout", "-n", "-t")


def _without_options(words: list[str]) -> list[str]:
    """iPXE image commands' arguments without their leading ``--opt [value]`` options."""
    index = 0
    while index < len(words) and words[index].startswith("-"):
        index += 2 if words[index] in _VALUED_OPTIONS else 1
    return words[index:]


def grub_location(url: str, base_url: str | None = None) -> str:
    """A URL as GRUB names it: ``http://h/x`` is ``(http,h)/x``; other text unchanged.

    Debian's signed ``grubnetx64.efi`` has no ``http`` module built in (its module list
    has ``net``, ``efinet`` and ``tftp`` only), and under Secure Boot GRUB loads no module
    from the network, so ``(http,...)`` is "disk not found" there.  An image of our own
    API (``<base_url>/images/...``) is therefore read over TFTP from the server GRUB was
    booted from (``(tftp)``), where :class:`LoaderConfigSource` serves the same files.
    Other URLs keep ``(http,host)``, for a GRUB built with HTTP.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "tftp") or not parts.hostname:
        return url
    if base_url is not None and url.startswith(base_url.rstrip("/") + "/images/"):
        return "(tftp)" + url[len(base_url.rstrip("/")):]
    server = parts.hostname if parts.port in (None, 80) else f"{parts.hostname}:{parts.port}"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return f"({parts.scheme},{server}){path}"


@dataclass(frozen=True, slots=True)
class ConfigRequest:
    """A config path, read: the loader, the MAC (None: the generic ``grub/grub.cfg``) and
    the SMBIOS serial and UUID GRUB read (None when the path has none or they are empty)."""

    loader: str
    mac: str | None
    serial: str | None = None
    uuid: str | None = None


def config_request(path: str) -> ConfigRequest | None:
    """The :class:`ConfigRequest` of a config path, or None when *path* is no config of
    ours."""
    if path == _GRUB_GENERIC:
        return ConfigRequest("grub", None)
    identified = _GRUB_IDENTIFIED.fullmatch(path)
    if identified:
        mac, serial, uuid = identified.groups()
        return ConfigRequest("grub", normalize_mac(mac), serial.strip() or None, uuid or None)
    for loader, pattern in (("grub", _GRUB_HOST), ("pxelinux", _PXELINUX_HOST)):
        match = pattern.fullmatch(path)
        if match:
            return ConfigRequest(loader, normalize_mac(match.group(1)))
    return None


def render_loader_config(provisioner: Provisioner, request: ConfigRequest) -> str:
    """The config *request* names (see the module documentation)."""
    return loader_config(provisioner, request)[0]


def loader_config(provisioner: Provisioner, request: ConfigRequest) -> tuple[str, Host | None]:
    """The config *request* names and the known host it was rendered for (None: unknown)."""
    loader, mac = request.loader, request.mac
    templates = provisioner.templates
    suffix = f".cfg.{loader}.j2"
    if mac is None:
        return templates.render("grub/grub.cfg.grub.j2", {}), None
    # By serial (or UUID for a placeholder serial), else by MAC; never enrols.
    host = provisioner.host_for_boot(request.serial, request.uuid, mac)
    context = provisioner.context(host)
    context.update({"Mac": mac, "Flow": provisioner.flow_of(host).name})
    if host is not None and host.state is HostState.PENDING:
        return templates.render(f"{loader}/pending{suffix}", context), host
    flow = provisioner.flow_of(host)
    if (host is not None and flow.install == "disk"
            and host.state in (HostState.INSTALLED, HostState.RUNNING)):
        return templates.render(f"{loader}/localboot{suffix}", context), host
    boot = parse_ipxe_boot(provisioner.boot_script(host, identified=True))
    if boot is None:  # an operator's iPXE template without a kernel: nothing to boot
        return templates.render(f"{loader}/localboot{suffix}", context), host
    base_url = provisioner.base_url

    def locate(url: str) -> str:
        return grub_location(url, base_url) if loader == "grub" else url

    # initrd=<name> is for iPXE's UEFI kernels; GRUB's initrd command and PXELINUX's INITRD
    # hand the initrd over themselves (and a PXELINUX initrd= would replace INITRD).
    args = [arg for arg in boot.args if not arg.startswith("initrd=")]
    context.update({
        "Kernel": locate(boot.kernel),
        "Args": args,
        "Initrds": [locate(initrd) for initrd in boot.initrds],
        "Cmdline": shlex.join(args),
    })
    return templates.render(f"{loader}/boot{suffix}", context), host


class LoaderConfigSource:
    """TFTP :class:`~pxestack.tftp.source.FileSource` of the GRUB and PXELINUX configs;
    every other path is "not found" (compose it before the filesystem source)."""

    log = Logger()

    def __init__(self, provisioner: Provisioner) -> None:
        self.provisioner = provisioner

    def open(self, path: str, client: TftpClient) -> Reader:
        """Render the config *path* names, for the machine it names; or open the image
        ``images/[<serial>/]<name>`` names (as ``GET /images/...``)."""
        if len(path) > MAX_CONFIG_PATH:
            raise PathNotFound(path[:MAX_CONFIG_PATH])
        parts = normalize_request_path(path)  # refuses "..", NUL, ...
        if parts[0] == "images":
            return self._image(parts[1:])
        normalized = "/".join(parts)
        request = config_request(normalized)
        if request is None:
            if normalized.startswith(("grub/grub.cfg-01-", "pxelinux.cfg/01-")):
                self.log.info("unusable MAC in config request {path!r} from {client}",
                              path=normalized, client=client.host)
            raise PathNotFound(normalized)
        text, host = loader_config(self.provisioner, request)
        if request.mac is not None:
            self.provisioner_step(request, host, client.host)
        return BytesReader(text.encode())

    def _image(self, parts: tuple[str, ...]) -> Reader:
        """``images/[<serial>/]<name>``: the file ``GET /images/...`` serves (for GRUB,
        whose HTTP client cannot reach a port other than 80)."""
        prov = self.provisioner
        images_dir = prov.config.images_dir
        if images_dir is None or len(parts) not in (1, 2):
            raise PathNotFound("/".join(parts))
        host = None
        if len(parts) == 2:
            try:
                found = prov.get(parts[0])
            except (InvalidHostRecord, ValueError):
                self.log.info("unusable serial in TFTP image request {parts!r}", parts=parts)
                raise PathNotFound("/".join(parts)) from None
            host = found.host if found is not None else None
        candidates = prov.flow_of(host).image_candidates(prov.os_version(host), parts[-1])
        source = FilesystemSource(images_dir)
        for candidate in candidates:
            try:
                return source.open("/".join(candidate), TftpClient(("", 0)))
            except PathNotFound:
                continue
        raise PathNotFound("/".join(parts))

    def provisioner_step(self, request: ConfigRequest, host: Host | None, ip: str) -> None:
        """Log which config a machine fetched and whom it was for (the boot timeline has
        the TFTP transfer)."""
        if host is not None:
            self.log.info("{loader} config for host {serial} ({mac}, {ip}, state {state}; "
                          "SMBIOS serial read by the loader: {read!r})",
                          loader=request.loader, serial=host.serial, mac=request.mac, ip=ip,
                          state=host.state.value, read=request.serial)
        else:
            self.log.info("{loader} config for a machine not known yet ({mac}, {ip}; SMBIOS "
                          "serial read by the loader: {read!r}): the default flow",
                          loader=request.loader, mac=request.mac, ip=ip, read=request.serial)


__all__ = [
    "LOADER_KINDS",
    "MAX_CONFIG_PATH",
    "ConfigRequest",
    "KernelBoot",
    "LoaderConfigSource",
    "config_request",
    "grub_location",
    "loader_config",
    "parse_ipxe_boot",
    "render_loader_config",
]
