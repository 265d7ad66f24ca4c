"""``pxestack ctl``: the operator's client for the admin API, with mayuctl's commands.

Every mayuctl task has a ``pxestack ctl`` command (docs/cli.md has the mapping table), and
the requests are the ones mayuctl sends (docs/reference/mayu-api.md): the same paths, methods and
PascalCase JSON bodies, so ``pxestack ctl`` also drives a real mayu server, and mayuctl
drives pxestack.  What is new: a bearer token (mayu had no authentication), ``--output
json|yaml`` for scripts, ``history`` (the git audit trail) and ``health``.

Exit status, for scripts:

====  ====================================================================================
0     success
1     the server refused or failed the request, or could not be reached
2     usage error (bad arguments, a value the server would refuse, unreadable token file)
3     the host does not exist (mayu's 400 "host doesn't exist")
====  ====================================================================================

Only the standard library talks HTTP here (``urllib.request``): the client must run on a
freshly installed node (``boot-complete``) with nothing but Python.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from pxestack import __version__
from pxestack.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

#: The host named on the command line does not exist on the server.
EXIT_NOT_FOUND = 3

#: Where the admin API listens when neither ``--server`` nor ``PXESTACK_SERVER`` says
#: (pxestack's default ``http.listen`` port on loopback; mayu's API port was 4080).
DEFAULT_SERVER = "http://127.0.0.1:8080"
SERVER_ENV = "PXESTACK_SERVER"
TOKEN_ENV = "PXESTACK_TOKEN"  # noqa: S105 - the variable name, not a secret
#: The quickstart's generated admin token, relative to the working directory: read when
#: neither ``--token-file`` nor ``$PXESTACK_TOKEN`` gives a token and the server is on
#: loopback (a local token is never sent to another host).
DEFAULT_TOKEN_FILE = Path("pxestack-state") / "admin-token"

#: mayu's five host states (docs/reference/mayu-api.md); ``set SERIAL state X`` checks X
#: client-side, as mayuctl does, so a typo never reaches the server.
STATES = ("unknown", "configured", "installing", "installed", "running")

#: mayu's answer for an unknown serial on the admin routes (400 + this text).
HOST_MISSING_TEXT = "host doesn't exist"

#: The largest answer read from the server (a list of many thousand hosts fits easily).
MAX_RESPONSE_BYTES = 256 << 20

#: mayu's boot_complete version fields and the env-file keys mayuctl reads them from
#: (``--update-versions``).
VERSION_ENV_KEYS = (
    ("MayuVersion", "MAYU_VERSION"),
    ("DockerVersion", "DOCKER_VERSION"),
    ("EtcdVersion", "ETCD_VERSION"),
    ("FleetVersion", "FLEET_VERSION"),
    ("YochuVersion", "YOCHU_VERSION"),
    ("RktVersion", "RKT_VERSION"),
    ("K8sVersion", "K8S_VERSION"),
)


# -- errors --------------------------------------------------------------------------------


class CtlError(Exception):
    """A failure to report in one line; :attr:`exit_code` is what the process returns."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CtlUsageError(CtlError):
    """The command line asks for something that cannot be sent (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class HostNotFoundError(CtlError):
    """The server does not know the serial (exit 3)."""

    def __init__(self, serial: str) -> None:
        super().__init__(f"host {serial!r} doesn't exist", EXIT_NOT_FOUND)
        self.serial = serial


# -- the HTTP client -----------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, headers (lower-cased names) and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        """The body as text (undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON; a :class:`CtlError` when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            raise CtlError("the server's answer is not JSON: " + _excerpt(self.text)) from None


def _excerpt(text: str, limit: int = 200) -> str:
    """*text* on one line, shortened for an error message."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow redirects: a redirected PUT would silently lose its body."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        """Refuse every redirect (the 3xx is reported as an error)."""
        return None


class AdminClient:
    """Talks to the admin API at *server* (``http://host:port``, or ``https://``).

    *token*, when given, is sent as ``Authorization: Bearer`` (RFC 6750 §2.1) with every
    request.  *cafile* names the CA certificates to trust for ``https`` servers (default:
    the system's); *certfile* and *keyfile* are a client certificate to present (the key
    may be in *certfile*), which the server maps to the actor ``cert:<subject>``.
    """

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(server)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise CtlUsageError(f"--server {server!r} is not an http:// or https:// URL")
        if (certfile or keyfile) and parsed.scheme != "https":
            raise CtlUsageError("--cert-file/--key-file need an https:// server")
        if keyfile and not certfile:
            raise CtlUsageError("--key-file needs --cert-file")
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if parsed.scheme == "https":
            try:
                context = ssl.create_default_context(cafile=cafile)
                if certfile:
                    context.load_cert_chain(certfile, keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise CtlUsageError(f"cannot use --ca-file/--cert-file/--key-file: {exc}") \
                    from None
            handlers.append(urllib.request.HTTPSHandler(context=context))
        # ProxyHandler({}) ignores http_proxy: the admin API is on the local network.
        handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send one request; any HTTP status comes back as a :class:`Reply`.

        Transport failures (refused, timed out, TLS) raise :class:`CtlError` (exit 1).
        """
        url = self.server + path
        request = urllib.request.Request(url, data=body, method=method)  # noqa: S310 - scheme checked
        request.add_header("User-Agent", f"pxestack-ctl/{__version__}")
        request.add_header("Accept", "application/json, text/plain, */*")
        if body is not None:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                return Reply(answer.status, _lower(answer.headers.items()),
                             answer.read(MAX_RESPONSE_BYTES))
        except urllib.error.HTTPError as error:
            with error:
                data = error.read(MAX_RESPONSE_BYTES)
            return Reply(error.code, _lower(error.headers.items()), data)
        except urllib.error.URLError as error:
            raise CtlError(f"cannot reach {self.server}: {error.reason}") from None
        except (OSError, ValueError) as error:
            # TimeoutError, ConnectionResetError, http.client.RemoteDisconnected, bad URLs
            raise CtlError(f"cannot reach {self.server}: {error}") from None

    def stream(self, path: str, *, idle_timeout: float = 60.0) -> Iterator[tuple[str, str, str]]:
        """GET *path* as a Server-Sent Events stream; yields ``(event, id, data)`` for each
        message until the server closes it.  A status error raises as :meth:`call` does."""
        request = urllib.request.Request(self.server + path, method="GET")  # noqa: S310 - scheme checked
        request.add_header("User-Agent", f"pxestack-ctl/{__version__}")
        request.add_header("Accept", "text/event-stream")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            answer = self._opener.open(request, timeout=max(self.timeout, idle_timeout))
        except urllib.error.HTTPError as error:
            with error:
                data = error.read(MAX_RESPONSE_BYTES)
            self.check(Reply(error.code, _lower(error.headers.items()), data), "GET", path)
            return
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise CtlError(f"cannot reach {self.server}: {error}") from None
        with answer:
            event, ident, data = "message", "", []
            try:
                for raw in answer:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if not line:
                        if data:
                            yield event, ident, "\n".join(data)
                        event, data = "message", []
                        continue
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "event":
                        event = value
                    elif name == "id":
                        ident = value
                    elif name == "data":
                        data.append(value)
            except (OSError, ValueError) as error:
                raise CtlError(f"the stream from {self.server} broke: {error}") from None

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        serial: str | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """:meth:`request`, turning error statuses into :class:`CtlError`.

        mayuctl treats any status up to 399 as success.  mayu's 400 ``host
        doesn't exist`` becomes :class:`HostNotFoundError` when *serial* names a host.
        """
        reply = self.request(method, path, body, content_type=content_type, headers=headers)
        return self.check(reply, method, path, serial=serial)

    def check(self, reply: Reply, method: str, path: str, *, serial: str | None = None) -> Reply:
        """*reply* when its status is a success (up to 399); else the matching error."""
        if reply.status < 400:
            return reply
        message = reply.text.strip()
        if serial is not None and reply.status in (400, 404) and HOST_MISSING_TEXT in message:
            raise HostNotFoundError(serial)
        if reply.status == 401:
            raise CtlError(
                f"not authorised by {self.server} ({_excerpt(message) or 'no reason given'}); "
                f"set {TOKEN_ENV} or pass --token-file"
            )
        raise CtlError(f"{method} {path}: HTTP {reply.status}: {_excerpt(message) or '(empty)'}")


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


def host_path(serial: str, action: str | None = None) -> str:
    """``/admin/host/<serial>[/<action>]`` with the serial percent-encoded."""
    path = "/admin/host/" + urllib.parse.quote(serial, safe="")
    return path if action is None else f"{path}/{action}"


# -- reading host records ------------------------------------------------------------------


def field_of(host: Mapping[str, Any], name: str) -> Any:
    """The value of JSON key *name*, matched case-insensitively (as mayuctl's decoder)."""
    if name in host:
        return host[name]
    lowered = name.lower()
    for key, value in host.items():
        if key.lower() == lowered:
            return value
    return None


def text_of(value: Any) -> str:
    """A field value as table text: ``-`` when empty, lists comma-joined."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    return str(value)


def last_boot_text(value: Any) -> str:
    """``LastBoot`` as ``YYYY-MM-DD HH:MM:SS`` UTC (mayuctl's format); ``-`` for never.

    Go writes up to nine fractional digits; Go's zero time means "never booted".
    """
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return "-"
    text = value.strip().replace("Z", "+00:00")
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        text = head + "." + digits[:6] + rest[len(digits):]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def os_version_of(host: Mapping[str, Any]) -> Any:
    """The host's OS version: override > ``FlatcarVersion`` > ``CoreOSVersion``."""
    overrides = field_of(host, "Overrides")
    if isinstance(overrides, Mapping):
        for key in ("CoreOSVersion", "FlatcarVersion"):
            if overrides.get(key):
                return overrides[key]
    return field_of(host, "FlatcarVersion") or field_of(host, "CoreOSVersion")


#: ``list --fields`` names -> (column header, value).  mayuctl's names are all accepted
#: (``ip``, ``coreos``, ``etcdtoken`` ...) plus the friendlier ``address`` and ``tags``.
LIST_FIELDS: dict[str, tuple[str, Callable[[Mapping[str, Any]], str]]] = {
    "serial": ("SERIAL", lambda h: text_of(field_of(h, "Serial"))),
    "address": ("ADDRESS", lambda h: text_of(field_of(h, "InternalAddr"))),
    "ip": ("IP", lambda h: text_of(field_of(h, "InternalAddr"))),
    "profile": ("PROFILE", lambda h: text_of(field_of(h, "Profile"))),
    "state": ("STATE", lambda h: text_of(field_of(h, "State") or "unknown")),
    "lastboot": ("LASTBOOT", lambda h: last_boot_text(field_of(h, "LastBoot"))),
    "tags": ("TAGS", lambda h: text_of(field_of(h, "FleetMetadata"))),
    "metadata": ("METADATA", lambda h: text_of(field_of(h, "FleetMetadata"))),
    "ipmiaddr": ("IPMIADDR", lambda h: text_of(field_of(h, "IPMIAddr"))),
    "providerid": ("PROVIDERID", lambda h: text_of(field_of(h, "ProviderId"))),
    "etcdtoken": ("ETCDTOKEN", lambda h: text_of(field_of(h, "EtcdClusterToken"))),
    "coreos": ("COREOS", lambda h: text_of(os_version_of(h))),
    "os": ("OSVERSION", lambda h: text_of(os_version_of(h))),
    "machineid": ("MACHINEID", lambda h: text_of(field_of(h, "MachineID"))),
    "hostname": ("HOSTNAME", lambda h: text_of(field_of(h, "Hostname"))),
    "macs": ("MACS", lambda h: text_of(field_of(h, "MacAddresses"))),
    "cabinet": ("CABINET", lambda h: text_of(field_of(h, "Cabinet") or 0)),
    "mayu": ("MAYU", lambda h: text_of(field_of(h, "MayuVersion"))),
    "docker": ("DOCKER", lambda h: text_of(field_of(h, "DockerVersion"))),
    "etcd": ("ETCD", lambda h: text_of(field_of(h, "EtcdVersion"))),
    "fleet": ("FLEET", lambda h: text_of(field_of(h, "FleetVersion"))),
    "yochu": ("YOCHU", lambda h: text_of(field_of(h, "YochuVersion"))),
    "rkt": ("RKT", lambda h: text_of(field_of(h, "RktVersion"))),
    "k8s": ("K8S", lambda h: text_of(field_of(h, "K8sVersion"))),
}
#: ``list --wide``: pxestack's columns.
WIDE_LIST_FIELDS = ("serial", "address", "profile", "state", "lastboot", "tags", "hostname",
                    "macs", "os")


def _dash(value: Any) -> str:
    """mayuctl's rendering of IP, profile, IPMI and provider ID: ``-`` when missing."""
    text = "" if value is None else str(value)
    return text or "-"


def _plain(value: Any) -> str:
    """mayuctl's rendering of the other fields: the value, empty when missing."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def mayu_time_text(value: Any) -> str:
    """``LastBoot`` as mayuctl prints it: ``YYYY-MM-DD HH:MM:SS`` UTC, Go's zero time
    (``0001-01-01 00:00:00``) for a host that never booted."""
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return "0001-01-01 00:00:00"
    text = last_boot_text(value)
    return "0001-01-01 00:00:00" if text == "-" else text


#: ``list`` without ``--wide``: mayuctl's fields and their rendering, so a script written
#: for ``mayuctl list`` parses the output unchanged (docs/cli.md).
MAYU_LIST_FIELDS: dict[str, tuple[str, Callable[[Mapping[str, Any]], str]]] = {
    "ip": ("IP", lambda h: _dash(field_of(h, "InternalAddr"))),
    "serial": ("SERIAL", lambda h: _plain(field_of(h, "Serial"))),
    "profile": ("PROFILE", lambda h: _dash(field_of(h, "Profile"))),
    "ipmiaddr": ("IPMIADDR", lambda h: _dash(field_of(h, "IPMIAddr"))),
    "providerid": ("PROVIDERID", lambda h: _dash(field_of(h, "ProviderId"))),
    "etcdtoken": ("ETCDTOKEN", lambda h: _plain(field_of(h, "EtcdClusterToken"))),
    "metadata": ("METADATA", lambda h: _plain(field_of(h, "FleetMetadata"))),
    "coreos": ("COREOS", lambda h: _plain(
        field_of(h, "CoreOSVersion") or field_of(h, "FlatcarVersion"))),
    # the state with its JSON quotes, as mayuctl prints it
    "state": ("STATE", lambda h: json.dumps(str(field_of(h, "State") or "unknown"))),
    "lastboot": ("LASTBOOT", lambda h: mayu_time_text(field_of(h, "LastBoot"))),
    "yochu": ("YOCHU", lambda h: _plain(field_of(h, "YochuVersion"))),
    "fleet": ("FLEET", lambda h: _plain(field_of(h, "FleetVersion"))),
    "etcd": ("ETCD", lambda h: _plain(field_of(h, "EtcdVersion"))),
    "docker": ("DOCKER", lambda h: _plain(field_of(h, "DockerVersion"))),
    "machineid": ("MACHINEID", lambda h: _plain(field_of(h, "MachineID"))),
}
#: mayuctl's default ``list`` columns.
DEFAULT_LIST_FIELDS = ("ip", "serial", "profile", "ipmiaddr", "providerid", "etcdtoken",
                       "metadata", "coreos", "state", "lastboot")

#: ``status`` lines, in mayuctl's order: label -> value.
STATUS_LINES: tuple[tuple[str, Callable[[Mapping[str, Any]], str]], ...] = (
    ("Serial", lambda h: text_of(field_of(h, "Serial"))),
    ("IP", lambda h: text_of(field_of(h, "InternalAddr"))),
    ("IPMI", lambda h: text_of(field_of(h, "IPMIAddr"))),
    ("Provider ID", lambda h: text_of(field_of(h, "ProviderId"))),
    ("Macs", lambda h: text_of(field_of(h, "MacAddresses"))),
    ("Cabinet", lambda h: text_of(field_of(h, "Cabinet") or 0)),
    ("Machine on Cabinet", lambda h: text_of(field_of(h, "MachineOnCabinet") or 0)),
    ("Hostname", lambda h: text_of(field_of(h, "Hostname"))),
    ("MachineID", lambda h: text_of(field_of(h, "MachineID"))),
    ("ConnectedNIC", lambda h: text_of(field_of(h, "ConnectedNIC"))),
    ("Profile", lambda h: text_of(field_of(h, "Profile"))),
    ("DisableEngine", lambda h: text_of(bool(field_of(h, "FleetDisableEngine")))),
    ("State", lambda h: text_of(field_of(h, "State") or "unknown")),
    ("KeepDiskData", lambda h: text_of(bool(field_of(h, "KeepDiskData")))),
    ("EtcdToken", lambda h: text_of(field_of(h, "EtcdClusterToken"))),
    ("Metadata", lambda h: text_of(field_of(h, "FleetMetadata"))),
    ("Overrides", lambda h: text_of(field_of(h, "Overrides"))),
    ("OS version", lambda h: text_of(os_version_of(h))),
    ("CoreOS", lambda h: text_of(field_of(h, "CoreOSVersion"))),
    ("Flatcar", lambda h: text_of(field_of(h, "FlatcarVersion"))),
    ("Mayu", lambda h: text_of(field_of(h, "MayuVersion"))),
    ("Yochu", lambda h: text_of(field_of(h, "YochuVersion"))),
    ("Docker", lambda h: text_of(field_of(h, "DockerVersion"))),
    ("Etcd", lambda h: text_of(field_of(h, "EtcdVersion"))),
    ("Fleet", lambda h: text_of(field_of(h, "FleetVersion"))),
    ("Rkt", lambda h: text_of(field_of(h, "RktVersion"))),
    ("K8s", lambda h: text_of(field_of(h, "K8sVersion"))),
    ("LastBoot", lambda h: last_boot_text(field_of(h, "LastBoot"))),
    ("Enabled", lambda h: text_of(field_of(h, "Enabled") is not False)),
)


# -- output --------------------------------------------------------------------------------


def format_table(headers: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces (no trailing blanks)."""
    all_rows = ([list(headers)] if headers else []) + [list(r) for r in rows]
    if not all_rows:
        return ""
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def format_pairs(pairs: Sequence[tuple[str, str]]) -> str:
    """``Label:  value`` lines with the values aligned (mayuctl's ``status`` layout)."""
    if not pairs:
        return ""
    width = max(len(label) for label, _ in pairs) + 1
    return "".join(f"{(label + ':').ljust(width)}  {value}\n" for label, value in pairs)


def emit(args: argparse.Namespace, data: Any, table: Callable[[], str]) -> None:
    """Print *data* as JSON or YAML, or ``table()`` for the default table output."""
    if args.output == "json":
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=True, default_flow_style=False))
    else:
        sys.stdout.write(table())


# -- the commands --------------------------------------------------------------------------


def _read_token_file(path: Path, name: str) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CtlUsageError(f"{name} {path}: {exc}") from None
    if not token:
        raise CtlUsageError(f"{name} {path} is empty")
    return token


def is_loopback_url(server: str) -> bool:
    """Whether *server*'s host is a loopback address or ``localhost``."""
    host = urllib.parse.urlsplit(server).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(args: argparse.Namespace, server: str | None = None) -> str | None:
    """The admin token: ``--token-file`` > ``$PXESTACK_TOKEN`` > the quickstart's
    :data:`DEFAULT_TOKEN_FILE` when it exists and *server* is on loopback > none.

    A token file that cannot be read is a usage error (exit 2), never silently ignored.
    """
    if args.token_file:
        return _read_token_file(Path(args.token_file), "--token-file")
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if server is not None and is_loopback_url(server) and DEFAULT_TOKEN_FILE.exists():
        return _read_token_file(DEFAULT_TOKEN_FILE, "token file")
    return None


def server_url(args: argparse.Namespace, fallback_server: str | None = None) -> str:
    """``--server`` > ``$PXESTACK_SERVER`` > *fallback_server* > :data:`DEFAULT_SERVER`."""
    server: str = args.server or os.environ.get(SERVER_ENV) or fallback_server or DEFAULT_SERVER
    return server


def make_client(args: argparse.Namespace, *, fallback_server: str | None = None,
                fallback_token: str | None = None) -> AdminClient:
    """The client for ``--server`` > ``$PXESTACK_SERVER`` > *fallback_server* > default."""
    server = server_url(args, fallback_server)
    token = read_token(args, None if fallback_token else server) or fallback_token
    return AdminClient(server, token=token, timeout=args.timeout, cafile=args.cacert,
                       certfile=args.cert_file, keyfile=args.key_file)


def fetch_hosts(client: AdminClient) -> list[dict[str, Any]]:
    """``GET /admin/hosts``: the records, which must be a JSON array (mayuctl requires it)."""
    value = client.call("GET", "/admin/hosts").json()
    if value is None:  # Go encodes an empty slice as null
        return []
    if not isinstance(value, list) or not all(isinstance(h, dict) for h in value):
        raise CtlError("GET /admin/hosts did not answer a JSON array of host records")
    return value


def fetch_host(client: AdminClient, serial: str) -> tuple[dict[str, Any], str | None]:
    """One record and its ETag: ``GET /admin/host/<serial>``.

    A server without that route (mayu answers 404/405 there) is asked for the whole list,
    searched as mayuctl does (after lower-casing: serials are stored lower-case).
    """
    reply = client.request("GET", host_path(serial.lower()))
    if reply.status < 400:
        record = reply.json()
        if not isinstance(record, dict):
            raise CtlError(f"GET {host_path(serial.lower())} did not answer a JSON object")
        return record, reply.headers.get("etag")
    if reply.status not in (404, 405) or HOST_MISSING_TEXT in reply.text:
        client.check(reply, "GET", host_path(serial.lower()), serial=serial)
    for host in fetch_hosts(client):
        if str(field_of(host, "Serial") or "").lower() == serial.lower():
            return host, None
    raise HostNotFoundError(serial)


def list_columns(fields: str | None, wide: bool
                 ) -> list[tuple[str, Callable[[Mapping[str, Any]], str]]]:
    """The ``list`` columns: mayuctl's by default, pxestack's with *wide*.

    Without *wide* a mayuctl field name renders as mayuctl does (``-`` for a missing IP,
    quoted state, Go's zero time); pxestack's own names (``address``, ``tags`` ...) render
    as in ``--wide``.
    """
    default = WIDE_LIST_FIELDS if wide else DEFAULT_LIST_FIELDS
    names = [n.strip().lower() for n in fields.split(",")] if fields else list(default)
    valid = {**LIST_FIELDS, **MAYU_LIST_FIELDS}
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise CtlUsageError(
            f"unknown field(s) {', '.join(unknown) or '(none)'}; valid: {', '.join(valid)}")
    table = LIST_FIELDS if wide else {**LIST_FIELDS, **MAYU_LIST_FIELDS}
    return [table.get(n) or valid[n] for n in names]


def cmd_list(args: argparse.Namespace) -> int:
    """``list``: one row per host; mayuctl's columns and order unless ``--wide``."""
    columns = list_columns(args.fields, args.wide)
    hosts = fetch_hosts(make_client(args))
    if args.state:
        hosts = [h for h in hosts if (field_of(h, "State") or "unknown") == args.state]
    if args.profile:
        hosts = [h for h in hosts if field_of(h, "Profile") == args.profile]
    hosts.sort(key=lambda h: str(field_of(h, "Serial") or ""))

    def table() -> str:
        headers = None if args.no_legend else [header for header, _ in columns]
        rows = [[value(h) for _, value in columns] for h in hosts]
        if not args.wide:
            rows.sort(key="|".join)  # mayuctl sorts its rows as strings
        return format_table(headers, rows)

    emit(args, hosts, table)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """``status SERIAL``: every field of one host."""
    host, etag = fetch_host(make_client(args), args.serial)

    def table() -> str:
        pairs = [(label, value(host)) for label, value in STATUS_LINES]
        if etag:
            pairs.append(("ETag", etag))
        return format_pairs(pairs)

    emit(args, host, table)
    return EXIT_OK


def _mutation(args: argparse.Namespace, serial: str, action: str, body: Mapping[str, Any] | None,
              summary: str) -> int:
    """PUT one mayu host action and report it (202 + empty body from mayu and pxestack)."""
    client = make_client(args)
    headers = {"If-Match": args.if_match} if getattr(args, "if_match", None) else None
    data = json.dumps(body).encode() if body is not None else b""
    reply = client.call("PUT", host_path(serial.lower(), action), data, serial=serial,
                        headers=headers)
    result = {"serial": serial.lower(), "action": action, "status": reply.status,
              "etag": reply.headers.get("etag")}
    emit(args, result, lambda: f"{serial.lower()}: {summary}\n")
    return EXIT_OK


def set_request(key: str, value: str) -> tuple[str, dict[str, Any]]:
    """mayuctl's ``set`` keys -> (action, JSON body); validated client-side.

    Raises :class:`CtlUsageError` for an unknown key or a value the server would refuse.
    """
    key = key.lower()
    if key == "metadata":
        tags = [t.strip() for t in value.split(",") if t.strip()]
        return "set_metadata", {"FleetMetadata": tags}
    if key == "providerid":
        return "set_provider_id", {"ProviderId": value}
    if key == "ipmiaddr":
        try:
            address = str(ipaddress.IPv4Address(value)) if value else ""
        except ValueError:
            raise CtlUsageError(f"ipmiaddr {value!r} is not an IPv4 address") from None
        return "set_ipmi_addr", {"IPMIAddr": address}
    if key == "cabinet":
        if not value.isdigit() or not 0 <= int(value) <= 255:
            raise CtlUsageError(f"cabinet {value!r} is not an integer from 0 to 255")
        return "set_cabinet", {"Cabinet": int(value)}
    if key == "state":
        if value not in STATES:
            raise CtlUsageError(f"state {value!r} is not one of {', '.join(STATES)}")
        return "set_state", {"State": value}
    if key == "etcdtoken":
        return "set_etcd_cluster_token", {"EtcdClusterToken": value}
    raise CtlUsageError(
        f"unknown key {key!r}; use metadata, providerid, ipmiaddr, cabinet, state or etcdtoken")


def cmd_set(args: argparse.Namespace) -> int:
    """``set SERIAL KEY VALUE``."""
    action, body = set_request(args.key, args.value)
    return _mutation(args, args.serial, action, body, f"{args.key.lower()} set to {args.value!r}")


def cmd_override(args: argparse.Namespace) -> int:
    """``override SERIAL KEY VALUE``: one template/override key (e.g. ``CoreOSVersion``)."""
    if not args.key:
        raise CtlUsageError("the override key must not be empty")
    return _mutation(args, args.serial, "override", {"Overrides": {args.key: args.value}},
                     f"override {args.key} = {args.value!r}")


def cmd_reinstall(args: argparse.Namespace) -> int:
    """``reinstall SERIAL``: state ``configured``, disk data kept (mayu's reinstall)."""
    return _mutation(args, args.serial, "set_state", {"State": "configured"},
                     "will reinstall on its next boot (disk data kept)")


def cmd_mark_fresh(args: argparse.Namespace) -> int:
    """``mark-fresh SERIAL``: state ``configured``, disk data not kept."""
    return _mutation(args, args.serial, "mark_fresh", None,
                     "marked fresh: will reinstall from scratch on its next boot")


def cmd_approve(args: argparse.Namespace) -> int:
    """``approve SERIAL``: a ``pending`` host gets its profile and address."""
    return _mutation(args, args.serial, "approve", None,
                     "approved: profile and address assigned")


def add_body(serial: str, macs: Sequence[str], profile: str | None, address: str | None,
             force: bool) -> dict[str, Any]:
    """The ``POST /admin/hosts`` body of ``add`` (checked client-side)."""
    body: dict[str, Any] = {"Serial": serial.lower(), "MacAddresses": list(macs)}
    if profile:
        body["Profile"] = profile
    if address:
        try:
            body["InternalAddr"] = str(ipaddress.IPv4Address(address))
        except ValueError:
            raise CtlUsageError(f"--address {address!r} is not an IPv4 address") from None
    if force:
        body["Force"] = True
    return body


def cmd_add(args: argparse.Namespace) -> int:
    """``add SERIAL [--mac M]... [--profile P] [--address IP]``: pre-register a machine."""
    client = make_client(args)
    body = add_body(args.serial, args.mac or [], args.profile, args.address, args.force)
    reply = client.call("POST", "/admin/hosts", json.dumps(body).encode())
    record = reply.json() if reply.body else body
    if not isinstance(record, dict):
        raise CtlError("POST /admin/hosts did not answer a JSON object")

    def summary() -> str:
        return (f"{body['Serial']}: added (profile {text_of(field_of(record, 'Profile'))}, "
                f"address {text_of(field_of(record, 'InternalAddr'))})\n")

    emit(args, record, summary)
    return EXIT_OK


def cmd_move(args: argparse.Namespace) -> int:
    """``move SERIAL PROFILE [--force]``: another profile, within its quantity unless forced."""
    body: dict[str, Any] = {"Profile": args.profile}
    if args.force:
        body["Force"] = True
    return _mutation(args, args.serial, "move", body,
                     f"moved to profile {args.profile} (pinned)")


def cmd_remove(args: argparse.Namespace) -> int:
    """``remove SERIAL``: delete the host record; its address and profile slot are free."""
    client = make_client(args)
    headers = {"If-Match": args.if_match} if getattr(args, "if_match", None) else None
    serial = args.serial.lower()
    reply = client.call("DELETE", host_path(serial), b"", serial=args.serial, headers=headers)
    result = {"serial": serial, "action": "remove", "status": reply.status}
    emit(args, result, lambda: f"{serial}: removed (address and profile slot freed)\n")
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    """``history SERIAL``: the host's audit trail (git commits), newest first."""
    client = make_client(args)
    path = host_path(args.serial.lower(), "history")
    reply = client.request("GET", path)
    if reply.status in (404, 405) and HOST_MISSING_TEXT not in reply.text:
        raise CtlError(f"{client.server} has no history endpoint (mayu itself keeps none)")
    client.check(reply, "GET", path, serial=args.serial)
    entries = reply.json()
    if not isinstance(entries, list):
        raise CtlError(f"GET {path} did not answer a JSON array")

    def table() -> str:
        rows = [[last_boot_text(e.get("Time")), str(e.get("Commit", ""))[:12] or "-",
                 text_of(e.get("Author")), " ".join(str(e.get("Message", "")).split())]
                for e in entries if isinstance(e, dict)]
        return format_table(["TIME", "COMMIT", "AUTHOR", "MESSAGE"], rows)

    emit(args, entries, table)
    return EXIT_OK


def log_line_text(entry: Mapping[str, Any]) -> str:
    """One log line as ``ctl logs`` prints it: local time, source address, the line."""
    when = entry.get("time")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) \
        if isinstance(when, int | float) else "-"
    return f"{stamp}  {entry.get('ip') or '-'}  {entry.get('detail', '')}"


def cmd_logs(args: argparse.Namespace) -> int:
    """``logs SERIAL [--follow]``: the machine's log lines (an installer's syslog)."""
    client = make_client(args)
    serial = args.serial.lower()
    path = host_path(serial, "logs")
    reply = client.request("GET", path + (f"?since={args.since}" if args.since else ""))
    if reply.status in (404, 405) and HOST_MISSING_TEXT not in reply.text:
        raise CtlError(f"{client.server} keeps no log lines for {serial}: "
                       f"{_excerpt(reply.text.strip()) or 'no logs endpoint'}")
    client.check(reply, "GET", path, serial=args.serial)
    entries = reply.json()
    if not isinstance(entries, list):
        raise CtlError(f"GET {path} did not answer a JSON array")
    entries = [e for e in entries if isinstance(e, dict)]
    if not args.follow:
        emit(args, entries, lambda: "".join(log_line_text(e) + "\n" for e in entries))
        return EXIT_OK
    last = 0
    for entry in entries:
        _print_follow(args, entry)
        last = max(last, int(entry.get("seq") or 0))
    try:
        for event, _ident, data in client.stream(f"{path}?since={last}"):
            if event != "log":
                continue
            try:
                entry = json.loads(data)
            except ValueError:
                continue
            if isinstance(entry, dict):
                _print_follow(args, entry)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def _print_follow(args: argparse.Namespace, entry: Mapping[str, Any]) -> None:
    if getattr(args, "output", "table") == "json":
        print(json.dumps(entry, separators=(",", ":")), flush=True)
    else:
        print(log_line_text(entry), flush=True)


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (dotenv / os-release syntax): comments, ``export`` and quotes."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _read_env(path: str, *, required: bool) -> dict[str, str]:
    try:
        return parse_env_file(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        if required:
            raise CtlUsageError(f"{path}: {exc}") from None
        return {}


def boot_complete_body(serial: str, os_release: Mapping[str, str], env: Mapping[str, str],
                       update_versions: bool) -> dict[str, Any]:
    """The ``boot_complete`` body mayuctl sends (docs/reference/mayu-api.md).

    Without ``--update-versions`` only the serial; with it the OS version goes into
    ``CoreOSVersion`` (mayu) and, on Flatcar, ``FlatcarVersion`` too (mayu era C reads only
    that one; the published mayuctl never sent it, so the version was blanked), plus the component
    versions from the env files.
    """
    body: dict[str, Any] = {"Serial": serial}
    if not update_versions:
        return body
    version = os_release.get("VERSION", "")
    body["CoreOSVersion"] = version
    if os_release.get("ID") == "flatcar":
        body["FlatcarVersion"] = version
    for field_name, env_key in VERSION_ENV_KEYS:
        if env.get(env_key):
            body[field_name] = env[env_key]
    return body


def cmd_boot_complete(args: argparse.Namespace) -> int:
    """``boot-complete``: run on the node after it booted; the host goes ``running``.

    Reads ``SERIAL``, ``PXESTACK_URL`` and ``PXESTACK_TOKEN`` from ``/etc/mayu-env`` (the
    final config writes them); ``--serial``/``--server``/the admin token override them.
    """
    env = _read_env(args.mayu_env, required=args.serial is None)
    env.update(_read_env(args.yochu_env, required=False))
    serial = args.serial or env.get("SERIAL", "")
    if not serial:
        raise CtlUsageError(f"no SERIAL in {args.mayu_env} and no --serial given")
    os_release = _read_env(args.os_release, required=args.update_versions)
    body = boot_complete_body(serial, os_release, env, args.update_versions)
    client = make_client(args, fallback_server=env.get("PXESTACK_URL") or None,
                         fallback_token=env.get("PXESTACK_TOKEN") or None)
    reply = client.call("PUT", host_path(serial.lower(), "boot_complete"),
                        json.dumps(body).encode(), serial=serial)
    result = {"serial": serial.lower(), "action": "boot_complete", "status": reply.status,
              "etag": reply.headers.get("etag")}
    emit(args, result, lambda: f"{serial.lower()}: boot complete reported\n")
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    """``config show``: the server's provisioning settings (mayu's YAML schema)."""
    reply = make_client(args).call("GET", "/admin/mayu_config")
    if args.output == "table":
        sys.stdout.write(reply.text if reply.text.endswith("\n") else reply.text + "\n")
        return EXIT_OK
    try:
        data = yaml.safe_load(reply.text)
    except yaml.YAMLError as exc:
        raise CtlError(f"the server's config is not YAML: {exc}") from None
    emit(args, data, lambda: reply.text)
    return EXIT_OK


def cmd_config_set(args: argparse.Namespace) -> int:
    """``config set FILE``: replace the server's settings (mayuctl ``config --method set``)."""
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CtlUsageError(f"{args.file}: {exc}") from None
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CtlUsageError(f"{args.file} is not valid YAML: {exc}") from None
    reply = make_client(args).call("PUT", "/admin/mayu_config", text.encode(),
                                   content_type="text/plain; charset=utf-8")
    emit(args, {"action": "mayu_config", "status": reply.status},
         lambda: f"configuration from {args.file} accepted\n")
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    """``health``: the store's and git audit's health; exit 1 when degraded (HTTP 503)."""
    client = make_client(args)
    reply = client.request("GET", "/admin/health")
    if reply.status != 503:
        client.check(reply, "GET", "/admin/health")
    data = reply.json()

    def table() -> str:
        if not isinstance(data, dict):
            return json.dumps(data) + "\n"
        return format_pairs([(str(k), text_of(v)) for k, v in sorted(data.items())])

    emit(args, data, table)
    return EXIT_OK if reply.status == 200 else EXIT_FAILURE


def cmd_version(args: argparse.Namespace) -> int:
    """``version``: the client's version (mayuctl ``version``)."""
    emit(args, {"client": __version__}, lambda: f"pxestack ctl {__version__}\n")
    return EXIT_OK


# -- argument parsing ----------------------------------------------------------------------


def _run(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: a :class:`CtlError` becomes one ``pxestack ctl:`` line and its code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except CtlError as exc:
            print(f"pxestack ctl: {exc}", file=sys.stderr)
            return exc.exit_code

    run.__doc__ = handler.__doc__
    return run


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Options accepted both before and after the command (``ctl -o json list`` and
    ``ctl list -o json``).  SUPPRESS keeps a later parser from resetting an earlier value."""
    parser.add_argument(
        "--server", "-s", default=argparse.SUPPRESS, metavar="URL",
        help=f"admin API base URL (default ${SERVER_ENV} or {DEFAULT_SERVER})")
    parser.add_argument(
        "--token-file", default=argparse.SUPPRESS, metavar="FILE",
        help=f"file holding the admin bearer token (default: ${TOKEN_ENV}, else "
        f"./{DEFAULT_TOKEN_FILE} for a loopback server)")
    parser.add_argument(
        "--output", "-o", choices=("table", "json", "yaml"), default=argparse.SUPPRESS,
        help="output format (default table)")
    parser.add_argument("--timeout", type=float, default=argparse.SUPPRESS, metavar="SECONDS",
                        help="per-request timeout (default 30)")
    parser.add_argument("--ca-file", "--cacert", dest="cacert", default=argparse.SUPPRESS,
                        metavar="FILE",
                        help="CA certificates to trust for an https:// server (default: "
                        "the system's)")
    parser.add_argument("--cert-file", default=argparse.SUPPRESS, metavar="FILE",
                        help="client certificate (PEM) to present to an https:// server")
    parser.add_argument("--key-file", default=argparse.SUPPRESS, metavar="FILE",
                        help="the client certificate's key (default: in --cert-file)")


def register(subparsers: Any) -> None:
    """Add the ``ctl`` subcommand and its commands."""
    parser = subparsers.add_parser(
        "ctl",
        help="manage hosts through the admin API (mayuctl's commands)",
        description="Manage provisioned hosts through the admin API.  Every mayuctl command "
        "has an equivalent; see docs/cli.md.  Exit status: 0 ok, 1 server or transport "
        "error, 2 usage error, 3 the host does not exist.",
    )
    _add_common(parser)
    parser.set_defaults(server=None, token_file=None, output="table", timeout=30.0, cacert=None,
                        cert_file=None, key_file=None)
    commands = parser.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str,
                **kwargs: Any) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text, **kwargs)
        _add_common(sub)
        sub.set_defaults(func=_run(handler))
        return sub

    listing = command("list", cmd_list, "list every host (mayuctl's columns; --wide for "
                      "pxestack's)")
    listing.add_argument("--fields", metavar="A,B,...",
                         help="columns to show; any of "
                         f"{', '.join({**MAYU_LIST_FIELDS, **LIST_FIELDS})}")
    listing.add_argument("--wide", action="store_true",
                         help="pxestack's columns (serial, address, profile, state, last boot, "
                         "tags, hostname, MACs, OS version), sorted by serial")
    listing.add_argument("--no-legend", action="store_true", help="omit the header line")
    listing.add_argument("--state", choices=(*STATES, "pending"),
                         help="only hosts in this state")
    listing.add_argument("--profile", metavar="NAME", help="only hosts with this profile")

    status = command("status", cmd_status, "show every field of one host")
    status.add_argument("serial")

    setter = command("set", cmd_set, "set one field of a host (metadata, providerid, "
                     "ipmiaddr, cabinet, state, etcdtoken)")
    setter.add_argument("serial")
    setter.add_argument("key", metavar="KEY",
                        help="metadata, providerid, ipmiaddr, cabinet, state or etcdtoken")
    setter.add_argument("value", metavar="VALUE",
                        help="metadata is a comma list of k=v tags; state is one of "
                        + ", ".join(STATES))

    override = command("override", cmd_override,
                       "set one per-host override (e.g. CoreOSVersion 3975.2.0)")
    override.add_argument("serial")
    override.add_argument("key", metavar="KEY")
    override.add_argument("value", metavar="VALUE")

    reinstall = command("reinstall", cmd_reinstall,
                        "reinstall on the next boot, keeping disk data (state configured)")
    reinstall.add_argument("serial")
    fresh = command("mark-fresh", cmd_mark_fresh,
                    "reinstall from scratch on the next boot (state configured, disk wiped)")
    fresh.add_argument("serial")
    approve = command("approve", cmd_approve,
                      "let a pending host enrol: assign its profile and address "
                      "(provision.enrolment: approve)")
    approve.add_argument("serial")
    remove = command("remove", cmd_remove,
                     "delete a host record; its address and profile slot are free again")
    remove.add_argument("serial")
    adder = command("add", cmd_add,
                    "pre-register a machine: its serial, MACs, profile and address (any "
                    "not given are chosen as at its first contact)")
    adder.add_argument("serial")
    adder.add_argument("--mac", action="append", metavar="MAC",
                       help="a MAC address of the machine (repeat for each NIC)")
    adder.add_argument("--profile", metavar="NAME",
                       help="the profile, pinned (default: the first with a free slot)")
    adder.add_argument("--address", metavar="IP",
                       help="InternalAddr, inside network.ip_range (default: the lowest free)")
    adder.add_argument("--force", action="store_true",
                       help="take the profile even if it holds its quantity already")
    mover = command("move", cmd_move,
                    "give a host another profile (pinned; refused when the profile is full "
                    "unless --force)")
    mover.add_argument("serial")
    mover.add_argument("profile", metavar="PROFILE")
    mover.add_argument("--force", action="store_true",
                       help="move even if the profile holds its quantity already")
    for sub in (setter, override, reinstall, fresh, approve, remove, mover):
        sub.add_argument("--if-match", metavar="ETAG",
                         help="only change the host if its record still has this ETag "
                         "(from 'status'); HTTP 412 otherwise")

    boot = command("boot-complete", cmd_boot_complete,
                   "on a node: report a completed boot (state running)")
    boot.add_argument("--update-versions", action="store_true",
                      help="also send the OS and component versions")
    boot.add_argument("--serial", help="default: SERIAL from the mayu-env file")
    boot.add_argument("--mayu-env", default="/etc/mayu-env", metavar="FILE",
                      help="SERIAL, PXESTACK_URL, PXESTACK_TOKEN (default /etc/mayu-env)")
    boot.add_argument("--os-release", default="/etc/os-release", metavar="FILE")
    boot.add_argument("--yochu-env", default="/etc/yochu-env", metavar="FILE",
                      help="optional component versions (mayu's yochu)")

    history = command("history", cmd_history, "show a host's audit trail (git commits)")
    history.add_argument("serial")

    logs = command("logs", cmd_logs, "show a machine's log lines (its installer's syslog, "
                   "with the syslog extension)")
    logs.add_argument("serial")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new lines as they arrive (Ctrl-C to stop)")
    logs.add_argument("--since", type=int, default=0, metavar="SEQ",
                      help="only lines after this sequence number")

    config = command("config", lambda _: EXIT_USAGE, "show or replace the server's settings")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION",
                                            required=True)
    show = config_commands.add_parser("show", help="print the settings (mayu's YAML schema)")
    _add_common(show)
    show.set_defaults(func=_run(cmd_config_show))
    replace = config_commands.add_parser("set", help="replace the settings from a YAML file")
    _add_common(replace)
    replace.add_argument("file", metavar="FILE")
    replace.set_defaults(func=_run(cmd_config_set))

    command("health", cmd_health, "show store and git-audit health (exit 1 when degraded)")
    command("version", cmd_version, "print the client version")


__all__ = [
    "DEFAULT_LIST_FIELDS",
    "DEFAULT_SERVER",
    "DEFAULT_TOKEN_FILE",
    "EXIT_NOT_FOUND",
    "LIST_FIELDS",
    "MAYU_LIST_FIELDS",
    "STATES",
    "WIDE_LIST_FIELDS",
    "AdminClient",
    "CtlError",
    "CtlUsageError",
    "HostNotFoundError",
    "Reply",
    "add_body",
    "boot_complete_body",
    "format_table",
    "last_boot_text",
    "list_columns",
    "mayu_time_text",
    "parse_env_file",
    "register",
    "set_request",
]
