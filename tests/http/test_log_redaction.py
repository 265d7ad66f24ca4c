"""Tokens never reach the access log: ``?token=`` values are written as ``REDACTED``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from pxestack.http.site import build_site, redact_uri

SECRET = "c0ffee" * 8


@pytest.mark.parametrize(
    ("uri", "logged"),
    [
        (b"/admin/host/sn-1/set_installed", "/admin/host/sn-1/set_installed"),
        (f"/admin/host/sn-1/set_installed?token={SECRET}".encode(),
         "/admin/host/sn-1/set_installed?token=REDACTED"),
        (f"/x?serial=sn-1&token={SECRET}&mac=52-54".encode(),
         "/x?serial=sn-1&token=REDACTED&mac=52-54"),
        (f"/x?TOKEN={SECRET}&access_token={SECRET}&host_token={SECRET}".encode(),
         "/x?TOKEN=REDACTED&access_token=REDACTED&host_token=REDACTED"),
        (f"/x?%74oken={SECRET}".encode(), "/x?%74oken=REDACTED"),
        (b"/x?token", "/x?token"),
    ],
)
def test_redact_uri(uri: bytes, logged: str) -> None:
    assert redact_uri(uri) == logged


def test_the_access_log_line_carries_no_token(tmp_path: Any) -> None:
    site = build_site(tmp_path)
    request = SimpleNamespace(
        getClientAddress=lambda: SimpleNamespace(host="192.0.2.7"),
        method=b"PUT",
        uri=f"/admin/host/sn-1/set_installed?token={SECRET}".encode(),
        code=202,
        sentLength=0,
        requestHeaders={b"authorization": [f"Bearer {SECRET}".encode()]},
    )
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        site.log(request)  # type: ignore[arg-type]
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.debug]
    assert lines == ["192.0.2.7 PUT /admin/host/sn-1/set_installed?token=REDACTED 202 0"]
    assert all(SECRET not in repr(e) for e in events)
