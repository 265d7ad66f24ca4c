"""pxestack's extension API: add servers, HTTP resources, boot policies, file sources and
event consumers to ``pxestack serve`` and ``twistd pxestack`` without writing a program.

An extension is a subclass of :class:`Extension`, published under the entry-point group
``pxestack.extensions`` (:data:`GROUP`) and enabled in the configuration file::

    extensions:
      - use: syslog            # the entry point's name
        config: {listen: "0.0.0.0:514"}

While the service tree is built (before any port is opened), every enabled extension is
loaded, its :meth:`Extension.read_config` validates its ``config`` mapping with the same
reader as the rest of the file (problems are named ``extensions[0].config.listen``), and its
:meth:`Extension.setup` receives an :class:`ExtensionContext` through which it contributes:

* services (:meth:`ExtensionContext.add_service`): any ``IService``, for example a protocol
  server; started after pxestack's own servers and stopped before them, extensions in the
  reverse order of the file;
* HTTP resources (:meth:`ExtensionContext.add_http_child`), by first path segment;
* a boot policy wrapper (:meth:`ExtensionContext.wrap_boot_policy`) and a TFTP
  :class:`~pxestack.tftp.source.FileSource` (:meth:`ExtensionContext.set_file_source`);
* event subscribers (:meth:`ExtensionContext.subscribe`), called in the reactor thread.

An extension that cannot be found, loaded, configured, set up or started is an operator
error at start-up: a :class:`~pxestack.errors.ConfigError` naming ``extensions[i]``
(``pxestack serve`` exits with status 2, ``twistd`` reports a usage error), never a
traceback in the reactor later.

This module is part of the composition layer: it imports nothing above
:mod:`pxestack.service`; the host store view is handed in by the caller
(:func:`pxestack.app.build_root_service`).  See docs/extensions.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, ClassVar, Protocol

from twisted.application import service
from twisted.logger import Logger

# Extensions keep durable files under their state_dir with the same helper as pxestack.
from pxestack._fs import atomic_write, fsync_dir
from pxestack.bootevents import BootEvent, BootEventRecorder, normal_mac
from pxestack.config import Config, ExtensionConfig
from pxestack.config._reader import Section
from pxestack.errors import ConfigError, ConfigProblem
from pxestack.service import Extensions, PxeStackService

#: The entry-point group extensions are published under.
GROUP = "pxestack.extensions"
#: First path segments pxestack serves itself; an extension may not take them.
RESERVED_HTTP_CHILDREN = frozenset({
    b"", b"admin", b"metrics", b"dashboard", b"static", b"api", b"boot", b"images",
    b"callback", b"hosts", b"ipxe",
})
_CHILD_NAME = re.compile(rb"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: The section an extension's schema reads: the project's configuration reader.  Its
#: getters (``str``, ``int``, ``float``, ``bool``, ``listen``, ``path``, ``ipv4``,
#: ``str_list``, ``mapping``, ``sections``, ...) record a problem named by its key path
#: and return the default, so every mistake is reported at once.
ConfigSection = Section

log = Logger()


class HostView(Protocol):
    """What an extension may read of the host records (``pxestack.provision``'s store).

    Records are :class:`pxestack.provision.model.Host` values (``serial``, ``state``,
    ``profile``, ``mac_addresses``, ``internal_addr``, ...).  The calls read files: call
    them from a thread (``twisted.internet.threads.deferToThread``) when the store may be
    large.  An extension with :attr:`Extension.host_writes` gets the store itself instead.
    """

    def hosts(self) -> list[Any]:
        """Every host record."""

    def read(self, serial: str) -> Any | None:
        """The record of *serial*, or None."""

    def host_for_mac(self, mac: str) -> Any | None:
        """The record with *mac* among its MAC addresses, or None."""

    def host_for_ip(self, ip: str) -> Any | None:
        """The record whose ``InternalAddr`` is *ip*, or None."""


class ReadOnlyHosts:
    """A :class:`HostView` over a host store: reads only, writes are not reachable."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def hosts(self) -> list[Any]:
        """Every host record."""
        return list(self._store.hosts())

    def read(self, serial: str) -> Any | None:
        """The record of *serial*, or None."""
        versioned = self._store.read(serial)
        return None if versioned is None else versioned.host

    def host_for_mac(self, mac: str) -> Any | None:
        """The record with *mac* among its MAC addresses, or None."""
        return self._store.host_for_mac(mac)

    def host_for_ip(self, ip: str) -> Any | None:
        """The record whose ``InternalAddr`` is *ip*, or None."""
        try:
            wanted = IPv4Address(ip)
        except ValueError:
            return None
        for host in self._store.hosts():
            if getattr(host, "internal_addr", None) == wanted:
                return host
        return None


@dataclass(frozen=True, slots=True)
class Machine:
    """Who is behind an address: a serial, a MAC, or both."""

    serial: str | None = None
    mac: str | None = None


class EventBus:
    """The boot-event recorder as an extension sees it.

    ``record`` and ``log`` report (with the reactor's clock); ``subscribe`` listens to every
    step and log line (see :meth:`ExtensionContext.subscribe`, which also unsubscribes on
    stop); ``recorder`` is the :class:`~pxestack.bootevents.BootEventRecorder` itself, for
    reading (``steps``, ``logs``, ``since``, ``machine_of_ip``).
    """

    def __init__(self, recorder: BootEventRecorder, clock: Callable[[], float]) -> None:
        self.recorder = recorder
        self._clock = clock

    def record(self, phase: str, **details: Any) -> BootEvent | None:
        """Record a boot step (see :meth:`BootEventRecorder.record`)."""
        return self.recorder.record(phase, self._clock(), **details)

    def log(self, line: str, **details: Any) -> BootEvent | None:
        """Record a log line of a machine (see :meth:`BootEventRecorder.log`)."""
        return self.recorder.log(line, self._clock(), **details)


class Extension:
    """Subclass this and publish the class under the ``pxestack.extensions`` group.

    The class is instantiated with no arguments once per start; override
    :meth:`read_config` (the schema) and :meth:`setup` (the contributions).
    """

    #: Shown by ``pxestack extensions list``.
    description: ClassVar[str] = ""
    #: True to receive the writable host store in :attr:`ExtensionContext.hosts`.
    host_writes: ClassVar[bool] = False

    def read_config(self, section: ConfigSection) -> Any:
        """Validate this extension's ``config`` mapping and return what :meth:`setup`
        receives.  Read every key with *section*'s getters; unknown keys are reported
        afterwards.  The default accepts an empty mapping only."""
        return None

    def setup(self, context: ExtensionContext, config: Any) -> None:
        """Contribute services, resources, policies and subscribers through *context*.

        Runs once, before any port is opened.  Raise :class:`ConfigError` (or any
        exception) to refuse the start; open nothing here: do it in a service's
        ``startService``.
        """


@dataclass
class ExtensionContext:
    """What an extension receives in :meth:`Extension.setup`."""

    #: The entry point name (``extensions[i].use``).
    name: str
    #: The key path of this extension's entry, ``extensions[i]``.
    key: str
    #: The reactor every service runs on.
    reactor: Any
    #: The boot-event recorder (reporting, reading, listening).
    events: EventBus
    #: The :class:`pxestack.metrics.Metrics`; register own collectors in ``metrics.registry``
    #: (served at ``/metrics``), named ``pxestack_<extension>_...``.
    metrics: Any
    #: This extension's own directory, ``<state_dir>/extensions/<name>`` (created, 0700).
    state_dir: Path
    #: The host records (:class:`HostView`), or None without a ``provision:`` section.
    hosts: Any
    #: The whole configuration (read-only).
    config: Config
    #: A logger whose namespace is ``pxestack.extensions.<name>``.
    log: Logger
    _target: Extensions = field(repr=False, default_factory=Extensions)
    _leases: list[Callable[[str], bytes | None]] = field(repr=False, default_factory=list)
    _reader: ReadOnlyHosts | None = field(repr=False, default=None)
    services: list[service.IService] = field(default_factory=list)
    subscribers: list[Callable[[BootEvent], None]] = field(default_factory=list)

    def add_service(self, child: service.IService) -> None:
        """Run *child* (a protocol server, a worker) with pxestack's services."""
        self.services.append(child)

    def add_http_child(self, name: bytes, resource: Any) -> None:
        """Serve *resource* at ``/<name>/`` on pxestack's HTTP site (when ``http:`` is on)."""
        if not _CHILD_NAME.fullmatch(name) or name in RESERVED_HTTP_CHILDREN \
                or name in self._target.http_children:
            raise ConfigError([ConfigProblem(
                self.key, f"{self.name}: the HTTP path /{name.decode(errors='replace')}/ "
                "is not free")])
        self._target.http_children[name] = resource

    @property
    def http_enabled(self) -> bool:
        """Whether pxestack serves HTTP (resources added without it are never reachable)."""
        return self.config.http is not None

    def wrap_boot_policy(self, wrap: Callable[[Any], Any]) -> None:
        """Replace the boot policy with ``wrap(current)``; *current* is the policy so far (a
        :class:`~pxestack.dhcp.policy.BootPolicy`, or None for the built-in default)."""
        self._target.boot_policy = wrap(self._target.boot_policy)

    def set_file_source(self, source: Any) -> None:
        """Serve TFTP paths from *source* (a :class:`~pxestack.tftp.source.FileSource`)."""
        self._target.tftp_source = source

    def subscribe(self, subscriber: Callable[[BootEvent], None]) -> None:
        """Call *subscriber* with every boot step and log line while pxestack runs, in the
        reactor thread; an exception it raises is logged, it stays subscribed."""
        self.subscribers.append(subscriber)

    def machine_of(self, ip: str) -> Machine | None:
        """The machine behind *ip*: the DHCP lease of the address, else the host record
        whose ``InternalAddr`` it is, else the address a recorded boot step came from."""
        mac: str | None = None
        for lookup in self._leases:
            try:
                mac = normal_mac(lookup(ip))
            except Exception:
                mac = None
            if mac is not None:
                break
        serial = self.events.recorder.serial_of(mac) if mac is not None else None
        reader = self._reader
        if serial is None and reader is not None:
            try:
                host = (reader.host_for_mac(mac) if mac is not None else None) \
                    or reader.host_for_ip(ip)
            except Exception:
                host = None
            if host is not None:
                serial = host.serial
        if mac is None and serial is None:
            found = self.events.recorder.machine_of_ip(ip)
            if found is not None:
                serial, mac = found
        if mac is None and serial is None:
            return None
        return Machine(serial=serial, mac=mac)


def installed() -> dict[str, metadata.EntryPoint]:
    """The installed extensions, by entry point name."""
    return {ep.name: ep for ep in metadata.entry_points(group=GROUP)}


Factory = Callable[[], Extension]


def _load(entry: ExtensionConfig, key: str,
          available: Mapping[str, Any] | None) -> tuple[Extension | None, ConfigProblem | None]:
    if available is not None:
        target = available.get(entry.use)
        names = sorted(available)
    else:
        eps = installed()
        names = sorted(eps)
        target = None
        if entry.use in eps:
            try:
                target = eps[entry.use].load()
            except Exception as exc:
                return None, ConfigProblem(
                    f"{key}.use", f"{entry.use!r} cannot be loaded: {type(exc).__name__}: {exc}")
    if target is None:
        return None, ConfigProblem(
            f"{key}.use", f"no installed extension is named {entry.use!r} "
            f"(installed: {', '.join(names) or 'none'})")
    try:
        made = target() if isinstance(target, type) or not isinstance(target, Extension) \
            else target
    except Exception as exc:
        return None, ConfigProblem(
            f"{key}.use", f"{entry.use!r} cannot be made: {type(exc).__name__}: {exc}")
    if not isinstance(made, Extension):
        return None, ConfigProblem(
            f"{key}.use", f"{entry.use!r} is not a pxestack.extensions.Extension")
    return made, None


@dataclass
class LoadedExtension:
    """One enabled extension after its setup."""

    key: str
    extension: Extension
    context: ExtensionContext


def check_extensions(config: Config, *,
                     available: Mapping[str, Any] | None = None) -> list[ConfigProblem]:
    """Load every enabled extension and validate its ``config`` (``serve --check``)."""
    problems: list[ConfigProblem] = []
    for index, entry in enumerate(config.extensions):
        key = f"extensions[{index}]"
        ext, problem = _load(entry, key, available)
        if problem is not None:
            problems.append(problem)
            continue
        assert ext is not None
        _read_config(ext, entry, key, problems)
    return problems


def _read_config(ext: Extension, entry: ExtensionConfig, key: str,
                 problems: list[ConfigProblem]) -> Any:
    section = Section(dict(entry.config), f"{key}.config", problems, entry.base_dir)
    try:
        value = ext.read_config(section)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None
    except Exception as exc:
        problems.append(ConfigProblem(
            f"{key}.config", f"{entry.use}: cannot read it: {type(exc).__name__}: {exc}"))
        return None
    section.finish()
    return value


def setup_extensions(
    config: Config,
    target: Extensions,
    *,
    reactor: Any = None,
    available: Mapping[str, Any] | None = None,
) -> list[LoadedExtension]:
    """Load, configure and set up every extension *config* enables, into *target*.

    Call before :func:`pxestack.service.build_service` (so that the resources, the policy
    and the file source are in place), then :func:`attach_extensions` on the root service.
    Every problem of every extension is collected into one :class:`ConfigError`.
    *target*'s ``hosts`` is the host store (or None); ``available`` replaces the
    entry points (tests).
    """
    if not config.extensions:
        return []
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    if target.events is None:
        target.events = BootEventRecorder()
    if target.metrics is None:
        from pxestack.metrics import Metrics

        target.metrics = Metrics()
    problems: list[ConfigProblem] = []
    loaded: list[LoadedExtension] = []
    for index, entry in enumerate(config.extensions):
        key = f"extensions[{index}]"
        ext, problem = _load(entry, key, available)
        if problem is not None:
            problems.append(problem)
            continue
        assert ext is not None
        before = len(problems)
        value = _read_config(ext, entry, key, problems)
        if len(problems) > before:
            continue
        state_dir = config.state_dir / "extensions" / entry.use
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            problems.append(ConfigProblem(key, f"{entry.use}: cannot create {state_dir}: {exc}"))
            continue
        reader = ReadOnlyHosts(target.hosts) if target.hosts is not None else None
        hosts = target.hosts if ext.host_writes else reader
        context = ExtensionContext(
            name=entry.use, key=key, reactor=reactor,
            events=EventBus(target.events, reactor.seconds),
            metrics=target.metrics, state_dir=state_dir, hosts=hosts, config=config,
            log=Logger(namespace=f"pxestack.extensions.{entry.use}"), _target=target,
            _reader=reader,
        )
        try:
            ext.setup(context, value)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        except Exception as exc:
            problems.append(ConfigProblem(
                key, f"{entry.use}: cannot be set up: {type(exc).__name__}: {exc}"))
            continue
        loaded.append(LoadedExtension(key, ext, context))
    if problems:
        raise ConfigError(problems)
    return loaded


class ExtensionService(service.MultiService):
    """One extension's services and subscriptions, started and stopped together."""

    def __init__(self, loaded: LoadedExtension) -> None:
        super().__init__()
        self.loaded = loaded
        self.setName(loaded.context.name)
        self._unsubscribe: list[Callable[[], None]] = []
        for child in loaded.context.services:
            child.setServiceParent(self)

    def _problem(self, what: str, exc: BaseException) -> ConfigError:
        ctx = self.loaded.context
        return ConfigError([ConfigProblem(
            ctx.key, f"{ctx.name}: cannot {what}: {type(exc).__name__}: {exc}")])

    def privilegedStartService(self) -> None:
        """Open the extension's privileged ports; a failure names the extension."""
        try:
            super().privilegedStartService()
        except ConfigError:
            raise
        except Exception as exc:
            raise self._problem("start", exc) from exc

    def startService(self) -> None:
        """Start the services, then subscribe; a failure names the extension."""
        try:
            super().startService()
        except ConfigError:
            raise
        except Exception as exc:
            raise self._problem("start", exc) from exc
        ctx = self.loaded.context
        for subscriber in ctx.subscribers:
            stop = ctx.events.recorder.subscribe(_in_reactor(ctx, subscriber))
            if stop is None:
                raise ConfigError([ConfigProblem(
                    ctx.key, f"{ctx.name}: too many event subscribers")])
            self._unsubscribe.append(stop)

    def stopService(self) -> Any:
        """Unsubscribe, then stop the services (in reverse order)."""
        for stop in self._unsubscribe:
            stop()
        self._unsubscribe.clear()
        return super().stopService()


def _in_reactor(ctx: ExtensionContext,
                subscriber: Callable[[BootEvent], None]) -> Callable[[BootEvent], None]:
    """*subscriber* called in the reactor thread (events come from the provisioning thread
    pool too), its exceptions logged."""

    def call(event: BootEvent) -> None:
        try:
            subscriber(event)
        except Exception:
            ctx.log.failure("an event subscriber of {name} failed", name=ctx.name)

    def deliver(event: BootEvent) -> None:
        schedule = getattr(ctx.reactor, "callFromThread", None)
        if schedule is None:
            call(event)
        else:
            schedule(call, event)

    return deliver


class ExtensionsService(service.MultiService):
    """Every extension's :class:`ExtensionService`, in the order of the file.

    Added to the root after pxestack's own services: started last, stopped first; the
    extensions stop in the reverse order of the file.
    """

    def __init__(self, loaded: Sequence[LoadedExtension]) -> None:
        super().__init__()
        self.setName("extensions")
        for item in loaded:
            ExtensionService(item).setServiceParent(self)


def attach_extensions(root: PxeStackService, loaded: Sequence[LoadedExtension]) -> None:
    """Add the extensions' services to *root* (after its own) and give them its DHCP
    lease lookups (:meth:`ExtensionContext.machine_of`)."""
    if not loaded:
        return
    lookups: list[Callable[[str], bytes | None]] = [
        child.mac_of for child in root if hasattr(child, "mac_of")
    ]
    for item in loaded:
        item.context._leases.extend(lookups)
    ExtensionsService(loaded).setServiceParent(root)


def describe(config: Config | None = None) -> list[dict[str, Any]]:
    """Every installed extension and every enabled one: name, distribution, description,
    whether the configuration enables it, and a load error if any
    (``pxestack extensions list``)."""
    enabled = {e.use: i for i, e in enumerate(config.extensions)} if config else {}
    rows: list[dict[str, Any]] = []
    eps = installed()
    for name in sorted(set(eps) | set(enabled)):
        ep = eps.get(name)
        row: dict[str, Any] = {
            "name": name,
            "distribution": _distribution(ep),
            "target": ep.value if ep is not None else None,
            "enabled": name in enabled,
            "key": f"extensions[{enabled[name]}]" if name in enabled else None,
            "description": "",
            "error": None if ep is not None else "not installed",
        }
        if ep is not None:
            try:
                target = ep.load()
                row["description"] = str(getattr(target, "description", "") or "")
            except Exception as exc:
                row["error"] = f"cannot be loaded: {type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def _distribution(ep: metadata.EntryPoint | None) -> str | None:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None
    return f"{dist.metadata['Name']} {dist.version}"


__all__ = [
    "GROUP",
    "ConfigSection",
    "EventBus",
    "Extension",
    "ExtensionContext",
    "ExtensionService",
    "ExtensionsService",
    "HostView",
    "LoadedExtension",
    "Machine",
    "ReadOnlyHosts",
    "atomic_write",
    "attach_extensions",
    "check_extensions",
    "describe",
    "fsync_dir",
    "installed",
    "setup_extensions",
]
