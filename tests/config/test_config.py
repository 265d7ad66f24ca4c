"""The configuration loader: every mistake reported at once, each with its key path."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pxestack.config import (
    ConfigError,
    load_config,
    load_config_file,
    load_quickstart,
    merge_overrides,
    quickstart_text,
)
from pxestack.config._reader import parse_listen

ROOT = Path(__file__).resolve().parents[2]


def problems_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(data, base_dir=Path("/srv"))
    return [str(p) for p in info.value.problems]


def test_quickstart_is_valid_and_matches_the_example() -> None:
    config = load_quickstart(base_dir=Path("/tmp/x"))
    assert config.dhcp is not None and config.tftp is not None and config.http is not None
    assert config.state_dir == Path("/tmp/x/pxestack-state")
    assert config.dhcp.listen == ("127.0.0.1", 6767)
    # the embedded default and examples/quickstart.yaml are the same file
    assert (ROOT / "examples" / "quickstart.yaml").read_text() == quickstart_text()


def test_quickstart_needs_no_privileged_port() -> None:
    config = load_quickstart()
    ports = [config.dhcp.listen[1], config.tftp.listen[1], config.http.listen[1]]  # type: ignore[union-attr]
    assert all(port >= 1024 for port in ports)


def test_empty_file_is_a_valid_config_with_nothing_enabled() -> None:
    config = load_config(None, base_dir=Path("/srv"))
    assert (config.dhcp, config.tftp, config.http, config.provision) == (None, None, None, None)
    assert config.state_dir == Path("/srv/pxestack-state")


def test_three_mistakes_are_reported_together_with_their_paths() -> None:
    found = problems_of(
        {
            "dhcp": {
                "pools": [{"subnet": "10.0.0.0/24", "start": "10.0.0.300", "end": "10.0.0.9"}],
            },
            "tftp": {"max_blksize": 4},
            "colour": "red",
        }
    )
    assert found == [
        "dhcp.pools[0].start: '10.0.0.300' is not an IPv4 address",
        "tftp.max_blksize: 4 is below the minimum 8",
        "colour: unknown key",
    ]


def test_unknown_nested_keys_are_errors() -> None:
    assert problems_of({"http": {"listne": "0.0.0.0:80"}}) == ["http.listne: unknown key"]


def test_type_errors_name_the_expected_type() -> None:
    found = problems_of(
        {
            "log_format": "xml",
            "tftp": {"single_port": "yes", "listen": "localhost:69"},
            "http": {"public_url": "ftp://x"},
        }
    )
    assert "log_format: 'xml' is not one of text, json" in found
    assert "tftp.single_port: 'yes' is not true or false" in found
    assert "tftp.listen: 'localhost:69' 'localhost' is not an IPv4 address" in found
    assert "http.public_url: 'ftp://x' is not an http:// or https:// URL" in found


def test_pool_addresses_must_lie_in_the_subnet_and_in_order() -> None:
    found = problems_of(
        {
            "dhcp": {
                "pools": [
                    {"subnet": "198.18.0.0/24", "start": "198.18.0.50", "end": "198.18.1.9"},
                    {"subnet": "198.18.2.0/24", "start": "198.18.2.90", "end": "198.18.2.10"},
                ]
            }
        }
    )
    assert found == [
        "dhcp.pools[0].end: '198.18.1.9' is not inside subnet 198.18.0.0/24",
        "dhcp.pools[1].end: '198.18.2.10' comes before start '198.18.2.90'",
    ]


def test_missing_required_keys() -> None:
    found = problems_of({"dhcp": {"pools": [{"subnet": "198.18.0.0/24"}]}})
    assert found == ["dhcp.pools[0].start: is required", "dhcp.pools[0].end: is required"]


def test_a_section_that_is_not_a_mapping() -> None:
    assert problems_of({"tftp": ["root"]}) == ["tftp: expected a mapping, got ['root']"]
    assert problems_of(["x"]) == ["expected a mapping, got ['x']"]


def test_disabled_sections_are_none() -> None:
    config = load_config({"tftp": {"enabled": False}, "http": {}}, base_dir=Path("/srv"))
    assert config.tftp is None and config.http is not None


def test_relative_paths_are_taken_from_the_file_directory(tmp_path: Path) -> None:
    path = tmp_path / "pxe.yaml"
    path.write_text("state_dir: state\ntftp:\n  root: boot\n")
    config = load_config_file(path)
    assert config.state_dir == tmp_path / "state"
    assert config.tftp is not None and config.tftp.root == tmp_path / "boot"
    assert config.source == str(path)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tftp:\n  root: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert f"{path}:" in str(info.value) and "invalid YAML" in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.yaml")


def test_overrides_merge_into_nested_mappings() -> None:
    merged = merge_overrides({"tftp": {"root": "a"}}, {"tftp.listen": "1.2.3.4:69", "x.y": 1})
    assert merged == {"tftp": {"root": "a", "listen": "1.2.3.4:69"}, "x": {"y": 1}}


def test_every_example_config_is_valid() -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "pxestack_example" in data:
            continue  # not a pxestack config (e.g. a mayu config to migrate)
        if path.name.startswith("mayu"):
            continue
        load_config(data, base_dir=path.parent, source=str(path))


@given(st.ip_addresses(v=4), st.integers(0, 65535))
def test_parse_listen_round_trip(address: IPv4Address, port: int) -> None:
    assert parse_listen(f"{address}:{port}") == (str(address), port)


@pytest.mark.parametrize("text", ["1.2.3.4", "1.2.3.4:99999", "host:80", ":x", "1.2.3.4:-1"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
))
def test_arbitrary_yaml_values_raise_only_config_error(data: object) -> None:
    try:
        load_config(
            {"dhcp": data, "tftp": data, "http": data, "provision": data}, base_dir=Path("/")
        )
    except ConfigError as exc:
        assert exc.problems


def test_http_slow_client_keys() -> None:
    config = load_config(
        {"http": {"header_timeout": 4, "pending_head_share": 0.25, "reserved_connections": 2}},
        base_dir=Path("/"),
    )
    assert config.http is not None
    assert (config.http.header_timeout, config.http.pending_head_share,
            config.http.reserved_connections) == (4.0, 0.25, 2)
    defaults = load_config({"http": {}}, base_dir=Path("/")).http
    assert defaults is not None
    assert (defaults.header_timeout, defaults.pending_head_share,
            defaults.reserved_connections) == (10.0, 0.5, 16)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("header_timeout", 0.5, "http.header_timeout: 0.5 is below the minimum 1.0"),
        ("pending_head_share", 1.5, "http.pending_head_share: 1.5 is a fraction of "
                                    "max_connections: at most 1"),
        ("pending_head_share", 0, "http.pending_head_share: 0 is below the minimum 0.01"),
        ("reserved_connections", -1, "http.reserved_connections:"),
    ],
)
def test_http_slow_client_keys_are_validated(key: str, value: object, message: str) -> None:
    found = problems_of({"http": {key: value}})
    assert any(problem.startswith(message) for problem in found), found
