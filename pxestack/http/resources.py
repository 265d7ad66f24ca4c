"""Small generic ``twisted.web`` resources: a plain-text 404 and a health/status page."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from twisted.web import http
from twisted.web.resource import Resource

from pxestack.http.stats import AssetStats

_TEXT_PLAIN = b"text/plain; charset=utf-8"


class PlainNotFound(Resource):
    """A leaf that answers every request with a short ``text/plain`` 404.

    Twisted's own ``NoResource`` renders an HTML page; boot clients and scripts read plain
    text more easily, and an asset server has no reason to speak HTML.
    """

    isLeaf = True

    def render(self, request: http.Request) -> bytes:
        """Answer 404 Not Found."""
        request.setResponseCode(http.NOT_FOUND)
        request.setHeader(b"Content-Type", _TEXT_PLAIN)
        request.setHeader(b"Cache-Control", b"no-store")
        return b"not found\n"


class StatusResource(Resource):
    """``GET /healthz``: ``ok`` as text, or the asset counters as JSON with ``?format=json``.

    Load balancers and the system tests poll it to learn that the service is up; the JSON
    form shows the connection gate and transfer totals without a metrics stack.
    """

    isLeaf = True

    def __init__(self, stats: AssetStats | None = None) -> None:
        super().__init__()
        self.stats = stats

    def render_GET(self, request: http.Request) -> bytes:
        """Report liveness (and the counters, in JSON form)."""
        request.setHeader(b"Cache-Control", b"no-store")
        formats = request.args.get(b"format", [])
        if formats and formats[-1] == b"json":
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(self.as_dict(), sort_keys=True).encode("utf-8") + b"\n"
        request.setHeader(b"Content-Type", _TEXT_PLAIN)
        return b"ok\n"

    def render_HEAD(self, request: http.Request) -> bytes:
        """Same headers as GET; twisted.web drops the body."""
        return self.render_GET(request)

    def as_dict(self) -> dict[str, Any]:
        """The status document: ``{"status": "ok", "connections": ..., "totals": ...}``."""
        document: dict[str, Any] = {"status": "ok"}
        if self.stats is not None:
            document["connections"] = asdict(self.stats.connections)
            document["totals"] = asdict(self.stats.totals)
        return document


__all__ = ["PlainNotFound", "StatusResource"]
