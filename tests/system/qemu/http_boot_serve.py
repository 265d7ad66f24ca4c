"""``pxestack serve`` for the UEFI HTTP Boot test: PXE firmware is ignored.

OVMF tries PXE over IPv4 and IPv6 before HTTP Boot on the same NIC, and its boot order
cannot tell them apart; so that the machine boots over HTTP only (no TFTP at all), this
wraps the provisioning boot policy to ignore the firmware's ``PXEClient`` packets.  iPXE,
once loaded over HTTP, is answered as usual (user class ``iPXE``).

Usage: ``python http_boot_serve.py CONFIG``.
"""

from __future__ import annotations

import sys

from pxestack.dhcp.policy import BootSpec, Machine
from pxestack.provision import policy

_original = policy.ProvisioningPolicy.boot_spec


def boot_spec(self: policy.ProvisioningPolicy, machine: Machine) -> BootSpec | None:
    """``None`` for PXE firmware (not iPXE), else the provisioning answer."""
    if (machine.vendor_class or "").startswith("PXEClient") and b"iPXE" not in (
        machine.user_classes
    ):
        return None
    return _original(self, machine)


def main() -> int:
    """Patch the policy, then run ``pxestack serve --config CONFIG``."""
    policy.ProvisioningPolicy.boot_spec = boot_spec  # type: ignore[method-assign]
    from pxestack.cli import main as pxestack_main

    return pxestack_main(["serve", "--config", sys.argv[1]])


if __name__ == "__main__":
    sys.exit(main())
