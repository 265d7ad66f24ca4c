"""``GET /metrics``: the registry of a :class:`~pxestack.metrics.registry.Metrics` over HTTP."""

from __future__ import annotations

import hmac

from twisted.web.resource import Resource
from twisted.web.server import Request

from pxestack.metrics.registry import Metrics


def _set_header(request: Request, name: bytes, value: bytes) -> None:
    request.setHeader(name, value)


class MetricsResource(Resource):
    """``GET /metrics``: the registry in Prometheus text (or OpenMetrics) format.

    :param token: when set, scrapes must send ``Authorization: Bearer <token>`` (Prometheus'
        ``authorization`` scrape setting); otherwise the page is open, as usual for metrics
        (they hold counts, never secrets or host names).
    """

    isLeaf = True

    def __init__(self, metrics: Metrics, *, token: str | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web is untyped here
        self.metrics = metrics
        self.token = token

    def render_GET(self, request: Request) -> bytes:
        """The exposition body (HEAD is answered by twisted.web from this)."""
        if self.token is not None:
            header = request.getHeader(b"authorization") or b""
            expected = b"Bearer " + self.token.encode()
            if not hmac.compare_digest(header, expected):
                request.setResponseCode(401)
                _set_header(request, b"WWW-Authenticate", b'Bearer realm="pxestack-metrics"')
                _set_header(request, b"Content-Type", b"text/plain; charset=utf-8")
                return b"metrics token required\n"
        accept = request.getHeader(b"accept")
        body, content_type = self.metrics.render(accept.decode("latin-1") if accept else None)
        _set_header(request, b"Content-Type", content_type.encode("latin-1"))
        _set_header(request, b"Cache-Control", b"no-store")
        return body


__all__ = ["MetricsResource"]
