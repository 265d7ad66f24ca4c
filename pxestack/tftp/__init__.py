"""TFTP: option negotiation, the sans-IO read session, file sources, and the Twisted adapter
in :mod:`pxestack.tftp.protocol` (requests, admission, logging) with its transfer transport
in :mod:`pxestack.tftp.transport` (the sockets a transfer's datagrams move through)."""
