"""Rules that look at the host, not only at the YAML: token files, directories, ``run_as``.

:func:`serving_problems` is the one validation that ``pxestack serve``, ``pxestack serve
--check``, ``twistd pxestack`` and ``.tac`` files apply before building anything, so a
configuration that ``--check`` passes is one that ``serve`` accepts.  It reads token files
and looks at directory modes and owners; it creates and changes nothing.

The rules exist because the provisioning network is not trusted: a token short enough to
guess, a token file other local users can read, or a state directory anybody can write
into (a planted git hook, a replaced host record) hands the machines' installs to whoever
gets there first.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import stat
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from pxestack.config._reader import Section
from pxestack.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from pxestack.config import Config

#: Bearer tokens shorter than this are refused (``openssl rand -hex 16`` gives 32).
MIN_TOKEN_LENGTH = 32


@dataclass(frozen=True, slots=True)
class RunAs:
    """The unprivileged identity ``pxestack serve`` switches to once its ports are open."""

    user: str
    group: str
    uid: int
    gid: int
    home: str


def read_run_as(section: Section) -> RunAs | None:
    """Validate ``run_as: {user, group}``; unknown names are problems at their key."""
    user = section.str("user")
    group = section.str("group", None)
    section.finish()
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        section.problem("user", f"{user!r} is not a user on this host")
        return None
    gid = entry.pw_gid
    group_name = group
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            section.problem("group", f"{group!r} is not a group on this host")
            return None
    else:
        try:
            group_name = grp.getgrgid(gid).gr_name
        except KeyError:
            group_name = str(gid)
    return RunAs(user=user, group=group_name or str(gid), uid=entry.pw_uid, gid=gid,
                 home=entry.pw_dir)


def check_token(section: Section, key: str, token: str) -> None:
    """Record a problem when an inline *token* is set but too short to resist guessing."""
    if token and len(token) < MIN_TOKEN_LENGTH:
        section.problem(key, f"is {len(token)} characters long; a token needs at least "
                        f"{MIN_TOKEN_LENGTH} (for example: openssl rand -hex 16)")


def read_token(
    key: str, inline: str, file: Path | None, problems: list[ConfigProblem],
    *, generated: bool = False,
) -> str:
    """The token given inline or in *file* (stripped); problems are recorded at *key*.

    *key* names the inline key (``provision.api.token``); a file's problems are named
    ``<key>_file``.  A file must not be readable by group or others, must not be empty and
    must hold at least :data:`MIN_TOKEN_LENGTH` characters.  With *generated*, a missing
    file is no problem (the first start creates it: :func:`create_token_file`).
    """
    if file is None:
        return inline
    file_key = f"{key}_file"
    if generated and not file.exists():
        return ""
    try:
        mode = file.stat().st_mode
        token = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(ConfigProblem(file_key, str(exc)))
        return ""
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        problems.append(ConfigProblem(
            file_key, f"{file} is readable by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 it"))
    if not token:
        problems.append(ConfigProblem(file_key, "the file is empty"))
    elif len(token) < MIN_TOKEN_LENGTH:
        problems.append(ConfigProblem(
            file_key, f"holds a {len(token)}-character token; a token needs at least "
            f"{MIN_TOKEN_LENGTH} (for example: openssl rand -hex 16)"))
    return token


def create_token_file(path: Path) -> str | None:
    """Create *path* holding a new random token, readable by its owner only.

    Returns the token, or None when *path* already exists (it is never overwritten).  The
    directory is made (mode 0700) when missing; the file is created with ``O_EXCL`` and
    mode 0600, so no other user ever sees it readable.
    """
    if path.exists():
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)  # 43 characters
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def _existing(path: Path) -> Path:
    """*path* or its nearest existing ancestor (where a missing directory would be made)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _allows(st: os.stat_result, uid: int, gids: set[int], bits: int) -> bool:
    """Whether the owner/group/other class that *uid* falls in has every one of *bits*
    (given as the owner's ``rwx`` bits, 0o7 scale)."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return (st.st_mode >> 6) & bits == bits
    if st.st_gid in gids:
        return (st.st_mode >> 3) & bits == bits
    return st.st_mode & bits == bits


def writable_by(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether *uid* (with groups *gids*) can create files in directory *path* (or create
    *path* itself when it does not exist yet)."""
    target = _existing(path.absolute())
    try:
        if not _allows(target.stat(), uid, gids, 0o3):
            return False
        return all(_allows(parent.stat(), uid, gids, 0o1) for parent in target.parents)
    except OSError:
        return False


def user_groups(run_as: RunAs) -> set[int]:
    """The primary and supplementary group ids *run_as* will have."""
    gids = {run_as.gid}
    with contextlib.suppress(OSError):
        gids.update(os.getgrouplist(run_as.user, run_as.gid))
    return gids


def _world_writable(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    # A sticky world-writable directory such as /tmp is no better: a stranger can still
    # create the files pxestack has not created yet.
    return bool(mode & stat.S_IWOTH)


def admin_listen_address(config: Config) -> str:
    """The address the admin API is reachable at: ``http.admin_listen`` when it is set
    (``/admin`` is refused on ``http.listen`` then), else ``http.listen``."""
    http = config.http
    if http is None:
        return "127.0.0.1"
    return (http.admin_listen or http.listen)[0]


def _is_loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def admin_token(config: Config, problems: list[ConfigProblem]) -> str | None:
    """The single ``/admin`` bearer token (named ``admin``), or None.

    Without any way to authenticate (no token, no named ``tokens``, no ``client_ca_file``,
    no ``trusted_networks``) the admin API must listen on loopback only.
    """
    prov = config.provision
    if prov is None:
        return None
    token = read_token("provision.api.token", prov.api.token, prov.api.token_file, problems,
                       generated=prov.api.generate_token)
    if token:
        return token
    api = prov.api
    other_means = api.tokens or api.client_ca_file is not None or api.trusted_networks
    host = admin_listen_address(config)
    if not _is_loopback(host) and api.token_file is None and not other_means:
        # (A generated token_file that does not exist yet is created before serving.)
        key = "http.admin_listen" if config.http is not None and config.http.admin_listen \
            else "http.listen"
        problems.append(ConfigProblem(
            "provision.api.token",
            f"is required because {key} ({host}) is not loopback-only: "
            "the admin API must not be open to the network (or give provision.api.tokens, "
            "client_ca_file or trusted_networks)",
        ))
    return None


def admin_tokens(config: Config, problems: list[ConfigProblem]) -> dict[str, str]:
    """Every admin bearer token by name: ``provision.api.token`` as ``admin`` plus the
    named ``provision.api.tokens`` (each file checked like every token file)."""
    found: dict[str, str] = {}
    single = admin_token(config, problems)
    if single:
        found["admin"] = single
    prov = config.provision
    if prov is None:
        return found
    for index, entry in enumerate(prov.api.tokens):
        token = read_token(f"provision.api.tokens[{index}].token", "", entry.token_file,
                           problems)
        if token:
            if token in found.values():
                problems.append(ConfigProblem(
                    f"provision.api.tokens[{index}].token_file",
                    "holds a token that another admin token already has: each name needs "
                    "its own token, or the audit cannot tell who acted"))
            else:
                found[entry.name] = token
    return found


def _pem_problem(key: str, path: Path, what: str) -> ConfigProblem | None:
    """A problem when *path* cannot be read (or is no PEM file at all)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return ConfigProblem(key, f"{path}: {exc.strerror or exc}")
    if b"-----BEGIN" not in data:
        return ConfigProblem(key, f"{path} holds no PEM {what}")
    return None


def tls_problems(config: Config, problems: list[ConfigProblem]) -> None:
    """Check ``http.tls`` and ``provision.api.client_ca_file`` against the files.

    The certificate and key must be readable PEM files, the key must belong to the
    certificate and must not be readable by group or others; a client CA must parse.
    """
    http = config.http
    tls = http.tls if http is not None else None
    client_ca = config.provision.api.client_ca_file if config.provision is not None else None
    if client_ca is not None:
        if tls is None:
            problems.append(ConfigProblem(
                "provision.api.client_ca_file",
                "client certificates need TLS: set http.tls (cert_file, key_file)"))
        problem = _pem_problem("provision.api.client_ca_file", client_ca, "CA certificates")
        if problem is None:
            try:
                x509.load_pem_x509_certificates(client_ca.read_bytes())
            except (ValueError, OSError) as exc:
                problem = ConfigProblem("provision.api.client_ca_file",
                                        f"{client_ca} is not a PEM certificate list: {exc}")
        if problem is not None:
            problems.append(problem)
    if tls is None:
        return
    cert_problem = _pem_problem("http.tls.cert_file", tls.cert_file, "certificate")
    key_problem = _pem_problem("http.tls.key_file", tls.key_file, "private key")
    for problem in (cert_problem, key_problem):
        if problem is not None:
            problems.append(problem)
    with contextlib.suppress(OSError):
        mode = tls.key_file.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
            problems.append(ConfigProblem(
                "http.tls.key_file", f"{tls.key_file} is readable or writable by group or "
                f"others (mode {stat.S_IMODE(mode):04o}); chmod 600 it"))
    if cert_problem is not None or key_problem is not None:
        return
    try:
        certificate = x509.load_pem_x509_certificates(tls.cert_file.read_bytes())[0]
    except (ValueError, OSError) as exc:
        problems.append(ConfigProblem("http.tls.cert_file",
                                      f"{tls.cert_file} is not a PEM certificate: {exc}"))
        return
    try:
        key = serialization.load_pem_private_key(tls.key_file.read_bytes(), password=None)
    except (ValueError, TypeError, OSError, UnsupportedAlgorithm) as exc:
        problems.append(ConfigProblem(
            "http.tls.key_file", f"{tls.key_file} is not an unencrypted PEM private key: "
            f"{exc}"))
        return
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(
            der, spki):
        problems.append(ConfigProblem(
            "http.tls.key_file", f"{tls.key_file} is not the key of the certificate in "
            f"{tls.cert_file}"))


def metrics_token(config: Config, problems: list[ConfigProblem]) -> str | None:
    """The bearer token ``/metrics`` requires (``http.metrics_token[_file]``), or None."""
    http = config.http
    if http is None:
        return None
    token = read_token("http.metrics_token", http.metrics_token, http.metrics_token_file,
                       problems)
    return token or None


def provision_base_url(config: Config, problems: list[ConfigProblem]) -> str:
    """The base URL machines reach provisioning at (``provision.public_url``, else
    ``http.public_url``, else ``http.listen`` unless it is 0.0.0.0)."""
    prov = config.provision
    if prov is not None and prov.public_url:
        return prov.public_url
    if config.http is not None and config.http.public_url:
        return config.http.public_url
    if config.http is not None:
        host, port = config.http.listen
        if host != "0.0.0.0":
            return f"http://{host}:{port}"
    problems.append(ConfigProblem(
        "provision.public_url", "is required (or http.public_url): machines need a URL to reach"))
    return ""


def serving_problems(config: Config, *, euid: int | None = None) -> list[ConfigProblem]:
    """Every problem that stops *config* from being served on this host (empty: none).

    *euid* is the identity the check assumes the server starts as (default: this
    process's), which decides whether ``run_as`` can be honoured.
    """
    problems: list[ConfigProblem] = []
    if config.provision is not None:
        provision_base_url(config, problems)
    admin_tokens(config, problems)
    metrics_token(config, problems)
    tls_problems(config, problems)
    dirs = [("state_dir", config.state_dir)]
    if config.provision is not None:
        dirs.append(("provision.cluster_dir", config.provision.cluster_dir))
    for key, path in dirs:
        if _world_writable(path):
            problems.append(ConfigProblem(
                key, f"{path} is writable by every user; chmod o-w it (and check who "
                "wrote what is in it)"))
    run_as = config.run_as
    if run_as is not None:
        me = os.geteuid() if euid is None else euid
        if me not in (0, run_as.uid):
            problems.append(ConfigProblem(
                "run_as.user", f"switching to {run_as.user!r} needs root; this process "
                f"runs as uid {me}"))
        gids = user_groups(run_as)
        for key, path in dirs:
            if not writable_by(path, run_as.uid, gids):
                problems.append(ConfigProblem(
                    key, f"{path} is not writable by run_as user {run_as.user!r} "
                    f"(uid {run_as.uid}, gid {run_as.gid}); chown it to that user"))
    return problems


def validate_for_serving(config: Config) -> None:
    """Raise :class:`ConfigError` listing :func:`serving_problems`, if there are any."""
    problems = serving_problems(config)
    if problems:
        raise ConfigError(problems)


__all__ = [
    "MIN_TOKEN_LENGTH",
    "RunAs",
    "admin_listen_address",
    "admin_token",
    "admin_tokens",
    "check_token",
    "create_token_file",
    "metrics_token",
    "provision_base_url",
    "read_run_as",
    "read_token",
    "serving_problems",
    "tls_problems",
    "validate_for_serving",
    "writable_by",
]
