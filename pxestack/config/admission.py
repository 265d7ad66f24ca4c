"""``dhcp.admission``: how many new machines a boot storm may start at once."""

from __future__ import annotations

from dataclasses import dataclass

from pxestack.config._reader import Section

#: Defaults, also stated in docs/dhcp.md.
DEFAULT_MAX_STARTING = 64
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_MAX_LOOP_LAG = 1.0
DEFAULT_MAX_BACKLOG = 32
#: Seconds between two event-loop lag samples.
DEFAULT_LAG_INTERVAL = 0.1


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """Admission control of new PXE clients (``docs/dhcp.md``, "Boot storms")."""

    #: Hold back new machines when the later stages are saturated (false: answer all).
    enabled: bool = True
    #: Machines between their first OFFER and their iPXE DHCP at once, at most.
    max_starting: int = DEFAULT_MAX_STARTING
    #: Seconds after which an admitted machine that never reached iPXE stops counting.
    start_timeout: float = DEFAULT_START_TIMEOUT
    #: Smoothed event-loop lag (seconds) at which new machines wait; 0 ignores the lag.
    max_loop_lag: float = DEFAULT_MAX_LOOP_LAG
    #: Seconds between two lag samples.
    lag_interval: float = DEFAULT_LAG_INTERVAL
    #: Provisioning jobs accepted and not finished at which new machines wait; 0: ignored.
    max_backlog: int = DEFAULT_MAX_BACKLOG


def read_admission(section: Section) -> AdmissionConfig:
    """Validate ``dhcp.admission``; every problem names its field."""
    config = AdmissionConfig(
        enabled=section.bool("enabled", True),
        max_starting=section.int("max_starting", DEFAULT_MAX_STARTING, minimum=1,
                                 maximum=1_000_000),
        start_timeout=section.float("start_timeout", DEFAULT_START_TIMEOUT, minimum=1.0),
        max_loop_lag=section.float("max_loop_lag", DEFAULT_MAX_LOOP_LAG, minimum=0.0),
        lag_interval=section.float("lag_interval", DEFAULT_LAG_INTERVAL, minimum=0.01),
        max_backlog=section.int("max_backlog", DEFAULT_MAX_BACKLOG, minimum=0,
                                maximum=1_000_000),
    )
    if config.max_loop_lag and config.max_loop_lag < config.lag_interval:
        section.problem(
            "max_loop_lag",
            f"{config.max_loop_lag} is below lag_interval ({config.lag_interval}): a lag "
            "shorter than the sampling interval cannot be measured (or set 0 to ignore lag)",
        )
    section.finish()
    return config


__all__ = ["AdmissionConfig", "read_admission"]
