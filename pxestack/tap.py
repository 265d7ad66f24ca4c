"""twistd glue for ``twistd pxestack --config FILE``; no logic (as ``twisted/names/tap.py``)."""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from pxestack.config import Config, ConfigError, load_config_file, load_quickstart


class Options(usage.Options):
    """Command-line options of ``twistd pxestack``."""

    synopsis = "[--config FILE]"
    longdesc = (
        "Run pxestack's DHCP, TFTP, HTTP and provisioning services as the configuration "
        "file enables them.  Without --config, run the embedded quickstart."
    )
    optParameters = [
        ["config", "c", None, "YAML configuration file"],
    ]

    config_value: Config | None = None
    service_value: Any = None

    def postOptions(self) -> None:
        """Load and validate the configuration and build the service tree (no port is
        opened yet); report every problem as a usage error."""
        from pxestack.app import build_root_service

        try:
            path = self["config"]
            self.config_value = load_config_file(path) if path else load_quickstart()
            self.service_value = build_root_service(self.config_value)
        except ConfigError as exc:
            raise usage.UsageError(
                "configuration problems:\n" + "\n".join(f"  {p}" for p in exc.problems)
            ) from None


def makeService(options: Options) -> Any:
    """Build the same service tree as ``pxestack serve`` (built while the options were
    checked, so that problems found while building are reported as usage errors)."""
    if options.service_value is not None:
        return options.service_value
    from pxestack.app import build_root_service

    assert options.config_value is not None
    return build_root_service(options.config_value)


__all__ = ["Options", "makeService"]
