"""Provisioning: mayu-style profiles, host records with a git audit trail, and the boot
policy that plugs into the DHCP, TFTP and HTTP cores."""
