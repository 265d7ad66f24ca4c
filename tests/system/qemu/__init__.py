"""QEMU boot harness: real firmware network-boots against pxestack and the dnsmasq reference.

Modules:

* :mod:`.artifacts` builds (once, cached under ``.cache/qemu``) a Debian kernel, the NIC
  modules it needs in dependency order, and a busybox initramfs whose ``/init`` is a real
  mayu-style first stage.
* :mod:`.netns` creates a network namespace with a bridge and tap devices.
* :mod:`.vm` starts one QEMU machine per firmware path and watches its serial console.
* :mod:`.servers` runs the servers inside the namespace: the dnsmasq reference (plus
  :mod:`.refserver`) or ``pxestack serve``.
* :mod:`.scenario` ties them together into timed boots.

See ``docs/firmware-testing.md``.
"""
