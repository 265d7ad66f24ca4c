"""Prometheus metrics of every pxestack server, and the observer of host-store changes.

==========================================  ===============================================
module                                      holds
==========================================  ===============================================
:mod:`pxestack.metrics.registry`            :class:`Metrics` (the registry and the hooks
                                            the adapters call), :func:`instrument_site`
:mod:`pxestack.metrics.phases`              the boot-phase model: :data:`BOOT_PHASES`,
                                            :class:`BootPhaseTracker`,
                                            :class:`PhaseHistogram`
:mod:`pxestack.metrics.resource`            :class:`MetricsResource` (``GET /metrics``)
:mod:`pxestack.metrics.hosts`               :class:`ObservedHostStore`: one observer of
                                            host-store changes for the metrics, the
                                            dashboard's timeline and the log
==========================================  ===============================================

docs/metrics.md lists every metric, its labels, and the names older releases used.
"""

from pxestack.metrics.hosts import (
    HostChange,
    HostObserver,
    ObservedHostStore,
    boot_steps,
    log_host_change,
)
from pxestack.metrics.phases import (
    BOOT_EVENTS,
    BOOT_PHASES,
    DURATION_BUCKETS,
    BootPhase,
    BootPhaseTracker,
    PhaseHistogram,
)
from pxestack.metrics.registry import (
    DEFAULT_HTTP_ENDPOINTS,
    DHCP_MESSAGE_TYPES,
    DHCP_OUTCOMES,
    Metrics,
    instrument_site,
    leases_by_pool,
    mac_text,
)
from pxestack.metrics.resource import MetricsResource

__all__ = [
    "BOOT_EVENTS",
    "BOOT_PHASES",
    "DEFAULT_HTTP_ENDPOINTS",
    "DHCP_MESSAGE_TYPES",
    "DHCP_OUTCOMES",
    "DURATION_BUCKETS",
    "BootPhase",
    "BootPhaseTracker",
    "HostChange",
    "HostObserver",
    "Metrics",
    "MetricsResource",
    "ObservedHostStore",
    "PhaseHistogram",
    "boot_steps",
    "instrument_site",
    "leases_by_pool",
    "log_host_change",
    "mac_text",
]
