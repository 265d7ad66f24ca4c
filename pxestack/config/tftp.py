"""The ``tftp:`` section of the configuration (documented in ``docs/tftp.md``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pxestack.config._reader import Section

#: RFC 2348 §2: "Valid values range between 8 and 65464 octets, inclusive."
BLKSIZE_MIN = 8
BLKSIZE_MAX = 65464
#: Most worker processes ``tftp.workers`` may ask for.
MAX_WORKERS = 64


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), the default of ``workers``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class TftpConfig:
    """Settings of the TFTP server."""

    enabled: bool = True
    listen: tuple[str, int] = ("0.0.0.0", 69)
    root: Path = Path("tftproot")
    #: Largest blksize granted (1468 keeps a block in one Ethernet frame; see
    #: docs/reference/pxe-wire.md).
    max_blksize: int = 1468
    #: Largest RFC 7440 windowsize granted.
    max_windowsize: int = 16
    #: Grant blksize at all (off for ROMs that ask for it and then misbehave).
    blksize_option: bool = True
    #: Grant windowsize at all.
    windowsize_option: bool = True
    #: Every transfer shares the listening port (firewalls/NAT that only pass port 69).
    single_port: bool = False
    per_client_limit: int = 64
    max_transfers: int = 512
    #: Consecutive retransmission time-outs before a transfer is abandoned.
    retries: int = 8
    #: Overall seconds one transfer may take.
    deadline: float = 300.0
    #: Retransmission time-out before a round trip was measured, and its floor and ceiling.
    initial_rto: float = 1.0
    min_rto: float = 0.05
    max_rto: float = 4.0
    #: Fold requested names to lower case (Windows-built clients, case-sensitive roots).
    lowercase: bool = False
    #: Where WRQ uploads are written; uploads are refused (ERROR 2) when unset.
    upload_dir: Path | None = None
    #: Processes serving transfers (``pxestack.service.tftp_workers``); 1 serves in the
    #: main process's reactor.  A configuration file defaults to the usable CPUs; a
    #: ``TftpConfig`` built in Python keeps 1.
    workers: int = 1


def read_tftp(section: Section) -> TftpConfig:
    """Validate the ``tftp:`` mapping."""
    initial_rto = section.float("initial_rto", 1.0, minimum=0.001)
    min_rto = section.float("min_rto", 0.05, minimum=0.001)
    max_rto = section.float("max_rto", 4.0, minimum=0.001)
    if not min_rto <= initial_rto <= max_rto:
        section.problem("initial_rto", "must lie between min_rto and max_rto")
    config = TftpConfig(
        enabled=section.bool("enabled", True),
        listen=section.listen("listen", ("0.0.0.0", 69)),
        root=section.path("root", "tftproot"),
        max_blksize=section.int("max_blksize", 1468, minimum=BLKSIZE_MIN, maximum=BLKSIZE_MAX),
        max_windowsize=section.int("max_windowsize", 16, minimum=1, maximum=65535),
        blksize_option=section.bool("blksize_option", True),
        windowsize_option=section.bool("windowsize_option", True),
        single_port=section.bool("single_port", False),
        per_client_limit=section.int("per_client_limit", 64, minimum=1),
        max_transfers=section.int("max_transfers", 512, minimum=1),
        retries=section.int("retries", 8, minimum=1, maximum=100),
        deadline=section.float("deadline", 300.0, minimum=1.0),
        initial_rto=initial_rto,
        min_rto=min_rto,
        max_rto=max_rto,
        lowercase=section.bool("lowercase", False),
        upload_dir=section.path("upload_dir", None),
        workers=section.int("workers", usable_cpus(), minimum=1, maximum=MAX_WORKERS),
    )
    section.finish()
    return config
