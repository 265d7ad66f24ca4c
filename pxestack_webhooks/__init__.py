"""pxestack-webhooks: POST a signed JSON document to chosen URLs when machines change.

An extension of pxestack (entry point ``webhooks`` in the ``pxestack.extensions`` group)
built only on the public API, :mod:`pxestack.extensions`::

    extensions:
      - use: webhooks
        config:
          endpoints:
            - url: https://ops.example.com/pxestack
              secret_file: /etc/pxestack/webhook.secret
              events: [enrolled, installed, boot_failed]

Events (from the boot-event recorder): ``enrolled`` (first contact created the record),
``state_changed`` (``installing``, ``installed``, ``running``, ``configured``),
``installed``, ``boot_failed`` (a TFTP transfer that timed out or failed) and
``admin_action`` (a successful admin API change).  Each document is signed with
HMAC-SHA256 (``X-Pxestack-Signature: sha256=<hex>``), queued durably and retried with
exponential back-off (:mod:`pxestack_webhooks.queue`).  See docs/extensions.md.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import Counter, Gauge
from twisted.application import service
from twisted.internet import defer

from pxestack.bootevents import STATE_PHASES, BootEvent
from pxestack.extensions import ConfigSection, Extension, ExtensionContext
from pxestack_webhooks.queue import Counts, EndpointQueue, Post, RetryPolicy

#: The events an endpoint may choose.
EVENTS = ("enrolled", "state_changed", "installed", "boot_failed", "admin_action")
#: TFTP outcomes that are not a failed boot (a completed transfer, a client's size probe).
TFTP_FINE = frozenset({"complete", "aborted"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One configured receiver."""

    url: str
    secret: bytes
    events: frozenset[str]


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """The extension's validated ``config``."""

    endpoints: tuple[Endpoint, ...]
    policy: RetryPolicy
    max_queue: int


def event_kinds(event: BootEvent) -> list[str]:
    """The webhook events a recorded step (or notice) is."""
    kinds: list[str] = []
    if event.phase == "enrolled":
        kinds.append("enrolled")
    if event.phase in STATE_PHASES:
        kinds.append("state_changed")
    if event.phase == "installed":
        kinds.append("installed")
    if event.phase == "tftp" and event.detail.rpartition(" ")[2] not in TFTP_FINE:
        kinds.append("boot_failed")
    if event.phase == "admin":
        kinds.append("admin_action")
    return kinds


def document(kind: str, event: BootEvent, delivery_id: str) -> bytes:
    """The JSON body for *event* as a *kind* webhook."""
    body: dict[str, Any] = {
        "id": delivery_id,
        "event": kind,
        "time": round(event.time, 3),
        "serial": event.serial,
        "mac": event.mac,
        "ip": event.ip,
        "phase": event.phase,
        "detail": event.detail,
    }
    if kind == "state_changed":
        body["state"] = event.phase
    if kind == "admin_action":
        action, _, actor = event.detail.partition(" by ")
        body["action"], body["actor"] = action, actor or None
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def _read_endpoint(section: ConfigSection) -> Endpoint | None:
    url = section.str("url")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            section.problem("url", f"{url!r} is not an http:// or https:// URL")
    secret = section.str("secret", None)
    secret_file = section.path("secret_file", None)
    if (secret is None) == (secret_file is None):
        section.problem("secret", "give exactly one of secret and secret_file")
    if secret_file is not None:
        try:
            secret = secret_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            section.problem("secret_file", f"cannot be read: {exc}")
    if secret is not None and len(secret) < 16:
        section.problem("secret" if secret_file is None else "secret_file",
                        "is shorter than 16 characters")
    events = section.str_list("events", EVENTS)
    for index, name in enumerate(events):
        if name not in EVENTS:
            section.problem(f"events[{index}]", f"{name!r} is not one of {', '.join(EVENTS)}")
    section.finish()
    if url is None or secret is None:
        return None
    return Endpoint(url, secret.encode(), frozenset(events))


class WebhookService(service.Service):
    """Owns the queues: loads them at start, stops sending at stop (pending stays)."""

    def __init__(self, context: ExtensionContext, settings: WebhookSettings,
                 post: Post | None = None) -> None:
        self.context = context
        self.settings = settings
        registry = context.metrics.registry
        self._metric = Counter("pxestack_webhooks_deliveries", "webhook deliveries, by what "
                               "became of them", ["outcome"], registry=registry)
        self._pending = Gauge("pxestack_webhooks_pending", "webhook deliveries waiting",
                              registry=registry)
        self.counts = Counts(on_change=self._changed)
        self._post = post or agent_post(context.reactor)
        self.queues: list[tuple[Endpoint, EndpointQueue]] = []
        for index, endpoint in enumerate(settings.endpoints):
            directory = context.state_dir / "queue" / f"{index}-{_slug(endpoint.url)}"
            self.queues.append((endpoint, EndpointQueue(
                endpoint.url, endpoint.secret, directory, self._post, context.reactor,
                settings.policy, self.counts, self._has_room)))

    def set_post(self, post: Post) -> None:
        """Send with *post* instead of twisted.web's Agent (tests, other transports)."""
        self._post = post
        for _endpoint, queue in self.queues:
            queue.post = post

    def _changed(self, name: str) -> None:
        self._metric.labels(outcome=name).inc()
        self._pending.set(self.pending())

    def pending(self) -> int:
        """Deliveries waiting, in all queues."""
        return sum(len(q.pending) for _e, q in self.queues)

    def _has_room(self) -> bool:
        return self.pending() < self.settings.max_queue

    def startService(self) -> None:
        """Load what a previous run left and start sending."""
        for _endpoint, queue in self.queues:
            queue.load()
        self._pending.set(self.pending())
        super().startService()
        for _endpoint, queue in self.queues:
            queue.start()

    def stopService(self) -> Any:
        """Stop sending; pending deliveries stay on disk for the next start."""
        for _endpoint, queue in self.queues:
            queue.stop()
        return super().stopService()

    def on_event(self, event: BootEvent) -> None:
        """A subscriber of the event bus: queue a delivery per chosen endpoint and kind."""
        if not self.running:
            return
        for kind in event_kinds(event):
            for endpoint, queue in self.queues:
                if kind in endpoint.events:
                    delivery_id = str(uuid.uuid4())
                    try:
                        queue.add(delivery_id, kind, document(kind, event, delivery_id))
                    except OSError as exc:
                        self.context.log.error(
                            "webhooks: cannot queue a {kind} delivery: {error}",
                            kind=kind, error=str(exc))


def _slug(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def agent_post(reactor: Any) -> Post:
    """POST with twisted.web's ``Agent`` (a persistent connection pool); the status code."""
    from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
    from twisted.web.http_headers import Headers

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 2
    agent = Agent(reactor, pool=pool)

    def post(url: str, body: bytes, headers: Mapping[str, str]) -> defer.Deferred[int]:
        sent: defer.Deferred[Any] = agent.request(
            b"POST", url.encode("ascii"),
            Headers({k.encode(): [v.encode()] for k, v in headers.items()}),
            FileBodyProducer(BytesIO(body)),
        )

        def status(response: Any) -> defer.Deferred[int]:
            code = int(response.code)
            # Read (and discard) the answer so the connection can be reused.
            done: defer.Deferred[Any] = readBody(response)
            done.addErrback(lambda _f: None)
            done.addCallback(lambda _body: code)
            return done

        sent.addCallback(status)
        return sent  # fires with the status code

    return post


class WebhooksExtension(Extension):
    """Signed JSON webhooks for boot events, queued durably and retried."""

    description = "webhooks: signed JSON POSTs for enrolment, states, failures, admin actions"

    def read_config(self, section: ConfigSection) -> WebhookSettings:
        endpoints = [_read_endpoint(s) for s in section.sections("endpoints")]
        if not endpoints:
            section.problem("endpoints", "is required: a list of {url, secret, events}")
        policy = RetryPolicy(
            initial_delay=section.float("retry_initial", 1.0, minimum=0.01),
            max_delay=section.float("retry_max_delay", 300.0, minimum=0.01),
            retry_window=section.float("retry_window", 86400.0, minimum=1.0),
            timeout=section.float("timeout", 10.0, minimum=0.1),
        )
        return WebhookSettings(
            endpoints=tuple(e for e in endpoints if e is not None),
            policy=policy,
            max_queue=section.int("max_queue", 10000, minimum=1, maximum=1000000),
        )

    def setup(self, context: ExtensionContext, config: Any) -> None:
        webhooks = WebhookService(context, config)
        context.add_service(webhooks)
        context.subscribe(webhooks.on_event)
        for endpoint in config.endpoints:
            context.log.info("webhooks to {url} for {events}", url=loggable_url(endpoint.url),
                             events=", ".join(sorted(endpoint.events)))


def loggable_url(url: str) -> str:
    """*url* for a log line: a receiver's URL may carry a credential in its user
    information or its query (``?token=...``), so both are left out."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # not a number: the configuration check refuses such a URL
        port = None
    netloc = host + (f":{port}" if port is not None else "")
    hidden = " (query not shown)" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{hidden}"


__all__ = ["EVENTS", "Endpoint", "WebhookService", "WebhookSettings", "WebhooksExtension",
           "document", "event_kinds", "loggable_url"]
