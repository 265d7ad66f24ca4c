"""The ``tftp:`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pxestack.config._reader import Section

#: RFC 2348 §2: "Valid values range between 8 and 65464 octets, inclusive."
BLKSIZE_MIN = 8
BLKSIZE_MAX = 65464


@dataclass(frozen=True, slots=True)
class TftpConfig:
    """Settings of the TFTP server."""

    enabled: bool = True
    listen: tuple[str, int] = ("0.0.0.0", 69)
    root: Path = Path("tftproot")
    max_blksize: int = 1468
    max_windowsize: int = 16
    single_port: bool = False
    per_client_limit: int = 8
    max_transfers: int = 512
    retries: int = 6
    deadline: float = 120.0
    upload_dir: Path | None = None


def read_tftp(section: Section) -> TftpConfig:
    """Validate the ``tftp:`` mapping."""
    config = TftpConfig(
        enabled=section.bool("enabled", True),
        listen=section.listen("listen", ("0.0.0.0", 69)),
        root=section.path("root", "tftproot"),
        max_blksize=section.int("max_blksize", 1468, minimum=BLKSIZE_MIN, maximum=BLKSIZE_MAX),
        max_windowsize=section.int("max_windowsize", 16, minimum=1, maximum=65535),
        single_port=section.bool("single_port", False),
        per_client_limit=section.int("per_client_limit", 8, minimum=1),
        max_transfers=section.int("max_transfers", 512, minimum=1),
        retries=section.int("retries", 6, minimum=1, maximum=100),
        deadline=section.float("deadline", 120.0, minimum=1.0),
        upload_dir=section.path("upload_dir", None),
    )
    section.finish()
    return config
