"""The top of the stack: the service tree for a configuration, provisioning included.

``pxestack serve``, ``twistd pxestack`` and ``.tac`` files all call
:func:`build_root_service`, so they run exactly the same services.
"""

from __future__ import annotations

from typing import Any

from pxestack.config import Config
from pxestack.config.checks import validate_for_serving
from pxestack.service import Extensions, PxeStackService, build_service


def build_root_service(config: Config, *, reactor: Any = None) -> PxeStackService:
    """Build every service *config* enables, with the provisioning layer plugged in.

    The host checks of :func:`~pxestack.config.checks.validate_for_serving` (token files,
    directory modes, ``run_as``) come first, exactly as ``pxestack serve --check`` runs them.
    """
    validate_for_serving(config)
    extensions = Extensions()
    if config.provision is not None:
        from pxestack.provision.service import provisioning_extensions

        extensions = provisioning_extensions(config, reactor=reactor)
    return build_service(config, extensions, reactor=reactor)


__all__ = ["build_root_service"]
