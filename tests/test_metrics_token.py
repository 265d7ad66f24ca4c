"""``http.metrics_token`` / ``http.metrics_token_file``: /metrics behind a bearer token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pxestack.config import ConfigError, load_config
from pxestack.metrics import MetricsResource
from pxestack.service import build_service, metrics_token

TOKEN = "metrics-s3cret-0123456789abcdefghij"


class FakeRequest:
    """Just what MetricsResource.render_GET reads and writes."""

    def __init__(self, authorization: bytes | None) -> None:
        self.headers = {b"authorization": authorization} if authorization else {}
        self.code = 200
        self.response_headers: dict[bytes, bytes] = {}

    def getHeader(self, name: bytes) -> bytes | None:
        return self.headers.get(name)

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.response_headers[name] = value


def metrics_resource(config: Any) -> MetricsResource:
    root = build_service(config)
    resource = None
    for child in root:
        site = getattr(child, "site", None)
        if site is not None:
            resource = site.resource.children[b"metrics"]
    assert isinstance(resource, MetricsResource)
    return resource


def test_open_by_default(tmp_path: Path) -> None:
    config = load_config({"http": {"listen": "127.0.0.1:18080"}}, base_dir=tmp_path)
    assert metrics_token(config) is None
    resource = metrics_resource(config)
    request = FakeRequest(None)
    assert b"# TYPE" in resource.render_GET(request)
    assert request.code == 200


def test_inline_token_is_required(tmp_path: Path) -> None:
    config = load_config({"http": {"listen": "127.0.0.1:18080", "metrics_token": TOKEN}},
                         base_dir=tmp_path)
    resource = metrics_resource(config)
    for header in (None, b"Bearer wrong", TOKEN.encode()):
        request = FakeRequest(header)
        assert resource.render_GET(request) == b"metrics token required\n"
        assert request.code == 401
    request = FakeRequest(b"Bearer " + TOKEN.encode())
    assert b"# TYPE" in resource.render_GET(request)
    assert request.code == 200


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "metrics.token").write_text("from-a-file-0123456789abcdefghijk\n")
    (tmp_path / "metrics.token").chmod(0o600)
    config = load_config({"http": {"metrics_token_file": "metrics.token"}}, base_dir=tmp_path)
    assert metrics_token(config) == "from-a-file-0123456789abcdefghijk"


def test_token_and_token_file_together_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"http": {"metrics_token": "m" * 32, "metrics_token_file": "b"}},
                    base_dir=tmp_path)
    assert [str(problem.path) for problem in caught.value.problems] == [
        "http.metrics_token_file"
    ]


@pytest.mark.parametrize("content", [None, "  \n"])
def test_unreadable_or_empty_token_file_names_the_field(tmp_path: Path,
                                                       content: str | None) -> None:
    if content is not None:
        (tmp_path / "metrics.token").write_text(content)
    config = load_config({"http": {"metrics_token_file": "metrics.token"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError) as caught:
        metrics_token(config)
    assert "http.metrics_token_file" in str(caught.value)


def test_serve_reports_a_missing_token_file_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "pxestack.yaml"
    config.write_text("http:\n  listen: 127.0.0.1:18080\n  metrics_token_file: nope\n")
    result = subprocess.run(
        [sys.executable, "-m", "pxestack", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "http.metrics_token_file" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
