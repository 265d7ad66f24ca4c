"""build_http_services and ``pxestack http``: config in, a listening site out."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import Resource

from pxestack.cli import build_parser
from pxestack.cli.http import config_from_args, http_command
from pxestack.config import ConfigError, load_config
from pxestack.errors import ApiMisuse
from pxestack.http.site import AssetSite
from pxestack.service import Extensions, build_service
from pxestack.service.http import LISTEN_BACKLOG, HttpService, build_http_services


def config_for(tmp_path: Path, **http: object) -> object:
    return load_config({"http": {"listen": "127.0.0.1:8081", "assets_root": str(tmp_path),
                                 **http}}, base_dir=tmp_path)


def test_builds_one_service_with_the_configured_limits(tmp_path: Path) -> None:
    config = config_for(tmp_path, max_connections=7, max_connections_per_client=3,
                        idle_timeout=9, stall_timeout=4, max_header_bytes=2048,
                        cache_max_age=60, sendfile=False)
    services = build_http_services(config, Extensions(), reactor=MemoryReactorClock())  # type: ignore[arg-type]
    assert len(services) == 1
    http_service = services[0]
    assert isinstance(http_service, HttpService)
    site = http_service.site
    assert isinstance(site, AssetSite)
    assert (site.limits.max_connections, site.limits.max_connections_per_client) == (7, 3)
    assert (site.limits.idle_timeout, site.limits.stall_timeout) == (9.0, 4.0)
    assert site.limits.max_header_bytes == 2048
    assets = site.resource.assets
    assert assets.use_sendfile is False and assets.cache_control == b"public, max-age=60"
    assert assets.root == tmp_path


def test_binds_in_privileged_start_and_unbinds_on_stop(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    [http_service] = build_http_services(config_for(tmp_path), Extensions(), reactor=reactor)  # type: ignore[arg-type]
    http_service.privilegedStartService()
    assert len(reactor.tcpServers) == 1
    port, factory, backlog, interface = reactor.tcpServers[0]
    assert (port, backlog, interface) == (8081, LISTEN_BACKLOG, "127.0.0.1")
    assert factory is http_service.site
    http_service.startService()  # must not bind a second time
    assert len(reactor.tcpServers) == 1
    http_service.stopService()
    assert http_service.port is None


def test_extension_children_are_mounted(tmp_path: Path) -> None:
    child = Resource()
    ext = Extensions(http_children={b"admin": child})
    [http_service] = build_http_services(config_for(tmp_path), ext, reactor=MemoryReactorClock())  # type: ignore[arg-type]
    assert http_service.site.resource.children[b"admin"] is child


def test_build_service_includes_http(tmp_path: Path) -> None:
    root = build_service(config_for(tmp_path), reactor=MemoryReactorClock())  # type: ignore[arg-type]
    assert isinstance(root.getServiceNamed("http"), HttpService)


def test_requires_an_http_section(tmp_path: Path) -> None:
    with pytest.raises(ApiMisuse):
        build_http_services(load_config({}, base_dir=tmp_path), Extensions())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("stall_timeout", 0, "http.stall_timeout: 0 is below the minimum 1.0"),
        ("max_header_bytes", 10, "http.max_header_bytes: 10 is below the minimum 1024"),
        ("cache_max_age", -1, "http.cache_max_age: -1 is below the minimum 0"),
        ("sendfile", "yes", "http.sendfile: 'yes' is not true or false"),
    ],
)
def test_new_keys_are_validated(tmp_path: Path, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_for(tmp_path, **{key: value})
    assert message in [str(problem) for problem in caught.value.problems]


def test_cli_quick_mode_builds_the_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["http", "--root", str(tmp_path), "--listen", "127.0.0.1:9000",
         "--max-connections-per-client", "4", "--no-sendfile"]
    )
    config = config_from_args(args)
    assert config.http is not None
    assert config.http.listen == ("127.0.0.1", 9000)
    assert config.http.assets_root == tmp_path
    assert config.http.max_connections_per_client == 4
    assert config.http.sendfile is False
    assert config.dhcp is None and config.tftp is None


def test_cli_rejects_a_bad_listen_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["http", "--root", str(tmp_path), "--listen", "nope:x"])
    assert http_command(args) == 2
    assert "http.listen" in capsys.readouterr().err


def test_cli_rejects_a_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["http", "--root", str(tmp_path / "missing")])
    assert http_command(args) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_descriptor_budget_raises_the_soft_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    from pxestack.service import http as http_service_module

    limits = {"soft": 1024, "hard": 4096}
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limits["soft"], limits["hard"]))

    def setrlimit(which: int, value: tuple[int, int]) -> None:
        limits["soft"], limits["hard"] = value

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert http_service_module.ensure_descriptor_budget(1024) == 2304
    assert limits == {"soft": 2304, "hard": 4096}
    # never above the hard limit
    assert http_service_module.ensure_descriptor_budget(5000) == 4096


def test_listening_line_waits_for_the_reactor(tmp_path: Path) -> None:
    from twisted.logger import LogLevel, globalLogPublisher

    reactor = MemoryReactorClock()
    [http_service] = build_http_services(config_for(tmp_path), Extensions(), reactor=reactor)  # type: ignore[arg-type]
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        http_service.startService()
        assert not [e for e in events if "listening" in str(e.get("log_format"))]
        for hook, args, kwargs in reactor.whenRunningHooks:
            hook(*args, **kwargs)
    finally:
        globalLogPublisher.removeObserver(events.append)
    announced = [e for e in events if "http listening on" in str(e.get("log_format"))]
    assert len(announced) == 1 and announced[0]["log_level"] == LogLevel.info
