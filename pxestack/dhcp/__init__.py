"""DHCP: client classification, boot decisions, the full server and proxyDHCP cores (sans-IO),
and the Twisted adapter in :mod:`pxestack.dhcp.protocol`."""
