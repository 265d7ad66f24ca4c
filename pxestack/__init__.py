"""pxestack: a pure-Python network-boot stack.

DHCP (full server and proxyDHCP), TFTP and HTTP protocol servers on one Twisted reactor,
plus a mayu-style provisioning layer.  Importing this package imports nothing from
Twisted; pick the layer you need (``pxestack.wire``, ``pxestack.dhcp``, ``pxestack.tftp``,
``pxestack.http``, ``pxestack.service``, ``pxestack.provision``).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
