"""The extension API's contract: schemas, set-up and start failures, stop order, discovery."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from twisted.application import service
from twisted.internet import task
from twisted.web.resource import Resource

from pxestack.bootevents import BootEvent
from pxestack.config import load_config
from pxestack.errors import ConfigError
from pxestack.extensions import (
    ConfigSection,
    Extension,
    ExtensionContext,
    attach_extensions,
    check_extensions,
    describe,
    setup_extensions,
)
from pxestack.service import Extensions, build_service

PXESTACK = [sys.executable, "-m", "pxestack"]


class Recorder(service.Service):
    """A service that notes when it starts and stops in a shared list."""

    def __init__(self, name: str, journal: list[str], fail: bool = False) -> None:
        self.label = name
        self.journal = journal
        self.fail = fail

    def startService(self) -> None:
        if self.fail:
            raise RuntimeError("port 9 is taken")
        super().startService()
        self.journal.append(f"start {self.label}")

    def stopService(self) -> None:
        super().stopService()
        self.journal.append(f"stop {self.label}")


JOURNAL: list[str] = []


class Echo(Extension):
    description = "test extension"

    def read_config(self, section: ConfigSection) -> dict[str, Any]:
        return {
            "port": section.int("port", 1, minimum=1, maximum=65535),
            "name": section.str("name", "echo"),
            "fail": section.bool("fail", False),
        }

    def setup(self, context: ExtensionContext, config: dict[str, Any]) -> None:
        context.add_service(Recorder(config["name"], JOURNAL, fail=config["fail"]))
        context.add_http_child(config["name"].encode(), Resource())
        context.subscribe(lambda event: JOURNAL.append(f"event {config['name']} {event.phase}"))
        assert context.state_dir.is_dir()
        assert context.state_dir.name == context.name


class Broken(Extension):
    def setup(self, context: ExtensionContext, config: Any) -> None:
        raise RuntimeError("no licence key")


AVAILABLE = {"echo": Echo, "echo2": Echo, "broken": Broken}


def config_with(tmp_path: Path, extensions: list[dict[str, Any]]) -> Any:
    return load_config({"state_dir": str(tmp_path / "state"), "extensions": extensions})


def test_schema_errors_are_named_by_key_path(tmp_path: Path) -> None:
    config = config_with(tmp_path, [
        {"use": "echo", "config": {"port": 70000, "colour": "red"}},
        {"use": "nothing-here"},
    ])
    problems = [str(p) for p in check_extensions(config, available=AVAILABLE)]
    assert "extensions[0].config.port: 70000 is above the maximum 65535" in problems
    assert "extensions[0].config.colour: unknown key" in problems
    assert any(p.startswith("extensions[1].use: no installed extension is named "
                            "'nothing-here'") for p in problems)
    with pytest.raises(ConfigError) as info:
        setup_extensions(config, Extensions(), reactor=task.Clock(), available=AVAILABLE)
    assert len(info.value.problems) == 3


def test_the_entry_itself_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"extensions": [{"use": "a"}, {"use": "a"}, {"config": {}}, "x"]})
    text = [str(p) for p in info.value.problems]
    assert "extensions[1].use: 'a' is enabled twice" in text
    assert "extensions[2].use: is required" in text
    assert "extensions[3]: expected a mapping, got 'x'" in text


def test_setup_failure_is_a_config_error(tmp_path: Path) -> None:
    config = config_with(tmp_path, [{"use": "broken"}])
    with pytest.raises(ConfigError) as info:
        setup_extensions(config, Extensions(), reactor=task.Clock(), available=AVAILABLE)
    assert [str(p) for p in info.value.problems] == [
        "extensions[0]: broken: cannot be set up: RuntimeError: no licence key"]


def test_reserved_http_path_is_refused(tmp_path: Path) -> None:
    config = config_with(tmp_path, [{"use": "echo", "config": {"name": "admin"}}])
    with pytest.raises(ConfigError) as info:
        setup_extensions(config, Extensions(), reactor=task.Clock(), available=AVAILABLE)
    assert "/admin/ is not free" in str(info.value.problems[0])


def test_start_failure_names_the_extension(tmp_path: Path) -> None:
    config = config_with(tmp_path, [{"use": "echo"}, {"use": "echo2", "config": {
        "name": "two", "fail": True}}])
    ext = Extensions()
    loaded = setup_extensions(config, ext, reactor=task.Clock(), available=AVAILABLE)
    root = build_service(config, ext, reactor=task.Clock())
    attach_extensions(root, loaded)
    root.privilegedStartService()
    with pytest.raises(ConfigError) as info:
        root.startService()
    assert str(info.value.problems[0]) == (
        "extensions[1]: echo2: cannot start: RuntimeError: port 9 is taken")


def test_start_and_stop_order_and_subscribers(tmp_path: Path) -> None:
    JOURNAL.clear()
    config = config_with(tmp_path, [{"use": "echo", "config": {"name": "one"}},
                                    {"use": "echo2", "config": {"name": "two"}}])
    ext = Extensions()
    own = Recorder("own", JOURNAL)
    ext.services.append(own)
    loaded = setup_extensions(config, ext, reactor=task.Clock(), available=AVAILABLE)
    root = build_service(config, ext, reactor=task.Clock())
    assert set(ext.http_children) >= {b"one", b"two", b"metrics"}
    attach_extensions(root, loaded)
    root.startService()
    ext.events.record("enrolled", 1.0, serial="s1")
    root.stopService()
    ext.events.record("installed", 2.0, serial="s1")
    assert JOURNAL == [
        "start own", "start one", "start two",
        "event one enrolled", "event two enrolled",
        "stop two", "stop one", "stop own",
    ]


def test_subscriber_exceptions_are_logged_not_raised(tmp_path: Path) -> None:
    seen: list[BootEvent] = []

    class Bad(Extension):
        def setup(self, context: ExtensionContext, config: Any) -> None:
            context.subscribe(lambda event: 1 / 0)
            context.subscribe(seen.append)

    config = config_with(tmp_path, [{"use": "bad"}])
    ext = Extensions()
    loaded = setup_extensions(config, ext, reactor=task.Clock(), available={"bad": Bad})
    root = build_service(config, ext, reactor=task.Clock())
    attach_extensions(root, loaded)
    root.startService()
    ext.events.record("enrolled", 1.0, serial="s1")
    ext.events.record("installed", 2.0, serial="s1")
    assert [e.phase for e in seen] == ["enrolled", "installed"]
    root.stopService()


def test_machine_of_uses_the_recorder_link(tmp_path: Path) -> None:
    contexts: list[ExtensionContext] = []

    class Look(Extension):
        def setup(self, context: ExtensionContext, config: Any) -> None:
            contexts.append(context)

    config = config_with(tmp_path, [{"use": "look"}])
    ext = Extensions()
    setup_extensions(config, ext, reactor=task.Clock(), available={"look": Look})
    ext.events.record("script", 1.0, serial="abc", mac="52:54:00:00:00:01", ip="10.0.0.5")
    found = contexts[0].machine_of("10.0.0.5")
    assert found is not None and found.serial == "abc"
    assert contexts[0].machine_of("10.0.0.6") is None


# -- through the entry points, as a third party would ----------------------------------


def fake_distribution(root: Path, name: str, module: str, code: str) -> None:
    """A minimal installed distribution on a PYTHONPATH directory: one module and its
    ``pxestack.extensions`` entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[pxestack.extensions]\n{name} = {module}:Plugin\n")


def run_pxestack(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    return subprocess.run([*PXESTACK, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "site").mkdir()
    fake_distribution(tmp_path / "site", "hello", "hello_ext", """
        from pxestack.extensions import Extension

        class Plugin(Extension):
            description = "says hello"

            def read_config(self, section):
                return section.int("port", 1, minimum=1, maximum=65535)
    """)
    fake_distribution(tmp_path / "site", "busy", "busy_ext", """
        import socket
        from twisted.application import service
        from pxestack.extensions import Extension

        class Taken(service.Service):
            def startService(self):
                raise OSError(98, "Address already in use")

        class Plugin(Extension):
            description = "cannot start"

            def setup(self, context, config):
                context.add_service(Taken())
    """)
    return tmp_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, extensions: str) -> Path:
    path = tmp_path / "pxestack.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n"
                    f"http:\n  listen: 127.0.0.1:{free_port()}\n"
                    f"extensions:\n{textwrap.indent(extensions, '  ')}")
    return path


def test_list_shows_installed_and_enabled(site: Path) -> None:
    config = write_config(site, "- use: hello\n")
    result = run_pxestack(site, "extensions", "list", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "enabled (extensions[0])" in lines["hello"]
    assert "says hello" in lines["hello"]
    assert "hello_ext 1.0" in lines["hello"]
    assert "installed" in lines["busy"]


def test_serve_schema_error_exits_2_with_the_key_path(site: Path) -> None:
    config = write_config(site, "- use: hello\n  config: {port: 0}\n")
    for args in (["serve", "--check", "--config", str(config)],
                 ["serve", "--config", str(config)]):
        result = run_pxestack(site, *args)
        assert result.returncode == 2, result.stderr
        assert "extensions[0].config.port: 0 is below the minimum 1" in result.stderr
        assert "Traceback" not in result.stderr


def test_serve_start_failure_exits_2_naming_the_extension(site: Path) -> None:
    config = write_config(site, "- use: hello\n- use: busy\n")
    result = run_pxestack(site, "serve", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert ("extensions[1]: busy: cannot start: OSError: [Errno 98] Address already in use"
            in result.stderr)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("runner", ["twistd", "twist"])
def test_twistd_reports_a_schema_error_as_usage_error(site: Path, runner: str) -> None:
    config = write_config(site, "- use: hello\n  config: {port: x}\n")
    env = dict(os.environ, PYTHONPATH=str(site / "site"))
    result = subprocess.run(
        [str(Path(sys.executable).parent / runner), "pxestack", "--config", str(config)],
        cwd=site, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "extensions[0].config.port: 'x' is not an integer" in (result.stdout + result.stderr)
    assert "Traceback" not in result.stdout + result.stderr


def test_describe_without_config_lists_installed_only() -> None:
    rows = describe(None)
    assert all(not row["enabled"] for row in rows)


# -- the example, and the shipped extensions use only the public API ------------------------

ROOT = Path(__file__).resolve().parents[2]
#: What an extension may import from pxestack: the API and the recorder's value types.
PUBLIC = {"pxestack.extensions", "pxestack.bootevents"}


def test_minimal_example_works_through_an_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "minimal_extension.py").write_text(
        (ROOT / "examples" / "minimal_extension.py").read_text())
    info = site / "minimal_extension-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: minimal-extension\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[pxestack.extensions]\nboot-counts = minimal_extension:BootCounts\n")
    port = free_port()
    config = tmp_path / "pxestack.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nhttp:\n  listen: 127.0.0.1:{port}\n"
                      "extensions:\n  - use: boot-counts\n    config: {greeting: 5}\n")
    result = run_pxestack(tmp_path, "serve", "--check", "--config", str(config))
    assert result.returncode == 2
    assert "extensions[0].config.greeting: 5 is not a string" in result.stderr
    config.write_text(config.read_text().replace("greeting: 5", "greeting: hi"))
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.Popen([*PXESTACK, "serve", "--config", str(config)], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import json
        import time
        import urllib.request

        end = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/boot-counts/",
                                            timeout=2) as answer:
                    assert json.loads(answer.read()) == {"greeting": "hi", "steps": {}}
                    break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("path", sorted([
    *(ROOT / "pxestack_syslog").glob("*.py"), *(ROOT / "pxestack_webhooks").glob("*.py"),
    ROOT / "examples" / "minimal_extension.py"]), ids=lambda p: str(p.relative_to(ROOT)))
def test_extensions_import_only_the_public_api(path: Path) -> None:
    import ast

    used: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            used.add(node.module)
        elif isinstance(node, ast.Import):
            used.update(alias.name for alias in node.names)
    inner = {m for m in used if m == "pxestack" or m.startswith("pxestack.")}
    assert inner <= PUBLIC, f"{path.name} imports {sorted(inner - PUBLIC)}"
