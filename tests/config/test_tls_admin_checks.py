"""``http.tls``, ``http.admin_listen`` and the admin authentication keys: read, and checked
against the files by the same rules ``serve`` and ``serve --check`` apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tls_ca import TestCa

from pxestack.config import load_config
from pxestack.config.checks import admin_tokens, serving_problems
from pxestack.errors import ConfigError, ConfigProblem

TOKEN_A = "a" * 40
TOKEN_B = "b" * 40


def token_file(path: Path, token: str, mode: int = 0o600) -> Path:
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def config(tmp_path: Path, http: dict[str, Any] | None = None,
           api: dict[str, Any] | None = None) -> Any:
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "http": {"listen": "127.0.0.1:8080", "public_url": "http://127.0.0.1:8080",
                 **(http or {})},
        "provision": {"api": api or {}},
    }
    return load_config(data, base_dir=tmp_path)


def problems_at(problems: list[ConfigProblem]) -> dict[str, str]:
    return {p.path: p.message for p in problems}


def test_a_valid_tls_setup_has_no_problem(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "ca")
    server = ca.server()
    cfg = config(tmp_path, {"tls": {"cert_file": str(server.cert), "key_file": str(server.key)},
                            "admin_listen": "127.0.0.1:8443"},
                 {"client_ca_file": str(ca.ca_file), "trusted_networks": ["127.0.0.0/8"]})
    assert cfg.http.tls.cert_file == server.cert
    assert cfg.http.admin_listen == ("127.0.0.1", 8443)
    assert [str(n) for n in cfg.provision.api.trusted_networks] == ["127.0.0.0/8"]
    assert serving_problems(cfg) == []


def test_a_key_readable_by_others_is_refused_naming_the_key_path(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "ca")
    server = ca.server()
    server.key.chmod(0o644)
    cfg = config(tmp_path, {"tls": {"cert_file": str(server.cert), "key_file": str(server.key)}})
    found = problems_at(serving_problems(cfg))
    assert str(server.key) in found["http.tls.key_file"]
    assert "chmod 600" in found["http.tls.key_file"]


def test_a_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "ca")
    server, other = ca.server(), ca.server("other")
    cfg = config(tmp_path, {"tls": {"cert_file": str(server.cert), "key_file": str(other.key)}})
    found = problems_at(serving_problems(cfg))
    assert "is not the key of the certificate" in found["http.tls.key_file"]
    assert str(other.key) in found["http.tls.key_file"]


def test_missing_and_unparsable_files_name_their_key(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "ca")
    server = ca.server()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cfg = config(tmp_path, {"tls": {"cert_file": str(tmp_path / "absent.pem"),
                                    "key_file": str(server.key)}})
    assert "absent.pem" in problems_at(serving_problems(cfg))["http.tls.cert_file"]
    cfg = config(tmp_path, {"tls": {"cert_file": str(garbage), "key_file": str(server.key)}})
    assert "not a PEM certificate" in problems_at(serving_problems(cfg))["http.tls.cert_file"]


def test_incomplete_tls_section_and_same_admin_listen_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, {"tls": {"cert_file": "x.pem"}, "admin_listen": "127.0.0.1:8080"})
    found = problems_at(caught.value.problems)
    assert found["http.tls.key_file"] == "is required"
    assert "must differ" in found["http.admin_listen"]


def test_client_certificates_need_tls(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "ca")
    cfg = config(tmp_path, api={"client_ca_file": str(ca.ca_file)})
    assert "need TLS" in problems_at(serving_problems(cfg))["provision.api.client_ca_file"]


def test_named_tokens_are_checked_like_every_token_file(tmp_path: Path) -> None:
    good = token_file(tmp_path / "a.token", TOKEN_A)
    short = token_file(tmp_path / "short.token", "x" * 10)
    loose = token_file(tmp_path / "loose.token", TOKEN_B, 0o640)
    cfg = config(tmp_path, api={"tokens": [
        {"name": "ops-bob", "token_file": str(good)},
        {"name": "ci", "token_file": str(short)},
        {"name": "loose", "token_file": str(loose)},
    ]})
    problems: list[ConfigProblem] = []
    tokens = admin_tokens(cfg, problems)
    found = problems_at(problems)
    assert tokens["ops-bob"] == TOKEN_A
    assert "32" in found["provision.api.tokens[1].token_file"]
    assert "chmod 600" in found["provision.api.tokens[2].token_file"]


def test_the_single_token_is_named_admin_and_names_must_be_unique_words(tmp_path: Path) -> None:
    good = token_file(tmp_path / "a.token", TOKEN_A)
    other = token_file(tmp_path / "b.token", TOKEN_B)
    cfg = config(tmp_path, api={"token": "c" * 40,
                                "tokens": [{"name": "ops", "token_file": str(good)}]})
    assert admin_tokens(cfg, []) == {"admin": "c" * 40, "ops": TOKEN_A}
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, api={"token": "c" * 40, "tokens": [
            {"name": "admin", "token_file": str(good)},
            {"name": "bad name\n", "token_file": str(other)},
        ], "trusted_networks": ["10.0.0.1/8", "nonsense"]})
    found = problems_at(caught.value.problems)
    assert "used twice" in found["provision.api.tokens[0].name"]
    assert "is not a name" in found["provision.api.tokens[1].name"]
    assert "host bits" in found["provision.api.trusted_networks[0]"]
    assert "provision.api.trusted_networks[1]" in found


def test_admin_auth_is_required_beyond_loopback_unless_another_means_is_set(
        tmp_path: Path) -> None:
    cfg = config(tmp_path, {"listen": "0.0.0.0:8080"})
    assert "provision.api.token" in problems_at(serving_problems(cfg))
    cfg = config(tmp_path, {"listen": "0.0.0.0:8080"}, {"trusted_networks": ["10.1.0.0/24"]})
    assert "provision.api.token" not in problems_at(serving_problems(cfg))
    # The admin API on a loopback admin listener needs nothing; machines stay on 0.0.0.0.
    cfg = config(tmp_path, {"listen": "0.0.0.0:8080", "admin_listen": "127.0.0.1:8443"})
    assert "provision.api.token" not in problems_at(serving_problems(cfg))
    cfg = config(tmp_path, {"listen": "127.0.0.1:8080", "admin_listen": "0.0.0.0:8443"})
    assert "http.admin_listen" in problems_at(serving_problems(cfg))["provision.api.token"]
