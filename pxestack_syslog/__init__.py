"""pxestack-syslog: an installer's syslog (and a kernel's netconsole) in each machine's timeline.

An extension of pxestack (entry point ``syslog`` in the ``pxestack.extensions`` group) built
only on the public API, :mod:`pxestack.extensions`::

    extensions:
      - use: syslog
        config:
          listen: "0.0.0.0:514"     # UDP and TCP
          rate: 50                  # lines per second per source address
          burst: 200

See docs/extensions.md for every key and the kernel arguments that point an installer here.
"""

from __future__ import annotations

from typing import Any

from pxestack.extensions import ConfigSection, Extension, ExtensionContext
from pxestack_syslog.server import SyslogSettings, syslog_services


class SyslogExtension(Extension):
    """A syslog receiver (UDP and TCP; RFC 5424 and RFC 3164) feeding the boot timeline."""

    description = "syslog receiver: installer logs into each machine's timeline"

    def read_config(self, section: ConfigSection) -> SyslogSettings:
        defaults = SyslogSettings()
        settings = SyslogSettings(
            listen=section.listen("listen", defaults.listen),
            udp=section.bool("udp", defaults.udp),
            tcp=section.bool("tcp", defaults.tcp),
            max_message_bytes=section.int("max_message_bytes", defaults.max_message_bytes,
                                          minimum=480, maximum=65000),
            rate=section.float("rate", defaults.rate, minimum=0.1),
            burst=section.int("burst", defaults.burst, minimum=1, maximum=100000),
            max_sources=section.int("max_sources", defaults.max_sources, minimum=1,
                                    maximum=1000000),
            max_connections=section.int("max_connections", defaults.max_connections,
                                        minimum=1, maximum=10000),
            idle_timeout=section.float("idle_timeout", defaults.idle_timeout, minimum=1.0),
            attribution_ttl=section.float("attribution_ttl", defaults.attribution_ttl,
                                          minimum=0.0),
            netconsole=section.bool("netconsole", defaults.netconsole),
            udp_receive_buffer=section.int("udp_receive_buffer", defaults.udp_receive_buffer,
                                           minimum=65536, maximum=256 << 20),
        )
        if not settings.udp and not settings.tcp:
            section.problem("tcp", "udp and tcp are both false: nothing would listen")
        return settings

    def setup(self, context: ExtensionContext, config: Any) -> None:
        context.add_service(syslog_services(context, config))
        host, port = config.listen
        context.log.info("syslog receiver on {host}:{port} ({transports})", host=host,
                         port=port, transports="/".join(
                             t for t, on in (("udp", config.udp), ("tcp", config.tcp)) if on))


__all__ = ["SyslogExtension"]
