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

from pxestack.bootevents import BootEventRecorder
from pxestack.config import Config
from pxestack.config.checks import admin_tokens, provision_base_url
from pxestack.config.provision import ProvisionConfig
from pxestack.dhcp.seen import DhcpSightings
from pxestack.errors import ConfigError, ConfigProblem
from pxestack.http.events import EventFeed
from pxestack.metrics import Metrics, ObservedHostStore, boot_steps, log_host_change
from pxestack.provision.api import ProvisioningApi
from pxestack.provision.audit import isolate_git_config
from pxestack.provision.bootconfig import LoaderConfigSource
from pxestack.provision.enrolment import EnrolmentGate, FirstContactLimiter
from pxestack.provision.hoststore import CURRENT_ACTOR, HostStore
from pxestack.provision.mayu_import import (
    apply_mayu_text,
    export_mayu,
    merge_mayu_text,
    settings_differences,
)
from pxestack.provision.policy import ProvisioningPolicy
from pxestack.provision.provisioner import Provisioner, callback_key
from pxestack.provision.statelock import StateLock
from pxestack.provision.store import FileHostStore
from pxestack.service import Extensions
from pxestack.tftp.source import ChainSource, FileSource, FilesystemSource

#: Where ``PUT /admin/mayu_config`` keeps the accepted text (inside the audited cluster dir).
MAYU_CONFIG_FILE = "mayu-config.yaml"
#: Seconds between re-scans of the cluster directory (hand edits reach DHCP this fast).
RESCAN_INTERVAL = 2.0

log = Logger()


#: Threads of the provisioning pool.  A store write waits for its git audit commit, and
#: under load the audit pauses between commits so that the changes of that pause share
#: one commit (:mod:`pxestack.provision.audit`): a commit records at most as many changes
#: as there are threads waiting, so with four threads a 10 000-host cluster paid a root
#: tree of 10 000 entries per two changes.  Waiting threads cost no CPU; 64 is more than
#: ``dhcp.admission.max_backlog``'s default (32), so admission, not the pool, bounds how many
#: changes wait for one commit.
PROVISION_THREADS = 64


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class ProvisioningService(service.MultiService):
    """Runs the store's thread pool and the periodic re-scan / git-retry timer."""

    def __init__(
        self, store: HostStore, pool: ThreadPool, retry_interval: float, reactor: Any = None
    ) -> None:
        # The base is named, not reached through super(): its methods are unannotated, and
        # the strict check accepts calls into Twisted only when it sees whose they are.
        service.MultiService.__init__(self)
        self.name = "provision"
        self.store = store
        self.pool = pool
        self._reactor = reactor
        #: Called first on stop (image fetches are cancelled so the pool can stop).
        self.on_stop: list[Callable[[], object]] = []
        #: Called last on stop, after the pool's work finished (store lock, connections).
        self.after_stop: list[Callable[[], object]] = []
        #: Further periodic work run in the pool with every tick (the git audit exporter).
        self.periodic: list[Callable[[], object]] = []
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
        damaged = self.store.health().get("damaged")
        if damaged is not None:
            log.error(
                "the cluster directory is damaged and host records are read-only: {reason}",
                reason=damaged,
            )
        self.pool.start()
        service.MultiService.startService(self)

    def stopService(self) -> defer.Deferred[None]:
        """Cancel image fetches, stop the timer, then let running store work finish and stop
        the pool."""
        for stop in self.on_stop:
            stop()
        d = defer.maybeDeferred(super().stopService)
        d.addBoth(lambda _: self.pool.stop())

        def release(_: object) -> None:
            for close in self.after_stop:
                close()

        d.addBoth(release)
        return d

    def tick(self) -> defer.Deferred[None]:
        """Re-read the store (hand edits) and retry any failed audit entry (mayu #53)."""

        def work() -> None:
            self.store.refresh()
            for task in self.periodic:
                task()
            if not self.store.retry_audit():
                log.error("the host store's audit is behind: {health}", health=self.store.health())

        d = deferToThreadPool(self.reactor, self.pool, work)
        d.addErrback(lambda f: log.failure("provisioning maintenance failed", f))
        return d


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
    _base_url(config)
    _admin_tokens(config)
    # The store checks the cluster directory first, in a child process with a time limit:
    # damage makes it read-only with the reason in /admin/health, never a hang or a crash.
    if prov.store.kind == "postgresql":
        return _shared_store_extensions(config, reactor=reactor)
    # One server per cluster directory: a second one is refused with the holder's identity.
    lock = StateLock.acquire(prov.cluster_dir)
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
    extensions, provisioning = _extensions(config, prov, store, callback_key(prov.cluster_dir),
                                           reactor=reactor)
    provisioning.after_stop.append(lock.release)
    return extensions


def _shared_store_extensions(config: Config, *, reactor: Any = None) -> Extensions:
    """The provisioning layer on a PostgreSQL host store several servers share."""
    from pxestack.provision.pgstore import PostgresHostStore

    prov = config.provision
    assert prov is not None
    store = PostgresHostStore(
        prov.store.dsn or "", profiles=[(p.name, p.quantity) for p in prov.profiles],
        pool_size=prov.store.pool, connect_timeout=prov.store.connect_timeout,
    )
    store.open()
    log.info("host records are in PostgreSQL at {where}, shared with any other server "
             "configured so", where=store.where)
    saved = store.read_cluster_file(MAYU_CONFIG_FILE)
    if saved is not None:
        try:
            prov = apply_mayu_text(saved.decode("utf-8"), prov)
        except (UnicodeDecodeError, ValueError, yaml.YAMLError, ConfigError) as exc:
            store.mark_damaged(
                f"the stored {MAYU_CONFIG_FILE} cannot be used ({type(exc).__name__}: {exc}); "
                "the configuration file's provision section is used instead"
            )
        else:
            log.info("using the mayu settings stored in the database (set through "
                     "PUT /admin/mayu_config), which win over the configuration file's")
    extensions, provisioning = _extensions(config, prov, store, store.callback_key,
                                           reactor=reactor)
    if prov.git:
        from pxestack.provision.pgexport import AuditExporter

        # One server at a time (an advisory lock) writes the audit into cluster_dir's git.
        exporter = AuditExporter(
            prov.store.dsn or "", prov.cluster_dir, git_name=prov.git_name,
            git_email=prov.git_email, connect_timeout=prov.store.connect_timeout,
        )
        provisioning.periodic.append(exporter.step)
        store.exporter = exporter
        provisioning.after_stop.append(exporter.close)
    provisioning.after_stop.append(store.close)
    return extensions


def _extensions(
    config: Config, prov: ProvisionConfig, store: HostStore, key: bytes, *, reactor: Any
) -> tuple[Extensions, ProvisioningService]:
    """The provisioning layer over an opened host *store*."""
    base_url = _base_url(config)
    tokens = _admin_tokens(config)
    metrics = Metrics()
    events = BootEventRecorder()
    # One observer of the store's changes: the boot-phase metrics, the dashboard's
    # timeline and the operator's info line read the same change.
    hosts = ObservedHostStore(
        store, [metrics.host_changed, boot_steps(events), log_host_change],
        actor=CURRENT_ACTOR.get,
    )
    provisioner = Provisioner(
        prov, hosts, base_url=base_url,
        key=key,
    )
    metrics.watch_hosts(lambda: [(host.state.value, host.profile) for host in provisioner.hosts()])
    metrics.watch_profiles(lambda: [(p.name, p.quantity) for p in provisioner.config.profiles])
    metrics.watch_store(store.health)

    pool = ThreadPool(minthreads=1, maxthreads=PROVISION_THREADS, name="pxestack-provision")
    #: Provisioning jobs submitted and not finished (running or queued for a thread): the
    #: backlog boot-storm admission reads (``dhcp.admission.max_backlog``).
    in_flight = [0]

    def finished(result: Any) -> Any:
        in_flight[0] -= 1
        return result

    def run(work: Callable[[], Any]) -> defer.Deferred[Any]:
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
        health=api.health_reports,
    ), provisioning_service


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


__all__ = ["MAYU_CONFIG_FILE", "ProvisioningService", "enrolment_gate",
           "loader_config_source", "provisioning_extensions"]
