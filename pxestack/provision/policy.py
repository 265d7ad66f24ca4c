"""The provisioning layer's :class:`~pxestack.dhcp.policy.BootPolicy`: state-driven DHCP answers.

mayu rendered a dnsmasq ignore list and restarted dnsmasq whenever it remembered to (and
forgot on ``mark_fresh``: bug).  Here the DHCP core asks :meth:`ProvisioningPolicy.boot_spec`
on every packet and the answer comes from the store's in-memory MAC index, which every
write updates at once, so a state change acts on the very next packet:

* a MAC of an ``installed`` or ``running`` host whose profile installs to disk is either
  ignored (``provision.installed_boot: ignore``, mayu's behaviour, on **all** of the host's
  MACs) or handed the boot-from-local-disk script (``local-boot``, the default; mayu
  issue #14: ignored hosts wait for every NIC's PXE time-out on each reboot);
* every other machine (unknown MACs included) is sent to ``/ipxebootscript``, which
  identifies the machine and serves the installer, the RAM boot or the local boot.

TFTP is left to the filesystem source: the only TFTP files are the iPXE binaries, which
do not depend on the host.
"""

from __future__ import annotations

from twisted.logger import Logger

from pxestack.dhcp.policy import BootSpec, Loader, Machine
from pxestack.provision.model import HostState, InvalidHostRecord, normalize_mac
from pxestack.provision.provisioner import Provisioner

_INSTALLED = (HostState.INSTALLED, HostState.RUNNING)


class ProvisioningPolicy:
    """Implements :class:`pxestack.dhcp.policy.BootPolicy` from the host store."""

    log = Logger()

    def __init__(self, provisioner: Provisioner, *, installed_boot: str = "local-boot") -> None:
        self.provisioner = provisioner
        self.installed_boot = installed_boot
        self.script_url = f"{provisioner.base_url}/ipxebootscript"

    def boot_spec(self, machine: Machine) -> BootSpec | None:
        """Decide from the host's state; never raises (a failure boots the installer path)."""
        try:
            host = self.provisioner.store.host_for_mac(normalize_mac(machine.mac))
        except InvalidHostRecord:
            self.log.info("unusable MAC {mac!r} in a DHCP packet", mac=machine.mac)
            return BootSpec(ipxe_script_url=self.script_url)
        except Exception:
            self.log.failure("host lookup failed for {mac}", mac=machine.mac)
            return BootSpec(ipxe_script_url=self.script_url)
        if host is None:
            return BootSpec(ipxe_script_url=self.script_url)
        profile = self.provisioner.profile_of(host)
        loader = (
            Loader(profile.loader) if profile is not None and profile.loader is not None
            else None
        )
        installed = host.state in _INSTALLED
        if installed and self.provisioner.install_flow(host) == "disk":
            if self.installed_boot == "ignore":
                return None
            # Also name the script URL: /ipxebootscript?mac= serves the local-boot script
            # for this host, whichever of the two fields the DHCP core honours.
            return BootSpec(
                ipxe_script_url=f"{self.script_url}?mac={host.mac_addresses[0]}"
                if host.mac_addresses
                else None,
                local_boot=True,
                loader=loader,
            )
        return BootSpec(ipxe_script_url=self.script_url, loader=loader)


__all__ = ["ProvisioningPolicy"]
