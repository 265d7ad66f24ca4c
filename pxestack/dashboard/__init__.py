"""The web dashboard: machines, their boot timelines and history, actions, the boot storm.

Served by the HTTP service at ``/`` and under ``/dashboard/`` when the configuration has a
``provision:`` section (see docs/dashboard.md).  It sits at the top of the layers, beside
the command line: it reads the provisioning API's :class:`~pxestack.provision.api.ProvisioningApi`
and the :class:`~pxestack.bootevents.BootEventRecorder` the servers feed, and adds nothing
below them.
"""

from __future__ import annotations

from pxestack.dashboard.web import Dashboard, dashboard_children

__all__ = ["Dashboard", "dashboard_children"]
