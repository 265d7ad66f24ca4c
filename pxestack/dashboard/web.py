"""The dashboard's twisted.web resources: ``/`` and everything under ``/dashboard/``.

==========================================  =================================================
``GET /``                                   the machines (filter, sort, profile capacity)
``GET /dashboard/rows``                     the live part of ``/`` (fetched on each event)
``GET|POST /dashboard/login``               the login form; the admin token makes a session
``POST /dashboard/logout``                  ends the session
``GET /dashboard/machine/<serial>``         a machine: timeline, history, configs, actions
                                            (``?part=live``: its live part)
``POST /dashboard/machine/<serial>/action`` reinstall, mark fresh, set state (confirmed)
``GET /dashboard/storm``                    machines per boot phase over time
                                            (``?part=chart``: the chart alone)
``GET /dashboard/events``                   the boot steps (SSE or JSON), as ``/admin/events``
``GET /dashboard/images``                   the image cache and its fetches (``?part=live``)
``POST /dashboard/images/fetch``            start a release fetch, as ``POST
                                            /admin/images/fetch``
``GET /dashboard/static/<file>``            the stylesheet and the script
==========================================  =================================================

Pages are Jinja2 templates with autoescaping on; pictures are inline SVG drawn from
:mod:`pxestack.dashboard.charts`.  The script (``static/dashboard.js``, no build step) opens
one ``EventSource`` per page and, when a step arrives, fetches the page's live part again
and swaps it in: no polling, no reload.

Access: a session (:mod:`pxestack.dashboard.sessions`) made by the login form with the admin
token.  Pages without one redirect to the login form, the live parts and the event stream
answer 401.  Every POST must carry the session's CSRF token, and a POST whose ``Origin``
names another site is refused.  Actions call the same :class:`Provisioner` methods as
``PUT /admin/host/<serial>/set_state`` and ``mark_fresh``, so the store commits them to the
git audit as it does for the API; the log line says which session asked for what.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from pxestack.bootevents import IMAGE_PHASE, PHASE_LABELS, PHASES, BootEventRecorder
from pxestack.dashboard.charts import storm_chart, timeline
from pxestack.dashboard.sessions import COOKIE, Session, SessionStore
from pxestack.http.events import EventFeed
from pxestack.http.site import ADMIN_LISTENER, listener_of
from pxestack.provision.api import AdminResource, HttpError, ProvisioningApi
from pxestack.provision.hoststore import acting_as
from pxestack.provision.model import HostState

log = Logger()

#: The release-line field of each OS the images page can fetch, and its suggestions.
IMAGE_LINES: dict[str, tuple[str, tuple[str, ...]]] = {
    "flatcar": ("channel", ("stable", "beta", "alpha", "lts")),
    "fcos": ("stream", ("stable", "testing", "next")),
    "debian": ("release", ("bookworm", "trixie")),
}
#: The dashboard's first path segment (``/`` itself is the machines page).
SEGMENT = b"dashboard"
#: Files under ``static/`` and their content types.
STATIC_FILES = {
    "dashboard.css": b"text/css; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
}
#: The actions of a machine's page: what they ask the provisioner for.
ACTIONS = {
    "reinstall": "Reinstall (state configured; keeps disk data)",
    "mark_fresh": "Mark fresh (reinstall from scratch)",
    "set_state": "Set state",
    "approve": "Approve (enrol the waiting machine: profile and address)",
    "remove": "Remove (frees its address and profile slot)",
    "move": "Move to another profile (pinned; the profile's quantity is respected)",
}
#: Largest form body the dashboard reads.
MAX_FORM_BYTES = 8192
#: Log lines shown on a machine's page (the newest).
LOG_LINES = 200
SECURITY_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    b"X-Content-Type-Options": b"nosniff",
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on form
    # posts, which the Origin check refuses.
    b"Referrer-Policy": b"same-origin",
    b"X-Frame-Options": b"DENY",
    b"Cache-Control": b"no-store",
}


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("pxestack.dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["PHASE_LABELS"] = PHASE_LABELS
    return env


class Dashboard:
    """What the dashboard's resources share: the API, the recorder, sessions, templates."""

    def __init__(self, api: ProvisioningApi, events: BootEventRecorder, *,
                 reactor: Any = None, sessions: SessionStore | None = None) -> None:
        self.api = api
        self.events = events
        # The pages' stream: boot steps, and image-fetch progress for the images page
        # (the feed's default sends boot steps only, and the page would never see a fetch).
        self.feed = EventFeed(events, reactor=reactor, accept=_dashboard_event)
        self.sessions = sessions or SessionStore()
        self.env = _environment()

    def children(self) -> dict[bytes, Resource]:
        """``/`` and ``/dashboard``, for the site's children."""
        return {b"": MachinesPage(self), SEGMENT: DashboardResource(self)}

    # -- helpers shared by the resources ------------------------------------------------

    def on_admin_listener(self, request: Request) -> bool:
        """Whether *request* may reach the dashboard on the listener it arrived on: with
        ``http.admin_listen`` only the admin listener serves it, as it does the admin API."""
        return (not self.api.admin_listener_only
                or listener_of(request) == ADMIN_LISTENER)

    def session(self, request: Request) -> Session | None:
        """The request's live session, if any."""
        raw = request.getCookie(COOKIE.encode())
        return self.sessions.get(raw.decode("ascii", "replace") if raw else None)

    def page(self, request: Request, template: str, **context: Any) -> bytes:
        """Render *template* as a complete HTML answer."""
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        text = self.env.get_template(template).render(**context)
        return text.encode("utf-8")

    def run(self, request: Request, work: Callable[[], Any],
            write: Callable[[Any], bytes]) -> int:
        """Run blocking store work in the provisioning pool, then answer with *write*."""
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def ok(result: Any) -> None:
            if finished:
                return
            try:
                body = write(result)
            except Exception as exc:
                failed(Failure(exc))
                return
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            if finished:
                return
            code, message = AdminResource.error_of(failure)
            request.setResponseCode(code)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.write(message.encode() + b"\n")
            request.finish()

        self.api.run(work).addCallbacks(ok, failed)
        return NOT_DONE_YET

    def machines(self) -> dict[str, Any]:
        """The context of the machines list (runs in the provisioning pool)."""
        prov = self.api.provisioner
        hosts = prov.hosts()
        current = self.events.current()
        rows = []
        for host in hosts:
            step = current.get(host.serial)
            for mac in host.mac_addresses:
                other = current.get(mac)
                if other is not None and (step is None or other.seq > step.seq):
                    step = other
            rows.append({
                "serial": host.serial,
                "hostname": host.hostname,
                "profile": host.profile,
                "state": host.state.value,
                "address": str(host.internal_addr or ""),
                "macs": list(host.mac_addresses),
                "last_boot": host.last_boot.strftime("%Y-%m-%d %H:%M:%S")
                if host.last_boot else "",
                "phase": step.phase if step is not None else "",
                "phase_label": PHASE_LABELS.get(step.phase, "") if step is not None else "",
                "phase_time": step.time if step is not None else 0,
            })
        used: dict[str, int] = {}
        for host in hosts:
            used[host.profile] = used.get(host.profile, 0) + 1
        capacity = [
            {"name": p.name, "used": used.get(p.name, 0), "total": p.quantity}
            for p in prov.config.profiles
        ]
        configured = {p.name for p in prov.config.profiles}
        capacity += [{"name": name or "-", "used": n, "total": None}
                     for name, n in sorted(used.items()) if name not in configured]
        known = {h.serial for h in hosts} | {m for h in hosts for m in h.mac_addresses}
        unenrolled = sum(1 for key in current if key not in known and ":" in key)
        states: dict[str, int] = dict.fromkeys((s.value for s in HostState), 0)
        for host in hosts:
            states[host.state.value] += 1
        return {"rows": rows, "capacity": capacity, "unenrolled": unenrolled,
                "states": states, "total": len(hosts)}

    def machine(self, serial: str) -> dict[str, Any]:
        """The context of one machine's page (runs in the provisioning pool)."""
        prov = self.api.provisioner
        found = prov.get(serial)
        if found is None:
            raise HttpError(http.NOT_FOUND, "no such host")
        host = found.host
        steps = self.events.steps(host.serial, host.mac_addresses)
        logs = [{"when": time.strftime("%H:%M:%S", time.localtime(e.time)), "detail": e.detail}
                for e in self.events.logs(host.serial, host.mac_addresses, limit=LOG_LINES)]
        history = [e.to_json() for e in prov.store.history(host.serial, limit=50)]
        configs = []
        renderers: list[tuple[str, Callable[[], str]]] = [
            ("iPXE script (/ipxebootscript)", lambda: prov.boot_script(host, True)),
            ("Ignition config", lambda: prov.render_final(host)),
        ]
        for title, render in renderers:
            try:
                configs.append({"title": title, "text": render(), "error": ""})
            except Exception as exc:
                configs.append({"title": title, "text": "", "error": str(exc)})
        return {
            "host": host,
            "record": json.dumps(host.to_json(), indent=2),
            "timeline": timeline(steps),
            "steps": [s.to_json() | {"label": PHASE_LABELS.get(s.phase, s.phase),
                                     "started": s.started} for s in steps[-40:]],
            "history": history,
            "configs": configs,
            "macs": list(host.mac_addresses),
            "logs": logs,
        }


def _dashboard_event(event: Any) -> bool:
    """Whether the dashboard's event stream sends *event*: a boot step or an image fetch's
    progress (``event: image``), not a log line or a notice."""
    return event.phase in PHASES or event.phase == IMAGE_PHASE


def _client(request: Request) -> str:
    return str(getattr(request.getClientAddress(), "host", "-"))


def _arg(request: Request, name: bytes) -> str | None:
    values = (request.args or {}).get(name)
    if not values:
        return None
    return str(values[0].decode("utf-8", "replace"))[:200]


def _method_not_allowed(request: Request, allowed: bytes) -> bytes:
    request.setResponseCode(http.NOT_ALLOWED)
    request.setHeader(b"Allow", allowed)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"method not allowed\n"


def _not_found(request: Request) -> bytes:
    request.setResponseCode(http.NOT_FOUND)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"not found\n"


def _redirect(request: Request, location: str) -> bytes:
    request.setResponseCode(http.SEE_OTHER)
    request.setHeader(b"Location", location.encode("utf-8"))
    request.setHeader(b"Cache-Control", b"no-store")
    return b""


def _login_redirect(request: Request) -> bytes:
    target = request.uri.decode("latin-1")
    return _redirect(request, "/dashboard/login?next=" + quote(target, safe=""))


def _safe_next(value: str | None) -> str:
    """A local path to go to after the login (never another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _same_origin(request: Request) -> bool:
    """False when the request's ``Origin`` names a site other than its ``Host``."""
    origin = request.getHeader(b"origin")
    if origin is None or origin == b"null":
        return origin is None
    host = request.getHeader(b"host") or b""
    return urlsplit(origin.decode("latin-1")).netloc.lower() == host.decode("latin-1").lower()


def _wrong_listener(request: Request) -> bytes:
    """403: with ``http.admin_listen`` the dashboard, like the admin API, is only there."""
    log.info("refusing dashboard request from {client} on the machine listener",
             client=_client(request))
    request.setResponseCode(http.FORBIDDEN)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"the dashboard is served on the admin listener (http.admin_listen)\n"


class MachinesPage(Resource):
    """``GET /``: the machines list."""

    isLeaf = True

    def __init__(self, dashboard: Dashboard) -> None:
        super().__init__()
        self.dashboard = dashboard

    def render(self, request: Request) -> bytes | int:
        """The page, or the login form's redirect."""
        if not self.dashboard.on_admin_listener(request):
            return _wrong_listener(request)
        if request.method not in (b"GET", b"HEAD"):
            return _method_not_allowed(request, b"GET, HEAD")
        if request.postpath not in ([], [b""]):
            return _not_found(request)
        session = self.dashboard.session(request)
        if session is None:
            return _login_redirect(request)
        since = self.dashboard.events.last_seq
        return self.dashboard.run(
            request, self.dashboard.machines,
            lambda context: self.dashboard.page(
                request, "machines.html.j2", session=session, since=since, view="machines",
                **context),
        )


class DashboardResource(Resource):
    """Everything under ``/dashboard/``."""

    isLeaf = True

    def __init__(self, dashboard: Dashboard) -> None:
        super().__init__()
        self.dashboard = dashboard

    def request_body_limit(self, method: bytes) -> int:
        """Forms only: :data:`MAX_FORM_BYTES` for POST, nothing otherwise."""
        return MAX_FORM_BYTES if method == b"POST" else 0

    def render(self, request: Request) -> bytes | int:
        """Dispatch on the path and the method."""
        if not self.dashboard.on_admin_listener(request):
            return _wrong_listener(request)
        path = [p.decode("utf-8", "replace") for p in request.postpath or []]
        method = request.method
        get = method in (b"GET", b"HEAD")
        if path == ["login"]:
            if get:
                return self.login_form(request)
            if method == b"POST":
                return self.login(request)
            return _method_not_allowed(request, b"GET, HEAD, POST")
        if len(path) == 2 and path[0] == "static":
            if not get:
                return _method_not_allowed(request, b"GET, HEAD")
            return self.static(request, path[1])
        route_get = {("rows",), ("storm",), ("events",), ("images",)}
        if tuple(path) in route_get or (len(path) == 2 and path[0] == "machine"):
            if not get:
                return _method_not_allowed(request, b"GET, HEAD")
        elif path in (["logout"], ["images", "fetch"]) or (
                len(path) == 3 and path[0] == "machine" and path[2] == "action"):
            if method != b"POST":
                return _method_not_allowed(request, b"POST")
        else:
            return _not_found(request)
        session = self.dashboard.session(request)
        fragment = path in (["rows"], ["events"]) or _arg(request, b"part") is not None
        if session is None:
            if get and not fragment:
                return _login_redirect(request)
            request.setResponseCode(http.UNAUTHORIZED)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"log in first\n"
        if method == b"POST":
            presented = _arg(request, b"csrf") or (
                request.getHeader(b"x-csrf-token") or b"").decode("latin-1") or None
            if not _same_origin(request) or not session.csrf_ok(presented):
                log.warn("dashboard: refused a {path} request from {client} without a valid "
                         "CSRF token (session {label})", path="/".join(path)[:80],
                         client=_client(request), label=session.label)
                request.setResponseCode(http.FORBIDDEN)
                request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
                return b"missing or wrong CSRF token: reload the page\n"
        if path == ["rows"]:
            return self.dashboard.run(
                request, self.dashboard.machines,
                lambda context: self.dashboard.page(request, "machines_live.html.j2",
                                                    **context))
        if path == ["events"]:
            return self.dashboard.feed.render(request)
        if path == ["storm"]:
            return self.storm(request, session)
        if path == ["images"]:
            return self.images(request, session)
        if path == ["images", "fetch"]:
            return self.fetch_image(request, session)
        if path == ["logout"]:
            self.dashboard.sessions.end(session.id)
            log.info("dashboard: session {label} from {client} logged out",
                     label=session.label, client=_client(request))
            request.addCookie(COOKIE.encode(), b"", path=b"/", httpOnly=True,
                              secure=request.isSecure(), sameSite="strict", max_age=b"0")
            return _redirect(request, "/dashboard/login")
        serial = path[1].lower()
        if len(path) == 2:
            return self.machine(request, session, serial)
        return self.action(request, session, serial)

    # -- login ---------------------------------------------------------------------------

    def login_form(self, request: Request, error: str = "") -> bytes:
        """The login form (with *error* after a wrong token)."""
        return self.dashboard.page(
            request, "login.html.j2", error=error, session=None, view="login",
            next=_safe_next(_arg(request, b"next")),
            token_needed=not self.dashboard.api.open_admin,
            recognised=self.recognised(request),
        )

    def recognised(self, request: Request) -> str | None:
        """The actor a request authenticates as without a token: a verified client
        certificate (``api.client_ca_file``) or a source in ``api.trusted_networks``."""
        if self.dashboard.api.open_admin:
            return None
        found = AdminResource(self.dashboard.api).authenticate(request)
        return found[0] if found is not None else None

    def actor_of(self, presented: str, client: str) -> str | None:
        """The name of the admin token *presented* (every token is compared, in constant
        time), ``local:<client>`` when the API has no admin credential at all (it then
        listens on loopback only), or None."""
        api = self.dashboard.api
        if api.open_admin:
            return f"local:{client}"
        matched = None
        for name, token in api.admin_tokens.items():
            if hmac.compare_digest(presented.encode(), token.encode()):
                matched = name
        return matched

    def login(self, request: Request) -> bytes:
        """Check the admin token; a session cookie on success, the form again otherwise."""
        client = _client(request)
        if not _same_origin(request):
            log.warn("dashboard: refused a login from {client}: foreign Origin", client=client)
            request.setResponseCode(http.FORBIDDEN)
            return self.login_form(request, "This login came from another site.")
        presented = _arg(request, b"token") or ""
        actor = self.actor_of(presented, client)
        if actor is None and not presented:
            actor = self.recognised(request)
        if actor is None:
            log.warn("dashboard: wrong admin token from {client}", client=client)
            request.setResponseCode(http.UNAUTHORIZED)
            return self.login_form(request, "That is not an admin token.")
        session = self.dashboard.sessions.create(client, actor)
        log.info("dashboard: session {label} of {actor} logged in from {client}",
                 label=session.label, actor=actor, client=client)
        request.addCookie(COOKIE.encode(), session.id.encode(), path=b"/", httpOnly=True,
                          secure=request.isSecure(), sameSite="strict")
        return _redirect(request, _safe_next(_arg(request, b"next")))

    # -- pages ---------------------------------------------------------------------------

    def static(self, request: Request, name: str) -> bytes:
        """A file of ``static/`` (only the listed ones)."""
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            return _not_found(request)
        data = resources.files("pxestack.dashboard").joinpath("static", name).read_bytes()
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return data

    def storm(self, request: Request, session: Session) -> bytes:
        """The boot-storm view (or its chart alone)."""
        chart = storm_chart(self.dashboard.events.storm(buckets=60))
        template = "storm_chart.html.j2" if _arg(request, b"part") else "storm.html.j2"
        return self.dashboard.page(request, template, chart=chart, session=session,
                                   since=self.dashboard.events.last_seq, view="storm")

    def images(self, request: Request, session: Session) -> bytes | int:
        """The image cache: versions, fetches, the fetch form (or the live part alone)."""
        fetches = self.dashboard.api.image_fetches
        live = _arg(request, b"part") is not None
        template = "images_live.html.j2" if live else "images.html.j2"
        flash, session.flash = ([], session.flash) if live else (session.flash, [])
        since = self.dashboard.events.last_seq
        if fetches is None:
            return self.dashboard.page(request, template, session=session, since=since,
                                       view="images", flash=flash, cache=None)
        return self.dashboard.run(
            request, fetches.snapshot,
            lambda cache: self.dashboard.page(request, template, session=session, since=since,
                                              view="images", flash=flash, cache=cache,
                                              lines=IMAGE_LINES))

    def fetch_image(self, request: Request, session: Session) -> bytes:
        """Start a release fetch from the form, then back to the images page."""
        fetches = self.dashboard.api.image_fetches
        os_name = _arg(request, b"os") or ""
        body: dict[str, Any] = {"os": os_name}
        line = (_arg(request, b"line") or "").strip()
        if line:
            body[IMAGE_LINES.get(os_name, ("line", ()))[0]] = line
        for name in ("version", "base_url"):
            value = (_arg(request, name.encode()) or "").strip()
            if value:
                body[name] = value
        if _arg(request, b"pxe_only") == "yes":
            body["pxe_only"] = True
        try:
            if fetches is None:
                raise HttpError(http.NOT_FOUND, "no image cache here (provision.images_dir)")
            with acting_as(session.actor):
                status = fetches.start(body)
        except Exception as exc:
            _code, message = AdminResource.error_of(Failure(exc))
            session.flash.append(("error", f"Fetch: {message}"))
            log.warn("dashboard: session {label}: image fetch {body} refused: {message}",
                     label=session.label, body=json.dumps(body)[:200], message=message)
        else:
            log.info("{actor} (dashboard session {label}): image fetch {body} started",
                     actor=session.actor, label=session.label, body=json.dumps(body)[:200])
            session.flash.append(("ok", f"Fetch of {status['os']} {line or 'stable'} "
                                        f"{status['version']} started."))
        return _redirect(request, "/dashboard/images")

    def machine(self, request: Request, session: Session, serial: str) -> int:
        """A machine's page (or its live part)."""
        since = self.dashboard.events.last_seq
        template = ("machine_live.html.j2" if _arg(request, b"part") else
                    "machine.html.j2")
        flash, session.flash = session.flash, []
        return self.dashboard.run(
            request, lambda: self.dashboard.machine(serial),
            lambda context: self.dashboard.page(
                request, template, session=session, since=since, view="machine",
                flash=flash, actions=ACTIONS, states=[s.value for s in HostState],
                profiles=self.profile_names(), **context),
        )

    def profile_names(self) -> list[str]:
        """The profiles a machine can be moved to: the configured ones and ``default``."""
        names = [p.name for p in self.dashboard.api.provisioner.config.profiles]
        return [*names, "default"] if "default" not in names else names

    def action(self, request: Request, session: Session, serial: str) -> bytes | int:
        """Confirm an action, then run it and go back to the machine's page."""
        action = _arg(request, b"action") or ""
        state = _arg(request, b"state") or ""
        profile = _arg(request, b"profile") or ""
        if (action not in ACTIONS
                or (action == "set_state" and state not in {s.value for s in HostState})
                or (action == "move" and profile not in self.profile_names())):
            log.warn("dashboard: session {label} from {client} sent an unknown action "
                     "{action!r} for {serial!r}", label=session.label, client=_client(request),
                     action=action[:40], serial=serial[:80])
            request.setResponseCode(http.BAD_REQUEST)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"unknown action\n"
        if _arg(request, b"confirm") != "yes":
            return self.dashboard.page(
                request, "confirm.html.j2", session=session, serial=serial, action=action,
                state=state, profile=profile, description=ACTIONS[action], view="machine")
        prov = self.dashboard.api.provisioner
        who = f"{session.actor} (dashboard session {session.label} from {_client(request)})"
        detail = f"{action} {profile if action == 'move' else state}".strip()
        log.info("{who}: {action} for host {serial}", who=who, action=detail, serial=serial)

        def work() -> Any:
            # The audit commit names the session's actor, as the admin API does.
            with acting_as(session.actor):
                if action == "reinstall":
                    return prov.set_state(serial, HostState.CONFIGURED.value)
                if action == "mark_fresh":
                    return prov.mark_fresh(serial)
                if action == "approve":
                    return prov.approve(serial)
                if action == "remove":
                    return prov.remove(serial)
                if action == "move":
                    return prov.move(serial, profile)
                return prov.set_state(serial, state)

        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))
        # A removed machine has no page left: its outcome shows on the list.
        here = "/" if action == "remove" else "/dashboard/machine/" + quote(serial, safe="")

        def done(_host: Any) -> None:
            log.info("{who}: {action} for host {serial} stored", who=who, action=detail,
                     serial=serial)
            session.flash.append(("ok", f"{ACTIONS[action]}: done ({detail})."))
            if not finished:
                request.write(_redirect(request, here))
                request.finish()

        def failed(failure: Failure) -> None:
            _code, message = AdminResource.error_of(failure)
            log.warn("{who}: {action} for host {serial} refused: {message}", who=who,
                     action=detail, serial=serial, message=message)
            session.flash.append(("error", f"{ACTIONS[action]}: {message}"))
            if not finished:
                request.write(_redirect(request, here))
                request.finish()

        self.dashboard.api.run(work).addCallbacks(done, failed)
        return NOT_DONE_YET


def dashboard_children(api: ProvisioningApi, events: BootEventRecorder, *,
                       reactor: Any = None) -> dict[bytes, Resource]:
    """The dashboard's resources by first path segment (``b""`` is ``/``)."""
    return Dashboard(api, events, reactor=reactor).children()


__all__ = ["ACTIONS", "SEGMENT", "STATIC_FILES", "Dashboard", "DashboardResource",
           "MachinesPage", "dashboard_children"]
