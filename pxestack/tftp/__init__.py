"""TFTP: option negotiation, the sans-IO read session, file sources, and the Twisted adapter
in :mod:`pxestack.tftp.protocol`."""
