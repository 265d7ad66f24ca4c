"""The top of the stack: the service tree for a configuration, provisioning included.

``pxestack serve``, ``twistd pxestack`` and ``.tac`` files all call
:func:`build_root_service`, so they run exactly the same services.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from pxestack._malloc import limit_arenas
from pxestack.config import Config
from pxestack.config.checks import create_token_file, validate_for_serving
from pxestack.service import Extensions, PxeStackService, build_service

log = Logger()


def prepare_admin_token(config: Config) -> str | None:
    """Create ``provision.api.token_file`` when ``generate_token`` asks and it is missing.

    Returns the new token (for the caller to show once), or None when nothing was made.
    The token itself is never logged: only where it is kept.
    """
    prov = config.provision
    if prov is None or not prov.api.generate_token or prov.api.token_file is None:
        return None
    token = create_token_file(prov.api.token_file)
    if token is not None:
        log.info("generated the admin token in {path} (mode 0600)",
                 path=str(prov.api.token_file))
    return token


def build_root_service(config: Config, *, reactor: Any = None,
                       dhcp_sockets: Any = None) -> PxeStackService:
    """Build every service *config* enables, with the provisioning layer plugged in.

    A generated admin token is made first (:func:`prepare_admin_token`); the host checks of
    :func:`~pxestack.config.checks.validate_for_serving` (token files, directory modes,
    ``run_as``) come next, exactly as ``pxestack serve --check`` runs them.  The
    extensions the configuration enables (:mod:`pxestack.extensions`) are set up before
    the tree is built and their services added after pxestack's own; any problem with
    them is a :class:`~pxestack.config.ConfigError` naming ``extensions[i]``.
    *dhcp_sockets* is passed to :func:`~pxestack.service.build_service`.
    """
    # Before any thread starts: threads made later share the arenas (see pxestack._malloc).
    limit_arenas()
    prepare_admin_token(config)
    validate_for_serving(config)
    extensions = Extensions()
    if config.provision is not None:
        from pxestack.provision.service import provisioning_extensions

        extensions = provisioning_extensions(config, reactor=reactor)
        add_dashboard(extensions, reactor=reactor)
    loaded: list[Any] = []
    if config.extensions:
        from pxestack.extensions import setup_extensions

        loaded = setup_extensions(config, extensions, reactor=reactor)
    root = build_service(config, extensions, reactor=reactor, dhcp_sockets=dhcp_sockets)
    if loaded:
        from pxestack.extensions import attach_extensions

        attach_extensions(root, loaded)
    return root


def add_dashboard(extensions: Extensions, *, reactor: Any = None) -> None:
    """Mount the dashboard (``/`` and ``/dashboard/``) beside the provisioning API."""
    from pxestack.dashboard import dashboard_children
    from pxestack.provision.api import AdminResource

    admin = extensions.http_children.get(b"admin")
    if not isinstance(admin, AdminResource) or extensions.events is None:
        return
    for name, resource in dashboard_children(admin.api, extensions.events,
                                             reactor=reactor).items():
        extensions.http_children.setdefault(name, resource)


__all__ = ["add_dashboard", "build_root_service", "prepare_admin_token"]
