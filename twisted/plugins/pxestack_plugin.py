"""twistd dropin for pxestack.  Keep it one line of logic: ServiceMaker is lazy, so
``twistd --help`` stays fast.  There is deliberately no ``__init__.py`` in ``twisted/`` or
``twisted/plugins/`` (it would shadow Twisted's own package)."""

from twisted.application.service import ServiceMaker

pxestack = ServiceMaker(
    "pxestack",
    "pxestack.tap",
    "pxestack network-boot stack: DHCP, proxyDHCP, TFTP, HTTP and provisioning",
    "pxestack",
)
