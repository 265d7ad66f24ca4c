"""OS flows: which templates, kernel files and endpoints a profile's machines use.

A profile chooses its flow with two keys (``docs/provisioning.md``, "OS flows"):

* ``os``: ``flatcar`` (the default), ``fcos`` (Fedora CoreOS) or ``generic`` (any kernel and
  initrd, with an optional script);
* ``install``: ``disk`` (install once, then boot the local disk; mayu era B) or ``pxe``
  (boot from the network into RAM on every boot; mayu era C).

* flatcar / disk: ``ipxe/install.ipxe.j2`` boots the live system with the first-stage
  Ignition config; its installer script POSTs host data to ``/final-ignition-config.json``
  (the answer is the final config) and runs ``flatcar-install``;
* flatcar / disk with ``config_format: cloud-config`` (mayu's cloud-config era):
  ``ipxe/cloudconfig-install.ipxe.j2`` boots the live system with
  ``first_stage_cloudconfig.yaml`` (``GET /first-stage-cloudconfig.yaml``); its installer
  script POSTs host data to ``/final-cloud-config.yaml`` (mayu's path; the answer is the
  rendered ``last_stage_cloudconfig.yaml``) and runs ``flatcar-install -c``;
* flatcar / pxe: ``ipxe/pxe.ipxe.j2``; Ignition fetches ``GET /ignition`` on every boot;
* fcos / disk: ``ipxe/fcos-install.ipxe.j2`` boots the live system, whose Ignition config
  (``GET /installer-ignition``) reports ``set_installed`` once coreos-installer has written
  the disk with the config from ``GET /ignition``;
* fcos / pxe: ``ipxe/fcos-live.ipxe.j2``; Ignition fetches ``GET /ignition`` on every boot;
* generic (either install mode): ``ipxe/generic.ipxe.j2`` boots the configured kernel and
  initrds; the optional script is served at ``GET /script/<serial>``.

The image files each flow may ask ``/images/<serial>/<name>`` for are listed here too, so
the HTTP layer serves exactly the files a flow's templates reference and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pxestack.config.provision import ProfileConfig

#: ``/images/.../<name>`` -> candidate file names in ``<images_dir>/<version>/`` for Flatcar
#: (Flatcar's names first, then CoreOS Container Linux's, as mayu's caches have them;
#: reference/mayu-api.md).  The ``.sha256`` files are written by ``pxestack images``.
FLATCAR_IMAGE_FILES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "vmlinuz": ("flatcar_production_pxe.vmlinuz", "coreos_production_pxe.vmlinuz"),
        "initrd.cpio.gz": (
            "flatcar_production_pxe_image.cpio.gz",
            "coreos_production_pxe_image.cpio.gz",
        ),
        "install_image.bin.bz2": (
            "flatcar_production_image.bin.bz2",
            "coreos_production_image.bin.bz2",
        ),
        "install_image.bin.bz2.sha256": (
            "flatcar_production_image.bin.bz2.sha256",
            "coreos_production_image.bin.bz2.sha256",
        ),
    }
)
#: Fedora CoreOS's live PXE artefacts, stored as ``<images_dir>/fcos/<version>/<name>``
#: (the role names of :mod:`pxestack.provision.images`: kernel, initramfs, rootfs).
FCOS_IMAGE_FILES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {name: (name,) for name in ("vmlinuz", "initrd.img", "rootfs.img")}
)
#: What the shipped generic script writes to disk, and its checksum.
GENERIC_INSTALL_IMAGE = "install.img"


@dataclass(frozen=True, slots=True)
class Flow:
    """The boot flow of one profile (see the module documentation)."""

    os: str
    install: str
    #: The iPXE script for a machine that should install (disk) or boot (pxe) now.
    boot_template: str
    #: The machine's own config (``GET /ignition`` or the host-data answer), if any.
    config_template: str | None
    #: The config of the live installer system (``GET /installer-ignition``), if any.
    installer_template: str | None
    #: A script served at ``GET /script/<serial>`` (generic flow), if any.
    script_template: str | None
    #: Directory of this OS's images under ``images_dir`` (``""``: mayu's layout).
    image_dir: str
    #: ``/images/<serial>/<name>`` -> candidate file names in the version directory.
    image_files: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    #: ``ignition`` or ``cloud-config`` (what ``config_template`` produces).
    config_format: str = "ignition"

    @property
    def name(self) -> str:
        """``<os>-<install>``, e.g. ``fcos-disk``; ``flatcar-disk-cloud-config`` for mayu's
        cloud-config flow (logs, docs, template context)."""
        suffix = "-cloud-config" if self.config_format == "cloud-config" else ""
        return f"{self.os}-{self.install}{suffix}"

    @property
    def host_data_path(self) -> str:
        """Where the installer POSTs its host data and gets the final config (mayu's paths)."""
        if self.config_format == "cloud-config":
            return "final-cloud-config.yaml"
        return "final-ignition-config.json"

    @property
    def uses_first_stage(self) -> bool:
        """Whether the mayu first-stage installer (script + host-data POST) belongs to it."""
        return self.os == "flatcar" and self.install == "disk"

    @property
    def serves_config(self) -> bool:
        """Whether ``GET /ignition`` serves this flow's config."""
        return self.config_template is not None and not self.uses_first_stage

    def image_candidates(self, version: str, name: str) -> tuple[tuple[str, ...], ...]:
        """Relative paths (as path parts) that may hold image *name* of *version*."""
        names = self.image_files.get(name)
        if names is None:
            return ()
        prefix = (self.image_dir,) if self.image_dir else ()
        return tuple((*prefix, version, candidate) for candidate in names)


def _generic_files(profile: ProfileConfig) -> Mapping[str, tuple[str, ...]]:
    assert profile.generic is not None
    names = [profile.generic.kernel, *profile.generic.initrd]
    local = {n: (n,) for n in names if not n.startswith(("http://", "https://"))}
    if profile.generic.script is not None:
        # The shipped image-to-disk script fetches these (any script may).
        local[GENERIC_INSTALL_IMAGE] = (GENERIC_INSTALL_IMAGE,)
        local[GENERIC_INSTALL_IMAGE + ".sha256"] = (GENERIC_INSTALL_IMAGE + ".sha256",)
    return MappingProxyType(local)


def flow_for(profile: ProfileConfig | None) -> Flow:
    """The flow of *profile*; the implicit ``default`` profile (``None``) is Flatcar/disk."""
    os_name = profile.os if profile is not None else "flatcar"
    install = profile.install if profile is not None else "disk"
    if os_name == "fcos":
        return Flow(
            os="fcos",
            install=install,
            boot_template="ipxe/fcos-install.ipxe.j2"
            if install == "disk"
            else "ipxe/fcos-live.ipxe.j2",
            config_template="fcos-ignition.json.j2",
            installer_template="fcos-installer-ignition.json.j2" if install == "disk" else None,
            script_template=None,
            image_dir="fcos",
            image_files=FCOS_IMAGE_FILES,
        )
    if os_name == "generic":
        assert profile is not None and profile.generic is not None
        return Flow(
            os="generic",
            install=install,
            boot_template="ipxe/generic.ipxe.j2",
            config_template=None,
            installer_template=None,
            script_template=profile.generic.script,
            image_dir=profile.generic.image_os,
            image_files=_generic_files(profile),
        )
    if profile is not None and profile.config_format == "cloud-config":
        # mayu's cloud-config era (config_format checks flatcar/disk): the live system runs
        # first_stage_cloudconfig.yaml, the installed one last_stage_cloudconfig.yaml.
        return Flow(
            os="flatcar",
            install="disk",
            boot_template="ipxe/cloudconfig-install.ipxe.j2",
            config_template="last_stage_cloudconfig.yaml.j2",
            installer_template=None,
            script_template=None,
            image_dir="",
            image_files=FLATCAR_IMAGE_FILES,
            config_format="cloud-config",
        )
    return Flow(
        os="flatcar",
        install=install,
        boot_template="ipxe/install.ipxe.j2" if install == "disk" else "ipxe/pxe.ipxe.j2",
        config_template="final-ignition.json.j2",
        installer_template=None,
        script_template=None,
        image_dir="",
        image_files=FLATCAR_IMAGE_FILES,
    )


__all__ = [
    "FCOS_IMAGE_FILES",
    "FLATCAR_IMAGE_FILES",
    "GENERIC_INSTALL_IMAGE",
    "Flow",
    "flow_for",
]
