"""Wire the provisioning layer into pxestack's service tree.

:func:`provisioning_extensions` is what :func:`pxestack.app.build_root_service` calls when
the configuration has a ``provision:`` section.  It opens the cluster directory (verifying
its git repository), builds the :class:`~pxestack.provision.provisioner.Provisioner`, the
DHCP :class:`~pxestack.provision.policy.ProvisioningPolicy` and the HTTP resources, and
returns them as :class:`pxestack.service.Extensions`, together with a
:class:`ProvisioningService` that runs the store's thread pool and its periodic work
(re-reading hand-edited records for DHCP, retrying failed git commits).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from pxestack.bootevents import STATE_PHASES, BootEventRecorder
from pxestack.config import Config
from pxestack.config.checks import admin_tokens, provision_base_url
from pxestack.config.provision import ProvisionConfig
from pxestack.dhcp.seen import DhcpSightings
from pxestack.errors import ConfigError, ConfigProblem
from pxestack.http.events import EventFeed
from pxestack.metrics import MeteredHostStore, Metrics
from pxestack.provision.api import ProvisioningApi
from pxestack.provision.bootconfig import LoaderConfigSource
from pxestack.provision.enrolment import EnrolmentGate, FirstContactLimiter
from pxestack.provision.mayu_import import (
    apply_mayu_text,
    export_mayu,
    merge_mayu_text,
    settings_differences,
)
from pxestack.provision.policy import ProvisioningPolicy
from pxestack.provision.provisioner import Provisioner, callback_key
from pxestack.provision.store import FileHostStore, isolate_git_config
from pxestack.service import Extensions
from pxestack.tftp.source import ChainSource, FileSource, FilesystemSource

#: Where ``PUT /admin/mayu_config`` keeps the accepted text (inside the audited cluster dir).
MAYU_CONFIG_FILE = "mayu-config.yaml"
#: Seconds between re-scans of the cluster directory (hand edits reach DHCP this fast).
RESCAN_INTERVAL = 2.0

log = Logger()


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class ProvisioningService(service.MultiService):
    """Runs the store's thread pool and the periodic re-scan / git-retry timer."""

    def __init__(
        self, store: FileHostStore, pool: ThreadPool, retry_interval: float, reactor: Any = None
    ) -> None:
        super().__init__()
        self.setName("provision")
        self.store = store
        self.pool = pool
        self._reactor = reactor
        #: Called first on stop (image fetches are cancelled so the pool can stop).
        self.on_stop: list[Any] = []
        timer = TimerService(min(RESCAN_INTERVAL, retry_interval), self.tick)
        if reactor is not None:
            timer.clock = reactor
        timer.setServiceParent(self)

    @property
    def reactor(self) -> Any:
        """The reactor threads report back to."""
        return self._reactor if self._reactor is not None else _default_reactor()

    def startService(self) -> None:
        """Start the pool before the timer's first tick needs it.

        The git configuration is isolated again here because this runs after ``twistd
        --uid`` (or ``run_as``) dropped root: see :func:`isolate_git_config`.  A damaged
        store is reported again here: the store found the damage while the service tree was
        built, before ``pxestack serve`` or twistd started logging.
        """
        isolate_git_config()
        damaged = getattr(self.store, "damaged", None)
        if damaged is not None:
            log.error(
                "the cluster directory is damaged and host records are read-only: {reason}",
                reason=damaged,
            )
        self.pool.start()
        super().startService()

    def stopService(self) -> defer.Deferred[None]:
        """Cancel image fetches, stop the timer, then let running store work finish and stop
        the pool."""
        for stop in self.on_stop:
            stop()
        d = defer.maybeDeferred(super().stopService)
        d.addBoth(lambda _: self.pool.stop())
        return d

    def tick(self) -> defer.Deferred[Any]:
        """Re-scan the cluster directory and retry any failed git commit (mayu #53)."""

        def work() -> None:
            self.store.refresh()
            if not self.store.retry_audit():
                log.error(
                    "git audit of {root} is behind: {health}",
                    root=str(self.store.root),
                    health=self.store.health(),
                )

        d = deferToThreadPool(self.reactor, self.pool, work)
        d.addErrback(lambda f: log.failure("provisioning maintenance failed", f))
        return d


class RecordedHostStore:
    """A host store that reports enrolment and every change of ``State`` as a boot step.

    It wraps a host store by delegation, like :class:`~pxestack.metrics.MeteredHostStore`:
    enrolment is the ``enrolled`` step; a new state among
    :data:`~pxestack.bootevents.STATE_PHASES` is the step of that name; the record's MAC
    addresses (known once the installer posted its host data) are linked to the serial, so
    the machine's DHCP and TFTP steps join its timeline.
    """

    def __init__(self, store: Any, events: BootEventRecorder,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._events = events
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def enrol(self, serial: str, make: Callable[..., Any], message: Any) -> Any:
        """The store's ``enrol``; a created record is the ``enrolled`` step."""
        versioned, created = self._store.enrol(serial, make, message)
        if created:
            self._report(versioned.host, "enrolled")
        return versioned, created

    def update(self, serial: str, change: Callable[[Any], Any], *,
               if_match: str | None = None) -> Any:
        """The store's ``update``; a change of ``State`` is reported after it is stored."""
        before: list[Any] = []

        def observed(host: Any) -> Any:
            before.append(getattr(host, "state", None))
            return change(host)

        versioned = self._store.update(serial, observed, if_match=if_match)
        after = getattr(versioned.host, "state", None)
        if before and before[-1] != after:
            state = str(getattr(after, "value", ""))
            if state in STATE_PHASES:
                self._report(versioned.host, state)
        return versioned

    def _report(self, host: Any, phase: str) -> None:
        try:
            for mac in getattr(host, "mac_addresses", ()):
                self._events.link(mac, host.serial)
            self._events.record(phase, self._clock(), serial=host.serial)
        except Exception:
            log.failure("recording a boot step failed", serial=host.serial)


def _admin_tokens(config: Config) -> dict[str, str]:
    problems: list[ConfigProblem] = []
    tokens = admin_tokens(config, problems)
    if problems:
        raise ConfigError(problems)
    return tokens


def _base_url(config: Config) -> str:
    problems: list[ConfigProblem] = []
    url = provision_base_url(config, problems)
    if problems:
        raise ConfigError(problems)
    return url


def _report_settings_source(
    config: Config, from_file: ProvisionConfig, applied: ProvisionConfig, saved: Path
) -> None:
    """Say at start-up which source of the mayu settings wins, and why.

    Settings changed through ``PUT /admin/mayu_config`` are saved in the cluster directory
    and win over the configuration file's ``provision:`` section (they are the later,
    audited decision, and mayu rewrote its own file on such a change).  A later edit of
    the file is therefore not applied: a warning names the keys where the two differ.
    """
    differences = settings_differences(from_file, applied)
    if not differences:
        log.info(
            "using the mayu settings saved in {path} (the same as the configuration file's)",
            path=str(saved),
        )
        return
    newer = ""
    try:
        if config.source and Path(config.source).stat().st_mtime > saved.stat().st_mtime:
            newer = " The configuration file was modified after the last API change."
    except OSError:
        pass
    shown = ", ".join(differences[:12]) + (" ..." if len(differences) > 12 else "")
    log.warn(
        "provision settings: {saved} (set through PUT /admin/mayu_config) wins over the "
        "provision section of {source}, which differs in {keys}: an API change is saved "
        "in the audited cluster directory and outlives restarts, so edits of these keys in "
        "the file are not applied.{newer} To use the file's values, remove {saved} with "
        "git rm (audited) and restart, or send them with `pxestack ctl config set`.",
        saved=str(saved), source=config.source, keys=shown, newer=newer,
    )


def enrolment_gate(prov: ProvisionConfig) -> tuple[DhcpSightings, EnrolmentGate]:
    """The enrolment gate of ``provision.enrolment`` and the sightings it reads.

    The :class:`DhcpSightings` goes to the DHCP service through
    :attr:`Extensions.dhcp_sightings`; the DHCP service attaches its lease store (server) or
    the PXE clients it answered (proxy) when it starts.
    """
    sightings = DhcpSightings()
    gate = EnrolmentGate(
        prov.enrolment,
        sightings=sightings,
        window=prov.enrolment_window,
        limiter=FirstContactLimiter(prov.first_contact_rate),
    )
    log.info(
        "enrolment of new machines: {mode} (provision.enrolment)", mode=prov.enrolment
    )
    return sightings, gate


def provisioning_extensions(config: Config, *, reactor: Any = None) -> Extensions:
    """Build the provisioning layer for *config* (``config.provision`` must be set)."""
    prov = config.provision
    if prov is None:
        raise ValueError("provisioning_extensions needs a provision: section")
    base_url = _base_url(config)
    tokens = _admin_tokens(config)
    # The store checks the cluster directory first, in a child process with a time limit:
    # damage makes it read-only with the reason in /admin/health, never a hang or a crash.
    store = FileHostStore(
        prov.cluster_dir, git=prov.git, git_name=prov.git_name, git_email=prov.git_email
    )
    saved = prov.cluster_dir / MAYU_CONFIG_FILE
    file_prov = prov
    if saved.exists():
        # A config set through PUT /admin/mayu_config outlives restarts (mayu rewrote its file).
        try:
            prov = apply_mayu_text(saved.read_text(encoding="utf-8"), prov)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError, ConfigError) as exc:
            store.mark_damaged(
                f"{saved} cannot be used ({type(exc).__name__}: {exc}); the configuration "
                "file's provision section is used instead. pxestack does not repair it: "
                f"restore it from the audit (`git -C {prov.cluster_dir} show "
                f"HEAD:{MAYU_CONFIG_FILE}`) or a backup, then restart pxestack"
            )
        else:
            _report_settings_source(config, file_prov, prov, saved)
    metrics = Metrics()
    events = BootEventRecorder()
    hosts = RecordedHostStore(MeteredHostStore(store, metrics), events)
    provisioner = Provisioner(
        prov, hosts, base_url=base_url,
        key=callback_key(prov.cluster_dir),
    )
    metrics.watch_hosts(lambda: [(host.state.value, host.profile) for host in provisioner.hosts()])

    pool = ThreadPool(minthreads=1, maxthreads=4, name="pxestack-provision")
    #: Provisioning jobs submitted and not finished (running or queued for a thread): the
    #: backlog boot-storm admission reads (``dhcp.admission.max_backlog``).
    in_flight = [0]

    def finished(result: Any) -> Any:
        in_flight[0] -= 1
        return result

    def run(work: Any) -> defer.Deferred[Any]:
        in_flight[0] += 1
        return deferToThreadPool(
            reactor if reactor is not None else _default_reactor(), pool, work
        ).addBoth(finished)

    def import_config(text: str) -> None:
        # Keys the client does not know (mayuctl's 2017 schema) keep their stored values;
        # the saved file holds the complete result, so a restart applies the same.
        merged = merge_mayu_text(text, provisioner.config)
        provisioner.config = apply_mayu_text(merged, provisioner.config)
        store.write_cluster_file(MAYU_CONFIG_FILE, merged.encode(), "updated mayu config")

    images = None
    if prov.images_dir is not None:
        from pxestack.http.assets import AssetResource

        images = AssetResource(Path(prov.images_dir), reactor=reactor)
        # The images have their own AssetStats (the site's cover only the asset root).
        metrics.watch_asset_stats(images.stats, prefix="images/")
    clock = (reactor if reactor is not None else _default_reactor()).seconds
    sightings, gate = enrolment_gate(prov)
    api = ProvisioningApi(
        provisioner,
        admin_token=None,
        admin_tokens=tokens,
        trusted_networks=prov.api.trusted_networks,
        client_certificates=(prov.api.client_ca_file is not None and config.http is not None
                             and config.http.tls is not None),
        admin_listener_only=config.http is not None and config.http.admin_listen is not None,
        run=run,
        images=images,
        accept_unauthenticated_callbacks=prov.api.accept_unauthenticated_callbacks,
        max_body_bytes=prov.api.max_body_bytes,
        max_json_depth=prov.api.max_json_depth,
        config_exporter=lambda: export_mayu(provisioner.config),
        config_importer=import_config,
        enrolment=gate,
        clock=clock,
        events=events,
        event_feed=EventFeed(events, reactor=reactor),
    )
    provisioning_service = ProvisioningService(store, pool, prov.git_retry_interval, reactor)
    if prov.images_dir is not None:
        from pxestack.provision.imagefetch import ImageFetches
        from pxestack.provision.images import ImageStore

        api.image_fetches = ImageFetches(ImageStore(Path(prov.images_dir)), run,
                                         report=api.image_step)
        provisioning_service.on_stop.append(api.image_fetches.cancel_all)
    return Extensions(
        boot_policy=ProvisioningPolicy(provisioner, installed_boot=prov.installed_boot),
        tftp_source=loader_config_source(config, provisioner),
        http_children=api.children(),
        services=[provisioning_service],
        metrics=metrics,
        dhcp_sightings=sightings,
        events=events,
        hosts=hosts,
        backlog=lambda: in_flight[0],
    )


def loader_config_source(config: Config, provisioner: Provisioner) -> FileSource | None:
    """The TFTP source: the per-host GRUB and PXELINUX configs
    (:class:`~pxestack.provision.bootconfig.LoaderConfigSource`), then the TFTP root.

    None (the TFTP service's own filesystem source, which TFTP worker processes open
    themselves) while every loader is iPXE: then no machine asks for such a config."""
    if config.tftp is None:
        return None
    loaders = set(config.dhcp.boot.loader.values()) if config.dhcp is not None else set()
    if config.provision is not None:
        loaders.update(p.loader for p in config.provision.profiles if p.loader is not None)
    if loaders <= {"ipxe"}:
        return None
    config.tftp.root.mkdir(parents=True, exist_ok=True)
    return ChainSource(LoaderConfigSource(provisioner),
                       FilesystemSource(config.tftp.root, lowercase=config.tftp.lowercase))


__all__ = ["MAYU_CONFIG_FILE", "ProvisioningService", "RecordedHostStore", "enrolment_gate",
           "loader_config_source", "provisioning_extensions"]
