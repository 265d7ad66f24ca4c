"""The process's open-file limit, raised for the services that hold a descriptor per client."""

from __future__ import annotations

import resource

from twisted.logger import Logger

log = Logger()

#: Descriptors kept aside for listening sockets, logs, the other protocol servers in the
#: same process and the directory walk of ``open_under_root``.
DESCRIPTOR_RESERVE = 256


def raise_open_file_limit(needed: int, *, partial: bool = True) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` toward *needed*; returns the soft limit afterwards.

    systemd and most shells start services with a soft limit of 1024.  Like nginx's
    ``worker_rlimit_nofile``, the soft limit is raised, never above the hard one: with
    *partial* as far as the hard limit allows, without it only when *needed* fits (else
    it is left as it was).  ``resource.RLIM_INFINITY`` is returned as it is.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return int(soft)
    if hard != resource.RLIM_INFINITY and hard < needed and not partial:
        return int(soft)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warn("cannot raise the open-file limit to {target}: {error}",
                 target=target, error=str(exc))
        return int(soft)
    return target


__all__ = ["DESCRIPTOR_RESERVE", "raise_open_file_limit"]
