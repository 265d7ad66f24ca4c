"""The ``http:`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pxestack.config._reader import Section
from pxestack.config.checks import check_token


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``http.tls``: the server certificate and key (PEM files, re-read on SIGHUP)."""

    #: The certificate, optionally followed by its intermediate CA certificates.
    cert_file: Path
    #: The private key; not readable by group or others.
    key_file: Path


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Settings of the HTTP service (boot scripts, assets, API)."""

    enabled: bool = True
    listen: tuple[str, int] = ("0.0.0.0", 8080)
    #: The base URL machines use to reach this service (put in DHCP replies and scripts).
    public_url: str | None = None
    assets_root: Path | None = None
    max_connections: int = 1024
    max_connections_per_client: int = 16
    idle_timeout: float = 60.0
    #: Seconds a client may accept no body byte before its transfer is dropped.
    stall_timeout: float = 30.0
    #: Bytes of request line plus headers accepted per request.
    max_header_bytes: int = 16384
    #: Seconds a client has to send one whole request head (then 408 and a close).
    header_timeout: float = 10.0
    #: Fraction of ``max_connections`` that connections still sending a head may hold.
    pending_head_share: float = 0.5
    #: Connections beyond ``max_connections`` kept for ``/admin``, ``/metrics``, ``/healthz``.
    reserved_connections: int = 16
    #: ``Cache-Control`` of assets: 0 = ``no-cache`` (revalidate by ETag), N = ``max-age=N``.
    cache_max_age: int = 0
    #: Use ``os.sendfile`` for asset bodies where possible (false forces plain reads).
    sendfile: bool = True
    #: Bearer token that ``GET /metrics`` requires (empty: the page is open).
    metrics_token: str = ""
    #: A file holding that token (read at start-up; the alternative to ``metrics_token``).
    metrics_token_file: Path | None = None
    #: Serve HTTPS with this certificate (on ``admin_listen`` when it is set, else on ``listen``).
    tls: TlsConfig | None = None
    #: A second listener for the admin API; ``/admin`` is then refused on ``listen``.
    admin_listen: tuple[str, int] | None = None


def read_tls(section: Section) -> TlsConfig | None:
    """Validate ``http.tls: {cert_file, key_file}`` (absent: no TLS)."""
    cert_file = section.path("cert_file")
    key_file = section.path("key_file")
    section.finish()
    if cert_file is None or key_file is None:
        return None
    return TlsConfig(cert_file=cert_file, key_file=key_file)


def read_http(section: Section) -> HttpConfig:
    """Validate the ``http:`` mapping."""
    public_url = section.str("public_url", None)
    if public_url is not None and not public_url.startswith(("http://", "https://")):
        section.problem("public_url", f"{public_url!r} is not an http:// or https:// URL")
    metrics_token = section.str("metrics_token", "")
    check_token(section, "metrics_token", metrics_token)
    metrics_token_file = section.path("metrics_token_file", None)
    if metrics_token and metrics_token_file is not None:
        section.problem("metrics_token_file", "give either metrics_token or metrics_token_file, "
                        "not both")
    pending_head_share = section.float("pending_head_share", 0.5, minimum=0.01)
    if isinstance(pending_head_share, float) and pending_head_share > 1.0:
        section.problem("pending_head_share",
                        f"{pending_head_share} is a fraction of max_connections: at most 1")
    tls = read_tls(section.mapping("tls")) if section.raw("tls") is not None else None
    listen = section.listen("listen", ("0.0.0.0", 8080))
    admin_listen = section.listen("admin_listen", None)
    if admin_listen is not None and admin_listen == listen:
        section.problem("admin_listen", "must differ from http.listen")
    config = HttpConfig(
        enabled=section.bool("enabled", True),
        listen=listen,
        public_url=public_url.rstrip("/") if public_url else None,
        assets_root=section.path("assets_root", None),
        max_connections=section.int("max_connections", 1024, minimum=1),
        max_connections_per_client=section.int("max_connections_per_client", 16, minimum=1),
        idle_timeout=section.float("idle_timeout", 60.0, minimum=1.0),
        stall_timeout=section.float("stall_timeout", 30.0, minimum=1.0),
        max_header_bytes=section.int("max_header_bytes", 16384, minimum=1024, maximum=1048576),
        header_timeout=section.float("header_timeout", 10.0, minimum=1.0),
        pending_head_share=pending_head_share,
        reserved_connections=section.int("reserved_connections", 16, minimum=0),
        cache_max_age=section.int("cache_max_age", 0, minimum=0),
        sendfile=section.bool("sendfile", True),
        metrics_token=metrics_token,
        metrics_token_file=metrics_token_file,
        tls=tls,
        admin_listen=admin_listen,
    )
    section.finish()
    return config
