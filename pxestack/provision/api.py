"""twisted.web resources: mayu's machine-facing endpoints and admin API over a Provisioner.

Paths, methods, bodies and status codes are mayu's (reference/mayu-api.md) so that existing
installers, scripts and ``mayuctl`` keep working:

==========================================  ====================================================
``GET /ipxebootscript[?serial&uuid&mac]``   iPXE script (chain, installer, RAM boot, local boot)
``GET /first-stage-script/<serial>``        enrol + installer script (``?uuid=`` fallback)
``GET /first-stage-ignition.json``          Ignition config of the live installer system
``POST /final-ignition-config.json``        host data -> ``installing`` -> final Ignition config
``GET /first-stage-cloudconfig.yaml``       cloud-config of the live installer (cloud-config
                                            profiles)
``POST /final-cloud-config.yaml``           host data -> ``installing`` -> last-stage
                                            cloud-config (cloud-config profiles)
``GET /ignition?serial&uuid``               the machine's Ignition config (flows flatcar-pxe,
                                            fcos-disk, fcos-pxe; mayu era C)
``GET /installer-ignition?serial&uuid``     the fcos-disk live installer's Ignition config
``GET /script/<serial>[?uuid=]``            a generic profile's script
``GET|HEAD /images/[<serial>/]<file>``      kernel, initrd, install image of the host's flow
                                            (Range supported)
``GET /admin/hosts``                        JSON array of every host record
``GET /admin/host/<serial>``                one record, with its ``ETag``
``GET /admin/host/<serial>/history``        the host's audit trail (git commits)
``GET /admin/host/<serial>/logs[?since=]``   the machine's log lines (an installer's syslog,
                                            reported by an extension); SSE with
                                            ``Accept: text/event-stream``
``PUT /admin/host/<serial>/<action>``       set_installed, boot_complete, set_state, mark_fresh,
                                            set_metadata, set_provider_id, set_ipmi_addr,
                                            set_cabinet, set_etcd_cluster_token, override,
                                            approve, move
``POST /admin/hosts``                       pre-register a machine (201)
``DELETE /admin/host/<serial>``             remove the host (address and profile slot freed)
``GET|PUT /admin/mayu_config``              the provisioning settings in mayu's YAML schema
``GET /admin/health``                       store and git-audit health (503 when degraded)
``GET /admin/images``                       cached image versions, running and recent fetches
``POST /admin/images/fetch``                start a release fetch (``{"os": "flatcar",
                                            "channel": "stable", "version": "current"}``);
                                            202, 409 when the same one is running
==========================================  ====================================================

Routing: which of these paths exist, their methods, whether they take a body and who may
call them is the OpenAPI document's (docs/openapi.yaml, read by
:mod:`pxestack.provision.routes`).  Each resource below is mounted at one first path segment
and answers the document's operations under it by ``operationId`` (its ``operations``
table); anything else is 404, 405 or 501, and a documented operation without an answer stops
the service from being built.

Mutations answer 202 with an empty body (mayu) plus the record's new ``ETag``; an unknown
serial is 400 ``host doesn't exist`` (mayu); an illegal transition is 409; a stale
``If-Match`` is 412.

Enrolment: a request that would create a record (a first contact) passes the
:class:`~pxestack.provision.enrolment.EnrolmentGate` first (``provision.enrolment``,
per-source rate), in the reactor thread and before any store work: 403 or 429 create
nothing.  A ``pending`` host gets a wait-and-retry iPXE script and 403 elsewhere.

Authentication (mayu had none; it relied on where its API port listened, and TLS):

* ``/admin`` needs one of: ``Authorization: Bearer`` with an admin token (the single
  ``provision.api.token``, named ``admin``, or one of the named ``provision.api.tokens``);
  a client certificate verified against ``provision.api.client_ca_file`` on the TLS
  listener (``cert:<subject>``); a source address in ``provision.api.trusted_networks``
  (``trusted:<address>``, logged at info level).  A bearer token that matches no admin
  token is refused, whatever the source address.  With none of these configured the
  service refuses to start unless the admin API listens on loopback only, and then
  ``/admin`` is open (``local:<address>``).  With ``http.admin_listen`` set, admin
  requests on any other listener get 403 (machine callbacks are not admin requests).
* The actor found is the author of every audit commit the request makes
  (:func:`pxestack.provision.hoststore.acting_as`) and is named in the request's log line.
* Machine callbacks (host data, set_installed, boot_complete) need the per-host token that
  was rendered into that host's installer script and final config (``Authorization:
  Bearer`` or ``?token=``), or the admin token.  ``provision.api.accept_unauthenticated_callbacks``
  accepts mayu's unauthenticated callbacks during a migration (off by default).
* Bodies are capped (``max_body_bytes`` -> 413) and JSON nesting is capped (``max_json_depth``).
  Each resource declares its limit through ``request_body_limit(method)``; pxestack's HTTP
  site reads it as soon as a request head is parsed, so a body over it (or any body to a
  method the resource does not take one with) is refused before it is read, and accepted
  bodies stay in memory.  :meth:`_Base.body` applies the same limit again for sites that
  do not.

Store work (file writes, fsync, git commits) runs through *run*, by default a dedicated
thread pool, so the reactor keeps answering DHCP/TFTP while a commit is fsynced; the
store's lock keeps enrolment exact.
"""

from __future__ import annotations

import functools
import hmac
import json
import time
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any, ClassVar, TypeVar

import yaml
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from pxestack.bootevents import ADMIN, LOG, BootEvent, BootEventRecorder, normal_mac, normal_serial
from pxestack.errors import ConfigError
from pxestack.http.events import EventFeed
from pxestack.http.site import ADMIN_LISTENER, listener_of, redact_uri
from pxestack.http.tls import peer_subject
from pxestack.provision.bootconfig import MAX_CONFIG_PATH, config_request, render_loader_config
from pxestack.provision.enrolment import Admission, EnrolmentGate, EnrolmentRefused
from pxestack.provision.flows import FLATCAR_IMAGE_FILES, Flow
from pxestack.provision.hoststore import (
    HostNotFound,
    PreconditionFailed,
    StoreError,
    StoreHealth,
    StoreReadOnly,
    Versioned,
    acting_as,
)
from pxestack.provision.imagefetch import (
    FetchBusy,
    FetchConflict,
    FetchUsageError,
    ImageFetches,
)
from pxestack.provision.machine import Event, IllegalTransition
from pxestack.provision.model import Host, HostState
from pxestack.provision.provisioner import (
    BadRequest,
    Conflict,
    PendingLimitReached,
    Provisioner,
)
from pxestack.provision.routes import (
    Auth,
    Found,
    Route,
    RouteError,
    RouteTable,
    WrongMethod,
    load_document,
    load_routes,
)
from pxestack.provision.templates import TemplateRenderError

log = Logger()

#: ``run(work) -> Deferred``: how blocking store work is executed (thread pool by default).
Runner = Callable[[Callable[[], Any]], "defer.Deferred[Any]"]
#: Turns the result of store work into the answer's body (and sets its headers).
Writer = Callable[[Request, Any], bytes]
_T = TypeVar("_T")
#: Answers one documented operation: ``(request, route, path parameters) -> body``.
Handler = Callable[[Request, "Route", dict[str, str]], "bytes | int"]

_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"
_YAML = b"text/yaml; charset=utf-8"
#: The request attribute that carries the authenticated actor to :meth:`_Base.respond`.
_ACTOR = "pxestack_actor"
#: The name of the single ``provision.api.token`` in the audit.
SINGLE_TOKEN_NAME = "admin"  # noqa: S105 - a name, not a secret


def _loggable(request: Request) -> str:
    """``METHOD /path`` for a log line: tokens redacted, control characters escaped, short."""
    text = f"{request.method.decode('latin-1')} {redact_uri(request.uri)}"
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    return text if len(text) <= 300 else text[:297] + "..."


def _client_host(request: Request) -> str | None:
    """The client's IP address (None when the transport has none)."""
    host = getattr(request.getClientAddress(), "host", None)
    return str(host) if host is not None else None


def request_actor(request: Request) -> str | None:
    """The actor :meth:`_Base.require_admin` or :meth:`_Base.require_machine` found."""
    actor = getattr(request, _ACTOR, None)
    return actor if isinstance(actor, str) else None


def synchronous_runner(work: Callable[[], Any]) -> defer.Deferred[Any]:
    """Run *work* at once in the calling thread (tests; embedders without threads)."""
    return defer.maybeDeferred(work)


class HttpError(Exception):
    """An error answer: status code and plain-text body."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def json_too_deep(text: str, limit: int) -> bool:
    """Whether *text* nests arrays/objects deeper than *limit* (checked before parsing).

    A deeply nested body must not reach the recursive parser, which recurses once per
    level: a few kilobytes of brackets would exhaust its stack.
    """
    depth = 0
    in_string = False
    escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


class _Base(Resource):
    """Shared plumbing: body limits, JSON, auth, running store work, mapping errors."""

    def __init__(self, api: ProvisioningApi) -> None:
        # The base is named, not reached through super(): its __init__ is unannotated, and
        # the strict check accepts calls into twisted.web only when it sees whose they are.
        Resource.__init__(self)
        self.api = api

    # -- input -----------------------------------------------------------------------------

    def body(self, request: Request) -> bytes:
        """The request body, at most ``max_body_bytes`` (else 413)."""
        limit = self.api.max_body_bytes
        declared = request.getHeader(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HttpError(http.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        content = request.content
        if content is None:
            return b""
        content.seek(0)
        data: bytes = content.read(limit + 1)
        if len(data) > limit:
            raise HttpError(http.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        return data

    def json_body(self, request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
        """The body as a JSON object (depth-checked; 400 when it is not one)."""
        data = self.body(request)
        if not data.strip():
            if allow_empty:
                return {}
            raise HttpError(http.BAD_REQUEST, "empty body")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(http.BAD_REQUEST, "body is not UTF-8") from None
        if json_too_deep(text, self.api.max_json_depth):
            raise HttpError(http.BAD_REQUEST, "JSON nested too deeply")
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise HttpError(http.BAD_REQUEST, "body is not valid JSON") from None
        if not isinstance(value, dict):
            raise HttpError(http.BAD_REQUEST, "body must be a JSON object")
        return value

    def path_serial(self, request: Request, params: Mapping[str, str]) -> str:
        """The machine named by ``/<endpoint>/<serial>[?uuid=]``."""
        serial: str = self.api.provisioner.identity(params["serial"], self.arg(request, b"uuid"))
        return serial

    @staticmethod
    def arg(request: Request, name: bytes) -> str | None:
        """The first query argument *name* as text, or ``None``."""
        values = (request.args or {}).get(name)
        if not values:
            return None
        try:
            return str(values[0].decode("utf-8"))
        except UnicodeDecodeError:
            raise HttpError(http.BAD_REQUEST, f"{name.decode()} is not UTF-8") from None

    @staticmethod
    def bearer(request: Request) -> str | None:
        """The bearer token of the ``Authorization`` header (RFC 6750 §2.1), or ``None``."""
        header = request.getHeader(b"authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        try:
            return str(token.strip().decode("ascii"))
        except UnicodeDecodeError:
            return None

    def authenticate(self, request: Request) -> tuple[str, str | None] | None:
        """Who sends *request* as an admin: ``(actor, trusted network or None)``, or None.

        A bearer token is checked first (and, when it matches no admin token, nothing else
        is), then the verified client certificate, then the source address.
        """
        api = self.api
        host = _client_host(request)
        if api.open_admin:
            return f"local:{host}", None
        presented = self.bearer(request)
        if presented is not None:
            matched = None
            for name, token in api.admin_tokens.items():
                if hmac.compare_digest(presented.encode(), token.encode()):
                    matched = name
            return (matched, None) if matched is not None else None
        if api.client_certificates:
            subject = peer_subject(getattr(request.channel, "transport", None))
            if subject:
                return f"cert:{subject}", None
        network = api.trusted_network_of(host) if host is not None else None
        if network is not None:
            return f"trusted:{host}", network
        return None

    def on_admin_listener(self, request: Request) -> bool:
        """Whether *request* may reach the admin API on the listener it arrived on."""
        return not self.api.admin_listener_only or listener_of(request) == ADMIN_LISTENER

    def is_admin(self, request: Request) -> bool:
        """Whether the request authenticates as an admin (see :meth:`authenticate`); its
        actor is recorded for the audit."""
        if not self.on_admin_listener(request):
            return False
        found = self.authenticate(request)
        if found is None:
            return False
        setattr(request, _ACTOR, found[0])
        return True

    def require_admin(self, request: Request) -> str:
        """The admin actor of *request*; 403 on the wrong listener, 401 without credentials.

        The action is logged with its actor: at info level for changes and for every
        request from a trusted network, at debug level for other reads.
        """
        if not self.on_admin_listener(request):
            log.info("refusing admin request from {client} on the machine listener "
                     "(the admin API is on http.admin_listen): {request}",
                     client=_client_host(request), request=_loggable(request))
            raise HttpError(http.FORBIDDEN,
                            "the admin API is served on the admin listener (http.admin_listen)")
        found = self.authenticate(request)
        if found is None:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="pxestack"')
            raise HttpError(http.UNAUTHORIZED, "admin token required")
        actor, network = found
        setattr(request, _ACTOR, actor)
        if network is not None:
            log.info("admin request from trusted network {network}: {request} (as {actor})",
                     network=network, request=_loggable(request), actor=actor)
        elif request.method in (b"GET", b"HEAD"):
            log.debug("admin request by {actor}: {request}", actor=actor,
                      request=_loggable(request))
        else:
            log.info("admin request by {actor}: {request}", actor=actor,
                     request=_loggable(request))
        return actor

    def require_machine(self, request: Request, serial: str) -> None:
        """401 unless the request carries *serial*'s callback token (or admin, or compat).

        The actor is ``machine:<serial>`` unless admin credentials were used.
        """
        if not self.api.open_admin and self.is_admin(request):
            return
        setattr(request, _ACTOR, f"machine:{serial}")
        if self.api.accept_unauthenticated_callbacks or self.api.open_admin:
            return
        found = self.api.provisioner.get(serial)
        presented = self.bearer(request) or self.arg(request, b"token")
        # An unknown serial answers exactly like a wrong token, so serials cannot be probed.
        if found is None or not self.api.provisioner.token_matches(found.host, presented):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="pxestack-machine"')
            raise HttpError(http.UNAUTHORIZED, "host callback token required")

    # -- enrolment -------------------------------------------------------------------------

    def admit(self, request: Request, serial: str) -> bool:
        """Apply ``provision.enrolment`` to a request that may enrol *serial*.

        Returns whether a new record must be ``pending``; raises 403/429 when the first
        contact is refused.  A known serial is not a first contact and always passes.
        """
        gate = self.api.enrolment
        if gate is None or self.api.provisioner.get(serial) is not None:
            return False
        client = request.getClientAddress()
        source = str(getattr(client, "host", "") or "")
        try:
            admission = gate.admit(source, serial, self.api.clock())
        except EnrolmentRefused as refused:
            if refused.retry_after is not None:
                request.setHeader(b"Retry-After", str(refused.retry_after).encode())
            raise HttpError(refused.code, refused.message) from None
        return admission is Admission.PENDING

    def admit_boot(
        self, request: Request, serial: str | None, uuid: str | None, mac: str | None
    ) -> bool:
        """:meth:`admit` for ``/ipxebootscript``, which enrols only a new, nameable machine."""
        if self.api.enrolment is None or not (serial or uuid):
            return False
        prov = self.api.provisioner
        if prov.host_for_boot(serial or None, uuid or None, mac or None) is not None:
            return False
        try:
            identity = prov.identity(serial or "", uuid or None)
        except BadRequest:
            return False  # not enrolled anyway (Provisioner.boot_host)
        return self.admit(request, identity)

    # -- output ----------------------------------------------------------------------------

    def respond(
        self,
        request: Request,
        work: Callable[[], _T],
        write: Callable[[Request, _T], bytes],
    ) -> int:
        """Run *work* via the runner; *write* turns its result into the body."""
        finished = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))
        actor = request_actor(request)

        def attributed() -> _T:
            with acting_as(actor):
                return work()

        def ok(result: _T) -> None:
            if finished:
                return
            try:
                body = write(request, result)
            except Exception as exc:  # a bug in a writer: answer 500, log it
                self._fail(request, exc)
                return
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            if not finished:
                self._fail(request, failure)

        self.api.run(attributed).addCallbacks(ok, failed)
        return NOT_DONE_YET

    def _fail(self, request: Request, failure: Failure | Exception) -> None:
        code, message = self.error_of(failure)
        request.setResponseCode(code)
        exc = failure.value if isinstance(failure, Failure) else failure
        request.write(_error_body(request, exc, message))
        request.finish()

    @staticmethod
    def error_of(failure: Failure | Exception) -> tuple[int, str]:
        """Map an exception to mayu's status codes (and pxestack's 409/412/503).

        *failure* is a :class:`Failure`, or the exception an ``except`` block is handling
        (an unexpected one is logged with the traceback being handled).
        """
        exc = failure.value if isinstance(failure, Failure) else failure
        if isinstance(exc, HttpError):
            return exc.code, exc.message
        if isinstance(exc, HostNotFound):
            return http.BAD_REQUEST, "host doesn't exist"
        if isinstance(exc, (BadRequest, FetchUsageError)):
            log.info("request refused (400): {error}", error=str(exc))
            return http.BAD_REQUEST, str(exc)
        if isinstance(exc, FetchConflict):
            return http.CONFLICT, str(exc)
        if isinstance(exc, FetchBusy):
            return http.SERVICE_UNAVAILABLE, str(exc)
        if isinstance(exc, IllegalTransition):
            return http.CONFLICT, str(exc)
        if isinstance(exc, Conflict):
            log.info("request refused (409): {error}", error=str(exc))
            return http.CONFLICT, str(exc)
        if isinstance(exc, PreconditionFailed):
            return http.PRECONDITION_FAILED, f"{exc} (current ETag {exc.current_etag})"
        if isinstance(exc, StoreReadOnly):
            return http.SERVICE_UNAVAILABLE, str(exc)
        if isinstance(exc, PendingLimitReached):
            log.info("enrolment refused: {error}", error=str(exc))
            return http.SERVICE_UNAVAILABLE, str(exc)
        if isinstance(exc, TemplateRenderError):
            log.error("rendering failed: {error}", error=str(exc))
            return http.INTERNAL_SERVER_ERROR, f"rendering failed: {exc}"
        if isinstance(exc, StoreError) and getattr(exc, "conflict", False):
            # A shared store refused a claim another server made first (profile, address).
            log.info("request refused (409): {error}", error=str(exc))
            return http.CONFLICT, str(exc)
        if isinstance(exc, StoreError):
            log.error("store error: {error}", error=str(exc))
            return http.INTERNAL_SERVER_ERROR, str(exc)
        log.failure("unexpected error in the provisioning API",
                    failure if isinstance(failure, Failure) else None)
        return http.INTERNAL_SERVER_ERROR, "internal error"

    def guarded(self, request: Request, handler: Callable[[], bytes | int]) -> bytes | int:
        """Run a synchronous handler, turning raised errors into answers."""
        try:
            return handler()
        except Exception as exc:
            code, message = self.error_of(exc)
            request.setResponseCode(code)
            return _error_body(request, exc, message)


def _error_body(request: Request, exc: BaseException | None, message: str) -> bytes:
    """The body of an error answer: text, or JSON with the reason for a read-only store.

    mayu's clients read errors as text; a refusal because the cluster directory is damaged
    is pxestack's own and says why in JSON, like ``/admin/health``.
    """
    if isinstance(exc, StoreReadOnly):
        request.setHeader(b"Content-Type", _JSON)
        body = {"error": "the host store is read-only", "read_only": True, "reason": message}
        return json.dumps(body, indent=2).encode() + b"\n"
    request.setHeader(b"Content-Type", _TEXT)
    return message.encode() + b"\n"


def _text(content_type: bytes) -> Callable[[Request, str], bytes]:
    def write(request: Request, text: str) -> bytes:
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Cache-Control", b"no-store")
        return str(text).encode("utf-8")

    return write


def _accepted(request: Request, result: object) -> bytes:
    """mayu's mutation answer: 202 and an empty body (plus the new ETag)."""
    request.setResponseCode(http.ACCEPTED)
    etag = getattr(result, "etag", None)
    if isinstance(etag, str):
        request.setHeader(b"ETag", etag.encode())
    return b""


class _Routed(_Base):
    """A resource mounted at one first path segment that answers the documented routes under
    it (:mod:`pxestack.provision.routes`) and nothing else.

    A subclass names its segment and maps each ``operationId`` it answers to one of its
    methods (:attr:`operations`); the method is called as ``handler(request, route,
    params)`` after the router has checked the caller.  A documented path with another
    method raises twisted.web's ``UnsupportedMethod`` (405 with ``Allow``, or 501); a path
    the document does not list is 404 ``not found``.
    """

    isLeaf = True
    #: The first path segment this resource is mounted at.
    segment: str
    #: ``operationId`` -> the name of the method that answers it.
    operations: ClassVar[Mapping[str, str]] = {}

    @functools.cached_property
    def table(self) -> RouteTable:
        """The documented routes under :attr:`segment`."""
        return RouteTable(r for r in self.api.routes if r.first_segment == self.segment)

    def check_routes(self) -> None:
        """:class:`RouteError` unless every documented route here has its method
        (:meth:`ProvisioningApi.children` checks each resource it builds)."""
        for route in self.table.routes:
            name = self.operations.get(route.operation_id)
            if name is None or not callable(getattr(self, name, None)):
                raise RouteError(
                    f"{route.operation_id} ({route.method.decode()} {route.template}) is "
                    f"documented but {type(self).__name__} does not answer it"
                )

    @property
    def routes(self) -> list[Route]:
        """The documented routes this resource answers."""
        return list(self.table.routes)

    def request_body_limit(self, method: bytes) -> int:
        """The largest body this resource takes with *method*: ``max_body_bytes`` when one
        of its documented operations takes a body with it, 0 for every other method."""
        return self.table.body_limit(method, self.api.max_body_bytes)

    def render(self, request: Request) -> bytes | int:
        """Route *request* by its method and path (see the class documentation)."""
        segments = [self.segment, *(p.decode("utf-8", "replace") for p in request.postpath or [])]
        found = self.table.lookup(request.method, segments)
        if isinstance(found, WrongMethod):
            raise UnsupportedMethod(list(found.allowed))
        return self.guarded(request, lambda: self._answer(request, found))

    def _answer(self, request: Request, found: Found | None) -> bytes | int:
        if found is None:
            if self.table.guarded_by_admin:
                self.require_admin(request)  # an unknown admin path tells strangers nothing
            raise HttpError(http.NOT_FOUND, "not found")
        route, params = found.route, found.params
        if route.auth is Auth.ADMIN:
            self.require_admin(request)
        elif route.auth is Auth.MACHINE and "serial" in params:
            self.require_machine(request, params["serial"].lower())
        handler: Handler = getattr(self, self.operations[route.operation_id])
        return handler(request, route, params)


# -- machine-facing --------------------------------------------------------------------------


class BootScriptResource(_Routed):
    """``GET /ipxebootscript``: without a query, a chain script that identifies the machine."""

    segment = "ipxebootscript"
    operations = {"getBootScript": "boot_script"}

    def boot_script(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """Pick the script for the machine named by ``serial``/``uuid``/``mac``.

        A new machine that names itself (serial or UUID) is enrolled here, so that its
        first script already belongs to its profile's OS flow (:meth:`Provisioner.boot_host`).
        """
        serial = self.arg(request, b"serial")
        uuid = self.arg(request, b"uuid")
        mac = self.arg(request, b"mac")
        identified = any(v is not None for v in (serial, uuid, mac))
        prov = self.api.provisioner
        pending = self.admit_boot(request, serial, uuid, mac)

        client = _client_host(request)

        def work() -> str:
            host = prov.boot_host(serial or None, uuid or None, mac or None, pending=pending)
            if identified and (host is not None or mac):
                self.api.step("script", serial=host.serial if host is not None else None,
                              mac=mac or None, ip=client)
            return prov.boot_script(host, identified)

        return self.respond(request, work, _text(_TEXT))


class LoaderConfigResource(_Routed):
    """``GET /grub/grub.cfg[-01-<mac>]``, ``GET /pxelinux.cfg/01-<mac>`` (also under
    ``/pxelinux/``, for PXELINUX's HTTP path prefix): the GRUB and PXELINUX configs the TFTP
    source serves (:mod:`pxestack.provision.bootconfig`)."""

    operations = {
        "getGrubConfig": "loader_config",
        "getPxelinuxConfig": "loader_config",
        "getPxelinuxConfigUnderPrefix": "loader_config",
    }

    def __init__(self, api: ProvisioningApi, prefix: str) -> None:
        self.segment = prefix
        super().__init__(api)

    def loader_config(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """The config the path names; 404 for any other path."""
        name = params["file"]
        if not name.isascii():
            raise HttpError(http.NOT_FOUND, "no such config")
        path = "/".join([*route.segments[:-1], name])
        if path.startswith("pxelinux/"):
            path = path.removeprefix("pxelinux/")
        found = config_request(path) if len(path) <= MAX_CONFIG_PATH else None
        if found is None:
            raise HttpError(http.NOT_FOUND, "no such config")
        prov = self.api.provisioner

        def work() -> str:
            return render_loader_config(prov, found)

        return self.respond(request, work, _text(_TEXT))


class FirstStageScriptResource(_Routed):
    """``GET /first-stage-script/<serial>``: enrol the machine, return its installer script."""

    segment = "first-stage-script"
    operations = {"getFirstStageScript": "first_stage_script"}

    def first_stage_script(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """mayu's first contact (era B)."""
        prov = self.api.provisioner
        serial = self.path_serial(request, params)
        pending = self.admit(request, serial)

        def work() -> str:
            versioned, _created = prov.first_contact(serial, pending=pending)
            host = versioned.host
            _refuse_pending(host)
            flow = prov.flow_of(host)
            if not flow.uses_first_stage:
                raise HttpError(
                    http.CONFLICT, f"this host's profile uses flow {flow.name}, not mayu's"
                )
            if host.state in (HostState.INSTALLED, HostState.RUNNING):
                # The per-host token is only handed to a machine expected to install;
                # an admin marks the host configured (or fresh) to reinstall it.
                raise IllegalTransition(host.state, Event.HOST_DATA)
            return prov.render_first_stage_script(host)

        return self.respond(request, work, _text(b"text/x-shellscript; charset=utf-8"))


class FirstStageIgnitionResource(_Routed):
    """``GET /first-stage-ignition.json``: the live installer system's Ignition config."""

    segment = "first-stage-ignition.json"
    operations = {"getFirstStageIgnition": "first_stage_ignition"}

    def first_stage_ignition(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """The same document for every machine."""
        return self.respond(request, self.api.provisioner.render_first_stage_ignition, _text(_JSON))


class FirstStageCloudConfigResource(_Routed):
    """``GET /first-stage-cloudconfig.yaml``: the live installer's cloud-config (profiles
    with ``config_format: cloud-config``; mayu baked it into its initrd)."""

    segment = "first-stage-cloudconfig.yaml"
    operations = {"getFirstStageCloudConfig": "first_stage_cloudconfig"}

    def first_stage_cloudconfig(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """The same document for every machine."""
        render = self.api.provisioner.render_first_stage_cloudconfig
        return self.respond(request, render, _text(_YAML))


class HostDataResource(_Routed):
    """``POST /final-ignition-config.json`` or ``POST /final-cloud-config.yaml`` (mayu's two
    paths): the installer's host data; returns the final config of the host's flow.

    A host whose profile uses the other format gets 409 naming the right path.  The
    documented security (the machine's token or an admin) is checked here, not by the
    router: the serial is in the body, and mayu's compatibility mode may enrol the machine.
    """

    operations = {"postHostData": "host_data", "postHostDataCloudConfig": "host_data"}

    def __init__(self, api: ProvisioningApi, config_format: str = "ignition") -> None:
        self.config_format = config_format
        self.segment = (
            "final-cloud-config.yaml" if config_format == "cloud-config"
            else "final-ignition-config.json"
        )
        super().__init__(api)

    def host_data(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """Record MACs/NIC/IPMI, go ``installing``, answer the final Ignition config."""
        payload = self.json_body(request)
        prov = self.api.provisioner
        raw = payload.get("Serial")
        if not isinstance(raw, str) or not raw.strip():
            raise BadRequest("no serial ? :/")
        serial = prov.identity(raw, payload.get("UUID") or self.arg(request, b"uuid"))
        pending = False
        if prov.get(serial) is not None:
            self.require_machine(request, serial)
        elif self.is_admin(request):
            pass
        elif not self.api.accept_unauthenticated_callbacks:
            # A token exists only once the machine is enrolled (first-stage script).
            raise HttpError(http.UNAUTHORIZED, "host callback token required")
        else:
            # mayu compatibility enrols here: the enrolment policy applies as well.
            pending = self.admit(request, serial)
        if self.api.open_admin or request_actor(request) is None:
            setattr(request, _ACTOR, f"machine:{serial}")

        def work() -> str:
            versioned, _ = prov.first_contact(serial, pending=pending)
            _refuse_pending(versioned.host)
            flow = prov.flow_of(versioned.host)
            if flow.config_format != self.config_format:
                raise HttpError(
                    http.CONFLICT,
                    f"this host's profile uses flow {flow.name}: POST /{flow.host_data_path}",
                )
            _host, config = prov.host_data(payload, serial_hint=serial)
            return config

        content = _YAML if self.config_format == "cloud-config" else _JSON
        return self.respond(request, work, _text(content))


def _refuse_pending(host: Host) -> None:
    """403 for a host that waits for approval: it gets no installer, config or token."""
    if host.state is HostState.PENDING:
        raise HttpError(
            http.FORBIDDEN, "host is waiting for approval (pxestack ctl approve SERIAL)"
        )


def _refuse_installed(host: Host, flow: Flow) -> None:
    """409 for a disk flow's host that is installed or running (it boots its disk)."""
    if flow.install == "disk" and host.state in (HostState.INSTALLED, HostState.RUNNING):
        raise HttpError(
            http.CONFLICT,
            f"host is {host.state.value}; set it configured or mark it fresh to reinstall",
        )


class PxeIgnitionResource(_Routed):
    """``GET /ignition?serial=&uuid=``: the machine's Ignition config (mayu era C).

    Served for the flows whose Ignition fetches its config itself: ``flatcar-pxe`` and
    ``fcos-pxe`` on every boot, ``fcos-disk`` once, when coreos-installer writes the disk.
    """

    segment = "ignition"
    operations = {"getIgnition": "pxe_ignition"}

    def pxe_ignition(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """Enrol if new, go ``installing``, answer the Ignition config."""
        prov = self.api.provisioner
        serial = prov.identity(self.arg(request, b"serial") or "", self.arg(request, b"uuid"))
        pending = self.admit(request, serial)

        def work() -> str:
            versioned, _ = prov.first_contact(serial, pending=pending)
            _refuse_pending(versioned.host)
            flow = prov.flow_of(versioned.host)
            if not flow.serves_config:
                raise HttpError(
                    http.CONFLICT, f"this host's profile uses flow {flow.name}, not /ignition"
                )
            _refuse_installed(versioned.host, flow)
            _host, config = prov.pxe_config(serial)
            return config

        return self.respond(request, work, _text(_JSON))


class InstallerIgnitionResource(_Routed):
    """``GET /installer-ignition?serial=&uuid=``: the fcos-disk live installer's config.

    It carries the host's callback token (for ``set_installed``), so like the first-stage
    script it is only served while the host is expected to install; it changes nothing.
    """

    segment = "installer-ignition"
    operations = {"getInstallerIgnition": "installer_ignition"}

    def installer_ignition(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """The live system's Ignition config for the machine named by the query."""
        prov = self.api.provisioner
        serial = prov.identity(self.arg(request, b"serial") or "", self.arg(request, b"uuid"))
        pending = self.admit(request, serial)

        def work() -> str:
            versioned, _ = prov.first_contact(serial, pending=pending)
            _refuse_pending(versioned.host)
            flow = prov.flow_of(versioned.host)
            if flow.installer_template is None:
                raise HttpError(
                    http.CONFLICT, f"this host's profile uses flow {flow.name}: no installer"
                )
            _refuse_installed(versioned.host, flow)
            return prov.render_installer_config(versioned.host)

        return self.respond(request, work, _text(_JSON))


#: Content type of a generic script by its template kind.
_SCRIPT_TYPES = {
    "sh": b"text/x-shellscript; charset=utf-8",
    "yaml": b"text/yaml; charset=utf-8",
    "json": _JSON,
}


class ScriptResource(_Routed):
    """``GET /script/<serial>[?uuid=]``: a generic profile's script (goes ``installing``)."""

    segment = "script"
    operations = {"getScript": "script"}

    def script(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """Enrol if new, go ``installing``, answer the rendered script."""
        prov = self.api.provisioner
        serial = self.path_serial(request, params)
        pending = self.admit(request, serial)

        def work() -> tuple[str, str]:
            versioned, _ = prov.first_contact(serial, pending=pending)
            _refuse_pending(versioned.host)
            flow = prov.flow_of(versioned.host)
            if flow.script_template is None:
                raise HttpError(http.NOT_FOUND, f"flow {flow.name} of this host has no script")
            _refuse_installed(versioned.host, flow)
            _host, text, kind = prov.script(serial)
            return text, kind

        def write(req: Request, result: tuple[str, str]) -> bytes:
            text, kind = result
            return _text(_SCRIPT_TYPES.get(kind, _TEXT))(req, text)

        return self.respond(request, work, write)


#: ``/images/.../<name>`` -> file names in ``<images_dir>/<version>/`` for Flatcar, newest
#: naming first (Flatcar's, then CoreOS's as mayu's caches have them; reference/mayu-api.md).  The
#: other flows' names are in :mod:`pxestack.provision.flows`.
IMAGE_FILES = FLATCAR_IMAGE_FILES


class ImagesResource(_Routed):
    """``GET|HEAD /images/[<serial>/]<file>``: the host's OS version, served with Range.

    Version = host override > host version > ``default_os_version`` (an unknown serial gets
    the default).  Unknown file names are 404 (mayu's handler panicked: bug).  The bytes
    are served by :class:`pxestack.http.assets.AssetResource` (Range, HEAD, conditional
    requests, sendfile; paths cannot leave the images directory).
    """

    segment = "images"
    operations = {
        "getDefaultImage": "image",
        "headDefaultImage": "image",
        "getHostImage": "image",
        "headHostImage": "image",
    }

    def __init__(self, api: ProvisioningApi, assets: Resource | None) -> None:
        super().__init__(api)
        self.assets = assets

    def image(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """Rewrite the path to ``<version>/<file>`` and delegate to the asset resource."""
        if self.assets is None:
            raise HttpError(http.NOT_FOUND, "not found")
        name = params["file"]
        prov = self.api.provisioner
        host = None
        if "serial" in params:
            found = prov.get(params["serial"])
            host = found.host if found is not None else None
        version = prov.os_version(host)
        candidates = prov.flow_of(host).image_candidates(version, name)
        if not candidates:
            raise HttpError(http.NOT_FOUND, "not found")
        if host is not None and request.method == b"GET":
            self.api.step("kernel", serial=host.serial, ip=_client_host(request), detail=name)
        root = getattr(self.assets, "root", None)
        chosen = candidates[0]
        if root is not None:
            for candidate in candidates:
                if root.joinpath(*candidate).is_file():
                    chosen = candidate
                    break
        request.postpath = [part.encode() for part in chosen]
        result: bytes | int = self.assets.render(request)
        return result


# -- admin -----------------------------------------------------------------------------------

#: ``PUT /admin/host/<serial>/<action>`` setters: action -> JSON field (reference/mayu-api.md).
FIELD_SETTERS = {
    "set_metadata": "FleetMetadata",
    "set_provider_id": "ProviderId",
    "set_ipmi_addr": "IPMIAddr",
    "set_cabinet": "Cabinet",
    "set_etcd_cluster_token": "EtcdClusterToken",
}
#: The value a setter stores when its key is missing from the body (Go's zero values).
FIELD_ZERO_VALUES: dict[str, Any] = {
    "FleetMetadata": [],
    "ProviderId": "",
    "IPMIAddr": "",
    "Cabinet": 0,
    "EtcdClusterToken": "",
}
MACHINE_ACTIONS = ("set_installed", "boot_complete")


class AdminResource(_Routed):
    r"""``/admin/...``: the admin API and the machine callbacks under it.

    Which paths exist, their methods and who may call them is the OpenAPI document's
    (:mod:`pxestack.provision.routes`); each method below answers one or more of its
    ``operationId``\ s once the router has checked the caller.  An unknown path under
    ``/admin`` is 404 for an admin and 401/403 for anyone else.
    """

    segment = "admin"
    operations = {
        "listHosts": "list_hosts",
        "addHost": "add_host",
        "getHost": "get_host",
        "removeHost": "remove_host",
        "getHostHistory": "host_history",
        "getHostLogs": "host_logs",
        "setInstalled": "set_installed",
        "bootComplete": "boot_complete",
        "setState": "set_state",
        "markFresh": "mark_fresh",
        "approveHost": "approve",
        "moveHost": "move",
        "override": "override",
        "setMetadata": "set_field",
        "setProviderId": "set_field",
        "setIpmiAddr": "set_field",
        "setCabinet": "set_field",
        "setEtcdClusterToken": "set_field",
        "getMayuConfig": "get_mayu_config",
        "putMayuConfig": "put_mayu_config",
        "getProvisioningHealth": "health",
        "getImages": "images",
        "postImageFetch": "images_fetch",
        "getBootEvents": "events",
    }

    # -- reads -----------------------------------------------------------------------------

    def list_hosts(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """``GET /admin/hosts``: every record, as a JSON array (mayu)."""
        prov = self.api.provisioner
        return self.respond(request, lambda: [h.to_json() for h in prov.hosts()], _json_writer)

    def get_host(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """``GET /admin/host/<serial>``: one record with its ETag."""
        prov = self.api.provisioner
        serial = params["serial"].lower()

        def one() -> Versioned:
            found = prov.get(serial)
            if found is None:
                raise HostNotFound(serial)
            return found

        return self.respond(request, one, _versioned_writer)

    def host_history(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """``GET /admin/host/<serial>/history``: the host's audit entries, newest first."""
        prov = self.api.provisioner
        serial = params["serial"].lower()

        def history() -> list[dict[str, str]]:
            if prov.get(serial) is None:
                raise HostNotFound(serial)
            return [e.to_json() for e in prov.store.history(serial)]

        return self.respond(request, history, _json_writer)

    def health(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """``GET /admin/health``: the store's health, 503 when degraded."""
        store_health = self.api.provisioner.store.health
        reports = self.api.health_reports

        def health() -> StoreHealth:
            merged: dict[str, Any] = dict(store_health())
            for report in reports:
                extra = dict(report())
                ok = extra.pop("ok", True)
                merged.update(extra)
                if not ok:
                    merged["ok"] = False
            return merged  # type: ignore[return-value]

        return self.respond(request, health, _health_writer)

    def get_mayu_config(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """``GET /admin/mayu_config``: the settings in mayu's YAML schema."""
        return self.respond(request, self.api.export_config, _text(b"text/yaml"))

    def images(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """``GET /admin/images``: cached image versions, running and recent fetches."""
        fetches = self.api.require_image_fetches()
        return self.respond(request, fetches.snapshot, _json_writer)

    def events(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """``GET /admin/events``: the boot steps, as JSON or an SSE stream."""
        if self.api.event_feed is None:
            raise HttpError(http.NOT_FOUND, "boot steps are not recorded here")
        result: bytes | int = self.api.event_feed.render(request)
        return result

    def host_logs(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """``host/<serial>/logs``: the log lines the recorder keeps for the machine (its
        serial and the MACs of its record), as JSON or as an SSE stream."""
        serial = params["serial"].lower()
        events = self.api.events
        if events is None or normal_serial(serial) is None:
            raise HttpError(http.NOT_FOUND, "no log lines are recorded here")
        versioned = self.api.provisioner.get(serial)
        macs = tuple(versioned.host.mac_addresses) if versioned else ()
        if versioned is None and not events.logs(serial, limit=1):
            raise HostNotFound(serial)
        keys = {serial} | {m for m in (normal_mac(x) for x in macs) if m}

        def select(since: int, limit: int) -> list[BootEvent]:
            return list(events.logs(serial, macs, since=since, limit=limit))

        def accept(event: BootEvent) -> bool:
            return event.phase == LOG and (event.machine in keys or event.mac in keys)

        feed = EventFeed(events, reactor=getattr(self.api.event_feed, "reactor", None),
                         select=select, accept=accept)
        result: bytes | int = feed.render(request)
        return result

    # -- changes ---------------------------------------------------------------------------

    def _announced(self, route: Route, params: dict[str, str]) -> Writer:
        """:func:`_accepted`, telling the recorder's subscribers (extensions) about the
        admin action that succeeded (an ``admin`` notice; nothing is kept)."""
        serial = params["serial"].lower() if "serial" in params else None
        segments = route.segments[1:]
        if route.method == b"DELETE":
            action = "remove"
        elif serial is not None:
            action = segments[-1]
        else:
            action = "/".join(segments)

        def write(req: Request, result: object) -> bytes:
            body = _accepted(req, result)
            self.api.announce(action, serial=serial, actor=request_actor(req) or "")
            return body

        return write

    def _change(
        self,
        request: Request,
        route: Route,
        params: dict[str, str],
        change: Callable[[Provisioner, str, str | None], Host],
        write: Writer | None = None,
    ) -> bytes | int:
        """Run one host mutation (``PUT /admin/host/<serial>/<action>``); 202 and the ETag."""
        prov = self.api.provisioner
        serial, if_match = params["serial"].lower(), _if_match(request)
        return self.respond(
            request,
            lambda: _etagged(prov, change(prov, serial, if_match)),
            write or self._announced(route, params),
        )

    def set_installed(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """The installer wrote the disk (machine callback)."""
        return self._change(request, route, params,
                            lambda prov, serial, if_match: prov.set_installed(serial, if_match))

    def boot_complete(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """The installed OS booted (machine callback; optional version strings)."""
        payload = self.json_body(request, allow_empty=True)
        return self._change(
            request, route, params,
            lambda prov, serial, if_match: prov.boot_complete(serial, payload, if_match),
        )

    def mark_fresh(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """Forget the install: the host installs again on its next boot."""
        return self._change(request, route, params,
                            lambda prov, serial, if_match: prov.mark_fresh(serial, if_match))

    def approve(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """Approve a ``pending`` host."""
        return self._change(request, route, params,
                            lambda prov, serial, if_match: prov.approve(serial, if_match))

    def set_state(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """``{"State": ...}``: set the host's state (mayuctl ``set S state X``)."""
        state = self.json_body(request).get("State")
        return self._change(request, route, params,
                            lambda prov, serial, if_match: prov.set_state(serial, state, if_match))

    def override(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """``{"Overrides": {...}}``: the host's template overrides."""
        overrides = self.json_body(request).get("Overrides")
        return self._change(
            request, route, params,
            lambda prov, serial, if_match: prov.override(serial, overrides, if_match),
        )

    def move(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """``{"Profile": ..., "Force": ...}``: move the host to another profile."""
        payload = self.json_body(request)
        profile, force = payload.get("Profile"), payload.get("Force", False)
        return self._change(
            request, route, params,
            lambda prov, serial, if_match: prov.move(serial, profile, force, if_match),
            _accepted,
        )

    def set_field(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """mayu's setters (:data:`FIELD_SETTERS`): one field from the body."""
        name = FIELD_SETTERS[route.segments[-1]]
        # mayuctl leaves out a key whose value is zero or empty (``set S cabinet 0``): a
        # missing key (or JSON null) is the zero value, as in mayu, so an operator can clear
        # a field.
        value = self.json_body(request).get(name)
        if value is None:
            value = FIELD_ZERO_VALUES[name]
        return self._change(
            request, route, params,
            lambda prov, serial, if_match: prov.set_field(serial, name, value, if_match),
        )

    def put_mayu_config(
        self, request: Request, route: Route, params: dict[str, str]
    ) -> bytes | int:
        """``PUT /admin/mayu_config``: validate and apply a mayu YAML config; 202."""
        text = self.body(request).decode("utf-8", "replace")
        return self.respond(request, lambda: self.api.import_config(text),
                            self._announced(route, params))

    def images_fetch(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """``POST /admin/images/fetch``: start a release fetch; 202 with its status."""
        fetches = self.api.require_image_fetches()
        status = fetches.start(self.json_body(request))
        log.info("image fetch of {os} {line} {version} started by {actor}",
                 os=status["os"], line=status["message"], version=status["version"],
                 actor=request_actor(request))
        request.setResponseCode(http.ACCEPTED)
        request.setHeader(b"Content-Type", _JSON)
        return json.dumps(status, indent=1).encode() + b"\n"

    def add_host(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """``POST /admin/hosts``: pre-register a machine (serial, MACs, profile, address);
        201 with the record."""
        payload = self.json_body(request)
        prov = self.api.provisioner

        def work() -> Versioned:
            added = prov.add(payload)
            log.info("host {serial} added by the admin API", serial=added.serial)
            found = prov.get(added.serial)
            if found is None:  # removed again before it could be read back
                raise HostNotFound(added.serial)
            return found

        return self.respond(request, work, _created_writer)

    def remove_host(self, request: Request, route: Route, params: dict[str, str]) -> bytes | int:
        """``DELETE /admin/host/<serial>``: remove the record (address and slot freed); 202."""
        serial, if_match = params["serial"].lower(), _if_match(request)
        prov = self.api.provisioner

        def work() -> None:
            removed = prov.remove(serial, if_match)
            log.info("host {serial} removed by the admin API", serial=removed.serial)

        return self.respond(request, work, self._announced(route, params))


def _if_match(request: Request) -> str | None:
    value = request.getHeader(b"if-match")
    return value.decode("latin-1") if value is not None else None


def _etagged(prov: Provisioner, host: Host) -> Versioned | None:
    return prov.get(host.serial)


def _json_writer(request: Request, value: object) -> bytes:
    request.setHeader(b"Content-Type", _JSON)
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(value, indent=2).encode()


def _versioned_writer(request: Request, versioned: Versioned) -> bytes:
    request.setHeader(b"ETag", versioned.etag.encode())
    return _json_writer(request, versioned.host.to_json())


def _created_writer(request: Request, versioned: Versioned) -> bytes:
    """201 with the new record, its ETag and its ``Location``."""
    request.setResponseCode(http.CREATED)
    request.setHeader(b"Location", f"/admin/host/{versioned.host.serial}".encode())
    return _versioned_writer(request, versioned)


def _health_writer(request: Request, health: StoreHealth) -> bytes:
    if not health.get("ok", False):
        request.setResponseCode(http.SERVICE_UNAVAILABLE)
    return _json_writer(request, health)


#: The first path segments of the provisioning API; the document's paths under them are its
#: routes (:mod:`pxestack.provision.routes`).
SEGMENTS = (
    "ipxebootscript", "grub", "pxelinux.cfg", "pxelinux", "first-stage-script",
    "first-stage-ignition.json", "final-ignition-config.json", "first-stage-cloudconfig.yaml",
    "final-cloud-config.yaml", "ignition", "installer-ignition", "script", "images", "admin",
)


@functools.cache
def provisioning_routes() -> tuple[Route, ...]:
    """The documented routes of the provisioning API (the document is read once)."""
    return tuple(load_routes(load_document(), SEGMENTS))


class ProvisioningApi:
    """Builds the resources and holds what they share (see the module documentation)."""

    def __init__(
        self,
        provisioner: Provisioner,
        *,
        admin_token: str | None,
        run: Runner = synchronous_runner,
        admin_tokens: Mapping[str, str] | None = None,
        trusted_networks: Iterable[IPv4Network | IPv6Network] = (),
        client_certificates: bool = False,
        admin_listener_only: bool = False,
        images: Resource | None = None,
        accept_unauthenticated_callbacks: bool = False,
        max_body_bytes: int = 1 << 20,
        max_json_depth: int = 32,
        config_exporter: Callable[[], str] | None = None,
        config_importer: Callable[[str], None] | None = None,
        enrolment: EnrolmentGate | None = None,
        events: BootEventRecorder | None = None,
        event_feed: EventFeed | None = None,
        clock: Callable[[], float] = time.time,
        image_fetches: ImageFetches | None = None,
    ) -> None:
        self.provisioner = provisioner
        #: The routes the resources answer: the API document's (:func:`provisioning_routes`).
        self.routes = provisioning_routes()
        #: ``provision.enrolment`` (None: every first contact enrols, as mayu).
        self.enrolment = enrolment
        #: The :class:`pxestack.bootevents.BootEventRecorder` boot steps go to, or None.
        self.events = events
        #: The :class:`pxestack.http.events.EventFeed` of ``/admin/events``, or None.
        self.event_feed = event_feed
        #: More health reports merged into ``/admin/health`` (``Extensions.health``: the
        #: DHCP lease table of ``dhcp.lease_store: postgresql``).
        self.health_reports: list[Callable[[], dict[str, Any]]] = []
        #: ``now`` for the enrolment gate and boot steps (the reactor's ``seconds``).
        self.clock = clock
        self.admin_token = admin_token or None
        #: Admin bearer tokens by name (the actor of what is done with them).
        self.admin_tokens: dict[str, str] = dict(admin_tokens or {})
        if self.admin_token is not None:
            self.admin_tokens.setdefault(SINGLE_TOKEN_NAME, self.admin_token)
        self.trusted_networks = tuple(trusted_networks)
        #: Clients on the TLS listener are asked for certificates (verified by the site).
        self.client_certificates = client_certificates
        #: ``http.admin_listen`` is set: admin requests are refused on other listeners.
        self.admin_listener_only = admin_listener_only
        #: No way to authenticate is configured: the admin API listens on loopback only.
        self.open_admin = not (self.admin_tokens or self.trusted_networks
                               or client_certificates)
        self.run = run
        self.images = images
        self.accept_unauthenticated_callbacks = accept_unauthenticated_callbacks
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self._export = config_exporter
        self._import = config_importer
        #: Release fetches of ``POST /admin/images/fetch`` (None: no ``images_dir``).
        self.image_fetches = image_fetches

    def require_image_fetches(self) -> ImageFetches:
        """The image fetches, or 404 when there is no image cache."""
        if self.image_fetches is None:
            raise HttpError(http.NOT_FOUND, "no image cache here (provision.images_dir)")
        return self.image_fetches

    def image_step(self, detail: str, status: dict[str, Any]) -> None:
        """Report image-fetch progress on the event feed (from any thread)."""
        if self.events is None:
            return
        try:
            self.events.record_image(self.clock(), detail, status)
        except Exception:
            log.failure("recording an image-fetch step failed")

    def trusted_network_of(self, host: str) -> str | None:
        """The trusted network (as configured) *host* is in, or None."""
        if not self.trusted_networks:
            return None
        try:
            address = ip_address(host)
        except ValueError:
            return None
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:10.0.0.1 is 10.0.0.1
        for network in self.trusted_networks:
            if address in network or (mapped is not None and mapped in network):
                return str(network)
        return None

    def announce(self, action: str, *, serial: str | None, actor: str) -> None:
        """Log that an admin *action* succeeded (who, what, which machine) and tell the
        recorder's subscribers.  A machine's own callback is not an admin action: its
        state change has its own log line."""
        if serial is not None and not actor.startswith("machine:"):
            log.info("admin action {action} on host {serial} by {actor}: done", action=action,
                     serial=serial, actor=actor or "unknown")
        elif serial is None:
            log.info("admin action {action} by {actor}: done", action=action,
                     actor=actor or "unknown")
        if self.events is None:
            return
        try:
            self.events.announce(ADMIN, self.clock(), serial=serial,
                                 detail=f"{action} by {actor}" if actor else action)
        except Exception:
            log.failure("announcing an admin action failed")

    def step(self, phase: str, *, serial: str | None = None, mac: str | None = None,
             ip: str | None = None, detail: str = "") -> None:
        """Report a boot step seen by the HTTP endpoints (from any thread); values the
        recorder refuses (a malformed MAC from a query) are logged and dropped."""
        if self.events is None:
            return
        try:
            recorded = self.events.record(phase, self.clock(), serial=serial, mac=mac, ip=ip,
                                          detail=detail)
        except Exception:
            log.failure("recording a boot step failed")
            return
        if recorded is None:
            log.debug("boot step {phase} dropped: serial {serial!r} or MAC {mac!r} not valid",
                      phase=phase, serial=(serial or "")[:40], mac=(mac or "")[:40])

    def export_config(self) -> str:
        """``GET /admin/mayu_config``: the settings in mayu's YAML schema."""
        if self._export is None:
            raise HttpError(http.NOT_FOUND, "config export is not available")
        return self._export()

    def import_config(self, text: str) -> None:
        """``PUT /admin/mayu_config``: validate and apply a mayu YAML config (400 on errors)."""
        if self._import is None:
            raise HttpError(http.NOT_FOUND, "config import is not available")
        try:
            self._import(text)
        except yaml.YAMLError as exc:
            raise BadRequest(f"invalid YAML: {exc}") from None
        except ConfigError as exc:
            raise BadRequest(str(exc)) from None

    def children(self) -> dict[bytes, IResource]:
        """First path segment -> resource, for ``Extensions.http_children``.

        :class:`RouteError` when the document and the resources disagree: an operation no
        resource answers, or an answer for an operation the document does not have.
        """
        children: dict[bytes, _Routed] = {
            b"ipxebootscript": BootScriptResource(self),
            b"grub": LoaderConfigResource(self, "grub"),
            b"pxelinux.cfg": LoaderConfigResource(self, "pxelinux.cfg"),
            b"pxelinux": LoaderConfigResource(self, "pxelinux"),
            b"first-stage-script": FirstStageScriptResource(self),
            b"first-stage-ignition.json": FirstStageIgnitionResource(self),
            b"final-ignition-config.json": HostDataResource(self),
            b"first-stage-cloudconfig.yaml": FirstStageCloudConfigResource(self),
            b"final-cloud-config.yaml": HostDataResource(self, "cloud-config"),
            b"ignition": PxeIgnitionResource(self),
            b"installer-ignition": InstallerIgnitionResource(self),
            b"script": ScriptResource(self),
            b"images": ImagesResource(self, self.images),
            b"admin": AdminResource(self),
        }
        assert {name.decode() for name in children} == set(SEGMENTS)
        documented = {route.operation_id for route in self.routes}
        for child in children.values():
            child.check_routes()
            unknown = set(child.operations) - documented
            if unknown:
                raise RouteError(
                    f"{type(child).__name__} answers {sorted(unknown)}, which the API "
                    "document does not have"
                )
        return dict(children)

    def root(self) -> Resource:
        """A root resource with :meth:`children` mounted (tests and stand-alone use)."""
        root = Resource()
        for name, child in self.children().items():
            root.putChild(name, child)
        return root


__all__ = [
    "FIELD_SETTERS",
    "IMAGE_FILES",
    "SEGMENTS",
    "AdminResource",
    "BootScriptResource",
    "FirstStageCloudConfigResource",
    "FirstStageScriptResource",
    "HostDataResource",
    "HttpError",
    "ImagesResource",
    "InstallerIgnitionResource",
    "LoaderConfigResource",
    "ProvisioningApi",
    "PxeIgnitionResource",
    "ScriptResource",
    "json_too_deep",
    "provisioning_routes",
    "request_actor",
    "synchronous_runner",
]
