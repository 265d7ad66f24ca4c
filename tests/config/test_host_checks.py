"""Rules checked against the host: token length and file modes, directory modes, ``run_as``.

``pxestack serve`` and ``pxestack serve --check`` apply the same function, so every rule is
tested through the library and the ``--check``/``serve`` parity once through the CLI.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pxestack.config import ConfigError, load_config
from pxestack.config.checks import MIN_TOKEN_LENGTH, serving_problems, writable_by

GOOD = "g" * MIN_TOKEN_LENGTH


def load_problems(data: object, base: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(data, base_dir=base)
    return [str(p) for p in info.value.problems]


def host_problems(data: dict[str, object], base: Path, euid: int | None = None) -> list[str]:
    return [str(p) for p in serving_problems(load_config(data, base_dir=base), euid=euid)]


def http(**extra: object) -> dict[str, object]:
    return {"state_dir": "state", "http": {"listen": "127.0.0.1:18080", **extra}}


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (http(metrics_token="short"), "http.metrics_token"),
        ({"provision": {"api": {"token": "x" * (MIN_TOKEN_LENGTH - 1)}}},
         "provision.api.token"),
    ],
)
def test_short_inline_tokens_are_refused(tmp_path: Path, data: object, path: str) -> None:
    problems = load_problems(data, tmp_path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: ")
    assert "at least 32" in problems[0]


def test_a_token_of_32_characters_is_accepted(tmp_path: Path) -> None:
    config = load_config(http(metrics_token=GOOD), base_dir=tmp_path)
    assert config.http is not None and config.http.metrics_token == GOOD


@pytest.mark.parametrize("key", ["metrics_token_file", "provision"])
def test_token_files_must_be_private_and_long(tmp_path: Path, key: str) -> None:
    token = tmp_path / "token"
    if key == "provision":
        data: dict[str, object] = {
            "state_dir": "state", "http": {"listen": "127.0.0.1:18080"},
            "provision": {"api": {"token_file": "token"}},
        }
        path = "provision.api.token_file"
    else:
        data = http(metrics_token_file="token")
        path = "http.metrics_token_file"
    token.write_text("short\n")
    token.chmod(0o644)
    problems = host_problems(data, tmp_path)
    assert [p.split(":")[0] for p in problems] == [path, path]
    assert "readable by group or others" in problems[0]
    assert "at least 32" in problems[1]
    token.chmod(0o640)
    assert "readable by group or others" in host_problems(data, tmp_path)[0]
    token.write_text(GOOD + "\n")
    token.chmod(0o600)
    assert host_problems(data, tmp_path) == []


@pytest.mark.parametrize(
    ("data", "path", "directory"),
    [
        ({"state_dir": "state"}, "state_dir", "state"),
        ({"state_dir": "state", "http": {"listen": "127.0.0.1:18080"},
          "provision": {"cluster_dir": "cluster"}}, "provision.cluster_dir", "cluster"),
    ],
)
def test_world_writable_directories_are_refused(
    tmp_path: Path, data: dict[str, object], path: str, directory: str
) -> None:
    for name in ("state", "cluster"):
        (tmp_path / name).mkdir(mode=0o750)
    (tmp_path / directory).chmod(0o1777)
    problems = host_problems(data, tmp_path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: ")
    assert "writable by every user" in problems[0]
    (tmp_path / directory).chmod(0o750)
    assert host_problems(data, tmp_path) == []


def test_unknown_run_as_user_and_group_name_their_keys(tmp_path: Path) -> None:
    problems = load_problems({"run_as": {"user": "no-such-user-pxestack"}}, tmp_path)
    assert [p.split(":")[0] for p in problems] == ["run_as.user"]
    user = pwd.getpwuid(os.getuid()).pw_name
    problems = load_problems({"run_as": {"user": user, "group": "no-such-group-pxe"}}, tmp_path)
    assert [p.split(":")[0] for p in problems] == ["run_as.group"]
    assert load_problems({"run_as": {"group": "x", "uid": 3}}, tmp_path) == [
        "run_as.user: is required", "run_as.uid: unknown key"]


def test_run_as_is_looked_up(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    config = load_config({"run_as": {"user": "nobody"}}, base_dir=tmp_path)
    assert config.run_as is not None
    assert (config.run_as.uid, config.run_as.gid) == (nobody.pw_uid, nobody.pw_gid)
    assert config.run_as.group == grp.getgrgid(nobody.pw_gid).gr_name


def test_run_as_needs_root_and_writable_directories(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    data: dict[str, object] = {"state_dir": "state", "run_as": {"user": "nobody"}}
    nobody = pwd.getpwnam("nobody").pw_uid
    problems = host_problems(data, tmp_path, euid=nobody + 1)
    assert problems[0].startswith("run_as.user: ") and "needs root" in problems[0]
    problems = host_problems(data, tmp_path, euid=0)
    if os.stat(state).st_uid == nobody:  # pragma: no cover - only when run as nobody
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith("state_dir: ")
        assert "not writable by run_as user 'nobody'" in problems[0]


def test_writable_by_follows_owner_group_and_other_bits() -> None:
    # Under /tmp itself: every ancestor must be searchable for the stranger.
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        base.chmod(0o755)
        _check_bits(base / "d")
    finally:
        shutil.rmtree(base)


def _check_bits(target: Path) -> None:
    target.mkdir(mode=0o750)
    target.chmod(0o750)
    st = target.stat()
    stranger = st.st_uid + 12345
    assert writable_by(target, st.st_uid, set()) or st.st_uid == 0
    assert not writable_by(target, stranger, {st.st_gid})
    target.chmod(0o770)
    assert writable_by(target, stranger, {st.st_gid})
    assert not writable_by(target, stranger, set())
    # A directory that does not exist yet is judged by the one it will be created in.
    assert not writable_by(target / "new" / "deeper", stranger, set())
    assert writable_by(target / "new", stranger, {st.st_gid})


def test_check_refuses_what_serve_refuses_with_the_same_message(tmp_path: Path) -> None:
    """``--check`` used to pass a config whose token file serve refused while building."""
    token = tmp_path / "metrics.token"
    token.write_text(GOOD + "\n")
    token.chmod(0o644)
    config = tmp_path / "pxestack.yaml"
    config.write_text(
        "state_dir: state\nhttp:\n  listen: 127.0.0.1:0\n  metrics_token_file: metrics.token\n"
    )
    results = [
        subprocess.run(
            [sys.executable, "-m", "pxestack", "serve", "--config", str(config), *extra],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
        for extra in (["--check"], [])
    ]  # fmt: skip
    check, serve = results
    assert check.returncode == serve.returncode == 2, (check.stderr, serve.stderr)
    assert "http.metrics_token_file" in check.stdout + check.stderr
    assert check.stdout + check.stderr == serve.stdout + serve.stderr
